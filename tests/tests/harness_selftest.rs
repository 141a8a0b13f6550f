//! Self-test of the frontend harness (`tests::frontend`) against a trivial loopback backend
//! built here from vhost-user-backend 0.24: every frame a queue pair transmits comes back on the
//! same pair's receive queue, header included. This checks the harness's driver (negotiation,
//! rings, EVENT_IDX, layouts, reconnect) against the rust-vmm crates; it does not test
//! vhost-net-backend's device.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tests::frontend::connection::Role;
use tests::frontend::features;
use tests::frontend::frames::numbered;
use tests::frontend::hostile::{is_marker, HostileChain};
use tests::frontend::memory::MemoryLayout;
use tests::frontend::net::{NetConfig, NetError, NetOptions, TxLayout, VirtioNet};
use tests::frontend::net_hdr::{NetHdr, LEGACY_HDR_LEN};
use tests::frontend::replay::FrontendKind;
use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const WAIT: Duration = Duration::from_secs(5);

/// The loopback device.
struct Loopback {
    pairs: usize,
    acked: u64,
    event_idx: bool,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
}

impl Loopback {
    fn offered() -> u64 {
        features::DRIVER | features::PROTOCOL_FEATURES
    }

    fn hdr_len(&self) -> usize {
        if self.acked & (features::VERSION_1 | features::MRG_RXBUF) != 0 {
            12
        } else {
            LEGACY_HDR_LEN
        }
    }

    /// Moves frames from `tx` to `rx` while both have chains; returns how many transmit chains
    /// it took (moved, or returned unused: chains it cannot read). With MRG_RXBUF a frame spans
    /// as many receive chains as it needs; without, it is cut to one.
    fn forward(&self, rx: &VringRwLock, tx: &VringRwLock) -> io::Result<usize> {
        let Some(atomic) = &self.mem else {
            return Ok(0);
        };
        let mem = atomic.memory();
        let hdr_len = self.hdr_len();
        let mergeable = self.acked & features::MRG_RXBUF != 0;
        let mut moved = 0;
        loop {
            let Some(tx_chain) = tx
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone())
            else {
                break;
            };
            let tx_head = tx_chain.head_index();
            let mut bytes = Vec::new();
            let read = tx_chain
                .reader(&mem)
                .map(|mut r| io::Read::read_to_end(&mut r, &mut bytes));
            if !matches!(read, Ok(Ok(_))) || bytes.len() < hdr_len {
                // A chain it cannot read is dropped (an out-of-range head cannot even be
                // returned).
                let _ = tx.add_used(tx_head, 0);
                moved += 1;
                continue;
            }
            let mut writers = Vec::new();
            let mut room = 0;
            while writers.is_empty() || (mergeable && room < bytes.len()) {
                let Some(chain) = rx
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone())
                else {
                    break;
                };
                let head = chain.head_index();
                let writer = chain.writer(&mem).map_err(io::Error::other)?;
                room += writer.available_bytes();
                writers.push((head, writer));
            }
            if writers.is_empty() || (mergeable && room < bytes.len()) {
                for _ in 0..writers.len() {
                    rx.get_mut().get_queue_mut().go_to_previous_position();
                }
                tx.get_mut().get_queue_mut().go_to_previous_position();
                break;
            }
            if hdr_len == 12 {
                let count = writers.len() as u16;
                bytes[10..12].copy_from_slice(&count.to_le_bytes());
            }
            let mut rest = &bytes[..];
            for (head, mut writer) in writers {
                let len = rest.len().min(writer.available_bytes());
                io::Write::write_all(&mut writer, &rest[..len])?;
                rest = &rest[len..];
                rx.add_used(head, len as u32).map_err(io::Error::other)?;
            }
            tx.add_used(tx_head, 0).map_err(io::Error::other)?;
            moved += 1;
        }
        for vring in [rx, tx] {
            if vring.needs_notification().map_err(io::Error::other)? {
                vring.signal_used_queue()?;
            }
        }
        Ok(moved)
    }
}

impl VhostUserBackendMut for Loopback {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * self.pairs
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        Self::offered()
    }

    fn acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut config = Vec::from(MAC);
        config.extend_from_slice(&1u16.to_le_bytes());
        config.extend_from_slice(&(self.pairs as u16).to_le_bytes());
        config.extend_from_slice(&1500u16.to_le_bytes());
        let start = (offset as usize).min(config.len());
        let end = (start + size as usize).min(config.len());
        config[start..end].to_vec()
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let pair = usize::from(device_event) / 2;
        let (Some(rx), Some(tx)) = (vrings.get(2 * pair), vrings.get(2 * pair + 1)) else {
            return Ok(());
        };
        loop {
            if self.event_idx {
                rx.disable_notification().map_err(io::Error::other)?;
                tx.disable_notification().map_err(io::Error::other)?;
            }
            let moved = self.forward(rx, tx)?;
            if !self.event_idx {
                return Ok(());
            }
            let tx_more = tx.enable_notification().map_err(io::Error::other)?;
            let rx_more = rx.enable_notification().map_err(io::Error::other)?;
            if moved == 0 || !(tx_more || rx_more) {
                return Ok(());
            }
        }
    }
}

/// A loopback daemon serving one connection on a thread.
struct Server {
    thread: JoinHandle<Result<(), String>>,
}

impl Server {
    /// Listens at `path` (the harness connects).
    fn listen(path: &Path, pairs: usize) -> Self {
        let mut listener = Listener::new(path, true).unwrap();
        let mut daemon = daemon(pairs);
        let thread = thread::spawn(move || {
            daemon.start(&mut listener).map_err(|e| e.to_string())?;
            finish(daemon)
        });
        Server { thread }
    }

    /// Connects to the harness listening at `path`.
    fn connect(path: &Path, pairs: usize) -> Self {
        let path = path.to_str().unwrap().to_owned();
        let mut daemon = daemon(pairs);
        let thread = thread::spawn(move || {
            for _ in 0..500 {
                if daemon.start_client(&path).is_ok() {
                    return finish(daemon);
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err("harness never listened".into())
        });
        Server { thread }
    }

    /// Waits for the connection to end; the daemon's verdict on it.
    fn join(self) -> Result<(), String> {
        self.thread.join().unwrap()
    }
}

fn daemon(pairs: usize) -> VhostUserDaemon<Arc<Mutex<Loopback>>> {
    let backend = Loopback {
        pairs,
        acked: 0,
        event_idx: false,
        mem: None,
    };
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    VhostUserDaemon::new("loopback".into(), Arc::new(Mutex::new(backend)), mem).unwrap()
}

fn finish(mut daemon: VhostUserDaemon<Arc<Mutex<Loopback>>>) -> Result<(), String> {
    // A frontend that closes the socket ends the connection normally.
    let result = match daemon.wait() {
        Err(vhost_user_backend::Error::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        other => other.map_err(|e| format!("{e:?}")),
    };
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    result
}

fn socket(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("harness-{}-{n}-{name}.sock", std::process::id()))
}

fn frame(seq: u32, len: usize) -> Vec<u8> {
    numbered([0xff; 6], MAC, seq, len)
}

fn options(kind: FrontendKind) -> NetOptions {
    NetOptions {
        frontend: kind,
        timeout: WAIT,
        ..NetOptions::default()
    }
}

/// Starts a loopback daemon with `options.queue_pairs` pairs listening at a fresh socket and
/// attaches a harness NIC to it.
fn attach(name: &str, options: NetOptions) -> (VirtioNet, Server, PathBuf) {
    let path = socket(name);
    let server = Server::listen(&path, usize::from(options.queue_pairs));
    let net = VirtioNet::new(Role::Connect(path.clone()), options).unwrap();
    (net, server, path)
}

/// Closes the NIC and checks the daemon saw a clean connection.
fn detach(net: VirtioNet, server: Server) {
    drop(net);
    server.join().unwrap();
}

/// Kills the daemon under an attached NIC and starts a new one; returns how the NIC's
/// reconnect went.
fn replace_backend(
    net: &mut VirtioNet,
    server: Server,
    path: &Path,
) -> (Server, Result<(), NetError>) {
    net.disconnect();
    server.join().unwrap();
    let second = Server::listen(path, usize::from(net.options().queue_pairs));
    let result = net.reconnect();
    (second, result)
}

fn position(sent: &[FrontendReq], request: FrontendReq) -> usize {
    sent.iter().position(|&s| s == request).unwrap()
}

/// Sends frames of assorted sizes on `pair` one by one and checks each comes back whole.
fn echo(net: &mut VirtioNet, pair: u16, count: u32) {
    let mergeable = net.negotiated().has(features::MRG_RXBUF);
    let rx_max = net.rx_buffer_size() as usize - net.hdr_len();
    let max = if mergeable {
        net.max_frame()
    } else {
        net.max_frame().min(rx_max)
    }
    .min(9000);
    for seq in 0..count {
        let sent = frame(seq, 60 + (seq as usize * 97) % (max - 60));
        net.send(pair, &sent).unwrap();
        let (hdr, got) = net.recv_on(pair, WAIT).unwrap().expect("frame came back");
        assert!(
            got == sent,
            "frame {seq}: {} bytes back for {} sent",
            got.len(),
            sent.len()
        );
        assert_eq!(hdr.flags, 0);
    }
}

#[test]
fn cloud_hypervisor_sequence_negotiates_and_forwards() {
    let (mut net, server, _) = attach("ch", options(FrontendKind::CloudHypervisor));
    let n = net.negotiated().clone();
    assert_eq!(n.offered, Loopback::offered());
    assert_eq!(n.acked, features::DRIVER | features::PROTOCOL_FEATURES);
    assert!(n.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK));
    assert_eq!(n.queue_num, Some(2));
    let expected = NetConfig {
        mac: MAC,
        status: 1,
        max_virtqueue_pairs: 1,
        mtu: 1500,
    };
    assert_eq!(n.config, Some(expected));
    assert!(expected.link_up());
    assert_eq!(net.hdr_len(), 12);
    echo(&mut net, 0, 200);
    let sent = net.connection().sent();
    assert!(
        position(sent, FrontendReq::SET_VRING_KICK) < position(sent, FrontendReq::SET_VRING_ENABLE)
    );
    assert!(!sent.contains(&FrontendReq::ADD_MEM_REG));
    detach(net, server);
}

#[test]
fn qemu_sequence_is_refused_by_vhost_user_backend() {
    // frontends.md fact 1: QEMU's SET_VRING_ENABLE before SET_FEATURES closes the connection.
    let path = socket("qemu");
    let server = Server::listen(&path, 1);
    let result = VirtioNet::new(Role::Connect(path), options(FrontendKind::Qemu));
    assert!(matches!(result, Err(NetError::Connection(_))), "{result:?}");
    let verdict = server.join().unwrap_err();
    assert!(verdict.contains("InactiveFeature"), "{verdict}");
}

#[test]
fn dpdk_sequence_without_event_idx() {
    let (mut net, server, _) = attach("dpdk", options(FrontendKind::Dpdk));
    let n = net.negotiated().clone();
    assert_eq!(n.acked & features::EVENT_IDX, 0);
    assert_eq!(n.acked & (features::MAC | features::STATUS), 0);
    assert_eq!(n.queue_num, None);
    assert!(!net.vring(0).event_idx());
    echo(&mut net, 0, 100);
    let sent = net.connection().sent();
    assert!(
        position(sent, FrontendReq::SET_VRING_CALL) < position(sent, FrontendReq::SET_FEATURES)
    );
    detach(net, server);
}

#[test]
fn harness_listens_and_backend_connects() {
    let path = socket("listen");
    let server = Server::connect(&path, 1);
    let mut net =
        VirtioNet::new(Role::Listen(path), options(FrontendKind::CloudHypervisor)).unwrap();
    echo(&mut net, 0, 50);
    detach(net, server);
}

#[test]
fn legacy_header_without_version_1_and_mrg_rxbuf() {
    let mut opts = options(FrontendKind::CloudHypervisor);
    opts.features &= !(features::VERSION_1 | features::MRG_RXBUF);
    let (mut net, server, _) = attach("legacy", opts);
    assert_eq!(net.hdr_len(), LEGACY_HDR_LEN);
    assert_eq!(net.negotiated().acked & features::VERSION_1, 0);
    // Without MRG_RXBUF and with GUEST_TSO, receive buffers take a 64 KiB frame.
    assert!(net.rx_buffer_size() >= 65_562);
    echo(&mut net, 0, 50);
    let hdr = NetHdr::needs_csum(34, 16);
    net.send_with_hdr(0, &hdr, &frame(7, 100)).unwrap();
    let (got, _) = net.recv(WAIT).unwrap().unwrap();
    assert_eq!(got, hdr, "a legacy header carries no num_buffers");
    detach(net, server);
}

#[test]
fn headers_pass_through_with_num_buffers() {
    let (mut net, server, _) = attach("hdr", options(FrontendKind::CloudHypervisor));
    let hdr = NetHdr::tso(false, 54, 1448, 34, 16);
    net.send_with_hdr(0, &hdr, &frame(1, 3000)).unwrap();
    let (got, data) = net.recv(WAIT).unwrap().unwrap();
    assert_eq!(
        got,
        NetHdr {
            num_buffers: 2,
            ..hdr
        },
        "3000 bytes span two 2 KiB buffers"
    );
    assert!(data == frame(1, 3000));
    detach(net, server);
}

#[test]
fn layouts_indirect_chunks_segments_and_regions() {
    let mut opts = options(FrontendKind::CloudHypervisor);
    opts.features &= !(features::MRG_RXBUF | features::GUEST_OFFLOADS);
    opts.rx_segment = Some(500);
    opts.rx_buffers = Some(16);
    opts.memory = MemoryLayout {
        base: 0x8000_0000,
        regions: 4,
        gap: 0x1000,
    };
    opts.tx_layout = TxLayout {
        header_apart: true,
        chunk: Some(333),
        indirect: false,
    };
    let (mut net, server, _) = attach("layouts", opts);
    assert_eq!(net.memory().regions().unwrap().len(), 4);
    assert_eq!(net.vring(0).in_flight(), 16, "receive buffers kept posted");
    echo(&mut net, 0, 60);
    net.set_tx_layout(TxLayout {
        header_apart: false,
        chunk: Some(128),
        indirect: true,
    })
    .unwrap();
    echo(&mut net, 0, 60);
    net.set_tx_layout(TxLayout {
        header_apart: true,
        chunk: None,
        indirect: true,
    })
    .unwrap();
    echo(&mut net, 0, 60);
    detach(net, server);
}

#[test]
fn event_idx_off_uses_ring_flags() {
    let mut opts = options(FrontendKind::CloudHypervisor);
    opts.features &= !features::EVENT_IDX;
    let (mut net, server, _) = attach("noevidx", opts);
    assert!(!net.vring(1).event_idx());
    echo(&mut net, 0, 100);
    detach(net, server);
}

#[test]
fn two_queue_pairs_forward_independently() {
    let mut opts = options(FrontendKind::CloudHypervisor);
    opts.queue_pairs = 2;
    let (mut net, server, _) = attach("mq", opts);
    assert_eq!(net.negotiated().queue_num, Some(4));
    echo(&mut net, 1, 50);
    echo(&mut net, 0, 50);
    net.send(1, &frame(9, 80)).unwrap();
    assert!(net
        .recv_on(0, Duration::from_millis(100))
        .unwrap()
        .is_none());
    assert_eq!(net.recv_on(1, WAIT).unwrap().unwrap().1, frame(9, 80));
    detach(net, server);
}

#[test]
fn batches_wrap_the_ring_indices() {
    let mut opts = options(FrontendKind::CloudHypervisor);
    opts.queue_size = 64;
    let (mut net, server, _) = attach("batch", opts);
    let frames: Vec<Vec<u8>> = (0..64).map(|i| frame(i, 64)).collect();
    let total = 70_000;
    let (mut sent, mut received) = (0, 0);
    while received < total {
        let want = (total - sent).min(frames.len());
        let batch = frames[..want].iter().map(Vec::as_slice);
        sent += net.send_batch(0, &NetHdr::plain(), batch).unwrap();
        received += net
            .recv_batch(0, 64, WAIT, |_, data| assert_eq!(data.len(), 64))
            .unwrap();
    }
    assert_eq!((sent, received), (total, total));
    assert_ne!(
        net.vring(0).last_used(),
        total as u16 + 1,
        "indices wrapped"
    );
    let tx = net.vring_stats(1).unwrap();
    assert_eq!(tx.frames, total as u64);
    assert!(tx.kicks <= tx.frames, "kicks are per batch at most");
    detach(net, server);
}

#[test]
fn reset_restarts_the_rings_from_zero() {
    let (mut net, server, _) = attach("reset", options(FrontendKind::CloudHypervisor));
    echo(&mut net, 0, 10);
    net.reset().unwrap();
    assert_eq!(net.vring(1).avail_idx(), 0);
    echo(&mut net, 0, 10);
    let sent = net.connection().sent();
    let stop = position(sent, FrontendReq::GET_VRING_BASE);
    assert_eq!(
        sent[stop - 1],
        FrontendReq::SET_VRING_ENABLE,
        "ENABLE 0 before GET_VRING_BASE"
    );
    detach(net, server);
}

#[test]
fn cloud_hypervisor_reconnect_starts_at_the_avail_index() {
    // frontends.md fact 5: cloud-hypervisor restarts a ring at the guest's available index and
    // vhost-user-backend takes it as next_avail, so the receive buffers posted before the
    // reconnect are never used; transmit keeps working.
    let (mut net, first, path) = attach("reconnect", options(FrontendKind::CloudHypervisor));
    echo(&mut net, 0, 20);
    let (second, result) = replace_backend(&mut net, first, &path);
    result.unwrap();
    let sent = net.connection().sent();
    let start = [
        FrontendReq::SET_OWNER,
        FrontendReq::GET_FEATURES,
        FrontendReq::SET_PROTOCOL_FEATURES,
    ];
    assert_eq!(sent[..3], start);
    assert!(!sent.contains(&FrontendReq::GET_PROTOCOL_FEATURES));
    net.send(0, &frame(1, 100)).unwrap();
    assert_eq!(net.recv(Duration::from_millis(300)).unwrap(), None);
    assert_eq!(
        net.vring(0).in_flight(),
        256,
        "posted buffers stay with the device"
    );
    assert_eq!(
        net.reclaim_tx(0).unwrap(),
        0,
        "the frame waits for a receive buffer"
    );
    detach(net, second);
}

#[test]
fn dpdk_reconnect_is_refused_by_vhost_user_backend() {
    // frontends.md fact 1, DPDK's variant: SET_VRING_ENABLE before GET_FEATURES.
    let (mut net, first, path) = attach("dpdk-reconnect", options(FrontendKind::Dpdk));
    echo(&mut net, 0, 5);
    let (second, result) = replace_backend(&mut net, first, &path);
    assert!(result.is_err());
    assert_eq!(net.connection().sent()[0], FrontendReq::SET_VRING_ENABLE);
    let verdict = second.join().unwrap_err();
    assert!(verdict.contains("InactiveFeature"), "{verdict}");
}

#[test]
fn hostile_transmit_chains_are_posted_and_reaped() {
    let (mut net, server, _) = attach("hostile", options(FrontendKind::CloudHypervisor));
    let mut posted = Vec::new();
    for chain in HostileChain::ALL {
        if chain == HostileChain::HeadOutOfRange {
            continue;
        }
        let head = net
            .post_hostile(1, chain)
            .unwrap_or_else(|e| panic!("{chain:?}: {e:?}"));
        posted.push(head.unwrap());
        // The loopback forwards what virtio-queue lets it read; the rest it returns unused.
        let sent = frame(posted.len() as u32, 100);
        net.send(0, &sent).unwrap();
        loop {
            let (_, got) = net.recv(WAIT).unwrap().expect("the valid frame came back");
            if got == sent {
                break;
            }
            assert!(
                is_marker(&got),
                "{chain:?}: only marker frames besides ours"
            );
        }
    }
    net.reclaim_tx(0).unwrap();
    let returned: Vec<u16> = net.hostile_returned(1).iter().map(|u| u.head).collect();
    assert_eq!(returned, posted);
    assert_eq!(net.vring(1).in_flight(), 0);
    detach(net, server);
}

#[test]
fn connection_adds_memory_regions_one_by_one() {
    use tests::frontend::connection::{Connection, ConnectionError, NeedReply};
    use tests::frontend::memory::GuestMemory;
    use vhost::vhost_user::message::VhostUserVringState;
    use vm_memory::ByteValued;
    let path = socket("memslots");
    let server = Server::listen(&path, 1);
    let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut conn = Connection::new(stream, 2, WAIT).unwrap();
    conn.set_need_reply(NeedReply::Always);
    let offered = conn.get_features().unwrap();
    let protocol = conn.get_protocol_features().unwrap();
    let wanted =
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS | VhostUserProtocolFeatures::REPLY_ACK;
    assert!(protocol.contains(wanted));
    conn.set_features(offered).unwrap();
    conn.set_protocol_features(wanted).unwrap();
    conn.set_owner().unwrap();
    let slots = conn.get_max_mem_slots().unwrap();
    let layout = MemoryLayout {
        regions: 3,
        ..MemoryLayout::default()
    };
    let mem = GuestMemory::new(&layout, 1 << 20).unwrap();
    let regions = mem.regions().unwrap();
    assert!(slots >= regions.len() as u64);
    for region in &regions {
        conn.add_mem_region(region).unwrap();
    }
    // Message-level requests after REPLY_ACK: GET_VRING_BASE has its own reply, ENABLE an ack.
    assert_eq!(conn.get_vring_base(1).unwrap(), 0);
    let enable = VhostUserVringState::new(0, 1);
    conn.raw_request(FrontendReq::SET_VRING_ENABLE, enable.as_slice(), &[])
        .unwrap();
    // A ring the backend does not have: it fails the request, says so in the ack, and (being
    // vhost-user-backend) closes the connection.
    let bad = VhostUserVringState::new(99, 256);
    let nack = conn.raw_request(FrontendReq::SET_VRING_NUM, bad.as_slice(), &[]);
    assert!(
        matches!(nack, Err(ConnectionError::Nack { status: 1, .. })),
        "{nack:?}"
    );
    let sent = conn.sent();
    assert_eq!(
        sent.iter()
            .filter(|&&r| r == FrontendReq::ADD_MEM_REG)
            .count(),
        3
    );
    drop(conn);
    assert!(server.join().unwrap_err().contains("InvalidParam"));
}
