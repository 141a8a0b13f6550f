//! Networks: isolated L2 domains (one per tenant), their configuration and statistics.

use core::fmt;

use crate::fdb::Fdb;
use crate::time::Duration;

/// A network (an isolated L2 domain). Assigned by
/// [`Switch::add_network`](crate::Switch::add_network); ids of removed networks are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkId(pub u32);

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "net{}", self.0)
    }
}

/// What happens to a frame whose new source address would exceed an FDB limit.
/// Either way the event is counted ([`PortStats::fdb_limit_hits`](crate::PortStats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LimitAction {
    /// Drop the frame ([`DropReason::FdbLimit`](crate::DropReason::FdbLimit)).
    #[default]
    Drop,
    /// Forward the frame without learning its source.
    ForwardWithoutLearning,
}

/// Configuration of a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// How long a learned address lives without being seen.
    pub ageing_time: Duration,
    /// Most learned addresses in the network (static entries do not count).
    pub max_learned: u32,
    /// What happens at a limit (the network's or a port's).
    pub limit_action: LimitAction,
    /// Whether ports' VLAN settings apply (802.1Q filtering, FDB per VLAN). Without it the
    /// network forwards tagged and untagged frames alike, unchanged, as a Linux bridge
    /// without `vlan_filtering` does.
    pub vlan_filtering: bool,
}

impl NetworkConfig {
    /// The default ageing time: 300 s.
    pub const DEFAULT_AGEING_TIME: Duration = Duration::from_secs(300);
    /// The default limit of learned addresses per network.
    pub const DEFAULT_MAX_LEARNED: u32 = 16384;
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            ageing_time: Self::DEFAULT_AGEING_TIME,
            max_learned: Self::DEFAULT_MAX_LEARNED,
            limit_action: LimitAction::default(),
            vlan_filtering: false,
        }
    }
}

/// A snapshot of a network's FDB statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkStats {
    /// Learned entries (including expired ones not yet swept by `age`).
    pub learned: u32,
    /// Static entries.
    pub statics: u32,
    /// Learned addresses that moved to another port.
    pub mac_moves: u64,
    /// New addresses not learned because of a limit.
    pub fdb_limit_hits: u64,
}

/// The switch's state of one network.
#[derive(Debug)]
pub(crate) struct Network {
    pub(crate) config: NetworkConfig,
    pub(crate) fdb: Fdb,
}

impl Network {
    pub(crate) fn new(config: NetworkConfig) -> Network {
        Network {
            fdb: Fdb::new(config.ageing_time, config.max_learned),
            config,
        }
    }
}
