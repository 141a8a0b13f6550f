//! The virtio-net header that precedes every frame on the queues (virtio 1.x, 5.1.6):
//! 12 bytes with VERSION_1 or MRG_RXBUF negotiated, 10 bytes (no `num_buffers`) without.
//! Fields are little-endian (a legacy device uses the guest's byte order; the harness runs on
//! little-endian hosts only).

use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Header length with VERSION_1 or MRG_RXBUF.
pub const HDR_LEN: usize = 12;
/// Header length of a legacy device without MRG_RXBUF.
pub const LEGACY_HDR_LEN: usize = 10;

/// A virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to replicate in each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
    /// Buffers a received frame spans (MRG_RXBUF; 1 otherwise with a 12-byte header).
    pub num_buffers: u16,
}

impl NetHdr {
    /// The header of a frame with no offload requested.
    pub fn plain() -> Self {
        NetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_NONE as u8,
            ..NetHdr::default()
        }
    }

    /// A frame whose L4 checksum the device completes: the checksum field at
    /// `csum_start + csum_offset` holds the pseudo-header sum.
    pub fn needs_csum(csum_start: u16, csum_offset: u16) -> Self {
        NetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            csum_start,
            csum_offset,
            ..NetHdr::default()
        }
    }

    /// A TCP segmentation request (HOST_TSO4/6): `hdr_len` bytes of headers, `gso_size`
    /// payload bytes per segment, checksum partial at `csum_start`/`csum_offset`.
    pub fn tso(ipv6: bool, hdr_len: u16, gso_size: u16, csum_start: u16, csum_offset: u16) -> Self {
        let gso_type = if ipv6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        NetHdr {
            gso_type: gso_type as u8,
            hdr_len,
            gso_size,
            ..NetHdr::needs_csum(csum_start, csum_offset)
        }
    }

    /// Whether the device asks the receiver to complete the checksum.
    pub fn is_needs_csum(&self) -> bool {
        u32::from(self.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// Whether the device vouches for the checksum.
    pub fn is_data_valid(&self) -> bool {
        u32::from(self.flags) & VIRTIO_NET_HDR_F_DATA_VALID != 0
    }

    /// Writes the first `out.len()` (10 or 12) bytes of the header.
    pub fn encode(&self, out: &mut [u8]) {
        let mut bytes = [0u8; HDR_LEN];
        bytes[0] = self.flags;
        bytes[1] = self.gso_type;
        bytes[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        bytes[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        bytes[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        bytes[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        bytes[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        let len = out.len().min(HDR_LEN);
        out[..len].copy_from_slice(&bytes[..len]);
    }

    /// Reads a header from `bytes` (10 or more bytes; `num_buffers` is 0 with fewer than 12).
    pub fn decode(bytes: &[u8]) -> Self {
        let mut full = [0u8; HDR_LEN];
        let len = bytes.len().min(HDR_LEN);
        full[..len].copy_from_slice(&bytes[..len]);
        let u16_at = |i: usize| u16::from_le_bytes([full[i], full[i + 1]]);
        NetHdr {
            flags: full[0],
            gso_type: full[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: if len == HDR_LEN { u16_at(10) } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let hdr = NetHdr {
            num_buffers: 3,
            ..NetHdr::tso(true, 74, 1448, 54, 16)
        };
        let mut bytes = [0u8; HDR_LEN];
        hdr.encode(&mut bytes);
        assert_eq!(bytes, [1, 4, 74, 0, 0xa8, 5, 54, 0, 16, 0, 3, 0]);
        assert_eq!(NetHdr::decode(&bytes), hdr);
        assert!(hdr.is_needs_csum() && !hdr.is_data_valid());
    }

    #[test]
    fn legacy_header_has_no_num_buffers() {
        let hdr = NetHdr {
            num_buffers: 7,
            ..NetHdr::needs_csum(34, 6)
        };
        let mut bytes = [0xffu8; LEGACY_HDR_LEN];
        hdr.encode(&mut bytes);
        let back = NetHdr::decode(&bytes);
        assert_eq!(
            back,
            NetHdr {
                num_buffers: 0,
                ..hdr
            }
        );
    }
}
