//! TCP flows of the user egress: a guest's connection ends in a smoltcp socket of the
//! [`Stack`] and goes on from a host TCP socket, bytes relayed both ways.
//!
//! - Opening: the guest's SYN is taken by a listening socket whose SYN-ACK is held back while
//!   the host socket connects (nonblocking); it is released when the connection is up. A
//!   refused connection resets the guest's (RST); an unreachable host or network answers with
//!   ICMP host/network unreachable; no answer within [`CONNECT_TIMEOUT`] ends it silently.
//!   Port forwards open flows the other way: an accepted host connection connects a smoltcp
//!   socket to the guest.
//! - Relaying: host reads go straight into the socket's send buffer, and the socket's receive
//!   buffer is written to the host socket, each only while the other side has room: a full
//!   buffer stops reading (its window closes towards the guest, the kernel's towards the
//!   host), so nothing is buffered beyond the two fixed socket buffers.
//! - Closing: a FIN either way becomes a half close the other way (`shutdown(SHUT_WR)` or a
//!   FIN from the socket); a reset either way resets the other side (RST from the socket, or
//!   closing the host socket with a zero linger).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};

use bridge_core::gateway::icmp::ErrorKind;
use bridge_core::time::{Duration, Instant};
use bridge_core::wire::Icmpv4DstUnreachable;
use event_manager::EventSet;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};
use socket2::{Domain, Protocol, Socket, Type};

use super::stack::Stack;
use super::EgressCx;
use crate::nat::registry::{Kind, Token};
use crate::nat::slots::Slots;

/// Most TCP flows of a network.
pub const MAX_FLOWS: usize = 1024;
/// The receive buffer (window) of a guest-facing socket.
pub const RX_BUFFER: usize = 256 << 10;
/// The send buffer of a guest-facing socket.
pub const TX_BUFFER: usize = 128 << 10;
/// How long a host connection may take to come up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A flow's two ends as the guest sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The guest's end.
    pub guest: SocketAddrV4,
    /// The other end (a host beyond the gateway, or the gateway itself).
    pub peer: SocketAddrV4,
}

/// Where a flow stands.
#[derive(Debug)]
enum Phase {
    /// The host socket is connecting; the guest's SYN (kept for an ICMP error) waits.
    Connecting {
        syn: Vec<u8>,
        deadline: Instant,
        failed: Option<io::Error>,
    },
    /// Both ends are set up (or, for a port forward, the guest side is connecting).
    Open,
}

#[derive(Debug)]
struct Flow {
    key: FlowKey,
    handle: SocketHandle,
    host: Option<Socket>,
    phase: Phase,
    /// The host socket has data or an error to read (edge-triggered).
    readable: bool,
    /// The host socket has room (edge-triggered).
    writable: bool,
    /// The host sent FIN; the guest-facing socket was closed.
    host_done: bool,
    /// The guest sent FIN; the host socket was shut down for writing.
    guest_done: bool,
}

/// Counters of the TCP flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpStats {
    /// Flows opened (from guests and through port forwards).
    pub opened: u64,
    /// Guest SYNs refused: too many flows, or the host socket could not be made.
    pub refused: u64,
    /// Host connections that failed (refused, unreachable, timed out).
    pub connect_failed: u64,
    /// Flows ended by a reset from either side.
    pub reset: u64,
}

/// The TCP flows of a network.
#[derive(Debug)]
pub struct TcpFlows {
    flows: Slots<Flow>,
    by_key: HashMap<FlowKey, usize>,
    stats: TcpStats,
}

impl Default for TcpFlows {
    fn default() -> Self {
        TcpFlows {
            flows: Slots::new(MAX_FLOWS),
            by_key: HashMap::new(),
            stats: TcpStats::default(),
        }
    }
}

fn guest_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
    );
    // The guest is on the same host: acknowledge at once, and send what the host gives
    // without waiting to fill segments.
    s.set_ack_delay(None);
    s.set_nagle_enabled(false);
    s
}

fn is_nonblocking_progress(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock
}

impl TcpFlows {
    /// The counters.
    pub fn stats(&self) -> TcpStats {
        self.stats
    }

    /// Whether a flow has these ends.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// A guest's SYN (`frame`) for a new flow `key`: connects a host socket to `target` and
    /// takes the SYN with a held listening socket. False when refused (too many flows, no
    /// socket).
    pub fn open_from_guest(
        &mut self,
        cx: &mut EgressCx<'_>,
        stack: &mut Stack,
        key: FlowKey,
        target: SocketAddr,
        frame: &[u8],
    ) -> bool {
        if self.flows.is_full() {
            self.stats.refused += 1;
            return false;
        }
        let host = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .and_then(|s| {
            s.set_nonblocking(true)?;
            s.set_tcp_nodelay(true)?;
            match s.connect(&target.into()) {
                Err(e) if !is_nonblocking_progress(&e) => Err(e),
                _ => Ok(s),
            }
        });
        let host = match host {
            Ok(s) => s,
            Err(e) => {
                self.stats.refused += 1;
                self.stats.connect_failed += 1;
                reject_for(cx, frame, &e);
                return false;
            }
        };
        let mut socket = guest_socket();
        let listen = IpListenEndpoint {
            addr: Some((*key.peer.ip()).into()),
            port: key.peer.port(),
        };
        if socket.listen(listen).is_err() {
            self.stats.refused += 1;
            return false;
        }
        socket.pause_synack(true);
        let handle = stack.add(socket);
        let flow = Flow {
            key,
            handle,
            host: None,
            phase: Phase::Connecting {
                syn: frame[..frame.len().min(576)].to_vec(),
                deadline: cx.now + CONNECT_TIMEOUT,
                failed: None,
            },
            readable: false,
            writable: false,
            host_done: false,
            guest_done: false,
        };
        self.insert(cx, flow, host);
        true
    }

    /// A connection accepted by a port forward: connects a socket from `key.peer` (the
    /// gateway) to `key.guest`.
    pub fn open_to_guest(
        &mut self,
        cx: &mut EgressCx<'_>,
        stack: &mut Stack,
        key: FlowKey,
        host: Socket,
    ) -> bool {
        if self.flows.is_full() {
            self.stats.refused += 1;
            return false;
        }
        let handle = stack.add(guest_socket());
        let (socket, context) = stack.socket_and_context(handle);
        let remote = IpEndpoint::new((*key.guest.ip()).into(), key.guest.port());
        let local = IpListenEndpoint {
            addr: Some((*key.peer.ip()).into()),
            port: key.peer.port(),
        };
        if socket.connect(context, remote, local).is_err() || host.set_nonblocking(true).is_err() {
            stack.remove(handle);
            self.stats.refused += 1;
            return false;
        }
        let _ = host.set_tcp_nodelay(true);
        let flow = Flow {
            key,
            handle,
            host: None,
            phase: Phase::Open,
            readable: true,
            writable: true,
            host_done: false,
            guest_done: false,
        };
        self.insert(cx, flow, host);
        true
    }

    fn insert(&mut self, cx: &mut EgressCx<'_>, mut flow: Flow, host: Socket) {
        let key = flow.key;
        flow.host = Some(host);
        match self.flows.insert(flow) {
            Ok(index) => {
                if let Some(host) = self.flows.get(index).and_then(|f| f.host.as_ref()) {
                    cx.reg.watch(host, Token::new(Kind::Tcp, index));
                }
                self.by_key.insert(key, index);
                self.stats.opened += 1;
            }
            Err(flow) => {
                if let Some(host) = flow.host {
                    cx.reg.retire(host);
                }
            }
        }
    }

    /// The host socket of flow `index` is ready (`events`).
    pub fn on_socket(&mut self, index: usize, events: EventSet, stack: &mut Stack) {
        let Some(flow) = self.flows.get_mut(index) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
            flow.readable = true;
        }
        if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
            flow.writable = true;
        }
        let Phase::Connecting { failed, .. } = &mut flow.phase else {
            return;
        };
        let Some(host) = &flow.host else { return };
        if !flow.writable && !flow.readable {
            return;
        }
        match host.take_error() {
            Ok(None) if host.peer_addr().is_ok() => {
                flow.phase = Phase::Open;
                stack.socket(flow.handle).pause_synack(false);
            }
            // Still connecting (a spurious wake-up).
            Ok(None) => {
                flow.writable = false;
                flow.readable = false;
            }
            Ok(Some(e)) | Err(e) => *failed = Some(e),
        }
    }

    /// Moves bytes between every open flow's two sockets and ends flows that are done or
    /// failed. Call before the stack's egress (so that what the sockets got to send goes out)
    /// and [`TcpFlows::reap`] after.
    pub fn relay(&mut self, cx: &mut EgressCx<'_>, stack: &mut Stack) {
        let mut failed = Vec::new();
        for (index, flow) in self.flows.iter_mut() {
            match &flow.phase {
                Phase::Connecting {
                    deadline,
                    syn,
                    failed: error,
                } => {
                    if let Some(e) = error {
                        reject_for(cx, syn, e);
                        failed.push((index, e.raw_os_error() == Some(libc::ECONNREFUSED)));
                    } else if cx.now >= *deadline {
                        failed.push((index, false));
                    }
                }
                Phase::Open => relay(flow, stack.socket(flow.handle)),
            }
        }
        for (index, reset) in failed {
            self.stats.connect_failed += 1;
            let Some(flow) = self.flows.get_mut(index) else {
                continue;
            };
            let socket = stack.socket(flow.handle);
            if reset {
                // The RST goes out at the next egress; the flow is reaped after.
                socket.abort();
                flow.phase = Phase::Open;
                flow.host_done = true;
                flow.guest_done = true;
            } else {
                // No answer to the guest but the ICMP error (or nothing, as a lost SYN).
                stack.remove(flow.handle);
                self.close(cx, index, false);
            }
        }
    }

    /// Removes the flows whose guest-facing socket is closed (after its last segment went
    /// out), resetting the host side when the guest side did not close cleanly.
    pub fn reap(&mut self, cx: &mut EgressCx<'_>, stack: &mut Stack) {
        let done: Vec<(usize, bool)> = self
            .flows
            .iter()
            .filter(|(_, f)| matches!(f.phase, Phase::Open))
            .filter_map(|(i, f)| {
                let state = stack.socket(f.handle).state();
                let clean = f.host_done && f.guest_done;
                match state {
                    State::Closed => Some((i, !clean)),
                    State::TimeWait if clean => Some((i, false)),
                    _ => None,
                }
            })
            .collect();
        for (index, reset) in done {
            if let Some(flow) = self.flows.get(index) {
                stack.remove(flow.handle);
            }
            if reset {
                self.stats.reset += 1;
            }
            self.close(cx, index, reset);
        }
    }

    fn close(&mut self, cx: &mut EgressCx<'_>, index: usize, reset: bool) {
        let Some(flow) = self.flows.remove(index) else {
            return;
        };
        self.by_key.remove(&flow.key);
        if let Some(host) = flow.host {
            if reset {
                // A zero linger makes close() send RST.
                let _ = host.set_linger(Some(std::time::Duration::ZERO));
            }
            cx.reg.retire(host);
        }
    }

    /// Whether any flow is connecting (its deadline needs a timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.flows
            .iter()
            .filter_map(|(_, f)| match f.phase {
                Phase::Connecting { deadline, .. } => Some(deadline),
                Phase::Open => None,
            })
            .min()
    }
}

/// The ICMP error a failed host connection answers the guest's SYN with: what a router on
/// the way would have sent. A refused connection is answered with RST instead (by the caller).
fn reject_for(cx: &mut EgressCx<'_>, syn: &[u8], e: &io::Error) {
    let code = match e.raw_os_error() {
        Some(libc::EHOSTUNREACH) => Icmpv4DstUnreachable::HostUnreachable,
        Some(libc::ENETUNREACH) => Icmpv4DstUnreachable::NetUnreachable,
        Some(libc::EACCES | libc::EPERM) => Icmpv4DstUnreachable::CommProhibited,
        _ => return,
    };
    cx.reject(syn, ErrorKind::Unreachable(code));
}

/// Moves what each side can take.
fn relay(flow: &mut Flow, socket: &mut tcp::Socket<'static>) {
    let Some(host) = &flow.host else { return };
    // Guest to host.
    while flow.writable && socket.can_recv() {
        let written = socket.recv(|buf| match (&*host).write(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => flow.writable = false,
            Ok(Err(_)) | Err(_) => {
                socket.abort();
                return;
            }
        }
    }
    // The guest sent FIN (and everything before it was written): half close towards the host.
    let guest_fin = matches!(
        socket.state(),
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    );
    if !flow.guest_done && guest_fin && socket.recv_queue() == 0 {
        let _ = host.shutdown(Shutdown::Write);
        flow.guest_done = true;
    }
    // Host to guest.
    while flow.readable
        && !flow.host_done
        && socket.may_send()
        && socket.send_capacity() > socket.send_queue()
    {
        let read = socket.send(|buf| match (&*host).read(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match read {
            Ok(Ok(0)) => {
                flow.host_done = true;
                socket.close();
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => flow.readable = false,
            Ok(Err(_)) | Err(_) => {
                socket.abort();
                return;
            }
        }
    }
}
