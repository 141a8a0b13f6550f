//! Unit-testing a policy natively: a thread-local test host behind the SDK's host-import
//! wrappers, a [`Harness`] that runs a [`Policy`] through the same batch loop the module
//! exports run, and [`TestFrame`] to describe frames as the datapath would.

use crate::abi::{ct, flag, FrameDesc, IoArea, Verdict, HOOK_PORT_IN, MAX_BATCH, OUT_NONE};
use crate::config::ConfigError;
use crate::export::{judge_batch, Policy};
use crate::headers::describe;
use crate::maps::MapTable;
use std::boxed::Box;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

#[derive(Default)]
struct TestHostState {
    maps: Vec<MapTable>,
    counters: Vec<u64>,
    logs: Vec<(i32, String)>,
    now_ns: u64,
    frames: Vec<Vec<u8>>,
    rules: BTreeMap<u32, String>,
    rate_classes: BTreeMap<u16, (u64, u64)>,
}

std::thread_local! {
    static HOST: RefCell<TestHostState> = RefCell::new(TestHostState::default());
}

fn with<R>(f: impl FnOnce(&mut TestHostState) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// The test host's side of each import (what `hostcall` calls on native targets).
pub(crate) mod host {
    use super::with;
    use crate::abi::status;
    use std::string::ToString;

    pub fn log(level: i32, msg: &str) {
        with(|h| h.logs.push((level, msg.to_string())));
    }
    pub fn counter_add(id: u32, delta: u64) {
        with(|h| {
            if let Some(c) = h.counters.get_mut(id as usize) {
                *c += delta;
            }
        });
    }
    pub fn map_lookup(map: u32, key: &[u8], value: &mut [u8]) -> i32 {
        with(|h| {
            h.maps
                .get(map as usize)
                .map_or(status::INVALID, |m| m.lookup(key, value))
        })
    }
    pub fn map_update(map: u32, key: &[u8], value: &[u8]) -> i32 {
        with(|h| {
            h.maps
                .get_mut(map as usize)
                .map_or(status::INVALID, |m| m.update(key, value))
        })
    }
    pub fn map_delete(map: u32, key: &[u8]) -> i32 {
        with(|h| {
            h.maps
                .get_mut(map as usize)
                .map_or(status::INVALID, |m| m.delete(key))
        })
    }
    pub fn now_ns() -> u64 {
        with(|h| h.now_ns)
    }
    pub fn frame_read(index: u32, offset: u32, dst: &mut [u8]) -> i32 {
        with(|h| {
            let Some(frame) = h.frames.get(index as usize) else {
                return status::INVALID;
            };
            let Some(src) = frame.get(offset as usize..) else {
                return status::BOUNDS;
            };
            let n = src.len().min(dst.len());
            dst[..n].copy_from_slice(&src[..n]);
            n as i32
        })
    }
    pub fn rule_describe(id: u32, text: &str) -> i32 {
        with(|h| h.rules.insert(id, text.to_string()));
        status::OK
    }
    pub fn rate_class(id: u16, packets_per_s: u64, bytes_per_s: u64) -> i32 {
        if id == 0 {
            return status::INVALID;
        }
        with(|h| h.rate_classes.insert(id, (packets_per_s, bytes_per_s)));
        status::OK
    }
}

/// A frame as the datapath would hand it to a policy.
#[derive(Clone, Debug)]
pub struct TestFrame {
    /// The descriptor (header fields filled from `bytes`).
    pub desc: FrameDesc,
    /// The whole frame.
    pub bytes: Vec<u8>,
}

impl TestFrame {
    /// A frame in from port 0 of network 0 at the port-in hook, opening a flow (or untracked
    /// when it is not IP), with no bridge decision.
    pub fn new(bytes: Vec<u8>) -> Self {
        let base = FrameDesc {
            flow_id: 1,
            bridge_out: OUT_NONE,
            hook: HOOK_PORT_IN,
            ..FrameDesc::ZERO
        };
        let mut desc = describe(&bytes, base);
        desc.ct_state = if desc.ip_proto != 0 {
            ct::NEW
        } else {
            ct::UNTRACKED
        };
        if desc.ct_state == ct::UNTRACKED {
            desc.flow_id = 0;
        }
        TestFrame { desc, bytes }
    }

    /// Sets the ingress port.
    pub fn port(mut self, port: u32) -> Self {
        self.desc.ingress_port = port;
        self
    }

    /// Sets the network.
    pub fn network(mut self, network: u32) -> Self {
        self.desc.network = network;
        self
    }

    /// Sets the bridge's decision.
    pub fn out(mut self, out: u32) -> Self {
        self.desc.bridge_out = out;
        self
    }

    /// Sets the conntrack state bits.
    pub fn ct(mut self, state: u8) -> Self {
        self.desc.ct_state = state;
        self
    }

    /// Sets the hook point.
    pub fn hook(mut self, hook: u8) -> Self {
        self.desc.hook = hook;
        self
    }

    /// Marks the frame as coming from a guest's port.
    pub fn from_guest(mut self) -> Self {
        self.desc.flags |= flag::FROM_GUEST;
        self
    }

    /// Marks the frame as delivered to a guest's port.
    pub fn to_guest(mut self) -> Self {
        self.desc.flags |= flag::TO_GUEST;
        self
    }
}

/// Runs a policy natively, through the same `init` and batch loop as the module's exports,
/// against a fresh thread-local test host.
#[derive(Debug)]
pub struct Harness<P: Policy> {
    policy: P,
    io: Box<IoArea>,
}

impl<P: Policy> Harness<P> {
    /// Resets the test host (maps and counters as `P::MANIFEST` declares) and runs `init`.
    pub fn new(config: &str) -> Result<Self, ConfigError> {
        with(|h| {
            *h = TestHostState::default();
            h.maps = P::MANIFEST.maps.iter().map(MapTable::new).collect();
            h.counters = std::vec![0; P::MANIFEST.counters.len()];
        });
        let policy = P::init(config.as_bytes())?;
        Ok(Harness {
            policy,
            io: Box::new(IoArea::ZERO),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Judges `frames` as new flows (`pol_on_new_flow`), in batches of at most [`MAX_BATCH`].
    pub fn judge(&mut self, frames: &[TestFrame]) -> Vec<Verdict> {
        self.run(frames, false)
    }

    /// Judges `frames` per frame (`pol_on_frames`).
    pub fn judge_per_frame(&mut self, frames: &[TestFrame]) -> Vec<Verdict> {
        self.run(frames, true)
    }

    /// Judges one frame as a new flow.
    pub fn judge_one(&mut self, frame: TestFrame) -> Verdict {
        self.judge(&[frame])[0]
    }

    fn run(&mut self, frames: &[TestFrame], per_frame: bool) -> Vec<Verdict> {
        let mut out = Vec::with_capacity(frames.len());
        for batch in frames.chunks(MAX_BATCH) {
            with(|h| h.frames = batch.iter().map(|f| f.bytes.clone()).collect());
            for (i, f) in batch.iter().enumerate() {
                self.io.desc[i] = f.desc;
                let n = usize::from(f.desc.snap_len);
                self.io.snap[i][..n].copy_from_slice(&f.bytes[..n]);
            }
            let n = judge_batch(
                &mut self.policy,
                &mut self.io,
                batch.len() as u32,
                per_frame,
            );
            out.extend_from_slice(&self.io.verdict[..n as usize]);
        }
        out
    }
}

/// Sets the time `now_ns()` returns.
pub fn set_now_ns(now: u64) {
    with(|h| h.now_ns = now);
}

/// What the module logged, oldest first.
pub fn logs() -> Vec<(i32, String)> {
    with(|h| h.logs.clone())
}

/// Module counter `id`.
pub fn counter(id: u32) -> u64 {
    with(|h| h.counters.get(id as usize).copied().unwrap_or(0))
}

/// The description of rule `id`.
pub fn rule(id: u32) -> Option<String> {
    with(|h| h.rules.get(&id).cloned())
}

/// Rate-limit class `id` as `(packets/s, bytes/s)`.
pub fn rate_class(id: u16) -> Option<(u64, u64)> {
    with(|h| h.rate_classes.get(&id).copied())
}

/// Writes `key` -> `value` into map `map` as the host's control side would.
pub fn map_update(map: u32, key: &[u8], value: &[u8]) -> i32 {
    host::map_update(map, key, value)
}
