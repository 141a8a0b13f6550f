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

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tests::load::backend::{Backend, Cpus, Device};
use tests::load::cores;
use tests::load::drops::Drops;
use tests::load::guest::{Frames, Guest};
use tests::load::report::{fixed, median, mega, ratio, Table};
use tests::load::run::{self, LatencySpec, Throughput, ThroughputSpec};
use tests::load::traffic;
use tests::load::{pin_to_cpu, proc};
use vhost_net_backend::cli::error_chain;
use vhost_net_backend::control::render::count;

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
    /// Microseconds the daemon's workers poll dry queues before they sleep (its `--poll-us`;
    /// 0, the default: they sleep at once).
    #[arg(long, default_value_t = 0)]
    poll_us: u32,
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

    /// The daemon's `[[policy]]` entry for a device with `ports` ports (none for no policy),
    /// with the module built for wasm32 on first use; or why it cannot be built.
    fn config(self, ports: usize) -> Result<String, String> {
        let (krate, config) = match self {
            Policy::None => return Ok(String::new()),
            Policy::AllowAll => ("allow-all", String::new()),
            Policy::SecurityGroup24 => ("security-group", security_group(ports)),
        };
        let module = tests::policy_wasm::policy_wasm_file(krate)?;
        // Debug formatting of ASCII text gives a TOML basic string (\n, \", \\ escapes).
        Ok(format!(
            "\n[[policy]]\nname = \"{krate}\"\nmodule = {:?}\nconfig = {config:?}\n",
            module.display().to_string()
        ))
    }
}

/// A security group of 24 rules over every port that lets the generator's UDP flows through
/// only at the last rule of each direction: a flow's first frame walks 12 egress rules at its
/// sender's port and 12 ingress rules at its receiver's (the rest of the flow's frames use the
/// verdict cached in its conntrack entry, as in a real deployment).
fn security_group(ports: usize) -> String {
    let mut config = String::from("group bench ports");
    for p in 0..ports {
        config.push_str(&format!(" {p}"));
    }
    config.push('\n');
    for direction in ["egress", "ingress"] {
        // Same protocol and remote prefix, other destination ports: each rule is read whole.
        for i in 0..11 {
            config.push_str(&format!("{direction} ipv4 udp {} 10.0.0.0/8\n", 2000 + i));
        }
        config.push_str(&format!(
            "{direction} ipv4 udp {}-{} 10.0.0.0/8\n",
            traffic::FIRST_DST_PORT,
            traffic::FIRST_DST_PORT + traffic::DST_PORTS - 1
        ));
    }
    config
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
    /// The daemon's drops over our runs' windows, summed.
    drops: Drops,
    reference: Vec<Throughput>,
    /// Each run's rate and the CPUs' round trips around it, ours then testpmd's, in run order.
    spread: Vec<String>,
    /// The round trips around each of our runs and testpmd's.
    ours_cores: Vec<[Option<Duration>; 2]>,
    reference_cores: Vec<[Option<Duration>; 2]>,
    skipped: Option<String>,
}

/// What one throughput run measured.
struct Measured {
    throughput: Throughput,
    /// The daemon's drops in the window (none for testpmd, which has no control socket).
    drops: Option<Drops>,
    /// The round trip of a cache line between the generator's and the device's CPUs just
    /// before the device started and just after it stopped.
    cores: [Option<Duration>; 2],
}

impl Measured {
    /// `2.91 M (84/197 ns)`: the rate and the round trips around the run.
    fn brief(&self) -> String {
        let ns = |d: Option<Duration>| d.map_or("-".into(), |d| d.as_nanos().to_string());
        format!(
            "{} ({}/{} ns)",
            mega(Some(self.throughput.fps())),
            ns(self.cores[0]),
            ns(self.cores[1])
        )
    }
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
            eprintln!("bench: {}", error_chain(e.as_ref()));
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
            let extra = match row.policy.config(row.ports) {
                Ok(extra) => extra,
                Err(why) => {
                    res.skipped = Some(why);
                    continue;
                }
            };
            let ours = Device::Daemon {
                binary: binary.clone(),
                extra_config: extra,
                poll_us: args.poll_us,
            };
            let m = throughput(args, &ours, row, cpus)?;
            res.spread.push(m.brief());
            res.ours_cores.push(m.cores);
            res.ours.push(m.throughput);
            res.drops.add(&m.drops.unwrap_or_default());
            // The reference device runs once per size and port count (no policies there).
            let first_of_kind = row.policy == Policy::None;
            if testpmd && first_of_kind && row.ports <= 16 {
                let reference = Device::Testpmd {
                    tso: row.frames == Frames::Tso,
                };
                let m = throughput(args, &reference, row, cpus)?;
                res.spread.push(format!("testpmd {}", m.brief()));
                res.reference_cores.push(m.cores);
                res.reference.push(m.throughput);
            }
        }
        if latency_wanted {
            let ours = Device::Daemon {
                binary: binary.clone(),
                extra_config: String::new(),
                poll_us: args.poll_us,
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
    if wanted("256 ports") {
        many_ports(args, &binary, cpus)?;
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
    let mut guests = connect(args, backend, frames)?;
    start_traffic(&mut guests, frames, flows)?;
    Ok(guests)
}

/// Connects a guest per port.
fn connect(args: &Args, backend: &Backend, frames: Frames) -> Result<Vec<Guest>, BoxError> {
    Ok(backend
        .sockets()
        .iter()
        .enumerate()
        .map(|(i, s)| Guest::connect(s, i, args.macs, args.queue_size, frames))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Announces the guests' MACs and prepares pair k's frames.
fn start_traffic(guests: &mut [Guest], frames: Frames, flows: usize) -> Result<(), BoxError> {
    for g in guests.iter_mut() {
        g.announce()?;
    }
    std::thread::sleep(Duration::from_millis(100));
    for g in guests.iter_mut() {
        g.receive()?;
    }
    for pair in guests.chunks_mut(2) {
        if let [tx, rx] = pair {
            tx.prepare(rx, frames, flows)?;
        }
    }
    Ok(())
}

/// A throughput run of the generator (one thread, on the generator's CPU) against `backend`.
fn spec(args: &Args, cpus: Option<Cpus>, backend: &Backend) -> ThroughputSpec {
    ThroughputSpec {
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        threads: 1,
        cpus: cpus.map(|c| vec![c.main]).unwrap_or_default(),
        backend: Some(backend.pid()),
    }
}

/// How long each round trip probe between the generator's and the device's CPUs takes.
const PROBE: Duration = Duration::from_millis(50);

/// The round trip of a cache line between the generator's and the device's CPUs (none
/// without pinning).
fn probe(cpus: Option<Cpus>) -> Option<Duration> {
    cpus.and_then(|c| cores::round_trip(c.main, c.datapath, PROBE))
}

/// One throughput run of `row` on a fresh `device`, with the CPUs probed before the device
/// starts and after it stops (a polling device would take the probe's CPU).
fn throughput(
    args: &Args,
    device: &Device,
    row: &Row,
    cpus: Option<Cpus>,
) -> Result<Measured, BoxError> {
    let before = probe(cpus);
    let backend = Backend::start(device, row.ports, cpus)?;
    let mut guests = guests(args, &backend, row.frames, args.flows)?;
    let spec = spec(args, cpus, &backend);
    let (t, drops) = measure(&mut guests, &spec, &backend).map_err(|e| {
        format!(
            "{} on {}: {e}\n{}",
            row.name,
            backend.name(),
            backend.log_tail()
        )
    })?;
    let name = backend.name();
    drop(guests);
    drop(backend);
    let m = Measured {
        throughput: t,
        drops,
        cores: [before, probe(cpus)],
    };
    let device = t.backend_switches.unwrap_or_default();
    eprintln!(
        "bench:   {} / {} / {name}: {:.2} Gbit/s, {} ns/frame, loss {}{}; device threads slept \
         {} times, preempted {}; generator preempted {}, kicked {} per 1000 frames, idle {} of its \
         time; frames/s (CPU round trip before/after) {}",
        row.name,
        row.policy.name(),
        t.gbps(),
        fixed(t.backend_ns_per_frame(), 0),
        percent(Some(t.loss())),
        m.drops
            .as_ref()
            .map_or(String::new(), |d| format!(", drops: {}", d.render())),
        count(device.voluntary),
        count(device.involuntary),
        count(t.generator_switches.involuntary),
        fixed(t.kicks_per_1000(), 1),
        percent(t.idle_share()),
        m.brief()
    );
    Ok(m)
}

/// A throughput run against `backend`, with the daemon's drop counters read as the window
/// starts and after its drain.
fn measure(
    guests: &mut [Guest],
    spec: &ThroughputSpec,
    backend: &Backend,
) -> Result<(Throughput, Option<Drops>), BoxError> {
    let Some(control) = backend.control() else {
        return Ok((run::throughput(guests, spec)?, None));
    };
    let mut before = None;
    let t = run::throughput_observed(guests, spec, || before = Some(Drops::read(control)))?;
    let before = before.ok_or("the run did not reach its window")??;
    Ok((t, Some(Drops::read(control)?.since(&before))))
}

/// A share as a percentage with two decimals, or "-".
fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |l| format!("{:.2}%", l * 100.0))
}

/// Where the host had the generator's and the device's CPUs around a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Both round trips within 1.5 times the shortest of the bench: a shared cache.
    Near,
    /// Both longer.
    Far,
}

impl Placement {
    /// The placement of a run probed `cores`, `None` when it moved or was not probed.
    fn of(cores: [Option<Duration>; 2], shortest: Duration) -> Option<Placement> {
        let near = |d: Option<Duration>| d.map(|d| d.as_secs_f64() <= 1.5 * shortest.as_secs_f64());
        match (near(cores[0])?, near(cores[1])?) {
            (true, true) => Some(Placement::Near),
            (false, false) => Some(Placement::Far),
            _ => None,
        }
    }
}

/// Per placement, the median frames/s of our runs and of testpmd's (`reference_runs`, the row
/// of the same size and port count) and their ratio:
/// `near: 3.10 M (2) vs testpmd 3.40 M (1), 0.91x; far: ...`.
fn by_placement(res: &Runs, reference_runs: Option<&Runs>, shortest: Option<Duration>) -> String {
    let Some(shortest) = shortest else {
        return "no placement probed".into();
    };
    let rate = |runs: &[Throughput], cores: &[[Option<Duration>; 2]], p: Placement| {
        let fps: Vec<f64> = runs
            .iter()
            .zip(cores)
            .filter(|(_, c)| Placement::of(**c, shortest) == Some(p))
            .map(|(t, _)| t.fps())
            .collect();
        (median(&fps), fps.len())
    };
    [(Placement::Near, "near"), (Placement::Far, "far")]
        .iter()
        .map(|&(p, name)| {
            let (ours, n) = rate(&res.ours, &res.ours_cores, p);
            let mut text = format!("{name}: {} ({n})", mega(ours));
            if let Some(r) = reference_runs {
                let (reference, m) = rate(&r.reference, &r.reference_cores, p);
                let _ = write!(
                    text,
                    " vs testpmd {} ({m}), {}",
                    mega(reference),
                    ratio(ours, reference)
                );
            }
            text
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The median over rounds of `f(ours) / f(theirs)` for the runs of the same round (the same
/// index in both lists).
fn paired(
    ours: &[Throughput],
    theirs: &[Throughput],
    f: impl Fn(&Throughput) -> Option<f64>,
) -> Option<f64> {
    let ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .filter_map(|(a, b)| Some(f(a)? / f(b)?))
        .collect();
    median(&ratios)
}

/// Frames the runs sent in their windows and lost (sent, never received), summed.
fn sent_and_lost(runs: &[Throughput]) -> (u64, u64) {
    runs.iter().fold((0, 0), |(s, l), t| {
        (s + t.sent, l + t.sent.saturating_sub(t.received))
    })
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
    if args.poll_us > 0 {
        println!(
            "The daemon's workers poll dry queues for {} us before they sleep (--poll-us).",
            args.poll_us
        );
    }
    println!();
}

/// CPU time per frame, and in cycles at `mhz`.
fn cycles(ns: Option<f64>, mhz: Option<f64>) -> String {
    match (ns, mhz) {
        (Some(ns), Some(mhz)) => format!("{ns:.0} ns ({:.0} cycles)", ns * mhz / 1e3),
        (Some(ns), None) => format!("{ns:.0} ns"),
        _ => "-".into(),
    }
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
    let cycles = |ns: Option<f64>| cycles(ns, mhz);
    let mut table = Table::new([
        "test",
        "policy",
        "frames/s",
        "Gbit/s",
        "loss",
        "device CPU/frame",
        "testpmd frames/s",
        "testpmd loss",
        "testpmd CPU/frame",
        "rate vs testpmd",
        "CPU/frame vs testpmd",
        "paired: rate",
        "paired: CPU/frame",
    ]);
    let mut notes: Vec<String> = Vec::new();
    let mut drops: Vec<String> = Vec::new();
    let shortest = results
        .iter()
        .flat_map(|r| r.ours_cores.iter().chain(&r.reference_cores))
        .flatten()
        .flatten()
        .min()
        .copied();
    // The reference runs of a size and port count are kept on its no-policy row.
    let mut reference: Option<(String, [Option<f64>; 4], &Runs)> = None;
    let mut allow_all: Option<(&str, &Runs)> = None;
    for (row, res) in rows.iter().zip(results.iter()) {
        if row.policy == Policy::AllowAll {
            allow_all = Some((&row.name, res));
        }
        if !res.reference.is_empty() {
            reference = Some((row.name.clone(), medians(&res.reference), res));
        }
        let (refs, reference_runs) = match &reference {
            Some((name, m, runs)) if *name == row.name => (*m, Some(*runs)),
            _ => ([None; 4], None),
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
        let theirs = reference_runs.map_or(&[][..], |r| &r.reference);
        let paired_fps = paired(&res.ours, theirs, |t| Some(t.fps()));
        let paired_ns = paired(&res.ours, theirs, Throughput::backend_ns_per_frame);
        table.row(vec![
            row.name.clone(),
            row.policy.name().into(),
            mega(fps),
            fixed(gbps, 2),
            percent(loss),
            cycles(ns),
            mega(refs[0]),
            percent(refs[2]),
            cycles(refs[3]),
            ratio(fps, refs[0]),
            ratio(ns, refs[3]),
            ratio(paired_fps, Some(1.0)),
            ratio(paired_ns, Some(1.0)),
        ]);
        let mut against_allow_all = String::new();
        if let Some((_, aa)) = allow_all.filter(|(name, _)| *name == row.name) {
            if row.policy == Policy::SecurityGroup24 {
                let ns = paired(&res.ours, &aa.ours, Throughput::backend_ns_per_frame);
                against_allow_all = format!(
                    " CPU/frame against allow-all's run of the same round: {}.",
                    ratio(ns, Some(1.0))
                );
            }
        }
        let (sent, lost) = sent_and_lost(&res.ours);
        drops.push(format!(
            "- {} / {}: lost {} of {} sent; drops: {}. Runs: {}. By \
             placement: {}.{}",
            row.name,
            row.policy.name(),
            count(lost),
            count(sent),
            res.drops.render(),
            res.spread.join(", "),
            by_placement(res, reference_runs, shortest),
            against_allow_all
        ));
    }
    println!("Throughput (received frames; Gbit/s of Ethernet frames without FCS):\n");
    println!("{}", table.render());
    if !drops.is_empty() {
        println!(
            "The daemon's drops in the windows by port and reason (its counters through the \
             control socket), summed over the runs; then each run's frames/s with the round \
             trip of a cache line between the generator's and the device's CPUs just before \
             and after it (the host places the virtual CPUs: far shorter when they share a \
             last-level cache); then the median frames/s of the runs that were near (both \
             round trips within 1.5x the bench's shortest) and far (both longer), ours and \
             testpmd's. The paired columns above are the median of each round's ratio to \
             testpmd's run of the same round (run next to it, so a change in the host's load \
             between rounds moves both); the security group's rows also give its CPU per \
             frame against allow-all's run of the same round:\n"
        );
        println!("{}\n", drops.join("\n"));
    }
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

/// Ports of the daemon in the "256 ports" section.
const MANY_PORTS: usize = 256;
/// Sender/receiver pairs with traffic in that section (guests 0..2k); the other ports have a
/// guest connected that sends nothing.
const ACTIVE_PAIRS: usize = 2;

/// One daemon with [`MANY_PORTS`] ports: its memory with no port, with the ports and no guest,
/// and with an idle guest connected on each port (per port: the difference to no port, divided
/// by the ports); then 64B traffic on [`ACTIVE_PAIRS`] pairs while every other port's guest
/// stays connected and idle, `args.runs` times on the same daemon.
fn many_ports(args: &Args, binary: &std::path::Path, cpus: Option<Cpus>) -> Result<(), BoxError> {
    let device = Device::Daemon {
        binary: binary.to_path_buf(),
        extra_config: String::new(),
        poll_us: args.poll_us,
    };
    let settle = || std::thread::sleep(Duration::from_millis(300));
    let empty = Backend::start(&device, 0, cpus)?;
    settle();
    let base = proc::memory(empty.pid())?;
    drop(empty);
    let backend = Backend::start(&device, MANY_PORTS, cpus)?;
    settle();
    let configured = proc::memory(backend.pid())?;
    let mut guests = connect(args, &backend, Frames::Plain(64))?;
    settle();
    let connected = proc::memory(backend.pid())?;
    start_traffic(
        &mut guests[..2 * ACTIVE_PAIRS],
        Frames::Plain(64),
        args.flows,
    )?;
    let threads = proc::threads(backend.pid())?;
    let spec = spec(args, cpus, &backend);
    let mut runs = Vec::new();
    let mut drops = Drops::default();
    for run_no in 0..args.runs {
        let (t, d) = measure(&mut guests[..2 * ACTIVE_PAIRS], &spec, &backend)
            .map_err(|e| format!("{MANY_PORTS} ports: {e}\n{}", backend.log_tail()))?;
        let d = d.unwrap_or_default();
        eprintln!(
            "bench:   {MANY_PORTS} ports, {ACTIVE_PAIRS} pairs active (run {}): {} frames/s, \
             {} ns/frame, loss {}, drops: {}",
            run_no + 1,
            mega(Some(t.fps())),
            fixed(t.backend_ns_per_frame(), 0),
            percent(Some(t.loss())),
            d.render()
        );
        drops.add(&d);
        runs.push(t);
    }
    let after = proc::memory(backend.pid())?;
    drop(guests);
    drop(backend);

    let kib = |v: u64| format!("{v} KiB");
    let per = |m: u64, b: u64| format!("{:.1} KiB", m.saturating_sub(b) as f64 / MANY_PORTS as f64);
    let mut table = Table::new([
        "daemon",
        "RSS",
        "PSS",
        "anonymous",
        "per port: RSS",
        "PSS",
        "anonymous",
    ]);
    let mut row = |name: String, m: proc::Memory, per_port: bool| {
        let deltas = if per_port {
            vec![
                per(m.rss, base.rss),
                per(m.pss, base.pss),
                per(m.anonymous, base.anonymous),
            ]
        } else {
            vec!["-".into(), "-".into(), "-".into()]
        };
        let mut cells = vec![name, kib(m.rss), kib(m.pss), kib(m.anonymous)];
        cells.extend(deltas);
        table.row(cells);
    };
    row("no port".into(), base, false);
    row(format!("{MANY_PORTS} ports, no guest"), configured, true);
    row(
        format!("{MANY_PORTS} ports, an idle guest connected on each"),
        connected,
        true,
    );
    row(
        format!("after the runs ({ACTIVE_PAIRS} pairs active)"),
        after,
        true,
    );
    println!(
        "{MANY_PORTS} ports in one daemon ({threads} threads). Memory from \
         /proc/PID/smaps_rollup; per port = (figure - no port) / {MANY_PORTS}. RSS includes the \
         guest memory pages the daemon touched (shared with the guests; PSS counts half of \
         them), anonymous is the daemon's own heap and stacks:\n"
    );
    println!("{}", table.render());
    let [fps, gbps, loss, ns] = medians(&runs);
    let mhz = proc::cpu_mhz();
    let mut table = Table::new(["traffic", "frames/s", "Gbit/s", "loss", "device CPU/frame"]);
    table.row(vec![
        format!(
            "64B, {ACTIVE_PAIRS} pairs sending ({} ports), {} ports connected and idle",
            2 * ACTIVE_PAIRS,
            MANY_PORTS - 2 * ACTIVE_PAIRS
        ),
        mega(fps),
        fixed(gbps, 2),
        percent(loss),
        cycles(ns, mhz),
    ]);
    println!(
        "Traffic among the {MANY_PORTS} ports (median of {} runs on the same daemon):\n",
        args.runs
    );
    println!("{}", table.render());
    let (sent, lost) = sent_and_lost(&runs);
    println!(
        "The daemon's drops in the windows, summed over the runs: lost {} of {} sent; drops: {}\n",
        count(lost),
        count(sent),
        drops.render()
    );
    Ok(())
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    #[test]
    fn a_run_is_near_or_far_only_when_both_probes_agree() {
        let ns = |n| Some(Duration::from_nanos(n));
        let shortest = Duration::from_nanos(80);
        assert_eq!(
            Placement::of([ns(85), ns(119)], shortest),
            Some(Placement::Near)
        );
        assert_eq!(
            Placement::of([ns(200), ns(450)], shortest),
            Some(Placement::Far)
        );
        assert_eq!(Placement::of([ns(85), ns(450)], shortest), None);
        assert_eq!(Placement::of([None, ns(85)], shortest), None);
    }
}
