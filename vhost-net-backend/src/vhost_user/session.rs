//! The request dispatcher of one vhost-user connection.
//!
//! A `Session` holds what lives only as long as the connection (negotiated features, the memory
//! table) and applies requests to the shared [`Device`]. Dropping it resets the device, so every
//! connection starts from fresh state. Where the frontends differ from the letter of the spec,
//! it follows what they send (see docs/device.md):
//! - SET_VRING_ENABLE is accepted at any time (QEMU sends it before SET_FEATURES, DPDK before
//!   GET_FEATURES on reconnect);
//! - NEED_REPLY is acknowledged once REPLY_ACK is negotiated on the connection (the `vhost`
//!   crate's frontend, which cloud-hypervisor uses, may set the flag earlier and then does not
//!   read an acknowledgement);
//! - memory can change at any time, rings running or not;
//! - a request that fails is answered with a failed acknowledgement when one was asked for and
//!   logged, and the connection stays up; unknown requests are ignored the same way. Only a
//!   request that needs a reply this device cannot give ends the connection.

use std::fs::File;
use std::mem::size_of;

use tracing::{debug, warn};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserMemory, VhostUserMemoryRegion, VhostUserMsgValidator,
    VhostUserProtocolFeatures, VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVirtioFeatures,
    VhostUserVringAddr, VhostUserVringState, VHOST_USER_CONFIG_OFFSET,
};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use super::device::Device;
use super::memory::{MemoryError, MemoryTable, MAX_MEM_SLOTS};
use super::wire::{body, Header, Message};
use crate::vring::{RingAddresses, VringError};

/// Bit 8 of a SET_VRING_{KICK,CALL,ERR} body: no file descriptor is attached.
const VRING_NOFD: u64 = 0x100;
const VRING_INDEX_MASK: u64 = 0xff;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The body does not have the size or contents the request needs.
    #[error("malformed body for {0:?}")]
    BadBody(FrontendReq),
    /// The request names a vring the device does not have.
    #[error("no vring {0}")]
    NoSuchVring(u64),
    /// The request needs file descriptors that did not come with it.
    #[error("{request:?} came with {got} file descriptors")]
    Fds {
        /// The request.
        request: FrontendReq,
        /// How many came.
        got: usize,
    },
    /// A vring setting was rejected.
    #[error("vring setting rejected")]
    Vring(#[from] VringError),
    /// The memory table could not be changed.
    #[error("memory table change failed")]
    Memory(#[from] MemoryError),
    /// The request is known but this device does not implement it (and did not offer it).
    #[error("{0:?} is not supported by this device")]
    Unsupported(FrontendReq),
    /// The request code is unknown.
    #[error("unknown request code {0}")]
    Unknown(u32),
    /// The request needs a reply this device cannot give: the connection must end.
    #[error("{0:?} needs a reply this device cannot give")]
    NoReply(FrontendReq),
}

/// What to send back for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Nothing.
    None,
    /// A reply with this header and body.
    Reply(Header, Vec<u8>),
}

/// The state of one connection.
#[derive(Debug)]
pub struct Session<'d> {
    device: &'d Device,
    acked_features: u64,
    acked_protocol: VhostUserProtocolFeatures,
    memory: MemoryTable,
}

impl<'d> Session<'d> {
    /// A fresh session on `device` (whose rings must be idle: see [`Device::reset`]).
    pub fn new(device: &'d Device) -> Self {
        Session {
            device,
            acked_features: 0,
            acked_protocol: VhostUserProtocolFeatures::empty(),
            memory: MemoryTable::default(),
        }
    }

    /// The virtio features the frontend acked.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Handles one request. `Err` means the connection must end.
    pub fn handle(&mut self, msg: Message) -> Result<Response, SessionError> {
        let header = msg.header;
        let Some(code) = header.code() else {
            warn!(
                request = header.request,
                "ignoring unknown vhost-user request"
            );
            return Ok(self.ack(&header, Err(SessionError::Unknown(header.request))));
        };
        debug!(
            ?code,
            size = header.size,
            fds = msg.files.len(),
            "vhost-user request"
        );
        match self.dispatch(code, &msg.body, msg.files) {
            Ok(Some(reply)) => Ok(Response::Reply(header.reply(reply.len()), reply)),
            Ok(None) => Ok(self.ack(&header, Ok(()))),
            Err(e @ SessionError::NoReply(_)) => Err(e),
            Err(e) => {
                warn!(?code, error = %e, "vhost-user request failed");
                if let Some(reply) = fallback_reply(code, &msg.body) {
                    return Ok(Response::Reply(header.reply(reply.len()), reply));
                }
                Ok(self.ack(&header, Err(e)))
            }
        }
    }

    /// Applies a request; `Some` is a reply body for requests that have one.
    fn dispatch(
        &mut self,
        code: FrontendReq,
        bytes: &[u8],
        files: Vec<File>,
    ) -> Result<Option<Vec<u8>>, SessionError> {
        let spec = self.device.spec();
        match code {
            FrontendReq::GET_FEATURES => Ok(Some(u64_reply(spec.features))),
            FrontendReq::SET_FEATURES => {
                let value = decode::<VhostUserU64>(code, bytes)?.value;
                self.acked_features = value & spec.features;
                if value & !spec.features != 0 {
                    warn!(
                        extra = value & !spec.features,
                        "frontend acked features not offered"
                    );
                }
                self.for_each_vring(|v, _| v.set_features(self.acked_features));
                Ok(None)
            }
            FrontendReq::GET_PROTOCOL_FEATURES => {
                Ok(Some(u64_reply(spec.protocol_features.bits())))
            }
            FrontendReq::SET_PROTOCOL_FEATURES => {
                let value = decode::<VhostUserU64>(code, bytes)?.value;
                self.acked_protocol =
                    VhostUserProtocolFeatures::from_bits_truncate(value) & spec.protocol_features;
                Ok(None)
            }
            FrontendReq::SET_OWNER => Ok(None),
            FrontendReq::RESET_OWNER | FrontendReq::RESET_DEVICE => {
                self.memory = MemoryTable::default();
                self.acked_features = 0;
                self.device.reset();
                Ok(None)
            }
            FrontendReq::GET_QUEUE_NUM => Ok(Some(u64_reply(spec.queues as u64))),
            FrontendReq::GET_MAX_MEM_SLOTS => Ok(Some(u64_reply(MAX_MEM_SLOTS as u64))),
            FrontendReq::SET_MEM_TABLE => {
                let regions = decode_mem_table(bytes).ok_or(SessionError::BadBody(code))?;
                if files.len() != regions.len() {
                    return Err(SessionError::Fds {
                        request: code,
                        got: files.len(),
                    });
                }
                self.memory.set(&regions, files)?;
                self.memory_changed();
                Ok(None)
            }
            FrontendReq::ADD_MEM_REG => {
                let region = decode::<VhostUserSingleMemoryRegion>(code, bytes)?;
                let region = checked_region(code, &region)?;
                let [file]: [File; 1] =
                    files.try_into().map_err(|f: Vec<File>| SessionError::Fds {
                        request: code,
                        got: f.len(),
                    })?;
                self.memory.add(&region, file)?;
                self.memory_changed();
                Ok(None)
            }
            FrontendReq::REM_MEM_REG => {
                let region = decode::<VhostUserSingleMemoryRegion>(code, bytes)?;
                let region = checked_region(code, &region)?;
                self.memory.remove(&region)?;
                self.memory_changed();
                Ok(None)
            }
            FrontendReq::SET_VRING_NUM => {
                let s = decode::<VhostUserVringState>(code, bytes)?;
                self.with_vring(u64::from(s.index), |v, _| v.set_size(s.num))??;
                Ok(None)
            }
            FrontendReq::SET_VRING_ADDR => {
                let a = decode::<VhostUserVringAddr>(code, bytes)?;
                let addrs = RingAddresses {
                    desc: a.descriptor,
                    avail: a.available,
                    used: a.used,
                };
                self.with_vring(u64::from(a.index), |v, table| {
                    v.set_addresses(addrs);
                    v.activate(table);
                })?;
                Ok(None)
            }
            FrontendReq::SET_VRING_BASE => {
                let s = decode::<VhostUserVringState>(code, bytes)?;
                self.with_vring(u64::from(s.index), |v, _| v.set_base(s.num))??;
                Ok(None)
            }
            FrontendReq::GET_VRING_BASE => {
                let s = decode::<VhostUserVringState>(code, bytes)?;
                let base = self.with_vring(u64::from(s.index), |v, _| v.stop())?;
                Ok(Some(
                    VhostUserVringState::new(s.index, u32::from(base))
                        .as_slice()
                        .to_vec(),
                ))
            }
            FrontendReq::SET_VRING_KICK => {
                let (index, fd) = vring_fd(code, bytes, files)?;
                let protocol =
                    self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
                self.with_vring(index, |v, table| {
                    v.start(fd, protocol);
                    v.activate(table);
                })?;
                Ok(None)
            }
            FrontendReq::SET_VRING_CALL => {
                let (index, fd) = vring_fd(code, bytes, files)?;
                self.with_vring(index, |v, _| v.set_call(fd))?;
                Ok(None)
            }
            FrontendReq::SET_VRING_ERR => {
                // The device never reports ring errors; the fd is closed.
                let (index, _fd) = vring_fd(code, bytes, files)?;
                self.with_vring(index, |_, _| ())?;
                Ok(None)
            }
            FrontendReq::SET_VRING_ENABLE => {
                let s = decode::<VhostUserVringState>(code, bytes)?;
                let enable = match s.num {
                    0 => false,
                    1 => true,
                    _ => return Err(SessionError::BadBody(code)),
                };
                self.with_vring(u64::from(s.index), |v, _| v.set_enabled(enable))?;
                Ok(None)
            }
            FrontendReq::GET_CONFIG
                if spec
                    .protocol_features
                    .contains(VhostUserProtocolFeatures::CONFIG) =>
            {
                let (req, _) = decode_config(bytes).ok_or(SessionError::BadBody(code))?;
                let mut reply = req.as_slice().to_vec();
                reply.extend(config_bytes(&spec.config, req.offset, req.size));
                Ok(Some(reply))
            }
            // The config space is read-only.
            FrontendReq::SET_CONFIG => Err(SessionError::Unsupported(code)),
            other if needs_reply(other) => Err(SessionError::NoReply(other)),
            other => Err(SessionError::Unsupported(other)),
        }
    }

    /// An acknowledgement if the frontend asked for one and REPLY_ACK is negotiated: 0 for
    /// success, 1 for failure.
    fn ack(&self, header: &Header, result: Result<(), SessionError>) -> Response {
        let negotiated = self
            .acked_protocol
            .contains(VhostUserProtocolFeatures::REPLY_ACK);
        if !header.need_reply() || !negotiated {
            return Response::None;
        }
        let status: u64 = if result.is_ok() { 0 } else { 1 };
        Response::Reply(header.reply(size_of::<u64>()), u64_reply(status))
    }

    /// Runs `f` on vring `index` with the memory table, then wakes the worker.
    fn with_vring<T>(
        &self,
        index: u64,
        f: impl FnOnce(&mut crate::vring::Vring, &MemoryTable) -> T,
    ) -> Result<T, SessionError> {
        let i = usize::try_from(index).map_err(|_| SessionError::NoSuchVring(index))?;
        let mut vring = self
            .device
            .vring(i)
            .ok_or(SessionError::NoSuchVring(index))?;
        let out = f(&mut vring, &self.memory);
        drop(vring);
        self.device.wake();
        Ok(out)
    }

    fn for_each_vring(&self, mut f: impl FnMut(&mut crate::vring::Vring, &MemoryTable)) {
        for i in 0..self.device.queue_count() {
            if let Some(mut v) = self.device.vring(i) {
                f(&mut v, &self.memory);
            }
        }
        self.device.wake();
    }

    fn memory_changed(&self) {
        let mem = self.memory.guest_memory();
        self.for_each_vring(|v, table| v.set_memory(mem.clone(), table));
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.device.reset();
    }
}

/// The reply for a failed request that has a reply of its own, where the protocol defines one.
fn fallback_reply(code: FrontendReq, bytes: &[u8]) -> Option<Vec<u8>> {
    match code {
        // A GET_CONFIG reply with size 0 reports failure.
        FrontendReq::GET_CONFIG => {
            let mut config = decode_config(bytes).map_or_else(VhostUserConfig::default, |(c, _)| c);
            config.size = 0;
            Some(config.as_slice().to_vec())
        }
        // The frontend waits for the index it asked about; there is no ring, so no position.
        FrontendReq::GET_VRING_BASE => {
            let index = body::<VhostUserVringState>(bytes).map_or(0, |s| s.index);
            Some(VhostUserVringState::new(index, 0).as_slice().to_vec())
        }
        _ => None,
    }
}

/// Requests whose protocol has a reply regardless of REPLY_ACK.
fn needs_reply(code: FrontendReq) -> bool {
    matches!(
        code,
        FrontendReq::GET_FEATURES
            | FrontendReq::GET_PROTOCOL_FEATURES
            | FrontendReq::GET_VRING_BASE
            | FrontendReq::GET_QUEUE_NUM
            | FrontendReq::GET_CONFIG
            | FrontendReq::SET_LOG_BASE
            | FrontendReq::CREATE_CRYPTO_SESSION
            | FrontendReq::POSTCOPY_ADVISE
            | FrontendReq::GET_INFLIGHT_FD
            | FrontendReq::GET_MAX_MEM_SLOTS
            | FrontendReq::GET_STATUS
            | FrontendReq::GET_SHARED_OBJECT
            | FrontendReq::SET_DEVICE_STATE_FD
            | FrontendReq::CHECK_DEVICE_STATE
            | FrontendReq::GET_SHMEM_CONFIG
    )
}

fn u64_reply(value: u64) -> Vec<u8> {
    value.to_ne_bytes().to_vec()
}

fn decode<T: ByteValued + Default + VhostUserMsgValidator>(
    code: FrontendReq,
    bytes: &[u8],
) -> Result<T, SessionError> {
    body::<T>(bytes).ok_or(SessionError::BadBody(code))
}

fn checked_region(
    code: FrontendReq,
    region: &VhostUserSingleMemoryRegion,
) -> Result<VhostUserMemoryRegion, SessionError> {
    let region: VhostUserMemoryRegion = **region;
    VhostUserMsgValidator::is_valid(&region)
        .then_some(region)
        .ok_or(SessionError::BadBody(code))
}

/// The ring index and optional eventfd of SET_VRING_{KICK,CALL,ERR}.
fn vring_fd(
    code: FrontendReq,
    bytes: &[u8],
    files: Vec<File>,
) -> Result<(u64, Option<EventFd>), SessionError> {
    let value = decode::<VhostUserU64>(code, bytes)?.value;
    let index = value & VRING_INDEX_MASK;
    let nofd = value & VRING_NOFD != 0;
    let mut files = files.into_iter();
    let fd = match (nofd, files.next(), files.next()) {
        (true, None, None) => None,
        (false, Some(file), None) => Some(crate::sys::eventfd_from_file(file)),
        (_, first, second) => {
            let got = usize::from(first.is_some()) + usize::from(second.is_some());
            return Err(SessionError::Fds { request: code, got });
        }
    };
    Ok((index, fd))
}

fn decode_mem_table(bytes: &[u8]) -> Option<Vec<VhostUserMemoryRegion>> {
    let head = size_of::<VhostUserMemory>();
    let table: VhostUserMemory = body(bytes.get(..head)?)?;
    let rest = &bytes[head..];
    let each = size_of::<VhostUserMemoryRegion>();
    if rest.len() != table.num_regions as usize * each {
        return None;
    }
    rest.chunks_exact(each)
        .map(body::<VhostUserMemoryRegion>)
        .collect()
}

/// The GET_CONFIG request header and the payload size that followed it.
fn decode_config(bytes: &[u8]) -> Option<(VhostUserConfig, usize)> {
    let head = size_of::<VhostUserConfig>();
    let config: VhostUserConfig = body(bytes.get(..head)?)?;
    let payload = bytes.len() - head;
    (payload == config.size as usize).then_some((config, payload))
}

/// `size` bytes of the config space from `offset` (relative to the device-specific part,
/// which starts at VHOST_USER_CONFIG_OFFSET in some frontends' numbering); bytes past the
/// end of the defined fields read as zero.
fn config_bytes(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = if offset >= VHOST_USER_CONFIG_OFFSET {
        offset - VHOST_USER_CONFIG_OFFSET
    } else {
        offset
    } as usize;
    (start..start + size as usize)
        .map(|i| config.get(i).copied().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MacAddr;
    use crate::vhost_user::memory::tests::backing_file;
    use crate::vhu_net;
    use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserVringAddrFlags};

    const USER_BASE: u64 = 0x7f00_0000_0000;
    const MEM: u64 = 0x10_0000;

    fn device(pairs: u16) -> Device {
        Device::new(vhu_net::device_spec(
            MacAddr([2, 1, 2, 3, 4, 5]),
            pairs,
            1500,
        ))
        .unwrap()
    }

    /// A session whose frontend acked every protocol feature offered (REPLY_ACK included).
    fn negotiated(dev: &Device) -> Session<'_> {
        let mut s = Session::new(dev);
        let all = u64_body(vhu_net::protocol_features().bits());
        let r = s.handle(msg(FrontendReq::SET_PROTOCOL_FEATURES, &all, vec![], false));
        assert_eq!(r.unwrap(), Response::None);
        s
    }

    fn msg(code: FrontendReq, body: &[u8], files: Vec<File>, need_reply: bool) -> Message {
        Message {
            header: Header::request(code, body.len() as u32, need_reply),
            body: body.to_vec(),
            files,
        }
    }

    fn u64_body(v: u64) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    fn state(index: u32, num: u32) -> Vec<u8> {
        VhostUserVringState::new(index, num).as_slice().to_vec()
    }

    fn reply_u64(r: Response) -> u64 {
        match r {
            Response::Reply(h, body) => {
                assert!(h.is_reply());
                u64::from_ne_bytes(body.try_into().unwrap())
            }
            Response::None => panic!("expected a reply"),
        }
    }

    fn eventfd_file() -> File {
        let e = EventFd::new(0).unwrap();
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the fd comes from a new EventFd whose ownership is transferred.
        unsafe { File::from_raw_fd(e.into_raw_fd()) }
    }

    /// Drives a session through QEMU's start sequence for ring `index` with the ring at
    /// guest address `ring_gpa` (desc, avail at +0x1000, used at +0x2000).
    fn start_ring(s: &mut Session, index: u32, ring_gpa: u64, base: u32) {
        let va = USER_BASE + ring_gpa;
        for (code, body) in [
            (FrontendReq::SET_VRING_NUM, state(index, 256)),
            (FrontendReq::SET_VRING_BASE, state(index, base)),
            (
                FrontendReq::SET_VRING_ADDR,
                VhostUserVringAddr::new(
                    index,
                    VhostUserVringAddrFlags::empty(),
                    va,
                    va + 0x2000,
                    va + 0x1000,
                    0,
                )
                .as_slice()
                .to_vec(),
            ),
        ] {
            assert_eq!(
                s.handle(msg(code, &body, vec![], false)).unwrap(),
                Response::None
            );
        }
        let kick = msg(
            FrontendReq::SET_VRING_KICK,
            &u64_body(u64::from(index)),
            vec![eventfd_file()],
            false,
        );
        assert_eq!(s.handle(kick).unwrap(), Response::None);
    }

    fn add_memory(s: &mut Session) {
        let region = VhostUserSingleMemoryRegion::new(0, MEM, USER_BASE, 0);
        let r = s.handle(msg(
            FrontendReq::ADD_MEM_REG,
            region.as_slice(),
            vec![backing_file(MEM)],
            true,
        ));
        assert_eq!(reply_u64(r.unwrap()), 0);
    }

    #[test]
    fn qemu_sequence_enable_before_features() {
        let dev = device(2);
        let mut s = Session::new(&dev);
        let offered = reply_u64(
            s.handle(msg(FrontendReq::GET_FEATURES, &[], vec![], false))
                .unwrap(),
        );
        assert_eq!(offered, vhu_net::OFFERED_FEATURES);
        let proto = reply_u64(
            s.handle(msg(FrontendReq::GET_PROTOCOL_FEATURES, &[], vec![], false))
                .unwrap(),
        );
        assert_eq!(proto, vhu_net::protocol_features().bits());
        assert_eq!(
            s.handle(msg(
                FrontendReq::SET_PROTOCOL_FEATURES,
                &u64_body(proto),
                vec![],
                false
            ))
            .unwrap(),
            Response::None
        );
        assert_eq!(
            reply_u64(
                s.handle(msg(FrontendReq::GET_QUEUE_NUM, &[], vec![], false))
                    .unwrap()
            ),
            4
        );
        assert_eq!(
            reply_u64(
                s.handle(msg(FrontendReq::GET_MAX_MEM_SLOTS, &[], vec![], false))
                    .unwrap()
            ),
            MAX_MEM_SLOTS as u64
        );
        assert_eq!(
            s.handle(msg(FrontendReq::SET_OWNER, &[], vec![], false))
                .unwrap(),
            Response::None
        );
        for i in 0..4u64 {
            let call = msg(
                FrontendReq::SET_VRING_CALL,
                &u64_body(i),
                vec![eventfd_file()],
                false,
            );
            assert_eq!(s.handle(call).unwrap(), Response::None);
        }
        // SET_VRING_ENABLE before SET_FEATURES, with REPLY_ACK: acknowledged with success.
        for i in 0..4 {
            let r = s
                .handle(msg(
                    FrontendReq::SET_VRING_ENABLE,
                    &state(i, 1),
                    vec![],
                    true,
                ))
                .unwrap();
            assert_eq!(reply_u64(r), 0);
        }
        let acked = offered & !(1 << virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO6);
        assert_eq!(
            s.handle(msg(
                FrontendReq::SET_FEATURES,
                &u64_body(acked),
                vec![],
                false
            ))
            .unwrap(),
            Response::None
        );
        assert_eq!(s.acked_features(), acked);
        add_memory(&mut s);
        start_ring(&mut s, 0, 0x10000, 0);
        start_ring(&mut s, 1, 0x20000, 0);
        for i in 0..2 {
            let v = dev.vring(i).unwrap();
            assert!(v.is_running(), "ring {i}");
            assert_eq!(v.features(), acked);
        }
        assert!(
            !dev.vring(2).unwrap().is_running(),
            "enabled but never started"
        );
        // Stop: GET_VRING_BASE answers with the ring index and its position.
        match s
            .handle(msg(
                FrontendReq::GET_VRING_BASE,
                &state(1, 0),
                vec![],
                false,
            ))
            .unwrap()
        {
            Response::Reply(_, body) => assert_eq!(body, state(1, 0)),
            Response::None => panic!("no reply"),
        }
        assert!(!dev.vring(1).unwrap().is_running());
        drop(s);
        assert!(
            !dev.vring(0).unwrap().is_running(),
            "a new connection starts from scratch"
        );
    }

    #[test]
    fn memory_can_change_while_rings_run() {
        let dev = device(1);
        let mut s = negotiated(&dev);
        s.handle(msg(
            FrontendReq::SET_FEATURES,
            &u64_body(vhu_net::OFFERED_FEATURES),
            vec![],
            false,
        ))
        .unwrap();
        add_memory(&mut s);
        start_ring(&mut s, 0, 0x10000, 0);
        s.handle(msg(
            FrontendReq::SET_VRING_ENABLE,
            &state(0, 1),
            vec![],
            false,
        ))
        .unwrap();
        assert!(dev.vring(0).unwrap().is_running());
        let region = VhostUserSingleMemoryRegion::new(0, MEM, USER_BASE, 0);
        assert_eq!(
            reply_u64(
                s.handle(msg(
                    FrontendReq::REM_MEM_REG,
                    region.as_slice(),
                    vec![],
                    true
                ))
                .unwrap()
            ),
            0
        );
        assert!(!dev.vring(0).unwrap().is_running());
        add_memory(&mut s);
        assert!(dev.vring(0).unwrap().is_running());
        // QEMU with N queue pairs adds (and removes) every region N times, once per pair.
        add_memory(&mut s);
        let rem = msg(FrontendReq::REM_MEM_REG, region.as_slice(), vec![], true);
        assert_eq!(reply_u64(s.handle(rem).unwrap()), 0);
        assert!(
            dev.vring(0).unwrap().is_running(),
            "the region has one more user"
        );
        add_memory(&mut s);
        // SET_MEM_TABLE replaces the table, rings running.
        let mut table = VhostUserMemory::new(1).as_slice().to_vec();
        table.extend_from_slice(VhostUserMemoryRegion::new(0, MEM, USER_BASE, 0).as_slice());
        let r = s.handle(msg(
            FrontendReq::SET_MEM_TABLE,
            &table,
            vec![backing_file(MEM)],
            true,
        ));
        assert_eq!(reply_u64(r.unwrap()), 0);
        assert!(dev.vring(0).unwrap().is_running());
        // Wrong fd count: refused, connection kept, old table kept.
        let r = s.handle(msg(FrontendReq::SET_MEM_TABLE, &table, vec![], true));
        assert_eq!(reply_u64(r.unwrap()), 1);
        assert!(dev.vring(0).unwrap().is_running());
    }

    #[test]
    fn ring_without_protocol_features_starts_enabled() {
        let dev = device(1);
        let mut s = negotiated(&dev);
        let legacy = vhu_net::OFFERED_FEATURES & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        s.handle(msg(
            FrontendReq::SET_FEATURES,
            &u64_body(legacy),
            vec![],
            false,
        ))
        .unwrap();
        add_memory(&mut s);
        start_ring(&mut s, 1, 0x20000, 0);
        assert!(dev.vring(1).unwrap().is_running());
    }

    #[test]
    fn config_space_is_served() {
        let dev = device(2);
        let mut s = Session::new(&dev);
        for offset in [0u32, VHOST_USER_CONFIG_OFFSET] {
            let mut body = VhostUserConfig::new(offset, 12, VhostUserConfigFlags::empty())
                .as_slice()
                .to_vec();
            body.extend_from_slice(&[0u8; 12]);
            match s
                .handle(msg(FrontendReq::GET_CONFIG, &body, vec![], false))
                .unwrap()
            {
                Response::Reply(_, r) => {
                    assert_eq!(&r[..12], &body[..12]);
                    assert_eq!(&r[12..18], &[2, 1, 2, 3, 4, 5]);
                    assert_eq!(&r[18..24], &[1, 0, 2, 0, 0xdc, 0x05]);
                }
                Response::None => panic!("no reply"),
            }
        }
        // A size that disagrees with the payload: a reply with size 0.
        let body = VhostUserConfig::new(0, 12, VhostUserConfigFlags::empty())
            .as_slice()
            .to_vec();
        match s
            .handle(msg(FrontendReq::GET_CONFIG, &body, vec![], false))
            .unwrap()
        {
            Response::Reply(_, r) => assert_eq!(
                r,
                VhostUserConfig::new(0, 0, VhostUserConfigFlags::empty()).as_slice()
            ),
            Response::None => panic!("no reply"),
        }
    }

    #[test]
    fn no_acknowledgement_before_reply_ack_is_negotiated() {
        let dev = device(1);
        let mut s = Session::new(&dev);
        // The vhost crate's frontend may flag requests before negotiating; it reads no ack.
        let r = s.handle(msg(FrontendReq::SET_OWNER, &[], vec![], true));
        assert_eq!(r.unwrap(), Response::None);
        let proto = u64_body(VhostUserProtocolFeatures::MQ.bits());
        s.handle(msg(
            FrontendReq::SET_PROTOCOL_FEATURES,
            &proto,
            vec![],
            false,
        ))
        .unwrap();
        let r = s.handle(msg(FrontendReq::SET_OWNER, &[], vec![], true));
        assert_eq!(
            r.unwrap(),
            Response::None,
            "REPLY_ACK not among the acked features"
        );
        let mut s = negotiated(&dev);
        assert_eq!(ack_of(&mut s, FrontendReq::SET_OWNER, &[]), 0);
    }

    /// Sends a request asking for an acknowledgement; returns its status (0: success).
    fn ack_of(s: &mut Session, code: FrontendReq, body: &[u8]) -> u64 {
        reply_u64(s.handle(msg(code, body, vec![], true)).unwrap())
    }

    #[test]
    fn failures_are_acknowledged_and_the_connection_stays() {
        let dev = device(1);
        let mut s = negotiated(&dev);
        // Unknown request code.
        let unknown = Message {
            header: Header {
                request: 999,
                flags: 0x9,
                size: 0,
            },
            body: vec![],
            files: vec![],
        };
        assert_eq!(reply_u64(s.handle(unknown).unwrap()), 1);
        // No such ring; bad ring size; bad enable value; wrong body size.
        assert_eq!(
            ack_of(&mut s, FrontendReq::SET_VRING_NUM, &state(7, 256)),
            1
        );
        assert_eq!(
            ack_of(&mut s, FrontendReq::SET_VRING_NUM, &state(0, 300)),
            1
        );
        assert_eq!(
            ack_of(&mut s, FrontendReq::SET_VRING_ENABLE, &state(0, 2)),
            1
        );
        assert_eq!(ack_of(&mut s, FrontendReq::SET_FEATURES, &[1, 2]), 1);
        // Kick without an fd and without the NOFD flag.
        assert_eq!(ack_of(&mut s, FrontendReq::SET_VRING_KICK, &u64_body(0)), 1);
        // Not offered, no reply of its own: refused (only when asked) and ignored.
        assert_eq!(ack_of(&mut s, FrontendReq::NET_SET_MTU, &u64_body(9000)), 1);
        let rarp = s.handle(msg(FrontendReq::SEND_RARP, &[0u8; 8], vec![], false));
        assert_eq!(rarp.unwrap(), Response::None);
        // The connection still works.
        assert_eq!(
            ack_of(&mut s, FrontendReq::SET_VRING_NUM, &state(0, 256)),
            0
        );
        // GET_VRING_BASE on a ring that does not exist still gets its index back.
        match s
            .handle(msg(
                FrontendReq::GET_VRING_BASE,
                &state(9, 0),
                vec![],
                false,
            ))
            .unwrap()
        {
            Response::Reply(_, body) => assert_eq!(body, state(9, 0)),
            Response::None => panic!("no reply"),
        }
        // A request that needs a reply this device cannot give ends the connection.
        let inflight = vhost::vhost_user::message::VhostUserInflight::new(0, 0, 2, 256);
        let r = s.handle(msg(
            FrontendReq::GET_INFLIGHT_FD,
            inflight.as_slice(),
            vec![],
            false,
        ));
        assert!(r.is_err());
    }
}
