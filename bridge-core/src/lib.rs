//! Pure switching, gateway and conntrack logic for vhost-net-backend: frames in, decisions out.
//!
//! No I/O, no clock (time is passed in as [`time::Instant`]), no threads, no `unsafe`.
//!
//! | module | types |
//! |---|---|
//! | [`switch`] | [`Switch`] (networks, ports, `process`), [`IngressBatch`] (`process` for a batch from one port), [`Decision`], [`Flood`], [`NetworkInfo`], [`PortInfo`], [`switch::Error`] |
//! | [`network`] | [`NetworkId`], [`NetworkConfig`], [`LimitAction`], [`NetworkStats`] |
//! | [`port`] | [`PortId`], [`PortConfig`], [`PortVlan`], [`IngressTag`] |
//! | [`fdb`] | [`FdbEntry`], [`FdbEntryKind`] (the per-network FDB itself is internal) |
//! | [`egress`] | [`Egress`] (tag action per destination), [`EgressFrame`] (head + borrowed tail) |
//! | [`counters`] | [`PortCounters`] (live atomics), [`PortStats`], [`DropReason`], [`DropCounts`] |
//! | [`frame`] | [`L2Meta`], [`FrameMeta`], [`IpMeta`], [`Ports`]: the total frame classifier |
//! | [`vlan`] | 802.1Q view: [`vlan::Packet`], [`vlan::Repr`], [`Tci`], [`VlanId`], [`VlanSet`] |
//! | [`offload`] | software checksum and segmentation for virtio-net offloads: [`OffloadParams`], [`GsoType`], [`Segment`] |
//! | [`gateway`] | [`Gateway`](gateway::Gateway) of a NAT network (ARP, ICMP, DHCP, DNS), its [`Action`](gateway::Action)s |
//! | [`conntrack`] | [`Conntrack`](conntrack::Conntrack), [`FlowTuple`](conntrack::FlowTuple), [`PacketMeta`](conntrack::PacketMeta) |
//! | [`flow_cache`] | [`FlowCache`](flow_cache::FlowCache): a thread's cache of known flows' verdicts in front of a `Conntrack` |
//! | [`policy`] | [`policy::PolicyHook`] (what the pipeline calls), [`policy::Verdict`] (cached in flows), [`policy::PolicyFrame`], [`policy::TokenBucket`] |
//! | [`reject`] | [`reject::reject_reply`]: the TCP RST or ICMP port unreachable a policy's REJECT answers with |
//! | [`wire`], [`time`] | re-exports of `smoltcp::wire` (Ethernet, ARP, IPv4/6, UDP, TCP, ICMP, DHCPv4 views) and `smoltcp::time` |
//!
//! The datapath calls [`Switch::process`] for each frame (or [`IngressBatch::process`] for each
//! frame of a batch from one port) and carries out the [`Decision`]:
//! one destination with its [`Egress`] action, a flood enumerated by
//! [`Switch::for_each_flood_target`], or a drop (already counted).
#![forbid(unsafe_code)]

pub mod conntrack;
pub mod counters;
pub mod egress;
pub mod fdb;
pub mod flow_cache;
pub mod frame;
pub mod gateway;
pub mod network;
pub mod offload;
pub mod policy;
pub mod port;
pub mod reject;
pub mod switch;
pub mod vlan;

pub use smoltcp::{time, wire};

pub use counters::{DropCounts, DropReason, PortCounters, PortStats};
pub use egress::{Egress, EgressFrame};
pub use fdb::{FdbEntry, FdbEntryKind};
pub use frame::{FrameMeta, IpMeta, L2Meta, Ports};
pub use network::{LimitAction, NetworkConfig, NetworkId, NetworkStats};
pub use offload::{GsoType, OffloadParams, Segment};
pub use port::{IngressTag, PortConfig, PortId, PortVlan};
pub use switch::{
    Decision, DecisionCache, Flood, IngressBatch, NetworkInfo, PortInfo, Switch, SwitchMemo,
};
pub use vlan::{Tci, VlanId, VlanSet};
