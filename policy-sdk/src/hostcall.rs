//! Safe wrappers over the host imports (module `"pol"`).
//!
//! On `wasm32` they call the policy host; on other targets they call the thread-local test
//! host in [`crate::testing`], so a policy's logic runs natively in unit tests.

use crate::abi::status;

/// A host import failed with a negative status code ([`crate::abi::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub i32);

fn check(code: i32) -> Result<u32, HostError> {
    u32::try_from(code).map_err(|_| HostError(code))
}

/// Raw import signatures. Pointers and lengths are offsets into the module's memory.
#[cfg(target_arch = "wasm32")]
mod raw {
    #[link(wasm_import_module = "pol")]
    extern "C" {
        pub fn log(level: i32, ptr: *const u8, len: usize);
        pub fn counter_add(id: u32, delta: u64);
        pub fn map_lookup(
            map: u32,
            key: *const u8,
            key_len: usize,
            val: *mut u8,
            val_len: usize,
        ) -> i32;
        pub fn map_update(
            map: u32,
            key: *const u8,
            key_len: usize,
            val: *const u8,
            val_len: usize,
        ) -> i32;
        pub fn map_delete(map: u32, key: *const u8, key_len: usize) -> i32;
        pub fn now_ns() -> u64;
        pub fn frame_read(index: u32, offset: u32, dst: *mut u8, len: usize) -> i32;
        pub fn rule_describe(id: u32, ptr: *const u8, len: usize) -> i32;
        pub fn rate_class(id: u32, packets_per_s: u64, bytes_per_s: u64) -> i32;
    }
}

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::host as raw;

/// Logs `msg` at `level` ([`crate::abi::level`]); the host rate-limits module logs.
pub fn log(level: i32, msg: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: `msg` is a live slice of this module's memory for the duration of the call.
    unsafe {
        raw::log(level, msg.as_ptr(), msg.len())
    };
    #[cfg(not(target_arch = "wasm32"))]
    raw::log(level, msg);
}

/// Adds `delta` to the module counter `id` (its index in the manifest).
pub fn counter_add(id: u32, delta: u64) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the import takes plain integers.
    unsafe {
        raw::counter_add(id, delta)
    };
    #[cfg(not(target_arch = "wasm32"))]
    raw::counter_add(id, delta);
}

/// Looks `key` up in map `map`, copying the value into `value`: `Ok(true)` when found.
pub fn map_lookup(map: u32, key: &[u8], value: &mut [u8]) -> Result<bool, HostError> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: both slices are live in this module's memory during the call; the host writes
    // at most `value.len()` bytes into `value`.
    let code = unsafe {
        raw::map_lookup(
            map,
            key.as_ptr(),
            key.len(),
            value.as_mut_ptr(),
            value.len(),
        )
    };
    #[cfg(not(target_arch = "wasm32"))]
    let code = raw::map_lookup(map, key, value);
    match code {
        status::NOT_FOUND => Ok(false),
        c => check(c).map(|_| true),
    }
}

/// Inserts or replaces `key` in map `map`.
pub fn map_update(map: u32, key: &[u8], value: &[u8]) -> Result<(), HostError> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: both slices are live in this module's memory during the call.
    let code =
        unsafe { raw::map_update(map, key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
    #[cfg(not(target_arch = "wasm32"))]
    let code = raw::map_update(map, key, value);
    check(code).map(|_| ())
}

/// Removes `key` from map `map`: `Ok(true)` when it was there.
pub fn map_delete(map: u32, key: &[u8]) -> Result<bool, HostError> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: `key` is live in this module's memory during the call.
    let code = unsafe { raw::map_delete(map, key.as_ptr(), key.len()) };
    #[cfg(not(target_arch = "wasm32"))]
    let code = raw::map_delete(map, key);
    match code {
        status::NOT_FOUND => Ok(false),
        c => check(c).map(|_| true),
    }
}

/// The host's time for the current call, nanoseconds (monotonic).
pub fn now_ns() -> u64 {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the import takes no arguments.
    return unsafe { raw::now_ns() };
    #[cfg(not(target_arch = "wasm32"))]
    raw::now_ns()
}

/// Copies bytes of frame `index` of the current batch from `offset` into `dst` (needs the
/// `FRAME_READ` capability); returns how many were copied (fewer at the frame's end).
pub fn frame_read(index: u32, offset: u32, dst: &mut [u8]) -> Result<usize, HostError> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: `dst` is live in this module's memory; the host writes at most `dst.len()` bytes.
    let code = unsafe { raw::frame_read(index, offset, dst.as_mut_ptr(), dst.len()) };
    #[cfg(not(target_arch = "wasm32"))]
    let code = raw::frame_read(index, offset, dst);
    check(code).map(|n| n as usize)
}

/// Describes rule `id` (shown beside its packet and byte counters, as `iptables -L -nv` does).
/// Called from `init`.
pub fn rule_describe(id: u32, text: &str) -> Result<(), HostError> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: `text` is live in this module's memory during the call.
    let code = unsafe { raw::rule_describe(id, text.as_ptr(), text.len()) };
    #[cfg(not(target_arch = "wasm32"))]
    let code = raw::rule_describe(id, text);
    check(code).map(|_| ())
}

/// Defines rate-limit class `id` (1..=65535): a token bucket per ingress port refilled at
/// `packets_per_s` and `bytes_per_s` (0: unlimited), one second deep. Called from `init`;
/// verdicts name the class in `rate_class` and the host polices every frame of the flow.
pub fn rate_class(id: u16, packets_per_s: u64, bytes_per_s: u64) -> Result<(), HostError> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the import takes plain integers.
    let code = unsafe { raw::rate_class(u32::from(id), packets_per_s, bytes_per_s) };
    #[cfg(not(target_arch = "wasm32"))]
    let code = raw::rate_class(id, packets_per_s, bytes_per_s);
    check(code).map(|_| ())
}
