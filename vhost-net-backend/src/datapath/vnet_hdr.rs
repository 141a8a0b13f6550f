//! The virtio-net header in front of every frame: parsed from what a guest sends, checked
//! against what it negotiated, and emitted for a receiving guest.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};

use bridge_core::offload::{GsoType, OffloadParams};

use crate::vhu_net::Negotiated;

/// Largest header (VERSION_1 or MRG_RXBUF: with num_buffers).
pub const MAX_HDR_LEN: usize = 12;

/// Segmentation a frame asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Gso {
    /// A plain frame.
    #[default]
    None,
    /// A TCP over IPv4 segment to cut at `gso_size`.
    Tcp4,
    /// A TCP over IPv6 segment to cut at `gso_size`.
    Tcp6,
}

/// Why a guest's header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The chain is shorter than the header.
    #[error("frame shorter than its virtio-net header")]
    Truncated,
    /// A GSO type that is unknown, not negotiated (HOST_TSO4/6) or has the ECN bit.
    #[error("GSO type {0:#x} not negotiated")]
    Gso(u8),
    /// A partial checksum without CSUM, GSO without a partial checksum or without a segment
    /// size, or checksum fields outside the frame.
    #[error("inconsistent checksum offload fields")]
    Csum,
}

/// A parsed virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// The frame's checksum starting at `csum_start` must be completed.
    pub needs_csum: bool,
    /// Segmentation.
    pub gso: Gso,
    /// Length of the headers (a hint).
    pub hdr_len: u16,
    /// Segment payload size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses and checks the header a guest sent with a frame of `frame_len` bytes, against
    /// the features it negotiated. `bytes` holds at least the first 10 bytes.
    pub fn parse_tx(
        bytes: &[u8],
        features: Negotiated,
        frame_len: usize,
    ) -> Result<Self, HeaderError> {
        let b = bytes.get(..10).ok_or(HeaderError::Truncated)?;
        let word = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let flags = b[0];
        let gso_type = b[1];
        let (tso4, tso6) = features.host_tso();
        let gso = match u32::from(gso_type) {
            VIRTIO_NET_HDR_GSO_NONE => Gso::None,
            VIRTIO_NET_HDR_GSO_TCPV4 if tso4 => Gso::Tcp4,
            VIRTIO_NET_HDR_GSO_TCPV6 if tso6 => Gso::Tcp6,
            _ => return Err(HeaderError::Gso(gso_type)),
        };
        let needs_csum = u32::from(flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
        let hdr = VnetHdr {
            needs_csum,
            gso,
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
        };
        if needs_csum {
            let end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
            if !features.host_csum() || end > frame_len {
                return Err(HeaderError::Csum);
            }
        }
        if gso != Gso::None && (!needs_csum || hdr.gso_size == 0) {
            return Err(HeaderError::Csum);
        }
        Ok(hdr)
    }

    /// Whether a guest with `features` can take this frame as it is.
    pub fn fits(&self, features: Negotiated) -> bool {
        let (tso4, tso6) = features.guest_tso();
        let gso_ok = match self.gso {
            Gso::None => true,
            Gso::Tcp4 => tso4,
            Gso::Tcp6 => tso6,
        };
        gso_ok && (!self.needs_csum || features.guest_csum())
    }

    /// What bridge-core's offload helpers need to complete the frame in software.
    pub fn offload_params(&self) -> OffloadParams {
        OffloadParams {
            needs_csum: self.needs_csum,
            csum_start: self.csum_start,
            csum_offset: self.csum_offset,
            gso_type: match self.gso {
                Gso::None => GsoType::None,
                Gso::Tcp4 => GsoType::TcpV4,
                Gso::Tcp6 => GsoType::TcpV6,
            },
            gso_size: self.gso_size,
        }
    }

    /// The header after `shift` bytes were inserted (positive) or removed (negative) in front
    /// of the checksummed part (an 802.1Q tag pushed or popped).
    pub fn shifted(mut self, shift: isize) -> Self {
        let adj = |v: u16| (v as isize + shift).clamp(0, u16::MAX as isize) as u16;
        if self.needs_csum {
            self.csum_start = adj(self.csum_start);
        }
        if self.hdr_len != 0 {
            self.hdr_len = adj(self.hdr_len);
        }
        self
    }

    /// Writes the header for a receiving guest into `out` (its header length: 10 or 12 bytes);
    /// `num_buffers` goes into the 12-byte form.
    #[inline]
    pub fn emit(&self, out: &mut [u8], num_buffers: u16) {
        let gso_type = match self.gso {
            Gso::None => VIRTIO_NET_HDR_GSO_NONE,
            Gso::Tcp4 => VIRTIO_NET_HDR_GSO_TCPV4,
            Gso::Tcp6 => VIRTIO_NET_HDR_GSO_TCPV6,
        } as u8;
        let flags = if self.needs_csum {
            VIRTIO_NET_HDR_F_NEEDS_CSUM as u8
        } else {
            0
        };
        let mut h = [0u8; MAX_HDR_LEN];
        h[0] = flags;
        h[1] = gso_type;
        h[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        let n = out.len().min(MAX_HDR_LEN);
        out[..n].copy_from_slice(&h[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    };

    const HOST: Negotiated = Negotiated((1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4));

    fn raw(flags: u8, gso: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0] = flags;
        b[1] = gso;
        b[2..4].copy_from_slice(&54u16.to_le_bytes());
        b[4..6].copy_from_slice(&gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&csum_offset.to_le_bytes());
        b
    }

    #[test]
    fn parse_emit_round_trip() {
        let h = VnetHdr::parse_tx(&raw(1, 1, 1448, 34, 16), HOST, 60_000).unwrap();
        assert_eq!(h.gso, Gso::Tcp4);
        assert!(h.needs_csum);
        let mut out = [0u8; 12];
        h.emit(&mut out, 3);
        assert_eq!(&out[..10], &raw(1, 1, 1448, 34, 16));
        assert_eq!(u16::from_le_bytes([out[10], out[11]]), 3);
        let again = VnetHdr::parse_tx(&out, HOST, 60_000).unwrap();
        assert_eq!(again, h);
    }

    #[test]
    fn offloads_need_negotiation_and_consistency() {
        let plain = Negotiated(0);
        assert_eq!(
            VnetHdr::parse_tx(&raw(1, 0, 0, 34, 16), plain, 100),
            Err(HeaderError::Csum)
        );
        assert_eq!(
            VnetHdr::parse_tx(&raw(1, 1, 1448, 34, 16), plain, 100),
            Err(HeaderError::Gso(1))
        );
        assert_eq!(
            VnetHdr::parse_tx(&raw(1, 4, 1448, 54, 16), HOST, 100),
            Err(HeaderError::Gso(4))
        );
        assert_eq!(
            VnetHdr::parse_tx(&raw(1, 0x81, 1448, 34, 16), HOST, 100),
            Err(HeaderError::Gso(0x81))
        );
        assert_eq!(
            VnetHdr::parse_tx(&raw(1, 3, 1448, 34, 6), HOST, 100),
            Err(HeaderError::Gso(3))
        );
        // GSO without a partial checksum, or with segment size 0.
        assert_eq!(
            VnetHdr::parse_tx(&raw(0, 1, 1448, 0, 0), HOST, 100),
            Err(HeaderError::Csum)
        );
        assert_eq!(
            VnetHdr::parse_tx(&raw(1, 1, 0, 34, 16), HOST, 100),
            Err(HeaderError::Csum)
        );
        // Checksum field past the end of the frame.
        assert_eq!(
            VnetHdr::parse_tx(&raw(1, 0, 0, 90, 16), HOST, 100),
            Err(HeaderError::Csum)
        );
        assert_eq!(
            VnetHdr::parse_tx(&raw(0, 0, 0, 0, 0)[..8], HOST, 100),
            Err(HeaderError::Truncated)
        );
        assert!(VnetHdr::parse_tx(&raw(0, 0, 0, 0, 0), plain, 100).is_ok());
    }

    #[test]
    fn fits_only_what_the_receiver_negotiated() {
        let tso = VnetHdr::parse_tx(&raw(1, 1, 1448, 34, 16), HOST, 60_000).unwrap();
        let csum = VnetHdr::parse_tx(&raw(1, 0, 0, 34, 16), HOST, 1000).unwrap();
        let guest_csum = Negotiated(1 << VIRTIO_NET_F_GUEST_CSUM);
        let guest_tso = Negotiated((1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4));
        assert!(!tso.fits(Negotiated(0)));
        assert!(!tso.fits(guest_csum));
        assert!(tso.fits(guest_tso));
        assert!(!csum.fits(Negotiated(0)));
        assert!(csum.fits(guest_csum));
        assert!(VnetHdr::default().fits(Negotiated(0)));
    }

    #[test]
    fn shift_moves_checksum_start() {
        let h = VnetHdr::parse_tx(&raw(1, 0, 0, 34, 16), HOST, 1000).unwrap();
        assert_eq!(h.shifted(4).csum_start, 38);
        assert_eq!(h.shifted(-4).csum_start, 30);
        assert_eq!(h.shifted(4).hdr_len, 58);
    }
}
