//! Connection tracking: the flows a network's guests have open, as Linux's nf_conntrack keeps
//! them for iptables' `state`/`ctstate` matches and for NAT.
//!
//! A flow is keyed by its network (zone), protocol and the two endpoints (address and port, or
//! ICMP echo identifier); its first packet fixes the original direction, the other is the reply
//! direction. [`Conntrack::track`] classifies each packet as a policy sees it ([`CtState`]):
//! the first packet of a flow is `New`, later packets the same way are `New` until a reply was
//! seen and `Established` after, packets the other way are `Reply`, ICMP errors about a tracked
//! flow are `Related`, and packets that fit no flow or break the TCP state machine are
//! `Invalid`. TCP follows the connection's state (SYN_SENT ... TIME_WAIT, CLOSE) with Linux's
//! timeouts; UDP flows live 30 s unreplied and 120 s once replied; ICMP echo flows 30 s.
//!
//! Each flow carries a slot for a cached policy verdict of any small `Copy` type `V` (the policy
//! host's verdict; `u32` by default), set with [`Conntrack::set_verdict`] and returned by every
//! later [`Conntrack::track`], so established flows skip the policy.
//!
//! The table is bounded. When it is full, a new flow is refused, or (the default) the oldest
//! flow not yet assured (no reply seen, or TCP not established) in the same shard makes room, as
//! Linux's early_drop does; both are counted. The table is split into shards behind their own
//! locks, picked by a keyed hash of the flow, so datapath threads tracking different flows do
//! not wait on each other. A packet's flow key is hashed once (foldhash, seeded at random per
//! table): the same hash picks the shard and finds the flow in it, with one lookup per packet.
//!
//! A thread may skip tracking packets that would change nothing but a flow's timeout
//! ([`crate::flow_cache::FlowCache`]); the table's [`epoch`](Conntrack::epoch) moves whenever
//! a flow changes in a way such a packet would not see: it is removed (expired, evicted,
//! replaced), a TCP flow leaves ESTABLISHED, or its verdict is changed or cleared.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket, IPV4_HEADER_LEN,
    TCP_HEADER_LEN, UDP_HEADER_LEN,
};

/// Default bound on tracked flows.
pub const DEFAULT_CAPACITY: usize = 65536;
/// Default number of shards.
pub const DEFAULT_SHARDS: usize = 64;

/// Why a packet could not be tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConntrackError {
    /// Not a well-formed IPv4 packet (length, version, header checksum, or a truncated
    /// transport header).
    #[error("malformed packet")]
    Malformed,
    /// A fragment after the first: it has no transport header to track.
    #[error("non-initial fragment")]
    Fragment,
    /// A protocol, or an ICMP type, that is not tracked.
    #[error("untracked protocol")]
    Unsupported,
    /// The table is full and no flow could make room: the packet's new flow is refused.
    #[error("conntrack table full")]
    TableFull,
}

/// A tracked transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP echo (the port of both endpoints is the echo identifier).
    Icmp,
}

/// One end of a flow: an address and a port (or ICMP echo identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The address.
    pub addr: IpAddr,
    /// The port, or the ICMP echo identifier.
    pub port: u16,
}

/// A packet's flow as it travels: network, protocol, source and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    /// The network (conntrack zone) the packet is in.
    pub zone: u32,
    /// The protocol.
    pub protocol: Protocol,
    /// The sender.
    pub src: Endpoint,
    /// The receiver.
    pub dst: Endpoint,
}

impl FlowTuple {
    /// The same flow seen the other way.
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            ..*self
        }
    }

    /// The key of the flow, the same both ways.
    fn key(&self) -> FlowKey {
        let (lo, hi) = if self.src <= self.dst {
            (self.src, self.dst)
        } else {
            (self.dst, self.src)
        };
        FlowKey {
            zone: self.zone,
            protocol: self.protocol,
            lo,
            hi,
        }
    }
}

/// A flow's key, independent of direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    zone: u32,
    protocol: Protocol,
    lo: Endpoint,
    hi: Endpoint,
}

impl FlowKey {
    /// The key's hash under `state`: three words for IPv4 (zone and protocol, then each end's
    /// address and port), where a derived `Hash` writes seven.
    #[inline]
    fn hash(&self, state: &RandomState) -> u64 {
        let mut h = state.build_hasher();
        h.write_u64(u64::from(self.zone) << 8 | self.protocol as u64);
        for end in [&self.lo, &self.hi] {
            match end.addr {
                IpAddr::V4(a) => h.write_u64(u64::from(a.to_bits()) << 16 | u64::from(end.port)),
                IpAddr::V6(a) => {
                    h.write_u128(a.to_bits());
                    h.write_u16(end.port);
                }
            }
        }
        h.finish()
    }
}

/// The TCP flags conntrack reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

impl TcpFlags {
    /// The flags of a TCP header's flags byte (its 14th).
    #[inline]
    pub(crate) fn of(byte: u8) -> Self {
        TcpFlags {
            fin: byte & 0x01 != 0,
            syn: byte & 0x02 != 0,
            rst: byte & 0x04 != 0,
            ack: byte & 0x10 != 0,
        }
    }
}

/// What a packet is, as far as tracking goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// A TCP segment with these flags.
    Tcp(TcpFlags),
    /// A UDP datagram.
    Udp,
    /// An ICMP echo request (`true`) or reply (`false`).
    IcmpEcho {
        /// True for a request.
        request: bool,
    },
    /// An ICMP error quoting a packet of the flow `quoted` (as that packet travelled).
    IcmpError {
        /// The quoted packet's flow.
        quoted: FlowTuple,
    },
}

/// What conntrack needs of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// The packet's flow (for an ICMP error: its own addresses, ports 0).
    pub tuple: FlowTuple,
    /// Its kind.
    pub kind: PacketKind,
}

impl PacketMeta {
    /// Reads an IPv4 packet (from its IP header on) of network `zone`.
    pub fn parse_ipv4(zone: u32, packet: &[u8]) -> Result<Self, ConntrackError> {
        Self::parse_ipv4_head(zone, packet, packet.len())
    }

    /// Reads an IPv4 packet of `packet_len` bytes of which only the first bytes, `head`, are
    /// at hand (a datapath that peeks at headers): they must reach past the transport header
    /// (for an ICMP error, past the quoted packet's first 8 transport bytes). Lengths are
    /// checked against `packet_len` as [`parse_ipv4`](Self::parse_ipv4) checks them against
    /// the whole packet.
    pub fn parse_ipv4_head(
        zone: u32,
        head: &[u8],
        packet_len: usize,
    ) -> Result<Self, ConntrackError> {
        Ipv4Fields::parse(zone, head, packet_len)?.meta()
    }
}

/// What conntrack reads of an IPv4 packet, read from its bytes and checked as
/// [`PacketMeta::parse_ipv4_head`] checks them, before it builds the [`PacketMeta`]
/// ([`meta`](Self::meta)). A [`crate::flow_cache::FlowCache`] is looked up by them as they
/// are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Fields<'a> {
    /// The network (conntrack zone).
    pub zone: u32,
    /// The source address.
    pub src: Ipv4Addr,
    /// The destination address.
    pub dst: Ipv4Addr,
    /// The transport header's fields.
    pub transport: Transport<'a>,
}

/// What conntrack reads of a transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// TCP: ports and flags.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// The header's flags byte, as it is: [`TcpFlags::of`] reads what conntrack needs
        /// of it (the flow cache tests it without unpacking it).
        flags: u8,
    },
    /// UDP: ports.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// An ICMP echo request (`request`) or reply.
    IcmpEcho {
        /// The echo identifier.
        ident: u16,
        /// True for a request.
        request: bool,
    },
    /// An ICMP error.
    IcmpError {
        /// The bytes after its ICMP header (the quoted packet) at hand.
        quoted: &'a [u8],
    },
}

/// The big-endian 16 bits at `at` of a fixed-size header.
fn be16<const N: usize>(header: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([header[at], header[at + 1]])
}

impl<'a> Ipv4Fields<'a> {
    /// Reads the fields of an IPv4 packet of network `zone` and `packet_len` bytes whose first
    /// bytes are `head`, as [`PacketMeta::parse_ipv4_head`] does.
    #[inline]
    pub fn parse(zone: u32, head: &'a [u8], packet_len: usize) -> Result<Self, ConntrackError> {
        let Some(ip) = head.first_chunk::<IPV4_HEADER_LEN>() else {
            return Err(ConntrackError::Malformed);
        };
        // Version 4 without options, the common case, checked on the fixed header alone.
        let header_len = if Self::is_plain(ip) {
            IPV4_HEADER_LEN
        } else {
            ipv4_header_len(head)?
        };
        Self::with_header(zone, ip, head, header_len, packet_len)
    }

    /// As [`parse`](Self::parse), for a packet whose IPv4 header is the plain one (version 4,
    /// no options, right checksum); `None` for any other, which [`parse`](Self::parse) reads.
    /// It calls nothing, so a caller that inlines it keeps its values in registers it need
    /// not save.
    #[inline]
    pub fn parse_plain(
        zone: u32,
        head: &'a [u8],
        packet_len: usize,
    ) -> Option<Result<Self, ConntrackError>> {
        let ip = head.first_chunk::<IPV4_HEADER_LEN>()?;
        Self::is_plain(ip).then(|| Self::with_header(zone, ip, head, IPV4_HEADER_LEN, packet_len))
    }

    /// Whether `ip` is a version 4 header without options and with the right checksum.
    #[inline(always)]
    fn is_plain(ip: &[u8; IPV4_HEADER_LEN]) -> bool {
        ip[0] == 0x45 && ipv4_fixed_header_checksum_ok(ip)
    }

    /// The fields of a packet whose IPv4 header of `header_len` bytes, at the start of `head`
    /// (its first 20 bytes `ip`), was found well formed: checks its lengths (the packet has
    /// `packet_len` bytes) and fragment offset, then reads its transport header.
    #[inline(always)]
    fn with_header(
        zone: u32,
        ip: &[u8; IPV4_HEADER_LEN],
        head: &'a [u8],
        header_len: usize,
        packet_len: usize,
    ) -> Result<Self, ConntrackError> {
        let malformed = ConntrackError::Malformed;
        // The transport length of the whole packet: its total length (at least the header's,
        // at most the packet's) less the header. Once the bytes at hand are within the packet,
        // `packet_len - header_len` does not wrap, and a total length below the header's
        // wraps to more than it.
        let l4_len = usize::from(be16(ip, 2)).wrapping_sub(header_len);
        if head.len() > packet_len || l4_len > packet_len.wrapping_sub(header_len) {
            return Err(malformed);
        }
        // The bytes at hand after the header.
        let l4 = head.get(header_len..).ok_or(malformed)?;
        if be16(ip, 6) & IPV4_FRAG_OFFSET != 0 {
            return Err(ConntrackError::Fragment);
        }
        // TCP and UDP read their header from the bytes at hand, which may reach past the
        // packet's transport bytes (Ethernet padding): their length checks against `l4_len`
        // refuse a header that does not fit in the packet. ICMP has none: its bytes are cut
        // to the packet first.
        let transport = match IpProtocol::from(ip[9]) {
            IpProtocol::Tcp => {
                let Some(tcp) = l4.first_chunk::<TCP_HEADER_LEN>() else {
                    return Err(malformed);
                };
                let tcp_header = usize::from(tcp[12] >> 4) * 4;
                if tcp_header < TCP_HEADER_LEN || tcp_header > l4_len {
                    return Err(malformed);
                }
                Transport::Tcp {
                    src_port: be16(tcp, 0),
                    dst_port: be16(tcp, 2),
                    flags: tcp[13],
                }
            }
            IpProtocol::Udp => {
                let Some(udp) = l4.first_chunk::<UDP_HEADER_LEN>() else {
                    return Err(malformed);
                };
                let udp_len = usize::from(be16(udp, 4));
                if udp_len < UDP_HEADER_LEN || udp_len > l4_len {
                    return Err(malformed);
                }
                Transport::Udp {
                    src_port: be16(udp, 0),
                    dst_port: be16(udp, 2),
                }
            }
            IpProtocol::Icmp => {
                let l4 = &l4[..l4_len.min(l4.len())];
                let Some((icmp, quoted)) = l4.split_first_chunk::<ICMP_HEADER_LEN>() else {
                    return Err(malformed);
                };
                match Icmpv4Message::from(icmp[0]) {
                    m @ (Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply) => {
                        Transport::IcmpEcho {
                            ident: be16(icmp, 4),
                            request: m == Icmpv4Message::EchoRequest,
                        }
                    }
                    Icmpv4Message::DstUnreachable
                    | Icmpv4Message::TimeExceeded
                    | Icmpv4Message::ParamProblem
                    | Icmpv4Message::Redirect => Transport::IcmpError { quoted },
                    _ => return Err(ConntrackError::Unsupported),
                }
            }
            _ => return Err(ConntrackError::Unsupported),
        };
        Ok(Ipv4Fields {
            zone,
            src: Ipv4Addr::from([ip[12], ip[13], ip[14], ip[15]]),
            dst: Ipv4Addr::from([ip[16], ip[17], ip[18], ip[19]]),
            transport,
        })
    }

    /// The packet as conntrack tracks it (an ICMP error's quoted packet read now).
    pub fn meta(&self) -> Result<PacketMeta, ConntrackError> {
        let (protocol, sport, dport, kind) = match self.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            } => (
                Protocol::Tcp,
                src_port,
                dst_port,
                PacketKind::Tcp(TcpFlags::of(flags)),
            ),
            Transport::Udp { src_port, dst_port } => {
                (Protocol::Udp, src_port, dst_port, PacketKind::Udp)
            }
            Transport::IcmpEcho { ident, request } => (
                Protocol::Icmp,
                ident,
                ident,
                PacketKind::IcmpEcho { request },
            ),
            Transport::IcmpError { quoted } => (
                Protocol::Icmp,
                0,
                0,
                PacketKind::IcmpError {
                    quoted: quoted_tuple(self.zone, quoted)?,
                },
            ),
        };
        Ok(PacketMeta {
            tuple: FlowTuple {
                zone: self.zone,
                protocol,
                src: Endpoint {
                    addr: IpAddr::V4(self.src),
                    port: sport,
                },
                dst: Endpoint {
                    addr: IpAddr::V4(self.dst),
                    port: dport,
                },
            },
            kind,
        })
    }
}

/// The fragment offset bits of an IPv4 header's flags and fragment offset word.
const IPV4_FRAG_OFFSET: u16 = 0x1fff;

/// Whether an IPv4 header's checksum is right: its 16-bit words add up, in one's complement,
/// to 0xffff. The sum is taken over wider words in the machine's byte order: wider words
/// only group 16-bit ones (2^16 is 1 modulo 0xffff), and the one's complement sum of
/// byte-swapped words is the byte-swapped sum (RFC 1071), 0xffff its own swap.
#[inline]
fn ipv4_header_checksum_ok(header: &[u8]) -> bool {
    match header.split_first_chunk::<IPV4_HEADER_LEN>() {
        Some((fixed, options)) => {
            // At most 10 words of options: their plain sum cannot overflow 64 bits.
            let options = options
                .chunks_exact(4)
                .map(|w| u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .sum();
            fold(add_ones(ipv4_fixed_header_sum(fixed), options)) == 0xffff
        }
        None => false,
    }
}

/// The length of the IPv4 header `head` starts with, if it is well formed: version 4, a
/// length (IHL) of at least 20 bytes, all at hand, and the right checksum.
#[inline(never)]
fn ipv4_header_len(head: &[u8]) -> Result<usize, ConntrackError> {
    let first = *head.first().ok_or(ConntrackError::Malformed)?;
    let header_len = usize::from(first & 0x0f) * 4;
    match head.get(..header_len) {
        Some(header)
            if first >> 4 == 4
                && header_len >= IPV4_HEADER_LEN
                && ipv4_header_checksum_ok(header) =>
        {
            Ok(header_len)
        }
        _ => Err(ConntrackError::Malformed),
    }
}

/// [`ipv4_header_checksum_ok`] for a header without options.
#[inline]
fn ipv4_fixed_header_checksum_ok(header: &[u8; IPV4_HEADER_LEN]) -> bool {
    fold(ipv4_fixed_header_sum(header)) == 0xffff
}

/// The one's complement sum of a header's first 20 bytes, in 64 bits: two 64-bit words and
/// a 32-bit one.
#[inline]
fn ipv4_fixed_header_sum(header: &[u8; IPV4_HEADER_LEN]) -> u64 {
    let (a, rest) = header.split_at(8);
    let (b, c) = rest.split_at(8);
    // Constant lengths: the conversions cannot fail.
    let word = |w: &[u8]| w.try_into().map_or(0, u64::from_ne_bytes);
    let last = c.try_into().map_or(0, u32::from_ne_bytes);
    add_ones(add_ones(word(a), word(b)), u64::from(last))
}

/// `a + b` in one's complement: the carry out added back in (it cannot carry again).
#[inline]
fn add_ones(a: u64, b: u64) -> u64 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u64::from(carry)
}

/// A one's complement sum folded to 16 bits (each half added to the other, carry included):
/// 0 only for 0, else in 1..=0xffff and equal to the sum modulo 0xffff, so 0xffff exactly
/// for a sum that is a non-zero multiple of it.
#[inline]
fn fold(sum: u64) -> u16 {
    let half = (sum.wrapping_add(sum.rotate_left(32)) >> 32) as u32;
    (half.wrapping_add(half.rotate_left(16)) >> 16) as u16
}

/// ICMP header (type, code, checksum and the echo identifier and sequence, or the unused word
/// of an error).
const ICMP_HEADER_LEN: usize = 8;

/// The flow of the packet an ICMP error quotes: its IPv4 header and at least 8 bytes after.
fn quoted_tuple(zone: u32, quoted: &[u8]) -> Result<FlowTuple, ConntrackError> {
    let ihl = usize::from(quoted.first().ok_or(ConntrackError::Malformed)? & 0x0f) * 4;
    if ihl < IPV4_HEADER_LEN || quoted.len() < ihl + 8 || quoted[0] >> 4 != 4 {
        return Err(ConntrackError::Malformed);
    }
    // The length checks above keep every accessor used below within `quoted`.
    let ip = Ipv4Packet::new_unchecked(quoted);
    let l4 = &quoted[ihl..];
    let (protocol, sport, dport) = match ip.next_header() {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_unchecked(l4);
            (Protocol::Tcp, tcp.src_port(), tcp.dst_port())
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_unchecked(l4);
            (Protocol::Udp, udp.src_port(), udp.dst_port())
        }
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_unchecked(l4);
            if !matches!(
                icmp.msg_type(),
                Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply
            ) {
                return Err(ConntrackError::Unsupported);
            }
            let id = icmp.echo_ident();
            (Protocol::Icmp, id, id)
        }
        _ => return Err(ConntrackError::Unsupported),
    };
    Ok(FlowTuple {
        zone,
        protocol,
        src: Endpoint {
            addr: IpAddr::V4(ip.src_addr()),
            port: sport,
        },
        dst: Endpoint {
            addr: IpAddr::V4(ip.dst_addr()),
            port: dport,
        },
    })
}

/// A packet's state as a policy sees it (iptables' `ctstate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// Opens a flow, or goes the original way before any reply.
    New,
    /// Goes the original way of a flow that has seen a reply.
    Established,
    /// Goes the reply way of a flow.
    Reply,
    /// An ICMP error about a tracked flow.
    Related,
    /// Fits no flow (a TCP segment other than SYN without one, an echo reply without request,
    /// an ICMP error about nothing tracked) or breaks the TCP state machine.
    Invalid,
}

/// Which way a packet goes in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The way of the flow's first packet.
    Original,
    /// The other way.
    Reply,
}

/// A TCP connection's state (Linux's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// SYN seen.
    SynSent,
    /// SYN answered (SYN+ACK, or a SYN the other way).
    SynRecv,
    /// Handshake completed.
    Established,
    /// One side sent FIN.
    FinWait,
    /// The FIN was acknowledged; the other side may still send.
    CloseWait,
    /// Both sides sent FIN; the last ACK is awaited.
    LastAck,
    /// Both FINs acknowledged.
    TimeWait,
    /// Reset.
    Close,
}

/// Flow lifetimes after their last packet, by state (Linux's nf_conntrack defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP SYN_SENT (120 s).
    pub tcp_syn_sent: Duration,
    /// TCP SYN_RECV (60 s).
    pub tcp_syn_recv: Duration,
    /// TCP ESTABLISHED (5 days).
    pub tcp_established: Duration,
    /// TCP FIN_WAIT (120 s).
    pub tcp_fin_wait: Duration,
    /// TCP CLOSE_WAIT (60 s).
    pub tcp_close_wait: Duration,
    /// TCP LAST_ACK (30 s).
    pub tcp_last_ack: Duration,
    /// TCP TIME_WAIT (120 s).
    pub tcp_time_wait: Duration,
    /// TCP CLOSE (10 s).
    pub tcp_close: Duration,
    /// UDP before a reply (30 s).
    pub udp_unreplied: Duration,
    /// UDP once replied (120 s).
    pub udp_assured: Duration,
    /// ICMP echo (30 s).
    pub icmp: Duration,
}

impl Timeouts {
    /// The shortest of them.
    pub fn shortest(&self) -> Duration {
        [
            self.tcp_syn_sent,
            self.tcp_syn_recv,
            self.tcp_established,
            self.tcp_fin_wait,
            self.tcp_close_wait,
            self.tcp_last_ack,
            self.tcp_time_wait,
            self.tcp_close,
            self.udp_unreplied,
            self.udp_assured,
            self.icmp,
        ]
        .into_iter()
        .min()
        .unwrap_or_default()
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_syn_recv: Duration::from_secs(60),
            tcp_established: Duration::from_secs(5 * 24 * 3600),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_close_wait: Duration::from_secs(60),
            tcp_last_ack: Duration::from_secs(30),
            tcp_time_wait: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_assured: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
        }
    }
}

/// What happens to a new flow when the table is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse it.
    DropNew,
    /// Evict the oldest unassured flow of its shard; refuse it if there is none (Linux's
    /// early_drop).
    #[default]
    EvictOldestUnassured,
}

/// The table's size and behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Bound on tracked flows.
    pub capacity: usize,
    /// Number of shards (locks).
    pub shards: usize,
    /// What a full table does with a new flow.
    pub overflow: Overflow,
    /// Lifetimes.
    pub timeouts: Timeouts,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            shards: DEFAULT_SHARDS,
            overflow: Overflow::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// Counters of the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    /// Flows created.
    pub created: u64,
    /// New flows refused because the table was full.
    pub dropped_full: u64,
    /// Unassured flows evicted to make room.
    pub evicted: u64,
    /// Packets classified invalid.
    pub invalid: u64,
    /// Flows removed on timeout.
    pub expired: u64,
}

/// A handle on one flow, to set its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRef {
    key: FlowKey,
    hash: u64,
    serial: u64,
    id: u64,
}

impl FlowRef {
    /// The flow's id: never 0, unique among the flows of its table for the table's lifetime
    /// (a flow that replaces an expired or closed one gets a new id).
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// The result of tracking a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked<V> {
    /// The packet's state.
    pub state: CtState,
    /// The flow (none for an invalid packet).
    pub flow: Option<FlowRef>,
    /// The packet's direction in the flow (original for an invalid packet).
    pub direction: Direction,
    /// The TCP state after the packet, for TCP.
    pub tcp: Option<TcpState>,
    /// The verdict cached on the flow.
    pub verdict: Option<V>,
}

impl<V> Tracked<V> {
    fn invalid() -> Self {
        Self {
            state: CtState::Invalid,
            flow: None,
            direction: Direction::Original,
            tcp: None,
            verdict: None,
        }
    }
}

/// A flow as the control plane lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo<V> {
    /// The flow's original direction.
    pub original: FlowTuple,
    /// TCP state, for TCP.
    pub tcp: Option<TcpState>,
    /// True once a reply was seen.
    pub replied: bool,
    /// True once assured (replied; for TCP, established).
    pub assured: bool,
    /// When the flow expires unless a packet comes.
    pub expires: Instant,
    /// The cached verdict.
    pub verdict: Option<V>,
}

#[derive(Debug, Clone)]
struct Flow<V> {
    key: FlowKey,
    /// The key's hash in its table.
    hash: u64,
    info: FlowInfo<V>,
    /// Which side sent the first FIN.
    fin_from: Option<Direction>,
    serial: u64,
}

#[derive(Debug)]
struct Shard<V> {
    flows: HashTable<Flow<V>>,
    /// Unassured flows by creation order (serial), with their hash, for early drop.
    unassured: BTreeMap<u64, u64>,
    next_serial: u64,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Self {
            flows: HashTable::new(),
            unassured: BTreeMap::new(),
            next_serial: 0,
        }
    }
}

/// The hash a flow is stored under (for the table's growth).
fn stored_hash<V>(flow: &Flow<V>) -> u64 {
    flow.hash
}

#[derive(Debug, Default)]
struct AtomicStats {
    created: AtomicU64,
    dropped_full: AtomicU64,
    evicted: AtomicU64,
    invalid: AtomicU64,
    expired: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The connection tracking table, shared by datapath threads (`&self` everywhere).
#[derive(Debug)]
pub struct Conntrack<V = u32> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: RandomState,
    count: AtomicUsize,
    config: ConntrackConfig,
    stats: AtomicStats,
    /// Moves on every change a cache of known flows must not miss (see the module docs).
    epoch: AtomicU64,
}

impl<V: Copy> Conntrack<V> {
    /// An empty table.
    pub fn new(config: ConntrackConfig) -> Self {
        let shards = (0..config.shards.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        Self {
            shards,
            hasher: RandomState::default(),
            count: AtomicUsize::new(0),
            config,
            stats: AtomicStats::default(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The table's epoch: it moves when a flow is removed, a TCP flow leaves ESTABLISHED, or a
    /// verdict is changed or cleared. What a thread cached of a flow under one epoch holds
    /// while the epoch stays.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// The lifetimes the table applies.
    pub fn timeouts(&self) -> &Timeouts {
        &self.config.timeouts
    }

    /// Number of flows held (including any expired but not yet swept).
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True when no flow is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters.
    pub fn stats(&self) -> ConntrackStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConntrackStats {
            created: load(&self.stats.created),
            dropped_full: load(&self.stats.dropped_full),
            evicted: load(&self.stats.evicted),
            invalid: load(&self.stats.invalid),
            expired: load(&self.stats.expired),
        }
    }

    /// The hash of `key`, and the index of its shard.
    fn locate(&self, key: &FlowKey) -> (u64, usize) {
        let hash = key.hash(&self.hasher);
        (hash, self.shard_of(hash))
    }

    /// The shard of a hash: bits 25..57 scaled to the shard count (a multiply, where a modulo
    /// would divide), clear of the bits the shard's table uses (the low ones to place a flow,
    /// the top 7 to tag it).
    fn shard_of(&self, hash: u64) -> usize {
        let bits = u128::from((hash >> 25) & 0xffff_ffff);
        ((bits * self.shards.len() as u128) >> 32) as usize
    }

    /// The handle of the flow `serial` of shard `index`.
    fn flow_ref(&self, key: FlowKey, hash: u64, index: usize, serial: u64) -> FlowRef {
        FlowRef {
            key,
            hash,
            serial,
            id: serial * self.shards.len() as u64 + index as u64 + 1,
        }
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard<V>> {
        // A thread that panicked while holding the lock left the shard consistent (every
        // update is a single map operation), so a poisoned lock is taken as it is.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tracks one packet at `now`.
    pub fn track(&self, now: Instant, packet: &PacketMeta) -> Result<Tracked<V>, ConntrackError> {
        let tracked = match packet.kind {
            PacketKind::IcmpError { quoted } => Ok(self.related(now, &quoted)),
            _ => self.track_flow(now, packet),
        };
        if let Ok(Tracked {
            state: CtState::Invalid,
            ..
        }) = tracked
        {
            bump(&self.stats.invalid);
        }
        tracked
    }

    fn related(&self, now: Instant, quoted: &FlowTuple) -> Tracked<V> {
        let key = quoted.key();
        let (hash, index) = self.locate(&key);
        let shard = self.lock(index);
        match shard.flows.find(hash, |f| f.key == key) {
            Some(flow) if now < flow.info.expires => Tracked {
                state: CtState::Related,
                flow: Some(self.flow_ref(key, hash, index, flow.serial)),
                // The error travels against the quoted packet.
                direction: if quoted.src == flow.info.original.src {
                    Direction::Reply
                } else {
                    Direction::Original
                },
                tcp: flow.info.tcp,
                verdict: flow.info.verdict,
            },
            _ => Tracked::invalid(),
        }
    }

    fn track_flow(&self, now: Instant, packet: &PacketMeta) -> Result<Tracked<V>, ConntrackError> {
        let tuple = &packet.tuple;
        let key = tuple.key();
        let (hash, index) = self.locate(&key);
        let mut guard = self.lock(index);
        let Shard {
            flows,
            unassured,
            next_serial,
        } = &mut *guard;
        let timeouts = &self.config.timeouts;
        if let Ok(mut entry) = flows.find_entry(hash, |f| f.key == key) {
            let flow = entry.get_mut();
            let expired = now >= flow.info.expires;
            let direction =
                if tuple.src == flow.info.original.src && tuple.dst == flow.info.original.dst {
                    Direction::Original
                } else {
                    Direction::Reply
                };
            let reopens = matches!(
                (packet.kind, flow.info.tcp, direction),
                (
                    PacketKind::Tcp(TcpFlags {
                        syn: true,
                        ack: false,
                        rst: false,
                        ..
                    }),
                    Some(TcpState::TimeWait | TcpState::Close),
                    Direction::Original,
                )
            );
            if !expired && !reopens {
                let (was_assured, was_tcp) = (flow.info.assured, flow.info.tcp);
                if !update(flow, packet.kind, direction) {
                    return Ok(Tracked::invalid());
                }
                if was_tcp == Some(TcpState::Established) && flow.info.tcp != was_tcp {
                    bump(&self.epoch);
                }
                flow.info.expires = now + lifetime(&flow.info, timeouts);
                if flow.info.assured && !was_assured {
                    unassured.remove(&flow.serial);
                }
                return Ok(Tracked {
                    state: match direction {
                        Direction::Reply => CtState::Reply,
                        Direction::Original if flow.info.replied => CtState::Established,
                        Direction::Original => CtState::New,
                    },
                    flow: Some(self.flow_ref(key, hash, index, flow.serial)),
                    direction,
                    tcp: flow.info.tcp,
                    verdict: flow.info.verdict,
                });
            }
            // An expired flow is gone; a new connection on a closed one's ports replaces it.
            let (old, _) = entry.remove();
            unassured.remove(&old.serial);
            self.count.fetch_sub(1, Ordering::Relaxed);
            bump(&self.epoch);
            if expired {
                bump(&self.stats.expired);
            }
        }

        let tcp = match packet.kind {
            PacketKind::Tcp(TcpFlags {
                syn: true,
                ack: false,
                rst: false,
                ..
            }) => Some(TcpState::SynSent),
            PacketKind::Tcp(_) | PacketKind::IcmpEcho { request: false } => {
                return Ok(Tracked::invalid())
            }
            _ => None,
        };
        self.make_room(flows, unassured)?;
        let serial = *next_serial;
        *next_serial += 1;
        let mut info = FlowInfo {
            original: *tuple,
            tcp,
            replied: false,
            assured: false,
            expires: now,
            verdict: None,
        };
        info.expires = now + lifetime(&info, timeouts);
        let flow = Flow {
            key,
            hash,
            info,
            fin_from: None,
            serial,
        };
        flows.insert_unique(hash, flow, stored_hash);
        unassured.insert(serial, hash);
        bump(&self.stats.created);
        Ok(Tracked {
            state: CtState::New,
            flow: Some(self.flow_ref(key, hash, index, serial)),
            direction: Direction::Original,
            tcp,
            verdict: None,
        })
    }

    /// Reserves a place for a new flow in `shard`, evicting if the table is full and allowed.
    fn make_room(
        &self,
        flows: &mut HashTable<Flow<V>>,
        unassured: &mut BTreeMap<u64, u64>,
    ) -> Result<(), ConntrackError> {
        if self.count.fetch_add(1, Ordering::Relaxed) < self.config.capacity {
            return Ok(());
        }
        if self.config.overflow == Overflow::EvictOldestUnassured {
            if let Some((serial, hash)) = unassured.pop_first() {
                if let Ok(victim) = flows.find_entry(hash, |f| f.serial == serial) {
                    victim.remove();
                }
                self.count.fetch_sub(1, Ordering::Relaxed);
                bump(&self.stats.evicted);
                bump(&self.epoch);
                return Ok(());
            }
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        bump(&self.stats.dropped_full);
        Err(ConntrackError::TableFull)
    }

    /// Caches `verdict` on `flow`; false if the flow is gone (expired, evicted or replaced).
    /// Replacing a different verdict moves the [`epoch`](Self::epoch).
    pub fn set_verdict(&self, flow: &FlowRef, verdict: V) -> bool
    where
        V: PartialEq,
    {
        let mut shard = self.lock(self.shard_of(flow.hash));
        match shard.flows.find_mut(flow.hash, |f| f.key == flow.key) {
            Some(f) if f.serial == flow.serial => {
                if f.info
                    .verdict
                    .replace(verdict)
                    .is_some_and(|old| old != verdict)
                {
                    bump(&self.epoch);
                }
                true
            }
            _ => false,
        }
    }

    /// Clears every cached verdict (after a policy reload), so flows are judged again.
    pub fn clear_verdicts(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for flow in shard.flows.iter_mut() {
                flow.info.verdict = None;
            }
        }
        bump(&self.epoch);
    }

    /// The flow of `tuple` (either direction) unless expired at `now`.
    pub fn get(&self, now: Instant, tuple: &FlowTuple) -> Option<FlowInfo<V>> {
        let key = tuple.key();
        let (hash, index) = self.locate(&key);
        let shard = self.lock(index);
        shard
            .flows
            .find(hash, |f| f.key == key)
            .filter(|f| now < f.info.expires)
            .map(|f| f.info)
    }

    /// Every flow not expired at `now` (for the control plane's listing).
    pub fn flows(&self, now: Instant) -> Vec<FlowInfo<V>> {
        self.shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                shard
                    .flows
                    .iter()
                    .filter(|f| now < f.info.expires)
                    .map(|f| f.info)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Removes the flows expired at `now`, one shard at a time; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let Shard {
                flows, unassured, ..
            } = &mut *shard;
            flows.retain(|f| {
                let keep = now < f.info.expires;
                if !keep {
                    unassured.remove(&f.serial);
                    removed += 1;
                }
                keep
            });
        }
        self.count.fetch_sub(removed, Ordering::Relaxed);
        self.stats
            .expired
            .fetch_add(removed as u64, Ordering::Relaxed);
        if removed > 0 {
            bump(&self.epoch);
        }
        removed
    }
}

/// How long `info` lives after its last packet.
fn lifetime<V>(info: &FlowInfo<V>, t: &Timeouts) -> Duration {
    match (info.original.protocol, info.tcp) {
        (Protocol::Tcp, Some(state)) => match state {
            TcpState::SynSent => t.tcp_syn_sent,
            TcpState::SynRecv => t.tcp_syn_recv,
            TcpState::Established => t.tcp_established,
            TcpState::FinWait => t.tcp_fin_wait,
            TcpState::CloseWait => t.tcp_close_wait,
            TcpState::LastAck => t.tcp_last_ack,
            TcpState::TimeWait => t.tcp_time_wait,
            TcpState::Close => t.tcp_close,
        },
        (Protocol::Udp, _) if info.assured => t.udp_assured,
        (Protocol::Udp, _) => t.udp_unreplied,
        _ => t.icmp,
    }
}

/// Applies a packet of `kind` going `direction` to `flow`; false if the packet is invalid for
/// it (the flow is left unchanged).
fn update<V>(flow: &mut Flow<V>, kind: PacketKind, direction: Direction) -> bool {
    let reply = direction == Direction::Reply;
    match kind {
        PacketKind::Tcp(flags) => {
            let Some(state) = flow.info.tcp else {
                return false;
            };
            let Some(next) = tcp_next(state, flags, direction, &mut flow.fin_from) else {
                return false;
            };
            flow.info.tcp = Some(next);
            flow.info.replied |= reply;
            flow.info.assured |= matches!(
                next,
                TcpState::Established
                    | TcpState::FinWait
                    | TcpState::CloseWait
                    | TcpState::LastAck
                    | TcpState::TimeWait
            );
            true
        }
        PacketKind::Udp => {
            flow.info.replied |= reply;
            flow.info.assured |= reply;
            true
        }
        PacketKind::IcmpEcho { request } => {
            // Requests go the original way, replies come back.
            if request == reply {
                return false;
            }
            flow.info.replied |= reply;
            flow.info.assured |= reply;
            true
        }
        PacketKind::IcmpError { .. } => false,
    }
}

/// The TCP state after a segment with `flags` going `dir`, or `None` if it does not fit.
/// `fin_from` records which side closed first.
fn tcp_next(
    state: TcpState,
    flags: TcpFlags,
    dir: Direction,
    fin_from: &mut Option<Direction>,
) -> Option<TcpState> {
    use Direction::{Original, Reply};
    use TcpState::*;

    enum Event {
        Syn,
        SynAck,
        Fin,
        Ack,
        Rst,
    }
    let event = match flags {
        TcpFlags { rst: true, .. } => Event::Rst,
        TcpFlags {
            syn: true,
            ack: true,
            ..
        } => Event::SynAck,
        TcpFlags { syn: true, .. } => Event::Syn,
        TcpFlags { fin: true, .. } => Event::Fin,
        TcpFlags { ack: true, .. } => Event::Ack,
        _ => return None,
    };
    let closer = *fin_from;
    let next = match (state, event, dir) {
        (_, Event::Rst, _) => Close,
        (SynSent, Event::Syn, Original) => SynSent,
        (SynSent, Event::SynAck, Reply) | (SynSent, Event::Syn, Reply) => SynRecv,
        (SynRecv, Event::SynAck, _) => SynRecv,
        (SynRecv | Established, Event::Ack, _) => Established,
        (Established, Event::SynAck, Reply) => Established,
        (SynRecv | Established, Event::Fin, d) => {
            *fin_from = Some(d);
            FinWait
        }
        (FinWait, Event::Ack, d) if Some(d) == closer => FinWait,
        (FinWait, Event::Ack, _) => CloseWait,
        (FinWait | CloseWait, Event::Fin, d) if Some(d) == closer => state,
        (FinWait | CloseWait, Event::Fin, _) => LastAck,
        (CloseWait, Event::Ack, _) => CloseWait,
        (LastAck, Event::Ack, d) if Some(d) == closer => TimeWait,
        (LastAck, Event::Ack | Event::Fin, _) => LastAck,
        (TimeWait, Event::Ack | Event::Fin, _) => TimeWait,
        (Close, Event::Ack | Event::Fin, _) => Close,
        _ => return None,
    };
    Some(next)
}
