//! Per-port counters and drop reasons.
//!
//! Counters are relaxed atomics: the ingress worker counts rx (once per batch) and drops in
//! [`Switch::process`](crate::Switch::process) or an
//! [`IngressBatch`](crate::switch::IngressBatch); whoever delivers a frame counts tx through the
//! destination port's [`PortCounters`] (see [`Switch::port_counters`](crate::Switch::port_counters)).

use core::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why the switch dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    TooShort,
    /// A header the switch reads is inconsistent (e.g. a cut-off 802.1Q tag).
    Malformed,
    /// The source MAC is multicast or broadcast.
    SourceMulticast,
    /// The source MAC is all zeros.
    SourceZero,
    /// Sent to a reserved IEEE 802.1D group (01:80:c2:00:00:0x: pause, STP, LACP, 802.1X).
    LinkLocal,
    /// The ingress port is not attached to the switch.
    NoSuchPort,
    /// The ingress port is administratively down.
    PortDown,
    /// The frame's VLAN is not allowed on the ingress port or on the destination port.
    VlanNotAllowed,
    /// A new source address would exceed the port's or the network's FDB limit, and the
    /// network drops at the limit.
    FdbLimit,
    /// The source MAC belongs to a static FDB entry of another port.
    SpoofedStatic,
    /// The destination was learned on the ingress port itself.
    Hairpin,
    /// The destination port is down.
    EgressDown,
    /// A policy dropped it (a verdict, a fail mode, or a redirect outside its network).
    PolicyDrop,
    /// A policy rejected it (answered with a TCP RST or an ICMP error where one is due).
    PolicyReject,
    /// Over its policy rate-limit class's rate.
    PolicyRateLimit,
    /// It opens a flow while the policy's flow table is full.
    ConntrackFull,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 16] = [
        DropReason::TooShort,
        DropReason::Malformed,
        DropReason::SourceMulticast,
        DropReason::SourceZero,
        DropReason::LinkLocal,
        DropReason::NoSuchPort,
        DropReason::PortDown,
        DropReason::VlanNotAllowed,
        DropReason::FdbLimit,
        DropReason::SpoofedStatic,
        DropReason::Hairpin,
        DropReason::EgressDown,
        DropReason::PolicyDrop,
        DropReason::PolicyReject,
        DropReason::PolicyRateLimit,
        DropReason::ConntrackFull,
    ];
    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// A stable snake_case name, for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::Malformed => "malformed",
            DropReason::SourceMulticast => "source_multicast",
            DropReason::SourceZero => "source_zero",
            DropReason::LinkLocal => "link_local",
            DropReason::NoSuchPort => "no_such_port",
            DropReason::PortDown => "port_down",
            DropReason::VlanNotAllowed => "vlan_not_allowed",
            DropReason::FdbLimit => "fdb_limit",
            DropReason::SpoofedStatic => "spoofed_static",
            DropReason::Hairpin => "hairpin",
            DropReason::EgressDown => "egress_down",
            DropReason::PolicyDrop => "policy_drop",
            DropReason::PolicyReject => "policy_reject",
            DropReason::PolicyRateLimit => "policy_rate_limit",
            DropReason::ConntrackFull => "conntrack_full",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Drop counts by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounts([u64; DropReason::COUNT]);

impl DropCounts {
    /// Drops for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().zip(self.0)
    }
}

/// A port's live counters.
#[derive(Debug, Default)]
pub struct PortCounters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    fdb_limit_hits: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl PortCounters {
    /// Counts a frame delivered to this port.
    pub fn record_tx(&self, bytes: usize) {
        self.record_tx_frames(1, bytes as u64);
    }

    /// Counts `frames` frames of `bytes` bytes in all delivered to this port.
    pub fn record_tx_frames(&self, frames: u64, bytes: u64) {
        self.tx_frames.fetch_add(frames, Relaxed);
        self.tx_bytes.fetch_add(bytes, Relaxed);
    }

    /// Counts `frames` frames of `bytes` bytes in all received from this port.
    pub(crate) fn record_rx(&self, frames: u64, bytes: u64) {
        self.rx_frames.fetch_add(frames, Relaxed);
        self.rx_bytes.fetch_add(bytes, Relaxed);
    }

    /// Counts a drop. The switch counts its own; the datapath counts the drops it decides
    /// after the switch (policy verdicts).
    pub fn record_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn record_fdb_limit_hit(&self) {
        self.fdb_limit_hits.fetch_add(1, Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> PortStats {
        PortStats {
            rx_frames: self.rx_frames.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_frames: self.tx_frames.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            fdb_limit_hits: self.fdb_limit_hits.load(Relaxed),
            drops: DropCounts(core::array::from_fn(|i| self.drops[i].load(Relaxed))),
        }
    }
}

/// A snapshot of a port's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    /// Frames received from the port (including those then dropped).
    pub rx_frames: u64,
    /// Bytes received from the port.
    pub rx_bytes: u64,
    /// Frames delivered to the port.
    pub tx_frames: u64,
    /// Bytes delivered to the port.
    pub tx_bytes: u64,
    /// Source addresses from this port that were not learned because of an FDB limit
    /// (whether the frame was then dropped or forwarded).
    pub fdb_limit_hits: u64,
    /// Frames from this port dropped, by reason.
    pub drops: DropCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn counts_and_snapshots() {
        let c = PortCounters::default();
        c.record_rx(1, 60);
        c.record_rx(1, 100);
        c.record_tx(64);
        c.record_drop(DropReason::Hairpin);
        c.record_drop(DropReason::Hairpin);
        c.record_fdb_limit_hit();
        let s = c.snapshot();
        assert_eq!(
            (s.rx_frames, s.rx_bytes, s.tx_frames, s.tx_bytes),
            (2, 160, 1, 64)
        );
        assert_eq!(s.drops.get(DropReason::Hairpin), 2);
        assert_eq!(s.drops.total(), 2);
        assert_eq!(s.fdb_limit_hits, 1);
        assert_eq!(s.drops.iter().filter(|(_, n)| *n > 0).count(), 1);
    }
}
