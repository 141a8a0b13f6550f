//! Builders for the Ethernet/IPv4 frames the gateway sends.
//!
//! Every reply the gateway makes is a fresh frame: Ethernet header, an IPv4 header without
//! options (TTL 64) and the payload, checksums filled in. Parsing stays with smoltcp's views.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
    UDP_HEADER_LEN,
};

/// TTL of the IPv4 packets the gateway originates (Linux's default).
pub const TTL: u8 = 64;

/// Source and destination of an Ethernet + IPv4 packet the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Route {
    /// Ethernet source (the gateway's MAC).
    pub src_mac: EthernetAddress,
    /// Ethernet destination.
    pub dst_mac: EthernetAddress,
    /// IPv4 source.
    pub src_ip: Ipv4Address,
    /// IPv4 destination.
    pub dst_ip: Ipv4Address,
}

/// An Ethernet frame carrying an IPv4 packet of `protocol` whose payload `emit` writes
/// (`payload_len` bytes).
pub fn ipv4_frame(
    route: &Ipv4Route,
    protocol: IpProtocol,
    payload_len: usize,
    emit: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut buf = vec![0u8; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + payload_len];
    ipv4_frame_into(&mut buf, route, protocol, payload_len, emit);
    buf
}

/// [`ipv4_frame`] written into `out`; returns the frame's length, or `None` (nothing written)
/// when `out` is too short.
pub fn ipv4_frame_into(
    out: &mut [u8],
    route: &Ipv4Route,
    protocol: IpProtocol,
    payload_len: usize,
    emit: impl FnOnce(&mut [u8]),
) -> Option<usize> {
    let len = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + payload_len;
    let buf = out.get_mut(..len)?;
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: route.src_mac,
        dst_addr: route.dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut frame);
    let ip_repr = Ipv4Repr {
        src_addr: route.src_ip,
        dst_addr: route.dst_ip,
        next_header: protocol,
        payload_len,
        hop_limit: TTL,
    };
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip_repr.emit(&mut packet, &ChecksumCapabilities::default());
    emit(packet.payload_mut());
    Some(len)
}

/// An Ethernet frame carrying one UDP datagram.
pub fn udp_frame(route: &Ipv4Route, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    ipv4_frame(
        route,
        IpProtocol::Udp,
        UDP_HEADER_LEN + payload.len(),
        |buf| {
            let mut udp = UdpPacket::new_unchecked(buf);
            UdpRepr { src_port, dst_port }.emit(
                &mut udp,
                &IpAddress::Ipv4(route.src_ip),
                &IpAddress::Ipv4(route.dst_ip),
                payload.len(),
                |out| out.copy_from_slice(payload),
                &ChecksumCapabilities::default(),
            );
        },
    )
}
