//! Behaviour of the switch, frame by frame.

use bridge_core::time::{Duration, Instant};
use bridge_core::wire::EthernetAddress;
use bridge_core::{
    switch, Decision, DecisionCache, DropReason, Egress, FdbEntryKind, LimitAction, NetworkConfig,
    NetworkId, PortConfig, PortId, PortVlan, Switch, Tci, VlanId,
};

const BROADCAST: [u8; 6] = [0xff; 6];

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

/// A 64-byte frame; `tci` adds an 802.1Q tag.
fn frame(dst: [u8; 6], src: [u8; 6], tci: Option<u16>) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = tci {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(64, 0xab);
    f
}

fn at(secs: i64) -> Instant {
    Instant::from_secs(secs)
}

fn vid(n: u16) -> VlanId {
    VlanId::new(n).unwrap()
}

fn targets(sw: &Switch, d: Decision) -> Vec<(PortId, Egress)> {
    let Decision::Flood(flood) = d else {
        panic!("expected a flood, got {d:?}");
    };
    let mut out = Vec::new();
    sw.for_each_flood_target(&flood, |p, e| out.push((p, e)));
    out.sort_by_key(|(p, _)| *p);
    out
}

fn forward(port: PortId) -> Decision {
    Decision::Forward {
        port,
        egress: Egress::AsIs,
    }
}

/// A switch with one plain network and `n` ports.
fn plain(n: usize) -> (Switch, NetworkId, Vec<PortId>) {
    let sw = Switch::new();
    let net = sw.add_network(NetworkConfig::default());
    let ports = (0..n)
        .map(|_| sw.add_port(net, PortConfig::default()).unwrap())
        .collect();
    (sw, net, ports)
}

#[test]
fn switch_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Switch>();
}

#[test]
fn learns_then_forwards_unicast() {
    let (sw, _, p) = plain(3);
    let d = sw.process(at(0), p[0], &frame(mac(2), mac(1), None));
    assert_eq!(
        targets(&sw, d),
        [(p[1], Egress::AsIs), (p[2], Egress::AsIs)]
    );
    assert_eq!(
        sw.process(at(1), p[1], &frame(mac(1), mac(2), None)),
        forward(p[0])
    );
    assert_eq!(
        sw.process(at(2), p[0], &frame(mac(2), mac(1), None)),
        forward(p[1])
    );
}

#[test]
fn floods_broadcast_and_multicast_within_the_network_only() {
    let (sw, net_a, a) = plain(3);
    let net_b = sw.add_network(NetworkConfig::default());
    let b = sw.add_port(net_b, PortConfig::default()).unwrap();
    for dst in [
        BROADCAST,
        [0x01, 0x00, 0x5e, 0, 0, 1],
        [0x33, 0x33, 0, 0, 0, 1],
    ] {
        let d = sw.process(at(0), a[1], &frame(dst, mac(1), None));
        let Decision::Flood(flood) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            (flood.network(), flood.ingress(), flood.vlan()),
            (net_a, a[1], None)
        );
        assert_eq!(
            targets(&sw, d),
            [(a[0], Egress::AsIs), (a[2], Egress::AsIs)]
        );
    }
    // The same MAC in another network is unknown there.
    let d = sw.process(at(0), b, &frame(mac(1), mac(9), None));
    assert_eq!(targets(&sw, d), []);
}

#[test]
fn drops_with_reasons_and_counts_them() {
    let (sw, _, p) = plain(2);
    let cases = [
        (
            frame(mac(2), mac(1), None)[..13].to_vec(),
            DropReason::TooShort,
        ),
        (
            frame(mac(2), mac(1), Some(5))[..15].to_vec(),
            DropReason::Malformed,
        ),
        (
            frame(mac(2), [0x01, 0, 0, 0, 0, 1], None),
            DropReason::SourceMulticast,
        ),
        (frame(mac(2), BROADCAST, None), DropReason::SourceMulticast),
        (frame(mac(2), [0; 6], None), DropReason::SourceZero),
        (
            frame([0x01, 0x80, 0xc2, 0, 0, 0x0e], mac(1), None),
            DropReason::LinkLocal,
        ),
    ];
    for (f, reason) in &cases {
        assert_eq!(sw.process(at(0), p[0], f), Decision::Drop(*reason));
    }
    let stats = sw.port_info(p[0]).unwrap().stats;
    assert_eq!(stats.rx_frames, cases.len() as u64);
    assert_eq!(stats.drops.get(DropReason::SourceMulticast), 2);
    assert_eq!(stats.drops.total(), cases.len() as u64);

    assert_eq!(
        sw.process(at(0), PortId(77), &frame(mac(2), mac(1), None)),
        Decision::Drop(DropReason::NoSuchPort)
    );
    assert_eq!(sw.unknown_port_drops(), 1);
}

#[test]
fn hairpin_and_port_state() {
    let (sw, _, p) = plain(2);
    sw.process(at(0), p[0], &frame(BROADCAST, mac(1), None));
    sw.process(at(0), p[1], &frame(BROADCAST, mac(2), None));
    let to_own_side = frame(mac(1), mac(3), None);
    assert_eq!(
        sw.process(at(0), p[0], &to_own_side),
        Decision::Drop(DropReason::Hairpin)
    );

    sw.set_port_up(p[1], false).unwrap();
    let to_down = frame(mac(2), mac(1), None);
    assert_eq!(
        sw.process(at(0), p[0], &to_down),
        Decision::Drop(DropReason::EgressDown)
    );
    let from_down = frame(mac(1), mac(2), None);
    assert_eq!(
        sw.process(at(0), p[1], &from_down),
        Decision::Drop(DropReason::PortDown)
    );
    let d = sw.process(at(0), p[0], &frame(BROADCAST, mac(1), None));
    assert_eq!(targets(&sw, d), [], "a down port is not flooded");
    sw.set_port_up(p[1], true).unwrap();
    assert_eq!(sw.process(at(0), p[0], &to_down), forward(p[1]));
    assert_eq!(
        sw.set_port_up(PortId(9), true),
        Err(switch::Error::NoSuchPort(PortId(9)))
    );
}

#[test]
fn ages_learned_addresses() {
    let sw = Switch::new();
    let config = NetworkConfig {
        ageing_time: Duration::from_secs(10),
        ..NetworkConfig::default()
    };
    let net = sw.add_network(config);
    let p: Vec<_> = (0..2)
        .map(|_| sw.add_port(net, PortConfig::default()).unwrap())
        .collect();
    sw.process(at(0), p[1], &frame(BROADCAST, mac(2), None));
    let to_2 = frame(mac(2), mac(1), None);
    assert_eq!(sw.process(at(9), p[0], &to_2), forward(p[1]));
    assert!(
        matches!(sw.process(at(10), p[0], &to_2), Decision::Flood(_)),
        "expired"
    );
    assert_eq!(sw.networks()[0].stats.learned, 2);
    assert_eq!(sw.age(at(10)), 1);
    assert_eq!(sw.age(at(11)), 0, "mac 1 was refreshed at 10");
    assert_eq!(sw.networks()[0].stats.learned, 1);
}

#[test]
fn counts_mac_moves() {
    let (sw, _, p) = plain(3);
    sw.process(at(0), p[0], &frame(BROADCAST, mac(1), None));
    sw.process(at(1), p[1], &frame(BROADCAST, mac(1), None));
    assert_eq!(
        sw.process(at(2), p[2], &frame(mac(1), mac(3), None)),
        forward(p[1])
    );
    assert_eq!(sw.networks()[0].stats.mac_moves, 1);
}

fn limited(action: LimitAction) -> (Switch, Vec<PortId>) {
    let sw = Switch::new();
    let config = NetworkConfig {
        max_learned: 3,
        limit_action: action,
        ..NetworkConfig::default()
    };
    let net = sw.add_network(config);
    let port = PortConfig {
        max_learned: 2,
        ..PortConfig::default()
    };
    let p = (0..3)
        .map(|_| sw.add_port(net, port.clone()).unwrap())
        .collect();
    (sw, p)
}

#[test]
fn drops_at_the_fdb_limit_when_configured() {
    let (sw, p) = limited(LimitAction::Drop);
    for n in 1..=2 {
        assert!(matches!(
            sw.process(at(0), p[0], &frame(BROADCAST, mac(n), None)),
            Decision::Flood(_)
        ));
    }
    let over_port = frame(BROADCAST, mac(3), None);
    assert_eq!(
        sw.process(at(0), p[0], &over_port),
        Decision::Drop(DropReason::FdbLimit)
    );
    sw.process(at(0), p[1], &frame(BROADCAST, mac(4), None));
    let over_net = frame(BROADCAST, mac(5), None);
    assert_eq!(
        sw.process(at(0), p[1], &over_net),
        Decision::Drop(DropReason::FdbLimit)
    );
    assert_eq!(sw.port_info(p[0]).unwrap().stats.fdb_limit_hits, 1);
    assert_eq!(
        sw.port_info(p[1])
            .unwrap()
            .stats
            .drops
            .get(DropReason::FdbLimit),
        1
    );
    let stats = sw.networks()[0].stats;
    assert_eq!((stats.learned, stats.fdb_limit_hits), (3, 2));
    // Known addresses still pass.
    assert!(matches!(
        sw.process(at(0), p[0], &frame(BROADCAST, mac(1), None)),
        Decision::Flood(_)
    ));
}

#[test]
fn forwards_without_learning_at_the_limit_when_configured() {
    let (sw, p) = limited(LimitAction::ForwardWithoutLearning);
    sw.process(at(0), p[1], &frame(BROADCAST, mac(9), None));
    for n in 1..=3 {
        assert_eq!(
            sw.process(at(0), p[0], &frame(mac(9), mac(n), None)),
            forward(p[1])
        );
    }
    let stats = sw.port_info(p[0]).unwrap().stats;
    assert_eq!((stats.fdb_limit_hits, stats.drops.total()), (1, 0));
    // mac 3 was not learned: traffic to it floods.
    assert!(matches!(
        sw.process(at(0), p[1], &frame(mac(3), mac(9), None)),
        Decision::Flood(_)
    ));
}

#[test]
fn static_entries_win_over_learning() {
    let (sw, net, p) = plain(2);
    let gw = EthernetAddress(mac(100));
    sw.add_static(net, None, gw, p[1]).unwrap();
    assert_eq!(
        sw.process(at(0), p[0], &frame(mac(100), mac(1), None)),
        forward(p[1])
    );
    let spoof = frame(BROADCAST, mac(100), None);
    assert_eq!(
        sw.process(at(0), p[0], &spoof),
        Decision::Drop(DropReason::SpoofedStatic)
    );
    assert_eq!(sw.age(at(100_000)), 1, "only the learned mac 1 ages");
    assert_eq!(
        sw.process(at(100_000), p[0], &frame(mac(100), mac(1), None)),
        forward(p[1])
    );
    let mut entries = Vec::new();
    sw.for_each_fdb_entry(net, at(100_000), |e| entries.push(e))
        .unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .any(|e| e.mac == gw && e.kind == FdbEntryKind::Static));
    assert_eq!(sw.remove_static(net, None, gw), Ok(true));
    assert_eq!(sw.remove_static(net, None, gw), Ok(false));

    let err = sw.add_static(net, None, EthernetAddress(BROADCAST), p[1]);
    assert!(matches!(err, Err(switch::Error::StaticNotUnicast(_))));
    let err = sw.add_static(net, Some(vid(5)), gw, p[1]);
    assert!(matches!(err, Err(switch::Error::StaticVlan { .. })));
    let other = sw.add_network(NetworkConfig::default());
    let err = sw.add_static(other, None, gw, p[1]);
    assert!(matches!(err, Err(switch::Error::PortNotOnNetwork { .. })));
}

#[test]
fn removing_a_port_flushes_its_entries() {
    let (sw, net, p) = plain(3);
    sw.process(at(0), p[1], &frame(BROADCAST, mac(2), None));
    sw.add_static(net, None, EthernetAddress(mac(50)), p[1])
        .unwrap();
    sw.remove_port(p[1]).unwrap();
    let info = &sw.networks()[0];
    assert_eq!((info.stats.learned, info.stats.statics), (0, 0));
    assert_eq!(info.ports, [p[0], p[2]]);
    let d = sw.process(at(1), p[0], &frame(mac(2), mac(1), None));
    assert_eq!(targets(&sw, d), [(p[2], Egress::AsIs)]);
    assert_eq!(sw.remove_port(p[1]), Err(switch::Error::NoSuchPort(p[1])));
    // The id is reused by the next port, which starts with an empty FDB share.
    assert_eq!(sw.add_port(net, PortConfig::default()), Ok(p[1]));
    assert!(sw.port_info(p[1]).unwrap().stats == Default::default());
}

#[test]
fn networks_are_added_and_removed() {
    let (sw, net, p) = plain(1);
    assert_eq!(
        sw.remove_network(net),
        Err(switch::Error::NetworkHasPorts(net))
    );
    sw.remove_port(p[0]).unwrap();
    sw.remove_network(net).unwrap();
    assert!(sw.networks().is_empty());
    assert_eq!(
        sw.remove_network(net),
        Err(switch::Error::NoSuchNetwork(net))
    );
    let err = sw.add_port(net, PortConfig::default());
    assert_eq!(err, Err(switch::Error::NoSuchNetwork(net)));
}

#[test]
fn counts_rx_here_and_tx_at_delivery() {
    let (sw, _, p) = plain(2);
    let f = frame(BROADCAST, mac(1), None);
    let d = sw.process(at(0), p[0], &f);
    let tx = sw.port_counters(p[1]).unwrap();
    for (port, _) in targets(&sw, d) {
        assert_eq!(port, p[1]);
        tx.record_tx(f.len());
    }
    let (a, b) = (
        sw.port_info(p[0]).unwrap().stats,
        sw.port_info(p[1]).unwrap().stats,
    );
    assert_eq!((a.rx_frames, a.rx_bytes, a.tx_frames), (1, 64, 0));
    assert_eq!((b.rx_frames, b.tx_frames, b.tx_bytes), (0, 1, 64));
}

#[test]
fn process_head_decides_on_the_head_and_counts_the_whole_frame() {
    let (sw, _, p) = plain(2);
    // p[1] learns its address.
    sw.process(at(0), p[1], &frame(BROADCAST, mac(2), None));
    let f = frame(mac(2), mac(1), None);
    assert_eq!(sw.process_head(at(0), p[0], &f[..18], 9014), forward(p[1]));
    let a = sw.port_info(p[0]).unwrap().stats;
    assert_eq!((a.rx_frames, a.rx_bytes), (1, 9014));
    // A head too short for an Ethernet header is counted as such.
    let short = sw.process_head(at(0), p[0], &f[..10], 10);
    assert_eq!(short, Decision::Drop(DropReason::TooShort));
}

/// One VLAN-filtering network: access ports in VLANs 10 and 20, a trunk carrying both with no
/// native VLAN, and a trunk carrying 20 with native VLAN 10.
fn vlans() -> (Switch, [PortId; 4]) {
    let sw = Switch::new();
    let net = sw.add_network(NetworkConfig {
        vlan_filtering: true,
        ..NetworkConfig::default()
    });
    let port = |vlan| {
        sw.add_port(
            net,
            PortConfig {
                vlan,
                ..PortConfig::default()
            },
        )
        .unwrap()
    };
    let access10 = port(PortVlan::Access(vid(10)));
    let access20 = port(PortVlan::Access(vid(20)));
    let trunk = port(PortVlan::Trunk {
        allowed: [vid(10), vid(20)].into_iter().collect(),
        native: None,
    });
    let native10 = port(PortVlan::Trunk {
        allowed: [vid(20)].into_iter().collect(),
        native: Some(vid(10)),
    });
    (sw, [access10, access20, trunk, native10])
}

#[test]
fn vlan_flooding_pushes_pops_and_filters() {
    let (sw, [a10, a20, trunk, n10]) = vlans();
    let d = sw.process(at(0), a10, &frame(BROADCAST, mac(1), None));
    let push10 = Egress::Push(Tci::new(0, false, 10));
    assert_eq!(targets(&sw, d), [(trunk, push10), (n10, Egress::AsIs)]);

    let tagged20 = Tci::new(6, false, 20).0;
    let d = sw.process(at(0), trunk, &frame(BROADCAST, mac(2), Some(tagged20)));
    assert_eq!(targets(&sw, d), [(a20, Egress::Pop), (n10, Egress::AsIs)]);

    let d = sw.process(at(0), trunk, &frame(BROADCAST, mac(3), Some(10)));
    assert_eq!(targets(&sw, d), [(a10, Egress::Pop), (n10, Egress::Pop)]);

    let priority = Tci::new(5, false, 0);
    let d = sw.process(at(0), a20, &frame(BROADCAST, mac(4), Some(priority.0)));
    let retag = Egress::Retag(Tci::new(5, false, 20));
    assert_eq!(targets(&sw, d), [(trunk, retag), (n10, retag)]);

    let not_allowed = [
        (trunk, frame(BROADCAST, mac(5), Some(30))),
        (trunk, frame(BROADCAST, mac(5), None)),
        (a10, frame(BROADCAST, mac(5), Some(10))),
    ];
    for (port, f) in not_allowed {
        assert_eq!(
            sw.process(at(0), port, &f),
            Decision::Drop(DropReason::VlanNotAllowed)
        );
    }
}

#[test]
fn vlan_fdb_is_per_vlan() {
    let (sw, [a10, a20, trunk, _]) = vlans();
    // mac 1 lives in VLAN 10 behind the access port, and in VLAN 20 behind the trunk.
    sw.process(at(0), a10, &frame(BROADCAST, mac(1), None));
    sw.process(at(0), trunk, &frame(BROADCAST, mac(1), Some(20)));
    let from_trunk = sw.process(at(0), trunk, &frame(mac(1), mac(2), Some(10)));
    assert_eq!(
        from_trunk,
        Decision::Forward {
            port: a10,
            egress: Egress::Pop
        }
    );
    let from_a20 = sw.process(at(0), a20, &frame(mac(1), mac(3), None));
    let push20 = Egress::Push(Tci::new(0, false, 20));
    assert_eq!(
        from_a20,
        Decision::Forward {
            port: trunk,
            egress: push20
        }
    );
    assert_eq!(sw.networks()[0].stats.mac_moves, 0);
}

#[test]
fn vlan_settings_are_ignored_without_filtering() {
    let (sw, _, p) = plain(2);
    let tagged = frame(BROADCAST, mac(1), Some(33));
    assert_eq!(
        targets(&sw, sw.process(at(0), p[0], &tagged)),
        [(p[1], Egress::AsIs)]
    );
    assert_eq!(
        sw.process(at(0), p[1], &frame(mac(1), mac(2), None)),
        forward(p[0])
    );
}

#[test]
fn threads_process_concurrently() {
    let (sw, _, p) = plain(2);
    let sw = std::sync::Arc::new(sw);
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let sw = std::sync::Arc::clone(&sw);
            let (me, other) = (p[i], p[1 - i]);
            std::thread::spawn(move || {
                let mine = mac(i as u8 + 1);
                let f = frame(mac(2 - i as u8), mine, None);
                let mut forwarded = 0;
                for t in 0..10_000 {
                    if sw.process(Instant::from_micros(t), me, &f) == forward(other) {
                        forwarded += 1;
                    }
                }
                forwarded
            })
        })
        .collect();
    let forwarded: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Whoever sent second had the other's address learned for all its frames.
    assert_eq!(forwarded.iter().max(), Some(&10_000), "{forwarded:?}");
    for port in p {
        assert_eq!(sw.port_info(port).unwrap().stats.rx_frames, 10_000);
    }
    assert_eq!(sw.networks()[0].stats.learned, 2);
}

/// What happens during a batch of frames from port 0.
#[derive(Clone, Copy)]
enum Step {
    /// A frame from port 0: in the batch, or to [`Switch::process`].
    Own([u8; 6], [u8; 6]),
    /// A frame from another port, processed on its own meanwhile.
    Other(usize, [u8; 6], [u8; 6]),
    /// A static entry for an address on a port.
    Static(u8, usize),
    /// Ageing at a time.
    Age(i64),
    /// A port's state.
    Up(usize, bool),
}

/// How port 0's frames go through the switch.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Each on its own ([`Switch::process`]).
    Alone,
    /// In one batch.
    Batched,
    /// In one batch, decided by the decisions kept for frames like them when those hold
    /// ([`bridge_core::IngressBatch::process_head_memo`]).
    Kept,
}

/// Runs `steps` on a fresh switch (three ports; port 0 learns at most 3 addresses), with port
/// 0's frames as `mode` says; returns what the switch did once the batch is over.
fn run_steps(steps: &[Step], mode: Mode) -> Outcome {
    let sw = Switch::new();
    let net = sw.add_network(NetworkConfig::default());
    let small = PortConfig {
        max_learned: 3,
        ..PortConfig::default()
    };
    let p = [
        sw.add_port(net, small).unwrap(),
        sw.add_port(net, PortConfig::default()).unwrap(),
        sw.add_port(net, PortConfig::default()).unwrap(),
    ];
    let mut decisions = Vec::new();
    let batched = mode != Mode::Alone;
    let mut batch = batched.then(|| sw.batch(at(0), p[0]));
    let mut kept = DecisionCache::default();
    for step in steps {
        match *step {
            Step::Own(dst, src) => {
                let f = frame(dst, src, None);
                decisions.push(match (batch.as_mut(), mode) {
                    (Some(batch), Mode::Kept) => {
                        batch.process_head_memo(&f, f.len(), kept.entry(p[0], &f))
                    }
                    (Some(batch), _) => batch.process(&f),
                    (None, _) => sw.process(at(0), p[0], &f),
                });
            }
            Step::Other(port, dst, src) => {
                sw.process(at(0), p[port], &frame(dst, src, None));
            }
            Step::Static(n, port) => sw
                .add_static(net, None, EthernetAddress(mac(n)), p[port])
                .unwrap(),
            Step::Age(secs) => {
                sw.age(at(secs));
            }
            Step::Up(port, up) => sw.set_port_up(p[port], up).unwrap(),
        }
    }
    if batched {
        // The rx counters are added at the end of the batch; drops at once.
        let own = sw.port_info(p[0]).unwrap().stats;
        assert_eq!(own.rx_frames, 0);
        assert!(own.drops.total() > 0);
    }
    drop(batch);
    let stats = p.iter().map(|&p| sw.port_info(p).unwrap().stats).collect();
    let mut entries = Vec::new();
    sw.for_each_fdb_entry(net, at(0), |e| entries.push(e))
        .unwrap();
    entries.sort_by_key(|e| e.mac.0);
    (decisions, stats, sw.networks()[0].stats, entries)
}

/// Port 0's decisions, the ports' counters, the network's FDB statistics and entries.
type Outcome = (
    Vec<Decision>,
    Vec<bridge_core::PortStats>,
    bridge_core::NetworkStats,
    Vec<bridge_core::FdbEntry>,
);

#[test]
fn a_batch_decides_and_counts_as_frame_by_frame_processing() {
    use Step::{Age, Other, Own, Static, Up};
    let steps = [
        Own(BROADCAST, mac(1)),
        Own(mac(2), mac(1)),
        Other(1, BROADCAST, mac(2)),
        // Port 1 learned mac 2 meanwhile: the batch sees it.
        Own(mac(2), mac(1)),
        // mac 1 moves to port 1 and back within the batch.
        Other(1, BROADCAST, mac(1)),
        Other(2, mac(1), mac(3)),
        Own(mac(2), mac(1)),
        Own(mac(3), mac(1)),
        // Port 0's limit (3) within the batch, with mac 1 known.
        Own(mac(2), mac(4)),
        Own(mac(2), mac(5)),
        Own(mac(2), mac(6)),
        Own(mac(2), mac(1)),
        // A destination the batch found moves to port 2 and back.
        Other(2, BROADCAST, mac(2)),
        Own(mac(2), mac(1)),
        Other(1, BROADCAST, mac(2)),
        // A static entry takes mac 1 away from port 0.
        Static(1, 2),
        Own(mac(2), mac(1)),
        // Everything learned ages out; port 0 learns again.
        Age(1000),
        Own(mac(2), mac(4)),
        Own(mac(1), mac(4)),
        Up(0, false),
        Own(mac(1), mac(4)),
        Up(0, true),
        Up(1, false),
        Other(1, BROADCAST, mac(2)),
        Up(1, true),
        Other(1, BROADCAST, mac(2)),
        Own(mac(2), mac(4)),
        Own(mac(2), BROADCAST),
        Own(mac(2), [0; 6]),
    ];
    let batched = run_steps(&steps, Mode::Batched);
    assert_eq!(batched, run_steps(&steps, Mode::Alone));
    // Kept decisions too: the repeated frames from mac 1 to mac 2 find theirs and take it
    // only while it holds.
    assert_eq!(batched, run_steps(&steps, Mode::Kept));

    let (d, stats, fdb, _) = batched;
    let flood = |d: &Decision| matches!(d, Decision::Flood(_));
    let drop = Decision::Drop;
    assert!(flood(&d[0]) && flood(&d[1]));
    // Forwarded to mac 2 once port 1 sent from it, and on while mac 1 moves away and back.
    assert_eq!(&d[2..4], [forward(PortId(1)); 2]);
    assert_eq!(d[4], forward(PortId(2)));
    assert_eq!(d[5..7], [forward(PortId(1)); 2]);
    assert_eq!(d[7], drop(DropReason::FdbLimit));
    assert_eq!(d[8], forward(PortId(1)));
    assert_eq!(d[9], forward(PortId(2)));
    assert_eq!(d[10], drop(DropReason::SpoofedStatic));
    assert!(flood(&d[11]), "mac 2 aged out");
    assert_eq!(d[12], forward(PortId(2)), "to the static mac 1");
    assert_eq!(d[13], drop(DropReason::PortDown));
    assert_eq!(d[14], forward(PortId(1)));
    assert_eq!(d[15], drop(DropReason::SourceMulticast));
    assert_eq!(d[16], drop(DropReason::SourceZero));
    assert_eq!((stats[0].rx_frames, stats[0].rx_bytes), (17, 17 * 64));
    assert_eq!(stats[0].drops.total(), 5);
    assert_eq!((fdb.mac_moves, fdb.fdb_limit_hits), (4, 1));
}

#[test]
fn a_batch_from_an_unknown_port_drops_and_counts_nothing_on_ports() {
    let (sw, _, p) = plain(1);
    let mut batch = sw.batch(at(0), PortId(9));
    assert_eq!(batch.network(), None);
    let f = frame(BROADCAST, mac(1), None);
    assert_eq!(batch.process(&f), Decision::Drop(DropReason::NoSuchPort));
    drop(batch);
    assert_eq!(sw.unknown_port_drops(), 1);
    assert_eq!(sw.port_info(p[0]).unwrap().stats, Default::default());
}

#[test]
fn a_kept_decision_lasts_the_fdb_refresh_interval_so_learning_still_refreshes() {
    let sw = Switch::new();
    let net = sw.add_network(NetworkConfig {
        ageing_time: Duration::from_secs(256),
        ..NetworkConfig::default()
    });
    let p: Vec<PortId> = (0..2)
        .map(|_| sw.add_port(net, PortConfig::default()).unwrap())
        .collect();
    sw.process(at(0), p[1], &frame(BROADCAST, mac(2), None));
    let mut kept = DecisionCache::default();
    let f = frame(mac(2), mac(1), None);
    let decide = |kept: &mut DecisionCache, now: Instant| {
        let mut batch = sw.batch(now, p[0]);
        batch.process_head_memo(&f, f.len(), kept.entry(p[0], &f))
    };
    let age_of_mac_1 = |now: Instant| {
        let mut age = None;
        sw.for_each_fdb_entry(net, now, |e| {
            if e.mac == EthernetAddress(mac(1)) {
                age = Some(e.kind);
            }
        })
        .unwrap();
        age
    };
    // Learned at 0 s and kept; the refresh interval is 1 s (1/256 of the ageing time).
    assert_eq!(decide(&mut kept, at(0)), forward(p[1]));
    let ms = Instant::from_millis;
    assert_eq!(decide(&mut kept, ms(900)), forward(p[1]));
    assert_eq!(
        age_of_mac_1(ms(900)),
        Some(FdbEntryKind::Learned {
            age: Duration::from_millis(900)
        })
    );
    // At 2.5 s the decision is made afresh, which refreshes the source's entry.
    assert_eq!(decide(&mut kept, ms(2500)), forward(p[1]));
    assert_eq!(
        age_of_mac_1(ms(2500)),
        Some(FdbEntryKind::Learned {
            age: Duration::ZERO
        })
    );
    assert_eq!(sw.port_info(p[0]).unwrap().stats.rx_frames, 3);
    // A port removed and another added in its place: mac 2 is unknown again.
    sw.remove_port(p[1]).unwrap();
    assert_eq!(sw.add_port(net, PortConfig::default()).unwrap(), p[1]);
    assert!(matches!(decide(&mut kept, ms(2600)), Decision::Flood(_)));
}

#[test]
fn a_source_over_the_learning_limit_is_counted_at_every_frame_with_kept_decisions() {
    let (sw, p) = limited(LimitAction::ForwardWithoutLearning);
    sw.process(at(0), p[1], &frame(BROADCAST, mac(9), None));
    let mut kept = DecisionCache::default();
    let mut batch = sw.batch(at(0), p[0]);
    for n in [1, 2, 3, 3, 3] {
        let f = frame(mac(9), mac(n), None);
        let memo = kept.entry(p[0], &f);
        assert_eq!(batch.process_head_memo(&f, f.len(), memo), forward(p[1]));
    }
    drop(batch);
    // mac 3 is over port 0's limit (2): each of its three frames is a hit of it.
    assert_eq!(sw.port_info(p[0]).unwrap().stats.fdb_limit_hits, 3);
}

#[test]
fn a_kept_decision_is_for_its_ingress_port_and_frame_head_only() {
    let (sw, _, p) = plain(2);
    sw.process(at(0), p[1], &frame(BROADCAST, mac(2), None));
    let mut kept = DecisionCache::default();
    let f = frame(mac(2), mac(1), None);
    let mut batch = sw.batch(at(0), p[0]);
    let memo = kept.entry(p[0], &f);
    assert_eq!(batch.process_head_memo(&f, f.len(), memo), forward(p[1]));
    // Another head with the same entry: mac 3 is unknown.
    let g = frame(mac(3), mac(1), None);
    let memo = kept.entry(p[0], &f);
    assert!(matches!(
        batch.process_head_memo(&g, g.len(), memo),
        Decision::Flood(_)
    ));
    drop(batch);
    // The same head from port 1 goes back where it came from.
    let memo = kept.entry(p[0], &f);
    assert_eq!(
        sw.batch(at(0), p[1]).process_head_memo(&f, f.len(), memo),
        Decision::Drop(DropReason::Hairpin)
    );
}

#[test]
fn a_kept_decision_holds_in_its_own_switch_only() {
    let (a, _, pa) = plain(3);
    let (b, _, pb) = plain(3);
    a.process(at(0), pa[1], &frame(BROADCAST, mac(2), None));
    b.process(at(0), pb[2], &frame(BROADCAST, mac(2), None));
    // Both switches have the same ports and history but for where mac 2 is.
    let mut kept = DecisionCache::default();
    let f = frame(mac(2), mac(1), None);
    for (sw, p, to) in [(&a, &pa, 1), (&b, &pb, 2)] {
        let memo = kept.entry(p[0], &f);
        let decision = sw.batch(at(0), p[0]).process_head_memo(&f, f.len(), memo);
        assert_eq!(decision, forward(p[to]));
    }
}
