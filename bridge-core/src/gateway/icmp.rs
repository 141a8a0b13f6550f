//! ICMPv4 for the gateway: echo replies for its own address, and the errors a router sends
//! about a packet it refuses (what iptables' `REJECT --reject-with icmp-*` sends) or cannot
//! forward (TTL exceeded).
//!
//! Errors follow RFC 1122 §3.2.2 and RFC 1812 §4.3.2: none about an ICMP error, a non-initial
//! fragment, a link- or IP-broadcast/multicast packet or one from an address that names no
//! single host; the error quotes the offending IPv4 header and as much of its payload as keeps
//! the error within 576 bytes.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4DstUnreachable, Icmpv4Message,
    Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded, IpProtocol, Ipv4Address, Ipv4Packet,
    IPV4_HEADER_LEN,
};

use super::frame::{ipv4_frame, ipv4_frame_into, Ipv4Route};

/// Largest IPv4 datagram an ICMP error may make (RFC 1812 §4.3.2.3).
const MAX_ERROR_DATAGRAM: usize = 576;
/// Largest frame an ICMP error makes: an Ethernet header and [`MAX_ERROR_DATAGRAM`].
pub const MAX_ERROR_FRAME: usize = smoltcp::wire::ETHERNET_HEADER_LEN + MAX_ERROR_DATAGRAM;
/// ICMP header length of an error message (type, code, checksum, unused word).
const ICMP_ERROR_HEADER_LEN: usize = 8;

/// Why no ICMP error is sent about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IcmpError {
    /// The frame holds no well-formed IPv4 packet.
    #[error("not a well-formed IPv4 frame")]
    Malformed,
    /// The packet is itself an ICMP error (or an unknown ICMP type).
    #[error("no ICMP error about an ICMP error")]
    AboutIcmpError,
    /// The packet is a fragment other than the first.
    #[error("no ICMP error about a non-initial fragment")]
    NotFirstFragment,
    /// The packet was sent to a broadcast or multicast address (link or IP).
    #[error("no ICMP error about a broadcast or multicast packet")]
    Broadcast,
    /// The packet's source names no single host (0.0.0.0, broadcast, multicast, loopback, class E).
    #[error("no ICMP error to an invalid source address")]
    InvalidSource,
    /// The buffer given for the error is shorter than [`MAX_ERROR_FRAME`].
    #[error("the buffer is too short for the error")]
    NoRoom,
}

/// The ICMP error to send about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Destination unreachable with this code (`icmp-port-unreachable` = `PortUnreachable`,
    /// `icmp-host-prohibited` = `HostProhibited`, `icmp-admin-prohibited` = `CommProhibited`...).
    Unreachable(Icmpv4DstUnreachable),
    /// Time exceeded with this code (TTL exceeded in transit when forwarding).
    TimeExceeded(Icmpv4TimeExceeded),
}

/// The echo reply to an echo request (`ident`, `seq_no`, `data`) that `requester` (MAC,
/// address) sent to `gateway` (MAC, address).
pub fn echo_reply(
    gateway: (EthernetAddress, Ipv4Address),
    requester: (EthernetAddress, Ipv4Address),
    ident: u16,
    seq_no: u16,
    data: &[u8],
) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoReply {
        ident,
        seq_no,
        data,
    };
    let route = Ipv4Route {
        src_mac: gateway.0,
        dst_mac: requester.0,
        src_ip: gateway.1,
        dst_ip: requester.1,
    };
    ipv4_frame(&route, IpProtocol::Icmp, repr.buffer_len(), |buf| {
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(buf),
            &ChecksumCapabilities::default(),
        );
    })
}

/// The ICMP error `kind` about `offending` (an Ethernet frame holding an IPv4 packet), sent from
/// `src_mac`/`src_ip` (the gateway) to the offending packet's source.
pub fn error_reply(
    offending: &[u8],
    kind: ErrorKind,
    src_mac: EthernetAddress,
    src_ip: Ipv4Address,
) -> Result<Vec<u8>, IcmpError> {
    let mut out = vec![0; MAX_ERROR_FRAME];
    let len = error_reply_into(offending, kind, src_mac, src_ip, &mut out)?;
    out.truncate(len);
    Ok(out)
}

/// [`error_reply`] written into `out` (at least [`MAX_ERROR_FRAME`] bytes); returns its length.
pub fn error_reply_into(
    offending: &[u8],
    kind: ErrorKind,
    src_mac: EthernetAddress,
    src_ip: Ipv4Address,
    out: &mut [u8],
) -> Result<usize, IcmpError> {
    if out.len() < MAX_ERROR_FRAME {
        return Err(IcmpError::NoRoom);
    }
    let frame = EthernetFrame::new_checked(offending).map_err(|_| IcmpError::Malformed)?;
    if frame.ethertype() != EthernetProtocol::Ipv4 {
        return Err(IcmpError::Malformed);
    }
    if !frame.dst_addr().is_unicast() {
        return Err(IcmpError::Broadcast);
    }
    let packet = Ipv4Packet::new_checked(frame.payload()).map_err(|_| IcmpError::Malformed)?;
    if packet.version() != 4 || !packet.verify_checksum() {
        return Err(IcmpError::Malformed);
    }
    if packet.frag_offset() != 0 {
        return Err(IcmpError::NotFirstFragment);
    }
    let dst = packet.dst_addr();
    if dst.is_broadcast() || dst.is_multicast() {
        return Err(IcmpError::Broadcast);
    }
    let src = packet.src_addr();
    if src.is_unspecified()
        || src.is_broadcast()
        || src.is_multicast()
        || src.is_loopback()
        || src.octets()[0] >= 240
    {
        return Err(IcmpError::InvalidSource);
    }
    let datagram = &frame.payload()[..usize::from(packet.total_len())];
    if packet.next_header() == IpProtocol::Icmp {
        let icmp = &datagram[usize::from(packet.header_len())..];
        let is_query = icmp.first().is_some_and(|&t| {
            matches!(
                Icmpv4Message::from(t),
                Icmpv4Message::EchoRequest
                    | Icmpv4Message::EchoReply
                    | Icmpv4Message::Timestamp
                    | Icmpv4Message::TimestampReply
            )
        });
        if !is_query {
            return Err(IcmpError::AboutIcmpError);
        }
    }

    let quoted_len = datagram
        .len()
        .min(MAX_ERROR_DATAGRAM - IPV4_HEADER_LEN - ICMP_ERROR_HEADER_LEN);
    let quoted = &datagram[..quoted_len];
    let (msg_type, code) = match kind {
        ErrorKind::Unreachable(code) => (Icmpv4Message::DstUnreachable, u8::from(code)),
        ErrorKind::TimeExceeded(code) => (Icmpv4Message::TimeExceeded, u8::from(code)),
    };
    let route = Ipv4Route {
        src_mac,
        dst_mac: frame.src_addr(),
        src_ip,
        dst_ip: src,
    };
    ipv4_frame_into(
        out,
        &route,
        IpProtocol::Icmp,
        ICMP_ERROR_HEADER_LEN + quoted.len(),
        |buf| {
            buf[ICMP_ERROR_HEADER_LEN..].copy_from_slice(quoted);
            let mut icmp = Icmpv4Packet::new_unchecked(buf);
            icmp.set_msg_type(msg_type);
            icmp.set_msg_code(code);
            icmp.fill_checksum();
        },
    )
    .ok_or(IcmpError::NoRoom)
}
