//! Drives `offload::complete` with arbitrary parameters over frames that are either arbitrary
//! bytes or well-formed TCP/UDP GSO frames with arbitrary bytes changed, and checks that every
//! segment fits the bounds the helpers promise.
#![no_main]

use arbitrary::Arbitrary;
use bridge_core::offload::{self, GsoType, OffloadParams, MAX_HEAD_LEN};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    needs_csum: bool,
    csum_start: u16,
    csum_offset: u16,
    gso: u8,
    gso_size: u16,
    frame: Frame,
}

#[derive(Debug, Arbitrary)]
enum Frame {
    Raw(Vec<u8>),
    Built {
        ipv6: bool,
        udp: bool,
        tagged: bool,
        tcp_options: u8,
        payload_len: u16,
        changes: Vec<(u16, u8)>,
    },
}

/// A GSO frame with plausible headers, then `changes` applied.
fn build(ipv6: bool, udp: bool, tagged: bool, tcp_options: u8, payload_len: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    if tagged {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
    }
    let l4_len = if udp {
        8
    } else {
        20 + 4 * usize::from(tcp_options % 11)
    } + usize::from(payload_len);
    let proto = if udp { 17 } else { 6 };
    if ipv6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&[0xfd; 32]);
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    }
    if udp {
        f.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    } else {
        let doff = 5 + tcp_options % 11;
        f.extend_from_slice(&[
            0x9c,
            0x40,
            0x14,
            0x51,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            1,
            doff << 4,
            0x99,
        ]);
        f.extend_from_slice(&[1, 0, 0, 0, 0, 0]);
        f.resize(f.len() + 4 * usize::from(tcp_options % 11), 1);
    }
    f.resize(f.len() + usize::from(payload_len), 0x5a);
    f
}

fuzz_target!(|input: Input| {
    let frame = match input.frame {
        Frame::Raw(bytes) => bytes,
        Frame::Built {
            ipv6,
            udp,
            tagged,
            tcp_options,
            payload_len,
            changes,
        } => {
            let mut f = build(ipv6, udp, tagged, tcp_options, payload_len % 9000);
            for (at, byte) in changes.into_iter().take(4) {
                let len = f.len();
                f[usize::from(at) % len] = byte;
            }
            f
        }
    };
    let gso_type = match input.gso % 4 {
        0 => GsoType::None,
        1 => GsoType::TcpV4,
        2 => GsoType::TcpV6,
        _ => GsoType::Udp,
    };
    let params = OffloadParams {
        needs_csum: input.needs_csum,
        csum_start: input.csum_start,
        csum_offset: input.csum_offset,
        gso_type,
        gso_size: input.gso_size,
    };
    let mut total = 0;
    let result = offload::complete(&frame, &params, |s| {
        assert!(s.head().len() <= MAX_HEAD_LEN);
        assert!(s.len() <= frame.len());
        total += s.payload().len();
    });
    if let Ok(n) = result {
        assert!(n >= 1);
        assert!(total <= frame.len());
    }
});
