//! Drives `Switch::process` with arbitrary frames and port ids, interleaved with topology
//! changes, and checks the invariants on every decision: a frame never returns to its ingress
//! port, never leaves its network, and every egress action applies to the frame.
#![no_main]

use arbitrary::Arbitrary;
use bridge_core::time::{Duration, Instant};
use bridge_core::wire::EthernetAddress;
use bridge_core::{
    Decision, LimitAction, NetworkConfig, NetworkId, PortConfig, PortId, PortVlan, Switch, VlanId,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Frame {
        port: u8,
        dt_ms: u16,
        bytes: Vec<u8>,
    },
    AddPort {
        network: bool,
        trunk: bool,
        vid: u16,
        native: Option<u16>,
    },
    RemovePort(u8),
    SetUp(u8, bool),
    AddStatic {
        network: bool,
        vid: Option<u16>,
        mac: [u8; 6],
        port: u8,
    },
    Age,
}

fn vlan(vid: u16) -> VlanId {
    VlanId::new(vid % 4094 + 1).unwrap_or(VlanId::DEFAULT)
}

fuzz_target!(|ops: Vec<Op>| {
    let sw = Switch::new();
    let small = |vlan_filtering, limit_action| NetworkConfig {
        ageing_time: Duration::from_secs(5),
        max_learned: 16,
        limit_action,
        vlan_filtering,
    };
    let nets = [
        sw.add_network(small(false, LimitAction::Drop)),
        sw.add_network(small(true, LimitAction::ForwardWithoutLearning)),
    ];
    let mut network_of: Vec<Option<NetworkId>> = Vec::new();
    let mut now = Instant::from_secs(0);
    for op in ops.into_iter().take(256) {
        match op {
            Op::Frame { port, dt_ms, bytes } => {
                now += Duration::from_millis(dt_ms.into());
                let ingress = PortId(port.into());
                let decision = sw.process(now, ingress, &bytes);
                let home = network_of.get(usize::from(port)).copied().flatten();
                let check = |target: PortId, egress: bridge_core::Egress| {
                    assert_ne!(target, ingress);
                    assert_eq!(network_of[target.0 as usize], home);
                    assert!(egress.apply(&bytes).is_some());
                };
                match decision {
                    Decision::Forward { port, egress } => check(port, egress),
                    Decision::Flood(flood) => sw.for_each_flood_target(&flood, check),
                    Decision::Drop(_) => {}
                }
            }
            Op::AddPort {
                network,
                trunk,
                vid,
                native,
            } => {
                let vlan = if trunk {
                    PortVlan::Trunk {
                        allowed: [vlan(vid), vlan(vid / 2)].into_iter().collect(),
                        native: native.map(vlan),
                    }
                } else {
                    PortVlan::Access(vlan(vid))
                };
                let net = nets[usize::from(network)];
                let id = sw
                    .add_port(
                        net,
                        PortConfig {
                            vlan,
                            max_learned: 4,
                        },
                    )
                    .unwrap();
                let index = id.0 as usize;
                if network_of.len() <= index {
                    network_of.resize(index + 1, None);
                }
                network_of[index] = Some(net);
            }
            Op::RemovePort(port) => {
                if sw.remove_port(PortId(port.into())).is_ok() {
                    network_of[usize::from(port)] = None;
                }
            }
            Op::SetUp(port, up) => {
                let _ = sw.set_port_up(PortId(port.into()), up);
            }
            Op::AddStatic {
                network,
                vid,
                mac,
                port,
            } => {
                let net = nets[usize::from(network)];
                let _ = sw.add_static(
                    net,
                    vid.map(vlan),
                    EthernetAddress(mac),
                    PortId(port.into()),
                );
            }
            Op::Age => {
                sw.age(now);
            }
        }
    }
    for info in sw.networks() {
        assert!(info.stats.learned <= 16);
    }
});
