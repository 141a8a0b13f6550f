//! `demo`: the main job on the embedded defaults, shown end to end (`sudo scripts/demo`).
//!
//! Starts the daemon with no configuration (libvirt's "default" NAT network: 192.168.122.0/24,
//! gateway .1, DHCP, DNS, `user` egress) and two ports, boots two QEMU guests (the test guest of
//! `scripts/build-guest`) on them, and shows them getting DHCP leases, reaching each other by
//! name, the gateway, and an outside host through NAT; then the daemon's `show`, `leases` and
//! `conntrack` views. The outside is a network namespace on this machine (tests/src/wan.rs:
//! 198.51.100.2, an HTTP server), so nothing leaves the machine. Needs root (the namespace,
//! the guests). Prints what it sees on standard output (the guests' consoles and the daemon's
//! log go to standard error) and exits with 1 when a step did not work.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use tests::daemon;
use tests::guest_script::script;
use tests::process::Process;
use tests::qemu::{Guest, GuestImage, GuestSpec, NicSpec};
use tests::vm_network::mac;
use tests::wan::{self, Wan};

/// The embedded default network's gateway.
const GATEWAY: &str = "192.168.122.1";
/// How long the daemon may take to listen.
const LISTEN: Duration = Duration::from_secs(30);
/// How long a guest may take to boot (TCG) and get its lease.
const LEASE: Duration = Duration::from_secs(300);
/// How long a guest may take for the rest of its script.
const RUN: Duration = Duration::from_secs(300);

/// What each guest does: gets a lease by DHCP (sending its name as hostname, so the gateway's
/// DNS answers it), waits until the other guest answers by name, pings it, the gateway and the
/// outside, fetches the outside's page, and stays up (link up for `show`) until killed.
const GUEST_SCRIPT: &str = r#"
dhcp "$SELF"
n=0
until ping -c 1 -W 1 "$PEER" >/dev/null 2>&1; do
  n=$((n+1)); [ $n -ge 120 ] && break; sleep 1
done
check() { say PINGED "$1" "$(ping -c 3 -i 0.3 -W 2 "$1" 2>&1 | grep 'packets transmitted')"; }
check "$PEER"
check GATEWAY
check OUTSIDE
say FETCHED "$(printf 'GET /index.html HTTP/1.0\r\n\r\n' | nc -w 10 OUTSIDE 80 2>/dev/null | tail -n 1)"
say FINISHED
sleep 3600
"#;

fn main() -> ExitCode {
    match run() {
        Ok(true) => {
            println!("\ndemo: everything worked");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\ndemo: some steps did not work (above; the consoles are on stderr)");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("\ndemo: failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One guest's results, from its `GUEST` lines.
struct Results {
    lines: Vec<String>,
}

impl Results {
    fn value(&self, word: &str) -> Option<&str> {
        let prefix = format!("GUEST {word} ");
        self.lines
            .iter()
            .find_map(|l| Some(l.strip_prefix(&prefix)?.trim()))
    }

    /// The summary of the pings of `host` and whether all were answered.
    fn pinged(&self, host: &str) -> (String, bool) {
        let prefix = format!("GUEST PINGED {host} ");
        let summary = self
            .lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or("no answer")
            .trim()
            .to_string();
        let ok = summary.starts_with("3 packets transmitted, 3 packets received");
        (summary, ok)
    }
}

fn run() -> Result<bool, Box<dyn Error>> {
    let image = GuestImage::locate().map_err(|e| format!("{e} (run scripts/build-guest)"))?;
    let dir = tempfile::Builder::new().prefix("vnb-demo-").tempdir()?;
    let path = |name: &str| dir.path().join(name);
    // `--daemon PATH`: a daemon binary already built; else the workspace's, built in release mode.
    let mut args = std::env::args().skip(1);
    let binary = match (args.next().as_deref(), args.next()) {
        (Some("--daemon"), Some(path)) => PathBuf::from(path),
        (None, _) => daemon::binary()?.to_path_buf(),
        _ => return Err("usage: demo [--daemon PATH]".into()),
    };
    let binary = binary.as_path();

    heading("The outside: a network namespace on this machine");
    let wan = Wan::start(dir.path())?;
    println!(
        "{} serves http://{}/index.html, reached from the host through a veth pair \
         ({} on the host's side); it stands for the Internet, so nothing leaves this machine",
        wan.netns().name(),
        wan::WAN_ADDR,
        wan::HOST_ADDR
    );

    heading("The daemon, embedded default configuration");
    let mut ok = true;
    let control = path("control.sock");
    // The control socket and the leases file in the demo's directory: nothing of the demo
    // stays on the machine.
    let mut args = vec![
        "--control".to_string(),
        control.display().to_string(),
        "--state-dir".to_string(),
        dir.path().display().to_string(),
    ];
    for i in 0..2 {
        args.push("--socket".into());
        args.push(format!(
            "{},mac={}",
            path(&format!("vm{i}.sock")).display(),
            mac(i)
        ));
    }
    println!("$ vhost-net-backend {}", args.join(" "));
    let mut daemon = Process::start("daemon", &binary.display().to_string(), args)?;
    wait_listening(&mut daemon, &[path("vm0.sock"), path("vm1.sock")])?;
    ok &= view(binary, &control, &["show"])?;

    heading("Two QEMU guests on its sockets");
    let mut guests = Vec::new();
    for i in 0..2 {
        let (name, peer) = (format!("vm{i}"), format!("vm{}", 1 - i));
        let body = GUEST_SCRIPT
            .replace("$SELF", &name)
            .replace("$PEER", &peer)
            .replace("GATEWAY", GATEWAY)
            .replace("OUTSIDE", wan::WAN_ADDR);
        let socket = path(&format!("{name}.sock"));
        let spec = GuestSpec::new(&name)
            .nic(NicSpec::new(&socket, &mac(i)))
            .script(&script(&body));
        println!(
            "{name}: qemu-system-x86_64 -accel tcg, virtio-net {} on {} (vhost-user)",
            mac(i),
            socket.display()
        );
        guests.push(Guest::start(&image, &spec, dir.path())?);
    }

    heading("DHCP leases from the gateway");
    for guest in &mut guests {
        let lease = guest.expect("GUEST LEASE", LEASE)?;
        println!("{}: {}", guest.name(), lease.trim_start_matches("GUEST "));
    }

    heading("Reaching each other, the gateway and the outside");
    for (i, guest) in guests.iter_mut().enumerate() {
        guest.expect("GUEST FINISHED", RUN)?;
        let results = Results {
            lines: guest.lines_with("GUEST "),
        };
        let peer = format!("vm{}", 1 - i);
        for (host, what) in [
            (peer.as_str(), "the other guest, by name"),
            (GATEWAY, "the gateway"),
            (wan::WAN_ADDR, "the outside, through NAT"),
        ] {
            let (summary, answered) = results.pinged(host);
            println!("{}: ping {host} ({what}): {summary}", guest.name());
            ok &= answered;
        }
        let page = results.value("FETCHED").unwrap_or_default();
        println!(
            "{}: http://{}/index.html through NAT: {page:?}",
            guest.name(),
            wan::WAN_ADDR
        );
        ok &= page == wan::PAGE.trim();
    }

    heading("What the daemon shows");
    for cmd in [&["show"][..], &["fdb"], &["leases"], &["conntrack"]] {
        ok &= view(binary, &control, cmd)?;
    }
    drop(guests);
    daemon.kill()?;
    Ok(ok)
}

/// Waits until the daemon listens on `sockets`.
fn wait_listening(daemon: &mut Process, sockets: &[PathBuf]) -> Result<(), Box<dyn Error>> {
    let deadline = std::time::Instant::now() + LISTEN;
    while !sockets.iter().all(|s| daemon::is_listening(s)) {
        if !daemon.is_running()? {
            return Err("the daemon exited while starting".into());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("the daemon does not listen after {LISTEN:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn heading(text: &str) {
    println!("\n== {text} ==");
}

/// Runs `vhost-net-backend CMD --control CONTROL`, prints its command and output (or its
/// error), and returns whether it succeeded.
fn view(binary: &Path, control: &Path, cmd: &[&str]) -> Result<bool, Box<dyn Error>> {
    println!("$ vhost-net-backend {}", cmd.join(" "));
    let out = Command::new(binary)
        .args(cmd)
        .arg("--control")
        .arg(control)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        print!("failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.status.success())
}
