//! A thread's exact-match cache of recent packets of known flows, in front of a shared
//! [`Conntrack`] (as Open vSwitch's exact-match cache sits in front of its classifier).
//!
//! Tracking a packet of a known flow takes the flow's shard lock and writes its shared entry.
//! Most packets of an established flow change nothing there but the flow's timeout, so a thread
//! remembers, per packet shape (network, protocol, addresses and ports with their direction,
//! and the kind: TCP without SYN/FIN/RST, UDP, ICMP echo request or reply), the verdict that
//! tracking such a packet last returned, and answers the next one from it without the lock.
//!
//! What it remembers stays right:
//! - only packets that leave their flow as it was are remembered: valid ones, of UDP or ICMP
//!   echo flows or of TCP flows that are ESTABLISHED after the packet, without SYN, FIN or
//!   RST; packets with those flags, ICMP errors and untracked packets always go to conntrack;
//! - every change to a flow that such packets would not see (it is removed, a TCP flow leaves
//!   ESTABLISHED, its verdict changes or is cleared) moves the table's
//!   [`epoch`](Conntrack::epoch); the cache reads it once per batch and answers only from
//!   entries of that epoch;
//! - an entry answers for [`FlowCache::refresh`] after the packet it was made from was tracked
//!   (an eighth of the table's shortest timeout, at most 1 s); the next packet like it is
//!   tracked again, which refreshes the flow's timeout (and recreates a flow that is gone, to
//!   be judged again).
//!
//! So the cache may lag the table by one batch for changes made by other threads during that
//! batch, and a flow's timeout runs from up to [`FlowCache::refresh`] before its last packet.
//! Conntrack counts nothing per packet of a known flow, so there is nothing else to credit.
//!
//! The table is allocated on the first entry, so a thread whose stage never sees a known flow
//! costs nothing but this struct. A guest can make its own packets collide in the cache; that
//! costs it the lookup in conntrack the cache would have saved, nothing more.

use std::net::IpAddr;

use smoltcp::time::{Duration, Instant};

use crate::conntrack::{Conntrack, CtState, PacketKind, PacketMeta, TcpState, Tracked};

/// Entries of a cache: sets of two, picked by a hash of the packet's key.
pub const ENTRIES: usize = 1024;

/// The longest time an entry answers for.
const MAX_REFRESH: Duration = Duration::from_secs(1);

/// What makes two packets alike for the cache: the fields conntrack reads of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    zone: u32,
    src: u32,
    dst: u32,
    /// Source port in the high half, destination port in the low half.
    ports: u32,
    /// The protocol and kind (see [`Key::of`]).
    kind: u8,
}

impl Key {
    /// The key of a packet the cache may answer for: IPv4 TCP without SYN, FIN or RST (and
    /// with ACK), UDP, or an ICMP echo; `None` for any other.
    fn of(packet: &PacketMeta) -> Option<Key> {
        let kind = match packet.kind {
            PacketKind::Tcp(f) if f.ack && !f.syn && !f.fin && !f.rst => 1,
            PacketKind::Udp => 2,
            PacketKind::IcmpEcho { request: true } => 3,
            PacketKind::IcmpEcho { request: false } => 4,
            PacketKind::Tcp(_) | PacketKind::IcmpError { .. } => return None,
        };
        let t = &packet.tuple;
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (t.src.addr, t.dst.addr) else {
            return None;
        };
        Some(Key {
            zone: t.zone,
            src: src.to_bits(),
            dst: dst.to_bits(),
            ports: u32::from(t.src.port) << 16 | u32::from(t.dst.port),
            kind,
        })
    }

    /// The index of the key's set: a multiply of its words, top bits.
    fn set(&self) -> usize {
        let a = u64::from(self.src) << 32 | u64::from(self.dst);
        let b = u64::from(self.ports) << 32 | u64::from(self.zone) ^ u64::from(self.kind) << 24;
        let h = (a ^ b.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> (64 - (ENTRIES / 2).trailing_zeros())) as usize
    }
}

/// One remembered packet shape and what tracking it answered.
#[derive(Clone, Copy, Debug)]
struct Entry<V> {
    key: Key,
    verdict: V,
    /// When a packet like it was last tracked.
    tracked: Instant,
    /// The table's epoch then.
    epoch: u64,
}

impl<V> Entry<V> {
    /// Whether the entry answers at `now` in `epoch`, `refresh` being its lifetime.
    fn answers(&self, now: Instant, epoch: u64, refresh: Duration) -> bool {
        self.epoch == epoch && now < self.tracked + refresh
    }
}

/// One thread's cache in front of one [`Conntrack`]. See the module docs.
#[derive(Debug)]
pub struct FlowCache<V> {
    /// [`ENTRIES`] entries once the first is made, empty before.
    entries: Box<[Option<Entry<V>>]>,
    refresh: Duration,
    /// The table's epoch at the start of the batch.
    epoch: u64,
}

impl<V: Copy> FlowCache<V> {
    /// An empty cache in front of `flows` (nothing allocated yet).
    pub fn new(flows: &Conntrack<V>) -> Self {
        let refresh = (flows.timeouts().shortest() / 8).min(MAX_REFRESH);
        FlowCache {
            entries: Box::default(),
            refresh,
            epoch: flows.epoch(),
        }
    }

    /// How long after a packet was tracked the cache answers for packets like it.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// Starts a batch: takes up the epoch of `flows` (the table this cache is in front of);
    /// entries of an older epoch no longer answer.
    pub fn begin_batch(&mut self, flows: &Conntrack<V>) {
        self.epoch = flows.epoch();
    }

    /// The verdict for `packet` at `now`, if a packet like it was tracked less than
    /// [`refresh`](Self::refresh) ago in this epoch and remembered; otherwise track it.
    pub fn get(&self, now: Instant, packet: &PacketMeta) -> Option<V> {
        let key = Key::of(packet)?;
        let set = key.set();
        self.entries
            .get(2 * set..2 * set + 2)?
            .iter()
            .flatten()
            .find(|e| e.key == key && e.answers(now, self.epoch, self.refresh))
            .map(|e| e.verdict)
    }

    /// Remembers what tracking `packet` at `now` answered, `tracked`, if packets like it may
    /// skip tracking: it was valid, left its flow as it was (UDP, ICMP echo, TCP ESTABLISHED
    /// without SYN/FIN/RST) and came with a verdict. The caller decides whether that verdict
    /// may be reused at all (and calls this only then).
    pub fn insert(&mut self, now: Instant, packet: &PacketMeta, tracked: &Tracked<V>) {
        let (Some(key), Some(verdict)) = (Key::of(packet), tracked.verdict) else {
            return;
        };
        if tracked.state == CtState::Invalid
            || tracked.flow.is_none()
            || tracked.tcp.is_some_and(|s| s != TcpState::Established)
        {
            return;
        }
        if self.entries.is_empty() {
            self.entries = vec![None; ENTRIES].into_boxed_slice();
        }
        let (epoch, refresh, set) = (self.epoch, self.refresh, key.set());
        let pair = &mut self.entries[2 * set..2 * set + 2];
        // The same key's entry, else an empty or outdated one, else the one tracked longer ago.
        let way = pair
            .iter()
            .position(|e| e.is_some_and(|e| e.key == key))
            .or_else(|| {
                pair.iter()
                    .position(|e| e.is_none_or(|e| !e.answers(now, epoch, refresh)))
            })
            .unwrap_or_else(|| {
                let tracked = |i: usize| pair[i].map(|e| e.tracked);
                usize::from(tracked(1) < tracked(0))
            });
        pair[way] = Some(Entry {
            key,
            verdict,
            tracked: now,
            epoch,
        });
    }
}
