//! The policy hook the datapath pipeline calls, and the verdict types it caches in flows.
//!
//! The pipeline hands a batch of frames that need a decision (a flow's first packet, a frame
//! that belongs to no flow, or a frame of a flow whose verdict asked not to be cached) to a
//! [`PolicyHook`] at each [`HookPoint`], stores cacheable [`Verdict`]s in the conntrack entry,
//! and passes every frame, judged or cached, through [`PolicyHook::admit`] (per-rule counters
//! and rate limits). Implementations: [`NoPolicy`] here, the WASM policy host in
//! vhost-net-backend. [`TokenBucket`] is the rate limiter both use.

use crate::conntrack::CtState;
use crate::{NetworkId, PortId};

/// Where in the pipeline a frame is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// A frame has come in from a port (guest, uplink or gateway).
    PortIn,
    /// A frame is about to leave through the NAT egress.
    NatEgress,
}

/// The bridge's own forwarding decision for a frame, before policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BridgeOut {
    /// One output port.
    Port(PortId),
    /// Flooded to the network's ports.
    Flood,
    /// For the network's gateway (router).
    Gateway,
    /// No decision (yet).
    Undecided,
}

/// Why a frame is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JudgeKind {
    /// It opens a flow or belongs to none: its verdict may be cached.
    NewFlow,
    /// Its flow's verdict was not cached: judged per frame.
    EveryFrame,
}

/// A frame handed to a policy, with what the pipeline knows about it.
#[derive(Clone, Copy, Debug)]
pub struct PolicyFrame<'a> {
    /// The frame's bytes at hand: the whole frame, or at least its headers (a datapath that
    /// peeks at guest memory).
    pub frame: &'a [u8],
    /// The whole frame's length.
    pub frame_len: usize,
    /// Hook point.
    pub hook: HookPoint,
    /// Why it is judged.
    pub kind: JudgeKind,
    /// Network (tenant).
    pub network: NetworkId,
    /// Port it came in on.
    pub ingress_port: PortId,
    /// Whether that port is a guest's.
    pub from_guest: bool,
    /// The bridge's decision.
    pub bridge_out: BridgeOut,
    /// Whether the bridge delivers it to a guest's port.
    pub to_guest: bool,
    /// Conntrack flow id, if tracked.
    pub flow: Option<u64>,
    /// Conntrack state (`None`: not tracked, e.g. ARP).
    pub ct: Option<CtState>,
}

/// What happens to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward as the bridge decided.
    Accept,
    /// Drop silently.
    Drop,
    /// Drop and answer as iptables REJECT does (ICMP port unreachable, TCP RST).
    Reject,
    /// Deliver to this port instead.
    Redirect(PortId),
}

/// Most rules one verdict is attributed to (one per module in a chain, at most).
pub const MAX_RULE_HITS: usize = 4;

/// A policy decision, as cached in a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The action.
    pub action: Action,
    /// Also deliver a copy here.
    pub mirror: Option<PortId>,
    /// Log frames of this flow (rate-limited).
    pub log: bool,
    /// Whether the pipeline may cache it in the flow (otherwise every frame is judged).
    pub cache: bool,
    /// Rate-limit class (a handle the hook defines) policed per ingress port by `admit`.
    pub rate_class: Option<u32>,
    /// Rules (handles the hook defines, 0 for none) each frame is counted against.
    pub rules: [u32; MAX_RULE_HITS],
    /// Policy generation that decided.
    pub generation: u64,
}

impl Verdict {
    /// Accept, cacheable, attributed to no rule.
    pub const ACCEPT: Verdict = Verdict {
        action: Action::Accept,
        mirror: None,
        log: false,
        cache: true,
        rate_class: None,
        rules: [0; MAX_RULE_HITS],
        generation: 0,
    };

    /// Drop, not cacheable: what a pipeline uses before a hook has judged.
    pub const UNJUDGED: Verdict = Verdict {
        action: Action::Drop,
        cache: false,
        ..Verdict::ACCEPT
    };
}

/// A policy stage of the pipeline.
pub trait PolicyHook {
    /// Starts a batch. A hook changes what it enforces (a new policy generation) only here, so
    /// every frame of a batch is judged by one generation.
    fn begin_batch(&mut self);

    /// Judges `frames` into `verdicts` (same length; extra verdicts are left alone).
    fn judge(&mut self, now_ns: u64, frames: &[PolicyFrame<'_>], verdicts: &mut [Verdict]);

    /// Passes one frame under `verdict` (fresh or cached): counts it against the verdict's
    /// rules and polices its rate class. `false`: over the rate limit, drop it.
    fn admit(
        &mut self,
        now_ns: u64,
        verdict: &Verdict,
        ingress_port: PortId,
        frame_len: usize,
    ) -> bool;
}

/// The hook of a pipeline without policy: accepts every frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPolicy;

impl PolicyHook for NoPolicy {
    fn begin_batch(&mut self) {}

    fn judge(&mut self, _now_ns: u64, frames: &[PolicyFrame<'_>], verdicts: &mut [Verdict]) {
        for v in verdicts.iter_mut().take(frames.len()) {
            *v = Verdict::ACCEPT;
        }
    }

    fn admit(&mut self, _now_ns: u64, _verdict: &Verdict, _port: PortId, _len: usize) -> bool {
        true
    }
}

/// A token bucket: `rate` tokens per second, at most `rate` stored (one second deep).
/// Time is passed in; a rate of 0 is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    /// Tokens scaled by 1e9 (token-nanoseconds), so refill is exact integer arithmetic.
    scaled: u128,
    last_ns: u64,
}

const NANOS: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket for `rate` tokens per second, as of `now_ns`.
    pub fn new(rate: u64, now_ns: u64) -> Self {
        TokenBucket {
            rate,
            scaled: u128::from(rate) * NANOS,
            last_ns: now_ns,
        }
    }

    /// The rate, tokens per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `amount` tokens if the bucket holds them after refilling up to `now_ns`.
    pub fn take(&mut self, now_ns: u64, amount: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = u128::from(now_ns.saturating_sub(self.last_ns));
        self.last_ns = self.last_ns.max(now_ns);
        let cap = u128::from(self.rate) * NANOS;
        self.scaled = (self.scaled + elapsed * u128::from(self.rate)).min(cap);
        let need = u128::from(amount) * NANOS;
        if self.scaled >= need {
            self.scaled -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_its_rate_per_second() {
        let mut b = TokenBucket::new(10, 0);
        assert_eq!(
            (0..20).filter(|_| b.take(0, 1)).count(),
            10,
            "one second of burst"
        );
        assert!(!b.take(50_000_000, 1), "half a token after 50 ms");
        assert!(b.take(100_000_000, 1), "one token after 100 ms");
        assert_eq!(
            (0..20).filter(|_| b.take(10_000_000_000, 1)).count(),
            10,
            "capped at one second"
        );
    }

    #[test]
    fn bucket_edge_cases() {
        let mut unlimited = TokenBucket::new(0, 0);
        assert!((0..1000).all(|_| unlimited.take(0, u64::MAX)));
        let mut b = TokenBucket::new(1500, 5);
        assert!(!b.take(5, 1501), "more than the depth never fits");
        assert!(
            b.take(3, 1500),
            "time going backwards refills nothing and does not panic"
        );
        assert!(!b.take(4, 1));
    }

    #[test]
    fn no_policy_accepts() {
        let f = PolicyFrame {
            frame: &[0; 14],
            frame_len: 14,
            hook: HookPoint::PortIn,
            kind: JudgeKind::NewFlow,
            network: NetworkId(0),
            ingress_port: PortId(1),
            from_guest: true,
            bridge_out: BridgeOut::Flood,
            to_guest: true,
            flow: None,
            ct: None,
        };
        let mut v = [Verdict::UNJUDGED; 2];
        NoPolicy.begin_batch();
        NoPolicy.judge(0, &[f], &mut v);
        assert_eq!(v, [Verdict::ACCEPT, Verdict::UNJUDGED]);
        assert!(NoPolicy.admit(0, &v[0], PortId(1), 14));
    }
}
