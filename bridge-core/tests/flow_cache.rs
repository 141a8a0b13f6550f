//! The cache of known flows in front of conntrack: what it answers, what always goes to
//! conntrack, when it refreshes the flow, and what invalidates it.

#[path = "fixtures/ipv4_route.rs"]
mod ipv4_route;
use ipv4_route::route;

use std::net::Ipv4Addr;

use bridge_core::conntrack::*;
use bridge_core::flow_cache::FlowCache;
use bridge_core::gateway::frame::{ipv4_frame, udp_frame};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpProtocol;

const T0: Instant = Instant::from_millis_const(1_000_000);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

/// A TCP segment GUEST:40000 -> PEER:80 (or back, `reply`) with `flags` (S, A, F, R), parsed
/// from its bytes.
fn tcp(flags: &str, reply: bool) -> PacketMeta {
    PacketMeta::parse_ipv4(1, &tcp_bytes(flags, reply)).unwrap()
}

/// The bytes of [`tcp`]'s segment, from the IP header on.
fn tcp_bytes(flags: &str, reply: bool) -> Vec<u8> {
    let (src, dst, sport, dport) = match reply {
        false => (GUEST, PEER, 40000u16, 80u16),
        true => (PEER, GUEST, 80, 40000),
    };
    let bits = [('F', 0x01), ('S', 0x02), ('R', 0x04), ('A', 0x10)]
        .iter()
        .filter(|(c, _)| flags.contains(*c))
        .fold(0u8, |b, (_, bit)| b | bit);
    let frame = ipv4_frame(&route(src, dst), IpProtocol::Tcp, 20, |b| {
        b[0..2].copy_from_slice(&sport.to_be_bytes());
        b[2..4].copy_from_slice(&dport.to_be_bytes());
        b[12] = 0x50;
        b[13] = bits;
    });
    frame[14..].to_vec()
}

/// A UDP datagram GUEST:5000 -> PEER:53 (or back), parsed from its bytes.
fn udp(reply: bool) -> PacketMeta {
    PacketMeta::parse_ipv4(1, &udp_bytes(reply)).unwrap()
}

/// The bytes of [`udp`]'s datagram, from the IP header on.
fn udp_bytes(reply: bool) -> Vec<u8> {
    let frame = match reply {
        false => udp_frame(&route(GUEST, PEER), 5000, 53, b"query"),
        true => udp_frame(&route(PEER, GUEST), 53, 5000, b"answer"),
    };
    frame[14..].to_vec()
}

/// The verdict (a number here) of `packet`: from the cache, or tracked in `ct` and offered to
/// the cache. Returns it and whether the cache answered.
fn pass(
    cache: &mut FlowCache<u32>,
    ct: &Conntrack,
    now: Instant,
    p: &PacketMeta,
) -> (Option<u32>, bool) {
    if let Some(v) = cache.get(now, p) {
        return (Some(v), true);
    }
    let t = ct.track(now, p).unwrap();
    cache.insert(now, p, &t);
    (t.verdict, false)
}

/// A table with a replied UDP flow whose verdict is 7, and a cache in front of it that has
/// seen one packet of each direction.
fn udp_flow() -> (Conntrack, FlowCache<u32>) {
    let ct = Conntrack::new(ConntrackConfig::default());
    let flow = ct.track(T0, &udp(false)).unwrap().flow.unwrap();
    ct.set_verdict(&flow, 7);
    let mut cache = FlowCache::new(&ct);
    cache.begin_batch(&ct);
    assert_eq!(pass(&mut cache, &ct, T0, &udp(true)), (Some(7), false));
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (Some(7), false));
    (ct, cache)
}

fn expires(ct: &Conntrack, now: Instant) -> Instant {
    ct.get(now, &udp(false).tuple).unwrap().expires
}

#[test]
fn a_hit_skips_conntrack_until_the_refresh_interval() {
    let (ct, mut cache) = udp_flow();
    assert_eq!(cache.refresh(), Duration::from_secs(1));
    let timeout = ConntrackConfig::default().timeouts.udp_assured;
    assert_eq!(expires(&ct, T0), T0 + timeout);

    // Both directions answer from the cache: the flow's entry is not touched.
    let t1 = T0 + Duration::from_millis(900);
    assert_eq!(pass(&mut cache, &ct, t1, &udp(false)), (Some(7), true));
    assert_eq!(pass(&mut cache, &ct, t1, &udp(true)), (Some(7), true));
    assert_eq!(expires(&ct, t1), T0 + timeout);

    // After the interval the packet is tracked again, refreshing the flow, and remembered.
    let t2 = T0 + Duration::from_millis(1000);
    assert_eq!(pass(&mut cache, &ct, t2, &udp(false)), (Some(7), false));
    assert_eq!(expires(&ct, t2), t2 + timeout);
    assert_eq!(pass(&mut cache, &ct, t2, &udp(false)), (Some(7), true));
    // The other direction's entry is as old as before.
    assert_eq!(pass(&mut cache, &ct, t2, &udp(true)), (Some(7), false));
}

#[test]
fn the_refresh_interval_is_below_the_shortest_timeout() {
    let mut config = ConntrackConfig::default();
    config.timeouts.icmp = Duration::from_secs(2);
    let ct: Conntrack = Conntrack::new(config);
    assert_eq!(FlowCache::new(&ct).refresh(), Duration::from_millis(250));
}

#[test]
fn flows_without_a_verdict_and_invalid_packets_are_not_remembered() {
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut cache = FlowCache::new(&ct);
    cache.begin_batch(&ct);
    // No verdict yet.
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (None, false));
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (None, false));
    // An ACK of no flow is invalid every time.
    assert_eq!(
        ct.track(T0, &tcp("A", false)).unwrap().state,
        CtState::Invalid
    );
    assert_eq!(pass(&mut cache, &ct, T0, &tcp("A", false)), (None, false));
    assert_eq!(ct.stats().invalid, 2);
}

#[test]
fn tcp_is_remembered_only_when_established_and_syn_fin_rst_always_go_to_conntrack() {
    use TcpState::*;
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut cache = FlowCache::new(&ct);
    cache.begin_batch(&ct);
    let flow = ct.track(T0, &tcp("S", false)).unwrap().flow.unwrap();
    ct.set_verdict(&flow, 7);
    // SYN and SYN+ACK are never remembered; the ACK that completes the handshake is
    // remembered once the flow is established.
    for p in [tcp("S", false), tcp("SA", true), tcp("SA", true)] {
        assert_eq!(pass(&mut cache, &ct, T0, &p), (Some(7), false));
    }
    assert_eq!(
        pass(&mut cache, &ct, T0, &tcp("A", false)),
        (Some(7), false)
    );
    assert_eq!(pass(&mut cache, &ct, T0, &tcp("A", false)), (Some(7), true));
    assert_eq!(pass(&mut cache, &ct, T0, &tcp("A", true)), (Some(7), false));
    assert_eq!(pass(&mut cache, &ct, T0, &tcp("A", true)), (Some(7), true));

    // A FIN goes to conntrack and moves the flow on; from the next batch the ACKs do too, so
    // the close proceeds as without the cache.
    assert_eq!(
        pass(&mut cache, &ct, T0, &tcp("FA", false)),
        (Some(7), false)
    );
    cache.begin_batch(&ct);
    let steps = [
        (tcp("A", true), CloseWait),
        (tcp("FA", true), LastAck),
        (tcp("A", false), TimeWait),
        (tcp("A", false), TimeWait),
    ];
    for (p, state) in steps {
        assert_eq!(pass(&mut cache, &ct, T0, &p), (Some(7), false));
        assert_eq!(ct.get(T0, &p.tuple).unwrap().tcp, Some(state));
    }

    // An RST on an established flow.
    let ct = Conntrack::new(ConntrackConfig::default());
    let flow = ct.track(T0, &tcp("S", false)).unwrap().flow.unwrap();
    ct.set_verdict(&flow, 7);
    ct.track(T0, &tcp("SA", true)).unwrap();
    let mut cache = FlowCache::new(&ct);
    cache.begin_batch(&ct);
    assert_eq!(
        pass(&mut cache, &ct, T0, &tcp("A", false)),
        (Some(7), false)
    );
    assert_eq!(pass(&mut cache, &ct, T0, &tcp("A", false)), (Some(7), true));
    assert_eq!(
        pass(&mut cache, &ct, T0, &tcp("RA", true)),
        (Some(7), false)
    );
    cache.begin_batch(&ct);
    assert_eq!(
        pass(&mut cache, &ct, T0, &tcp("A", false)),
        (Some(7), false)
    );
    assert_eq!(ct.get(T0, &tcp("A", false).tuple).unwrap().tcp, Some(Close));
}

#[test]
fn clearing_verdicts_invalidates_the_cache_from_the_next_batch() {
    let (ct, mut cache) = udp_flow();
    ct.clear_verdicts();
    // The batch under way may still answer from what it read.
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (Some(7), true));
    cache.begin_batch(&ct);
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (None, false));
}

#[test]
fn a_changed_verdict_invalidates_the_cache_and_the_same_one_does_not() {
    let (ct, mut cache) = udp_flow();
    let flow = ct.track(T0, &udp(false)).unwrap().flow.unwrap();
    ct.set_verdict(&flow, 7);
    cache.begin_batch(&ct);
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (Some(7), true));
    ct.set_verdict(&flow, 8);
    cache.begin_batch(&ct);
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (Some(8), false));
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (Some(8), true));
}

#[test]
fn a_removed_flow_is_not_answered_for() {
    // Expired and swept: the next packet makes a new flow, without a verdict.
    let (ct, mut cache) = udp_flow();
    let later = T0 + Duration::from_secs(600);
    assert_eq!(ct.expire(later), 1);
    cache.begin_batch(&ct);
    let t1 = T0 + Duration::from_millis(100);
    assert_eq!(pass(&mut cache, &ct, t1, &udp(false)), (None, false));

    // Evicted to make room for another flow.
    let config = ConntrackConfig {
        capacity: 1,
        shards: 1,
        ..ConntrackConfig::default()
    };
    let ct = Conntrack::new(config);
    let flow = ct.track(T0, &udp(false)).unwrap().flow.unwrap();
    ct.set_verdict(&flow, 7);
    let mut cache = FlowCache::new(&ct);
    cache.begin_batch(&ct);
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (Some(7), false));
    assert_eq!(pass(&mut cache, &ct, T0, &udp(false)), (Some(7), true));
    ct.track(T0, &tcp("S", false)).unwrap();
    assert_eq!(ct.stats().evicted, 1);
    cache.begin_batch(&ct);
    assert_eq!(pass(&mut cache, &ct, t1, &udp(false)), (None, false));
}

/// A table with an established TCP flow and a replied UDP flow, verdicts 7, and a cache that
/// answers for both directions of both.
fn tcp_and_udp_flows() -> (Conntrack, FlowCache<u32>) {
    let (ct, mut cache) = udp_flow();
    let flow = ct.track(T0, &tcp("S", false)).unwrap().flow.unwrap();
    ct.set_verdict(&flow, 7);
    ct.track(T0, &tcp("SA", true)).unwrap();
    cache.begin_batch(&ct);
    for p in [tcp("A", false), tcp("A", true), udp(false), udp(true)] {
        pass(&mut cache, &ct, T0, &p);
        assert_eq!(pass(&mut cache, &ct, T0, &p), (Some(7), true));
    }
    (ct, cache)
}

/// Sets an IPv4 header's checksum.
fn set_checksum(ip: &mut [u8]) {
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    ip[10..12].fill(0);
    let mut sum: u32 = ip[..header_len]
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

#[test]
fn a_hit_by_the_bytes_fields_answers_as_get_by_the_packet_meta_for_any_one_byte_change() {
    let (_ct, mut cache) = tcp_and_udp_flows();
    let originals = [
        tcp_bytes("A", false),
        tcp_bytes("A", true),
        udp_bytes(false),
        udp_bytes(true),
    ];
    let (mut answered, mut unread) = (0, 0);
    for original in originals {
        let fields = Ipv4Fields::parse(1, &original, original.len()).unwrap();
        assert_eq!(cache.hit(T0, &fields, original.len()), Some(&7));
        for i in 0..original.len() {
            for change in [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff] {
                let mut b = original.clone();
                b[i] ^= change;
                let meta = PacketMeta::parse_ipv4(1, &b);
                match Ipv4Fields::parse(1, &b, b.len()) {
                    Ok(fields) => {
                        assert_eq!(fields.meta(), meta);
                        let by_meta = cache.get(T0, &meta.unwrap());
                        let by_fields = cache.hit(T0, &fields, b.len()).copied();
                        assert_eq!(by_fields, by_meta, "byte {i}");
                        answered += usize::from(by_meta.is_some());
                    }
                    Err(e) => {
                        assert_eq!(Err(e), meta, "byte {i}");
                        unread += 1;
                    }
                }
            }
        }
    }
    // Changes to the payload, checksums of the transport, TTL... still answer; changes to
    // the IP header without a matching checksum never parse.
    assert!(answered > 100 && unread > 4 * 20 * 8, "{answered} {unread}");
}

#[test]
fn malformed_and_fragmented_packets_have_no_fields_to_look_up() {
    let (_ct, mut cache) = tcp_and_udp_flows();
    let ack = tcp_bytes("A", false);
    let udp = udp_bytes(false);
    let changed = |original: &[u8], change: &dyn Fn(&mut Vec<u8>), checksum: bool| {
        let mut b = original.to_vec();
        change(&mut b);
        if checksum {
            set_checksum(&mut b);
        }
        b
    };
    let malformed = [
        (
            "bad header checksum",
            changed(&ack, &|b| b[10] ^= 0x40, false),
        ),
        ("version 6", changed(&ack, &|b| b[0] = 0x65, true)),
        ("IHL 4", changed(&ack, &|b| b[0] = 0x44, true)),
        ("IHL past the bytes", changed(&ack, &|b| b[0] = 0x4f, false)),
        (
            "total length past the packet",
            changed(&ack, &|b| b[3] += 1, true),
        ),
        ("TCP data offset 4", changed(&ack, &|b| b[32] = 0x40, false)),
        (
            "TCP data offset past the packet",
            changed(&ack, &|b| b[32] = 0x60, false),
        ),
        (
            "UDP length past the packet",
            changed(&udp, &|b| b[25] += 1, false),
        ),
        (
            "UDP length 7",
            changed(&udp, &|b| b[24..26].copy_from_slice(&[0, 7]), false),
        ),
    ];
    for (what, b) in &malformed {
        assert_eq!(
            Ipv4Fields::parse(1, b, b.len()),
            Err(ConntrackError::Malformed),
            "{what}"
        );
    }
    let short = [
        ("IP header cut", &ack[..19], ack.len()),
        ("TCP header cut", &ack[..39], ack.len()),
        ("UDP header cut", &udp[..27], udp.len()),
        ("more bytes than the packet", &ack[..], ack.len() - 1),
    ];
    for (what, head, len) in short {
        assert_eq!(
            Ipv4Fields::parse(1, head, len),
            Err(ConntrackError::Malformed),
            "{what}"
        );
    }
    // A fragment after the first has no transport header; the first one (more fragments, at
    // offset 0) is tracked, and answered for, like a whole packet.
    let later = changed(&ack, &|b| b[7] = 1, true);
    assert_eq!(
        Ipv4Fields::parse(1, &later, later.len()),
        Err(ConntrackError::Fragment)
    );
    let first = changed(&ack, &|b| b[6] = 0x20, true);
    let fields = Ipv4Fields::parse(1, &first, first.len()).unwrap();
    assert_eq!(cache.hit(T0, &fields, first.len()), Some(&7));
    // So is a packet with IP options, well formed: the same flow as without them.
    let mut options = ack[..20].to_vec();
    options[0] = 0x46;
    options[3] += 4;
    options.extend([1, 1, 1, 0]);
    options.extend(&ack[20..]);
    set_checksum(&mut options);
    let fields = Ipv4Fields::parse(1, &options, options.len()).unwrap();
    assert_eq!(fields.meta(), Ok(tcp("A", false)));
    assert_eq!(cache.hit(T0, &fields, options.len()), Some(&7));
    // A SYN, FIN or RST of the flow is never answered for.
    for flags in ["SA", "FA", "RA"] {
        let b = tcp_bytes(flags, false);
        let fields = Ipv4Fields::parse(1, &b, b.len()).unwrap();
        assert_eq!(cache.hit(T0, &fields, b.len()), None, "{flags}");
    }
}
