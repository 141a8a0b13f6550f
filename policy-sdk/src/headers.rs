//! Frame headers: the host's classification of a frame into descriptor fields
//! ([`classify`]) and the read-only view a policy gets of one frame ([`Frame`]).
//!
//! Both are total: any byte sequence classifies, and every accessor returns `None` rather
//! than reading past the snapshot.

use crate::abi::{flag, FrameDesc, SNAPSHOT_LEN};

/// Ethertype IPv4.
pub const ETH_IPV4: u16 = 0x0800;
/// Ethertype ARP.
pub const ETH_ARP: u16 = 0x0806;
/// Ethertype IPv6.
pub const ETH_IPV6: u16 = 0x86dd;
/// Ethertype 802.1Q VLAN tag.
pub const ETH_VLAN: u16 = 0x8100;
/// Ethertype 802.1ad service tag.
pub const ETH_QINQ: u16 = 0x88a8;

/// IP protocol ICMP.
pub const IP_ICMP: u8 = 1;
/// IP protocol TCP.
pub const IP_TCP: u8 = 6;
/// IP protocol UDP.
pub const IP_UDP: u8 = 17;
/// IP protocol ICMPv6.
pub const IP_ICMPV6: u8 = 58;

/// What [`classify`] reads from a frame's headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Ethertype after VLAN tags.
    pub ethertype: u16,
    /// TCI of the outermost VLAN tag (0: untagged).
    pub vlan_tci: u16,
    /// IP protocol (0: not IP).
    pub ip_proto: u8,
    /// L3 header offset.
    pub l3_off: u8,
    /// L4 header offset (0: none, e.g. a non-first fragment).
    pub l4_off: u8,
    /// [`flag::FRAGMENT`], [`flag::BROADCAST`], [`flag::MULTICAST`].
    pub flags: u8,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Classifies a frame's headers. Frames too short for a header leave its fields zero.
pub fn classify(frame: &[u8]) -> HeaderInfo {
    let mut info = HeaderInfo::default();
    let Some(dst0) = frame.first() else {
        return info;
    };
    if frame[..6.min(frame.len())].iter().all(|&b| b == 0xff) && frame.len() >= 6 {
        info.flags |= flag::BROADCAST;
    } else if dst0 & 1 == 1 {
        info.flags |= flag::MULTICAST;
    }
    let mut at = 12;
    let Some(mut ethertype) = be16(frame, at) else {
        return info;
    };
    let mut tags = 0;
    while (ethertype == ETH_VLAN || ethertype == ETH_QINQ) && tags < 2 {
        if tags == 0 {
            info.vlan_tci = be16(frame, at + 2).unwrap_or(0);
        }
        at += 4;
        tags += 1;
        match be16(frame, at) {
            Some(t) => ethertype = t,
            None => return info,
        }
    }
    info.ethertype = ethertype;
    let l3 = at + 2;
    info.l3_off = l3 as u8;
    match ethertype {
        ETH_IPV4 => {
            let (Some(&vihl), Some(frag), Some(&proto)) =
                (frame.get(l3), be16(frame, l3 + 6), frame.get(l3 + 9))
            else {
                return info;
            };
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return info;
            }
            info.ip_proto = proto;
            let offset = frag & 0x1fff;
            let more = frag & 0x2000 != 0;
            if offset != 0 || more {
                info.flags |= flag::FRAGMENT;
            }
            if offset == 0 && l3 + ihl <= usize::from(u8::MAX) {
                info.l4_off = (l3 + ihl) as u8;
            }
        }
        ETH_IPV6 => {
            let Some(&next) = frame.get(l3 + 6) else {
                return info;
            };
            info.ip_proto = next;
            let mut l4 = l3 + 40;
            // Skip the fragment header (44); other extension headers leave ip_proto as found.
            if next == 44 {
                let (Some(&inner), Some(frag)) = (frame.get(l4), be16(frame, l4 + 2)) else {
                    return info;
                };
                info.ip_proto = inner;
                info.flags |= flag::FRAGMENT;
                if frag & 0xfff8 != 0 {
                    return info;
                }
                l4 += 8;
            }
            if l4 <= usize::from(u8::MAX) {
                info.l4_off = l4 as u8;
            }
        }
        _ => {}
    }
    info
}

/// `base` (what the datapath knows: ports, network, conntrack state, hook, direction flags)
/// completed with the frame's length and [`classify`]'s header fields.
pub fn describe(frame: &[u8], base: FrameDesc) -> FrameDesc {
    let info = classify(frame);
    FrameDesc {
        frame_len: frame.len() as u32,
        snap_len: frame.len().min(SNAPSHOT_LEN) as u16,
        vlan_tci: info.vlan_tci,
        ethertype: info.ethertype,
        ip_proto: info.ip_proto,
        l3_off: info.l3_off,
        l4_off: info.l4_off,
        flags: base.flags | info.flags,
        ..base
    }
}

/// A policy's read-only view of one frame: its descriptor and header snapshot.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// What the datapath knows about the frame.
    pub desc: &'a FrameDesc,
    /// The first `desc.snap_len` bytes of the frame.
    pub header: &'a [u8],
    /// Position in the batch (for `frame_read`).
    pub index: u32,
}

impl<'a> Frame<'a> {
    /// A view over `desc` and its snapshot slot (cut to `snap_len`).
    pub fn new(desc: &'a FrameDesc, snap: &'a [u8], index: u32) -> Self {
        let len = usize::from(desc.snap_len).min(snap.len()).min(SNAPSHOT_LEN);
        Frame {
            desc,
            header: &snap[..len],
            index,
        }
    }

    fn bytes<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.header.get(at..at + N)?.try_into().ok()
    }

    fn u16_at(&self, at: usize) -> Option<u16> {
        self.bytes::<2>(at).map(u16::from_be_bytes)
    }

    /// Destination MAC.
    pub fn eth_dst(&self) -> Option<[u8; 6]> {
        self.bytes(0)
    }

    /// Source MAC.
    pub fn eth_src(&self) -> Option<[u8; 6]> {
        self.bytes(6)
    }

    /// Whether the frame is IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.desc.ethertype == ETH_IPV4
    }

    /// Whether the frame is IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.desc.ethertype == ETH_IPV6
    }

    /// Whether the frame is ARP.
    pub fn is_arp(&self) -> bool {
        self.desc.ethertype == ETH_ARP
    }

    /// IPv4 source address.
    pub fn ipv4_src(&self) -> Option<[u8; 4]> {
        self.is_ipv4()
            .then(|| self.bytes(usize::from(self.desc.l3_off) + 12))
            .flatten()
    }

    /// IPv4 destination address.
    pub fn ipv4_dst(&self) -> Option<[u8; 4]> {
        self.is_ipv4()
            .then(|| self.bytes(usize::from(self.desc.l3_off) + 16))
            .flatten()
    }

    /// IPv6 source address.
    pub fn ipv6_src(&self) -> Option<[u8; 16]> {
        self.is_ipv6()
            .then(|| self.bytes(usize::from(self.desc.l3_off) + 8))
            .flatten()
    }

    /// IPv6 destination address.
    pub fn ipv6_dst(&self) -> Option<[u8; 16]> {
        self.is_ipv6()
            .then(|| self.bytes(usize::from(self.desc.l3_off) + 24))
            .flatten()
    }

    fn l4(&self) -> Option<usize> {
        (self.desc.l4_off != 0).then_some(usize::from(self.desc.l4_off))
    }

    /// TCP or UDP source port.
    pub fn src_port(&self) -> Option<u16> {
        self.ports_l4().and_then(|at| self.u16_at(at))
    }

    /// TCP or UDP destination port.
    pub fn dst_port(&self) -> Option<u16> {
        self.ports_l4().and_then(|at| self.u16_at(at + 2))
    }

    fn ports_l4(&self) -> Option<usize> {
        matches!(self.desc.ip_proto, IP_TCP | IP_UDP)
            .then(|| self.l4())
            .flatten()
    }

    /// TCP flags byte.
    pub fn tcp_flags(&self) -> Option<u8> {
        (self.desc.ip_proto == IP_TCP)
            .then(|| self.l4())
            .flatten()
            .and_then(|at| self.header.get(at + 13).copied())
    }

    /// ICMP or ICMPv6 type and code.
    pub fn icmp_type_code(&self) -> Option<(u8, u8)> {
        matches!(self.desc.ip_proto, IP_ICMP | IP_ICMPV6)
            .then(|| self.l4())
            .flatten()
            .and_then(|at| Some((*self.header.get(at)?, *self.header.get(at + 1)?)))
    }

    /// Offset of an Ethernet/IPv4 ARP header.
    fn arp_l3(&self) -> Option<usize> {
        let l3 = usize::from(self.desc.l3_off);
        let ok = self.is_arp()
            && self.u16_at(l3) == Some(1)
            && self.u16_at(l3 + 2) == Some(ETH_IPV4)
            && self.header.get(l3 + 4) == Some(&6)
            && self.header.get(l3 + 5) == Some(&4);
        ok.then_some(l3)
    }

    /// ARP operation (1 request, 2 reply) of an Ethernet/IPv4 ARP frame.
    pub fn arp_op(&self) -> Option<u16> {
        self.arp_l3().and_then(|l3| self.u16_at(l3 + 6))
    }

    /// ARP sender hardware address.
    pub fn arp_sender_mac(&self) -> Option<[u8; 6]> {
        self.arp_l3().and_then(|l3| self.bytes(l3 + 8))
    }

    /// ARP sender protocol (IPv4) address.
    pub fn arp_sender_ip(&self) -> Option<[u8; 4]> {
        self.arp_l3().and_then(|l3| self.bytes(l3 + 14))
    }

    /// ARP target protocol (IPv4) address.
    pub fn arp_target_ip(&self) -> Option<[u8; 4]> {
        self.arp_l3().and_then(|l3| self.bytes(l3 + 24))
    }

    /// BOOTP/DHCP op (1 request from a client, 2 reply from a server) of a UDP 67/68 frame.
    pub fn dhcp_op(&self) -> Option<u8> {
        let (src, dst) = (self.src_port()?, self.dst_port()?);
        let dhcp =
            self.desc.ip_proto == IP_UDP && matches!((src, dst), (68, 67) | (67, 68) | (67, 67));
        dhcp.then(|| self.header.get(self.l4()? + 8).copied())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, rest: &[u8]) -> std::vec::Vec<u8> {
        let mut f = std::vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(rest);
        f
    }

    #[test]
    fn classify_ipv4_tcp() {
        let mut ip = std::vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IP_TCP, 0, 0];
        ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        ip.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02]);
        let info = classify(&eth(ETH_IPV4, &ip));
        assert_eq!(info.ethertype, ETH_IPV4);
        assert_eq!((info.l3_off, info.l4_off, info.ip_proto), (14, 34, IP_TCP));
        assert_eq!(info.flags, 0);
    }

    #[test]
    fn classify_vlan_and_fragments() {
        let mut inner = 0x0800u16.to_be_bytes().to_vec();
        inner.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x00, 0x10, 64, IP_UDP]);
        inner.resize(2 + 20, 0);
        let mut tagged = std::vec![0x00, 0x05];
        tagged.extend_from_slice(&inner);
        let info = classify(&eth(ETH_VLAN, &tagged));
        assert_eq!(
            (info.vlan_tci, info.ethertype, info.l3_off),
            (5, ETH_IPV4, 18)
        );
        assert_eq!(info.flags & flag::FRAGMENT, flag::FRAGMENT);
        assert_eq!(info.l4_off, 0, "a non-first fragment has no L4 header");
    }

    #[test]
    fn classify_is_total() {
        for len in 0..64 {
            let junk: std::vec::Vec<u8> = (0..len).map(|i| (i * 37) as u8 | 0x40).collect();
            let _ = classify(&junk);
        }
        assert_eq!(classify(&[0xff; 6]).flags, flag::BROADCAST);
        assert_eq!(classify(&[0x01, 0, 0x5e, 0, 0, 1]).flags, flag::MULTICAST);
    }

    #[test]
    fn frame_accessors_stop_at_the_snapshot() {
        let mut ip = std::vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IP_UDP, 0, 0];
        ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 68, 0, 67]);
        let bytes = eth(ETH_IPV4, &ip);
        let info = classify(&bytes);
        let desc = FrameDesc {
            snap_len: bytes.len() as u16,
            ethertype: info.ethertype,
            l3_off: info.l3_off,
            l4_off: info.l4_off,
            ip_proto: info.ip_proto,
            ..FrameDesc::ZERO
        };
        let f = Frame::new(&desc, &bytes, 0);
        assert_eq!(f.ipv4_src(), Some([10, 0, 0, 1]));
        assert_eq!((f.src_port(), f.dst_port()), (Some(68), Some(67)));
        assert_eq!(f.dhcp_op(), None, "the BOOTP op byte is past the snapshot");
        assert_eq!(f.tcp_flags(), None);
    }
}
