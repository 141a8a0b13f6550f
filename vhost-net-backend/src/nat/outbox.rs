//! Frames a NAT network sends into its switch, gathered during a round of events and sent in
//! one go (each receiving guest signalled once). Frames addressed by IPv4 address only (what
//! egress sends back to guests) get their Ethernet destination from the gateway's ARP table.

use bridge_core::wire::{EthernetAddress, EthernetFrame, Ipv4Address, Ipv4Packet};

/// Frames waiting to be sent.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: Vec<(Vec<u8>, Resolve)>,
}

/// Whether a frame still needs its Ethernet destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolve {
    No,
    ByIpv4,
}

impl Outbox {
    /// Queues a complete Ethernet frame.
    pub fn frame(&mut self, frame: Vec<u8>) {
        self.frames.push((frame, Resolve::No));
    }

    /// Queues an Ethernet frame holding an IPv4 packet whose Ethernet destination is to be
    /// found from its IPv4 destination.
    pub fn ipv4(&mut self, frame: Vec<u8>) {
        self.frames.push((frame, Resolve::ByIpv4));
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Hands each waiting frame to `send`, after filling in Ethernet destinations with
    /// `lookup`; a frame whose destination `lookup` does not know goes to `unresolved` (with
    /// the IPv4 address) instead.
    pub fn drain(
        &mut self,
        lookup: impl Fn(Ipv4Address) -> Option<EthernetAddress>,
        mut send: impl FnMut(&[u8]),
        mut unresolved: impl FnMut(Ipv4Address),
    ) {
        for (mut frame, resolve) in self.frames.drain(..) {
            if resolve == Resolve::ByIpv4 {
                let Some(dst) = ipv4_destination(&frame) else {
                    continue;
                };
                match lookup(dst) {
                    Some(mac) => EthernetFrame::new_unchecked(&mut frame[..]).set_dst_addr(mac),
                    None => {
                        unresolved(dst);
                        continue;
                    }
                }
            }
            send(&frame);
        }
    }
}

fn ipv4_destination(frame: &[u8]) -> Option<Ipv4Address> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    Some(Ipv4Packet::new_checked(eth.payload()).ok()?.dst_addr())
}
