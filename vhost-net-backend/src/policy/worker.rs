//! A datapath thread's side of the policy host: its own instances of the published
//! generation, swapped only at a batch boundary, running the chains over batches, applying
//! fail modes on faults, counting rule hits (added to the shared counters once per batch) and
//! policing rate classes (per thread).

use super::chain::{
    class_handle, fail_verdict, rule_handle, split_class_handle, split_rule_handle, ChainEntry,
    Generation,
};
use super::host::PolicyHost;
use super::instance::PolicyInstance;
use super::stats::EntryStats;
use bridge_core::conntrack::CtState;
use bridge_core::policy::{
    Action, BridgeOut, HookPoint, JudgeKind, PolicyFrame, PolicyHook, TokenBucket, Verdict,
    MAX_RULE_HITS,
};
use bridge_core::{NetworkId, PortId};
use policy_sdk::abi::{
    self, action, ct, flag, vflag, FrameDesc, MAX_BATCH, NO_FLOW, OUT_FLOOD, OUT_GATEWAY, OUT_NONE,
};
use policy_sdk::headers::describe;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Per-frame result of the chains so far.
#[derive(Clone, Copy, Debug, Default)]
struct Acc {
    /// A final action (drop, reject, redirect).
    done: Option<Action>,
    /// The current tier accepted: skip its remaining modules.
    tier_accepted: bool,
    no_cache: bool,
    log: bool,
    mirror: Option<PortId>,
    rate_class: Option<u32>,
    rules: [u32; MAX_RULE_HITS],
    rule_count: usize,
}

/// Token buckets of one (policy, class, port).
#[derive(Debug)]
struct RateState {
    rates: (u64, u64),
    packets: TokenBucket,
    bytes: TokenBucket,
}

/// How many superseded generations a worker keeps to count cached verdicts they decided.
const RECENT: usize = 4;

/// Distinct rules a worker counts before it adds their hits to the shared counters (at the
/// latest at the end of the batch).
const PENDING_RULES: usize = 16;

/// Hits of one rule (a handle of one generation) not yet added to its shared counters.
#[derive(Clone, Copy, Debug)]
struct RuleHits {
    generation: u64,
    handle: u32,
    packets: u64,
    bytes: u64,
}

/// Frames of consecutive [`PolicyWorker::admit`]s with the same rules, not yet counted in
/// [`PolicyWorker::hits`]: a port's frames mostly come in runs of one verdict, so most frames
/// cost a comparison and two additions.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    generation: u64,
    rules: [u32; MAX_RULE_HITS],
    packets: u64,
    bytes: u64,
}

/// The generation `id`: `current`, or one of the `recent` ones.
fn generation_by_id<'a>(
    current: &'a Generation,
    recent: &'a VecDeque<Arc<Generation>>,
    id: u64,
) -> Option<&'a Generation> {
    if current.id == id {
        return Some(current);
    }
    recent.iter().map(|g| &**g).find(|g| g.id == id)
}

/// One datapath thread's policy state. Implements [`PolicyHook`].
#[derive(Debug)]
pub struct PolicyWorker {
    host: PolicyHost,
    generation: Arc<Generation>,
    instances: Vec<Option<PolicyInstance>>,
    recent: VecDeque<Arc<Generation>>,
    buckets: HashMap<(usize, u16, u32), RateState>,
    descs: Vec<FrameDesc>,
    acc: Vec<Acc>,
    hits: Vec<RuleHits>,
    run: Run,
}

fn desc_of(f: &PolicyFrame<'_>) -> FrameDesc {
    let mut flags = 0;
    if f.from_guest {
        flags |= flag::FROM_GUEST;
    }
    if f.to_guest {
        flags |= flag::TO_GUEST;
    }
    let ct_state = match f.ct {
        None => ct::UNTRACKED,
        Some(CtState::New) => ct::NEW,
        Some(CtState::Established) => ct::ESTABLISHED,
        Some(CtState::Reply) => ct::ESTABLISHED | ct::REPLY,
        Some(CtState::Related) => ct::RELATED,
        Some(CtState::Invalid) => ct::INVALID,
    };
    let base = FrameDesc {
        flow_id: f.flow.unwrap_or(NO_FLOW),
        network: f.network.0,
        ingress_port: f.ingress_port.0,
        bridge_out: match f.bridge_out {
            BridgeOut::Port(p) => p.0,
            BridgeOut::Flood => OUT_FLOOD,
            BridgeOut::Gateway => OUT_GATEWAY,
            BridgeOut::Undecided => OUT_NONE,
        },
        ct_state,
        hook: match f.hook {
            HookPoint::PortIn => abi::HOOK_PORT_IN,
            HookPoint::NatEgress => abi::HOOK_NAT_EGRESS,
        },
        flags,
        ..FrameDesc::ZERO
    };
    FrameDesc {
        frame_len: u32::try_from(f.frame_len).unwrap_or(u32::MAX),
        ..describe(f.frame, base)
    }
}

impl PolicyWorker {
    pub(super) fn new(host: PolicyHost) -> Self {
        let mut w = PolicyWorker {
            generation: Arc::new(Generation::new(0, Vec::new())),
            host,
            instances: Vec::new(),
            recent: VecDeque::new(),
            buckets: HashMap::new(),
            descs: Vec::with_capacity(MAX_BATCH),
            acc: Vec::with_capacity(MAX_BATCH),
            hits: Vec::with_capacity(PENDING_RULES),
            run: Run::default(),
        };
        w.swap();
        w
    }

    /// Id of the generation this worker judges with.
    pub fn generation_id(&self) -> u64 {
        self.generation.id
    }

    /// Whether this worker's generation has a policy at `hook` (otherwise judging at that hook
    /// accepts every frame and can be skipped).
    pub fn runs_at(&self, hook: HookPoint) -> bool {
        let bit = match hook {
            HookPoint::PortIn => abi::HOOK_PORT_IN,
            HookPoint::NatEgress => abi::HOOK_NAT_EGRESS,
        };
        self.generation
            .entries
            .iter()
            .any(|e| e.hooks & (1 << bit) != 0)
    }

    fn instantiate(&self, entry: &ChainEntry) -> Option<PolicyInstance> {
        let module = entry.module.as_ref()?;
        let limits = self.host.inner.config.limits;
        let made = PolicyInstance::new(
            &self.host.inner.linker,
            self.host.inner.engine.ticker().handle(),
            module,
            entry.shared.clone(),
            limits,
            entry.spec.config.as_bytes(),
            false,
        );
        match made {
            Ok((i, _)) => Some(i),
            Err(e) => {
                tracing::error!(policy = %entry.spec.name, error = %e, "cannot instantiate policy; its fail mode applies");
                None
            }
        }
    }

    /// Ends a batch: adds the rule hits counted since the last call to the shared counters.
    pub fn end_batch(&mut self) {
        self.end_run();
        self.add_hits();
    }

    /// Adds the pending rule hits to the shared counters.
    fn add_hits(&mut self) {
        for h in self.hits.drain(..) {
            let Some(generation) = generation_by_id(&self.generation, &self.recent, h.generation)
            else {
                continue;
            };
            if let Some((slot, rule)) = split_rule_handle(h.handle) {
                if let Some(e) = generation.entries.get(slot) {
                    e.rule_counters.add(rule, h.packets, h.bytes);
                }
            }
        }
    }

    /// Counts `packets` frames of `bytes` bytes against the rules of `verdict` (frames it
    /// decided without [`admit`](PolicyHook::admit), counted by the caller).
    pub fn count(&mut self, verdict: &Verdict, packets: u64, bytes: u64) {
        self.count_rules(verdict.generation, &verdict.rules, packets, bytes);
    }

    /// Polices a frame of `frame_len` bytes from `ingress_port` under the rate class of `verdict`,
    /// if it has one: `false` if over the rate. [`admit`](PolicyHook::admit) without the
    /// counting.
    #[inline]
    pub fn police(
        &mut self,
        now_ns: u64,
        verdict: &Verdict,
        ingress_port: PortId,
        frame_len: usize,
    ) -> bool {
        match verdict.rate_class {
            None => true,
            Some(class) => self.police_class(now_ns, verdict, class, ingress_port, frame_len),
        }
    }

    /// Polices a frame of `len` bytes from `ingress_port` under rate class `class` of
    /// `verdict`: `false` if over the rate.
    fn police_class(
        &mut self,
        now_ns: u64,
        verdict: &Verdict,
        class: u32,
        ingress_port: PortId,
        frame_len: usize,
    ) -> bool {
        let Some((slot, class)) = split_class_handle(class) else {
            return true;
        };
        // Borrowed, not cloned: this runs for every frame of a known flow with a rate class.
        let Some(generation) = generation_by_id(&self.generation, &self.recent, verdict.generation)
        else {
            return true;
        };
        let Some(rates) = generation
            .entries
            .get(slot)
            .and_then(|e| e.rate_class(class))
        else {
            return true;
        };
        let key = (
            Arc::as_ptr(&generation.entries[slot].shared.stats) as usize,
            class,
            ingress_port.0,
        );
        let state = self.buckets.entry(key).or_insert_with(|| RateState {
            rates,
            packets: TokenBucket::new(rates.0, now_ns),
            bytes: TokenBucket::new(rates.1, now_ns),
        });
        if state.rates != rates {
            *state = RateState {
                rates,
                packets: TokenBucket::new(rates.0, now_ns),
                bytes: TokenBucket::new(rates.1, now_ns),
            };
        }
        state.packets.take(now_ns, 1) && state.bytes.take(now_ns, frame_len as u64)
    }

    /// Counts the frames of the current run against its rules; starts an empty run.
    fn end_run(&mut self) {
        let run = std::mem::take(&mut self.run);
        if run.packets != 0 {
            self.count_rules(run.generation, &run.rules, run.packets, run.bytes);
        }
    }

    /// Counts `packets` frames of `bytes` bytes against `rules` of generation `generation`.
    fn count_rules(&mut self, generation: u64, rules: &[u32], packets: u64, bytes: u64) {
        for &h in rules.iter().take_while(|&&h| h != 0) {
            self.count_rule(generation, h, packets, bytes);
        }
    }

    /// Counts `packets` frames of `bytes` bytes against rule `handle` of generation
    /// `generation`.
    fn count_rule(&mut self, generation: u64, handle: u32, packets: u64, bytes: u64) {
        let found = self
            .hits
            .iter_mut()
            .find(|h| h.handle == handle && h.generation == generation);
        match found {
            Some(h) => {
                h.packets += packets;
                h.bytes += bytes;
            }
            None => {
                if self.hits.len() == PENDING_RULES {
                    self.add_hits();
                }
                self.hits.push(RuleHits {
                    generation,
                    handle,
                    packets,
                    bytes,
                });
            }
        }
    }

    fn swap(&mut self) {
        let next = self.host.generation();
        self.instances = next.entries.iter().map(|e| self.instantiate(e)).collect();
        let old = std::mem::replace(&mut self.generation, next);
        self.recent.push_back(old);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// Runs chain `slots` over the frames at `idx` (of the current chunk).
    fn run_chain(
        &mut self,
        now_ns: u64,
        slots: &[usize],
        idx: &[usize],
        frames: &[PolicyFrame<'_>],
        network_tier: bool,
    ) {
        for &slot in slots {
            let entry = self.generation.entries[slot].clone();
            for kind in [JudgeKind::NewFlow, JudgeKind::EveryFrame] {
                let sel: Vec<usize> = idx
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let a = &self.acc[i];
                        a.done.is_none()
                            && !a.tier_accepted
                            && frames[i].kind == kind
                            && entry.hooks & (1 << self.descs[i].hook) != 0
                    })
                    .collect();
                if !sel.is_empty() {
                    self.call(
                        now_ns,
                        slot,
                        &entry,
                        &sel,
                        frames,
                        kind == JudgeKind::EveryFrame,
                        network_tier,
                    );
                }
            }
        }
        for &i in idx {
            self.acc[i].tier_accepted = false;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        now_ns: u64,
        slot: usize,
        entry: &ChainEntry,
        sel: &[usize],
        frames: &[PolicyFrame<'_>],
        per_frame: bool,
        network_tier: bool,
    ) {
        let stats = &entry.shared.stats;
        let descs: Vec<FrameDesc> = sel.iter().map(|&i| self.descs[i]).collect();
        let bytes: Vec<&[u8]> = sel.iter().map(|&i| frames[i].frame).collect();
        let mut out = vec![abi::Verdict::CONTINUE; sel.len()];
        let result = match self.instances[slot].as_mut() {
            Some(inst) => {
                EntryStats::bump(&stats.calls);
                inst.judge(now_ns, per_frame, &descs, &bytes, &mut out)
                    .map_err(Some)
            }
            None => Err(None),
        };
        match result {
            Ok(()) => {
                let bytes: usize = sel.iter().map(|&i| frames[i].frame_len).sum();
                stats
                    .frames
                    .fetch_add(sel.len() as u64, std::sync::atomic::Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(fault) => {
                if let Some(fault) = fault {
                    match fault {
                        super::instance::Fault::Timeout => EntryStats::bump(&stats.timeouts),
                        super::instance::Fault::Trap(_) => EntryStats::bump(&stats.traps),
                        _ => EntryStats::bump(&stats.bad_results),
                    }
                    tracing::warn!(policy = %entry.spec.name, %fault, "policy call faulted; fail mode applied, instance rebuilt");
                    EntryStats::bump(&stats.rebuilds);
                    self.instances[slot] = self.instantiate(entry);
                    self.host.report_fault(self.generation.id, entry);
                }
                stats
                    .fail_applied
                    .fetch_add(sel.len() as u64, std::sync::atomic::Ordering::Relaxed);
                for (k, d) in descs.iter().enumerate() {
                    out[k] = fail_verdict(entry.spec.fail_mode, d, bytes[k]);
                }
            }
        }
        for (k, &i) in sel.iter().enumerate() {
            self.merge(i, slot, entry, &out[k], network_tier);
        }
    }

    fn target_ok(&self, i: usize, port: u32, network_tier: bool) -> bool {
        !network_tier || self.host.port_network(port) == Some(self.descs[i].network)
    }

    fn merge(
        &mut self,
        i: usize,
        slot: usize,
        entry: &ChainEntry,
        v: &abi::Verdict,
        network_tier: bool,
    ) {
        let stats = &entry.shared.stats;
        if let Some(c) = stats.actions.get(usize::from(v.action)) {
            EntryStats::bump(c);
        }
        let mirror_ok = v.flags & vflag::MIRROR == 0 || self.target_ok(i, v.mirror, network_tier);
        let redirect_ok = v.action != action::REDIRECT || self.target_ok(i, v.target, network_tier);
        let a = &mut self.acc[i];
        if v.rule != 0 && a.rule_count < MAX_RULE_HITS {
            a.rules[a.rule_count] = rule_handle(slot, v.rule);
            a.rule_count += 1;
        }
        if v.rate_class != 0 && a.rate_class.is_none() {
            a.rate_class = Some(class_handle(slot, v.rate_class));
        }
        a.no_cache |= v.flags & vflag::NO_CACHE != 0;
        a.log |= v.flags & vflag::LOG != 0;
        if !mirror_ok || !redirect_ok {
            EntryStats::bump(&stats.bad_targets);
            a.done = Some(Action::Drop);
            return;
        }
        if v.flags & vflag::MIRROR != 0 && a.mirror.is_none() {
            a.mirror = Some(PortId(v.mirror));
        }
        match v.action {
            action::ACCEPT => a.tier_accepted = true,
            action::DROP => a.done = Some(Action::Drop),
            action::REJECT => a.done = Some(Action::Reject),
            action::REDIRECT => a.done = Some(Action::Redirect(PortId(v.target))),
            _ => {}
        }
    }

    fn judge_chunk(&mut self, now_ns: u64, frames: &[PolicyFrame<'_>], verdicts: &mut [Verdict]) {
        self.descs.clear();
        self.descs.extend(frames.iter().map(desc_of));
        self.acc.clear();
        self.acc.resize(frames.len(), Acc::default());
        let all: Vec<usize> = (0..frames.len()).collect();
        let generation = self.generation.clone();
        self.run_chain(now_ns, &generation.operator, &all, frames, false);
        for (network, slots) in &generation.networks {
            let idx: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| frames[i].network == NetworkId(*network))
                .collect();
            if !idx.is_empty() {
                self.run_chain(now_ns, slots, &idx, frames, true);
            }
        }
        for (v, a) in verdicts.iter_mut().zip(&self.acc) {
            *v = Verdict {
                action: a.done.unwrap_or(Action::Accept),
                mirror: a.mirror,
                log: a.log,
                cache: !a.no_cache,
                rate_class: a.rate_class,
                rules: a.rules,
                generation: generation.id,
            };
        }
    }
}

impl PolicyHook for PolicyWorker {
    /// Takes up a newly published generation. Rule hits are added by
    /// [`end_batch`](PolicyWorker::end_batch), which ends every batch that admits frames.
    fn begin_batch(&mut self) {
        if self.host.generation_id() != self.generation.id {
            self.swap();
        }
    }

    fn judge(&mut self, now_ns: u64, frames: &[PolicyFrame<'_>], verdicts: &mut [Verdict]) {
        let n = frames.len().min(verdicts.len());
        for (f, v) in frames[..n]
            .chunks(MAX_BATCH)
            .zip(verdicts[..n].chunks_mut(MAX_BATCH))
        {
            self.judge_chunk(now_ns, f, v);
        }
    }

    /// Counts the frame against the verdict's rules (inlined: every frame decided past the
    /// flow cache comes here), in the current run if it has its rules; polices its rate class
    /// if it has one. The policy stage counts its flow cache's hits itself
    /// ([`count`](PolicyWorker::count)) and only [`police`](PolicyWorker::police)s them.
    #[inline]
    fn admit(
        &mut self,
        now_ns: u64,
        verdict: &Verdict,
        ingress_port: PortId,
        frame_len: usize,
    ) -> bool {
        if verdict.rules != self.run.rules || verdict.generation != self.run.generation {
            self.end_run();
            self.run.rules = verdict.rules;
            self.run.generation = verdict.generation;
        }
        self.run.packets += 1;
        self.run.bytes += frame_len as u64;
        self.police(now_ns, verdict, ingress_port, frame_len)
    }
}
