//! One TX batch of a port: up to [`BATCH`] chains from one of its guest's transmit queues, each
//! checked, decided by the switch and delivered; then the used entries published with one index
//! update and the sender signalled once, and every receive queue that got frames has them
//! published with one index update and is signalled once.
//!
//! A frame's first bytes (its virtio-net header and up to [`offload::MAX_HEAD_LEN`] bytes of
//! headers) are copied out of the sender's buffers once; the switch decides on that copy, the
//! policies judge it, and it is what receivers get: the sender cannot change the headers
//! between the decision and the delivery. The rest goes from the sender's buffers straight into
//! the receiver's (one copy), with the virtio-net header passed on when the receiver negotiated
//! the same offloads. For a receiver that did not, the frame is gathered once and bridge-core's
//! offload helpers checksum and segment it in software. Nothing is allocated per frame and no
//! system call is made per frame; the eventfd writes that signal guests are per batch.
//!
//! A unicast frame whose receive queue has no buffers may wait for them (backpressure,
//! [`super::backpressure`]): its chain stays in the sender's ring, the batch ends there
//! ([`Progress::Stalled`]), and the next batch on the queue tries it again with the decision
//! already taken. The stall keeps the bytes that were decided on: a frame its sender changed
//! while it waited is decided and judged again.

use bridge_core::offload;
use bridge_core::policy::HookPoint;
use bridge_core::reject::{reject_reply, MAX_REPLY_LEN};
use bridge_core::{Decision, DecisionCache, DropReason, Egress, IngressBatch, NetworkId, PortId};

use std::cell::{RefCell, RefMut};
use std::ops::Range;
use std::sync::MutexGuard;
use std::time::Instant;

use super::chain::{self, DescTable, Direction, Seg, WalkParams};
use super::copy::{Reader, Source};
use super::counters::DeviceDrop;
use super::policy::{for_each_target, Check, FrameCtx, Outcome, PolicyStage};
use super::rx::{self, RxError, RxScratch};
use super::vnet_hdr::{Gso, VnetHdr, MAX_HDR_LEN};
use super::{Attachment, Datapath, PortTable};
use crate::capture::{self, Captures};
use crate::port::Port;
use crate::sys::{self, GuestRam};
use crate::vhu_net::Negotiated;
use crate::vring::{UsedElem, Vring, MAX_QUEUE_SIZE};

/// Most chains taken from a queue per batch.
pub const BATCH: usize = 64;
/// Ethernet header plus one 802.1Q tag.
const ETH_OVERHEAD: usize = 18;
/// Shortest frame: an Ethernet header.
const ETH_HEADER: usize = 14;
/// Largest frame a guest may send: a 64 KiB IP packet (TSO) with its Ethernet header and tag.
pub const MAX_FRAME_LEN: usize = 65535 + ETH_OVERHEAD;
/// Bytes of each frame read for the switch's decision (and offload's header parsing bound).
const PEEK_LEN: usize = offload::MAX_HEAD_LEN;
/// Receive queues remembered per batch for one signal each (more are signalled at once).
const TOUCHED_MAX: usize = 64;

/// A frame waiting for receive buffers: its chain, what it waits for, and what it was decided
/// on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    head: u16,
    /// The receive queue it waits for.
    pub waiting: Waiting,
    seen: Seen,
}

/// A waiting frame as the switch and the policies saw it: its length, virtio-net header and
/// copied head. Its chain stays in the sender's ring, where the sender can still write it; the
/// frame read again is carried out as decided only if it reads the same, and is decided again
/// if the sender changed it (so what a receiver gets is always what was decided and judged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    len: usize,
    vnet: VnetHdr,
    head_len: usize,
    head: [u8; HEAD_SLOT],
}

impl Seen {
    /// What `frame` reads as (out of line: only a frame that waits needs it).
    #[cold]
    fn of(frame: &TxFrame<'_>) -> Seen {
        let mut head = [0; HEAD_SLOT];
        head[..frame.head.len()].copy_from_slice(frame.head);
        Seen {
            len: frame.len,
            vnet: frame.vnet,
            head_len: frame.head.len(),
            head,
        }
    }

    /// Whether `frame` reads as it did.
    fn is(&self, frame: &TxFrame<'_>) -> bool {
        self.len == frame.len
            && self.vnet == frame.vnet
            && self.head[..self.head_len] == *frame.head
    }
}

/// How a batch ended.
// A stall carries the bytes its frame was decided on (about 300): only a stalled batch writes
// them, and boxing them would allocate for every stall.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The queue is empty and kicks are on (unless the batch was told to poll).
    Idle,
    /// More chains are waiting (the batch was full, or some arrived as kicks went back on).
    More,
    /// A unicast frame waits for its receiver's buffers, and that guest was asked to kick when
    /// it posts some: run the queue again (with the stall) then, or after a moment.
    Stalled(Stall),
}

/// The receive queue a frame waits for, and what the switch and the policies decided for the
/// frame (not decided again while the frame reads the same, so it is counted once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    decision: Decision,
    outcome: Outcome,
    /// The receiving port.
    pub dst: PortId,
    /// Its receive queue.
    pub ring: usize,
}

/// Scratch space of one worker, allocated once.
#[derive(Debug)]
pub struct TxScratch {
    segs: Box<[Seg]>,
    peek: [u8; MAX_HDR_LEN + PEEK_LEN],
    used: [UsedElem; BATCH],
    out: OutBufs,
    /// The worker's policy stage, made at its first batch on a datapath with policies.
    policy: Option<PolicyStage>,
    /// Frames set aside for the policy stage.
    aside: SetAside,
    /// The switch's recent forward decisions.
    decisions: DecisionCache,
}

/// The frames of a batch set aside for the policy stage: what their delivery needs, kept from
/// the one read of their chains (the chains are not walked or read again).
#[derive(Debug)]
struct SetAside {
    frames: Vec<AsideFrame>,
    /// The frames' first bytes, a slot of [`HEAD_SLOT`] bytes each.
    heads: Box<[u8]>,
    /// The frames' chains' buffers, one after another; never grown (a frame that would not fit
    /// has the frames before it judged first).
    segs: Vec<Seg>,
}

/// A frame set aside: the switch's decision and the frame as [`Batch::read`] found it.
#[derive(Clone, Debug)]
struct AsideFrame {
    decision: Decision,
    len: usize,
    vnet: VnetHdr,
    head_len: usize,
    segs: Range<usize>,
}

/// Bytes of a frame's copied head (what follows its virtio-net header in the peek).
const HEAD_SLOT: usize = MAX_HDR_LEN + PEEK_LEN;

impl SetAside {
    fn new() -> Self {
        SetAside {
            frames: Vec::with_capacity(BATCH),
            heads: vec![0; BATCH * HEAD_SLOT].into_boxed_slice(),
            segs: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
        }
    }

    /// Whether `frame` fits beside the frames set aside.
    fn fits(&self, frame: &TxFrame<'_>) -> bool {
        self.frames.len() < BATCH && self.segs.len() + frame.segs.len() <= self.segs.capacity()
    }

    /// Keeps `frame` (which [`fits`](Self::fits)) and its `decision`.
    fn push(&mut self, frame: &TxFrame<'_>, decision: Decision) {
        let slot = self.frames.len() * HEAD_SLOT;
        self.heads[slot..][..frame.head.len()].copy_from_slice(frame.head);
        let start = self.segs.len();
        self.segs.extend_from_slice(frame.segs);
        self.frames.push(AsideFrame {
            decision,
            len: frame.len,
            vnet: frame.vnet,
            head_len: frame.head.len(),
            segs: start..self.segs.len(),
        });
    }

    /// Set-aside frame `i` in `mem`, sent on queue pair `pair` with virtio-net headers of
    /// `hdr_len` bytes.
    fn frame<'s>(
        &'s self,
        i: usize,
        mem: &'s GuestRam,
        hdr_len: usize,
        pair: usize,
    ) -> TxFrame<'s> {
        let f = &self.frames[i];
        TxFrame {
            mem,
            segs: &self.segs[f.segs.clone()],
            hdr_len,
            len: f.len,
            vnet: f.vnet,
            head: &self.heads[i * HEAD_SLOT..][..f.head_len],
            pair,
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.segs.clear();
    }
}

/// The buffers delivery uses.
#[derive(Debug)]
struct OutBufs {
    touched: Vec<(PortId, usize)>,
    frame: Box<[u8]>,
    egress: Box<[u8]>,
    rx: RxScratch,
    /// A REJECT's answer.
    reply: Box<[u8]>,
    /// What the frame that waits was decided on ([`Batch::carry_out`]).
    seen: Seen,
}

impl OutBufs {
    /// Remembers receive queue `ring` of port `dst` for one signal at the end of the batch;
    /// `false` when too many are remembered (the caller signals it now).
    fn remember(&mut self, dst: PortId, ring: usize) -> bool {
        if !self.touched.contains(&(dst, ring)) {
            if self.touched.len() == TOUCHED_MAX {
                return false;
            }
            self.touched.push((dst, ring));
        }
        true
    }

    /// Releases the held receive queue, remembered for a signal at the end of the batch if it
    /// got frames since its last signal.
    fn let_go(&mut self, held: &mut Option<HeldRx<'_>>) {
        if let Some(mut h) = held.take() {
            if h.unsignalled && !self.remember(h.port, h.ring) {
                h.notify();
            }
        }
    }
}

impl Default for TxScratch {
    fn default() -> Self {
        TxScratch {
            segs: vec![Seg::default(); usize::from(MAX_QUEUE_SIZE)].into_boxed_slice(),
            peek: [0; MAX_HDR_LEN + PEEK_LEN],
            used: [UsedElem::default(); BATCH],
            out: OutBufs {
                touched: Vec::with_capacity(TOUCHED_MAX),
                frame: vec![0; MAX_FRAME_LEN].into_boxed_slice(),
                egress: vec![0; MAX_FRAME_LEN + 4].into_boxed_slice(),
                rx: RxScratch::default(),
                reply: vec![0; MAX_REPLY_LEN].into_boxed_slice(),
                seen: Seen {
                    len: 0,
                    vnet: VnetHdr::default(),
                    head_len: 0,
                    head: [0; HEAD_SLOT],
                },
            },
            policy: None,
            aside: SetAside::new(),
            decisions: DecisionCache::default(),
        }
    }
}

/// Runs one batch on transmit queue `ring` of `port`; `retry` is the stall the last batch on
/// this queue ended with, if any. With `poll`, a queue the batch drains keeps its kicks off: its
/// worker polls it ([`super::worker`]).
///
/// With policies, a frame whose flow has a verdict is carried out at once; the others are
/// set aside with their copied heads, judged together (when the stage is full and at the end of
/// the batch), and carried out from what was judged (those never wait for receive buffers).
pub fn run_batch(
    dp: &Datapath,
    port: &Port,
    ring: usize,
    s: &mut TxScratch,
    retry: Option<Stall>,
    poll: bool,
) -> Progress {
    if s.policy.is_none() {
        if let Some(plane) = dp.policy() {
            s.policy = Some(PolicyStage::new(plane.clone(), HookPoint::PortIn));
        }
    }
    let judging = s.policy.as_mut().is_some_and(PolicyStage::begin_batch);
    let ports = dp.ports();
    let ahead = RefCell::new(rx::Ahead::default());
    let held = RefCell::new(None);
    let now = dp.now();
    let switch = RefCell::new(dp.switch().batch(now, port.id()));
    let progress = {
        let Some(mut vring) = port.device().vring(ring) else {
            return Progress::Idle;
        };
        let features = Negotiated(vring.features());
        let Some(mut queue) = vring.parts() else {
            return Progress::Idle;
        };
        let mem = queue.mem();
        queue.disable_kicks();
        let params = WalkParams {
            table: DescTable::Host(queue.desc_table()),
            queue_size: queue.size(),
            indirect: features.indirect(),
            direction: Direction::Read,
            max_len: (features.header_len() + MAX_FRAME_LEN) as u32,
        };
        let batch = Batch {
            dp,
            ports: &ports,
            port,
            now,
            pair: ring / 2,
            features,
            params,
            // The capture check: one relaxed load per batch.
            captures: dp.captures().is_active().then(|| dp.captures()),
            judging,
            network: switch.borrow().network().unwrap_or(NetworkId(0)),
            switch: &switch,
            held: &held,
            ahead: &ahead,
        };
        let mut n = 0;
        let mut drained = false;
        let mut stalled = None;
        while n < BATCH {
            let head = match queue.pop_head() {
                Ok(Some(h)) => h,
                Ok(None) => {
                    drained = true;
                    break;
                }
                Err(_) => {
                    port.counters().record(DeviceDrop::AvailCorrupt);
                    drained = true;
                    break;
                }
            };
            // The stall is for the batch's first chain, if it is still that one.
            let decided = retry.as_ref().filter(|r| n == 0 && r.head == head);
            if let Some(waiting) = batch.frame(mem, head, decided, s) {
                // The chain stays available, to be sent when the receiver has room.
                queue.unpop(1);
                let seen = s.out.seen;
                stalled = Some(Stall {
                    head,
                    waiting,
                    seen,
                });
                break;
            }
            // A head outside the table names no chain to give back.
            if head < queue.size() {
                s.used[n] = UsedElem { head, len: 0 };
                n += 1;
            }
        }
        if let Some(stage) = s.policy.as_mut() {
            batch.judge_set_aside(mem, stage, &mut s.aside, &mut s.out);
            stage.end_batch();
        }
        // The batch's rx counters are added before the guests are told of its frames.
        drop(switch);
        queue.add_used(&s.used[..n]);
        let progress = match stalled {
            Some(stall) => Progress::Stalled(stall),
            None if !drained || (!poll && queue.enable_kicks()) => Progress::More,
            None => Progress::Idle,
        };
        // The sender's transmit queue: its used entries published, the guest signalled.
        vring.notify();
        progress
    };
    // The receive queue still held is signalled (and released) here, the others below.
    if let Some(mut h) = held.into_inner() {
        h.notify();
        s.out.touched.retain(|t| *t != (h.port, h.ring));
    }
    for (dst, ring) in s.out.touched.drain(..) {
        if let Some(mut v) = guest_port(&ports, dst).and_then(|p| p.device().vring(ring)) {
            v.notify();
        }
    }
    progress
}

/// A receive queue kept locked from one frame to the next of a batch (most frames of a batch
/// go to the same one): one lock per batch instead of one per frame. Its chains are taken a
/// run at a time ([`rx::Ahead`]). The frames delivered into it are counted on its port when it
/// is released or signalled (two atomic additions per hold instead of per frame).
struct HeldRx<'p> {
    port: PortId,
    dst: &'p Port,
    /// The sender's queue pair it was chosen for.
    pair: usize,
    ring: usize,
    /// The queue: used through [`vring`](Self::vring), which settles `ahead` first.
    locked: MutexGuard<'p, Vring>,
    /// The batch's chains taken ahead, this queue's while it is held.
    ahead: RefMut<'p, rx::Ahead>,
    /// Its guest's features.
    features: Negotiated,
    /// Frames and bytes delivered, not yet counted.
    frames: u64,
    bytes: u64,
    /// Whether frames were delivered into it since it was last signalled.
    unsignalled: bool,
}

impl HeldRx<'_> {
    /// Delivers a frame whose offloads its guest negotiated ([`rx::deliver`]), to be counted
    /// with the hold's.
    #[inline(always)]
    fn deliver(
        &mut self,
        hdr: &VnetHdr,
        head: [&[u8]; 2],
        body: Source<'_>,
        rx: &mut RxScratch,
    ) -> Result<(), RxError> {
        let n = match self.ahead.deliver(&mut self.locked, hdr, head, body, rx) {
            Some(n) => n,
            None => rx::deliver(self.vring(), hdr, head, body, rx)?,
        };
        self.frames += 1;
        self.bytes += n as u64;
        Ok(())
    }

    /// The queue, its chains taken ahead settled.
    fn vring(&mut self) -> &mut Vring {
        self.ahead.settle(&mut self.locked);
        &mut self.locked
    }

    /// Counts the frames delivered so far on the port.
    fn count(&mut self) {
        if self.frames > 0 {
            let counters = self.dst.switch_counters();
            counters.record_tx_frames(self.frames, self.bytes);
            (self.frames, self.bytes) = (0, 0);
        }
    }

    /// Counts the frames, then publishes them and signals the guest.
    fn notify(&mut self) {
        self.count();
        self.vring().notify();
        self.unsignalled = false;
    }
}

impl Drop for HeldRx<'_> {
    fn drop(&mut self) {
        self.ahead.settle(&mut self.locked);
        self.count();
    }
}

/// The guest port `id` in the port table, if it is one.
pub fn guest_port<'p>(ports: &'p PortTable<'_>, id: PortId) -> Option<&'p Port> {
    match ports.get(id.0 as usize)? {
        Some(Attachment::Guest(port)) => Some(port),
        _ => None,
    }
}

/// What stays the same for every frame of a batch.
struct Batch<'a, 'p> {
    dp: &'a Datapath,
    ports: &'p PortTable<'p>,
    port: &'a Port,
    now: bridge_core::time::Instant,
    pair: usize,
    features: Negotiated,
    params: WalkParams<'a>,
    /// The captures, while any runs.
    captures: Option<&'a Captures>,
    /// Whether a policy runs at the port-in hook this batch.
    judging: bool,
    /// The port's network.
    network: NetworkId,
    /// The switch for this batch's frames.
    switch: &'a RefCell<IngressBatch<'p>>,
    /// The receive queue last delivered to, still locked.
    held: &'a RefCell<Option<HeldRx<'p>>>,
    /// The chains taken ahead from the held receive queue.
    ahead: &'p RefCell<rx::Ahead>,
}

/// A frame: its first bytes copied, the rest in the sender's memory.
struct TxFrame<'a> {
    mem: &'a GuestRam,
    segs: &'a [Seg],
    hdr_len: usize,
    len: usize,
    vnet: VnetHdr,
    /// The frame's first bytes, read once from the sender's memory: the bytes the switch and
    /// the policies see, and the bytes delivered.
    head: &'a [u8],
    pair: usize,
}

impl<'a> TxFrame<'a> {
    /// The frame's bytes after [`head`](Self::head), in the sender's buffers.
    fn rest(&self) -> Source<'a> {
        Source::Guest {
            mem: self.mem,
            segs: self.segs,
            skip: self.hdr_len + self.head.len(),
        }
    }
}

impl<'a, 'p> Batch<'a, 'p> {
    /// Delivery of one frame with `bufs`.
    fn out<'o>(&'o self, bufs: &'o mut OutBufs) -> Out<'o, 'p>
    where
        'a: 'o,
    {
        Out {
            ports: self.ports,
            held: self.held,
            ahead: self.ahead,
            src: self.port,
            bufs,
            gathered: false,
            captures: self.captures,
            may_wait: false,
            waiting: None,
        }
    }

    /// Walks and checks the chain at `head`: the frame, or `None` (counted) if unusable.
    fn read<'s>(
        &self,
        mem: &'s GuestRam,
        head: u16,
        segs: &'s mut [Seg],
        peek: &'s mut [u8; MAX_HDR_LEN + PEEK_LEN],
    ) -> Option<TxFrame<'s>> {
        let counters = self.port.counters();
        let (nsegs, total) = match chain::walk(mem, &self.params, head, segs) {
            Ok(found) => found,
            Err(e) => {
                counters.record(e.into());
                return None;
            }
        };
        let segs = &segs[..nsegs];
        let total = total as usize;
        let hdr_len = self.features.header_len();
        if total < hdr_len + ETH_HEADER {
            counters.record(DeviceDrop::TxTruncated);
            return None;
        }
        let peek_len = total.min(peek.len());
        // Usually all in the first buffer, in one region: one copy without the reader.
        let first = segs
            .first()
            .filter(|s| s.len as usize >= peek_len && s.region != chain::SPANS)
            .and_then(|s| mem.slice_in(s.region, s.addr, peek_len));
        match first {
            Some(bytes) => sys::copy_from_slice(&mut peek[..peek_len], &bytes),
            None => Reader::new(&[], &[], Source::Guest { mem, segs, skip: 0 })
                .read_local(&mut peek[..peek_len]),
        };
        let len = total - hdr_len;
        let vnet = match VnetHdr::parse_tx(&peek[..hdr_len], self.features, len) {
            Ok(v) => v,
            Err(e) => {
                counters.record(e.into());
                return None;
            }
        };
        if vnet.gso == Gso::None && len > usize::from(self.port.config().mtu) + ETH_OVERHEAD {
            counters.record(DeviceDrop::TxOverMtu);
            return None;
        }
        Some(TxFrame {
            mem,
            segs,
            hdr_len,
            len,
            vnet,
            head: &peek[hdr_len..peek_len],
            pair: self.pair,
        })
    }

    /// Checks, decides, judges and delivers the frame at chain `head` (or sets it aside for
    /// judging); with `decided`, the stall it waited with, it is delivered as decided then
    /// unless it changed meanwhile. Returns the receive queue the frame waits for, if it does
    /// ([`carry_out`](Self::carry_out) notes what it was decided on).
    fn frame(
        &self,
        mem: &GuestRam,
        head: u16,
        decided: Option<&Stall>,
        s: &mut TxScratch,
    ) -> Option<Waiting> {
        let frame = self.read(mem, head, &mut s.segs, &mut s.peek)?;
        if let Some(st) = decided.filter(|st| st.seen.is(&frame)) {
            // Captured, decided and judged the first time.
            let mut out = self.out(&mut s.out);
            let w = st.waiting;
            return self.carry_out(&frame, &w.decision, w.outcome, true, &mut out);
        }
        if let Some(c) = self.captures.filter(|c| c.wants(self.port.id())) {
            let mut out = self.out(&mut s.out);
            out.gather(&frame);
            let bytes = &out.bufs.frame[..frame.len];
            c.record(self.port.id(), capture::Direction::In, &[bytes]);
        }
        let memo = s.decisions.entry(self.port.id(), frame.head);
        let decision = self
            .switch
            .borrow_mut()
            .process_head_memo(frame.head, frame.len, memo);
        if let Decision::Drop(_) = decision {
            return None;
        }
        // `judging` first: without a policy, one test per frame.
        let stage = if self.judging {
            s.policy.as_mut()
        } else {
            None
        };
        if let Some(stage) = stage {
            if !s.aside.fits(&frame) {
                self.judge_set_aside(mem, stage, &mut s.aside, &mut s.out);
            }
            let (id, network) = (self.port.id(), self.network);
            let ctx = || FrameCtx::of(id, network, true, &decision, self.ports);
            match stage.check(self.now, id, network, frame.head, frame.len, ctx) {
                Check::Now(Outcome::PASS) => {}
                // Carried out in this arm: the outcome is not copied into a variable first.
                Check::Now(o) => {
                    return self.carry_out(&frame, &decision, o, true, &mut self.out(&mut s.out))
                }
                Check::Later => {
                    s.aside.push(&frame, decision);
                    if stage.is_full() {
                        self.judge_set_aside(mem, stage, &mut s.aside, &mut s.out);
                    }
                    return None;
                }
            }
        }
        if self.deliver_held(&frame, &decision, &mut s.out.rx) {
            return None;
        }
        self.carry_out(
            &frame,
            &decision,
            Outcome::PASS,
            true,
            &mut self.out(&mut s.out),
        )
    }

    /// Delivers the usual frame at once: passed, forwarded as it is into the receive queue the
    /// batch holds, whose guest negotiated the frame's offloads, while no capture runs. It
    /// skips [`carry_out`](Self::carry_out)'s set-up (targets, egress, the queue to hold),
    /// which costs about as much as the delivery. Returns `false`, having done nothing, for any
    /// other frame and when the queue has no buffers (`carry_out` decides whether it waits).
    #[inline]
    fn deliver_held(&self, frame: &TxFrame<'_>, decision: &Decision, rx: &mut RxScratch) -> bool {
        let Decision::Forward {
            port,
            egress: Egress::AsIs,
        } = *decision
        else {
            return false;
        };
        if self.captures.is_some() {
            return false;
        }
        let mut held = self.held.borrow_mut();
        let Some(h) = held
            .as_mut()
            .filter(|h| h.port == port && h.pair == frame.pair && frame.vnet.fits(h.features))
        else {
            return false;
        };
        match h.deliver(&frame.vnet, [&[], frame.head], frame.rest(), rx) {
            Ok(()) => h.unsignalled = true,
            Err(RxError::NoBuffers) => return false,
            Err(e) => h.dst.counters().record(e.into()),
        }
        true
    }

    /// Judges the frames set aside and carries out their outcomes, in order, on the bytes that
    /// were judged.
    fn judge_set_aside(
        &self,
        mem: &GuestRam,
        stage: &mut PolicyStage,
        aside: &mut SetAside,
        bufs: &mut OutBufs,
    ) {
        if aside.frames.is_empty() {
            return;
        }
        stage.judge_pending(self.now);
        let hdr_len = self.features.header_len();
        for (i, f) in aside.frames.iter().enumerate() {
            let outcome = stage.outcomes().get(i).copied().unwrap_or(Outcome::PASS);
            let frame = aside.frame(i, mem, hdr_len, self.pair);
            self.carry_out(&frame, &f.decision, outcome, false, &mut self.out(bufs));
        }
        aside.clear();
    }

    /// Delivers, drops or rejects a frame the switch decided and the policies judged. A frame
    /// with one destination waits for its receive buffers if `may_wait`: returns the receive
    /// queue it waits for, and notes what the frame was decided on in `out`.
    fn carry_out(
        &self,
        frame: &TxFrame<'_>,
        decision: &Decision,
        outcome: Outcome,
        may_wait: bool,
        out: &mut Out,
    ) -> Option<Waiting> {
        match outcome {
            Outcome::Deliver { redirect, mirror } => {
                // Floods and mirrored frames never wait.
                out.may_wait = may_wait
                    && mirror.is_none()
                    && (redirect.is_some() || matches!(decision, Decision::Forward { .. }));
                let switch = self.dp.switch();
                for_each_target(switch, decision, redirect, mirror, |port, egress| {
                    out.deliver(frame, port, egress);
                });
                let (dst, ring) = out.waiting?;
                out.bufs.seen = Seen::of(frame);
                return Some(Waiting {
                    decision: *decision,
                    outcome,
                    dst,
                    ring,
                });
            }
            Outcome::Drop(reason) => self.port.switch_counters().record_drop(reason),
            Outcome::Reject => {
                self.port
                    .switch_counters()
                    .record_drop(DropReason::PolicyReject);
                out.reject(frame);
            }
        }
        None
    }
}

/// Delivery of one frame to its destinations.
struct Out<'a, 'p> {
    ports: &'p PortTable<'p>,
    /// The batch's held receive queue. Released before anything that may lock another
    /// receive queue itself (host ports, a reject's answer to the sender).
    held: &'a RefCell<Option<HeldRx<'p>>>,
    /// The chains taken ahead from the held receive queue.
    ahead: &'p RefCell<rx::Ahead>,
    src: &'a Port,
    bufs: &'a mut OutBufs,
    /// Whether `bufs.frame` holds the frame already (gathered for a first software delivery).
    gathered: bool,
    /// The captures, while any runs.
    captures: Option<&'a Captures>,
    /// Whether the frame may wait for a receiver without buffers.
    may_wait: bool,
    /// The receive queue (port, ring) the frame waits for.
    waiting: Option<(PortId, usize)>,
}

impl<'p> Out<'_, 'p> {
    fn deliver(&mut self, frame: &TxFrame<'_>, dst: PortId, egress: Egress) {
        let port = match self.ports.get(dst.0 as usize) {
            Some(Some(Attachment::Guest(port))) => port,
            Some(Some(Attachment::Host(host))) => {
                self.release();
                self.gather(frame);
                let bytes = &self.bufs.frame[..frame.len];
                return host.deliver(&frame.vnet, bytes, egress, &mut self.bufs.egress);
            }
            _ => return,
        };
        // A frame the switch accepted has the headers its egress action rewrites.
        let (rewritten, shifted);
        let (head, hdr) = if egress == Egress::AsIs {
            ([&[][..], frame.head], &frame.vnet)
        } else {
            let Some(r) = egress.apply(frame.head) else {
                return;
            };
            rewritten = r;
            let replaced = frame.head.len() - rewritten.tail().len();
            let shift = rewritten.head().len() as isize - replaced as isize;
            shifted = frame.vnet.shifted(shift);
            ([rewritten.head(), rewritten.tail()], &shifted)
        };
        let held = self.held;
        let mut held = held.borrow_mut();
        let Some(h) = Self::hold(&mut held, self.ahead, self.bufs, port, dst, frame.pair) else {
            return port.counters().record(DeviceDrop::RxNotRunning);
        };
        let ring = h.ring;
        let fits = hdr.fits(h.features);
        let mut asked = false;
        let delivered = loop {
            let result = if fits {
                h.deliver(hdr, head, frame.rest(), &mut self.bufs.rx)
                    .map(|()| true)
            } else {
                self.in_software(frame, egress, hdr, h.vring(), port)
            };
            match result {
                Ok(delivered) => break delivered,
                Err(RxError::NoBuffers) if self.may_wait => {
                    if !h.vring().may_wait(Instant::now()) {
                        port.counters().record(DeviceDrop::RxNoBuffers);
                        break false;
                    }
                    // The guest is asked to kick when it posts buffers; if some arrived
                    // meanwhile, the frame is tried again once at once.
                    if asked || !h.vring().ask_for_buffers() {
                        self.waiting = Some((dst, ring));
                        return;
                    }
                    asked = true;
                }
                Err(e) => {
                    port.counters().record(e.into());
                    break false;
                }
            }
        };
        if !delivered {
            return;
        }
        h.unsignalled = true;
        if let Some(c) = self.captures.filter(|c| c.wants(dst)) {
            self.gather(frame);
            if let Some(f) = egress.apply(&self.bufs.frame[..frame.len]) {
                c.record(dst, capture::Direction::Out, &[f.head(), f.tail()]);
            }
        }
    }

    /// The receive queue of `port` (switch port `dst`) for frames from queue pair `pair`,
    /// locked: the held one if it is that, else the held one is released and this one taken.
    fn hold<'h>(
        held: &'h mut Option<HeldRx<'p>>,
        ahead: &'p RefCell<rx::Ahead>,
        bufs: &mut OutBufs,
        port: &'p Port,
        dst: PortId,
        pair: usize,
    ) -> Option<&'h mut HeldRx<'p>> {
        if !held
            .as_ref()
            .is_some_and(|h| h.port == dst && h.pair == pair)
        {
            // Released first: only one receive queue is ever locked by a worker.
            bufs.let_go(held);
            let (ring, vring) = port.rx_vring(pair)?;
            *held = Some(HeldRx {
                port: dst,
                dst: port,
                pair,
                ring,
                features: Negotiated(vring.features()),
                locked: vring,
                ahead: rx::Ahead::start(ahead),
                frames: 0,
                bytes: 0,
                unsignalled: false,
            });
        }
        held.as_mut()
    }

    /// Releases the held receive queue (it is signalled at the end of the batch).
    fn release(&mut self) {
        self.bufs.let_go(&mut self.held.borrow_mut());
    }

    /// Answers a rejected frame to its sender (a TCP RST or an ICMP port unreachable, where one
    /// is due).
    fn reject(&mut self, frame: &TxFrame<'_>) {
        self.release();
        self.gather(frame);
        let bufs = &mut *self.bufs;
        let Ok(n) = reject_reply(&bufs.frame[..frame.len], &mut bufs.reply) else {
            return;
        };
        let (src, reply) = (self.src, &bufs.reply[..n]);
        if let Some(ring) = rx::deliver_bytes(src, frame.pair, reply, Egress::AsIs, &mut bufs.rx) {
            if !bufs.remember(src.id(), ring) {
                if let Some(mut v) = src.device().vring(ring) {
                    v.notify();
                }
            }
        }
    }

    /// Copies the frame (its copied head, then the rest) into `frame_buf`, once per frame.
    fn gather(&mut self, frame: &TxFrame<'_>) {
        if !self.gathered {
            Reader::new(frame.head, &[], frame.rest())
                .read_local(&mut self.bufs.frame[..frame.len]);
            self.gathered = true;
        }
    }

    /// Completes the sender's offloads in software for a receiver that did not negotiate them.
    /// Returns whether any segment was delivered; `Err` (not counted) when the first segment
    /// could not be, so that the frame can wait whole or be counted once.
    fn in_software(
        &mut self,
        frame: &TxFrame<'_>,
        egress: Egress,
        hdr: &VnetHdr,
        rx: &mut Vring,
        port: &Port,
    ) -> Result<bool, RxError> {
        self.gather(frame);
        let bufs = &mut *self.bufs;
        let original = &bufs.frame[..frame.len];
        let full = match egress {
            Egress::AsIs => original,
            _ => match egress
                .apply(original)
                .and_then(|f| f.copy_to(&mut bufs.egress))
            {
                Some(n) => &bufs.egress[..n],
                None => return Ok(false),
            },
        };
        let mut delivered = false;
        let mut first_failed = None;
        let result = rx::deliver_completed(rx, hdr, full, &mut bufs.rx, |r| match r {
            Ok(n) => {
                port.switch_counters().record_tx(n);
                delivered = true;
                true
            }
            // The first segment not delivered: the rest are not tried.
            Err(e) if !delivered => {
                first_failed = Some(e);
                false
            }
            Err(e) => {
                port.counters().record(e.into());
                true
            }
        });
        if result.is_err() {
            self.src.counters().record(DeviceDrop::OffloadFailed);
        }
        match first_failed {
            Some(e) => Err(e),
            None => Ok(delivered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::datapath::backpressure::STALL_MAX;

    use bridge_core::wire::{checksum, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket};
    use bridge_core::{NetworkConfig, Switch};
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
    };
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use crate::config::PortConfig;
    use crate::test_util::{guest_memory, TestRing, MEM_SIZE};

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const V1: u64 = 1 << VIRTIO_F_VERSION_1;
    const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
    const HOST_TSO: u64 = (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4);
    const GUEST_TSO: u64 = (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4);
    const RX_RING: u64 = 0x10000;
    const TX_RING: u64 = 0x20000;
    const TX_BUF: u64 = 0x100000;
    const RX_BUF: u64 = 0x200000;

    /// A guest on a port: its memory, rings and call eventfds.
    struct Guest {
        port: Arc<Port>,
        mem: Arc<GuestMemoryMmap>,
        rx_call: EventFd,
        tx_call: EventFd,
    }

    impl Guest {
        fn rx(&self) -> TestRing<'_> {
            TestRing::new(&self.mem, RX_RING, 256)
        }

        fn tx(&self) -> TestRing<'_> {
            TestRing::new(&self.mem, TX_RING, 256)
        }

        fn stats(&self) -> crate::datapath::counters::DeviceStats {
            self.port.counters().snapshot()
        }
    }

    /// A datapath with one guest per entry of `features`, rings running.
    fn setup(features: &[u64]) -> (Datapath, Vec<Guest>) {
        let switch = Arc::new(Switch::new());
        let net = switch.add_network(NetworkConfig::default());
        let dp = Datapath::new(Arc::clone(&switch));
        let guests = features
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let id = switch
                    .add_port(net, bridge_core::PortConfig::default())
                    .unwrap();
                let config = PortConfig::new(format!("/test/{i}"));
                let port =
                    Arc::new(Port::new(id, config, switch.port_counters(id).unwrap()).unwrap());
                dp.insert(Arc::clone(&port));
                let g = Guest {
                    port,
                    mem: guest_memory(),
                    rx_call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                    tx_call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                };
                for (index, ring, call) in [(0, g.rx(), &g.rx_call), (1, g.tx(), &g.tx_call)] {
                    let mut v = g.port.device().vring(index).unwrap();
                    ring.configure(&mut v, Arc::clone(&g.mem), f);
                    v.set_call(Some(call.try_clone().unwrap()));
                }
                g
            })
            .collect();
        (dp, guests)
    }

    fn mac(n: u8) -> [u8; 6] {
        [2, 0, 0, 0, 0, n]
    }

    fn eth(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
        let mut f = Vec::with_capacity(len);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend((14..len).map(|i| i as u8));
        f
    }

    /// Posts `frame` with virtio-net header `hdr` (12 bytes) in transmit buffer `slot`.
    fn send(g: &Guest, tx: &mut TestRing, slot: u64, hdr: [u8; 12], frame: &[u8]) -> u16 {
        let addr = TX_BUF + slot * 0x10000;
        g.mem.write_slice(&hdr, GuestAddress(addr)).unwrap();
        g.mem.write_slice(frame, GuestAddress(addr + 12)).unwrap();
        tx.post(&[(addr, 12 + frame.len() as u32, 0)])
    }

    /// Posts `n` receive buffers of `size` bytes.
    fn post_rx(rx: &mut TestRing, n: u64, size: u32) {
        for i in 0..n {
            rx.post(&[(RX_BUF + i * 0x10000, size, W)]);
        }
    }

    /// The frame in receive buffer `i` (after a 12-byte header) and its header.
    fn received(g: &Guest, rx: &TestRing, i: u16) -> ([u8; 12], Vec<u8>) {
        let (head, len) = rx.used(i);
        let addr = RX_BUF + u64::from(head) * 0x10000;
        let mut hdr = [0u8; 12];
        g.mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        let mut f = vec![0u8; len as usize - 12];
        g.mem.read_slice(&mut f, GuestAddress(addr + 12)).unwrap();
        (hdr, f)
    }

    fn batch(dp: &Datapath, g: &Guest) -> Progress {
        run_batch(dp, &g.port, 1, &mut TxScratch::default(), None, false)
    }

    #[test]
    fn floods_then_forwards_unicast_and_signals_once_per_batch() {
        let (dp, g) = setup(&[V1 | MRG, V1 | MRG, V1]);
        let (mut a_tx, mut b_rx, mut c_rx) = (g[0].tx(), g[1].rx(), g[2].rx());
        post_rx(&mut b_rx, 8, 2048);
        post_rx(&mut c_rx, 8, 2048);
        // Unknown destination: flooded to both.
        let f1 = eth(mac(9), mac(1), 100);
        let f2 = eth(mac(9), mac(1), 60);
        send(&g[0], &mut a_tx, 0, [0; 12], &f1);
        send(&g[0], &mut a_tx, 1, [0; 12], &f2);
        assert_eq!(batch(&dp, &g[0]), Progress::Idle);
        assert_eq!(
            (a_tx.used_idx(), a_tx.used(0), a_tx.used(1)),
            (2, (0, 0), (1, 0))
        );
        assert_eq!(
            g[0].tx_call.read().unwrap(),
            1,
            "the sender is signalled once"
        );
        for (guest, rx) in [(&g[1], &b_rx), (&g[2], &c_rx)] {
            assert_eq!(rx.used_idx(), 2);
            assert_eq!(
                received(guest, rx, 0),
                ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], f1.clone())
            );
            assert_eq!(received(guest, rx, 1).1, f2);
            assert_eq!(
                guest.rx_call.read().unwrap(),
                1,
                "each receiver is signalled once"
            );
        }
        // C answers A: A's address was learned, so only A gets it.
        let mut a_rx = g[0].rx();
        post_rx(&mut a_rx, 4, 2048);
        let mut c_tx = g[2].tx();
        let reply = eth(mac(1), mac(3), 80);
        send(&g[2], &mut c_tx, 0, [0; 12], &reply);
        batch(&dp, &g[2]);
        assert_eq!(received(&g[0], &a_rx, 0).1, reply);
        assert_eq!(b_rx.used_idx(), 2, "B does not see unicast to A");
        let a = dp.switch().port_info(g[0].port.id()).unwrap().stats;
        assert_eq!(
            (a.rx_frames, a.rx_bytes, a.tx_frames, a.tx_bytes),
            (2, 160, 1, 80)
        );
    }

    #[test]
    fn batches_are_bounded() {
        let (dp, g) = setup(&[V1, V1]);
        let (mut a_tx, mut b_rx) = (g[0].tx(), g[1].rx());
        post_rx(&mut b_rx, 100, 2048);
        for i in 0..100 {
            send(
                &g[0],
                &mut a_tx,
                i % 8,
                [0; 12],
                &eth([0xff; 6], mac(1), 60),
            );
        }
        assert_eq!(batch(&dp, &g[0]), Progress::More, "64 of 100: more to do");
        assert_eq!((a_tx.used_idx(), b_rx.used_idx()), (64, 64));
        assert_eq!(batch(&dp, &g[0]), Progress::Idle);
        assert_eq!((a_tx.used_idx(), b_rx.used_idx()), (100, 100));
    }

    #[test]
    fn hostile_descriptors_are_dropped_counted_and_returned() {
        let (dp, g) = setup(&[V1, V1]);
        let (mut a_tx, mut b_rx) = (g[0].tx(), g[1].rx());
        post_rx(&mut b_rx, 8, 2048);
        let good = eth([0xff; 6], mac(1), 60);
        // A writable buffer, a buffer outside memory, a loop, an absurd length, a bad head, a
        // chain shorter than the headers, a GSO type not negotiated, an oversized plain frame.
        a_tx.post(&[(TX_BUF, 100, W)]);
        a_tx.post(&[(MEM_SIZE - 8, 100, 0)]);
        a_tx.put_desc(200, TX_BUF, 100, VRING_DESC_F_NEXT as u16, 200);
        a_tx.post_head(200);
        a_tx.post(&[(TX_BUF, u32::MAX, 0)]);
        a_tx.post_head(999);
        send(&g[0], &mut a_tx, 1, [0; 12], &good[..10]);
        send(
            &g[0],
            &mut a_tx,
            2,
            [0, 1, 0, 0, 0xa8, 5, 0, 0, 0, 0, 0, 0],
            &good,
        );
        send(&g[0], &mut a_tx, 3, [0; 12], &eth([0xff; 6], mac(1), 1600));
        send(&g[0], &mut a_tx, 4, [0; 12], &good);
        assert_eq!(batch(&dp, &g[0]), Progress::Idle);
        let s = g[0].stats();
        for reason in [
            DeviceDrop::TxWrongDirection,
            DeviceDrop::TxOutOfMemory,
            DeviceDrop::TxChainTooLong,
            DeviceDrop::TxTooBig,
            DeviceDrop::TxBadIndex,
            DeviceDrop::TxTruncated,
            DeviceDrop::TxBadGso,
            DeviceDrop::TxOverMtu,
        ] {
            assert_eq!(s.get(reason), 1, "{reason:?}");
        }
        assert_eq!(s.total(), 8);
        // Every chain with a usable head came back; the good frame went through.
        assert_eq!(a_tx.used_idx(), 8);
        assert_eq!(b_rx.used_idx(), 1);
        assert_eq!(received(&g[1], &b_rx, 0).1, good);
        assert_eq!(g[1].stats().total(), 0, "the other port is not affected");
    }

    /// A TCP/IPv4 frame from 10.0.0.1 to 10.0.0.2 with `payload` bytes, as a guest with TSO
    /// sends it: total length for the whole packet, TCP checksum holding the pseudo-header sum.
    fn tcp_frame(payload: usize) -> Vec<u8> {
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let mut f = vec![0u8; 14 + 20 + 20 + payload];
        f[..6].copy_from_slice(&mac(2));
        f[6..12].copy_from_slice(&mac(1));
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip_len = (20 + 20 + payload) as u16;
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(ip_len);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Tcp);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.fill_checksum();
        }
        {
            let mut tcp = TcpPacket::new_unchecked(&mut f[34..]);
            tcp.set_src_port(40000);
            tcp.set_dst_port(5201);
            tcp.set_seq_number(bridge_core::wire::TcpSeqNumber(1000));
            tcp.set_header_len(20);
            tcp.set_ack(true);
            tcp.set_window_len(500);
            tcp.set_checksum(checksum::pseudo_header_v4(
                &src,
                &dst,
                IpProtocol::Tcp,
                u32::from(ip_len - 20),
            ));
        }
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    fn tso_hdr(gso_size: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = 1; // NEEDS_CSUM
        h[1] = 1; // TCPV4
        h[2..4].copy_from_slice(&54u16.to_le_bytes());
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&34u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        h
    }

    #[test]
    fn tso_passes_whole_to_a_tso_port_and_is_segmented_for_others() {
        let (dp, g) = setup(&[V1 | MRG | HOST_TSO, V1 | MRG | GUEST_TSO, V1 | MRG]);
        let (mut a_tx, mut b_rx, mut c_rx) = (g[0].tx(), g[1].rx(), g[2].rx());
        post_rx(&mut b_rx, 8, 4096);
        post_rx(&mut c_rx, 8, 4096);
        let f = tcp_frame(3000);
        send(&g[0], &mut a_tx, 0, tso_hdr(1000), &f);
        batch(&dp, &g[0]);

        // B negotiated the offload: one 3054-byte frame, header passed on.
        assert_eq!(b_rx.used_idx(), 1);
        let (hdr, got) = received(&g[1], &b_rx, 0);
        let mut want_hdr = tso_hdr(1000);
        want_hdr[10] = 1; // num_buffers
        assert_eq!((hdr, got), (want_hdr, f.clone()));

        // C did not: three segments of 1000 bytes, each with correct checksums.
        assert_segments_of(&g[2], &c_rx, &f);
        assert_eq!(
            g[0].stats().total() + g[1].stats().total() + g[2].stats().total(),
            0
        );
    }

    /// Asserts that `rx` holds `f` (a [`tcp_frame`] of 3000 bytes) as three segments of 1000
    /// bytes with plain headers and correct checksums.
    fn assert_segments_of(g: &Guest, rx: &TestRing, f: &[u8]) {
        assert_eq!(rx.used_idx(), 3);
        let (src, dst) = (IpAddress::v4(10, 0, 0, 1), IpAddress::v4(10, 0, 0, 2));
        let mut payload = Vec::new();
        for i in 0..3 {
            let (hdr, seg) = received(g, rx, i);
            assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "a plain header");
            assert_eq!(seg.len(), 54 + 1000);
            let ip = Ipv4Packet::new_checked(&seg[14..]).unwrap();
            assert!(ip.verify_checksum());
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(tcp.verify_checksum(&src, &dst));
            assert_eq!(tcp.seq_number().0, 1000 + 1000 * i32::from(i));
            payload.extend_from_slice(tcp.payload());
        }
        assert_eq!(payload, f[54..]);
    }

    #[test]
    fn a_host_ports_offloaded_frame_passes_whole_or_is_completed() {
        // What an uplink does with a GRO'd TCP frame from the LAN (partial checksum, TSO).
        let (dp, g) = setup(&[V1 | MRG | GUEST_TSO, V1 | MRG]);
        let dp = Arc::new(dp);
        let (mut b_rx, mut c_rx) = (g[0].rx(), g[1].rx());
        post_rx(&mut b_rx, 8, 4096);
        post_rx(&mut c_rx, 8, 4096);
        let switch = dp.switch();
        let net = switch.networks()[0].id;
        let host = switch
            .add_port(net, bridge_core::PortConfig::default())
            .unwrap();
        let f = tcp_frame(3000);
        let hdr = VnetHdr::parse_tx(&tso_hdr(1000), Negotiated(HOST_TSO), f.len()).unwrap();
        let mut injector = super::super::host::Injector::new(Arc::clone(&dp), host);
        injector.send_offloaded(&hdr, &f);
        injector.flush();

        // B negotiated the offloads: the frame whole with its header.
        assert_eq!(b_rx.used_idx(), 1);
        let mut want_hdr = tso_hdr(1000);
        want_hdr[10] = 1; // num_buffers
        assert_eq!(received(&g[0], &b_rx, 0), (want_hdr, f.clone()));
        // C did not: segmented and checksummed in software.
        assert_segments_of(&g[1], &c_rx, &f);
        assert_eq!(g[0].stats().total() + g[1].stats().total(), 0);
        assert_eq!(switch.port_info(host).unwrap().stats.rx_frames, 1);
    }

    #[test]
    fn partial_checksum_is_completed_for_a_port_without_guest_csum() {
        let (dp, g) = setup(&[V1 | HOST_TSO, V1]);
        let (mut a_tx, mut b_rx) = (g[0].tx(), g[1].rx());
        post_rx(&mut b_rx, 2, 2048);
        let f = tcp_frame(500);
        let mut hdr = tso_hdr(0);
        hdr[1] = 0; // no GSO, partial checksum only
        send(&g[0], &mut a_tx, 0, hdr, &f);
        batch(&dp, &g[0]);
        let (hdr, got) = received(&g[1], &b_rx, 0);
        assert_eq!(hdr[0], 0, "no NEEDS_CSUM for the receiver");
        let tcp = TcpPacket::new_checked(&got[34..]).unwrap();
        assert!(tcp.verify_checksum(&IpAddress::v4(10, 0, 0, 1), &IpAddress::v4(10, 0, 0, 2)));
        assert_eq!(got[54..], f[54..]);
    }

    #[test]
    fn receive_chains_taken_ahead_and_not_used_stay_the_guests() {
        // A held queue's chains are taken in runs of 1, 1, 2, 4...: the fifth frame of a batch
        // takes four, and the three it does not use go back. A frame delivered another way
        // (its checksum completed in software) takes its chain in turn. So the frames fill the
        // buffers in order.
        let (dp, g) = learned_pair(V1 | HOST_TSO, V1 | MRG);
        let (mut a_tx, mut b_rx) = (g[0].tx(), g[1].rx());
        post_rx(&mut b_rx, 12, 2048);
        let next_avail = || g[1].port.device().vring(0).unwrap().state().next_avail;
        let plain = [0; 12];
        let first: Vec<_> = (0..5)
            .map(|i| (plain, eth(mac(2), mac(1), 60 + i)))
            .collect();
        let tcp = tcp_frame(100);
        let mut partial = tso_hdr(0);
        partial[1] = 0; // no GSO, a partial checksum only: completed in software
        let second = vec![
            (plain, eth(mac(2), mac(1), 70)),
            (partial, tcp),
            first[0].clone(),
        ];
        let mut slot = 0;
        for (sent, used) in [(&first, 5), (&second, 8)] {
            for (hdr, f) in sent {
                send(&g[0], &mut a_tx, slot, *hdr, f);
                slot += 1;
            }
            assert_eq!(batch(&dp, &g[0]), Progress::Idle);
            assert_eq!((b_rx.used_idx(), next_avail()), (used, used));
            let at = used - sent.len() as u16;
            for (i, (_, f)) in sent.iter().enumerate() {
                let at = at + i as u16;
                assert_eq!(
                    b_rx.used(at).0,
                    u32::from(at),
                    "frame {i} in the next buffer"
                );
                let got = received(&g[1], &b_rx, at).1;
                assert_eq!((got.len(), &got[..12]), (f.len(), &f[..12]));
            }
        }
        assert_eq!(g[1].stats().total(), 0);
    }

    #[test]
    fn receive_chains_of_two_buffers_take_a_batch_of_frames() {
        // A guest that posts its virtio-net header and its frame buffer apart (a legacy
        // layout): its chains are not taken ahead, every frame of the batch goes the general
        // way, and its header lands in the first buffer.
        let (dp, g) = learned_pair(V1, V1);
        let (mut a_tx, mut b_rx) = (g[0].tx(), g[1].rx());
        for i in 0..4 {
            let at = RX_BUF + i * 0x10000;
            b_rx.post(&[(at, 12, W), (at + 0x1000, 1514, W)]);
        }
        let frames: Vec<Vec<u8>> = (0..3).map(|i| eth(mac(2), mac(1), 60 + i)).collect();
        for (i, f) in frames.iter().enumerate() {
            send(&g[0], &mut a_tx, i as u64, [0; 12], f);
        }
        assert_eq!(batch(&dp, &g[0]), Progress::Idle);
        assert_eq!(b_rx.used_idx(), 3);
        for (i, f) in frames.iter().enumerate() {
            let (head, len) = b_rx.used(i as u16);
            assert_eq!((head, len as usize), (2 * i as u32, 12 + f.len()));
            let mut got = vec![0u8; f.len()];
            let at = RX_BUF + i as u64 * 0x10000 + 0x1000;
            g[1].mem.read_slice(&mut got, GuestAddress(at)).unwrap();
            assert_eq!(&got, f);
        }
        assert_eq!(g[1].port.device().vring(0).unwrap().state().next_avail, 3);
        assert_eq!(g[1].stats().total(), 0);
    }

    #[test]
    fn a_receiver_without_buffers_costs_only_its_frames() {
        let (dp, g) = setup(&[V1, V1, V1]);
        let (mut a_tx, mut c_rx) = (g[0].tx(), g[2].rx());
        post_rx(&mut c_rx, 1, 2048);
        send(&g[0], &mut a_tx, 0, [0; 12], &eth([0xff; 6], mac(1), 60));
        batch(&dp, &g[0]);
        assert_eq!(g[1].stats().get(DeviceDrop::RxNoBuffers), 1);
        assert_eq!(c_rx.used_idx(), 1);
        assert_eq!(a_tx.used_idx(), 1);
    }

    fn learned_pair(a_features: u64, b_features: u64) -> (Datapath, Vec<Guest>) {
        let (dp, g) = setup(&[a_features, b_features]);
        let mut b_tx = g[1].tx();
        send(&g[1], &mut b_tx, 0, [0; 12], &eth([0xff; 6], mac(2), 60));
        assert_eq!(batch(&dp, &g[1]), Progress::Idle);
        (dp, g)
    }

    #[test]
    fn a_bad_or_small_receive_buffer_costs_only_its_frame() {
        // The frames after the first of a batch go into the receive queue it holds.
        let (dp, g) = learned_pair(V1, V1);
        let (mut a_tx, mut b_rx) = (g[0].tx(), g[1].rx());
        b_rx.post(&[(RX_BUF, 1000, W)]);
        b_rx.post(&[(RX_BUF + 0x10000, 1000, 0)]);
        b_rx.post(&[(RX_BUF + 0x20000, 1000, W)]);
        let frames = [100, 100, 1400, 100].map(|len| eth(mac(2), mac(1), len));
        for (i, f) in frames.iter().enumerate() {
            send(&g[0], &mut a_tx, i as u64, [0; 12], f);
        }
        assert_eq!(batch(&dp, &g[0]), Progress::Idle);
        assert_eq!(a_tx.used_idx(), 4);
        // The second frame met a buffer the device may not write: that chain is given back
        // empty. The third does not fit a buffer (no MRG_RXBUF): the buffer stays for the
        // fourth.
        assert_eq!(b_rx.used_idx(), 3);
        assert_eq!(received(&g[1], &b_rx, 0).1, frames[0]);
        assert_eq!(b_rx.used(1), (1, 0));
        assert_eq!(received(&g[1], &b_rx, 2).1, frames[3]);
        let b = g[1].stats();
        assert_eq!(b.get(DeviceDrop::RxBadChain), 1);
        assert_eq!(b.get(DeviceDrop::RxTooBig), 1);
        assert_eq!(b.total(), 2);
        let to_b = dp.switch().port_info(g[1].port.id()).unwrap().stats;
        assert_eq!((to_b.tx_frames, to_b.tx_bytes), (2, 200));
    }

    #[test]
    fn unicast_waits_for_receive_buffers_and_is_decided_once() {
        let (dp, g) = learned_pair(V1, V1);
        let (mut a_tx, mut b_rx) = (g[0].tx(), g[1].rx());
        post_rx(&mut b_rx, 1, 2048);
        let frames: Vec<Vec<u8>> = (0..3).map(|i| eth(mac(2), mac(1), 60 + i)).collect();
        for (i, f) in frames.iter().enumerate() {
            send(&g[0], &mut a_tx, i as u64, [0; 12], f);
        }
        let mut scratch = TxScratch::default();
        let Progress::Stalled(stall) = run_batch(&dp, &g[0].port, 1, &mut scratch, None, false)
        else {
            panic!("the second frame waits");
        };
        assert_eq!((stall.waiting.dst, stall.waiting.ring), (g[1].port.id(), 0));
        assert_eq!(a_tx.used_idx(), 1, "only the delivered frame is given back");
        assert_eq!(b_rx.used_idx(), 1);
        // Still nothing: it waits again, counted once.
        let again = run_batch(&dp, &g[0].port, 1, &mut scratch, Some(stall), false);
        assert_eq!(again, Progress::Stalled(stall));
        // B posts buffers: the frames go, in order.
        for i in 1..5 {
            b_rx.post(&[(RX_BUF + i * 0x10000, 2048, W)]);
        }
        let done = run_batch(&dp, &g[0].port, 1, &mut scratch, Some(stall), false);
        assert_eq!(done, Progress::Idle);
        assert_eq!((a_tx.used_idx(), b_rx.used_idx()), (3, 3));
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(&received(&g[1], &b_rx, i as u16).1, f);
        }
        let a = dp.switch().port_info(g[0].port.id()).unwrap().stats;
        assert_eq!(
            a.rx_frames, 3,
            "a waiting frame is decided and counted once"
        );
        assert_eq!(g[1].stats().total(), 0, "nothing dropped");
    }

    #[test]
    fn a_frame_changed_while_it_waits_is_decided_again() {
        let (dp, g) = setup(&[V1, V1, V1]);
        for (i, guest) in g.iter().enumerate().skip(1) {
            let mut tx = guest.tx();
            send(
                guest,
                &mut tx,
                0,
                [0; 12],
                &eth([0xff; 6], mac(i as u8 + 1), 60),
            );
            batch(&dp, guest);
        }
        let (mut a_tx, mut b_rx, mut c_rx) = (g[0].tx(), g[1].rx(), g[2].rx());
        post_rx(&mut c_rx, 1, 2048);
        send(&g[0], &mut a_tx, 0, [0; 12], &eth(mac(2), mac(1), 60));
        let mut scratch = TxScratch::default();
        let Progress::Stalled(stall) = run_batch(&dp, &g[0].port, 1, &mut scratch, None, false)
        else {
            panic!("the frame to B waits");
        };
        // A rewrites the chain it made available: the frame is now for C.
        let to_c = eth(mac(3), mac(1), 60);
        g[0].mem
            .write_slice(&to_c, GuestAddress(TX_BUF + 12))
            .unwrap();
        post_rx(&mut b_rx, 1, 2048);
        let done = run_batch(&dp, &g[0].port, 1, &mut scratch, Some(stall), false);
        assert_eq!(done, Progress::Idle);
        assert_eq!(
            b_rx.used_idx(),
            0,
            "B does not get what was not decided for it"
        );
        assert_eq!(c_rx.used_idx(), 1);
        assert_eq!(received(&g[2], &c_rx, 0).1, to_c);
        let a = dp.switch().port_info(g[0].port.id()).unwrap().stats;
        assert_eq!(
            a.rx_frames, 2,
            "decided twice: once as it was, once as it is"
        );

        // A byte past the Ethernet header (where the policies look) changes: B, which has
        // one buffer now, gets the first frame, and the second waits.
        send(&g[0], &mut a_tx, 1, [0; 12], &eth(mac(2), mac(1), 60));
        send(&g[0], &mut a_tx, 2, [0; 12], &eth(mac(2), mac(1), 60));
        let Progress::Stalled(stall) = run_batch(&dp, &g[0].port, 1, &mut scratch, None, false)
        else {
            panic!("the second frame to B waits");
        };
        let mut changed = eth(mac(2), mac(1), 60);
        changed[40] ^= 0xff;
        let slot = GuestAddress(TX_BUF + 2 * 0x10000 + 12);
        g[0].mem.write_slice(&changed, slot).unwrap();
        b_rx.post(&[(RX_BUF + 0x10000, 2048, W)]);
        run_batch(&dp, &g[0].port, 1, &mut scratch, Some(stall), false);
        assert_eq!(received(&g[1], &b_rx, 1).1, changed);
        let a = dp.switch().port_info(g[0].port.id()).unwrap().stats;
        assert_eq!(a.rx_frames, 5, "the second frame decided again");
    }

    #[test]
    fn a_long_frame_behind_a_short_header_can_wait() {
        // A legacy guest's 10-byte header leaves 258 bytes of head in the peek.
        let (dp, g) = learned_pair(0, V1);
        let (mut a_tx, mut b_rx) = (g[0].tx(), g[1].rx());
        let frame = eth(mac(2), mac(1), 400);
        g[0].mem
            .write_slice(&[0; 10], GuestAddress(TX_BUF))
            .unwrap();
        g[0].mem
            .write_slice(&frame, GuestAddress(TX_BUF + 10))
            .unwrap();
        a_tx.post(&[(TX_BUF, 10 + frame.len() as u32, 0)]);
        let mut scratch = TxScratch::default();
        let Progress::Stalled(stall) = run_batch(&dp, &g[0].port, 1, &mut scratch, None, false)
        else {
            panic!("the frame waits");
        };
        post_rx(&mut b_rx, 1, 2048);
        let done = run_batch(&dp, &g[0].port, 1, &mut scratch, Some(stall), false);
        assert_eq!(done, Progress::Idle);
        assert_eq!(received(&g[1], &b_rx, 0).1, frame);
        let a = dp.switch().port_info(g[0].port.id()).unwrap().stats;
        assert_eq!(a.rx_frames, 1, "decided once");
    }

    #[test]
    fn a_receiver_that_stops_reading_holds_its_senders_only_briefly() {
        let (dp, g) = learned_pair(V1, V1);
        let mut a_tx = g[0].tx();
        for i in 0..3 {
            send(&g[0], &mut a_tx, i, [0; 12], &eth(mac(2), mac(1), 60));
        }
        let mut scratch = TxScratch::default();
        let Progress::Stalled(stall) = run_batch(&dp, &g[0].port, 1, &mut scratch, None, false)
        else {
            panic!("the first frame waits");
        };
        std::thread::sleep(STALL_MAX + Duration::from_millis(10));
        // Past STALL_MAX: dropped, and so are the next frames to that queue, at once.
        let done = run_batch(&dp, &g[0].port, 1, &mut scratch, Some(stall), false);
        assert_eq!(done, Progress::Idle);
        assert_eq!(a_tx.used_idx(), 3);
        assert_eq!(g[1].stats().get(DeviceDrop::RxNoBuffers), 3);
    }

    #[test]
    fn a_frame_segmented_in_software_waits_whole() {
        let (dp, g) = learned_pair(V1 | MRG | HOST_TSO, V1 | MRG);
        let (mut a_tx, mut b_rx) = (g[0].tx(), g[1].rx());
        send(&g[0], &mut a_tx, 0, tso_hdr(1000), &tcp_frame(3000));
        let mut scratch = TxScratch::default();
        let Progress::Stalled(stall) = run_batch(&dp, &g[0].port, 1, &mut scratch, None, false)
        else {
            panic!("the frame waits");
        };
        assert_eq!((a_tx.used_idx(), b_rx.used_idx()), (0, 0));
        post_rx(&mut b_rx, 3, 4096);
        let done = run_batch(&dp, &g[0].port, 1, &mut scratch, Some(stall), false);
        assert_eq!(done, Progress::Idle);
        assert_eq!(
            (a_tx.used_idx(), b_rx.used_idx()),
            (1, 3),
            "all three segments"
        );
        assert_eq!(g[1].stats().total(), 0);

        // Room for one segment only: it goes, the frame does not wait, the rest are counted.
        post_rx(&mut b_rx, 1, 4096);
        send(&g[0], &mut a_tx, 1, tso_hdr(1000), &tcp_frame(3000));
        assert_eq!(batch(&dp, &g[0]), Progress::Idle);
        assert_eq!((a_tx.used_idx(), b_rx.used_idx()), (2, 4));
        assert_eq!(g[1].stats().get(DeviceDrop::RxNoBuffers), 2);
    }

    #[test]
    fn floods_never_wait() {
        let (dp, g) = setup(&[V1, V1]);
        let mut a_tx = g[0].tx();
        send(&g[0], &mut a_tx, 0, [0; 12], &eth([0xff; 6], mac(1), 60));
        assert_eq!(batch(&dp, &g[0]), Progress::Idle);
        assert_eq!(g[1].stats().get(DeviceDrop::RxNoBuffers), 1);
    }
}
