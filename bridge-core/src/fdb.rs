//! The forwarding database of one network: (VLAN, MAC) -> port, learned or static.
//!
//! Read-mostly and sharded: the table is split into [`SHARDS`] hash maps, each under its own
//! `RwLock`, picked by a seeded hash of the key. Keys are hashed with foldhash, seeded at
//! random per table: fast for 8-byte keys, and a guest cannot predict collisions (the limits
//! bound the tables anyway). A frame from a known address on its known port
//! only refreshes an atomic timestamp under a read lock (and only when the stored one is older
//! than 1/256 of the ageing time); write locks are taken for new and moved addresses, static
//! entries, sweeps and flushes. Limits are reserved with compare-and-swap on atomic counters
//! so that no interleaving can exceed them.
//!
//! Tables grow (allocate) only when a new address is learned beyond their previous size;
//! removals keep the capacity, so a table's allocations are bounded by its limit.

use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use smoltcp::wire::EthernetAddress;

use crate::network::NetworkStats;
use crate::port::{Port, PortId};
use crate::time::{Duration, Instant};
use crate::vlan::VlanId;

/// Number of shards per FDB.
pub const SHARDS: usize = 16;

/// One entry as listed by [`Switch::for_each_fdb_entry`](crate::Switch::for_each_fdb_entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The VLAN (`None` on networks that do not filter VLANs).
    pub vlan: Option<VlanId>,
    /// The address.
    pub mac: EthernetAddress,
    /// The port it is reached through.
    pub port: PortId,
    /// Static, or learned and how long ago it was last seen.
    pub kind: FdbEntryKind,
}

/// Whether an entry is static or learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbEntryKind {
    /// Configured; never ages, never moves.
    Static,
    /// Learned from a source address.
    Learned {
        /// Time since the address was last seen (to within the refresh granularity).
        age: Duration,
    },
}

/// The outcome of learning a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learn {
    /// Already known on this port (refreshed).
    Known,
    /// A new entry.
    Added,
    /// The address moved here from another port.
    Moved,
    /// Not learned: a limit was reached.
    Limit,
    /// The address is static on another port.
    SpoofedStatic,
}

/// The key of an entry: VLAN id (0 without VLAN filtering) in the top 16 bits, MAC below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key(u64);

impl Key {
    pub(crate) fn new(vlan: Option<VlanId>, mac: EthernetAddress) -> Key {
        let m = mac.0;
        let vid = vlan.map_or(0, VlanId::get);
        Key(u64::from_be_bytes([
            (vid >> 8) as u8,
            vid as u8,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
        ]))
    }

    fn vlan(self) -> Option<VlanId> {
        VlanId::new((self.0 >> 48) as u16)
    }

    fn mac(self) -> EthernetAddress {
        let b = self.0.to_be_bytes();
        EthernetAddress([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

#[derive(Debug)]
struct Entry {
    port: Arc<Port>,
    is_static: bool,
    /// Microseconds since the switch's epoch.
    last_seen: AtomicI64,
}

type Table = HashMap<Key, Entry, RandomState>;

/// A shard on its own cache line, so that locking one does not disturb its neighbours.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(RwLock<Table>);

impl Shard {
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The FDB of one network.
#[derive(Debug)]
pub(crate) struct Fdb {
    shards: [Shard; SHARDS],
    shard_hasher: RandomState,
    ageing_us: i64,
    refresh_us: i64,
    max_learned: u32,
    learned: AtomicU32,
    statics: AtomicU32,
    mac_moves: AtomicU64,
    limit_hits: AtomicU64,
}

/// Takes one unit of `counter` if it is below `limit`.
fn reserve(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
        .is_ok()
}

fn release(counter: &AtomicU32) {
    counter.fetch_sub(1, Relaxed);
}

impl Fdb {
    pub(crate) fn new(ageing_time: Duration, max_learned: u32) -> Fdb {
        let ageing_us = i64::try_from(ageing_time.total_micros()).unwrap_or(i64::MAX);
        Fdb {
            shards: Default::default(),
            shard_hasher: RandomState::default(),
            ageing_us,
            refresh_us: ageing_us / 256,
            max_learned,
            learned: AtomicU32::new(0),
            statics: AtomicU32::new(0),
            mac_moves: AtomicU64::new(0),
            limit_hits: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: Key) -> &Shard {
        &self.shards[self.shard_hasher.hash_one(key) as usize % SHARDS]
    }

    fn expired(&self, entry: &Entry, now: i64) -> bool {
        !entry.is_static && now.saturating_sub(entry.last_seen.load(Relaxed)) >= self.ageing_us
    }

    fn refresh(&self, entry: &Entry, now: i64) {
        if now.saturating_sub(entry.last_seen.load(Relaxed)) > self.refresh_us {
            entry.last_seen.store(now, Relaxed);
        }
    }

    /// Learns that `key` is reached through `port`.
    pub(crate) fn learn(&self, now: Instant, key: Key, port: &Arc<Port>) -> Learn {
        let now = now.total_micros();
        let shard = self.shard(key);
        if let Some(entry) = shard.read().get(&key) {
            if Arc::ptr_eq(&entry.port, port) {
                self.refresh(entry, now);
                return Learn::Known;
            }
            if entry.is_static {
                return Learn::SpoofedStatic;
            }
        }
        let mut map = shard.write();
        let outcome = match map.entry(key) {
            MapEntry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                if Arc::ptr_eq(&entry.port, port) {
                    self.refresh(entry, now);
                    return Learn::Known;
                }
                if entry.is_static {
                    return Learn::SpoofedStatic;
                }
                if !reserve(&port.learned, port.config.max_learned) {
                    return self.limit_hit();
                }
                release(&entry.port.learned);
                let moved = !self.expired(entry, now);
                entry.port = Arc::clone(port);
                entry.last_seen.store(now, Relaxed);
                if moved {
                    self.mac_moves.fetch_add(1, Relaxed);
                    Learn::Moved
                } else {
                    Learn::Added
                }
            }
            MapEntry::Vacant(vacant) => {
                if !reserve(&self.learned, self.max_learned) {
                    return self.limit_hit();
                }
                if !reserve(&port.learned, port.config.max_learned) {
                    release(&self.learned);
                    return self.limit_hit();
                }
                vacant.insert(Entry {
                    port: Arc::clone(port),
                    is_static: false,
                    last_seen: AtomicI64::new(now),
                });
                Learn::Added
            }
        };
        // `remove_port` marks the port removed before it flushes each shard under its write
        // lock; an entry added after that flush must be taken back here.
        if port.is_removed() {
            map.remove(&key);
            release(&port.learned);
            release(&self.learned);
        }
        outcome
    }

    fn limit_hit(&self) -> Learn {
        self.limit_hits.fetch_add(1, Relaxed);
        Learn::Limit
    }

    /// Calls `f` with the port `key` is reached through, unless unknown or expired.
    pub(crate) fn lookup<R>(
        &self,
        now: Instant,
        key: Key,
        f: impl FnOnce(&Arc<Port>) -> R,
    ) -> Option<R> {
        let map = self.shard(key).read();
        let entry = map.get(&key)?;
        if self.expired(entry, now.total_micros()) || entry.port.is_removed() {
            return None;
        }
        Some(f(&entry.port))
    }

    /// Adds or replaces a static entry.
    pub(crate) fn add_static(&self, key: Key, port: &Arc<Port>) {
        let entry = Entry {
            port: Arc::clone(port),
            is_static: true,
            last_seen: AtomicI64::new(0),
        };
        match self.shard(key).write().insert(key, entry) {
            Some(old) if old.is_static => {}
            Some(old) => {
                release(&old.port.learned);
                release(&self.learned);
                self.statics.fetch_add(1, Relaxed);
            }
            None => {
                self.statics.fetch_add(1, Relaxed);
            }
        }
    }

    /// Removes a static entry; returns whether there was one.
    pub(crate) fn remove_static(&self, key: Key) -> bool {
        let mut map = self.shard(key).write();
        if map.get(&key).is_some_and(|e| e.is_static) {
            map.remove(&key);
            self.statics.fetch_sub(1, Relaxed);
            true
        } else {
            false
        }
    }

    /// Removes every entry matching `doomed`; returns how many.
    fn remove_where(&self, shard: &Shard, doomed: impl Fn(&Entry) -> bool) -> usize {
        if !shard.read().values().any(&doomed) {
            return 0;
        }
        let mut removed = 0;
        shard.write().retain(|_, e| {
            if !doomed(e) {
                return true;
            }
            removed += 1;
            if e.is_static {
                self.statics.fetch_sub(1, Relaxed);
            } else {
                release(&e.port.learned);
                release(&self.learned);
            }
            false
        });
        removed
    }

    /// Removes the learned entries not seen for the ageing time; returns how many.
    pub(crate) fn age(&self, now: Instant) -> usize {
        let now = now.total_micros();
        let expired = |e: &Entry| self.expired(e, now);
        self.shards
            .iter()
            .map(|s| self.remove_where(s, expired))
            .sum()
    }

    /// Removes every entry (learned and static) of a port; returns how many.
    pub(crate) fn flush_port(&self, port: &Port) -> usize {
        let on_port = |e: &Entry| core::ptr::eq(Arc::as_ptr(&e.port), port);
        self.shards
            .iter()
            .map(|s| self.remove_where(s, on_port))
            .sum()
    }

    /// Calls `f` for each entry, shard by shard under its read lock.
    pub(crate) fn for_each(&self, now: Instant, mut f: impl FnMut(FdbEntry)) {
        let now = now.total_micros();
        for shard in &self.shards {
            for (key, entry) in shard.read().iter() {
                let kind = if entry.is_static {
                    FdbEntryKind::Static
                } else {
                    let age = now.saturating_sub(entry.last_seen.load(Relaxed)).max(0);
                    FdbEntryKind::Learned {
                        age: Duration::from_micros(age as u64),
                    }
                };
                f(FdbEntry {
                    vlan: key.vlan(),
                    mac: key.mac(),
                    port: entry.port.id,
                    kind,
                });
            }
        }
    }

    pub(crate) fn stats(&self) -> NetworkStats {
        NetworkStats {
            learned: self.learned.load(Relaxed),
            statics: self.statics.load(Relaxed),
            mac_moves: self.mac_moves.load(Relaxed),
            fdb_limit_hits: self.limit_hits.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;
    use crate::port::PortConfig;

    fn port(id: u32, max_learned: u32) -> Arc<Port> {
        let config = PortConfig {
            max_learned,
            ..PortConfig::default()
        };
        Arc::new(Port::new(PortId(id), NetworkId(0), config))
    }

    fn key(n: u8) -> Key {
        Key::new(None, EthernetAddress([2, 0, 0, 0, 0, n]))
    }

    fn secs(s: i64) -> Instant {
        Instant::from_secs(s)
    }

    #[test]
    fn key_round_trips_vlan_and_mac() {
        let vlan = VlanId::new(4094);
        let mac = EthernetAddress([0xfe, 1, 2, 3, 4, 0xff]);
        let k = Key::new(vlan, mac);
        assert_eq!((k.vlan(), k.mac()), (vlan, mac));
        assert_eq!(Key::new(None, mac).vlan(), None);
    }

    #[test]
    fn learns_refreshes_moves_and_ages() {
        let fdb = Fdb::new(Duration::from_secs(10), 100);
        let (a, b) = (port(1, 10), port(2, 10));
        assert_eq!(fdb.learn(secs(0), key(1), &a), Learn::Added);
        assert_eq!(fdb.learn(secs(8), key(1), &a), Learn::Known);
        assert_eq!(fdb.lookup(secs(17), key(1), |p| p.id), Some(PortId(1)));
        assert_eq!(fdb.learn(secs(17), key(1), &b), Learn::Moved);
        assert_eq!((a.learned.load(Relaxed), b.learned.load(Relaxed)), (0, 1));
        assert_eq!(fdb.stats().mac_moves, 1);
        assert_eq!(
            fdb.lookup(secs(27), key(1), |p| p.id),
            None,
            "expired at lookup"
        );
        assert_eq!(fdb.age(secs(26)), 0);
        assert_eq!(fdb.age(secs(27)), 1);
        assert_eq!(fdb.stats().learned, 0);
        assert_eq!(b.learned.load(Relaxed), 0);
        // An expired entry re-learned on another port is not a move.
        fdb.learn(secs(30), key(2), &a);
        assert_eq!(fdb.learn(secs(40), key(2), &b), Learn::Added);
        assert_eq!(fdb.stats().mac_moves, 1);
    }

    #[test]
    fn enforces_port_and_network_limits() {
        let fdb = Fdb::new(Duration::from_secs(300), 3);
        let (a, b) = (port(1, 2), port(2, 5));
        assert_eq!(fdb.learn(secs(0), key(1), &a), Learn::Added);
        assert_eq!(fdb.learn(secs(0), key(2), &a), Learn::Added);
        assert_eq!(fdb.learn(secs(0), key(3), &a), Learn::Limit, "port limit");
        assert_eq!(fdb.learn(secs(0), key(3), &b), Learn::Added);
        assert_eq!(
            fdb.learn(secs(0), key(4), &b),
            Learn::Limit,
            "network limit"
        );
        assert_eq!(
            fdb.learn(secs(0), key(3), &a),
            Learn::Limit,
            "move into a full port"
        );
        assert_eq!(fdb.stats().fdb_limit_hits, 3);
        assert_eq!(fdb.lookup(secs(0), key(3), |p| p.id), Some(PortId(2)));
    }

    #[test]
    fn static_entries_do_not_age_move_or_count() {
        let fdb = Fdb::new(Duration::from_secs(1), 1);
        let (a, b) = (port(1, 1), port(2, 1));
        fdb.learn(secs(0), key(1), &a);
        fdb.add_static(key(1), &b);
        assert_eq!((fdb.stats().learned, fdb.stats().statics), (0, 1));
        assert_eq!(a.learned.load(Relaxed), 0);
        assert_eq!(fdb.learn(secs(0), key(1), &a), Learn::SpoofedStatic);
        assert_eq!(fdb.learn(secs(0), key(1), &b), Learn::Known);
        assert_eq!(fdb.age(secs(1000)), 0);
        assert_eq!(fdb.lookup(secs(1000), key(1), |p| p.id), Some(PortId(2)));
        assert!(!fdb.remove_static(key(2)));
        assert!(fdb.remove_static(key(1)));
        assert_eq!(fdb.stats().statics, 0);
    }

    #[test]
    fn flush_removes_a_ports_entries_and_late_learning_is_undone() {
        let fdb = Fdb::new(Duration::from_secs(300), 100);
        let (a, b) = (port(1, 10), port(2, 10));
        fdb.learn(secs(0), key(1), &a);
        fdb.learn(secs(0), key(2), &b);
        fdb.add_static(key(3), &a);
        assert_eq!(fdb.flush_port(&a), 2);
        assert_eq!(
            fdb.stats(),
            NetworkStats {
                learned: 1,
                ..Default::default()
            }
        );
        a.mark_removed();
        assert_eq!(fdb.learn(secs(0), key(4), &a), Learn::Added);
        assert_eq!(fdb.lookup(secs(0), key(4), |p| p.id), None);
        assert_eq!((fdb.stats().learned, a.learned.load(Relaxed)), (1, 0));
        let mut listed = Vec::new();
        fdb.for_each(secs(5), |e| listed.push(e));
        let age = Duration::from_secs(5);
        assert_eq!(
            listed,
            [FdbEntry {
                vlan: None,
                mac: key(2).mac(),
                port: PortId(2),
                kind: FdbEntryKind::Learned { age }
            }]
        );
    }
}
