//! How far apart two CPUs are right now: the round trip of a cache line between a thread
//! pinned to each. On a VM the host places the virtual CPUs, and may move them between cores
//! that share a last-level cache and cores that do not while a benchmark runs; the generator
//! and the device exchange ring cache lines all the time, so their rate follows this figure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A cache line of its own.
#[repr(align(128))]
struct Line(AtomicU64);

/// The median round trip of a cache line between CPUs `a` and `b` over batches of round
/// trips for about `time`; `None` when the threads cannot be pinned or nothing came back (a
/// busy CPU). Both CPUs must be otherwise idle: it spins on both (on threads of its own; the
/// caller is not pinned).
pub fn round_trip(a: usize, b: usize, time: Duration) -> Option<Duration> {
    const BATCH: u64 = 2000;
    let line = Line(AtomicU64::new(0));
    let stop = AtomicBool::new(false);
    let unpinned = AtomicBool::new(false);
    let deadline = Instant::now() + time;
    std::thread::scope(|scope| {
        let responder = scope.spawn(|| {
            if super::pin_to_cpu(b).is_err() {
                unpinned.store(true, Ordering::Relaxed);
                return None;
            }
            // Answers each odd value with the next even one until told to stop.
            while !stop.load(Ordering::Relaxed) {
                let v = line.0.load(Ordering::Acquire);
                if v % 2 == 1 {
                    line.0.store(v + 1, Ordering::Release);
                }
                std::hint::spin_loop();
            }
            Some(())
        });
        let initiator = scope.spawn(|| {
            let mut batches = Vec::new();
            if super::pin_to_cpu(a).is_err() {
                return batches;
            }
            let mut v = 0u64;
            'probe: while Instant::now() < deadline {
                let start = Instant::now();
                for _ in 0..BATCH {
                    line.0.store(v + 1, Ordering::Release);
                    while line.0.load(Ordering::Acquire) != v + 2 {
                        if unpinned.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            break 'probe;
                        }
                        std::hint::spin_loop();
                    }
                    v += 2;
                }
                batches.push(start.elapsed() / BATCH as u32);
            }
            batches
        });
        let mut batches = initiator.join().unwrap_or_default();
        stop.store(true, Ordering::Relaxed);
        let pinned = responder.join().ok().flatten().is_some();
        batches.sort_unstable();
        batches.get(batches.len() / 2).copied().filter(|_| pinned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_between_two_cpus_takes_time_or_is_not_measured() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            return;
        }
        let rt = round_trip(0, 1, Duration::from_millis(30));
        // On a busy machine a batch may not finish in time; a figure, when there is one, is a
        // real transfer (more than nothing, less than a scheduler tick).
        if let Some(rt) = rt {
            assert!(
                rt > Duration::ZERO && rt < Duration::from_millis(1),
                "{rt:?}"
            );
        }
    }
}
