//! The daemon's policies: the `[[policy]]` entries of its configuration loaded into the
//! [`PolicyHost`], and the control API's `policy list|load|reload|unload` on them
//! ([`Policies`]). Module files are read here, on the control thread; the host compiles them
//! off the datapath and publishes each change as one generation.

use std::sync::{Mutex, MutexGuard, PoisonError};

use bridge_core::NetworkId;

use super::chain::{PolicySet, PolicySpec, Tier};
use super::host::{LoadError, PolicyHost};
use crate::cli::error_chain;
use crate::config::PolicyConfig;
use crate::control::hooks::Policies;
use crate::control::protocol::{PolicyInfo, RuleInfo};

/// Why a policy of the daemon could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Its module file could not be read.
    #[error("policy `{0}`: cannot read {1}")]
    Read(String, std::path::PathBuf, #[source] std::io::Error),
    /// It names a network the daemon does not have.
    #[error("policy `{0}`: no network is named {1:?}")]
    NoNetwork(String, String),
    /// No policy by this name is loaded.
    #[error("no policy named `{0}`")]
    Unknown(String),
    /// The host refused it.
    #[error("policy refused")]
    Load(#[from] LoadError),
}

/// The daemon's policy host with the configuration each loaded policy came from.
#[derive(Debug)]
pub struct PolicyControl {
    host: PolicyHost,
    networks: Vec<(String, NetworkId)>,
    loaded: Mutex<Vec<PolicyConfig>>,
}

impl PolicyControl {
    /// Policies of `host` for a daemon whose networks are `networks` (name, switch id).
    pub fn new(host: PolicyHost, networks: Vec<(String, NetworkId)>) -> Self {
        PolicyControl {
            host,
            networks,
            loaded: Mutex::default(),
        }
    }

    /// The host.
    pub fn host(&self) -> &PolicyHost {
        &self.host
    }

    fn loaded(&self) -> MutexGuard<'_, Vec<PolicyConfig>> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The chain and spec of `p`, its module read from disk.
    fn spec(&self, p: &PolicyConfig) -> Result<(Tier, PolicySpec), ControlError> {
        let tier = match &p.network {
            None => Tier::Operator,
            Some(n) => {
                let (_, id) = self
                    .networks
                    .iter()
                    .find(|(name, _)| name == n)
                    .ok_or_else(|| ControlError::NoNetwork(p.name.clone(), n.clone()))?;
                Tier::Network(id.0)
            }
        };
        let wasm = std::fs::read(&p.module)
            .map_err(|e| ControlError::Read(p.name.clone(), p.module.clone(), e))?;
        let spec = PolicySpec {
            name: p.name.clone(),
            wasm: wasm.into(),
            config: p.config.clone(),
            fail_mode: p.fail_mode,
        };
        Ok((tier, spec))
    }

    /// Loads `policies` (in chain order) as one generation, replacing whatever is loaded.
    pub fn apply(&self, policies: &[PolicyConfig]) -> Result<(), ControlError> {
        let mut set = PolicySet::default();
        for p in policies {
            let (tier, spec) = self.spec(p)?;
            set.chain_mut(tier).push(spec);
        }
        let mut loaded = self.loaded();
        self.host.apply(set)?;
        *loaded = policies.to_vec();
        Ok(())
    }

    fn load_config(&self, policy: PolicyConfig) -> Result<(), ControlError> {
        let (tier, spec) = self.spec(&policy)?;
        let mut loaded = self.loaded();
        self.host.load(tier, spec)?;
        match loaded.iter_mut().find(|p| p.name == policy.name) {
            Some(p) => *p = policy,
            None => loaded.push(policy),
        }
        Ok(())
    }

    fn reload_config(&self, name: &str, config: Option<String>) -> Result<(), ControlError> {
        let mut policy = self
            .loaded()
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| ControlError::Unknown(name.to_owned()))?;
        if let Some(c) = config {
            policy.config = c;
        }
        self.load_config(policy)
    }

    fn unload_config(&self, name: &str) -> Result<(), ControlError> {
        let mut loaded = self.loaded();
        self.host.unload(name)?;
        loaded.retain(|p| p.name != name);
        Ok(())
    }
}

impl Policies for PolicyControl {
    fn list(&self) -> Vec<PolicyInfo> {
        let loaded = self.loaded();
        let generation = self.host.generation();
        generation
            .entries
            .iter()
            .map(|e| {
                let config = loaded.iter().find(|p| p.name == e.spec.name);
                let stats = &e.shared.stats;
                let ld =
                    |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
                PolicyInfo {
                    name: e.spec.name.clone(),
                    network: config.and_then(|p| p.network.clone()),
                    module: config.map_or_else(String::new, |p| p.module.display().to_string()),
                    fail_mode: e.spec.fail_mode.to_string(),
                    state: if e.module.is_some() {
                        "active"
                    } else {
                        "quarantined"
                    }
                    .to_owned(),
                    packets: ld(&stats.frames),
                    bytes: ld(&stats.bytes),
                    faults: ld(&stats.traps) + ld(&stats.timeouts) + ld(&stats.bad_results),
                    fail_mode_frames: ld(&stats.fail_applied),
                    rules: e
                        .rules
                        .iter()
                        .map(|(&id, text)| {
                            let (packets, bytes) = e.rule_counters.get(id);
                            RuleInfo {
                                id,
                                description: text.clone(),
                                packets,
                                bytes,
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }

    fn load(&self, policy: PolicyConfig) -> Result<(), String> {
        self.load_config(policy).map_err(|e| error_chain(&e))
    }

    fn reload(&self, name: &str, config: Option<String>) -> Result<(), String> {
        self.reload_config(name, config)
            .map_err(|e| error_chain(&e))
    }

    fn unload(&self, name: &str) -> Result<(), String> {
        self.unload_config(name).map_err(|e| error_chain(&e))
    }
}
