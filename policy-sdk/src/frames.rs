//! Builders for well-formed frames (Ethernet, ARP, IPv4/IPv6, TCP, UDP, ICMP, DHCP): test
//! fixtures for policies and the host's golden frames.

use crate::headers::{ETH_ARP, ETH_IPV4, ETH_IPV6, IP_ICMP, IP_TCP, IP_UDP};
use std::vec::Vec;

/// The broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// A host on the wire: MAC and IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// MAC address.
    pub mac: [u8; 6],
    /// IPv4 address.
    pub ip: [u8; 4],
}

impl Endpoint {
    /// An endpoint with `mac` and `ip`.
    pub const fn new(mac: [u8; 6], ip: [u8; 4]) -> Self {
        Endpoint { mac, ip }
    }
}

/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// An Ethernet II frame.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (no options, DF set, header checksum filled in).
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = Vec::with_capacity(total as usize);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// A TCP header (checksum left zero: policies do not verify it).
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

/// A UDP datagram (checksum zero: none).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A BOOTP/DHCP message body (`op` 1 request, 2 reply) for client `chaddr`.
pub fn bootp(op: u8, chaddr: [u8; 6]) -> Vec<u8> {
    let mut b = std::vec![0u8; 240];
    b[0] = op;
    b[1] = 1;
    b[2] = 6;
    b[28..34].copy_from_slice(&chaddr);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b
}

/// A TCP segment over IPv4 in Ethernet from `from` to `to`.
pub fn tcp4(from: Endpoint, to: Endpoint, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ethernet(
        to.mac,
        from.mac,
        ETH_IPV4,
        &ipv4(from.ip, to.ip, IP_TCP, &tcp(sport, dport, flags)),
    )
}

/// A UDP datagram over IPv4 in Ethernet from `from` to `to`.
pub fn udp4(from: Endpoint, to: Endpoint, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(
        to.mac,
        from.mac,
        ETH_IPV4,
        &ipv4(from.ip, to.ip, IP_UDP, &udp(sport, dport, payload)),
    )
}

/// An ICMP echo request over IPv4 in Ethernet.
pub fn ping4(from: Endpoint, to: Endpoint) -> Vec<u8> {
    let mut icmp = std::vec![8, 0, 0, 0, 0, 1, 0, 1];
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ethernet(
        to.mac,
        from.mac,
        ETH_IPV4,
        &ipv4(from.ip, to.ip, IP_ICMP, &icmp),
    )
}

/// A DHCP client request (DISCOVER-shaped) from `mac`, broadcast.
pub fn dhcp_request(mac: [u8; 6]) -> Vec<u8> {
    let from = Endpoint { mac, ip: [0; 4] };
    let to = Endpoint {
        mac: BROADCAST,
        ip: [255; 4],
    };
    udp4(from, to, 68, 67, &bootp(1, mac))
}

/// A DHCP server reply (OFFER-shaped) from `server` to client `client_mac`, broadcast.
pub fn dhcp_reply(server: Endpoint, client_mac: [u8; 6]) -> Vec<u8> {
    let to = Endpoint {
        mac: BROADCAST,
        ip: [255; 4],
    };
    udp4(server, to, 67, 68, &bootp(2, client_mac))
}

/// An Ethernet/IPv4 ARP packet (`op` 1 request, 2 reply).
pub fn arp(op: u16, sender: Endpoint, target: Endpoint) -> Vec<u8> {
    let mut a = std::vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sender.mac);
    a.extend_from_slice(&sender.ip);
    a.extend_from_slice(&target.mac);
    a.extend_from_slice(&target.ip);
    let dst = if op == 1 { BROADCAST } else { target.mac };
    ethernet(dst, sender.mac, ETH_ARP, &a)
}

/// An ARP request from `sender` for `target_ip`.
pub fn arp_request(sender: Endpoint, target_ip: [u8; 4]) -> Vec<u8> {
    arp(
        1,
        sender,
        Endpoint {
            mac: [0; 6],
            ip: target_ip,
        },
    )
}

/// An IPv6 UDP datagram in Ethernet.
pub fn udp6(src_mac: [u8; 6], src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let dst_mac = [0x33, 0x33, dst[12], dst[13], dst[14], dst[15]];
    ethernet(
        dst_mac,
        src_mac,
        ETH_IPV6,
        &ipv6(src, dst, IP_UDP, &udp(sport, dport, &[])),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ipv4([10, 0, 0, 1], [10, 0, 0, 2], IP_UDP, &udp(1, 2, b"x"));
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
    }
}
