//! `loadgen`: plays guests against vhost-user sockets a backend already serves (the daemon,
//! testpmd's vhost PMD, any other) and prints what one run measured.
//!
//! ```text
//! loadgen --socket /tmp/p0.sock --socket /tmp/p1.sock --size 64 --duration 5 --backend-pid PID
//! loadgen --socket ... --tso                  # 64 KiB TCP segments, TSO both ways
//! loadgen --socket ... --latency              # request/response round trips
//! ```
//! Guest 2k sends to guest 2k+1 (the sockets in order).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tests::load::guest::{Frames, Guest};
use tests::load::run::{self, LatencySpec, ThroughputSpec};
use tests::load::{proc, report};
use vhost_net_backend::cli::error_chain;

/// A vhost-user load generator: N guests (memfd memory, split rings, EVENT_IDX) against a
/// backend's sockets.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// A backend socket; one guest per socket, guest 2k sends to guest 2k+1.
    #[arg(long = "socket", required = true)]
    sockets: Vec<PathBuf>,
    /// Frame size in bytes (Ethernet, without FCS).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Send 64 KiB TCP segments with TSO instead (the backend must negotiate TSO both ways).
    #[arg(long, conflicts_with = "latency")]
    tso: bool,
    /// Measure request/response round trips between the first two guests instead.
    #[arg(long)]
    latency: bool,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Round trips measured (--latency).
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Flows per sender (MACs, addresses and ports vary per flow).
    #[arg(long, default_value_t = 256)]
    flows: usize,
    /// MACs per guest.
    #[arg(long, default_value_t = 4)]
    macs: usize,
    /// Entries per virtqueue.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin generator threads to these CPUs (round robin).
    #[arg(long = "cpu")]
    cpus: Vec<usize>,
    /// The backend's process id, for its CPU time per frame.
    #[arg(long)]
    backend_pid: Option<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run_once(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run_once(args: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let frames = if args.tso {
        Frames::Tso
    } else {
        Frames::Plain(args.size)
    };
    let mut guests = args
        .sockets
        .iter()
        .enumerate()
        .map(|(i, s)| Guest::connect(s, i, args.macs, args.queue_size, frames))
        .collect::<Result<Vec<_>, _>>()?;
    for g in &mut guests {
        g.announce()?;
    }
    std::thread::sleep(Duration::from_millis(100));
    for g in &mut guests {
        g.receive()?;
    }
    if let Some(&cpu) = args.cpus.first() {
        tests::load::pin_to_cpu(cpu)?;
    }
    if args.latency {
        let [a, b, ..] = &mut guests[..] else {
            return Err("--latency needs two sockets".into());
        };
        a.prepare(b, frames, 1)?;
        b.prepare(a, frames, 1)?;
        let spec = LatencySpec {
            samples: args.samples,
            warmup: args.samples / 10,
            timeout: Duration::from_secs(1),
        };
        let l = run::latency(a, b, &spec)?;
        let us = |q| report::fixed(l.quantile(q).map(|d| d.as_secs_f64() * 1e6), 1);
        return Ok(format!(
            "round trip p50 {} us, p99 {} us, {} samples, {} lost",
            us(0.5),
            us(0.99),
            l.round_trips.len(),
            l.lost
        ));
    }
    for pair in guests.chunks_mut(2) {
        if let [tx, rx] = pair {
            tx.prepare(rx, frames, args.flows)?;
        }
    }
    let spec = ThroughputSpec {
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        threads: args.threads,
        cpus: args.cpus.clone(),
        backend: args.backend_pid,
    };
    let t = run::throughput(&mut guests, &spec)?;
    let mhz = proc::cpu_mhz();
    let backend = match t.backend_ns_per_frame() {
        Some(ns) => format!(
            ", backend {ns:.0} ns/frame ({} cycles)",
            report::fixed(mhz.map(|m| ns * m / 1e3), 0)
        ),
        None => String::new(),
    };
    Ok(format!(
        "received {} frames in {:.2} s: {} frames/s, {:.2} Gbit/s, loss {:.3}% ({} sent, {} \
         received){backend}, generator {} ns/frame ({} kicks per 1000 frames, idle {:.1}% of its \
         time)",
        t.frames,
        t.elapsed.as_secs_f64(),
        report::mega(Some(t.fps())),
        t.gbps(),
        t.loss() * 100.0,
        t.sent,
        t.received,
        report::fixed(t.generator_ns_per_frame(), 0),
        report::fixed(t.kicks_per_1000(), 1),
        t.idle_share().unwrap_or(0.0) * 100.0,
    ))
}
