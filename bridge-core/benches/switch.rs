//! Forwarding decisions per second for 64-byte frames, with 1k and 64k learned addresses, on
//! one thread and on two threads sharing the switch. `cargo bench -p bridge-core`.

use std::hint::black_box;
use std::thread;
use std::time::{Duration as StdDuration, Instant as StdInstant};

use bridge_core::time::Instant;
use bridge_core::{Decision, NetworkConfig, PortConfig, PortId, Switch};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const PORTS: u32 = 4;
/// Frames per measured batch.
const BATCH: usize = 1024;

fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}

fn frame(dst: u32, src: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&mac(dst));
    f.extend_from_slice(&mac(src));
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(64, 0);
    f
}

/// Frames to send from one port.
type Batch = (PortId, Vec<Vec<u8>>);

/// A switch with `learned` addresses spread over its ports (address `i` behind port `i % 4`),
/// and per ingress port a batch of frames from its own addresses to addresses behind others.
fn setup(learned: u32) -> (Switch, Vec<Batch>) {
    let sw = Switch::new();
    let net = sw.add_network(NetworkConfig {
        max_learned: learned,
        ..NetworkConfig::default()
    });
    let config = PortConfig {
        max_learned: learned,
        ..PortConfig::default()
    };
    let ports: Vec<_> = (0..PORTS)
        .map(|_| sw.add_port(net, config.clone()).unwrap())
        .collect();
    let now = Instant::from_secs(1);
    for i in 0..learned {
        sw.process(now, ports[(i % PORTS) as usize], &frame(u32::MAX, i));
    }
    assert_eq!(sw.networks()[0].stats.learned, learned);
    // A cheap LCG picks addresses so that lookups spread over the table.
    let mut x: u32 = 12345;
    let mut next = move || {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        x % learned
    };
    let batches = ports
        .iter()
        .enumerate()
        .map(|(p, &port)| {
            let frames = (0..BATCH)
                .map(|_| {
                    let src = next() / PORTS * PORTS + p as u32;
                    let dst = next() / PORTS * PORTS + (p as u32 + 1) % PORTS;
                    frame(dst % learned, src % learned)
                })
                .collect();
            (port, frames)
        })
        .collect();
    (sw, batches)
}

fn run(sw: &Switch, port: PortId, frames: &[Vec<u8>]) {
    let now = Instant::from_secs(2);
    for f in frames {
        let d = sw.process(now, port, f);
        debug_assert!(matches!(d, Decision::Forward { .. }), "{d:?}");
        black_box(d);
    }
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decisions_64B");
    group
        .warm_up_time(StdDuration::from_secs(1))
        .measurement_time(StdDuration::from_secs(3))
        .sample_size(20);
    for learned in [1024, 65536] {
        let (sw, batches) = setup(learned);
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::new("1_thread", learned), |b| {
            b.iter(|| run(&sw, batches[0].0, &batches[0].1))
        });
        group.throughput(Throughput::Elements(2 * BATCH as u64));
        group.bench_function(BenchmarkId::new("2_threads", learned), |b| {
            b.iter_custom(|iters| {
                let start = StdInstant::now();
                thread::scope(|s| {
                    for (port, frames) in &batches[..2] {
                        let sw = &sw;
                        s.spawn(move || (0..iters).for_each(|_| run(sw, *port, frames)));
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
