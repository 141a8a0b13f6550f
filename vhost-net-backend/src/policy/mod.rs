//! The WASM policy host (wasmtime): compiles policy modules off the datapath, publishes
//! generations of policy chains atomically, and gives each datapath thread a
//! [`PolicyWorker`] (a [`bridge_core::policy::PolicyHook`]) whose instances swap only at a
//! batch boundary.
//!
//! | module | what it holds |
//! |---|---|
//! | [`engine`] | [`PolicyEngine`]: wasmtime config, compile cache by content hash, precompiled artifacts |
//! | [`epoch`] | [`epoch::EpochTicker`]: the epoch ticker, ticking only while module code runs |
//! | [`module`] | [`module::PolicyModule`]: a compiled module checked against the ABI, with its manifest |
//! | [`instance`] | [`instance::PolicyInstance`]: a store with the host imports, bounded calls, [`instance::Fault`] |
//! | [`chain`] | [`PolicySpec`], [`PolicySet`], [`Tier`], [`FailMode`], [`chain::Generation`] |
//! | [`host`] | [`PolicyHost`]: load/reload/unload, canary and golden frames, quarantine and roll-back, counters listing |
//! | [`worker`] | [`PolicyWorker`]: chains over batches, fail modes, rule counters, rate classes |
//! | [`stats`] | per-policy and per-rule counters |
//! | [`control`] | [`control::PolicyControl`]: the daemon's configured policies and the control API's `policy` commands |
//! | [`watch`] | policy sets from a TOML file, hot reload when it changes |
//! | [`offline`] | running a module over a pcap/pcapng capture (the `policy test` tool) |
//! | `precompiled` | the one `unsafe` call: loading a precompiled artifact |
//!
//! ABI and authoring guide: docs/policy.md.

pub mod chain;
pub mod control;
pub mod engine;
pub mod epoch;
pub mod host;
pub mod instance;
pub mod module;
pub mod offline;
mod precompiled;
pub mod stats;
pub mod watch;
pub mod worker;

pub use chain::{FailMode, PolicySet, PolicySpec, Tier};
pub use engine::{EngineConfig, PolicyEngine};
pub use host::{HostConfig, LoadError, PolicyHost};
pub use worker::PolicyWorker;
