//! Port forwards of the user egress: a host socket listens on the forward's address; a TCP
//! connection it accepts becomes a flow from the gateway's address to the guest's port, and
//! each UDP client gets its own gateway port, so the guest's replies find their way back.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use bridge_core::conntrack::Protocol as CtProtocol;
use socket2::{Domain, Socket, Type};

use super::tcp::{FlowKey, TcpFlows};
use super::udp::tuple;
use super::{stack::Stack, EgressCx};
use crate::config::{ForwardConfig, Protocol};
use crate::nat::registry::{Kind, Token};
use crate::nat::slots::Slots;

/// Most port forwards of a network.
pub const MAX_FORWARDS: usize = 256;
/// Most UDP clients of one forward at a time.
const MAX_UDP_CLIENTS: usize = 1024;
/// The gateway ports given to forwarded connections and clients.
const GATEWAY_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// Errors adding or removing a port forward.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The listening socket could not be set up.
    #[error("listening on {0}")]
    Listen(SocketAddr, #[source] io::Error),
    /// The forward is there already.
    #[error("{0} is forwarded already")]
    Exists(SocketAddr),
    /// No such forward.
    #[error("{0} is not forwarded")]
    Missing(SocketAddr),
    /// Too many forwards.
    #[error("at most {MAX_FORWARDS} port forwards")]
    TooMany,
    /// The kernel egress's DNAT rules could not be changed.
    #[error("changing the DNAT rules")]
    Rules(#[source] crate::kernel_egress::KernelEgressError),
}

/// A forward's host socket.
#[derive(Debug)]
enum Listener {
    Tcp(Socket),
    Udp(UdpSocket),
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(s) => s.as_raw_fd(),
            Listener::Udp(s) => s.as_raw_fd(),
        }
    }
}

#[derive(Debug)]
struct Forward {
    config: ForwardConfig,
    listener: Listener,
    /// UDP: each client's gateway port, both ways.
    clients: HashMap<SocketAddr, u16>,
}

/// The port forwards of a network.
#[derive(Debug)]
pub struct Forwards {
    forwards: Slots<Forward>,
    /// UDP forwards' gateway ports: the forward and the client.
    udp_ports: HashMap<u16, (usize, SocketAddr)>,
    next_port: u16,
}

impl Default for Forwards {
    fn default() -> Self {
        Forwards {
            forwards: Slots::new(MAX_FORWARDS),
            udp_ports: HashMap::new(),
            next_port: *GATEWAY_PORTS.start(),
        }
    }
}

fn listen(config: &ForwardConfig) -> io::Result<Listener> {
    let (ty, proto) = match config.protocol {
        Protocol::Tcp => (Type::STREAM, socket2::Protocol::TCP),
        Protocol::Udp => (Type::DGRAM, socket2::Protocol::UDP),
    };
    let socket = Socket::new(Domain::for_address(config.listen), ty, Some(proto))?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&config.listen.into())?;
    match config.protocol {
        Protocol::Tcp => {
            socket.listen(128)?;
            Ok(Listener::Tcp(socket))
        }
        Protocol::Udp => Ok(Listener::Udp(socket.into())),
    }
}

impl Forwards {
    /// The forwards in place.
    pub fn list(&self) -> Vec<ForwardConfig> {
        self.forwards
            .iter()
            .map(|(_, f)| f.config.clone())
            .collect()
    }

    /// Starts listening for `config`.
    pub fn add(
        &mut self,
        cx: &mut EgressCx<'_>,
        config: ForwardConfig,
    ) -> Result<(), ForwardError> {
        if self
            .forwards
            .iter()
            .any(|(_, f)| f.config.listen == config.listen && f.config.protocol == config.protocol)
        {
            return Err(ForwardError::Exists(config.listen));
        }
        if self.forwards.is_full() {
            return Err(ForwardError::TooMany);
        }
        let listener = listen(&config).map_err(|e| ForwardError::Listen(config.listen, e))?;
        let forward = Forward {
            config,
            listener,
            clients: HashMap::new(),
        };
        let index = self
            .forwards
            .insert(forward)
            .map_err(|_| ForwardError::TooMany)?;
        if let Some(f) = self.forwards.get(index) {
            cx.reg.watch(&f.listener, Token::new(Kind::Forward, index));
        }
        Ok(())
    }

    /// Stops listening for `config` (connections already forwarded go on).
    pub fn remove(
        &mut self,
        cx: &mut EgressCx<'_>,
        config: &ForwardConfig,
    ) -> Result<(), ForwardError> {
        let index = self
            .forwards
            .iter()
            .find(|(_, f)| f.config.listen == config.listen && f.config.protocol == config.protocol)
            .map(|(i, _)| i)
            .ok_or(ForwardError::Missing(config.listen))?;
        if let Some(f) = self.forwards.remove(index) {
            for port in f.clients.values() {
                self.udp_ports.remove(port);
            }
            cx.reg.retire(f.listener);
        }
        Ok(())
    }

    /// A free gateway port for a new forwarded connection or client.
    fn gateway_port(
        &mut self,
        tcp: &TcpFlows,
        cx: &EgressCx<'_>,
        guest: SocketAddrV4,
    ) -> Option<u16> {
        let span = u32::from(GATEWAY_PORTS.end() - GATEWAY_PORTS.start()) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == *GATEWAY_PORTS.end() {
                *GATEWAY_PORTS.start()
            } else {
                port + 1
            };
            let peer = SocketAddrV4::new(cx.gateway_ip, port);
            if !self.udp_ports.contains_key(&port) && !tcp.contains(&FlowKey { guest, peer }) {
                return Some(port);
            }
        }
        None
    }

    /// Forward `index`'s socket is ready: accepts connections (TCP) or relays datagrams to
    /// the guest (UDP).
    pub fn on_socket(
        &mut self,
        cx: &mut EgressCx<'_>,
        index: usize,
        tcp: &mut TcpFlows,
        stack: &mut Stack,
    ) {
        let Some(f) = self.forwards.get(index) else {
            return;
        };
        let guest = f.config.guest;
        match f.listener {
            Listener::Tcp(_) => loop {
                let Some(Forward {
                    listener: Listener::Tcp(listener),
                    ..
                }) = self.forwards.get(index)
                else {
                    return;
                };
                let Ok((client, _)) = listener.accept() else {
                    return;
                };
                let Some(port) = self.gateway_port(tcp, cx, guest) else {
                    continue;
                };
                let key = FlowKey {
                    guest,
                    peer: SocketAddrV4::new(cx.gateway_ip, port),
                };
                tcp.open_to_guest(cx, stack, key, client);
            },
            Listener::Udp(_) => {
                let mut buf = [0u8; 65536];
                loop {
                    let Some(f) = self.forwards.get(index) else {
                        return;
                    };
                    let Listener::Udp(listener) = &f.listener else {
                        return;
                    };
                    let Ok((n, client)) = listener.recv_from(&mut buf) else {
                        return;
                    };
                    let port = match f.clients.get(&client) {
                        Some(&p) => p,
                        None => {
                            if f.clients.len() >= MAX_UDP_CLIENTS {
                                continue;
                            }
                            let Some(p) = self.gateway_port(tcp, cx, guest) else {
                                continue;
                            };
                            self.udp_ports.insert(p, (index, client));
                            if let Some(f) = self.forwards.get_mut(index) {
                                f.clients.insert(client, p);
                            }
                            p
                        }
                    };
                    cx.udp_to_guest(SocketAddrV4::new(cx.gateway_ip, port), guest, &buf[..n]);
                }
            }
        }
    }

    /// A guest's datagram to the gateway's `port`: a forwarded client's reply, sent on to it.
    /// False when the port is no forward's.
    pub fn reply(&mut self, port: u16, payload: &[u8]) -> bool {
        let Some(&(index, client)) = self.udp_ports.get(&port) else {
            return false;
        };
        if let Some(Forward {
            listener: Listener::Udp(listener),
            ..
        }) = self.forwards.get(index)
        {
            let _ = listener.send_to(payload, client);
        }
        true
    }

    /// Forgets UDP clients whose flows conntrack no longer holds.
    pub fn expire(&mut self, cx: &EgressCx<'_>) {
        let gone: Vec<u16> = self
            .udp_ports
            .iter()
            .filter(|(&port, &(index, _))| {
                let Some(f) = self.forwards.get(index) else {
                    return true;
                };
                let from = SocketAddrV4::new(cx.gateway_ip, port);
                !cx.is_tracked(&tuple(cx.zone, CtProtocol::Udp, from, f.config.guest))
            })
            .map(|(&p, _)| p)
            .collect();
        for port in gone {
            if let Some((index, client)) = self.udp_ports.remove(&port) {
                if let Some(f) = self.forwards.get_mut(index) {
                    f.clients.remove(&client);
                }
            }
        }
    }
}
