//! The driver side of a split virtqueue (virtio 1.x, 2.7): descriptor table, available and used
//! rings laid out in guest memory, a free list of descriptors, publication with the kick decision
//! (`avail_event` with EVENT_IDX, `VRING_USED_F_NO_NOTIFY` without), reaping of used elements,
//! and interrupt suppression (`used_event` with EVENT_IDX, `VRING_AVAIL_F_NO_INTERRUPT` without).
//!
//! The queue keeps its own record of which descriptors make up each chain in flight, so chains
//! whose links were written wrong on purpose (loops, out-of-range `next`) are still freed exactly
//! when the device returns their head. It never trusts what the device writes: a used element
//! naming a descriptor that is not the head of a chain in flight is reported as an error.

use std::sync::atomic::{fence, Ordering};

use thiserror::Error;
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, VolatileMemoryError};

use super::memory::{GuestMemory, MappedBlock, MemoryError};

/// Bytes per descriptor.
pub const DESCRIPTOR_SIZE: u64 = 16;
const RING_ALIGN: u64 = 4096;

/// One buffer of a chain: where it is and whether the device may write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (`VRING_DESC_F_WRITE`).
    pub writable: bool,
}

/// What a raw descriptor's `next` field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The table index of the chain's following descriptor (0 for the last one).
    Following,
    /// The table index of the chain's `k`-th descriptor (0 = head): makes loops.
    Member(usize),
    /// This raw table index, in range or not.
    Index(u16),
}

/// A descriptor written exactly as given, flags included, for chains a driver must not build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDescriptor {
    /// Raw address field.
    pub addr: u64,
    /// Raw length field.
    pub len: u32,
    /// Raw flags (`VRING_DESC_F_*`).
    pub flags: u16,
    /// The `next` field.
    pub next: Link,
}

/// A used element the device returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index of the chain.
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// Errors of the split virtqueue driver.
#[derive(Debug, Error)]
pub enum QueueError {
    /// The queue size is not a power of two in 1..=32768.
    #[error("invalid queue size {0}")]
    Size(u16),
    /// The rings could not be allocated.
    #[error("cannot allocate the rings")]
    Alloc(#[source] MemoryError),
    /// A ring or descriptor could not be accessed.
    #[error("guest memory access failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// Not enough free descriptors.
    #[error("{needed} descriptors needed, {free} free")]
    Full {
        /// Descriptors needed.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// A chain without descriptors.
    #[error("empty chain")]
    EmptyChain,
    /// The device returned a head that is not a chain in flight (a device bug).
    #[error("device returned descriptor {id}, which is not the head of a chain in flight")]
    BadUsedId {
        /// The id from the used element.
        id: u32,
    },
    /// The device advanced the used index past the chains in flight (a device bug).
    #[error("used index moved from {last_used} to {used_idx} with {in_flight} chains in flight")]
    UsedOverrun {
        /// Last used index reaped.
        last_used: u16,
        /// Used index the device published.
        used_idx: u16,
        /// Chains in flight.
        in_flight: usize,
    },
}

impl From<vm_memory::GuestMemoryError> for QueueError {
    fn from(e: vm_memory::GuestMemoryError) -> Self {
        QueueError::Memory(e)
    }
}

impl From<VolatileMemoryError> for QueueError {
    fn from(e: VolatileMemoryError) -> Self {
        QueueError::Memory(e.into())
    }
}

/// Guest-physical addresses of a queue's three parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddresses {
    /// Descriptor table.
    pub desc: GuestAddress,
    /// Available ring.
    pub avail: GuestAddress,
    /// Used ring.
    pub used: GuestAddress,
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    size: u16,
    rings: RingAddresses,
    /// The three rings, resolved once to the mapping that holds them.
    desc: MappedBlock,
    avail: MappedBlock,
    used: MappedBlock,
    event_idx: bool,
    /// Free descriptor indices, used as a stack.
    free: Vec<u16>,
    /// Shadow links between the descriptors of each chain in flight.
    next: Vec<u16>,
    /// Per head: number of descriptors of its chain in flight, 0 when not a head in flight.
    chain_len: Vec<u16>,
    in_flight: usize,
    /// Next available-ring slot (the driver's shadow of `avail->idx`).
    avail_idx: u16,
    /// `avail->idx` as last published.
    published_idx: u16,
    /// Used index up to which elements were reaped.
    last_used: u16,
}

impl SplitQueue {
    /// Allocates and zeroes the rings of a queue of `size` entries in `mem`.
    pub fn new(mem: &mut GuestMemory, size: u16) -> Result<Self, QueueError> {
        if !size.is_power_of_two() || size > 32768 {
            return Err(QueueError::Size(size));
        }
        let n = usize::from(size);
        let (desc, desc_block) = alloc_ring(mem, n * DESCRIPTOR_SIZE as usize)?;
        let (avail, avail_block) = alloc_ring(mem, 6 + 2 * n)?;
        let (used, used_block) = alloc_ring(mem, 6 + 8 * n)?;
        let mut queue = SplitQueue {
            size,
            rings: RingAddresses { desc, avail, used },
            desc: desc_block,
            avail: avail_block,
            used: used_block,
            event_idx: false,
            free: Vec::with_capacity(size.into()),
            next: vec![0; size.into()],
            chain_len: vec![0; size.into()],
            in_flight: 0,
            avail_idx: 0,
            published_idx: 0,
            last_used: 0,
        };
        queue.reset()?;
        Ok(queue)
    }

    /// Zeroes the rings and forgets every chain in flight, as a driver does at device reset.
    pub fn reset(&mut self) -> Result<(), QueueError> {
        for ring in [&self.desc, &self.avail, &self.used] {
            ring.zero()?;
        }
        self.free.clear();
        self.free.extend((0..self.size).rev());
        self.chain_len.fill(0);
        self.in_flight = 0;
        self.avail_idx = 0;
        self.published_idx = 0;
        self.last_used = 0;
        Ok(())
    }

    /// Uses `used_event`/`avail_event` (VIRTIO_F_EVENT_IDX negotiated) or the ring flags.
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// Whether EVENT_IDX is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the rings are.
    pub fn rings(&self) -> RingAddresses {
        self.rings
    }

    /// Free descriptors.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Chains made available and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The driver's available index (including entries not yet published).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index up to which the driver reaped.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// The used index the device last published.
    pub fn used_idx(&self) -> Result<u16, QueueError> {
        Ok(self.used.load_u16(2, Ordering::Acquire)?)
    }

    /// The head the next chain made available gets, if a descriptor is free.
    pub fn next_head(&self) -> Option<u16> {
        self.free.last().copied()
    }

    /// Makes a chain of `segments` available (not yet published); returns its head.
    pub fn add(&mut self, segments: &[Segment]) -> Result<u16, QueueError> {
        let head = self.take(segments.len())?;
        let mut index = head;
        for (i, seg) in segments.iter().enumerate() {
            let more = i + 1 < segments.len();
            let mut flags = if seg.writable { VRING_DESC_F_WRITE } else { 0 };
            let mut next = 0;
            if more {
                flags |= VRING_DESC_F_NEXT;
                next = self.next[usize::from(index)];
            }
            let desc = Descriptor::new(seg.addr.raw_value(), seg.len, flags as u16, next);
            self.write_descriptor(index, desc)?;
            index = next;
        }
        self.push_avail(head)?;
        Ok(head)
    }

    /// Makes available one descriptor pointing at an indirect table written at `table` with
    /// `segments`; returns its head.
    pub fn add_indirect(
        &mut self,
        mem: &GuestMemory,
        table: GuestAddress,
        segments: &[Segment],
    ) -> Result<u16, QueueError> {
        if segments.is_empty() {
            return Err(QueueError::EmptyChain);
        }
        for (i, seg) in segments.iter().enumerate() {
            let more = i + 1 < segments.len();
            let mut flags = if seg.writable { VRING_DESC_F_WRITE } else { 0 };
            if more {
                flags |= VRING_DESC_F_NEXT;
            }
            let next = if more { i as u16 + 1 } else { 0 };
            let desc = Descriptor::new(seg.addr.raw_value(), seg.len, flags as u16, next);
            let at = table.unchecked_add(i as u64 * DESCRIPTOR_SIZE);
            mem.mmap().write_obj(desc, at)?;
        }
        let len = segments.len() as u32 * DESCRIPTOR_SIZE as u32;
        let raw = RawDescriptor {
            addr: table.raw_value(),
            len,
            flags: VRING_DESC_F_INDIRECT as u16,
            next: Link::Following,
        };
        self.add_raw(&[raw])
    }

    /// Makes available a chain written exactly as `descs` says; returns its head. The
    /// descriptors are taken from the free list and given back when the device returns the head,
    /// whatever their links say.
    pub fn add_raw(&mut self, descs: &[RawDescriptor]) -> Result<u16, QueueError> {
        let head = self.take(descs.len())?;
        let member = |k: usize| (0..k).fold(head, |index, _| self.next[usize::from(index)]);
        let mut index = head;
        for (i, raw) in descs.iter().enumerate() {
            let following = if i + 1 < descs.len() {
                self.next[usize::from(index)]
            } else {
                0
            };
            let next = match raw.next {
                Link::Following => following,
                Link::Member(k) if k < descs.len() => member(k),
                Link::Member(_) => 0,
                Link::Index(raw_index) => raw_index,
            };
            let desc = Descriptor::new(raw.addr, raw.len, raw.flags, next);
            self.write_descriptor(index, desc)?;
            index = following;
        }
        self.push_avail(head)?;
        Ok(head)
    }

    /// Puts `head` in the next available-ring slot without taking any descriptor: for entries
    /// that name a descriptor the driver does not own (out of range, already in flight).
    pub fn push_avail(&mut self, head: u16) -> Result<(), QueueError> {
        let slot = self.ring_slot(self.avail_idx);
        self.avail
            .store_u16(head, 4 + 2 * slot, Ordering::Relaxed)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Publishes the chains added since the last call (`avail->idx`) and says whether the device
    /// asked to be kicked for them.
    pub fn publish(&mut self) -> Result<bool, QueueError> {
        let old = self.published_idx;
        let new = self.avail_idx;
        if old == new {
            return Ok(false);
        }
        self.avail.store_u16(new, 2, Ordering::Release)?;
        self.published_idx = new;
        // The index store must be visible before the device's suppression state is read.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let avail_event = self
                .used
                .load_u16(self.avail_event_at(), Ordering::Acquire)?;
            Ok(need_event(avail_event, new, old))
        } else {
            let flags = self.used.load_u16(0, Ordering::Acquire)?;
            Ok(u32::from(flags) & VRING_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Reaps one used element, freeing its chain's descriptors.
    pub fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        let used_idx = self.used_idx()?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        if usize::from(used_idx.wrapping_sub(self.last_used)) > self.in_flight {
            return Err(QueueError::UsedOverrun {
                last_used: self.last_used,
                used_idx,
                in_flight: self.in_flight,
            });
        }
        let slot = self.ring_slot(self.last_used);
        let [id, used_len] = self
            .used
            .read_obj::<[u32; 2]>(4 + 8 * slot)?
            .map(u32::from_le);
        let len = match usize::try_from(id).ok().and_then(|i| self.chain_len.get(i)) {
            Some(&len) if len > 0 => len,
            _ => return Err(QueueError::BadUsedId { id }),
        };
        let head = id as u16;
        let mut index = head;
        for _ in 0..len {
            self.free.push(index);
            index = self.next[usize::from(index)];
        }
        self.chain_len[usize::from(head)] = 0;
        self.in_flight -= 1;
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some(Used {
            head,
            len: used_len,
        }))
    }

    /// Asks the device for a notification at its next used element; returns whether used
    /// elements are already pending (then the caller should reap instead of waiting).
    pub fn enable_notification(&mut self) -> Result<bool, QueueError> {
        if self.event_idx {
            let at = self.used_event_at();
            self.avail
                .store_u16(self.last_used, at, Ordering::Release)?;
        } else {
            self.avail.store_u16(0, 0, Ordering::Release)?;
        }
        fence(Ordering::SeqCst);
        Ok(self.used_idx()? != self.last_used)
    }

    /// Asks the device not to notify for used elements.
    pub fn disable_notification(&mut self) -> Result<(), QueueError> {
        if self.event_idx {
            // An event index just behind what was reaped is crossed only after a full wrap.
            let behind = self.last_used.wrapping_sub(1);
            self.avail
                .store_u16(behind, self.used_event_at(), Ordering::Release)?;
        } else {
            let flags = VRING_AVAIL_F_NO_INTERRUPT as u16;
            self.avail.store_u16(flags, 0, Ordering::Release)?;
        }
        Ok(())
    }

    /// Takes `count` descriptors off the free list, links them in the shadow record and marks
    /// the first one as a head in flight.
    fn take(&mut self, count: usize) -> Result<u16, QueueError> {
        if count == 0 {
            return Err(QueueError::EmptyChain);
        }
        let free = self.free.len();
        if count > free {
            return Err(QueueError::Full {
                needed: count,
                free,
            });
        }
        // The free list is a stack: the chain is its top `count` entries, top first.
        let chain = &self.free[free - count..];
        for pair in chain.windows(2) {
            self.next[usize::from(pair[1])] = pair[0];
        }
        let head = chain[count - 1];
        self.free.truncate(free - count);
        self.chain_len[usize::from(head)] = count as u16;
        self.in_flight += 1;
        Ok(head)
    }

    fn write_descriptor(&self, index: u16, desc: Descriptor) -> Result<(), QueueError> {
        let at = usize::from(index) * DESCRIPTOR_SIZE as usize;
        Ok(self.desc.write_obj(desc, at)?)
    }

    /// The ring entry of free-running index `idx`: a mask, as the size is a power of two (a
    /// 16-bit division costs more than the rest of an entry's store).
    fn ring_slot(&self, idx: u16) -> usize {
        usize::from(idx & (self.size - 1))
    }

    /// Byte offset of `used_event` in the available ring.
    fn used_event_at(&self) -> usize {
        4 + 2 * usize::from(self.size)
    }

    /// Byte offset of `avail_event` in the used ring.
    fn avail_event_at(&self) -> usize {
        4 + 8 * usize::from(self.size)
    }
}

/// Allocates a ring of `len` bytes and resolves it.
fn alloc_ring(
    mem: &mut GuestMemory,
    len: usize,
) -> Result<(GuestAddress, MappedBlock), QueueError> {
    let addr = mem
        .alloc(len as u64, RING_ALIGN)
        .map_err(QueueError::Alloc)?;
    let block = mem.block(addr, len).map_err(QueueError::Alloc)?;
    Ok((addr, block))
}

/// The device side of `driver`'s rings as virtio-queue's `Queue`, the rust-vmm reference
/// implementation, for unit tests.
#[cfg(test)]
pub(super) fn reference_device(mem: &GuestMemory, driver: &SplitQueue) -> virtio_queue::Queue {
    use virtio_queue::QueueT;
    let mut device = virtio_queue::Queue::new(driver.size()).expect("valid queue size");
    device.set_size(driver.size());
    let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
    let r = driver.rings();
    let (lo, hi) = split(r.desc);
    device.set_desc_table_address(lo, hi);
    let (lo, hi) = split(r.avail);
    device.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(r.used);
    device.set_used_ring_address(lo, hi);
    device.set_event_idx(driver.event_idx());
    device.set_ready(true);
    assert!(device.is_valid(mem.mmap()));
    device
}

/// The virtio `vring_need_event`: whether moving an index from `old` to `new` crosses `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    //! The device side here is virtio-queue's `Queue`, the rust-vmm reference implementation.
    use super::*;
    use crate::frontend::memory::MemoryLayout;
    use virtio_queue::{Queue, QueueT};

    fn setup(size: u16, event_idx: bool) -> (GuestMemory, SplitQueue, Queue) {
        let mut mem = GuestMemory::new(&MemoryLayout::default(), 1 << 20).unwrap();
        let mut driver = SplitQueue::new(&mut mem, size).unwrap();
        driver.set_event_idx(event_idx);
        let device = reference_device(&mem, &driver);
        (mem, driver, device)
    }

    /// The next chain the device pops: its head and its descriptors.
    fn pop_chain(device: &mut Queue, mem: &GuestMemory) -> (u16, Vec<Segment>) {
        let chain = device.pop_descriptor_chain(mem.mmap()).unwrap();
        let head = chain.head_index();
        (
            head,
            chain
                .map(|d| seg(d.addr().0, d.len(), d.is_write_only()))
                .collect(),
        )
    }

    fn seg(addr: u64, len: u32, writable: bool) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
            writable,
        }
    }

    #[test]
    fn device_sees_the_chain_as_written() {
        let (mem, mut driver, mut device) = setup(8, false);
        let segs = [seg(0x1000_8000, 12, false), seg(0x1000_9000, 100, true)];
        let head = driver.add(&segs).unwrap();
        assert!(driver.publish().unwrap(), "no NO_NOTIFY flag: kick");
        assert_eq!(pop_chain(&mut device, &mem), (head, segs.to_vec()));
        device.add_used(mem.mmap(), head, 77).unwrap();
        assert_eq!(driver.pop_used().unwrap(), Some(Used { head, len: 77 }));
        assert_eq!(driver.pop_used().unwrap(), None);
        assert_eq!(driver.num_free(), 8);
    }

    #[test]
    fn indirect_table_is_followed() {
        let (mut mem, mut driver, mut device) = setup(4, false);
        let table = mem.alloc(64, 16).unwrap();
        let segs = [seg(0x1000_8000, 10, false), seg(0x1000_8100, 60, false)];
        let head = driver.add_indirect(&mem, table, &segs).unwrap();
        assert_eq!(driver.num_free(), 3, "one descriptor for an indirect chain");
        driver.publish().unwrap();
        assert_eq!(pop_chain(&mut device, &mem), (head, segs.to_vec()));
    }

    #[test]
    fn indices_wrap_around_u16() {
        let (mem, mut driver, mut device) = setup(4, true);
        for i in 0..70_000u32 {
            let head = driver.add(&[seg(0x1000_8000, i % 1000 + 1, true)]).unwrap();
            driver.publish().unwrap();
            let chain = device.pop_descriptor_chain(mem.mmap()).unwrap();
            assert_eq!(chain.head_index(), head);
            device.add_used(mem.mmap(), head, i % 1000).unwrap();
            let used = driver.pop_used().unwrap().unwrap();
            assert_eq!(
                used,
                Used {
                    head,
                    len: i % 1000
                }
            );
        }
        assert_eq!(driver.avail_idx(), (70_000u32 % 65536) as u16);
        assert_eq!(driver.in_flight(), 0);
    }

    #[test]
    fn event_idx_kick_follows_avail_event() {
        let (mem, mut driver, mut device) = setup(8, true);
        // The device asks for a kick at the next available entry.
        device.enable_notification(mem.mmap()).unwrap();
        driver.add(&[seg(0x1000_8000, 1, false)]).unwrap();
        assert!(driver.publish().unwrap());
        // Until the device re-arms, avail_event stays at 0: no kick for entries 1 and 2.
        driver.add(&[seg(0x1000_8000, 1, false)]).unwrap();
        assert!(!driver.publish().unwrap());
        driver.add(&[seg(0x1000_8000, 1, false)]).unwrap();
        assert!(!driver.publish().unwrap());
        // The device drains and re-arms at its next_avail (3).
        while device.pop_descriptor_chain(mem.mmap()).is_some() {}
        device.enable_notification(mem.mmap()).unwrap();
        driver.add(&[seg(0x1000_8000, 1, false)]).unwrap();
        assert!(driver.publish().unwrap());
    }

    #[test]
    fn event_idx_used_event_suppresses_and_requests_notifications() {
        let (mem, mut driver, mut device) = setup(8, true);
        let mut heads = Vec::new();
        for _ in 0..4 {
            heads.push(driver.add(&[seg(0x1000_8000, 64, true)]).unwrap());
        }
        driver.publish().unwrap();
        driver.disable_notification().unwrap();
        for &head in &heads[..2] {
            device.pop_descriptor_chain(mem.mmap()).unwrap();
            device.add_used(mem.mmap(), head, 1).unwrap();
            assert!(!device.needs_notification(mem.mmap()).unwrap());
        }
        assert!(
            driver.enable_notification().unwrap(),
            "two used elements pending"
        );
        driver.pop_used().unwrap().unwrap();
        driver.pop_used().unwrap().unwrap();
        assert!(!driver.enable_notification().unwrap());
        device.pop_descriptor_chain(mem.mmap()).unwrap();
        device.add_used(mem.mmap(), heads[2], 1).unwrap();
        assert!(device.needs_notification(mem.mmap()).unwrap());
    }

    #[test]
    fn flags_suppress_without_event_idx() {
        let (mem, mut driver, mut device) = setup(8, false);
        device.disable_notification(mem.mmap()).unwrap();
        driver.add(&[seg(0x1000_8000, 64, true)]).unwrap();
        assert!(!driver.publish().unwrap(), "NO_NOTIFY set by the device");
        // virtio-queue ignores VRING_AVAIL_F_NO_INTERRUPT: check the flag word itself.
        let avail = driver.rings().avail;
        let avail_flags = |mem: &GuestMemory| mem.mmap().read_obj::<u16>(avail).unwrap();
        driver.disable_notification().unwrap();
        assert_eq!(avail_flags(&mem), VRING_AVAIL_F_NO_INTERRUPT as u16);
        let head = device
            .pop_descriptor_chain(mem.mmap())
            .unwrap()
            .head_index();
        device.add_used(mem.mmap(), head, 1).unwrap();
        assert!(driver.enable_notification().unwrap());
        assert_eq!(avail_flags(&mem), 0);
    }

    #[test]
    fn looping_raw_chain_is_freed_by_the_driver_record() {
        let (mem, mut driver, mut device) = setup(8, false);
        let raw = |next| RawDescriptor {
            addr: 0x1000_8000,
            len: 16,
            flags: VRING_DESC_F_NEXT as u16,
            next,
        };
        let head = driver
            .add_raw(&[raw(Link::Following), raw(Link::Member(0))])
            .unwrap();
        driver.publish().unwrap();
        let chain = device.pop_descriptor_chain(mem.mmap()).unwrap();
        // virtio-queue stops a looping chain after queue-size descriptors.
        assert!(chain.count() <= 8);
        device.add_used(mem.mmap(), head, 0).unwrap();
        driver.pop_used().unwrap().unwrap();
        assert_eq!(driver.num_free(), 8);
    }

    #[test]
    fn bad_used_ids_are_device_bugs() {
        let (mem, mut driver, mut device) = setup(8, false);
        let head = driver.add(&[seg(0x1000_8000, 64, true)]).unwrap();
        driver.publish().unwrap();
        device.pop_descriptor_chain(mem.mmap()).unwrap();
        device.add_used(mem.mmap(), head + 1, 1).unwrap();
        assert!(matches!(driver.pop_used(), Err(QueueError::BadUsedId { id }) if id == 1));
    }

    #[test]
    fn need_event_matches_the_spec() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(10, 10, 3));
        assert!(need_event(65535, 2, 65534));
    }
}
