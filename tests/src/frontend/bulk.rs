//! Bulk traffic for load generation: frames prepared once in every transmit buffer and sent
//! again and again without rewriting them, and received frames reaped without copying more
//! than their first bytes. Both publish once and kick at most once per call, and allocate
//! nothing per frame.

use super::net::{NetError, VirtioNet};
use super::net_hdr::NetHdr;

impl VirtioNet {
    /// Writes a frame with header `hdr` into every transmit buffer of `pair`, once: `fill`
    /// gets the buffer's number and room for the frame, and returns the frame's length. Frames
    /// sent with [`VirtioNet::send`] or [`VirtioNet::send_batch`] overwrite the buffers: prepare
    /// again after using those.
    pub fn prepare_tx(
        &mut self,
        pair: u16,
        hdr: &NetHdr,
        mut fill: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> Result<(), NetError> {
        let index = self.tx_index(pair)?;
        let mut frame = vec![0u8; self.max_frame()];
        let slots = self.vrings[index].slots.len();
        let mut lengths = Vec::with_capacity(slots);
        for i in 0..slots {
            let len = fill(i, &mut frame);
            let Some(bytes) = frame.get(..len) else {
                return Err(NetError::FrameTooLarge {
                    len,
                    max: frame.len(),
                });
            };
            self.tx_descriptors(len)?;
            self.write_tx_slot(index, i, hdr, bytes)?;
            lengths.push(len as u32);
        }
        self.vrings[index].prepared = lengths;
        Ok(())
    }

    /// Makes up to `max` prepared frames available on `pair` (as many as there are free
    /// descriptors), after reclaiming the buffers the device finished with; publishes once and
    /// kicks if the device asks. Returns how many were queued.
    pub fn send_prepared(&mut self, pair: u16, max: usize) -> Result<usize, NetError> {
        let index = self.tx_index(pair)?;
        if self.vrings[index].prepared.is_empty() {
            return Err(NetError::Options("no prepared frames".into()));
        }
        self.reclaim(index)?;
        let mut sent = 0;
        while sent < max {
            let vring = &self.vrings[index];
            let Some(head) = vring.ring.next_head() else {
                break;
            };
            let len = vring.prepared[usize::from(head)];
            if self.tx_descriptors(len as usize)? > vring.ring.num_free() {
                break;
            }
            self.add_tx_chain(index, len)?;
            sent += 1;
        }
        self.publish(index)?;
        Ok(sent)
    }

    /// Sends one prepared frame on `pair` with `bytes` written at byte `offset` of it (a
    /// sequence number or a time stamp); publishes and kicks if the device asks. Returns false
    /// when no transmit descriptor is free.
    pub fn send_stamped(
        &mut self,
        pair: u16,
        offset: usize,
        bytes: &[u8],
    ) -> Result<bool, NetError> {
        let index = self.tx_index(pair)?;
        self.reclaim(index)?;
        let Ok(head) = self.next_tx_head(index) else {
            return Ok(false);
        };
        let vring = &self.vrings[index];
        let Some(&len) = vring.prepared.get(usize::from(head)) else {
            return Err(NetError::Options("no prepared frames".into()));
        };
        if offset + bytes.len() > len as usize {
            return Err(NetError::FrameTooLarge {
                len: offset + bytes.len(),
                max: len as usize,
            });
        }
        if self.tx_descriptors(len as usize)? > vring.ring.num_free() {
            return Ok(false);
        }
        vring.slots[usize::from(head)]
            .block
            .write_slice(bytes, self.hdr_len + offset)
            .map_err(|e| NetError::Queue {
                vring: index,
                source: e.into(),
            })?;
        self.add_tx_chain(index, len)?;
        self.publish(index)?;
        Ok(true)
    }

    /// Reaps up to `max` received frames of `pair` without waiting: `sink` gets each one's
    /// header, length and first `peek` bytes. Then reposts the buffers and publishes once.
    /// Returns how many frames `sink` saw.
    pub fn recv_heads(
        &mut self,
        pair: u16,
        max: usize,
        peek: usize,
        mut sink: impl FnMut(&NetHdr, usize, &[u8]),
    ) -> Result<usize, NetError> {
        let index = self.rx_index(pair)?;
        let mut received = 0;
        while received < max && self.take(index, peek, &mut sink)? {
            received += 1;
        }
        if received > 0 {
            self.refill(index)?;
        }
        Ok(received)
    }

    /// Whether the device returned buffers on `pair`'s receive queue that were not reaped.
    pub fn rx_pending(&self, pair: u16) -> Result<bool, NetError> {
        let index = self.rx_index(pair)?;
        let ring = &self.vrings[index].ring;
        let used = ring.used_idx().map_err(|source| NetError::Queue {
            vring: index,
            source,
        })?;
        Ok(used != ring.last_used())
    }
}
