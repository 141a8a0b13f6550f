//! `bench`: the standard benchmark set against the daemon and, when dpdk-testpmd is installed,
//! against testpmd's vhost PMD in io-forward mode as the reference device, under the same load
//! generator in the same run. Prints Markdown tables with our figures as ratios to testpmd's.
//!
//! ```text
//! cargo run --release -p tests --bin bench                  # the whole set, median of 3 runs
//! cargo run --release -p tests --bin bench -- --smoke       # every row once, briefly (CI)
//! cargo run --release -p tests --bin bench -- --only 64B    # rows whose name contains "64B"
//! ```
//! See docs/performance.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tests::load::backend::{Backend, Cpus, Device};
use tests::load::guest::{Frames, Guest};
use tests::load::report::{fixed, median, mega, ratio, Table};
use tests::load::run::{self, LatencySpec, Throughput, ThroughputSpec};
use tests::load::{pin_to_cpu, proc};

/// The standard benchmark set: VM-to-VM 64 B and 1500 B over 2 and 16 ports (no policy,
/// allow-all, a 24-rule security group), TSO bulk, latency, 256 ports; against the daemon and
/// testpmd's vhost PMD (io-forward) as the reference.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of traffic before each measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Runs per row (the median is printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Every row once, for a fraction of a second: shows the command works.
    #[arg(long)]
    smoke: bool,
    /// Only rows whose name contains one of these.
    #[arg(long)]
    only: Vec<String>,
    /// Skip the reference device even if dpdk-testpmd is installed.
    #[arg(long)]
    no_testpmd: bool,
    /// The daemon binary (default: build it with cargo, release mode).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// CPU of the load generator (and of testpmd's idle main thread).
    #[arg(long, default_value_t = 0)]
    generator_cpu: usize,
    /// CPU of the device under test (the whole daemon; testpmd's forwarding core).
    #[arg(long, default_value_t = 1)]
    device_cpu: usize,
    /// Flows per sender.
    #[arg(long, default_value_t = 256)]
    flows: usize,
    /// MACs per guest.
    #[arg(long, default_value_t = 4)]
    macs: usize,
    /// Entries per virtqueue.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
}

/// A policy set-up of the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    None,
    AllowAll,
    SecurityGroup24,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::AllowAll => "allow-all",
            Policy::SecurityGroup24 => "24-rule security group",
        }
    }

    /// The configuration lines that load the policy, or why it cannot run here.
    fn config(self) -> Result<String, String> {
        match self {
            Policy::None => Ok(String::new()),
            Policy::AllowAll | Policy::SecurityGroup24 => Err(
                "bench does not load policy modules into the daemon yet (the daemon runs \
                 [[policy]] entries since dc054f6; bench's rows do not build and load them)"
                    .into(),
            ),
        }
    }
}

/// One throughput row.
#[derive(Clone, Debug)]
struct Row {
    name: String,
    ports: usize,
    frames: Frames,
    policy: Policy,
}

/// What a row measured over its runs.
#[derive(Debug, Default)]
struct Runs {
    ours: Vec<Throughput>,
    reference: Vec<Throughput>,
    skipped: Option<String>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.smoke {
        args.duration = 0.3;
        args.warmup = 0.2;
        args.runs = 1;
        args.samples = 500;
    }
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("bench: {msg}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for ports in [2, 16] {
        for size in [64, 1500] {
            for policy in [Policy::None, Policy::AllowAll, Policy::SecurityGroup24] {
                rows.push(Row {
                    name: format!("{size}B VM-to-VM, {ports} ports"),
                    ports,
                    frames: Frames::Plain(size),
                    policy,
                });
            }
        }
    }
    rows.push(Row {
        name: "TSO 64 KiB segments, 2 ports".into(),
        ports: 2,
        frames: Frames::Tso,
        policy: Policy::None,
    });
    rows.push(Row {
        name: "64B VM-to-VM, 256 ports".into(),
        ports: 256,
        frames: Frames::Plain(64),
        policy: Policy::None,
    });
    rows
}

fn bench(args: &Args) -> Result<(), BoxError> {
    let cpus = (std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2).then_some(Cpus {
        main: args.generator_cpu,
        datapath: args.device_cpu,
    });
    let binary = match &args.daemon {
        Some(p) => p.clone(),
        None => tests::daemon::binary()?.to_path_buf(),
    };
    let testpmd = !args.no_testpmd && tests::testpmd::installed();
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.contains(o));
    print_machine(args, testpmd);
    if cpus.is_some() {
        pin_to_cpu(args.generator_cpu)?;
    }

    let rows: Vec<Row> = rows().into_iter().filter(|r| wanted(&r.name)).collect();
    let mut results: Vec<Runs> = rows.iter().map(|_| Runs::default()).collect();
    let latency_wanted = wanted("latency");
    let mut latency: (Vec<run::Latency>, Vec<run::Latency>) = (Vec::new(), Vec::new());
    for run_no in 0..args.runs {
        eprintln!("bench: run {} of {}", run_no + 1, args.runs);
        for (row, res) in rows.iter().zip(&mut results) {
            let extra = match row.policy.config() {
                Ok(extra) => extra,
                Err(why) => {
                    res.skipped = Some(why);
                    continue;
                }
            };
            let ours = Device::Daemon {
                binary: binary.clone(),
                extra_config: extra,
            };
            res.ours.push(throughput(args, &ours, row, cpus)?);
            // The reference device runs once per size and port count (no policies there).
            let first_of_kind = row.policy == Policy::None;
            if testpmd && first_of_kind && row.ports <= 16 {
                let reference = Device::Testpmd {
                    tso: row.frames == Frames::Tso,
                };
                res.reference.push(throughput(args, &reference, row, cpus)?);
            }
        }
        if latency_wanted {
            let ours = Device::Daemon {
                binary: binary.clone(),
                extra_config: String::new(),
            };
            latency.0.push(latency_run(args, &ours, cpus)?);
            if testpmd {
                latency
                    .1
                    .push(latency_run(args, &Device::Testpmd { tso: false }, cpus)?);
            }
        }
    }
    print_throughput(&rows, &mut results);
    if latency_wanted {
        print_latency(&latency.0, &latency.1);
    }
    if wanted("memory") || wanted("256") {
        print_memory(args, &binary, cpus)?;
    }
    Ok(())
}

/// Connects a guest per port, announces their MACs, and prepares pair k's frames.
fn guests(
    args: &Args,
    backend: &Backend,
    frames: Frames,
    flows: usize,
) -> Result<Vec<Guest>, BoxError> {
    let mut guests = backend
        .sockets()
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
    for pair in guests.chunks_mut(2) {
        if let [tx, rx] = pair {
            tx.prepare(rx, frames, flows)?;
        }
    }
    Ok(guests)
}

fn throughput(
    args: &Args,
    device: &Device,
    row: &Row,
    cpus: Option<Cpus>,
) -> Result<Throughput, BoxError> {
    let backend = Backend::start(device, row.ports, cpus)?;
    let mut guests = guests(args, &backend, row.frames, args.flows)?;
    let spec = ThroughputSpec {
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        threads: 1,
        cpus: cpus.map(|c| vec![c.main]).unwrap_or_default(),
        backend: Some(backend.pid()),
    };
    let t = run::throughput(&mut guests, &spec).map_err(|e| {
        format!(
            "{} on {}: {e}\n{}",
            row.name,
            backend.name(),
            backend.log_tail()
        )
    })?;
    eprintln!(
        "bench:   {} / {} / {}: {} frames/s, {:.2} Gbit/s, {} ns/frame",
        row.name,
        row.policy.name(),
        backend.name(),
        mega(Some(t.fps())),
        t.gbps(),
        fixed(t.backend_ns_per_frame(), 0)
    );
    Ok(t)
}

fn latency_run(args: &Args, device: &Device, cpus: Option<Cpus>) -> Result<run::Latency, BoxError> {
    let backend = Backend::start(device, 2, cpus)?;
    let mut guests = guests(args, &backend, Frames::Plain(64), 1)?;
    let [a, b] = &mut guests[..] else {
        return Err("two guests expected".into());
    };
    b.prepare(a, Frames::Plain(64), 1)?;
    let spec = LatencySpec {
        samples: args.samples,
        warmup: args.samples / 10,
        timeout: Duration::from_secs(1),
    };
    Ok(run::latency(a, b, &spec)?)
}

fn print_machine(args: &Args, testpmd: bool) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Machine: {model}, {cpus} CPUs, {} MHz; load average {} at start.",
        fixed(proc::cpu_mhz(), 0),
        fixed(proc::load_average(), 2)
    );
    println!(
        "Runs: median of {} x {} s (after {} s warm-up); generator on CPU {}, device on CPU {}; \
         {} flows per sender, {} MACs per guest, {}-entry queues. Reference: {}.",
        args.runs,
        args.duration,
        args.warmup,
        args.generator_cpu,
        args.device_cpu,
        args.flows,
        args.macs,
        args.queue_size,
        if testpmd {
            "dpdk-testpmd vhost PMD, io-forward, one forwarding core"
        } else {
            "none (dpdk-testpmd not installed or --no-testpmd)"
        }
    );
    println!();
}

/// Medians of one side's runs: frames/s, Gbit/s, loss, ns per frame.
fn medians(runs: &[Throughput]) -> [Option<f64>; 4] {
    let m = |f: &dyn Fn(&Throughput) -> Option<f64>| {
        median(&runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    [
        m(&|t| Some(t.fps())),
        m(&|t| Some(t.gbps())),
        m(&|t| Some(t.loss())),
        m(&|t| t.backend_ns_per_frame()),
    ]
}

fn print_throughput(rows: &[Row], results: &mut [Runs]) {
    let mhz = proc::cpu_mhz();
    let cycles = |ns: Option<f64>| match (ns, mhz) {
        (Some(ns), Some(mhz)) => format!("{ns:.0} ns ({:.0} cycles)", ns * mhz / 1e3),
        (Some(ns), None) => format!("{ns:.0} ns"),
        _ => "-".into(),
    };
    let mut table = Table::new([
        "test",
        "policy",
        "frames/s",
        "Gbit/s",
        "loss",
        "device CPU/frame",
        "testpmd frames/s",
        "testpmd CPU/frame",
        "rate vs testpmd",
        "CPU/frame vs testpmd",
    ]);
    let mut notes: Vec<String> = Vec::new();
    // The reference runs of a size and port count are kept on its no-policy row.
    let mut reference: Option<(String, [Option<f64>; 4])> = None;
    for (row, res) in rows.iter().zip(results.iter()) {
        if !res.reference.is_empty() {
            reference = Some((row.name.clone(), medians(&res.reference)));
        }
        let refs = match &reference {
            Some((name, m)) if *name == row.name => *m,
            _ => [None; 4],
        };
        if let Some(why) = &res.skipped {
            if !notes.contains(why) {
                notes.push(why.clone());
            }
            let n = notes.iter().position(|n| n == why).unwrap_or(0) + 1;
            table.row(vec![
                row.name.clone(),
                row.policy.name().into(),
                format!("not run [{n}]"),
            ]);
            continue;
        }
        let [fps, gbps, loss, ns] = medians(&res.ours);
        table.row(vec![
            row.name.clone(),
            row.policy.name().into(),
            mega(fps),
            fixed(gbps, 2),
            loss.map_or("-".into(), |l| format!("{:.2}%", l * 100.0)),
            cycles(ns),
            mega(refs[0]),
            cycles(refs[3]),
            ratio(fps, refs[0]),
            ratio(ns, refs[3]),
        ]);
    }
    println!("Throughput (received frames; Gbit/s of Ethernet frames without FCS):\n");
    println!("{}", table.render());
    for (i, note) in notes.iter().enumerate() {
        println!("[{}] {note}", i + 1);
    }
    if !notes.is_empty() {
        println!();
    }
}

fn print_latency(ours: &[run::Latency], reference: &[run::Latency]) {
    let q = |runs: &[run::Latency], q: f64| {
        median(
            &runs
                .iter()
                .filter_map(|l| l.quantile(q))
                .map(|d| d.as_secs_f64() * 1e6)
                .collect::<Vec<_>>(),
        )
    };
    let lost = |runs: &[run::Latency]| runs.iter().map(|l| l.lost).sum::<usize>();
    let mut table = Table::new(["device", "round trip p50", "p99", "lost"]);
    table.row(vec![
        "vhost-net-backend".into(),
        format!("{} us", fixed(q(ours, 0.5), 1)),
        format!("{} us", fixed(q(ours, 0.99), 1)),
        lost(ours).to_string(),
    ]);
    if !reference.is_empty() {
        table.row(vec![
            "testpmd io-forward".into(),
            format!("{} us", fixed(q(reference, 0.5), 1)),
            format!("{} us", fixed(q(reference, 0.99), 1)),
            lost(reference).to_string(),
        ]);
    }
    println!("Latency (64B request/response between two guests through the device and back, one frame in flight):\n");
    println!("{}", table.render());
}

/// The daemon's memory with no port, with 256 ports, and with a guest on each (idle).
fn print_memory(args: &Args, binary: &std::path::Path, cpus: Option<Cpus>) -> Result<(), BoxError> {
    const PORTS: usize = 256;
    let device = Device::Daemon {
        binary: binary.to_path_buf(),
        extra_config: String::new(),
    };
    let settle = || std::thread::sleep(Duration::from_millis(300));
    let empty = Backend::start(&device, 0, cpus)?;
    settle();
    let base = proc::memory(empty.pid())?;
    drop(empty);
    let backend = Backend::start(&device, PORTS, cpus)?;
    settle();
    let configured = proc::memory(backend.pid())?;
    let guests = backend
        .sockets()
        .iter()
        .enumerate()
        .map(|(i, s)| Guest::connect(s, i, 1, args.queue_size, Frames::Plain(64)))
        .collect::<Result<Vec<_>, _>>()?;
    settle();
    let connected = proc::memory(backend.pid())?;
    let threads = proc::threads(backend.pid())?;
    drop(guests);
    let per = |m: u64, b: u64| format!("{:.0} KiB", m.saturating_sub(b) as f64 / PORTS as f64);
    let mut table = Table::new([
        "daemon",
        "RSS",
        "anonymous",
        "per port (RSS)",
        "per port (anonymous)",
    ]);
    table.row(vec![
        "no port".into(),
        format!("{} KiB", base.rss),
        format!("{} KiB", base.anonymous),
        "-".into(),
        "-".into(),
    ]);
    table.row(vec![
        format!("{PORTS} ports, no guest"),
        format!("{} KiB", configured.rss),
        format!("{} KiB", configured.anonymous),
        per(configured.rss, base.rss),
        per(configured.anonymous, base.anonymous),
    ]);
    table.row(vec![
        format!("{PORTS} ports, an idle guest on each"),
        format!("{} KiB", connected.rss),
        format!("{} KiB", connected.anonymous),
        per(connected.rss, base.rss),
        per(connected.anonymous, base.anonymous),
    ]);
    println!(
        "Memory ({PORTS} ports in one daemon, {threads} threads; RSS includes the guest memory \
         pages the daemon touched, anonymous is its own heap and stacks):\n"
    );
    println!("{}", table.render());
    Ok(())
}
