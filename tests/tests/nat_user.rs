//! The NAT network's `user` egress without a VM: the daemon runs in-process with its embedded
//! default network, guests are harness NICs (a smoltcp stack for TCP, frames built here for
//! the rest), and the hosts they reach are sockets of this test on loopback. The control
//! socket's views of the network (leases, conntrack, port forwards, counters) are asked through
//! the CLI, their counters also through the metrics endpoint. One test runs the network with the
//! `kernel` egress, in a network namespace it makes.

#[path = "../../vhost-net-backend/tests/netns/mod.rs"]
mod netns;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bridge_core::gateway::frame::{ipv4_frame, udp_frame, Ipv4Route};
use bridge_core::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame,
    EthernetProtocol, Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpAddress,
    IpProtocol, Ipv4Address, Ipv4Packet, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::State;
use tests::control_cli;
use tests::frontend::connection::Role;
use tests::frontend::net::{NetOptions, VirtioNet};
use tests::guest_stack::GuestStack;
use vhost_net_backend::config::{DnsConfig, Egress, NatConfig, NetworkMode};
use vhost_net_backend::control::protocol::{EgressStats, FlowInfo, LeaseInfo, NatStatsView};
use vhost_net_backend::metrics;
use vhost_net_backend::nat::user::UserEgressStats;

const WAIT: Duration = Duration::from_secs(10);
const GATEWAY: Ipv4Address = Ipv4Address::new(192, 168, 122, 1);
const LOOPBACK: Ipv4Address = Ipv4Address::new(127, 0, 0, 1);

fn mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x00, 0x01, i as u8 + 1]
}

/// A guest's static address (in the DHCP range, which no test uses up).
fn guest_ip(i: usize) -> Ipv4Address {
    Ipv4Address::new(192, 168, 122, 50 + i as u8)
}

/// A daemon with the embedded default network and `n` ports (see [`control_cli::Lab`]); DNS
/// goes to a socket of the test.
struct Lab {
    lab: control_cli::Lab,
    _dns: UdpSocket,
}

impl std::ops::Deref for Lab {
    type Target = control_cli::Lab;
    fn deref(&self) -> &control_cli::Lab {
        &self.lab
    }
}

impl Lab {
    fn new(n: usize) -> Lab {
        Lab::with(n, |_| {})
    }

    /// [`Lab::new`] with the network's configuration changed by `adjust`.
    fn with(n: usize, adjust: impl FnOnce(&mut NatConfig)) -> Lab {
        let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
        let upstream = dns.local_addr().unwrap();
        let lab = control_cli::Lab::start(n, mac, |config| {
            let NetworkMode::Nat(nat) = &mut config.networks[0].mode else {
                panic!("the default network is NAT");
            };
            nat.dns = Some(DnsConfig {
                upstreams: vec![upstream],
            });
            // The hosts the guests reach are this test's sockets on loopback.
            nat.host_loopback = true;
            adjust(nat);
        });
        Lab { lab, _dns: dns }
    }

    fn nic(&self, i: usize, options: NetOptions) -> VirtioNet {
        let path = self.path(&format!("vm{i}.sock"));
        VirtioNet::new(Role::Connect(path), options).unwrap()
    }

    /// Guest `i` with its stack at its static address.
    fn guest(&self, i: usize) -> GuestStack {
        let nic = self.nic(i, NetOptions::default());
        let cidr = bridge_core::wire::Ipv4Cidr::new(guest_ip(i), 24);
        GuestStack::new(nic, mac(i), cidr, GATEWAY)
    }

    /// The gateway's MAC.
    fn gateway_mac(&self) -> EthernetAddress {
        let NetworkMode::Nat(nat) = &self.daemon.config().networks[0].mode else {
            panic!("the default network is NAT");
        };
        EthernetAddress(nat.gateway_mac("default").0)
    }
}

/// The route of guest `i`'s frames through the gateway to `dst`.
fn route(lab: &Lab, i: usize, dst: Ipv4Address) -> Ipv4Route {
    Ipv4Route {
        src_mac: EthernetAddress(mac(i)),
        dst_mac: lab.gateway_mac(),
        src_ip: guest_ip(i),
        dst_ip: dst,
    }
}

/// Bytes that differ from one position to the next.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 9) as u8)
        .collect()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The host's end of a connection the guest opens to `listener` (the guest's stack runs
/// meanwhile, so its SYN goes out).
fn accept(g: &mut GuestStack, listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let mut accepted = None;
    g.until(WAIT, |_| {
        accepted = listener.accept().ok();
        accepted.is_some()
    });
    let (s, _) = accepted.expect("the guest's connection reaches the host");
    s.set_nonblocking(false).unwrap();
    s
}

/// An established TCP flow of the guest to a listener of the test: the host's end and the
/// listener's port.
fn tcp_flow(g: &mut GuestStack) -> (TcpStream, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tcp = g.connect(SocketAddrV4::new(LOOPBACK, port));
    let host = accept(g, &listener);
    assert!(g.until(WAIT, |g| g.tcp(tcp).state() == State::Established));
    (host, port)
}

/// A UDP datagram of guest `i` from port 5353 to a socket of the test, received there: the
/// socket and where the datagram came from.
fn udp_flow(lab: &Lab, g: &mut GuestStack, i: usize) -> (UdpSocket, SocketAddr) {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(WAIT)).unwrap();
    let port = udp.local_addr().unwrap().port();
    g.nic()
        .send(0, &udp_frame(&route(lab, i, LOOPBACK), 5353, port, b"q"))
        .unwrap();
    let (_, from) = udp.recv_from(&mut [0u8; 8]).unwrap();
    (udp, from)
}

/// The next frame the guest gets holding a UDP datagram from port `port` (other guests' DHCP
/// broadcasts come too).
fn udp_from(g: &mut GuestStack, port: u16) -> Vec<u8> {
    let mut frame = None;
    g.until(WAIT, |g| {
        frame = g.take_seen(|f| {
            ipv4(f).is_some_and(|ip| {
                ip.next_header() == IpProtocol::Udp
                    && UdpPacket::new_checked(ip.payload()).is_ok_and(|u| u.src_port() == port)
            })
        });
        frame.is_some()
    });
    frame.expect("a datagram from the host reaches the guest")
}

/// The IPv4 packet of an Ethernet frame, if it is one.
fn ipv4(frame: &[u8]) -> Option<Ipv4Packet<&[u8]>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    Ipv4Packet::new_checked(&frame[14..]).ok()
}

/// The ICMP message of a frame, with the IPv4 source.
fn icmp(frame: &[u8]) -> Option<(Ipv4Address, Icmpv4Message, u8, Vec<u8>)> {
    let ip = ipv4(frame)?;
    if ip.next_header() != IpProtocol::Icmp {
        return None;
    }
    let packet = Icmpv4Packet::new_checked(ip.payload()).ok()?;
    Some((
        ip.src_addr(),
        packet.msg_type(),
        packet.msg_code(),
        packet.into_inner().to_vec(),
    ))
}

#[test]
fn tcp_is_relayed_both_ways_with_half_close() {
    let lab = Lab::new(1);
    let mut g = lab.guest(0);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (up, down) = (pattern(700_000, 1), pattern(900_000, 2));
    let host = {
        let down = down.clone();
        thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            let mut got = Vec::new();
            // The guest's FIN ends the read; the other way is still open.
            s.read_to_end(&mut got).unwrap();
            s.write_all(&down).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            (got, peer)
        })
    };
    let tcp = g.connect(SocketAddrV4::new(LOOPBACK, port));
    let mut received = Vec::new();
    assert!(
        g.exchange(tcp, &up, &mut received, 0, WAIT),
        "the guest sends"
    );
    g.tcp(tcp).close();
    assert!(g.until(WAIT, |g| {
        let s = g.tcp(tcp);
        while s.can_recv() {
            let _ = s.recv(|b| {
                received.extend_from_slice(b);
                (b.len(), ())
            });
        }
        !s.may_recv()
    }));
    let (got, peer) = host.join().unwrap();
    assert_eq!(got.len(), up.len());
    assert!(got == up, "the guest's bytes arrive intact");
    assert_eq!(received.len(), down.len());
    assert!(received == down, "the host's bytes arrive intact");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::from(Ipv4Addr::LOCALHOST),
        "re-originated from the daemon's host socket"
    );
    assert!(g.until(WAIT, |g| matches!(
        g.tcp(tcp).state(),
        State::TimeWait | State::Closed
    )));
}

#[test]
fn the_hosts_loopback_is_out_of_reach_unless_the_network_allows_it() {
    let lab = Lab::with(1, |nat| nat.host_loopback = false);
    let mut g = lab.guest(0);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_port = udp.local_addr().unwrap().port();

    // A SYN and a datagram to the host's loopback, and a datagram to 0.0.0.0 (which a
    // socket's send also delivers to the host itself): the gateway drops all three.
    let tcp = g.connect(SocketAddrV4::new(
        LOOPBACK,
        listener.local_addr().unwrap().port(),
    ));
    let unspecified = Ipv4Address::new(0, 0, 0, 0);
    for dst in [LOOPBACK, unspecified] {
        let datagram = udp_frame(&route(&lab, 0, dst), 5353, udp_port, b"q");
        g.nic().send(0, &datagram).unwrap();
    }
    let after = nat_stats_when(&lab, &mut g, |v| v.gateway.dropped >= 3);
    assert_eq!(user(&after).tcp.opened, 0, "{after:?}");
    assert_eq!(user(&after).udp.opened, 0, "{after:?}");
    // Nothing arrived meanwhile, nor within a little longer.
    g.until(Duration::from_millis(300), |_| false);
    assert!(listener.accept().is_err(), "no connection reaches the host");
    assert!(
        udp.recv_from(&mut [0u8; 8]).is_err(),
        "no datagram reaches the host"
    );
    assert_ne!(g.tcp(tcp).state(), State::Established);
}

#[test]
fn refused_and_reset_connections_reset_the_other_side() {
    let lab = Lab::new(1);
    let mut g = lab.guest(0);

    // Nothing listens: the guest's SYN is answered with RST.
    let port = closed_port();
    let tcp = g.connect(SocketAddrV4::new(LOOPBACK, port));
    assert!(g.until(WAIT, |g| g.tcp(tcp).state() == State::Closed));
    let rst = g.take_seen(|f| {
        ipv4(f).is_some_and(|ip| {
            ip.next_header() == IpProtocol::Tcp
                && TcpPacket::new_checked(ip.payload())
                    .is_ok_and(|t| t.rst() && t.src_port() == port)
        })
    });
    assert!(rst.is_some(), "an RST from the refused port");

    // The host resets: the guest's connection is reset.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = g.connect(SocketAddrV4::new(
        LOOPBACK,
        listener.local_addr().unwrap().port(),
    ));
    let s = accept(&mut g, &listener);
    assert!(g.until(WAIT, |g| g.tcp(tcp).state() == State::Established));
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    assert!(g.until(WAIT, |g| g.tcp(tcp).state() == State::Closed));
    assert!(
        g.take_seen(|f| ipv4(f)
            .is_some_and(|ip| TcpPacket::new_checked(ip.payload()).is_ok_and(|t| t.rst())))
            .is_some(),
        "the reset reaches the guest as RST"
    );

    // The guest resets: the host's connection is reset.
    let tcp = g.connect(SocketAddrV4::new(
        LOOPBACK,
        listener.local_addr().unwrap().port(),
    ));
    let mut s = accept(&mut g, &listener);
    assert!(g.until(WAIT, |g| g.tcp(tcp).state() == State::Established));
    g.tcp(tcp).abort();
    g.poll(Duration::ZERO);
    s.set_read_timeout(Some(WAIT)).unwrap();
    let e = s.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
}

#[test]
fn udp_flows_carry_replies_and_port_unreachable() {
    let lab = Lab::new(1);
    let mut g = lab.guest(0);
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();
    let port = host.local_addr().unwrap().port();
    let r = route(&lab, 0, LOOPBACK);
    g.nic()
        .send(0, &udp_frame(&r, 5000, port, b"hello"))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = host.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    host.send_to(b"hello yourself", from).unwrap();
    let reply = udp_from(&mut g, port);
    let ip = ipv4(&reply).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (LOOPBACK, guest_ip(0)));
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (port, 5000));
    assert_eq!(udp.payload(), b"hello yourself");
    assert!(udp.verify_checksum(
        &IpAddress::Ipv4(ip.src_addr()),
        &IpAddress::Ipv4(ip.dst_addr())
    ));

    // A datagram to a closed port: the kernel's port unreachable goes on to the guest.
    let closed = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let sent = udp_frame(&r, 5001, closed, b"anyone?");
    // The first datagram draws the kernel's error; the next send or read reports it.
    let mut error = None;
    for _ in 0..3 {
        g.nic().send(0, &sent).unwrap();
        g.until(Duration::from_secs(2), |g| {
            error = g.take_seen(|f| icmp(f).is_some());
            error.is_some()
        });
        if error.is_some() {
            break;
        }
    }
    let (src, msg, code, body) = icmp(&error.expect("an ICMP error")).unwrap();
    assert_eq!(src, LOOPBACK);
    assert_eq!(msg, Icmpv4Message::DstUnreachable);
    assert_eq!(code, u8::from(Icmpv4DstUnreachable::PortUnreachable));
    let quoted = Ipv4Packet::new_unchecked(&body[8..]);
    assert_eq!(quoted.dst_addr(), LOOPBACK);
    assert_eq!(quoted.src_addr(), guest_ip(0));
}

/// `net.ipv4.ping_group_range` opened to every group while it lives (ping sockets), then set
/// back.
struct PingGroups(String);

impl PingGroups {
    const PATH: &'static str = "/proc/sys/net/ipv4/ping_group_range";

    fn open() -> PingGroups {
        let old = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, "0 2147483647").expect("root may set ping_group_range");
        PingGroups(old.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

impl Drop for PingGroups {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

#[test]
fn echo_requests_go_out_through_ping_sockets() {
    let _groups = PingGroups::open();
    let lab = Lab::new(1);
    let mut g = lab.guest(0);
    let r = route(&lab, 0, LOOPBACK);
    let request = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 7,
        data: b"are you there",
    };
    let frame = ipv4_frame(&r, IpProtocol::Icmp, request.buffer_len(), |b| {
        request.emit(
            &mut Icmpv4Packet::new_unchecked(b),
            &ChecksumCapabilities::default(),
        );
    });
    g.nic().send(0, &frame).unwrap();
    let mut reply = None;
    g.until(WAIT, |g| {
        reply = g.take_seen(|f| icmp(f).is_some());
        reply.is_some()
    });
    let reply = reply.expect("an echo reply");
    let ip = ipv4(&reply).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (LOOPBACK, guest_ip(0)));
    let packet = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    let repr = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 7,
            data: b"are you there",
        },
        "the guest's identifier comes back"
    );
}

#[test]
fn other_protocols_and_the_gateways_own_tcp_ports_are_refused() {
    let lab = Lab::new(1);
    let mut g = lab.guest(0);
    // SCTP to the outside: port unreachable, as libvirt's FORWARD chain rejects it.
    let sctp = ipv4_frame(
        &route(&lab, 0, LOOPBACK),
        IpProtocol::Unknown(132),
        16,
        |b| b.fill(1),
    );
    g.nic().send(0, &sctp).unwrap();
    // TCP to the gateway's port 22: host prohibited, as the host's INPUT chain rejects it.
    let syn = TcpRepr {
        src_port: 40000,
        dst_port: 22,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 1024,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let r = route(&lab, 0, GATEWAY);
    let ssh = ipv4_frame(&r, IpProtocol::Tcp, syn.buffer_len(), |b| {
        syn.emit(
            &mut TcpPacket::new_unchecked(b),
            &IpAddress::Ipv4(r.src_ip),
            &IpAddress::Ipv4(r.dst_ip),
            &ChecksumCapabilities::default(),
        );
    });
    g.nic().send(0, &ssh).unwrap();
    let mut errors = Vec::new();
    g.until(WAIT, |g| {
        while let Some(f) = g.take_seen(|f| icmp(f).is_some()) {
            errors.push(icmp(&f).unwrap());
        }
        errors.len() == 2
    });
    let mut kinds: Vec<(Ipv4Address, u8)> = errors.iter().map(|e| (e.0, e.2)).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            (GATEWAY, u8::from(Icmpv4DstUnreachable::PortUnreachable)),
            (GATEWAY, u8::from(Icmpv4DstUnreachable::HostProhibited)),
        ]
    );
    assert!(errors.iter().all(|e| e.1 == Icmpv4Message::DstUnreachable));
}

/// A DHCP message from guest `i` (broadcast, from 0.0.0.0).
fn dhcp_frame(i: usize, repr: &DhcpRepr<'_>) -> Vec<u8> {
    let mut payload = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
        .unwrap();
    let route = Ipv4Route {
        src_mac: EthernetAddress(mac(i)),
        dst_mac: EthernetAddress([0xff; 6]),
        src_ip: Ipv4Address::UNSPECIFIED,
        dst_ip: Ipv4Address::BROADCAST,
    };
    udp_frame(&route, 68, 67, &payload)
}

/// The gateway's DHCP answer of type `kind` to guest `i`'s transaction: (address, server).
fn dhcp_answer(g: &mut GuestStack, kind: DhcpMessageType) -> (Ipv4Address, Ipv4Address) {
    let mut got = None;
    g.until(WAIT, |g| {
        let frame = g.take_seen(|f| {
            ipv4(f).is_some_and(|ip| {
                UdpPacket::new_checked(ip.payload()).is_ok_and(|u| u.dst_port() == 68)
            })
        });
        if let Some(frame) = frame {
            let ip = ipv4(&frame).unwrap();
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            let packet = DhcpPacket::new_checked(udp.payload()).unwrap();
            let repr = DhcpRepr::parse(&packet).unwrap();
            if repr.message_type == kind {
                got = Some((repr.your_ip, repr.server_identifier.unwrap()));
            }
        }
        got.is_some()
    });
    got.unwrap_or_else(|| panic!("a DHCP {kind:?}"))
}

fn dhcp_repr(i: usize, kind: DhcpMessageType) -> DhcpRepr<'static> {
    DhcpRepr {
        message_type: kind,
        transaction_id: 0x5eed,
        secs: 0,
        client_hardware_address: EthernetAddress(mac(i)),
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: Ipv4Address::UNSPECIFIED,
        server_ip: Ipv4Address::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: true,
        requested_ip: None,
        client_identifier: None,
        server_identifier: None,
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    }
}

#[test]
fn the_cli_shows_leases_and_flows_and_manages_port_forwards() {
    let lab = Lab::new(2);
    let mut g = lab.guest(0);

    // A lease, by DHCP with a hostname.
    let mut leaser = lab.guest(1);
    let discover = dhcp_repr(1, DhcpMessageType::Discover);
    leaser.nic().send(0, &dhcp_frame(1, &discover)).unwrap();
    let (offered, server) = dhcp_answer(&mut leaser, DhcpMessageType::Offer);
    let hostname = [DhcpOption {
        kind: 12,
        data: b"alpha",
    }];
    let request = DhcpRepr {
        requested_ip: Some(offered),
        server_identifier: Some(server),
        additional_options: &hostname,
        ..dhcp_repr(1, DhcpMessageType::Request)
    };
    leaser.nic().send(0, &dhcp_frame(1, &request)).unwrap();
    let (acked, _) = dhcp_answer(&mut leaser, DhcpMessageType::Ack);
    assert_eq!(acked, offered);
    let text = lab.cli(&["leases"]).unwrap();
    assert!(
        text.contains(&format!("default  {acked}  52:54:00:00:01:02  alpha")),
        "{text}"
    );
    let leases: Vec<LeaseInfo> = lab.json(&["leases"]);
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].hostname.as_deref(), Some("alpha"));
    let show: vhost_net_backend::control::protocol::ShowView = lab.json(&["show"]);
    assert_eq!(show.networks[0].gateway_running, Some(true));

    // A TCP flow and a UDP flow in conntrack.
    let (_host, tcp_port) = tcp_flow(&mut g);
    let (udp, from) = udp_flow(&lab, &mut g, 0);
    let udp_port = udp.local_addr().unwrap().port();
    udp.send_to(b"a", from).unwrap();
    udp_from(&mut g, udp_port);
    let flows: Vec<FlowInfo> = lab.json(&["conntrack"]);
    let find = |proto: &str, dst: u16| {
        flows
            .iter()
            .find(|f| f.protocol == proto && f.dst == format!("127.0.0.1:{dst}"))
            .unwrap_or_else(|| panic!("a {proto} flow to port {dst}: {flows:?}"))
    };
    let t = find("tcp", tcp_port);
    assert_eq!(t.state, "ESTABLISHED");
    assert!(t.src.starts_with("192.168.122.50:"), "{t:?}");
    assert_eq!(t.reply_src, t.dst);
    let u = find("udp", udp_port);
    assert_eq!(
        (u.state.as_str(), u.src.as_str()),
        ("ASSURED", "192.168.122.50:5353")
    );
    let text = lab.cli(&["conntrack"]).unwrap();
    assert!(
        text.contains("udp    ASSURED") && text.contains(&format!("127.0.0.1:{udp_port}")),
        "{text}"
    );

    // A port forward added, used and removed through the CLI.
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, closed_port()));
    let guest = format!("{}:8080", guest_ip(0));
    let forward = ["forward", "add", "tcp", &listen.to_string(), &guest];
    lab.cli(&forward).unwrap();
    let text = lab.cli(&["forward", "list"]).unwrap();
    assert!(
        text.contains(&listen.to_string()) && text.contains(&guest),
        "{text}"
    );
    let server = g.listen(8080);
    let mut client = TcpStream::connect_timeout(&listen, WAIT).unwrap();
    client.write_all(b"through the forward").unwrap();
    let mut got = Vec::new();
    assert!(g.exchange(server, b"and back", &mut got, 19, WAIT));
    assert_eq!(got, b"through the forward");
    // The guest's stack sends its answer (and sees it acknowledged) while it runs.
    assert!(g.until(WAIT, |g| g.tcp(server).send_queue() == 0));
    let mut back = [0u8; 8];
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"and back");
    let e = lab.cli(&forward).unwrap_err();
    assert!(e.ends_with("is forwarded twice"), "{e}");
    lab.cli(&["forward", "remove", "tcp", &listen.to_string(), &guest])
        .unwrap();
    assert!(lab.cli(&["forward", "list"]).unwrap().lines().count() <= 1);
    assert!(TcpStream::connect_timeout(&listen, Duration::from_secs(2)).is_err());
}

/// The default network's counters (`nat-stats --json`) once `done` holds: a guest's frames
/// reach the network's event loop some time after they are sent. The guest's stack runs
/// meanwhile.
fn nat_stats_when(
    lab: &Lab,
    g: &mut GuestStack,
    done: impl Fn(&NatStatsView) -> bool,
) -> NatStatsView {
    let mut last = None;
    g.until(WAIT, |_| {
        let mut networks: Vec<NatStatsView> = lab.json(&["nat-stats"]);
        assert_eq!(networks.len(), 1, "{networks:?}");
        let v = networks.remove(0);
        let held = done(&v);
        last = Some(v);
        held
    });
    let v = last.expect("the counters were asked");
    assert!(done(&v), "{v:?}");
    v
}

/// The user egress's counters.
fn user(v: &NatStatsView) -> UserEgressStats {
    match v.egress {
        EgressStats::User(u) => u,
        EgressStats::Kernel(_) => panic!("the default network's egress is user"),
    }
}

/// Asserts that `samples` holds each of `expected`.
fn assert_samples(samples: &[String], expected: &[String]) {
    for line in expected {
        assert!(samples.contains(line), "{line} not in {samples:#?}");
    }
}

#[test]
fn nat_stats_and_the_metrics_count_the_guests_flows_and_the_gateways_drops() {
    let lab = Lab::new(1);
    let server =
        metrics::Server::start(Arc::clone(&lab.daemon), "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut g = lab.guest(0);
    let before = nat_stats_when(&lab, &mut g, |_| true);
    assert_eq!((before.network.as_str(), before.port), ("default", 0));
    assert_eq!(user(&before), UserEgressStats::default());
    assert_eq!(before.gateway.dropped, 0);

    // A TCP flow to a listener, one to a closed port (opened, then its connect fails).
    let _tcp = tcp_flow(&mut g);
    let refused = g.connect(SocketAddrV4::new(LOOPBACK, closed_port()));
    assert!(g.until(WAIT, |g| g.tcp(refused).state() == State::Closed));
    // A UDP flow.
    let (udp, _) = udp_flow(&lab, &mut g, 0);
    let udp_port = udp.local_addr().unwrap().port();
    let r = route(&lab, 0, LOOPBACK);
    // SCTP: refused by the egress.
    let sctp = ipv4_frame(&r, IpProtocol::Unknown(132), 16, |b| b.fill(1));
    g.nic().send(0, &sctp).unwrap();
    // A source outside the network: dropped by the gateway, never reaches the host.
    let spoofed = Ipv4Route {
        src_ip: Ipv4Address::new(10, 11, 12, 13),
        ..r
    };
    g.nic()
        .send(0, &udp_frame(&spoofed, 5354, udp_port, b"spoofed"))
        .unwrap();

    let after = nat_stats_when(&lab, &mut g, |v| {
        let u = user(v);
        (
            u.tcp.opened,
            u.tcp.connect_failed,
            u.udp.opened,
            u.unsupported,
        ) == (2, 1, 1, 1)
            && v.gateway.dropped == 1
    });
    let u = user(&after);
    assert_eq!((u.tcp.refused, u.udp.dropped, u.conntrack_full), (0, 0, 0));
    assert!(
        after.from_guests_frames >= before.from_guests_frames + 5,
        "{before:?} {after:?}"
    );
    assert!(after.to_guests_frames > before.to_guests_frames);
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        udp.recv_from(&mut [0u8; 8]).is_err(),
        "the spoofed datagram stays in the network"
    );

    let text = lab.cli(&["nat-stats", "default"]).unwrap();
    assert!(
        text.starts_with("network default (egress user, gateway port0)\n"),
        "{text}"
    );
    for line in [
        "  gateway: dropped 1, dns send failed 0, unresolved 0",
        "  tcp: opened 2, refused 0, connect failed 1, reset 0",
        "  udp: opened 1, dropped 0",
        "  refused: conntrack full 0, unsupported protocol 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in {text}");
    }
    let e = lab.cli(&["nat-stats", "nowhere"]).unwrap_err();
    assert!(e.ends_with("no NAT network is named \"nowhere\""), "{e}");

    // The metrics endpoint serves the same counters, labelled with the network.
    let samples = control_cli::metrics_samples(&server, &["vnb_nat_"]);
    let label = "{network=\"default\"";
    assert_samples(
        &samples,
        &[
            "vnb_nat_up{network=\"default\"} 1",
            "vnb_nat_user_flows_opened_total{network=\"default\",protocol=\"tcp\"} 2",
            "vnb_nat_user_flows_opened_total{network=\"default\",protocol=\"udp\"} 1",
            "vnb_nat_user_tcp_connect_failed_total{network=\"default\"} 1",
            "vnb_nat_user_tcp_refused_total{network=\"default\"} 0",
            "vnb_nat_user_refused_total{network=\"default\",reason=\"unsupported_protocol\"} 1",
            "vnb_nat_gateway_drops_total{network=\"default\"} 1",
            "vnb_nat_queue_full_total{network=\"default\"} 0",
        ]
        .map(String::from),
    );
    let frames = samples
        .iter()
        .find_map(|l| l.strip_prefix(&format!("vnb_nat_from_guests_frames_total{label}}} ")))
        .expect("the frames the gateway got");
    let frames: u64 = frames.parse().unwrap();
    assert!(frames >= after.from_guests_frames, "{frames} {after:?}");
    assert!(
        !samples.iter().any(|l| l.starts_with("vnb_nat_tap_")),
        "a user network has no TAP: {samples:#?}"
    );
}

const INSIDE: &str = "VNB_NAT_USER_NETNS";

/// `nat-stats` of a network with the `kernel` egress, in a namespace this test makes.
#[test]
fn nat_stats_count_what_the_kernel_egress_cannot_deliver() {
    netns::run_inside(
        "vnb-natstats",
        "nat_stats_of_the_kernel_egress_inside",
        INSIDE,
    );
}

/// A guest's datagram leaves through the TAP to a socket on an address of the namespace's
/// loopback; a datagram the kernel sends to an address of the network no guest holds comes out
/// of the TAP and is counted as not sent, its guest unresolved.
#[test]
#[ignore = "run inside its namespace by nat_stats_count_what_the_kernel_egress_cannot_deliver"]
fn nat_stats_of_the_kernel_egress_inside() {
    netns::assert_inside(INSIDE);
    netns::run("ip", &["link", "set", "lo", "up"]);
    netns::run("ip", &["addr", "add", "10.200.0.1/32", "dev", "lo"]);
    let lab = Lab::with(1, |nat| {
        nat.egress = Egress::Kernel {
            interface: "vnbnat0".into(),
        };
    });
    let mut g = lab.guest(0);
    let far = UdpSocket::bind("10.200.0.1:0").unwrap();
    far.set_read_timeout(Some(WAIT)).unwrap();
    let r = route(&lab, 0, Ipv4Address::new(10, 200, 0, 1));
    let port = far.local_addr().unwrap().port();
    g.nic().send(0, &udp_frame(&r, 5000, port, b"out")).unwrap();
    let mut buf = [0u8; 16];
    let n = far.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"out");

    let kernel = |v: &NatStatsView| match v.egress {
        EgressStats::Kernel(k) => k,
        EgressStats::User(_) => panic!("the egress is kernel"),
    };
    let before = nat_stats_when(&lab, &mut g, |v| v.from_guests_frames > 0);
    far.send_to(b"nobody", "192.168.122.77:9").unwrap();
    let after = nat_stats_when(&lab, &mut g, |v| {
        kernel(v).rx_unsent > kernel(&before).rx_unsent
            && v.gateway.unresolved > before.gateway.unresolved
    });
    assert_eq!(kernel(&after).tx_errors, 0);
    let text = lab.cli(&["nat-stats"]).unwrap();
    assert!(
        text.starts_with("network default (egress kernel, gateway port0)\n"),
        "{text}"
    );
    let unsent = kernel(&after).rx_unsent;
    let line = format!("  tap: tx errors 0, rx bad header 0, rx unsent {unsent}");
    assert!(text.lines().any(|l| l == line), "{line:?} in {text}");

    let server =
        metrics::Server::start(Arc::clone(&lab.daemon), "127.0.0.1:0".parse().unwrap()).unwrap();
    let samples = control_cli::metrics_samples(&server, &["vnb_nat_"]);
    assert_samples(
        &samples,
        &[
            format!("vnb_nat_tap_rx_unsent_total{{network=\"default\"}} {unsent}"),
            "vnb_nat_tap_tx_errors_total{network=\"default\"} 0".into(),
        ],
    );
    assert!(
        !samples.iter().any(|l| l.starts_with("vnb_nat_user_")),
        "a kernel network has no user egress: {samples:#?}"
    );
}
