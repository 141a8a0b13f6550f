//! The gateway port of a NAT network, whatever its egress: bridge-core's [`Gateway`] (ARP,
//! ICMP echo, DHCP, DNS) fed with the frames the switch sends it, its replies queued into the
//! network, DNS queries forwarded from host UDP sockets (a new socket, so a new random source
//! port, per query), and the leases kept in a file.
//!
//! What the gateway hands on ([`Handoff`]) goes to the network's egress.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bridge_core::gateway::leases::LeaseRecord;
use bridge_core::gateway::{Action, Gateway, GatewayConfig, GatewayError, UpstreamQuery};
use bridge_core::time::{Duration, Instant};
use bridge_core::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Ipv4Address, Ipv4Packet,
};
use rand::rngs::{StdRng, SysRng};
use rand::SeedableRng;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use super::leases_file;
use super::outbox::Outbox;
use super::rate_log::RateLimited;
use super::registry::{Kind, Registry, Token};
use super::slots::Slots;

/// Most DNS queries in flight to upstreams (each has its own socket).
pub const MAX_DNS_SOCKETS: usize = 256;
/// How long a DNS socket waits for its answer (the gateway's own timeout answers SERVFAIL).
const DNS_SOCKET_LIFETIME: Duration = Duration::from_secs(6);

/// Errors setting up a gateway port.
#[derive(Debug, thiserror::Error)]
pub enum GatewayPortError {
    /// The gateway's configuration is invalid.
    #[error("invalid gateway configuration")]
    Gateway(#[source] GatewayError),
    /// The random number generator could not be seeded.
    #[error("seeding the random number generator failed")]
    Random,
}

/// What the gateway hands to the egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Nothing: the gateway took the frame (or dropped it).
    None,
    /// A guest's packet to beyond the network.
    Egress,
    /// A packet for the gateway's own address that no gateway service takes.
    Local,
}

/// A DNS query's socket.
#[derive(Debug)]
struct DnsSocket {
    socket: Socket,
    upstream: SocketAddr,
    expires: Instant,
}

/// Where the leases go.
#[derive(Debug)]
struct LeasesStore {
    path: PathBuf,
    generation: u64,
}

/// Counters of the gateway port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayPortStats {
    /// Frames the gateway dropped (guests' traffic it does not take; `NotForGateway` floods
    /// are not counted).
    pub dropped: u64,
    /// DNS queries not sent (no socket, send failed, too many in flight).
    pub dns_send_failed: u64,
    /// Frames to guests whose MAC was unknown (an ARP request went out instead).
    pub unresolved: u64,
}

/// The gateway port.
#[derive(Debug)]
pub struct GatewayPort {
    gateway: Gateway,
    rng: StdRng,
    dns: Slots<DnsSocket>,
    leases: Option<LeasesStore>,
    /// The bound leases, for the control plane.
    snapshot: Arc<Mutex<Vec<LeaseRecord>>>,
    stats: GatewayPortStats,
    log: RateLimited,
}

impl GatewayPort {
    /// A gateway port for `config`, restoring the leases saved in `leases_path` (if any).
    pub fn new(
        network: &str,
        config: GatewayConfig,
        leases_path: Option<PathBuf>,
        now: Instant,
    ) -> Result<Self, GatewayPortError> {
        let mut gateway = Gateway::new(config).map_err(GatewayPortError::Gateway)?;
        let rng = StdRng::try_from_rng(&mut SysRng).map_err(|_| GatewayPortError::Random)?;
        let leases = match (leases_path, gateway.dhcp_mut()) {
            (Some(path), Some(dhcp)) => {
                match leases_file::load(&path) {
                    Ok(records) => {
                        let n = dhcp.restore(now, &records);
                        info!(network, file = %path.display(), restored = n, "leases restored");
                    }
                    Err(e) => warn!(network, error = %ErrorChain(&e), "leases not restored"),
                }
                Some(LeasesStore {
                    path,
                    generation: u64::MAX,
                })
            }
            _ => None,
        };
        let mut port = GatewayPort {
            gateway,
            rng,
            dns: Slots::new(MAX_DNS_SOCKETS),
            leases,
            snapshot: Arc::default(),
            stats: GatewayPortStats::default(),
            log: RateLimited::default(),
        };
        port.save_leases(now);
        Ok(port)
    }

    /// The gateway's MAC.
    pub fn mac(&self) -> EthernetAddress {
        self.gateway.mac()
    }

    /// The gateway's address.
    pub fn address(&self) -> Ipv4Address {
        self.gateway.address().address()
    }

    /// The state machines.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The bound leases, kept up to date.
    pub fn leases(&self) -> Arc<Mutex<Vec<LeaseRecord>>> {
        Arc::clone(&self.snapshot)
    }

    /// The counters.
    pub fn stats(&self) -> GatewayPortStats {
        self.stats
    }

    /// Takes a frame the switch sent to the gateway.
    pub fn handle(
        &mut self,
        now: Instant,
        frame: &[u8],
        out: &mut Outbox,
        reg: &mut Registry,
    ) -> Handoff {
        match self.gateway.handle(now, frame, &mut self.rng) {
            Action::Reply(reply) => out.frame(reply),
            Action::DnsUpstream(query) => self.send_query(now, query, reg),
            Action::Egress => return Handoff::Egress,
            Action::Local => return Handoff::Local,
            Action::Consumed => {}
            Action::Drop(bridge_core::gateway::DropReason::NotForGateway) => {}
            Action::Drop(reason) => {
                self.stats.dropped += 1;
                self.log
                    .warn(now, || format!("gateway dropped a guest's frame: {reason}"));
            }
        }
        self.save_leases(now);
        Handoff::None
    }

    fn send_query(&mut self, now: Instant, query: UpstreamQuery, reg: &mut Registry) {
        let UpstreamQuery { upstream, payload } = query;
        let sent = Socket::new(
            Domain::for_address(upstream),
            Type::DGRAM,
            Some(Protocol::UDP),
        )
        .and_then(|s| {
            s.set_nonblocking(true)?;
            // Connected: the kernel picks a random source port and passes only the upstream's
            // datagrams.
            s.connect(&upstream.into())?;
            s.send(&payload)?;
            Ok(s)
        });
        let socket = match sent {
            Ok(s) => s,
            Err(e) => {
                self.stats.dns_send_failed += 1;
                return self.log.warn(now, || {
                    format!("a DNS query to {upstream} could not be sent: {e}")
                });
            }
        };
        let expires = now + DNS_SOCKET_LIFETIME;
        if self.dns.is_full() {
            if let Some(oldest) = self.dns.oldest_by(|d| d.expires) {
                if let Some(d) = self.dns.remove(oldest) {
                    reg.retire(d.socket);
                }
            }
        }
        let entry = DnsSocket {
            socket,
            upstream,
            expires,
        };
        match self.dns.insert(entry) {
            Ok(index) => {
                if let Some(d) = self.dns.get(index) {
                    reg.watch(&d.socket, Token::new(Kind::Dns, index));
                }
            }
            Err(entry) => {
                self.stats.dns_send_failed += 1;
                reg.retire(entry.socket);
            }
        }
    }

    /// A DNS socket is ready: takes its answer.
    pub fn on_dns_socket(&mut self, index: usize, out: &mut Outbox, reg: &mut Registry) {
        let Some(d) = self.dns.get(index) else {
            return;
        };
        let mut buf = [0u8; 65536];
        let n = match std::io::Read::read(&mut &d.socket, &mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => 0,
        };
        let upstream = d.upstream;
        if let Some(d) = self.dns.remove(index) {
            reg.retire(d.socket);
        }
        if n == 0 {
            return;
        }
        if let Action::Reply(frame) = self.gateway.handle_dns_answer(upstream, &buf[..n]) {
            out.frame(frame);
        }
    }

    /// Runs the timers due at `now`: the gateway's (DNS timeouts, ARP and lease expiry), DNS
    /// sockets past their time; saves the leases when they changed. Returns when next to run.
    pub fn poll(&mut self, now: Instant, out: &mut Outbox, reg: &mut Registry) -> Option<Instant> {
        for frame in self.gateway.poll(now) {
            out.frame(frame);
        }
        let expired: Vec<usize> = self
            .dns
            .iter()
            .filter(|(_, d)| d.expires <= now)
            .map(|(i, _)| i)
            .collect();
        for i in expired {
            if let Some(d) = self.dns.remove(i) {
                reg.retire(d.socket);
            }
        }
        self.save_leases(now);
        let dns = self.dns.iter().map(|(_, d)| d.expires).min();
        [self.gateway.poll_at(), dns].into_iter().flatten().min()
    }

    /// Sends `out`'s frames with `send`, addressing frames for guests by the ARP table; asks
    /// (once per address and round) for guests it does not know.
    pub fn flush(&mut self, now: Instant, out: &mut Outbox, mut send: impl FnMut(&[u8])) {
        let mut asked = HashSet::new();
        let mut unresolved = Vec::new();
        let arp = self.gateway.arp_table();
        out.drain(
            |ip| arp.lookup(now, ip),
            &mut send,
            |ip| unresolved.push(ip),
        );
        for ip in unresolved {
            self.stats.unresolved += 1;
            if asked.insert(ip) {
                send(&self.gateway.arp_request(ip));
            }
        }
    }

    /// Puts in the Ethernet destination of `frame`, an IPv4 packet the host sends to the
    /// network: the guest's MAC from the ARP table, or broadcast. Returns false when the frame
    /// is not to be sent: not IPv4, multicast, or for an address the table does not know (an
    /// ARP request for it is queued into `out` instead; the sender retransmits).
    pub fn address_to_guest(&mut self, now: Instant, frame: &mut [u8], out: &mut Outbox) -> bool {
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return false;
        };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return false;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            return false;
        };
        let dst = ip.dst_addr();
        let subnet_broadcast = self.gateway.address().network().broadcast();
        let mac = if dst.is_broadcast() || Some(dst) == subnet_broadcast {
            EthernetAddress::BROADCAST
        } else if dst.is_multicast() {
            return false;
        } else if let Some(mac) = self.gateway.arp_table().lookup(now, dst) {
            mac
        } else {
            self.stats.unresolved += 1;
            out.frame(self.gateway.arp_request(dst));
            return false;
        };
        EthernetFrame::new_unchecked(frame).set_dst_addr(mac);
        true
    }

    /// Writes the leases file (and the snapshot) when the bound leases changed.
    fn save_leases(&mut self, now: Instant) {
        let Some(dhcp) = self.gateway.dhcp() else {
            return;
        };
        let generation = dhcp.leases().generation();
        let Some(store) = &mut self.leases else {
            return;
        };
        if store.generation == generation {
            return;
        }
        let records = dhcp.leases().records(now);
        if let Err(e) = leases_file::store(&store.path, &records) {
            self.log
                .warn(now, || format!("leases not saved: {}", ErrorChain(&e)));
        }
        store.generation = generation;
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = records;
    }
}

/// An error with its causes, for a log line.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
