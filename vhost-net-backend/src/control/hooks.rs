//! Where the parts of the daemon that own the data behind a view plug into the control API:
//! the NAT gateways (leases, port forwards, counters), conntrack, the policy host and the uplinks each
//! register an implementation in the daemon's [`Hooks`]. A view whose part has not registered
//! answers an error that says so.
//!
//! ```ignore
//! daemon.hooks().set_leases(Arc::new(MyGateways { .. }));   // impl Leases for MyGateways
//! ```

use std::sync::{Arc, PoisonError, RwLock};

use super::protocol::{FlowInfo, LeaseInfo, NatStatsView, PolicyInfo, UplinkInfo, UplinkStatsView};
use crate::config::{ForwardConfig, PolicyConfig};

/// The DHCP leases of the NAT networks.
pub trait Leases: Send + Sync {
    /// Every bound lease.
    fn leases(&self) -> Vec<LeaseInfo>;
}

/// The connection tracking table.
pub trait Conntrack: Send + Sync {
    /// Every tracked flow.
    fn flows(&self) -> Vec<FlowInfo>;
}

/// The counters of the NAT networks.
pub trait NatStats: Send + Sync {
    /// The counters of network `network` (of every NAT network when `None`); fails when a
    /// network's loop does not answer.
    fn stats(&self, network: Option<&str>) -> Result<Vec<NatStatsView>, String>;
    /// The counters of every NAT network, each network's name with its own result: a network
    /// whose loop does not answer gives an error and the others their counters.
    fn each(&self) -> Vec<(String, Result<NatStatsView, String>)>;
}

/// Port forwards into NAT networks.
pub trait Forwards: Send + Sync {
    /// The forwards in place.
    fn list(&self) -> Vec<ForwardConfig>;
    /// Adds one (the configuration is checked against the networks before).
    fn add(&self, forward: ForwardConfig) -> Result<(), String>;
    /// Removes one.
    fn remove(&self, forward: &ForwardConfig) -> Result<(), String>;
}

/// The policy host.
pub trait Policies: Send + Sync {
    /// The loaded policies with their counters.
    fn list(&self) -> Vec<PolicyInfo>;
    /// Loads a policy (compiles it off the datapath and publishes a new generation).
    fn load(&self, policy: PolicyConfig) -> Result<(), String>;
    /// Reloads a policy from its module file, with new configuration text if given.
    fn reload(&self, name: &str, config: Option<String>) -> Result<(), String>;
    /// Unloads a policy.
    fn unload(&self, name: &str) -> Result<(), String>;
}

/// The uplinks of bridged networks.
pub trait Uplinks: Send + Sync {
    /// Every uplink with its link state and counters.
    fn uplinks(&self) -> Vec<UplinkInfo>;
    /// Every uplink's counters with their drop reasons.
    fn stats(&self) -> Vec<UplinkStatsView>;
}

/// The registered implementations.
#[derive(Default)]
pub struct Hooks {
    leases: RwLock<Option<Arc<dyn Leases>>>,
    conntrack: RwLock<Option<Arc<dyn Conntrack>>>,
    forwards: RwLock<Option<Arc<dyn Forwards>>>,
    nat_stats: RwLock<Option<Arc<dyn NatStats>>>,
    policies: RwLock<Option<Arc<dyn Policies>>>,
    uplinks: RwLock<Option<Arc<dyn Uplinks>>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("leases", &self.leases().is_some())
            .field("conntrack", &self.conntrack().is_some())
            .field("forwards", &self.forwards().is_some())
            .field("nat_stats", &self.nat_stats().is_some())
            .field("policies", &self.policies().is_some())
            .field("uplinks", &self.uplinks().is_some())
            .finish()
    }
}

fn get<T: ?Sized>(slot: &RwLock<Option<Arc<T>>>) -> Option<Arc<T>> {
    slot.read().unwrap_or_else(PoisonError::into_inner).clone()
}

fn set<T: ?Sized>(slot: &RwLock<Option<Arc<T>>>, value: Option<Arc<T>>) {
    *slot.write().unwrap_or_else(PoisonError::into_inner) = value;
}

impl Hooks {
    /// The leases source, if registered.
    pub fn leases(&self) -> Option<Arc<dyn Leases>> {
        get(&self.leases)
    }

    /// Registers (or with `None` removes) the leases source.
    pub fn set_leases(&self, hook: Option<Arc<dyn Leases>>) {
        set(&self.leases, hook);
    }

    /// The conntrack table, if registered.
    pub fn conntrack(&self) -> Option<Arc<dyn Conntrack>> {
        get(&self.conntrack)
    }

    /// Registers (or removes) the conntrack table.
    pub fn set_conntrack(&self, hook: Option<Arc<dyn Conntrack>>) {
        set(&self.conntrack, hook);
    }

    /// The port forwards, if registered.
    pub fn forwards(&self) -> Option<Arc<dyn Forwards>> {
        get(&self.forwards)
    }

    /// Registers (or removes) the port forwards.
    pub fn set_forwards(&self, hook: Option<Arc<dyn Forwards>>) {
        set(&self.forwards, hook);
    }

    /// The NAT networks' counters, if registered.
    pub fn nat_stats(&self) -> Option<Arc<dyn NatStats>> {
        get(&self.nat_stats)
    }

    /// Registers (or removes) the NAT networks' counters.
    pub fn set_nat_stats(&self, hook: Option<Arc<dyn NatStats>>) {
        set(&self.nat_stats, hook);
    }

    /// The policy host, if registered.
    pub fn policies(&self) -> Option<Arc<dyn Policies>> {
        get(&self.policies)
    }

    /// Registers (or removes) the policy host.
    pub fn set_policies(&self, hook: Option<Arc<dyn Policies>>) {
        set(&self.policies, hook);
    }

    /// The uplinks, if registered.
    pub fn uplinks(&self) -> Option<Arc<dyn Uplinks>> {
        get(&self.uplinks)
    }

    /// Registers (or removes) the uplinks.
    pub fn set_uplinks(&self, hook: Option<Arc<dyn Uplinks>>) {
        set(&self.uplinks, hook);
    }
}
