//! The `user` egress of a NAT network (the default; needs no privilege), the passt/slirp
//! model: guests' flows to beyond the network end at the gateway and go on from the daemon's
//! own host sockets, as if the daemon's host made them.
//!
//! | module | holds |
//! |---|---|
//! | [`stack`] | the guest-facing TCP stack (smoltcp, AnyIP) |
//! | [`tcp`] | TCP flows: held SYN, nonblocking connect, relay with back-pressure, half close, resets |
//! | [`udp`] | UDP flows: a connected host socket per flow, closed with its conntrack entry |
//! | [`icmp`] | ICMP echo through ping sockets |
//! | [`forward`] | port forwards: host listening sockets into guests |
//!
//! Every packet to and from the guests is tracked in the network's conntrack zone; UDP and
//! echo flows end when conntrack forgets them.

pub mod forward;
pub mod icmp;
pub mod stack;
pub mod tcp;
pub mod udp;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bridge_core::conntrack::{Conntrack, ConntrackError, FlowTuple, PacketMeta};
use bridge_core::gateway::frame::{ipv4_frame, udp_frame, Ipv4Route};
use bridge_core::gateway::icmp::{error_reply, ErrorKind};
use bridge_core::gateway::DNS_PORT;
use bridge_core::time::{Duration, Instant};
use bridge_core::wire::{
    EthernetAddress, EthernetFrame, Icmpv4DstUnreachable, IpProtocol, Ipv4Cidr, Ipv4Packet,
    TcpPacket, UdpPacket, ETHERNET_HEADER_LEN,
};
use event_manager::EventSet;

use super::gateway_port::Handoff;
use super::outbox::Outbox;
use super::rate_log::RateLimited;
use super::registry::{Kind, Registry, Token};
use crate::config::ForwardConfig;
use forward::{ForwardError, Forwards};
use icmp::IcmpFlows;
use stack::Stack;
use tcp::{FlowKey, TcpFlows};
use udp::UdpFlows;

/// How often UDP and echo flows are checked against conntrack.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What egress works with during a round of events.
#[derive(Debug)]
pub struct EgressCx<'a> {
    /// The time.
    pub now: Instant,
    /// Frames into the network.
    pub out: &'a mut Outbox,
    /// Host sockets to watch or close.
    pub reg: &'a mut Registry,
    /// The gateway's MAC.
    pub gateway_mac: EthernetAddress,
    /// The gateway's address.
    pub gateway_ip: Ipv4Addr,
    /// The network's conntrack zone.
    pub zone: u32,
    /// The conntrack table.
    pub conntrack: &'a Conntrack,
    /// Log lines guests can trigger.
    pub log: &'a mut RateLimited,
}

impl EgressCx<'_> {
    /// Queues the ICMP error `kind` about a guest's `frame`, from the gateway.
    pub fn reject(&mut self, frame: &[u8], kind: ErrorKind) {
        self.reject_from(frame, kind, self.gateway_ip);
    }

    /// Queues the ICMP error `kind` about a guest's `frame`, from `source` (the host that
    /// refused it, as masquerading would pass its error on).
    pub fn reject_from(&mut self, frame: &[u8], kind: ErrorKind, source: Ipv4Addr) {
        if let Ok(reply) = error_reply(frame, kind, self.gateway_mac, source) {
            self.out.frame(reply);
        }
    }

    /// Tracks a frame's packet in conntrack.
    pub fn track(&self, frame: &[u8]) -> Result<(), ConntrackError> {
        let eth = EthernetFrame::new_checked(frame).map_err(|_| ConntrackError::Malformed)?;
        let meta = PacketMeta::parse_ipv4(self.zone, eth.payload())?;
        self.conntrack.track(self.now, &meta).map(drop)
    }

    /// Whether conntrack holds the flow.
    pub fn is_tracked(&self, tuple: &FlowTuple) -> bool {
        self.conntrack.get(self.now, tuple).is_some()
    }

    /// Logs what a guest caused, rate-limited.
    pub fn log(&mut self, line: impl FnOnce() -> String) {
        self.log.warn(self.now, line);
    }

    fn route(&self, from: Ipv4Addr, to: Ipv4Addr) -> Ipv4Route {
        Ipv4Route {
            src_mac: self.gateway_mac,
            dst_mac: EthernetAddress([0; 6]),
            src_ip: from,
            dst_ip: to,
        }
    }

    /// Sends a frame built for a guest (Ethernet destination to be found), tracking it.
    fn send_to_guest(&mut self, frame: Vec<u8>) {
        // A full table refuses only new flows; replies belong to tracked ones.
        let _ = self.track(&frame);
        self.out.ipv4(frame);
    }

    /// Sends a UDP datagram `from` a host (or the gateway) `to` a guest.
    pub fn udp_to_guest(&mut self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        let route = self.route(*from.ip(), *to.ip());
        self.send_to_guest(udp_frame(&route, from.port(), to.port(), payload));
    }

    /// Sends an ICMP `message` from a host to a guest.
    pub fn icmp_to_guest(&mut self, from: Ipv4Addr, to: Ipv4Addr, message: &[u8]) {
        let route = self.route(from, to);
        let frame = ipv4_frame(&route, IpProtocol::Icmp, message.len(), |b| {
            b.copy_from_slice(message);
        });
        self.send_to_guest(frame);
    }
}

/// Counters of the user egress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserEgressStats {
    /// TCP flows.
    pub tcp: tcp::TcpStats,
    /// UDP flows.
    pub udp: udp::UdpStats,
    /// Echo flows.
    pub icmp: icmp::IcmpStats,
    /// Packets refused because conntrack was full.
    pub conntrack_full: u64,
    /// Packets of other protocols, refused with ICMP port unreachable.
    pub unsupported: u64,
}

/// The user egress of one network.
#[derive(Debug)]
pub struct UserEgress {
    stack: Stack,
    tcp: TcpFlows,
    udp: UdpFlows,
    icmp: IcmpFlows,
    forwards: Forwards,
    /// DNS over TCP to the gateway goes to this resolver.
    dns_upstream: Option<SocketAddr>,
    next_sweep: Instant,
    stats: UserEgressStats,
}

/// A guest's IPv4 packet in a frame.
struct Parsed<'a> {
    ip: Ipv4Packet<&'a [u8]>,
    payload: &'a [u8],
}

impl<'a> Parsed<'a> {
    fn new(frame: &'a [u8]) -> Option<Self> {
        let packet = frame.get(ETHERNET_HEADER_LEN..)?;
        let ip = Ipv4Packet::new_checked(packet).ok()?;
        let payload = packet.get(usize::from(ip.header_len())..usize::from(ip.total_len()))?;
        Some(Parsed { ip, payload })
    }

    fn payload(&self) -> &'a [u8] {
        self.payload
    }

    fn is_fragment(&self) -> bool {
        self.ip.more_frags() || self.ip.frag_offset() != 0
    }
}

impl UserEgress {
    /// The egress of a network whose gateway is `gateway` (`mac`), of MTU `mtu`; DNS over TCP
    /// to the gateway goes to `dns_upstream`.
    pub fn new(
        gateway: Ipv4Cidr,
        mac: EthernetAddress,
        mtu: u16,
        dns_upstream: Option<SocketAddr>,
        seed: u64,
        now: Instant,
    ) -> Self {
        UserEgress {
            stack: Stack::new(gateway, mac, mtu, seed, now),
            tcp: TcpFlows::default(),
            udp: UdpFlows::default(),
            icmp: IcmpFlows::default(),
            forwards: Forwards::default(),
            dns_upstream,
            next_sweep: now + SWEEP_INTERVAL,
            stats: UserEgressStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> UserEgressStats {
        UserEgressStats {
            tcp: self.tcp.stats(),
            udp: self.udp.stats(),
            icmp: self.icmp.stats(),
            ..self.stats
        }
    }

    /// Takes a guest's `frame` that the gateway handed over: a packet to beyond the network
    /// ([`outbound`](Self::outbound)) or to the gateway's own address
    /// ([`local`](Self::local)); one to the gateway's address that nothing takes is refused
    /// with ICMP host prohibited, as libvirt's host firewall does (INPUT chain).
    pub fn hand_off(&mut self, cx: &mut EgressCx<'_>, handoff: Handoff, frame: &[u8]) {
        match handoff {
            Handoff::None => {}
            Handoff::Egress => self.outbound(cx, frame),
            Handoff::Local => {
                if !self.local(cx, frame) {
                    let kind = ErrorKind::Unreachable(Icmpv4DstUnreachable::HostProhibited);
                    cx.reject(frame, kind);
                }
            }
        }
    }

    /// A guest's packet to beyond the network (the gateway checked its addresses and TTL).
    pub fn outbound(&mut self, cx: &mut EgressCx<'_>, frame: &[u8]) {
        let Some(p) = Parsed::new(frame) else { return };
        if p.is_fragment() {
            // Non-initial fragments carry no ports to find a flow by.
            return;
        }
        if let Err(e) = cx.track(frame) {
            if e == ConntrackError::TableFull {
                self.stats.conntrack_full += 1;
                return cx.log(|| "conntrack is full: a guest's new flow is refused".into());
            }
        }
        let (src, dst) = (p.ip.src_addr(), p.ip.dst_addr());
        match p.ip.next_header() {
            IpProtocol::Tcp => {
                self.tcp_segment(cx, frame, &p, SocketAddr::V4(SocketAddrV4::new(dst, 0)))
            }
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(p.payload()) else {
                    return;
                };
                let guest = SocketAddrV4::new(src, udp.src_port());
                let peer = SocketAddrV4::new(dst, udp.dst_port());
                let payload = udp.payload();
                self.udp.send(cx, guest, peer, payload, frame);
            }
            IpProtocol::Icmp => self.icmp.send(cx, src, dst, p.payload()),
            _ => {
                self.stats.unsupported += 1;
                cx.reject(
                    frame,
                    ErrorKind::Unreachable(Icmpv4DstUnreachable::PortUnreachable),
                );
            }
        }
    }

    /// A guest's TCP segment. `target` is where a new flow connects on the host (its port is
    /// replaced by the segment's destination port).
    fn tcp_segment(
        &mut self,
        cx: &mut EgressCx<'_>,
        frame: &[u8],
        p: &Parsed<'_>,
        target: SocketAddr,
    ) {
        let Ok(tcp) = TcpPacket::new_checked(p.payload()) else {
            return;
        };
        let key = FlowKey {
            guest: SocketAddrV4::new(p.ip.src_addr(), tcp.src_port()),
            peer: SocketAddrV4::new(p.ip.dst_addr(), tcp.dst_port()),
        };
        if !self.tcp.contains(&key) && tcp.syn() && !tcp.ack() && !tcp.rst() {
            let mut target = target;
            if target.port() == 0 {
                target.set_port(tcp.dst_port());
            }
            if !self
                .tcp
                .open_from_guest(cx, &mut self.stack, key, target, frame)
            {
                return;
            }
        }
        // Segments of no flow are answered by the stack with RST.
        self.stack.ingress(cx.now, frame);
    }

    /// A guest's packet to the gateway's own address that no gateway service took: replies
    /// of port forwards, DNS over TCP. False when nothing takes it (the caller rejects it).
    pub fn local(&mut self, cx: &mut EgressCx<'_>, frame: &[u8]) -> bool {
        let Some(p) = Parsed::new(frame) else {
            return true;
        };
        match p.ip.next_header() {
            IpProtocol::Tcp => {
                let Ok(tcp) = TcpPacket::new_checked(p.payload()) else {
                    return true;
                };
                let key = FlowKey {
                    guest: SocketAddrV4::new(p.ip.src_addr(), tcp.src_port()),
                    peer: SocketAddrV4::new(p.ip.dst_addr(), tcp.dst_port()),
                };
                if self.tcp.contains(&key) {
                    let _ = cx.track(frame);
                    self.stack.ingress(cx.now, frame);
                    return true;
                }
                match self.dns_upstream {
                    Some(upstream) if tcp.dst_port() == DNS_PORT => {
                        let _ = cx.track(frame);
                        self.tcp_segment(cx, frame, &p, upstream);
                        true
                    }
                    _ => false,
                }
            }
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(p.payload()) else {
                    return true;
                };
                let taken = self.forwards.reply(udp.dst_port(), udp.payload());
                if taken {
                    let _ = cx.track(frame);
                }
                taken
            }
            _ => false,
        }
    }

    /// A host socket of this egress is ready.
    pub fn on_socket(&mut self, cx: &mut EgressCx<'_>, token: Token, events: EventSet) {
        let index = token.index as usize;
        match token.kind {
            Kind::Tcp => self.tcp.on_socket(index, events, &mut self.stack),
            Kind::Udp => self.udp.on_socket(cx, index),
            Kind::Icmp => self.icmp.on_socket(cx, index),
            Kind::Forward => self
                .forwards
                .on_socket(cx, index, &mut self.tcp, &mut self.stack),
            Kind::Dns => {}
        }
    }

    /// Runs after each round of events: relays TCP, sends what the stack has, ends finished
    /// flows and, once a second, UDP and echo flows conntrack forgot. Returns when it next
    /// needs to run.
    pub fn poll(&mut self, cx: &mut EgressCx<'_>) -> Option<Instant> {
        self.tcp.relay(cx, &mut self.stack);
        self.stack.egress(cx.now);
        for frame in self.stack.sent() {
            let _ = cx.track(&frame);
            cx.out.ipv4(frame);
        }
        self.tcp.reap(cx, &mut self.stack);
        if cx.now >= self.next_sweep {
            self.udp.expire(cx);
            self.icmp.expire(cx);
            self.forwards.expire(cx);
            self.next_sweep = cx.now + SWEEP_INTERVAL;
        }
        [
            self.stack.poll_at(cx.now),
            self.tcp.next_deadline(),
            Some(self.next_sweep),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Starts forwarding `config`.
    pub fn add_forward(
        &mut self,
        cx: &mut EgressCx<'_>,
        config: ForwardConfig,
    ) -> Result<(), ForwardError> {
        self.forwards.add(cx, config)
    }

    /// Stops forwarding `config`.
    pub fn remove_forward(
        &mut self,
        cx: &mut EgressCx<'_>,
        config: &ForwardConfig,
    ) -> Result<(), ForwardError> {
        self.forwards.remove(cx, config)
    }

    /// The forwards in place.
    pub fn forwards(&self) -> Vec<ForwardConfig> {
        self.forwards.list()
    }
}
