//! Descriptor chains a guest must not post, for checking that a backend drops and counts them
//! and keeps serving.
//!
//! [`VirtioNet::post_hostile`] writes one [`HostileChain`] into a transmit or receive queue as a
//! broken or malicious driver would, publishes it and kicks. Wherever a hostile chain points at
//! real memory, that memory holds a marker frame ([`is_marker`]: broadcast, EtherType 0x88b5,
//! payload "hostile descriptor chain"), so a test can assert that no other port ever receives
//! it. The device's answer shows up in its counters and in [`VirtioNet::hostile_returned`]:
//! the hostile chains the device gave back (with the length it claims to have written).

use thiserror::Error;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes};

use super::memory::{GuestMemory, MemoryError};
use super::net::{queue_err, NetError, VirtioNet};
use super::virtqueue::{Link, QueueError, RawDescriptor, SplitQueue, Used, DESCRIPTOR_SIZE};

/// A descriptor chain a driver must not make available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostileChain {
    /// A buffer starting past the end of guest memory.
    OutsideMemory,
    /// A buffer in the unmapped gap between the first two regions.
    InGap,
    /// A buffer that starts in memory and runs past the end of its region.
    StraddlesRegionEnd,
    /// Two descriptors whose `next` fields point at each other.
    Loop,
    /// Every free descriptor chained, the last one back to the first: following the links
    /// never ends and visits more descriptors than the queue holds.
    LongerThanQueue,
    /// A `next` index beyond the queue size.
    NextOutOfRange,
    /// An available-ring entry naming a descriptor index beyond the queue size.
    HeadOutOfRange,
    /// Flags wrong for the queue: device-writable on a transmit queue, device-readable on a
    /// receive queue.
    WrongDirection,
    /// A device-writable descriptor followed by a device-readable one.
    WritableBeforeReadable,
    /// A length of 4 GiB - 1 at a valid address.
    AbsurdLength,
    /// A single buffer of length 0.
    ZeroLength,
    /// An indirect table past the end of guest memory.
    IndirectOutsideMemory,
    /// An indirect table whose length is not a multiple of 16.
    IndirectBadLength,
    /// An indirect table of length 0.
    IndirectEmpty,
    /// An indirect descriptor that also has NEXT set.
    IndirectWithNext,
    /// An indirect table holding another indirect descriptor.
    IndirectNested,
    /// An indirect table whose entries link in a loop.
    IndirectLoop,
    /// An indirect table with more entries than the queue size.
    IndirectTooLong,
    /// An indirect table entry whose `next` is beyond the table.
    IndirectNextOutOfRange,
}

impl HostileChain {
    /// Every kind, for tests that try them all.
    pub const ALL: [HostileChain; 19] = [
        HostileChain::OutsideMemory,
        HostileChain::InGap,
        HostileChain::StraddlesRegionEnd,
        HostileChain::Loop,
        HostileChain::LongerThanQueue,
        HostileChain::NextOutOfRange,
        HostileChain::HeadOutOfRange,
        HostileChain::WrongDirection,
        HostileChain::WritableBeforeReadable,
        HostileChain::AbsurdLength,
        HostileChain::ZeroLength,
        HostileChain::IndirectOutsideMemory,
        HostileChain::IndirectBadLength,
        HostileChain::IndirectEmpty,
        HostileChain::IndirectWithNext,
        HostileChain::IndirectNested,
        HostileChain::IndirectLoop,
        HostileChain::IndirectTooLong,
        HostileChain::IndirectNextOutOfRange,
    ];
}

/// Errors of writing a hostile chain.
#[derive(Debug, Error)]
pub enum HostileError {
    /// Scratch memory for the payload or a table could not be allocated.
    #[error("cannot allocate scratch memory")]
    Memory(#[from] MemoryError),
    /// The chain could not be written into the queue.
    #[error("cannot write the chain")]
    Queue(#[from] QueueError),
    /// The chain needs what the queue or memory does not have (two regions, free descriptors).
    #[error("{0:?} cannot be built here: {1}")]
    Unsupported(HostileChain, &'static str),
}

impl From<vm_memory::GuestMemoryError> for HostileError {
    fn from(e: vm_memory::GuestMemoryError) -> Self {
        HostileError::Queue(e.into())
    }
}

const MARKER_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const MARKER_PAYLOAD: &[u8] = b"hostile descriptor chain";

/// The marker frame hostile chains carry.
pub fn marker_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0xba, 0xdd, 0x1e]);
    frame.extend_from_slice(&MARKER_ETHERTYPE);
    frame.extend_from_slice(MARKER_PAYLOAD);
    frame.resize(64, 0);
    frame
}

/// Whether `frame` is (or contains) the marker frame hostile chains carry.
pub fn is_marker(frame: &[u8]) -> bool {
    frame
        .windows(MARKER_PAYLOAD.len())
        .any(|w| w == MARKER_PAYLOAD)
}

/// Writes `chain` into `ring` (a receive queue when `receive`) and makes it available; returns
/// the head, or `None` for [`HostileChain::HeadOutOfRange`], which takes no descriptor. Payload
/// and tables come from `mem`; `hdr_len` zero bytes precede the marker frame.
pub fn write_hostile(
    ring: &mut SplitQueue,
    mem: &mut GuestMemory,
    chain: HostileChain,
    receive: bool,
    hdr_len: usize,
) -> Result<Option<u16>, HostileError> {
    use HostileChain as H;
    let mut payload = vec![0u8; hdr_len];
    payload.extend_from_slice(&marker_frame());
    let marker = mem.alloc(payload.len() as u64, 64)?;
    mem.mmap().write_slice(&payload, marker)?;
    let (addr, len) = (marker.raw_value(), payload.len() as u32);

    let next = VRING_DESC_F_NEXT as u16;
    let indirect = VRING_DESC_F_INDIRECT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let dir = if receive { write } else { 0 };
    let raw = |addr: u64, len: u32, flags: u16, link: Link| RawDescriptor {
        addr,
        len,
        flags,
        next: link,
    };
    let one = |addr: u64, len: u32, flags: u16| [raw(addr, len, flags, Link::Following)];
    let size = ring.size();
    let outside = mem.end().raw_value() + 0x10_0000;

    let descs: Vec<RawDescriptor> = match chain {
        H::OutsideMemory => one(outside, len, dir).to_vec(),
        H::InGap => {
            let layout = mem.layout();
            if layout.regions < 2 || layout.gap == 0 {
                return Err(HostileError::Unsupported(
                    chain,
                    "needs two regions with a gap",
                ));
            }
            let gap = mem.region_start(0).raw_value() + mem.region_size() + layout.gap / 2;
            one(gap, len, dir).to_vec()
        }
        H::StraddlesRegionEnd => {
            let end = mem.region_start(0).raw_value() + mem.region_size();
            one(end - 16, 4096, dir).to_vec()
        }
        H::Loop => vec![
            raw(addr, len, dir | next, Link::Following),
            raw(addr, len, dir | next, Link::Member(0)),
        ],
        H::LongerThanQueue => {
            let count = ring.num_free();
            if count < 2 {
                return Err(HostileError::Unsupported(
                    chain,
                    "needs two free descriptors",
                ));
            }
            let mut descs = vec![raw(addr, len, dir | next, Link::Following); count];
            descs[count - 1].next = Link::Member(0);
            descs
        }
        H::NextOutOfRange => one_with(addr, len, dir | next, Link::Index(size.wrapping_add(5))),
        H::HeadOutOfRange => {
            ring.push_avail(size.wrapping_add(7))?;
            return Ok(None);
        }
        H::WrongDirection => one(addr, len, if receive { 0 } else { write }).to_vec(),
        H::WritableBeforeReadable => {
            vec![
                raw(addr, len, write | next, Link::Following),
                raw(addr, len, 0, Link::Following),
            ]
        }
        H::AbsurdLength => one(addr, u32::MAX, dir).to_vec(),
        H::ZeroLength => one(addr, 0, dir).to_vec(),
        H::IndirectOutsideMemory => one(outside, 2 * DESCRIPTOR_SIZE as u32, indirect).to_vec(),
        H::IndirectBadLength => {
            let table = table(mem, &[Descriptor::new(addr, len, dir, 0)])?;
            one(table, DESCRIPTOR_SIZE as u32 + 1, indirect).to_vec()
        }
        H::IndirectEmpty => {
            let table = table(mem, &[Descriptor::new(addr, len, dir, 0)])?;
            one(table, 0, indirect).to_vec()
        }
        H::IndirectWithNext => {
            let table = table(mem, &[Descriptor::new(addr, len, dir, 0)])?;
            vec![
                raw(
                    table,
                    DESCRIPTOR_SIZE as u32,
                    indirect | next,
                    Link::Following,
                ),
                raw(addr, len, dir, Link::Following),
            ]
        }
        H::IndirectNested => {
            let inner = table(mem, &[Descriptor::new(addr, len, dir, 0)])?;
            let nested = Descriptor::new(inner, DESCRIPTOR_SIZE as u32, indirect, 0);
            let outer = table(mem, &[nested])?;
            one(outer, DESCRIPTOR_SIZE as u32, indirect).to_vec()
        }
        H::IndirectLoop => {
            let entries = [
                Descriptor::new(addr, len, dir | next, 1),
                Descriptor::new(addr, len, dir | next, 0),
            ];
            let table = table(mem, &entries)?;
            one(table, 2 * DESCRIPTOR_SIZE as u32, indirect).to_vec()
        }
        H::IndirectTooLong => {
            let count = usize::from(size) + 1;
            let entries: Vec<Descriptor> = (0..count)
                .map(|i| {
                    let last = i + 1 == count;
                    let flags = if last { dir } else { dir | next };
                    Descriptor::new(addr, len, flags, if last { 0 } else { i as u16 + 1 })
                })
                .collect();
            let table = table(mem, &entries)?;
            one(table, count as u32 * DESCRIPTOR_SIZE as u32, indirect).to_vec()
        }
        H::IndirectNextOutOfRange => {
            let table = table(mem, &[Descriptor::new(addr, len, dir | next, 5)])?;
            one(table, DESCRIPTOR_SIZE as u32, indirect).to_vec()
        }
    };
    Ok(Some(ring.add_raw(&descs)?))
}

fn one_with(addr: u64, len: u32, flags: u16, next: Link) -> Vec<RawDescriptor> {
    vec![RawDescriptor {
        addr,
        len,
        flags,
        next,
    }]
}

/// Writes an indirect table into scratch memory; returns its address.
fn table(mem: &mut GuestMemory, entries: &[Descriptor]) -> Result<u64, HostileError> {
    let at = mem.alloc(entries.len() as u64 * DESCRIPTOR_SIZE, DESCRIPTOR_SIZE)?;
    for (i, entry) in entries.iter().enumerate() {
        mem.mmap()
            .write_obj(*entry, at.unchecked_add(i as u64 * DESCRIPTOR_SIZE))?;
    }
    Ok(at.raw_value())
}

impl VirtioNet {
    /// Posts `chain` on vring `vring` (2 × pair for receive, 2 × pair + 1 for transmit; used
    /// transmit chains are reclaimed first), publishes it and kicks. Returns the head, or
    /// `None` for [`HostileChain::HeadOutOfRange`].
    pub fn post_hostile(
        &mut self,
        vring: usize,
        chain: HostileChain,
    ) -> Result<Option<u16>, NetError> {
        if vring >= self.vrings.len() {
            return Err(NetError::NoSuchPair((vring / 2) as u16));
        }
        if !vring.is_multiple_of(2) {
            self.reclaim(vring)?;
        }
        let hdr_len = self.hdr_len();
        let ring = &mut self.vrings[vring].ring;
        let head = write_hostile(ring, &mut self.mem, chain, vring.is_multiple_of(2), hdr_len)
            .map_err(|source| NetError::Hostile { vring, source })?;
        if let Some(head) = head {
            self.vrings[vring].hostile[usize::from(head)] = true;
            self.vrings[vring].hostile_in_flight += 1;
        }
        // A hostile guest kicks whether or not the device asked for it.
        self.vrings[vring]
            .ring
            .publish()
            .map_err(queue_err(vring))?;
        self.kick(vring)?;
        Ok(head)
    }

    /// The hostile chains vring `vring` got back from the device, oldest first, and forgets
    /// them. Chains are reaped when frames are sent or received on that vring; call
    /// [`VirtioNet::reclaim_tx`] or [`VirtioNet::recv`] first.
    pub fn hostile_returned(&mut self, vring: usize) -> Vec<Used> {
        std::mem::take(&mut self.vrings[vring].hostile_used)
    }
}

#[cfg(test)]
mod tests {
    //! The device side is virtio-queue's `Queue`: each chain must look, to the reference
    //! implementation, like the fault it is named for.
    use super::*;
    use crate::frontend::memory::MemoryLayout;
    use crate::frontend::virtqueue::reference_device;
    use virtio_queue::{Queue, QueueT};

    fn setup() -> (GuestMemory, SplitQueue, Queue) {
        let mut mem = GuestMemory::new(&MemoryLayout::default(), 1 << 20).unwrap();
        let ring = SplitQueue::new(&mut mem, 16).unwrap();
        let queue = reference_device(&mem, &ring);
        (mem, ring, queue)
    }

    /// What virtio-queue sees of a chain: the write flags of the descriptors it walks and
    /// whether a reader over it can be built.
    #[derive(Debug)]
    struct Seen {
        walked: usize,
        readable: bool,
        write_flags: Vec<bool>,
    }

    fn post(chain: HostileChain) -> Seen {
        let (mut mem, mut ring, mut queue) = setup();
        write_hostile(&mut ring, &mut mem, chain, false, 12).unwrap();
        ring.publish().unwrap();
        let popped = queue
            .pop_descriptor_chain(mem.mmap())
            .expect("a chain is available");
        let write_flags: Vec<bool> = popped.clone().map(|d| d.is_write_only()).collect();
        Seen {
            walked: write_flags.len(),
            readable: popped.reader(mem.mmap()).is_ok(),
            write_flags,
        }
    }

    #[test]
    fn virtio_queue_sees_each_fault() {
        use HostileChain as H;
        for chain in [
            H::OutsideMemory,
            H::InGap,
            H::StraddlesRegionEnd,
            H::AbsurdLength,
        ] {
            let seen = post(chain);
            assert!(seen.walked == 1 && !seen.readable, "{chain:?}: {seen:?}");
        }
        // Loops run until virtio-queue's limit: the queue size, or the table size.
        assert_eq!(post(H::Loop).walked, 16);
        assert_eq!(post(H::LongerThanQueue).walked, 16);
        assert_eq!(post(H::IndirectLoop).walked, 2);
        // virtio-queue accepts indirect tables longer than the queue (up to 65535 entries).
        assert_eq!(post(H::IndirectTooLong).walked, 17);
        assert_eq!(post(H::WrongDirection).write_flags, [true]);
        assert_eq!(post(H::WritableBeforeReadable).write_flags, [true, false]);
        let zero = post(H::ZeroLength);
        assert!(zero.walked == 1 && zero.readable);
        for chain in [H::NextOutOfRange, H::IndirectNextOutOfRange] {
            assert_eq!(
                post(chain).walked,
                1,
                "{chain:?}: the walk stops at the bad link"
            );
        }
        for chain in [
            H::HeadOutOfRange,
            H::IndirectOutsideMemory,
            H::IndirectBadLength,
            H::IndirectEmpty,
            H::IndirectNested,
        ] {
            assert_eq!(post(chain).walked, 0, "{chain:?}: nothing to walk");
        }
    }

    #[test]
    fn marker_is_recognised() {
        assert!(is_marker(&marker_frame()));
        assert!(!is_marker(&[0xff; 64]));
    }

    #[test]
    fn indirect_with_next_has_two_descriptors() {
        let (mut mem, mut ring, _) = setup();
        let head = write_hostile(
            &mut ring,
            &mut mem,
            HostileChain::IndirectWithNext,
            false,
            12,
        )
        .unwrap()
        .unwrap();
        let desc: Descriptor = mem
            .mmap()
            .read_obj(ring.rings().desc.unchecked_add(u64::from(head) * 16))
            .unwrap();
        assert!(desc.refers_to_indirect_table() && desc.has_next());
        assert_eq!(ring.num_free(), 14);
    }
}
