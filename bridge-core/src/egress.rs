//! What happens to a frame's 802.1Q tag on the way out of a port.

use crate::vlan::{self, Tci};

/// Offset of the TPID (the outer EtherType) in an Ethernet frame.
const TPID_OFFSET: usize = 12;
/// End of the TPID and TCI of a tagged frame (where its inner EtherType starts).
const AFTER_TCI: usize = TPID_OFFSET + 4;

/// The tag action for one destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Egress {
    /// Deliver the frame unchanged.
    AsIs,
    /// Insert an 802.1Q tag with this TCI after the source MAC.
    Push(Tci),
    /// Remove the frame's 802.1Q tag.
    Pop,
    /// Replace the TCI of the frame's tag (a priority-tagged frame entering a VLAN).
    Retag(Tci),
}

impl Egress {
    /// The length of the frame once the action is applied.
    pub const fn output_len(self, frame_len: usize) -> usize {
        match self {
            Egress::AsIs | Egress::Retag(_) => frame_len,
            Egress::Push(_) => frame_len + vlan::HEADER_LEN,
            Egress::Pop => frame_len.saturating_sub(vlan::HEADER_LEN),
        }
    }

    /// Applies the action without copying the frame: the result is a short rewritten head
    /// followed by a tail borrowed from `frame`, ready to be copied once into the destination.
    ///
    /// Returns `None` only if `frame` is too short for the action (a frame that
    /// [`Switch::process`](crate::Switch::process) accepted never is).
    pub fn apply(self, frame: &[u8]) -> Option<EgressFrame<'_>> {
        let mut out = EgressFrame {
            head: [0; HEAD_MAX],
            head_len: 0,
            tail: frame,
        };
        let (tci, rest) = match self {
            Egress::AsIs => return Some(out),
            Egress::Pop => {
                let macs = frame.get(..TPID_OFFSET)?;
                out.head[..TPID_OFFSET].copy_from_slice(macs);
                out.head_len = TPID_OFFSET;
                out.tail = frame.get(AFTER_TCI..)?;
                return Some(out);
            }
            Egress::Push(tci) => (tci, TPID_OFFSET),
            Egress::Retag(tci) => (tci, AFTER_TCI),
        };
        let macs = frame.get(..TPID_OFFSET)?;
        out.tail = frame.get(rest..)?;
        out.head[..TPID_OFFSET].copy_from_slice(macs);
        out.head[TPID_OFFSET..TPID_OFFSET + 2].copy_from_slice(&vlan::TPID.to_be_bytes());
        out.head[TPID_OFFSET + 2..AFTER_TCI].copy_from_slice(&tci.0.to_be_bytes());
        out.head_len = AFTER_TCI;
        Some(out)
    }
}

const HEAD_MAX: usize = AFTER_TCI;

/// A frame with its egress action applied: `head()` then `tail()`.
#[derive(Debug, Clone, Copy)]
pub struct EgressFrame<'a> {
    head: [u8; HEAD_MAX],
    head_len: usize,
    tail: &'a [u8],
}

impl<'a> EgressFrame<'a> {
    /// The rewritten first bytes (empty for [`Egress::AsIs`]).
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    /// The rest of the original frame.
    pub fn tail(&self) -> &'a [u8] {
        self.tail
    }

    /// Total length.
    pub fn len(&self) -> usize {
        self.head_len + self.tail.len()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the frame into `out`; returns the length written, or `None` if `out` is too short.
    pub fn copy_to(&self, out: &mut [u8]) -> Option<usize> {
        let out = out.get_mut(..self.len())?;
        let (head, tail) = out.split_at_mut(self.head_len);
        head.copy_from_slice(self.head());
        tail.copy_from_slice(self.tail);
        Some(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTAGGED: [u8; 16] = [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x08, 0x00, 0xaa, 0xbb];
    const TAGGED: [u8; 20] = [
        1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x81, 0x00, 0x20, 0x0a, 0x08, 0x00, 0xaa, 0xbb,
    ];

    fn applied(egress: Egress, frame: &[u8]) -> Vec<u8> {
        let out = egress.apply(frame).unwrap();
        let mut buf = vec![0; out.len()];
        assert_eq!(out.copy_to(&mut buf), Some(buf.len()));
        assert_eq!(buf.len(), egress.output_len(frame.len()));
        buf
    }

    #[test]
    fn push_and_pop_are_inverse_fixtures() {
        assert_eq!(
            applied(Egress::Push(Tci::new(1, false, 10)), &UNTAGGED),
            TAGGED
        );
        assert_eq!(applied(Egress::Pop, &TAGGED), UNTAGGED);
        assert_eq!(applied(Egress::AsIs, &TAGGED), TAGGED);
    }

    #[test]
    fn retag_rewrites_the_tci_only() {
        let mut priority = TAGGED;
        priority[15] = 0; // VID 0, PCP 1
        assert_eq!(
            applied(Egress::Retag(Tci::new(1, false, 10)), &priority),
            TAGGED
        );
    }

    #[test]
    fn short_frames_and_buffers() {
        assert!(Egress::Pop.apply(&UNTAGGED[..15]).is_none());
        assert!(Egress::Push(Tci(1)).apply(&UNTAGGED[..11]).is_none());
        let out = Egress::AsIs.apply(&UNTAGGED).unwrap();
        assert_eq!(out.copy_to(&mut [0; 15]), None);
        assert!(Egress::AsIs.apply(&[]).unwrap().is_empty());
    }
}
