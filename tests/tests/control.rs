//! The control socket and every CLI view against a running daemon: the daemon and its control
//! socket start in-process, the frontend harness attaches NICs to its ports, and the CLI's
//! subcommands (parsed from argv as the binary parses them) ask over the socket.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use clap::Parser;
use tests::control_cli;
use tests::frontend::connection::Role;
use tests::frontend::frames::{number, numbered};
use tests::frontend::net::{NetOptions, VirtioNet};
use tests::frontend::replay::FrontendKind;
use vhost_net_backend::cli::{self, error_chain, Args};
use vhost_net_backend::config::{ControlConfig, ForwardConfig, PolicyConfig};
use vhost_net_backend::control::hooks::{Conntrack, Forwards, Leases, Policies};
use vhost_net_backend::control::protocol::{
    FdbView, FlowInfo, LeaseInfo, Link, PolicyInfo, PortView, QueueView, QueuesView, RuleInfo,
    ShowView, StatsView,
};
use vhost_net_backend::control::server::ServerError;
use vhost_net_backend::control::Server;
use vhost_net_backend::Daemon;

const WAIT: Duration = Duration::from_secs(5);
const BROADCAST: [u8; 6] = [0xff; 6];

fn mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x00, 0x00, i as u8 + 1]
}

/// The control tests' daemon: the default config with `n` ports.
struct Lab(control_cli::Lab);

impl std::ops::Deref for Lab {
    type Target = control_cli::Lab;
    fn deref(&self) -> &control_cli::Lab {
        &self.0
    }
}

impl Lab {
    fn new(n: usize) -> Lab {
        Lab(control_cli::Lab::start(n, mac, |_| {}))
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.path(name)
    }

    fn attach(&self, socket: &Path) -> VirtioNet {
        let options = NetOptions {
            frontend: FrontendKind::Qemu,
            timeout: WAIT,
            ..NetOptions::default()
        };
        VirtioNet::new(Role::Connect(socket.to_owned()), options).unwrap()
    }
}

/// NIC `i` broadcasts once so that the switch learns it; every other NIC drains it.
fn introduce(nics: &mut [(usize, &mut VirtioNet)]) {
    for k in 0..nics.len() {
        let from = nics[k].0;
        nics[k]
            .1
            .send(0, &numbered(BROADCAST, mac(from), 0, 60))
            .unwrap();
        for (j, (_, nic)) in nics.iter_mut().enumerate() {
            if j != k {
                let (_, f) = nic.recv(WAIT).unwrap().expect("broadcast");
                assert_eq!(&f[6..12], &mac(from));
            }
        }
    }
}

/// Sends `count` frames from `a` (NIC number `from`) to `b` (`to`), each received before the
/// next is sent.
fn unicast(a: &mut VirtioNet, from: usize, b: &mut VirtioNet, to: usize, first: u32, count: u32) {
    for n in first..first + count {
        a.send(0, &numbered(mac(to), mac(from), n, 100)).unwrap();
        let (_, got) = b
            .recv(WAIT)
            .unwrap()
            .unwrap_or_else(|| panic!("frame {n} lost"));
        assert_eq!(number(&got), Some(n));
    }
}

#[test]
fn the_control_socket_is_the_owners_only_and_not_stolen() {
    let lab = Lab::new(0);
    let mode = std::fs::metadata(lab.server.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = Server::start(
        Arc::clone(&lab.daemon),
        &ControlConfig {
            socket: Some(lab.server.path().to_owned()),
            mode: 0o600,
        },
    );
    assert!(matches!(again, Err(ServerError::InUse(_))), "{again:?}");

    // A stale socket file that no one serves is replaced; the mode is the configured one.
    let stale = lab.socket("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let other = Server::start(
        Arc::clone(&lab.daemon),
        &ControlConfig {
            socket: Some(stale.clone()),
            mode: 0o660,
        },
    )
    .unwrap();
    let mode = std::fs::metadata(&stale).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    drop(other);
    assert!(!stale.exists(), "removed when the server stops");
}

/// Sends a frame with a multicast source from `a` (the first port) and waits until the switch
/// has dropped and counted it.
fn send_multicast_source(lab: &Lab, a: &mut VirtioNet) {
    a.send(0, &numbered(mac(1), BROADCAST, 99, 60)).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while lab
        .daemon
        .port_report(lab.daemon.ports()[0])
        .unwrap()
        .switch
        .drops
        .total()
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the drop is counted");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn show_fdb_and_stats_see_the_traffic() {
    let lab = Lab::new(2);
    let mut a = lab.attach(&lab.socket("vm0.sock"));
    let mut b = lab.attach(&lab.socket("vm1.sock"));
    introduce(&mut [(0, &mut a), (1, &mut b)]);
    unicast(&mut a, 0, &mut b, 1, 1, 30);
    unicast(&mut b, 1, &mut a, 0, 1, 20);
    // A frame with a multicast source: dropped by the switch and counted.
    send_multicast_source(&lab, &mut a);

    let show: ShowView = lab.json(&["show"]);
    assert_eq!(show.networks.len(), 1);
    assert_eq!(show.networks[0].name, "default");
    // The NAT gateway's port comes first, then the guests'.
    assert_eq!(show.networks[0].ports, [0, 1, 2]);
    assert_eq!(show.networks[0].learned, 2);
    let links: Vec<Link> = show.ports.iter().map(|p| p.link).collect();
    assert_eq!(links, [Link::Up, Link::Up]);
    assert_eq!(show.ports[0].rx_frames, 1 + 30 + 1);
    assert_eq!(show.ports[1].rx_frames, 1 + 20);
    assert_eq!(show.ports[1].tx_frames, 1 + 30);
    assert_eq!(show.ports[0].drops, 1);
    let text = lab.cli(&["show"]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1].starts_with("default  nat   192.168.122.1/24") && lines[1].ends_with("port1 (up)"),
        "{text}"
    );
    assert!(lines[2].trim() == "port2 (up)", "{text}");
    assert!(
        text.contains("port2  default  up    52:54:00:00:00:02"),
        "{text}"
    );

    let fdb: FdbView = lab.json(&["fdb"]);
    let entries: Vec<(String, u32, bool)> = fdb
        .entries
        .iter()
        .map(|e| (e.mac.clone(), e.port, e.is_static))
        .filter(|e| e.1 != 0)
        .collect();
    assert_eq!(
        entries,
        [
            ("52:54:00:00:00:01".to_string(), 1, false),
            ("52:54:00:00:00:02".to_string(), 2, false)
        ]
    );
    let gateway: Vec<bool> = fdb
        .entries
        .iter()
        .filter(|e| e.port == 0)
        .map(|e| e.is_static)
        .collect();
    assert_eq!(gateway, [true], "the gateway's MAC is a static entry");
    let text = lab.cli(&["fdb", "default"]).unwrap();
    assert!(
        text.contains("default  -     52:54:00:00:00:01  port1  learned"),
        "{text}"
    );
    assert_eq!(
        lab.cli(&["fdb", "nope"]).unwrap_err(),
        "no network is named \"nope\""
    );

    let stats: StatsView = lab.json(&["stats", "port1"]);
    assert_eq!(stats.ports.len(), 1);
    let drops: Vec<&(String, u64)> = stats.ports[0]
        .switch_drops
        .iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(drops, [&("source_multicast".to_string(), 1)]);
    let text = lab
        .cli(&["stats", &lab.socket("vm1.sock").display().to_string()])
        .unwrap();
    assert!(text.starts_with("port2 "), "{text}");
    assert!(text.contains("switch drops: none"), "{text}");
    assert_eq!(lab.cli(&["stats", "port7"]).unwrap_err(), "no port port7");
}

/// Port 1's vring `index` as `queues` shows it, once `ready` holds (the device publishes
/// used entries of a transmit queue after the frames went on).
fn queue_of_port1(lab: &Lab, index: usize, ready: impl Fn(&QueueView) -> bool) -> QueueView {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v: QueuesView = lab.json(&["queues", "port1"]);
        let q = v.ports[0].queues[index].clone();
        if ready(&q) {
            return q;
        }
        assert!(std::time::Instant::now() < deadline, "{q:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn queues_show_each_vring_as_the_device_and_the_driver_see_it() {
    let lab = Lab::new(3);
    let mut a = lab.attach(&lab.socket("vm0.sock"));
    let mut b = lab.attach(&lab.socket("vm1.sock"));
    introduce(&mut [(0, &mut a), (1, &mut b)]);
    unicast(&mut a, 0, &mut b, 1, 1, 30);

    let all: QueuesView = lab.json(&["queues"]);
    let ids: Vec<u32> = all.ports.iter().map(|p| p.id).collect();
    assert_eq!(ids, [1, 2, 3]);
    let kinds: Vec<(usize, &str)> = all.ports[0]
        .queues
        .iter()
        .map(|q| (q.index, q.kind.as_str()))
        .collect();
    assert_eq!(kinds, [(0, "rx"), (1, "tx")]);
    // Port 3 has no frontend: its rings are stopped, with nothing in guest memory to read.
    for q in &all.ports[2].queues {
        let s = &q.state;
        assert!(
            !s.running && !s.started && !s.kick_fd && s.guest.is_none(),
            "{q:?}"
        );
    }

    // a sent 31 frames (the broadcast, then 30), all taken and returned.
    let tx = queue_of_port1(&lab, 1, |q| q.state.guest.is_some_and(|g| g.used_idx == 31));
    let s = &tx.state;
    let guest = s.guest.unwrap();
    assert!(
        s.running && s.started && s.enabled && s.kick_fd && s.call_fd,
        "{s:?}"
    );
    assert_eq!(s.size, a.vring(1).size());
    assert_eq!(s.event_idx, a.vring(1).event_idx());
    assert_eq!((s.next_avail, s.avail_seen, guest.avail_idx), (31, 31, 31));
    assert_eq!(guest.avail_idx, a.vring(1).avail_idx());
    assert_eq!((s.next_used, guest.used_idx), (31, 31));
    assert_eq!(guest.used_idx, a.vring(1).used_idx().unwrap());
    // a received b's broadcast: one receive buffer used, the rest still available.
    let rx = queue_of_port1(&lab, 0, |q| q.state.next_used == 1);
    let guest = rx.state.guest.unwrap();
    assert_eq!((rx.state.next_avail, guest.used_idx), (1, 1));
    assert_eq!(guest.avail_idx, a.vring(0).avail_idx());

    let text = lab.cli(&["queues"]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("port   queue  state    size  fds"),
        "{text}"
    );
    assert_eq!(lines.len(), 1 + 3 * 2, "{text}");
    assert!(
        lines[2].starts_with("port1  1 tx   running  256   kick,call"),
        "{text}"
    );
    assert!(lines[6].starts_with("port3  1 tx   stopped"), "{text}");
    let one: QueuesView = lab.json(&["queues", &lab.socket("vm1.sock").display().to_string()]);
    assert_eq!(one.ports.len(), 1);
    assert_eq!(one.ports[0].id, 2);
    assert_eq!(lab.cli(&["queues", "port7"]).unwrap_err(), "no port port7");
}

#[test]
fn a_port_added_at_runtime_carries_traffic_and_a_removed_one_loses_its_link() {
    let lab = Lab::new(1);
    let mut a = lab.attach(&lab.socket("vm0.sock"));
    let spec = format!("{},mac=52:54:00:00:00:02", lab.socket("vm1.sock").display());
    let text = lab.cli(&["port", "add", &spec]).unwrap();
    assert!(
        text.contains("port2  default  down  52:54:00:00:00:02"),
        "{text}"
    );
    let added: PortView = lab.json(&[
        "port",
        "add",
        &format!("{},mac=52:54:00:00:00:03", lab.socket("vm2.sock").display()),
    ]);
    assert_eq!((added.id, added.link), (3, Link::Down));
    let mut b = lab.attach(&lab.socket("vm1.sock"));
    introduce(&mut [(0, &mut a), (1, &mut b)]);
    unicast(&mut a, 0, &mut b, 1, 1, 10);

    let e = lab.cli(&["port", "add", &spec]).unwrap_err();
    assert!(e.ends_with("is already a port"), "{e}");
    let e = lab
        .cli(&[
            "port",
            "add",
            &format!("{},network=lan", lab.socket("x.sock").display()),
        ])
        .unwrap_err();
    assert!(e.ends_with("no network is named \"lan\""), "{e}");

    assert_eq!(lab.cli(&["port", "remove", "port2"]).unwrap(), "");
    assert_eq!(lab.cli(&["port", "remove", "3"]).unwrap(), "");
    let show: ShowView = lab.json(&["show"]);
    let ids: Vec<u32> = show.ports.iter().map(|p| p.id).collect();
    assert_eq!(ids, [1]);
    // The removed port's frames go nowhere: a's unicast to b's MAC is flooded to no one.
    a.send(0, &numbered(mac(1), mac(0), 77, 100)).unwrap();
    assert!(b.recv(Duration::from_millis(300)).unwrap().is_none());
    assert_eq!(lab.cli(&["port", "remove", "2"]).unwrap_err(), "no port 2");
}

/// Like [`unicast`], but `b` skips frames from others (and counts them in `foreign`).
fn unicast_among_others(
    a: &mut VirtioNet,
    from: usize,
    b: &mut VirtioNet,
    to: usize,
    first: u32,
    count: u32,
    foreign: &mut u32,
) {
    for n in first..first + count {
        a.send(0, &numbered(mac(to), mac(from), n, 100)).unwrap();
        loop {
            let (_, got) = b
                .recv(WAIT)
                .unwrap()
                .unwrap_or_else(|| panic!("frame {n} lost"));
            if got[6..12] == mac(from) {
                assert_eq!(number(&got), Some(n));
                break;
            }
            *foreign += 1;
        }
    }
}

#[test]
fn ports_come_and_go_while_two_guests_talk() {
    let lab = Lab::new(2);
    let mut a = lab.attach(&lab.socket("vm0.sock"));
    let mut b = lab.attach(&lab.socket("vm1.sock"));
    introduce(&mut [(0, &mut a), (1, &mut b)]);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(0u32));
    let traffic = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        thread::spawn(move || {
            let (mut n, mut foreign_a, mut foreign_b) = (1, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                unicast_among_others(&mut a, 0, &mut b, 1, n, 50, &mut foreign_b);
                unicast_among_others(&mut b, 1, &mut a, 0, n, 50, &mut foreign_a);
                n += 50;
                *sent.lock().unwrap() = n - 1;
            }
            // The broadcasts of the ports that came and went, still queued or already seen.
            foreign_a += a.drain(Duration::from_millis(300)).unwrap().len() as u32;
            foreign_b += b.drain(Duration::from_millis(300)).unwrap().len() as u32;
            (foreign_a, foreign_b)
        })
    };
    for round in 0..10 {
        let socket = lab.socket(&format!("extra{round}.sock"));
        let spec = format!(
            "{},mac=52:54:00:00:00:{:02x}",
            socket.display(),
            0x10 + round
        );
        let added: PortView = lab.json(&["port", "add", &spec]);
        let mut c = lab.attach(&socket);
        let show: ShowView = lab.json(&["show"]);
        assert_eq!(show.ports.len(), 3, "round {round}");
        assert_eq!(show.ports[2].link, Link::Up);
        // The new guest's broadcast reaches both others.
        c.send(
            0,
            &numbered(BROADCAST, [0x52, 0x54, 0, 0, 1, round as u8], 0, 60),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let s: StatsView = lab.json(&["stats", &added.id.to_string()]);
            if s.ports[0].rx_frames == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: no frame from c"
            );
            thread::sleep(Duration::from_millis(10));
        }
        lab.cli(&["port", "remove", &added.id.to_string()]).unwrap();
        drop(c);
    }
    stop.store(true, Ordering::Relaxed);
    let foreign = traffic
        .join()
        .expect("no frame between the two guests was lost");
    assert_eq!(
        foreign,
        (10, 10),
        "each added guest's broadcast reached both, once"
    );
    let exchanged = *sent.lock().unwrap();
    assert!(exchanged >= 50, "traffic ran: {exchanged}");
    let stats: StatsView = lab.json(&["stats"]);
    assert_eq!(stats.ports.len(), 2);
    let device_drops: u64 = stats.ports[0].device_drops.iter().map(|(_, n)| n).sum();
    assert_eq!(device_drops, 0);
}

/// A gateway stand-in that serves the views as the gateway, conntrack and the policy host
/// will: it checks that a registered hook is what the views show.
struct Registered {
    forwards: Mutex<Vec<ForwardConfig>>,
    policies: Mutex<Vec<PolicyConfig>>,
}

impl Leases for Registered {
    fn leases(&self) -> Vec<LeaseInfo> {
        vec![LeaseInfo {
            network: "default".into(),
            expires: i64::MAX / 2,
            mac: "52:54:00:00:00:01".into(),
            ip: "192.168.122.10".into(),
            hostname: Some("alpha".into()),
        }]
    }
}

impl Conntrack for Registered {
    fn flows(&self) -> Vec<FlowInfo> {
        vec![FlowInfo {
            network: "default".into(),
            protocol: "tcp".into(),
            state: "ESTABLISHED".into(),
            expires_in: 431_999,
            src: "192.168.122.10:40000".into(),
            dst: "203.0.113.1:443".into(),
            reply_src: "203.0.113.1:443".into(),
            reply_dst: "192.0.2.1:40000".into(),
            packets: Some(12),
            bytes: Some(3400),
            verdict: Some("accept".into()),
        }]
    }
}

impl Forwards for Registered {
    fn list(&self) -> Vec<ForwardConfig> {
        self.forwards.lock().unwrap().clone()
    }
    fn add(&self, forward: ForwardConfig) -> Result<(), String> {
        self.forwards.lock().unwrap().push(forward);
        Ok(())
    }
    fn remove(&self, forward: &ForwardConfig) -> Result<(), String> {
        let mut all = self.forwards.lock().unwrap();
        let before = all.len();
        all.retain(|f| f != forward);
        if all.len() == before {
            return Err("no such forward".into());
        }
        Ok(())
    }
}

impl Policies for Registered {
    fn list(&self) -> Vec<PolicyInfo> {
        let policies = self.policies.lock().unwrap();
        policies
            .iter()
            .map(|p| PolicyInfo {
                name: p.name.clone(),
                network: p.network.clone(),
                module: p.module.display().to_string(),
                fail_mode: p.fail_mode.to_string(),
                state: "active".into(),
                packets: 421,
                bytes: 31847,
                faults: 0,
                fail_mode_frames: 0,
                rules: vec![RuleInfo {
                    id: 1,
                    description: p.config.clone(),
                    packets: 421,
                    bytes: 31847,
                }],
            })
            .collect()
    }
    fn load(&self, policy: PolicyConfig) -> Result<(), String> {
        self.policies.lock().unwrap().push(policy);
        Ok(())
    }
    fn reload(&self, name: &str, config: Option<String>) -> Result<(), String> {
        let mut all = self.policies.lock().unwrap();
        let p = all
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or("not loaded")?;
        if let Some(c) = config {
            p.config = c;
        }
        Ok(())
    }
    fn unload(&self, name: &str) -> Result<(), String> {
        self.policies.lock().unwrap().retain(|p| p.name != name);
        Ok(())
    }
}

#[test]
fn hooked_views_answer_once_their_part_registers() {
    let lab = Lab::new(0);
    // As if the daemon's NAT network registered nothing.
    let hooks = lab.daemon.hooks();
    hooks.set_leases(None);
    hooks.set_conntrack(None);
    hooks.set_forwards(None);
    hooks.set_policies(None);
    for (args, error) in [
        (&["leases"][..], "no NAT network runs a gateway"),
        (&["conntrack"], "no part of this daemon tracks connections"),
        (&["policy", "list"], "no policy host runs"),
        (&["forward", "list"], "no NAT network takes port forwards"),
    ] {
        let e = lab.cli(args).unwrap_err();
        assert!(e.starts_with(error), "{args:?}: {e}");
    }
    let show: ShowView = lab.json(&["show"]);
    assert_eq!(show.networks[0].gateway_running, Some(false));

    let part = Arc::new(Registered {
        forwards: Mutex::new(Vec::new()),
        policies: Mutex::new(Vec::new()),
    });
    hooks.set_leases(Some(part.clone()));
    hooks.set_conntrack(Some(part.clone()));
    hooks.set_forwards(Some(part.clone()));
    hooks.set_policies(Some(part.clone()));

    let show: ShowView = lab.json(&["show"]);
    assert_eq!(show.networks[0].gateway_running, Some(true));
    let text = lab.cli(&["leases"]).unwrap();
    assert!(
        text.contains("default  192.168.122.10  52:54:00:00:00:01  alpha"),
        "{text}"
    );
    let leases: Vec<LeaseInfo> = lab.json(&["leases"]);
    assert_eq!(leases.len(), 1);
    let text = lab.cli(&["conntrack"]).unwrap();
    assert!(
        text.contains("tcp    ESTABLISHED  119h59m59s  192.168.122.10:40000  203.0.113.1:443"),
        "{text}"
    );
    let flows: Vec<FlowInfo> = lab.json(&["conntrack"]);
    assert_eq!(flows[0].packets, Some(12));

    lab.cli(&["forward", "add", "tcp", "0.0.0.0:2222", "192.168.122.10:22"])
        .unwrap();
    let e = lab
        .cli(&[
            "forward",
            "add",
            "tcp",
            "127.0.0.1:2222",
            "192.168.122.11:22",
        ])
        .unwrap_err();
    assert_eq!(e, "listen: tcp 127.0.0.1:2222 is forwarded twice");
    let e = lab
        .cli(&["forward", "add", "tcp", "0.0.0.0:2223", "10.0.0.1:22"])
        .unwrap_err();
    assert!(
        e.starts_with("guest: port forwards go to a host address"),
        "{e}"
    );
    let text = lab.cli(&["forward", "list"]).unwrap();
    assert!(
        text.contains("default  tcp    0.0.0.0:2222  192.168.122.10:22"),
        "{text}"
    );
    lab.cli(&[
        "forward",
        "remove",
        "tcp",
        "0.0.0.0:2222",
        "192.168.122.10:22",
    ])
    .unwrap();
    assert_eq!(part.forwards.lock().unwrap().len(), 0);

    let module = lab.socket("no_smtp.wasm");
    lab.cli(&[
        "policy",
        "load",
        "no-smtp",
        module.to_str().unwrap(),
        "--config",
        "DROP tcp dpt:25",
        "--network",
        "default",
    ])
    .unwrap();
    let e = lab
        .cli(&["policy", "load", "x", "m.wasm", "--fail-mode", "sometimes"])
        .unwrap_err();
    assert_eq!(e, "fail mode \"sometimes\" is not closed, open or baseline");
    let text = lab.cli(&["policy", "list"]).unwrap();
    assert!(
        text.starts_with(
            "Policy no-smtp (network default, fail closed, active, 421 packets, 31847 bytes)"
        ),
        "{text}"
    );
    assert!(
        text.contains(" 421   31847  1     DROP tcp dpt:25"),
        "{text}"
    );
    lab.cli(&[
        "policy",
        "reload",
        "no-smtp",
        "--config",
        "DROP tcp dpt:587",
    ])
    .unwrap();
    let policies: Vec<PolicyInfo> = lab.json(&["policy", "list"]);
    assert_eq!(policies[0].rules[0].description, "DROP tcp dpt:587");
    assert_eq!(
        lab.cli(&["policy", "reload", "other"]).unwrap_err(),
        "not loaded"
    );
    lab.cli(&["policy", "unload", "no-smtp"]).unwrap();
    assert!(part.policies.lock().unwrap().is_empty());
}

#[test]
fn a_daemon_that_is_not_there_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.sock");
    let args = Args::try_parse_from([
        "vhost-net-backend",
        "show",
        "--control",
        path.to_str().unwrap(),
    ])
    .unwrap();
    let e = error_chain(&cli::run(args.command.unwrap()).unwrap_err());
    assert!(
        e.starts_with(&format!("cannot reach the daemon at {}", path.display())),
        "{e}"
    );
}

/// Waits until a capture runs.
fn wait_capturing(daemon: &Daemon) {
    let deadline = std::time::Instant::now() + WAIT;
    while !daemon.captures().is_active() {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture did not start"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// `tshark -r FILE -T fields` with `fields`, one line per frame.
fn tshark(file: &Path, fields: &[&str]) -> Vec<String> {
    let mut cmd = std::process::Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=,"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .expect("tshark runs (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_capture_of_both_directions_reads_back_in_tshark() {
    let lab = Lab::new(2);
    let mut a = lab.attach(&lab.socket("vm0.sock"));
    let mut b = lab.attach(&lab.socket("vm1.sock"));
    introduce(&mut [(0, &mut a), (1, &mut b)]);
    let file = lab.socket("port1.pcapng");
    let path = file.to_str().unwrap();
    let done = thread::scope(|s| {
        let capture = s.spawn(|| lab.cli(&["capture", "port1", "-w", path, "--count", "20"]));
        wait_capturing(&lab.daemon);
        unicast(&mut a, 0, &mut b, 1, 1, 10);
        unicast(&mut b, 1, &mut a, 0, 101, 10);
        capture.join().unwrap()
    });
    assert_eq!(done.unwrap(), format!("20 frames written to {path}\n"));
    assert!(
        !lab.daemon.captures().is_active(),
        "the capture ended with its count"
    );

    let frames = tshark(
        &file,
        &[
            "frame.len",
            "eth.src",
            "eth.dst",
            "frame.packet_flags_direction",
            "frame.interface_name",
        ],
    );
    assert_eq!(frames.len(), 20, "{frames:?}");
    for (i, line) in frames.iter().enumerate() {
        let (src, dst, dir) = if i < 10 {
            ("52:54:00:00:00:01", "52:54:00:00:00:02", "0x00000001")
        } else {
            ("52:54:00:00:00:02", "52:54:00:00:00:01", "0x00000002")
        };
        assert_eq!(line, &format!("100,{src},{dst},{dir},port1"), "frame {i}");
    }
    // The frames are the guests' bytes: tshark shows the numbers the harness put in them.
    let data = tshark(&file, &["data.data"]);
    assert!(data[0].starts_with("00000001"), "{}", data[0]);
    assert!(data[10].starts_with("00000065"), "{}", data[10]);
}

#[test]
fn a_timed_capture_ends_and_two_captures_run_at_once() {
    let lab = Lab::new(2);
    let mut a = lab.attach(&lab.socket("vm0.sock"));
    let mut b = lab.attach(&lab.socket("vm1.sock"));
    introduce(&mut [(0, &mut a), (1, &mut b)]);
    let file = lab.socket("quiet.pcapng");
    let path = file.to_str().unwrap();
    let out = lab
        .cli(&["capture", "2", "-w", path, "--duration", "0.3"])
        .unwrap();
    assert_eq!(out, format!("0 frames written to {path}\n"));
    assert!(
        tshark(&file, &["frame.len"]).is_empty(),
        "a valid, empty capture"
    );
    assert!(!lab.daemon.captures().is_active());

    // Two captures at once, of different ports, both see their frames.
    let f0 = lab.socket("a.pcapng");
    let f1 = lab.socket("b.pcapng");
    let (p0, p1) = (f0.to_str().unwrap(), f1.to_str().unwrap());
    thread::scope(|s| {
        let c0 = s.spawn(|| lab.cli(&["capture", "1", "-w", p0, "-c", "5"]));
        let c1 = s.spawn(|| lab.cli(&["capture", "2", "-w", p1, "-c", "5"]));
        let deadline = std::time::Instant::now() + WAIT;
        while !(lab.daemon.captures().wants(bridge_core::PortId(1))
            && lab.daemon.captures().wants(bridge_core::PortId(2)))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "captures did not start"
            );
            thread::sleep(Duration::from_millis(5));
        }
        unicast(&mut a, 0, &mut b, 1, 1, 5);
        c0.join().unwrap().unwrap();
        c1.join().unwrap().unwrap();
    });
    let ins = tshark(&f0, &["frame.packet_flags_direction"]);
    let outs = tshark(&f1, &["frame.packet_flags_direction"]);
    assert_eq!((ins.len(), outs.len()), (5, 5));
    assert!(ins.iter().all(|d| d == "0x00000001") && outs.iter().all(|d| d == "0x00000002"));
    assert_eq!(
        lab.cli(&["capture", "port9", "-c", "1"]).unwrap_err(),
        "no port port9"
    );
}

#[test]
fn the_metrics_endpoint_serves_port_network_and_drop_counters() {
    use vhost_net_backend::metrics;
    let lab = Lab::new(2);
    let server =
        metrics::Server::start(Arc::clone(&lab.daemon), "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut a = lab.attach(&lab.socket("vm0.sock"));
    let mut b = lab.attach(&lab.socket("vm1.sock"));
    introduce(&mut [(0, &mut a), (1, &mut b)]);
    unicast(&mut a, 0, &mut b, 1, 1, 10);
    send_multicast_source(&lab, &mut a);
    let response = metrics::scrape(server.addr()).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    let lines: Vec<&str> = body.lines().collect();
    for expected in [
        "# TYPE vnb_port_rx_frames counter",
        "vnb_port_rx_frames_total{port=\"port1\",network=\"default\"} 12",
        "vnb_port_tx_frames_total{port=\"port2\",network=\"default\"} 11",
        "vnb_port_drops_total{port=\"port1\",network=\"default\",layer=\"switch\",reason=\"source_multicast\"} 1",
        "vnb_port_drops_total{port=\"port2\",network=\"default\",layer=\"device\",reason=\"rx_no_buffers\"} 0",
        "vnb_port_link{port=\"port1\",network=\"default\"} 2",
        "vnb_network_fdb_entries{network=\"default\",kind=\"learned\"} 2",
        "vnb_captures_active 0",
    ] {
        assert!(lines.contains(&expected), "{expected} not in\n{body}");
    }
    assert_eq!(lines.last(), Some(&"# EOF"));

    let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404 Not Found"), "{out}");
}
