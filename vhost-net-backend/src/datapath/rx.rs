//! Delivering one frame into a guest's receive queue: virtio-net header, then the frame, copied
//! into as many buffers as MRG_RXBUF allows. The used entries are written, not published: the
//! caller publishes every frame of its batch with one used-index update when it signals the
//! guest ([`Vring::notify`], once per batch and receive queue).
//!
//! The caller holds the RX vring's lock.

use std::cell::{RefCell, RefMut};

use bridge_core::offload;
use vm_memory::{Bytes, GuestAddress};

use super::chain::{self, ChainError, DescTable, Direction, Seg, WalkParams};
use bridge_core::Egress;

use super::copy::{self, Reader, Source};
use super::counters::DeviceDrop;
use super::vnet_hdr::{VnetHdr, MAX_HDR_LEN};
use crate::port::Port;
use crate::vhu_net::Negotiated;
use crate::vring::{Ring, UsedElem, Vring, MAX_QUEUE_SIZE};

/// Why a frame was not delivered. Each is a drop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    /// The receive queue is not running (not started, disabled, or no memory).
    #[error("receive queue not running")]
    NotRunning,
    /// The guest has not posted enough receive buffers.
    #[error("no receive buffers")]
    NoBuffers,
    /// The frame does not fit one receive buffer (no MRG_RXBUF).
    #[error("frame larger than the receive buffer")]
    TooBig,
    /// A receive chain is malformed; it is returned to the guest empty.
    #[error("malformed receive chain")]
    Chain(#[source] ChainError),
    /// The available ring index is corrupt.
    #[error("corrupt available ring")]
    AvailCorrupt,
}

/// Scratch space for deliveries, allocated once per worker.
#[derive(Debug)]
pub struct RxScratch {
    segs: Box<[Seg]>,
    used: Box<[UsedElem]>,
}

impl Default for RxScratch {
    fn default() -> Self {
        RxScratch {
            segs: vec![Seg::default(); usize::from(MAX_QUEUE_SIZE)].into_boxed_slice(),
            used: vec![UsedElem::default(); usize::from(MAX_QUEUE_SIZE)].into_boxed_slice(),
        }
    }
}

/// Most receive chains a held queue takes ahead of its frames.
const AHEAD: usize = 16;

/// Receive chains taken ahead of the frames they are for, from a queue its holder keeps locked
/// for a batch: the usual receive chain (one buffer, in one memory region) popped and walked in
/// a run, so that a frame delivered into one costs its copy and a used entry, not the ring's
/// set-up, a chain's walk and a prefetch each. The used entries are written and the chains not
/// used given back ([`settle`](Self::settle)) before anything else uses the queue's ring, and
/// before the holder publishes its used entries or unlocks it.
#[derive(Debug)]
pub struct Ahead {
    /// Each chain's head and buffer.
    chains: [(u16, Seg); AHEAD],
    /// The used entries of the chains used, in order.
    used: [UsedElem; AHEAD],
    /// Chains taken; the first `next` of them used.
    taken: usize,
    next: usize,
    /// Frames delivered into chains taken ahead since the queue was locked: the next run takes
    /// as many (1 to [`AHEAD`]), so a queue held for a frame or two takes no chain it does not
    /// use, and one held for a batch takes runs of 1, 1, 2, 4, 8, then 16.
    delivered: usize,
    /// The virtio-net header's length in the queue's frames.
    hdr_len: usize,
    /// The queue posts chains this does not take (several buffers, a malformed chain) or
    /// frames larger than its buffers: its frames are delivered one by one.
    off: bool,
}

impl Default for Ahead {
    fn default() -> Self {
        Ahead {
            chains: [(0, Seg::default()); AHEAD],
            used: [UsedElem::default(); AHEAD],
            taken: 0,
            next: 0,
            delivered: 0,
            hdr_len: 0,
            off: false,
        }
    }
}

impl Ahead {
    /// The batch's chains taken ahead, `cell`, for a queue its holder has just locked.
    pub fn start(cell: &RefCell<Ahead>) -> RefMut<'_, Ahead> {
        let mut ahead = cell.borrow_mut();
        debug_assert_eq!(ahead.taken, 0, "settled by the last holder");
        (ahead.delivered, ahead.off) = (0, false);
        ahead
    }

    /// Delivers a frame as [`deliver`] does into the next chain taken ahead from `vring`,
    /// taking a run of chains if none is left. Returns the frame's length, or `None`, having
    /// delivered nothing, when no chain is taken or the frame needs more than the chain's one
    /// buffer: the caller settles and delivers it with [`deliver`].
    #[inline]
    pub fn deliver(
        &mut self,
        vring: &mut Vring,
        hdr: &VnetHdr,
        head: [&[u8]; 2],
        body: Source<'_>,
        scratch: &mut RxScratch,
    ) -> Option<usize> {
        if self.next == self.taken && !self.take(vring, scratch) {
            return None;
        }
        let (index, seg) = self.chains[self.next];
        let mut vnet = [0u8; MAX_HDR_LEN];
        hdr.emit(&mut vnet, 1);
        let pieces = [&vnet[..self.hdr_len], head[0], head[1]];
        let frame_len = head[0].len() + head[1].len() + body.byte_len();
        let len = self.hdr_len + frame_len;
        if !copy::write_whole(vring.ram()?, &seg, pieces, body, len) {
            self.off = true;
            return None;
        }
        self.used[self.next] = UsedElem {
            head: index,
            len: len as u32,
        };
        self.next += 1;
        vring.fed();
        Some(frame_len)
    }

    /// Settles, then takes a run of chains: as many as frames were delivered into taken
    /// chains so far (1 to [`AHEAD`]), up to the first the queue has not or this does not take
    /// (left for [`deliver`]). The buffers after the first are prefetched for writing. Returns
    /// whether it took any.
    #[inline(never)]
    fn take(&mut self, vring: &mut Vring, scratch: &mut RxScratch) -> bool {
        self.settle(vring);
        if self.off {
            return false;
        }
        let features = Negotiated(vring.features());
        let Some(mut ring) = vring.parts() else {
            return false;
        };
        let (params, mem) = (walk_params(&ring, features), ring.mem());
        self.hdr_len = features.header_len();
        let want = self.delivered.clamp(1, AHEAD);
        while self.taken < want {
            let Ok(Some(head)) = ring.pop_head() else {
                break;
            };
            match chain::walk(mem, &params, head, &mut scratch.segs) {
                Ok((1, _)) if scratch.segs[0].region != chain::SPANS => {
                    let seg = scratch.segs[0];
                    // The run's first buffer is written next: too soon for a prefetch.
                    if self.taken > 0 {
                        mem.prefetch_for_write(seg.addr, 2);
                    }
                    self.chains[self.taken] = (head, seg);
                    self.taken += 1;
                }
                _ => {
                    ring.unpop(1);
                    self.off = self.taken == 0;
                    break;
                }
            }
        }
        self.taken > 0
    }

    /// Writes the used entries of the chains used and gives the others back to the available
    /// ring (they are the last taken from it).
    #[inline]
    pub fn settle(&mut self, vring: &mut Vring) {
        if self.taken == 0 {
            return;
        }
        // It runs: the chains were taken from it under the same lock.
        if let Some(mut ring) = vring.parts() {
            ring.push_used(&self.used[..self.next]);
            ring.unpop((self.taken - self.next) as u16);
        }
        self.delivered += self.next;
        (self.taken, self.next) = (0, 0);
    }
}

/// Guest addresses of the num_buffers field (bytes 10 and 11 of the first chain).
fn num_buffers_addrs(segs: &[Seg]) -> [Option<u64>; 2] {
    let mut out = [None, None];
    let mut base = 0u64;
    for s in segs {
        for (slot, off) in out.iter_mut().zip([10u64, 11]) {
            if off >= base && off < base + u64::from(s.len) {
                *slot = Some(s.addr + (off - base));
            }
        }
        base += u64::from(s.len);
    }
    out
}

/// Delivers `frame`, bytes in the backend, to `port`'s receive queue of pair `pair` (or its
/// first), after the switch's `egress` rewrite; failures are counted on `port`. Returns the
/// receive ring's index when delivered, for one signal per batch.
pub fn deliver_bytes(
    port: &Port,
    pair: usize,
    frame: &[u8],
    egress: Egress,
    scratch: &mut RxScratch,
) -> Option<usize> {
    let rewritten = egress.apply(frame)?;
    let Some((ring, mut vring)) = port.rx_vring(pair) else {
        port.counters().record(DeviceDrop::RxNotRunning);
        return None;
    };
    let body = Source::Local(rewritten.tail());
    match deliver(
        &mut vring,
        &VnetHdr::default(),
        [rewritten.head(), &[]],
        body,
        scratch,
    ) {
        Ok(n) => {
            port.switch_counters().record_tx(n);
            Some(ring)
        }
        Err(e) => {
            port.counters().record(e.into());
            None
        }
    }
}

/// Delivers a frame made of `head` (local pieces: rewritten headers, the rest of a copied head;
/// possibly empty) and `body` to the guest behind `vring`, with `hdr` as its virtio-net header.
/// Returns the frame length.
pub fn deliver(
    vring: &mut Vring,
    hdr: &VnetHdr,
    head: [&[u8]; 2],
    body: Source<'_>,
    scratch: &mut RxScratch,
) -> Result<usize, RxError> {
    let features = Negotiated(vring.features());
    let Some(mut ring) = vring.parts() else {
        return Err(RxError::NotRunning);
    };
    let mem = ring.mem();
    let hdr_len = features.header_len();
    // The 10-byte header is the 12-byte one without num_buffers.
    let mut vnet = [0u8; MAX_HDR_LEN];
    hdr.emit(&mut vnet, 1);
    let pieces = [&vnet[..hdr_len], head[0], head[1]];
    let frame_len = head[0].len() + head[1].len() + body.byte_len();

    let params = walk_params(&ring, features);
    let (head_index, nsegs) = take_chain(&mut ring, &params, scratch, 0)?;
    // The usual case: the whole frame in the chain's one buffer.
    if let [seg] = &scratch.segs[..nsegs] {
        let len = hdr_len + frame_len;
        if copy::write_whole(mem, seg, pieces, body, len) {
            ring.push_used(&[UsedElem {
                head: head_index,
                len: len as u32,
            }]);
            vring.fed();
            return Ok(frame_len);
        }
    }

    let reader = Reader::with_locals(pieces, body);
    deliver_spread(vring, (head_index, nsegs), reader, scratch)?;
    vring.fed();
    Ok(frame_len)
}

/// How the chains of receive ring `ring` are walked.
#[inline]
fn walk_params<'a>(ring: &Ring<'a>, features: Negotiated) -> WalkParams<'a> {
    WalkParams {
        table: DescTable::Host(ring.desc_table()),
        queue_size: ring.size(),
        indirect: features.indirect(),
        direction: Direction::Write,
        max_len: u32::MAX,
    }
}

/// Copies `reader`'s bytes into the chain `taken` from `vring` (its head, and its buffer count
/// in the scratch space), then into as many more as MRG_RXBUF allows; writes their used
/// entries (and the frame's num_buffers). Out of line, with the ring looked up again: the usual
/// frame, whole in one buffer, does not pay for this loop's registers or keep its ring in
/// memory for it.
#[inline(never)]
fn deliver_spread(
    vring: &mut Vring,
    taken: (u16, usize),
    mut reader: Reader<'_>,
    scratch: &mut RxScratch,
) -> Result<(), RxError> {
    let features = Negotiated(vring.features());
    // It runs: the caller took a chain from it under the same lock.
    let Some(mut ring) = vring.parts() else {
        return Err(RxError::NotRunning);
    };
    let (params, mrg) = (walk_params(&ring, features), features.mrg_rxbuf());
    let (mut head_index, mut nsegs) = taken;
    let mem = ring.mem();
    let mut count = 0usize;
    let mut nb_addrs = [None, None];
    loop {
        let segs = &scratch.segs[..nsegs];
        let written = reader.copy_into(mem, segs);
        if let Some(first) = segs.first().filter(|_| count == 0) {
            copy::demote_head(mem, first, written);
            if mrg && reader.remaining() > 0 {
                nb_addrs = num_buffers_addrs(segs);
            }
        }
        scratch.used[count] = UsedElem {
            head: head_index,
            len: written as u32,
        };
        count += 1;
        if reader.remaining() == 0 {
            break;
        }
        if !mrg || count == scratch.used.len() {
            ring.unpop(count as u16);
            return Err(RxError::TooBig);
        }
        (head_index, nsegs) = take_chain(&mut ring, &params, scratch, count)?;
    }
    if mrg && count > 1 {
        let n = (count as u16).to_le_bytes();
        for (addr, byte) in nb_addrs.iter().zip(n) {
            if let Some(a) = addr {
                let _ = mem.memory().write_obj(byte, GuestAddress(*a));
            }
        }
    }
    ring.push_used(&scratch.used[..count]);
    Ok(())
}

/// Takes the next receive chain for a frame that has `count` chains already and walks it into
/// `scratch.segs`: its head and buffer count. On failure the `count` chains are put back (no
/// buffers, a corrupt ring) or returned to the guest empty with the bad one (a malformed chain).
/// Inlined: as a call (which the compiler made of it), its register saves and argument moves
/// cost 28 instructions a frame.
#[inline(always)]
fn take_chain(
    ring: &mut Ring<'_>,
    params: &WalkParams,
    scratch: &mut RxScratch,
    count: usize,
) -> Result<(u16, usize), RxError> {
    let head_index = match ring.pop_head() {
        Ok(Some(h)) => h,
        Ok(None) => {
            ring.unpop(count as u16);
            return Err(RxError::NoBuffers);
        }
        Err(_) => {
            ring.unpop(count as u16);
            return Err(RxError::AvailCorrupt);
        }
    };
    ring.prefetch_next();
    match chain::walk(ring.mem(), params, head_index, &mut scratch.segs) {
        Ok((n, _)) => Ok((head_index, n)),
        Err(e) => {
            // Give every chain taken for this frame back empty, the bad one included (unless
            // its head names no descriptor), so the guest can post them again.
            let used = &mut scratch.used[..count];
            used.iter_mut().for_each(|u| u.len = 0);
            ring.add_used(used);
            if head_index < ring.size() {
                let bad = UsedElem {
                    head: head_index,
                    len: 0,
                };
                ring.add_used(&[bad]);
            }
            Err(RxError::Chain(e))
        }
    }
}

/// Delivers `frame`, whose sender left offloads to do (`hdr`: a partial checksum, a TSO
/// super-frame), to a guest that did not negotiate them: checksummed and segmented in software
/// by bridge-core, each segment a frame of its own. `each` gets every segment's result and
/// returns whether to go on (the segments after a `false` are not delivered). Fails when the
/// frame's headers do not match its offload request.
pub fn deliver_completed(
    vring: &mut Vring,
    hdr: &VnetHdr,
    frame: &[u8],
    scratch: &mut RxScratch,
    mut each: impl FnMut(Result<usize, RxError>) -> bool,
) -> Result<(), offload::Error> {
    let mut going = true;
    offload::complete(frame, &hdr.offload_params(), |seg| {
        if !going {
            return;
        }
        let body = Source::Local(seg.payload());
        going = each(deliver(
            vring,
            &VnetHdr::default(),
            [seg.head(), &[]],
            body,
            scratch,
        ));
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{guest_memory, TestRing};
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestMemoryMmap;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const V1: u64 = 1 << VIRTIO_F_VERSION_1;
    const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

    /// Delivers `f` with a plain header and publishes it, as the end of a batch does.
    fn put(v: &mut Vring, f: &[u8]) -> Result<usize, RxError> {
        let got = deliver(
            v,
            &VnetHdr::default(),
            [&[], &[]],
            Source::Local(f),
            &mut RxScratch::default(),
        );
        v.notify();
        got
    }

    #[test]
    fn frames_are_published_together_when_the_guest_is_signalled() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        for i in 0..3 {
            ring.post(&[(0x100000 + i * 0x1000, 2048, W)]);
        }
        let mut v = ring.vring(mem.clone(), V1);
        let mut scratch = RxScratch::default();
        for len in [60, 70] {
            let f = frame(len);
            let got = deliver(
                &mut v,
                &VnetHdr::default(),
                [&[], &[]],
                Source::Local(&f),
                &mut scratch,
            );
            assert_eq!(got, Ok(len));
        }
        assert_eq!(ring.used_idx(), 0, "written, not yet the driver's");
        assert_eq!(ring.used(1), (1, 82), "the entries are in place");
        v.notify();
        assert_eq!(ring.used_idx(), 2, "both published with one index update");
        // A ring stopped mid-batch publishes what it wrote before it reports its base.
        let f = frame(80);
        let got = deliver(
            &mut v,
            &VnetHdr::default(),
            [&[], &[]],
            Source::Local(&f),
            &mut scratch,
        );
        assert_eq!(got, Ok(80));
        assert_eq!(ring.used_idx(), 2);
        assert_eq!(v.stop(), 3);
        assert_eq!(ring.used_idx(), 3);
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    #[test]
    fn one_buffer_with_version_1_header() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        let head = ring.post(&[(0x100000, 2048, W)]);
        let mut v = ring.vring(mem.clone(), V1);
        let f = frame(60);
        let got = put(&mut v, &f);
        assert_eq!(got, Ok(60));
        assert_eq!(ring.used_idx(), 1);
        assert_eq!(ring.used(0), (u32::from(head), 72));
        let hdr = read(&mem, 0x100000, 12);
        assert_eq!(
            hdr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "num_buffers = 1 with VERSION_1"
        );
        assert_eq!(read(&mem, 0x100000 + 12, 60), f);
    }

    #[test]
    fn legacy_header_is_ten_bytes_and_head_is_prepended() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        // Header and frame in separate buffers, as legacy drivers without ANY_LAYOUT post them.
        ring.post(&[(0x100000, 10, W), (0x101000, 1514, W)]);
        let mut v = ring.vring(mem.clone(), 0);
        let head = [0xaau8; 16];
        let f = frame(44);
        deliver(
            &mut v,
            &VnetHdr::default(),
            [&head[..10], &head[10..]],
            Source::Local(&f),
            &mut RxScratch::default(),
        )
        .unwrap();
        assert_eq!(ring.used(0).1, 10 + 16 + 44);
        assert_eq!(read(&mem, 0x100000, 10), [0u8; 10]);
        assert_eq!(read(&mem, 0x101000, 16), head);
        assert_eq!(read(&mem, 0x101000 + 16, 44), f);
    }

    #[test]
    fn mergeable_buffers_carry_num_buffers() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        let heads: Vec<u16> = (0..4)
            .map(|i| ring.post(&[(0x100000 + i * 0x1000, 100, W)]))
            .collect();
        let mut v = ring.vring(mem.clone(), V1 | MRG);
        let f = frame(250);
        assert_eq!(put(&mut v, &f), Ok(250));
        assert_eq!(ring.used_idx(), 3);
        assert_eq!(ring.used(0), (u32::from(heads[0]), 100));
        assert_eq!(ring.used(1), (u32::from(heads[1]), 100));
        assert_eq!(ring.used(2), (u32::from(heads[2]), 62));
        assert_eq!(read(&mem, 0x100000 + 10, 2), [3, 0]);
        let mut got = read(&mem, 0x100000 + 12, 88);
        got.extend(read(&mem, 0x101000, 100));
        got.extend(read(&mem, 0x102000, 62));
        assert_eq!(got, f);
    }

    #[test]
    fn a_frame_across_chains_of_several_buffers_from_a_guest_source() {
        let mem = guest_memory();
        let ram = crate::sys::GuestRam::new(mem.clone());
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        // Chains of three buffers; the first ends inside the virtio-net header.
        let first = ring.post(&[(0x100000, 7, W), (0x100100, 20, W), (0x100200, 30, W)]);
        let second = ring.post(&[(0x101000, 16, W), (0x101100, 64, W)]);
        let mut v = ring.vring(mem.clone(), V1 | MRG);
        // The sender's chain: 12 header bytes to skip, then the frame after its head.
        let rest = frame(90);
        mem.write_slice(&rest, GuestAddress(0x200000 + 12)).unwrap();
        let src = [Seg::at(0x200000, 12 + 40), Seg::at(0x200000 + 52, 50)];
        let source = Source::Guest {
            mem: &ram,
            segs: &src,
            skip: 12,
        };
        let head = [0xb0u8, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5];
        let got = deliver(
            &mut v,
            &VnetHdr::default(),
            [&head[..2], &head[2..]],
            source,
            &mut RxScratch::default(),
        );
        v.notify();
        assert_eq!(got, Ok(96));
        assert_eq!(ring.used_idx(), 2);
        assert_eq!(ring.used(0), (u32::from(first), 57));
        assert_eq!(ring.used(1), (u32::from(second), 51));
        let mut bytes = read(&mem, 0x100000, 7);
        bytes.extend(read(&mem, 0x100100, 20));
        bytes.extend(read(&mem, 0x100200, 30));
        bytes.extend(read(&mem, 0x101000, 16));
        bytes.extend(read(&mem, 0x101100, 35));
        assert_eq!(
            bytes[..12],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0],
            "num_buffers"
        );
        assert_eq!(bytes[12..18], head);
        assert_eq!(bytes[18..], rest);
    }

    #[test]
    fn legacy_header_without_mergeable_buffers_in_one_chain() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        ring.post(&[(0x100000, 4, W), (0x100100, 100, W)]);
        let mut v = ring.vring(mem.clone(), 0);
        let f = frame(80);
        assert_eq!(put(&mut v, &f), Ok(80));
        assert_eq!(ring.used(0).1, 90);
        let mut bytes = read(&mem, 0x100000, 4);
        bytes.extend(read(&mem, 0x100100, 86));
        assert_eq!(bytes[..10], [0u8; 10], "ten bytes, no num_buffers");
        assert_eq!(bytes[10..], f);
    }

    #[test]
    fn missing_buffers_consume_nothing() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        let mut v = ring.vring(mem.clone(), V1 | MRG);
        let mut scratch = RxScratch::default();
        let f = frame(250);
        let hdr = VnetHdr::default();
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&f), &mut scratch),
            Err(RxError::NoBuffers)
        );
        // Two buffers are not enough for 262 bytes: both stay available.
        ring.post(&[(0x100000, 100, W)]);
        ring.post(&[(0x101000, 100, W)]);
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&f), &mut scratch),
            Err(RxError::NoBuffers)
        );
        assert_eq!(ring.used_idx(), 0);
        ring.post(&[(0x102000, 100, W)]);
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&f), &mut scratch),
            Ok(250)
        );
        v.notify();
        assert_eq!(ring.used_idx(), 3);
    }

    #[test]
    fn too_big_for_a_single_buffer_keeps_the_buffer() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        ring.post(&[(0x100000, 1526, W)]);
        let mut v = ring.vring(mem.clone(), V1);
        let mut scratch = RxScratch::default();
        let big = frame(9000);
        let hdr = VnetHdr::default();
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&big), &mut scratch),
            Err(RxError::TooBig)
        );
        assert_eq!(ring.used_idx(), 0);
        assert_eq!(
            deliver(
                &mut v,
                &hdr,
                [&[], &[]],
                Source::Local(&frame(1514)),
                &mut scratch
            ),
            Ok(1514)
        );
        assert_eq!(ring.used(0).1, 1526);
    }

    #[test]
    fn hostile_chains_are_returned_and_the_queue_keeps_working() {
        let mem = guest_memory();
        let mut ring = TestRing::new(&mem, 0x10000, 16);
        let mut v = ring.vring(mem.clone(), V1);
        let mut scratch = RxScratch::default();
        let f = frame(100);
        let hdr = VnetHdr::default();
        // A device-readable buffer in a receive chain.
        let bad = ring.post(&[(0x100000, 2048, 0)]);
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&f), &mut scratch),
            Err(RxError::Chain(ChainError::WrongDirection))
        );
        assert_eq!((ring.used_idx(), ring.used(0)), (1, (u32::from(bad), 0)));
        // A buffer outside guest memory.
        let bad = ring.post(&[(crate::test_util::MEM_SIZE, 2048, W)]);
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&f), &mut scratch),
            Err(RxError::Chain(ChainError::OutOfMemory))
        );
        assert_eq!(ring.used(1), (u32::from(bad), 0));
        // A head index past the table: consumed, not returned (it names no descriptor).
        ring.post_head(40);
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&f), &mut scratch),
            Err(RxError::Chain(ChainError::BadIndex))
        );
        assert_eq!(ring.used_idx(), 2);
        // A next link past the table: the chain is returned.
        ring.put_desc(7, 0x100000, 64, W | 1, 300);
        ring.post_head(7);
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&f), &mut scratch),
            Err(RxError::Chain(ChainError::BadIndex))
        );
        assert_eq!((ring.used_idx(), ring.used(2)), (3, (7, 0)));
        // A loop.
        ring.put_desc(9, 0x100000, 64, W | 1, 9);
        ring.post_head(9);
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&f), &mut scratch),
            Err(RxError::Chain(ChainError::TooLong))
        );
        // A good buffer still works.
        let good = ring.post(&[(0x100000, 2048, W)]);
        assert_eq!(
            deliver(&mut v, &hdr, [&[], &[]], Source::Local(&f), &mut scratch),
            Ok(100)
        );
        v.notify();
        assert_eq!(ring.used_idx(), 5, "the looping chain was returned too");
        assert_eq!(ring.used(4), (u32::from(good), 112));
    }

    #[test]
    fn not_running_is_refused() {
        let mem = guest_memory();
        let ring = TestRing::new(&mem, 0x10000, 16);
        let mut v = ring.vring(mem.clone(), V1);
        v.set_enabled(false);
        let f = frame(60);
        assert_eq!(put(&mut v, &f), Err(RxError::NotRunning));
    }
}
