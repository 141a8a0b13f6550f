//! The datapath's cost per frame in-process, without a frontend or a second CPU:
//! `cargo bench -p vhost-net-backend --bench datapath`.
//!
//! - `vm-to-vm/64B`: TX batches of 64 frames of 64 bytes from guest A to guest B through the
//!   learning bridge (B's address learned), no policy: A's transmit queue and B's receive queue
//!   (256 entries, VERSION_1, MRG_RXBUF, EVENT_IDX) in file-backed guest memories of two
//!   regions each, as the load generator lays them out. Each iteration makes 64 more chains
//!   available on both queues and runs one batch (`tx::run_batch`). A's 256 transmit buffers
//!   hold 256 UDP flows (source ports 40000-40255), as the load generator's senders do.
//! - `vm-to-vm/64B-allow-all`: the same with the allow-all policy module in the operator chain:
//!   every flow has its verdict cached after the first pass over the ring, so this adds the
//!   policy stage's cost for frames of known flows (parsing, the thread's flow cache).
//! - `vm-to-vm/64B-security-group`: the same with the 24-rule security group `bench` gives the
//!   daemon, over both ports: 11 rules of each direction that do not match, then the one that
//!   lets the flows through. Its flows' verdicts are cached too: the steady state costs what
//!   allow-all's does unless the security group's verdicts are handled differently.
//!
//! - `vm-to-vm/64B-two-receivers`: as `64B`, with A's frames going to B and to a third guest, C,
//!   in turn: every frame's receive queue is another than the last one's (the cost of taking
//!   and releasing a receive queue per frame).
//!
//! Measured in CPU time of the benchmark thread (as the switch bench does), so figures hold on a
//! loaded machine. Throughput is in frames: the time per element is the cost per frame. The rings stay
//! in this CPU's cache, so this is the path's instruction cost; the daemon bench adds the cache
//! misses of rings shared with guests on another CPU.

#[path = "../../bridge-core/benches/cpu_time/mod.rs"]
mod cpu_time;
#[path = "support/operator.rs"]
mod operator;
#[path = "../tests/support/policy_wasm.rs"]
mod policy_wasm;

use std::hint::black_box;
use std::sync::Arc;

use bridge_core::{NetworkConfig, PortConfig as SwitchPortConfig, Switch};
use cpu_time::CpuTime;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use policy_sdk::frames::{udp4, Endpoint};
use vhost::vhost_user::message::VhostUserMemoryRegion;
use vhost_net_backend::datapath::policy::PolicyPlane;
use vhost_net_backend::datapath::tx::{run_batch, TxScratch, BATCH};
use vhost_net_backend::datapath::Datapath;
use vhost_net_backend::port::Port;
use vhost_net_backend::vhost_user::memory::MemoryTable;
use vhost_net_backend::vring::RingAddresses;
use vhost_net_backend::PortConfig;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes of each of a guest memory's two regions (the second right after the first).
const REGION: u64 = 0x10_0000;
const QUEUE: u16 = 256;
/// Queue structures: descriptor table, then available ring (+0x1000), used ring (+0x2000).
const RINGS: [u64; 2] = [0x0000, 0x4000];
/// Receive buffers (2 KiB each) in the first region, transmit buffers in the second.
const RX_BUFS: u64 = 0x1_0000;
const TX_BUFS: u64 = REGION + 0x1_0000;
const FEATURES: u64 =
    1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF | 1 << VIRTIO_RING_F_EVENT_IDX;
const HDR_LEN: usize = 12;

/// A guest on a port: its memory and the available indexes it has posted.
struct Guest {
    port: Arc<Port>,
    mem: Arc<GuestMemoryMmap>,
    avail: [u16; 2],
}

impl Guest {
    /// A guest whose queue 0 (receive) and 1 (transmit) run, every descriptor `i` of a queue
    /// naming buffer `i`, every available slot `i` naming descriptor `i`.
    fn new(dp: &Datapath, switch: &Switch, net: bridge_core::NetworkId, n: usize) -> Self {
        let id = switch.add_port(net, SwitchPortConfig::default()).unwrap();
        let config = PortConfig::new(format!("/bench/{n}"));
        let port = Arc::new(Port::new(id, config, switch.port_counters(id).unwrap()).unwrap());
        dp.insert(Arc::clone(&port));
        let mut table = MemoryTable::default();
        for i in 0..2 {
            let file = tempfile::tempfile().unwrap();
            file.set_len(REGION).unwrap();
            let region = VhostUserMemoryRegion::new(i * REGION, REGION, i * REGION, 0);
            table.add(&region, file).unwrap();
        }
        let mem = table.guest_memory().unwrap();
        for (q, base) in RINGS.iter().enumerate() {
            for i in 0..QUEUE {
                let (addr, len, flags) = if q == 0 {
                    (
                        RX_BUFS + u64::from(i) * 2048,
                        2048u32,
                        VRING_DESC_F_WRITE as u16,
                    )
                } else {
                    (TX_BUFS + u64::from(i) * 128, 0, 0)
                };
                let desc = base + 16 * u64::from(i);
                mem.write_obj(addr, GuestAddress(desc)).unwrap();
                mem.write_obj(len, GuestAddress(desc + 8)).unwrap();
                mem.write_obj(flags, GuestAddress(desc + 12)).unwrap();
                mem.write_obj(i, GuestAddress(base + 0x1004 + 2 * u64::from(i)))
                    .unwrap();
            }
            let mut v = port.device().vring(q).unwrap();
            v.set_size(u32::from(QUEUE)).unwrap();
            v.set_addresses(RingAddresses {
                desc: *base,
                avail: base + 0x1000,
                used: base + 0x2000,
            });
            v.set_features(FEATURES);
            v.start(None, false);
            v.set_memory(Some(Arc::clone(&mem)), &table);
            assert!(v.is_running());
        }
        Guest {
            port,
            mem,
            avail: [0; 2],
        }
    }

    /// Makes `n` more chains available on queue `q`.
    fn post(&mut self, q: usize, n: u16) {
        self.avail[q] = self.avail[q].wrapping_add(n);
        let at = GuestAddress(RINGS[q] + 0x1002);
        self.mem.write_obj(self.avail[q], at).unwrap();
    }

    /// Puts `frame(i)` (after a zero virtio-net header) in transmit buffer `i`.
    fn fill_tx(&self, frame: impl Fn(u16) -> Vec<u8>) {
        for i in 0..u64::from(QUEUE) {
            let frame = frame(i as u16);
            let buf = TX_BUFS + i * 128;
            let len = (HDR_LEN + frame.len()) as u32;
            self.mem
                .write_slice(&[0; HDR_LEN], GuestAddress(buf))
                .unwrap();
            self.mem
                .write_slice(&frame, GuestAddress(buf + HDR_LEN as u64))
                .unwrap();
            self.mem
                .write_obj(len, GuestAddress(RINGS[1] + 16 * i + 8))
                .unwrap();
        }
    }
}

/// A 64-byte UDP/IPv4 frame of flow `flow` from `from` to `to`.
fn frame(from: Endpoint, to: Endpoint, flow: u16) -> Vec<u8> {
    let f = udp4(from, to, 40000 + flow, 9, &[0; 22]);
    assert_eq!(f.len(), 64);
    f
}

/// A policy plane running policy crate `name` with `config` in the operator chain.
fn plane(name: &str, config: &str) -> Arc<PolicyPlane> {
    Arc::new(PolicyPlane::new(operator::host(Some((name, config)))))
}

/// The security group `bench` gives the daemon (tests/src/bin/bench.rs) over ports 0 and 1
/// (A's and B's), its last rule of each direction for this bench's flows (UDP to port 9).
fn security_group() -> String {
    let mut config = String::from("group bench ports 0 1\n");
    for direction in ["egress", "ingress"] {
        for i in 0..11 {
            config.push_str(&format!("{direction} ipv4 udp {} 10.0.0.0/8\n", 2000 + i));
        }
        config.push_str(&format!("{direction} ipv4 udp 9 10.0.0.0/8\n"));
    }
    config
}

fn vm_to_vm(c: &mut Criterion<CpuTime>) {
    let mut group = c.benchmark_group("vm-to-vm");
    group.throughput(Throughput::Elements(BATCH as u64));
    let cases = [
        ("64B", None, 1),
        ("64B-allow-all", Some(("allow-all", String::new())), 1),
        (
            "64B-security-group",
            Some(("security-group", security_group())),
            1,
        ),
        ("64B-two-receivers", None, 2),
    ];
    for (name, policy, receivers) in cases {
        let policy = policy.map(|(crate_name, config)| plane(crate_name, &config));
        a_to_b(&mut group, name, policy, receivers);
    }
    group.finish();
}

/// Benchmarks `name`: batches from guest A to `receivers` guests (B, then C: A's frames go to
/// each in turn) on a datapath with `policy`.
fn a_to_b(
    group: &mut criterion::BenchmarkGroup<'_, CpuTime>,
    name: &str,
    policy: Option<Arc<PolicyPlane>>,
    receivers: u16,
) {
    let switch = Arc::new(Switch::new());
    let net = switch.add_network(NetworkConfig::default());
    let dp = Datapath::with_policy(Arc::clone(&switch), policy);
    let mut a = Guest::new(&dp, &switch, net, 0);
    let ep_a = Endpoint::new([2, 0, 0, 0, 0, 1], [10, 0, 0, 1]);
    let mut to: Vec<(Guest, Endpoint)> = (0..receivers)
        .map(|n| {
            let g = Guest::new(&dp, &switch, net, usize::from(n) + 1);
            let last = 2 + n as u8;
            (g, Endpoint::new([2, 0, 0, 0, 0, last], [10, 0, 0, last]))
        })
        .collect();
    let mut scratch = TxScratch::default();
    // The receivers speak first: their addresses are learned, A's frames to them are unicast.
    a.post(0, receivers);
    for (g, _) in to.iter_mut() {
        g.post(0, 2 * BATCH as u16);
    }
    for (g, ep) in to.iter_mut() {
        g.fill_tx(|i| frame(*ep, ep_a, i));
        g.post(1, 1);
        run_batch(&dp, &g.port, 1, &mut scratch, None, false);
    }
    let eps: Vec<Endpoint> = to.iter().map(|(_, ep)| *ep).collect();
    a.fill_tx(|i| frame(ep_a, eps[usize::from(i % receivers)], i));

    group.bench_function(name, |bench| {
        bench.iter(|| {
            a.post(1, BATCH as u16);
            for (g, _) in to.iter_mut() {
                g.post(0, BATCH as u16 / receivers);
            }
            black_box(run_batch(&dp, &a.port, 1, &mut scratch, None, false));
        });
        for (g, _) in &to {
            let counters = g.port.switch_counters().snapshot();
            assert!(counters.tx_frames > 0, "frames reached each receiver");
            assert_eq!(g.port.counters().snapshot().total(), 0, "no drops");
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = vm_to_vm
}
criterion_main!(benches);
