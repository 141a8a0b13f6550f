//! UDP flows of the user egress: each guest flow (guest address and port to a host address and
//! port) gets a host UDP socket connected to the host's address, so replies come back to it
//! alone; it lives as long as conntrack keeps the flow (30 s unreplied, 120 s once replied).
//! ICMP port unreachable that the host socket reports is passed to the guest.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, SocketAddrV4};

use bridge_core::conntrack::{Endpoint, FlowTuple, Protocol as CtProtocol};
use bridge_core::gateway::icmp::ErrorKind;
use bridge_core::wire::Icmpv4DstUnreachable;
use socket2::{Domain, Protocol, Socket, Type};

use super::EgressCx;
use crate::nat::registry::{Kind, Token};
use crate::nat::slots::Slots;

/// Most UDP flows of a network.
pub const MAX_FLOWS: usize = 4096;
/// Bytes of a guest's last datagram kept to quote in an ICMP error (RFC 1812's bound).
const QUOTE_LEN: usize = 576;

#[derive(Debug)]
struct Flow {
    socket: Socket,
    guest: SocketAddrV4,
    peer: SocketAddrV4,
    /// The start of the guest's last datagram (Ethernet frame), for an ICMP error about it.
    last: Vec<u8>,
}

/// Counters of the UDP flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UdpStats {
    /// Flows opened.
    pub opened: u64,
    /// Datagrams from guests not sent (too many flows, no socket, send failed).
    pub dropped: u64,
}

/// The UDP flows of a network.
#[derive(Debug)]
pub struct UdpFlows {
    flows: Slots<Flow>,
    by_key: HashMap<(SocketAddrV4, SocketAddrV4), usize>,
    stats: UdpStats,
}

impl Default for UdpFlows {
    fn default() -> Self {
        UdpFlows {
            flows: Slots::new(MAX_FLOWS),
            by_key: HashMap::new(),
            stats: UdpStats::default(),
        }
    }
}

/// The conntrack tuple of a flow, in its original direction (guest to peer).
pub fn tuple(
    zone: u32,
    protocol: CtProtocol,
    guest: SocketAddrV4,
    peer: SocketAddrV4,
) -> FlowTuple {
    let end = |a: SocketAddrV4| Endpoint {
        addr: (*a.ip()).into(),
        port: a.port(),
    };
    FlowTuple {
        zone,
        protocol,
        src: end(guest),
        dst: end(peer),
    }
}

impl UdpFlows {
    /// The counters.
    pub fn stats(&self) -> UdpStats {
        self.stats
    }

    /// Sends a guest's datagram (`payload`, in `frame`) from `guest` to `peer`.
    pub fn send(
        &mut self,
        cx: &mut EgressCx<'_>,
        guest: SocketAddrV4,
        peer: SocketAddrV4,
        payload: &[u8],
        frame: &[u8],
    ) {
        let index = match self.by_key.get(&(guest, peer)) {
            Some(&i) => i,
            None => match self.open(cx, guest, peer) {
                Some(i) => i,
                None => {
                    self.stats.dropped += 1;
                    return;
                }
            },
        };
        let Some(flow) = self.flows.get_mut(index) else {
            return;
        };
        flow.last.clear();
        flow.last
            .extend_from_slice(&frame[..frame.len().min(QUOTE_LEN + 34)]);
        match flow.socket.send(payload) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                let kind = ErrorKind::Unreachable(Icmpv4DstUnreachable::PortUnreachable);
                cx.reject_from(frame, kind, *peer.ip());
            }
            Err(_) => self.stats.dropped += 1,
        }
    }

    fn open(
        &mut self,
        cx: &mut EgressCx<'_>,
        guest: SocketAddrV4,
        peer: SocketAddrV4,
    ) -> Option<usize> {
        if self.flows.is_full() {
            return None;
        }
        let target = SocketAddr::V4(peer);
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .and_then(|s| {
                s.set_nonblocking(true)?;
                s.connect(&target.into())?;
                Ok(s)
            })
            .ok()?;
        let flow = Flow {
            socket,
            guest,
            peer,
            last: Vec::new(),
        };
        let index = self.flows.insert(flow).ok()?;
        if let Some(f) = self.flows.get(index) {
            cx.reg.watch(&f.socket, Token::new(Kind::Udp, index));
        }
        self.by_key.insert((guest, peer), index);
        self.stats.opened += 1;
        Some(index)
    }

    /// Flow `index`'s socket is readable: its datagrams go to the guest.
    pub fn on_socket(&mut self, cx: &mut EgressCx<'_>, index: usize) {
        let Some(flow) = self.flows.get(index) else {
            return;
        };
        let mut buf = [0u8; 65536];
        loop {
            match (&flow.socket).read(&mut buf) {
                Ok(n) => cx.udp_to_guest(flow.peer, flow.guest, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    let kind = ErrorKind::Unreachable(Icmpv4DstUnreachable::PortUnreachable);
                    cx.reject_from(&flow.last, kind, *flow.peer.ip());
                }
                Err(_) => return,
            }
        }
    }

    /// Closes the flows conntrack no longer holds.
    pub fn expire(&mut self, cx: &mut EgressCx<'_>) {
        let gone: Vec<usize> = self
            .flows
            .iter()
            .filter(|(_, f)| !cx.is_tracked(&tuple(cx.zone, CtProtocol::Udp, f.guest, f.peer)))
            .map(|(i, _)| i)
            .collect();
        for i in gone {
            if let Some(f) = self.flows.remove(i) {
                self.by_key.remove(&(f.guest, f.peer));
                cx.reg.retire(f.socket);
            }
        }
    }
}
