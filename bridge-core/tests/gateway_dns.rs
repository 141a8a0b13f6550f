//! The gateway's DNS: local names from leases, forwarding with remapped IDs, answer matching.

#[path = "fixtures/gateway_frames.rs"]
mod frames;
#[path = "fixtures/gateway_util.rs"]
mod util;

use std::net::SocketAddr;

use bridge_core::gateway::dns::{
    DnsClient, DnsConfig, DnsDrop, DnsForwarder, DnsOutcome, LocalNames,
};
use bridge_core::gateway::frame::{udp_frame, Ipv4Route};
use bridge_core::gateway::{Action, DropReason, Gateway, UpstreamQuery};
use simple_dns::rdata::{RData, A};
use simple_dns::{
    Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE, RCODE, TYPE,
};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DhcpMessageType as Msg, EthernetFrame, Ipv4Address, Ipv4Cidr, Ipv4Packet, UdpPacket,
};
use util::*;

const T0: Instant = Instant::from_millis_const(1_000_000);

fn query(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(
        Name::new_unchecked(name),
        QTYPE::TYPE(qtype),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    q.build_bytes_vec().unwrap()
}

fn answer_to(query_bytes: &[u8], address: Ipv4Address) -> Vec<u8> {
    let q = Packet::parse(query_bytes).unwrap();
    let mut a = Packet::new_reply(q.id());
    a.set_flags(PacketFlag::RECURSION_AVAILABLE | PacketFlag::RECURSION_DESIRED);
    a.questions = q.questions.clone();
    a.answers.push(ResourceRecord::new(
        q.questions[0].qname.clone(),
        CLASS::IN,
        300,
        RData::A(A::from(address)),
    ));
    a.build_bytes_vec().unwrap()
}

fn dns_frame(src: Ipv4Address, port: u16, payload: &[u8]) -> Vec<u8> {
    let route = Ipv4Route {
        src_mac: GUEST_MAC,
        dst_mac: GW_MAC,
        src_ip: src,
        dst_ip: GW_IP,
    };
    udp_frame(&route, port, 53, payload)
}

/// The DNS message in a reply frame, with the frame's addressing checked.
fn reply_payload(frame: &[u8], to: Ipv4Address, port: u16) -> Vec<u8> {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW_MAC, GUEST_MAC));
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GW_IP, to));
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    assert_eq!((udp.src_port(), udp.dst_port()), (53, port));
    udp.payload().to_vec()
}

fn forwarded(action: Action) -> UpstreamQuery {
    match action {
        Action::DnsUpstream(q) => q,
        other => panic!("expected an upstream query, got {other:?}"),
    }
}

/// A gateway with domain "vm.test" and guest "alpha" leased at 192.168.122.2.
fn gateway_with_alpha() -> Gateway {
    let mut config = config();
    config.domain = Some("vm.test".into());
    let mut gw = Gateway::new(config).unwrap();
    let mut discover = ClientMsg::new(Msg::Discover, GUEST_MAC);
    discover.hostname = Some("Alpha");
    gw.handle(T0, &discover.frame(false), &mut rng());
    let mut request = discover.clone();
    request.kind = Msg::Request;
    request.requested = Some(ip(2));
    request.server_id = Some(GW_IP);
    assert_eq!(
        parse_reply(&reply_frame(gw.handle(
            T0,
            &request.frame(false),
            &mut rng()
        )))
        .kind,
        Msg::Ack
    );
    gw
}

fn local(gw: &mut Gateway, name: &str, qtype: TYPE) -> Packet<'static> {
    let frame = reply_frame(gw.handle(
        T0,
        &dns_frame(ip(2), 40000, &query(0x1111, name, qtype)),
        &mut rng(),
    ));
    let payload = reply_payload(&frame, ip(2), 40000);
    Packet::parse(&payload).unwrap().into_owned()
}

trait IntoOwnedPacket {
    fn into_owned(self) -> Packet<'static>;
}

impl IntoOwnedPacket for Packet<'_> {
    fn into_owned(self) -> Packet<'static> {
        let bytes = self.build_bytes_vec().unwrap();
        Packet::parse(Box::leak(bytes.into_boxed_slice())).unwrap()
    }
}

fn a_records(p: &Packet<'_>) -> Vec<Ipv4Address> {
    p.answers
        .iter()
        .filter_map(|r| match &r.rdata {
            RData::A(a) => Some(Ipv4Address::from(a.address)),
            _ => None,
        })
        .collect()
}

#[test]
fn leased_guests_answer_locally() {
    let mut gw = gateway_with_alpha();
    for name in ["alpha", "alpha.vm.test", "ALPHA.VM.TEST"] {
        let reply = local(&mut gw, name, TYPE::A);
        assert_eq!(reply.id(), 0x1111);
        assert!(reply.has_flags(PacketFlag::RESPONSE | PacketFlag::AUTHORITATIVE_ANSWER));
        assert_eq!(reply.rcode(), RCODE::NoError);
        assert_eq!(a_records(&reply), vec![ip(2)], "{name}");
        assert_eq!(reply.answers[0].ttl, 0);
    }
    // AAAA for a known name: no data, no error.
    let reply = local(&mut gw, "alpha.vm.test", TYPE::AAAA);
    assert_eq!((reply.rcode(), reply.answers.len()), (RCODE::NoError, 0));
    // Unknown names of the domain, and unknown single labels: NXDOMAIN, not forwarded.
    for name in ["beta.vm.test", "x.alpha.vm.test", "beta"] {
        assert_eq!(
            local(&mut gw, name, TYPE::A).rcode(),
            RCODE::NameError,
            "{name}"
        );
    }
    // Reverse lookups of the network.
    let reply = local(&mut gw, "2.122.168.192.in-addr.arpa", TYPE::PTR);
    match &reply.answers[0].rdata {
        RData::PTR(ptr) => assert_eq!(ptr.0.to_string(), "alpha.vm.test"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        local(&mut gw, "3.122.168.192.in-addr.arpa", TYPE::PTR).rcode(),
        RCODE::NameError
    );
    assert_eq!(gw.dns().unwrap().stats().local, 9);
    // Other names go upstream.
    let q = forwarded(gw.handle(
        T0,
        &dns_frame(ip(2), 40000, &query(1, "example.org", TYPE::A)),
        &mut rng(),
    ));
    assert_eq!(q.upstream, upstream());
}

#[test]
fn expired_or_released_names_are_gone() {
    let mut gw = gateway_with_alpha();
    let later = T0 + Duration::from_secs(3601);
    let reply = reply_frame(gw.handle(
        later,
        &dns_frame(ip(2), 1, &query(5, "alpha", TYPE::A)),
        &mut rng(),
    ));
    let reply = Packet::parse(&reply_payload(&reply, ip(2), 1))
        .unwrap()
        .into_owned();
    assert_eq!(reply.rcode(), RCODE::NameError);
}

#[test]
fn recorded_nslookup_query_is_forwarded_with_a_new_id() {
    let mut gw = gateway();
    let q = forwarded(gw.handle(T0, &frames::DNS_QUERY_A, &mut rng()));
    let original = &frames::DNS_QUERY_A[42..];
    assert_eq!(u16::from_be_bytes([original[0], original[1]]), 0xccf4);
    assert_eq!(q.upstream, upstream());
    assert_ne!(q.payload[..2], original[..2], "ID remapped");
    assert_eq!(q.payload[2..], original[2..], "the rest as sent");

    // The answer comes back with the guest's ID, to the guest's port.
    let answer = answer_to(&q.payload, Ipv4Address::new(198, 51, 100, 80));
    let frame = reply_frame(gw.handle_dns_answer(upstream(), &answer));
    let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
    let guest_port = u16::from_be_bytes([frames::DNS_QUERY_A[34], frames::DNS_QUERY_A[35]]);
    let payload = reply_payload(&frame, ip(76), guest_port);
    assert_eq!(eth.dst_addr(), GUEST_MAC);
    assert_eq!(payload[..2], [0xcc, 0xf4]);
    assert_eq!(payload[2..], answer[2..]);
    assert_eq!(gw.dns().unwrap().pending(), 0);
    // The same answer again matches nothing.
    assert_eq!(
        gw.handle_dns_answer(upstream(), &answer),
        Action::Drop(DropReason::Dns(DnsDrop::UnknownAnswer))
    );
}

struct NoNames;

impl LocalNames for NoNames {
    fn address_of(&self, _: &str) -> Option<Ipv4Address> {
        None
    }
    fn name_of(&self, _: Ipv4Address) -> Option<String> {
        None
    }
}

fn forwarder(upstreams: Vec<SocketAddr>) -> DnsForwarder {
    let config = DnsConfig {
        upstreams,
        ..DnsConfig::default()
    };
    DnsForwarder::new(config, Ipv4Cidr::new(GW_IP, 24), None, 1472)
}

fn client(port: u16) -> DnsClient {
    DnsClient {
        mac: GUEST_MAC,
        ip: ip(2),
        port,
    }
}

fn forward(
    dns: &mut DnsForwarder,
    now: Instant,
    port: u16,
    q: &[u8],
    rng: &mut rand::rngs::StdRng,
) -> (SocketAddr, Vec<u8>) {
    match dns.handle_query(now, client(port), q, &NoNames, rng) {
        DnsOutcome::Forward { upstream, query } => (upstream, query),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ids_are_random_and_unique() {
    let mut dns = forwarder(vec![upstream()]);
    let mut rng = rng();
    let ids: Vec<u16> = (0..100)
        .map(|i| {
            let (_, q) = forward(
                &mut dns,
                T0,
                1000 + i,
                &query(0x4242, "example.org", TYPE::A),
                &mut rng,
            );
            u16::from_be_bytes([q[0], q[1]])
        })
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 100, "no ID reused among pending queries");
    assert!(!ids.contains(&0x4242) || ids.iter().filter(|&&i| i == 0x4242).count() == 1);
    // Not sequential.
    assert!(
        ids.windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count()
            < 5
    );
    // Another RNG seed gives other IDs.
    let mut other = forwarder(vec![upstream()]);
    let mut rng2 = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(8);
    let (_, q) = forward(
        &mut other,
        T0,
        1000,
        &query(0x4242, "example.org", TYPE::A),
        &mut rng2,
    );
    assert_ne!(u16::from_be_bytes([q[0], q[1]]), ids[0]);
}

#[test]
fn spoofed_and_mismatched_answers_are_rejected() {
    let upstream2: SocketAddr = "192.0.2.54:53".parse().unwrap();
    let mut dns = forwarder(vec![upstream()]);
    let mut rng = rng();
    let q = query(7, "example.org", TYPE::A);
    let (to, sent) = forward(&mut dns, T0, 5353, &q, &mut rng);
    let good = answer_to(&sent, Ipv4Address::new(198, 51, 100, 1));

    // From another address, or another port of the upstream.
    assert_eq!(
        dns.handle_answer(upstream2, &good),
        Err(DnsDrop::UnknownAnswer)
    );
    let other_port: SocketAddr = "192.0.2.53:5353".parse().unwrap();
    assert_eq!(
        dns.handle_answer(other_port, &good),
        Err(DnsDrop::UnknownAnswer)
    );
    // With another ID.
    let mut wrong_id = good.clone();
    wrong_id[1] ^= 1;
    assert_eq!(
        dns.handle_answer(to, &wrong_id),
        Err(DnsDrop::UnknownAnswer)
    );
    // With the right ID but another question (a cache-poisoning attempt).
    let mut poison = answer_to(
        &query(
            u16::from_be_bytes([sent[0], sent[1]]),
            "bank.example",
            TYPE::A,
        ),
        Ipv4Address::new(203, 0, 113, 6),
    );
    assert_eq!(
        dns.handle_answer(to, &poison),
        Err(DnsDrop::QuestionMismatch)
    );
    let aaaa = answer_to(
        &query(
            u16::from_be_bytes([sent[0], sent[1]]),
            "example.org",
            TYPE::AAAA,
        ),
        Ipv4Address::new(203, 0, 113, 6),
    );
    assert_eq!(dns.handle_answer(to, &aaaa), Err(DnsDrop::QuestionMismatch));
    // A query, not an answer, and garbage.
    assert_eq!(dns.handle_answer(to, &sent), Err(DnsDrop::WrongDirection));
    poison.truncate(5);
    assert_eq!(dns.handle_answer(to, &poison), Err(DnsDrop::Malformed));
    assert_eq!(dns.stats().mismatched, 7);
    // The real answer still gets through (the case of the name does not matter).
    let mut upper = good.clone();
    let pos = upper.windows(7).position(|w| w == b"example").unwrap();
    upper[pos..pos + 7].copy_from_slice(b"EXAMPLE");
    let (c, reply) = dns.handle_answer(to, &upper).unwrap();
    assert_eq!(c, client(5353));
    assert_eq!(reply[..2], [0, 7]);
}

#[test]
fn timeouts_get_servfail() {
    let mut dns = forwarder(vec![upstream()]);
    let mut rng = rng();
    let (to, sent) = forward(
        &mut dns,
        T0,
        1,
        &query(9, "slow.example", TYPE::A),
        &mut rng,
    );
    assert_eq!(dns.poll_at(), Some(T0 + Duration::from_secs(5)));
    assert!(dns.poll(T0 + Duration::from_secs(4)).is_empty());
    let failed = dns.poll(T0 + Duration::from_secs(5));
    assert_eq!(failed.len(), 1);
    let (c, reply) = &failed[0];
    assert_eq!(*c, client(1));
    let reply = Packet::parse(reply).unwrap();
    assert_eq!((reply.id(), reply.rcode()), (9, RCODE::ServerFailure));
    assert_eq!(reply.questions[0].qname.to_string(), "slow.example");
    assert!(reply.has_flags(PacketFlag::RESPONSE | PacketFlag::RECURSION_DESIRED));
    // A late answer is stale.
    let late = answer_to(&sent, Ipv4Address::new(198, 51, 100, 1));
    assert_eq!(dns.handle_answer(to, &late), Err(DnsDrop::UnknownAnswer));
    assert_eq!(dns.stats().timeouts, 1);
}

#[test]
fn pending_table_is_bounded() {
    let config = DnsConfig {
        upstreams: vec![upstream()],
        max_pending: 3,
        ..DnsConfig::default()
    };
    let mut dns = DnsForwarder::new(config, Ipv4Cidr::new(GW_IP, 24), None, 1472);
    let mut rng = rng();
    for port in 0..3 {
        forward(
            &mut dns,
            T0,
            port,
            &query(port, "a.example", TYPE::A),
            &mut rng,
        );
    }
    match dns.handle_query(
        T0,
        client(9),
        &query(9, "a.example", TYPE::A),
        &NoNames,
        &mut rng,
    ) {
        DnsOutcome::Answer(reply) => {
            assert_eq!(Packet::parse(&reply).unwrap().rcode(), RCODE::ServerFailure)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((dns.pending(), dns.stats().refused), (3, 1));
}

#[test]
fn retransmissions_reuse_the_pending_query_and_upstreams_rotate() {
    let upstream2: SocketAddr = "192.0.2.54:53".parse().unwrap();
    let mut dns = forwarder(vec![upstream(), upstream2]);
    let mut rng = rng();
    let q = query(3, "a.example", TYPE::A);
    let first = forward(&mut dns, T0, 1, &q, &mut rng);
    let again = forward(&mut dns, T0 + Duration::from_secs(1), 1, &q, &mut rng);
    assert_eq!(first, again);
    assert_eq!(dns.pending(), 1);
    let second = forward(&mut dns, T0, 2, &q, &mut rng);
    assert_eq!((first.0, second.0), (upstream(), upstream2));
}

#[test]
fn edns_size_is_clamped_and_big_answers_truncated() {
    let mut dns = forwarder(vec![upstream()]);
    let mut rng = rng();
    let plain = query(4, "big.example", TYPE::TXT);
    let mut q = Packet::parse(&plain).unwrap();
    *q.opt_mut() = Some(simple_dns::rdata::OPT {
        opt_codes: Vec::new(),
        udp_packet_size: 4096,
        version: 0,
    });
    let q = q.build_bytes_vec().unwrap();
    let (to, sent) = forward(&mut dns, T0, 1, &q, &mut rng);
    assert_eq!(
        Packet::parse(&sent).unwrap().opt().unwrap().udp_packet_size,
        1232
    );
    assert_eq!(sent.len(), q.len());

    // An answer over what the client (1472 bytes here) can take is truncated.
    let parsed = Packet::parse(&sent).unwrap();
    let mut a = Packet::new_reply(parsed.id());
    a.questions = parsed.questions.clone();
    let text = "x".repeat(250);
    for _ in 0..8 {
        a.answers.push(ResourceRecord::new(
            parsed.questions[0].qname.clone(),
            CLASS::IN,
            60,
            RData::TXT(simple_dns::rdata::TXT::new().with_string(&text).unwrap()),
        ));
    }
    let big = a.build_bytes_vec().unwrap();
    assert!(big.len() > 1472);
    let (_, reply) = dns.handle_answer(to, &big).unwrap();
    let reply = Packet::parse(&reply).unwrap();
    assert!(reply.has_flags(PacketFlag::TRUNCATION));
    assert_eq!((reply.id(), reply.answers.len()), (4, 0));
}

#[test]
fn malformed_and_unusual_queries() {
    let mut dns = forwarder(vec![upstream()]);
    let mut rng = rng();
    assert_eq!(
        dns.handle_query(T0, client(1), &[1, 2, 3], &NoNames, &mut rng),
        DnsOutcome::Drop(DnsDrop::Malformed)
    );
    // Two questions: FORMERR.
    let one = query(5, "a.example", TYPE::A);
    let mut q = Packet::parse(&one).unwrap();
    q.questions.push(q.questions[0].clone());
    let two = q.build_bytes_vec().unwrap();
    match dns.handle_query(T0, client(1), &two, &NoNames, &mut rng) {
        DnsOutcome::Answer(r) => assert_eq!(Packet::parse(&r).unwrap().rcode(), RCODE::FormatError),
        other => panic!("{other:?}"),
    }
    // A response sent to the server port.
    let answer = answer_to(&query(5, "a.example", TYPE::A), GW_IP);
    assert_eq!(
        dns.handle_query(T0, client(1), &answer, &NoNames, &mut rng),
        DnsOutcome::Drop(DnsDrop::WrongDirection)
    );
    // No upstream configured: SERVFAIL.
    let mut none = forwarder(Vec::new());
    match none.handle_query(
        T0,
        client(1),
        &query(5, "a.example", TYPE::A),
        &NoNames,
        &mut rng,
    ) {
        DnsOutcome::Answer(r) => {
            assert_eq!(Packet::parse(&r).unwrap().rcode(), RCODE::ServerFailure)
        }
        other => panic!("{other:?}"),
    }
}

proptest::proptest! {
    #[test]
    fn dns_never_panics_on_guest_or_upstream_bytes(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let mut gw = gateway();
        let _ = gw.handle(T0, &dns_frame(ip(2), 1, &payload), &mut rng());
        let _ = gw.handle_dns_answer(upstream(), &payload);
        let _ = gw.poll(T0 + Duration::from_secs(10));
    }
}
