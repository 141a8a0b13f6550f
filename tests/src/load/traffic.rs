//! The frames a load run sends: UDP/IPv4 frames of a fixed size spread over flows (source and
//! destination MACs, addresses and ports), and 64 KiB TCP segments with a TSO header. Sizes are
//! Ethernet frame lengths without FCS (what a virtio-net driver hands over, header excluded).

use std::net::{IpAddr, Ipv4Addr};

use bridge_core::wire::{IpProtocol, Ipv4Packet, UdpPacket};

use crate::frontend::frames::TcpFlow;
use crate::frontend::net_hdr::NetHdr;

/// Ethernet + IPv4 + UDP headers.
pub const UDP_HEADERS: usize = 14 + 20 + 8;
/// Smallest frame a run sends: the headers and an 8-byte stamp, padded to the Ethernet minimum
/// without FCS.
pub const MIN_FRAME: usize = 60;
/// Where a frame's stamp (sequence number, for latency runs) sits: the UDP payload.
pub const STAMP_OFFSET: usize = UDP_HEADERS;
/// Largest frame: a 64 KiB IP packet in Ethernet.
pub const MAX_FRAME: usize = 14 + 65535;
/// TCP payload of one TSO segment: a 64 KiB IP packet less the IPv4 and TCP headers.
pub const TSO_PAYLOAD: usize = 65535 - 20 - 20;
/// MSS of the TSO segments (a 1500-byte MTU).
pub const TSO_MSS: u16 = 1460;

/// The MAC of guest `guest`'s address number `n`: locally administered, unicast.
pub fn mac(guest: usize, n: usize) -> [u8; 6] {
    [
        0x02,
        0x4c,
        (guest >> 8) as u8,
        guest as u8,
        (n >> 8) as u8,
        n as u8,
    ]
}

/// The first UDP destination port of the flows; they use [`DST_PORTS`] ports from it.
pub const FIRST_DST_PORT: u16 = 5201;
/// How many UDP destination ports the flows use.
pub const DST_PORTS: u16 = 16;

/// One UDP flow from one guest to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl Flow {
    /// Flow number `n` from a guest with `src_macs` to one with `dst_macs`: MACs, addresses
    /// and ports all vary with `n` (addresses in 10.0.0.0/8 by guest number, ports from 1024).
    pub fn nth(
        src_guest: usize,
        src_macs: &[[u8; 6]],
        dst_guest: usize,
        dst_macs: &[[u8; 6]],
        n: usize,
    ) -> Flow {
        let host = |guest: usize, k: usize| {
            Ipv4Addr::from(0x0a00_0000 | ((guest as u32 & 0xff) << 16) | (k as u32 & 0xffff))
        };
        Flow {
            src_mac: src_macs[n % src_macs.len()],
            dst_mac: dst_macs[(n / src_macs.len()) % dst_macs.len()],
            src: host(src_guest, n % 251 + 1),
            dst: host(dst_guest, n % 241 + 1),
            src_port: 1024 + (n % 60000) as u16,
            dst_port: FIRST_DST_PORT + (n % DST_PORTS as usize) as u16,
        }
    }

    /// Writes the flow's frame of `len` bytes ([`MIN_FRAME`] at least) into `buf`; returns its
    /// length. The UDP checksum is left at 0 (none), the payload counts up from the stamp.
    pub fn udp_frame(&self, buf: &mut [u8], len: usize) -> usize {
        let len = len.clamp(MIN_FRAME, buf.len());
        let frame = &mut buf[..len];
        frame[0..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = len - 14;
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_dscp(0);
            ip.set_ecn(0);
            ip.set_total_len(ip_len as u16);
            ip.set_ident(0);
            ip.clear_flags();
            ip.set_dont_frag(true);
            ip.set_frag_offset(0);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Udp);
            ip.set_src_addr(self.src);
            ip.set_dst_addr(self.dst);
            ip.fill_checksum();
        }
        {
            let mut udp = UdpPacket::new_unchecked(&mut frame[34..]);
            udp.set_src_port(self.src_port);
            udp.set_dst_port(self.dst_port);
            udp.set_len((ip_len - 20) as u16);
            udp.set_checksum(0);
        }
        for (i, b) in frame[UDP_HEADERS..].iter_mut().enumerate() {
            *b = i as u8;
        }
        len
    }

    /// A 64 KiB TCP segment of this flow's MACs and addresses with the TSO request header (MSS
    /// [`TSO_MSS`], partial checksum), as a guest with HOST_TSO4 sends it.
    pub fn tso_segment(&self, seq: u32) -> (NetHdr, Vec<u8>) {
        let tcp = TcpFlow {
            src_mac: self.src_mac,
            dst_mac: self.dst_mac,
            src: IpAddr::V4(self.src),
            dst: IpAddr::V4(self.dst),
            src_port: self.src_port,
            dst_port: self.dst_port,
        };
        let payload: Vec<u8> = (0..TSO_PAYLOAD).map(|i| i as u8).collect();
        tcp.offloaded(seq, &payload, false, Some(TSO_MSS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_core::wire::{EthernetFrame, Ipv4Packet, UdpPacket};

    #[test]
    fn udp_frames_parse_with_the_asked_length_and_flows_differ() {
        let a = [mac(0, 0), mac(0, 1)];
        let b = [mac(1, 0), mac(1, 1)];
        let mut buf = [0u8; 2048];
        let mut seen = std::collections::HashSet::new();
        for n in 0..64 {
            let flow = Flow::nth(0, &a, 1, &b, n);
            seen.insert(flow);
            for len in [10, 64, 1500] {
                let got = flow.udp_frame(&mut buf, len);
                assert_eq!(got, len.max(MIN_FRAME));
                let eth = EthernetFrame::new_checked(&buf[..got]).unwrap();
                assert_eq!(eth.dst_addr().as_bytes(), flow.dst_mac);
                let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                assert!(ip.verify_checksum());
                assert_eq!(usize::from(ip.total_len()), got - 14);
                let udp = UdpPacket::new_checked(ip.payload()).unwrap();
                assert_eq!(udp.dst_port(), flow.dst_port);
            }
        }
        assert_eq!(seen.len(), 64);
        let macs: std::collections::HashSet<_> =
            seen.iter().map(|f| (f.src_mac, f.dst_mac)).collect();
        assert_eq!(macs.len(), 4, "every MAC pair is used");
    }

    #[test]
    fn tso_segment_is_a_64k_ip_packet() {
        let flow = Flow::nth(0, &[mac(0, 0)], 1, &[mac(1, 0)], 0);
        let (hdr, frame) = flow.tso_segment(1);
        assert_eq!(frame.len(), MAX_FRAME);
        assert_eq!(hdr.gso_size, TSO_MSS);
        assert!(hdr.is_needs_csum());
    }
}
