//! The policy hook before NAT egress ([`HookPoint::NatEgress`]): the frames a NAT network's
//! gateway hands to its egress (`user` or `kernel`) pass the policies at that hook first, in
//! the hook's own flow table, as the workers' frames do at [`HookPoint::PortIn`]. Frames the
//! gateway answers itself (ARP, DHCP, DNS, ICMP to it) or takes for the host (`Local`) are not
//! egress and are not judged here.
//!
//! A frame's context at this hook: it comes in on the gateway port (as iptables' FORWARD chain
//! sees the bridge, not the guest's tap), from no guest, for the gateway
//! ([`BridgeOut::Gateway`]), to no guest. Policies tell guests apart by address.

use std::sync::Arc;

use bridge_core::policy::{BridgeOut, HookPoint};
use bridge_core::time::Instant;
use bridge_core::{NetworkId, PortId};
use policy_sdk::abi::MAX_BATCH;

use crate::datapath::policy::{Check, FrameCtx, Outcome, PolicyStage, HEAD_LEN};
use crate::datapath::vnet_hdr::VnetHdr;
use crate::datapath::Datapath;

/// A NAT network's policy stage at [`HookPoint::NatEgress`], with the frames it set aside.
#[derive(Debug)]
pub struct EgressPolicy {
    dp: Arc<Datapath>,
    stage: PolicyStage,
    ctx: FrameCtx,
    /// The batch's time on the datapath's clock (the flow table's).
    now: Instant,
    /// Frames set aside, in order; their outcomes come from the stage in the same order.
    aside: Vec<(VnetHdr, Vec<u8>)>,
}

impl EgressPolicy {
    /// The stage of the network whose gateway is `port` (in switch network `network`), when
    /// the datapath has policies.
    pub fn new(dp: &Arc<Datapath>, port: PortId, network: NetworkId) -> Option<Self> {
        let plane = dp.policy()?;
        Some(EgressPolicy {
            dp: Arc::clone(dp),
            stage: PolicyStage::new(Arc::clone(plane), HookPoint::NatEgress),
            ctx: FrameCtx {
                ingress: port,
                network,
                from_guest: false,
                out: BridgeOut::Gateway,
                to_guest: false,
            },
            now: dp.now(),
            aside: Vec::with_capacity(MAX_BATCH),
        })
    }

    /// Starts a batch (one atomic load); returns whether a policy runs at the hook. If not,
    /// the batch's frames go to egress unjudged.
    pub fn begin_batch(&mut self) -> bool {
        let judging = self.stage.begin_batch();
        if judging {
            self.now = self.dp.now();
        }
        judging
    }

    /// Passes a frame bound for egress: `carry_out` gets it with its outcome now (its flow has
    /// a verdict), or it is set aside until the stage is full or the batch ends
    /// ([`judge_aside`](Self::judge_aside)). Frames of one flow keep their order.
    pub fn judge(
        &mut self,
        hdr: VnetHdr,
        frame: Vec<u8>,
        mut carry_out: impl FnMut(Outcome, VnetHdr, Vec<u8>),
    ) {
        let head = &frame[..frame.len().min(HEAD_LEN)];
        let ctx = self.ctx;
        let (ingress, network) = (ctx.ingress, ctx.network);
        match self
            .stage
            .check(self.now, ingress, network, head, frame.len(), || ctx)
        {
            Check::Now(outcome) => carry_out(outcome, hdr, frame),
            Check::Later => {
                self.aside.push((hdr, frame));
                if self.stage.is_full() {
                    self.judge_set_aside(carry_out);
                }
            }
        }
    }

    /// Ends the batch: judges the frames set aside (one call per module), hands each to
    /// `carry_out` with its outcome, in order, and adds the batch's rule hits to the counters.
    pub fn judge_aside(&mut self, carry_out: impl FnMut(Outcome, VnetHdr, Vec<u8>)) {
        self.judge_set_aside(carry_out);
        self.stage.end_batch();
    }

    /// Judges the frames set aside and hands each to `carry_out` with its outcome, in order.
    fn judge_set_aside(&mut self, mut carry_out: impl FnMut(Outcome, VnetHdr, Vec<u8>)) {
        if self.aside.is_empty() {
            return;
        }
        let outcomes = self.stage.judge_pending(self.now);
        for ((hdr, frame), &outcome) in self.aside.drain(..).zip(outcomes) {
            carry_out(outcome, hdr, frame);
        }
    }
}
