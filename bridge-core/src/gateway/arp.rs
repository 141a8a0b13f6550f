//! ARP for the gateway: replies for its own address, requests for guests' addresses, and the
//! ARP table of guests (IPv4 address -> MAC) learned from what they send.
//!
//! The table is bounded (the oldest entry makes room) and ages entries out; the daemon looks
//! guests up in it to address frames coming back from egress.

use std::collections::HashMap;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Ipv4Address, ETHERNET_HEADER_LEN,
};

/// Default number of guests the ARP table holds.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Default age after which an entry not refreshed is forgotten.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// One learned binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpEntry {
    /// The guest's MAC.
    pub mac: EthernetAddress,
    /// When the binding was last seen.
    pub seen: Instant,
}

/// Guests' IPv4 addresses and their MACs, learned from ARP and IPv4 traffic.
#[derive(Debug, Clone)]
pub struct ArpTable {
    entries: HashMap<Ipv4Address, ArpEntry>,
    capacity: usize,
    max_age: Duration,
}

impl ArpTable {
    /// An empty table of at most `capacity` entries, forgetting entries after `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            max_age,
        }
    }

    /// Records that `ip` is at `mac` as of `now`. When the table is full, the entry seen least
    /// recently makes room.
    pub fn learn(&mut self, now: Instant, ip: Ipv4Address, mac: EthernetAddress) {
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.capacity {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.seen)
                .map(|(ip, _)| *ip)
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(ip, ArpEntry { mac, seen: now });
    }

    /// The MAC of `ip`, unless unknown or aged out at `now`.
    pub fn lookup(&self, now: Instant, ip: Ipv4Address) -> Option<EthernetAddress> {
        self.entries
            .get(&ip)
            .filter(|e| now < e.seen + self.max_age)
            .map(|e| e.mac)
    }

    /// Forgets the entries aged out at `now`.
    pub fn expire(&mut self, now: Instant) {
        let max_age = self.max_age;
        self.entries.retain(|_, e| now < e.seen + max_age);
    }

    /// All entries (including any aged out but not yet expired).
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Address, ArpEntry)> + '_ {
        self.entries.iter().map(|(ip, e)| (*ip, *e))
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An Ethernet frame carrying `repr`, sent from `src` to `dst`.
fn arp_frame(src: EthernetAddress, dst: EthernetAddress, repr: &ArpRepr) -> Vec<u8> {
    let mut buf = vec![0u8; ETHERNET_HEADER_LEN + repr.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut frame);
    repr.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

/// The reply telling `requester` (MAC, address) that `ip` is at `mac`.
pub fn reply(
    mac: EthernetAddress,
    ip: Ipv4Address,
    requester: (EthernetAddress, Ipv4Address),
) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: requester.0,
        target_protocol_addr: requester.1,
    };
    arp_frame(mac, requester.0, &repr)
}

/// A broadcast who-has `target` from `mac`/`ip`.
pub fn request(mac: EthernetAddress, ip: Ipv4Address, target: Ipv4Address) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    arp_frame(mac, EthernetAddress::BROADCAST, &repr)
}
