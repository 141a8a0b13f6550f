//! A guest of a load run: one harness NIC on a backend socket, the MACs it sends from, and the
//! frames prepared in its transmit buffers.

use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use super::traffic::{self, Flow, MIN_FRAME};
use crate::frontend::connection::Role;
use crate::frontend::features;
use crate::frontend::net::{NetError, NetOptions, VirtioNet};
use crate::frontend::net_hdr::{NetHdr, HDR_LEN};
use crate::frontend::replay::FrontendKind;

/// Errors setting up or driving a guest.
#[derive(Debug, Error)]
pub enum GuestError {
    /// The NIC failed.
    #[error("guest {guest}")]
    Nic {
        /// Guest number.
        guest: usize,
        /// Cause.
        #[source]
        source: NetError,
    },
    /// The backend did not negotiate what the run needs.
    #[error("guest {guest}: the backend did not negotiate {what}")]
    Features {
        /// Guest number.
        guest: usize,
        /// The missing feature.
        what: &'static str,
    },
}

/// What kind of frames a guest's NIC is set up for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frames {
    /// Frames of up to this many bytes, no offload.
    Plain(usize),
    /// 64 KiB TCP segments: TSO both ways (HOST_TSO4 to send, GUEST_TSO4 to receive whole).
    Tso,
}

/// A guest: its NIC and its MACs.
#[derive(Debug)]
pub struct Guest {
    /// Its number in the run (MACs and addresses derive from it).
    pub index: usize,
    /// The NIC.
    pub nic: VirtioNet,
    /// The MACs it sends from.
    pub macs: Vec<[u8; 6]>,
}

impl Guest {
    /// Connects guest `index` to the backend listening on `socket`, with `macs` addresses and
    /// queues of `queue_size` entries, set up for `frames`. Negotiates what a Linux guest
    /// does (EVENT_IDX, MRG_RXBUF, offloads), replaying QEMU's messages.
    pub fn connect(
        socket: &Path,
        index: usize,
        macs: usize,
        queue_size: u16,
        frames: Frames,
    ) -> Result<Guest, GuestError> {
        let err = |source| GuestError::Nic {
            guest: index,
            source,
        };
        let mut options = NetOptions {
            frontend: FrontendKind::Qemu,
            queue_size,
            timeout: Duration::from_secs(10),
            ..NetOptions::default()
        };
        match frames {
            Frames::Plain(len) => {
                options.tx_buffer_size = Some((HDR_LEN + len.max(MIN_FRAME)) as u32);
            }
            Frames::Tso => {
                // One buffer per segment, as a guest without MRG_RXBUF posts for GUEST_TSO.
                options.rx_buffer_size = Some((HDR_LEN + traffic::MAX_FRAME) as u32);
            }
        }
        let nic = VirtioNet::new(Role::Connect(socket.to_path_buf()), options).map_err(err)?;
        if frames == Frames::Tso {
            for (mask, what) in [
                (features::HOST_TSO4 | features::CSUM, "HOST_TSO4"),
                (features::GUEST_TSO4 | features::GUEST_CSUM, "GUEST_TSO4"),
            ] {
                if !nic.negotiated().has(mask) {
                    return Err(GuestError::Features { guest: index, what });
                }
            }
        }
        Ok(Guest {
            index,
            nic,
            macs: (0..macs.max(1)).map(|n| traffic::mac(index, n)).collect(),
        })
    }

    fn err(&self) -> impl Fn(NetError) -> GuestError + '_ {
        |source| GuestError::Nic {
            guest: self.index,
            source,
        }
    }

    /// Sends a broadcast from each of its MACs, so that a learning switch knows where they
    /// are.
    pub fn announce(&mut self) -> Result<(), GuestError> {
        for mac in self.macs.clone() {
            let flow = Flow {
                src_mac: mac,
                dst_mac: [0xff; 6],
                ..Flow::nth(self.index, &self.macs, self.index, &self.macs, 0)
            };
            let mut frame = [0u8; MIN_FRAME];
            let len = flow.udp_frame(&mut frame, MIN_FRAME);
            self.nic.send(0, &frame[..len]).map_err(self.err())?;
        }
        Ok(())
    }

    /// Prepares its transmit buffers with `frames` toward guest `to`: one flow per buffer,
    /// flows numbered from 0 up to `flows` and around again.
    pub fn prepare(&mut self, to: &Guest, frames: Frames, flows: usize) -> Result<(), GuestError> {
        let flows = flows.max(1);
        let flow = |n: usize| Flow::nth(self.index, &self.macs, to.index, &to.macs, n % flows);
        match frames {
            Frames::Plain(len) => self
                .nic
                .prepare_tx(0, &NetHdr::plain(), |n, buf| flow(n).udp_frame(buf, len)),
            Frames::Tso => {
                let (hdr, segment) = flow(0).tso_segment(1);
                self.nic.prepare_tx(0, &hdr, |_, buf| {
                    buf[..segment.len()].copy_from_slice(&segment);
                    segment.len()
                })
            }
        }
        .map_err(self.err())
    }

    /// Sends as many prepared frames as there is room for; returns how many.
    pub fn send(&mut self) -> Result<usize, GuestError> {
        self.nic.send_prepared(0, usize::MAX).map_err(self.err())
    }

    /// Reaps what arrived; returns frames and bytes.
    pub fn receive(&mut self) -> Result<(u64, u64), GuestError> {
        let mut bytes = 0u64;
        let frames = self
            .nic
            .recv_heads(0, usize::MAX, 0, |_, len, _| bytes += len as u64)
            .map_err(self.err())?;
        Ok((frames as u64, bytes))
    }

    /// Sends one prepared frame stamped with `seq`; returns false when the queue is full.
    pub fn send_stamped(&mut self, seq: u64) -> Result<bool, GuestError> {
        self.nic
            .send_stamped(0, traffic::STAMP_OFFSET, &seq.to_le_bytes())
            .map_err(self.err())
    }

    /// Reaps what arrived and returns the stamps of the frames seen, calling `f` per stamp.
    pub fn receive_stamps(&mut self, mut f: impl FnMut(u64)) -> Result<usize, GuestError> {
        let peek = traffic::STAMP_OFFSET + 8;
        self.nic
            .recv_heads(0, usize::MAX, peek, |_, _, head| {
                if let Some(stamp) = head.get(traffic::STAMP_OFFSET..peek) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(stamp);
                    f(u64::from_le_bytes(b));
                }
            })
            .map_err(self.err())
    }
}
