//! Forwarding decisions per second for 64-byte frames, with 16 (4 per port, as the daemon
//! benchmark's guests have), 1k and 64k learned addresses, on one thread and on two threads
//! sharing the switch, frame by frame ([`Switch::process`]) and in batches of 64 from one port
//! ([`Switch::batch`], as the datapath decides). `cargo bench -p bridge-core`.
//!
//! Two measurements of the same runs: `cpu` counts the benchmark threads' own CPU time (from
//! the scheduler, /proc/thread-self/schedstat), so its figures hold on a machine that others
//! load too, and two threads show what contention costs per decision; `wall` is elapsed time,
//! where two threads on two idle cores show the scaling.

use std::hint::black_box;
use std::thread;
use std::time::{Duration as StdDuration, Instant as StdInstant};

use bridge_core::time::Instant;
use bridge_core::{Decision, NetworkConfig, PortConfig, PortId, Switch};
use criterion::measurement::{Measurement, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod cpu_time;
use cpu_time::{thread_cpu_ns, CpuTime};

const PORTS: u32 = 4;
/// Frames per measured batch.
const BATCH: usize = 1024;
/// Frames per [`Switch::batch`] (the datapath's batch).
const SWITCH_BATCH: usize = 64;

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

/// Decides `frames` from `port`, one by one or in batches.
fn run(sw: &Switch, port: PortId, frames: &[Vec<u8>], batched: bool) {
    let now = Instant::from_secs(2);
    let check = |d: Decision| {
        debug_assert!(matches!(d, Decision::Forward { .. }), "{d:?}");
        black_box(d);
    };
    if batched {
        for chunk in frames.chunks(SWITCH_BATCH) {
            let mut batch = sw.batch(now, port);
            chunk.iter().for_each(|f| check(batch.process(f)));
        }
    } else {
        frames.iter().for_each(|f| check(sw.process(now, port, f)));
    }
}

/// Runs `iters` batches on each of the first two ports' threads; returns the sum of what
/// `measure` reports for each thread.
fn two_threads<V: Send>(
    sw: &Switch,
    batches: &[Batch],
    batched: bool,
    iters: u64,
    measure: impl Fn(&dyn Fn()) -> V + Sync,
) -> Vec<V> {
    thread::scope(|s| {
        let handles: Vec<_> = batches[..2]
            .iter()
            .map(|(port, frames)| {
                let measure = &measure;
                let work = move || (0..iters).for_each(|_| run(sw, *port, frames, batched));
                s.spawn(move || measure(&work))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn group<M: Measurement>(
    c: &mut Criterion<M>,
    name: &str,
    switches: &[(u32, Switch, Vec<Batch>)],
    two: impl Fn(&Switch, &[Batch], bool, u64) -> M::Value,
) {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(StdDuration::from_secs(1))
        .measurement_time(StdDuration::from_secs(3))
        .sample_size(20);
    for (learned, sw, batches) in switches {
        for (batched, suffix) in [(false, ""), (true, "_batch64")] {
            group.throughput(Throughput::Elements(BATCH as u64));
            let name = format!("1_thread{suffix}");
            group.bench_function(BenchmarkId::new(name, learned), |b| {
                b.iter(|| run(sw, batches[0].0, &batches[0].1, batched))
            });
            group.throughput(Throughput::Elements(2 * BATCH as u64));
            let name = format!("2_threads{suffix}");
            group.bench_function(BenchmarkId::new(name, learned), |b| {
                b.iter_custom(|iters| two(sw, batches, batched, iters))
            });
        }
    }
    group.finish();
}

fn switches() -> Vec<(u32, Switch, Vec<Batch>)> {
    [16, 1024, 65536]
        .into_iter()
        .map(|learned| {
            let (sw, batches) = setup(learned);
            (learned, sw, batches)
        })
        .collect()
}

fn cpu(c: &mut Criterion<CpuTime>) {
    group(
        c,
        "decisions_64B_cpu",
        &switches(),
        |sw, batches, batched, iters| {
            let per_thread = two_threads(sw, batches, batched, iters, |work| {
                let start = thread_cpu_ns();
                work();
                thread_cpu_ns() - start
            });
            per_thread.into_iter().sum()
        },
    );
}

fn wall(c: &mut Criterion<WallTime>) {
    group(
        c,
        "decisions_64B_wall",
        &switches(),
        |sw, batches, batched, iters| {
            let start = StdInstant::now();
            two_threads(sw, batches, batched, iters, |work| work());
            start.elapsed()
        },
    );
}

criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(CpuTime);
    targets = cpu
}
criterion_group!(wall_time, wall);
criterion_main!(cpu_time, wall_time);
