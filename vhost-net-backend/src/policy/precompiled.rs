//! Loading precompiled modules (`Module::serialize` output) from the engine's cache
//! directory. The only `unsafe` of the policy host: wasmtime runs such bytes as native code.

use std::path::Path;
use wasmtime::{Engine, Module};

/// Loads a module that [`super::engine::PolicyEngine`] serialized into `path`.
///
/// The caller passes only files it wrote itself into its private (0700) cache directory,
/// named after the SHA-256 of the WebAssembly they were compiled from.
pub(super) fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Module> {
    // SAFETY: `path` holds the output of `Module::serialize` by an engine of this build (the
    // caller's contract above); wasmtime itself refuses artifacts of another version or
    // configuration, and nobody else can write into the 0700 cache directory.
    unsafe { Module::deserialize_file(engine, path) }
}
