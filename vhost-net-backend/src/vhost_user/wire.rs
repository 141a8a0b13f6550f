//! vhost-user framing on a unix stream: the 12-byte header, the body, attached file descriptors,
//! and replies.
//!
//! Request codes and bodies are the `vhost` crate's (`vhost::vhost_user::message`); its header
//! type and endpoint are private to that crate, so the header is decoded here.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{FrontendReq, VhostUserMsgValidator, MAX_MSG_SIZE};
use vm_memory::ByteValued;

use crate::sys;

/// Size of the message header: request code, flags, body size (native-endian u32 each).
pub const HEADER_SIZE: usize = 12;

const VERSION_MASK: u32 = 0x3;
const VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// Errors reading or writing vhost-user messages.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frontend closed the connection.
    #[error("the frontend closed the connection")]
    Disconnected,
    /// Reading from the socket failed.
    #[error("reading from the vhost-user socket failed")]
    Read(#[source] io::Error),
    /// Writing to the socket failed.
    #[error("writing to the vhost-user socket failed")]
    Write(#[source] io::Error),
    /// The header's version is not 1 or it is marked as a reply.
    #[error("malformed message header (flags {flags:#x})")]
    BadHeader {
        /// The header's flags.
        flags: u32,
    },
    /// The body is larger than any vhost-user message may be.
    #[error("message body of {0} bytes exceeds the protocol maximum")]
    Oversized(u32),
}

/// A message header as it is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Request code (`FrontendReq` when known).
    pub request: u32,
    /// Version and reply flags.
    pub flags: u32,
    /// Size of the body that follows.
    pub size: u32,
}

impl Header {
    /// Decodes a header.
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Self {
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    /// Encodes the header.
    pub fn emit(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..4].copy_from_slice(&self.request.to_ne_bytes());
        out[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        out[8..12].copy_from_slice(&self.size.to_ne_bytes());
        out
    }

    /// A request header, as a frontend sends it.
    pub fn request(request: FrontendReq, size: u32, need_reply: bool) -> Self {
        let need = if need_reply { FLAG_NEED_REPLY } else { 0 };
        Header {
            request: request.into(),
            flags: VERSION_1 | need,
            size,
        }
    }

    /// The known request code, if it is one.
    pub fn code(&self) -> Option<FrontendReq> {
        FrontendReq::try_from(self.request).ok()
    }

    /// Whether the frontend asked for an acknowledgement (REPLY_ACK).
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    /// Whether this header is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }

    /// The header of the reply to this request, for a body of `size` bytes.
    pub fn reply(&self, size: usize) -> Header {
        Header {
            request: self.request,
            flags: VERSION_1 | FLAG_REPLY,
            size: size as u32,
        }
    }

    fn check(&self) -> Result<(), WireError> {
        if self.flags & VERSION_MASK != VERSION_1 || self.is_reply() {
            return Err(WireError::BadHeader { flags: self.flags });
        }
        if self.size as usize > MAX_MSG_SIZE {
            return Err(WireError::Oversized(self.size));
        }
        Ok(())
    }
}

/// One received request: header, body and the file descriptors that came with it.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The body (`header.size` bytes).
    pub body: Vec<u8>,
    /// Attached files (closed when dropped).
    pub files: Vec<File>,
}

/// Reads the next request from `stream` (blocking).
pub fn read_message(stream: &UnixStream) -> Result<Message, WireError> {
    let mut hdr = [0u8; HEADER_SIZE];
    let (n, files) = sys::recv_with_files(stream, &mut hdr).map_err(WireError::Read)?;
    if n == 0 {
        return Err(WireError::Disconnected);
    }
    if n < HEADER_SIZE {
        read_exact(stream, &mut hdr[n..])?;
    }
    let header = Header::parse(&hdr);
    header.check()?;
    let mut body = vec![0u8; header.size as usize];
    read_exact(stream, &mut body)?;
    Ok(Message {
        header,
        body,
        files,
    })
}

fn read_exact(mut stream: &UnixStream, buf: &mut [u8]) -> Result<(), WireError> {
    stream.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => WireError::Disconnected,
        _ => WireError::Read(e),
    })
}

/// Writes a header and body in one write.
pub fn write_message(
    mut stream: &UnixStream,
    header: &Header,
    body: &[u8],
) -> Result<(), WireError> {
    let mut out = Vec::with_capacity(HEADER_SIZE + body.len());
    out.extend_from_slice(&header.emit());
    out.extend_from_slice(body);
    stream.write_all(&out).map_err(WireError::Write)
}

/// Decodes a fixed-size body; `None` if the size is wrong or the body fails the crate's
/// validation.
pub fn body<T: ByteValued + Default + VhostUserMsgValidator>(bytes: &[u8]) -> Option<T> {
    let mut value = T::default();
    if bytes.len() != value.as_slice().len() {
        return None;
    }
    value.as_mut_slice().copy_from_slice(bytes);
    value.is_valid().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost::vhost_user::message::{VhostUserU64, VhostUserVringAddr};

    #[test]
    fn header_round_trip() {
        let h = Header::request(FrontendReq::SET_VRING_ENABLE, 8, true);
        let bytes = h.emit();
        assert_eq!(Header::parse(&bytes), h);
        assert_eq!(h.code(), Some(FrontendReq::SET_VRING_ENABLE));
        assert!(h.need_reply());
        let r = h.reply(8);
        assert!(r.is_reply());
        assert!(!r.need_reply());
        assert_eq!(r.request, 18);
    }

    #[test]
    fn header_checks_version_and_size() {
        let mut h = Header::request(FrontendReq::GET_FEATURES, 0, false);
        assert!(h.check().is_ok());
        h.flags = 0x2;
        assert!(matches!(h.check(), Err(WireError::BadHeader { .. })));
        let h = Header {
            request: 1,
            flags: 1,
            size: MAX_MSG_SIZE as u32 + 1,
        };
        assert!(matches!(h.check(), Err(WireError::Oversized(_))));
    }

    #[test]
    fn unknown_code_is_kept() {
        let h = Header {
            request: 9999,
            flags: 1,
            size: 0,
        };
        assert_eq!(h.code(), None);
        assert!(h.check().is_ok());
    }

    #[test]
    fn body_checks_size_and_validity() {
        assert_eq!(
            body::<VhostUserU64>(&7u64.to_ne_bytes()).map(|v| v.value),
            Some(7)
        );
        assert!(body::<VhostUserU64>(&[0u8; 4]).is_none());
        // A descriptor table address that is not 16-byte aligned fails the crate's validation.
        let mut raw = [0u8; 40];
        raw[8] = 1;
        assert!(body::<VhostUserVringAddr>(&raw).is_none());
        raw[8] = 0x10;
        assert!(body::<VhostUserVringAddr>(&raw).is_some());
    }

    #[test]
    fn message_with_fd_over_a_socket_pair() {
        use std::os::fd::AsRawFd;
        use vmm_sys_util::eventfd::EventFd;
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;

        let (a, b) = UnixStream::pair().unwrap();
        let efd = EventFd::new(0).unwrap();
        let h = Header::request(FrontendReq::SET_VRING_KICK, 8, false);
        let mut out = h.emit().to_vec();
        out.extend_from_slice(&1u64.to_ne_bytes());
        a.send_with_fds(&[&out[..]], &[efd.as_raw_fd()]).unwrap();
        let msg = read_message(&b).unwrap();
        assert_eq!(msg.header, h);
        assert_eq!(msg.body, 1u64.to_ne_bytes());
        assert_eq!(msg.files.len(), 1);
        drop(a);
        assert!(matches!(read_message(&b), Err(WireError::Disconnected)));
    }
}
