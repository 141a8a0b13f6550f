//! What a policy costs per frame: `cargo bench -p vhost-net-backend --bench policy`.
//!
//! - `call/*`: a worker judging batches of 1, 32 and 64 new TCP flows (one call per module per
//!   batch), with allow-all and with a 24-rule security group (the frames match the last rule).
//! - `stage/*`: the datapath's policy stage on frames of 64 established TCP flows (ACKs after
//!   the handshake), one batch: with no policy (the stage's `begin_batch` says no policy runs;
//!   the datapath skips `check`), and with allow-all and the security group (the verdict cached
//!   in the flow: parsing, the thread's flow cache or conntrack, rule counters, no call into
//!   WebAssembly).
//! - `ports/*`: the stage in the load generator's 16-port rows (`bench --only "16 ports"`): 8
//!   sender ports, each with its own stage (a thread each in the daemon) on one shared flow
//!   table, each sending its 256 UDP flows (the generator's addresses and ports) in batches of
//!   64 in turn; the security group's 24 ingress rules over the receivers' ports let the flows
//!   in at the last rule. 2048 flows and 8 threads' caches: what a frame costs when the CPU's
//!   caches no longer hold everything.
//!
//! Per-flow mode (the verdict cached in the flow) costs what `stage/*` measures per frame;
//! per-frame mode (`NO_CACHE`: every frame judged by the module) costs a `call/*` per frame, as
//! a flow's first frame does in per-flow mode.
//!
//! Throughput is in frames: criterion's time per element is the cost per frame.
//!
//! - `reload/*`: publishing the 24-rule security group as a new generation: `compile` in a
//!   fresh host (Cranelift compiles the module), `precompiled` in a fresh host whose cache
//!   directory holds the artifact (deserialized), `config-only` in the same host with another
//!   configuration (the compiled module reused). Each includes the canary (instantiation,
//!   `pol_init`, golden frames); the fresh hosts include making the engine.

#[path = "support/operator.rs"]
mod operator;
#[path = "../tests/support/policy_wasm.rs"]
mod policy_wasm;

use std::hint::black_box;
use std::sync::Arc;

use bridge_core::policy::{BridgeOut, HookPoint, JudgeKind, PolicyFrame, PolicyHook, Verdict};
use bridge_core::time::Instant;
use bridge_core::{NetworkId, PortId};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use operator::{host, operator_set};
use policy_sdk::abi::MAX_BATCH;
use policy_sdk::frames::{tcp4, udp4, Endpoint, TCP_ACK, TCP_SYN};
use vhost_net_backend::datapath::policy::{Check, FrameCtx, PolicyPlane, PolicyStage};
use vhost_net_backend::policy::engine::LoadPath;
use vhost_net_backend::policy::{HostConfig, PolicyHost};

const CLIENT: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 1], [192, 168, 122, 10]);
const SERVER: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 2], [192, 168, 122, 11]);

/// 23 rules that do not match, then the one that does.
fn security_group() -> String {
    security_group_over("2", "tcp 22 0.0.0.0/0")
}

/// A group over `ports` whose 24 ingress rules allow TCP from 10.0.0.0/8 to ports 1000-1022,
/// then `allowed` (protocol, port range and remote prefix).
fn security_group_over(ports: &str, allowed: &str) -> String {
    let mut config = format!("group servers ports {ports}\n");
    for i in 0..23 {
        config.push_str(&format!("ingress ipv4 tcp {} 10.0.0.0/8\n", 1000 + i));
    }
    config.push_str(&format!("ingress ipv4 {allowed}\n"));
    config
}

/// SYNs of 64 flows from the client to the server's ssh port.
fn flows() -> Vec<Vec<u8>> {
    (0..64)
        .map(|i| tcp4(CLIENT, SERVER, 40000 + i, 22, TCP_SYN))
        .collect()
}

fn policies() -> [(&'static str, String); 2] {
    [
        ("allow-all", String::new()),
        ("security-group", security_group()),
    ]
}

fn call(c: &mut Criterion) {
    let frames = flows();
    let mut group = c.benchmark_group("call");
    for (name, config) in policies() {
        let mut worker = host(Some((name, &config))).worker();
        worker.begin_batch();
        for batch in [1, 32, 64] {
            let judged: Vec<PolicyFrame<'_>> = frames[..batch]
                .iter()
                .enumerate()
                .map(|(i, f)| PolicyFrame {
                    frame: f,
                    frame_len: f.len(),
                    hook: HookPoint::PortIn,
                    kind: JudgeKind::NewFlow,
                    network: NetworkId(0),
                    ingress_port: PortId(1),
                    from_guest: true,
                    bridge_out: BridgeOut::Port(PortId(2)),
                    to_guest: true,
                    flow: Some(i as u64 + 1),
                    ct: Some(bridge_core::conntrack::CtState::New),
                })
                .collect();
            let mut verdicts = vec![Verdict::UNJUDGED; batch];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter(|| {
                    worker.judge(0, black_box(&judged), &mut verdicts);
                    black_box(&verdicts);
                });
            });
        }
    }
    group.finish();
}

fn stage(c: &mut Criterion) {
    let syns = flows();
    let syn_acks: Vec<Vec<u8>> = (0..64)
        .map(|i| tcp4(SERVER, CLIENT, 22, 40000 + i, TCP_SYN | TCP_ACK))
        .collect();
    let frames: Vec<Vec<u8>> = (0..64)
        .map(|i| tcp4(CLIENT, SERVER, 40000 + i, 22, TCP_ACK))
        .collect();
    let ctx = FrameCtx {
        ingress: PortId(1),
        network: NetworkId(0),
        from_guest: true,
        out: BridgeOut::Port(PortId(2)),
        to_guest: true,
    };
    let reply = FrameCtx {
        ingress: PortId(2),
        out: BridgeOut::Port(PortId(1)),
        ..ctx
    };
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Elements(frames.len() as u64));
    let mut cases: Vec<(&str, Option<(&str, String)>)> = vec![("none", None)];
    cases.extend(policies().map(|(n, c)| (n, Some((n, c)))));
    for (label, policy) in cases {
        let host = host(policy.as_ref().map(|(n, c)| (*n, c.as_str())));
        let mut stage = PolicyStage::new(Arc::new(PolicyPlane::new(host)), HookPoint::PortIn);
        let now = Instant::from_millis(1);
        // Establish the flows: their verdicts are cached from here on.
        if stage.begin_batch() {
            for (frames, ctx) in [(&syns, ctx), (&syn_acks, reply), (&frames, ctx)] {
                for f in frames {
                    let _ = stage.check(now, ctx.ingress, ctx.network, f, f.len(), || ctx);
                }
                stage.judge_pending(now);
            }
            stage.end_batch();
        }
        group.bench_function(label, |b| {
            b.iter(|| {
                if !stage.begin_batch() {
                    return;
                }
                for f in &frames {
                    let checked =
                        stage.check(now, ctx.ingress, ctx.network, black_box(f), f.len(), || ctx);
                    assert!(matches!(checked, Check::Now(_)), "cached");
                }
                stage.end_batch();
            });
        });
    }
    group.finish();
}

/// Sender/receiver pairs of the generator's 16-port rows.
const PAIRS: usize = 8;
/// Flows per sender (the generator's default).
const PAIR_FLOWS: usize = 256;
/// The generator's first UDP destination port and how many it uses.
const FIRST_DST_PORT: u16 = 5201;
const DST_PORTS: u16 = 16;

/// Flow `n` from guest `src` to guest `dst` as the generator makes it (tests/src/load/
/// traffic.rs): 64-byte UDP frames, addresses in 10.0.0.0/8 by guest, 4 MACs per guest.
fn generator_frame(src: usize, dst: usize, n: usize) -> Vec<u8> {
    let end = |guest: usize, host: usize, mac: usize| {
        let ip = 0x0a00_0000 | ((guest as u32 & 0xff) << 16) | (host as u32 & 0xffff);
        Endpoint::new([0x02, 0x4c, 0, guest as u8, 0, mac as u8], ip.to_be_bytes())
    };
    let from = end(src, n % 251 + 1, n % 4);
    let to = end(dst, n % 241 + 1, (n / 4) % 4);
    let dport = FIRST_DST_PORT + (n % usize::from(DST_PORTS)) as u16;
    udp4(from, to, 1024 + n as u16, dport, &[0; 18])
}

/// The security group over the receivers' ports: their flows' first frames walk 23 rules
/// before the one that lets them in.
fn ports_security_group() -> String {
    let receivers: Vec<String> = (0..PAIRS).map(|k| (2 * k + 1).to_string()).collect();
    let last = FIRST_DST_PORT + DST_PORTS - 1;
    security_group_over(
        &receivers.join(" "),
        &format!("udp {FIRST_DST_PORT}-{last} 10.0.0.0/8"),
    )
}

fn ports(c: &mut Criterion) {
    let mut group = c.benchmark_group("ports");
    group.throughput(Throughput::Elements((PAIRS * PAIR_FLOWS) as u64));
    let cases = [
        ("none", None),
        ("allow-all", Some(("allow-all", String::new()))),
        (
            "security-group",
            Some(("security-group", ports_security_group())),
        ),
    ];
    for (label, policy) in cases {
        let plane = Arc::new(PolicyPlane::new(host(
            policy.as_ref().map(|(n, c)| (*n, c.as_str())),
        )));
        let mut senders: Vec<(PolicyStage, FrameCtx, Vec<Vec<u8>>)> = (0..PAIRS)
            .map(|k| {
                let stage = PolicyStage::new(Arc::clone(&plane), HookPoint::PortIn);
                let ctx = FrameCtx {
                    ingress: PortId(2 * k as u32),
                    network: NetworkId(0),
                    from_guest: true,
                    out: BridgeOut::Port(PortId(2 * k as u32 + 1)),
                    to_guest: true,
                };
                let frames = (0..PAIR_FLOWS)
                    .map(|n| generator_frame(2 * k, 2 * k + 1, n))
                    .collect();
                (stage, ctx, frames)
            })
            .collect();
        let now = Instant::from_millis(1);
        // The flows' first frames are judged; from here on their verdicts are cached.
        for (stage, ctx, frames) in &mut senders {
            if stage.begin_batch() {
                for batch in frames.chunks(MAX_BATCH) {
                    for f in batch {
                        let _ = stage.check(now, ctx.ingress, ctx.network, f, f.len(), || *ctx);
                    }
                    stage.judge_pending(now);
                }
                stage.end_batch();
            }
        }
        group.bench_function(label, |b| {
            b.iter(|| {
                // Each sender's batches of 64 in turn, as the daemon's threads take turns on
                // its CPU.
                for round in 0..PAIR_FLOWS / MAX_BATCH {
                    for (stage, ctx, frames) in &mut senders {
                        if !stage.begin_batch() {
                            continue;
                        }
                        for f in &frames[round * MAX_BATCH..][..MAX_BATCH] {
                            let checked = stage.check(
                                now,
                                ctx.ingress,
                                ctx.network,
                                black_box(f),
                                f.len(),
                                || *ctx,
                            );
                            assert!(matches!(checked, Check::Now(_)), "cached");
                        }
                        stage.end_batch();
                    }
                }
            });
        });
    }
    group.finish();
}

fn reload(c: &mut Criterion) {
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    let set = operator_set("security-group", &security_group());
    group.bench_function("compile", |b| {
        b.iter(|| {
            let host = PolicyHost::new(HostConfig::default()).unwrap();
            host.apply(set.clone()).unwrap();
        });
    });
    let cache = tempfile::tempdir().unwrap();
    let cached = || {
        let mut config = HostConfig::default();
        config.engine.cache_dir = Some(cache.path().to_path_buf());
        PolicyHost::new(config).unwrap()
    };
    cached().apply(set.clone()).unwrap();
    group.bench_function("precompiled", |b| {
        b.iter(|| {
            let host = cached();
            let report = host.apply(set.clone()).unwrap();
            assert_eq!(report.loaded[0].1, LoadPath::Precompiled);
        });
    });
    let host = PolicyHost::new(HostConfig::default()).unwrap();
    let configs = [security_group(), security_group().replace("servers", "web")];
    let sets = configs.map(|c| operator_set("security-group", &c));
    let mut n = 0;
    group.bench_function("config-only", |b| {
        b.iter(|| {
            n += 1;
            host.apply(sets[n % 2].clone()).unwrap();
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = call, stage, ports, reload
}
criterion_main!(benches);
