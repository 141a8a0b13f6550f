//! Packets of known flows tracked per second: what the policy stage pays per frame before it
//! finds the flow's cached verdict, in conntrack alone (`udp`) and through a thread's flow
//! cache in front of it (`udp_cached`, the cache warm: each packet as one tracked less than
//! its refresh interval ago). UDP flows over 64 networks' worth of addresses, 256 and 16k
//! flows, packets spread over the flows, both directions. `cargo bench -p bridge-core --bench
//! conntrack`. Measured in the thread's CPU time (see `cpu_time`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration as StdDuration;

use bridge_core::conntrack::{
    Conntrack, ConntrackConfig, CtState, Endpoint, FlowTuple, PacketKind, PacketMeta, Protocol,
};
use bridge_core::flow_cache::FlowCache;
use bridge_core::time::{Duration, Instant};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod cpu_time;
use cpu_time::CpuTime;

/// Packets per measured batch.
const BATCH: usize = 1024;

fn endpoint(host: u32, port: u16) -> Endpoint {
    Endpoint {
        addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | host)),
        port,
    }
}

/// A table holding `flows` replied UDP flows, and a batch of their packets (original and
/// reply alternating, spread over the flows).
fn setup(flows: u32) -> (Conntrack<u64>, Vec<PacketMeta>) {
    let ct = Conntrack::new(ConntrackConfig::default());
    let packets: Vec<PacketMeta> = (0..flows)
        .map(|i| PacketMeta {
            tuple: FlowTuple {
                zone: 1,
                protocol: Protocol::Udp,
                src: endpoint(2 * i, 40000 + (i % 1000) as u16),
                dst: endpoint(2 * i + 1, 5201),
            },
            kind: PacketKind::Udp,
        })
        .collect();
    let now = Instant::from_secs(1);
    for p in &packets {
        let flow = ct.track(now, p).unwrap().flow.unwrap();
        ct.set_verdict(&flow, 1);
        let reply = PacketMeta {
            tuple: p.tuple.reversed(),
            ..*p
        };
        assert_eq!(ct.track(now, &reply).unwrap().state, CtState::Reply);
    }
    // A cheap LCG spreads the batch over the table.
    let mut x: u32 = 12345;
    let batch = (0..BATCH)
        .map(|k| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let p = packets[(x % flows) as usize];
            match k % 2 {
                0 => p,
                _ => PacketMeta {
                    tuple: p.tuple.reversed(),
                    ..p
                },
            }
        })
        .collect();
    (ct, batch)
}

fn run(ct: &Conntrack<u64>, now: Instant, batch: &[PacketMeta]) {
    for p in batch {
        let t = ct.track(now, p);
        debug_assert_eq!(t.map(|t| t.verdict), Ok(Some(1)));
        black_box(t).ok();
    }
}

/// [`run`] through `cache`: what the cache answers, the rest tracked and offered to it.
fn run_cached(cache: &mut FlowCache<u64>, ct: &Conntrack<u64>, now: Instant, batch: &[PacketMeta]) {
    cache.begin_batch(ct);
    for p in batch {
        let v = cache.get(now, p).or_else(|| {
            let t = ct.track(now, p).ok()?;
            cache.insert(now, p, &t);
            t.verdict
        });
        debug_assert_eq!(v, Some(1));
        black_box(v);
    }
}

fn track(c: &mut Criterion<CpuTime>) {
    let mut group = c.benchmark_group("track_known_flow_cpu");
    group
        .warm_up_time(StdDuration::from_secs(1))
        .measurement_time(StdDuration::from_secs(3))
        .sample_size(20)
        .throughput(Throughput::Elements(BATCH as u64));
    for flows in [256, 16384] {
        let (ct, batch) = setup(flows);
        let now = Instant::from_secs(1) + Duration::from_secs(1);
        group.bench_function(BenchmarkId::new("udp", flows), |b| {
            b.iter(|| run(&ct, now, &batch))
        });
        let mut cache = FlowCache::new(&ct);
        run_cached(&mut cache, &ct, now, &batch);
        group.bench_function(BenchmarkId::new("udp_cached", flows), |b| {
            b.iter(|| run_cached(&mut cache, &ct, now, &batch))
        });
    }
    group.finish();
}

criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(CpuTime);
    targets = track
}
criterion_main!(cpu);
