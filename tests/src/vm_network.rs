//! Guests on one network of the daemon. [`Network::start`] starts the daemon with one port per
//! NIC of the guests (each port configured as the NIC is: socket role, queue pairs, MTU), waits
//! until it listens, then boots the guests. Guest `i` is `vm{i}` with MAC
//! `52:54:00:00:00:{i+1}`, address `192.0.2.{i+1}/24` and socket `vm{i}.sock` in the test's
//! scratch directory.
//!
//! [`two_guest_traffic`] is the traffic scenario the variants share: two guests ping each
//! other and run iperf3 TCP both ways, and report their counters; the daemon's per-port
//! counters ([`Network::print_counters`]) are in the test's output, shown when it fails.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control_cli;
use crate::daemon::{Daemon, DaemonError};
use crate::e2e::E2e;
use crate::guest_script::{self, net_script};
use crate::qemu::{Guest, GuestImage, GuestSpec, NicSpec, QemuError, SocketRole};

/// Errors setting up guests on a network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
}

/// How long the daemon may take to listen.
const LISTEN: Duration = Duration::from_secs(30);

/// The MAC address of guest `i`.
pub fn mac(i: usize) -> String {
    format!("52:54:00:00:00:{:02x}", i + 1)
}

/// The IPv4 address of guest `i`.
pub fn ip(i: usize) -> String {
    format!("192.0.2.{}", i + 1)
}

/// The NIC of guest `i`, with defaults (the daemon listens, one queue pair, all features).
pub fn nic(e2e: &E2e, i: usize) -> NicSpec {
    NicSpec::new(e2e.path(&format!("vm{i}.sock")), &mac(i))
}

/// The guest `i` with `nic` running `script`.
pub fn guest(i: usize, nic: NicSpec, script: &str) -> GuestSpec {
    GuestSpec::new(&format!("vm{i}")).nic(nic).script(script)
}

/// The daemon's `--socket` value for the port behind `nic`.
pub fn port_arg(nic: &NicSpec) -> String {
    let mut arg = nic.socket.display().to_string();
    if nic.role == SocketRole::QemuListens {
        arg.push_str(",role=client");
    }
    if nic.queue_pairs > 1 {
        arg.push_str(&format!(",queues={}", nic.queue_pairs));
    }
    if let Some(mtu) = nic.host_mtu {
        arg.push_str(&format!(",mtu={mtu}"));
    }
    arg
}

/// The daemon and the guests on it. Everything is killed when dropped.
#[derive(Debug)]
pub struct Network {
    pub guests: Vec<Guest>,
    pub daemon: Daemon,
    /// The daemon's control socket.
    pub control: PathBuf,
}

impl Network {
    /// Starts the daemon with a port for every NIC of `guests`, then the guests.
    pub fn start(
        e2e: &E2e,
        image: &GuestImage,
        guests: &[GuestSpec],
    ) -> Result<Self, NetworkError> {
        let nics: Vec<&NicSpec> = guests.iter().flat_map(|g| &g.nics).collect();
        // Its own control socket and state (leases files), so that daemons of other tests or
        // users do not clash.
        let control = e2e.path("control.sock");
        let state = e2e.dir().display().to_string();
        let mut args = vec![
            "--control".to_string(),
            control.display().to_string(),
            "--state-dir".into(),
            state,
        ];
        for nic in &nics {
            args.push("--socket".to_string());
            args.push(port_arg(nic));
        }
        let daemon = Daemon::start(&args)?;
        let mut network = Network {
            guests: Vec::new(),
            daemon,
            control,
        };
        network.wait_listening(&nics)?;
        for spec in guests {
            network.guests.push(Guest::start(image, spec, e2e.dir())?);
        }
        Ok(network)
    }

    /// Prints the daemon's `show` (link states, queue pairs, MTUs) and `stats` (per port: frames
    /// and bytes each way, drops by reason) to the test's captured output, which the test
    /// harness shows when the test fails.
    pub fn print_counters(&self) {
        for command in ["show", "stats"] {
            let out = control_cli::run(&self.control, &[command]).unwrap_or_else(|e| e + "\n");
            for line in out.lines() {
                eprintln!("[daemon {command}] {line}");
            }
        }
    }

    /// Waits until the daemon listens on the sockets of `nics` where it is the listening side.
    fn wait_listening(&mut self, nics: &[&NicSpec]) -> Result<(), NetworkError> {
        let listening: Vec<&Path> = nics
            .iter()
            .filter(|nic| nic.role == SocketRole::BackendListens)
            .map(|nic| nic.socket.as_path())
            .collect();
        self.daemon.wait_listening(&listening, LISTEN)?;
        Ok(())
    }
}

/// Prints a figure (iperf3's rates) to the test's real stderr, not the captured output: it
/// shows in every run of the suite.
pub fn report(line: &str) {
    let _ = writeln!(io::stderr(), "e2e figure: {line}");
}

/// What the two guests of [`two_guest_traffic`] do besides the defaults.
#[derive(Debug, Clone, Default)]
pub struct Traffic<'a> {
    /// The MTU both guests set on eth0.
    pub mtu: Option<u16>,
    /// The ICMP payload size of the pings (56 when `None`).
    pub ping_size: Option<u16>,
    /// Extra iperf3 client arguments (`-P 8`).
    pub iperf_args: &'a str,
    /// Shell lines both guests run after configuring eth0.
    pub setup: &'a str,
}

/// The `GUEST` lines each guest of [`two_guest_traffic`] printed.
#[derive(Debug)]
pub struct TrafficRun {
    /// Guest 0: the iperf3 server; it pings guest 1 once reachable.
    pub server: Vec<String>,
    /// Guest 1: pings guest 0 (10 pings) and runs iperf3 to it, 5 s each way.
    pub client: Vec<String>,
}

/// How long a two-guest traffic run may take (two TCG boots, pings, 2 x 5 s of iperf3).
const TRAFFIC_RUN: Duration = Duration::from_secs(300);
/// How long the server may take to finish after the client did.
const SERVER_FINISH: Duration = Duration::from_secs(60);

/// Boots guests 0 and 1 on `nic0` and `nic1`: they reach each other, guest 1 pings guest 0 and
/// runs iperf3 both ways, then both print their counters (`stats`, `ipstats`, `offloads`) and
/// power off. Prints the iperf3 figures with `label`.
pub fn two_guest_traffic(
    e2e: &E2e,
    nic0: NicSpec,
    nic1: NicSpec,
    traffic: &Traffic<'_>,
    label: &str,
) -> Result<TrafficRun, NetworkError> {
    let image = e2e.guest_image();
    let setup = traffic.setup;
    let server = net_script(
        &format!("{}/24", ip(0)),
        traffic.mtu,
        &format!(
            "{setup}\nserve\noffloads\nreach {peer}\npings {peer} 3\nwait_notified\nserved\n\
             stats\nipstats\nsay FINISHED",
            peer = ip(1)
        ),
    );
    let client = net_script(
        &format!("{}/24", ip(1)),
        traffic.mtu,
        &format!(
            "{setup}\noffloads\nreach {peer}\npings {peer} 10 {size}\niperf {peer} 5 {args}\n\
             stats\nipstats\nnotify {peer}\nsay FINISHED",
            peer = ip(0),
            size = traffic.ping_size.unwrap_or(56),
            args = traffic.iperf_args,
        ),
    );
    let mut network = Network::start(
        e2e,
        &image,
        &[guest(0, nic0, &server), guest(1, nic1, &client)],
    )?;
    let client_finished = network.guests[1].expect("GUEST FINISHED", TRAFFIC_RUN);
    if client_finished.is_ok() {
        // The server finishes once notified by the client. When it cannot be (the network
        // broke), the run is returned as it is: its checks say what is missing.
        let _ = network.guests[0].expect("GUEST FINISHED", SERVER_FINISH);
    }
    // Taken before the guests are gone: which port stopped carrying frames, and why.
    network.print_counters();
    client_finished?;
    let run = TrafficRun {
        server: network.guests[0].lines_with("GUEST "),
        client: network.guests[1].lines_with("GUEST "),
    };
    for direction in ["send", "receive"] {
        if let Some(figure) = guest_script::iperf_receiver(&run.client, direction) {
            report(&format!(
                "{label}: iperf3 TCP vm1 {} vm0: {:.0} Mbit/s ({:.1} MB in 5 s)",
                if direction == "send" { "->" } else { "<-" },
                figure.megabits_per_second,
                figure.megabytes
            ));
        }
    }
    Ok(run)
}
