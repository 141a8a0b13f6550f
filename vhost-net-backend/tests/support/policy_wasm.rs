//! Builds the workspace's policy modules for `wasm32-unknown-unknown` (once per process) and
//! returns their files or bytes: the build step the policy tests and benchmarks run, since
//! `cargo test` builds for the host. One file for every user: the tests and benchmarks of
//! `vhost-net-backend` include it as a module, the `tests` crate exports it
//! (`tests::policy_wasm`, used by `bench`).

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

/// Builds every policy crate (`cargo build --profile policy`, into `target/policy-wasm`) on
/// the first call; returns the directory of the modules, or why the build failed.
fn wasm_dir() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
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
            match cmd.status() {
                Ok(s) if s.success() => Ok(target.join("wasm32-unknown-unknown").join("policy")),
                Ok(s) => Err(format!(
                    "building the policy modules for wasm32 failed ({s})"
                )),
                Err(e) => Err(format!("running cargo to build the policy modules: {e}")),
            }
        })
        .clone()
}

/// The module file of policy crate `name` (e.g. `security-group`), built on first use.
pub fn policy_wasm_file(name: &str) -> Result<PathBuf, String> {
    let file = wasm_dir()?.join(format!("{}.wasm", name.replace('-', "_")));
    if file.is_file() {
        Ok(file)
    } else {
        Err(format!("{} was not built", file.display()))
    }
}

/// The WebAssembly of policy crate `name` (e.g. `security-group`); panics if it cannot be
/// built or read.
pub fn policy_wasm(name: &str) -> Vec<u8> {
    let file = policy_wasm_file(name).unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
}
