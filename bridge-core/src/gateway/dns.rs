//! The gateway's DNS service: names of leased guests answered locally, everything else
//! forwarded to upstream resolvers, as dnsmasq does for libvirt's networks.
//!
//! Local names: a guest's DHCP hostname `h` answers as `h` and as `h.<domain>` (A), and its
//! address answers PTR `<reversed>.in-addr.arpa` for the network. Unknown names under the domain
//! (or single-label names) and unknown addresses of the network get NXDOMAIN, not forwarded.
//!
//! Forwarding: each query gets a fresh random ID for its upstream (from the caller's
//! cryptographic RNG). An answer is taken only when it comes from the upstream address the query
//! went to, with that ID, and repeats the question; anything else is dropped and counted, and
//! the query stays pending. Pending queries are bounded; a full table and a query not answered
//! in time get SERVFAIL. A query's EDNS payload size is lowered to what fits the network's MTU;
//! an answer too big for the client is replaced by a truncated one (TC), so it retries over TCP.
//!
//! DNS messages are parsed and built with `simple-dns`; only the ID and the EDNS payload size
//! are patched in place, so forwarded messages keep everything else (EDNS flags, options) as sent.

use std::collections::HashMap;
use std::net::SocketAddr;

use rand_core::CryptoRng;
use simple_dns::rdata::{RData, A, PTR};
use simple_dns::{
    Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, OPCODE, QCLASS, QTYPE, RCODE, TYPE,
};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};

/// Default time an upstream has to answer before the client gets SERVFAIL.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on queries waiting for upstream answers (dnsmasq's `dns-forward-max`).
pub const DEFAULT_MAX_PENDING: usize = 150;
/// Default EDNS UDP payload size offered upstream (the DNS flag day 2020 value).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1232;
/// UDP payload a client without EDNS accepts (RFC 1035).
const PLAIN_UDP_PAYLOAD: usize = 512;
/// Tries to draw an upstream ID not in use before giving up.
const ID_DRAWS: usize = 16;
/// Length of the DNS header.
const HEADER_LEN: usize = 12;
/// The OPT pseudo-record's type.
const TYPE_OPT: u16 = 41;

/// How DNS is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Upstream resolvers, used in turn (the host's resolv.conf nameservers by default, in the
    /// daemon).
    pub upstreams: Vec<SocketAddr>,
    /// Time an upstream has to answer.
    pub timeout: Duration,
    /// Bound on pending forwarded queries.
    pub max_pending: usize,
    /// TTL of local answers (dnsmasq's `local-ttl`, 0 by default).
    pub local_ttl: u32,
    /// Largest EDNS UDP payload size forwarded upstream.
    pub max_udp_payload: u16,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            local_ttl: 0,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
        }
    }
}

/// The guest end of a DNS query: where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DnsClient {
    /// The guest's MAC.
    pub mac: EthernetAddress,
    /// The guest's address.
    pub ip: Ipv4Address,
    /// The guest's UDP port.
    pub port: u16,
}

/// The names answered locally (the DHCP leases, in the gateway).
pub trait LocalNames {
    /// The address of the guest named `hostname` (one label, any case).
    fn address_of(&self, hostname: &str) -> Option<Ipv4Address>;
    /// The hostname of the guest at `ip`.
    fn name_of(&self, ip: Ipv4Address) -> Option<String>;
}

/// Why a DNS message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsDrop {
    /// Not a parseable DNS message.
    #[error("malformed DNS message")]
    Malformed,
    /// A response sent to the server port, or a query from upstream.
    #[error("DNS message of the wrong direction")]
    WrongDirection,
    /// An answer matching no pending query (unknown upstream address or ID).
    #[error("DNS answer matches no pending query")]
    UnknownAnswer,
    /// An answer whose question differs from the pending query's.
    #[error("DNS answer repeats another question")]
    QuestionMismatch,
}

/// What to do with a guest's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsOutcome {
    /// Send this DNS message back to the client.
    Answer(Vec<u8>),
    /// Send `query` to `upstream`; its answer comes back through
    /// [`DnsForwarder::handle_answer`].
    Forward {
        /// The upstream resolver.
        upstream: SocketAddr,
        /// The query as it goes upstream (ID remapped).
        query: Vec<u8>,
    },
    /// Nothing to send.
    Drop(DnsDrop),
}

/// Counters of the DNS service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Queries answered from local names.
    pub local: u64,
    /// Queries forwarded upstream.
    pub forwarded: u64,
    /// Upstream answers relayed to clients.
    pub answered: u64,
    /// Queries that got SERVFAIL because no upstream answered in time.
    pub timeouts: u64,
    /// Queries that got SERVFAIL because the pending table was full or no upstream is set.
    pub refused: u64,
    /// Upstream messages dropped as unmatched or mismatched.
    pub mismatched: u64,
}

/// A question held while its query is pending.
#[derive(Debug, Clone)]
struct PendingQuery {
    client: DnsClient,
    client_id: u16,
    question: Question<'static>,
    recursion_desired: bool,
    client_max: usize,
    deadline: Instant,
    query: Vec<u8>,
}

/// The DNS service state machine of one network.
#[derive(Debug, Clone)]
pub struct DnsForwarder {
    config: DnsConfig,
    network: Ipv4Cidr,
    domain: Vec<String>,
    max_reply: usize,
    pending: HashMap<(SocketAddr, u16), PendingQuery>,
    next_upstream: usize,
    stats: DnsStats,
}

impl DnsForwarder {
    /// A DNS service for `network`, answering local names under `domain` (dotted, e.g.
    /// `"vm.test"`) if given, whose replies fit in `max_reply` bytes of UDP payload (the MTU less
    /// IPv4 and UDP headers).
    pub fn new(
        config: DnsConfig,
        network: Ipv4Cidr,
        domain: Option<&str>,
        max_reply: usize,
    ) -> Self {
        let domain = domain
            .map(|d| {
                d.trim_end_matches('.')
                    .split('.')
                    .filter(|l| !l.is_empty())
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            config,
            network: network.network(),
            domain,
            max_reply: max_reply.max(PLAIN_UDP_PAYLOAD),
            pending: HashMap::new(),
            next_upstream: 0,
            stats: DnsStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> DnsStats {
        self.stats
    }

    /// Number of queries waiting for upstream answers.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The earliest time [`DnsForwarder::poll`] has something to do.
    pub fn poll_at(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Handles a query `payload` from `client` at `now`.
    pub fn handle_query<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        client: DnsClient,
        payload: &[u8],
        names: &dyn LocalNames,
        rng: &mut R,
    ) -> DnsOutcome {
        let Ok(query) = Packet::parse(payload) else {
            return DnsOutcome::Drop(DnsDrop::Malformed);
        };
        if query.has_flags(PacketFlag::RESPONSE) {
            return DnsOutcome::Drop(DnsDrop::WrongDirection);
        }
        if query.opcode() != OPCODE::StandardQuery {
            return DnsOutcome::Answer(error_reply(&query, RCODE::NotImplemented));
        }
        let [question] = query.questions.as_slice() else {
            return DnsOutcome::Answer(error_reply(&query, RCODE::FormatError));
        };
        if let Some(reply) = self.local_answer(&query, question, names) {
            self.stats.local += 1;
            return DnsOutcome::Answer(reply);
        }
        self.forward(now, client, payload, &query, question, rng)
    }

    /// Handles a message `payload` that came from `from`; on a match, returns the client and the
    /// answer to send it.
    pub fn handle_answer(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(DnsClient, Vec<u8>), DnsDrop> {
        let result = self.match_answer(from, payload);
        match result {
            Ok(_) => self.stats.answered += 1,
            Err(_) => self.stats.mismatched += 1,
        }
        result
    }

    fn match_answer(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(DnsClient, Vec<u8>), DnsDrop> {
        let answer = Packet::parse(payload).map_err(|_| DnsDrop::Malformed)?;
        if !answer.has_flags(PacketFlag::RESPONSE) {
            return Err(DnsDrop::WrongDirection);
        }
        let key = (from, answer.id());
        let pending = self.pending.get(&key).ok_or(DnsDrop::UnknownAnswer)?;
        match answer.questions.as_slice() {
            [q] if same_question(q, &pending.question) => {}
            _ => return Err(DnsDrop::QuestionMismatch),
        }
        let pending = self.pending.remove(&key).ok_or(DnsDrop::UnknownAnswer)?;
        let reply = if payload.len() > pending.client_max {
            truncated_reply(&pending, &answer)
        } else {
            let mut reply = payload.to_vec();
            reply[..2].copy_from_slice(&pending.client_id.to_be_bytes());
            reply
        };
        Ok((pending.client, reply))
    }

    /// Expires queries unanswered at `now`, returning the SERVFAIL answer for each client.
    pub fn poll(&mut self, now: Instant) -> Vec<(DnsClient, Vec<u8>)> {
        let expired: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        expired
            .into_iter()
            .filter_map(|k| self.pending.remove(&k))
            .map(|p| {
                self.stats.timeouts += 1;
                (p.client, servfail(&p))
            })
            .collect()
    }

    fn forward<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        client: DnsClient,
        payload: &[u8],
        query: &Packet<'_>,
        question: &Question<'_>,
        rng: &mut R,
    ) -> DnsOutcome {
        // A client repeating a pending query gets the same upstream query sent again.
        if let Some(((upstream, _), p)) = self.pending.iter().find(|(_, p)| {
            p.client == client && p.client_id == query.id() && same_question(question, &p.question)
        }) {
            return DnsOutcome::Forward {
                upstream: *upstream,
                query: p.query.clone(),
            };
        }
        let client_max = match query.opt() {
            Some(opt) => usize::from(opt.udp_packet_size).clamp(PLAIN_UDP_PAYLOAD, self.max_reply),
            None => PLAIN_UDP_PAYLOAD,
        };
        let mut pending = PendingQuery {
            client,
            client_id: query.id(),
            question: question.clone().into_owned(),
            recursion_desired: query.has_flags(PacketFlag::RECURSION_DESIRED),
            client_max,
            deadline: now + self.config.timeout,
            query: Vec::new(),
        };
        if self.config.upstreams.is_empty() || self.pending.len() >= self.config.max_pending {
            self.stats.refused += 1;
            return DnsOutcome::Answer(servfail(&pending));
        }
        let upstream = self.config.upstreams[self.next_upstream % self.config.upstreams.len()];
        self.next_upstream = self.next_upstream.wrapping_add(1);
        let Some(id) = (0..ID_DRAWS)
            .map(|_| rng.next_u32() as u16)
            .find(|id| !self.pending.contains_key(&(upstream, *id)))
        else {
            self.stats.refused += 1;
            return DnsOutcome::Answer(servfail(&pending));
        };
        let mut upstream_query = payload.to_vec();
        upstream_query[..2].copy_from_slice(&id.to_be_bytes());
        if let Some(opt) = query.opt() {
            let rdlen = opt.opt_codes.iter().map(|c| 4 + c.data.len()).sum();
            let max = self.config.max_udp_payload.min(self.max_reply as u16);
            clamp_edns_payload(&mut upstream_query, rdlen, max);
        }
        pending.query = upstream_query.clone();
        self.pending.insert((upstream, id), pending);
        self.stats.forwarded += 1;
        DnsOutcome::Forward {
            upstream,
            query: upstream_query,
        }
    }

    /// The local answer to `question`, if the name is one the gateway answers for.
    fn local_answer(
        &self,
        query: &Packet<'_>,
        question: &Question<'_>,
        names: &dyn LocalNames,
    ) -> Option<Vec<u8>> {
        if !matches!(question.qclass, QCLASS::CLASS(CLASS::IN) | QCLASS::ANY) {
            return None;
        }
        let labels: Vec<String> = question
            .qname
            .get_labels()
            .iter()
            .map(|l| String::from_utf8_lossy(l.as_ref()).to_ascii_lowercase())
            .collect();
        let qtype = question.qtype;
        let wants = |t: TYPE| qtype == QTYPE::TYPE(t) || qtype == QTYPE::ANY;

        if let Some(ip) = reverse_v4(&labels) {
            if !self.network.contains_addr(&ip) {
                return None;
            }
            let name = names.name_of(ip);
            let exists = name.is_some();
            let record = name.filter(|_| wants(TYPE::PTR)).and_then(|host| {
                let fqdn = std::iter::once(host.as_str())
                    .chain(self.domain.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(".");
                let target = Name::new(&fqdn).ok()?.into_owned();
                Some(RData::PTR(PTR(target)))
            });
            return Some(self.reply(query, question, exists, record));
        }

        let host = match labels.as_slice() {
            [] => return None,
            [host] => host,
            [host, rest @ ..] if !self.domain.is_empty() && rest == self.domain.as_slice() => host,
            _ if !self.domain.is_empty() && labels.ends_with(&self.domain) => {
                // The domain itself, or a name under it that no guest has.
                let exists = labels.len() == self.domain.len();
                return Some(self.reply(query, question, exists, None));
            }
            _ => return None,
        };
        let address = names.address_of(host);
        let record = address
            .filter(|_| wants(TYPE::A))
            .map(|ip| RData::A(A::from(ip)));
        Some(self.reply(query, question, address.is_some(), record))
    }

    /// An authoritative reply: `record` as the answer, or no answer (NODATA when the name
    /// `exists`, NXDOMAIN otherwise).
    fn reply(
        &self,
        query: &Packet<'_>,
        question: &Question<'_>,
        exists: bool,
        record: Option<RData<'static>>,
    ) -> Vec<u8> {
        let mut reply = Packet::new_reply(query.id());
        reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER | PacketFlag::RECURSION_AVAILABLE);
        if query.has_flags(PacketFlag::RECURSION_DESIRED) {
            reply.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        if !exists {
            *reply.rcode_mut() = RCODE::NameError;
        }
        reply.questions.push(question.clone());
        if let Some(rdata) = record {
            reply.answers.push(ResourceRecord::new(
                question.qname.clone(),
                CLASS::IN,
                self.config.local_ttl,
                rdata,
            ));
        }
        build(&reply)
    }
}

/// The message bytes of `packet`. Packets built here hold only names that were parsed or
/// validated, so building does not fail; if it did, the client would get an empty reply
/// dropped as malformed.
fn build(packet: &Packet<'_>) -> Vec<u8> {
    packet.build_bytes_vec_compressed().unwrap_or_default()
}

/// True when `a` and `b` ask the same (name ignoring ASCII case, type, class).
fn same_question(a: &Question<'_>, b: &Question<'_>) -> bool {
    a.qname == b.qname
        && u16::from(a.qtype) == u16::from(b.qtype)
        && u16::from(a.qclass) == u16::from(b.qclass)
        && a.unicast_response == b.unicast_response
}

/// The IPv4 address named by `d.c.b.a.in-addr.arpa`.
fn reverse_v4(labels: &[String]) -> Option<Ipv4Address> {
    let [d, c, b, a, in_addr, arpa] = labels else {
        return None;
    };
    if in_addr != "in-addr" || arpa != "arpa" {
        return None;
    }
    let octet = |s: &String| s.parse::<u8>().ok().filter(|_| !s.starts_with('+'));
    Some(Ipv4Address::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

/// A reply to `query` carrying only its question and `rcode`.
fn error_reply(query: &Packet<'_>, rcode: RCODE) -> Vec<u8> {
    let mut reply = Packet::new_reply(query.id());
    *reply.opcode_mut() = query.opcode();
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    *reply.rcode_mut() = rcode;
    if rcode != RCODE::FormatError {
        reply.questions.clone_from(&query.questions);
    }
    build(&reply)
}

/// SERVFAIL for a pending query.
fn servfail(p: &PendingQuery) -> Vec<u8> {
    let mut reply = Packet::new_reply(p.client_id);
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if p.recursion_desired {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    *reply.rcode_mut() = RCODE::ServerFailure;
    reply.questions.push(p.question.clone());
    build(&reply)
}

/// The header and question of `answer`, flagged truncated, for a client that cannot take it.
fn truncated_reply(p: &PendingQuery, answer: &Packet<'_>) -> Vec<u8> {
    let mut reply = Packet::new_reply(p.client_id);
    for flag in [
        PacketFlag::AUTHORITATIVE_ANSWER,
        PacketFlag::RECURSION_DESIRED,
        PacketFlag::RECURSION_AVAILABLE,
        PacketFlag::AUTHENTIC_DATA,
        PacketFlag::CHECKING_DISABLED,
    ] {
        if answer.has_flags(flag) {
            reply.set_flags(flag);
        }
    }
    reply.set_flags(PacketFlag::TRUNCATION);
    *reply.rcode_mut() = answer.rcode();
    reply.questions.push(p.question.clone());
    build(&reply)
}

/// Lowers the EDNS UDP payload size of `query` to at most `max`, when its OPT record (of
/// `rdlen` bytes of options) is its only record after the question, as in every stub query.
/// Any other layout is left as it is.
fn clamp_edns_payload(query: &mut [u8], rdlen: usize, max: u16) {
    if query.len() < HEADER_LEN || query[6..HEADER_LEN] != [0, 0, 0, 0, 0, 1] {
        return;
    }
    // OPT: root name (1), type (2), class = payload size (2), TTL (4), rdlength (2), options.
    let Some(start) = query
        .len()
        .checked_sub(11 + rdlen)
        .filter(|&s| s >= HEADER_LEN)
    else {
        return;
    };
    let rr = &query[start..];
    if rr[0] != 0
        || u16::from_be_bytes([rr[1], rr[2]]) != TYPE_OPT
        || usize::from(u16::from_be_bytes([rr[9], rr[10]])) != rdlen
    {
        return;
    }
    let size = u16::from_be_bytes([rr[3], rr[4]]);
    if size > max {
        query[start + 3..start + 5].copy_from_slice(&max.to_be_bytes());
    }
}
