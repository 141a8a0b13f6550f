//! End-to-end: WASM policies in the daemon with QEMU guests.
//! - A policy reloaded through the control socket every 100 ms while one guest ping-floods the
//!   other and then runs iperf3 both ways: no ping lost, iperf3 succeeds, no frame dropped or
//!   judged by a fail mode while the guests' traffic ran.
//! - clean-traffic stops a guest that spoofs its IPv4 address and then its MAC, while its
//!   neighbour's traffic is untouched and the spoofer passes again once it behaves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tests::control_cli;
use tests::e2e::E2e;
use tests::guest_script::{iperf_receiver, net_script, ping_summary, PingSummary};
use tests::policy_wasm;
use tests::vm_network::{guest, ip, nic, report, Network};
use vhost_net_backend::control::protocol::{PolicyInfo, ShowView, StatsView};

/// How long a guest may take to boot and print its first line (two TCG guests on 2 cores).
const BOOT: Duration = Duration::from_secs(180);
/// How long the traffic of a scenario may take.
const RUN: Duration = Duration::from_secs(240);

/// The drop reasons a policy causes.
const POLICY_DROPS: [&str; 4] = [
    "policy_drop",
    "policy_reject",
    "policy_rate_limit",
    "conntrack_full",
];

/// The module file of policy crate `name`, built on first use.
fn module(name: &str) -> PathBuf {
    policy_wasm::policy_wasm_file(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Per guest port (by socket file name), the policy drops counted so far.
fn policy_drops(control: &Path) -> Vec<(String, u64)> {
    let stats: StatsView = control_cli::json(control, &["stats"]);
    stats
        .ports
        .iter()
        .filter(|p| p.socket.ends_with(".sock"))
        .map(|p| {
            let drops = p
                .switch_drops
                .iter()
                .filter(|(reason, _)| POLICY_DROPS.contains(&reason.as_str()))
                .map(|(_, n)| n)
                .sum();
            let socket = Path::new(&p.socket).file_name().unwrap();
            (socket.to_string_lossy().into_owned(), drops)
        })
        .collect()
}

/// The loaded policy `name`.
fn listed(control: &Path, name: &str) -> PolicyInfo {
    let all: Vec<PolicyInfo> = control_cli::json(control, &["policy", "list"]);
    all.into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("policy {name} is not listed"))
}

/// The lines after `GUEST PHASE <phase>` up to the next phase.
fn phase(lines: &[String], phase: &str) -> Vec<String> {
    let start = format!("GUEST PHASE {phase}");
    lines
        .iter()
        .skip_while(|l| **l != start)
        .skip(1)
        .take_while(|l| !l.starts_with("GUEST PHASE"))
        .cloned()
        .collect()
}

/// Disables IPv6 (libvirt-nat drops it, and a guest's router solicitations would count as
/// policy drops), then says `READY`.
const NO_IPV6: &str = "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6\n\
                       echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6\nsay READY";

#[test]
fn reloading_every_100_ms_during_a_ping_flood_and_iperf3_loses_nothing() {
    let e2e = E2e::start();
    let image = e2e.guest_image();
    let server = net_script(
        &format!("{}/24", ip(0)),
        None,
        &format!("{NO_IPV6}\nsleep 2\nserve\nwait_notified\nsay FINISHED"),
    );
    let client = net_script(
        &format!("{}/24", ip(1)),
        None,
        &format!(
            "{NO_IPV6}\nsleep 2\nreach {peer}\n\
             ping -q -c 1000 -i 0.01 {peer} 2>&1 | grep transmitted | while read -r l; do say FLOOD \"$l\"; done\n\
             iperf {peer} 5\nnotify {peer}\nsay FINISHED",
            peer = ip(0)
        ),
    );
    let path = module("libvirt-nat");
    let mut network = Network::start(
        &e2e,
        &image,
        &[
            guest(0, nic(&e2e, 0), &server),
            guest(1, nic(&e2e, 1), &client),
        ],
    )
    .unwrap();
    let control = e2e.path("control.sock");
    // Two configurations with the same meaning: every reload is a new generation whose
    // module instance passes the canary and judges the established flows again.
    let configs = [
        "network 192.0.2.0/24\ngateway 192.0.2.254\n",
        "gateway 192.0.2.254\nnetwork 192.0.2.0/24\n",
    ];
    let path_arg = path.to_str().unwrap();
    let load = ["policy", "load", "nat", path_arg, "--config", configs[0]];
    control_cli::run(&control, &[&load[..], &["--network", "default"]].concat()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (stop, control) = (Arc::clone(&stop), control.clone());
        thread::spawn(move || {
            let mut reloads = 0usize;
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
                let config = configs[reloads % 2];
                control_cli::run(&control, &["policy", "reload", "nat", "--config", config])
                    .unwrap();
                reloads += 1;
            }
            reloads
        })
    };
    // Counted from when both guests stopped sending IPv6.
    for g in &mut network.guests {
        g.expect("GUEST READY", BOOT).unwrap();
    }
    let before = policy_drops(&control);
    let finished = network.guests[1].expect("GUEST FINISHED", RUN);
    let reloads_at_end = {
        stop.store(true, Ordering::Relaxed);
        reloader.join().unwrap()
    };
    let client = network.guests[1].lines_with("GUEST ");
    finished.unwrap_or_else(|e| panic!("{e}: {client:?}"));
    let _ = network.guests[0].expect("GUEST FINISHED", Duration::from_secs(60));

    let flood: Vec<String> = client
        .iter()
        .filter(|l| l.starts_with("GUEST FLOOD"))
        .cloned()
        .collect();
    assert_eq!(
        ping_summary(&flood),
        Some(PingSummary {
            transmitted: 1000,
            received: 1000
        }),
        "the ping flood lost nothing: {client:?}"
    );
    for direction in ["send", "receive"] {
        let rc = format!("GUEST IPERF-RC {direction} 0");
        assert!(client.contains(&rc), "iperf3 {direction}: {client:?}");
        let figure = iperf_receiver(&client, direction).expect("an iperf3 receiver line");
        assert!(figure.megabytes > 0.0, "{figure:?}");
        report(&format!(
            "policy reloaded every 100 ms: iperf3 TCP vm1 {} vm0: {:.0} Mbit/s",
            if direction == "send" { "->" } else { "<-" },
            figure.megabits_per_second
        ));
    }
    assert!(reloads_at_end >= 50, "{reloads_at_end} reloads");
    assert_eq!(
        policy_drops(&control),
        before,
        "no frame dropped by a policy during {reloads_at_end} reloads"
    );
    let nat = listed(&control, "nat");
    assert_eq!(
        (nat.state.as_str(), nat.faults, nat.fail_mode_frames),
        ("active", 0, 0),
        "no fault, no frame judged by the fail mode"
    );
    report(&format!(
        "policy reloaded {reloads_at_end} times (every 100 ms) while the guests booted, \
         ping-flooded (1000 pings) and ran iperf3 (2 x 5 s)"
    ));
}

#[test]
fn clean_traffic_stops_a_spoofing_guest_and_not_its_neighbour() {
    let e2e = E2e::start();
    let image = e2e.guest_image();
    // On the default network's subnet, so that the neighbour can ping the NAT gateway.
    let (neighbour, spoofer, gateway) = ("192.168.122.11", "192.168.122.12", "192.168.122.1");
    // The neighbour pings the gateway in rounds of 10 from before the spoofer starts until it
    // is done.
    let neighbour_script = net_script(
        &format!("{neighbour}/24"),
        None,
        &format!(
            "{NO_IPV6}\nreach {gateway}\n\
             ( while [ ! -e /tmp/done ]; do ping -c 10 -i 0.2 {gateway} 2>&1 | grep transmitted | \
             while read -r l; do say NPING \"$l\"; done; done ) &\n\
             notify {spoofer}\nwait_notified\ntouch /tmp/done\nwait\nsay FINISHED"
        ),
    );
    let set_mac = |mac: &str| {
        format!("ip link set eth0 down\nip link set eth0 address {mac}\nip link set eth0 up")
    };
    let spoofer_script = net_script(
        &format!("{spoofer}/24"),
        None,
        &format!(
            "{NO_IPV6}\nwait_notified\nreach {neighbour}\n\
             say PHASE clean\npings {neighbour} 5\n\
             ip addr del {spoofer}/24 dev eth0\nip addr add 192.168.122.99/24 dev eth0\n\
             arp -i eth0 -s {neighbour} {neighbour_mac}\n\
             say PHASE spoofed-ip\npings {neighbour} 5\n\
             ip addr del 192.168.122.99/24 dev eth0\nip addr add {spoofer}/24 dev eth0\n\
             {spoof_mac}\nsay PHASE spoofed-mac\npings {neighbour} 5\n\
             {restore_mac}\nsay PHASE restored\nreach {neighbour}\npings {neighbour} 5\n\
             say PHASE end\nnotify {neighbour}\nsay FINISHED",
            neighbour_mac = tests::vm_network::mac(0),
            spoof_mac = set_mac("52:54:00:00:00:99"),
            restore_mac = set_mac(&tests::vm_network::mac(1)),
        ),
    );
    let path = module("clean-traffic");
    let mut network = Network::start(
        &e2e,
        &image,
        &[
            guest(0, nic(&e2e, 0), &neighbour_script),
            guest(1, nic(&e2e, 1), &spoofer_script),
        ],
    )
    .unwrap();
    let control = e2e.path("control.sock");
    let show: ShowView = control_cli::json(&control, &["show"]);
    let port = |socket: &str| {
        let p = show.ports.iter().find(|p| p.socket.ends_with(socket));
        p.unwrap_or_else(|| panic!("no port on {socket}: {show:?}"))
            .id
    };
    let config = format!(
        "port {} mac {} ip {neighbour}\nport {} mac {} ip {spoofer}\n",
        port("vm0.sock"),
        tests::vm_network::mac(0),
        port("vm1.sock"),
        tests::vm_network::mac(1),
    );
    let path_arg = path.to_str().unwrap();
    let load = ["policy", "load", "clean", path_arg, "--config", &config];
    control_cli::run(&control, &[&load[..], &["--network", "default"]].concat()).unwrap();

    let finished = network.guests[1].expect("GUEST FINISHED", BOOT + RUN);
    let spoofing = network.guests[1].lines_with("GUEST ");
    finished.unwrap_or_else(|e| panic!("{e}: {spoofing:?}"));
    let finished = network.guests[0].expect("GUEST FINISHED", Duration::from_secs(60));
    let neighbouring = network.guests[0].lines_with("GUEST ");
    finished.unwrap_or_else(|e| panic!("{e}: {neighbouring:?}"));

    let answered = |p: &str| ping_summary(&phase(&spoofing, p)).map(|s| s.received);
    assert_eq!(answered("clean"), Some(5), "{spoofing:?}");
    assert_eq!(answered("spoofed-ip"), Some(0), "{spoofing:?}");
    assert_eq!(answered("spoofed-mac"), Some(0), "{spoofing:?}");
    assert_eq!(answered("restored"), Some(5), "{spoofing:?}");
    let rounds: Vec<Option<PingSummary>> = neighbouring
        .iter()
        .filter(|l| l.starts_with("GUEST NPING"))
        .map(|l| ping_summary(std::slice::from_ref(l)))
        .collect();
    assert!(!rounds.is_empty(), "{neighbouring:?}");
    for round in &rounds {
        let s = round.unwrap_or_else(|| panic!("{neighbouring:?}"));
        assert_eq!(s.received, s.transmitted, "the neighbour: {neighbouring:?}");
    }

    let drops: std::collections::HashMap<String, u64> =
        policy_drops(&control).into_iter().collect();
    assert_eq!(
        drops["vm0.sock"], 0,
        "the neighbour lost nothing to the policy"
    );
    assert!(drops["vm1.sock"] > 0, "the spoofer's frames were dropped");
    let clean = listed(&control, "clean");
    let rule = |text: &str| {
        let r = clean.rules.iter().find(|r| r.description == text);
        r.unwrap_or_else(|| panic!("{text} in {clean:?}")).packets
    };
    assert!(rule("no-ip-spoofing DROP") > 0, "{clean:?}");
    assert!(rule("no-mac-spoofing DROP") > 0, "{clean:?}");
}
