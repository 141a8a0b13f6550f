//! ARP, ICMP and the gateway's routing of frames: real frames in, frames out.

#[path = "fixtures/gateway_frames.rs"]
mod frames;
#[path = "fixtures/gateway_util.rs"]
mod util;

use bridge_core::gateway::frame::{ipv4_frame, udp_frame, Ipv4Route};
use bridge_core::gateway::icmp::{self, ErrorKind, IcmpError};
use bridge_core::gateway::{Action, DropReason, Gateway};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, Icmpv4DstUnreachable,
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Address, Ipv4Packet,
};
use util::*;

const T0: Instant = Instant::from_millis_const(1_000_000);

fn handle(gw: &mut Gateway, frame: &[u8]) -> Action {
    gw.handle(T0, frame, &mut rng())
}

fn route_to_gw(src: Ipv4Address, dst: Ipv4Address) -> Ipv4Route {
    Ipv4Route {
        src_mac: GUEST_MAC,
        dst_mac: GW_MAC,
        src_ip: src,
        dst_ip: dst,
    }
}

#[test]
fn arp_reply_is_the_kernels() {
    let mut gw = gateway();
    let reply = reply_frame(handle(&mut gw, &frames::ARP_WHO_HAS_GATEWAY));
    assert_eq!(reply, frames::ARP_REPLY_KERNEL);
    // The asker was learned.
    assert_eq!(gw.arp_table().lookup(T0, ip(76)), Some(GUEST_MAC));
    assert_eq!(gw.stats().arp_replies, 1);
}

#[test]
fn arp_learning_and_aging() {
    let mut gw = gateway();
    // A who-has for another guest teaches the asker's binding, and is not for the gateway.
    let mut frame = frames::ARP_WHO_HAS_GATEWAY;
    frame[38..42].copy_from_slice(&ip(77).octets());
    assert_eq!(
        handle(&mut gw, &frame),
        Action::Drop(DropReason::NotForGateway)
    );
    assert_eq!(gw.arp_table().lookup(T0, ip(76)), Some(GUEST_MAC));
    // A guest claiming the gateway's address is refused and not learned.
    let mut claim = frames::ARP_WHO_HAS_GATEWAY;
    claim[28..32].copy_from_slice(&GW_IP.octets());
    assert_eq!(
        handle(&mut gw, &claim),
        Action::Drop(DropReason::AddressConflict)
    );
    // An ARP reply to the gateway is learned and consumed.
    let reply = bridge_core::gateway::arp::reply(mac(9), ip(9), (GW_MAC, GW_IP));
    assert_eq!(handle(&mut gw, &reply), Action::Consumed);
    assert_eq!(gw.arp_table().lookup(T0, ip(9)), Some(mac(9)));
    // Entries age out after five minutes.
    let later = T0 + Duration::from_secs(301);
    assert_eq!(gw.arp_table().lookup(later, ip(9)), None);
    gw.poll(later);
    assert!(gw.arp_table().is_empty());
}

#[test]
fn arp_table_is_bounded() {
    let mut config = config();
    config.arp_capacity = 4;
    let mut gw = Gateway::new(config).unwrap();
    for n in 2..10u8 {
        let frame = bridge_core::gateway::arp::reply(mac(n), ip(n), (GW_MAC, GW_IP));
        gw.handle(T0 + Duration::from_secs(u64::from(n)), &frame, &mut rng());
    }
    assert_eq!(gw.arp_table().len(), 4);
    let now = T0 + Duration::from_secs(10);
    assert_eq!(gw.arp_table().lookup(now, ip(9)), Some(mac(9)));
    assert_eq!(gw.arp_table().lookup(now, ip(5)), None, "oldest evicted");
}

#[test]
fn arp_request_frame() {
    let gw = gateway();
    let frame = gw.arp_request(ip(76));
    let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
    assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
    let repr = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    assert_eq!(
        repr,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: GW_MAC,
            source_protocol_addr: GW_IP,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: ip(76),
        }
    );
}

#[test]
fn ping_reply_matches_the_kernels() {
    let mut gw = gateway();
    let reply = reply_frame(handle(&mut gw, &frames::PING_GATEWAY));
    let kernel = frames::PING_REPLY_KERNEL;
    assert_eq!(reply.len(), kernel.len());
    // Ethernet header, IP addresses and the whole ICMP message are the kernel's; the IP
    // identification and flags may differ.
    assert_eq!(reply[..14], kernel[..14]);
    let ours = Ipv4Packet::new_checked(&reply[14..]).unwrap();
    let theirs = Ipv4Packet::new_checked(&kernel[14..]).unwrap();
    assert!(ours.verify_checksum());
    assert_eq!(
        (ours.src_addr(), ours.dst_addr(), ours.hop_limit()),
        (theirs.src_addr(), theirs.dst_addr(), theirs.hop_limit())
    );
    assert_eq!(ours.payload(), theirs.payload());
    assert_eq!(gw.stats().echo_replies, 1);
}

#[test]
fn icmp_port_unreachable_quotes_the_offender() {
    let gw = gateway();
    let offending = udp_frame(
        &route_to_gw(ip(76), Ipv4Address::new(198, 51, 100, 7)),
        5000,
        9,
        b"hello",
    );
    let reply = gw
        .reject(
            &offending,
            ErrorKind::Unreachable(Icmpv4DstUnreachable::PortUnreachable),
        )
        .unwrap();
    let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW_MAC, GUEST_MAC));
    let ip_packet = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip_packet.verify_checksum());
    assert_eq!(
        (ip_packet.src_addr(), ip_packet.dst_addr()),
        (GW_IP, ip(76))
    );
    assert_eq!(ip_packet.next_header(), IpProtocol::Icmp);
    let icmp_packet = Icmpv4Packet::new_checked(ip_packet.payload()).unwrap();
    assert!(icmp_packet.verify_checksum());
    assert_eq!(icmp_packet.msg_type(), Icmpv4Message::DstUnreachable);
    assert_eq!(icmp_packet.msg_code(), 3);
    // The whole offending datagram (it is small) is quoted, byte for byte.
    assert_eq!(&ip_packet.payload()[8..], &offending[14..]);
}

#[test]
fn icmp_errors_are_capped_at_576_bytes() {
    let gw = gateway();
    let big = udp_frame(
        &route_to_gw(ip(76), Ipv4Address::new(198, 51, 100, 7)),
        5000,
        9,
        &[7; 1400],
    );
    let reply = gw
        .reject(
            &big,
            ErrorKind::Unreachable(Icmpv4DstUnreachable::HostProhibited),
        )
        .unwrap();
    assert_eq!(reply.len(), 14 + 576);
    assert_eq!(reply[14 + 20 + 8..], big[14..14 + 576 - 28]);
}

#[test]
fn no_icmp_error_about_what_rfc_1122_forbids() {
    let gw = gateway();
    let kind = ErrorKind::Unreachable(Icmpv4DstUnreachable::PortUnreachable);
    let wan = Ipv4Address::new(198, 51, 100, 7);
    // About an ICMP error.
    let error = gw
        .reject(&udp_frame(&route_to_gw(ip(76), wan), 1, 2, b"x"), kind)
        .unwrap();
    let mut error_from_guest = error.clone();
    error_from_guest[0..6].copy_from_slice(&GW_MAC.0);
    assert_eq!(
        gw.reject(&error_from_guest, kind),
        Err(IcmpError::AboutIcmpError)
    );
    // About a broadcast.
    let mut bcast = route_to_gw(ip(76), Ipv4Address::BROADCAST);
    assert_eq!(
        gw.reject(&udp_frame(&bcast, 1, 2, b"x"), kind),
        Err(IcmpError::Broadcast)
    );
    bcast.dst_ip = wan;
    bcast.dst_mac = EthernetAddress::BROADCAST;
    assert_eq!(
        gw.reject(&udp_frame(&bcast, 1, 2, b"x"), kind),
        Err(IcmpError::Broadcast)
    );
    // From 0.0.0.0.
    let unspecified = udp_frame(&route_to_gw(Ipv4Address::UNSPECIFIED, wan), 1, 2, b"x");
    assert_eq!(gw.reject(&unspecified, kind), Err(IcmpError::InvalidSource));
    // About a later fragment.
    let mut fragment = udp_frame(&route_to_gw(ip(76), wan), 1, 2, b"x");
    {
        let mut p = Ipv4Packet::new_unchecked(&mut fragment[14..]);
        p.set_frag_offset(1480);
        p.fill_checksum();
    }
    assert_eq!(gw.reject(&fragment, kind), Err(IcmpError::NotFirstFragment));
    // Garbage.
    assert_eq!(gw.reject(&[0u8; 20], kind), Err(IcmpError::Malformed));
    // About a ping: allowed.
    assert!(gw.reject(&frames::PING_GATEWAY, kind).is_ok());
}

#[test]
fn frames_are_routed() {
    let mut gw = gateway();
    let wan = Ipv4Address::new(198, 51, 100, 7);
    // Off-network: egress.
    assert_eq!(
        handle(
            &mut gw,
            &udp_frame(&route_to_gw(ip(76), wan), 1000, 80, b"x")
        ),
        Action::Egress
    );
    assert_eq!(gw.arp_table().lookup(T0, ip(76)), Some(GUEST_MAC));
    // TCP (and other UDP ports) to the gateway address: the daemon's stack.
    let tcp = ipv4_frame(&route_to_gw(ip(76), GW_IP), IpProtocol::Tcp, 20, |b| {
        b[12] = 0x50
    });
    assert_eq!(handle(&mut gw, &tcp), Action::Local);
    assert_eq!(
        handle(
            &mut gw,
            &udp_frame(&route_to_gw(ip(76), GW_IP), 1000, 5000, b"x")
        ),
        Action::Local
    );
    // To another guest through the gateway's MAC.
    assert_eq!(
        handle(
            &mut gw,
            &udp_frame(&route_to_gw(ip(76), ip(77)), 1, 2, b"x")
        ),
        Action::Drop(DropReason::Hairpin)
    );
    // From an address outside the network.
    assert_eq!(
        handle(
            &mut gw,
            &udp_frame(&route_to_gw(Ipv4Address::new(10, 0, 0, 1), wan), 1, 2, b"x")
        ),
        Action::Drop(DropReason::SpoofedSource)
    );
    // For another MAC (flooded).
    let mut other = route_to_gw(ip(76), wan);
    other.dst_mac = mac(8);
    assert_eq!(
        handle(&mut gw, &udp_frame(&other, 1, 2, b"x")),
        Action::Drop(DropReason::NotForGateway)
    );
    // Bad IPv4 header checksum.
    let mut bad = udp_frame(&route_to_gw(ip(76), wan), 1, 2, b"x");
    bad[24] ^= 0xff;
    assert_eq!(handle(&mut gw, &bad), Action::Drop(DropReason::Malformed));
    // IPv6 to the gateway's MAC.
    let mut v6 = udp_frame(&route_to_gw(ip(76), wan), 1, 2, b"x");
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(handle(&mut gw, &v6), Action::Drop(DropReason::Unsupported));
    // Truncated frames.
    for len in 0..frames::PING_GATEWAY.len() {
        assert!(
            matches!(
                handle(&mut gw, &frames::PING_GATEWAY[..len]),
                Action::Drop(_)
            ),
            "{len}"
        );
    }
}

#[test]
fn martian_destinations_are_dropped_and_loopback_passes_only_when_allowed() {
    let to = |dst: [u8; 4]| udp_frame(&route_to_gw(ip(76), Ipv4Address::from(dst)), 1000, 22, b"x");
    let martians = [
        [127, 0, 0, 1],
        [127, 9, 9, 9],
        [0, 0, 0, 0],
        [0, 1, 2, 3],
        [240, 0, 0, 1],
    ];
    let mut gw = gateway();
    for dst in martians {
        assert_eq!(
            handle(&mut gw, &to(dst)),
            Action::Drop(DropReason::MartianDestination),
            "{dst:?}"
        );
    }
    // Just outside them: routed.
    for dst in [
        [1, 0, 0, 0],
        [126, 255, 255, 255],
        [128, 0, 0, 1],
        [223, 255, 255, 254],
    ] {
        assert_eq!(handle(&mut gw, &to(dst)), Action::Egress, "{dst:?}");
    }
    // A network whose guests may reach the host's loopback: only loopback passes.
    let mut config = config();
    config.loopback_egress = true;
    let mut gw = Gateway::new(config).unwrap();
    for dst in martians {
        let want = if dst[0] == 127 {
            Action::Egress
        } else {
            Action::Drop(DropReason::MartianDestination)
        };
        assert_eq!(handle(&mut gw, &to(dst)), want, "{dst:?}");
    }
}

#[test]
fn ttl_exceeded_when_forwarding() {
    let mut gw = gateway();
    let wan = Ipv4Address::new(198, 51, 100, 7);
    let mut frame = udp_frame(&route_to_gw(ip(76), wan), 33434, 33435, b"traceroute");
    {
        let mut p = Ipv4Packet::new_unchecked(&mut frame[14..]);
        p.set_hop_limit(1);
        p.fill_checksum();
    }
    let reply = reply_frame(handle(&mut gw, &frame));
    let ip_packet = Ipv4Packet::new_checked(&reply[14..]).unwrap();
    let icmp_packet = Icmpv4Packet::new_checked(ip_packet.payload()).unwrap();
    assert_eq!(icmp_packet.msg_type(), Icmpv4Message::TimeExceeded);
    assert_eq!(ip_packet.src_addr(), GW_IP);
    assert_eq!(gw.stats().icmp_errors, 1);
}

#[test]
fn echo_reply_builder() {
    let frame = icmp::echo_reply((GW_MAC, GW_IP), (GUEST_MAC, ip(76)), 7, 9, b"abc");
    let ip_packet = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    let icmp_packet = Icmpv4Packet::new_checked(ip_packet.payload()).unwrap();
    assert!(icmp_packet.verify_checksum());
    assert_eq!(
        (
            icmp_packet.msg_type(),
            icmp_packet.echo_ident(),
            icmp_packet.echo_seq_no(),
            icmp_packet.data()
        ),
        (Icmpv4Message::EchoReply, 7, 9, &b"abc"[..])
    );
}
