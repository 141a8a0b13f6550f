//! A start that fails late leaves no thread behind (an embedding VMM may retry). A test binary
//! of its own: the check compares the names of the process's threads before and after, which
//! other tests' daemons would change.

use std::num::NonZeroUsize;

use vhost_net_backend::config::{
    BridgeConfig, FailMode, NetworkConfig, NetworkMode, PolicyConfig, SwitchSettings, Uplink,
};
use vhost_net_backend::{start, Config, Error};

/// The names of the process's threads, sorted.
fn threads() -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    names.sort();
    names
}

/// The default NAT network and a pool of workers start threads; then the bridged network's
/// TAP cannot be made after the housekeeping thread started ("lo" is not a TAP: EINVAL, and
/// nothing is made on the host).
fn failing_at_the_uplink(dir: &tempfile::TempDir) -> Config {
    let mut config = Config {
        state_dir: Some(dir.path().to_path_buf()),
        workers: NonZeroUsize::new(2),
        ..Config::default()
    };
    config.networks.push(NetworkConfig {
        name: "lan".into(),
        mode: NetworkMode::Bridge(BridgeConfig {
            uplink: Uplink::Tap {
                interface: "lo".into(),
                bridge: None,
            },
        }),
        switch: SwitchSettings::default(),
    });
    config
}

/// The policy host's epoch thread starts; then the policy's module cannot be read.
fn failing_at_the_policies(dir: &tempfile::TempDir) -> Config {
    let mut config = Config::default();
    config.policies.push(PolicyConfig {
        name: "missing".into(),
        module: dir.path().join("missing.wasm"),
        config: String::new(),
        fail_mode: FailMode::Open,
        network: None,
    });
    config
}

#[test]
fn a_failed_start_stops_the_threads_it_started() {
    let before = threads();
    let dir = tempfile::tempdir().unwrap();
    let error = start(failing_at_the_uplink(&dir)).unwrap_err();
    assert!(matches!(error, Error::Uplink(_)), "{error:?}");
    assert_eq!(threads(), before, "after {error:?}");
    let error = start(failing_at_the_policies(&dir)).unwrap_err();
    assert!(matches!(error, Error::Policy(_)), "{error:?}");
    assert_eq!(threads(), before, "after {error:?}");
}
