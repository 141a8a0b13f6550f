//! The NAT network's side of the `kernel` egress ([`KernelEgress`]): what the gateway port
//! hands on goes into the TAP with its virtio-net header (a guest's TSO super-frame whole),
//! what the kernel sends out of the TAP goes through the switch to the guests (offloads kept
//! for guests that negotiated them), and the port forwards are kept as DNAT rules.

use std::os::fd::{AsRawFd, RawFd};

use bridge_core::time::Instant;

use super::gateway_port::GatewayPort;
use super::outbox::Outbox;
use super::rate_log::RateLimited;
use super::user::forward::{ForwardError, MAX_FORWARDS};
use crate::config::{ForwardConfig, NatConfig};
use crate::datapath::host::Injector;
use crate::datapath::tx::MAX_FRAME_LEN;
use crate::datapath::vnet_hdr::VnetHdr;
use crate::kernel_egress::{KernelEgress, KernelEgressError};
use crate::uplink::{TAP_BURST, VNET_HDR_LEN};

/// Errors starting the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum KernelSideError {
    /// A configured port forward is refused.
    #[error("port forward")]
    Forward(#[from] ForwardError),
    /// The egress could not be set up.
    #[error("setting up the kernel egress")]
    Egress(#[from] KernelEgressError),
}

/// Counters of the kernel side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelSideStats {
    /// Guests' frames the TAP refused.
    pub tx_errors: u64,
    /// Frames from the kernel with a virtio-net header the daemon does not take.
    pub rx_bad_header: u64,
    /// Frames from the kernel not sent to guests (not IPv4, multicast, or an unknown guest).
    pub rx_unsent: u64,
}

/// A NAT network's kernel egress with its port forwards.
#[derive(Debug)]
pub struct KernelSide {
    egress: KernelEgress,
    forwards: Vec<ForwardConfig>,
    buf: Box<[u8]>,
    stats: KernelSideStats,
    log: RateLimited,
}

/// Whether `a` and `b` are the same forward (one listening address and protocol).
fn same_forward(a: &ForwardConfig, b: &ForwardConfig) -> bool {
    a.listen == b.listen && a.protocol == b.protocol
}

impl KernelSide {
    /// Sets up network `network`'s kernel egress through TAP `interface` with `forwards`.
    pub fn start(
        network: &str,
        nat: &NatConfig,
        interface: &str,
        forwards: &[ForwardConfig],
    ) -> Result<Self, KernelSideError> {
        let mut list: Vec<ForwardConfig> = Vec::new();
        for f in forwards {
            check_new(&list, f)?;
            list.push(f.clone());
        }
        let egress = KernelEgress::start(network, nat, interface, &list)?;
        Ok(KernelSide {
            egress,
            forwards: list,
            buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN + 4].into_boxed_slice(),
            stats: KernelSideStats::default(),
            log: RateLimited::default(),
        })
    }

    /// The TAP's descriptor, readable when the kernel sent frames.
    pub fn fd(&self) -> RawFd {
        self.egress.tap().file().as_raw_fd()
    }

    /// The counters.
    pub fn stats(&self) -> KernelSideStats {
        self.stats
    }

    /// Hands a guest's frame (with the offloads `hdr` describes) to the kernel.
    pub fn send(&mut self, now: Instant, hdr: &VnetHdr, frame: &[u8]) {
        if !self.egress.send(hdr, frame) {
            self.stats.tx_errors += 1;
            self.log.warn(now, || {
                "the kernel egress's TAP refused a frame".to_string()
            });
        }
    }

    /// Reads what the kernel sent out of the TAP and sends it to the guests through the
    /// switch, addressed by the gateway's ARP table (the TAP does no ARP).
    pub fn receive(
        &mut self,
        now: Instant,
        gateway: &mut GatewayPort,
        out: &mut Outbox,
        injector: &mut Injector,
    ) {
        let mut unsent = 0;
        let read = self
            .egress
            .tap()
            .receive(&mut self.buf, TAP_BURST, |hdr, frame| {
                if gateway.address_to_guest(now, frame, out) {
                    injector.send_offloaded(hdr, frame);
                } else {
                    unsent += 1;
                }
            });
        self.stats.rx_unsent += unsent;
        match read {
            Ok(bad) => self.stats.rx_bad_header += bad,
            Err(e) => self.log.warn(now, || {
                format!("reading the kernel egress's TAP failed: {e}")
            }),
        }
    }

    /// Adds `forward` as a DNAT rule.
    pub fn add_forward(&mut self, forward: ForwardConfig) -> Result<(), ForwardError> {
        check_new(&self.forwards, &forward)?;
        self.forwards.push(forward);
        self.apply().inspect_err(|_| {
            self.forwards.pop();
        })
    }

    /// Removes `forward`'s DNAT rule.
    pub fn remove_forward(&mut self, forward: &ForwardConfig) -> Result<(), ForwardError> {
        let index = self
            .forwards
            .iter()
            .position(|f| same_forward(f, forward))
            .ok_or(ForwardError::Missing(forward.listen))?;
        let removed = self.forwards.remove(index);
        self.apply().inspect_err(|_| {
            self.forwards.insert(index, removed);
        })
    }

    /// The forwards in place.
    pub fn forwards(&self) -> Vec<ForwardConfig> {
        self.forwards.clone()
    }

    fn apply(&self) -> Result<(), ForwardError> {
        self.egress
            .set_forwards(&self.forwards)
            .map_err(ForwardError::Rules)
    }
}

/// Checks that `forward` can join `list`.
fn check_new(list: &[ForwardConfig], forward: &ForwardConfig) -> Result<(), ForwardError> {
    if list.iter().any(|f| same_forward(f, forward)) {
        return Err(ForwardError::Exists(forward.listen));
    }
    if list.len() >= MAX_FORWARDS {
        return Err(ForwardError::TooMany);
    }
    Ok(())
}
