//! Connection tracking: states, timeouts, overflow, verdict slots, shared use.

#[path = "fixtures/ipv4_route.rs"]
mod ipv4_route;
use ipv4_route::route;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bridge_core::conntrack::*;
use bridge_core::gateway::frame::{ipv4_frame, udp_frame};
use bridge_core::gateway::icmp::{self, ErrorKind};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Icmpv4DstUnreachable, IpProtocol, Ipv4Address};

const T0: Instant = Instant::from_millis_const(1_000_000);
const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 2);
const WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn ep(addr: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint {
        addr: IpAddr::V4(addr),
        port,
    }
}

fn tuple(protocol: Protocol) -> FlowTuple {
    FlowTuple {
        zone: 1,
        protocol,
        src: ep(GUEST, 40000),
        dst: ep(WAN, 80),
    }
}

fn tcp(flags: &str, reply: bool) -> PacketMeta {
    let t = tuple(Protocol::Tcp);
    PacketMeta {
        tuple: if reply { t.reversed() } else { t },
        kind: PacketKind::Tcp(TcpFlags {
            syn: flags.contains('S'),
            ack: flags.contains('A'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
        }),
    }
}

fn udp(reply: bool) -> PacketMeta {
    let t = tuple(Protocol::Udp);
    PacketMeta {
        tuple: if reply { t.reversed() } else { t },
        kind: PacketKind::Udp,
    }
}

fn table() -> Conntrack {
    Conntrack::new(ConntrackConfig::default())
}

fn track(ct: &Conntrack, now: Instant, p: &PacketMeta) -> (CtState, Option<TcpState>) {
    let t = ct.track(now, p).unwrap();
    (t.state, t.tcp)
}

#[test]
fn tcp_handshake_data_and_close() {
    use TcpState::*;
    let ct = table();
    let steps = [
        (tcp("S", false), CtState::New, SynSent),
        (tcp("S", false), CtState::New, SynSent),
        (tcp("SA", true), CtState::Reply, SynRecv),
        (tcp("A", false), CtState::Established, Established),
        (tcp("A", true), CtState::Reply, Established),
        (tcp("FA", false), CtState::Established, FinWait),
        (tcp("A", false), CtState::Established, FinWait),
        (tcp("A", true), CtState::Reply, CloseWait),
        (tcp("FA", true), CtState::Reply, LastAck),
        (tcp("A", false), CtState::Established, TimeWait),
    ];
    for (i, (p, state, tcp_state)) in steps.into_iter().enumerate() {
        assert_eq!(track(&ct, T0, &p), (state, Some(tcp_state)), "step {i}");
    }
    // TIME_WAIT lasts 120 s.
    let flow = ct.get(T0, &tuple(Protocol::Tcp)).unwrap();
    assert_eq!(flow.expires, T0 + Duration::from_secs(120));
    assert!(flow.assured && flow.replied);
    // A new SYN on the same ports opens a new flow.
    assert_eq!(
        track(&ct, T0, &tcp("S", false)),
        (CtState::New, Some(SynSent))
    );
    assert_eq!(ct.len(), 1);
}

#[test]
fn tcp_reply_side_closes_first_and_resets() {
    use TcpState::*;
    let ct = table();
    for p in [tcp("S", false), tcp("SA", true), tcp("A", false)] {
        ct.track(T0, &p).unwrap();
    }
    assert_eq!(track(&ct, T0, &tcp("FA", true)).1, Some(FinWait));
    assert_eq!(track(&ct, T0, &tcp("FA", false)).1, Some(LastAck));
    assert_eq!(track(&ct, T0, &tcp("A", true)).1, Some(TimeWait));
    // RST closes from any state; CLOSE lasts 10 s.
    assert_eq!(track(&ct, T0, &tcp("R", false)).1, Some(Close));
    assert_eq!(
        ct.get(T0, &tuple(Protocol::Tcp)).unwrap().expires,
        T0 + Duration::from_secs(10)
    );
    assert!(ct
        .get(T0 + Duration::from_secs(10), &tuple(Protocol::Tcp))
        .is_none());
}

#[test]
fn tcp_invalid_segments() {
    let ct = table();
    // No flow, not a SYN.
    for flags in ["A", "SA", "F", "R", ""] {
        assert_eq!(
            ct.track(T0, &tcp(flags, false)).unwrap().state,
            CtState::Invalid,
            "{flags}"
        );
    }
    assert!(ct.is_empty());
    ct.track(T0, &tcp("S", false)).unwrap();
    // SYN_SENT: an ACK or FIN either way does not fit.
    assert_eq!(
        ct.track(T0, &tcp("A", true)).unwrap().state,
        CtState::Invalid
    );
    assert_eq!(
        ct.track(T0, &tcp("F", false)).unwrap().state,
        CtState::Invalid
    );
    // The flow is unchanged by invalid segments.
    assert_eq!(
        ct.get(T0, &tuple(Protocol::Tcp)).unwrap().tcp,
        Some(TcpState::SynSent)
    );
    assert_eq!(ct.stats().invalid, 7);
}

#[test]
fn tcp_timeouts_follow_the_state() {
    let ct = table();
    let t = tuple(Protocol::Tcp);
    ct.track(T0, &tcp("S", false)).unwrap();
    assert_eq!(
        ct.get(T0, &t).unwrap().expires,
        T0 + Duration::from_secs(120)
    );
    ct.track(T0, &tcp("SA", true)).unwrap();
    assert_eq!(
        ct.get(T0, &t).unwrap().expires,
        T0 + Duration::from_secs(60)
    );
    ct.track(T0, &tcp("A", false)).unwrap();
    assert_eq!(
        ct.get(T0, &t).unwrap().expires,
        T0 + Duration::from_secs(432_000)
    );
    ct.track(T0, &tcp("FA", false)).unwrap();
    assert_eq!(
        ct.get(T0, &t).unwrap().expires,
        T0 + Duration::from_secs(120)
    );
    ct.track(T0, &tcp("A", true)).unwrap();
    assert_eq!(
        ct.get(T0, &t).unwrap().expires,
        T0 + Duration::from_secs(60)
    );
    ct.track(T0, &tcp("FA", true)).unwrap();
    assert_eq!(
        ct.get(T0, &t).unwrap().expires,
        T0 + Duration::from_secs(30)
    );
    // An unanswered SYN is gone after 120 s: the next segment is a new flow again.
    let ct = table();
    ct.track(T0, &tcp("S", false)).unwrap();
    let later = T0 + Duration::from_secs(120);
    assert_eq!(
        ct.track(later, &tcp("SA", true)).unwrap().state,
        CtState::Invalid
    );
    assert_eq!(ct.stats().expired, 1);
}

#[test]
fn udp_unreplied_and_assured() {
    let ct = table();
    let t = tuple(Protocol::Udp);
    assert_eq!(track(&ct, T0, &udp(false)).0, CtState::New);
    assert_eq!(track(&ct, T0, &udp(false)).0, CtState::New);
    assert_eq!(
        ct.get(T0, &t).unwrap().expires,
        T0 + Duration::from_secs(30)
    );
    // Unreplied: gone after 30 s.
    assert!(ct.get(T0 + Duration::from_secs(30), &t).is_none());
    let t1 = T0 + Duration::from_secs(10);
    assert_eq!(track(&ct, t1, &udp(true)).0, CtState::Reply);
    assert_eq!(track(&ct, t1, &udp(false)).0, CtState::Established);
    let flow = ct.get(t1, &t).unwrap();
    assert!(flow.assured);
    assert_eq!(flow.expires, t1 + Duration::from_secs(120));
    assert_eq!(ct.expire(t1 + Duration::from_secs(119)), 0);
    assert_eq!(ct.expire(t1 + Duration::from_secs(120)), 1);
    assert!(ct.is_empty());
}

#[test]
fn zones_keep_networks_apart() {
    let ct = table();
    ct.track(T0, &udp(false)).unwrap();
    let mut other = udp(true);
    other.tuple.zone = 2;
    assert_eq!(track(&ct, T0, &other).0, CtState::New);
    assert_eq!(ct.len(), 2);
}

#[test]
fn icmp_echo_and_related_errors_from_real_packets() {
    let ct = table();
    let request = bridge_core::gateway::icmp::echo_reply(
        (EthernetAddress([2, 0, 0, 0, 0, 1]), GUEST),
        (EthernetAddress([2, 0, 0, 0, 0, 2]), WAN),
        0x77a1,
        1,
        b"ping",
    );
    // echo_reply builds a reply; turn it into a request (type 8) with a fixed checksum.
    let mut request = request;
    request[14 + 20] = 8;
    {
        let mut p = smoltcp::wire::Icmpv4Packet::new_unchecked(&mut request[34..]);
        p.fill_checksum();
    }
    let meta = PacketMeta::parse_ipv4(1, &request[14..]).unwrap();
    assert_eq!(meta.kind, PacketKind::IcmpEcho { request: true });
    assert_eq!(meta.tuple.src.port, 0x77a1);
    assert_eq!(ct.track(T0, &meta).unwrap().state, CtState::New);
    let reply = icmp::echo_reply(
        (EthernetAddress([2, 0, 0, 0, 0, 2]), WAN),
        (EthernetAddress([2, 0, 0, 0, 0, 1]), GUEST),
        0x77a1,
        1,
        b"ping",
    );
    let reply_meta = PacketMeta::parse_ipv4(1, &reply[14..]).unwrap();
    assert_eq!(ct.track(T0, &reply_meta).unwrap().state, CtState::Reply);
    assert_eq!(
        ct.get(T0, &meta.tuple).unwrap().expires,
        T0 + Duration::from_secs(30)
    );
    // An echo reply of no request is invalid.
    let mut stray = reply_meta;
    stray.tuple.src.port = 1;
    stray.tuple.dst.port = 1;
    assert_eq!(ct.track(T0, &stray).unwrap().state, CtState::Invalid);

    // A UDP flow, and the port unreachable the far end sends about it: related.
    let datagram = udp_frame(&route(GUEST, WAN), 5000, 9, b"hello");
    let udp_meta = PacketMeta::parse_ipv4(1, &datagram[14..]).unwrap();
    let flow = ct.track(T0, &udp_meta).unwrap();
    assert_eq!(flow.state, CtState::New);
    let error = icmp::error_reply(
        &datagram,
        ErrorKind::Unreachable(Icmpv4DstUnreachable::PortUnreachable),
        EthernetAddress([2, 0, 0, 0, 0, 2]),
        WAN,
    )
    .unwrap();
    let error_meta = PacketMeta::parse_ipv4(1, &error[14..]).unwrap();
    let related = ct.track(T0, &error_meta).unwrap();
    assert_eq!(related.state, CtState::Related);
    assert_eq!(related.direction, Direction::Reply);
    assert_eq!(related.flow, flow.flow);
    // About a flow never seen: invalid.
    let unknown = udp_frame(&route(GUEST, WAN), 5001, 9, b"hello");
    let error = icmp::error_reply(
        &unknown,
        ErrorKind::Unreachable(Icmpv4DstUnreachable::PortUnreachable),
        EthernetAddress([2, 0, 0, 0, 0, 2]),
        WAN,
    )
    .unwrap();
    let meta = PacketMeta::parse_ipv4(1, &error[14..]).unwrap();
    assert_eq!(ct.track(T0, &meta).unwrap().state, CtState::Invalid);
}

#[test]
fn parsing_real_packets() {
    let mut syn = ipv4_frame(&route(GUEST, WAN), IpProtocol::Tcp, 20, |b| {
        b[0..2].copy_from_slice(&40000u16.to_be_bytes());
        b[2..4].copy_from_slice(&80u16.to_be_bytes());
        b[12] = 0x50;
        b[13] = 0x02;
    });
    let meta = PacketMeta::parse_ipv4(1, &syn[14..]).unwrap();
    assert_eq!(meta.tuple, tuple(Protocol::Tcp));
    assert_eq!(
        meta.kind,
        PacketKind::Tcp(TcpFlags {
            syn: true,
            ..TcpFlags::default()
        })
    );
    // Bad header checksum, later fragment, other protocol, truncated.
    syn[24] ^= 1;
    assert_eq!(
        PacketMeta::parse_ipv4(1, &syn[14..]),
        Err(ConntrackError::Malformed)
    );
    let mut frag = udp_frame(&route(GUEST, WAN), 1, 2, b"x");
    {
        let mut p = smoltcp::wire::Ipv4Packet::new_unchecked(&mut frag[14..]);
        p.set_frag_offset(8);
        p.fill_checksum();
    }
    assert_eq!(
        PacketMeta::parse_ipv4(1, &frag[14..]),
        Err(ConntrackError::Fragment)
    );
    let gre = ipv4_frame(&route(GUEST, WAN), IpProtocol::Unknown(47), 4, |_| {});
    assert_eq!(
        PacketMeta::parse_ipv4(1, &gre[14..]),
        Err(ConntrackError::Unsupported)
    );
    let datagram = udp_frame(&route(GUEST, WAN), 1, 2, b"x");
    for len in 0..datagram.len() - 14 {
        assert!(
            PacketMeta::parse_ipv4(1, &datagram[14..14 + len]).is_err(),
            "{len}"
        );
    }
    let _ = Ipv4Address::UNSPECIFIED;
}

#[test]
fn parsing_headers_of_longer_packets() {
    let long = udp_frame(&route(GUEST, WAN), 40000, 80, &[7; 1000]);
    let ip = &long[14..];
    let whole = PacketMeta::parse_ipv4(1, ip).unwrap();
    assert_eq!(whole.tuple, tuple(Protocol::Udp));
    // The first 28 bytes (IPv4 and UDP headers) are enough when the length is known.
    for head in [28, 100, ip.len()] {
        assert_eq!(
            PacketMeta::parse_ipv4_head(1, &ip[..head], ip.len()),
            Ok(whole),
            "{head}"
        );
    }
    assert_eq!(
        PacketMeta::parse_ipv4_head(1, &ip[..27], ip.len()),
        Err(ConntrackError::Malformed),
        "the UDP header is cut"
    );
    assert_eq!(
        PacketMeta::parse_ipv4_head(1, &ip[..28], ip.len() - 1),
        Err(ConntrackError::Malformed),
        "the IPv4 length says more than the packet holds"
    );
    assert_eq!(
        PacketMeta::parse_ipv4_head(1, ip, 28),
        Err(ConntrackError::Malformed),
        "more bytes at hand than the packet has"
    );
    // A TCP header whose data offset reaches past the packet.
    let bad = ipv4_frame(&route(GUEST, WAN), IpProtocol::Tcp, 20, |b| b[12] = 0x60);
    assert_eq!(
        PacketMeta::parse_ipv4_head(1, &bad[14..], bad.len() - 14),
        Err(ConntrackError::Malformed)
    );
}

fn small(overflow: Overflow) -> Conntrack {
    Conntrack::new(ConntrackConfig {
        capacity: 4,
        shards: 1,
        overflow,
        ..ConntrackConfig::default()
    })
}

fn udp_from(port: u16, reply: bool) -> PacketMeta {
    let mut p = udp(false);
    p.tuple.src.port = port;
    if reply {
        p.tuple = p.tuple.reversed();
    }
    p
}

#[test]
fn overflow_drops_new_flows() {
    let ct = small(Overflow::DropNew);
    for port in 0..4 {
        ct.track(T0, &udp_from(port, false)).unwrap();
    }
    assert_eq!(
        ct.track(T0, &udp_from(9, false)),
        Err(ConntrackError::TableFull)
    );
    assert_eq!(ct.stats().dropped_full, 1);
    // Existing flows still work.
    assert_eq!(
        ct.track(T0, &udp_from(0, true)).unwrap().state,
        CtState::Reply
    );
    assert_eq!(ct.len(), 4);
    // Once flows expire there is room.
    ct.expire(T0 + Duration::from_secs(30));
    assert_eq!(ct.len(), 1);
    assert!(ct
        .track(T0 + Duration::from_secs(30), &udp_from(9, false))
        .is_ok());
}

#[test]
fn overflow_evicts_the_oldest_unassured() {
    let ct = small(Overflow::EvictOldestUnassured);
    for port in 0..4 {
        ct.track(
            T0 + Duration::from_secs(u64::from(port)),
            &udp_from(port, false),
        )
        .unwrap();
    }
    // Flow 0 is assured (replied): flow 1 is the oldest unassured.
    ct.track(T0, &udp_from(0, true)).unwrap();
    let now = T0 + Duration::from_secs(5);
    assert_eq!(
        ct.track(now, &udp_from(9, false)).unwrap().state,
        CtState::New
    );
    assert_eq!(ct.stats().evicted, 1);
    assert_eq!(ct.len(), 4);
    assert!(ct.get(now, &udp_from(1, false).tuple).is_none());
    assert!(ct.get(now, &udp_from(0, false).tuple).is_some());
    // With every flow assured, new flows are refused.
    for port in [2, 3, 9] {
        ct.track(now, &udp_from(port, true)).unwrap();
    }
    assert_eq!(
        ct.track(now, &udp_from(10, false)),
        Err(ConntrackError::TableFull)
    );
    assert_eq!(ct.stats().dropped_full, 1);
}

#[test]
fn eviction_keeps_the_shards_consistent() {
    // Many shards, a small bound: every new flow past it evicts the oldest unassured flow of
    // its own shard, or is refused when that shard has none.
    let ct = Conntrack::<u32>::new(ConntrackConfig {
        capacity: 16,
        shards: 4,
        ..ConntrackConfig::default()
    });
    for port in 0..16 {
        ct.track(T0, &udp_from(port, false)).unwrap();
    }
    // Half the flows get a reply: they are assured and never evicted.
    for port in (0..16).step_by(2) {
        assert_eq!(
            ct.track(T0, &udp_from(port, true)).unwrap().state,
            CtState::Reply
        );
    }
    for port in 100..200 {
        let _ = ct.track(T0, &udp_from(port, false));
    }
    let stats = ct.stats();
    assert_eq!(ct.len(), 16);
    assert_eq!(ct.flows(T0).len(), 16);
    assert_eq!(stats.created, 16 + 100 - stats.dropped_full);
    assert_eq!(stats.evicted, 100 - stats.dropped_full);
    for port in (0..16).step_by(2) {
        assert_eq!(
            ct.track(T0, &udp_from(port, false)).unwrap().state,
            CtState::Established,
            "assured flow {port} survived"
        );
    }
    // Expiry empties the table and its eviction order alike: new flows fit again.
    assert_eq!(ct.expire(T0 + Duration::from_secs(120)), 16);
    assert!(ct.is_empty());
    let later = T0 + Duration::from_secs(120);
    for port in 300..316 {
        ct.track(later, &udp_from(port, false)).unwrap();
    }
    for port in 400..420 {
        let _ = ct.track(later, &udp_from(port, false));
    }
    assert_eq!(ct.len(), 16);
    assert_eq!(ct.flows(later).len(), 16);
}

#[test]
fn verdict_slot() {
    let ct: Conntrack<(u8, u16)> = Conntrack::new(ConntrackConfig::default());
    let first = ct.track(T0, &udp(false)).unwrap();
    assert_eq!(first.verdict, None);
    let flow = first.flow.unwrap();
    assert!(ct.set_verdict(&flow, (1, 7)));
    assert_eq!(ct.track(T0, &udp(true)).unwrap().verdict, Some((1, 7)));
    assert_eq!(ct.track(T0, &udp(false)).unwrap().verdict, Some((1, 7)));
    ct.clear_verdicts();
    assert_eq!(ct.track(T0, &udp(false)).unwrap().verdict, None);
    // After the flow is gone and replaced, the old handle no longer sets anything.
    let later = T0 + Duration::from_secs(200);
    let replaced = ct.track(later, &udp(false)).unwrap();
    assert!(!ct.set_verdict(&flow, (2, 0)));
    assert!(ct.set_verdict(&replaced.flow.unwrap(), (3, 0)));
    assert_eq!(ct.flows(later)[0].verdict, Some((3, 0)));
}

#[test]
fn flow_ids_are_unique_and_stable() {
    let ct = table();
    let mut ids = std::collections::HashSet::new();
    for port in 0..300u16 {
        let p = udp_from(port, false);
        let id = ct.track(T0, &p).unwrap().flow.unwrap().id();
        assert_ne!(id, 0);
        assert!(ids.insert(id), "port {port}: id {id} given twice");
        let mut r = p;
        r.tuple = p.tuple.reversed();
        assert_eq!(
            ct.track(T0, &r).unwrap().flow.unwrap().id(),
            id,
            "same flow, same id"
        );
    }
    // A flow that replaces an expired one gets a new id.
    let p = udp_from(0, false);
    let later = T0 + Duration::from_secs(200);
    let id = ct.track(later, &p).unwrap().flow.unwrap().id();
    assert!(!ids.contains(&id));
}

#[test]
fn shared_by_threads() {
    let ct = Arc::new(table());
    let threads: Vec<_> = (0..4u16)
        .map(|t| {
            let ct = Arc::clone(&ct);
            std::thread::spawn(move || {
                for port in 0..500u16 {
                    let p = udp_from(t * 1000 + port, false);
                    assert_eq!(ct.track(T0, &p).unwrap().state, CtState::New);
                    let mut r = p;
                    r.tuple = p.tuple.reversed();
                    assert_eq!(ct.track(T0, &r).unwrap().state, CtState::Reply);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ct.len(), 2000);
    assert_eq!(ct.flows(T0).len(), 2000);
    assert_eq!(ct.stats().created, 2000);
}

proptest::proptest! {
    #[test]
    fn parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
        let ct = table();
        if let Ok(meta) = PacketMeta::parse_ipv4(0, &bytes) {
            let _ = ct.track(T0, &meta);
        }
        for cut in [0, 20, 28, 40, bytes.len()] {
            let head = &bytes[..cut.min(bytes.len())];
            if let Ok(meta) = PacketMeta::parse_ipv4_head(0, head, bytes.len()) {
                let _ = ct.track(T0, &meta);
            }
            // The plain-header parse answers as the full one wherever it answers.
            if let Some(plain) = Ipv4Fields::parse_plain(0, head, bytes.len()) {
                proptest::prop_assert_eq!(plain, Ipv4Fields::parse(0, head, bytes.len()));
            }
        }
    }
}

#[test]
fn the_header_checksum_is_accepted_exactly_where_smoltcp_accepts_it() {
    // Every value of the checksum field, with and without options.
    let frame = udp_frame(&route(GUEST, WAN), 40000, 80, b"query");
    let mut with_options = vec![0u8; frame.len() - 14 + 4];
    with_options[..20].copy_from_slice(&frame[14..34]);
    with_options[20..24].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    with_options[24..].copy_from_slice(&frame[34..]);
    let total_len = u16::try_from(with_options.len()).unwrap();
    {
        let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut with_options[..]);
        ip.set_header_len(24);
        ip.set_total_len(total_len);
    }
    for mut packet in [frame[14..].to_vec(), with_options] {
        let mut accepted = 0;
        for sum in 0..=u16::MAX {
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
            let right = smoltcp::wire::Ipv4Packet::new_unchecked(&packet[..]).verify_checksum();
            let parsed = PacketMeta::parse_ipv4(1, &packet);
            assert_eq!(parsed.is_ok(), right, "checksum {sum:#06x}");
            accepted += usize::from(right);
        }
        assert!(accepted >= 1, "the right checksum is accepted");
    }
}

#[test]
fn the_header_checksum_is_verified_over_options_too() {
    // A header with one word of options (IHL 6), every single-bit error in it.
    let frame = udp_frame(&route(GUEST, WAN), 40000, 80, b"query");
    let mut packet = vec![0u8; frame.len() - 14 + 4];
    packet[..20].copy_from_slice(&frame[14..34]);
    packet[24..].copy_from_slice(&frame[34..]);
    {
        let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut packet[..]);
        ip.set_header_len(24);
        ip.set_total_len(u16::try_from(frame.len() - 14 + 4).unwrap());
        ip.fill_checksum();
    }
    packet[20..24].copy_from_slice(&[1, 1, 0, 0]);
    smoltcp::wire::Ipv4Packet::new_unchecked(&mut packet[..]).fill_checksum();
    assert_eq!(
        PacketMeta::parse_ipv4(1, &packet).unwrap().tuple,
        tuple(Protocol::Udp)
    );
    for bit in 0..24 * 8 {
        let mut p = packet.clone();
        p[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            PacketMeta::parse_ipv4(1, &p),
            Err(ConntrackError::Malformed),
            "bit {bit}"
        );
    }
}

/// The IPv4 packet of `frame` with its total length set to `total_len` and its header
/// checksum fixed: the bytes after that length are padding.
fn with_total_len(frame: &[u8], total_len: u16) -> Vec<u8> {
    let mut packet = frame[14..].to_vec();
    let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut packet[..]);
    ip.set_total_len(total_len);
    ip.fill_checksum();
    packet
}

#[test]
fn a_transport_header_cut_by_the_total_length_is_malformed_even_with_padding_after_it() {
    let tcp = ipv4_frame(&route(GUEST, WAN), IpProtocol::Tcp, 20, |b| b[12] = 0x50);
    let udp = udp_frame(&route(GUEST, WAN), 40000, 80, b"");
    let echo = ipv4_frame(&route(GUEST, WAN), IpProtocol::Icmp, 8, |b| b[0] = 8);
    for (what, frame, header) in [("TCP", tcp, 20), ("UDP", udp, 8), ("ICMP", echo, 8)] {
        let whole = with_total_len(&frame, 20 + header);
        assert!(PacketMeta::parse_ipv4(1, &whole).is_ok(), "{what}");
        for cut in 0..header {
            let packet = with_total_len(&frame, 20 + cut);
            let plain = Ipv4Fields::parse_plain(1, &packet, packet.len()).unwrap();
            for parsed in [
                PacketMeta::parse_ipv4(1, &packet),
                PacketMeta::parse_ipv4_head(1, &packet, packet.len() + 10),
                Ipv4Fields::parse(1, &packet, packet.len()).and_then(|f| f.meta()),
                plain.and_then(|f| f.meta()),
            ] {
                assert_eq!(parsed, Err(ConntrackError::Malformed), "{what} {cut}");
            }
        }
    }
    // A total length below the header's own, with or without options.
    let packet = with_total_len(&udp_frame(&route(GUEST, WAN), 1, 2, b"x"), 19);
    assert_eq!(
        PacketMeta::parse_ipv4(1, &packet),
        Err(ConntrackError::Malformed)
    );
}

#[test]
fn an_icmp_error_reads_its_quote_only_up_to_the_total_length() {
    let offending = udp_frame(&route(GUEST, WAN), 40000, 80, b"query");
    let error = icmp::error_reply(
        &offending,
        ErrorKind::Unreachable(Icmpv4DstUnreachable::PortUnreachable),
        EthernetAddress([2, 0, 0, 0, 0, 9]),
        WAN,
    )
    .unwrap();
    let whole = PacketMeta::parse_ipv4(1, &error[14..]).unwrap();
    assert!(matches!(whole.kind, PacketKind::IcmpError { .. }));
    // The quote needs the offending packet's IPv4 header and 8 bytes after it: 20 + 8 + 28.
    let cut = with_total_len(&error, 20 + 8 + 27);
    assert_eq!(
        PacketMeta::parse_ipv4(1, &cut),
        Err(ConntrackError::Malformed)
    );
    assert_eq!(
        PacketMeta::parse_ipv4(1, &with_total_len(&error, 20 + 8 + 28)),
        Ok(whole)
    );
}

proptest::proptest! {
    /// Headers of every length and content: the checksum is accepted exactly where smoltcp
    /// accepts it (sums with carries out of every word included).
    #[test]
    fn any_header_checksum_is_accepted_exactly_where_smoltcp_accepts_it(
        words in proptest::collection::vec(proptest::prelude::any::<u32>(), 5..=15),
        fill in proptest::prelude::any::<bool>(),
    ) {
        let mut packet: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let header_len = packet.len();
        packet.extend([0; 8]);
        {
            let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut packet[..]);
            ip.set_version(4);
            ip.set_header_len(header_len as u8);
            ip.set_total_len((header_len + 8) as u16);
            ip.set_frag_offset(0);
            ip.set_next_header(IpProtocol::Udp);
            if fill {
                ip.fill_checksum();
            }
        }
        packet[header_len + 5] = 8;
        let right = smoltcp::wire::Ipv4Packet::new_unchecked(&packet[..]).verify_checksum();
        proptest::prop_assert_eq!(PacketMeta::parse_ipv4(1, &packet).is_ok(), right);
        proptest::prop_assert!(right || !fill);
    }
}
