//! WASM policies in the datapath, driven by the in-process frontend harness: a daemon on
//! libvirt's default NAT network with `[[policy]]` entries in its configuration and policies
//! loaded through the control hooks; firewall verdicts (drop, reject, counted), cached flows,
//! hot reload under traffic without a lost frame, faulting modules contained by their fail
//! mode, and the flows the tables track as the metrics endpoint serves them.

#[path = "../../vhost-net-backend/tests/support/faulty.rs"]
mod faulty;
#[path = "../../vhost-net-backend/tests/netns/mod.rs"]
mod netns;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bridge_core::{DropReason, PortId};
use clap::Parser;
use policy_sdk::frames::{tcp4, udp4, Endpoint, TCP_SYN};
use tests::control_cli;
use tests::frontend::connection::Role;
use tests::frontend::frames::numbered;
use tests::frontend::net::{NetOptions, VirtioNet};
use tests::frontend::net_hdr::NetHdr;
use tests::policy_wasm;
use vhost_net_backend::cli::{self, error_chain, Args};
use vhost_net_backend::config::{Egress, FailMode, NetworkMode, PolicyConfig};
use vhost_net_backend::control::protocol::PolicyInfo;
use vhost_net_backend::control::Server;
use vhost_net_backend::metrics;
use vhost_net_backend::{start, Config, Daemon, MacAddr, PortConfig};
use vm_memory::{Address, Bytes};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(200);

const A: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 0x0a], [192, 168, 122, 10]);
const B: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 0x0b], [192, 168, 122, 11]);
/// A's MAC with an address outside the network.
const SPOOF: Endpoint = Endpoint::new(A.mac, [10, 9, 9, 9]);

const LIBVIRT_NAT: &str = "network 192.168.122.0/24\ngateway 192.168.122.1\n";

/// A daemon with guests A and B on the default NAT network, in a scratch directory that also
/// holds the policy modules.
struct Lab {
    daemon: Arc<Daemon>,
    server: Server,
    a: VirtioNet,
    b: VirtioNet,
    ids: [PortId; 2],
    dir: tempfile::TempDir,
}

/// Writes policy crate `name`'s module (or `wasm`) into `dir`; returns its path.
fn module(dir: &tempfile::TempDir, file: &str, wasm: &[u8]) -> PathBuf {
    let path = dir.path().join(file);
    std::fs::write(&path, wasm).unwrap();
    path
}

fn policy(name: &str, module: PathBuf, config: &str, fail_mode: FailMode) -> PolicyConfig {
    PolicyConfig {
        name: name.into(),
        module,
        config: config.into(),
        fail_mode,
        network: None,
    }
}

/// Starts the daemon with the policies `policies(dir)` makes, attaches A and B, and has each
/// broadcast once so the switch knows where they are.
fn lab(policies: impl FnOnce(&tempfile::TempDir) -> Vec<PolicyConfig>) -> Lab {
    lab_with(|dir, config| config.policies = policies(dir))
}

/// [`lab`] with the daemon's configuration changed by `configure`.
fn lab_with(configure: impl FnOnce(&tempfile::TempDir, &mut Config)) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let ports = [A, B]
        .iter()
        .enumerate()
        .map(|(i, e)| PortConfig {
            mac: MacAddr(e.mac),
            ..PortConfig::new(dir.path().join(format!("port{i}.sock")))
        })
        .collect();
    let mut config = Config::with_ports(ports);
    configure(&dir, &mut config);
    config.control.socket = Some(dir.path().join("control.sock"));
    config.state_dir = Some(dir.path().to_path_buf());
    let control = config.control.clone();
    let daemon = Arc::new(start(config).unwrap());
    let server = Server::start(Arc::clone(&daemon), &control).unwrap();
    let ids = daemon.ports();
    assert_eq!(ids.len(), 2);
    let attach = |i: usize| {
        let options = NetOptions {
            timeout: WAIT,
            ..NetOptions::default()
        };
        let role = Role::Connect(dir.path().join(format!("port{i}.sock")));
        VirtioNet::new(role, options).unwrap()
    };
    let (mut a, mut b) = (attach(0), attach(1));
    let hello = |from: &mut VirtioNet, to: &mut VirtioNet, e: Endpoint| {
        let hello = numbered([0xff; 6], e.mac, 0, 60);
        from.send(0, &hello).unwrap();
        let got = to.recv(WAIT).unwrap().expect("the broadcast passes").1;
        assert_eq!(got, hello);
    };
    hello(&mut a, &mut b, A);
    hello(&mut b, &mut a, B);
    Lab {
        daemon,
        server,
        a,
        b,
        ids: [ids[0], ids[1]],
        dir,
    }
}

impl Lab {
    fn drops(&self, port: usize, reason: DropReason) -> u64 {
        let report = self.daemon.port_report(self.ids[port]).unwrap();
        report.switch.drops.get(reason)
    }

    fn policies(&self) -> Arc<dyn vhost_net_backend::control::hooks::Policies> {
        self.daemon
            .hooks()
            .policies()
            .expect("the daemon runs a policy host")
    }

    fn list(&self, name: &str) -> PolicyInfo {
        let all = self.policies().list();
        all.into_iter().find(|p| p.name == name).expect("listed")
    }

    /// Runs a CLI subcommand against the daemon's control socket: its output, or its error.
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        cli_at(self.server.path(), args)
    }
}

/// Runs a CLI subcommand against the control socket at `control`.
fn cli_at(control: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let control = control.to_str().unwrap();
    let argv = ["vhost-net-backend"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--control", control]);
    let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    cli::run(args.command.expect("a subcommand")).map_err(|e| error_chain(&e))
}

impl Lab {
    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

/// Frames B receives within [`QUIET`], ignoring the gateway's IPv6 and ARP chatter.
fn received(nic: &mut VirtioNet) -> Vec<Vec<u8>> {
    let frames = nic.drain(QUIET).unwrap();
    frames
        .into_iter()
        .map(|(_, f)| f)
        .filter(|f| f[12..14] == [0x08, 0x00])
        .collect()
}

/// A [`lab`] whose operator tier runs libvirt-nat.
fn nat_lab() -> Lab {
    lab_with(|dir, config| {
        let wasm = policy_wasm::policy_wasm("libvirt-nat");
        let path = module(dir, "libvirt_nat.wasm", &wasm);
        config.policies = vec![policy("nat", path, LIBVIRT_NAT, FailMode::Closed)];
        reach_host_loopback(config);
    })
}

/// Lets the default network's guests reach the host's loopback, where this test's hosts
/// beyond the network are.
fn reach_host_loopback(config: &mut Config) {
    let NetworkMode::Nat(nat) = &mut config.networks[0].mode else {
        panic!("the default network is NAT");
    };
    nat.host_loopback = true;
}

impl Lab {
    /// Loads the security group `sg` with `config` into the network's chain, through the
    /// control socket.
    fn load_sg(&self, config: &str) {
        let sg = policy_wasm::policy_wasm("security-group");
        module(&self.dir, "security_group.wasm", &sg);
        let path = self.path("security_group.wasm");
        let load = ["policy", "load", "sg", &path, "--config", config];
        self.cli(&[&load[..], &["--network", "default"]].concat())
            .unwrap();
    }
}

/// Packets counted on the rule of `info` whose description contains `text`.
fn rule(info: &PolicyInfo, text: &str) -> u64 {
    let r = info.rules.iter().find(|r| r.description.contains(text));
    r.unwrap_or_else(|| panic!("rule {text:?} in {info:?}"))
        .packets
}

#[test]
fn a_firewall_drops_rejects_and_counts_and_caches_flow_verdicts() {
    let mut lab = nat_lab();
    // B's security group, in the network's chain, loaded through the control socket.
    lab.load_sg(&format!(
        "group b ports {}\ningress ipv4 tcp 22 0.0.0.0/0\negress ipv4 any any 0.0.0.0/0\n",
        lab.ids[1].0
    ));

    // Allowed: A to B on tcp 22, five times the same flow: judged once, counted five times.
    let ssh = tcp4(A, B, 40000, 22, TCP_SYN);
    for _ in 0..5 {
        lab.a.send(0, &ssh).unwrap();
    }
    let got = received(&mut lab.b);
    assert_eq!(got, vec![ssh.clone(); 5]);
    let sg_info = lab.list("sg");
    assert_eq!(
        sg_info.packets, 1,
        "the flow's later frames use the cached verdict"
    );
    assert_eq!(rule(&sg_info, "dpt:22-22"), 5);

    // Dropped: tcp 80 to B is not in B's group.
    let web = tcp4(A, B, 40001, 80, TCP_SYN);
    lab.a.send(0, &web).unwrap();
    lab.a.send(0, &web).unwrap();
    assert!(received(&mut lab.b).is_empty(), "tcp 80 is dropped");
    assert_eq!(lab.drops(0, DropReason::PolicyDrop), 2);
    assert_eq!(rule(&lab.list("sg"), "default ingress DROP"), 2);
    let text = lab.cli(&["policy", "list"]).unwrap();
    assert!(
        text.contains("Policy sg (network default, fail closed, active, 2 packets"),
        "{text}"
    );
    let line = text.lines().find(|l| l.contains("default ingress DROP"));
    let words: Vec<&str> = line
        .expect("the rule is listed")
        .split_whitespace()
        .collect();
    assert_eq!(words[..3], ["2", "108", "3"], "{text}");

    // Rejected: a spoofed source gets a TCP RST from the destination, or an ICMP port
    // unreachable for UDP; nothing reaches B.
    let spoofed = tcp4(SPOOF, B, 40002, 22, TCP_SYN);
    lab.a.send(0, &spoofed).unwrap();
    let rst = lab.a.recv(WAIT).unwrap().expect("a TCP RST").1;
    assert_eq!((&rst[0..6], &rst[6..12]), (&A.mac[..], &B.mac[..]));
    assert_eq!((&rst[26..30], &rst[30..34]), (&B.ip[..], &SPOOF.ip[..]));
    assert_eq!(rst[23], 6, "TCP");
    assert_eq!(rst[47] & 0x04, 0x04, "RST");
    let dns = udp4(SPOOF, B, 40003, 53, b"query");
    lab.a.send(0, &dns).unwrap();
    let icmp = lab.a.recv(WAIT).unwrap().expect("an ICMP error").1;
    assert_eq!(
        (icmp[23], icmp[34], icmp[35]),
        (1, 3, 3),
        "ICMP port unreachable"
    );
    assert_eq!(&icmp[42..], &dns[14..], "quoting the datagram");
    assert!(
        received(&mut lab.b).is_empty(),
        "spoofed frames are rejected"
    );
    assert_eq!(lab.drops(0, DropReason::PolicyReject), 2);
    let nat = lab.list("nat");
    assert_eq!(rule(&nat, "FORWARD from the network REJECT"), 2);
    assert_eq!(nat.state, "active");

    // Unloaded: tcp 80 passes.
    lab.cli(&["policy", "unload", "sg"]).unwrap();
    let web = tcp4(A, B, 40004, 80, TCP_SYN);
    lab.a.send(0, &web).unwrap();
    assert_eq!(received(&mut lab.b), vec![web]);
}

#[test]
fn a_known_flow_passes_by_its_verdict_counted_per_frame_and_judged_again_after_a_reload() {
    let mut lab = nat_lab();
    let b = lab.ids[1].0;
    let group = |port: u16| {
        format!(
            "group b ports {b}\ningress ipv4 udp {port} 0.0.0.0/0\negress ipv4 any any 0.0.0.0/0\n"
        )
    };
    lab.load_sg(&group(7000));

    // One flow, 20 frames in batches: judged once, every frame counted on its rule.
    let frame = udp4(A, B, 5000, 7000, b"known flow");
    let send = |lab: &mut Lab, n: usize| {
        for _ in 0..n / 4 {
            let four = [&frame[..]; 4];
            lab.a.send_batch(0, &NetHdr::plain(), four).unwrap();
        }
    };
    send(&mut lab, 20);
    assert_eq!(received(&mut lab.b).len(), 20);
    assert_eq!(lab.list("sg").packets, 1);
    assert_eq!(rule(&lab.list("sg"), "dpt:7000-7000"), 20);

    // A reload that no longer allows it: the flow is judged again at once and dropped.
    lab.cli(&["policy", "reload", "sg", "--config", &group(7001)])
        .unwrap();
    send(&mut lab, 20);
    assert!(received(&mut lab.b).is_empty());
    assert_eq!(lab.drops(0, DropReason::PolicyDrop), 20);
    assert_eq!(lab.list("sg").packets, 2);
    assert_eq!(rule(&lab.list("sg"), "default ingress DROP"), 20);

    // And back.
    lab.cli(&["policy", "reload", "sg", "--config", &group(7000)])
        .unwrap();
    send(&mut lab, 20);
    assert_eq!(received(&mut lab.b).len(), 20);
    assert_eq!(lab.list("sg").packets, 3);
    assert_eq!(rule(&lab.list("sg"), "dpt:7000-7000"), 20);
}

#[test]
fn the_metrics_endpoint_serves_the_flows_each_table_tracks() {
    let mut lab = nat_lab();
    let server =
        metrics::Server::start(Arc::clone(&lab.daemon), "127.0.0.1:0".parse().unwrap()).unwrap();
    let flow_gauges =
        || control_cli::metrics_samples(&server, &["vnb_policy_flows", "vnb_nat_flows"]);
    let gauges = |port_in: u32, nat_egress: u32, nat: u32| {
        vec![
            format!("vnb_policy_flows{{hook=\"port_in\"}} {port_in}"),
            format!("vnb_policy_flows{{hook=\"nat_egress\"}} {nat_egress}"),
            format!("vnb_nat_flows{{network=\"default\"}} {nat}"),
        ]
    };
    assert_eq!(flow_gauges(), gauges(0, 0, 0));

    // A to B, twice on one flow: one flow at the port_in hook.
    let frame = udp4(A, B, 5000, 7000, b"one flow");
    lab.a.send(0, &frame).unwrap();
    lab.a.send(0, &frame).unwrap();
    assert_eq!(received(&mut lab.b).len(), 2);
    assert_eq!(flow_gauges(), gauges(1, 0, 0));

    // A to a socket beyond the network: a second flow at the port_in hook, the first at the
    // NAT egress hook (libvirt-nat runs at both) and in the NAT network's conntrack.
    let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    far.set_read_timeout(Some(WAIT)).unwrap();
    let NetworkMode::Nat(nat) = &lab.daemon.config().networks[0].mode else {
        panic!("the default network is NAT");
    };
    let outside = Endpoint::new(nat.gateway_mac("default").0, [127, 0, 0, 1]);
    let port = far.local_addr().unwrap().port();
    lab.a
        .send(0, &udp4(A, outside, 41000, port, b"out"))
        .unwrap();
    let mut buf = [0; 16];
    assert_eq!(far.recv(&mut buf).unwrap(), 3, "the datagram leaves");
    assert_eq!(flow_gauges(), gauges(2, 1, 1));
}

/// A UDP datagram from A to B carrying `n`.
fn numbered_udp(n: u32) -> Vec<u8> {
    let mut payload = n.to_be_bytes().to_vec();
    payload.resize(64, 0);
    udp4(A, B, 5000 + (n % 8) as u16, 7000, &payload)
}

fn udp_number(frame: &[u8]) -> Option<u32> {
    let bytes = frame.get(42..46)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

#[test]
fn reloading_every_100_ms_under_traffic_loses_no_frame() {
    let mut lab = nat_lab();
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let stop = Arc::clone(&stop);
        let control = lab.server.path().to_owned();
        thread::spawn(move || {
            let mut reloads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
                // Alternate two configurations: each reload is a new generation.
                let config = match reloads % 2 {
                    0 => "gateway 192.168.122.1\nnetwork 192.168.122.0/24\n",
                    _ => LIBVIRT_NAT,
                };
                cli_at(&control, &["policy", "reload", "nat", "--config", config]).unwrap();
                reloads += 1;
            }
            reloads
        })
    };
    let start = Instant::now();
    let (mut sent, mut received) = (0u32, 0u32);
    while start.elapsed() < Duration::from_secs(3) || received < sent {
        if sent - received < 128 && start.elapsed() < Duration::from_secs(3) {
            let frames: Vec<Vec<u8>> = (sent..sent + 32).map(numbered_udp).collect();
            sent += lab
                .a
                .send_batch(0, &NetHdr::plain(), frames.iter().map(Vec::as_slice))
                .unwrap() as u32;
        }
        let got = lab
            .b
            .recv_batch(0, 64, WAIT, |_, data| {
                if let Some(n) = udp_number(data).filter(|_| data[12..14] == [8, 0]) {
                    assert_eq!(n, received, "in order");
                    received += 1;
                }
            })
            .unwrap();
        assert!(got > 0, "stalled at {received} of {sent}");
    }
    stop.store(true, Ordering::Relaxed);
    let reloads = reloader.join().unwrap();
    assert!(reloads >= 20, "{reloads} reloads");
    assert_eq!(received, sent, "no frame lost to {reloads} reloads");
    assert_eq!(lab.drops(0, DropReason::PolicyDrop), 0);
    let nat = lab.list("nat");
    assert!(
        nat.packets > u64::from(reloads),
        "flows judged again by each generation"
    );
}

/// Runs allow-all (from the configuration) and a module that faults on frames of 999 bytes in
/// the network's chain (loaded through the control API); sends A's frames to B one at a time,
/// normal ones and 999-byte ones, and checks that the faulty frames get the fail mode while the
/// rest pass, and that the fifth fault quarantines the module and rolls back to allow-all.
fn faulty_run(fault: &str, fail_mode: FailMode) {
    let mut lab = lab(|dir| {
        let wasm = policy_wasm::policy_wasm("allow-all");
        let path = module(dir, "allow_all.wasm", &wasm);
        vec![policy("all", path, "", FailMode::Closed)]
    });
    let faulty = || {
        let wasm = faulty::faulty_wat(fault, Some((8, 999)));
        let path = module(&lab.dir, "faulty.wasm", &wasm);
        PolicyConfig {
            network: Some("default".into()),
            ..policy("faulty", path, "", fail_mode)
        }
    };
    lab.policies().load(faulty()).unwrap();
    for n in 1..=5 {
        // One frame at a time: a call's frames all get the fail mode when it faults.
        let bad = numbered(B.mac, A.mac, 1000 + n, 999);
        lab.a.send(0, &bad).unwrap();
        match fail_mode {
            FailMode::Open => {
                let got = lab.b.recv(WAIT).unwrap().expect("fail open passes it");
                assert_eq!(got.1, bad, "frame {n}");
            }
            _ => {
                let deadline = Instant::now() + WAIT;
                while lab.drops(0, DropReason::PolicyDrop) < u64::from(n) {
                    assert!(Instant::now() < deadline, "frame {n} not dropped");
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let normal = numbered(B.mac, A.mac, n, 100);
        lab.a.send(0, &normal).unwrap();
        let got = lab.b.recv(WAIT).unwrap();
        let got = got.unwrap_or_else(|| panic!("normal frame {n} lost")).1;
        assert_eq!(got, normal, "frame {n}");
    }
    if fail_mode == FailMode::Closed {
        assert_eq!(lab.drops(0, DropReason::PolicyDrop), 5);
    }
    // Five faults within the window: quarantined, rolled back to the generation before it.
    let names: Vec<String> = lab.policies().list().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["all"]);
    for n in [100, 999] {
        let frame = numbered(B.mac, A.mac, 2000 + n as u32, n);
        lab.a.send(0, &frame).unwrap();
        let got = lab
            .b
            .recv(WAIT)
            .unwrap()
            .expect("forwarding after the roll-back");
        assert_eq!(got.1, frame);
    }
    // The quarantined module is refused until it changes.
    let refused = lab.policies().load(faulty()).unwrap_err();
    assert!(refused.contains("quarantined"), "{refused}");
}

#[test]
fn a_trapping_module_fails_closed_and_the_datapath_runs_on() {
    faulty_run("trap", FailMode::Closed);
}

#[test]
fn a_looping_module_times_out_fails_open_and_the_datapath_runs_on() {
    faulty_run("loop", FailMode::Open);
}

/// A's address with its two 16-bit words swapped: outside the network, and the same IPv4
/// header checksum as A's.
const SWAPPED: [u8; 4] = [A.ip[2], A.ip[3], A.ip[0], A.ip[1]];

/// A guest that rewrites its frames after posting them, as a hostile guest may while the
/// device works on them: A sends UDP from its own address while a thread keeps switching the
/// source address in A's transmit buffers between A's and one outside the network.
/// clean-traffic (judging every frame) drops the frames it sees spoofed; B must never receive
/// one, whatever the timing: the bytes delivered are the bytes judged.
#[test]
fn a_guest_rewriting_frames_after_posting_them_cannot_pass_unjudged_bytes() {
    let mut lab = lab(|_| Vec::new());
    let wasm = policy_wasm::policy_wasm("clean-traffic");
    let path = module(&lab.dir, "clean_traffic.wasm", &wasm);
    let [a, b] = [A, B].map(|e| {
        let mac = e.mac.map(|x| format!("{x:02x}")).join(":");
        let ip = e.ip.map(|x| x.to_string()).join(".");
        format!("mac {mac} ip {ip}")
    });
    let config = format!("port {} {a}\nport {} {b}\n", lab.ids[0].0, lab.ids[1].0);
    lab.policies()
        .load(policy("clean", path, &config, FailMode::Closed))
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let stop = Arc::clone(&stop);
        let mem = lab.a.memory().mmap().clone();
        let sources: Vec<_> = lab
            .a
            .tx_frame_addresses(0)
            .unwrap()
            .into_iter()
            .map(|frame| frame.unchecked_add(26))
            .collect();
        thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for ip in [SWAPPED, A.ip] {
                    for &at in &sources {
                        mem.write_slice(&ip, at).unwrap();
                    }
                }
                flips += 1;
            }
            flips
        })
    };
    let dropped = |lab: &Lab| lab.drops(0, DropReason::PolicyDrop) as u32;
    let start = Instant::now();
    let (mut sent, mut received, mut spoofed) = (0u32, 0u32, 0u32);
    while start.elapsed() < Duration::from_secs(3) || received + dropped(&lab) < sent {
        if sent - received - dropped(&lab) < 128 && start.elapsed() < Duration::from_secs(3) {
            let frames: Vec<Vec<u8>> = (sent..sent + 32).map(numbered_udp).collect();
            sent += lab
                .a
                .send_batch(0, &NetHdr::plain(), frames.iter().map(Vec::as_slice))
                .unwrap() as u32;
        }
        lab.b
            .recv_batch(0, 64, QUIET, |_, data| {
                if data[12..14] == [8, 0] {
                    received += 1;
                    if data[26..30] != A.ip {
                        spoofed += 1;
                    }
                }
            })
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(30), "stalled");
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    let drops = dropped(&lab);
    assert_eq!(
        spoofed, 0,
        "B received {spoofed} frames the policy never judged"
    );
    assert_eq!(received + drops, sent, "every frame delivered or dropped");
    assert!(
        drops > 0 && received > 0,
        "the rewrites raced the device: {drops} judged spoofed and dropped, {received} \
         delivered, of {sent} ({flips} rounds of rewrites)"
    );
    let rule = lab.list("clean").rules;
    let ip_spoof = rule.iter().find(|r| r.description == "no-ip-spoofing DROP");
    assert_eq!(ip_spoof.expect("listed").packets, u64::from(drops));
}

/// What [`egress_rules_wat`]'s module does with UDP to one destination port: the port, the
/// verdict's action, flags and target (the redirect target, or the mirror's with `MIRROR`),
/// and the rule's description.
type EgressRule = (u16, u8, u8, u32, &'static str);

/// A purpose-built module for the `NatEgress` hook alone: UDP to a port of `rules` gets that
/// rule's verdict (rule id: its index + 2), every other frame is accepted by rule 1.
fn egress_rules_wat(rules: &[EgressRule]) -> Vec<u8> {
    use policy_sdk::abi::{action, io_off, FrameDesc, HOOK_NAT_EGRESS, SNAPSHOT_LEN};
    use policy_sdk::abi::{Verdict, DESC_SIZE, VERDICT_SIZE};
    use policy_sdk::manifest::{encode, encoded_len, Manifest};
    use std::mem::offset_of;
    const M: Manifest<'static> = Manifest {
        name: "egress-rules",
        version: "1",
        hooks: 1 << HOOK_NAT_EGRESS,
        caps: 0,
        memory_pages: 2,
        maps: &[],
        counters: &[],
    };
    const LEN: usize = encoded_len(&M);
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("\\{b:02x}")).collect() };
    let manifest = hex(&encode::<LEN>(&M));
    // Descriptions live past the I/O area.
    let (mut data, mut describe, mut at) = (String::new(), String::new(), 0x1_0000);
    let mut matches = String::new();
    let rule_words = |act: u8, flags: u8, target: u32, rule: usize| {
        let mirror = if flags & policy_sdk::abi::vflag::MIRROR != 0 {
            target
        } else {
            0
        };
        format!(
            "(local.set $action (i32.const {act})) (local.set $flags (i32.const {flags})) \
             (local.set $target (i32.const {target})) (local.set $mirror (i32.const {mirror})) \
             (local.set $rule (i32.const {rule}))"
        )
    };
    let described = [(1, "other ACCEPT")]
        .into_iter()
        .chain(rules.iter().enumerate().map(|(i, r)| (i + 2, r.4)));
    for (id, text) in described {
        data += &format!("(data (i32.const {at}) \"{}\")\n", hex(text.as_bytes()));
        describe += &format!(
            "(drop (call $describe (i32.const {id}) (i32.const {at}) (i32.const {})))\n",
            text.len()
        );
        at += 256;
    }
    for (i, &(port, act, flags, target, _)) in rules.iter().enumerate() {
        // The port as a little-endian load of its network-order bytes reads it.
        let loaded = port.swap_bytes();
        matches += &format!(
            "(if (i32.eq (local.get $port) (i32.const {loaded})) (then {}))\n",
            rule_words(act, flags, target, i + 2)
        );
    }
    let default = rule_words(action::ACCEPT, 0, 0, 1);
    let text = format!(
        r#"(module
          (import "pol" "rule_describe" (func $describe (param i32 i32 i32) (result i32)))
          (memory (export "memory") 2)
          {data}
          (func (export "policy_abi_v1"))
          (func (export "pol_io") (result i32) (i32.const 0))
          (func (export "pol_init") (param i32) (result i32) {describe} (i32.const 0))
          (func (export "pol_on_new_flow") (param $n i32) (result i32)
            (local $i i32) (local $d i32) (local $port i32)
            (local $action i32) (local $flags i32) (local $target i32) (local $mirror i32)
            (local $rule i32)
            (block $done (loop $next
              (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
              (local.set $d (i32.add (i32.const {desc}) (i32.mul (local.get $i) (i32.const {desc_size}))))
              (local.set $port (i32.const -1))
              (if (i32.eq (i32.load8_u offset={proto} (local.get $d)) (i32.const 17))
                (then (local.set $port (i32.load16_u offset=2 (i32.add
                  (i32.add (i32.const {snap}) (i32.mul (local.get $i) (i32.const {snap_len})))
                  (i32.load8_u offset={l4} (local.get $d)))))))
              {default}
              {matches}
              (local.set $d (i32.add (i32.const {verdict}) (i32.mul (local.get $i) (i32.const {verdict_size}))))
              (i32.store8 offset={v_action} (local.get $d) (local.get $action))
              (i32.store8 offset={v_flags} (local.get $d) (local.get $flags))
              (i32.store offset={v_target} (local.get $d) (local.get $target))
              (i32.store offset={v_mirror} (local.get $d) (local.get $mirror))
              (i32.store offset={v_rule} (local.get $d) (local.get $rule))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $next)))
            (local.get $n))
          (@custom "pol_manifest" "{manifest}"))"#,
        desc = io_off::DESC,
        desc_size = DESC_SIZE,
        proto = offset_of!(FrameDesc, ip_proto),
        l4 = offset_of!(FrameDesc, l4_off),
        snap = io_off::SNAP,
        snap_len = SNAPSHOT_LEN,
        verdict = io_off::VERDICT,
        verdict_size = VERDICT_SIZE,
        v_action = offset_of!(Verdict, action),
        v_flags = offset_of!(Verdict, flags),
        v_target = offset_of!(Verdict, target),
        v_mirror = offset_of!(Verdict, mirror),
        v_rule = offset_of!(Verdict, rule),
    );
    wat::parse_str(text).expect("the egress-rules module assembles")
}

/// The NAT egress hook with the `user` egress (see [`nat_egress_scenario`]), to sockets on
/// loopback.
#[test]
fn the_nat_egress_hook_judges_what_leaves_the_network() {
    nat_egress_scenario(lab_with(|_, c| reach_host_loopback(c)), [127, 0, 0, 1]);
}

const INSIDE: &str = "VNB_POLICY_DATAPATH_NETNS";

/// The NAT egress hook with the `kernel` egress (see [`nat_egress_scenario`]), in a namespace
/// this test makes: the TAP holds the gateway address, and the sockets are on an address of
/// the namespace's loopback beyond the network, reached through the kernel.
#[test]
fn the_nat_egress_hook_judges_what_leaves_through_the_kernel() {
    netns::run_inside("vnb-natpol", "nat_egress_through_the_kernel_inside", INSIDE);
}

#[test]
#[ignore = "run inside its namespace by the_nat_egress_hook_judges_what_leaves_through_the_kernel"]
fn nat_egress_through_the_kernel_inside() {
    netns::assert_inside(INSIDE);
    netns::run("ip", &["link", "set", "lo", "up"]);
    netns::run("ip", &["addr", "add", "10.200.0.1/32", "dev", "lo"]);
    let lab = lab_with(|_, config| {
        let NetworkMode::Nat(nat) = &mut config.networks[0].mode else {
            panic!("the default network is NAT");
        };
        nat.egress = Egress::Kernel {
            interface: "vnbnat0".into(),
        };
    });
    nat_egress_scenario(lab, [10, 200, 0, 1]);
}

/// A module at the NAT egress hook alone drops, rejects, mirrors and redirects UDP flows from
/// A to sockets of this test (at `far`, beyond the network) by destination port and accepts
/// the rest; the gateway's own answers (a ping to it) are not judged there; drops are counted
/// on the gateway port and every frame on its rule.
fn nat_egress_scenario(mut lab: Lab, far: [u8; 4]) {
    use policy_sdk::abi::{action, vflag};
    let sockets: Vec<std::net::UdpSocket> = (0..5)
        .map(|_| {
            let s = std::net::UdpSocket::bind((std::net::Ipv4Addr::from(far), 0)).unwrap();
            s.set_read_timeout(Some(QUIET)).unwrap();
            s
        })
        .collect();
    let port = |i: usize| sockets[i].local_addr().unwrap().port();
    let (pass, dropped, rejected, mirrored, redirected) = (0, 1, 2, 3, 4);
    let b = lab.ids[1].0;
    let rules: [EgressRule; 4] = [
        (port(dropped), action::DROP, 0, 0, "udp dpt DROP"),
        (port(rejected), action::REJECT, 0, 0, "udp dpt REJECT"),
        (
            port(mirrored),
            action::ACCEPT,
            vflag::MIRROR,
            b,
            "udp dpt ACCEPT MIRROR",
        ),
        (port(redirected), action::REDIRECT, 0, b, "udp dpt REDIRECT"),
    ];
    let path = module(&lab.dir, "egress_rules.wasm", &egress_rules_wat(&rules));
    lab.policies()
        .load(policy("egress", path, "", FailMode::Closed))
        .unwrap();
    let NetworkMode::Nat(nat) = &lab.daemon.config().networks[0].mode else {
        panic!("the default network is NAT");
    };
    let gateway_mac = nat.gateway_mac("default").0;
    let gateway = lab.daemon.nat_network("default").unwrap().port();
    let outside = Endpoint::new(gateway_mac, far);
    let send = |lab: &mut Lab, i: usize, payload: &[u8]| {
        let frame = udp4(A, outside, 41000 + i as u16, port(i), payload);
        lab.a.send(0, &frame).unwrap();
        frame
    };
    let arrived = |i: usize| {
        let mut buf = [0; 64];
        let mut got = Vec::new();
        while let Ok(n) = sockets[i].recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    };

    // Accepted, three times on one flow: judged once, counted three times on rule 1.
    for _ in 0..3 {
        send(&mut lab, pass, b"pass");
    }
    assert_eq!(arrived(pass), vec![b"pass".to_vec(); 3]);
    // Dropped twice, counted on the gateway port.
    send(&mut lab, dropped, b"drop");
    send(&mut lab, dropped, b"drop");
    assert!(arrived(dropped).is_empty(), "the dropped flow leaves");
    // Rejected: an ICMP port unreachable from the destination, quoting the datagram.
    let sent = send(&mut lab, rejected, b"reject");
    let icmp = loop {
        let (_, f) = lab.a.recv(WAIT).unwrap().expect("an ICMP error");
        if f[12..14] == [0x08, 0x00] {
            break f;
        }
    };
    assert_eq!((&icmp[0..6], &icmp[6..12]), (&A.mac[..], &gateway_mac[..]));
    assert_eq!((&icmp[26..30], &icmp[30..34]), (&far[..], &A.ip[..]));
    assert_eq!(
        (icmp[23], icmp[34], icmp[35]),
        (1, 3, 3),
        "port unreachable"
    );
    assert_eq!(&icmp[42..], &sent[14..]);
    assert!(arrived(rejected).is_empty(), "the rejected flow leaves");
    // Mirrored: out, and a copy to B; redirected: to B instead.
    let mirror = send(&mut lab, mirrored, b"mirror");
    assert_eq!(arrived(mirrored), vec![b"mirror".to_vec()]);
    let redirect = send(&mut lab, redirected, b"redirect");
    assert_eq!(received(&mut lab.b), vec![mirror, redirect]);
    assert!(
        arrived(redirected).is_empty(),
        "the redirected flow stays in"
    );

    // The gateway's own answers are not egress: a ping to it is answered and not judged.
    let gw = Endpoint::new(gateway_mac, [192, 168, 122, 1]);
    lab.a.send(0, &policy_sdk::frames::ping4(A, gw)).unwrap();
    let reply = loop {
        let (_, f) = lab.a.recv(WAIT).unwrap().expect("an echo reply");
        if f[12..14] == [0x08, 0x00] {
            break f;
        }
    };
    assert_eq!((reply[23], reply[34]), (1, 0), "ICMP echo reply");

    let info = lab.list("egress");
    assert_eq!(info.packets, 5, "one judged frame per flow: {info:?}");
    let rule = |text: &str| {
        let r = info.rules.iter().find(|r| r.description == text);
        r.unwrap_or_else(|| panic!("rule {text:?} in {info:?}"))
            .packets
    };
    let counted = ["other ACCEPT", "udp dpt DROP", "udp dpt REJECT"].map(rule);
    assert_eq!(counted, [3, 2, 1]);
    let counted = ["udp dpt ACCEPT MIRROR", "udp dpt REDIRECT"].map(rule);
    assert_eq!(counted, [1, 1]);
    let stats = lab.daemon.switch().port_info(gateway).unwrap().stats;
    assert_eq!(stats.drops.get(DropReason::PolicyDrop), 2);
    assert_eq!(stats.drops.get(DropReason::PolicyReject), 1);
    assert_eq!(
        lab.drops(0, DropReason::PolicyDrop),
        0,
        "not judged at port-in"
    );
}
