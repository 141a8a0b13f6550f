//! Guest memory: regions of one memfd mapped at guest-physical addresses with gaps between them,
//! as a VMM lays out RAM, and a bump allocator for rings, buffers and hostile payloads.
//!
//! All regions share one memfd, region `i` at file offset `i * region_size`, so a backend has to
//! honour `mmap_offset`; the gaps between regions make a backend translate per region.
//!
//! The driver itself translates once: rings and buffers are [`MappedBlock`]s, resolved when they
//! are allocated, so a load run's per-frame accesses skip `GuestMemoryMmap`'s region lookup.

use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use thiserror::Error;
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Address, ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, MmapRegion, VolatileMemory, VolatileMemoryError, VolatileSlice,
};

use super::sys;

const PAGE_SIZE: u64 = 4096;

/// Where guest memory sits in guest-physical address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Guest-physical address of the first region.
    pub base: u64,
    /// Number of regions (at least 1; QEMU sends 2 for a small x86 guest, at most 8 without
    /// CONFIGURE_MEM_SLOTS).
    pub regions: usize,
    /// Bytes of unmapped guest-physical space between consecutive regions.
    pub gap: u64,
}

impl Default for MemoryLayout {
    fn default() -> Self {
        MemoryLayout {
            base: 0x1000_0000,
            regions: 2,
            gap: 0x20_0000,
        }
    }
}

/// Errors of guest memory set-up and allocation.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The memfd could not be created or sized.
    #[error("cannot create the memfd backing guest memory")]
    Memfd(#[source] io::Error),
    /// The regions could not be mapped.
    #[error("cannot map guest memory regions")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// The layout has no region or overflows the address space.
    #[error("invalid memory layout {0:?}")]
    Layout(MemoryLayout),
    /// No region has `size` contiguous bytes left.
    #[error("guest memory exhausted: {size} bytes requested")]
    Exhausted {
        /// Bytes requested.
        size: u64,
    },
    /// An address is not inside guest memory.
    #[error("guest address {0:#x} is not mapped")]
    Unmapped(u64),
    /// A region could not be described for vhost-user.
    #[error("cannot describe a memory region for vhost-user")]
    Region(#[source] vhost::Error),
}

/// Guest RAM shared with the backend through a memfd.
#[derive(Debug)]
pub struct GuestMemory {
    mmap: GuestMemoryMmap,
    layout: MemoryLayout,
    region_size: u64,
    /// Allocation cursor: region index and offset inside it.
    cursor: (usize, u64),
}

impl GuestMemory {
    /// Maps `layout.regions` regions of `region_size` bytes (rounded up to a page).
    pub fn new(layout: &MemoryLayout, region_size: u64) -> Result<Self, MemoryError> {
        let region_size = region_size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let bad_layout = || MemoryError::Layout(layout.clone());
        if layout.regions == 0 || region_size == 0 {
            return Err(bad_layout());
        }
        let total = region_size
            .checked_mul(layout.regions as u64)
            .ok_or_else(bad_layout)?;
        let name = CString::new("vhost-harness-guest").expect("constant name has no NUL");
        let file = Arc::new(sys::memfd(&name, total).map_err(MemoryError::Memfd)?);
        let stride = region_size.checked_add(layout.gap).ok_or_else(bad_layout)?;
        let mut ranges = Vec::with_capacity(layout.regions);
        for i in 0..layout.regions as u64 {
            let start = stride
                .checked_mul(i)
                .and_then(|o| o.checked_add(layout.base));
            let start = start.ok_or_else(bad_layout)?;
            let offset = FileOffset::from_arc(file.clone(), i * region_size);
            ranges.push((GuestAddress(start), region_size as usize, Some(offset)));
        }
        let mmap = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
        Ok(GuestMemory {
            mmap,
            layout: layout.clone(),
            region_size,
            cursor: (0, 0),
        })
    }

    /// The mapped memory, for reads and writes with `vm_memory::Bytes`.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mmap
    }

    /// The layout this memory was created with.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// Bytes per region.
    pub fn region_size(&self) -> u64 {
        self.region_size
    }

    /// Allocates `size` bytes aligned to `align` (a power of two) inside one region.
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<GuestAddress, MemoryError> {
        let exhausted = MemoryError::Exhausted { size };
        while self.cursor.0 < self.layout.regions {
            let offset = self.cursor.1.next_multiple_of(align.max(1));
            if offset
                .checked_add(size)
                .is_some_and(|end| end <= self.region_size)
            {
                self.cursor.1 = offset + size;
                return Ok(self.region_start(self.cursor.0).unchecked_add(offset));
            }
            self.cursor = (self.cursor.0 + 1, 0);
        }
        Err(exhausted)
    }

    /// Guest-physical address of region `index`'s first byte.
    pub fn region_start(&self, index: usize) -> GuestAddress {
        let stride = self.region_size + self.layout.gap;
        GuestAddress(self.layout.base + stride * index as u64)
    }

    /// First guest-physical address after the last region.
    pub fn end(&self) -> GuestAddress {
        self.region_start(self.layout.regions - 1)
            .unchecked_add(self.region_size)
    }

    /// The regions as vhost-user describes them (SET_MEM_TABLE, ADD_MEM_REG).
    pub fn regions(&self) -> Result<Vec<VhostUserMemoryRegionInfo>, MemoryError> {
        self.mmap
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region).map_err(MemoryError::Region)
            })
            .collect()
    }

    /// The frontend's (this process's) virtual address of a guest address, as
    /// SET_VRING_ADDR carries it.
    pub fn host_address(&self, addr: GuestAddress) -> Result<u64, MemoryError> {
        let ptr = self
            .mmap
            .get_host_address(addr)
            .map_err(|_| MemoryError::Unmapped(addr.raw_value()))?;
        Ok(ptr as u64)
    }

    /// Total mapped bytes.
    pub fn size(&self) -> u64 {
        self.mmap.iter().map(|r| r.len()).sum()
    }

    /// The `len` bytes at `addr`, resolved once to the mapping that holds them all.
    pub fn block(&self, addr: GuestAddress, len: usize) -> Result<MappedBlock, MemoryError> {
        let unmapped = || MemoryError::Unmapped(addr.raw_value());
        let (region, offset) = self.mmap.to_region_addr(addr).ok_or_else(unmapped)?;
        let mapping = region.get_mmap();
        let offset = offset.raw_value() as usize;
        mapping.get_slice(offset, len).map_err(|_| unmapped())?;
        Ok(MappedBlock {
            mapping,
            offset,
            len,
        })
    }
}

/// A block of guest memory resolved to its place in the mapping: accesses through it skip the
/// guest-address translation, and fixed-size ones copy nothing through `memcpy`. The `Arc`
/// keeps the mapping alive; offsets are relative to the block and checked against its length.
#[derive(Clone, Debug)]
pub struct MappedBlock {
    mapping: Arc<MmapRegion>,
    offset: usize,
    len: usize,
}

impl MappedBlock {
    /// Zeroes the block.
    pub fn zero(&self) -> Result<(), VolatileMemoryError> {
        self.write_slice(&vec![0; self.len], 0)
    }

    fn slice(&self) -> Result<VolatileSlice<'_>, VolatileMemoryError> {
        self.mapping.get_slice(self.offset, self.len)
    }

    /// Reads the `T` at byte `at` with a fixed-size volatile load (no `memcpy`).
    pub fn read_obj<T: ByteValued>(&self, at: usize) -> Result<T, VolatileMemoryError> {
        Ok(self.slice()?.get_ref::<T>(at)?.load())
    }

    /// Writes `value` at byte `at` with a fixed-size volatile store (no `memcpy`).
    pub fn write_obj<T: ByteValued>(&self, value: T, at: usize) -> Result<(), VolatileMemoryError> {
        self.slice()?.get_ref::<T>(at)?.store(value);
        Ok(())
    }

    /// Atomically loads the (aligned) `u16` at byte `at`.
    pub fn load_u16(&self, at: usize, order: Ordering) -> Result<u16, VolatileMemoryError> {
        Ok(self.slice()?.get_atomic_ref::<AtomicU16>(at)?.load(order))
    }

    /// Atomically stores `value` into the (aligned) `u16` at byte `at`.
    pub fn store_u16(
        &self,
        value: u16,
        at: usize,
        order: Ordering,
    ) -> Result<(), VolatileMemoryError> {
        self.slice()?
            .get_atomic_ref::<AtomicU16>(at)?
            .store(value, order);
        Ok(())
    }

    /// Fills `buf` from the bytes at `at`.
    pub fn read_slice(&self, buf: &mut [u8], at: usize) -> Result<(), VolatileMemoryError> {
        self.slice()?.read_slice(buf, at)
    }

    /// Writes `buf` at byte `at`.
    pub fn write_slice(&self, buf: &[u8], at: usize) -> Result<(), VolatileMemoryError> {
        self.slice()?.write_slice(buf, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn regions_share_one_memfd_at_distinct_offsets() {
        let layout = MemoryLayout {
            base: 0x10_0000,
            regions: 3,
            gap: 0x1000,
        };
        let mem = GuestMemory::new(&layout, 0x4001).unwrap();
        assert_eq!(mem.region_size(), 0x5000);
        let regions = mem.regions().unwrap();
        assert_eq!(regions.len(), 3);
        for (i, r) in regions.iter().enumerate() {
            assert_eq!(r.guest_phys_addr, 0x10_0000 + i as u64 * 0x6000);
            assert_eq!(r.memory_size, 0x5000);
            assert_eq!(r.mmap_offset, i as u64 * 0x5000);
        }
        assert_eq!(mem.end(), GuestAddress(0x10_0000 + 2 * 0x6000 + 0x5000));
        // The gap is not mapped.
        assert!(mem.mmap().write_obj(1u8, GuestAddress(0x10_5000)).is_err());
    }

    #[test]
    fn alloc_never_straddles_a_region() {
        let layout = MemoryLayout {
            base: 0,
            regions: 2,
            gap: 0x1000,
        };
        let mut mem = GuestMemory::new(&layout, 0x2000).unwrap();
        assert_eq!(mem.alloc(0x1800, 8).unwrap(), GuestAddress(0));
        // 0x800 left in region 0: a 0x1000 block goes to region 1.
        assert_eq!(mem.alloc(0x1000, 0x1000).unwrap(), GuestAddress(0x3000));
        assert_eq!(mem.alloc(0x10, 16).unwrap(), GuestAddress(0x4000));
        assert!(matches!(
            mem.alloc(0x2000, 1),
            Err(MemoryError::Exhausted { .. })
        ));
    }

    #[test]
    fn block_accesses_stay_inside_it() {
        let mut mem = GuestMemory::new(&MemoryLayout::default(), 0x10000).unwrap();
        let addr = mem.alloc(64, 64).unwrap();
        let block = mem.block(addr, 16).unwrap();
        block.write_obj(0x1122_3344_u32, 4).unwrap();
        let at = addr.unchecked_add(4);
        assert_eq!(mem.mmap().read_obj::<u32>(at).unwrap(), 0x1122_3344);
        block.store_u16(7, 2, Ordering::Release).unwrap();
        assert_eq!(block.load_u16(2, Ordering::Acquire).unwrap(), 7);
        assert!(block.read_obj::<u32>(13).is_err(), "past the block's end");
        assert!(
            block.store_u16(1, 3, Ordering::Relaxed).is_err(),
            "misaligned"
        );
        // A span across a region's end, or in the gap after it, is no block.
        let end = mem.region_start(0).unchecked_add(mem.region_size());
        assert!(mem.block(end.unchecked_sub(8), 16).is_err());
        assert!(mem.block(end, 1).is_err());
    }

    #[test]
    fn host_address_is_inside_the_mapping() {
        let mut mem = GuestMemory::new(&MemoryLayout::default(), 0x10000).unwrap();
        let addr = mem.alloc(64, 64).unwrap();
        mem.mmap().write_obj(0xabcd_u16, addr).unwrap();
        let host = mem.host_address(addr).unwrap();
        assert_ne!(host, 0);
        assert!(mem.host_address(mem.end()).is_err());
    }
}
