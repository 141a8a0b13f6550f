//! Builds the workspace's policy modules for `wasm32-unknown-unknown` (once per process) and
//! returns their bytes: the build step the policy tests and benchmarks run, since
//! `cargo test` builds for the host.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The policy crates under `policies/`.
pub const POLICIES: [&str; 5] = [
    "allow-all",
    "libvirt-nat",
    "clean-traffic",
    "security-group",
    "rate-limit",
];

fn wasm_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let target = root.join("target").join("policy-wasm");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(&root)
                .args([
                    "build",
                    "--profile",
                    "policy",
                    "--target",
                    "wasm32-unknown-unknown",
                    "--target-dir",
                ])
                .arg(&target);
            for p in POLICIES {
                cmd.args(["-p", p]);
            }
            let status = cmd.status().expect("run cargo to build the policy modules");
            assert!(
                status.success(),
                "building the policy modules for wasm32 failed"
            );
            target.join("wasm32-unknown-unknown").join("policy")
        })
        .clone()
}

/// The WebAssembly of policy crate `name` (e.g. `security-group`).
pub fn policy_wasm(name: &str) -> Vec<u8> {
    let file = wasm_dir().join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
}
