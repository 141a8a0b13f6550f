//! The gateway port's side of the switch: frames the switch sends to the gateway (on guests'
//! datapath threads) wait in a bounded queue for the network's event loop, which an eventfd
//! wakes. The queue is bounded in frames and bytes; a frame that finds it full is dropped and
//! counted (a guest's TCP retransmits, and the flows' receive windows keep this rare). Each
//! frame keeps its virtio-net header: the `kernel` egress hands it on with the frame.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use vmm_sys_util::eventfd::EventFd;

use crate::datapath::host::HostPort;
use crate::datapath::vnet_hdr::VnetHdr;

/// Most frames waiting.
pub const MAX_FRAMES: usize = 1024;
/// Most bytes waiting (TSO super-frames are up to 64 KiB each).
pub const MAX_BYTES: usize = 16 << 20;
/// Spare buffers kept for reuse.
const MAX_SPARE: usize = 256;

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<(VnetHdr, Vec<u8>)>,
    bytes: usize,
    /// The eventfd was written and the loop has not taken the frames yet.
    signalled: bool,
    spare: Vec<Vec<u8>>,
}

/// The queue of frames for a gateway port.
#[derive(Debug)]
pub struct Inbox {
    queue: Mutex<Queue>,
    wake: EventFd,
    dropped: AtomicU64,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> io::Result<Self> {
        Ok(Inbox {
            queue: Mutex::new(Queue::default()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            dropped: AtomicU64::new(0),
        })
    }

    /// Readable when frames are waiting.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Moves the waiting frames, each with its virtio-net header, to the end of `out`; hand
    /// the buffers back with [`Inbox::recycle`].
    pub fn take(&self, out: &mut VecDeque<(VnetHdr, Vec<u8>)>) {
        // Reading resets the counter; failing means it was zero already.
        let _ = self.wake.read();
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.signalled = false;
        q.bytes = 0;
        out.append(&mut q.frames);
    }

    /// Gives a frame's buffer back for reuse.
    pub fn recycle(&self, mut buf: Vec<u8>) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.spare.len() < MAX_SPARE {
            buf.clear();
            q.spare.push(buf);
        }
    }
}

impl HostPort for Inbox {
    fn receive(&self, hdr: &VnetHdr, frame: &[u8]) {
        // The gateway takes frames with offloads pending: it reads no TCP or UDP checksum of a
        // guest's (they come from guest memory, not a wire), its TCP stack takes TSO
        // super-frames whole, and the kernel egress passes them on with their header.
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.frames.len() >= MAX_FRAMES || q.bytes + frame.len() > MAX_BYTES {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut buf = q.spare.pop().unwrap_or_default();
        buf.extend_from_slice(frame);
        q.bytes += frame.len();
        q.frames.push_back((*hdr, buf));
        if !q.signalled {
            q.signalled = true;
            // Fails only when the counter is saturated, which still wakes the loop.
            let _ = self.wake.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_wait_in_order_and_the_loop_is_woken_once() {
        let inbox = Inbox::new().unwrap();
        let hdr = VnetHdr::default();
        let tso = VnetHdr {
            needs_csum: true,
            gso: crate::datapath::vnet_hdr::Gso::Tcp4,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        inbox.receive(&hdr, &[1; 60]);
        inbox.receive(&tso, &[2; 70]);
        assert_eq!(inbox.wake_fd().read().unwrap(), 1, "one wake for both");
        inbox.wake_fd().write(1).unwrap();
        let mut out = VecDeque::new();
        inbox.take(&mut out);
        assert_eq!(out, [(hdr, vec![1; 60]), (tso, vec![2; 70])]);
        assert!(inbox.wake_fd().read().is_err(), "taken: no wake pending");
        for (_, f) in out.drain(..) {
            inbox.recycle(f);
        }
        inbox.receive(&hdr, &[3; 10]);
        assert_eq!(inbox.wake_fd().read().unwrap(), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let inbox = Inbox::new().unwrap();
        let hdr = VnetHdr::default();
        for _ in 0..MAX_FRAMES + 3 {
            inbox.receive(&hdr, &[0; 64]);
        }
        assert_eq!(inbox.dropped(), 3);
        let mut out = VecDeque::new();
        inbox.take(&mut out);
        assert_eq!(out.len(), MAX_FRAMES);
        let big = vec![0; 65536];
        for _ in 0..MAX_BYTES / big.len() + 1 {
            inbox.receive(&hdr, &big);
        }
        assert_eq!(inbox.dropped(), 4);
    }
}
