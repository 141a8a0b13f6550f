//! Shared by the policy tests and benchmarks.
pub mod policy_wasm;
