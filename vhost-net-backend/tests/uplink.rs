//! Both uplink kinds in a network namespace made by the test (root), with the daemon in this
//! process and no guests: what the control socket's views (`show`, `stats`) tell about them,
//! frames from the LAN counted, the host interface's MTU and MAC as rtnetlink reports them (and
//! followed when they change), the host interface deleted and made again (the uplink goes down
//! and recovers by itself), and the TAP gone with the daemon.
//!
//! `uplinks_in_a_namespace` makes the namespace and runs this same test binary inside it for
//! `inside_the_namespace`, which is ignored otherwise: it changes the namespace it runs in.

mod netns;

use std::process::Command;
use std::time::{Duration, Instant};

use netns::run;
use vhost_net_backend::control::protocol::{ShowView, UplinkInfo};
use vhost_net_backend::control::{render, views};
use vhost_net_backend::Daemon;

const INSIDE: &str = "VNB_UPLINK_NETNS";
/// The af_packet uplink's NIC and its veth peer (the LAN side, with an address).
const NIC: &str = "vnbu0";
const PEER: &str = "vnbu1";
/// The tap uplink's bridge and TAP.
const BRIDGE: &str = "vnbbr";
const TAP: &str = "vnbt0";

const CONFIG: &str = r#"
[[network]]
name = "lan"
mode = "bridge"
[network.uplink]
kind = "af_packet"
interface = "vnbu0"

[[network]]
name = "br"
mode = "bridge"
[network.uplink]
kind = "tap"
interface = "vnbt0"
bridge = "vnbbr"
"#;

#[test]
fn uplinks_in_a_namespace() {
    netns::run_inside("vnb-uplink", "inside_the_namespace", INSIDE);
}

fn nic_up(mtu: u16) {
    let mtu = mtu.to_string();
    run(
        "ip",
        &[
            "link", "add", NIC, "mtu", &mtu, "type", "veth", "peer", "name", PEER, "mtu", &mtu,
        ],
    );
    run("ip", &["link", "set", NIC, "up"]);
    run("ip", &["link", "set", PEER, "up"]);
    run("ip", &["addr", "add", "10.98.0.2/24", "dev", PEER]);
}

fn bridge_up() {
    run("ip", &["link", "add", BRIDGE, "type", "bridge"]);
    run("ip", &["link", "set", BRIDGE, "up"]);
}

/// A link's MAC address, from sysfs.
fn mac_of(dev: &str) -> String {
    run("cat", &[&format!("/sys/class/net/{dev}/address")])
        .trim()
        .to_string()
}

/// The uplink of network `network` in the `show` view.
fn uplink(daemon: &Daemon, network: &str) -> UplinkInfo {
    let view: ShowView = views::show(daemon);
    view.uplinks
        .into_iter()
        .find(|u| u.network == network)
        .unwrap_or_else(|| panic!("no uplink of {network} in show"))
}

/// Waits until the uplink of `network` satisfies `f`.
fn wait_for(daemon: &Daemon, network: &str, what: &str, f: impl Fn(&UplinkInfo) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let u = uplink(daemon, network);
        if f(&u) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {u:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the LAN side send a few broadcast frames into the NIC (ARP requests for an address
/// nobody has: ping fails, which is expected).
fn lan_broadcasts() {
    let _ = Command::new("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "1", "-I", PEER, "10.98.0.9"])
        .output();
}

#[test]
#[ignore = "changes the network namespace it runs in: run by uplinks_in_a_namespace"]
fn inside_the_namespace() {
    netns::assert_inside(INSIDE);
    nic_up(1400);
    bridge_up();
    let dir = std::env::temp_dir();
    let config = vhost_net_backend::config::file::parse(CONFIG, &dir).unwrap();
    let daemon = vhost_net_backend::start(config).unwrap();

    // Both up, with what rtnetlink says about their host interfaces.
    wait_for(&daemon, "lan", "af_packet up", |u| u.up);
    wait_for(&daemon, "br", "tap up", |u| u.up);
    let lan = uplink(&daemon, "lan");
    assert_eq!(
        (
            lan.kind.as_str(),
            lan.interface.as_str(),
            lan.bridge.as_deref()
        ),
        ("af_packet", NIC, None)
    );
    assert_eq!(lan.mtu, Some(1400), "the NIC's MTU");
    assert_eq!(
        lan.mac.as_deref(),
        Some(mac_of(NIC).as_str()),
        "the NIC's MAC"
    );
    let br = uplink(&daemon, "br");
    assert_eq!(
        (
            br.kind.as_str(),
            br.interface.as_str(),
            br.bridge.as_deref()
        ),
        ("tap", TAP, Some(BRIDGE))
    );
    // The bridge takes a port's MAC when the TAP joins: the uplink follows.
    wait_for(&daemon, "br", "the bridge's MAC", |u| {
        u.mac.as_deref() == Some(mac_of(BRIDGE).as_str())
    });
    let tap = run("ip", &["-d", "link", "show", TAP]);
    assert!(
        tap.contains(&format!("master {BRIDGE}")) && tap.contains(",UP"),
        "{tap}"
    );
    assert!(
        tap.contains("tun type tap") && tap.contains("vnet_hdr on") && tap.contains("persist off"),
        "{tap}"
    );
    // Each uplink is a port of its network's switch.
    let show = views::show(&daemon);
    for (network, u) in [("lan", &lan), ("br", &br)] {
        let n = show.networks.iter().find(|n| n.name == network).unwrap();
        assert_eq!(n.ports, vec![u.port], "{network}'s switch ports");
    }
    let text = render::show(&show);
    assert!(
        text.contains(NIC) && text.contains("af_packet") && text.contains("1400"),
        "{text}"
    );

    // Frames from the LAN are counted on the uplink's port (`stats`).
    lan_broadcasts();
    wait_for(&daemon, "lan", "frames from the LAN", |u| u.rx_frames > 0);
    let stats = views::stats(&daemon, None).unwrap();
    let s = stats.uplinks.iter().find(|s| s.interface == NIC).unwrap();
    assert!(s.rx_frames > 0 && s.rx_bytes >= 42 * s.rx_frames, "{s:?}");
    assert_eq!(s.port, lan.port);
    let by_name = views::stats(&daemon, Some(NIC)).unwrap();
    assert!(
        by_name.ports.is_empty() && by_name.uplinks.len() == 1,
        "{by_name:?}"
    );
    let text = render::stats(&stats);
    assert!(text.contains(&format!("uplink {NIC}")), "{text}");

    // The NIC's MTU changes: the uplink follows.
    run("ip", &["link", "set", NIC, "mtu", "1300"]);
    wait_for(&daemon, "lan", "the new MTU", |u| u.mtu == Some(1300));

    // The NIC goes away: the uplink goes down; it comes back (a new index): the uplink reopens
    // by itself and frames from the LAN flow again.
    run("ip", &["link", "del", NIC]);
    wait_for(&daemon, "lan", "down without its NIC", |u| {
        !u.up && u.mtu.is_none()
    });
    nic_up(1500);
    wait_for(&daemon, "lan", "recovered", |u| {
        u.up && u.recoveries == 1 && u.mtu == Some(1500)
    });
    let before = uplink(&daemon, "lan").rx_frames;
    lan_broadcasts();
    wait_for(&daemon, "lan", "frames after the recovery", |u| {
        u.rx_frames > before
    });

    // The bridge goes away: the tap uplink goes down; it comes back: the TAP is enslaved again.
    run("ip", &["link", "del", BRIDGE]);
    wait_for(&daemon, "br", "down without its bridge", |u| !u.up);
    bridge_up();
    wait_for(&daemon, "br", "recovered", |u| u.up && u.recoveries == 1);
    let tap = run("ip", &["link", "show", TAP]);
    assert!(tap.contains(&format!("master {BRIDGE}")), "{tap}");

    // The TAP goes with the daemon.
    daemon.shutdown();
    let gone = Command::new("ip")
        .args(["link", "show", TAP])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the TAP is gone");
}
