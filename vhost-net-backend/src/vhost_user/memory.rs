//! The frontend's memory table: regions mapped from the file descriptors it sends, the guest
//! memory built from them, and translation of frontend virtual addresses (used for ring
//! addresses) to guest physical addresses.

use std::fs::File;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Errors changing the memory table.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Mapping a region's file failed.
    #[error("mapping a {size:#x}-byte region at guest address {gpa:#x} failed")]
    Map {
        /// Guest physical address of the region.
        gpa: u64,
        /// Size of the region.
        size: u64,
        /// The mmap error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The region is too large to map on this host.
    #[error("region of {0:#x} bytes is too large")]
    TooLarge(u64),
    /// The region overlaps one already in the table.
    #[error("region at guest address {0:#x} overlaps an existing region")]
    Overlap(u64),
    /// REM_MEM_REG named a region that is not in the table.
    #[error("no region at guest address {gpa:#x} with size {size:#x}")]
    NoSuchRegion {
        /// Guest physical address given.
        gpa: u64,
        /// Size given.
        size: u64,
    },
    /// The table is full.
    #[error("all {0} memory slots are in use")]
    SlotsFull(usize),
}

/// Most regions the table holds (the answer to GET_MAX_MEM_SLOTS).
pub const MAX_MEM_SLOTS: usize = 509;

#[derive(Debug)]
struct Region {
    gpa: u64,
    size: u64,
    user_addr: u64,
    /// How many times the frontend added it: QEMU adds every region once per queue pair
    /// (one vhost device each) and removes it as many times.
    refs: u32,
    mapping: Arc<GuestRegionMmap>,
}

/// The current memory table of one connection.
#[derive(Debug, Default)]
pub struct MemoryTable {
    regions: Vec<Region>,
}

impl MemoryTable {
    /// Replaces the whole table (SET_MEM_TABLE). On error the table is unchanged.
    pub fn set(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
    ) -> Result<(), MemoryError> {
        let mut fresh = MemoryTable::default();
        for (region, file) in regions.iter().zip(files) {
            fresh.add(region, file)?;
        }
        *self = fresh;
        Ok(())
    }

    /// Adds one region (ADD_MEM_REG). Adding a region that is already there (same guest
    /// address, size and frontend address) counts one more user of it.
    pub fn add(&mut self, region: &VhostUserMemoryRegion, file: File) -> Result<(), MemoryError> {
        let (gpa, size) = (region.guest_phys_addr, region.memory_size);
        if self.regions.len() >= MAX_MEM_SLOTS {
            return Err(MemoryError::SlotsFull(MAX_MEM_SLOTS));
        }
        if let Some(same) = self
            .regions
            .iter_mut()
            .find(|r| r.gpa == gpa && r.size == size && r.user_addr == region.user_addr)
        {
            same.refs = same.refs.saturating_add(1);
            return Ok(());
        }
        // Region validity (non-zero, no overflow) was checked when the body was decoded.
        let end = gpa + size;
        if self
            .regions
            .iter()
            .any(|r| gpa < r.gpa + r.size && r.gpa < end)
        {
            return Err(MemoryError::Overlap(gpa));
        }
        let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size))?;
        let mmap = MmapRegion::from_file(FileOffset::new(file, region.mmap_offset), len)
            .map_err(|source| MemoryError::Map { gpa, size, source })?;
        let mapping =
            GuestRegionMmap::new(mmap, GuestAddress(gpa)).ok_or(MemoryError::TooLarge(size))?;
        self.regions.push(Region {
            gpa,
            size,
            user_addr: region.user_addr,
            refs: 1,
            mapping: Arc::new(mapping),
        });
        self.regions.sort_by_key(|r| r.gpa);
        Ok(())
    }

    /// Removes one user of the region with this guest address and size (REM_MEM_REG); the
    /// region goes with its last user.
    pub fn remove(&mut self, region: &VhostUserMemoryRegion) -> Result<(), MemoryError> {
        let (gpa, size) = (region.guest_phys_addr, region.memory_size);
        let pos = self
            .regions
            .iter()
            .position(|r| r.gpa == gpa && r.size == size)
            .ok_or(MemoryError::NoSuchRegion { gpa, size })?;
        self.regions[pos].refs -= 1;
        if self.regions[pos].refs == 0 {
            self.regions.remove(pos);
        }
        Ok(())
    }

    /// Guest memory made of the current regions; `None` when there are none.
    pub fn guest_memory(&self) -> Option<Arc<GuestMemoryMmap>> {
        let regions = self
            .regions
            .iter()
            .map(|r| Arc::clone(&r.mapping))
            .collect();
        GuestMemoryMmap::from_arc_regions(regions)
            .ok()
            .map(Arc::new)
    }

    /// Translates a frontend virtual address to a guest physical address.
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| va >= r.user_addr && va - r.user_addr < r.size)
            .map(|r| r.gpa + (va - r.user_addr))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestMemory};
    use vmm_sys_util::tempfile::TempFile;

    /// A file of `size` bytes to map as guest memory.
    pub(crate) fn backing_file(size: u64) -> File {
        let tmp = TempFile::new_in(&std::env::temp_dir()).unwrap();
        let file = tmp.into_file();
        file.set_len(size).unwrap();
        file
    }

    #[test]
    fn set_add_remove_and_translate() {
        let mut table = MemoryTable::default();
        let low = VhostUserMemoryRegion::new(0, 0x10000, 0x7000_0000, 0);
        let high = VhostUserMemoryRegion::new(0x100000, 0x10000, 0x7100_0000, 0);
        table.set(&[low], vec![backing_file(0x10000)]).unwrap();
        table.add(&high, backing_file(0x10000)).unwrap();
        assert_eq!(table.va_to_gpa(0x7000_0010), Some(0x10));
        assert_eq!(table.va_to_gpa(0x7100_0020), Some(0x100020));
        assert_eq!(table.va_to_gpa(0x7001_0000), None);

        let mem = table.guest_memory().unwrap();
        mem.write_obj(0xabcdu16, GuestAddress(0x100000)).unwrap();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x100000)).unwrap(), 0xabcd);
        assert!(!mem.check_range(GuestAddress(0x20000), 1, vm_memory::Permissions::Read));

        assert!(matches!(
            table.add(
                &VhostUserMemoryRegion::new(0x8000, 0x10000, 0, 0),
                backing_file(0x10000)
            ),
            Err(MemoryError::Overlap(0x8000))
        ));
        // Added again (QEMU: once per queue pair): it stays until removed as often.
        table.add(&low, backing_file(0x10000)).unwrap();
        table.remove(&low).unwrap();
        assert_eq!(table.va_to_gpa(0x7000_0010), Some(0x10));
        table.remove(&low).unwrap();
        assert!(table.remove(&low).is_err());
        assert_eq!(table.va_to_gpa(0x7000_0010), None);
        table.remove(&high).unwrap();
        assert!(table.guest_memory().is_none());
    }

    #[test]
    fn mapping_shares_the_file() {
        let mut table = MemoryTable::default();
        let mut file = backing_file(0x2000);
        file.write_all(b"guest").unwrap();
        // Map the second page only: mmap_offset selects where the region starts in the file.
        let region = VhostUserMemoryRegion::new(0x4000, 0x1000, 0x1000, 0x1000);
        table
            .set(&[region], vec![file.try_clone().unwrap()])
            .unwrap();
        let mem = table.guest_memory().unwrap();
        mem.write_slice(b"xy", GuestAddress(0x4000)).unwrap();
        use std::io::{Read, Seek, SeekFrom};
        file.seek(SeekFrom::Start(0x1000)).unwrap();
        let mut two = [0u8; 2];
        file.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"xy");
    }
}
