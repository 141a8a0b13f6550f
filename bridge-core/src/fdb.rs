//! The forwarding database of one network: (VLAN, MAC) -> port, learned or static.
//!
//! Readers never write shared memory, so datapath threads do not contend: the table is an
//! open-addressing hash table (linear probing) of atomic slots, each guarded by its own sequence
//! counter (a seqlock in safe Rust: a reader retries, or gives up and treats the address as
//! unknown, if a writer changed the slot while it read). The only datapath store is the
//! timestamp refresh of a known address, at most once per 1/256 of the ageing time.
//!
//! Writers (new or moved addresses, static entries, sweeps, flushes) are serialized per network
//! by a mutex. A reader racing a removal may miss an entry (the frame is flooded, or learning
//! takes the writer path); it never sees a key with another key's port. The table doubles when
//! half full, and the new table is published through an `ArcSwap`; since the limits bound the
//! number of entries, so are the allocations.
//!
//! Keys are hashed with foldhash, seeded at random per table: fast for 8-byte keys, and a guest
//! cannot predict collisions.
//!
//! A batch of frames from one port, all at one time, reads the FDB through a [`View`]: one table
//! snapshot for the batch, the source addresses the batch already learned on its port (not
//! learned again) and the destinations it already found (not looked up again). Each table has
//! an epoch that writers bump whenever an entry is removed or changes port, and when the table
//! is replaced by a bigger one; a view that sees the epoch move takes a new snapshot and forgets
//! what it learned and found, so that it decides exactly as a fresh snapshot per frame would.
//! (An entry found stays valid meanwhile: its port does not change, and at one time it does
//! not expire.)

use std::hash::BuildHasher;
use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::{ArcSwap, Guard};
use foldhash::fast::RandomState;
use smoltcp::wire::EthernetAddress;

use crate::frame;
use crate::network::NetworkStats;
use crate::port::{Port, PortId};
use crate::time::{Duration, Instant};
use crate::vlan::VlanId;

use Ordering::{Acquire, Relaxed, Release};

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
    /// Nothing to learn: already known on this port (refreshed), or the port is being removed.
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
/// Never 0 ([`EMPTY`]): the all-zero MAC is neither learned nor accepted as static.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key(u64);

/// The key of a free slot.
const EMPTY: u64 = 0;

impl Key {
    pub(crate) fn new(vlan: Option<VlanId>, mac: EthernetAddress) -> Key {
        Key::of_bits(vlan, frame::mac_bits(mac))
    }

    /// The key of a MAC address given as a 48-bit number ([`frame::mac_bits`]).
    #[inline]
    pub(crate) fn of_bits(vlan: Option<VlanId>, mac: u64) -> Key {
        Key(u64::from(vlan.map_or(0, VlanId::get)) << 48 | mac)
    }

    fn vlan(self) -> Option<VlanId> {
        VlanId::new((self.0 >> 48) as u16)
    }

    fn mac(self) -> EthernetAddress {
        frame::mac_of_bits(self.0)
    }
}

/// What a slot says about its key: the port (index and incarnation, so that a reused port id
/// never inherits entries) and whether the entry is static.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Target(u64);

impl Target {
    const STATIC: u64 = 1 << 31;

    fn new(port: &Port, is_static: bool) -> Target {
        let stat = if is_static { Self::STATIC } else { 0 };
        Target(u64::from(port.id.0) << 32 | u64::from(port.incarnation & 0x7fff_ffff) | stat)
    }

    fn port_id(self) -> PortId {
        PortId((self.0 >> 32) as u32)
    }

    fn is_static(self) -> bool {
        self.0 & Self::STATIC != 0
    }

    fn is(self, port: &Port) -> bool {
        self.0 & !Self::STATIC == Target::new(port, false).0
    }

    /// The port, if it still exists in `ports` (a topology snapshot).
    fn resolve(self, ports: &[Option<Arc<Port>>]) -> Option<&Arc<Port>> {
        let port = ports.get(self.port_id().0 as usize)?.as_ref()?;
        self.is(port).then_some(port)
    }
}

/// How often a reader retries a slot that a writer keeps changing before giving up.
const READ_RETRIES: u32 = 64;

/// The smallest table.
const MIN_SLOTS: usize = 64;

/// One slot. `key`, `target` and `last_seen` change together under `seq` (odd while a writer
/// is at it); readers also store `last_seen` alone, to refresh it.
#[derive(Debug, Default)]
struct Slot {
    seq: AtomicU32,
    key: AtomicU64,
    target: AtomicU64,
    last_seen: AtomicI64,
}

/// A consistent read of a slot.
#[derive(Debug, Clone, Copy)]
struct Read {
    key: u64,
    target: Target,
    last_seen: i64,
}

impl Slot {
    /// Reads the slot consistently; `None` if writers kept changing it.
    fn read(&self) -> Option<Read> {
        for _ in 0..READ_RETRIES {
            let before = self.seq.load(Acquire);
            if before & 1 == 0 {
                let read = Read {
                    key: self.key.load(Relaxed),
                    target: Target(self.target.load(Relaxed)),
                    last_seen: self.last_seen.load(Relaxed),
                };
                fence(Acquire);
                if self.seq.load(Relaxed) == before {
                    return Some(read);
                }
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Reads the slot as its writer (with the writer lock held, nothing else changes it).
    fn read_locked(&self) -> Read {
        Read {
            key: self.key.load(Relaxed),
            target: Target(self.target.load(Relaxed)),
            last_seen: self.last_seen.load(Relaxed),
        }
    }

    /// Writes the slot (writer lock held).
    fn write(&self, key: u64, target: Target, last_seen: i64) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq.wrapping_add(1), Relaxed);
        fence(Release);
        self.key.store(key, Relaxed);
        self.target.store(target.0, Relaxed);
        self.last_seen.store(last_seen, Relaxed);
        self.seq.store(seq.wrapping_add(2), Release);
    }
}

/// A table of `2^n` slots.
#[derive(Debug)]
pub(crate) struct Table {
    slots: Box<[Slot]>,
    hasher: RandomState,
    /// Bumped (writer lock held) when an entry is removed or changes port, and when the table
    /// is replaced: a [`View`] holding this table then reloads it and forgets what it learned.
    /// A bigger table starts where the one it replaces ends, so that an FDB's epochs never
    /// repeat.
    epoch: AtomicU64,
}

/// Where a key is, or where it would go.
enum Place {
    Found(usize, Read),
    Vacant(usize),
}

impl Table {
    fn new(len: usize, epoch: u64) -> Table {
        Table {
            slots: (0..len).map(|_| Slot::default()).collect(),
            hasher: RandomState::default(),
            epoch: AtomicU64::new(epoch),
        }
    }

    /// Tells views that an entry was removed or changed port (writer lock held).
    fn bump(&self) {
        self.epoch.fetch_add(1, Release);
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, key: u64) -> usize {
        self.hasher.hash_one(key) as usize & self.mask()
    }

    /// Finds a key without locking; `None` if absent (or a writer was in the way).
    fn find(&self, key: u64) -> Option<(usize, Read)> {
        let mut i = self.home(key);
        for _ in 0..self.slots.len() {
            let read = self.slots[i].read()?;
            if read.key == EMPTY {
                return None;
            }
            if read.key == key {
                return Some((i, read));
            }
            i = (i + 1) & self.mask();
        }
        None
    }

    /// Finds a key, or the free slot it would take (writer lock held; the table is never full).
    fn place(&self, key: u64) -> Place {
        let mut i = self.home(key);
        loop {
            let read = self.slots[i].read_locked();
            if read.key == EMPTY {
                return Place::Vacant(i);
            }
            if read.key == key {
                return Place::Found(i, read);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// Empties slot `hole` and shifts the rest of its probe run back, so that no lookup has to
    /// step over a removed entry (writer lock held).
    fn remove_at(&self, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let read = self.slots[j].read_locked();
            if read.key == EMPTY {
                break;
            }
            let home = self.home(read.key);
            // The entry may fill the hole unless its home lies cyclically in (hole, j].
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole].write(read.key, read.target, read.last_seen);
                hole = j;
            }
        }
        self.slots[hole].write(EMPTY, Target(0), 0);
        self.bump();
    }

    /// Removes every entry `doomed` picks, calling `removed` on each (writer lock held).
    fn remove_where(&self, doomed: impl Fn(&Read) -> bool, mut removed: impl FnMut(&Read)) {
        let mut i = 0;
        while i < self.slots.len() {
            let read = self.slots[i].read_locked();
            if read.key != EMPTY && doomed(&read) {
                removed(&read);
                // The shift may bring another entry into slot i: look at it again.
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
    }
}

/// Keys a [`View`] remembers, as sources and as destinations.
const REMEMBERED: usize = 4;

/// The last few keys of a kind with what a [`View`] found for them; [`EMPTY`] in unused places.
#[derive(Debug, Default)]
struct Recent {
    keys: [u64; REMEMBERED],
    targets: [Target; REMEMBERED],
    next: usize,
}

impl Recent {
    fn get(&self, key: Key) -> Option<Target> {
        let i = self.keys.iter().position(|&k| k == key.0)?;
        Some(self.targets[i])
    }

    fn put(&mut self, key: Key, target: Target) {
        self.keys[self.next] = key.0;
        self.targets[self.next] = target;
        self.next = (self.next + 1) % REMEMBERED;
    }
}

/// An FDB as one batch of frames from one port, at one time, reads it ([`Fdb::view`]).
#[derive(Debug)]
pub(crate) struct View {
    table: Guard<Arc<Table>>,
    /// The table's epoch when the view was taken.
    epoch: u64,
    now: Instant,
    /// Sources learned (or found) on the batch's port since then.
    learned: Recent,
    /// Destinations found since then (not expired), with their ports: only those that resolve
    /// in the batch's topology.
    found: Recent,
}

impl View {
    /// The FDB's epoch when the view's snapshot was taken: what it learned and found holds
    /// while the epoch stays there.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The FDB's epoch now.
    #[inline]
    pub(crate) fn epoch_now(&self) -> u64 {
        self.table.epoch.load(Acquire)
    }
}

/// The FDB of one network.
#[derive(Debug)]
pub(crate) struct Fdb {
    table: ArcSwap<Table>,
    writer: Mutex<()>,
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
            table: ArcSwap::from_pointee(Table::new(MIN_SLOTS, 0)),
            writer: Mutex::new(()),
            ageing_us,
            refresh_us: ageing_us / 256,
            max_learned,
            learned: AtomicU32::new(0),
            statics: AtomicU32::new(0),
            mac_moves: AtomicU64::new(0),
            limit_hits: AtomicU64::new(0),
        }
    }

    /// How often a learned entry's age is refreshed by its source's frames (1/256 of the
    /// ageing time).
    pub(crate) fn refresh_interval(&self) -> Duration {
        Duration::from_micros(u64::try_from(self.refresh_us).unwrap_or(0))
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expired(&self, read: &Read, now: i64) -> bool {
        !read.target.is_static() && now.saturating_sub(read.last_seen) >= self.ageing_us
    }

    fn refresh(&self, slot: &Slot, read: &Read, now: i64) {
        if now.saturating_sub(read.last_seen) > self.refresh_us {
            slot.last_seen.store(now, Relaxed);
        }
    }

    /// The current table, doubled first if `entries` would make it over half full
    /// (writer lock held).
    fn table_for(&self, entries: usize) -> Arc<Table> {
        let table = self.table.load_full();
        if entries * 2 <= table.slots.len() {
            return table;
        }
        // At the epoch this table is bumped to below (writer lock held: no other bump).
        let epoch = table.epoch.load(Relaxed) + 1;
        let bigger = Table::new(table.slots.len() * 2, epoch);
        for slot in table.slots.iter() {
            let read = slot.read_locked();
            if read.key != EMPTY {
                if let Place::Vacant(i) = bigger.place(read.key) {
                    bigger.slots[i].write(read.key, read.target, read.last_seen);
                }
            }
        }
        let bigger = Arc::new(bigger);
        self.table.store(Arc::clone(&bigger));
        table.bump();
        bigger
    }

    /// The current table, for [`learn`](Self::learn).
    pub(crate) fn snapshot(&self) -> Guard<Arc<Table>> {
        self.table.load()
    }

    /// Learns that `key` is reached through `port`. `table` is a [`snapshot`](Self::snapshot)
    /// and `ports` the topology snapshot.
    pub(crate) fn learn(
        &self,
        table: &Table,
        now: Instant,
        key: Key,
        port: &Arc<Port>,
        ports: &[Option<Arc<Port>>],
    ) -> Learn {
        let now = now.total_micros();
        let found = table.find(key.0);
        if let Some((i, read)) = found {
            if read.target.is(port) {
                if !read.target.is_static() {
                    self.refresh(&table.slots[i], &read, now);
                }
                return Learn::Known;
            }
            if read.target.is_static() {
                return Learn::SpoofedStatic;
            }
        }
        // At a limit, say so without the writer lock, so that a guest flooding new source
        // addresses does not make other ports wait for it. (A lookup that raced a removal may
        // land here for a known address: that frame counts as a limit hit.)
        let port_full = port.learned.load(Relaxed) >= port.config.max_learned;
        let network_full = found.is_none() && self.learned.load(Relaxed) >= self.max_learned;
        if port_full || network_full {
            return self.limit_hit();
        }
        let _writer = self.lock();
        // `remove_port` marks the port removed before it flushes under this lock.
        if port.is_removed() {
            return Learn::Known;
        }
        let table = self.table.load_full();
        match table.place(key.0) {
            Place::Found(i, read) => {
                if read.target.is(port) {
                    self.refresh(&table.slots[i], &read, now);
                    return Learn::Known;
                }
                if read.target.is_static() {
                    return Learn::SpoofedStatic;
                }
                if !reserve(&port.learned, port.config.max_learned) {
                    return self.limit_hit();
                }
                if let Some(old) = read.target.resolve(ports) {
                    release(&old.learned);
                }
                table.slots[i].write(key.0, Target::new(port, false), now);
                table.bump();
                if self.expired(&read, now) {
                    Learn::Added
                } else {
                    self.mac_moves.fetch_add(1, Relaxed);
                    Learn::Moved
                }
            }
            Place::Vacant(_) => {
                if !reserve(&self.learned, self.max_learned) {
                    return self.limit_hit();
                }
                if !reserve(&port.learned, port.config.max_learned) {
                    release(&self.learned);
                    return self.limit_hit();
                }
                let entries = self.learned.load(Relaxed) as usize;
                let table = self.table_for(entries + self.statics.load(Relaxed) as usize);
                if let Place::Vacant(i) = table.place(key.0) {
                    table.slots[i].write(key.0, Target::new(port, false), now);
                }
                Learn::Added
            }
        }
    }

    /// A view for one batch of frames from one port, received at `now`.
    #[inline]
    pub(crate) fn view(&self, now: Instant) -> View {
        let table = self.snapshot();
        View {
            epoch: table.epoch.load(Acquire),
            table,
            now,
            learned: Recent::default(),
            found: Recent::default(),
        }
    }

    /// Reloads the view's table (and forgets what the view learned and found) if its epoch
    /// moved.
    #[inline]
    fn sync(&self, view: &mut View) {
        if view.epoch_now() != view.epoch {
            self.reload(view);
        }
    }

    /// The reload of [`sync`](Self::sync) (out of line: the epoch rarely moves).
    #[cold]
    #[inline(never)]
    fn reload(&self, view: &mut View) {
        *view = self.view(view.now);
    }

    /// [`learn`](Self::learn) for the next frame of `view`'s batch: a key the batch learned
    /// (or found) on `port` already is known without looking at the table again. Always
    /// inlined, as [`lookup_in`](Self::lookup_in).
    #[inline(always)]
    pub(crate) fn learn_in(
        &self,
        view: &mut View,
        key: Key,
        port: &Arc<Port>,
        ports: &[Option<Arc<Port>>],
    ) -> Learn {
        self.sync(view);
        if view.learned.get(key).is_some() {
            return Learn::Known;
        }
        self.learn_first(view, key, port, ports)
    }

    /// [`learn_in`](Self::learn_in) for a key the batch has not learned yet (out of line: the
    /// batch's frames mostly come from addresses it learned already).
    #[inline(never)]
    fn learn_first(
        &self,
        view: &mut View,
        key: Key,
        port: &Arc<Port>,
        ports: &[Option<Arc<Port>>],
    ) -> Learn {
        let learn = self.learn(&view.table, view.now, key, port, ports);
        if let Learn::Known | Learn::Added | Learn::Moved = learn {
            view.learned.put(key, Target::new(port, false));
        }
        learn
    }

    /// The port `key` is reached through, unless unknown, expired or gone from `ports`, for the
    /// next frame of `view`'s batch: a key the batch found already is not looked up again.
    /// `ports` is the batch's topology snapshot, the same for every call on `view`. Always
    /// inlined: out of line, its call and saved registers cost as much as the rest.
    #[inline(always)]
    pub(crate) fn lookup_in<'p>(
        &self,
        view: &mut View,
        key: Key,
        ports: &'p [Option<Arc<Port>>],
    ) -> Option<&'p Arc<Port>> {
        self.sync(view);
        let target = match view.found.get(key) {
            Some(target) => target,
            None => return self.find_first(view, key, ports),
        };
        // It resolved in `ports` when it was found (the batch's topology), so it still does.
        ports.get(target.port_id().0 as usize)?.as_ref()
    }

    /// Looks up a destination the batch has not found yet and remembers it if it resolves in
    /// `ports` (out of line, as [`learn_first`](Self::learn_first)).
    #[inline(never)]
    fn find_first<'p>(
        &self,
        view: &mut View,
        key: Key,
        ports: &'p [Option<Arc<Port>>],
    ) -> Option<&'p Arc<Port>> {
        let target = self.find_live(&view.table, view.now, key)?;
        let port = target.resolve(ports)?;
        view.found.put(key, target);
        Some(port)
    }

    /// The target of `key` unless unknown or expired at `now`.
    fn find_live(&self, table: &Table, now: Instant, key: Key) -> Option<Target> {
        let (_, read) = table.find(key.0)?;
        (!self.expired(&read, now.total_micros())).then_some(read.target)
    }

    fn limit_hit(&self) -> Learn {
        self.limit_hits.fetch_add(1, Relaxed);
        Learn::Limit
    }

    /// Adds or replaces a static entry; `ports` is the topology snapshot.
    pub(crate) fn add_static(&self, key: Key, port: &Port, ports: &[Option<Arc<Port>>]) {
        let _writer = self.lock();
        let target = Target::new(port, true);
        let table = self.table.load_full();
        match table.place(key.0) {
            Place::Found(i, read) => {
                if !read.target.is_static() {
                    if let Some(old) = read.target.resolve(ports) {
                        release(&old.learned);
                    }
                    release(&self.learned);
                    self.statics.fetch_add(1, Relaxed);
                }
                table.slots[i].write(key.0, target, 0);
                table.bump();
            }
            Place::Vacant(_) => {
                let statics = self.statics.fetch_add(1, Relaxed) as usize + 1;
                let table = self.table_for(self.learned.load(Relaxed) as usize + statics);
                if let Place::Vacant(i) = table.place(key.0) {
                    table.slots[i].write(key.0, target, 0);
                }
            }
        }
    }

    /// Removes a static entry; returns whether there was one.
    pub(crate) fn remove_static(&self, key: Key) -> bool {
        let _writer = self.lock();
        let table = self.table.load();
        match table.place(key.0) {
            Place::Found(i, read) if read.target.is_static() => {
                table.remove_at(i);
                self.statics.fetch_sub(1, Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Removes the entries `doomed` picks; returns how many. `ports` is the topology snapshot.
    fn remove_where(&self, ports: &[Option<Arc<Port>>], doomed: impl Fn(&Read) -> bool) -> usize {
        let _writer = self.lock();
        let mut count = 0;
        self.table.load().remove_where(doomed, |read| {
            count += 1;
            if read.target.is_static() {
                self.statics.fetch_sub(1, Relaxed);
            } else {
                if let Some(port) = read.target.resolve(ports) {
                    release(&port.learned);
                }
                release(&self.learned);
            }
        });
        count
    }

    /// Removes the learned entries not seen for the ageing time; returns how many.
    pub(crate) fn age(&self, now: Instant, ports: &[Option<Arc<Port>>]) -> usize {
        let now = now.total_micros();
        self.remove_where(ports, |read| self.expired(read, now))
    }

    /// Removes every entry (learned and static) of a removed port; returns how many.
    pub(crate) fn flush_port(&self, port: &Port) -> usize {
        // The port is gone from the topology: only the network's count is released.
        self.remove_where(&[], |read| read.target.is(port))
    }

    /// Calls `f` for each entry (under the writer lock: `f` must not call back into the switch).
    pub(crate) fn for_each(&self, now: Instant, mut f: impl FnMut(FdbEntry)) {
        let now = now.total_micros();
        let _writer = self.lock();
        for slot in self.table.load().slots.iter() {
            let read = slot.read_locked();
            if read.key == EMPTY {
                continue;
            }
            let kind = if read.target.is_static() {
                FdbEntryKind::Static
            } else {
                let age = now.saturating_sub(read.last_seen).max(0);
                FdbEntryKind::Learned {
                    age: Duration::from_micros(age as u64),
                }
            };
            f(FdbEntry {
                vlan: Key(read.key).vlan(),
                mac: Key(read.key).mac(),
                port: read.target.port_id(),
                kind,
            });
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
    use std::collections::HashMap;

    use super::*;
    use crate::network::NetworkId;
    use crate::port::PortConfig;

    /// Ports 0..n with the given limit, as a topology snapshot indexed by id.
    fn ports(n: u32, max_learned: u32) -> Vec<Option<Arc<Port>>> {
        let config = PortConfig {
            max_learned,
            ..PortConfig::default()
        };
        let port = |id| Arc::new(Port::new(PortId(id), id, NetworkId(0), config.clone()));
        (0..n).map(|id| Some(port(id))).collect()
    }

    fn port(ports: &[Option<Arc<Port>>], id: usize) -> &Arc<Port> {
        ports[id].as_ref().unwrap()
    }

    fn key(n: u16) -> Key {
        let [a, b] = n.to_be_bytes();
        Key::new(None, EthernetAddress([2, 0, 0, 0, a, b]))
    }

    fn secs(s: i64) -> Instant {
        Instant::from_secs(s)
    }

    fn learned_on(p: &Port) -> u32 {
        p.learned.load(Relaxed)
    }

    fn at(fdb: &Fdb, now: Instant, k: Key, ports: &[Option<Arc<Port>>]) -> Option<PortId> {
        fdb.lookup_in(&mut fdb.view(now), k, ports).map(|p| p.id)
    }

    #[test]
    fn key_round_trips_vlan_and_mac() {
        let vlan = VlanId::new(4094);
        let mac = EthernetAddress([0xfe, 1, 2, 3, 4, 0xff]);
        let k = Key::new(vlan, mac);
        assert_eq!((k.vlan(), k.mac()), (vlan, mac));
        assert_eq!(Key::new(None, mac).vlan(), None);
        assert_eq!(Key::new(None, EthernetAddress([0; 6])).0, EMPTY);
    }

    #[test]
    fn learns_refreshes_moves_and_ages() {
        let fdb = Fdb::new(Duration::from_secs(10), 100);
        let ps = ports(2, 10);
        let (a, b) = (port(&ps, 0), port(&ps, 1));
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(1), a, &ps),
            Learn::Added
        );
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(8), key(1), a, &ps),
            Learn::Known
        );
        assert_eq!(at(&fdb, secs(17), key(1), &ps), Some(PortId(0)));
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(17), key(1), b, &ps),
            Learn::Moved
        );
        assert_eq!((learned_on(a), learned_on(b)), (0, 1));
        assert_eq!(fdb.stats().mac_moves, 1);
        assert_eq!(at(&fdb, secs(27), key(1), &ps), None, "expired at lookup");
        assert_eq!(fdb.age(secs(26), &ps), 0);
        assert_eq!(fdb.age(secs(27), &ps), 1);
        assert_eq!((fdb.stats().learned, learned_on(b)), (0, 0));
        // An expired entry re-learned on another port is not a move.
        fdb.learn(&fdb.snapshot(), secs(30), key(2), a, &ps);
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(40), key(2), b, &ps),
            Learn::Added
        );
        assert_eq!(fdb.stats().mac_moves, 1);
    }

    #[test]
    fn enforces_port_and_network_limits() {
        let fdb = Fdb::new(Duration::from_secs(300), 3);
        let mut ps = ports(2, 2);
        ps[1] = Some(Arc::new(Port::new(
            PortId(1),
            1,
            NetworkId(0),
            PortConfig::default(),
        )));
        let (a, b) = (port(&ps, 0), port(&ps, 1));
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(1), a, &ps),
            Learn::Added
        );
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(2), a, &ps),
            Learn::Added
        );
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(3), a, &ps),
            Learn::Limit,
            "port limit"
        );
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(3), b, &ps),
            Learn::Added
        );
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(4), b, &ps),
            Learn::Limit,
            "network limit"
        );
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(3), a, &ps),
            Learn::Limit,
            "move into a full port"
        );
        assert_eq!(fdb.stats().fdb_limit_hits, 3);
        assert_eq!(at(&fdb, secs(0), key(3), &ps), Some(PortId(1)));
    }

    #[test]
    fn static_entries_do_not_age_move_or_count() {
        let fdb = Fdb::new(Duration::from_secs(1), 1);
        let ps = ports(2, 1);
        let (a, b) = (port(&ps, 0), port(&ps, 1));
        fdb.learn(&fdb.snapshot(), secs(0), key(1), a, &ps);
        fdb.add_static(key(1), b, &ps);
        assert_eq!((fdb.stats().learned, fdb.stats().statics), (0, 1));
        assert_eq!(learned_on(a), 0);
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(1), a, &ps),
            Learn::SpoofedStatic
        );
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(1), b, &ps),
            Learn::Known
        );
        assert_eq!(fdb.age(secs(1000), &ps), 0);
        assert_eq!(at(&fdb, secs(1000), key(1), &ps), Some(PortId(1)));
        assert!(!fdb.remove_static(key(2)));
        assert!(fdb.remove_static(key(1)));
        assert_eq!(fdb.stats().statics, 0);
        assert_eq!(at(&fdb, secs(1000), key(1), &ps), None);
    }

    #[test]
    fn flush_removes_a_ports_entries_and_a_removed_port_learns_nothing() {
        let fdb = Fdb::new(Duration::from_secs(300), 100);
        let mut ps = ports(2, 10);
        let (a, b) = (Arc::clone(port(&ps, 0)), Arc::clone(port(&ps, 1)));
        fdb.learn(&fdb.snapshot(), secs(0), key(1), &a, &ps);
        fdb.learn(&fdb.snapshot(), secs(0), key(2), &b, &ps);
        fdb.add_static(key(3), &a, &ps);
        a.mark_removed();
        ps[0] = None;
        assert_eq!(fdb.flush_port(&a), 2);
        assert_eq!(
            fdb.stats(),
            NetworkStats {
                learned: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(4), &a, &ps),
            Learn::Known
        );
        assert_eq!(fdb.stats().learned, 1);
        let mut listed = Vec::new();
        fdb.for_each(secs(5), |e| listed.push(e));
        let age = Duration::from_secs(5);
        let kind = FdbEntryKind::Learned { age };
        let expected = FdbEntry {
            vlan: None,
            mac: key(2).mac(),
            port: PortId(1),
            kind,
        };
        assert_eq!(listed, [expected]);
    }

    #[test]
    fn a_reused_port_id_inherits_nothing() {
        let fdb = Fdb::new(Duration::from_secs(300), 100);
        let mut ps = ports(2, 10);
        fdb.learn(&fdb.snapshot(), secs(0), key(1), port(&ps, 1), &ps);
        // Port 1 is replaced without a flush (as a racing learner could leave it).
        ps[1] = Some(Arc::new(Port::new(
            PortId(1),
            99,
            NetworkId(0),
            PortConfig::default(),
        )));
        assert_eq!(at(&fdb, secs(0), key(1), &ps), None);
        assert_eq!(
            fdb.learn(&fdb.snapshot(), secs(0), key(1), port(&ps, 1), &ps),
            Learn::Moved
        );
        assert_eq!(at(&fdb, secs(0), key(1), &ps), Some(PortId(1)));
    }

    #[test]
    fn grows_and_shifts_back_on_removal_like_a_map() {
        let fdb = Fdb::new(Duration::from_secs(300), 0);
        let ps = ports(4, 0);
        let mut model = HashMap::new();
        // A fixed pseudo-random sequence of adds and removes over a small key space, so that
        // probe runs collide, wrap and shrink.
        let mut x: u32 = 7;
        for step in 0..20_000u32 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let k = key((x >> 16) as u16 % 700 + 1);
            if (x >> 8).is_multiple_of(3) {
                assert_eq!(
                    fdb.remove_static(k),
                    model.remove(&k).is_some(),
                    "step {step}"
                );
            } else {
                let p = (x as usize >> 4) % 4;
                fdb.add_static(k, port(&ps, p), &ps);
                model.insert(k, PortId(p as u32));
            }
            if step.is_multiple_of(997) {
                for n in 1..=700 {
                    assert_eq!(at(&fdb, secs(0), key(n), &ps), model.get(&key(n)).copied());
                }
            }
        }
        assert_eq!(fdb.stats().statics as usize, model.len());
        assert!(fdb.table.load().slots.len() >= 2 * model.len());
    }

    #[test]
    fn a_slot_being_written_is_not_read() {
        let slot = Slot::default();
        slot.write(5, Target(7), 9);
        let read = slot.read().unwrap();
        assert_eq!((read.key, read.target, read.last_seen), (5, Target(7), 9));
        // A writer stopped half-way: the reader gives up rather than return a torn entry.
        slot.seq.fetch_add(1, Relaxed);
        slot.key.store(6, Relaxed);
        assert!(slot.read().is_none());
        slot.seq.fetch_add(1, Relaxed);
        assert_eq!(slot.read().unwrap().key, 6);
    }

    #[test]
    fn lookups_racing_writers_find_the_right_port_or_none() {
        let fdb = Fdb::new(Duration::from_secs(300), 0);
        let ps = ports(4, 0);
        let owner = |n: u16| PortId(u32::from(n) % 4);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for round in 0..200u16 {
                    for n in 1..=300u16 {
                        if (n + round) % 3 == 0 {
                            fdb.remove_static(key(n));
                        } else {
                            fdb.add_static(key(n), port(&ps, owner(n).0 as usize), &ps);
                        }
                    }
                }
                done.store(true, Relaxed);
            });
            s.spawn(|| {
                while !done.load(Relaxed) {
                    for n in 1..=300u16 {
                        let found = at(&fdb, secs(0), key(n), &ps);
                        assert!(found.is_none() || found == Some(owner(n)), "{n}: {found:?}");
                    }
                }
            });
        });
    }
}
