//! One vhost-user connection, in either socket role, and the requests a frontend sends on it.
//!
//! Requests go through the `vhost` crate's [`Frontend`] wherever it can send them. It refuses
//! some that real frontends send: SET_VRING_ENABLE before SET_FEATURES acked
//! PROTOCOL_FEATURES (QEMU at every start, DPDK before GET_FEATURES on reconnect), and it drops
//! the ring index of the GET_VRING_BASE reply (which DPDK checks). Those go out at the message
//! level on a clone of the same socket ([`Connection::raw_request`]), built from
//! `vhost::vhost_user::message`. Every request sent is recorded in order ([`Connection::sent`]).

use std::io::{self, Read};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
    VhostUserU64, VhostUserVirtioFeatures, VhostUserVringState,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Which side of the unix socket the frontend is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connect to a backend listening at this path (QEMU `reconnect=N`, cloud-hypervisor
    /// `vhost_mode=client`).
    Connect(PathBuf),
    /// Listen at this path and let the backend connect (QEMU `server=on`, cloud-hypervisor
    /// `vhost_mode=server`, DPDK `server=1`).
    Listen(PathBuf),
}

/// Which requests carry VHOST_USER_NEED_REPLY once REPLY_ACK is negotiated (none before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeedReply {
    /// None.
    Never,
    /// Memory table updates only (QEMU).
    MemoryUpdates,
    /// Every request (cloud-hypervisor, DPDK).
    Always,
}

/// Errors of a vhost-user connection.
#[derive(Debug, Error)]
pub enum ConnectionError {
    /// The backend's socket could not be connected to before the deadline.
    #[error("cannot connect to {}", path.display())]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Last connect error.
        #[source]
        source: io::Error,
    },
    /// The listening socket could not be created.
    #[error("cannot listen at {}", path.display())]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No backend connected before the deadline, or accept failed.
    #[error("no backend connected to {}", path.display())]
    Accept {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The socket could not be configured or cloned.
    #[error("cannot set up the socket")]
    Socket(#[source] io::Error),
    /// A request sent through the vhost crate's frontend failed.
    #[error("{request:?} failed")]
    Request {
        /// The request.
        request: FrontendReq,
        /// Cause.
        #[source]
        source: vhost::Error,
    },
    /// A message-level request could not be sent.
    #[error("cannot send {request:?}")]
    Send {
        /// The request.
        request: FrontendReq,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The reply to a message-level request could not be read.
    #[error("cannot read the reply to {request:?}")]
    Receive {
        /// The request.
        request: FrontendReq,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The reply does not answer the request.
    #[error("bad reply to {request:?}: {reason}")]
    BadReply {
        /// The request.
        request: FrontendReq,
        /// What was wrong.
        reason: String,
    },
    /// The backend acknowledged the request with a failure status.
    #[error("backend failed {request:?} (status {status})")]
    Nack {
        /// The request.
        request: FrontendReq,
        /// Nonzero status from the REPLY_ACK.
        status: u64,
    },
}

/// Where the harness finds its backend: a path to connect to, or a bound listener.
#[derive(Debug)]
pub struct Endpoint {
    role: Role,
    listener: Option<UnixListener>,
}

impl Endpoint {
    /// Prepares `role`; a listening role binds now (removing a stale socket file) so the
    /// backend may connect at any time.
    pub fn new(role: Role) -> Result<Self, ConnectionError> {
        let listener = match &role {
            Role::Connect(_) => None,
            Role::Listen(path) => {
                let bind = |source| ConnectionError::Bind {
                    path: path.clone(),
                    source,
                };
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(bind(e)),
                    _ => {}
                }
                let listener = UnixListener::bind(path).map_err(bind)?;
                listener.set_nonblocking(true).map_err(bind)?;
                Some(listener)
            }
        };
        Ok(Endpoint { role, listener })
    }

    /// The role.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Connects (retrying while the backend is not there yet) or accepts one connection.
    pub fn open(&self, timeout: Duration) -> Result<UnixStream, ConnectionError> {
        let deadline = Instant::now() + timeout;
        match (&self.role, &self.listener) {
            (Role::Connect(path), _) => loop {
                match UnixStream::connect(path) {
                    Ok(stream) => return Ok(stream),
                    Err(e) if Instant::now() < deadline && retryable(&e) => {
                        thread::sleep(RETRY_INTERVAL)
                    }
                    Err(source) => {
                        return Err(ConnectionError::Connect {
                            path: path.clone(),
                            source,
                        })
                    }
                }
            },
            (Role::Listen(path), Some(listener)) => loop {
                let accept = |source| ConnectionError::Accept {
                    path: path.clone(),
                    source,
                };
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).map_err(accept)?;
                        return Ok(stream);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(accept(io::ErrorKind::TimedOut.into()));
                        }
                        thread::sleep(RETRY_INTERVAL);
                    }
                    Err(e) => return Err(accept(e)),
                }
            },
            (Role::Listen(path), None) => Err(ConnectionError::Accept {
                path: path.clone(),
                source: io::ErrorKind::NotConnected.into(),
            }),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let (Role::Listen(path), Some(_)) = (&self.role, &self.listener) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// A connected vhost-user session.
pub struct Connection {
    frontend: Frontend,
    /// The same socket, for message-level requests.
    stream: UnixStream,
    need_reply: NeedReply,
    acked_protocol: VhostUserProtocolFeatures,
    /// Whether SET_FEATURES with PROTOCOL_FEATURES went out on this connection.
    protocol_features_acked: bool,
    sent: Vec<FrontendReq>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("socket", &self.stream)
            .field("need_reply", &self.need_reply)
            .field("acked_protocol", &self.acked_protocol)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Wraps a connected socket. `max_queues` bounds the ring indices the vhost crate's
    /// frontend accepts; `timeout` bounds every wait for a reply.
    pub fn new(
        stream: UnixStream,
        max_queues: usize,
        timeout: Duration,
    ) -> Result<Self, ConnectionError> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(ConnectionError::Socket)?;
        let raw = stream.try_clone().map_err(ConnectionError::Socket)?;
        Ok(Connection {
            frontend: Frontend::from_stream(stream, max_queues as u64),
            stream: raw,
            need_reply: NeedReply::Never,
            acked_protocol: VhostUserProtocolFeatures::empty(),
            protocol_features_acked: false,
            sent: Vec::new(),
        })
    }

    /// The requests sent so far, in order.
    pub fn sent(&self) -> &[FrontendReq] {
        &self.sent
    }

    /// Chooses which requests ask for a REPLY_ACK from now on.
    pub fn set_need_reply(&mut self, need_reply: NeedReply) {
        self.need_reply = need_reply;
    }

    /// The protocol features acked on this connection.
    pub fn acked_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.acked_protocol
    }

    /// GET_FEATURES.
    pub fn get_features(&mut self) -> Result<u64, ConnectionError> {
        self.call(FrontendReq::GET_FEATURES, |f| f.get_features())
    }

    /// Waits until the backend has handled every request sent so far: a GET_FEATURES, whose
    /// reply comes after them. This is the harness's own addition to a sequence (a real
    /// frontend's guest is too slow to need it): frames sent right after a start then find the
    /// rings running.
    pub fn barrier(&mut self) -> Result<(), ConnectionError> {
        self.get_features().map(drop)
    }

    /// SET_FEATURES.
    pub fn set_features(&mut self, features: u64) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_FEATURES, |f| f.set_features(features))?;
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.protocol_features_acked = features & protocol != 0;
        Ok(())
    }

    /// GET_PROTOCOL_FEATURES (after a GET_FEATURES that offered PROTOCOL_FEATURES).
    pub fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures, ConnectionError> {
        self.call(FrontendReq::GET_PROTOCOL_FEATURES, |f| {
            f.get_protocol_features()
        })
    }

    /// SET_PROTOCOL_FEATURES.
    pub fn set_protocol_features(
        &mut self,
        features: VhostUserProtocolFeatures,
    ) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_PROTOCOL_FEATURES, |f| {
            f.set_protocol_features(features)
        })?;
        self.acked_protocol = features;
        Ok(())
    }

    /// GET_QUEUE_NUM (needs the MQ protocol feature).
    pub fn get_queue_num(&mut self) -> Result<u64, ConnectionError> {
        self.call(FrontendReq::GET_QUEUE_NUM, |f| f.get_queue_num())
    }

    /// GET_MAX_MEM_SLOTS (needs CONFIGURE_MEM_SLOTS).
    pub fn get_max_mem_slots(&mut self) -> Result<u64, ConnectionError> {
        self.call(FrontendReq::GET_MAX_MEM_SLOTS, |f| f.get_max_mem_slots())
    }

    /// SET_OWNER.
    pub fn set_owner(&mut self) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_OWNER, |f| f.set_owner())
    }

    /// SET_MEM_TABLE with every region.
    pub fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegionInfo],
    ) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_MEM_TABLE, |f| {
            f.set_mem_table(regions).map(drop)
        })
    }

    /// ADD_MEM_REG for one region (needs CONFIGURE_MEM_SLOTS).
    pub fn add_mem_region(
        &mut self,
        region: &VhostUserMemoryRegionInfo,
    ) -> Result<(), ConnectionError> {
        self.call(FrontendReq::ADD_MEM_REG, |f| {
            f.add_mem_region(region).map(drop)
        })
    }

    /// SET_VRING_NUM.
    pub fn set_vring_num(&mut self, index: usize, num: u16) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_VRING_NUM, |f| f.set_vring_num(index, num))
    }

    /// SET_VRING_ADDR.
    pub fn set_vring_addr(
        &mut self,
        index: usize,
        config: &VringConfigData,
    ) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_VRING_ADDR, |f| {
            f.set_vring_addr(index, config)
        })
    }

    /// SET_VRING_BASE.
    pub fn set_vring_base(&mut self, index: usize, base: u16) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_VRING_BASE, |f| {
            f.set_vring_base(index, base)
        })
    }

    /// SET_VRING_KICK.
    pub fn set_vring_kick(&mut self, index: usize, fd: &EventFd) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_VRING_KICK, |f| f.set_vring_kick(index, fd))
    }

    /// SET_VRING_CALL.
    pub fn set_vring_call(&mut self, index: usize, fd: &EventFd) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_VRING_CALL, |f| f.set_vring_call(index, fd))
    }

    /// SET_VRING_ERR.
    pub fn set_vring_err(&mut self, index: usize, fd: &EventFd) -> Result<(), ConnectionError> {
        self.call(FrontendReq::SET_VRING_ERR, |f| f.set_vring_err(index, fd))
    }

    /// GET_CONFIG of `size` bytes at `offset` (needs the CONFIG protocol feature).
    pub fn get_config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>, ConnectionError> {
        let buf = vec![0u8; size as usize];
        self.call(FrontendReq::GET_CONFIG, |f| {
            f.get_config(offset, size, VhostUserConfigFlags::empty(), &buf)
                .map(|(_, data)| data)
        })
    }

    /// SET_VRING_ENABLE, through the vhost crate's frontend once this connection acked
    /// PROTOCOL_FEATURES with SET_FEATURES, at the message level before that (the frontend
    /// refuses it then; QEMU and DPDK send it then).
    pub fn set_vring_enable(&mut self, index: usize, enable: bool) -> Result<(), ConnectionError> {
        if self.protocol_features_acked {
            return self.call(FrontendReq::SET_VRING_ENABLE, |f| {
                f.set_vring_enable(index, enable)
            });
        }
        let state = VhostUserVringState::new(index as u32, enable.into());
        self.raw_request(FrontendReq::SET_VRING_ENABLE, state.as_slice(), &[])
    }

    /// GET_VRING_BASE, at the message level so that the reply's ring index is checked against
    /// the request (as DPDK does; the vhost crate's frontend drops it).
    pub fn get_vring_base(&mut self, index: usize) -> Result<u16, ConnectionError> {
        let request = FrontendReq::GET_VRING_BASE;
        let state = VhostUserVringState::new(index as u32, 0);
        self.raw_request(request, state.as_slice(), &[])?;
        let reply: VhostUserVringState = self.raw_reply(request)?;
        let (reply_index, num) = (reply.index, reply.num);
        if reply_index != index as u32 {
            return Err(ConnectionError::BadReply {
                request,
                reason: format!("ring index {reply_index} for ring {index}"),
            });
        }
        u16::try_from(num).map_err(|_| ConnectionError::BadReply {
            request,
            reason: format!("ring base {num} does not fit 16 bits"),
        })
    }

    /// Sends one request at the message level: header, `body` and `fds`. When it asks for a
    /// REPLY_ACK (see [`NeedReply`]) and REPLY_ACK is negotiated, waits for the ack, unless the
    /// request has a reply of its own, which the caller reads with [`Connection::raw_reply`].
    pub fn raw_request(
        &mut self,
        request: FrontendReq,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<(), ConnectionError> {
        let need_reply = self.wants_reply(request);
        let flags = if need_reply {
            VhostUserHeaderFlag::NEED_REPLY.bits()
        } else {
            0
        };
        let hdr = encode_header(request, flags, body.len() as u32);
        self.sent.push(request);
        let send = |source| ConnectionError::Send { request, source };
        let message = [&hdr[..], body].concat();
        let sent = self
            .stream
            .send_with_fds(&[&message[..]], fds)
            .map_err(|e| send(e.into()))?;
        if sent != message.len() {
            return Err(send(io::ErrorKind::WriteZero.into()));
        }
        if need_reply
            && self
                .acked_protocol
                .contains(VhostUserProtocolFeatures::REPLY_ACK)
            && !has_reply(request)
        {
            let ack: VhostUserU64 = self.raw_reply(request)?;
            if ack.value != 0 {
                return Err(ConnectionError::Nack {
                    request,
                    status: ack.value,
                });
            }
        }
        Ok(())
    }

    /// Reads the reply to a message-level `request` with a body of type `T`.
    pub fn raw_reply<T: ByteValued + Default>(
        &mut self,
        request: FrontendReq,
    ) -> Result<T, ConnectionError> {
        let receive = |source| ConnectionError::Receive { request, source };
        let mut hdr = [0u8; HEADER_SIZE];
        (&self.stream).read_exact(&mut hdr).map_err(receive)?;
        let word = |i: usize| u32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (code, flags, size) = (word(0), word(4), word(8));
        let bad = |reason: String| ConnectionError::BadReply { request, reason };
        let reply = VhostUserHeaderFlag::REPLY.bits();
        if code != u32::from(request) || flags & reply == 0 || flags & VERSION_MASK != VERSION {
            return Err(bad(format!("header request {code} flags {flags:#x}")));
        }
        if size as usize != std::mem::size_of::<T>() {
            return Err(bad(format!("body of {size} bytes")));
        }
        let mut body = T::default();
        (&self.stream)
            .read_exact(body.as_mut_slice())
            .map_err(receive)?;
        Ok(body)
    }

    /// Closes the connection (both directions), as a VMM that quits does.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Whether `request` carries NEED_REPLY: per the policy, and only once REPLY_ACK is
    /// negotiated (the flag means nothing before; real frontends never set it then).
    fn wants_reply(&self, request: FrontendReq) -> bool {
        if !self
            .acked_protocol
            .contains(VhostUserProtocolFeatures::REPLY_ACK)
        {
            return false;
        }
        match self.need_reply {
            NeedReply::Never => false,
            NeedReply::MemoryUpdates => matches!(
                request,
                FrontendReq::SET_MEM_TABLE | FrontendReq::ADD_MEM_REG | FrontendReq::REM_MEM_REG
            ),
            NeedReply::Always => true,
        }
    }

    fn call<T>(
        &mut self,
        request: FrontendReq,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, ConnectionError> {
        let flags = if self.wants_reply(request) {
            VhostUserHeaderFlag::NEED_REPLY
        } else {
            VhostUserHeaderFlag::empty()
        };
        self.frontend.set_hdr_flags(flags);
        self.sent.push(request);
        f(&mut self.frontend).map_err(|source| ConnectionError::Request { request, source })
    }
}

/// Bytes of the message header: request, flags and body size, each a native-endian u32.
const HEADER_SIZE: usize = 12;
/// The protocol version in the low flag bits.
const VERSION: u32 = 0x1;
const VERSION_MASK: u32 = 0x3;

fn encode_header(request: FrontendReq, flags: u32, size: u32) -> [u8; HEADER_SIZE] {
    let mut hdr = [0u8; HEADER_SIZE];
    hdr[0..4].copy_from_slice(&u32::from(request).to_ne_bytes());
    hdr[4..8].copy_from_slice(&(flags | VERSION).to_ne_bytes());
    hdr[8..12].copy_from_slice(&size.to_ne_bytes());
    hdr
}

/// Requests answered with a reply of their own rather than a REPLY_ACK.
fn has_reply(request: FrontendReq) -> bool {
    matches!(
        request,
        FrontendReq::GET_FEATURES
            | FrontendReq::GET_PROTOCOL_FEATURES
            | FrontendReq::GET_VRING_BASE
            | FrontendReq::GET_QUEUE_NUM
            | FrontendReq::GET_CONFIG
            | FrontendReq::GET_MAX_MEM_SLOTS
            | FrontendReq::GET_INFLIGHT_FD
    )
}
