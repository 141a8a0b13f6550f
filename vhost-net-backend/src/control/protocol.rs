//! The control protocol: one JSON request per line, one JSON response per line.
//!
//! ```text
//! → {"cmd":"show"}
//! ← {"ok":{"networks":[...],"ports":[...],"uplinks":[...]}}
//! → {"cmd":"port_remove","port":"/run/vm1.sock"}
//! ← {"error":"no port /run/vm1.sock"}
//! ```
//!
//! The view types are what `--json` prints; the CLI renders the same values as tables.

use serde::{Deserialize, Serialize};

pub use crate::nat::gateway_port::GatewayPortStats;
pub use crate::nat::network::EgressStats;
pub use crate::port::Link;
pub use crate::vring::{GuestRing, QueueState};

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Networks, ports and uplinks with their link state: [`ShowView`].
    Show,
    /// FDB entries, of one network or all: [`FdbView`].
    Fdb {
        /// The network's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    /// Counters and drop reasons, of one port or all: [`StatsView`].
    Stats {
        /// The port (id or socket path).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
    },
    /// The vrings of one port or all, with their indices: [`QueuesView`].
    Queues {
        /// The port (id or socket path).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
    },
    /// DHCP leases of the NAT networks: `Vec<`[`LeaseInfo`]`>`.
    Leases,
    /// Tracked flows: `Vec<`[`FlowInfo`]`>`.
    Conntrack,
    /// Counters of the NAT networks, of one or all: `Vec<`[`NatStatsView`]`>`.
    NatStats {
        /// The NAT network's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    /// Loaded policies with per-rule counters: `Vec<`[`PolicyInfo`]`>`.
    PolicyList,
    /// Loads a policy module.
    PolicyLoad {
        /// Its name.
        name: String,
        /// The module's path (on the daemon's host).
        module: String,
        /// Its configuration text.
        #[serde(default)]
        config: String,
        /// closed, open or baseline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fail_mode: Option<String>,
        /// The network whose chain it joins (none: the operator chain).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    /// Reloads a policy from its module file, with new configuration text if given.
    PolicyReload {
        /// Its name.
        name: String,
        /// New configuration text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<String>,
    },
    /// Unloads a policy.
    PolicyUnload {
        /// Its name.
        name: String,
    },
    /// Adds a port: a new VM NIC, served at once. Answers its [`PortView`].
    PortAdd {
        /// `PATH[,network=NAME][,mac=MAC][,queues=N][,mtu=N][,role=..][,vlan=N]`, as `--socket`.
        spec: String,
    },
    /// Removes a port: its VM loses its link.
    PortRemove {
        /// The port (id or socket path).
        port: String,
    },
    /// Captures a port's frames, both directions: answers a [`CaptureInfo`] line, then the
    /// connection carries a pcapng stream until the count or duration is reached or the client
    /// closes it.
    Capture {
        /// The port (id, `portN` or socket path).
        port: String,
        /// Stop after this many frames.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        /// Stop after this many milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// Port forwards: `Vec<`[`ForwardInfo`]`>`.
    ForwardList,
    /// Adds a port forward.
    ForwardAdd(ForwardInfo),
    /// Removes a port forward.
    ForwardRemove(ForwardInfo),
}

/// A response line: `{"ok": value}` or `{"error": "message"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The request's result.
    Ok(serde_json::Value),
    /// Why it failed.
    Error(String),
}

/// The answer to a capture request, before the pcapng stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureInfo {
    /// The port's id.
    pub port: u32,
    /// The interface name in the capture (`portN`).
    pub interface: String,
}

/// The `brctl show` view: networks, ports, uplinks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowView {
    /// The networks.
    pub networks: Vec<NetworkView>,
    /// The ports.
    pub ports: Vec<PortView>,
    /// The uplinks of bridged networks.
    pub uplinks: Vec<UplinkInfo>,
}

/// A network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// Its name.
    pub name: String,
    /// nat, bridge or isolated.
    pub mode: String,
    /// For NAT: the gateway address with the prefix (192.168.122.1/24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// For NAT: whether the gateway (ARP, DHCP, DNS, egress) runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_running: Option<bool>,
    /// For NAT: the DHCP ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dhcp_ranges: Vec<String>,
    /// For NAT: user or kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// For bridge: the uplink, `af_packet eth0` or `tap vnb-lan in br0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// Whether VLAN filtering is on.
    pub vlan_filtering: bool,
    /// Addresses learned now.
    pub learned: u32,
    /// Static FDB entries.
    pub statics: u32,
    /// Times a learned address moved to another port.
    pub mac_moves: u64,
    /// Frames from new addresses that met an FDB limit.
    pub fdb_limit_hits: u64,
    /// The ports' ids.
    pub ports: Vec<u32>,
}

/// A port (a VM NIC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    /// The switch's id.
    pub id: u32,
    /// The vhost-user socket.
    pub socket: String,
    /// listen or connect.
    pub role: String,
    /// Its network.
    pub network: String,
    /// The MAC in its config space.
    pub mac: String,
    /// Queue pairs offered.
    pub queue_pairs: u16,
    /// MTU offered.
    pub mtu: u16,
    /// VLAN membership: `-` (VLAN filtering off), `10` (access), `trunk 10,20 native 1`.
    pub vlan: String,
    /// Link state.
    pub link: Link,
    /// Frames from the guest.
    pub rx_frames: u64,
    /// Bytes from the guest.
    pub rx_bytes: u64,
    /// Frames to the guest.
    pub tx_frames: u64,
    /// Bytes to the guest.
    pub tx_bytes: u64,
    /// Frames dropped (switch and device, every reason).
    pub drops: u64,
}

/// One FDB entry (`brctl showmacs`, `bridge fdb show`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntryView {
    /// The network.
    pub network: String,
    /// The VLAN, on a network with VLAN filtering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The address.
    pub mac: String,
    /// The port it is reached through.
    pub port: u32,
    /// Whether it is static (configured) rather than learned.
    pub is_static: bool,
    /// For a learned entry: milliseconds since it was last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
}

/// The FDB view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbView {
    /// The entries, by network, VLAN and address.
    pub entries: Vec<FdbEntryView>,
}

/// A port's counters with every drop reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatsView {
    /// The switch's id.
    pub id: u32,
    /// The vhost-user socket.
    pub socket: String,
    /// Frames from the guest.
    pub rx_frames: u64,
    /// Bytes from the guest.
    pub rx_bytes: u64,
    /// Frames to the guest.
    pub tx_frames: u64,
    /// Bytes to the guest.
    pub tx_bytes: u64,
    /// New source addresses not learned because of an FDB limit.
    pub fdb_limit_hits: u64,
    /// The switch's drops of frames from this port, by reason (every reason, zeros too).
    pub switch_drops: Vec<(String, u64)>,
    /// The device's drops (malformed descriptors, no receive buffers, ...), by reason.
    pub device_drops: Vec<(String, u64)>,
}

/// An uplink's counters with every drop reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkStatsView {
    /// Its switch port.
    pub port: u32,
    /// Its network.
    pub network: String,
    /// The host interface (the NIC, or the TAP).
    pub interface: String,
    /// Frames from the LAN.
    pub rx_frames: u64,
    /// Bytes from the LAN.
    pub rx_bytes: u64,
    /// Frames to the LAN.
    pub tx_frames: u64,
    /// Bytes to the LAN.
    pub tx_bytes: u64,
    /// The switch's drops of frames from the LAN, by reason (every reason, zeros too).
    pub switch_drops: Vec<(String, u64)>,
    /// The uplink's own drops (host interface refused a frame or was gone, frames from the LAN
    /// too big or with a header the daemon does not take), by reason.
    pub uplink_drops: Vec<(String, u64)>,
    /// Times the uplink reopened after its host interface came back.
    pub recoveries: u64,
}

/// The counters view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    /// The ports.
    pub ports: Vec<PortStatsView>,
    /// The uplinks of bridged networks.
    #[serde(default)]
    pub uplinks: Vec<UplinkStatsView>,
    /// Frames whose ingress port was gone.
    pub unknown_port_drops: u64,
}

/// One vring of a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    /// Its index (receive queues even, transmit queues odd).
    pub index: usize,
    /// rx (the guest's receive queue, which the device fills) or tx (its transmit queue).
    pub kind: String,
    /// Its state.
    #[serde(flatten)]
    pub state: QueueState,
}

/// A port's vrings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortQueuesView {
    /// The switch's id.
    pub id: u32,
    /// The vhost-user socket.
    pub socket: String,
    /// Its vrings, by index.
    pub queues: Vec<QueueView>,
}

/// The vrings view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuesView {
    /// The ports.
    pub ports: Vec<PortQueuesView>,
}

/// A NAT network's counters: its gateway port and its egress (filled by the NAT networks
/// through [`NatStats`](super::hooks::NatStats)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatStatsView {
    /// The network.
    pub network: String,
    /// The gateway's switch port.
    pub port: u32,
    /// Frames the switch delivered to the gateway (from guests: to beyond the network, to the
    /// gateway's services, broadcasts).
    pub from_guests_frames: u64,
    /// Their bytes.
    pub from_guests_bytes: u64,
    /// Frames the gateway sent into the network (answers, and what comes back from beyond).
    pub to_guests_frames: u64,
    /// Their bytes.
    pub to_guests_bytes: u64,
    /// Frames for the gateway dropped because its queue was full.
    pub queue_full: u64,
    /// Drops counted on the gateway's switch port, by reason (every reason, zeros too): the
    /// switch's of the gateway's frames and the policies' at the egress.
    pub switch_drops: Vec<(String, u64)>,
    /// The gateway's own counters (ARP, DHCP, DNS, routing).
    pub gateway: GatewayPortStats,
    /// The egress's counters, by kind (`user` or `kernel`).
    pub egress: EgressStats,
}

/// An uplink of a bridged network (filled by the uplink code through
/// [`Uplinks`](super::hooks::Uplinks)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkInfo {
    /// Its switch port.
    pub port: u32,
    /// Its network.
    pub network: String,
    /// af_packet or tap.
    pub kind: String,
    /// The host interface.
    pub interface: String,
    /// The kernel bridge a TAP is enslaved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Whether frames pass: the host interface (the NIC, or the TAP's bridge) is there and up
    /// (with carrier, for a NIC).
    pub up: bool,
    /// The host interface's MTU (the bridge's for a TAP in one); none while it is not there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The host interface's MAC address (the bridge's for a TAP in one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Times the uplink reopened after its host interface came back.
    #[serde(default)]
    pub recoveries: u64,
    /// Frames from the LAN.
    pub rx_frames: u64,
    /// Frames to the LAN.
    pub tx_frames: u64,
    /// Frames dropped.
    pub drops: u64,
}

/// A DHCP lease (a line of dnsmasq's leases file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The network.
    pub network: String,
    /// When it expires (Unix time, seconds).
    pub expires: i64,
    /// The guest's MAC.
    pub mac: String,
    /// The address.
    pub ip: String,
    /// The guest's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// A tracked flow (a line of `conntrack -L`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// The network (conntrack zone).
    pub network: String,
    /// tcp, udp, icmp.
    pub protocol: String,
    /// NEW, ESTABLISHED, TIME_WAIT, ... (TCP), or UNREPLIED / ASSURED.
    pub state: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Original direction: source address and port.
    pub src: String,
    /// Original direction: destination address and port.
    pub dst: String,
    /// Reply direction's source (after NAT: the mapped address).
    pub reply_src: String,
    /// Reply direction's destination.
    pub reply_dst: String,
    /// Packets seen, both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// Bytes seen, both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The cached policy verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

/// A loaded policy with its rules (`iptables -L -nv`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// Its name.
    pub name: String,
    /// Its chain: a network's, or none for the operator chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The module's path.
    pub module: String,
    /// closed, open or baseline.
    pub fail_mode: String,
    /// active, or quarantined (its fail mode judges).
    pub state: String,
    /// Packets judged.
    pub packets: u64,
    /// Bytes judged.
    pub bytes: u64,
    /// Calls that trapped, timed out or returned a bad result (kept across reloads).
    #[serde(default)]
    pub faults: u64,
    /// Frames its fail mode judged (kept across reloads).
    #[serde(default)]
    pub fail_mode_frames: u64,
    /// Its rules with their counters.
    pub rules: Vec<RuleInfo>,
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// The rule's id in the module.
    pub id: u32,
    /// What the module says it does (`ACCEPT tcp dpt:22`).
    pub description: String,
    /// Packets it matched.
    pub packets: u64,
    /// Bytes it matched.
    pub bytes: u64,
}

/// A port forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardInfo {
    /// The NAT network.
    pub network: String,
    /// tcp or udp.
    pub protocol: String,
    /// The host address and port.
    pub listen: String,
    /// The guest's address and port.
    pub guest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_objects() {
        let r: Request = serde_json::from_str(r#"{"cmd":"fdb","network":"default"}"#).unwrap();
        assert_eq!(
            r,
            Request::Fdb {
                network: Some("default".into())
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Show).unwrap(),
            r#"{"cmd":"show"}"#
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"queues","port":"port1"}"#).unwrap();
        assert_eq!(
            r,
            Request::Queues {
                port: Some("port1".into())
            }
        );
        let all = Request::NatStats { network: None };
        let text = serde_json::to_string(&all).unwrap();
        assert_eq!(text, r#"{"cmd":"nat_stats"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), all);
        let f = Request::ForwardAdd(ForwardInfo {
            network: "default".into(),
            protocol: "tcp".into(),
            listen: "0.0.0.0:2222".into(),
            guest: "192.168.122.10:22".into(),
        });
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"forward_add","network":"default","protocol":"tcp","listen":"0.0.0.0:2222","guest":"192.168.122.10:22"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), f);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"fdb","nettwork":"x"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn nat_stats_round_trip_with_the_egress_by_kind() {
        let mut user = crate::nat::user::UserEgressStats::default();
        user.tcp.opened = 3;
        user.udp.dropped = 1;
        let view = NatStatsView {
            network: "default".into(),
            port: 0,
            from_guests_frames: 10,
            from_guests_bytes: 1000,
            to_guests_frames: 8,
            to_guests_bytes: 900,
            queue_full: 0,
            switch_drops: vec![("policy_drop".into(), 2)],
            gateway: GatewayPortStats {
                dropped: 4,
                ..Default::default()
            },
            egress: EgressStats::User(user),
        };
        let value = serde_json::to_value(&view).unwrap();
        assert_eq!(value["egress"]["kind"], "user");
        assert_eq!(value["egress"]["tcp"]["opened"], 3);
        assert_eq!(value["egress"]["udp"]["dropped"], 1);
        assert_eq!(value["gateway"]["dropped"], 4);
        assert_eq!(serde_json::from_value::<NatStatsView>(value).unwrap(), view);
        let kernel = NatStatsView {
            egress: EgressStats::Kernel(crate::nat::kernel::KernelSideStats {
                rx_unsent: 5,
                ..Default::default()
            }),
            ..view
        };
        let text = serde_json::to_string(&kernel.egress).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"kernel","tx_errors":0,"rx_bad_header":0,"rx_unsent":5}"#
        );
        assert_eq!(
            serde_json::from_str::<EgressStats>(&text).unwrap(),
            kernel.egress
        );
    }

    #[test]
    fn responses_are_ok_or_error() {
        let ok = Response::Ok(serde_json::json!([1, 2]));
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":[1,2]}"#);
        let e = Response::Error("no port 9".into());
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":"no port 9"}"#
        );
    }
}
