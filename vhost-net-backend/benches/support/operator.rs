//! The policy set-up the benchmarks share: one policy crate in the operator chain.

use vhost_net_backend::policy::{FailMode, HostConfig, PolicyHost, PolicySet, PolicySpec};

use crate::policy_wasm::policy_wasm;

/// A set with policy crate `name` (e.g. `security-group`) configured with `config` in the
/// operator chain, failing closed.
pub fn operator_set(name: &str, config: &str) -> PolicySet {
    let mut set = PolicySet::default();
    set.operator.push(PolicySpec {
        name: name.into(),
        wasm: policy_wasm(name).into(),
        config: config.into(),
        fail_mode: FailMode::Closed,
    });
    set
}

/// A host running `policy` (crate name and configuration), or no policy.
pub fn host(policy: Option<(&str, &str)>) -> PolicyHost {
    let host = PolicyHost::new(HostConfig::default()).unwrap();
    if let Some((name, config)) = policy {
        host.apply(operator_set(name, config)).unwrap();
    }
    host
}
