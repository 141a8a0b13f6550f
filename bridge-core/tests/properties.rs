//! Property tests: isolation, no return to the ingress port, FDB limits, the 802.1Q view
//! round trip, and segmentation.

use std::collections::HashMap;

use bridge_core::offload::{self, GsoType, OffloadParams};
use bridge_core::time::{Duration, Instant};
use bridge_core::vlan;
use bridge_core::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr, Ipv6Address, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber, TcpTimestampRepr,
};
use bridge_core::{
    Decision, FdbEntryKind, FrameMeta, LimitAction, NetworkConfig, NetworkId, PortConfig, PortId,
    PortVlan, Switch, Tci, VlanId,
};
use proptest::prelude::*;

const PORT_LIMIT: u32 = 3;
const NETWORK_LIMIT: u32 = 5;

/// How one port is set up: its network (index) and VLAN membership.
#[derive(Debug, Clone)]
struct PortSpec {
    network: usize,
    vlan: PortVlan,
}

fn vid(n: u16) -> VlanId {
    VlanId::new(n).unwrap()
}

fn port_vlan() -> impl Strategy<Value = PortVlan> {
    prop_oneof![
        prop::sample::select(vec![1u16, 10, 20]).prop_map(|v| PortVlan::Access(vid(v))),
        (
            prop::sample::subsequence(vec![1u16, 10, 20], 0..=3),
            prop::option::of(prop::sample::select(vec![1u16, 10, 20]))
        )
            .prop_map(|(allowed, native)| PortVlan::Trunk {
                allowed: allowed.into_iter().map(vid).collect(),
                native: native.map(vid),
            }),
    ]
}

/// A frame as the test generates it: small pools, so that addresses repeat and move.
#[derive(Debug, Clone)]
struct FrameSpec {
    ingress: usize,
    dst: u8,
    src: u8,
    tci: Option<u16>,
    dt_secs: u8,
}

fn mac(n: u8) -> [u8; 6] {
    match n {
        0 => [0xff; 6],
        1 => [0x01, 0x00, 0x5e, 0, 0, 1],
        2 => [0x01, 0x80, 0xc2, 0, 0, 0],
        3 => [0; 6],
        n => [0x02, 0, 0, 0, 0, n],
    }
}

fn frame_spec(ports: usize) -> impl Strategy<Value = FrameSpec> {
    (
        0..ports + 1, // one past the end: a port that does not exist
        0u8..14,
        0u8..14,
        prop::option::of(prop::sample::select(vec![
            0u16, 1, 10, 20, 30, 4095, 0xa00a,
        ])),
        prop::sample::select(vec![0u8, 0, 0, 1, 100]),
    )
        .prop_map(|(ingress, dst, src, tci, dt_secs)| FrameSpec {
            ingress,
            dst,
            src,
            tci,
            dt_secs,
        })
}

fn build(spec: &FrameSpec) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&mac(spec.dst));
    f.extend_from_slice(&mac(spec.src));
    if let Some(tci) = spec.tci {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(64, 0);
    f
}

fn scenario() -> impl Strategy<Value = (Vec<(bool, LimitAction)>, Vec<PortSpec>, Vec<FrameSpec>)> {
    let networks = prop::collection::vec(
        (
            any::<bool>(),
            prop_oneof![
                Just(LimitAction::Drop),
                Just(LimitAction::ForwardWithoutLearning)
            ],
        ),
        1..4,
    );
    networks.prop_flat_map(|networks| {
        let n = networks.len();
        let ports = prop::collection::vec(
            (0..n, port_vlan()).prop_map(|(network, vlan)| PortSpec { network, vlan }),
            1..9,
        );
        (Just(networks), ports).prop_flat_map(|(networks, ports)| {
            let frames = prop::collection::vec(frame_spec(ports.len()), 1..120);
            (Just(networks), Just(ports), frames)
        })
    })
}

/// Checks that no network's FDB holds more learned entries than its limit, nor any port more
/// than its own.
fn check_limits(sw: &Switch, networks: &[NetworkId], now: Instant) -> Result<(), TestCaseError> {
    for &net in networks {
        let mut per_port: HashMap<PortId, u32> = HashMap::new();
        let mut learned = 0;
        sw.for_each_fdb_entry(net, now, |e| {
            if matches!(e.kind, FdbEntryKind::Learned { .. }) {
                learned += 1;
                *per_port.entry(e.port).or_default() += 1;
            }
        })
        .unwrap();
        prop_assert!(learned <= NETWORK_LIMIT, "{learned} learned in {net}");
        let stats = sw
            .networks()
            .into_iter()
            .find(|n| n.id == net)
            .unwrap()
            .stats;
        prop_assert_eq!(stats.learned, learned);
        for (port, n) in per_port {
            prop_assert!(n <= PORT_LIMIT, "{n} learned on {port}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_stay_in_their_network_and_never_return(
        (net_specs, port_specs, frames) in scenario()
    ) {
        let sw = Switch::new();
        let networks: Vec<_> = net_specs
            .iter()
            .map(|&(vlan_filtering, limit_action)| {
                sw.add_network(NetworkConfig {
                    ageing_time: Duration::from_secs(60),
                    max_learned: NETWORK_LIMIT,
                    limit_action,
                    vlan_filtering,
                })
            })
            .collect();
        let ports: Vec<_> = port_specs
            .iter()
            .map(|spec| {
                let config = PortConfig { vlan: spec.vlan.clone(), max_learned: PORT_LIMIT };
                sw.add_port(networks[spec.network], config).unwrap()
            })
            .collect();
        let network_of: HashMap<PortId, NetworkId> =
            ports.iter().zip(&port_specs).map(|(&p, s)| (p, networks[s.network])).collect();

        let mut now = Instant::from_secs(0);
        for (i, spec) in frames.iter().enumerate() {
            now += Duration::from_secs(spec.dt_secs.into());
            let ingress = ports.get(spec.ingress).copied().unwrap_or(PortId(999));
            let decision = sw.process(now, ingress, &build(spec));
            let mut targets = Vec::new();
            match decision {
                Decision::Forward { port, .. } => targets.push(port),
                Decision::Flood(flood) => {
                    prop_assert_eq!(Some(&flood.network()), network_of.get(&ingress));
                    sw.for_each_flood_target(&flood, |p, _| targets.push(p));
                }
                Decision::Drop(_) => {}
            }
            for target in targets {
                prop_assert_ne!(target, ingress, "frame returned to its ingress port");
                prop_assert_eq!(network_of.get(&target), network_of.get(&ingress),
                    "frame left its network");
            }
            if i % 16 == 15 {
                sw.age(now);
            }
            check_limits(&sw, &networks, now)?;
        }
    }

    #[test]
    fn vlan_tag_round_trips(tci in any::<u16>(), ethertype in any::<u16>(), rest in any::<u8>()) {
        let repr = vlan::Repr { tci: Tci(tci), ethertype: EthernetProtocol::from(ethertype) };
        let mut buf = [0u8; 5];
        buf[4] = rest;
        repr.emit(&mut vlan::Packet::new_unchecked(&mut buf[..]));
        let packet = vlan::Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(vlan::Repr::parse(&packet).unwrap(), repr);
        prop_assert_eq!(packet.payload(), &[rest][..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128), port in 0u32..3) {
        let _ = FrameMeta::parse(&bytes);
        let sw = Switch::new();
        let net = sw.add_network(NetworkConfig { vlan_filtering: port == 1, ..Default::default() });
        sw.add_port(net, PortConfig::default()).unwrap();
        sw.add_port(net, PortConfig::default()).unwrap();
        if let Decision::Flood(flood) = sw.process(Instant::from_secs(0), PortId(port), &bytes) {
            sw.for_each_flood_target(&flood, |_, egress| {
                assert!(egress.apply(&bytes).is_some());
            });
        }
    }
}

/// A TCP GSO frame as a sender with TSO would hand it over.
#[derive(Debug, Clone)]
struct TcpGso {
    ipv6: bool,
    tagged: bool,
    mss: u16,
    payload: Vec<u8>,
    seq: u32,
    ident: u16,
    fin: bool,
    psh: bool,
    cwr: bool,
    timestamp: Option<(u32, u32)>,
}

fn tcp_gso() -> impl Strategy<Value = TcpGso> {
    let flags = (any::<bool>(), any::<bool>(), any::<bool>());
    let timestamp = prop::option::of(any::<(u32, u32)>());
    let shape = (any::<bool>(), any::<bool>(), 1u16..2000);
    let payload = prop::collection::vec(any::<u8>(), 0..12000);
    (shape, payload, any::<u32>(), any::<u16>(), flags, timestamp).prop_map(
        |((ipv6, tagged, mss), payload, seq, ident, (fin, psh, cwr), timestamp)| TcpGso {
            ipv6,
            tagged,
            mss,
            payload,
            seq,
            ident,
            fin,
            psh,
            cwr,
            timestamp,
        },
    )
}

const SRC4: Ipv4Address = Ipv4Address::new(192, 168, 122, 10);
const DST4: Ipv4Address = Ipv4Address::new(192, 168, 122, 20);
const SRC6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 10);
const DST6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 20);

/// Builds the frame with smoltcp (valid checksums; the segmenter must not rely on them).
fn build_gso(g: &TcpGso) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: 5201,
        control: if g.fin {
            TcpControl::Fin
        } else if g.psh {
            TcpControl::Psh
        } else {
            TcpControl::None
        },
        seq_number: TcpSeqNumber(g.seq as i32),
        ack_number: Some(TcpSeqNumber(7)),
        window_len: 512,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: g
            .timestamp
            .map(|(tsval, tsecr)| TcpTimestampRepr { tsval, tsecr }),
        payload: &g.payload,
    };
    let l4_len = tcp.buffer_len();
    let (ethertype, l3_len) = if g.ipv6 {
        (EthernetProtocol::Ipv6, 40)
    } else {
        (EthernetProtocol::Ipv4, 20)
    };
    let tag_len = if g.tagged { 4 } else { 0 };
    let mut f = vec![0u8; 14 + tag_len + l3_len + l4_len];
    let eth = EthernetRepr {
        src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
        dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
        ethertype: if g.tagged {
            EthernetProtocol::Unknown(vlan::TPID)
        } else {
            ethertype
        },
    };
    eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    if g.tagged {
        let tag = vlan::Repr {
            tci: Tci::new(0, false, 10),
            ethertype,
        };
        tag.emit(&mut vlan::Packet::new_unchecked(&mut f[14..18]));
    }
    let l3 = &mut f[14 + tag_len..];
    let caps = Default::default();
    let (src, dst): (IpAddress, IpAddress) = if g.ipv6 {
        let ip = Ipv6Repr {
            src_addr: SRC6,
            dst_addr: DST6,
            next_header: IpProtocol::Tcp,
            payload_len: l4_len,
            hop_limit: 64,
        };
        ip.emit(&mut Ipv6Packet::new_unchecked(&mut *l3));
        (SRC6.into(), DST6.into())
    } else {
        let ip = Ipv4Repr {
            src_addr: SRC4,
            dst_addr: DST4,
            next_header: IpProtocol::Tcp,
            payload_len: l4_len,
            hop_limit: 64,
        };
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut *l3), &caps);
        Ipv4Packet::new_unchecked(&mut *l3).set_ident(g.ident);
        Ipv4Packet::new_unchecked(&mut *l3).fill_checksum();
        (SRC4.into(), DST4.into())
    };
    let l4 = &mut l3[l3_len..];
    let mut packet = TcpPacket::new_unchecked(&mut *l4);
    tcp.emit(&mut packet, &src, &dst, &caps);
    packet.set_cwr(g.cwr);
    if g.fin {
        packet.set_psh(g.psh);
    }
    // What the sender leaves with checksum offload: garbage as far as we are concerned.
    packet.set_checksum(0x1234);
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn tcp_segmentation_reassembles_with_valid_checksums(g in tcp_gso()) {
        let frame = build_gso(&g);
        let params = OffloadParams {
            needs_csum: true,
            gso_type: if g.ipv6 { GsoType::TcpV6 } else { GsoType::TcpV4 },
            gso_size: g.mss,
            ..OffloadParams::default()
        };
        let mut segments = Vec::new();
        let count = offload::complete(&frame, &params, |s| {
            let mut buf = vec![0; s.len()];
            s.copy_to(&mut buf).unwrap();
            segments.push(buf);
        })
        .unwrap();
        prop_assert_eq!(count, segments.len());
        prop_assert_eq!(count, g.payload.len().div_ceil(usize::from(g.mss)).max(1));

        let mut reassembled = Vec::new();
        let l3_off = if g.tagged { 18 } else { 14 };
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == count;
            let l3 = &seg[l3_off..];
            let (tcp_bytes, src, dst): (&[u8], IpAddress, IpAddress) = if g.ipv6 {
                let ip = Ipv6Packet::new_checked(l3).unwrap();
                prop_assert_eq!(usize::from(ip.payload_len()) + 40, l3.len());
                (&l3[40..], SRC6.into(), DST6.into())
            } else {
                let ip = Ipv4Packet::new_checked(l3).unwrap();
                prop_assert!(ip.verify_checksum());
                prop_assert_eq!(usize::from(ip.total_len()), l3.len());
                prop_assert_eq!(ip.ident(), g.ident.wrapping_add(i as u16));
                (&l3[20..], SRC4.into(), DST4.into())
            };
            let tcp = TcpPacket::new_checked(tcp_bytes).unwrap();
            prop_assert!(tcp.verify_checksum(&src, &dst), "segment {} checksum", i);
            let payload = &tcp_bytes[usize::from(tcp.header_len())..];
            prop_assert!(payload.len() <= usize::from(g.mss));
            let expected_seq = g.seq.wrapping_add(reassembled.len() as u32);
            prop_assert_eq!(tcp.seq_number().0 as u32, expected_seq);
            prop_assert_eq!(tcp.fin(), g.fin && last);
            prop_assert_eq!(tcp.psh(), g.psh && last);
            prop_assert_eq!(tcp.cwr(), g.cwr && i == 0);
            prop_assert!(tcp.ack());
            prop_assert_eq!(&seg[..l3_off], &frame[..l3_off]);
            reassembled.extend_from_slice(payload);
        }
        prop_assert_eq!(reassembled, g.payload);
    }

    #[test]
    fn offload_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        needs_csum in any::<bool>(),
        csum_start in any::<u16>(),
        csum_offset in any::<u16>(),
        gso in prop::sample::select(vec![GsoType::None, GsoType::TcpV4, GsoType::TcpV6, GsoType::Udp]),
        gso_size in any::<u16>(),
    ) {
        let params = OffloadParams { needs_csum, csum_start, csum_offset, gso_type: gso, gso_size };
        let _ = offload::complete(&bytes, &params, |s| assert!(s.len() <= bytes.len() + 4));
    }
}
