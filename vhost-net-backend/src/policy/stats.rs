//! Counters: per module (kept across reloads, by name), per rule (per generation), and the
//! state one chain entry shares between its instances (host-owned maps, module counters, the
//! log limiter).

use bridge_core::policy::TokenBucket;
use policy_sdk::maps::MapTable;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of one policy (by name), kept across reloads.
#[derive(Debug, Default)]
pub struct EntryStats {
    /// Frames the module judged.
    pub frames: AtomicU64,
    /// Bytes of those frames.
    pub bytes: AtomicU64,
    /// Calls into the module.
    pub calls: AtomicU64,
    /// Verdicts by action: continue, accept, drop, reject, redirect.
    pub actions: [AtomicU64; 5],
    /// Traps.
    pub traps: AtomicU64,
    /// Calls past the deadline.
    pub timeouts: AtomicU64,
    /// Calls that returned a bad status or verdict.
    pub bad_results: AtomicU64,
    /// Frames judged by the fail mode instead of the module.
    pub fail_applied: AtomicU64,
    /// Instances rebuilt after a fault.
    pub rebuilds: AtomicU64,
    /// Times the module was quarantined.
    pub quarantines: AtomicU64,
    /// Module log lines dropped by the rate limit.
    pub logs_suppressed: AtomicU64,
    /// Redirect or mirror targets outside the frame's network, turned into drops.
    pub bad_targets: AtomicU64,
}

impl EntryStats {
    /// Adds 1 to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Highest rule id with its own counters; higher ids share the last slot.
pub const MAX_RULE_ID: u32 = 4095;

/// Packet and byte counters per rule id.
#[derive(Debug)]
pub struct RuleCounters {
    packets: Box<[AtomicU64]>,
    bytes: Box<[AtomicU64]>,
}

impl Default for RuleCounters {
    fn default() -> Self {
        let n = MAX_RULE_ID as usize + 1;
        RuleCounters {
            packets: (0..n).map(|_| AtomicU64::new(0)).collect(),
            bytes: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl RuleCounters {
    /// Counts `packets` frames of `bytes` bytes in all against `rule`.
    pub fn add(&self, rule: u32, packets: u64, bytes: u64) {
        let i = rule.min(MAX_RULE_ID) as usize;
        self.packets[i].fetch_add(packets, Ordering::Relaxed);
        self.bytes[i].fetch_add(bytes, Ordering::Relaxed);
    }

    /// `(packets, bytes)` of `rule`.
    pub fn get(&self, rule: u32) -> (u64, u64) {
        let i = rule.min(MAX_RULE_ID) as usize;
        (
            self.packets[i].load(Ordering::Relaxed),
            self.bytes[i].load(Ordering::Relaxed),
        )
    }
}

/// What the instances of one chain entry share.
#[derive(Debug)]
pub struct EntryShared {
    /// Policy name (the chain entry's, which keys maps and counters).
    pub name: String,
    /// Host-owned maps, in manifest order.
    pub maps: Vec<Arc<Mutex<MapTable>>>,
    /// Module counters, in manifest order.
    pub counters: Vec<Arc<AtomicU64>>,
    /// Module log limiter.
    pub log_bucket: Mutex<TokenBucket>,
    /// Module counters kept across reloads.
    pub stats: Arc<EntryStats>,
}
