//! The crate's only `unsafe` code: receiving file descriptors over a unix socket, taking one
//! over as an eventfd, polling, waiting for a termination signal, the effective user id, and
//! guest memory translated through a flat table of its regions' host addresses, and copies into
//! it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vm_memory::{
    GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress, VolatileSlice,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most file descriptors one vhost-user message carries (SET_MEM_TABLE: one per region).
pub const MAX_FDS: usize = 32;

/// Receives up to `buf.len()` bytes and the file descriptors attached to them.
///
/// Returns the byte count (0 at end of stream) and the received files, which close on drop.
pub fn recv_with_files(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<File>)> {
    let mut fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the single iovec points at `buf`, which is valid for writes of `buf.len()` bytes
    // and exclusively borrowed for the duration of the call.
    let (len, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let files = fds[..nfds]
        .iter()
        // SAFETY: recvmsg returned `nfds` new descriptors that nothing else owns; each is
        // wrapped exactly once so that it is closed exactly once.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    Ok((len, files))
}

/// The signals that end the daemon's command-line process.
const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set it is given; sigaddset only adds valid
    // signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in TERMINATION_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the termination signals in the calling thread (and the threads it spawns later), so
/// that [`wait_for_termination`] can take them synchronously.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits until SIGINT, SIGTERM or SIGHUP arrives and returns its number. The signals must have
/// been blocked with [`block_termination_signals`].
pub fn wait_for_termination() -> io::Result<i32> {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a valid place for the result.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc == 0 {
        Ok(sig)
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Takes over a file received from the frontend as an eventfd (kick or call).
///
/// If the frontend sent some other kind of file, reads and writes on it fail or move eight
/// bytes; nothing unsafe follows from that.
pub fn eventfd_from_file(file: File) -> EventFd {
    // SAFETY: `into_raw_fd` hands over sole ownership of an open descriptor, which the EventFd
    // now owns and closes exactly once.
    unsafe { EventFd::from_raw_fd(file.into_raw_fd()) }
}

/// What [`wait_readable`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// `fd` is readable (or hung up).
    Ready,
    /// `stop` is readable: the caller should end.
    Stopped,
    /// The timeout passed.
    TimedOut,
}

/// Waits until `fd` or `stop` becomes readable, or `timeout_ms` passes (-1: no timeout).
pub fn wait_readable(
    fd: &impl AsRawFd,
    stop: &impl AsRawFd,
    timeout_ms: i32,
) -> io::Result<Readiness> {
    let mut fds = [
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd entries; poll only reads the descriptor
        // numbers, which stay open while `fd` and `stop` are borrowed.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            return Ok(Readiness::Stopped);
        }
        if fds[1].revents != 0 {
            return Ok(Readiness::Ready);
        }
        return Ok(Readiness::TimedOut);
    }
}

/// Whether `fd` is readable now (an eventfd: its count is not zero), without waiting.
pub fn is_readable(fd: &impl AsRawFd) -> bool {
    wait_readable(fd, fd, 0).is_ok_and(|r| r != Readiness::TimedOut)
}

/// The process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Guest memory with the host address of each of its regions in one flat table: a range is
/// translated by a scan of a few contiguous entries ([`locate`](Self::locate)), or, once its
/// region is known, by a bounds check ([`slice_in`](Self::slice_in)), instead of through
/// vm-memory's region objects. It holds the memory, so its mappings outlive every slice it
/// hands out (they borrow it).
#[derive(Debug)]
pub struct GuestRam {
    mem: Arc<GuestMemoryMmap>,
    regions: Box<[HostRegion]>,
    /// Whether the CPU has PREFETCHW ([`has_prefetchw`], asked once).
    prefetchw: bool,
}

/// One region: its guest physical range and where it is mapped.
#[derive(Clone, Copy, Debug)]
struct HostRegion {
    start: u64,
    len: u64,
    host: *mut u8,
}

impl HostRegion {
    /// The offset of `[addr, addr + len)` in the region, if the region holds all of it; `addr`
    /// itself must lie in the region, even when `len` is 0.
    #[inline]
    fn offset_of(&self, addr: u64, len: usize) -> Option<u64> {
        let offset = addr.wrapping_sub(self.start);
        // No overflow: `offset < self.len`.
        (offset < self.len && len as u64 <= self.len - offset).then_some(offset)
    }
}

// SAFETY: the pointers are into mappings owned by `mem`, which is `Send` and `Sync`; a
// `GuestRam` gives access to them only as `VolatileSlice`s, as `GuestMemoryMmap` itself does to
// any thread.
unsafe impl Send for GuestRam {}
// SAFETY: as for `Send`: shared use hands out the same volatile slices `GuestMemoryMmap` does.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// The table of `mem`'s regions.
    pub fn new(mem: Arc<GuestMemoryMmap>) -> Self {
        let regions = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(HostRegion {
                    start: r.start_addr().0,
                    len: r.len(),
                    host,
                })
            })
            .collect();
        GuestRam {
            mem,
            regions,
            prefetchw: has_prefetchw(),
        }
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The index of the region holding all of `[addr, addr + len)`, if one does.
    #[inline]
    pub fn locate(&self, addr: u64, len: usize) -> Option<u32> {
        let i = self
            .regions
            .iter()
            .position(|r| r.offset_of(addr, len).is_some())?;
        Some(i as u32)
    }

    /// [`locate`](Self::locate), looking at region `near` first (where the buffer before was:
    /// a guest's buffers of one queue are mostly in one region). Regions do not overlap, so the
    /// answer is the same.
    #[inline]
    pub fn locate_near(&self, addr: u64, len: usize, near: u32) -> Option<u32> {
        let in_near = self
            .regions
            .get(near as usize)
            .and_then(|r| r.offset_of(addr, len));
        in_near.map(|_| near).or_else(|| self.locate(addr, len))
    }

    /// The region holding byte `addr`: its index, itself, and `addr`'s offset in it.
    #[inline]
    fn region_at(&self, addr: u64) -> Option<(u32, &HostRegion, u64)> {
        self.regions
            .iter()
            .enumerate()
            .find_map(|(i, r)| Some((i as u32, r, r.offset_of(addr, 0)?)))
    }

    /// Asks the CPU to bring `lines` cache lines of guest memory from `addr` on into its cache
    /// for writing, those in the region holding `addr` ([`prefetch`]): a hint, with no other
    /// effect.
    #[inline]
    pub fn prefetch_for_write(&self, addr: u64, lines: usize) {
        let Some((_, r, offset)) = self.region_at(addr) else {
            return;
        };
        let p = r.host.wrapping_add(offset as usize);
        let write = self.prefetchw;
        // No overflow: `offset < r.len`.
        let left = r.len - offset;
        for at in (0..lines * 64)
            .step_by(64)
            .take_while(|at| (*at as u64) < left)
        {
            prefetch_ptr(p.wrapping_add(at), write);
        }
    }

    /// `[addr, addr + len)` as host memory if it lies in region `region` (as
    /// [`locate`](Self::locate) found it).
    pub fn slice_in(&self, region: u32, addr: u64, len: usize) -> Option<VolatileSlice<'_, ()>> {
        let r = self.regions.get(region as usize)?;
        let offset = addr.checked_sub(r.start)?;
        if offset.checked_add(len as u64)? > r.len {
            return None;
        }
        // SAFETY: `[offset, offset + len)` lies inside the region's mapping (checked above),
        // which `self.mem` owns and keeps mapped while the slice borrows `self`. Guest memory
        // is shared with the guest and accessed only through the slice's volatile operations.
        Some(unsafe { VolatileSlice::new(r.host.add(offset as usize), len) })
    }

    /// `[addr, addr + len)` as host memory, if it lies in one region.
    pub fn slice(&self, addr: u64, len: usize) -> Option<VolatileSlice<'_, ()>> {
        self.slice_in(self.locate(addr, len)?, addr, len)
    }

    /// `ranges` (guest address, length) translated once, each if it lies in one region: their
    /// host memory is then had without a lookup or a bounds check ([`Pinned::slices`]).
    pub fn pin<const N: usize>(&self, ranges: [(u64, usize); N]) -> Option<Pinned<N>> {
        let mut spans = [(std::ptr::null_mut(), 0); N];
        for (span, (addr, len)) in spans.iter_mut().zip(ranges) {
            let slice = self.slice(addr, len)?;
            *span = (slice.ptr_guard_mut().as_ptr(), slice.len());
        }
        Some(Pinned {
            _mem: self.mem.clone(),
            spans,
        })
    }
}

/// Ranges of guest memory translated to host memory once ([`GuestRam::pin`]), for the parts of
/// a ring, used on every frame. It holds the memory, so the mappings outlive its slices.
#[derive(Debug)]
pub struct Pinned<const N: usize> {
    _mem: Arc<GuestMemoryMmap>,
    spans: [(*mut u8, usize); N],
}

// SAFETY: as for `GuestRam`: the pointers are into mappings owned by `_mem` and are only handed
// out as `VolatileSlice`s.
unsafe impl<const N: usize> Send for Pinned<N> {}
// SAFETY: as for `Send`.
unsafe impl<const N: usize> Sync for Pinned<N> {}

impl<const N: usize> Pinned<N> {
    /// The ranges' host memory, in the order they were pinned.
    #[inline]
    pub fn slices(&self) -> [VolatileSlice<'_, ()>; N] {
        // SAFETY: each span is a slice that `GuestRam::slice` returned for `_mem`'s mappings,
        // which `_mem` keeps mapped while the slices borrow `self`. Guest memory is shared
        // with the guest and accessed only through the slices' volatile operations.
        self.spans
            .map(|(ptr, len)| unsafe { VolatileSlice::new(ptr, len) })
    }
}

/// Whether the CPU has PREFETCHW (CPUID leaf 0x8000_0001, ECX bit 8), read once.
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_prefetchw() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        use std::arch::x86_64::__cpuid;
        __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn has_prefetchw() -> bool {
    false
}

/// Asks the CPU to bring the cache line holding byte `at` of `slice` into its cache, for
/// writing if `write` (then another CPU's copy is invalidated at once, not on the first store):
/// a hint that reads nothing and never faults (nothing happens past the slice's end).
#[inline]
pub fn prefetch(slice: &VolatileSlice<'_, ()>, at: usize, write: bool) {
    if at >= slice.len() {
        return;
    }
    let p = slice.ptr_guard().as_ptr().wrapping_add(at);
    prefetch_ptr(p, write && has_prefetchw());
}

/// [`prefetch`] of the line holding `p`, with PREFETCHW if `write` (the caller checked that
/// the CPU has it).
#[inline]
fn prefetch_ptr(p: *const u8, write: bool) {
    #[cfg(target_arch = "x86_64")]
    if write {
        // SAFETY: PREFETCHW (present: the caller checked) has no architectural effect: it loads
        // nothing into a register and does not fault, whatever the address.
        unsafe {
            std::arch::asm!("prefetchw [{}]", in(reg) p, options(nostack, readonly, preserves_flags))
        };
    } else {
        // SAFETY: as PREFETCHW; PREFETCHT0 belongs to SSE, part of every x86_64 CPU.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, write);
}

/// Hints the CPU to move the cache line holding byte `at` of `slice` out of its own caches to
/// the shared last-level cache (CLDEMOTE; a no-op on CPUs without it), so that another CPU's
/// next read of it does not have to take it from this one.
#[inline]
pub fn demote(slice: &VolatileSlice<'_, ()>, at: usize) {
    if at >= slice.len() {
        return;
    }
    let p = slice.ptr_guard().as_ptr().wrapping_add(at);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: CLDEMOTE (0F 1C /0, in the hint-NOP space: a NOP on CPUs without it) has no
    // architectural effect: it loads nothing into a register and does not fault.
    unsafe {
        std::arch::asm!("cldemote [{}]", in(reg) p, options(nostack, readonly, preserves_flags))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Copies as much of `src` as fits into `dst` from byte `at` on (nothing if `at` is past its
/// end); returns the bytes copied. One `memmove`, without vm-memory's per-copy dispatch: the
/// datapath's copies of headers and small frames; 8 to 16 bytes (a virtio-net header) with two
/// stores instead.
#[inline]
pub fn copy_to_slice(dst: &VolatileSlice<'_, ()>, at: usize, src: &[u8]) -> usize {
    let n = src.len().min(dst.len().saturating_sub(at));
    if n == 0 {
        return 0;
    }
    if (8..=16).contains(&n) {
        // Both halves are read before either is written, as memmove would.
        let first = u64::from_ne_bytes(src[..8].try_into().unwrap_or_default());
        let last = u64::from_ne_bytes(src[n - 8..n].try_into().unwrap_or_default());
        let p = dst.ptr_guard_mut().as_ptr();
        // SAFETY: `at + n <= dst.len()` (checked above) and `8 <= n`, so both 8-byte ranges,
        // `[at, at + 8)` and `[at + n - 8, at + n)`, lie inside the slice's memory, valid for
        // writes while `dst` is borrowed; the stores are unaligned, so any address is allowed.
        unsafe {
            p.add(at).cast::<u64>().write_unaligned(first);
            p.add(at + n - 8).cast::<u64>().write_unaligned(last);
        }
        return n;
    }
    // SAFETY: `at + n <= dst.len()` (checked above), so the destination range lies inside the
    // slice's memory, valid for writes while `dst` is borrowed; `src` is valid for reads of
    // `n <= src.len()` bytes. `copy` allows the ranges to overlap.
    unsafe { std::ptr::copy(src.as_ptr(), dst.ptr_guard_mut().as_ptr().add(at), n) };
    n
}

/// Copies as much of `src` (guest memory) as fits into `dst`; returns the bytes copied. One
/// `memmove`, without vm-memory's per-copy dispatch: the datapath's copy of a frame's head.
pub fn copy_from_slice(dst: &mut [u8], src: &VolatileSlice<'_, ()>) -> usize {
    let n = dst.len().min(src.len());
    // SAFETY: `n <= src.len()`, so the source range lies inside the slice's memory, valid for
    // reads while `src` is borrowed; `dst` is valid for writes of `n <= dst.len()` bytes.
    // `copy` allows the ranges to overlap.
    unsafe { std::ptr::copy(src.ptr_guard().as_ptr(), dst.as_mut_ptr(), n) };
    n
}

/// Copies as much of `src` (another guest's memory) as fits into `dst` from byte `at` on;
/// returns the bytes copied.
pub fn copy_between(dst: &VolatileSlice<'_, ()>, at: usize, src: &VolatileSlice<'_, ()>) -> usize {
    let n = src.len().min(dst.len().saturating_sub(at));
    if n == 0 {
        return 0;
    }
    // SAFETY: as in `copy_to_slice`: `at + n <= dst.len()` and `n <= src.len()`, both slices
    // valid while borrowed; the two may be the same memory (a frontend may map one file into
    // two ports), which `copy` allows.
    unsafe {
        std::ptr::copy(
            src.ptr_guard().as_ptr(),
            dst.ptr_guard_mut().as_ptr().add(at),
            n,
        )
    };
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn copies_stay_inside_the_destination() {
        let mut dst = [0u8; 8];
        let slice = VolatileSlice::from(&mut dst[..]);
        assert_eq!(copy_to_slice(&slice, 2, &[1, 2, 3]), 3);
        assert_eq!(copy_to_slice(&slice, 6, &[4, 5, 6]), 2, "cut at the end");
        assert_eq!(copy_to_slice(&slice, 8, &[7]), 0);
        assert_eq!(copy_to_slice(&slice, 100, &[7]), 0, "past the end");
        let mut src = [0xeeu8; 5];
        let from = VolatileSlice::from(&mut src[..]);
        assert_eq!(copy_between(&slice, 0, &from.subslice(0, 2).unwrap()), 2);
        assert_eq!(copy_between(&slice, 5, &from), 3);
        assert_eq!(dst, [0xee, 0xee, 1, 2, 3, 0xee, 0xee, 0xee]);
        let slice = VolatileSlice::from(&mut dst[..]);
        let mut out = [0u8; 4];
        assert_eq!(copy_from_slice(&mut out, &slice.subslice(2, 3).unwrap()), 3);
        assert_eq!(out, [1, 2, 3, 0]);
        assert_eq!(copy_from_slice(&mut out[..2], &slice), 2, "cut at the end");
        assert_eq!(out, [0xee, 0xee, 3, 0]);
        assert_eq!(dst, [0xee, 0xee, 1, 2, 3, 0xee, 0xee, 0xee]);
    }

    #[test]
    fn headers_of_8_to_16_bytes_are_copied_whole() {
        let src: Vec<u8> = (1..=20).collect();
        for n in [8, 10, 12, 16] {
            let mut dst = [0u8; 24];
            let slice = VolatileSlice::from(&mut dst[..]);
            assert_eq!(copy_to_slice(&slice, 3, &src[..n]), n);
            let mut want = [0u8; 24];
            want[3..3 + n].copy_from_slice(&src[..n]);
            assert_eq!(dst, want, "{n} bytes");
        }
        let mut dst = [0u8; 14];
        let slice = VolatileSlice::from(&mut dst[..]);
        assert_eq!(copy_to_slice(&slice, 4, &src[..12]), 10, "cut at the end");
        assert_eq!(dst[4..], src[..10]);
    }

    #[test]
    fn guest_ram_translates_within_one_region_only() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x4000), 0x1000),
        ])
        .unwrap();
        mem.write_slice(b"abcd", GuestAddress(0x4ffc)).unwrap();
        let ram = GuestRam::new(Arc::new(mem));
        assert_eq!(ram.locate(0, 0x1000), Some(0));
        assert_eq!(ram.locate(0x1800, 0x800), Some(1));
        assert_eq!(ram.locate(0xff0, 0x20), None, "spans two regions");
        assert_eq!(ram.locate(0x2000, 1), None, "in the gap");
        assert_eq!(ram.locate(0x4ffc, 5), None, "past the end");
        assert_eq!(ram.locate(u64::MAX, 2), None);
        // Looking at another region first changes nothing.
        for near in [0, 1, 2, 7, u32::MAX] {
            assert_eq!(ram.locate_near(0x1800, 0x800, near), Some(1));
            assert_eq!(ram.locate_near(0x4ffc, 4, near), Some(2));
            assert_eq!(
                ram.locate_near(0xff0, 0x20, near),
                None,
                "spans two regions"
            );
            assert_eq!(ram.locate_near(0x4ffc, 5, near), None, "past the end");
            assert_eq!(ram.locate_near(0x2000, 1, near), None, "in the gap");
        }
        let mut got = [0u8; 4];
        ram.slice(0x4ffc, 4).unwrap().copy_to(&mut got[..]);
        assert_eq!(&got, b"abcd");
        assert!(ram.slice_in(2, 0x4ffc, 5).is_none());
        assert!(ram.slice_in(1, 0x4ffc, 4).is_none(), "not in that region");
        assert!(ram.slice_in(3, 0, 1).is_none());
        assert!(ram.slice_in(0, 0x1000, 0).is_some_and(|s| s.is_empty()));
    }
}
