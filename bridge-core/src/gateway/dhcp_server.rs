//! The DHCPv4 server of a NAT network (RFC 2131), as dnsmasq serves libvirt's networks.
//!
//! Clients are known by MAC (`chaddr`, which must be the frame's source MAC). Addresses come from
//! static hosts (a MAC's reserved address) or the ranges. A DISCOVER is offered, in order: the
//! MAC's static address, its previous address, the address it asks for, an address never leased,
//! then the address free for longest. The server is authoritative for its network: a REQUEST
//! (selecting, init-reboot, renewing or rebinding) is ACKed when the address may be this MAC's
//! and NAKed otherwise, so clients keep their addresses across a restart even without the
//! leases file. RELEASE ends a lease; DECLINE quarantines the address; INFORM gets the options
//! without a lease.

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DhcpMessageType, DhcpOpCode, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, Ipv4Address,
    Ipv4Cidr, DHCP_CLIENT_PORT, DHCP_SERVER_PORT,
};

use super::frame::{udp_frame, Ipv4Route};
use super::leases::{valid_hostname, Lease, LeaseRecord, LeaseState, LeaseTable};

/// Default lease time (libvirt's default network: one hour).
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(3600);
/// Default time an offered address is held for the client's REQUEST.
pub const DEFAULT_OFFER_TIME: Duration = Duration::from_secs(60);
/// Default quarantine of a declined address (dnsmasq's: ten minutes).
pub const DEFAULT_DECLINE_TIME: Duration = Duration::from_secs(600);

/// Smallest DHCP message sent (the BOOTP size some clients still expect).
const MIN_MESSAGE_LEN: usize = 300;

const OPT_HOST_NAME: u8 = 12;
const OPT_DOMAIN_NAME_SERVER: u8 = 6;
const OPT_DOMAIN_NAME: u8 = 15;
const OPT_INTERFACE_MTU: u8 = 26;
const OPT_BROADCAST_ADDRESS: u8 = 28;
const OPT_RENEWAL_TIME: u8 = 58;
const OPT_REBINDING_TIME: u8 = 59;

/// An invalid DHCP configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpConfigError {
    /// A range leaves the network or ends before it starts.
    #[error("DHCP range {start}-{end} is not an ascending range inside {network}")]
    Range {
        /// First address of the range.
        start: Ipv4Address,
        /// Last address of the range.
        end: Ipv4Address,
        /// The network.
        network: Ipv4Cidr,
    },
    /// A static host's address is outside the network or is the gateway's.
    #[error("static host address {ip} is not a host address of {network}")]
    HostAddress {
        /// The address.
        ip: Ipv4Address,
        /// The network.
        network: Ipv4Cidr,
    },
    /// Two static hosts share a MAC or an address.
    #[error("static hosts share the MAC or address of {ip}")]
    DuplicateHost {
        /// The address of the second host.
        ip: Ipv4Address,
    },
    /// A static host's name is not a valid DNS label.
    #[error("static host name {0:?} is not a valid DNS label")]
    Hostname(String),
}

/// A contiguous range of addresses handed out, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpRange {
    /// First address.
    pub start: Ipv4Address,
    /// Last address.
    pub end: Ipv4Address,
}

impl DhcpRange {
    fn contains(&self, ip: Ipv4Address) -> bool {
        self.start <= ip && ip <= self.end
    }
}

/// A MAC's reserved address (dnsmasq's `dhcp-host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticHost {
    /// The client's MAC.
    pub mac: EthernetAddress,
    /// Its address (inside the network, in a range or not).
    pub ip: Ipv4Address,
    /// Its name in DNS, overriding the name the client sends.
    pub hostname: Option<String>,
}

/// What the DHCP server hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Address ranges.
    pub ranges: Vec<DhcpRange>,
    /// Static hosts.
    pub hosts: Vec<StaticHost>,
    /// Lease time; T1 is half of it, T2 seven eighths.
    pub lease_time: Duration,
    /// DNS servers announced (option 6); empty announces the gateway itself.
    pub dns_servers: Vec<Ipv4Address>,
    /// Interface MTU announced (option 26), if any.
    pub mtu: Option<u16>,
    /// How long an offer holds its address.
    pub offer_time: Duration,
    /// How long a declined address stays out of use.
    pub decline_time: Duration,
}

impl DhcpConfig {
    /// libvirt's default network's DHCP: the range .2-.254 of `network`, one-hour leases.
    pub fn libvirt_default(network: Ipv4Cidr) -> Self {
        let base = u32::from(network.network().address());
        Self {
            ranges: vec![DhcpRange {
                start: Ipv4Address::from(base + 2),
                end: Ipv4Address::from(base + 254),
            }],
            hosts: Vec::new(),
            lease_time: DEFAULT_LEASE_TIME,
            dns_servers: Vec::new(),
            mtu: None,
            offer_time: DEFAULT_OFFER_TIME,
            decline_time: DEFAULT_DECLINE_TIME,
        }
    }
}

/// Why a client message got no reply and changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DhcpDrop {
    /// Not a parseable DHCP message.
    #[error("malformed DHCP message")]
    Malformed,
    /// A server's message (OFFER, ACK, NAK), or an unknown message type.
    #[error("not a DHCP client message")]
    NotClientMessage,
    /// The message came through a relay agent (`giaddr` set): not served.
    #[error("relayed DHCP message")]
    Relayed,
    /// `chaddr` is not the frame's source MAC.
    #[error("DHCP chaddr differs from the source MAC")]
    ChaddrMismatch,
    /// No address is free for the client.
    #[error("DHCP address pool exhausted")]
    PoolExhausted,
    /// A REQUEST naming no address.
    #[error("DHCP REQUEST without an address")]
    NoAddress,
    /// A RELEASE or DECLINE for a lease the client does not hold.
    #[error("DHCP RELEASE or DECLINE of an unknown lease")]
    UnknownLease,
}

/// What the server does with a client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpOutcome {
    /// Send this frame (OFFER, ACK or NAK) into the network.
    Reply(Vec<u8>),
    /// The message was acted on; nothing to send (RELEASE, DECLINE, a REQUEST for another
    /// server).
    Consumed,
    /// Nothing done, for this reason.
    Drop(DhcpDrop),
}

/// The DHCP server state machine of one network.
#[derive(Debug, Clone)]
pub struct DhcpServer {
    config: DhcpConfig,
    network: Ipv4Cidr,
    server_mac: EthernetAddress,
    domain: Option<String>,
    leases: LeaseTable,
}

impl DhcpServer {
    /// A server at `gateway` (its MAC, and its address with the network's prefix) handing out
    /// `config`, announcing `domain` (option 15) if given.
    pub fn new(
        config: DhcpConfig,
        server_mac: EthernetAddress,
        gateway: Ipv4Cidr,
        domain: Option<String>,
    ) -> Result<Self, DhcpConfigError> {
        let network = gateway.network();
        for r in &config.ranges {
            if r.start > r.end || !network.contains_addr(&r.start) || !network.contains_addr(&r.end)
            {
                return Err(DhcpConfigError::Range {
                    start: r.start,
                    end: r.end,
                    network,
                });
            }
        }
        for (i, h) in config.hosts.iter().enumerate() {
            if !network.contains_addr(&h.ip)
                || h.ip == gateway.address()
                || h.ip == network.address()
                || Some(h.ip) == network.broadcast()
            {
                return Err(DhcpConfigError::HostAddress { ip: h.ip, network });
            }
            if config.hosts[..i]
                .iter()
                .any(|o| o.ip == h.ip || o.mac == h.mac)
            {
                return Err(DhcpConfigError::DuplicateHost { ip: h.ip });
            }
            if let Some(name) = &h.hostname {
                if valid_hostname(name).as_deref() != Some(name.to_ascii_lowercase().as_str()) {
                    return Err(DhcpConfigError::Hostname(name.clone()));
                }
            }
        }
        Ok(Self {
            config,
            network: gateway,
            server_mac,
            domain,
            leases: LeaseTable::new(),
        })
    }

    /// The lease table.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Restores saved leases (from the leases file) still valid at `now`: unexpired, and with an
    /// address this MAC may hold. Returns how many were restored.
    pub fn restore(&mut self, now: Instant, records: &[LeaseRecord]) -> usize {
        let mut restored = 0;
        for r in records {
            let expires = Instant::from_secs(r.expires);
            if expires <= now || !self.allocatable(now, r.mac, r.ip) {
                continue;
            }
            let hostname = self
                .static_host_of(&r.mac)
                .and_then(|h| h.hostname.clone())
                .or_else(|| r.hostname.clone());
            self.leases.insert(Lease {
                mac: r.mac,
                ip: r.ip,
                hostname,
                expires,
                state: LeaseState::Bound,
            });
            restored += 1;
        }
        restored
    }

    /// Forgets quarantines that are over at `now`.
    pub fn expire(&mut self, now: Instant) {
        self.leases.expire(now);
    }

    /// Handles a client message `payload` (the UDP payload to port 67) that arrived in a frame
    /// from `src_mac`.
    pub fn handle(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        payload: &[u8],
    ) -> DhcpOutcome {
        let Ok(packet) = DhcpPacket::new_checked(payload) else {
            return DhcpOutcome::Drop(DhcpDrop::Malformed);
        };
        let Ok(msg) = DhcpRepr::parse(&packet) else {
            return DhcpOutcome::Drop(DhcpDrop::Malformed);
        };
        if packet.opcode() != DhcpOpCode::Request {
            return DhcpOutcome::Drop(DhcpDrop::NotClientMessage);
        }
        if !msg.relay_agent_ip.is_unspecified() {
            return DhcpOutcome::Drop(DhcpDrop::Relayed);
        }
        if msg.client_hardware_address != src_mac {
            return DhcpOutcome::Drop(DhcpDrop::ChaddrMismatch);
        }
        let hostname = packet
            .options()
            .find(|o| o.kind == OPT_HOST_NAME)
            .and_then(|o| std::str::from_utf8(o.data).ok())
            .and_then(valid_hostname);
        match msg.message_type {
            DhcpMessageType::Discover => self.discover(now, &msg, hostname),
            DhcpMessageType::Request => self.request(now, &msg, hostname),
            DhcpMessageType::Release => self.release(now, &msg),
            DhcpMessageType::Decline => self.decline(now, &msg),
            DhcpMessageType::Inform => DhcpOutcome::Reply(self.reply(
                &msg,
                DhcpMessageType::Ack,
                Ipv4Address::UNSPECIFIED,
                false,
            )),
            _ => DhcpOutcome::Drop(DhcpDrop::NotClientMessage),
        }
    }

    fn discover(&mut self, now: Instant, msg: &DhcpRepr, hostname: Option<String>) -> DhcpOutcome {
        let mac = msg.client_hardware_address;
        let Some(ip) = self.choose(now, mac, msg.requested_ip) else {
            return DhcpOutcome::Drop(DhcpDrop::PoolExhausted);
        };
        let keeps_bound = self
            .leases
            .by_mac(&mac)
            .is_some_and(|l| l.ip == ip && l.is_bound(now));
        if !keeps_bound {
            self.leases.insert(Lease {
                mac,
                ip,
                hostname: self.hostname_for(mac, hostname),
                expires: now + self.config.offer_time,
                state: LeaseState::Offered,
            });
        }
        DhcpOutcome::Reply(self.reply(msg, DhcpMessageType::Offer, ip, true))
    }

    fn request(&mut self, now: Instant, msg: &DhcpRepr, hostname: Option<String>) -> DhcpOutcome {
        let mac = msg.client_hardware_address;
        if msg
            .server_identifier
            .is_some_and(|id| id != self.network.address())
        {
            // The client took another server's offer: let ours go.
            if self
                .leases
                .by_mac(&mac)
                .is_some_and(|l| l.state == LeaseState::Offered)
            {
                self.leases.remove_mac(&mac);
            }
            return DhcpOutcome::Consumed;
        }
        let ip = match (msg.requested_ip, msg.client_ip) {
            (Some(ip), _) => ip,
            (None, ip) if !ip.is_unspecified() => ip,
            _ => return DhcpOutcome::Drop(DhcpDrop::NoAddress),
        };
        if !self.allocatable(now, mac, ip) {
            return DhcpOutcome::Reply(self.reply(
                msg,
                DhcpMessageType::Nak,
                Ipv4Address::UNSPECIFIED,
                false,
            ));
        }
        let previous_name = self
            .leases
            .by_mac(&mac)
            .filter(|l| l.ip == ip)
            .and_then(|l| l.hostname.clone());
        self.leases.insert(Lease {
            mac,
            ip,
            hostname: self.hostname_for(mac, hostname.or(previous_name)),
            expires: now + self.config.lease_time,
            state: LeaseState::Bound,
        });
        DhcpOutcome::Reply(self.reply(msg, DhcpMessageType::Ack, ip, true))
    }

    fn release(&mut self, now: Instant, msg: &DhcpRepr) -> DhcpOutcome {
        let mac = msg.client_hardware_address;
        let ours = msg
            .server_identifier
            .is_none_or(|id| id == self.network.address());
        let holds = self
            .leases
            .by_mac(&mac)
            .is_some_and(|l| l.ip == msg.client_ip && l.is_active(now));
        if ours && holds && self.leases.end(&mac, now) {
            DhcpOutcome::Consumed
        } else {
            DhcpOutcome::Drop(DhcpDrop::UnknownLease)
        }
    }

    fn decline(&mut self, now: Instant, msg: &DhcpRepr) -> DhcpOutcome {
        let mac = msg.client_hardware_address;
        let Some(ip) = msg.requested_ip else {
            return DhcpOutcome::Drop(DhcpDrop::UnknownLease);
        };
        if self.leases.by_mac(&mac).is_none_or(|l| l.ip != ip) {
            return DhcpOutcome::Drop(DhcpDrop::UnknownLease);
        }
        self.leases.remove_mac(&mac);
        self.leases.quarantine(ip, now + self.config.decline_time);
        DhcpOutcome::Consumed
    }

    fn static_host_of(&self, mac: &EthernetAddress) -> Option<&StaticHost> {
        self.config.hosts.iter().find(|h| h.mac == *mac)
    }

    /// The name a bound lease of `mac` carries: the static host's, else the client's.
    fn hostname_for(&self, mac: EthernetAddress, client: Option<String>) -> Option<String> {
        self.static_host_of(&mac)
            .and_then(|h| h.hostname.as_deref().and_then(valid_hostname))
            .or(client)
    }

    /// True when `ip` is a host address of the network other than the gateway's.
    fn is_host_address(&self, ip: Ipv4Address) -> bool {
        let net = self.network.network();
        net.contains_addr(&ip)
            && ip != net.address()
            && Some(ip) != net.broadcast()
            && ip != self.network.address()
    }

    /// True when `mac` may hold `ip` at `now`.
    fn allocatable(&self, now: Instant, mac: EthernetAddress, ip: Ipv4Address) -> bool {
        if !self.is_host_address(ip) || self.leases.is_quarantined(&ip, now) {
            return false;
        }
        let permitted = match self.config.hosts.iter().find(|h| h.ip == ip) {
            Some(host) => host.mac == mac,
            None => {
                self.static_host_of(&mac).is_none()
                    && self.config.ranges.iter().any(|r| r.contains(ip))
            }
        };
        permitted
            && self
                .leases
                .by_ip(&ip)
                .is_none_or(|l| l.mac == mac || !l.is_active(now))
    }

    /// The address to offer `mac`.
    fn choose(
        &self,
        now: Instant,
        mac: EthernetAddress,
        requested: Option<Ipv4Address>,
    ) -> Option<Ipv4Address> {
        if let Some(host) = self.static_host_of(&mac) {
            return self.allocatable(now, mac, host.ip).then_some(host.ip);
        }
        let previous = self.leases.by_mac(&mac).map(|l| l.ip);
        if let Some(ip) = previous
            .into_iter()
            .chain(requested)
            .find(|&ip| self.allocatable(now, mac, ip))
        {
            return Some(ip);
        }
        let never_leased = self.config.ranges.iter().find_map(|r| {
            (u32::from(r.start)..=u32::from(r.end))
                .map(Ipv4Address::from)
                .find(|ip| self.leases.by_ip(ip).is_none() && self.allocatable(now, mac, *ip))
        });
        never_leased.or_else(|| {
            self.leases
                .iter()
                .filter(|l| self.allocatable(now, mac, l.ip))
                .min_by_key(|l| l.expires)
                .map(|l| l.ip)
        })
    }

    /// The reply of `kind` to `msg` giving `yiaddr`; `lease` adds the lease times.
    fn reply(
        &self,
        msg: &DhcpRepr,
        kind: DhcpMessageType,
        yiaddr: Ipv4Address,
        lease: bool,
    ) -> Vec<u8> {
        let server = self.network.address();
        let net = self.network.network();
        let nak = kind == DhcpMessageType::Nak;
        let lease_secs = u32::try_from(self.config.lease_time.secs()).unwrap_or(u32::MAX);
        let t1 = (lease_secs / 2).to_be_bytes();
        let t2 = (lease_secs / 8 * 7).to_be_bytes();
        let dns: Vec<u8> = if self.config.dns_servers.is_empty() {
            server.octets().to_vec()
        } else {
            self.config
                .dns_servers
                .iter()
                .take(63)
                .flat_map(|a| a.octets())
                .collect()
        };
        let mtu = self.config.mtu.map(u16::to_be_bytes);
        let broadcast = net.broadcast().map(|b| b.octets());
        let static_name = self
            .static_host_of(&msg.client_hardware_address)
            .and_then(|h| h.hostname.as_deref());

        let mut options = Vec::new();
        if !nak {
            options.push(DhcpOption {
                kind: OPT_DOMAIN_NAME_SERVER,
                data: &dns,
            });
            if let Some(domain) = self.domain.as_deref().filter(|d| d.len() <= 255) {
                options.push(DhcpOption {
                    kind: OPT_DOMAIN_NAME,
                    data: domain.as_bytes(),
                });
            }
            if let Some(mtu) = &mtu {
                options.push(DhcpOption {
                    kind: OPT_INTERFACE_MTU,
                    data: mtu,
                });
            }
            if let Some(b) = &broadcast {
                options.push(DhcpOption {
                    kind: OPT_BROADCAST_ADDRESS,
                    data: b,
                });
            }
            if let Some(name) = static_name {
                options.push(DhcpOption {
                    kind: OPT_HOST_NAME,
                    data: name.as_bytes(),
                });
            }
            if lease {
                options.push(DhcpOption {
                    kind: OPT_RENEWAL_TIME,
                    data: &t1,
                });
                options.push(DhcpOption {
                    kind: OPT_REBINDING_TIME,
                    data: &t2,
                });
            }
        }
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: msg.transaction_id,
            secs: 0,
            client_hardware_address: msg.client_hardware_address,
            client_ip: if kind == DhcpMessageType::Ack {
                msg.client_ip
            } else {
                Ipv4Address::UNSPECIFIED
            },
            your_ip: yiaddr,
            server_ip: Ipv4Address::UNSPECIFIED,
            router: (!nak).then_some(server),
            subnet_mask: (!nak).then(|| net.netmask()),
            relay_agent_ip: Ipv4Address::UNSPECIFIED,
            broadcast: msg.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(server),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: (lease && !nak).then_some(lease_secs),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &options,
        };
        let mut buf = vec![0u8; repr.buffer_len().max(MIN_MESSAGE_LEN)];
        // The buffer is sized by `buffer_len`, so emitting cannot run out of room.
        let _ = repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]));

        // RFC 2131 §4.1: NAKs are broadcast; a client with an address gets unicast there; a
        // client that asked for broadcast gets it; others are unicast to their new address.
        let (dst_mac, dst_ip) = if nak {
            (EthernetAddress::BROADCAST, Ipv4Address::BROADCAST)
        } else if !msg.client_ip.is_unspecified() {
            (msg.client_hardware_address, msg.client_ip)
        } else if msg.broadcast || yiaddr.is_unspecified() {
            (EthernetAddress::BROADCAST, Ipv4Address::BROADCAST)
        } else {
            (msg.client_hardware_address, yiaddr)
        };
        let route = Ipv4Route {
            src_mac: self.server_mac,
            dst_mac,
            src_ip: server,
            dst_ip,
        };
        udp_frame(&route, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, &buf)
    }
}
