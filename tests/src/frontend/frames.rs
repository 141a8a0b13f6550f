//! Frames to send through a backend and checks of what comes out: numbered Ethernet frames,
//! and TCP segments in the checksum state a guest hands to virtio-net offloads (complete,
//! partial for CSUM, or a whole TSO super-segment). Built and checked with smoltcp's wire
//! module (bridge-core's re-export), independently of the device's own offload code.

use std::net::IpAddr;

use bridge_core::wire::{checksum, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, TcpSeqNumber};
use thiserror::Error;
use virtio_bindings::virtio_net::VIRTIO_NET_HDR_GSO_NONE;

use super::net_hdr::NetHdr;

/// EtherType of numbered test frames (IEEE local experimental).
pub const TEST_ETHERTYPE: u16 = 0x88b5;
const ETH_HDR: usize = 14;
const IPV4_HDR: usize = 20;
const IPV6_HDR: usize = 40;
const TCP_HDR: usize = 20;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A frame of `len` bytes (at least 18) from `src` to `dst` carrying `number`.
pub fn numbered(dst: [u8; 6], src: [u8; 6], number: u32, len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(len.max(18));
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(&number.to_be_bytes());
    frame.extend((0..len.saturating_sub(frame.len())).map(|i| (i as u32 ^ number) as u8));
    frame
}

/// The number a [`numbered`] frame carries.
pub fn number(frame: &[u8]) -> Option<u32> {
    if frame.get(12..14)? != TEST_ETHERTYPE.to_be_bytes() {
        return None;
    }
    Some(u32::from_be_bytes(frame.get(14..18)?.try_into().ok()?))
}

/// Errors of checking a received frame.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Too short, or not Ethernet + IPv4/IPv6 + TCP.
    #[error("not a TCP frame: {0}")]
    NotTcp(&'static str),
    /// The header's checksum request points outside the frame.
    #[error("csum_start {start} + csum_offset {offset} outside a frame of {len} bytes")]
    CsumRange {
        /// csum_start.
        start: u16,
        /// csum_offset.
        offset: u16,
        /// Frame length.
        len: usize,
    },
    /// The IPv4 header checksum is wrong.
    #[error("bad IPv4 header checksum")]
    IpChecksum,
    /// The IP length fields do not match the frame.
    #[error("IP length {ip} for {frame} bytes of IP packet")]
    IpLength {
        /// Length the IP header claims.
        ip: usize,
        /// Bytes after the Ethernet header.
        frame: usize,
    },
    /// The TCP checksum is wrong.
    #[error("bad TCP checksum")]
    TcpChecksum,
}

/// A TCP segment as received, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Sequence number.
    pub seq: u32,
    /// IPv4 identification (0 for IPv6).
    pub ident: u16,
    /// PSH flag.
    pub psh: bool,
    /// FIN flag.
    pub fin: bool,
    /// TCP payload.
    pub payload: Vec<u8>,
}

/// One direction of a TCP connection between two guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFlow {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source address (IPv4 or IPv6, the same family as `dst`).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl TcpFlow {
    /// Ethernet, IP and TCP header bytes.
    pub fn headers_len(&self) -> usize {
        ETH_HDR + self.ip_hdr_len() + TCP_HDR
    }

    /// A segment with complete checksums, as a guest without CSUM sends it.
    pub fn segment(&self, seq: u32, payload: &[u8], fin: bool) -> Vec<u8> {
        let mut frame = self.build(seq, payload, fin);
        let start = ETH_HDR + self.ip_hdr_len();
        complete_checksum(&mut frame, start, 16);
        frame
    }

    /// A segment whose TCP checksum holds the pseudo-header sum, with the header asking the
    /// device to complete it (CSUM); with `mss`, a TSO request to cut the payload into segments
    /// of `mss` bytes (HOST_TSO4/6).
    pub fn offloaded(
        &self,
        seq: u32,
        payload: &[u8],
        fin: bool,
        mss: Option<u16>,
    ) -> (NetHdr, Vec<u8>) {
        let frame = self.build(seq, payload, fin);
        let start = (ETH_HDR + self.ip_hdr_len()) as u16;
        let hdr = match mss {
            Some(mss) => NetHdr::tso(
                self.src.is_ipv6(),
                self.headers_len() as u16,
                mss,
                start,
                16,
            ),
            None => NetHdr::needs_csum(start, 16),
        };
        (hdr, frame)
    }

    fn ip_hdr_len(&self) -> usize {
        if self.src.is_ipv6() {
            IPV6_HDR
        } else {
            IPV4_HDR
        }
    }

    /// The frame with the pseudo-header sum in the TCP checksum field.
    fn build(&self, seq: u32, payload: &[u8], fin: bool) -> Vec<u8> {
        let ip_len = self.ip_hdr_len();
        let tcp_len = TCP_HDR + payload.len();
        let mut frame = vec![0u8; ETH_HDR + ip_len + tcp_len];
        frame[0..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        let pseudo = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                let mut ip = Ipv4Packet::new_unchecked(&mut frame[ETH_HDR..]);
                ip.set_version(4);
                ip.set_header_len(IPV4_HDR as u8);
                ip.set_total_len((IPV4_HDR + tcp_len) as u16);
                ip.set_ident(seq as u16);
                ip.set_dont_frag(true);
                ip.set_hop_limit(64);
                ip.set_next_header(IpProtocol::Tcp);
                ip.set_src_addr(src);
                ip.set_dst_addr(dst);
                ip.fill_checksum();
                checksum::pseudo_header_v4(&src, &dst, IpProtocol::Tcp, tcp_len as u32)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                let mut ip = Ipv6Packet::new_unchecked(&mut frame[ETH_HDR..]);
                ip.set_version(6);
                ip.set_payload_len(tcp_len as u16);
                ip.set_next_header(IpProtocol::Tcp);
                ip.set_hop_limit(64);
                ip.set_src_addr(src);
                ip.set_dst_addr(dst);
                checksum::pseudo_header_v6(&src, &dst, IpProtocol::Tcp, tcp_len as u32)
            }
            _ => panic!("a flow's addresses are of one family"),
        };
        let mut tcp = TcpPacket::new_unchecked(&mut frame[ETH_HDR + ip_len..]);
        tcp.set_src_port(self.src_port);
        tcp.set_dst_port(self.dst_port);
        tcp.set_seq_number(TcpSeqNumber(seq as i32));
        tcp.set_ack_number(TcpSeqNumber(1));
        tcp.set_header_len(TCP_HDR as u8);
        tcp.set_ack(true);
        tcp.set_psh(true);
        tcp.set_fin(fin);
        tcp.set_window_len(65535);
        tcp.set_checksum(pseudo);
        tcp.payload_mut().copy_from_slice(payload);
        frame
    }
}

/// Writes the ones' complement of the sum of `frame[start..]` at `start + offset`, as a device
/// completing a partial checksum does.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) {
    let sum = checksum::data(&frame[start..]);
    frame[start + offset..start + offset + 2].copy_from_slice(&(!sum).to_be_bytes());
}

/// Checks a received TCP frame as a guest's stack would: completes the checksum when `hdr`
/// says NEEDS_CSUM, then verifies the IP length, the IPv4 header checksum and the TCP
/// checksum.
pub fn check_tcp(hdr: &NetHdr, frame: &[u8]) -> Result<TcpSegment, FrameError> {
    let mut frame = frame.to_vec();
    if hdr.is_needs_csum() {
        let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
        if start + offset + 2 > frame.len() {
            return Err(FrameError::CsumRange {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
                len: frame.len(),
            });
        }
        complete_checksum(&mut frame, start, offset);
    }
    let ethertype = frame
        .get(12..14)
        .ok_or(FrameError::NotTcp("short Ethernet header"))?;
    let ip_bytes = &frame[ETH_HDR..];
    let (src, dst, tcp_bytes, ident) = if ethertype == ETHERTYPE_IPV4.to_be_bytes() {
        let ip = Ipv4Packet::new_checked(ip_bytes).map_err(|_| FrameError::NotTcp("IPv4"))?;
        if ip.next_header() != IpProtocol::Tcp {
            return Err(FrameError::NotTcp("not TCP over IPv4"));
        }
        if !ip.verify_checksum() {
            return Err(FrameError::IpChecksum);
        }
        let total = usize::from(ip.total_len());
        if total != ip_bytes.len() {
            return Err(FrameError::IpLength {
                ip: total,
                frame: ip_bytes.len(),
            });
        }
        let header = usize::from(ip.header_len());
        let tcp = &ip_bytes[header..];
        (ip.src_addr().into(), ip.dst_addr().into(), tcp, ip.ident())
    } else if ethertype == ETHERTYPE_IPV6.to_be_bytes() {
        let ip = Ipv6Packet::new_checked(ip_bytes).map_err(|_| FrameError::NotTcp("IPv6"))?;
        if ip.next_header() != IpProtocol::Tcp {
            return Err(FrameError::NotTcp("not TCP over IPv6"));
        }
        let total = IPV6_HDR + usize::from(ip.payload_len());
        if total != ip_bytes.len() {
            return Err(FrameError::IpLength {
                ip: total,
                frame: ip_bytes.len(),
            });
        }
        (
            ip.src_addr().into(),
            ip.dst_addr().into(),
            &ip_bytes[IPV6_HDR..],
            0,
        )
    } else {
        return Err(FrameError::NotTcp("neither IPv4 nor IPv6"));
    };
    let tcp = TcpPacket::new_checked(tcp_bytes).map_err(|_| FrameError::NotTcp("TCP header"))?;
    if !tcp.verify_checksum(&src, &dst) {
        return Err(FrameError::TcpChecksum);
    }
    Ok(TcpSegment {
        seq: tcp.seq_number().0 as u32,
        ident,
        psh: tcp.psh(),
        fin: tcp.fin(),
        payload: tcp.payload().to_vec(),
    })
}

/// Whether `hdr` carries a segmentation request or a whole super-segment.
pub fn is_gso(hdr: &NetHdr) -> bool {
    u32::from(hdr.gso_type) != VIRTIO_NET_HDR_GSO_NONE
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn flow(v6: bool) -> TcpFlow {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(),
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into(),
            )
        } else {
            (
                Ipv4Addr::new(10, 0, 0, 1).into(),
                Ipv4Addr::new(10, 0, 0, 2).into(),
            )
        };
        TcpFlow {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src,
            dst,
            src_port: 40000,
            dst_port: 5201,
        }
    }

    #[test]
    fn numbered_frames_carry_their_number() {
        let frame = numbered([0xff; 6], [2, 0, 0, 0, 0, 1], 0xdead_beef, 60);
        assert_eq!(frame.len(), 60);
        assert_eq!(number(&frame), Some(0xdead_beef));
        assert_eq!(number(&frame[..16]), None);
    }

    #[test]
    fn partial_checksum_completes_to_the_full_one() {
        for v6 in [false, true] {
            let f = flow(v6);
            let payload: Vec<u8> = (0..1001u32).map(|i| i as u8).collect();
            let full = f.segment(7, &payload, true);
            let (hdr, partial) = f.offloaded(7, &payload, true, None);
            assert_ne!(full, partial);
            let seg = check_tcp(&hdr, &partial).unwrap();
            assert_eq!(seg, check_tcp(&NetHdr::plain(), &full).unwrap());
            assert_eq!((seg.seq, seg.fin, seg.payload), (7, true, payload.clone()));
            assert_eq!(
                check_tcp(&NetHdr::plain(), &partial),
                Err(FrameError::TcpChecksum)
            );
        }
    }

    #[test]
    fn tso_request_describes_the_headers() {
        let f = flow(false);
        let (hdr, frame) = f.offloaded(1, &[0; 4000], false, Some(1448));
        assert!(is_gso(&hdr) && hdr.is_needs_csum());
        assert_eq!((hdr.hdr_len, hdr.gso_size, hdr.csum_start), (54, 1448, 34));
        assert_eq!(frame.len(), 54 + 4000);
        let (hdr6, _) = flow(true).offloaded(1, &[0; 4000], false, Some(1428));
        assert_eq!((hdr6.hdr_len, hdr6.csum_start), (74, 54));
    }

    #[test]
    fn corrupt_frames_are_caught() {
        let f = flow(false);
        let mut frame = f.segment(1, b"data", false);
        frame[ETH_HDR + 8] ^= 1;
        assert_eq!(
            check_tcp(&NetHdr::plain(), &frame),
            Err(FrameError::IpChecksum)
        );
        let mut frame = f.segment(1, b"data", false);
        frame.push(0);
        assert!(matches!(
            check_tcp(&NetHdr::plain(), &frame),
            Err(FrameError::IpLength { .. })
        ));
        let far = NetHdr::needs_csum(60, 16);
        assert!(matches!(
            check_tcp(&far, &f.segment(1, b"x", false)),
            Err(FrameError::CsumRange { .. })
        ));
    }
}
