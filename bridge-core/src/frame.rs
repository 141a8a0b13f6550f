//! A total, allocation-free classifier for Ethernet frames.
//!
//! [`L2Meta::parse`] reads the layer-2 facts (addresses, an optional 802.1Q tag, the EtherType
//! and where L3 starts; the switch reads them as a `MacHeader`, its addresses as 48-bit numbers);
//! [`FrameMeta::parse`] adds the IP protocol, the L4 offset and
//! the TCP/UDP ports for the conntrack and policy stages. Both accept any byte sequence: headers
//! that are truncated or inconsistent beyond the Ethernet header leave the later fields `None`
//! rather than failing.

use smoltcp::wire::{
    EthernetAddress, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
    ETHERNET_HEADER_LEN,
};

use crate::vlan::{self, Tci};

/// Errors of the classifier: the frame has no usable Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than an Ethernet header.
    #[error("frame shorter than an Ethernet header")]
    TooShort,
    /// The EtherType announces an 802.1Q tag that is cut off.
    #[error("802.1Q tag truncated")]
    TruncatedTag,
}

/// The layer-2 facts of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Meta {
    /// Destination MAC address.
    pub dst: EthernetAddress,
    /// Source MAC address.
    pub src: EthernetAddress,
    /// The 802.1Q tag, if the frame carries one (only the outer tag is read).
    pub tci: Option<Tci>,
    /// The EtherType of the payload (inside the tag, if any).
    pub ethertype: EthernetProtocol,
    /// Offset of the L3 header in the frame (14, or 18 when tagged).
    pub l3_offset: u16,
}

impl L2Meta {
    /// Reads the Ethernet header and an optional 802.1Q tag.
    #[inline]
    pub fn parse(frame: &[u8]) -> Result<L2Meta, Error> {
        let header = MacHeader::parse(frame)?;
        let tag_len = if header.tci.is_some() {
            vlan::HEADER_LEN
        } else {
            0
        };
        Ok(L2Meta {
            dst: mac_of_bits(header.dst),
            src: mac_of_bits(header.src),
            tci: header.tci,
            ethertype: EthernetProtocol::from(header.ethertype),
            l3_offset: (ETHERNET_HEADER_LEN + tag_len) as u16,
        })
    }
}

/// The bit of a MAC address as a number ([`mac_bits`]) that marks a group address.
pub(crate) const GROUP_BIT: u64 = 1 << 40;

/// A MAC address as a 48-bit number, its first byte highest.
pub(crate) fn mac_bits(mac: EthernetAddress) -> u64 {
    let [m0, m1, m2, m3, m4, m5] = mac.0;
    u64::from_be_bytes([0, 0, m0, m1, m2, m3, m4, m5])
}

/// The MAC address of a 48-bit number ([`mac_bits`]; higher bits are ignored).
pub(crate) fn mac_of_bits(bits: u64) -> EthernetAddress {
    let [_, _, m0, m1, m2, m3, m4, m5] = bits.to_be_bytes();
    EthernetAddress([m0, m1, m2, m3, m4, m5])
}

/// The Ethernet header as the switch reads it: the addresses as 48-bit numbers
/// ([`mac_bits`]), read with two 8-byte loads and tested and combined in registers, and the
/// 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MacHeader {
    pub(crate) dst: u64,
    pub(crate) src: u64,
    /// The outer 802.1Q tag, if any.
    pub(crate) tci: Option<Tci>,
    /// The EtherType of the payload (inside the tag, if any).
    pub(crate) ethertype: u16,
}

impl MacHeader {
    /// Reads the Ethernet header and an optional 802.1Q tag. Inlined: the switch reads the
    /// result straight from registers.
    #[inline]
    pub(crate) fn parse(frame: &[u8]) -> Result<MacHeader, Error> {
        let (header, payload) = frame
            .split_first_chunk::<ETHERNET_HEADER_LEN>()
            .ok_or(Error::TooShort)?;
        // Bytes 0..8 (destination and two of the source) and 6..14 (source and EtherType).
        let (first, _) = header.split_first_chunk::<8>().ok_or(Error::TooShort)?;
        let (_, last) = header.split_last_chunk::<8>().ok_or(Error::TooShort)?;
        let (first, last) = (u64::from_be_bytes(*first), u64::from_be_bytes(*last));
        let mut meta = MacHeader {
            dst: first >> 16,
            src: last >> 16,
            tci: None,
            ethertype: last as u16,
        };
        if meta.ethertype == vlan::TPID {
            let tag = vlan::Packet::new_checked(payload).map_err(|_| Error::TruncatedTag)?;
            meta.tci = Some(tag.tci());
            meta.ethertype = u16::from(tag.ethertype());
        }
        Ok(meta)
    }
}

/// TCP or UDP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ports {
    /// Source port.
    pub src: u16,
    /// Destination port.
    pub dst: u16,
}

/// The IP facts of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpMeta {
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: IpProtocol,
    /// Offset of the upper-layer header in the frame; `None` for a fragment that is not the
    /// first one, or when the extension headers could not be walked.
    pub l4_offset: Option<u16>,
    /// Whether the packet is a fragment (first or later).
    pub fragment: bool,
    /// TCP/UDP ports, when the upper-layer header is present and whole.
    pub ports: Option<Ports>,
}

/// Everything the classifier reads from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// The layer-2 facts.
    pub l2: L2Meta,
    /// The IP facts, if the frame carries a well-formed IPv4 or IPv6 header.
    pub ip: Option<IpMeta>,
}

/// The most IPv6 extension headers walked before giving up on finding L4.
const MAX_IPV6_EXT_HEADERS: usize = 8;

impl FrameMeta {
    /// Classifies a frame.
    pub fn parse(frame: &[u8]) -> Result<FrameMeta, Error> {
        let l2 = L2Meta::parse(frame)?;
        let l3 = frame.get(usize::from(l2.l3_offset)..).unwrap_or_default();
        let ip = match l2.ethertype {
            EthernetProtocol::Ipv4 => ipv4(l3),
            EthernetProtocol::Ipv6 => ipv6(l3),
            _ => None,
        };
        let ip = ip.map(|(mut ip, rel)| {
            ip.l4_offset = rel.and_then(|rel| u16::try_from(rel + usize::from(l2.l3_offset)).ok());
            ip.ports = match ip.l4_offset {
                Some(off) => ports(ip.proto, frame.get(usize::from(off)..).unwrap_or_default()),
                None => None,
            };
            ip
        });
        Ok(FrameMeta { l2, ip })
    }
}

/// Reads an IPv4 header; returns the facts and the L4 offset relative to the L3 header.
fn ipv4(l3: &[u8]) -> Option<(IpMeta, Option<usize>)> {
    let ip = Ipv4Packet::new_checked(l3).ok()?;
    if ip.version() != 4 {
        return None;
    }
    let later_fragment = ip.frag_offset() != 0;
    let meta = IpMeta {
        proto: ip.next_header(),
        l4_offset: None,
        fragment: later_fragment || ip.more_frags(),
        ports: None,
    };
    let rel = (!later_fragment).then_some(usize::from(ip.header_len()));
    Some((meta, rel))
}

/// Reads an IPv6 header and walks its extension headers.
fn ipv6(l3: &[u8]) -> Option<(IpMeta, Option<usize>)> {
    let ip = Ipv6Packet::new_checked(l3).ok()?;
    if ip.version() != 6 {
        return None;
    }
    let end = smoltcp::wire::IPV6_HEADER_LEN + usize::from(ip.payload_len());
    let l3 = &l3[..end];
    let mut proto = ip.next_header();
    let mut off = smoltcp::wire::IPV6_HEADER_LEN;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let hdr = l3.get(off..off + 2);
        let len = match (proto, hdr) {
            (IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts, Some(h)) => {
                8 * (usize::from(h[1]) + 1)
            }
            (IpProtocol::IpSecAh, Some(h)) => 4 * (usize::from(h[1]) + 2),
            (IpProtocol::Ipv6Frag, Some(_)) => {
                let frag = l3.get(off..off + 8)?;
                fragment = true;
                if u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0 {
                    // A later fragment: the upper-layer header is not in it.
                    let meta = IpMeta {
                        proto: IpProtocol::from(frag[0]),
                        l4_offset: None,
                        fragment,
                        ports: None,
                    };
                    return Some((meta, None));
                }
                8
            }
            (IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts, None)
            | (IpProtocol::IpSecAh | IpProtocol::Ipv6Frag, None) => return None,
            _ => {
                let meta = IpMeta {
                    proto,
                    l4_offset: None,
                    fragment,
                    ports: None,
                };
                return Some((meta, (off <= l3.len()).then_some(off)));
            }
        };
        proto = IpProtocol::from(l3[off]);
        off += len;
    }
    let meta = IpMeta {
        proto,
        l4_offset: None,
        fragment,
        ports: None,
    };
    Some((meta, None))
}

/// Reads TCP or UDP ports from a whole upper-layer header.
fn ports(proto: IpProtocol, l4: &[u8]) -> Option<Ports> {
    match proto {
        IpProtocol::Tcp => TcpPacket::new_checked(l4).ok().map(|tcp| Ports {
            src: tcp.src_port(),
            dst: tcp.dst_port(),
        }),
        IpProtocol::Udp => UdpPacket::new_checked(l4).ok().map(|udp| Ports {
            src: udp.src_port(),
            dst: udp.dst_port(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An untagged IPv4/UDP frame: 10.0.0.1:1234 -> 10.0.0.2:53, 4 payload bytes, DF set,
    /// checksums worked out by hand.
    const IPV4_UDP: [u8; 46] = [
        0x02, 0, 0, 0, 0, 0x02, // dst
        0x02, 0, 0, 0, 0, 0x01, // src
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x20, 0x00, 0x01, 0x40, 0x00, 0x40, 0x11, 0x26, 0xca, // v4 header
        10, 0, 0, 1, 10, 0, 0, 2, // addresses
        0x04, 0xd2, 0x00, 0x35, 0x00, 0x0c, 0xe2, 0xc6, // UDP
        1, 2, 3, 4,
    ];

    /// The smoltcp views the classifier reads, both ways over the fixture.
    #[test]
    fn smoltcp_views_parse_and_emit_the_fixture() {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            EthernetFrame, EthernetRepr, IpAddress, Ipv4Address, Ipv4Repr, UdpRepr,
        };

        let caps = ChecksumCapabilities::default();
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let ip = Ipv4Repr {
            src_addr: Ipv4Address::new(10, 0, 0, 1),
            dst_addr: Ipv4Address::new(10, 0, 0, 2),
            next_header: IpProtocol::Udp,
            payload_len: 12,
            hop_limit: 64,
        };
        let udp = UdpRepr {
            src_port: 1234,
            dst_port: 53,
        };
        let (src, dst) = (IpAddress::Ipv4(ip.src_addr), IpAddress::Ipv4(ip.dst_addr));

        let frame = EthernetFrame::new_checked(&IPV4_UDP[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&frame).unwrap(), eth);
        let packet = Ipv4Packet::new_checked(frame.payload()).unwrap();
        assert_eq!(Ipv4Repr::parse(&packet, &caps).unwrap(), ip);
        let datagram = UdpPacket::new_checked(packet.payload()).unwrap();
        assert_eq!(UdpRepr::parse(&datagram, &src, &dst, &caps).unwrap(), udp);
        assert_eq!(datagram.payload(), [1, 2, 3, 4]);

        let mut out = [0u8; 46];
        eth.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
        let mut packet = Ipv4Packet::new_unchecked(&mut out[14..]);
        ip.emit(&mut packet, &caps);
        packet.set_ident(1);
        packet.fill_checksum();
        let mut datagram = UdpPacket::new_unchecked(&mut out[34..]);
        udp.emit(
            &mut datagram,
            &src,
            &dst,
            4,
            |p| p.copy_from_slice(&[1, 2, 3, 4]),
            &caps,
        );
        assert_eq!(out, IPV4_UDP);
    }

    /// A frame tagged VID 7 carrying IPv6 + hop-by-hop + TCP 80 -> 443.
    fn tagged_ipv6_tcp() -> Vec<u8> {
        let mut f = vec![
            0x33, 0x33, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 0x09, 0x81, 0x00, 0x00, 0x07,
        ];
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 28, 0, 64]); // payload 8 + 20, next hdr HBH
        f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // HBH: next TCP, len 0, PadN
        f.extend_from_slice(&[
            0, 80, 1, 187, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ]);
        f.extend_from_slice(&[0, 0, 0, 0]);
        f
    }

    #[test]
    fn classifies_untagged_ipv4_udp() {
        let meta = FrameMeta::parse(&IPV4_UDP).unwrap();
        assert_eq!(meta.l2.dst, EthernetAddress([2, 0, 0, 0, 0, 2]));
        assert_eq!(meta.l2.src, EthernetAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(meta.l2.tci, None);
        assert_eq!(meta.l2.ethertype, EthernetProtocol::Ipv4);
        assert_eq!(meta.l2.l3_offset, 14);
        let ip = meta.ip.unwrap();
        assert_eq!(ip.proto, IpProtocol::Udp);
        assert_eq!(ip.l4_offset, Some(34));
        assert!(!ip.fragment);
        assert_eq!(ip.ports, Some(Ports { src: 1234, dst: 53 }));
    }

    #[test]
    fn classifies_tagged_ipv6_tcp_after_extension_header() {
        let frame = tagged_ipv6_tcp();
        let meta = FrameMeta::parse(&frame).unwrap();
        assert_eq!(meta.l2.tci, Some(Tci(7)));
        assert_eq!(meta.l2.ethertype, EthernetProtocol::Ipv6);
        assert_eq!(meta.l2.l3_offset, 18);
        let ip = meta.ip.unwrap();
        assert_eq!(ip.proto, IpProtocol::Tcp);
        assert_eq!(ip.l4_offset, Some(18 + 40 + 8));
        assert_eq!(ip.ports, Some(Ports { src: 80, dst: 443 }));
    }

    #[test]
    fn later_ipv4_fragment_has_no_ports() {
        let mut frame = IPV4_UDP;
        frame[20] = 0x00;
        frame[21] = 0x10; // fragment offset 16 * 8
        let ip = FrameMeta::parse(&frame).unwrap().ip.unwrap();
        assert!(ip.fragment);
        assert_eq!((ip.l4_offset, ip.ports), (None, None));
    }

    #[test]
    fn truncated_headers() {
        assert_eq!(L2Meta::parse(&IPV4_UDP[..13]), Err(Error::TooShort));
        let tagged = tagged_ipv6_tcp();
        assert_eq!(L2Meta::parse(&tagged[..17]), Err(Error::TruncatedTag));
        // IPv4 cut inside its header: L2 only.
        assert_eq!(FrameMeta::parse(&IPV4_UDP[..30]).unwrap().ip, None);
        // IPv4 total length beyond the frame: not IP.
        assert_eq!(FrameMeta::parse(&IPV4_UDP[..38]).unwrap().ip, None);
        // UDP header cut (total length 24): IP facts without ports.
        let mut frame = IPV4_UDP;
        frame[17] = 24;
        let ip = FrameMeta::parse(&frame[..38]).unwrap().ip.unwrap();
        assert_eq!(
            (ip.proto, ip.l4_offset, ip.ports),
            (IpProtocol::Udp, Some(34), None)
        );
    }

    #[test]
    fn every_prefix_of_fixtures_is_classified_without_panic() {
        let tagged = tagged_ipv6_tcp();
        for frame in [&IPV4_UDP[..], &tagged[..]] {
            for len in 0..=frame.len() {
                let _ = FrameMeta::parse(&frame[..len]);
            }
        }
    }
}
