//! The policy stage of the pipeline: where the datapath meets the WASM policy host.
//!
//! Every frame at a hook point ([`HookPoint::PortIn`] on the workers and injectors,
//! [`HookPoint::NatEgress`] on the NAT networks' loops) is tracked in that hook's flow table, a
//! [`Conntrack`] whose entries cache the flow's [`Verdict`]. A frame whose flow has a verdict of
//! the current generation passes by it ([`PolicyStage::check`] answers at once); a frame that
//! opens a flow, belongs to none (ARP, IPv6, fragments), or whose flow asked to be judged per
//! frame is set aside, and the batch's set-aside frames are judged with one call per module
//! ([`PolicyStage::judge_pending`]). Verdicts of an older generation are judged again, so a
//! reload applies to established flows too.
//!
//! In front of the flow table each stage keeps a [`FlowCache`]: packets like one its flow's
//! current, cacheable verdict was found for less than a second ago take that verdict without
//! the table's lock (see [`bridge_core::flow_cache`] for what stays exact and what may lag).
//! Rule hits are added to the shared counters once per batch ([`PolicyStage::end_batch`]); the
//! frames the flow cache answered are counted there, per verdict, until then.
//!
//! A stage costs one atomic load per batch while no policy runs at its hook. Nothing is
//! allocated per frame: a stage's buffers are sized for one batch when it is made, its flow
//! cache on the first known flow.

use std::sync::Arc;

use bridge_core::conntrack::{
    Conntrack, ConntrackConfig, ConntrackError, CtState, FlowRef, Ipv4Fields, PacketMeta,
};
use bridge_core::flow_cache::FlowCache;
use bridge_core::policy::{
    Action, BridgeOut, HookPoint, JudgeKind, PolicyFrame, PolicyHook, TokenBucket, Verdict,
};
use bridge_core::time::Instant;
use bridge_core::wire::{EthernetProtocol, ETHERNET_HEADER_LEN};
use bridge_core::{Decision, DropReason, Egress, L2Meta, NetworkId, PortId, Switch};
use policy_sdk::abi::MAX_BATCH;

use super::Attachment;
use crate::policy::{PolicyHost, PolicyWorker};

/// Bytes of each set-aside frame the stage keeps for the modules: the snapshot they see and
/// what `frame_read` reaches.
pub const HEAD_LEN: usize = bridge_core::offload::MAX_HEAD_LEN;

/// Log lines per second for verdicts with the LOG flag, per stage.
const LOG_PER_S: u64 = 10;

/// What the datapath's policy stages share: the policy host and a flow table per hook point.
#[derive(Debug)]
pub struct PolicyPlane {
    host: PolicyHost,
    flows: [Conntrack<Verdict>; 2],
}

impl PolicyPlane {
    /// The plane of `host`, with empty flow tables.
    pub fn new(host: PolicyHost) -> Self {
        PolicyPlane {
            host,
            flows: [(); 2].map(|()| Conntrack::new(ConntrackConfig::default())),
        }
    }

    /// The policy host.
    pub fn host(&self) -> &PolicyHost {
        &self.host
    }

    /// The flows tracked at `hook`, with their cached verdicts.
    pub fn flows(&self, hook: HookPoint) -> &Conntrack<Verdict> {
        &self.flows[match hook {
            HookPoint::PortIn => 0,
            HookPoint::NatEgress => 1,
        }]
    }

    /// Removes the flows expired at `now` (from a timer).
    pub fn expire(&self, now: Instant) {
        for flows in &self.flows {
            flows.expire(now);
        }
    }
}

/// Where a frame is and where the switch sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameCtx {
    /// The port it came in on.
    pub ingress: PortId,
    /// That port's network.
    pub network: NetworkId,
    /// Whether that port is a guest's.
    pub from_guest: bool,
    /// The switch's decision.
    pub out: BridgeOut,
    /// Whether the switch delivers it to a guest.
    pub to_guest: bool,
}

impl FrameCtx {
    /// The context of a frame from `ingress` (in `network`; a guest's port when `from_guest`)
    /// that the switch decided to `decision`. A host port as destination is the gateway.
    pub fn of(
        ingress: PortId,
        network: NetworkId,
        from_guest: bool,
        decision: &Decision,
        ports: &[Option<Attachment>],
    ) -> Self {
        let (out, to_guest) = match *decision {
            Decision::Forward { port, .. } => match ports.get(port.0 as usize) {
                Some(Some(Attachment::Host(_))) => (BridgeOut::Gateway, false),
                _ => (BridgeOut::Port(port), true),
            },
            Decision::Flood(_) => (BridgeOut::Flood, true),
            Decision::Drop(_) => (BridgeOut::Undecided, false),
        };
        FrameCtx {
            ingress,
            network,
            from_guest,
            out,
            to_guest,
        }
    }
}

/// Calls `f` with every port (and its tag action) a frame goes to: the switch's `decision`,
/// or the policy's `redirect` instead; and the policy's `mirror` too.
pub fn for_each_target(
    switch: &Switch,
    decision: &Decision,
    redirect: Option<PortId>,
    mirror: Option<PortId>,
    mut f: impl FnMut(PortId, Egress),
) {
    match (redirect, decision) {
        (Some(port), _) => f(port, Egress::AsIs),
        (None, Decision::Forward { port, egress }) => f(*port, *egress),
        (None, Decision::Flood(flood)) => switch.for_each_flood_target(flood, &mut f),
        (None, Decision::Drop(_)) => {}
    }
    if let Some(port) = mirror {
        f(port, Egress::AsIs);
    }
}

/// What to do with a frame, its verdict carried out as far as the stage can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Deliver it: as the switch decided, or to `redirect`; a copy to `mirror` too.
    Deliver {
        /// The port it goes to instead of the switch's choice.
        redirect: Option<PortId>,
        /// The port that gets a copy.
        mirror: Option<PortId>,
    },
    /// Drop it: count `reason` on the ingress port.
    Drop(DropReason),
    /// Drop it, count [`DropReason::PolicyReject`], and answer its sender
    /// ([`bridge_core::reject::reject_reply`]).
    Reject,
}

impl Outcome {
    /// Delivery as the switch decided.
    pub const PASS: Outcome = Outcome::Deliver {
        redirect: None,
        mirror: None,
    };
}

/// The answer of [`PolicyStage::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Decided now (by the flow's verdict, or a full flow table).
    Now(Outcome),
    /// Set aside for [`PolicyStage::judge_pending`]; its outcome comes in that order.
    Later,
}

/// A frame set aside for judging.
#[derive(Clone, Copy, Debug)]
struct Pending {
    ctx: FrameCtx,
    head_len: usize,
    frame_len: usize,
    flow: Option<FlowRef>,
    ct: Option<CtState>,
    kind: JudgeKind,
    /// An earlier frame of the batch that opens the same flow: this one takes its verdict
    /// (if cacheable) instead of being judged too.
    follows: Option<usize>,
}

/// What conntrack knows of a frame.
#[derive(Clone, Copy, Debug, Default)]
struct FlowState {
    flow: Option<FlowRef>,
    ct: Option<CtState>,
    verdict: Option<Verdict>,
}

impl FlowState {
    /// A frame conntrack could not track, in state `ct`.
    fn untracked(ct: Option<CtState>) -> Self {
        FlowState {
            ct,
            ..FlowState::default()
        }
    }
}

/// One thread's policy stage at one hook point.
#[derive(Debug)]
pub struct PolicyStage {
    plane: Arc<PolicyPlane>,
    worker: PolicyWorker,
    hook: HookPoint,
    pending: Vec<Pending>,
    heads: Box<[u8]>,
    verdicts: Vec<Verdict>,
    /// Indices into `pending` of the frames one call judges.
    selected: Vec<usize>,
    outcomes: Vec<Outcome>,
    log: TokenBucket,
    cache: FlowCache<Verdict>,
    /// The worker's generation (it changes only in [`begin_batch`](Self::begin_batch)).
    generation: u64,
}

/// Nanoseconds of a datapath instant (the policy host's clock for rate classes).
fn nanos(now: Instant) -> u64 {
    u64::try_from(now.total_micros()).unwrap_or(0) * 1000
}

impl PolicyStage {
    /// A stage at `hook` of `plane`.
    pub fn new(plane: Arc<PolicyPlane>, hook: HookPoint) -> Self {
        let worker = plane.host.worker();
        let cache = FlowCache::new(plane.flows(hook));
        PolicyStage {
            plane,
            hook,
            pending: Vec::with_capacity(MAX_BATCH),
            heads: vec![0; MAX_BATCH * HEAD_LEN].into_boxed_slice(),
            verdicts: Vec::with_capacity(MAX_BATCH),
            selected: Vec::with_capacity(MAX_BATCH),
            outcomes: Vec::with_capacity(MAX_BATCH),
            generation: worker.generation_id(),
            log: TokenBucket::new(LOG_PER_S, 0),
            cache,
            worker,
        }
    }

    /// Starts a batch: takes up a newly published generation and the flow table's epoch.
    /// Returns whether a policy runs at this stage's hook; if not, the batch's frames need no
    /// [`check`](Self::check). A batch that checks frames ends with
    /// [`end_batch`](Self::end_batch), which adds its rule hits to the shared counters.
    pub fn begin_batch(&mut self) -> bool {
        self.worker.begin_batch();
        let generation = self.worker.generation_id();
        if generation != self.generation {
            // The cache holds verdicts of the current generation only: a hit is reusable.
            self.cache.clear();
            self.generation = generation;
        }
        let runs = self.worker.runs_at(self.hook);
        if runs {
            self.cache.begin_batch(self.plane.flows(self.hook));
        }
        runs
    }

    /// Ends a batch: adds its rule hits to the shared counters.
    pub fn end_batch(&mut self) {
        self.count_cache_hits();
        self.worker.end_batch();
    }

    /// Counts the frames the flow cache answered against their verdicts' rules.
    fn count_cache_hits(&mut self) {
        let worker = &mut self.worker;
        self.cache
            .take_hits(|v, packets, bytes| worker.count(v, packets, bytes));
    }

    /// Whether as many frames are set aside as one call judges: call
    /// [`judge_pending`](Self::judge_pending) before the next [`check`](Self::check).
    pub fn is_full(&self) -> bool {
        self.pending.len() == MAX_BATCH
    }

    /// Whether frames are set aside.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Tracks a frame of `len` bytes from `ingress` (in `network`) whose first bytes are `head`
    /// (at least its headers), and decides it by its flow's verdict, or sets it aside with its
    /// context, `ctx()` (called only on a flow cache miss). Must not be called while
    /// [`is_full`](Self::is_full).
    ///
    /// Inlined: a packet of a known flow costs one call (`cached`: its parse and a cache
    /// lookup) and its outcome.
    #[inline]
    pub fn check(
        &mut self,
        now: Instant,
        ingress: PortId,
        network: NetworkId,
        head: &[u8],
        len: usize,
        ctx: impl FnOnce() -> FrameCtx,
    ) -> Check {
        match cached(&mut self.cache, now, network, head, len) {
            Some(v) => {
                debug_assert!(reusable(v, self.generation));
                // The usual verdict, neither policed, logged nor mirrored: the frame goes as
                // decided (what `decide` would answer).
                if v.action == Action::Accept
                    && v.mirror.is_none()
                    && v.rate_class.is_none()
                    && !v.log
                {
                    return Check::Now(Outcome::PASS);
                }
                // Counted by the cache: only policed here.
                let now_ns = nanos(now);
                let admitted = self.worker.police(now_ns, v, ingress, len);
                let log = &mut self.log;
                Check::Now(decide(log, now_ns, ingress, network, v, len, admitted))
            }
            _ => self.track(now, network, ctx(), head, len),
        }
    }

    /// [`check`](Self::check) past the flow cache: tracks the packet (in `network`) in the flow
    /// table and decides it by its flow's verdict, or sets it aside (untracked if conntrack
    /// does not follow it). It parses the frame again, out of line: a frame of a known flow
    /// misses the cache once per flow and refresh, and so a hit hands back a verdict alone.
    #[inline(never)]
    fn track(
        &mut self,
        now: Instant,
        network: NetworkId,
        ctx: FrameCtx,
        head: &[u8],
        len: usize,
    ) -> Check {
        // Its conntrack state if it has no flow: none for frames conntrack does not follow
        // (non-IPv4, fragments, other protocols), invalid for malformed IPv4.
        let meta = l3_offset(head).ok_or(None).and_then(|l3| {
            let packet = &head[l3..];
            PacketMeta::parse_ipv4_head(network.0, packet, len.saturating_sub(l3)).map_err(ct_of)
        });
        let meta = match meta {
            Ok(m) => m,
            Err(ct) => return self.set_aside(ctx, head, len, FlowState::untracked(ct)),
        };
        let Ok(t) = self.plane.flows(self.hook).track(now, &meta) else {
            return Check::Now(Outcome::Drop(DropReason::ConntrackFull));
        };
        match t.verdict {
            Some(v) if reusable(&v, self.generation) => {
                self.cache.insert(now, &meta, &t);
                let now_ns = nanos(now);
                let admitted = self.worker.admit(now_ns, &v, ctx.ingress, len);
                let (log, ingress, network) = (&mut self.log, ctx.ingress, ctx.network);
                Check::Now(decide(log, now_ns, ingress, network, &v, len, admitted))
            }
            _ => {
                let state = FlowState {
                    flow: t.flow,
                    ct: Some(t.state),
                    verdict: t.verdict,
                };
                self.set_aside(ctx, head, len, state)
            }
        }
    }

    /// Sets a frame aside for judging, with what conntrack knows of it.
    #[inline(never)]
    fn set_aside(&mut self, ctx: FrameCtx, head: &[u8], len: usize, state: FlowState) -> Check {
        let FlowState { flow, ct, verdict } = state;
        let kind = match verdict {
            Some(v) if v.generation == self.generation => JudgeKind::EveryFrame,
            _ => JudgeKind::NewFlow,
        };
        let id = flow.map(|f| f.id());
        let follows = match kind {
            JudgeKind::NewFlow if id.is_some() => self.pending.iter().position(|p| {
                p.kind == JudgeKind::NewFlow && p.follows.is_none() && p.flow.map(|f| f.id()) == id
            }),
            _ => None,
        };
        let slot = self.pending.len();
        let head_len = head.len().min(HEAD_LEN);
        self.heads[slot * HEAD_LEN..][..head_len].copy_from_slice(&head[..head_len]);
        self.pending.push(Pending {
            ctx,
            head_len,
            frame_len: len,
            flow,
            ct,
            kind,
            follows,
        });
        Check::Later
    }

    /// Judges the frames set aside, one call per module (frames that follow an earlier frame of
    /// their new flow take its verdict when it may be cached; when not, they are judged per
    /// frame in a second call); their outcomes, in order, are then in
    /// [`outcomes`](Self::outcomes).
    pub fn judge_pending(&mut self, now: Instant) -> &[Outcome] {
        self.outcomes.clear();
        let n = self.pending.len();
        if n == 0 {
            return &self.outcomes;
        }
        self.verdicts.clear();
        self.verdicts.resize(n, Verdict::UNJUDGED);
        self.selected.clear();
        let leads = (0..n).filter(|&i| self.pending[i].follows.is_none());
        self.selected.extend(leads);
        self.judge_selected(now, None);
        self.selected.clear();
        for i in 0..n {
            if let Some(j) = self.pending[i].follows {
                match self.verdicts[j] {
                    v if v.cache => self.verdicts[i] = v,
                    _ => self.selected.push(i),
                }
            }
        }
        self.judge_selected(now, Some(JudgeKind::EveryFrame));
        for i in 0..n {
            let (p, v) = (self.pending[i], self.verdicts[i]);
            if let (Some(flow), None) = (&p.flow, p.follows) {
                self.plane.flows(self.hook).set_verdict(flow, v);
            }
            let (ingress, network, len) = (p.ctx.ingress, p.ctx.network, p.frame_len);
            let now_ns = nanos(now);
            let admitted = self.worker.admit(now_ns, &v, ingress, len);
            let outcome = decide(&mut self.log, now_ns, ingress, network, &v, len, admitted);
            self.outcomes.push(outcome);
        }
        self.pending.clear();
        &self.outcomes
    }

    /// Judges the set-aside frames at `selected` in one call (as `kind` if given), into
    /// `verdicts`.
    fn judge_selected(&mut self, now: Instant, kind: Option<JudgeKind>) {
        let count = self.selected.len();
        if count == 0 {
            return;
        }
        let heads = &self.heads;
        let unused = PolicyFrame {
            frame: &[],
            frame_len: 0,
            hook: self.hook,
            kind: JudgeKind::NewFlow,
            network: NetworkId(0),
            ingress_port: PortId(0),
            from_guest: false,
            bridge_out: BridgeOut::Undecided,
            to_guest: false,
            flow: None,
            ct: None,
        };
        let frames: [PolicyFrame<'_>; MAX_BATCH] = std::array::from_fn(|k| {
            let Some(&i) = self.selected.get(k) else {
                return unused;
            };
            let p = &self.pending[i];
            PolicyFrame {
                frame: &heads[i * HEAD_LEN..][..p.head_len],
                frame_len: p.frame_len,
                kind: kind.unwrap_or(p.kind),
                network: p.ctx.network,
                ingress_port: p.ctx.ingress,
                from_guest: p.ctx.from_guest,
                bridge_out: p.ctx.out,
                to_guest: p.ctx.to_guest,
                flow: p.flow.map(|f| f.id()),
                ct: p.ct,
                ..unused
            }
        });
        let mut judged = [Verdict::UNJUDGED; MAX_BATCH];
        self.worker
            .judge(nanos(now), &frames[..count], &mut judged[..count]);
        for (&i, v) in self.selected.iter().zip(&judged[..count]) {
            self.verdicts[i] = *v;
        }
    }

    /// The outcomes of the last [`judge_pending`](Self::judge_pending).
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }
}

/// The verdict `cache` holds for the packet of a frame of `len` bytes in `network` whose first
/// bytes are `head`, counted as a hit of it; `None` for a frame the cache does not answer for
/// (tracked or not). Out of line, with the parse inlined: it hands back a reference alone, not
/// the packet's fields (and takes its arguments in registers).
#[inline(never)]
fn cached<'c>(
    cache: &'c mut FlowCache<Verdict>,
    now: Instant,
    network: NetworkId,
    head: &[u8],
    len: usize,
) -> Option<&'c Verdict> {
    // A plain IPv4 header only: the parse then calls nothing, and this function saves no
    // registers. Any other frame goes to the flow table, as a miss does.
    let l3 = l3_offset(head)?;
    let fields = Ipv4Fields::parse_plain(network.0, &head[l3..], len.saturating_sub(l3))?.ok()?;
    cache.hit(now, &fields, len)
}

/// Where the IPv4 packet of a frame whose first bytes are `head` starts; `None` if it carries
/// none.
#[inline]
fn l3_offset(head: &[u8]) -> Option<usize> {
    // An untagged IPv4 frame, the common case, without reading the rest of its Ethernet header.
    match head.get(12..14) {
        Some([0x08, 0x00]) => Some(ETHERNET_HEADER_LEN),
        _ => match L2Meta::parse(head) {
            Ok(l2) if l2.ethertype == EthernetProtocol::Ipv4 => Some(usize::from(l2.l3_offset)),
            _ => None,
        },
    }
}

/// Whether `v` may decide a frame without judging it: a cacheable verdict of `generation`.
fn reusable(v: &Verdict, generation: u64) -> bool {
    v.generation == generation && v.cache
}

/// The conntrack state of a frame it could not track for `error`.
fn ct_of(error: ConntrackError) -> Option<CtState> {
    (error == ConntrackError::Malformed).then_some(CtState::Invalid)
}

/// Logs a frame from `ingress` (in `network`) of a verdict with the LOG flag, if `log` has a
/// token at `now_ns`.
#[cold]
fn log_frame(
    log: &mut TokenBucket,
    now_ns: u64,
    ingress: PortId,
    network: NetworkId,
    v: &Verdict,
    len: usize,
) {
    if log.take(now_ns, 1) {
        tracing::info!(
            port = ingress.0,
            network = network.0,
            len,
            action = ?v.action,
            "policy log"
        );
    }
}

/// The outcome of a frame of `len` bytes from `ingress` (in `network`) under `v`, `admitted`
/// by its rate class or not (its rules counted); logged if `v` has the LOG flag (limited by
/// `log`).
#[inline]
fn decide(
    log: &mut TokenBucket,
    now_ns: u64,
    ingress: PortId,
    network: NetworkId,
    v: &Verdict,
    len: usize,
    admitted: bool,
) -> Outcome {
    if v.log {
        log_frame(log, now_ns, ingress, network, v, len);
    }
    if !admitted {
        return Outcome::Drop(DropReason::PolicyRateLimit);
    }
    match v.action {
        Action::Accept => Outcome::Deliver {
            redirect: None,
            mirror: v.mirror,
        },
        Action::Redirect(port) => Outcome::Deliver {
            redirect: Some(port),
            mirror: v.mirror,
        },
        Action::Drop => Outcome::Drop(DropReason::PolicyDrop),
        Action::Reject => Outcome::Reject,
    }
}
