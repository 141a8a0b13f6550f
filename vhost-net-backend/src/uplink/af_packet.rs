//! The `af_packet` uplink's channel: a packet socket bound to a host NIC, promiscuous, with a
//! virtio-net header on every frame both ways (so TSO and partial-checksum frames leave whole
//! and the kernel finishes them) and a TPACKET_V3 receive ring (frames arrive in blocks, one
//! wakeup for many). The socket ignores outgoing frames (PACKET_IGNORE_OUTGOING): what the
//! daemon sends out is never seen coming back.

use std::io;

use super::sys::{PacketSocket, Ring, RingFrame};
use super::VNET_HDR_LEN;

/// Bytes per ring block: a 64 KiB GRO frame with its headers fits one.
const BLOCK_SIZE: u32 = 256 * 1024;
/// Blocks in the ring (4 MiB).
const BLOCKS: u32 = 16;
/// A block not yet full is handed over after this many milliseconds.
const RETIRE_MS: u32 = 1;
/// `tp_status` bit: the VLAN tag was stripped into `tp_vlan_tci`.
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
/// `tp_status` bit: `tp_vlan_tpid` is set.
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// A received frame handed to the uplink's loop.
#[derive(Debug)]
pub struct Received<'a> {
    /// The virtio-net header the kernel wrote.
    pub vnet: &'a [u8],
    /// The frame.
    pub frame: &'a [u8],
    /// The 802.1Q tag the interface stripped, to put back: (TPID, TCI).
    pub vlan: Option<(u16, u16)>,
}

/// Opens a packet socket on interface `ifindex`: the socket (shared by the senders) and its
/// receive ring (owned by the uplink's loop).
pub fn open(ifindex: u32) -> io::Result<(PacketSocket, RxRing)> {
    let socket = PacketSocket::new()?;
    socket.set_option(
        libc::PACKET_VERSION,
        libc::tpacket_versions::TPACKET_V3 as i32,
    )?;
    socket.set_option(libc::PACKET_VNET_HDR, 1)?;
    socket.set_option(libc::PACKET_IGNORE_OUTGOING, 1)?;
    let ring = socket.rx_ring(BLOCK_SIZE, BLOCKS, RETIRE_MS)?;
    socket.bind(ifindex)?;
    socket.add_promiscuous(ifindex)?;
    Ok((socket, RxRing { ring, next: 0 }))
}

/// The receive ring and the next block to look at.
#[derive(Debug)]
pub struct RxRing {
    ring: Ring,
    next: usize,
}

impl RxRing {
    /// Hands every frame in the blocks the kernel filled to `f`, returning the blocks after
    /// each one. Returns how many frames were cut short (larger than a block: dropped).
    pub fn receive(&mut self, mut f: impl FnMut(Received<'_>)) -> u64 {
        let mut truncated = 0;
        for _ in 0..self.ring.blocks() {
            let Some(block) = self.ring.ready(self.next) else {
                break;
            };
            for rf in block.frames() {
                match received(&rf) {
                    Some(r) => f(r),
                    None => truncated += 1,
                }
            }
            self.ring.release(self.next);
            self.next = (self.next + 1) % self.ring.blocks();
        }
        truncated
    }
}

fn received<'a>(rf: &RingFrame<'a>) -> Option<Received<'a>> {
    if rf.frame.len() != rf.len as usize || rf.before.len() < VNET_HDR_LEN {
        return None;
    }
    let vlan = (rf.status & TP_STATUS_VLAN_VALID != 0).then(|| {
        let tpid = if rf.status & TP_STATUS_VLAN_TPID_VALID != 0 {
            rf.vlan_tpid
        } else {
            0x8100
        };
        (tpid, rf.vlan_tci)
    });
    Some(Received {
        vnet: &rf.before[rf.before.len() - VNET_HDR_LEN..],
        frame: rf.frame,
        vlan,
    })
}
