//! Ports served inside the daemon rather than by a guest: the NAT gateway, uplinks.
//!
//! The switch treats them as any port. Frames it sends to one are handed over whole
//! ([`HostPort::receive`], on the sending guest's worker thread); frames one sends go through
//! the switch into the guests' receive queues ([`Injector`], on the host port's own thread),
//! the frames published to each receiving guest and the guest signalled once per
//! [`Injector::flush`].

use std::fmt;
use std::sync::Arc;

use bridge_core::policy::HookPoint;
use bridge_core::reject::{reject_reply, MAX_REPLY_LEN};
use bridge_core::{Decision, DropReason, Egress, NetworkId, PortCounters, PortId};

use super::copy::Source;
use super::counters::DeviceDrop;
use super::policy::{for_each_target, Check, FrameCtx, Outcome, PolicyStage, HEAD_LEN};
use super::rx::{self, RxScratch};
use super::tx::MAX_FRAME_LEN;
use super::vnet_hdr::VnetHdr;
use super::{Attachment, Datapath};
use crate::capture::Direction;
use crate::port::Port;
use crate::vhu_net::Negotiated;

/// A port served inside the daemon.
pub trait HostPort: Send + Sync + fmt::Debug {
    /// Takes a frame the switch sent to this port, as its sender passed it: `hdr` says which
    /// offloads are still to do (a partial checksum, a TSO super-frame). Called on datapath
    /// threads: it must not block.
    fn receive(&self, hdr: &VnetHdr, frame: &[u8]);
}

/// A host port as the datapath holds it.
#[derive(Clone, Debug)]
pub struct HostAttachment {
    /// The port.
    pub port: Arc<dyn HostPort>,
    /// The switch's counters of the port (frames delivered to it are counted here).
    pub counters: Arc<PortCounters>,
}

impl HostAttachment {
    /// Hands `frame` to the port after the switch's egress rewrite; `hdr` describes the
    /// original frame. `buf` holds a rewritten frame.
    pub(super) fn deliver(&self, hdr: &VnetHdr, frame: &[u8], egress: Egress, buf: &mut [u8]) {
        let Some(rewritten) = egress.apply(frame) else {
            return;
        };
        let replaced = frame.len() - rewritten.tail().len();
        let hdr = hdr.shifted(rewritten.head().len() as isize - replaced as isize);
        let bytes = if egress == Egress::AsIs {
            frame
        } else {
            match rewritten.copy_to(buf) {
                Some(n) => &buf[..n],
                None => return,
            }
        };
        self.port.receive(&hdr, bytes);
        self.counters.record_tx(bytes.len());
    }
}

/// Sends a host port's frames through the switch, straight into the guests' receive queues.
/// Owned by the host port's thread; allocates nothing per frame.
#[derive(Debug)]
pub struct Injector {
    dp: Arc<Datapath>,
    port: PortId,
    rx: RxScratch,
    /// Receive queues that got frames since the last flush, to signal once each.
    touched: Vec<(PortId, usize)>,
    buf: Box<[u8]>,
    /// The policy stage, when the datapath has policies.
    policy: Option<PolicyStage>,
    /// The host port's network and counters (policy drops are counted there).
    network: NetworkId,
    counters: Option<Arc<PortCounters>>,
    /// A REJECT's answer.
    reply: Box<[u8]>,
    /// Whether a capture ran at the last flush.
    capturing: bool,
}

impl Injector {
    /// An injector for frames from host port `port`.
    pub fn new(dp: Arc<Datapath>, port: PortId) -> Self {
        let policy = dp
            .policy()
            .map(|plane| PolicyStage::new(Arc::clone(plane), HookPoint::PortIn));
        let network = dp.switch().port_network(port).unwrap_or(NetworkId(0));
        let counters = dp.switch().port_counters(port);
        let capturing = dp.captures().is_active();
        Injector {
            dp,
            port,
            rx: RxScratch::default(),
            touched: Vec::new(),
            buf: vec![0; MAX_FRAME_LEN + 4].into_boxed_slice(),
            policy,
            network,
            counters,
            reply: vec![0; MAX_REPLY_LEN].into_boxed_slice(),
            capturing,
        }
    }

    /// Sends one complete frame (checksums filled, at most the MTU) through the switch and
    /// the policies. A receiver without room drops it (counted on that receiver).
    ///
    /// A frame the policies must judge is judged at once (host ports send one frame at a
    /// time); frames of flows with a cached verdict pass by it.
    pub fn send(&mut self, frame: &[u8]) {
        self.send_offloaded(&VnetHdr::default(), frame);
    }

    /// Sends a frame whose offloads `hdr` describes (a partial checksum, a TSO super-frame, as
    /// an uplink receives them), as [`Injector::send`] does: passed whole to receivers that
    /// negotiated the offloads, completed in software for the others.
    pub fn send_offloaded(&mut self, hdr: &VnetHdr, frame: &[u8]) {
        let dp = Arc::clone(&self.dp);
        let ports = dp.ports();
        let switch = dp.switch();
        let now = dp.now();
        let decision = switch.process(now, self.port, frame);
        if let Decision::Drop(_) = decision {
            return;
        }
        let judging = self.policy.as_mut().is_some_and(PolicyStage::begin_batch);
        let outcome = match self.policy.as_mut() {
            Some(stage) if judging => {
                let (port, network) = (self.port, self.network);
                let ctx = || FrameCtx::of(port, network, false, &decision, &ports);
                let head = &frame[..frame.len().min(HEAD_LEN)];
                let outcome = match stage.check(now, port, network, head, frame.len(), ctx) {
                    Check::Now(o) => o,
                    Check::Later => stage.judge_pending(now)[0],
                };
                stage.end_batch();
                outcome
            }
            _ => Outcome::PASS,
        };
        match outcome {
            Outcome::Deliver { redirect, mirror } => {
                for_each_target(switch, &decision, redirect, mirror, |port, egress| {
                    self.deliver(&ports, hdr, frame, port, egress);
                });
            }
            Outcome::Drop(reason) => self.record_drop(reason),
            Outcome::Reject => {
                self.record_drop(DropReason::PolicyReject);
                if let Ok(n) = reject_reply(frame, &mut self.reply) {
                    let port = self.port;
                    let reply = std::mem::take(&mut self.reply);
                    let plain = VnetHdr::default();
                    self.deliver(&ports, &plain, &reply[..n], port, Egress::AsIs);
                    self.reply = reply;
                }
            }
        }
    }

    /// Counts a drop for `reason` on the host port.
    pub fn record_drop(&self, reason: DropReason) {
        if let Some(c) = &self.counters {
            c.record_drop(reason);
        }
    }

    /// Delivers a frame whose offloads `hdr` describes to port `dst` as it is, without the
    /// switch or the policies (where a policy's redirect or mirror sends it).
    pub fn deliver_to(&mut self, dst: PortId, hdr: &VnetHdr, frame: &[u8]) {
        let dp = Arc::clone(&self.dp);
        self.deliver(&dp.ports(), hdr, frame, dst, Egress::AsIs);
    }

    fn deliver(
        &mut self,
        ports: &[Option<Attachment>],
        hdr: &VnetHdr,
        frame: &[u8],
        dst: PortId,
        e: Egress,
    ) {
        match ports.get(dst.0 as usize) {
            Some(Some(Attachment::Guest(port))) => self.deliver_to_guest(port, hdr, frame, dst, e),
            Some(Some(Attachment::Host(host))) => host.deliver(hdr, frame, e, &mut self.buf),
            _ => {}
        }
    }

    fn deliver_to_guest(
        &mut self,
        port: &Port,
        hdr: &VnetHdr,
        frame: &[u8],
        dst: PortId,
        egress: Egress,
    ) {
        let delivered = if *hdr == VnetHdr::default() {
            rx::deliver_bytes(port, 0, frame, egress, &mut self.rx)
        } else {
            self.deliver_offloaded(port, hdr, frame, egress)
        };
        let Some(ring) = delivered else {
            return;
        };
        if let Some(c) = self.capturing.then(|| self.dp.captures()) {
            if let Some(rewritten) = egress.apply(frame).filter(|_| c.wants(dst)) {
                c.record(dst, Direction::Out, &[rewritten.head(), rewritten.tail()]);
            }
        }
        if !self.touched.contains(&(dst, ring)) {
            self.touched.push((dst, ring));
        }
    }

    /// Delivers `frame`, with offloads still to do (`hdr`), to `port`'s first receive queue
    /// after the switch's `egress` rewrite: whole if the guest negotiated the offloads,
    /// checksummed and segmented in software otherwise. Returns the ring's index when
    /// anything was delivered.
    fn deliver_offloaded(
        &mut self,
        port: &Port,
        hdr: &VnetHdr,
        frame: &[u8],
        egress: Egress,
    ) -> Option<usize> {
        let rewritten = egress.apply(frame)?;
        let replaced = frame.len() - rewritten.tail().len();
        let hdr = hdr.shifted(rewritten.head().len() as isize - replaced as isize);
        let Some((ring, mut vring)) = port.rx_vring(0) else {
            port.counters().record(DeviceDrop::RxNotRunning);
            return None;
        };
        let mut delivered = false;
        let mut record = |r: Result<usize, rx::RxError>| match r {
            Ok(n) => {
                port.switch_counters().record_tx(n);
                delivered = true;
            }
            Err(e) => port.counters().record(e.into()),
        };
        if hdr.fits(Negotiated(vring.features())) {
            let body = Source::Local(rewritten.tail());
            record(rx::deliver(
                &mut vring,
                &hdr,
                [rewritten.head(), &[]],
                body,
                &mut self.rx,
            ));
        } else {
            let full = if egress == Egress::AsIs {
                frame
            } else {
                let n = rewritten.copy_to(&mut self.buf)?;
                &self.buf[..n]
            };
            let each = |r| {
                record(r);
                true
            };
            if rx::deliver_completed(&mut vring, &hdr, full, &mut self.rx, each).is_err() {
                port.counters().record(DeviceDrop::OffloadFailed);
            }
        }
        delivered.then_some(ring)
    }

    /// Publishes the frames delivered since the last flush and signals their guests: the
    /// frames a guest got are its own only from here on, so every round of sends ends here.
    pub fn flush(&mut self) {
        // The capture check: once per flush.
        self.capturing = self.dp.captures().is_active();
        if self.touched.is_empty() {
            return;
        }
        let ports = self.dp.ports();
        for (dst, ring) in self.touched.drain(..) {
            if let Some(Some(Attachment::Guest(port))) = ports.get(dst.0 as usize) {
                if let Some(mut vring) = port.device().vring(ring) {
                    vring.notify();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use bridge_core::{NetworkConfig, Switch};
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use crate::config::PortConfig;
    use crate::datapath::tx::{run_batch, TxScratch};
    use crate::test_util::{guest_memory, TestRing};

    const V1: u64 = 1 << VIRTIO_F_VERSION_1;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    /// A host port that keeps what it receives.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(VnetHdr, Vec<u8>)>>);

    impl HostPort for Recorder {
        fn receive(&self, hdr: &VnetHdr, frame: &[u8]) {
            self.0.lock().unwrap().push((*hdr, frame.to_vec()));
        }
    }

    fn eth(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
        let mut f = [dst, src].concat();
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend((14..len).map(|i| i as u8));
        f
    }

    #[test]
    fn host_ports_receive_from_guests_and_inject_into_them() {
        let switch = Arc::new(Switch::new());
        let net = switch.add_network(NetworkConfig::default());
        let dp = Arc::new(Datapath::new(Arc::clone(&switch)));
        let guest_id = switch
            .add_port(net, bridge_core::PortConfig::default())
            .unwrap();
        let guest = Arc::new(
            Port::new(
                guest_id,
                PortConfig::new("/test/g"),
                switch.port_counters(guest_id).unwrap(),
            )
            .unwrap(),
        );
        dp.insert(Arc::clone(&guest));
        let host_id = switch
            .add_port(net, bridge_core::PortConfig::default())
            .unwrap();
        let recorder = Arc::new(Recorder::default());
        dp.insert_host(host_id, Arc::clone(&recorder) as Arc<dyn HostPort>);

        let mem = guest_memory();
        let (mut rx, mut tx) = (
            TestRing::new(&mem, 0x10000, 16),
            TestRing::new(&mem, 0x20000, 16),
        );
        let rx_call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        for (i, ring) in [(0, &rx), (1, &tx)] {
            let mut v = guest.device().vring(i).unwrap();
            ring.configure(&mut v, Arc::clone(&mem), V1);
            if i == 0 {
                v.set_call(Some(rx_call.try_clone().unwrap()));
            }
        }
        let (guest_mac, host_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

        // Guest to host: the whole frame and its header reach the host port.
        let f = eth(host_mac, guest_mac, 100);
        mem.write_slice(&[0; 12], GuestAddress(0x100000)).unwrap();
        mem.write_slice(&f, GuestAddress(0x100000 + 12)).unwrap();
        tx.post(&[(0x100000, 12 + f.len() as u32, 0)]);
        run_batch(&dp, &guest, 1, &mut TxScratch::default(), None, false);
        assert_eq!(
            recorder.0.lock().unwrap().as_slice(),
            [(VnetHdr::default(), f)]
        );
        assert_eq!(switch.port_info(host_id).unwrap().stats.tx_frames, 1);

        // Host to guest: two frames, one signal at the flush.
        for i in 0..2 {
            rx.post(&[(0x200000 + i * 0x1000, 2048, W)]);
        }
        let mut injector = Injector::new(Arc::clone(&dp), host_id);
        let replies = [eth(guest_mac, host_mac, 60), eth(guest_mac, host_mac, 1514)];
        for r in &replies {
            injector.send(r);
        }
        assert_eq!(rx.used_idx(), 0, "written, published at the flush");
        assert!(rx_call.read().is_err(), "no signal before the flush");
        injector.flush();
        assert_eq!(rx.used_idx(), 2);
        assert_eq!(rx_call.read().unwrap(), 1);
        for (i, r) in replies.iter().enumerate() {
            let (head, len) = rx.used(i as u16);
            assert_eq!(len as usize, 12 + r.len());
            let mut got = vec![0; r.len()];
            let addr = 0x200000 + u64::from(head) * 0x1000 + 12;
            mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
            assert_eq!(&got, r);
        }
        // A third frame finds no buffer: dropped and counted on the guest.
        injector.send(&replies[0]);
        assert_eq!(
            guest
                .counters()
                .snapshot()
                .get(crate::datapath::counters::DeviceDrop::RxNoBuffers),
            1
        );
    }
}
