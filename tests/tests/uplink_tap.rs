//! A bridged network's TAP uplink with a guest of the frontend harness, in a network namespace
//! made by the test (root): the guest's ARP request and ping reach an address of the kernel
//! bridge through the TAP and the answers come back; the TAP deleted by hand (`ip link del`) is
//! made again by the uplink (in the bridge, up, with virtio-net headers, one recovery) and
//! frames pass both ways again; deleted while no TAP can be made, it is made by the uplink's
//! retry (every second) once that is possible again.
//!
//! `tap_uplink_in_a_namespace` makes the namespace and runs this same test binary inside it for
//! `inside_the_namespace`, which is ignored otherwise: it changes the namespace it runs in.

#[path = "../../vhost-net-backend/tests/netns/mod.rs"]
mod netns;

use std::process::Command;
use std::time::{Duration, Instant};

use bridge_core::wire::{
    ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet,
    IpProtocol, Ipv4Address, Ipv4Packet,
};
use netns::run;
use policy_sdk::frames::{arp_request, ping4, Endpoint};
use tests::frontend::connection::Role;
use tests::frontend::net::{NetOptions, VirtioNet};
use vhost_net_backend::Daemon;

const INSIDE: &str = "VNB_UPLINK_TAP_NETNS";
const BRIDGE: &str = "vnbbr";
const TAP: &str = "vnbt0";
/// The bridge's address in the namespace.
const HOST_IP: [u8; 4] = [10, 97, 0, 1];
const GUEST: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 0x0a], [10, 97, 0, 10]);
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn tap_uplink_in_a_namespace() {
    netns::run_inside("vnb-uptap", "inside_the_namespace", INSIDE);
}

/// Polls `f` until it holds; panics with `what` after [`WAIT`].
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "waited for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ip -d link show TAP`, `None` while there is no TAP.
fn tap_details() -> Option<String> {
    let out = Command::new("ip")
        .args(["-d", "link", "show", TAP])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `ip link show`'s `details` tell a link in [`BRIDGE`] and up.
fn in_bridge_and_up(details: &str) -> bool {
    details.contains(&format!("master {BRIDGE}")) && details.contains(",UP")
}

/// The next frame at `nic` that `wanted` takes, skipping others (the namespace's IPv6).
fn expect(nic: &mut VirtioNet, what: &str, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match nic.recv(left).unwrap() {
            Some((_, frame)) if wanted(&frame) => return frame,
            Some(_) => {}
            None => panic!("no {what}"),
        }
    }
}

/// The ARP reply from [`HOST_IP`] in `frame`, if it is one.
fn arp_reply(frame: &[u8]) -> Option<ArpPacket<&[u8]>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let arp = ArpPacket::new_checked(&frame[14..]).ok()?;
    (eth.ethertype() == EthernetProtocol::Arp
        && arp.operation() == ArpOperation::Reply
        && arp.source_protocol_addr() == HOST_IP)
        .then_some(arp)
}

/// Whether `frame` is an ICMP echo reply from [`HOST_IP`].
fn echo_reply(frame: &[u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    let Ok(ip) = Ipv4Packet::new_checked(&frame[14..]) else {
        return false;
    };
    eth.ethertype() == EthernetProtocol::Ipv4
        && ip.next_header() == IpProtocol::Icmp
        && ip.src_addr() == Ipv4Address::from(HOST_IP)
        && Icmpv4Packet::new_checked(ip.payload())
            .is_ok_and(|icmp| icmp.msg_type() == Icmpv4Message::EchoReply)
}

/// The guest asks for the bridge's MAC and pings it: both requests leave through the TAP, both
/// answers come back through it.
fn both_ways(nic: &mut VirtioNet) {
    nic.send(0, &arp_request(GUEST, HOST_IP)).unwrap();
    let reply = expect(nic, "ARP reply", |f| arp_reply(f).is_some());
    let host_mac: [u8; 6] = arp_reply(&reply)
        .unwrap()
        .source_hardware_addr()
        .try_into()
        .unwrap();
    nic.send(0, &ping4(GUEST, Endpoint::new(host_mac, HOST_IP)))
        .unwrap();
    expect(nic, "echo reply", echo_reply);
}

/// Whether the uplink is up after `recoveries` recoveries.
fn uplink_up(daemon: &Daemon, recoveries: u64) -> bool {
    let u = &daemon.uplinks()[0];
    u.up && u.counters.recoveries == recoveries
}

#[test]
#[ignore = "changes the network namespace it runs in: run by tap_uplink_in_a_namespace"]
fn inside_the_namespace() {
    netns::assert_inside(INSIDE);
    run("ip", &["link", "add", BRIDGE, "type", "bridge"]);
    run("ip", &["link", "set", BRIDGE, "up"]);
    run("ip", &["addr", "add", "10.97.0.1/24", "dev", BRIDGE]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("guest.sock");
    let config = format!(
        "[[network]]\nname = \"br\"\nmode = \"bridge\"\n[network.uplink]\nkind = \"tap\"\n\
         interface = \"{TAP}\"\nbridge = \"{BRIDGE}\"\n\n\
         [[port]]\nsocket = \"{}\"\nnetwork = \"br\"\nmac = \"52:54:00:00:00:0a\"\n",
        socket.display()
    );
    let config = vhost_net_backend::config::file::parse(&config, dir.path()).unwrap();
    let daemon = vhost_net_backend::start(config).unwrap();
    wait_until("the uplink up", || uplink_up(&daemon, 0));
    let options = NetOptions {
        timeout: WAIT,
        ..NetOptions::default()
    };
    let mut nic = VirtioNet::new(Role::Connect(socket), options).unwrap();
    both_ways(&mut nic);

    // Deleted by hand: the uplink makes it again as at start, and frames pass again.
    let before = tap_details().unwrap();
    run("ip", &["link", "del", TAP]);
    wait_until("the TAP made again, in the bridge and up", || {
        tap_details().is_some_and(|t| t != before && in_bridge_and_up(&t))
    });
    let tap = tap_details().unwrap();
    assert!(
        tap.contains("tun type tap") && tap.contains("vnet_hdr on") && tap.contains("persist off"),
        "{tap}"
    );
    wait_until("the uplink up after one recovery", || uplink_up(&daemon, 1));
    both_ways(&mut nic);

    // Deleted while no TAP can be made (/dev/net/tun is /dev/null in this test's mount
    // namespace, which `ip netns exec` made): the uplink stays down, and once /dev/net/tun is
    // back its retry timer makes the TAP, with no link notification to prompt it.
    run("mount", &["--bind", "/dev/null", "/dev/net/tun"]);
    run("ip", &["link", "del", TAP]);
    wait_until("the uplink down", || !daemon.uplinks()[0].up);
    assert!(tap_details().is_none(), "no TAP while none can be made");
    // At least one retry fails while /dev/net/tun is still gone.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(tap_details().is_none(), "no TAP while none can be made");
    run("umount", &["/dev/net/tun"]);
    wait_until("the TAP made again by the retry", || {
        tap_details().is_some_and(|t| in_bridge_and_up(&t))
    });
    wait_until("the uplink up after two recoveries", || {
        uplink_up(&daemon, 2)
    });
    both_ways(&mut nic);

    daemon.shutdown();
    assert!(tap_details().is_none(), "the TAP goes with the daemon");
}
