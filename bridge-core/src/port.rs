//! Ports: ids, configuration, VLAN membership and the per-port state the switch keeps.

use core::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use crate::counters::PortCounters;
use crate::egress::Egress;
use crate::network::NetworkId;
use crate::vlan::{Tci, VlanId, VlanSet};

/// A port of the switch (a VM NIC, an uplink, the gateway). Assigned by
/// [`Switch::add_port`](crate::Switch::add_port); ids of removed ports are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// How a port takes part in VLANs (used only on networks that filter VLANs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortVlan {
    /// Untagged member of one VLAN (the PVID). Tagged frames are dropped on ingress, except
    /// priority tags (VID 0), which join the PVID.
    Access(VlanId),
    /// Tagged member of the allowed VLANs, and untagged member of the native VLAN if any.
    Trunk {
        /// VLANs carried tagged.
        allowed: VlanSet,
        /// The VLAN of untagged and priority-tagged frames (carried untagged on egress).
        native: Option<VlanId>,
    },
}

impl Default for PortVlan {
    fn default() -> Self {
        PortVlan::Access(VlanId::DEFAULT)
    }
}

/// The tag a frame arrived with, as far as egress needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngressTag {
    /// No tag.
    Untagged,
    /// A tag naming the frame's VLAN.
    Tagged,
    /// A priority tag (VID 0) with this TCI.
    Priority(Tci),
}

impl PortVlan {
    /// The VLAN of a frame entering through this port, or `None` if the port does not
    /// accept it.
    pub fn ingress(&self, tci: Option<Tci>) -> Option<(VlanId, IngressTag)> {
        let untagged = match self {
            PortVlan::Access(pvid) => Some(*pvid),
            PortVlan::Trunk { native, .. } => *native,
        };
        match tci {
            None => untagged.map(|v| (v, IngressTag::Untagged)),
            Some(tci) if tci.vid() == 0 => untagged.map(|v| (v, IngressTag::Priority(tci))),
            Some(tci) => {
                let vlan = VlanId::new(tci.vid())?;
                self.carries(vlan).then_some((vlan, IngressTag::Tagged))
            }
        }
    }

    /// Whether tagged frames of `vlan` may enter through this port.
    fn carries(&self, vlan: VlanId) -> bool {
        match self {
            PortVlan::Access(_) => false,
            PortVlan::Trunk { allowed, native } => allowed.contains(vlan) || *native == Some(vlan),
        }
    }

    /// The tag action for a frame of `vlan` leaving through this port, or `None` if the port
    /// is not a member of `vlan`.
    pub fn egress(&self, vlan: VlanId, tag: IngressTag) -> Option<Egress> {
        let untagged = match self {
            PortVlan::Access(pvid) => *pvid == vlan,
            PortVlan::Trunk { native, .. } => *native == Some(vlan),
        };
        if untagged {
            return Some(match tag {
                IngressTag::Untagged => Egress::AsIs,
                IngressTag::Tagged | IngressTag::Priority(_) => Egress::Pop,
            });
        }
        if !self.carries(vlan) {
            return None;
        }
        Some(match tag {
            IngressTag::Untagged => Egress::Push(Tci::new(0, false, vlan.get())),
            IngressTag::Tagged => Egress::AsIs,
            IngressTag::Priority(tci) => Egress::Retag(tci.with_vid(vlan)),
        })
    }
}

/// Configuration of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// VLAN membership (ignored on networks that do not filter VLANs, as Linux bridges do).
    pub vlan: PortVlan,
    /// Most source addresses learned on this port (MAC-flood protection).
    pub max_learned: u32,
}

impl PortConfig {
    /// Default per-port limit of learned addresses.
    pub const DEFAULT_MAX_LEARNED: u32 = 1024;
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            vlan: PortVlan::default(),
            max_learned: Self::DEFAULT_MAX_LEARNED,
        }
    }
}

/// The switch's state of one port, shared by topology snapshots and FDB entries.
#[derive(Debug)]
pub(crate) struct Port {
    pub(crate) id: PortId,
    /// Distinguishes this port from earlier ones with the same (reused) id.
    pub(crate) incarnation: u32,
    pub(crate) network: NetworkId,
    pub(crate) config: PortConfig,
    pub(crate) counters: Arc<PortCounters>,
    up: AtomicBool,
    removed: AtomicBool,
    /// Learned FDB entries pointing at this port (changed under FDB shard write locks).
    pub(crate) learned: AtomicU32,
}

impl Port {
    pub(crate) fn new(
        id: PortId,
        incarnation: u32,
        network: NetworkId,
        config: PortConfig,
    ) -> Port {
        Port {
            id,
            incarnation,
            network,
            config,
            counters: Arc::default(),
            up: AtomicBool::new(true),
            removed: AtomicBool::new(false),
            learned: AtomicU32::new(0),
        }
    }

    #[inline]
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Whether the port was removed; checked by the FDB under its writer lock (see `Fdb::learn`).
    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vid(n: u16) -> VlanId {
        VlanId::new(n).unwrap()
    }

    fn trunk(allowed: &[u16], native: Option<u16>) -> PortVlan {
        PortVlan::Trunk {
            allowed: allowed.iter().map(|&n| vid(n)).collect(),
            native: native.map(vid),
        }
    }

    #[test]
    fn access_port_ingress() {
        let access = PortVlan::Access(vid(10));
        assert_eq!(access.ingress(None), Some((vid(10), IngressTag::Untagged)));
        let prio = Tci::new(5, false, 0);
        assert_eq!(
            access.ingress(Some(prio)),
            Some((vid(10), IngressTag::Priority(prio)))
        );
        assert_eq!(access.ingress(Some(Tci::new(0, false, 10))), None);
        assert_eq!(access.ingress(Some(Tci::new(0, false, 11))), None);
    }

    #[test]
    fn trunk_port_ingress() {
        let t = trunk(&[20, 30], None);
        assert_eq!(t.ingress(None), None);
        assert_eq!(t.ingress(Some(Tci::new(0, false, 0))), None);
        assert_eq!(
            t.ingress(Some(Tci(20))),
            Some((vid(20), IngressTag::Tagged))
        );
        assert_eq!(t.ingress(Some(Tci(21))), None);
        assert_eq!(t.ingress(Some(Tci(4095))), None);
        let t = trunk(&[20], Some(5));
        assert_eq!(t.ingress(None), Some((vid(5), IngressTag::Untagged)));
        assert_eq!(t.ingress(Some(Tci(5))), Some((vid(5), IngressTag::Tagged)));
    }

    #[test]
    fn egress_actions() {
        let access = PortVlan::Access(vid(10));
        let t = trunk(&[10, 20], Some(5));
        let prio = Tci::new(3, false, 0);
        assert_eq!(
            access.egress(vid(10), IngressTag::Untagged),
            Some(Egress::AsIs)
        );
        assert_eq!(
            access.egress(vid(10), IngressTag::Tagged),
            Some(Egress::Pop)
        );
        assert_eq!(
            access.egress(vid(10), IngressTag::Priority(prio)),
            Some(Egress::Pop)
        );
        assert_eq!(access.egress(vid(20), IngressTag::Untagged), None);
        assert_eq!(
            t.egress(vid(10), IngressTag::Untagged),
            Some(Egress::Push(Tci::new(0, false, 10)))
        );
        assert_eq!(t.egress(vid(20), IngressTag::Tagged), Some(Egress::AsIs));
        assert_eq!(
            t.egress(vid(20), IngressTag::Priority(prio)),
            Some(Egress::Retag(Tci::new(3, false, 20)))
        );
        assert_eq!(t.egress(vid(5), IngressTag::Tagged), Some(Egress::Pop));
        assert_eq!(t.egress(vid(30), IngressTag::Tagged), None);
    }
}
