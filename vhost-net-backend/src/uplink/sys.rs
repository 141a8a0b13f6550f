//! The uplinks' `unsafe` code: packet sockets (options, binding, the mapped TPACKET_V3 receive
//! ring, sends with a virtio-net header) and TAP devices (TUNSETIFF and friends, reads and
//! writes).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// `ETH_P_ALL` in network byte order, as packet sockets take it.
fn eth_p_all() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points at a live `T` of `size_of::<T>()` bytes that the kernel only reads.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc).map(drop)
}

/// A packet socket (AF_PACKET, SOCK_RAW), non-blocking.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// A socket that receives nothing until [`PacketSocket::bind`] names a protocol.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before it is owned.
        let fd = check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket { fd })
    }

    /// Sets an integer SOL_PACKET option.
    pub fn set_option(&self, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        setsockopt(self.fd.as_fd(), libc::SOL_PACKET, name, &value)
    }

    /// Puts interface `ifindex` in promiscuous mode for as long as the socket is open.
    pub fn add_promiscuous(&self, ifindex: u32) -> io::Result<()> {
        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        setsockopt(
            self.fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mreq,
        )
    }

    /// Sets up a TPACKET_V3 receive ring of `block_nr` blocks of `block_size` bytes, blocks
    /// handed over after `retire_ms` even when not full, and maps it.
    pub fn rx_ring(&self, block_size: u32, block_nr: u32, retire_ms: u32) -> io::Result<Ring> {
        let frame_size = 2048;
        let req = libc::tpacket_req3 {
            tp_block_size: block_size,
            tp_block_nr: block_nr,
            tp_frame_size: frame_size,
            tp_frame_nr: block_size / frame_size * block_nr,
            tp_retire_blk_tov: retire_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(
            self.fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &req,
        )?;
        let len = block_size as usize * block_nr as usize;
        // SAFETY: maps the ring the kernel just allocated for this socket; the mapping is
        // owned by the returned `Ring` and unmapped once, on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring {
            ptr: NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?,
            block_size: block_size as usize,
            block_nr: block_nr as usize,
        })
    }

    /// Binds the socket to every protocol on interface `ifindex`.
    pub fn bind(&self, ifindex: u32) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_ll is a valid value of the plain C struct.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = eth_p_all();
        addr.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `addr` is a valid sockaddr_ll of the given length, only read by the kernel.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(rc).map(drop)
    }

    /// Sends one frame made of `parts` (a virtio-net header, then the frame).
    pub fn send(&self, parts: &[&[u8]]) -> io::Result<usize> {
        send_parts(self.fd.as_fd(), parts)
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Writes `parts` as one datagram (at most 4 parts).
fn send_parts(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 4];
    let n = parts.len().min(iov.len());
    for (v, p) in iov.iter_mut().zip(&parts[..n]) {
        v.iov_base = p.as_ptr() as *mut libc::c_void;
        v.iov_len = p.len();
    }
    // SAFETY: the first `n` iovecs point at borrowed slices that stay alive during the call
    // and that writev only reads.
    let rc = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), n as libc::c_int) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// A mapped TPACKET_V3 receive ring: blocks the kernel fills and hands to user space.
#[derive(Debug)]
pub struct Ring {
    ptr: NonNull<u8>,
    block_size: usize,
    block_nr: usize,
}

// SAFETY: the ring is plain shared memory; access to a block's contents is serialised by its
// status word (the kernel writes only blocks it owns), and `Ring` is used by one thread at a
// time through `&mut`.
unsafe impl Send for Ring {}

/// Offsets in `struct tpacket_block_desc` (TPACKET_V3, `tpacket_hdr_v1`).
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST_PKT: usize = 16;

impl Ring {
    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.block_nr
    }

    fn status(&self, block: usize) -> &AtomicU32 {
        let offset = block * self.block_size + BLOCK_STATUS;
        // SAFETY: `offset` is inside the mapping (block < block_nr) and 4-byte aligned (blocks
        // are page aligned); the kernel and this process access the word atomically.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// Block `block`'s contents if the kernel handed it to user space.
    pub fn ready(&self, block: usize) -> Option<Block<'_>> {
        if block >= self.block_nr {
            return None;
        }
        let status = self.status(block).load(Ordering::Acquire);
        if status & libc::TP_STATUS_USER == 0 {
            return None;
        }
        // SAFETY: the block is inside the mapping and owned by user space until `release`;
        // the kernel does not write it meanwhile (acquire ordering on the status word above).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().add(block * self.block_size),
                self.block_size,
            )
        };
        Some(Block { bytes })
    }

    /// Hands block `block` back to the kernel.
    pub fn release(&self, block: usize) {
        if block < self.block_nr {
            self.status(block)
                .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `rx_ring`; no `Block` borrows it any more.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.block_size * self.block_nr);
        }
    }
}

/// A block of received frames, read-only while user space owns it.
#[derive(Debug)]
pub struct Block<'a> {
    bytes: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]))
}

/// One frame of a block, as `struct tpacket3_hdr` describes it.
#[derive(Clone, Copy, Debug)]
pub struct RingFrame<'a> {
    /// `tp_status` (VLAN_VALID, ...).
    pub status: u32,
    /// Bytes before the frame (the virtio-net header sits right before it).
    pub before: &'a [u8],
    /// The frame as captured (at most the block's room).
    pub frame: &'a [u8],
    /// The frame's length on the wire.
    pub len: u32,
    /// The VLAN TCI stripped by the interface, when `status` has VLAN_VALID.
    pub vlan_tci: u16,
    /// The VLAN TPID, when `status` has VLAN_TPID_VALID.
    pub vlan_tpid: u16,
}

impl<'a> Block<'a> {
    /// The block's frames, in order. Offsets the kernel wrote are bounds-checked.
    pub fn frames(&self) -> impl Iterator<Item = RingFrame<'a>> + 'a {
        let b = self.bytes;
        let count = u32_at(b, BLOCK_NUM_PKTS);
        let mut at = u32_at(b, BLOCK_FIRST_PKT) as usize;
        (0..count).map_while(move |_| {
            let h = b.get(at..at + 40)?;
            let next = u32_at(h, 0) as usize;
            let snaplen = u32_at(h, 12) as usize;
            let len = u32_at(h, 16);
            let status = u32_at(h, 20);
            let mac = usize::from(u16_at(h, 24));
            let frame = b.get(at + mac..at + mac + snaplen)?;
            let before = &b[at..at + mac];
            let out = RingFrame {
                status,
                before,
                frame,
                len,
                vlan_tci: u32_at(h, 32) as u16,
                vlan_tpid: u16_at(h, 36),
            };
            at = if next == 0 { b.len() } else { at + next };
            Some(out)
        })
    }
}

/// Opens /dev/net/tun as TAP interface `name` (created if it does not exist) with `flags`
/// (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR ...). Returns the device and the name the kernel gave.
pub fn tap_open(name: &str, flags: libc::c_int) -> io::Result<(File, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the `ifreq` it is given, which is valid and
    // exclusively borrowed for the call.
    check(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
    let name = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    Ok((file, name))
}

/// An `ifreq` holding interface name `name`.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: an all-zero ifreq is a valid value of the plain C struct.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// An ioctl on a TAP device that takes an integer argument by value.
pub fn tap_ioctl_value(tap: &File, request: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the TUN ioctls used here (TUNSETOFFLOAD, TUNSETPERSIST) take the integer itself,
    // no pointer.
    check(unsafe { libc::ioctl(tap.as_raw_fd(), request, value) }).map(drop)
}

/// An ioctl on a TAP device that reads an integer through a pointer (TUNSETVNETHDRSZ).
pub fn tap_ioctl_ptr(tap: &File, request: libc::Ioctl, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` lives for the call and the ioctl only reads it.
    check(unsafe { libc::ioctl(tap.as_raw_fd(), request, &value) }).map(drop)
}

/// Writes `parts` as one frame to a TAP device.
pub fn tap_write(tap: &File, parts: &[&[u8]]) -> io::Result<usize> {
    send_parts(tap.as_fd(), parts)
}
