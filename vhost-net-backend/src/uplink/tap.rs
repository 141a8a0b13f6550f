//! TAP interfaces, as libvirt makes vnet0: created on /dev/net/tun (the kernel has no
//! rtnetlink way to create one) with a virtio-net header on every frame (IFF_VNET_HDR) and the
//! offloads the daemon takes (TUNSETOFFLOAD: partial checksums, TSO), then configured through
//! rtnetlink by the caller (master, MAC, MTU, up, addresses).
//!
//! The TAP is not persistent: the kernel deletes it when the daemon's descriptor closes, on
//! exit and on a crash alike. A persistent one left under the same name (by `ip tuntap add`, or
//! an older daemon) is taken over and made non-persistent, so it goes too.

use std::fs::File;
use std::io::{self, Read};

use super::{sys, HOST_OFFLOADS, VNET_HDR_LEN};
use crate::datapath::vnet_hdr::VnetHdr;

/// A TAP interface owned by the daemon.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates TAP interface `name` (or takes over a persistent one of that name). With
    /// `offloads` the kernel may hand over frames with partial checksums and TSO
    /// super-frames (described by their virtio-net header); without, only finished frames.
    /// Frames written to it may carry offloads either way.
    pub fn create(name: &str, offloads: bool) -> io::Result<Self> {
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        let (file, name) = sys::tap_open(name, flags)?;
        sys::tap_ioctl_value(&file, libc::TUNSETPERSIST, 0)?;
        sys::tap_ioctl_ptr(&file, libc::TUNSETVNETHDRSZ, VNET_HDR_LEN as libc::c_int)?;
        let flags = if offloads {
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        } else {
            0
        };
        sys::tap_ioctl_value(&file, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags))?;
        Ok(Tap { file, name })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device (for the event loop).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads one frame with its virtio-net header into `buf`; `Ok(0)` when none is pending.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match (&self.file).read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// Reads up to `burst` pending frames into `buf` (room for a header and the largest
    /// frame), handing each frame with its header to `each`. Returns how many frames had a
    /// header the daemon does not take (dropped).
    pub fn receive(
        &self,
        buf: &mut [u8],
        burst: usize,
        mut each: impl FnMut(&VnetHdr, &mut [u8]),
    ) -> io::Result<u64> {
        let mut bad = 0;
        for _ in 0..burst {
            let n = self.read(buf)?;
            if n == 0 {
                break;
            }
            if n < VNET_HDR_LEN {
                continue;
            }
            let (vnet, frame) = buf[..n].split_at_mut(VNET_HDR_LEN);
            match VnetHdr::parse_tx(vnet, HOST_OFFLOADS, frame.len()) {
                Ok(hdr) => each(&hdr, frame),
                Err(_) => bad += 1,
            }
        }
        Ok(bad)
    }

    /// Sends one frame with its virtio-net header into the kernel.
    pub fn send(&self, vnet: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<usize> {
        sys::tap_write(&self.file, &[vnet, frame])
    }
}
