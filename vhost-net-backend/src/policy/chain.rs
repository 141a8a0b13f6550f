//! What a generation is made of: policy specs (module, configuration, fail mode) in chains
//! (operator policies, then per-network policies), the compiled entries, and fail modes.

use super::module::PolicyModule;
use super::stats::{EntryShared, RuleCounters};
use policy_sdk::abi::{ct, vflag, FrameDesc, Verdict};
use policy_sdk::headers::{Frame, ETH_ARP, IP_UDP};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::config::FailMode;

/// The verdict `mode` gives one frame; never cached, so the flow is judged again once the
/// module works.
pub fn fail_verdict(mode: FailMode, desc: &FrameDesc, header: &[u8]) -> Verdict {
    let v = match mode {
        FailMode::Closed => Verdict::DROP,
        FailMode::Open => Verdict::CONTINUE,
        FailMode::Baseline => baseline(desc, header),
    };
    v.with_flags(vflag::NO_CACHE)
}

fn baseline(desc: &FrameDesc, header: &[u8]) -> Verdict {
    let f = Frame::new(desc, header, 0);
    let dhcp = desc.ip_proto == IP_UDP
        && matches!((f.src_port(), f.dst_port()), (Some(67 | 68), Some(67 | 68)));
    if desc.ct_state & (ct::ESTABLISHED | ct::RELATED) != 0 || desc.ethertype == ETH_ARP || dhcp {
        Verdict::ACCEPT
    } else {
        Verdict::DROP
    }
}

/// Which chain a policy sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Operator policies: run first, for every network.
    Operator,
    /// A network's (tenant's) policies: run after the operator's, may only name that
    /// network's ports.
    Network(u32),
}

/// One policy to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    /// Name, unique in the set; keys its maps and counters across reloads.
    pub name: String,
    /// The module's WebAssembly.
    pub wasm: Arc<[u8]>,
    /// Its configuration text.
    pub config: String,
    /// What its frames get when it cannot judge them.
    pub fail_mode: FailMode,
}

/// Everything loaded: the operator chain and each network's chain, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// Operator chain.
    pub operator: Vec<PolicySpec>,
    /// Per-network chains.
    pub networks: BTreeMap<u32, Vec<PolicySpec>>,
}

impl PolicySet {
    /// Every spec with its tier, in evaluation order.
    pub fn specs(&self) -> impl Iterator<Item = (Tier, &PolicySpec)> {
        let op = self.operator.iter().map(|s| (Tier::Operator, s));
        op.chain(
            self.networks
                .iter()
                .flat_map(|(n, v)| v.iter().map(move |s| (Tier::Network(*n), s))),
        )
    }

    /// The chain for `tier`, created empty if missing.
    pub fn chain_mut(&mut self, tier: Tier) -> &mut Vec<PolicySpec> {
        match tier {
            Tier::Operator => &mut self.operator,
            Tier::Network(n) => self.networks.entry(n).or_default(),
        }
    }
}

/// A loaded policy in a generation.
#[derive(Debug)]
pub struct ChainEntry {
    /// The spec it was built from.
    pub spec: PolicySpec,
    /// Its chain.
    pub tier: Tier,
    /// The checked module; `None` once quarantined (its fail mode judges).
    pub module: Option<Arc<PolicyModule>>,
    /// Maps, module counters and stats its instances share.
    pub shared: Arc<EntryShared>,
    /// Rule descriptions from `pol_init` on the canary.
    pub rules: BTreeMap<u32, String>,
    /// Packets and bytes per rule.
    pub rule_counters: RuleCounters,
    /// Rate classes from `pol_init`: (class, packets/s, bytes/s), sorted.
    pub rate_classes: Vec<(u16, u64, u64)>,
    /// Hook mask.
    pub hooks: u32,
}

impl ChainEntry {
    /// Rates of class `class`.
    pub fn rate_class(&self, class: u16) -> Option<(u64, u64)> {
        let i = self
            .rate_classes
            .binary_search_by_key(&class, |c| c.0)
            .ok()?;
        Some((self.rate_classes[i].1, self.rate_classes[i].2))
    }
}

/// A published set of chains. Every frame is judged by exactly one generation.
#[derive(Debug)]
pub struct Generation {
    /// Monotonic id.
    pub id: u64,
    /// All entries, operator chain first, then networks in ascending order (the slot order).
    pub entries: Vec<Arc<ChainEntry>>,
    /// Slots of the operator chain.
    pub operator: Vec<usize>,
    /// Slots of each network's chain.
    pub networks: BTreeMap<u32, Vec<usize>>,
}

/// Most entries a generation holds (slots are 8 bits in rule and rate-class handles).
pub const MAX_ENTRIES: usize = 255;

impl Generation {
    /// A generation over `entries` (in slot order).
    pub fn new(id: u64, entries: Vec<Arc<ChainEntry>>) -> Self {
        let mut operator = Vec::new();
        let mut networks: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (slot, e) in entries.iter().enumerate() {
            match e.tier {
                Tier::Operator => operator.push(slot),
                Tier::Network(n) => networks.entry(n).or_default().push(slot),
            }
        }
        Generation {
            id,
            entries,
            operator,
            networks,
        }
    }

    /// The set this generation enforces.
    pub fn set(&self) -> PolicySet {
        let mut set = PolicySet::default();
        for e in &self.entries {
            set.chain_mut(e.tier).push(e.spec.clone());
        }
        set
    }
}

/// The handle of rule `rule` of slot `slot` (0 is "no rule").
pub fn rule_handle(slot: usize, rule: u32) -> u32 {
    ((slot as u32 + 1) << 24) | (rule & 0x00ff_ffff)
}

/// `(slot, rule)` of a rule handle.
pub fn split_rule_handle(h: u32) -> Option<(usize, u32)> {
    let slot = (h >> 24) as usize;
    (slot != 0).then(|| (slot - 1, h & 0x00ff_ffff))
}

/// The handle of rate class `class` of slot `slot`.
pub fn class_handle(slot: usize, class: u16) -> u32 {
    ((slot as u32 + 1) << 16) | u32::from(class)
}

/// `(slot, class)` of a rate-class handle.
pub fn split_class_handle(h: u32) -> Option<(usize, u16)> {
    let slot = (h >> 16) as usize;
    (slot != 0).then(|| (slot - 1, h as u16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::frames::{arp_request, dhcp_request, tcp4, Endpoint, TCP_SYN};
    use policy_sdk::headers::describe;

    const A: Endpoint = Endpoint {
        mac: [2, 0, 0, 0, 0, 1],
        ip: [10, 0, 0, 1],
    };
    const B: Endpoint = Endpoint {
        mac: [2, 0, 0, 0, 0, 2],
        ip: [10, 0, 0, 2],
    };

    fn fail(mode: FailMode, bytes: &[u8], ct_state: u8) -> Verdict {
        let d = describe(
            bytes,
            FrameDesc {
                ct_state,
                ..FrameDesc::ZERO
            },
        );
        fail_verdict(mode, &d, bytes)
    }

    #[test]
    fn fail_modes() {
        let syn = tcp4(A, B, 1, 2, TCP_SYN);
        let nc = vflag::NO_CACHE;
        assert_eq!(
            fail(FailMode::Closed, &syn, ct::NEW),
            Verdict::DROP.with_flags(nc)
        );
        assert_eq!(
            fail(FailMode::Open, &syn, ct::NEW),
            Verdict::CONTINUE.with_flags(nc)
        );
        assert_eq!(
            fail(FailMode::Baseline, &syn, ct::NEW),
            Verdict::DROP.with_flags(nc)
        );
        assert_eq!(
            fail(FailMode::Baseline, &syn, ct::ESTABLISHED),
            Verdict::ACCEPT.with_flags(nc)
        );
        assert_eq!(
            fail(FailMode::Baseline, &arp_request(A, B.ip), 0),
            Verdict::ACCEPT.with_flags(nc)
        );
        assert_eq!(
            fail(FailMode::Baseline, &dhcp_request(A.mac), ct::NEW),
            Verdict::ACCEPT.with_flags(nc)
        );
    }

    #[test]
    fn handles_round_trip() {
        assert_eq!(split_rule_handle(rule_handle(3, 77)), Some((3, 77)));
        assert_eq!(split_rule_handle(0), None);
        assert_eq!(split_class_handle(class_handle(254, 9)), Some((254, 9)));
        assert_eq!(split_class_handle(7), None);
    }
}
