//! Per-port counters of what the device drops before or after the switch decides: malformed
//! descriptors and headers from a guest, and frames a receiving guest had no room for. Each drop
//! is counted; a log line is written at most once per second per port.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use super::chain::ChainError;
use super::rx::RxError;
use super::vnet_hdr::HeaderError;

/// Why the device dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceDrop {
    /// TX: a descriptor index outside its table.
    TxBadIndex,
    /// TX: a chain that loops or is longer than the queue.
    TxChainTooLong,
    /// TX: an indirect descriptor not negotiated, nested, or with a bad table.
    TxBadIndirect,
    /// TX: a device-writable buffer in a transmit chain.
    TxWrongDirection,
    /// TX: a buffer or table outside guest memory.
    TxOutOfMemory,
    /// TX: buffers adding up to more than the largest frame.
    TxTooBig,
    /// TX: a chain shorter than its virtio-net header plus an Ethernet header.
    TxTruncated,
    /// TX: a GSO type not negotiated or unknown.
    TxBadGso,
    /// TX: inconsistent checksum offload fields.
    TxBadCsum,
    /// TX: a frame without GSO larger than the port's MTU.
    TxOverMtu,
    /// TX or RX: the available ring index is corrupt.
    AvailCorrupt,
    /// RX: the receive queue is not running.
    RxNotRunning,
    /// RX: no receive buffers posted.
    RxNoBuffers,
    /// RX: the frame is larger than a receive buffer (no MRG_RXBUF).
    RxTooBig,
    /// RX: a malformed receive chain (returned to the guest empty).
    RxBadChain,
    /// RX: software segmentation or checksumming failed (headers inconsistent with the
    /// sender's offload request).
    OffloadFailed,
}

impl DeviceDrop {
    /// Every reason, in counter order.
    pub const ALL: [DeviceDrop; 16] = [
        DeviceDrop::TxBadIndex,
        DeviceDrop::TxChainTooLong,
        DeviceDrop::TxBadIndirect,
        DeviceDrop::TxWrongDirection,
        DeviceDrop::TxOutOfMemory,
        DeviceDrop::TxTooBig,
        DeviceDrop::TxTruncated,
        DeviceDrop::TxBadGso,
        DeviceDrop::TxBadCsum,
        DeviceDrop::TxOverMtu,
        DeviceDrop::AvailCorrupt,
        DeviceDrop::RxNotRunning,
        DeviceDrop::RxNoBuffers,
        DeviceDrop::RxTooBig,
        DeviceDrop::RxBadChain,
        DeviceDrop::OffloadFailed,
    ];

    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// A stable snake_case name, for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceDrop::TxBadIndex => "tx_bad_index",
            DeviceDrop::TxChainTooLong => "tx_chain_too_long",
            DeviceDrop::TxBadIndirect => "tx_bad_indirect",
            DeviceDrop::TxWrongDirection => "tx_wrong_direction",
            DeviceDrop::TxOutOfMemory => "tx_out_of_memory",
            DeviceDrop::TxTooBig => "tx_too_big",
            DeviceDrop::TxTruncated => "tx_truncated",
            DeviceDrop::TxBadGso => "tx_bad_gso",
            DeviceDrop::TxBadCsum => "tx_bad_csum",
            DeviceDrop::TxOverMtu => "tx_over_mtu",
            DeviceDrop::AvailCorrupt => "avail_corrupt",
            DeviceDrop::RxNotRunning => "rx_not_running",
            DeviceDrop::RxNoBuffers => "rx_no_buffers",
            DeviceDrop::RxTooBig => "rx_too_big",
            DeviceDrop::RxBadChain => "rx_bad_chain",
            DeviceDrop::OffloadFailed => "offload_failed",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// Whether the guest behind the port caused it (as opposed to ordinary congestion).
    fn is_guest_fault(self) -> bool {
        !matches!(
            self,
            DeviceDrop::RxNoBuffers | DeviceDrop::RxNotRunning | DeviceDrop::RxTooBig
        )
    }
}

impl From<ChainError> for DeviceDrop {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::BadIndex => DeviceDrop::TxBadIndex,
            ChainError::TooLong => DeviceDrop::TxChainTooLong,
            ChainError::BadIndirect => DeviceDrop::TxBadIndirect,
            ChainError::WrongDirection => DeviceDrop::TxWrongDirection,
            ChainError::OutOfMemory => DeviceDrop::TxOutOfMemory,
            ChainError::TooBig => DeviceDrop::TxTooBig,
        }
    }
}

impl From<HeaderError> for DeviceDrop {
    fn from(e: HeaderError) -> Self {
        match e {
            HeaderError::Truncated => DeviceDrop::TxTruncated,
            HeaderError::Gso(_) => DeviceDrop::TxBadGso,
            HeaderError::Csum => DeviceDrop::TxBadCsum,
        }
    }
}

impl From<RxError> for DeviceDrop {
    fn from(e: RxError) -> Self {
        match e {
            RxError::NotRunning => DeviceDrop::RxNotRunning,
            RxError::NoBuffers => DeviceDrop::RxNoBuffers,
            RxError::TooBig => DeviceDrop::RxTooBig,
            RxError::Chain(_) => DeviceDrop::RxBadChain,
            RxError::AvailCorrupt => DeviceDrop::AvailCorrupt,
        }
    }
}

/// A snapshot of a port's device drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats([u64; DeviceDrop::COUNT]);

impl DeviceStats {
    /// Drops for one reason.
    pub fn get(&self, reason: DeviceDrop) -> u64 {
        self.0[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason.
    pub fn iter(&self) -> impl Iterator<Item = (DeviceDrop, u64)> + '_ {
        DeviceDrop::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

/// Least time between two log lines about one port's drops.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A port's live device counters.
#[derive(Debug)]
pub struct DeviceCounters {
    name: String,
    drops: [AtomicU64; DeviceDrop::COUNT],
    last_log: Mutex<Option<Instant>>,
}

impl DeviceCounters {
    /// Counters for the port called `name` in logs.
    pub fn new(name: String) -> Self {
        DeviceCounters {
            name,
            drops: Default::default(),
            last_log: Mutex::new(None),
        }
    }

    /// Counts a drop; logs guest faults, at most once per [`LOG_INTERVAL`].
    pub fn record(&self, reason: DeviceDrop) {
        self.drops[reason.index()].fetch_add(1, Relaxed);
        if !reason.is_guest_fault() {
            return;
        }
        let Ok(mut last) = self.last_log.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL) {
            *last = Some(now);
            warn!(port = %self.name, reason = reason.name(), total = self.drops[reason.index()].load(Relaxed), "dropped a frame the guest got wrong");
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> DeviceStats {
        let mut s = DeviceStats::default();
        for (out, c) in s.0.iter_mut().zip(&self.drops) {
            *out = c.load(Relaxed);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let c = DeviceCounters::new("p".into());
        c.record(DeviceDrop::TxBadIndex);
        c.record(DeviceDrop::TxBadIndex);
        c.record(DeviceDrop::RxNoBuffers);
        let s = c.snapshot();
        assert_eq!(s.get(DeviceDrop::TxBadIndex), 2);
        assert_eq!(s.get(DeviceDrop::RxNoBuffers), 1);
        assert_eq!(s.total(), 3);
        assert_eq!(s.iter().count(), DeviceDrop::COUNT);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = DeviceDrop::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DeviceDrop::COUNT);
    }
}
