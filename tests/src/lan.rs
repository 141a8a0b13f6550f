//! A LAN for bridged-network tests: the daemon runs in a "host" network namespace of its own
//! (so no firewall of the real host sees the bridged frames), a veth pair leads from there to a
//! "lan" namespace, and the lan namespace has the LAN's services: dnsmasq as DHCP server (guest
//! `i` gets [`guest_ip`]`(i)` by MAC, others the pool), busybox httpd with a page, an iperf3
//! server. For a `tap` uplink the host end sits in a kernel bridge `br0`, as libvirt's eth0 in
//! br0. Everything is removed when dropped.

use std::fs;
use std::path::Path;

use crate::netns::{run, Netns, NetnsError, Veth};
use crate::process::{Process, ProcessError};
use crate::vm_network::mac;

/// The LAN host's address.
pub const LAN_HOST: &str = "10.77.0.1";
/// The LAN's prefix length.
pub const PREFIX: u8 = 24;
/// The page the LAN host serves at `/`.
pub const PAGE: &str = "lan-page-7f3a";
/// The kernel bridge's name in the host namespace (tap uplinks).
pub const BRIDGE: &str = "br0";

/// Errors building the LAN.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("writing the LAN's files")]
    Io(#[from] std::io::Error),
}

/// The address dnsmasq gives guest `i`.
pub fn guest_ip(i: usize) -> String {
    format!("10.77.0.{}", 11 + i)
}

/// Where the uplink attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// The daemon binds the veth's host end (af_packet).
    Nic,
    /// The veth's host end is in bridge [`BRIDGE`], where the daemon's TAP joins it.
    Bridge,
}

/// The namespaces, the veth pair and the LAN's services.
#[derive(Debug)]
pub struct Lan {
    pub host: Netns,
    pub lan: Netns,
    pub veth: Veth,
    services: Vec<Process>,
}

impl Lan {
    /// Builds the LAN; `dir` holds the page and the leases.
    pub fn new(dir: &Path, attach: Attach) -> Result<Self, LanError> {
        let host = Netns::new("host")?;
        let lan = Netns::new("lan")?;
        let veth = Veth::new(Some(&host), Some(&lan))?;
        let mut this = Lan {
            host,
            lan,
            veth,
            services: Vec::new(),
        };
        this.configure(attach)?;
        let www = dir.join("www");
        fs::create_dir_all(&www)?;
        fs::write(www.join("index.html"), format!("{PAGE}\n"))?;
        let dev = this.veth.b.name.clone();
        let leases = dir.join("lan.leases").display().to_string();
        let mut dnsmasq = vec![
            "--no-daemon".to_string(),
            "--conf-file=/dev/null".into(),
            "--port=0".into(),
            format!("--interface={dev}"),
            "--bind-interfaces".into(),
            "--dhcp-range=10.77.0.100,10.77.0.150,12h".into(),
            format!("--dhcp-leasefile={leases}"),
            "--pid-file".into(),
            "--log-dhcp".into(),
        ];
        for i in 0..4 {
            dnsmasq.push(format!("--dhcp-host={},{}", mac(i), guest_ip(i)));
        }
        this.spawn("dnsmasq", "dnsmasq", dnsmasq)?;
        let www = www.display().to_string();
        this.spawn(
            "httpd",
            "busybox",
            vec![
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                "80".into(),
                "-h".into(),
                www,
            ],
        )?;
        this.spawn("iperf3", "iperf3", vec!["-s".into()])?;
        Ok(this)
    }

    fn configure(&self, attach: Attach) -> Result<(), LanError> {
        self.veth.b.add_address(&format!("{LAN_HOST}/{PREFIX}"))?;
        if attach == Attach::Bridge {
            self.bridge_up()?;
        }
        Ok(())
    }

    /// Creates bridge [`BRIDGE`] in the host namespace with the veth's host end in it.
    fn bridge_up(&self) -> Result<(), LanError> {
        let ns = self.host.name();
        run("ip", &["-n", ns, "link", "add", BRIDGE, "type", "bridge"])?;
        run("ip", &["-n", ns, "link", "set", BRIDGE, "up"])?;
        run(
            "ip",
            &["-n", ns, "link", "set", &self.veth.a.name, "master", BRIDGE],
        )?;
        Ok(())
    }

    fn spawn(&mut self, name: &str, program: &str, args: Vec<String>) -> Result<(), LanError> {
        let mut full = vec![
            "netns".to_string(),
            "exec".into(),
            self.lan.name().into(),
            program.into(),
        ];
        full.extend(args);
        self.services.push(Process::start(name, "ip", full)?);
        Ok(())
    }

    /// Runs `args` in the lan namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, NetnsError> {
        let out = self.lan.exec(args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A counter of interface `dev` in the host namespace (`tx_packets`, `rx_packets`, ...).
    pub fn host_counter(&self, dev: &str, name: &str) -> Result<u64, NetnsError> {
        counter(&self.host, dev, name)
    }

    /// A counter of interface `dev` in the lan namespace.
    pub fn lan_counter(&self, dev: &str, name: &str) -> Result<u64, NetnsError> {
        counter(&self.lan, dev, name)
    }

    /// Deletes the host end of the veth pair (the uplink's NIC), or the bridge for a tap
    /// uplink, and makes it again as it was: what an unplugged and replugged NIC, or a
    /// restarted bridge, looks like to the daemon.
    pub fn replug(&mut self, attach: Attach) -> Result<(), LanError> {
        match attach {
            Attach::Nic => {
                run(
                    "ip",
                    &["-n", self.host.name(), "link", "del", &self.veth.a.name],
                )?;
                let a = self.veth.a.name.clone();
                let b = self.veth.b.name.clone();
                run(
                    "ip",
                    &[
                        "-n",
                        self.host.name(),
                        "link",
                        "add",
                        &a,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &b,
                        "netns",
                        self.lan.name(),
                    ],
                )?;
                run("ip", &["-n", self.host.name(), "link", "set", &a, "up"])?;
                run("ip", &["-n", self.lan.name(), "link", "set", &b, "up"])?;
                self.configure(attach)
            }
            Attach::Bridge => {
                run("ip", &["-n", self.host.name(), "link", "del", BRIDGE])?;
                self.bridge_up()
            }
        }
    }
}

/// A counter of interface `dev` in namespace `ns`, 0 if it cannot be read.
fn counter(ns: &Netns, dev: &str, name: &str) -> Result<u64, NetnsError> {
    let path = format!("/sys/class/net/{dev}/statistics/{name}");
    let out = ns.exec(&["cat", &path])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

/// How long the guests may take for each step (TCG boots, DHCP, iperf3 runs).
const STEP: std::time::Duration = std::time::Duration::from_secs(300);

/// The bridged-network scenario both uplink kinds run: two guests on a bridged network get
/// their leases from the LAN's dnsmasq; guest 0 pings the LAN host, fetches its page, runs
/// iperf3 to it both ways; the LAN host pings guest 0; guest 1 pings guest 0 (counted on the
/// uplink: nothing should leave); then the uplink's host interface (the NIC, or the bridge) is
/// deleted and made again while guest 0 pings the LAN host, and its pings must get answers again.
pub fn bridged_network(attach: Attach, label: &str) -> Result<(), Box<dyn std::error::Error>> {
    use crate::e2e::E2e;
    use crate::guest_script::{self, net_script_dhcp};
    use crate::qemu::Guest;
    use crate::vm_network::{guest, nic, report};

    let e2e = E2e::start();
    let image = e2e.guest_image();
    let mut lan = Lan::new(e2e.dir(), attach)?;
    let uplink = match attach {
        Attach::Nic => format!("kind = \"af_packet\"\ninterface = \"{}\"", lan.veth.a.name),
        Attach::Bridge => format!("kind = \"tap\"\ninterface = \"vnet0\"\nbridge = \"{BRIDGE}\""),
    };
    let (nic0, nic1) = (nic(&e2e, 0), nic(&e2e, 1));
    let config = format!(
        "[[network]]\nname = \"default\"\nmode = \"bridge\"\n[network.uplink]\n{uplink}\n\n\
         [[port]]\nsocket = \"{}\"\nmac = \"{}\"\n\n[[port]]\nsocket = \"{}\"\nmac = \"{}\"\n",
        nic0.socket.display(),
        mac(0),
        nic1.socket.display(),
        mac(1),
    );
    let config_path = e2e.path("bridge.toml");
    fs::write(&config_path, config)?;
    let control = e2e.path("control.sock");
    let mut daemon = crate::daemon::Daemon::start_in_netns(
        lan.host.name(),
        &[
            "--config",
            &config_path.display().to_string(),
            "--control",
            &control.display().to_string(),
            "--state-dir",
            &e2e.dir().display().to_string(),
        ],
    )?;
    daemon.wait_listening(
        &[&nic0.socket, &nic1.socket],
        std::time::Duration::from_secs(30),
    )?;

    let (g0, g1) = (guest_ip(0), guest_ip(1));
    let script0 = net_script_dhcp(&format!(
        "serve\nreach {LAN_HOST}\npings {LAN_HOST} 5\nfetch {LAN_HOST} /\niperf {LAN_HOST} 5\n\
         say LAN-DONE\nwait_notified\nnotify {g1}\nwait_notified\nping_forever {LAN_HOST}"
    ));
    let script1 = net_script_dhcp(&format!(
        "wait_notified\nreach {g0}\nsay PAIR-READY\nsleep 4\npings {g0} 20\nsay PAIR-DONE\n\
         notify {g0}\nsay FINISHED"
    ));
    let mut vm0 = Guest::start(&image, &guest(0, nic0, &script0), e2e.dir())?;
    let mut vm1 = Guest::start(&image, &guest(1, nic1, &script1), e2e.dir())?;
    for (vm, ip) in [(&mut vm0, &g0), (&mut vm1, &g1)] {
        let lease = vm.expect("GUEST LEASE", STEP)?;
        assert!(
            lease.starts_with(&format!("GUEST LEASE {ip}/{PREFIX} ")),
            "dnsmasq's lease: {lease}"
        );
    }

    // Guest 0 and the LAN host.
    vm0.expect("GUEST LAN-DONE", STEP)?;
    let pings = vm0.lines_with("GUEST PING");
    let summary = guest_script::ping_summary(&pings).ok_or("no ping summary")?;
    assert_eq!(summary.received, 5, "guest 0 -> LAN host pings: {pings:?}");
    let page = vm0.lines_with("GUEST FETCH");
    assert!(page.contains(&format!("GUEST FETCH {PAGE}")), "{page:?}");
    assert!(page.contains(&"GUEST FETCH-RC 0".to_string()), "{page:?}");
    let iperf = vm0.lines_with("GUEST IPERF");
    for dir in ["send", "receive"] {
        assert!(
            iperf.contains(&format!("GUEST IPERF-RC {dir} 0")),
            "{iperf:?}"
        );
    }
    let figure = |dir| guest_script::iperf_receiver(&iperf, dir).map(|f| f.megabits_per_second);
    let run_figures = (figure("send"), figure("receive"));
    let ping = lan.exec(&["ping", "-c", "3", "-i", "0.3", "-W", "2", &g0])?;
    assert!(ping.contains("3 received"), "LAN host -> guest 0: {ping}");
    let iperf_in = lan.exec(&["iperf3", "-c", &g0, "-t", "3", "-f", "m"])?;
    let lan_to_guest = guest_script::iperf_output_receiver(&iperf_in)
        .ok_or_else(|| format!("LAN host -> guest 0 iperf3: {iperf_in}"))?;

    // Guest 1 and guest 0: unicast between them stays off the uplink.
    lan.exec(&["sh", "-c", &format!("echo go | busybox nc {g0} 5001")])?;
    let (dev, counter) = match attach {
        Attach::Nic => (lan.veth.a.name.clone(), "tx_packets"),
        Attach::Bridge => ("vnet0".to_string(), "rx_packets"),
    };
    vm1.expect("GUEST PAIR-READY", STEP)?;
    let before = lan.host_counter(&dev, counter)?;
    vm1.expect("GUEST PAIR-DONE", STEP)?;
    let after = lan.host_counter(&dev, counter)?;
    // Only what the host namespace's own IPv6 may send; 40 frames if the pings went out.
    assert!(
        after - before < 5,
        "guest-to-guest unicast left through the uplink: {} frames",
        after - before
    );
    let pair = vm1.lines_with("GUEST PING");
    let summary = guest_script::ping_summary(&pair).ok_or("no ping summary")?;
    assert_eq!(summary.received, 20, "guest 1 -> guest 0: {pair:?}");
    vm1.expect("GUEST FINISHED", STEP)?;

    // No loop: the uplink took in no more frames than reached its host interface from the LAN
    // (and, for a TAP, from the host's bridge itself), while the guests sent it thousands. A
    // few frames of the host namespace's own (IPv6 multicast) are not in those counters.
    let stats: vhost_net_backend::control::protocol::StatsView =
        crate::control_cli::json(&control, &["stats"]);
    let up = stats.uplinks.first().ok_or("no uplink in stats")?;
    let from_lan = lan.lan_counter(&lan.veth.b.name, "tx_packets")?
        + match attach {
            Attach::Nic => 0,
            Attach::Bridge => lan.host_counter(BRIDGE, "tx_packets")?,
        };
    assert!(
        up.rx_frames <= from_lan + 20 && up.tx_frames > 1000,
        "the uplink looped frames back: {up:?}, {from_lan} frames sent to it"
    );

    // Recovery: the host interface goes away and comes back.
    vm0.expect("GUEST PING", STEP)?;
    wait_replies(&vm0, 3, STEP)?;
    lan.replug(attach)?;
    let seen = guest_script::ping_replies(&vm0.lines_with("GUEST PING")).len();
    wait_replies(&vm0, seen + 5, STEP)?;

    for (dir, f) in [("->", run_figures.0), ("<-", run_figures.1)] {
        match f {
            Some(f) => report(&format!(
                "{label}: iperf3 TCP vm0 {dir} LAN host (guest's client): {f:.0} Mbit/s"
            )),
            None => report(&format!(
                "{label}: iperf3 TCP vm0 {dir} LAN host: no figure in {iperf:?}"
            )),
        }
    }
    report(&format!(
        "{label}: iperf3 TCP LAN host -> vm0 (LAN host's client, 3 s): {:.0} Mbit/s",
        lan_to_guest.megabits_per_second
    ));
    Ok(())
}

/// Waits until `guest` printed at least `n` ping replies.
fn wait_replies(
    guest: &crate::qemu::Guest,
    n: usize,
    timeout: std::time::Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let replies = crate::guest_script::ping_replies(&guest.lines_with("GUEST PING"));
        if replies.len() >= n {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{} ping replies, waited for {n}", replies.len()).into());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
