//! Software checksum and segmentation offload, for frames that a sender handed over with
//! virtio-net offloads (partial checksum, TSO/USO) on their way to a port that did not
//! negotiate them.
//!
//! [`complete`] turns one such frame into one or more finished frames, each passed to a callback
//! as a [`Segment`]: a rewritten head (headers, in a buffer on the stack) followed by a payload
//! borrowed from the original frame, so that the caller copies each byte once into the
//! destination and nothing is allocated. The original frame is never written.
//!
//! The headers are parsed from the frame itself; the virtio header's `hdr_len` is only a hint
//! (the virtio spec lets drivers set it loosely) and is therefore not a parameter.

use smoltcp::wire::{
    checksum, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, TcpSeqNumber,
    UdpPacket, IPV6_HEADER_LEN, UDP_HEADER_LEN,
};

use crate::frame::FrameMeta;

/// Longest head (link, network and transport headers) a segment can have.
pub const MAX_HEAD_LEN: usize = 256;

/// Errors of the offload helpers; all of them come from what the sender put in the frame or
/// its virtio header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `csum_start + csum_offset + 2` lies beyond the frame, or `csum_start` beyond the data.
    #[error("checksum at {start}+{offset} outside a {len}-byte frame")]
    ChecksumOutOfBounds {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// The frame length.
        len: usize,
    },
    /// The frame's headers do not match the GSO type (or are malformed, or it is an IP fragment).
    #[error("frame headers do not match GSO type {0:?}")]
    HeadersMismatch(GsoType),
    /// `gso_size` is zero.
    #[error("GSO size is zero")]
    ZeroGsoSize,
    /// The headers are longer than [`MAX_HEAD_LEN`].
    #[error("{0}-byte headers exceed the segment head buffer")]
    HeadersTooLong(usize),
}

/// The segmentation a sender asked for (virtio-net `gso_type`, without the ECN bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GsoType {
    /// No segmentation (`VIRTIO_NET_HDR_GSO_NONE`).
    #[default]
    None,
    /// TCP over IPv4 (`VIRTIO_NET_HDR_GSO_TCPV4`).
    TcpV4,
    /// TCP over IPv6 (`VIRTIO_NET_HDR_GSO_TCPV6`).
    TcpV6,
    /// UDP segmentation into datagrams, over IPv4 or IPv6 (`VIRTIO_NET_HDR_GSO_UDP_L4`).
    /// Legacy UFO (`VIRTIO_NET_HDR_GSO_UDP`, IP fragmentation) is not supported: a device
    /// must not offer `VIRTIO_NET_F_HOST_UFO`.
    Udp,
}

/// The offload parameters of one frame, as the virtio-net header gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OffloadParams {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial.
    pub needs_csum: bool,
    /// Where the checksummed data starts (from the start of the frame).
    pub csum_start: u16,
    /// Where the checksum field is, from `csum_start`.
    pub csum_offset: u16,
    /// The segmentation asked for.
    pub gso_type: GsoType,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
}

/// A finished frame: `head()` followed by `payload()`.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    head: &'a [u8],
    payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// The (rewritten) first bytes.
    pub fn head(&self) -> &'a [u8] {
        self.head
    }

    /// The rest, borrowed from the original frame.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Total length.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len()
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the segment into `out`; returns the length, or `None` if `out` is too short.
    pub fn copy_to(&self, out: &mut [u8]) -> Option<usize> {
        let out = out.get_mut(..self.len())?;
        let (head, payload) = out.split_at_mut(self.head.len());
        head.copy_from_slice(self.head);
        payload.copy_from_slice(self.payload);
        Some(self.len())
    }
}

/// Resolves a frame's offloads: calls `f` with each finished frame (one for a plain or
/// checksum-only frame, one per segment for GSO) and returns how many there were. Segments
/// carry full checksums; a frame without offloads is passed through as it is.
pub fn complete(
    frame: &[u8],
    params: &OffloadParams,
    mut f: impl FnMut(Segment<'_>),
) -> Result<usize, Error> {
    match params.gso_type {
        GsoType::None if params.needs_csum => {
            let mut head = [0; MAX_HEAD_LEN];
            f(fill_checksum(frame, params, &mut head)?);
            Ok(1)
        }
        GsoType::None => {
            f(Segment {
                head: &[],
                payload: frame,
            });
            Ok(1)
        }
        gso => segment(frame, gso, params.gso_size, f),
    }
}

/// The RFC 1071 sum of `data` (not complemented), for data of any length.
fn sum(data: &[u8]) -> u16 {
    // smoltcp's `checksum::data` sums into a u32; chunks of 32 KiB cannot overflow it.
    let mut total = 0;
    for chunk in data.chunks(32 * 1024) {
        total = checksum::combine(&[total, checksum::data(chunk)]);
    }
    total
}

/// Completes a partial checksum: the sum from `csum_start` to the end, stored complemented at
/// `csum_start + csum_offset` (0 is sent as 0xffff, as Linux does).
fn fill_checksum<'a>(
    frame: &'a [u8],
    params: &OffloadParams,
    head: &'a mut [u8; MAX_HEAD_LEN],
) -> Result<Segment<'a>, Error> {
    let start = usize::from(params.csum_start);
    let field = start + usize::from(params.csum_offset);
    let out_of_bounds = Error::ChecksumOutOfBounds {
        start: params.csum_start,
        offset: params.csum_offset,
        len: frame.len(),
    };
    if field + 2 > frame.len() {
        return Err(out_of_bounds);
    }
    if field + 2 > MAX_HEAD_LEN {
        return Err(Error::HeadersTooLong(field + 2));
    }
    let value = match !sum(&frame[start..]) {
        0 => 0xffff,
        v => v,
    };
    let head = &mut head[..field + 2];
    head.copy_from_slice(&frame[..field + 2]);
    head[field..].copy_from_slice(&value.to_be_bytes());
    Ok(Segment {
        head,
        payload: &frame[field + 2..],
    })
}

/// Where the headers of a GSO frame are.
struct Layout {
    l3: usize,
    l4: usize,
    head_len: usize,
    /// End of the IP packet (the frame may not be longer, but padding is ignored).
    end: usize,
    ipv4: bool,
    tcp: bool,
}

fn layout(frame: &[u8], gso: GsoType) -> Option<Layout> {
    let meta = FrameMeta::parse(frame).ok()?;
    let ip = meta.ip?;
    let l3 = usize::from(meta.l2.l3_offset);
    let l4 = usize::from(ip.l4_offset?);
    if ip.fragment {
        return None;
    }
    let ipv4 = match meta.l2.ethertype {
        EthernetProtocol::Ipv4 => true,
        EthernetProtocol::Ipv6 => false,
        _ => return None,
    };
    let tcp = match (gso, ipv4, ip.proto) {
        (GsoType::TcpV4, true, IpProtocol::Tcp) | (GsoType::TcpV6, false, IpProtocol::Tcp) => true,
        (GsoType::Udp, _, IpProtocol::Udp) => false,
        _ => return None,
    };
    let end = if ipv4 {
        l3 + usize::from(Ipv4Packet::new_checked(&frame[l3..]).ok()?.total_len())
    } else {
        l3 + IPV6_HEADER_LEN
            + usize::from(Ipv6Packet::new_checked(&frame[l3..]).ok()?.payload_len())
    };
    let l4_header = frame.get(l4..end)?;
    let head_len = if tcp {
        l4 + usize::from(TcpPacket::new_checked(l4_header).ok()?.header_len())
    } else {
        UdpPacket::new_checked(l4_header).ok()?;
        l4 + UDP_HEADER_LEN
    };
    Some(Layout {
        l3,
        l4,
        head_len,
        end,
        ipv4,
        tcp,
    })
}

/// Splits a GSO frame into segments of at most `gso_size` payload bytes, each with its own
/// IP length, IPv4 id and checksum, TCP sequence number and flags (FIN and PSH only on the
/// last, CWR only on the first) or UDP length, and a full L4 checksum.
fn segment(
    frame: &[u8],
    gso: GsoType,
    gso_size: u16,
    mut f: impl FnMut(Segment<'_>),
) -> Result<usize, Error> {
    let at = layout(frame, gso).ok_or(Error::HeadersMismatch(gso))?;
    if at.head_len > MAX_HEAD_LEN {
        return Err(Error::HeadersTooLong(at.head_len));
    }
    if gso_size == 0 {
        return Err(Error::ZeroGsoSize);
    }
    let original = &frame[..at.head_len];
    let payload = &frame[at.head_len..at.end];
    let mss = usize::from(gso_size);
    let count = payload.len().div_ceil(mss).max(1);
    let mut head = [0u8; MAX_HEAD_LEN];
    let head = &mut head[..at.head_len];
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        head.copy_from_slice(original);
        let l4_len = at.head_len - at.l4 + chunk.len();
        let pseudo = if at.ipv4 {
            let mut ip = Ipv4Packet::new_unchecked(&mut head[at.l3..at.l4]);
            // Both fit in 16 bits: the segment is no longer than the original packet.
            ip.set_total_len((at.l4 - at.l3 + l4_len) as u16);
            ip.set_ident(ip.ident().wrapping_add(i as u16));
            ip.fill_checksum();
            let proto = ip.next_header();
            checksum::pseudo_header_v4(&ip.src_addr(), &ip.dst_addr(), proto, l4_len as u32)
        } else {
            let mut ip = Ipv6Packet::new_unchecked(&mut head[at.l3..at.l4]);
            ip.set_payload_len((at.l4 - at.l3 - IPV6_HEADER_LEN + l4_len) as u16);
            let proto = if at.tcp {
                IpProtocol::Tcp
            } else {
                IpProtocol::Udp
            };
            checksum::pseudo_header_v6(&ip.src_addr(), &ip.dst_addr(), proto, l4_len as u32)
        };
        let l4 = &mut head[at.l4..];
        if at.tcp {
            let mut tcp = TcpPacket::new_unchecked(&mut *l4);
            let seq = tcp.seq_number().0.wrapping_add((i * mss) as i32);
            tcp.set_seq_number(TcpSeqNumber(seq));
            if i + 1 < count {
                tcp.set_fin(false);
                tcp.set_psh(false);
            }
            if i > 0 {
                tcp.set_cwr(false);
            }
            tcp.set_checksum(0);
            let sum = checksum::combine(&[pseudo, sum(tcp.into_inner()), sum(chunk)]);
            TcpPacket::new_unchecked(&mut *l4).set_checksum(!sum);
        } else {
            let mut udp = UdpPacket::new_unchecked(&mut *l4);
            udp.set_len(l4_len as u16);
            udp.set_checksum(0);
            let sum = checksum::combine(&[pseudo, sum(udp.into_inner()), sum(chunk)]);
            let value = if !sum == 0 { 0xffff } else { !sum };
            UdpPacket::new_unchecked(&mut *l4).set_checksum(value);
        }
        f(Segment {
            head,
            payload: chunk,
        });
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpAddress, Ipv4Address};

    /// IPv4/UDP 10.0.0.1:1234 -> 10.0.0.2:53 with payload 1..=5 and a partial checksum
    /// (the pseudo-header sum, as a sender with checksum offload leaves it).
    fn udp_partial() -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&[
            0x45, 0, 0, 33, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f.extend_from_slice(&[0x04, 0xd2, 0x00, 0x35, 0, 13, 0, 0, 1, 2, 3, 4, 5]);
        let src = Ipv4Address::new(10, 0, 0, 1);
        let dst = Ipv4Address::new(10, 0, 0, 2);
        let pseudo = checksum::pseudo_header_v4(&src, &dst, IpProtocol::Udp, 13);
        f[40..42].copy_from_slice(&pseudo.to_be_bytes());
        f
    }

    fn collect(frame: &[u8], params: &OffloadParams) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        complete(frame, params, |s| {
            let mut buf = vec![0; s.len()];
            s.copy_to(&mut buf).unwrap();
            out.push(buf);
        })?;
        Ok(out)
    }

    #[test]
    fn fills_a_partial_udp_checksum() {
        let frame = udp_partial();
        let params = OffloadParams {
            needs_csum: true,
            csum_start: 34,
            csum_offset: 6,
            ..OffloadParams::default()
        };
        let out = collect(&frame, &params).unwrap();
        assert_eq!(out.len(), 1);
        // The expected checksum, worked out by hand from the RFC 768 sum.
        assert_eq!(out[0][40..42], [0xdd, 0xc4]);
        assert_eq!(out[0][..40], frame[..40]);
        assert_eq!(out[0][42..], frame[42..]);
        let udp = UdpPacket::new_checked(&out[0][34..]).unwrap();
        let (src, dst) = (IpAddress::v4(10, 0, 0, 1), IpAddress::v4(10, 0, 0, 2));
        assert!(udp.verify_checksum(&src, &dst));
    }

    #[test]
    fn passes_plain_frames_through() {
        let frame = udp_partial();
        assert_eq!(collect(&frame, &OffloadParams::default()).unwrap(), [frame]);
    }

    #[test]
    fn rejects_bad_parameters() {
        let frame = udp_partial();
        let mut params = OffloadParams {
            needs_csum: true,
            csum_start: 40,
            csum_offset: 6,
            ..OffloadParams::default()
        };
        let err = collect(&frame, &params).unwrap_err();
        assert!(matches!(err, Error::ChecksumOutOfBounds { .. }));
        params.csum_start = u16::MAX;
        params.csum_offset = u16::MAX;
        assert!(collect(&frame, &params).is_err());
        let gso = |gso_type, gso_size| OffloadParams {
            gso_type,
            gso_size,
            ..OffloadParams::default()
        };
        let err = collect(&frame, &gso(GsoType::TcpV4, 1000)).unwrap_err();
        assert_eq!(err, Error::HeadersMismatch(GsoType::TcpV4));
        assert_eq!(
            collect(&frame, &gso(GsoType::Udp, 0)),
            Err(Error::ZeroGsoSize)
        );
    }

    #[test]
    fn segments_udp_into_datagrams() {
        let frame = udp_partial();
        let params = OffloadParams {
            gso_type: GsoType::Udp,
            gso_size: 2,
            ..OffloadParams::default()
        };
        let out = collect(&frame, &params).unwrap();
        let payloads: Vec<_> = out.iter().map(|s| s[42..].to_vec()).collect();
        assert_eq!(payloads, [vec![1, 2], vec![3, 4], vec![5]]);
        for (i, s) in out.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&s[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.ident(), 1 + i as u16);
            assert_eq!(usize::from(ip.total_len()), s.len() - 14);
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(usize::from(udp.len()), s.len() - 34);
            assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        }
    }
}
