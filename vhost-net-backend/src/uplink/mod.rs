//! Uplinks: a bridged network's link to the host's LAN, a port of the network's switch like a
//! guest's NIC (a [`HostPort`]).
//!
//! | module | what it holds |
//! |---|---|
//! | [`af_packet`] | a packet socket on a host NIC: promiscuous, virtio-net headers, TPACKET_V3 receive ring |
//! | [`tap`] | a TAP interface (IFF_VNET_HDR, offloads) for a kernel bridge, as libvirt's vnet0 |
//! | [`netlink`] | rtnetlink on a current-thread runtime ([`netlink::Netlink`]), link notifications ([`netlink::LinkEvents`]) |
//! | [`sys`] | the `unsafe` code: packet socket options, the mapped ring, TUN ioctls |
//!
//! Frames from guests reach the uplink on the sending guest's worker ([`HostPort::receive`]):
//! one write of header and frame to the socket or TAP. Frames from the LAN are read on the
//! uplink's own thread, an event-manager loop over the uplink's descriptor, the link
//! notifications and a stop eventfd, and go through the switch into the guests
//! ([`Injector`]), each guest signalled once per wakeup. When the host interface (the NIC for
//! `af_packet`, the bridge for `tap`) goes away the uplink's port goes down; when it comes back
//! the uplink reopens its socket or enslaves its TAP again by itself. A TAP deleted under the
//! uplink is made again, as at start.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bridge_core::{PortId, Switch};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, info, warn};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};
use vmm_sys_util::timerfd::TimerFd;

use crate::config::Uplink;
use crate::control::hooks::Uplinks;
use crate::control::protocol::{UplinkInfo, UplinkStatsView};
use crate::control::views::switch_drops;
use crate::datapath::host::{HostPort, Injector};
use crate::datapath::tx::MAX_FRAME_LEN;
use crate::datapath::vnet_hdr::VnetHdr;
use crate::datapath::Datapath;
use crate::event_loop::LoopThread;
use crate::vhu_net::Negotiated;

pub mod af_packet;
pub mod netlink;
pub mod sys;
pub mod tap;

use netlink::{LinkEvents, LinkInfo, Netlink, NetlinkError};

/// `struct virtio_net_hdr` (without num_buffers), in front of every frame on the uplink.
pub const VNET_HDR_LEN: usize = 10;
/// Most frames read from a TAP per wakeup.
pub const TAP_BURST: usize = 64;
/// The offloads the host's frames may ask for (what a TAP with offloads and a packet socket
/// with virtio-net headers hand over): partial checksums, TSO.
pub const HOST_OFFLOADS: Negotiated = Negotiated(
    (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6),
);

/// Errors starting an uplink.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// rtnetlink failed.
    #[error("rtnetlink")]
    Netlink(#[from] NetlinkError),
    /// The TAP could not be created.
    #[error("creating TAP interface {0}")]
    Tap(String, #[source] io::Error),
    /// The link notification socket, the stop eventfd or the thread could not be created.
    #[error("creating the uplink's resources")]
    Resource(#[source] io::Error),
}

/// Counters of what an uplink could not pass on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    /// Frames from guests the host interface refused (too big, no buffer space, ...).
    pub tx_errors: u64,
    /// Frames from guests while the uplink had no open channel (host interface gone).
    pub tx_link_down: u64,
    /// Frames from the LAN larger than a ring block (dropped).
    pub rx_truncated: u64,
    /// Frames from the LAN with a virtio-net header the daemon does not take (dropped).
    pub rx_bad_header: u64,
    /// Times the uplink reopened its channel after the host interface came back.
    pub recoveries: u64,
}

/// What `show` tells about an uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkStatus {
    /// The network it belongs to.
    pub network: String,
    /// Its switch port.
    pub port: PortId,
    /// Its configuration.
    pub config: Uplink,
    /// The host interface it depends on (the NIC, or the bridge for a TAP with one) as
    /// rtnetlink last showed it; `None`: not there.
    pub host: Option<LinkInfo>,
    /// Whether frames pass.
    pub up: bool,
    /// Drops and recoveries.
    pub counters: UplinkCounters,
}

/// The uplink's way out, shared with the guests' workers.
#[derive(Debug)]
enum Sender {
    Packet(sys::PacketSocket),
    Tap(Arc<tap::Tap>),
}

impl Sender {
    fn send(&self, vnet: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<usize> {
        match self {
            Sender::Packet(s) => s.send(&[vnet, frame]),
            Sender::Tap(t) => t.send(vnet, frame),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Sender::Packet(s) => s.as_raw_fd(),
            Sender::Tap(t) => t.file().as_raw_fd(),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    tx_errors: AtomicU64,
    tx_link_down: AtomicU64,
    rx_truncated: AtomicU64,
    rx_bad_header: AtomicU64,
    recoveries: AtomicU64,
}

impl UplinkCounters {
    /// The drops by reason (every reason, zeros too).
    pub fn drops(&self) -> [(&'static str, u64); 4] {
        [
            ("tx_error", self.tx_errors),
            ("tx_link_down", self.tx_link_down),
            ("rx_truncated", self.rx_truncated),
            ("rx_bad_header", self.rx_bad_header),
        ]
    }
}

impl Counters {
    fn snapshot(&self) -> UplinkCounters {
        UplinkCounters {
            tx_errors: self.tx_errors.load(Relaxed),
            tx_link_down: self.tx_link_down.load(Relaxed),
            rx_truncated: self.rx_truncated.load(Relaxed),
            rx_bad_header: self.rx_bad_header.load(Relaxed),
            recoveries: self.recoveries.load(Relaxed),
        }
    }
}

/// An uplink as a port of the switch.
#[derive(Debug)]
pub struct UplinkPort {
    network: String,
    port: PortId,
    config: Uplink,
    sender: ArcSwapOption<Sender>,
    host: Mutex<Option<LinkInfo>>,
    up: AtomicBool,
    counters: Counters,
}

impl HostPort for UplinkPort {
    fn receive(&self, hdr: &VnetHdr, frame: &[u8]) {
        let mut vnet = [0u8; VNET_HDR_LEN];
        hdr.emit(&mut vnet, 0);
        match &*self.sender.load() {
            Some(sender) => {
                if sender.send(&vnet, frame).is_err() {
                    self.counters.tx_errors.fetch_add(1, Relaxed);
                }
            }
            None => {
                self.counters.tx_link_down.fetch_add(1, Relaxed);
            }
        }
    }
}

impl UplinkPort {
    /// Its status.
    pub fn status(&self) -> UplinkStatus {
        UplinkStatus {
            network: self.network.clone(),
            port: self.port,
            config: self.config.clone(),
            host: self
                .host
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            up: self.up.load(Relaxed),
            counters: self.counters.snapshot(),
        }
    }
}

/// A running uplink: its port and its thread. Stopping it closes its socket (a TAP is deleted).
#[derive(Debug)]
pub struct UplinkHandle {
    port: Arc<UplinkPort>,
    /// `None` once stopped.
    thread: Option<LoopThread>,
}

impl UplinkHandle {
    /// The uplink's port.
    pub fn port(&self) -> &Arc<UplinkPort> {
        &self.port
    }

    /// Stops the thread and closes the uplink.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        drop(self.thread.take());
        self.port.sender.store(None);
    }
}

impl Drop for UplinkHandle {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts the uplink of network `network` on switch port `port`: opens it (or waits for its
/// host interface to appear), makes it a destination of the datapath and starts its thread.
pub fn start(
    dp: &Arc<Datapath>,
    network: &str,
    port: PortId,
    config: Uplink,
) -> Result<UplinkHandle, UplinkError> {
    let shared = Arc::new(UplinkPort {
        network: network.to_string(),
        port,
        config,
        sender: ArcSwapOption::empty(),
        host: Mutex::new(None),
        up: AtomicBool::new(false),
        counters: Counters::default(),
    });
    let events = LinkEvents::new().map_err(UplinkError::Resource)?;
    let netlink = Netlink::new()?;
    let tap = match &shared.config {
        Uplink::Tap { interface, .. } => Some(Arc::new(
            tap::Tap::create(interface, true)
                .map_err(|e| UplinkError::Tap(interface.clone(), e))?,
        )),
        Uplink::AfPacket { .. } => None,
    };
    let mut link = Link {
        dp: Arc::clone(dp),
        shared: Arc::clone(&shared),
        netlink,
        tap,
        ring: None,
        sender: None,
        retired: Vec::new(),
        attached_before: false,
    };
    link.refresh()?;
    dp.insert_host(port, Arc::clone(&shared) as Arc<dyn HostPort>);
    let retry = TimerFd::new().map_err(|e| UplinkError::Resource(e.into()))?;
    let subscriber = Loop {
        link,
        events,
        retry,
        injector: Injector::new(Arc::clone(dp), port),
        watched: None,
        buf: vec![0; MAX_FRAME_LEN + VNET_HDR_LEN + 4].into_boxed_slice(),
    };
    let thread = LoopThread::spawn(&format!("uplink-{network}"), Box::new(subscriber))
        .map_err(UplinkError::Resource)?;
    Ok(UplinkHandle {
        port: shared,
        thread: Some(thread),
    })
}

/// The uplink's side owned by its thread.
struct Link {
    dp: Arc<Datapath>,
    shared: Arc<UplinkPort>,
    netlink: Netlink,
    /// The TAP (tap kind), kept across the bridge's comings and goings; made again when it is
    /// deleted under the uplink. `None` while it could not be made again.
    tap: Option<Arc<tap::Tap>>,
    /// The receive ring (af_packet kind) while the NIC is there.
    ring: Option<af_packet::RxRing>,
    /// The sender published to the workers.
    sender: Option<Arc<Sender>>,
    /// Senders replaced since the loop last looked: kept open until their descriptor is out
    /// of the event loop (a new socket may reuse the number).
    retired: Vec<Arc<Sender>>,
    /// Whether the uplink was attached to its host interface before (attaching again is a
    /// recovery).
    attached_before: bool,
}

impl Link {
    /// Looks at the host interface and brings the uplink in line: opens, reopens or closes
    /// the channel, enslaves the TAP, sets the switch port up or down.
    fn refresh(&mut self) -> Result<(), NetlinkError> {
        let up = match self.shared.config.clone() {
            Uplink::AfPacket { interface } => self.refresh_af_packet(&interface)?,
            Uplink::Tap { interface, bridge } => self.refresh_tap(&interface, bridge.as_deref())?,
        };
        let was = self.shared.up.swap(up, Relaxed);
        if was != up {
            info!(network = %self.shared.network, up, "uplink link state");
        }
        if let Err(e) = self.dp.switch().set_port_up(self.shared.port, up) {
            warn!(error = %e, "setting the uplink's port state failed");
        }
        Ok(())
    }

    /// Counts a recovery if the uplink was attached before.
    fn attached(&mut self) {
        if std::mem::replace(&mut self.attached_before, true) {
            self.shared.counters.recoveries.fetch_add(1, Relaxed);
        }
    }

    fn set_host(&self, host: Option<LinkInfo>) {
        *self
            .shared
            .host
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = host;
    }

    fn publish(&mut self, sender: Option<Sender>) {
        let sender = sender.map(Arc::new);
        self.shared.sender.store(sender.clone());
        if let Some(old) = std::mem::replace(&mut self.sender, sender) {
            self.retired.push(old);
        }
    }

    fn refresh_af_packet(&mut self, interface: &str) -> Result<bool, NetlinkError> {
        let host = self.netlink.link(interface)?;
        let index = host.as_ref().map(|h| h.index);
        let open_on = self
            .shared
            .host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|h| h.index);
        let up = host.as_ref().is_some_and(|h| h.up && h.carrier);
        self.set_host(host);
        match index {
            None => {
                if self.sender.is_some() {
                    warn!(network = %self.shared.network, interface, "the uplink's interface is gone");
                }
                self.ring = None;
                self.publish(None);
                Ok(false)
            }
            Some(index) if self.sender.is_none() || open_on != Some(index) => {
                match af_packet::open(index) {
                    Ok((socket, ring)) => {
                        self.attached();
                        info!(network = %self.shared.network, interface, index, "uplink open on the interface");
                        self.ring = Some(ring);
                        self.publish(Some(Sender::Packet(socket)));
                        Ok(up)
                    }
                    Err(e) => {
                        warn!(network = %self.shared.network, interface, error = %e, "opening a packet socket failed");
                        self.ring = None;
                        self.publish(None);
                        Ok(false)
                    }
                }
            }
            Some(_) => Ok(up),
        }
    }

    fn refresh_tap(&mut self, interface: &str, bridge: Option<&str>) -> Result<bool, NetlinkError> {
        let found = self.netlink.link(interface)?;
        let (tap, info) = match (self.tap.clone(), found) {
            (Some(tap), Some(info)) => (tap, info),
            _ => match self.remake_tap(interface)? {
                Some(made) => made,
                None => return Ok(false),
            },
        };
        let host = match bridge {
            Some(b) => self.netlink.link(b)?,
            None => Some(info.clone()),
        };
        let Some(host) = host else {
            self.set_host(None);
            return Ok(false);
        };
        let enslave = bridge.is_some() && info.master != Some(host.index);
        if enslave {
            self.netlink.set_master(info.index, host.index)?;
            info!(network = %self.shared.network, tap = tap.name(), bridge = host.name, "TAP enslaved");
        }
        if !info.up {
            self.netlink.set_up(info.index)?;
        }
        if enslave || self.sender.is_none() {
            self.attached();
        }
        if self.sender.is_none() {
            let sender = Sender::Tap(Arc::clone(&tap));
            self.publish(Some(sender));
        }
        let up = host.up;
        self.set_host(Some(host));
        Ok(up)
    }

    /// Whether the uplink is of the tap kind and holds no TAP: it was deleted and could not be
    /// made again yet.
    fn tap_lost(&self) -> bool {
        matches!(self.shared.config, Uplink::Tap { .. }) && self.tap.is_none()
    }

    /// Makes the TAP again (as at start) after it was deleted under the uplink, and returns it
    /// with what rtnetlink shows of it. `None` when that fails: logged once per loss, tried
    /// again at the next link notification or after [`RETRY`].
    fn remake_tap(
        &mut self,
        interface: &str,
    ) -> Result<Option<(Arc<tap::Tap>, LinkInfo)>, NetlinkError> {
        let lost = self.tap.take().is_some();
        self.publish(None);
        let network = &self.shared.network;
        if lost {
            warn!(%network, tap = interface, "the uplink's TAP is gone, making it again");
        }
        let tap = match tap::Tap::create(interface, true) {
            Ok(tap) => Arc::new(tap),
            Err(e) if lost => {
                warn!(%network, tap = interface, error = %e, "making the uplink's TAP failed, trying again at the next link notification or in a second");
                return Ok(None);
            }
            Err(e) => {
                debug!(%network, tap = interface, error = %e, "making the uplink's TAP failed");
                return Ok(None);
            }
        };
        let Some(info) = self.netlink.link(interface)? else {
            return Ok(None);
        };
        info!(%network, tap = interface, "TAP made again");
        self.tap = Some(Arc::clone(&tap));
        Ok(Some((tap, info)))
    }

    /// Reads what is pending on the channel and sends it through the switch.
    fn receive(&mut self, injector: &mut Injector, buf: &mut [u8]) {
        let counters = &self.shared.counters;
        if let Some(ring) = &mut self.ring {
            let truncated = ring.receive(|r| {
                let Ok(hdr) = VnetHdr::parse_tx(r.vnet, HOST_OFFLOADS, r.frame.len()) else {
                    counters.rx_bad_header.fetch_add(1, Relaxed);
                    return;
                };
                match r.vlan {
                    None => injector.send_offloaded(&hdr, r.frame),
                    Some((tpid, tci)) => {
                        let Some(n) = retag(r.frame, tpid, tci, buf) else {
                            counters.rx_truncated.fetch_add(1, Relaxed);
                            return;
                        };
                        injector.send_offloaded(&hdr.shifted(4), &buf[..n]);
                    }
                }
            });
            counters.rx_truncated.fetch_add(truncated, Relaxed);
        } else if let Some(tap) = &self.tap {
            match tap.receive(buf, TAP_BURST, |hdr, frame| {
                injector.send_offloaded(hdr, frame)
            }) {
                Ok(bad) => {
                    counters.rx_bad_header.fetch_add(bad, Relaxed);
                }
                Err(e) => warn!(error = %e, "reading the TAP failed"),
            }
        }
        injector.flush();
    }
}

/// Puts back the 802.1Q tag the interface stripped: `frame` with (TPID, TCI) after the MACs,
/// written to `out`. Returns its length.
fn retag(frame: &[u8], tpid: u16, tci: u16, out: &mut [u8]) -> Option<usize> {
    let n = frame.len().checked_add(4)?;
    if frame.len() < 12 || out.len() < n {
        return None;
    }
    out[..12].copy_from_slice(&frame[..12]);
    out[12..14].copy_from_slice(&tpid.to_be_bytes());
    out[14..16].copy_from_slice(&tci.to_be_bytes());
    out[16..n].copy_from_slice(&frame[12..]);
    Some(n)
}

const TOKEN_LINK: u32 = 1;
const TOKEN_CHANNEL: u32 = 2;
const TOKEN_RETRY: u32 = 3;

/// How long after a failed attempt a deleted TAP is made again, if no link notification comes
/// first.
const RETRY: Duration = Duration::from_secs(1);

/// The uplink's subscriber: link notifications, the channel and the retry timer (the loop adds
/// the stop eventfd).
struct Loop {
    link: Link,
    events: LinkEvents,
    /// Armed while a deleted TAP could not be made again.
    retry: TimerFd,
    injector: Injector,
    watched: Option<RawFd>,
    buf: Box<[u8]>,
}

impl Loop {
    /// Looks at the interface again and watches the channel it has now; arms the retry timer
    /// while a deleted TAP could not be made again (and disarms it once it is).
    fn refresh(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.link.refresh() {
            warn!(error = %e, "looking at the uplink's interface failed");
        }
        self.rewatch(ops);
        let armed = if self.link.tap_lost() {
            self.retry.reset(RETRY, None)
        } else {
            self.retry.clear()
        };
        if let Err(e) = armed {
            warn!(error = %e, "the uplink's retry timer cannot be set");
        }
    }

    /// Watches the current channel's descriptor (a new one after a recovery).
    fn rewatch(&mut self, ops: &mut EventOps) {
        let current = self.link.sender.as_ref().map(|s| s.fd());
        let replaced = !self.link.retired.is_empty();
        if current == self.watched && !replaced {
            return;
        }
        if let Some(old) = self.watched.take() {
            if let Err(e) = ops.remove(Events::empty_raw(old)) {
                warn!(error = ?e, "the uplink's old channel cannot be unwatched");
            }
        }
        // Out of the loop: the old descriptors may close now.
        self.link.retired.clear();
        if let Some(fd) = current {
            match ops.add(Events::with_data_raw(fd, TOKEN_CHANNEL, EventSet::IN)) {
                Ok(()) => self.watched = Some(fd),
                Err(e) => warn!(error = ?e, "the uplink's channel cannot be watched"),
            }
        }
    }
}

impl MutEventSubscriber for Loop {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_LINK => {
                if self.events.drain() {
                    self.refresh(ops);
                }
            }
            TOKEN_RETRY => {
                let _ = self.retry.wait();
                self.refresh(ops);
            }
            _ => {
                if events
                    .event_set()
                    .intersects(EventSet::ERROR | EventSet::HANG_UP)
                {
                    // The interface went away under the socket; its notification follows.
                    self.refresh(ops);
                }
                let buf = &mut self.buf;
                self.link.receive(&mut self.injector, buf);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let link = Events::with_data(&self.events, TOKEN_LINK, EventSet::IN);
        if let Err(e) = ops.add(link) {
            warn!(error = ?e, "the link notifications cannot be watched");
        }
        let retry = Events::with_data(&self.retry, TOKEN_RETRY, EventSet::IN);
        if let Err(e) = ops.add(retry) {
            warn!(error = ?e, "the uplink's retry timer cannot be watched");
        }
        self.rewatch(ops);
    }
}

/// The uplinks' view for the control socket (`show`).
#[derive(Debug)]
pub struct UplinkViews {
    /// The uplinks' ports.
    pub ports: Vec<Arc<UplinkPort>>,
    /// The switch (frame counters of the uplinks' ports).
    pub switch: Arc<Switch>,
}

impl Uplinks for UplinkViews {
    fn uplinks(&self) -> Vec<UplinkInfo> {
        self.ports
            .iter()
            .map(|p| {
                let status = p.status();
                let stats = self.switch.port_info(status.port).map(|i| i.stats);
                let c = status.counters;
                let (interface, bridge) = match &status.config {
                    Uplink::AfPacket { interface } => (interface.clone(), None),
                    Uplink::Tap { interface, bridge } => (interface.clone(), bridge.clone()),
                };
                UplinkInfo {
                    port: status.port.0,
                    network: status.network,
                    kind: status.config.kind().to_string(),
                    interface,
                    bridge,
                    up: status.up,
                    mtu: status.host.as_ref().map(|h| h.mtu),
                    mac: status
                        .host
                        .as_ref()
                        .and_then(|h| h.mac)
                        .map(|m| m.to_string()),
                    recoveries: c.recoveries,
                    rx_frames: stats.as_ref().map_or(0, |s| s.rx_frames),
                    tx_frames: stats.as_ref().map_or(0, |s| s.tx_frames),
                    drops: stats.as_ref().map_or(0, |s| s.drops.total())
                        + c.drops().iter().map(|(_, n)| n).sum::<u64>(),
                }
            })
            .collect()
    }

    fn stats(&self) -> Vec<UplinkStatsView> {
        self.ports
            .iter()
            .map(|p| {
                let status = p.status();
                let stats = self
                    .switch
                    .port_info(status.port)
                    .map(|i| i.stats)
                    .unwrap_or_default();
                UplinkStatsView {
                    port: status.port.0,
                    network: status.network,
                    interface: status.config.interface().to_string(),
                    rx_frames: stats.rx_frames,
                    rx_bytes: stats.rx_bytes,
                    tx_frames: stats.tx_frames,
                    tx_bytes: stats.tx_bytes,
                    switch_drops: switch_drops(&stats.drops),
                    uplink_drops: status
                        .counters
                        .drops()
                        .iter()
                        .map(|(reason, n)| (reason.to_string(), *n))
                        .collect(),
                    recoveries: status.counters.recoveries,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stripped_tag_is_put_back_after_the_macs() {
        let frame: Vec<u8> = (0..20).collect();
        let mut out = [0u8; 64];
        let n = retag(&frame, 0x8100, 0x0064, &mut out).unwrap();
        assert_eq!(n, 24);
        assert_eq!(&out[..12], &frame[..12]);
        assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 0x64]);
        assert_eq!(&out[16..24], &frame[12..]);
        assert_eq!(retag(&frame[..10], 0x8100, 1, &mut out), None);
        assert_eq!(retag(&frame, 0x8100, 1, &mut out[..20]), None);
    }
}
