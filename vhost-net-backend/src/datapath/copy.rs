//! Copying a frame into a receiving guest's buffers: straight from the sending guest's buffers
//! (the single copy of the VM-to-VM path) or from local bytes (headers, software segments).

use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::chain::Seg;
use crate::sys::{self, GuestRam};

/// The largest piece of buffer `seg` from byte `off` on (up to `max` bytes) that is
/// contiguous in the backend's address space: found in the region the chain walk located it
/// in, or, for a buffer across regions, by a region lookup.
fn slice_at<'m>(
    mem: &'m GuestRam,
    seg: &Seg,
    off: usize,
    max: usize,
) -> Option<VolatileSlice<'m, ()>> {
    let addr = seg.addr + off as u64;
    mem.slice_in(seg.region, addr, max).or_else(|| {
        GuestMemoryBackend::get_slices(mem.memory(), GuestAddress(addr), max)
            .next()?
            .ok()
    })
}

/// How much of a delivered frame's first buffer leaves this CPU's caches once written: the
/// virtio-net header and the frame's first bytes, what the guest's driver reads first.
/// Demoting every line of a 1500-byte frame cost the device more than the guest gained.
const DEMOTED: usize = 128;

/// Hands the lines at bytes 0 and 64 of `seg` (of the `written` bytes; the first [`DEMOTED`]
/// when the buffer starts on a line) to the shared cache ([`sys::demote`]): the receiving
/// guest, on another CPU, reads them next, and takes them from there instead of from this
/// CPU.
pub fn demote_head(mem: &GuestRam, seg: &Seg, written: usize) {
    if let Some(dst) = slice_at(mem, seg, 0, written.min(DEMOTED)) {
        demote_lines(&dst, dst.len());
    }
}

/// Demotes the lines at bytes 0 and 64 of `dst` that hold some of its first `written` bytes
/// (up to [`DEMOTED`]).
#[inline]
fn demote_lines(dst: &VolatileSlice<'_, ()>, written: usize) {
    if written > 0 {
        sys::demote(dst, 0);
    }
    if written.min(DEMOTED) > 64 {
        sys::demote(dst, 64);
    }
}

/// Writes a whole frame, `len` bytes (`pieces` then `body`), into the buffer `seg` if it
/// holds them and lies in one memory region (the usual receive buffer): one bounds check, then
/// a copy per piece, without the [`Reader`]'s bookkeeping; then demotes its head as
/// [`demote_head`] does. Returns false, having written nothing or bytes the caller writes
/// again, if the buffer does not qualify or the sender's memory went away.
#[inline]
pub fn write_whole(
    mem: &GuestRam,
    seg: &Seg,
    pieces: [&[u8]; 3],
    body: Source<'_>,
    len: usize,
) -> bool {
    if (seg.len as usize) < len {
        return false;
    }
    let Some(dst) = mem.slice_in(seg.region, seg.addr, len) else {
        return false;
    };
    let mut at = 0;
    for piece in pieces {
        at += sys::copy_to_slice(&dst, at, piece);
    }
    let done = match body {
        Source::Local(bytes) => at + sys::copy_to_slice(&dst, at, bytes),
        Source::Guest { .. } if at == len => at,
        Source::Guest { .. } => {
            let Ok(rest) = dst.offset(at) else {
                return false;
            };
            at + Reader::with_locals([&[]; 3], body).fill(&rest)
        }
    };
    if done != len {
        return false;
    }
    demote_lines(&dst, len);
    true
}

/// Where frame bytes come from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A guest's buffers, from byte `skip` of the chain on.
    Guest {
        /// The sending guest's memory.
        mem: &'a GuestRam,
        /// Its chain's buffers.
        segs: &'a [Seg],
        /// Bytes of the chain to skip (its virtio-net header, a rewritten Ethernet head).
        skip: usize,
    },
    /// Bytes in the backend.
    Local(&'a [u8]),
}

impl Source<'_> {
    /// The bytes it holds (a guest chain's after `skip`).
    #[inline]
    pub fn byte_len(&self) -> usize {
        match *self {
            Source::Local(bytes) => bytes.len(),
            // The usual frame, in one buffer, without the sum's loop.
            Source::Guest {
                segs: [seg], skip, ..
            } => (seg.len as usize).saturating_sub(skip),
            Source::Guest { segs, skip, .. } => segs
                .iter()
                .map(|s| s.len as usize)
                .sum::<usize>()
                .saturating_sub(skip),
        }
    }
}

/// Reads up to three local pieces (a virtio-net header, a rewritten head, the rest of a frame's
/// copied head), then a [`Source`], in order.
#[derive(Debug)]
pub struct Reader<'a> {
    locals: [&'a [u8]; 3],
    source: Source<'a>,
    seg: usize,
    seg_off: usize,
    remaining: usize,
}

impl<'a> Reader<'a> {
    /// `first`, `second`, then `source`. A guest source is read to the end of its chain.
    #[inline]
    pub fn new(first: &'a [u8], second: &'a [u8], source: Source<'a>) -> Self {
        Self::with_locals([first, second, &[]], source)
    }

    /// The `locals` in order, then `source`.
    #[inline]
    pub fn with_locals(locals: [&'a [u8]; 3], source: Source<'a>) -> Self {
        let mut r = Reader {
            locals,
            source,
            seg: 0,
            seg_off: 0,
            remaining: 0,
        };
        r.remaining = locals.iter().map(|l| l.len()).sum::<usize>() + source.byte_len();
        if let Source::Guest { skip, .. } = source {
            r.skip(skip);
        }
        r
    }

    fn skip(&mut self, mut n: usize) {
        if let Source::Guest { segs, .. } = self.source {
            while let Some(s) = segs.get(self.seg) {
                let left = s.len as usize - self.seg_off;
                if n < left {
                    self.seg_off += n;
                    return;
                }
                n -= left;
                self.seg += 1;
                self.seg_off = 0;
            }
        }
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Fills as much of `dst` as there is data for; returns the bytes written. Returns less
    /// than possible only if the sending guest's memory went away under it. Each piece is one
    /// direct copy into `dst`, which the caller resolved (and bounds-checked) once.
    fn fill(&mut self, dst: &VolatileSlice<'_, ()>) -> usize {
        let mut done = 0;
        for local in self.locals.iter_mut().filter(|l| !l.is_empty()) {
            let n = sys::copy_to_slice(dst, done, local);
            *local = &local[n..];
            done += n;
            if !local.is_empty() {
                // `dst` is full.
                self.remaining -= done;
                return done;
            }
        }
        match self.source {
            Source::Local(bytes) => {
                let left = self.remaining - done;
                done += sys::copy_to_slice(dst, done, &bytes[bytes.len() - left..]);
            }
            Source::Guest { mem, segs, .. } => {
                while done < dst.len() && done < self.remaining {
                    let Some(s) = segs.get(self.seg) else { break };
                    let in_seg = s.len as usize - self.seg_off;
                    if in_seg > 0 {
                        let want = in_seg.min(dst.len() - done);
                        let Some(src) = slice_at(mem, s, self.seg_off, want) else {
                            break;
                        };
                        let n = sys::copy_between(dst, done, &src);
                        if n == 0 {
                            break;
                        }
                        self.seg_off += n;
                        done += n;
                    }
                    if self.seg_off == s.len as usize {
                        self.seg += 1;
                        self.seg_off = 0;
                    }
                }
            }
        }
        self.remaining -= done;
        done
    }

    /// Copies into the buffers `segs` of `mem`, in order, until they are full or the reader is
    /// empty; returns the bytes written.
    pub fn copy_into(&mut self, mem: &GuestRam, segs: &[Seg]) -> usize {
        let mut written = 0;
        for s in segs {
            let mut off = 0usize;
            while off < s.len as usize && self.remaining > 0 {
                let Some(dst) = slice_at(mem, s, off, s.len as usize - off) else {
                    return written;
                };
                let n = self.fill(&dst);
                if n == 0 {
                    return written;
                }
                off += n;
                written += n;
            }
            if self.remaining == 0 {
                break;
            }
        }
        written
    }

    /// Copies the next bytes into `out` (a local buffer); returns how many.
    pub fn read_local(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.remaining);
        let slice = VolatileSlice::from(&mut out[..n]);
        self.fill(&slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn mem() -> GuestRam {
        // Two regions back to back: buffers may straddle them.
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        GuestRam::new(Arc::new(m))
    }

    #[test]
    fn guest_to_guest_across_segments_and_regions() {
        let src_mem = mem();
        let dst_mem = mem();
        let frame: Vec<u8> = (0..200u8).collect();
        // Source: 10-byte header + frame, split 50 / 160 with the second straddling regions.
        let mut chain = vec![0xeeu8; 10];
        chain.extend_from_slice(&frame);
        src_mem
            .memory()
            .write_slice(&chain[..50], GuestAddress(0x100))
            .unwrap();
        src_mem
            .memory()
            .write_slice(&chain[50..], GuestAddress(0xfc0))
            .unwrap();
        let src_segs = [
            Seg {
                addr: 0x100,
                len: 50,
                region: 0,
            },
            Seg::at(0xfc0, 160),
        ];
        let prefix = [1u8, 2, 3];
        let mut r = Reader::new(
            &prefix[..1],
            &prefix[1..],
            Source::Guest {
                mem: &src_mem,
                segs: &src_segs,
                skip: 10,
            },
        );
        assert_eq!(r.remaining(), 203);
        let dst_segs = [
            Seg::at(0xff0, 100),
            Seg {
                addr: 0x200,
                len: 500,
                region: 0,
            },
        ];
        assert_eq!(r.copy_into(&dst_mem, &dst_segs), 203);
        assert_eq!(r.remaining(), 0);
        let out = gather(&dst_mem, &dst_segs);
        assert_eq!(&out[..3], &prefix);
        assert_eq!(&out[3..203], &frame[..]);
    }

    /// Reads `segs` of `m` back, in order.
    fn gather(m: &GuestRam, segs: &[Seg]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in segs {
            let mut b = vec![0u8; s.len as usize];
            m.memory().read_slice(&mut b, GuestAddress(s.addr)).unwrap();
            out.extend(b);
        }
        out
    }

    #[test]
    fn header_and_locals_split_across_small_buffers_and_regions() {
        let src_mem = mem();
        let dst_mem = mem();
        let hdr: Vec<u8> = (100..112).collect();
        let head = [0xa1u8, 0xa2, 0xa3, 0xa4];
        let tail: Vec<u8> = (0..30).collect();
        let rest: Vec<u8> = (200..250).collect();
        // The rest in the sender's memory after 8 bytes to skip, across its two regions.
        src_mem
            .memory()
            .write_slice(&rest, GuestAddress(0xff8 + 8))
            .unwrap();
        let src_segs = [Seg::at(0xff8, 20), Seg::at(0x100c, 38)];
        let source = Source::Guest {
            mem: &src_mem,
            segs: &src_segs,
            skip: 8,
        };
        let mut r = Reader::with_locals([&hdr, &head, &tail], source);
        assert_eq!(r.remaining(), 12 + 4 + 30 + 50);
        // Buffers smaller than the header, one across the regions, one in a wrong region.
        let dst_segs = [
            Seg::at(0x10, 5),
            Seg {
                addr: 0x20,
                len: 9,
                region: 0,
            },
            Seg::at(0xff0, 40),
            Seg {
                addr: 0x1800,
                len: 100,
                region: 0,
            },
        ];
        assert_eq!(r.copy_into(&dst_mem, &dst_segs), 96);
        assert_eq!(r.remaining(), 0);
        let mut want = hdr.clone();
        want.extend_from_slice(&head);
        want.extend_from_slice(&tail);
        want.extend_from_slice(&rest);
        assert_eq!(&gather(&dst_mem, &dst_segs)[..96], &want[..]);
    }

    #[test]
    fn local_source_after_locals_resumes_where_the_buffer_ended() {
        let m = mem();
        let hdr = [9u8; 10];
        let body: Vec<u8> = (0..70).collect();
        let mut r = Reader::with_locals([&hdr, &[], &[]], Source::Local(&body));
        // A first buffer ending inside the header, then one inside the body.
        assert_eq!(
            r.copy_into(&m, &[Seg::at(0x100, 6), Seg::at(0x200, 40)]),
            46
        );
        assert_eq!(r.remaining(), 34);
        assert_eq!(r.copy_into(&m, &[Seg::at(0x300, 100)]), 34);
        let got = gather(
            &m,
            &[Seg::at(0x100, 6), Seg::at(0x200, 40), Seg::at(0x300, 34)],
        );
        let mut want = hdr.to_vec();
        want.extend_from_slice(&body);
        assert_eq!(got, want);
    }

    #[test]
    fn stops_when_destination_is_full() {
        let m = mem();
        let bytes = [7u8; 64];
        let mut r = Reader::new(&[], &[], Source::Local(&bytes));
        assert_eq!(r.copy_into(&m, &[Seg::at(0, 40)]), 40);
        assert_eq!(r.remaining(), 24);
        assert_eq!(r.copy_into(&m, &[Seg::at(100, 40)]), 24);
        let mut out = [0u8; 24];
        m.memory().read_slice(&mut out, GuestAddress(100)).unwrap();
        assert_eq!(out, [7u8; 24]);
    }

    #[test]
    fn whole_frame_into_one_located_buffer() {
        let src_mem = mem();
        let dst_mem = mem();
        let rest: Vec<u8> = (0..40).collect();
        // The body after 4 bytes to skip, across the sender's two regions.
        src_mem
            .memory()
            .write_slice(&rest, GuestAddress(0xff0 + 4))
            .unwrap();
        let src_segs = [Seg::at(0xff0, 44)];
        let body = Source::Guest {
            mem: &src_mem,
            segs: &src_segs,
            skip: 4,
        };
        assert_eq!(body.byte_len(), 40);
        let pieces: [&[u8]; 3] = [&[1, 2], &[], &[3]];
        let buf = Seg {
            addr: 0x100,
            len: 43,
            region: 0,
        };
        assert!(
            !write_whole(&dst_mem, &Seg::at(0x100, 43), pieces, body, 43),
            "not located"
        );
        assert!(!write_whole(&dst_mem, &buf, pieces, body, 44), "too small");
        assert!(write_whole(&dst_mem, &buf, pieces, body, 43));
        let mut want = vec![1u8, 2, 3];
        want.extend_from_slice(&rest);
        assert_eq!(gather(&dst_mem, &[buf]), want);
    }

    #[test]
    fn read_local_gathers() {
        let m = mem();
        m.memory()
            .write_slice(b"hello", GuestAddress(0x10))
            .unwrap();
        m.memory()
            .write_slice(b" world", GuestAddress(0x800))
            .unwrap();
        let segs = [
            Seg {
                addr: 0x10,
                len: 5,
                region: 0,
            },
            Seg {
                addr: 0x800,
                len: 6,
                // A wrong region: the copy finds the right one.
                region: 1,
            },
        ];
        let mut r = Reader::new(
            &[],
            &[],
            Source::Guest {
                mem: &m,
                segs: &segs,
                skip: 2,
            },
        );
        let mut out = [0u8; 32];
        let n = r.read_local(&mut out);
        assert_eq!(&out[..n], b"llo world");
    }
}
