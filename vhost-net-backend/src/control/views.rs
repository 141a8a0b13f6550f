//! The views whose data the daemon itself holds: networks, ports and their links (`show`), the
//! FDB, counters with drop reasons, the ports' vrings; and finding a port by id or socket path.

use bridge_core::{DropCounts, FdbEntryKind, PortId, PortVlan, VlanId};

use super::protocol::{
    FdbEntryView, FdbView, NetworkView, PortQueuesView, PortStatsView, PortView, QueueView,
    QueuesView, ShowView, StatsView, UplinkStatsView,
};
use crate::config::{format_vlan_list, MacAddr, NetworkConfig, NetworkMode, PortConfig, Uplink};
use crate::daemon::{Daemon, PortReport};
use crate::vhu_net::is_rx_queue;

/// The `show` view.
pub fn show(daemon: &Daemon) -> ShowView {
    let switch = daemon.switch().networks();
    let networks = daemon
        .config()
        .networks
        .iter()
        .map(|n| {
            let info = daemon
                .network_id(&n.name)
                .and_then(|id| switch.iter().find(|i| i.id == id));
            network_view(daemon, n, info)
        })
        .collect();
    let ports = reports(daemon)
        .into_iter()
        .map(|(id, r)| port_view(id, &r))
        .collect();
    let uplinks = daemon
        .hooks()
        .uplinks()
        .map(|u| u.uplinks())
        .unwrap_or_default();
    ShowView {
        networks,
        ports,
        uplinks,
    }
}

fn network_view(
    daemon: &Daemon,
    n: &NetworkConfig,
    info: Option<&bridge_core::NetworkInfo>,
) -> NetworkView {
    let stats = info.map(|i| i.stats).unwrap_or_default();
    let mut v = NetworkView {
        name: n.name.clone(),
        mode: n.mode.name().to_string(),
        gateway: None,
        gateway_running: None,
        dhcp_ranges: Vec::new(),
        egress: None,
        uplink: None,
        vlan_filtering: n.switch.vlan_filtering,
        learned: stats.learned,
        statics: stats.statics,
        mac_moves: stats.mac_moves,
        fdb_limit_hits: stats.fdb_limit_hits,
        ports: info.map_or_else(Vec::new, |i| i.ports.iter().map(|p| p.0).collect()),
    };
    match &n.mode {
        NetworkMode::Nat(nat) => {
            v.gateway = Some(format!("{}/{}", nat.gateway, nat.subnet.prefix_len()));
            // The gateway runs when it serves the leases view.
            v.gateway_running = Some(daemon.hooks().leases().is_some());
            v.dhcp_ranges = nat
                .dhcp
                .iter()
                .flat_map(|d| d.ranges.iter().map(ToString::to_string))
                .collect();
            v.egress = Some(nat.egress.name().to_string());
        }
        NetworkMode::Bridge(b) => {
            v.uplink = Some(match &b.uplink {
                Uplink::AfPacket { interface } => format!("af_packet {interface}"),
                Uplink::Tap {
                    interface,
                    bridge: Some(bridge),
                } => format!("tap {interface} in {bridge}"),
                Uplink::Tap {
                    interface,
                    bridge: None,
                } => format!("tap {interface}"),
            });
        }
        NetworkMode::Isolated => {}
    }
    v
}

/// Every port's report, by id.
fn reports(daemon: &Daemon) -> Vec<(PortId, PortReport)> {
    daemon
        .ports()
        .into_iter()
        .filter_map(|id| Some((id, daemon.port_report(id)?)))
        .collect()
}

/// A port's VLAN membership in words.
pub fn vlan_text(config: &PortConfig) -> String {
    match &config.vlan {
        None => "-".to_string(),
        Some(PortVlan::Access(v)) => v.get().to_string(),
        Some(PortVlan::Trunk { allowed, native }) => {
            let mut s = format!("trunk {}", format_vlan_list(allowed));
            if let Some(n) = native {
                s.push_str(&format!(" native {}", n.get()));
            }
            s
        }
    }
}

/// A port's line in `show`.
pub fn port_view(id: PortId, r: &PortReport) -> PortView {
    PortView {
        id: id.0,
        socket: r.config.socket.display().to_string(),
        role: r.config.role.to_string(),
        network: r.config.network.clone(),
        mac: r.config.mac.to_string(),
        queue_pairs: r.config.queue_pairs,
        mtu: r.config.mtu,
        vlan: vlan_text(&r.config),
        link: r.link,
        rx_frames: r.switch.rx_frames,
        rx_bytes: r.switch.rx_bytes,
        tx_frames: r.switch.tx_frames,
        tx_bytes: r.switch.tx_bytes,
        drops: r.switch.drops.total() + r.device.total(),
    }
}

/// The FDB of `network` (every network when `None`).
pub fn fdb(daemon: &Daemon, network: Option<&str>) -> Result<FdbView, String> {
    let networks: Vec<&NetworkConfig> = match network {
        None => daemon.config().networks.iter().collect(),
        Some(name) => {
            let n = daemon.config().network(name);
            vec![n.ok_or_else(|| format!("no network is named {name:?}"))?]
        }
    };
    let now = daemon.now();
    let mut entries = Vec::new();
    for n in networks {
        let Some(id) = daemon.network_id(&n.name) else {
            continue;
        };
        let mut found = Vec::new();
        let listed = daemon
            .switch()
            .for_each_fdb_entry(id, now, |e| found.push(e));
        listed.map_err(|e| e.to_string())?;
        found.sort_by_key(|e| (e.vlan.map(VlanId::get), e.mac.0));
        entries.extend(found.into_iter().map(|e| FdbEntryView {
            network: n.name.clone(),
            vlan: e.vlan.map(VlanId::get),
            mac: MacAddr(e.mac.0).to_string(),
            port: e.port.0,
            is_static: e.kind == FdbEntryKind::Static,
            age_ms: match e.kind {
                FdbEntryKind::Static => None,
                FdbEntryKind::Learned { age } => Some(age.total_millis()),
            },
        }));
    }
    Ok(FdbView { entries })
}

/// The switch's drop counters by reason name (every reason, zeros too).
pub fn switch_drops(drops: &DropCounts) -> Vec<(String, u64)> {
    drops
        .iter()
        .map(|(reason, n)| (reason.name().to_string(), n))
        .collect()
}

/// Counters and drop reasons of `port` (every port and uplink when `None`); an uplink is
/// named by its port id or its host interface.
pub fn stats(daemon: &Daemon, port: Option<&str>) -> Result<StatsView, String> {
    let uplinks = daemon
        .hooks()
        .uplinks()
        .map(|u| u.stats())
        .unwrap_or_default();
    let wanted = port
        .map(|p| find_port(daemon, p).or_else(|e| find_uplink(&uplinks, p).ok_or(e)))
        .transpose()?;
    let uplinks = uplinks
        .into_iter()
        .filter(|u| wanted.is_none_or(|w| w.0 == u.port))
        .collect();
    let ports = reports(daemon)
        .into_iter()
        .filter(|(id, _)| wanted.is_none_or(|w| w == *id))
        .map(|(id, r)| PortStatsView {
            id: id.0,
            socket: r.config.socket.display().to_string(),
            rx_frames: r.switch.rx_frames,
            rx_bytes: r.switch.rx_bytes,
            tx_frames: r.switch.tx_frames,
            tx_bytes: r.switch.tx_bytes,
            fdb_limit_hits: r.switch.fdb_limit_hits,
            switch_drops: switch_drops(&r.switch.drops),
            device_drops: r
                .device
                .iter()
                .map(|(reason, n)| (reason.name().to_string(), n))
                .collect(),
        })
        .collect();
    Ok(StatsView {
        ports,
        uplinks,
        unknown_port_drops: daemon.switch().unknown_port_drops(),
    })
}

/// The vrings of `port` (every port when `None`).
pub fn queues(daemon: &Daemon, port: Option<&str>) -> Result<QueuesView, String> {
    let ids = match port {
        Some(name) => vec![find_port(daemon, name)?],
        None => daemon.ports(),
    };
    let ports = ids
        .into_iter()
        .filter_map(|id| {
            let socket = daemon.port_report(id)?.config.socket.display().to_string();
            let queues = daemon.queue_states(id)?.into_iter().enumerate();
            let queues = queues.map(|(index, state)| QueueView {
                index,
                kind: (if is_rx_queue(index) { "rx" } else { "tx" }).to_string(),
                state,
            });
            Some(PortQueuesView {
                id: id.0,
                socket,
                queues: queues.collect(),
            })
        })
        .collect();
    Ok(QueuesView { ports })
}

/// The uplink named by `name`: its port's id (`3`, `port3`) or its host interface.
fn find_uplink(uplinks: &[UplinkStatsView], name: &str) -> Option<PortId> {
    let number = name.strip_prefix("port").unwrap_or(name);
    uplinks
        .iter()
        .find(|u| u.interface == name || number.parse() == Ok(u.port))
        .map(|u| PortId(u.port))
}

/// The port named by `name`: its id (`3`, `port3`) or its socket path.
pub fn find_port(daemon: &Daemon, name: &str) -> Result<PortId, String> {
    let ids = daemon.ports();
    let number = name.strip_prefix("port").unwrap_or(name);
    if let Ok(n) = number.parse::<u32>() {
        if ids.contains(&PortId(n)) {
            return Ok(PortId(n));
        }
    }
    ids.into_iter()
        .find(|id| {
            daemon
                .port_report(*id)
                .is_some_and(|r| r.config.socket.as_os_str() == name)
        })
        .ok_or_else(|| format!("no port {name}"))
}
