//! The gateway of a NAT network: the `.1` address that libvirt's virbr0 + dnsmasq provide,
//! as a port of the network's switch.
//!
//! [`Gateway::handle`] takes every frame the switch delivers to the gateway port (floods and
//! unicasts to its MAC) and returns one [`Action`]: a reply frame (ARP, ICMP, DHCP, DNS), a DNS
//! query for an upstream resolver, the frame handed on (to NAT egress, or to the daemon's own
//! stack when addressed to the gateway but served by none of the state machines here), nothing
//! (handled), or a drop with its reason. [`Gateway::handle_dns_answer`] takes upstream answers
//! and [`Gateway::poll`] the timers. Nothing here does I/O or reads a clock.
//!
//! | module | holds |
//! |---|---|
//! | [`arp`] | [`ArpTable`](arp::ArpTable), ARP reply/request frames |
//! | [`icmp`] | echo replies, ICMP errors ([`icmp::error_reply`]) as REJECT sends them |
//! | [`dhcp_server`] | [`DhcpServer`](dhcp_server::DhcpServer), [`DhcpConfig`](dhcp_server::DhcpConfig) |
//! | [`leases`] | [`LeaseTable`](leases::LeaseTable), the leases file ([`leases::encode`], [`leases::decode`]) |
//! | [`dns`] | [`DnsForwarder`](dns::DnsForwarder): local names and forwarding |
//! | [`frame`] | builders of the frames the gateway sends |

pub mod arp;
pub mod dhcp_server;
pub mod dns;
pub mod frame;
pub mod icmp;
pub mod leases;

use std::net::SocketAddr;

use rand_core::CryptoRng;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded, IpProtocol, Ipv4Address, Ipv4Cidr, Ipv4Packet,
    UdpPacket, DHCP_SERVER_PORT, IPV4_HEADER_LEN, UDP_HEADER_LEN,
};

use arp::ArpTable;
use dhcp_server::{DhcpConfig, DhcpConfigError, DhcpDrop, DhcpOutcome, DhcpServer};
use dns::{DnsClient, DnsConfig, DnsDrop, DnsForwarder, DnsOutcome, LocalNames};
use frame::{udp_frame, Ipv4Route};
use icmp::{ErrorKind, IcmpError};
use leases::LeaseTable;

/// The DNS port.
pub const DNS_PORT: u16 = 53;

/// An invalid gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The gateway address is not a host address of its network (or the prefix is over 30).
    #[error("gateway address {0} is not a host address of its network")]
    Address(Ipv4Cidr),
    /// The gateway MAC is not a unicast address.
    #[error("gateway MAC {0} is not unicast")]
    Mac(EthernetAddress),
    /// The domain is not a valid DNS name.
    #[error("domain {0:?} is not a valid DNS name")]
    Domain(String),
    /// The MTU is below IPv4's minimum of 576.
    #[error("MTU {0} is below 576")]
    Mtu(u16),
    /// The DHCP configuration is invalid.
    #[error("invalid DHCP configuration")]
    Dhcp(#[source] DhcpConfigError),
}

/// The gateway of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The gateway's MAC.
    pub mac: EthernetAddress,
    /// The gateway's address and the network's prefix (libvirt: 192.168.122.1/24).
    pub address: Ipv4Cidr,
    /// The network's MTU (1500).
    pub mtu: u16,
    /// The DNS domain of the guests (DHCP option 15, local names); none by default, as in
    /// libvirt's default network.
    pub domain: Option<String>,
    /// The DHCP server, if the network runs one.
    pub dhcp: Option<DhcpConfig>,
    /// The DNS service, if the network runs one.
    pub dns: Option<DnsConfig>,
    /// Bound on the ARP table.
    pub arp_capacity: usize,
    /// Age after which ARP entries are forgotten.
    pub arp_max_age: Duration,
    /// Whether guests' packets to 127.0.0.0/8 go to the egress (where the `user` egress
    /// connects to the host's own loopback). Off by default: like the kernel, which drops such
    /// martians from an interface, the gateway drops them, so a guest cannot reach the
    /// services a host binds to its loopback only.
    pub loopback_egress: bool,
}

impl GatewayConfig {
    /// libvirt's default network with the gateway at `mac`: 192.168.122.1/24, DHCP .2-.254 with
    /// one-hour leases, DNS forwarded to `upstreams`, MTU 1500, no domain.
    pub fn libvirt_default(mac: EthernetAddress, upstreams: Vec<SocketAddr>) -> Self {
        let address = Ipv4Cidr::new(Ipv4Address::new(192, 168, 122, 1), 24);
        Self {
            mac,
            address,
            mtu: 1500,
            domain: None,
            dhcp: Some(DhcpConfig::libvirt_default(address)),
            dns: Some(DnsConfig {
                upstreams,
                ..DnsConfig::default()
            }),
            arp_capacity: arp::DEFAULT_CAPACITY,
            arp_max_age: arp::DEFAULT_MAX_AGE,
            loopback_egress: false,
        }
    }
}

/// Why the gateway did not take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Not addressed to the gateway (flooded traffic every port sees: expected, not an error).
    #[error("not addressed to the gateway")]
    NotForGateway,
    /// A frame or packet that does not parse (bad length, version or header checksum).
    #[error("malformed frame")]
    Malformed,
    /// A protocol the gateway does not serve (IPv6, other EtherTypes).
    #[error("unsupported protocol")]
    Unsupported,
    /// A fragment addressed to a gateway service (no reassembly there).
    #[error("fragment for a gateway service")]
    Fragment,
    /// A packet routed through the gateway whose source is not an address of the network.
    #[error("source address outside the network")]
    SpoofedSource,
    /// A packet routed through the gateway to an address no packet from an interface may
    /// go to: 0.0.0.0/8, 240.0.0.0/4, or loopback (unless the network lets guests reach the
    /// host's loopback: [`GatewayConfig::loopback_egress`]).
    #[error("destination address not routable from a guest")]
    MartianDestination,
    /// A packet for a guest of the network sent to the gateway's MAC.
    #[error("packet for the network sent to the gateway")]
    Hairpin,
    /// A guest claims the gateway's address in ARP.
    #[error("ARP claims the gateway address")]
    AddressConflict,
    /// An ICMP message to the gateway other than an echo request, that does not parse.
    #[error("malformed ICMP message")]
    IcmpMalformed,
    /// The TTL ran out and no ICMP error may be sent about the packet.
    #[error("TTL exceeded")]
    TtlExceeded,
    /// The DHCP server dropped the message.
    #[error("DHCP: {0}")]
    Dhcp(DhcpDrop),
    /// The DNS service dropped the message.
    #[error("DNS: {0}")]
    Dns(DnsDrop),
}

/// A DNS query to send to an upstream resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamQuery {
    /// The resolver.
    pub upstream: SocketAddr,
    /// The DNS message (UDP payload).
    pub payload: Vec<u8>,
}

/// What to do with a frame the gateway port received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver this frame into the network (to its destination MAC).
    Reply(Vec<u8>),
    /// Send this query to an upstream resolver.
    DnsUpstream(UpstreamQuery),
    /// An IPv4 packet from a guest to beyond the network: NAT egress takes the frame.
    Egress,
    /// An IPv4 packet for the gateway's address that no service here takes (TCP, other UDP
    /// ports, ICMP other than echo): the daemon's own stack takes the frame (port forwards'
    /// replies, DNS over TCP), or answers with [`Gateway::reject`].
    Local,
    /// Handled: state updated, nothing to send (ARP learned, DHCP RELEASE/DECLINE).
    Consumed,
    /// Not taken, for this reason (count it; log only rate-limited).
    Drop(DropReason),
}

/// Counters of what the gateway answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// ARP replies sent.
    pub arp_replies: u64,
    /// ICMP echo replies sent.
    pub echo_replies: u64,
    /// ICMP errors sent (TTL exceeded here; rejects are built by [`Gateway::reject`]).
    pub icmp_errors: u64,
    /// DHCP replies sent.
    pub dhcp_replies: u64,
}

/// The leases as local DNS names at one instant.
struct LeaseNames<'a> {
    leases: Option<&'a LeaseTable>,
    now: Instant,
}

impl LocalNames for LeaseNames<'_> {
    fn address_of(&self, hostname: &str) -> Option<Ipv4Address> {
        self.leases?.find_name(hostname, self.now).map(|l| l.ip)
    }

    fn name_of(&self, ip: Ipv4Address) -> Option<String> {
        self.leases?
            .by_ip(&ip)
            .filter(|l| l.is_bound(self.now))
            .and_then(|l| l.hostname.clone())
    }
}

/// The gateway state machine of one network.
#[derive(Debug, Clone)]
pub struct Gateway {
    mac: EthernetAddress,
    address: Ipv4Cidr,
    arp: ArpTable,
    dhcp: Option<DhcpServer>,
    dns: Option<DnsForwarder>,
    loopback_egress: bool,
    stats: GatewayStats,
}

impl Gateway {
    /// A gateway for `config`, after checking it.
    pub fn new(config: GatewayConfig) -> Result<Self, GatewayError> {
        let net = config.address.network();
        let ip = config.address.address();
        if config.address.prefix_len() > 30
            || !net.contains_addr(&ip)
            || ip == net.address()
            || Some(ip) == net.broadcast()
        {
            return Err(GatewayError::Address(config.address));
        }
        if !config.mac.is_unicast() {
            return Err(GatewayError::Mac(config.mac));
        }
        if config.mtu < 576 {
            return Err(GatewayError::Mtu(config.mtu));
        }
        if let Some(domain) = &config.domain {
            let valid = domain.len() <= 253
                && domain.trim_end_matches('.').split('.').all(|l| {
                    leases::valid_hostname(l).as_deref() == Some(&*l.to_ascii_lowercase())
                });
            if !valid {
                return Err(GatewayError::Domain(domain.clone()));
            }
        }
        let dhcp = config
            .dhcp
            .map(|c| DhcpServer::new(c, config.mac, config.address, config.domain.clone()))
            .transpose()
            .map_err(GatewayError::Dhcp)?;
        let max_reply = usize::from(config.mtu) - IPV4_HEADER_LEN - UDP_HEADER_LEN;
        let dns = config
            .dns
            .map(|c| DnsForwarder::new(c, config.address, config.domain.as_deref(), max_reply));
        Ok(Self {
            mac: config.mac,
            address: config.address,
            arp: ArpTable::new(config.arp_capacity, config.arp_max_age),
            dhcp,
            dns,
            loopback_egress: config.loopback_egress,
            stats: GatewayStats::default(),
        })
    }

    /// The gateway's MAC.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    /// The gateway's address and the network's prefix.
    pub fn address(&self) -> Ipv4Cidr {
        self.address
    }

    /// Guests' addresses learned from their traffic.
    pub fn arp_table(&self) -> &ArpTable {
        &self.arp
    }

    /// The DHCP server, if any.
    pub fn dhcp(&self) -> Option<&DhcpServer> {
        self.dhcp.as_ref()
    }

    /// The DHCP server, if any, to restore leases into.
    pub fn dhcp_mut(&mut self) -> Option<&mut DhcpServer> {
        self.dhcp.as_mut()
    }

    /// The DNS service, if any.
    pub fn dns(&self) -> Option<&DnsForwarder> {
        self.dns.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> GatewayStats {
        self.stats
    }

    /// A broadcast ARP who-has `target` from the gateway (to find a guest's MAC).
    pub fn arp_request(&self, target: Ipv4Address) -> Vec<u8> {
        arp::request(self.mac, self.address.address(), target)
    }

    /// The ICMP error `kind` about `offending` (a frame from a guest), from the gateway: what
    /// `REJECT --reject-with icmp-port-unreachable` (or another code) sends.
    pub fn reject(&self, offending: &[u8], kind: ErrorKind) -> Result<Vec<u8>, IcmpError> {
        icmp::error_reply(offending, kind, self.mac, self.address.address())
    }

    /// The earliest time [`Gateway::poll`] has something to do.
    pub fn poll_at(&self) -> Option<Instant> {
        self.dns.as_ref().and_then(DnsForwarder::poll_at)
    }

    /// Runs the timers due at `now`: ages the ARP table, ends quarantines, and answers SERVFAIL
    /// to queries no upstream answered in time (returned as reply frames).
    pub fn poll(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.arp.expire(now);
        if let Some(dhcp) = &mut self.dhcp {
            dhcp.expire(now);
        }
        let Some(dns) = &mut self.dns else {
            return Vec::new();
        };
        dns.poll(now)
            .into_iter()
            .map(|(client, reply)| {
                udp_frame(&self.dns_route(&client), DNS_PORT, client.port, &reply)
            })
            .collect()
    }

    /// Takes an answer `payload` that came from the upstream resolver `from`.
    pub fn handle_dns_answer(&mut self, from: SocketAddr, payload: &[u8]) -> Action {
        let Some(dns) = &mut self.dns else {
            return Action::Drop(DropReason::Dns(DnsDrop::UnknownAnswer));
        };
        match dns.handle_answer(from, payload) {
            Ok((client, reply)) => Action::Reply(udp_frame(
                &self.dns_route(&client),
                DNS_PORT,
                client.port,
                &reply,
            )),
            Err(reason) => Action::Drop(DropReason::Dns(reason)),
        }
    }

    fn dns_route(&self, client: &DnsClient) -> Ipv4Route {
        Ipv4Route {
            src_mac: self.mac,
            dst_mac: client.mac,
            src_ip: self.address.address(),
            dst_ip: client.ip,
        }
    }

    /// Handles a frame the gateway port received at `now`. `rng` draws DNS query IDs.
    pub fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        frame: &[u8],
        rng: &mut R,
    ) -> Action {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Action::Drop(DropReason::Malformed);
        };
        let dst = eth.dst_addr();
        if dst != self.mac && !dst.is_broadcast() {
            return Action::Drop(DropReason::NotForGateway);
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.handle_arp(now, eth.src_addr(), eth.payload()),
            EthernetProtocol::Ipv4 => self.handle_ipv4(now, frame, rng),
            _ if dst.is_broadcast() => Action::Drop(DropReason::NotForGateway),
            _ => Action::Drop(DropReason::Unsupported),
        }
    }

    fn handle_arp(&mut self, now: Instant, src_mac: EthernetAddress, payload: &[u8]) -> Action {
        let Ok(packet) = ArpPacket::new_checked(payload) else {
            return Action::Drop(DropReason::Malformed);
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            return Action::Drop(DropReason::Malformed);
        };
        let gateway_ip = self.address.address();
        if source_protocol_addr == gateway_ip {
            return Action::Drop(DropReason::AddressConflict);
        }
        let net = self.address.network();
        if source_hardware_addr == src_mac
            && net.contains_addr(&source_protocol_addr)
            && source_protocol_addr != net.address()
            && Some(source_protocol_addr) != net.broadcast()
        {
            self.arp
                .learn(now, source_protocol_addr, source_hardware_addr);
        }
        if target_protocol_addr != gateway_ip {
            return Action::Drop(DropReason::NotForGateway);
        }
        match operation {
            ArpOperation::Request => {
                self.stats.arp_replies += 1;
                Action::Reply(arp::reply(
                    self.mac,
                    gateway_ip,
                    (source_hardware_addr, source_protocol_addr),
                ))
            }
            _ => Action::Consumed,
        }
    }

    /// Whether no packet from a guest may be routed to `dst`: 0.0.0.0/8 (to the host itself,
    /// for a socket), 240.0.0.0/4 (reserved), or loopback unless it goes to the egress.
    fn is_martian(&self, dst: Ipv4Address) -> bool {
        let first = dst.octets()[0];
        first == 0 || first >= 240 || (dst.is_loopback() && !self.loopback_egress)
    }

    fn handle_ipv4<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        frame: &[u8],
        rng: &mut R,
    ) -> Action {
        let eth = EthernetFrame::new_unchecked(frame);
        let src_mac = eth.src_addr();
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            return Action::Drop(DropReason::Malformed);
        };
        if ip.version() != 4 || !ip.verify_checksum() {
            return Action::Drop(DropReason::Malformed);
        }
        let gateway_ip = self.address.address();
        let net = self.address.network();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let is_fragment = ip.more_frags() || ip.frag_offset() != 0;
        let to_gateway = dst == gateway_ip;
        let broadcast = dst.is_broadcast() || Some(dst) == net.broadcast();
        let payload = &ip.payload()[..usize::from(ip.total_len()) - usize::from(ip.header_len())];

        // DHCP comes broadcast from 0.0.0.0, or unicast to the gateway when renewing.
        if (to_gateway || broadcast) && ip.next_header() == IpProtocol::Udp && !is_fragment {
            if let (Ok(udp), Some(dhcp)) = (UdpPacket::new_checked(payload), &mut self.dhcp) {
                if udp.dst_port() == DHCP_SERVER_PORT {
                    return match dhcp.handle(now, src_mac, udp.payload()) {
                        DhcpOutcome::Reply(reply) => {
                            self.stats.dhcp_replies += 1;
                            Action::Reply(reply)
                        }
                        DhcpOutcome::Consumed => Action::Consumed,
                        DhcpOutcome::Drop(reason) => Action::Drop(DropReason::Dhcp(reason)),
                    };
                }
            }
        }
        if eth.dst_addr() != self.mac || dst.is_multicast() || broadcast {
            return Action::Drop(DropReason::NotForGateway);
        }
        let src_valid =
            net.contains_addr(&src) && src != net.address() && Some(src) != net.broadcast();
        if src_valid {
            self.arp.learn(now, src, src_mac);
        }
        if !to_gateway {
            if net.contains_addr(&dst) {
                return Action::Drop(DropReason::Hairpin);
            }
            if !src_valid {
                return Action::Drop(DropReason::SpoofedSource);
            }
            if self.is_martian(dst) {
                return Action::Drop(DropReason::MartianDestination);
            }
            if ip.hop_limit() <= 1 {
                return match self.reject(
                    frame,
                    ErrorKind::TimeExceeded(Icmpv4TimeExceeded::TtlExpired),
                ) {
                    Ok(reply) => {
                        self.stats.icmp_errors += 1;
                        Action::Reply(reply)
                    }
                    Err(_) => Action::Drop(DropReason::TtlExceeded),
                };
            }
            return Action::Egress;
        }
        if is_fragment {
            return match ip.next_header() {
                IpProtocol::Udp | IpProtocol::Icmp => Action::Drop(DropReason::Fragment),
                _ => Action::Local,
            };
        }
        match ip.next_header() {
            IpProtocol::Icmp => self.handle_icmp(src_mac, src, payload),
            IpProtocol::Udp => self.handle_udp(now, src_mac, src, payload, rng),
            _ => Action::Local,
        }
    }

    fn handle_icmp(
        &mut self,
        src_mac: EthernetAddress,
        src: Ipv4Address,
        payload: &[u8],
    ) -> Action {
        let Ok(packet) = Icmpv4Packet::new_checked(payload) else {
            return Action::Drop(DropReason::IcmpMalformed);
        };
        match Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default()) {
            Ok(Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }) => {
                self.stats.echo_replies += 1;
                Action::Reply(icmp::echo_reply(
                    (self.mac, self.address.address()),
                    (src_mac, src),
                    ident,
                    seq_no,
                    data,
                ))
            }
            Ok(_) => Action::Local,
            Err(_) => Action::Drop(DropReason::IcmpMalformed),
        }
    }

    fn handle_udp<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        src: Ipv4Address,
        payload: &[u8],
        rng: &mut R,
    ) -> Action {
        let Ok(udp) = UdpPacket::new_checked(payload) else {
            return Action::Drop(DropReason::Malformed);
        };
        if udp.dst_port() != DNS_PORT {
            return Action::Local;
        }
        let Some(dns) = &mut self.dns else {
            return Action::Local;
        };
        let client = DnsClient {
            mac: src_mac,
            ip: src,
            port: udp.src_port(),
        };
        let names = LeaseNames {
            leases: self.dhcp.as_ref().map(DhcpServer::leases),
            now,
        };
        match dns.handle_query(now, client, udp.payload(), &names, rng) {
            DnsOutcome::Answer(reply) => Action::Reply(udp_frame(
                &self.dns_route(&client),
                DNS_PORT,
                client.port,
                &reply,
            )),
            DnsOutcome::Forward { upstream, query } => Action::DnsUpstream(UpstreamQuery {
                upstream,
                payload: query,
            }),
            DnsOutcome::Drop(reason) => Action::Drop(DropReason::Dns(reason)),
        }
    }
}
