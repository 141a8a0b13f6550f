//! Test support: guest memory, a driver-side split queue, and vrings set up on them.
//!
//! `virtio_queue::mock::MockSplitQueue` lays its used ring over the upper half of its available
//! ring (it sizes the available ring in bytes, not entries), so the rings here use the mock for
//! the descriptor table and available ring and keep the used ring at an address of their own.

use std::sync::Arc;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::vhost_user::memory::MemoryTable;
use crate::vring::{RingAddresses, Vring};

/// Size of test guest memories.
pub const MEM_SIZE: u64 = 0x40_0000;

/// Anonymous guest memory of [`MEM_SIZE`] bytes at guest address 0.
pub fn guest_memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap())
}

/// A memory table whose translation is the identity over [`MEM_SIZE`] bytes (frontend address
/// = guest address). Its own mapping is not used by the tests.
pub fn identity_table() -> MemoryTable {
    let mut t = MemoryTable::default();
    let file = crate::vhost_user::memory::tests::backing_file(MEM_SIZE);
    t.add(&VhostUserMemoryRegion::new(0, MEM_SIZE, 0, 0), file)
        .unwrap();
    t
}

/// The driver's side of one split queue in test guest memory.
pub struct TestRing<'a> {
    /// The mock (descriptor table and available ring).
    pub mock: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    used: GuestAddress,
    len: u16,
    next_desc: u16,
}

impl<'a> TestRing<'a> {
    /// A ring of `len` entries with its structures at `base` (each ring needs 0x4000 bytes).
    pub fn new(mem: &'a GuestMemoryMmap, base: u64, len: u16) -> Self {
        TestRing {
            mock: MockSplitQueue::create(mem, GuestAddress(base), len),
            mem,
            used: GuestAddress(base + 0x3000),
            len,
            next_desc: 0,
        }
    }

    /// Where the rings are, for SET_VRING_ADDR.
    pub fn addresses(&self) -> RingAddresses {
        RingAddresses {
            desc: self.mock.desc_table_addr().raw_value(),
            avail: self.mock.avail_addr().raw_value(),
            used: self.used.raw_value(),
        }
    }

    /// A running vring on this ring (started, enabled, with `features`).
    pub fn vring(&self, mem: Arc<GuestMemoryMmap>, features: u64) -> Vring {
        let mut v = Vring::default();
        self.configure(&mut v, mem, features);
        v
    }

    /// Makes `v` a running vring on this ring.
    pub fn configure(&self, v: &mut Vring, mem: Arc<GuestMemoryMmap>, features: u64) {
        let table = identity_table();
        v.set_size(u32::from(self.len)).unwrap();
        v.set_addresses(self.addresses());
        v.set_features(features);
        v.start(None, false);
        v.set_memory(Some(mem), &table);
        assert!(v.is_running());
    }

    /// Posts a chain of `(addr, len, flags)` buffers (NEXT is set here); returns its head.
    pub fn post(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == bufs.len();
                let idx = head + i as u16;
                let (flags, next) = if last {
                    (flags, 0)
                } else {
                    (
                        flags | virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
                        idx + 1,
                    )
                };
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        self.mock.add_desc_chains(&descs, head).unwrap();
        self.next_desc = (head + bufs.len() as u16) % self.len;
        head
    }

    /// Makes `head` available again (a raw avail ring entry, for hostile tests).
    pub fn post_head(&self, head: u16) {
        let idx: u16 = self
            .mem
            .read_obj(self.mock.avail_addr().unchecked_add(2))
            .unwrap();
        let slot = self
            .mock
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % self.len));
        self.mem.write_obj(head, slot).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), self.mock.avail_addr().unchecked_add(2))
            .unwrap();
    }

    /// Writes a raw descriptor at `index` of the table.
    pub fn put_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        self.mock.desc_table().store(index, d).unwrap();
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.used.unchecked_add(2)).unwrap()
    }

    /// Used entry `i`: (head, len).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used.unchecked_add(4 + 8 * u64::from(i % self.len));
        let id: u32 = self.mem.read_obj(at).unwrap();
        let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
        (id, len)
    }

    /// Sets the driver's used_event (EVENT_IDX).
    pub fn set_used_event(&self, v: u16) {
        let at = self
            .mock
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(self.len));
        self.mem.write_obj(v, at).unwrap();
    }

    /// Sets the available ring's flags.
    pub fn set_avail_flags(&self, v: u16) {
        self.mem.write_obj(v, self.mock.avail_addr()).unwrap();
    }
}
