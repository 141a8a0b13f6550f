//! The runs: throughput (guest 2k sends to guest 2k+1 as fast as the backend takes frames) and
//! latency (request/response between two guests, one frame in flight).
//!
//! The generator polls its rings (it is the load, not the device under test): it publishes
//! frames in batches, kicks only when the backend asks (EVENT_IDX), never asks for calls, and
//! allocates nothing per frame. Frames are prepared once in the transmit buffers, and only the
//! first bytes of received frames are read, so the generator copies nothing per frame.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::guest::{Guest, GuestError};
use super::proc;

/// Errors of a run.
#[derive(Debug, Error)]
pub enum RunError {
    /// A guest failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// Reading the CPU time or context switches of a process failed.
    #[error("reading CPU time or context switches of process {pid}")]
    Cpu {
        /// The process.
        pid: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The guests do not make sender/receiver pairs.
    #[error("{0} guests: a throughput run needs pairs (guest 2k sends to 2k+1)")]
    Unpaired(usize),
    /// A generator thread panicked.
    #[error("a generator thread panicked")]
    Panicked,
}

/// How a throughput run goes.
#[derive(Clone, Debug)]
pub struct ThroughputSpec {
    /// Traffic before the measurement (learning, caches, rings filling), not counted.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// Generator threads (pairs are shared out among them).
    pub threads: usize,
    /// CPUs to pin generator thread i to (`cpus[i % len]`); empty: no pinning.
    pub cpus: Vec<usize>,
    /// The backend process, for its CPU time.
    pub backend: Option<u32>,
}

/// What a throughput run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Throughput {
    /// Frames received during the window.
    pub frames: u64,
    /// Their bytes (Ethernet frames without FCS).
    pub bytes: u64,
    /// The window.
    pub elapsed: Duration,
    /// Frames sent from the window's start to its end.
    pub sent: u64,
    /// Frames received from the window's start until the rings were drained after it.
    pub received: u64,
    /// Backend CPU time during the window.
    pub backend_cpu: Option<Duration>,
    /// Generator CPU time during the window.
    pub generator_cpu: Duration,
    /// Context switches of the backend's threads during the window.
    pub backend_switches: Option<proc::Switches>,
    /// Context switches of the generator's threads during the window.
    pub generator_switches: proc::Switches,
    /// Kicks the generator's guests sent during the window (transmit and receive queues).
    pub kicks: u64,
    /// Time the generator's threads spent in passes over their pairs in which they neither
    /// received nor sent a frame (waiting for the backend), summed over the threads.
    pub generator_idle: Duration,
}

impl Throughput {
    /// Received frames per second.
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }

    /// Received bits per second (frame bytes), in Gbit/s.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }

    /// Share of the frames sent in the window that never arrived.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }

    /// Backend CPU nanoseconds per received frame.
    pub fn backend_ns_per_frame(&self) -> Option<f64> {
        let cpu = self.backend_cpu?;
        (self.frames > 0).then(|| cpu.as_nanos() as f64 / self.frames as f64)
    }

    /// The generator's kicks per 1000 received frames.
    pub fn kicks_per_1000(&self) -> Option<f64> {
        (self.frames > 0).then(|| self.kicks as f64 * 1000.0 / self.frames as f64)
    }

    /// Share of the generator's CPU time spent in passes that found nothing to do.
    pub fn idle_share(&self) -> Option<f64> {
        let cpu = self.generator_cpu.as_secs_f64();
        (cpu > 0.0).then(|| self.generator_idle.as_secs_f64() / cpu)
    }

    /// Generator CPU nanoseconds per received frame.
    pub fn generator_ns_per_frame(&self) -> Option<f64> {
        (self.frames > 0).then(|| self.generator_cpu.as_nanos() as f64 / self.frames as f64)
    }
}

/// Counts of one generator thread.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    sent: u64,
    received: u64,
    bytes: u64,
    kicks: u64,
    idle: Duration,
}

/// How long receivers must stay quiet for the rings to count as drained.
const QUIET: Duration = Duration::from_millis(50);

/// Runs `guests[2k]` → `guests[2k + 1]` for every k at full speed. The senders must have
/// prepared frames toward their receivers.
pub fn throughput(guests: &mut [Guest], spec: &ThroughputSpec) -> Result<Throughput, RunError> {
    throughput_observed(guests, spec, || ())
}

/// [`throughput`], calling `at_start` just before the window starts (the warm-up's frames
/// drained, the generator waiting): a reading there and one after the return (after the drain)
/// cover exactly the window's sent frames and what became of them.
pub fn throughput_observed(
    guests: &mut [Guest],
    spec: &ThroughputSpec,
    at_start: impl FnOnce(),
) -> Result<Throughput, RunError> {
    if guests.is_empty() || !guests.len().is_multiple_of(2) {
        return Err(RunError::Unpaired(guests.len()));
    }
    let pairs = guests.len() / 2;
    let threads = spec.threads.clamp(1, pairs);
    let per_thread = pairs.div_ceil(threads);
    let chunks: Vec<&mut [Guest]> = guests.chunks_mut(2 * per_thread).collect();
    let barrier = Barrier::new(chunks.len() + 1);
    let warmup_end = Instant::now() + spec.warmup;
    let me = std::process::id();
    let cpu = |pid: u32| proc::cpu_time(pid).map_err(|source| RunError::Cpu { pid, source });
    let switches = |pid: u32| proc::switches(pid).map_err(|source| RunError::Cpu { pid, source });
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| {
                let barrier = &barrier;
                let pin = spec.cpus.get(i % spec.cpus.len().max(1)).copied();
                let duration = spec.duration;
                scope.spawn(move || worker(chunk, pin, warmup_end, duration, barrier))
            })
            .collect();
        // Workers quiesce after the warm-up: the window starts with empty rings.
        barrier.wait();
        at_start();
        let start = Instant::now();
        let readings = (spec.backend.map(cpu).transpose(), cpu(me));
        let switched = (spec.backend.map(switches).transpose(), switches(me));
        barrier.wait();
        // Workers measure, then stop sending.
        barrier.wait();
        let elapsed = start.elapsed();
        let end = (spec.backend.map(cpu).transpose(), cpu(me));
        let switched_end = (spec.backend.map(switches).transpose(), switches(me));
        barrier.wait();
        let mut window = Counts::default();
        let mut total = Counts::default();
        for w in workers {
            let (win, all) = w.join().map_err(|_| RunError::Panicked)??;
            window.received += win.received;
            window.bytes += win.bytes;
            window.kicks += win.kicks;
            window.idle += win.idle;
            total.sent += all.sent;
            total.received += all.received;
        }
        let (backend0, gen0) = (readings.0?, readings.1?);
        let (backend1, gen1) = (end.0?, end.1?);
        let (backend_sw0, gen_sw0) = (switched.0?, switched.1?);
        let (backend_sw1, gen_sw1) = (switched_end.0?, switched_end.1?);
        Ok(Throughput {
            frames: window.received,
            bytes: window.bytes,
            elapsed,
            sent: total.sent,
            received: total.received,
            backend_cpu: backend0.zip(backend1).map(|(a, b)| b.saturating_sub(a)),
            generator_cpu: gen1.saturating_sub(gen0),
            backend_switches: backend_sw0.zip(backend_sw1).map(|(a, b)| b.since(a)),
            generator_switches: gen_sw1.since(gen_sw0),
            kicks: window.kicks,
            generator_idle: window.idle,
        })
    })
}

/// One generator thread: its pairs through warm-up, quiescing, the window and the drain.
/// Returns the window's counts and the counts from the window's start through the drain.
fn worker(
    guests: &mut [Guest],
    pin: Option<usize>,
    warmup_end: Instant,
    duration: Duration,
    barrier: &Barrier,
) -> Result<(Counts, Counts), RunError> {
    if let Some(cpu) = pin {
        // Pinning is best effort: a run on fewer CPUs still measures.
        let _ = super::pin_to_cpu(cpu);
    }
    // Every barrier is passed even after an error, so that the other threads go on.
    let mut warm = Counts::default();
    let mut result = pump(guests, &mut warm, warmup_end).and_then(|()| drain(guests, &mut warm));
    barrier.wait();
    barrier.wait();
    let mut counts = Counts::default();
    let kicks = |guests: &[Guest]| guests.iter().map(|g| g.nic.kicks()).sum::<u64>();
    let kicked = kicks(guests);
    if result.is_ok() {
        result = pump(guests, &mut counts, Instant::now() + duration);
    }
    counts.kicks = kicks(guests) - kicked;
    let window = counts;
    barrier.wait();
    barrier.wait();
    if result.is_ok() {
        result = drain(guests, &mut counts);
    }
    result.map(|()| (window, counts))
}

/// Sends and receives on every pair until `deadline`.
fn pump(guests: &mut [Guest], counts: &mut Counts, deadline: Instant) -> Result<(), RunError> {
    let mut last = Instant::now();
    loop {
        let before = (counts.received, counts.sent);
        for pair in guests.chunks_mut(2) {
            let [tx, rx] = pair else { continue };
            let (frames, bytes) = rx.receive()?;
            counts.received += frames;
            counts.bytes += bytes;
            counts.sent += tx.send()? as u64;
        }
        let now = Instant::now();
        if before == (counts.received, counts.sent) {
            counts.idle += now - last;
        }
        last = now;
        if now >= deadline {
            return Ok(());
        }
    }
}

/// Receives without sending until nothing arrived for [`QUIET`].
fn drain(guests: &mut [Guest], counts: &mut Counts) -> Result<(), RunError> {
    let mut last = Instant::now();
    while last.elapsed() < QUIET {
        for pair in guests.chunks_mut(2) {
            let [_, rx] = pair else { continue };
            let (frames, bytes) = rx.receive()?;
            if frames > 0 {
                counts.received += frames;
                counts.bytes += bytes;
                last = Instant::now();
            }
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// How a latency run goes.
#[derive(Clone, Debug)]
pub struct LatencySpec {
    /// Round trips measured.
    pub samples: usize,
    /// Round trips before, not measured.
    pub warmup: usize,
    /// A round trip not back after this is lost.
    pub timeout: Duration,
}

/// What a latency run measured: round trips a → b → a, one frame in flight.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    /// Measured round trips, sorted.
    pub round_trips: Vec<Duration>,
    /// Round trips that timed out.
    pub lost: usize,
}

impl Latency {
    /// The `q` quantile (0..=1) of the round trips.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.round_trips.len();
        if n == 0 {
            return None;
        }
        let i = ((n - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(self.round_trips[i])
    }
}

/// Request/response between `a` and `b`: `a` sends a stamped frame to `b`, `b` answers with a
/// frame carrying the same stamp, and the round trip ends when `a` has it. Both must have
/// prepared frames toward each other.
pub fn latency(a: &mut Guest, b: &mut Guest, spec: &LatencySpec) -> Result<Latency, RunError> {
    let mut out = Latency::default();
    for seq in 0..(spec.warmup + spec.samples) as u64 {
        let start = Instant::now();
        let rtt = round_trip(a, b, seq, start + spec.timeout)?;
        if seq < spec.warmup as u64 {
            continue;
        }
        match rtt {
            Some(()) => out.round_trips.push(start.elapsed()),
            None => out.lost += 1,
        }
    }
    out.round_trips.sort_unstable();
    Ok(out)
}

/// One round trip; `None` when it did not complete by `deadline`.
fn round_trip(
    a: &mut Guest,
    b: &mut Guest,
    seq: u64,
    deadline: Instant,
) -> Result<Option<()>, RunError> {
    if !send_until(a, seq, deadline)? || !wait_stamp(b, seq, deadline)? {
        return Ok(None);
    }
    if !send_until(b, seq, deadline)? || !wait_stamp(a, seq, deadline)? {
        return Ok(None);
    }
    Ok(Some(()))
}

fn send_until(g: &mut Guest, seq: u64, deadline: Instant) -> Result<bool, RunError> {
    while !g.send_stamped(seq)? {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::hint::spin_loop();
    }
    Ok(true)
}

/// Spins until `g` received the frame stamped `seq` (older ones are skipped).
fn wait_stamp(g: &mut Guest, seq: u64, deadline: Instant) -> Result<bool, RunError> {
    let mut seen = false;
    loop {
        g.receive_stamps(|s| seen |= s == seq)?;
        if seen {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::hint::spin_loop();
    }
}
