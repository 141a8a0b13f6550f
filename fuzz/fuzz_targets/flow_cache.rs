//! The flow cache in front of conntrack, fed IPv4 packets from a guest: two flows with verdicts
//! (TCP and UDP, both directions) whose bytes are changed arbitrarily (the IPv4 checksum fixed
//! or not), time that moves on, and verdicts that change.
//!
//! Checks, for every packet: reading the fields from the bytes agrees with parsing them
//! (`Ipv4Fields::parse` vs `PacketMeta::parse_ipv4`); the cache answers the same by the bytes'
//! fields as by the parsed packet (`hit` vs `get`); and an answer is only ever the current
//! verdict of the packet's own flow (no other flow has one, and a changed verdict is never
//! answered with the old one).

#![no_main]

use arbitrary::Arbitrary;
use bridge_core::conntrack::{Conntrack, ConntrackConfig, FlowTuple, Ipv4Fields, PacketMeta};
use bridge_core::flow_cache::FlowCache;
use bridge_core::gateway::frame::{ipv4_frame, udp_frame, Ipv4Route};
use bridge_core::time::{Duration, Instant};
use bridge_core::wire::{EthernetAddress, IpProtocol, Ipv4Address, Ipv4Packet};
use libfuzzer_sys::fuzz_target;

const ZONE: u32 = 1;

#[derive(Arbitrary, Debug)]
struct Step {
    /// Which of the four packets (TCP ACK or UDP, either direction) to start from.
    packet: u8,
    /// Bytes to change: (offset into the IP packet, XOR mask).
    changes: Vec<(u8, u8)>,
    /// Whether the IPv4 header checksum is made right after the changes.
    fix_checksum: bool,
    /// Milliseconds that pass before the packet.
    advance_ms: u16,
    /// A new verdict for flow 0 (TCP) or 1 (UDP) before the packet.
    set_verdict: Option<(bool, u8)>,
}

/// The IP packet (without Ethernet) of `frame`.
fn ip(frame: Vec<u8>) -> Vec<u8> {
    frame[14..].to_vec()
}

fn route(src: [u8; 4], dst: [u8; 4]) -> Ipv4Route {
    Ipv4Route {
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        src_ip: Ipv4Address::from(src),
        dst_ip: Ipv4Address::from(dst),
    }
}

/// A TCP segment between the two hosts with `flags` (the flags byte).
fn tcp(reply: bool, flags: u8) -> Vec<u8> {
    let (a, b, pa, pb) = ([10, 0, 0, 2], [10, 0, 0, 3], 40000u16, 80u16);
    let (src, dst, sport, dport) = if reply {
        (b, a, pb, pa)
    } else {
        (a, b, pa, pb)
    };
    ip(ipv4_frame(&route(src, dst), IpProtocol::Tcp, 20, |t| {
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
    }))
}

/// A UDP datagram between the two hosts.
fn udp(reply: bool) -> Vec<u8> {
    let (a, b) = ([10, 0, 0, 2], [10, 0, 0, 3]);
    let frame = match reply {
        false => udp_frame(&route(a, b), 5000, 53, b"query"),
        true => udp_frame(&route(b, a), 53, 5000, b"answer"),
    };
    ip(frame)
}

fn meta(bytes: &[u8]) -> PacketMeta {
    PacketMeta::parse_ipv4(ZONE, bytes).expect("a well-formed packet")
}

/// Whether `t` is the flow of `of`, either way.
fn same_flow(t: &FlowTuple, of: &FlowTuple) -> bool {
    t == of || *t == of.reversed()
}

fuzz_target!(|steps: Vec<Step>| {
    let ct: Conntrack = Conntrack::new(ConntrackConfig::default());
    let mut now = Instant::from_millis(1_000_000);
    // Both flows established (TCP handshake, UDP answered), each with a verdict.
    for p in [
        tcp(false, 0x02),
        tcp(true, 0x12),
        tcp(false, 0x10),
        udp(false),
        udp(true),
    ] {
        ct.track(now, &meta(&p)).expect("tracked");
    }
    let packets = [tcp(false, 0x10), tcp(true, 0x10), udp(false), udp(true)];
    let flows = [meta(&packets[0]).tuple, meta(&packets[2]).tuple];
    let refs = [&packets[0], &packets[2]].map(|p| {
        ct.track(now, &meta(p))
            .expect("tracked")
            .flow
            .expect("a flow")
    });
    let mut verdicts = [7u32, 9u32];
    for (r, v) in refs.iter().zip(verdicts) {
        ct.set_verdict(r, v);
    }
    let mut cache = FlowCache::new(&ct);

    for step in steps.iter().take(256) {
        now += Duration::from_millis(u64::from(step.advance_ms));
        if let Some((udp_flow, v)) = step.set_verdict {
            let i = usize::from(udp_flow);
            verdicts[i] = u32::from(v);
            ct.set_verdict(&refs[i], verdicts[i]);
        }
        cache.begin_batch(&ct);
        let mut b = packets[usize::from(step.packet) % packets.len()].clone();
        for &(at, mask) in &step.changes {
            let at = usize::from(at);
            if at < b.len() {
                b[at] ^= mask;
            }
        }
        let header_len = usize::from(b[0] & 0x0f) * 4;
        if step.fix_checksum && (20..=b.len()).contains(&header_len) {
            Ipv4Packet::new_unchecked(&mut b[..]).fill_checksum();
        }

        let parsed = PacketMeta::parse_ipv4(ZONE, &b);
        let fields = match Ipv4Fields::parse(ZONE, &b, b.len()) {
            Ok(f) => f,
            Err(e) => {
                assert_eq!(Err(e), parsed);
                continue;
            }
        };
        assert_eq!(fields.meta(), parsed);
        let Ok(m) = parsed else { continue };
        let by_meta = cache.get(now, &m);
        assert_eq!(cache.hit(now, &fields, b.len()).copied(), by_meta);
        if let Some(v) = by_meta {
            let own = flows.iter().position(|f| same_flow(&m.tuple, f));
            assert_eq!(own.map(|i| verdicts[i]), Some(v), "answered {m:?}");
        }
        // The datapath's miss: conntrack, then offered to the cache.
        if by_meta.is_none() {
            if let Ok(t) = ct.track(now, &m) {
                cache.insert(now, &m, &t);
            }
        }
    }
});
