//! The vhost-net-backend policy ABI and the SDK for writing policy modules.
//!
//! One definition, used by modules (compiled to `wasm32-unknown-unknown`) and by the host:
//!
//! | module | what it holds |
//! |---|---|
//! | [`abi`] | [`FrameDesc`], [`Verdict`], [`abi::IoArea`], hook points, conntrack and flag bits, status codes |
//! | [`manifest`] | [`Manifest`] (name, hooks, maps, counters, limits) and its custom-section encoding |
//! | [`headers`] | [`headers::classify`] / [`headers::describe`] (host side) and the [`Frame`] view (module side) |
//! | [`hostcall`] | safe wrappers over the `"pol"` host imports |
//! | [`export`] | the [`Policy`] trait, the batch loop, and [`export_policy!`] |
//! | [`config`] | parsing helpers for line-based module configuration |
//! | [`fmt`] | formatting into a fixed buffer (log lines without allocation) |
//! | `maps`, `frames`, `testing` | (not on `wasm32`) host-map semantics, frame builders, and a native test harness |
//!
//! The crate is `no_std` and allocation-free on `wasm32`; it never depends on wasmtime.
//! See `docs/policy.md` for the ABI reference and an authoring guide.
#![no_std]

#[cfg(not(target_arch = "wasm32"))]
extern crate std;

pub mod abi;
pub mod config;
pub mod export;
pub mod fmt;
pub mod headers;
pub mod hostcall;
pub mod manifest;

#[cfg(not(target_arch = "wasm32"))]
pub mod frames;
#[cfg(not(target_arch = "wasm32"))]
pub mod maps;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use abi::{FrameDesc, Verdict};
pub use export::Policy;
pub use headers::Frame;
pub use manifest::Manifest;
