//! The answer iptables' `REJECT` gives about a refused frame, sent back to its sender: a TCP
//! RST for a TCP segment (`--reject-with tcp-reset`), an ICMP port unreachable for any other
//! IPv4 packet (`icmp-port-unreachable`, built by the gateway's ICMP error builder with its
//! RFC 1122/1812 rules).
//!
//! Both come from the refused frame's destination (MAC and address), as if the destination
//! had refused it. Nothing answers a TCP RST, an ICMP error, a broadcast or multicast, a
//! non-initial fragment, an invalid source, an 802.1Q-tagged frame or IPv6; such frames are
//! only dropped.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4DstUnreachable, IpAddress, IpProtocol, Ipv4Packet,
    TcpPacket, TcpSeqNumber, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, TCP_HEADER_LEN,
};

use crate::gateway::frame::{ipv4_frame_into, Ipv4Route};
use crate::gateway::icmp::{self, ErrorKind, IcmpError};

/// Largest answer: an ICMP error quoting as much as RFC 1812 allows.
pub const MAX_REPLY_LEN: usize = icmp::MAX_ERROR_FRAME;

/// Why a refused frame gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectError {
    /// Not an untagged Ethernet frame with a well-formed IPv4 header (and TCP header, for TCP).
    #[error("not a well-formed IPv4 frame")]
    Malformed,
    /// No ICMP error is due about this packet.
    #[error("no ICMP error is due")]
    Icmp(#[source] IcmpError),
    /// A TCP segment that needs no reset: a reset itself, to a broadcast or multicast
    /// destination, from an invalid source, or a non-initial fragment.
    #[error("no reset is due")]
    NoReset,
    /// The buffer is shorter than [`MAX_REPLY_LEN`].
    #[error("the buffer is too short")]
    NoRoom,
}

/// Writes into `out` (at least [`MAX_REPLY_LEN`] bytes) the answer to `refused`, a whole
/// Ethernet frame; returns its length.
pub fn reject_reply(refused: &[u8], out: &mut [u8]) -> Result<usize, RejectError> {
    if out.len() < MAX_REPLY_LEN {
        return Err(RejectError::NoRoom);
    }
    let frame = EthernetFrame::new_checked(refused).map_err(|_| RejectError::Malformed)?;
    if frame.ethertype() != EthernetProtocol::Ipv4 {
        return Err(RejectError::Malformed);
    }
    let ip = Ipv4Packet::new_checked(frame.payload()).map_err(|_| RejectError::Malformed)?;
    if ip.next_header() == IpProtocol::Tcp {
        return tcp_reset(&frame, &ip, out);
    }
    let kind = ErrorKind::Unreachable(Icmpv4DstUnreachable::PortUnreachable);
    icmp::error_reply_into(refused, kind, frame.dst_addr(), ip.dst_addr(), out)
        .map_err(RejectError::Icmp)
}

/// The RST for a TCP segment (RFC 9293 §3.10.7.1): with ACK set, `seq = SEG.ACK`; otherwise
/// `seq = 0` and `RST|ACK` with `ack = SEG.SEQ + SEG.LEN`.
fn tcp_reset(
    frame: &EthernetFrame<&[u8]>,
    ip: &Ipv4Packet<&[u8]>,
    out: &mut [u8],
) -> Result<usize, RejectError> {
    if ip.version() != 4 || !ip.verify_checksum() {
        return Err(RejectError::Malformed);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let valid_source = !(src.is_unspecified()
        || src.is_broadcast()
        || src.is_multicast()
        || src.is_loopback()
        || src.octets()[0] >= 240);
    let unicast = frame.dst_addr().is_unicast() && !dst.is_broadcast() && !dst.is_multicast();
    if ip.frag_offset() != 0 || !valid_source || !unicast {
        return Err(RejectError::NoReset);
    }
    let header_len = usize::from(ip.header_len());
    let total_len = usize::from(ip.total_len());
    let segment = ip
        .as_ref()
        .get(header_len..total_len)
        .ok_or(RejectError::Malformed)?;
    let tcp = TcpPacket::new_checked(segment).map_err(|_| RejectError::Malformed)?;
    if tcp.rst() {
        return Err(RejectError::NoReset);
    }
    let seg_len = segment.len() - usize::from(tcp.header_len())
        + usize::from(tcp.syn())
        + usize::from(tcp.fin());
    let route = Ipv4Route {
        src_mac: frame.dst_addr(),
        dst_mac: frame.src_addr(),
        src_ip: dst,
        dst_ip: src,
    };
    let (sport, dport) = (tcp.dst_port(), tcp.src_port());
    let (seq, ack) = if tcp.ack() {
        (tcp.ack_number(), None)
    } else {
        (TcpSeqNumber(0), Some(tcp.seq_number() + seg_len))
    };
    ipv4_frame_into(out, &route, IpProtocol::Tcp, TCP_HEADER_LEN, |buf| {
        let mut rst = TcpPacket::new_unchecked(buf);
        rst.set_src_port(sport);
        rst.set_dst_port(dport);
        rst.set_seq_number(seq);
        rst.set_ack_number(ack.unwrap_or(TcpSeqNumber(0)));
        rst.set_header_len(TCP_HEADER_LEN as u8);
        rst.clear_flags();
        rst.set_rst(true);
        rst.set_ack(ack.is_some());
        rst.set_window_len(0);
        rst.set_urgent_at(0);
        rst.fill_checksum(&IpAddress::Ipv4(dst), &IpAddress::Ipv4(src));
    })
    .ok_or(RejectError::NoRoom)
}

/// Length of the RST [`reject_reply`] sends.
pub const RESET_LEN: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + TCP_HEADER_LEN;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::frame::udp_frame;
    use smoltcp::wire::{EthernetAddress, Icmpv4Message, Icmpv4Packet, Ipv4Address};

    const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const IP_A: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const IP_B: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

    fn route() -> Ipv4Route {
        Ipv4Route {
            src_mac: A,
            dst_mac: B,
            src_ip: IP_A,
            dst_ip: IP_B,
        }
    }

    /// A TCP segment from A:40000 to B:22 with `flags` (byte 13) and `payload` bytes.
    fn segment(flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![0; 14 + 20 + 20 + payload];
        let n = ipv4_frame_into(&mut f, &route(), IpProtocol::Tcp, 20 + payload, |b| {
            b[0..2].copy_from_slice(&40000u16.to_be_bytes());
            b[2..4].copy_from_slice(&22u16.to_be_bytes());
            b[4..8].copy_from_slice(&1000u32.to_be_bytes());
            b[8..12].copy_from_slice(&5000u32.to_be_bytes());
            b[12] = 0x50;
            b[13] = flags;
        });
        assert_eq!(n, Some(f.len()));
        f
    }

    fn reply(refused: &[u8]) -> Result<Vec<u8>, RejectError> {
        let mut out = [0; MAX_REPLY_LEN];
        reject_reply(refused, &mut out).map(|n| out[..n].to_vec())
    }

    #[test]
    fn a_syn_gets_rst_ack_from_its_destination() {
        let r = reply(&segment(0x02, 0)).unwrap();
        assert_eq!(r.len(), RESET_LEN);
        let eth = EthernetFrame::new_checked(&r[..]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (B, A));
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (IP_B, IP_A));
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(IP_B), &IpAddress::Ipv4(IP_A)));
        assert_eq!((tcp.src_port(), tcp.dst_port()), (22, 40000));
        assert!(tcp.rst() && tcp.ack() && !tcp.syn());
        assert_eq!(
            (tcp.seq_number(), tcp.ack_number()),
            (TcpSeqNumber(0), TcpSeqNumber(1001))
        );
    }

    #[test]
    fn a_segment_with_ack_gets_rst_at_its_ack_number() {
        let r = reply(&segment(0x18, 100)).unwrap();
        let tcp = TcpPacket::new_checked(&r[34..]).unwrap();
        assert!(tcp.rst() && !tcp.ack());
        assert_eq!(tcp.seq_number(), TcpSeqNumber(5000));
    }

    #[test]
    fn udp_gets_port_unreachable_quoting_it() {
        let d = udp_frame(&route(), 5000, 53, b"query");
        let r = reply(&d).unwrap();
        let eth = EthernetFrame::new_checked(&r[..]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (B, A));
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (IP_B, IP_A));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Icmpv4Message::DstUnreachable);
        assert_eq!(icmp.msg_code(), 3);
        assert_eq!(&ip.payload()[8..], &d[14..]);
    }

    #[test]
    fn no_answer_where_none_is_due() {
        assert_eq!(reply(&segment(0x04, 0)), Err(RejectError::NoReset));
        let mut bcast = segment(0x02, 0);
        bcast[..6].fill(0xff);
        assert_eq!(reply(&bcast), Err(RejectError::NoReset));
        let mut arp = segment(0x02, 0);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(reply(&arp), Err(RejectError::Malformed));
        let mut mcast = udp_frame(&route(), 1, 2, b"x");
        mcast[..6].copy_from_slice(&[1, 0, 0x5e, 0, 0, 1]);
        assert!(matches!(reply(&mcast), Err(RejectError::Icmp(_))));
        let mut out = [0; 100];
        assert_eq!(
            reject_reply(&segment(0x02, 0), &mut out),
            Err(RejectError::NoRoom)
        );
        for cut in 0..54 {
            assert!(reply(&segment(0x02, 0)[..cut]).is_err(), "{cut}");
        }
    }
}
