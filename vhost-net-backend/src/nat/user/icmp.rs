//! ICMP echo of the user egress, through unprivileged ping sockets (`SOCK_DGRAM`,
//! `IPPROTO_ICMP`; allowed by the `net.ipv4.ping_group_range` sysctl): one socket per guest
//! echo flow (guest, identifier, host), living as long as conntrack keeps the flow (30 s). The
//! kernel gives each socket its own identifier; replies get the guest's back.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bridge_core::conntrack::Protocol as CtProtocol;
use bridge_core::wire::{Icmpv4Message, Icmpv4Packet};
use socket2::{Domain, Protocol, Socket, Type};

use super::udp::tuple;
use super::EgressCx;
use crate::nat::registry::{Kind, Token};
use crate::nat::slots::Slots;

/// Most echo flows of a network.
pub const MAX_FLOWS: usize = 1024;

#[derive(Debug)]
struct Flow {
    socket: Socket,
    guest: Ipv4Addr,
    ident: u16,
    peer: Ipv4Addr,
}

/// Counters of the echo flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IcmpStats {
    /// Flows opened.
    pub opened: u64,
    /// Echo requests not sent (too many flows, no ping socket allowed, send failed).
    pub dropped: u64,
}

/// The echo flows of a network.
#[derive(Debug)]
pub struct IcmpFlows {
    flows: Slots<Flow>,
    by_key: HashMap<(Ipv4Addr, u16, Ipv4Addr), usize>,
    stats: IcmpStats,
}

impl Default for IcmpFlows {
    fn default() -> Self {
        IcmpFlows {
            flows: Slots::new(MAX_FLOWS),
            by_key: HashMap::new(),
            stats: IcmpStats::default(),
        }
    }
}

impl IcmpFlows {
    /// The counters.
    pub fn stats(&self) -> IcmpStats {
        self.stats
    }

    /// Sends a guest's echo request (`message`: the ICMP message) from `guest` to `peer`.
    pub fn send(&mut self, cx: &mut EgressCx<'_>, guest: Ipv4Addr, peer: Ipv4Addr, message: &[u8]) {
        let Ok(packet) = Icmpv4Packet::new_checked(message) else {
            return;
        };
        if packet.msg_type() != Icmpv4Message::EchoRequest {
            return;
        }
        let ident = packet.echo_ident();
        let index = match self.by_key.get(&(guest, ident, peer)) {
            Some(&i) => i,
            None => match self.open(cx, guest, ident, peer) {
                Ok(i) => i,
                Err(e) => {
                    self.stats.dropped += 1;
                    return cx.log(|| format!("no ping socket for a guest's echo request: {e}"));
                }
            },
        };
        if let Some(flow) = self.flows.get(index) {
            // The kernel sets the identifier and the checksum.
            if flow.socket.send(message).is_err() {
                self.stats.dropped += 1;
            }
        }
    }

    fn open(
        &mut self,
        cx: &mut EgressCx<'_>,
        guest: Ipv4Addr,
        ident: u16,
        peer: Ipv4Addr,
    ) -> io::Result<usize> {
        if self.flows.is_full() {
            return Err(io::Error::other("too many echo flows"));
        }
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))?;
        socket.set_nonblocking(true)?;
        socket.connect(&SocketAddr::V4(SocketAddrV4::new(peer, 0)).into())?;
        let flow = Flow {
            socket,
            guest,
            ident,
            peer,
        };
        let index = self
            .flows
            .insert(flow)
            .map_err(|_| io::Error::other("too many echo flows"))?;
        if let Some(f) = self.flows.get(index) {
            cx.reg.watch(&f.socket, Token::new(Kind::Icmp, index));
        }
        self.by_key.insert((guest, ident, peer), index);
        self.stats.opened += 1;
        Ok(index)
    }

    /// Flow `index`'s socket is readable: echo replies go to the guest.
    pub fn on_socket(&mut self, cx: &mut EgressCx<'_>, index: usize) {
        let Some(flow) = self.flows.get(index) else {
            return;
        };
        let mut buf = [0u8; 65536];
        loop {
            let n = match (&flow.socket).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let Ok(mut packet) = Icmpv4Packet::new_checked(&mut buf[..n]) else {
                continue;
            };
            if packet.msg_type() != Icmpv4Message::EchoReply {
                continue;
            }
            packet.set_echo_ident(flow.ident);
            packet.fill_checksum();
            cx.icmp_to_guest(flow.peer, flow.guest, &buf[..n]);
        }
    }

    /// Closes the flows conntrack no longer holds.
    pub fn expire(&mut self, cx: &mut EgressCx<'_>) {
        let gone: Vec<usize> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                let t = tuple(
                    cx.zone,
                    CtProtocol::Icmp,
                    SocketAddrV4::new(f.guest, f.ident),
                    SocketAddrV4::new(f.peer, f.ident),
                );
                !cx.is_tracked(&t)
            })
            .map(|(i, _)| i)
            .collect();
        for i in gone {
            if let Some(f) = self.flows.remove(i) {
                self.by_key.remove(&(f.guest, f.ident, f.peer));
                cx.reg.retire(f.socket);
            }
        }
    }
}
