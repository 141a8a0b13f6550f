//! Walking a descriptor chain a guest posted, with every check an untrusted guest needs:
//! indices inside the table, no loops, no chain longer than the queue, indirect tables only when
//! negotiated and never nested, the right read/write direction, lengths that add up, and every
//! buffer inside guest memory.
//!
//! `virtio_queue::DescriptorChain` ends a chain silently on most of these errors; the datapath
//! must tell a malformed chain from a short one to drop and count it, so the walk is done here
//! on the crate's descriptor type.
//!
//! Each buffer is translated once, here: its [`Seg`] names the memory region holding it, so
//! the copy finds its host memory with a bounds check.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, VolatileMemory, VolatileSlice};

use crate::sys::GuestRam;

/// A buffer of a chain: guest physical address, length, and the memory region holding it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The memory region holding the whole buffer ([`GuestRam::locate`]), or [`SPANS`] when
    /// it spans regions.
    pub region: u32,
}

/// [`Seg::region`] of a buffer that spans memory regions (translated piece by piece).
pub const SPANS: u32 = u32::MAX;

impl Seg {
    /// A buffer at `addr` not yet located (found with a region lookup when copied).
    pub fn at(addr: u64, len: u32) -> Self {
        Seg {
            addr,
            len,
            region: SPANS,
        }
    }
}

/// What is wrong with a chain. Each is a drop reason the datapath counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A head or next index past the end of its descriptor table.
    #[error("descriptor index out of range")]
    BadIndex,
    /// More descriptors than the queue (or the walk's capacity) allows: a loop or an overlong
    /// chain.
    #[error("descriptor chain loops or is longer than the queue")]
    TooLong,
    /// An indirect descriptor that is not allowed (not negotiated, nested, combined with NEXT)
    /// or whose table has a bad length.
    #[error("invalid indirect descriptor")]
    BadIndirect,
    /// A device-writable buffer in a chain the device reads, or the reverse.
    #[error("descriptor with the wrong read/write direction")]
    WrongDirection,
    /// A buffer or a descriptor table outside guest memory.
    #[error("descriptor points outside guest memory")]
    OutOfMemory,
    /// The buffers add up to more than the walk allows.
    #[error("descriptor chain is longer than any frame")]
    TooBig,
}

/// Which buffers the device expects in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device-readable (TX).
    Read,
    /// Device-writable (RX).
    Write,
}

/// A descriptor table.
#[derive(Clone, Copy, Debug)]
pub enum DescTable<'a> {
    /// Resolved to host memory once (a ring's table, an indirect table in one region).
    Host(VolatileSlice<'a, ()>),
    /// At a guest address, each descriptor translated as it is read (an indirect table that
    /// spans memory regions).
    Guest(u64),
}

impl DescTable<'_> {
    /// Descriptor `index` (which the caller checked against the table's length).
    fn read(&self, mem: &GuestRam, index: u32) -> Result<Descriptor, ChainError> {
        let offset = u64::from(index) * 16;
        match self {
            DescTable::Host(slice) => usize::try_from(offset)
                .ok()
                .and_then(|at| slice.get_ref::<Descriptor>(at).ok())
                .map(|d| d.load())
                .ok_or(ChainError::OutOfMemory),
            DescTable::Guest(table) => {
                let at = GuestAddress(*table)
                    .checked_add(offset)
                    .ok_or(ChainError::OutOfMemory)?;
                mem.memory()
                    .read_obj(at)
                    .map_err(|_| ChainError::OutOfMemory)
            }
        }
    }
}

/// Limits and negotiated options of one walk.
#[derive(Clone, Copy, Debug)]
pub struct WalkParams<'a> {
    /// The ring's descriptor table.
    pub table: DescTable<'a>,
    /// Queue size (entries in the table; also the longest chain allowed).
    pub queue_size: u16,
    /// Whether INDIRECT_DESC was negotiated.
    pub indirect: bool,
    /// Direction of every buffer.
    pub direction: Direction,
    /// Largest total length accepted.
    pub max_len: u32,
}

/// Walks the chain starting at `head`, storing its non-empty buffers in `segs`. Returns the
/// number of buffers and their total length.
///
/// The usual chain, one buffer in the ring's own table, is taken inline without the general
/// walk's loop; anything else (or anything wrong with it) goes through the general walk.
#[inline]
pub fn walk(
    mem: &GuestRam,
    p: &WalkParams,
    head: u16,
    segs: &mut [Seg],
) -> Result<(usize, u32), ChainError> {
    match single(mem, p, head, segs) {
        Some(found) => Ok(found),
        None => walk_chain(mem, p, head, segs),
    }
}

/// A chain of one direct buffer in a table in host memory, with every check the general walk
/// makes for it: `Some` exactly when [`walk_chain`] would accept the chain as one buffer.
#[inline]
fn single(mem: &GuestRam, p: &WalkParams, head: u16, segs: &mut [Seg]) -> Option<(usize, u32)> {
    let DescTable::Host(table) = p.table else {
        return None;
    };
    if head >= p.queue_size {
        return None;
    }
    let desc = table
        .get_ref::<Descriptor>(usize::from(head) * 16)
        .ok()?
        .load();
    let lone = !desc.has_next() && !desc.refers_to_indirect_table();
    let len = desc.len();
    if !lone || desc.is_write_only() != (p.direction == Direction::Write) {
        return None;
    }
    if len == 0 || len > p.max_len {
        return None;
    }
    let addr = desc.addr().raw_value();
    let first = segs.first_mut()?;
    // The last chain's buffer, still there, tells where this one likely is.
    let region = mem.locate_near(addr, len as usize, first.region)?;
    *first = Seg { addr, len, region };
    Some((1, len))
}

/// The general walk of [`walk`].
fn walk_chain(
    mem: &GuestRam,
    p: &WalkParams,
    head: u16,
    segs: &mut [Seg],
) -> Result<(usize, u32), ChainError> {
    let mut table = p.table;
    let mut table_len = u32::from(p.queue_size);
    let mut index = u32::from(head);
    let mut in_indirect = false;
    // Descriptors visited in the current table: bounds loops.
    let mut visited: u32 = 0;
    let mut nsegs = 0usize;
    let mut total: u32 = 0;
    loop {
        if index >= table_len {
            return Err(ChainError::BadIndex);
        }
        visited += 1;
        if visited > table_len {
            return Err(ChainError::TooLong);
        }
        let desc = table.read(mem, index)?;
        if desc.refers_to_indirect_table() {
            let len = desc.len();
            if !p.indirect || in_indirect || desc.has_next() {
                return Err(ChainError::BadIndirect);
            }
            if len == 0 || !len.is_multiple_of(16) || len / 16 > u32::from(p.queue_size) {
                return Err(ChainError::BadIndirect);
            }
            let addr = desc.addr().raw_value();
            table = match mem.slice(addr, len as usize) {
                Some(slice) => DescTable::Host(slice),
                None if mem.memory().check_range(desc.addr(), len as usize) => {
                    DescTable::Guest(addr)
                }
                None => return Err(ChainError::OutOfMemory),
            };
            table_len = len / 16;
            index = 0;
            visited = 0;
            in_indirect = true;
            continue;
        }
        let writable = desc.is_write_only();
        if writable != (p.direction == Direction::Write) {
            return Err(ChainError::WrongDirection);
        }
        let len = desc.len();
        if len > 0 {
            total = total
                .checked_add(len)
                .filter(|t| *t <= p.max_len)
                .ok_or(ChainError::TooBig)?;
            let addr = desc.addr().raw_value();
            let region = match mem.locate(addr, len as usize) {
                Some(region) => region,
                None if mem.memory().check_range(desc.addr(), len as usize) => SPANS,
                None => return Err(ChainError::OutOfMemory),
            };
            let slot = segs.get_mut(nsegs).ok_or(ChainError::TooLong)?;
            *slot = Seg { addr, len, region };
            nsegs += 1;
        }
        if !desc.has_next() {
            return Ok((nsegs, total));
        }
        index = u32::from(desc.next());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::GuestMemoryMmap;

    const TABLE: u64 = 0x1000;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

    fn mem() -> GuestRam {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        GuestRam::new(Arc::new(m))
    }

    fn put(mem: &GuestRam, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        mem.memory()
            .write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }

    fn params(direction: Direction) -> WalkParams<'static> {
        WalkParams {
            table: DescTable::Guest(TABLE),
            queue_size: 8,
            indirect: true,
            direction,
            max_len: 65_600,
        }
    }

    fn run(mem: &GuestRam, p: &WalkParams, head: u16) -> Result<(Vec<Seg>, u32), ChainError> {
        let mut segs = [Seg::default(); 16];
        walk(mem, p, head, &mut segs).map(|(n, t)| (segs[..n].to_vec(), t))
    }

    #[test]
    fn direct_chain_skips_empty_buffers() {
        let m = mem();
        put(&m, TABLE, 0, 0x8000, 12, NEXT, 3);
        put(&m, TABLE, 3, 0x9000, 0, NEXT, 5);
        put(&m, TABLE, 5, 0xa000, 100, 0, 0);
        let (segs, total) = run(&m, &params(Direction::Read), 0).unwrap();
        assert_eq!(
            segs,
            vec![
                Seg {
                    addr: 0x8000,
                    len: 12,
                    region: 0
                },
                Seg {
                    addr: 0xa000,
                    len: 100,
                    region: 0
                }
            ]
        );
        assert_eq!(total, 112);
        // The same through the table resolved to host memory, as the rings give it.
        let host = WalkParams {
            table: DescTable::Host(m.slice(TABLE, 128).unwrap()),
            ..params(Direction::Read)
        };
        assert_eq!(run(&m, &host, 0).unwrap(), (segs, total));
        assert_eq!(run(&m, &host, 8), Err(ChainError::BadIndex));
    }

    #[test]
    fn indirect_table_across_regions_is_read_in_guest_memory() {
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x8000),
            (GuestAddress(0x8000), 0x8000),
        ])
        .unwrap();
        let m = GuestRam::new(Arc::new(m));
        let p = params(Direction::Read);
        // Two descriptors, one on each side of the regions' boundary; the second buffer spans
        // the boundary too.
        let ind = 0x8000 - 16;
        put(&m, ind, 0, 0x9000, 12, NEXT, 1);
        put(&m, ind, 1, 0x7f00, 0x200, 0, 0);
        put(&m, TABLE, 0, ind, 32, INDIRECT, 0);
        let (segs, total) = run(&m, &p, 0).unwrap();
        assert_eq!(total, 12 + 0x200);
        assert_eq!(
            segs.iter().map(|s| s.region).collect::<Vec<_>>(),
            [1, SPANS],
            "each buffer names its region, or none"
        );
    }

    #[test]
    fn hostile_chains_are_refused() {
        let m = mem();
        let p = params(Direction::Read);
        // Head out of range.
        assert_eq!(run(&m, &p, 8), Err(ChainError::BadIndex));
        // Next out of range.
        put(&m, TABLE, 0, 0x8000, 10, NEXT, 9);
        assert_eq!(run(&m, &p, 0), Err(ChainError::BadIndex));
        // A loop 0 -> 1 -> 0.
        put(&m, TABLE, 0, 0x8000, 10, NEXT, 1);
        put(&m, TABLE, 1, 0x8000, 10, NEXT, 0);
        assert_eq!(run(&m, &p, 0), Err(ChainError::TooLong));
        // A writable buffer in a TX chain, a readable one in an RX chain.
        put(&m, TABLE, 0, 0x8000, 10, WRITE, 0);
        assert_eq!(run(&m, &p, 0), Err(ChainError::WrongDirection));
        put(&m, TABLE, 0, 0x8000, 10, 0, 0);
        assert_eq!(
            run(&m, &params(Direction::Write), 0),
            Err(ChainError::WrongDirection)
        );
        // Outside guest memory, and straddling its end.
        put(&m, TABLE, 0, 0x20_0000, 10, 0, 0);
        assert_eq!(run(&m, &p, 0), Err(ChainError::OutOfMemory));
        put(&m, TABLE, 0, 0xf_fff0, 0x20, 0, 0);
        assert_eq!(run(&m, &p, 0), Err(ChainError::OutOfMemory));
        // Address overflow.
        put(&m, TABLE, 0, u64::MAX - 4, 10, 0, 0);
        assert_eq!(run(&m, &p, 0), Err(ChainError::OutOfMemory));
        // Absurd lengths.
        put(&m, TABLE, 0, 0x8000, u32::MAX, 0, 0);
        assert_eq!(run(&m, &p, 0), Err(ChainError::TooBig));
        put(&m, TABLE, 0, 0x8000, 40_000, NEXT, 1);
        put(&m, TABLE, 1, 0x8000, 40_000, 0, 0);
        assert_eq!(run(&m, &p, 0), Err(ChainError::TooBig));
        // The descriptor table itself outside memory.
        let far = WalkParams {
            table: DescTable::Guest(0xf_fff8),
            ..p
        };
        assert_eq!(run(&m, &far, 0), Err(ChainError::OutOfMemory));
    }

    #[test]
    fn indirect_tables() {
        let m = mem();
        let p = params(Direction::Write);
        let ind = 0x4000;
        put(&m, ind, 0, 0x8000, 12, WRITE | NEXT, 1);
        put(&m, ind, 1, 0x9000, 1500, WRITE, 0);
        put(&m, TABLE, 2, ind, 32, INDIRECT, 0);
        let (segs, total) = run(&m, &p, 2).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(total, 1512);

        // Not negotiated.
        let no = WalkParams {
            indirect: false,
            ..p
        };
        assert_eq!(run(&m, &no, 2), Err(ChainError::BadIndirect));
        // With NEXT.
        put(&m, TABLE, 2, ind, 32, INDIRECT | NEXT, 3);
        assert_eq!(run(&m, &p, 2), Err(ChainError::BadIndirect));
        // Bad table lengths.
        put(&m, TABLE, 2, ind, 20, INDIRECT, 0);
        assert_eq!(run(&m, &p, 2), Err(ChainError::BadIndirect));
        put(&m, TABLE, 2, ind, 0, INDIRECT, 0);
        assert_eq!(run(&m, &p, 2), Err(ChainError::BadIndirect));
        put(&m, TABLE, 2, ind, 16 * 9, INDIRECT, 0);
        assert_eq!(run(&m, &p, 2), Err(ChainError::BadIndirect));
        // Nested.
        put(&m, ind, 1, 0x5000, 16, INDIRECT, 0);
        put(&m, TABLE, 2, ind, 32, INDIRECT, 0);
        assert_eq!(run(&m, &p, 2), Err(ChainError::BadIndirect));
        // A loop inside the table; a next index past its end.
        put(&m, ind, 1, 0x9000, 10, WRITE | NEXT, 0);
        assert_eq!(run(&m, &p, 2), Err(ChainError::TooLong));
        put(&m, ind, 1, 0x9000, 10, WRITE | NEXT, 2);
        assert_eq!(run(&m, &p, 2), Err(ChainError::BadIndex));
        // Table outside memory.
        put(&m, TABLE, 2, 0x20_0000, 32, INDIRECT, 0);
        assert_eq!(run(&m, &p, 2), Err(ChainError::OutOfMemory));
    }

    #[test]
    fn one_buffer_chains_walk_as_the_general_walk_does() {
        let m = GuestRam::new(Arc::new(
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), 0x8000),
                (GuestAddress(0x8000), 0x8000),
            ])
            .unwrap(),
        ));
        let host = |direction| WalkParams {
            table: DescTable::Host(m.slice(TABLE, 128).unwrap()),
            max_len: 1000,
            ..params(direction)
        };
        // (addr, len, flags): a good buffer, then one of each thing the fast path leaves to
        // the general walk.
        let cases = [
            (0x9000, 100, 0),
            (0x9000, 100, WRITE),
            (0x9000, 0, 0),
            (0x9000, 1001, 0),
            (0x7f00, 0x200, 0),
            (0x20_0000, 10, 0),
            (0x9000, 10, NEXT),
            (0x4000, 32, INDIRECT),
        ];
        put(&m, 0x4000, 0, 0x9000, 10, 0, 0);
        put(&m, 0x4000, 1, 0x9000, 10, 0, 0);
        for (addr, len, flags) in cases {
            put(&m, TABLE, 0, addr, len, flags, 1);
            put(&m, TABLE, 1, 0xa000, 7, 0, 0);
            for direction in [Direction::Read, Direction::Write] {
                for room in [0, 1, 4] {
                    let p = host(direction);
                    let (mut fast, mut general) = ([Seg::default(); 4], [Seg::default(); 4]);
                    let got = walk(&m, &p, 0, &mut fast[..room]);
                    let want = walk_chain(&m, &p, 0, &mut general[..room]);
                    assert_eq!(got, want, "{addr:#x} {len} {flags} {direction:?} {room}");
                    assert_eq!(fast, general);
                }
            }
        }
        assert_eq!(
            walk(&m, &host(Direction::Read), 8, &mut [Seg::default(); 4]),
            Err(ChainError::BadIndex)
        );
        put(&m, TABLE, 0, 0x9000, 100, 0, 0);
        let mut segs = [Seg::default(); 4];
        assert_eq!(walk(&m, &host(Direction::Read), 0, &mut segs), Ok((1, 100)));
        assert_eq!(
            segs[0],
            Seg {
                addr: 0x9000,
                len: 100,
                region: 1
            }
        );
    }

    #[test]
    fn more_buffers_than_room_is_too_long() {
        let m = mem();
        for i in 0..7 {
            put(&m, TABLE, i, 0x8000, 1, NEXT, i + 1);
        }
        put(&m, TABLE, 7, 0x8000, 1, 0, 0);
        let mut segs = [Seg::default(); 4];
        assert_eq!(
            walk(&m, &params(Direction::Read), 0, &mut segs),
            Err(ChainError::TooLong)
        );
    }
}
