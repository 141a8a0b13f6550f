//! The NAT network's end-to-end scenarios, run for each egress kind (tests/e2e_nat_user.rs,
//! tests/e2e_nat_kernel.rs): the embedded default network (192.168.122.0/24, DHCP, DNS
//! forwarded to the wan's dnsmasq) with real QEMU guests. The daemon runs as a child process
//! in a namespace of its own, reaching a "wan" namespace (tests/src/wan.rs) through a veth
//! pair, so the kernel egress's forwarding and nftables rules stay in the test's namespaces.
//! The test kills and restarts the daemon and adds port forwards with the CLI while it runs.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vhost_net_backend::config::file::to_toml;
use vhost_net_backend::config::{DnsConfig, Egress, NetworkMode};
use vhost_net_backend::control::protocol::{EgressStats, NatStatsView};
use vhost_net_backend::{Config, MacAddr, PortConfig};

use crate::control_cli;
use crate::daemon::Daemon;
use crate::e2e::E2e;
use crate::guest_script::{self, script};
use crate::netns::{run, Netns};
use crate::qemu::{Guest, GuestSpec, NicSpec};
use crate::vm_network::{mac, report};
use crate::wan::{self, Wan};

/// How long a guest may take for its whole script.
const RUN: Duration = Duration::from_secs(600);
/// How long a guest may take to boot and get its lease.
const LEASE: Duration = Duration::from_secs(180);
/// How long the daemon may take to listen on the guests' sockets.
const LISTEN: Duration = Duration::from_secs(30);
/// The kernel egress's TAP (virbr0's role) in the daemon's namespace.
pub const KERNEL_TAP: &str = "vnb-default";
/// The kernel egress's nftables table for the network `default`.
pub const KERNEL_TABLE: &str = "vnb_default";

/// The egress kind a scenario runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressKind {
    /// Flows end in the daemon and leave from its sockets.
    User,
    /// A TAP holds the gateway address and the kernel masquerades.
    Kernel,
}

impl EgressKind {
    fn config(self) -> Egress {
        match self {
            EgressKind::User => Egress::User,
            EgressKind::Kernel => Egress::Kernel {
                interface: KERNEL_TAP.into(),
            },
        }
    }

    fn name(self) -> &'static str {
        self.config().name()
    }
}

/// A NAT network test's world: the daemon's namespace, the wan beside it, the daemon.
struct World {
    // Dropped in this order: the daemon, the wan, the daemon's namespace, the scratch
    // directory (and the lock that keeps e2e tests serial).
    daemon: Daemon,
    wan: Wan,
    host: Netns,
    e2e: E2e,
}

impl World {
    /// The daemon in a namespace of its own with the embedded default network, `egress`,
    /// DNS going to the wan's dnsmasq, the leases and the control socket in the test's
    /// directory, and a port per guest.
    fn start(kind: EgressKind, guests: usize) -> Result<Self, Box<dyn Error>> {
        let e2e = E2e::start();
        let host = Netns::new("nat")?;
        let wan = Wan::start_from(e2e.dir(), Some(&host))?;
        let mut config = Config::default();
        let NetworkMode::Nat(nat) = &mut config.networks[0].mode else {
            panic!("the default network is NAT");
        };
        nat.egress = kind.config();
        nat.dns = Some(DnsConfig {
            upstreams: vec![format!("{}:53", wan::WAN_ADDR).parse()?],
        });
        nat.leases_file = Some(e2e.path("default.leases"));
        config.state_dir = Some(e2e.dir().to_path_buf());
        config.control.socket = Some(e2e.path("control.sock"));
        for i in 0..guests {
            let mut port = PortConfig::new(socket(&e2e, i));
            port.mac = mac(i).parse::<MacAddr>()?;
            config.ports.push(port);
        }
        let path = e2e.path("nat.toml");
        std::fs::write(&path, to_toml(&config))?;
        let path = path.display().to_string();
        let mut daemon = Daemon::start_in_netns(host.name(), &["--config", &path])?;
        let sockets: Vec<PathBuf> = (0..guests).map(|i| socket(&e2e, i)).collect();
        let sockets: Vec<&Path> = sockets.iter().map(PathBuf::as_path).collect();
        daemon.wait_listening(&sockets, LISTEN)?;
        Ok(World {
            daemon,
            wan,
            host,
            e2e,
        })
    }

    fn guest(&self, i: usize, body: &str) -> Result<Guest, Box<dyn Error>> {
        let nic = NicSpec::new(socket(&self.e2e, i), &mac(i));
        let spec = GuestSpec::new(&format!("vm{i}"))
            .nic(nic)
            .script(&script(body));
        Ok(Guest::start(
            &self.e2e.guest_image(),
            &spec,
            self.e2e.dir(),
        )?)
    }

    fn control(&self) -> PathBuf {
        self.e2e.path("control.sock")
    }

    /// Runs `args` in the daemon's namespace: its stdout.
    fn exec(&self, args: &[&str]) -> Result<String, Box<dyn Error>> {
        let out = self.host.exec(args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the kernel egress's table is in the daemon's namespace.
    fn table(&self) -> Option<String> {
        self.exec(&["nft", "list", "table", "ip", KERNEL_TABLE])
            .ok()
    }

    /// Whether the kernel egress's TAP is in the daemon's namespace.
    fn has_tap(&self) -> bool {
        self.host
            .exec(&["ip", "link", "show", "dev", KERNEL_TAP])
            .is_ok()
    }

    /// Stops the daemon with SIGTERM, as a service manager does, and checks that the kernel
    /// egress left nothing behind.
    fn stop_daemon(&mut self) -> Result<(), Box<dyn Error>> {
        run("kill", &["-TERM", &self.daemon.pid().to_string()])?;
        let status = self.daemon.wait_exit(Duration::from_secs(20))?;
        assert!(status.success(), "the daemon's exit: {status}");
        assert_eq!(self.table(), None, "the nftables table is gone at exit");
        assert!(!self.has_tap(), "the TAP is gone at exit");
        Ok(())
    }
}

fn socket(e2e: &E2e, i: usize) -> PathBuf {
    e2e.path(&format!("vm{i}.sock"))
}

/// The word after `GUEST <WORD>` in the first such line.
fn value(lines: &[String], word: &str) -> Option<String> {
    let prefix = format!("GUEST {word} ");
    lines
        .iter()
        .find_map(|l| Some(l.strip_prefix(&prefix)?.trim().to_string()))
}

fn lease_ip(line: &str) -> String {
    let address = line.split_whitespace().nth(2).unwrap_or_default();
    address.split('/').next().unwrap_or_default().to_string()
}

/// A guest gets its lease by DHCP; the daemon is killed (SIGKILL, a crash) and started again
/// and the guest keeps its address; it resolves the wan's name through the gateway, fetches
/// its page, gets its UDP echo, pings it, sends it 100 MB over TCP (checksums compared) and
/// runs iperf3 to it both ways (figures printed). `nat-stats` counted that traffic. The daemon
/// stops cleanly at the end.
pub fn lease_restart_and_wan(kind: EgressKind) -> Result<(), Box<dyn Error>> {
    let mut world = World::start(kind, 1)?;
    let body = format!(
        "dhcp vm0\n\
         sleep 20\n\
         dhcp vm0\n\
         resolve {name}\n\
         say PAGE \"$(wget -q -O - http://{name}/index.html)\"\n\
         say ECHO \"$(echo udp-hello | socat -T 3 - UDP4:{name}:{echo})\"\n\
         pings {wan} 3\n\
         mkfifo /tmp/f\n\
         sha256sum < /tmp/f > /tmp/sum &\n\
         dd if=/dev/urandom bs=1M count=100 2>/dev/null | tee /tmp/f | socat -u - TCP4:{wan}:{sink}\n\
         wait\n\
         say SENT-SHA \"$(cut -d' ' -f1 /tmp/sum)\"\n\
         iperf {wan} 5\n\
         say FINISHED",
        name = wan::WAN_NAME,
        wan = wan::WAN_ADDR,
        echo = wan::ECHO_PORT,
        sink = wan::SINK_PORT,
    );
    let mut vm = world.guest(0, &body)?;
    let first = vm.expect("GUEST LEASE", LEASE)?;
    assert!(
        first.contains("router=192.168.122.1 dns=192.168.122.1"),
        "{first}"
    );
    let ip = lease_ip(&first);
    let saved = std::fs::read_to_string(world.e2e.path("default.leases"))?;
    assert!(saved.contains(&format!("{} {ip} vm0", mac(0))), "{saved}");

    // A crash: the new daemon takes the same leases file (and replaces the kernel egress's
    // table the killed one left).
    world.daemon.restart()?;
    world
        .daemon
        .wait_listening(&[&socket(&world.e2e, 0)], LISTEN)?;
    let second = vm.expect("GUEST LEASE", LEASE)?;
    assert_eq!(lease_ip(&second), ip, "the lease survives the restart");
    if kind == EgressKind::Kernel {
        let table = world.table().expect("the kernel egress's table");
        assert_eq!(table.matches("masquerade").count(), 1, "{table}");
        assert!(world.has_tap(), "the kernel egress's TAP");
    }

    vm.expect("GUEST FINISHED", RUN)?;
    let lines = vm.lines_with("GUEST ");
    assert_eq!(
        value(&lines, "RESOLVED").as_deref(),
        Some(&*format!("{} {}", wan::WAN_NAME, wan::WAN_ADDR))
    );
    assert_eq!(value(&lines, "PAGE").as_deref(), Some(wan::PAGE.trim()));
    assert_eq!(value(&lines, "ECHO").as_deref(), Some("udp-hello"));
    let pings = guest_script::ping_summary(&lines).expect("a ping summary");
    assert_eq!((pings.transmitted, pings.received), (3, 3), "{lines:?}");
    let sent = value(&lines, "SENT-SHA").expect("the guest's checksum");
    let got = world
        .wan
        .sink_sha256(Duration::from_secs(30))
        .expect("the sink's checksum");
    assert_eq!(sent.len(), 64, "{sent}");
    assert_eq!(got, sent, "100 MB arrive intact");
    // The restarted daemon's counters hold what the guest sent since: the 100 MB, and (user
    // egress) the TCP, UDP and echo flows the gateway opened for it.
    let stats: Vec<NatStatsView> = control_cli::json(&world.control(), &["nat-stats"]);
    let [v] = &stats[..] else {
        panic!("one network: {stats:?}")
    };
    assert!(v.from_guests_bytes > 100 << 20, "{v:?}");
    assert!(v.to_guests_frames > 0, "{v:?}");
    if let EgressStats::User(u) = v.egress {
        assert!(u.tcp.opened >= 2, "the page and the sink: {u:?}");
        assert!(u.udp.opened >= 1 && u.icmp.opened >= 1, "{u:?}");
    }
    for direction in ["send", "receive"] {
        let figure = guest_script::iperf_receiver(&lines, direction)
            .unwrap_or_else(|| panic!("an iperf3 {direction} figure: {lines:?}"));
        report(&format!(
            "NAT {} egress: iperf3 TCP guest {} wan: {:.0} Mbit/s ({:.1} MB in 5 s)",
            kind.name(),
            if direction == "send" { "->" } else { "<-" },
            figure.megabits_per_second,
            figure.megabytes
        ));
    }
    world.stop_daemon()
}

/// Two guests resolve each other by the hostnames they sent with DHCP and ping each other; a
/// port forward added with the CLI while the daemon runs lets a client on the host (in the
/// daemon's namespace, to the address of the host's side of the wan link) reach a TCP server
/// on one of them; removed, it no longer does.
pub fn names_and_port_forward(kind: EgressKind) -> Result<(), Box<dyn Error>> {
    let mut world = World::start(kind, 2)?;
    let server = "dhcp alpha\n\
                  resolve beta-host\n\
                  until nslookup beta-host >/dev/null 2>&1; do sleep 1; done\n\
                  resolve beta-host\n\
                  echo from-alpha | nc -l -p 8080\n\
                  say FINISHED";
    let client = "dhcp beta-host\n\
                  until nslookup alpha >/dev/null 2>&1; do sleep 1; done\n\
                  resolve alpha\n\
                  pings alpha 2\n\
                  say FINISHED";
    let mut alpha = world.guest(0, server)?;
    let mut beta = world.guest(1, client)?;
    let alpha_ip = lease_ip(&alpha.expect("GUEST LEASE", LEASE)?);
    let beta_ip = lease_ip(&beta.expect("GUEST LEASE", LEASE)?);
    beta.expect("GUEST FINISHED", RUN)?;
    let lines = beta.lines_with("GUEST ");
    assert_eq!(
        value(&lines, "RESOLVED").as_deref(),
        Some(&*format!("alpha {alpha_ip}"))
    );
    let pings = guest_script::ping_summary(&lines).expect("a ping summary");
    assert_eq!(pings.received, 2, "{lines:?}");

    // A forward added while the daemon runs reaches alpha's server.
    let control = world.control();
    let guest = format!("{alpha_ip}:8080");
    let forward = ["tcp", "0.0.0.0:18080", &guest];
    let cli = |verb: &str| {
        let args: Vec<&str> = ["forward", verb].iter().chain(&forward).copied().collect();
        control_cli::run(&control, &args)
    };
    cli("add")?;
    let listed = control_cli::run(&control, &["forward", "list"])?;
    assert!(listed.contains(&guest), "{listed}");
    if kind == EgressKind::Kernel {
        let table = world.table().expect("the kernel egress's table");
        assert!(table.contains(&format!("dnat to {guest}")), "{table}");
    }
    let target = format!("TCP4:{}:18080,connect-timeout=5", wan::HOST_ADDR);
    let mut got = String::new();
    for _ in 0..60 {
        if let Ok(out) = world.exec(&["socat", "-T", "20", "-u", &target, "-"]) {
            got = out;
            if !got.is_empty() {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(got, "from-alpha\n");
    alpha.expect("GUEST FINISHED", RUN)?;
    let lines = alpha.lines_with("GUEST RESOLVED beta-host");
    assert_eq!(
        lines.last().map(String::as_str),
        Some(&*format!("GUEST RESOLVED beta-host {beta_ip}"))
    );
    cli("remove")?;
    let listed = control_cli::run(&control, &["forward", "list"])?;
    assert!(!listed.contains(&guest), "{listed}");
    if kind == EgressKind::Kernel {
        let table = world.table().expect("the kernel egress's table");
        assert!(!table.contains("dnat to"), "{table}");
    }
    assert!(
        world
            .exec(&["socat", "-T", "2", "-u", &target, "-"])
            .is_err(),
        "the removed forward still connects"
    );
    world.stop_daemon()
}
