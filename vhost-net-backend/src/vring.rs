//! One virtqueue as the backend sees it: what the frontend configured (size, addresses, base,
//! eventfds, enable), the guest memory it lives in, and the split-ring operations the datapath
//! needs beyond `virtio_queue::Queue` (publishing used entries in batches, signalling the guest
//! with EVENT_IDX suppression).
//!
//! A `Vring` sits behind a mutex: the connection thread changes it, datapath threads use it.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tracing::warn;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileMemory, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use crate::datapath::backpressure::Starvation;
use crate::sys::{self, GuestRam, Pinned};
use crate::vhost_user::memory::MemoryTable;

/// Largest queue size the device accepts (QEMU's limit for vhost-user; DPDK and
/// cloud-hypervisor use 256).
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Errors configuring a vring.
#[derive(Debug, thiserror::Error)]
pub enum VringError {
    /// SET_VRING_NUM with a size that is zero, not a power of two or too large.
    #[error("invalid queue size {0}")]
    InvalidSize(u32),
    /// SET_VRING_BASE with a value that does not fit a split ring index.
    #[error("invalid ring base {0}")]
    InvalidBase(u32),
    /// The driver's available index is more than a queue size ahead of the device's.
    #[error("corrupt available ring index")]
    AvailCorrupt,
}

/// Ring addresses as the frontend gave them (its own virtual addresses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingAddresses {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// One used-ring entry: the head of a chain and the bytes written into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index.
    pub head: u16,
    /// Bytes written to the chain's writable buffers.
    pub len: u32,
}

/// A vring's state for the control API (`queues`): what the device holds, and the ring's
/// indices and flags in guest memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueState {
    /// The datapath may use it (started, enabled, its rings and memory known).
    pub running: bool,
    /// Started (kick received, not stopped).
    pub started: bool,
    /// Enabled (SET_VRING_ENABLE, or started without PROTOCOL_FEATURES).
    pub enabled: bool,
    /// Entries (SET_VRING_NUM's; [`MAX_QUEUE_SIZE`] until the frontend sets it).
    pub size: u16,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// The device's next available entry to take.
    pub next_avail: u16,
    /// The device's next used entry to write.
    pub next_used: u16,
    /// The used index at the device's last signal decision.
    pub signalled_used: u16,
    /// The driver's available index as the device last read it.
    pub avail_seen: u16,
    /// A kick eventfd is set.
    pub kick_fd: bool,
    /// A call eventfd is set.
    pub call_fd: bool,
    /// The ring in guest memory, while the queue is ready.
    pub guest: Option<GuestRing>,
}

/// A split ring's indices and flags as they are in guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestRing {
    /// The driver's available index (`avail->idx`).
    pub avail_idx: u16,
    /// The available ring's flags (`VRING_AVAIL_F_NO_INTERRUPT`).
    pub avail_flags: u16,
    /// The driver's `used_event` (EVENT_IDX: signal once the used index passes it).
    pub used_event: u16,
    /// The used index the device published (`used->idx`).
    pub used_idx: u16,
    /// The used ring's flags (`VRING_USED_F_NO_NOTIFY`).
    pub used_flags: u16,
    /// The device's `avail_event` (EVENT_IDX: kick once the available index passes it).
    pub avail_event: u16,
}

/// A virtqueue of one connection.
#[derive(Debug)]
pub struct Vring {
    queue: Queue,
    size: u16,
    addrs: Option<RingAddresses>,
    base: u16,
    kick: Option<Arc<EventFd>>,
    call: Option<EventFd>,
    enabled: bool,
    started: bool,
    positioned: bool,
    ram: Option<GuestRam>,
    /// The descriptor table, available ring and used ring in host memory, while the queue is
    /// ready (translated when it was activated).
    rings: Option<Pinned<3>>,
    features: u64,
    signalled_used: Wrapping<u16>,
    /// The driver's available index as last read (see [`Ring::pop_head`]).
    avail_seen: Wrapping<u16>,
    /// How long frames may still wait here for receive buffers.
    starvation: Starvation,
    generation: u64,
}

impl Default for Vring {
    fn default() -> Self {
        Vring {
            // MAX_QUEUE_SIZE is a power of two, which is all Queue::new checks.
            queue: Queue::new(MAX_QUEUE_SIZE).expect("MAX_QUEUE_SIZE is a valid queue size"),
            size: MAX_QUEUE_SIZE,
            addrs: None,
            base: 0,
            kick: None,
            call: None,
            enabled: false,
            started: false,
            positioned: false,
            ram: None,
            rings: None,
            features: 0,
            signalled_used: Wrapping(0),
            avail_seen: Wrapping(0),
            starvation: Starvation::default(),
            generation: 0,
        }
    }
}

impl Vring {
    /// Back to the state of a new connection (keeps the generation counter moving).
    pub fn reset(&mut self) {
        let generation = self.generation + 1;
        *self = Vring {
            generation,
            ..Vring::default()
        };
    }

    /// SET_VRING_NUM.
    pub fn set_size(&mut self, num: u32) -> Result<(), VringError> {
        match u16::try_from(num) {
            Ok(n) if n != 0 && n <= MAX_QUEUE_SIZE && n.is_power_of_two() => {
                self.size = n;
                Ok(())
            }
            _ => Err(VringError::InvalidSize(num)),
        }
    }

    /// SET_VRING_ADDR.
    pub fn set_addresses(&mut self, addrs: RingAddresses) {
        self.addrs = Some(addrs);
    }

    /// SET_VRING_BASE.
    pub fn set_base(&mut self, base: u32) -> Result<(), VringError> {
        self.base = u16::try_from(base).map_err(|_| VringError::InvalidBase(base))?;
        Ok(())
    }

    /// SET_VRING_CALL: the eventfd to signal used buffers with (`None`: no signalling).
    pub fn set_call(&mut self, call: Option<EventFd>) {
        self.call = call;
    }

    /// SET_VRING_KICK: starts the ring. Without PROTOCOL_FEATURES the ring is enabled as it
    /// starts; with it, SET_VRING_ENABLE decides.
    pub fn start(&mut self, kick: Option<EventFd>, protocol_features: bool) {
        self.kick = kick.map(Arc::new);
        self.started = true;
        self.positioned = false;
        if !protocol_features {
            self.enabled = true;
        }
        self.generation += 1;
    }

    /// SET_VRING_ENABLE.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        self.generation += 1;
    }

    /// GET_VRING_BASE: stops the ring and returns where the next buffer will be taken from.
    ///
    /// The datapath completes all work on a ring while it holds the ring's lock, so nothing is
    /// in flight when the connection thread gets here.
    pub fn stop(&mut self) -> u16 {
        let next = if self.positioned {
            // Entries written but not yet published (a batch in progress) become the driver's.
            if let Some(ring) = self.ring() {
                ring.publish_used();
            }
            self.queue.next_avail()
        } else {
            self.base
        };
        self.started = false;
        self.positioned = false;
        self.kick = None;
        self.queue.set_ready(false);
        self.base = next;
        self.generation += 1;
        next
    }

    /// SET_FEATURES: the acked virtio features.
    pub fn set_features(&mut self, features: u64) {
        self.features = features;
        self.queue
            .set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
    }

    /// Sets the guest memory and (re)computes the ring's guest addresses from `table`.
    pub fn set_memory(&mut self, mem: Option<Arc<GuestMemoryMmap>>, table: &MemoryTable) {
        self.ram = mem.map(GuestRam::new);
        self.activate(table);
    }

    /// Makes the queue usable when the ring is started and everything it needs is known.
    ///
    /// The first time a started ring becomes usable its position is set: from the base the
    /// frontend sent, unless that differs from the used index in guest memory, in which case
    /// both next_avail and next_used start at the used index. That is what a frontend that
    /// lost track (QEMU after a backend crash sends the used index; cloud-hypervisor the avail
    /// index; DPDK zero) needs: TX buffers the guest posted since are processed, RX buffers in
    /// flight at the crash are not returned.
    pub fn activate(&mut self, table: &MemoryTable) {
        self.generation += 1;
        self.queue.set_ready(false);
        self.rings = None;
        let (Some(ram), Some(addrs), true) = (&self.ram, self.addrs, self.started) else {
            return;
        };
        let mem = ram.memory();
        let (Some(desc), Some(avail), Some(used)) = (
            table.va_to_gpa(addrs.desc),
            table.va_to_gpa(addrs.avail),
            table.va_to_gpa(addrs.used),
        ) else {
            return;
        };
        let q = &mut self.queue;
        q.set_size(self.size);
        if q.try_set_desc_table_address(GuestAddress(desc)).is_err()
            || q.try_set_avail_ring_address(GuestAddress(avail)).is_err()
            || q.try_set_used_ring_address(GuestAddress(used)).is_err()
        {
            return;
        }
        q.set_ready(true);
        if !q.is_valid(mem) {
            q.set_ready(false);
            return;
        }
        // The datapath reaches each part of the ring through one host memory slice.
        let [desc_len, avail_len, used_len] = ring_lens(q.size());
        let parts = [
            (q.desc_table(), desc_len),
            (q.avail_ring(), avail_len),
            (q.used_ring(), used_len),
        ];
        let Some(rings) = ram.pin(parts) else {
            warn!("a virtqueue's rings are not each in one memory region; queue not started");
            q.set_ready(false);
            return;
        };
        if !self.positioned {
            let Ok(used_idx) = q.used_idx(mem, Ordering::Acquire) else {
                q.set_ready(false);
                return;
            };
            let start = if used_idx.0 == self.base {
                self.base
            } else {
                used_idx.0
            };
            q.set_next_avail(start);
            q.set_next_used(start);
            self.signalled_used = Wrapping(start);
            self.positioned = true;
        }
        // Read the driver's index afresh before taking chains.
        self.avail_seen = Wrapping(q.next_avail());
        self.rings = Some(rings);
    }

    /// Whether the datapath may use this ring now.
    pub fn is_running(&self) -> bool {
        self.enabled && self.queue.ready() && self.ram.is_some()
    }

    /// Whether the ring was started (kick received, not stopped).
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Whether the ring is enabled.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The kick eventfd, for the worker's epoll set.
    pub fn kick(&self) -> Option<&Arc<EventFd>> {
        self.kick.as_ref()
    }

    /// Changes whenever the ring's configuration or state changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The acked virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The guest's memory, while the ring has it.
    #[inline]
    pub fn ram(&self) -> Option<&GuestRam> {
        self.ram.as_ref()
    }

    /// The ring's state, with its indices in guest memory while it is ready (plain loads; the
    /// ring is not changed).
    pub fn state(&mut self) -> QueueState {
        let guest = self.ring().and_then(|ring| ring.guest());
        QueueState {
            running: self.is_running(),
            started: self.started,
            enabled: self.enabled,
            size: self.size,
            event_idx: self.queue.event_idx_enabled(),
            next_avail: self.queue.next_avail(),
            next_used: self.queue.next_used(),
            signalled_used: self.signalled_used.0,
            avail_seen: self.avail_seen.0,
            kick_fd: self.kick.is_some(),
            call_fd: self.call.is_some(),
            guest,
        }
    }

    /// The ring for the datapath, if it is running: its queue position and its three parts in
    /// host memory (translated when the queue was activated: a few loads per call).
    #[inline]
    pub fn parts(&mut self) -> Option<Ring<'_>> {
        if !self.is_running() {
            return None;
        }
        self.ring()
    }

    /// The ring's parts in host memory, while the queue is ready (running or not).
    #[inline]
    fn ring(&mut self) -> Option<Ring<'_>> {
        if !self.queue.ready() {
            return None;
        }
        let [desc, avail, used] = self.rings.as_ref()?.slices();
        Some(Ring {
            queue: &mut self.queue,
            mem: self.ram.as_ref()?,
            desc,
            avail,
            used,
            avail_seen: &mut self.avail_seen,
        })
    }

    /// Notes that a frame found no receive buffers at `now`; returns whether it may wait for
    /// some ([`Starvation`]).
    pub fn may_wait(&mut self, now: Instant) -> bool {
        self.starvation.may_wait(now)
    }

    /// Notes that a frame was delivered (reads the clock only after a dry spell).
    #[inline]
    pub fn fed(&mut self) {
        if self.starvation.is_dry() {
            self.starvation.fed(Instant::now());
        }
    }

    /// Asks the driver to kick when it makes buffers available (a receive queue a frame waits
    /// for, a transmit queue the worker stops polling); returns true if some arrived meanwhile.
    pub fn ask_for_buffers(&mut self) -> bool {
        self.parts().is_some_and(|mut ring| ring.enable_kicks())
    }

    /// Whether the running ring has chains the datapath has not taken (a polling worker's
    /// look, without a kick).
    pub fn has_avail(&mut self) -> bool {
        self.parts().is_some_and(|ring| ring.has_avail())
    }

    /// Publishes the used entries added since the last call (while the ring runs) and signals
    /// the guest if the driver wants to hear about them (EVENT_IDX `used_event`, or the
    /// NO_INTERRUPT flag).
    pub fn notify(&mut self) {
        let running = self.is_running();
        let new = Wrapping(self.queue.next_used());
        let old = self.signalled_used;
        if new == old {
            return;
        }
        let event_idx = self.queue.event_idx_enabled();
        let Some(ring) = self.ring() else {
            return;
        };
        // A stopped ring had its entries published by `stop`; its memory may be the
        // frontend's to reuse by now.
        if running {
            ring.publish_used();
        }
        // The used index store must be visible before the driver's suppression field is read.
        fence(Ordering::SeqCst);
        let wanted = if event_idx {
            match ring
                .avail
                .load::<u16>(ring.used_event_at(), Ordering::Relaxed)
            {
                Ok(used_event) => {
                    let used_event = Wrapping(u16::from_le(used_event));
                    new - used_event - Wrapping(1) < new - old
                }
                Err(_) => true,
            }
        } else {
            match ring.avail.load::<u16>(0, Ordering::Relaxed) {
                Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0,
                Err(_) => true,
            }
        };
        self.signalled_used = new;
        if wanted {
            if let Some(call) = &self.call {
                // A full eventfd counter already wakes the guest; nothing to do on error.
                let _ = call.write(1);
            }
        }
    }
}

/// A running ring as the datapath uses it while it holds the vring's lock: the queue's
/// position, the guest memory, and the descriptor table, available ring and used ring as host
/// memory slices, each translated (and bounds-checked) once, when the queue was activated,
/// instead of on every access.
///
/// The available index is read once and remembered (in the vring): it is read again only when
/// the chains it announced are all taken.
#[derive(Debug)]
pub struct Ring<'a> {
    queue: &'a mut Queue,
    mem: &'a GuestRam,
    desc: VolatileSlice<'a, ()>,
    avail: VolatileSlice<'a, ()>,
    used: VolatileSlice<'a, ()>,
    avail_seen: &'a mut Wrapping<u16>,
}

/// Bytes of a split ring's parts for `size` entries: descriptor table, available ring (flags,
/// index, entries, used_event), used ring (flags, index, entries, avail_event).
fn ring_lens(size: u16) -> [usize; 3] {
    let n = usize::from(size);
    [16 * n, 6 + 2 * n, 6 + 8 * n]
}

impl<'a> Ring<'a> {
    /// The guest memory the ring's buffers are in.
    pub fn mem(&self) -> &'a GuestRam {
        self.mem
    }

    /// Entries in the ring.
    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    /// The descriptor table.
    pub fn desc_table(&self) -> VolatileSlice<'a, ()> {
        self.desc
    }

    /// Chains the driver made available that are not taken yet (as far as this ring has read
    /// the available index; none if that index is corrupt).
    #[inline]
    fn left(&self) -> u16 {
        let left = (*self.avail_seen - Wrapping(self.queue.next_avail())).0;
        if left > self.queue.size() {
            0
        } else {
            left
        }
    }

    /// The head in the available ring `ahead` entries past the next one to take (which the
    /// caller checked the driver made available).
    #[inline]
    fn head_after(&self, ahead: u16) -> Option<u16> {
        self.head_at(self.queue.next_avail().wrapping_add(ahead))
            .ok()
    }

    /// The head in the available ring at index `at` (which the caller checked the driver made
    /// available, with the index's Acquire load); `AvailCorrupt` if its slot is not in the
    /// ring's memory.
    #[inline]
    fn head_at(&self, at: u16) -> Result<u16, VringError> {
        // The size is a power of two: the mask keeps the slot inside the ring.
        let slot = usize::from(at & (self.queue.size() - 1));
        // A plain volatile read (inlined; the index's Acquire load orders it).
        let head = self
            .avail
            .get_ref::<u16>(4 + 2 * slot)
            .map_err(|_| VringError::AvailCorrupt)?
            .load();
        Ok(u16::from_le(head))
    }

    /// Prefetches the receive buffers that come next (a hint, with no other effect): the
    /// descriptor of the chain after next and, for writing, the first 128 bytes of the next
    /// chain's first buffer. The driver wrote the descriptor and read the buffer's last frame
    /// on its own CPU; asking for them a chain early overlaps fetching them with the copy into
    /// the current buffer instead of waiting for each in turn. (On a transmit queue, whose
    /// buffers the device only reads, the same prefetch cost more than it saved.)
    #[inline]
    pub fn prefetch_next(&self) {
        let left = self.left();
        if left == 0 {
            return;
        }
        if left > 1 {
            if let Some(after) = self.head_after(1) {
                sys::prefetch(&self.desc, 16 * usize::from(after), false);
            }
        }
        let Some(next) = self.head_after(0) else {
            return;
        };
        if let Ok(desc) = self.desc.get_ref::<u64>(16 * usize::from(next)) {
            self.mem.prefetch_for_write(u64::from_le(desc.load()), 2);
        }
    }

    /// Returns the last `count` chain heads taken back to the available ring (the frame could
    /// not be delivered after all).
    pub fn unpop(&mut self, count: u16) {
        let next = Wrapping(self.queue.next_avail()) - Wrapping(count);
        self.queue.set_next_avail(next.0);
    }

    /// Takes the next available chain head, if any.
    ///
    /// `Err` when the driver's available index is more than a queue size ahead of ours: the
    /// ring is corrupt and nothing can be taken from it.
    pub fn pop_head(&mut self) -> Result<Option<u16>, VringError> {
        let next = Wrapping(self.queue.next_avail());
        let size = self.queue.size();
        if *self.avail_seen == next {
            // Acquire: the entries (and descriptors) the index announces are read after it.
            let idx = self
                .avail
                .load::<u16>(2, Ordering::Acquire)
                .map_err(|_| VringError::AvailCorrupt)?;
            let idx = Wrapping(u16::from_le(idx));
            if (idx - next).0 > size {
                return Err(VringError::AvailCorrupt);
            }
            *self.avail_seen = idx;
            if idx == next {
                return Ok(None);
            }
        }
        let head = self.head_at(next.0)?;
        self.queue.set_next_avail(next.0.wrapping_add(1));
        Ok(Some(head))
    }

    /// Writes `elems` to the used ring and publishes them (and any written before) with one
    /// index update.
    pub fn add_used(&mut self, elems: &[UsedElem]) {
        if elems.is_empty() {
            return;
        }
        self.push_used(elems);
        self.publish_used();
    }

    /// Writes `elems` to the used ring without publishing them: the driver sees them when the
    /// used index is next stored ([`Vring::notify`], [`Ring::add_used`], [`Vring::stop`]).
    /// The frames of a batch delivered into one receive queue are published once, when the
    /// batch signals the guest, instead of with a store (and a cache line the driver polls
    /// taken back) per frame.
    ///
    /// The ring's memory is checked to hold every slot once, then each entry is one plain
    /// store.
    #[inline]
    pub fn push_used(&mut self, elems: &[UsedElem]) {
        let size = self.queue.size();
        let next = self.queue.next_used();
        // Always true: the slice was checked to hold every slot when it was resolved.
        if self.used.len() >= 4 + 8 * usize::from(size) {
            let slots = self
                .used
                .ptr_guard_mut()
                .as_ptr()
                .wrapping_add(4)
                .cast::<u64>();
            for (i, e) in elems.iter().enumerate() {
                let slot = usize::from(next.wrapping_add(i as u16) & (size - 1));
                let raw = u64::from(e.head) | u64::from(e.len) << 32;
                // SAFETY: `slot < size` and the slice holds `4 + 8 * size` bytes of guest
                // memory (checked above), valid for writes while the ring is borrowed; the
                // store is unaligned, so any address is allowed.
                unsafe { slots.add(slot).write_unaligned(raw.to_le()) };
            }
        }
        self.queue
            .set_next_used(next.wrapping_add(elems.len() as u16));
    }

    /// Stores the used index: every entry written so far becomes the driver's.
    fn publish_used(&self) {
        // The entries must be visible before the index that publishes them.
        let _ = self
            .used
            .store(self.queue.next_used().to_le(), 2, Ordering::Release);
    }

    /// Where the driver's `used_event` is in the available ring: after its entries.
    fn used_event_at(&self) -> usize {
        4 + 2 * usize::from(self.queue.size())
    }

    /// Where the device's `avail_event` is in the used ring: after its entries.
    fn avail_event_at(&self) -> usize {
        4 + 8 * usize::from(self.queue.size())
    }

    /// The indices and flags in guest memory, as they are now.
    fn guest(&self) -> Option<GuestRing> {
        let load = |part: &VolatileSlice<'_, ()>, at| {
            let v = part.load::<u16>(at, Ordering::Acquire).ok()?;
            Some(u16::from_le(v))
        };
        Some(GuestRing {
            avail_flags: load(&self.avail, 0)?,
            avail_idx: load(&self.avail, 2)?,
            used_event: load(&self.avail, self.used_event_at())?,
            used_flags: load(&self.used, 0)?,
            used_idx: load(&self.used, 2)?,
            avail_event: load(&self.used, self.avail_event_at())?,
        })
    }

    /// Stops driver notifications (kicks) while the worker drains the ring.
    pub fn disable_kicks(&mut self) {
        // With EVENT_IDX the driver kicks once past avail_event, which is left where it was.
        if !self.queue.event_idx_enabled() {
            let flag = VRING_USED_F_NO_NOTIFY as u16;
            let _ = self.used.store(flag.to_le(), 0, Ordering::Relaxed);
        }
    }

    /// Whether the driver made chains available past the ones taken.
    pub fn has_avail(&self) -> bool {
        self.avail
            .load::<u16>(2, Ordering::Relaxed)
            .is_ok_and(|idx| u16::from_le(idx) != self.queue.next_avail())
    }

    /// Re-enables kicks: the driver kicks when it makes an entry available past the ones
    /// available now. Returns true if chains past the ones taken are available (drain again).
    pub fn enable_kicks(&mut self) -> bool {
        if self.queue.event_idx_enabled() {
            // Past the entries available now, not past the ones taken: a receive queue that
            // holds a few buffers, too few for the frame waiting, is kicked for the next one.
            let avail = self
                .avail
                .load::<u16>(2, Ordering::Relaxed)
                .map_or(self.queue.next_avail(), u16::from_le);
            let _ = self
                .used
                .store(avail.to_le(), self.avail_event_at(), Ordering::Relaxed);
        } else {
            let _ = self.used.store(0u16, 0, Ordering::Relaxed);
        }
        // The store must be visible before the index is read again, or a chain made available
        // in between would get neither a kick nor a look.
        fence(Ordering::SeqCst);
        self.has_avail()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{guest_memory, identity_table, TestRing};
    use vm_memory::Address;

    #[test]
    fn size_must_be_power_of_two_within_limit() {
        let mut v = Vring::default();
        assert!(v.set_size(0).is_err());
        assert!(v.set_size(100).is_err());
        assert!(v.set_size(2048).is_err());
        assert!(v.set_size(256).is_ok());
        assert!(v.set_base(70000).is_err());
    }

    fn configured(ring: &TestRing, mem: Arc<GuestMemoryMmap>, table: &MemoryTable) -> Vring {
        let mut v = Vring::default();
        v.set_size(16).unwrap();
        v.set_addresses(ring.addresses());
        v.set_memory(Some(mem), table);
        v
    }

    #[test]
    fn runs_only_when_started_and_enabled() {
        let mem = guest_memory();
        let ring = TestRing::new(&mem, 0x10000, 16);
        let table = identity_table();
        let mut v = configured(&ring, mem.clone(), &table);
        assert!(!v.is_running());
        v.set_enabled(true);
        assert!(!v.is_running(), "not started yet");
        v.start(None, true);
        v.activate(&table);
        assert!(v.is_running());
        v.set_enabled(false);
        assert!(!v.is_running());
        // Without PROTOCOL_FEATURES the ring is enabled when it starts.
        let mut w = configured(&ring, mem.clone(), &table);
        w.start(None, false);
        w.activate(&table);
        assert!(w.is_running());
        // Memory removed: not running; back: running again.
        w.set_memory(None, &table);
        assert!(!w.is_running());
        w.set_memory(Some(mem), &table);
        assert!(w.is_running());
    }

    #[test]
    fn ring_outside_memory_does_not_run() {
        let mem = guest_memory();
        let table = identity_table();
        let mut v = Vring::default();
        v.set_size(16).unwrap();
        v.set_addresses(RingAddresses {
            desc: crate::test_util::MEM_SIZE - 0x10,
            avail: 0x1000,
            used: 0x2000,
        });
        v.start(None, false);
        v.set_memory(Some(mem), &table);
        assert!(!v.is_running());
        assert!(v.parts().is_none());
    }

    #[test]
    fn start_position_follows_used_index_when_base_differs() {
        let mem = guest_memory();
        let ring = TestRing::new(&mem, 0x10000, 16);
        mem.write_obj(5u16, GuestAddress(ring.addresses().used + 2))
            .unwrap();
        let table = identity_table();
        let mut v = configured(&ring, mem.clone(), &table);
        v.set_base(9).unwrap();
        v.start(None, false);
        v.activate(&table);
        assert_eq!(v.stop(), 5, "base 9 differs from used->idx 5: start at 5");

        let mut v = configured(&ring, mem.clone(), &table);
        v.set_base(5).unwrap();
        v.start(None, false);
        v.activate(&table);
        let r = v.parts().unwrap();
        assert_eq!((r.queue.next_avail(), r.queue.next_used()), (5, 5));
    }

    #[test]
    fn stop_returns_next_avail_and_stops() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        ring.post(&[(0x20000, 10, 0)]);
        ring.post(&[(0x20000, 10, 0)]);
        let table = identity_table();
        let mut v = configured(&ring, mem.clone(), &table);
        v.start(None, false);
        v.activate(&table);
        assert_eq!(v.parts().unwrap().pop_head().unwrap(), Some(0));
        assert_eq!(v.stop(), 1);
        assert!(!v.is_running());
        assert!(v.parts().is_none());
        // Stopped before it was ever positioned: the base is returned.
        let mut w = Vring::default();
        w.set_base(3).unwrap();
        assert_eq!(w.stop(), 3);
    }

    #[test]
    fn peeks_only_at_heads_the_driver_made_available() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        for _ in 0..3 {
            ring.post(&[(0x20000, 10, 0)]);
        }
        let mut v = ring.vring(mem.clone(), 0);
        let mut r = v.parts().unwrap();
        assert_eq!(r.left(), 0, "the index is read by pop_head");
        assert_eq!(r.pop_head().unwrap(), Some(0));
        assert_eq!(r.left(), 2);
        assert_eq!((r.head_after(0), r.head_after(1)), (Some(1), Some(2)));
        r.prefetch_next();
        assert_eq!(r.pop_head().unwrap(), Some(1));
        assert_eq!(r.left(), 1);
        assert_eq!(r.head_after(0), Some(2));
        assert_eq!(r.pop_head().unwrap(), Some(2));
        assert_eq!(r.left(), 0);
        r.prefetch_next();
    }

    #[test]
    fn corrupt_avail_index_is_an_error() {
        let mem = guest_memory();
        let ring = TestRing::new(&mem, 0x10000, 16);
        mem.write_obj(100u16, ring.mock.avail_addr().unchecked_add(2))
            .unwrap();
        let mut v = ring.vring(mem.clone(), 0);
        assert!(v.parts().unwrap().pop_head().is_err());
    }

    #[test]
    fn used_batch_is_published_once_and_notifies_per_event_idx() {
        let mem = guest_memory();
        let ring = TestRing::new(&mem, 0x10000, 16);
        let mut v = ring.vring(mem.clone(), 1 << VIRTIO_RING_F_EVENT_IDX);
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        v.set_call(Some(call.try_clone().unwrap()));
        // The driver wants a signal once used idx passes 2 (used_event = 2).
        ring.set_used_event(2);

        v.parts()
            .unwrap()
            .add_used(&[UsedElem { head: 3, len: 60 }, UsedElem { head: 4, len: 70 }]);
        assert_eq!(ring.used_idx(), 2);
        assert_eq!(ring.used(1), (4, 70));
        v.notify();
        assert!(
            call.read().is_err(),
            "used idx 2 has not passed used_event 2"
        );

        v.parts().unwrap().add_used(&[UsedElem { head: 5, len: 1 }]);
        v.notify();
        assert_eq!(call.read().unwrap(), 1);
        v.notify();
        assert!(call.read().is_err(), "nothing new since the last signal");
    }

    #[test]
    fn used_entries_that_wrap_the_ring_go_to_their_slots() {
        let mem = guest_memory();
        let ring = TestRing::new(&mem, 0x10000, 16);
        let mut v = ring.vring(mem.clone(), 0);
        let elem = |i: u16| UsedElem {
            head: i,
            len: 100 + u32::from(i),
        };
        let first: Vec<_> = (0..14).map(elem).collect();
        v.parts().unwrap().add_used(&first);
        let wrapping: Vec<_> = (14..19).map(elem).collect();
        v.parts().unwrap().add_used(&wrapping);
        assert_eq!(ring.used_idx(), 19);
        for i in 3..19 {
            assert_eq!(
                ring.used(i),
                (u32::from(i), 100 + u32::from(i)),
                "entry {i}"
            );
        }
    }

    #[test]
    fn a_queue_with_too_few_buffers_is_kicked_for_the_next_one() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        ring.post(&[(0x20000, 10, 2)]);
        ring.post(&[(0x21000, 10, 2)]);
        let mut v = ring.vring(mem.clone(), 1 << VIRTIO_RING_F_EVENT_IDX);
        let mut r = v.parts().unwrap();
        // A frame took both buffers, needed a third, and gave them back.
        assert_eq!(r.pop_head().unwrap(), Some(0));
        assert_eq!(r.pop_head().unwrap(), Some(1));
        r.unpop(2);
        assert!(r.enable_kicks(), "two buffers are still available");
        let avail_event = v.state().guest.unwrap().avail_event;
        // The driver posting a third buffer (index 2 to 3) kicks (virtio 2.7.10's
        // vring_need_event).
        let (new, old) = (Wrapping(3u16), Wrapping(2u16));
        assert!(new - Wrapping(avail_event) - Wrapping(1) < new - old);
    }

    #[test]
    fn state_shows_the_device_positions_and_the_ring_in_guest_memory() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        for _ in 0..3 {
            ring.post(&[(0x20000, 10, 0)]);
        }
        ring.set_used_event(1);
        ring.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
        let idle = Vring::default().state();
        assert!(!idle.running && !idle.started && idle.guest.is_none());

        let mut v = ring.vring(mem.clone(), 1 << VIRTIO_RING_F_EVENT_IDX);
        v.set_call(Some(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut r = v.parts().unwrap();
        assert_eq!(r.pop_head().unwrap(), Some(0));
        assert_eq!(r.pop_head().unwrap(), Some(1));
        r.add_used(&[UsedElem { head: 0, len: 0 }]);
        assert!(r.enable_kicks(), "a third chain is available");
        v.notify();
        let state = v.state();
        assert_eq!(
            state,
            QueueState {
                running: true,
                started: true,
                enabled: true,
                size: 16,
                event_idx: true,
                next_avail: 2,
                next_used: 1,
                signalled_used: 1,
                avail_seen: 3,
                kick_fd: false,
                call_fd: true,
                guest: Some(GuestRing {
                    avail_idx: 3,
                    avail_flags: VRING_AVAIL_F_NO_INTERRUPT as u16,
                    used_event: 1,
                    used_idx: 1,
                    used_flags: 0,
                    // Past the chains available, not the ones taken.
                    avail_event: 3,
                }),
            }
        );
        assert_eq!(v.state(), state, "reading the state changes nothing");
        assert_eq!(v.parts().unwrap().pop_head().unwrap(), Some(2));

        v.stop();
        let stopped = v.state();
        assert!(!stopped.running && !stopped.started && stopped.guest.is_none());
        assert_eq!(stopped.next_avail, 3);
    }

    #[test]
    fn no_interrupt_flag_suppresses_without_event_idx() {
        let mem = guest_memory();
        let ring = TestRing::new(&mem, 0x10000, 16);
        let mut v = ring.vring(mem.clone(), 0);
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        v.set_call(Some(call.try_clone().unwrap()));
        ring.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
        v.parts().unwrap().add_used(&[UsedElem { head: 0, len: 0 }]);
        v.notify();
        assert!(call.read().is_err());
        ring.set_avail_flags(0);
        v.parts().unwrap().add_used(&[UsedElem { head: 1, len: 0 }]);
        v.notify();
        assert_eq!(call.read().unwrap(), 1);
    }
}
