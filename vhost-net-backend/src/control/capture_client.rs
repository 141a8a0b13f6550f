//! The client end of a capture: the pcapng stream from the daemon, written to a file block by
//! block (a file cut short by ^C still holds whole blocks), copied to standard output, or
//! printed one line per frame.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bridge_core::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::{Block, PcapNgReader, PcapNgWriter};
use pcap_file::PcapError;

use crate::config::MacAddr;

/// Errors receiving a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The output file could not be written.
    #[error("cannot write {0}")]
    File(String, #[source] io::Error),
    /// The stream is not pcapng.
    #[error("the capture stream does not parse")]
    Stream(#[from] PcapError),
    /// Standard output could not be written.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
}

/// Where a capture goes.
#[derive(Debug)]
pub enum Sink<'a> {
    /// A pcapng file.
    File(&'a Path),
    /// Standard output, as pcapng.
    Stdout,
    /// Standard output, a line per frame (`json`: a JSON object per line).
    Lines {
        /// JSON lines rather than text.
        json: bool,
    },
}

/// Receives the stream into `sink`; returns the number of frames.
pub fn receive(stream: BufReader<UnixStream>, sink: Sink<'_>) -> Result<u64, CaptureError> {
    match sink {
        Sink::Stdout => copy_raw(stream),
        Sink::File(path) => {
            let name = path.display().to_string();
            let file = File::create(path).map_err(|e| CaptureError::File(name.clone(), e))?;
            let mut reader = PcapNgReader::new(stream)?;
            let mut writer =
                PcapNgWriter::with_section_header(BufWriter::new(file), reader.section().clone())?;
            let mut frames = 0;
            while let Some(block) = reader.next_block() {
                let block = block?;
                frames += u64::from(matches!(block, Block::EnhancedPacket(_)));
                writer.write_block(&block)?;
                writer
                    .get_mut()
                    .flush()
                    .map_err(|e| CaptureError::File(name.clone(), e))?;
            }
            Ok(frames)
        }
        Sink::Lines { json } => {
            let mut reader = PcapNgReader::new(stream)?;
            let mut out = io::stdout().lock();
            let mut frames = 0;
            let mut interface = String::new();
            while let Some(block) = reader.next_block() {
                match block? {
                    Block::InterfaceDescription(idb) => {
                        interface = idb
                            .options
                            .iter()
                            .find_map(|o| match o {
                                pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                                _ => None,
                            })
                            .unwrap_or_default();
                    }
                    Block::EnhancedPacket(epb) => {
                        frames += 1;
                        let inbound = epb
                            .options
                            .iter()
                            .any(|o| matches!(o, EnhancedPacketOption::Flags(f) if f & 3 == 1));
                        let line = if json {
                            summary_json(epb.timestamp, &interface, inbound, &epb.data)
                        } else {
                            summary(epb.timestamp, &interface, inbound, &epb.data)
                        };
                        writeln!(out, "{line}").map_err(CaptureError::Output)?;
                    }
                    _ => {}
                }
            }
            Ok(frames)
        }
    }
}

fn copy_raw(mut stream: BufReader<UnixStream>) -> Result<u64, CaptureError> {
    let mut out = io::stdout().lock();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).map_err(CaptureError::Output)?;
        if n == 0 {
            return Ok(0);
        }
        out.write_all(&buf[..n]).map_err(CaptureError::Output)?;
        out.flush().map_err(CaptureError::Output)?;
    }
}

/// What a frame is, in a few words: `52:54:00:00:00:01 > ff:ff:ff:ff:ff:ff, ARP, length 42`.
pub fn describe(frame: &[u8]) -> String {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return format!("truncated, length {}", frame.len());
    };
    let macs = format!(
        "{} > {}",
        MacAddr(eth.src_addr().0),
        MacAddr(eth.dst_addr().0)
    );
    let what = match eth.ethertype() {
        EthernetProtocol::Arp => "ARP".to_string(),
        EthernetProtocol::Ipv6 => "IPv6".to_string(),
        EthernetProtocol::Ipv4 => match Ipv4Packet::new_checked(eth.payload()) {
            Ok(ip) => {
                let l4 = ip.payload();
                let ports = (l4.len() >= 4)
                    .then(|| {
                        let sp = u16::from_be_bytes([l4[0], l4[1]]);
                        let dp = u16::from_be_bytes([l4[2], l4[3]]);
                        (sp, dp)
                    })
                    .filter(|_| matches!(ip.next_header(), IpProtocol::Tcp | IpProtocol::Udp));
                match ports {
                    Some((sp, dp)) => format!(
                        "IPv4 {}.{sp} > {}.{dp} {}",
                        ip.src_addr(),
                        ip.dst_addr(),
                        ip.next_header()
                    ),
                    None => format!(
                        "IPv4 {} > {} {}",
                        ip.src_addr(),
                        ip.dst_addr(),
                        ip.next_header()
                    ),
                }
            }
            Err(_) => "IPv4 (truncated)".to_string(),
        },
        EthernetProtocol::Unknown(0x8100) => "802.1Q".to_string(),
        other => format!("ethertype {:#06x}", u16::from(other)),
    };
    format!("{macs}, {what}, length {}", frame.len())
}

/// `HH:MM:SS.micros` (UTC) of a time since the epoch.
fn clock(t: Duration) -> String {
    let s = t.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        t.subsec_micros()
    )
}

fn summary(time: Duration, interface: &str, inbound: bool, frame: &[u8]) -> String {
    let dir = if inbound { "In " } else { "Out" };
    format!("{} {interface} {dir} {}", clock(time), describe(frame))
}

fn summary_json(time: Duration, interface: &str, inbound: bool, frame: &[u8]) -> String {
    serde_json::json!({
        "time": time.as_secs_f64(),
        "interface": interface,
        "direction": if inbound { "in" } else { "out" },
        "length": frame.len(),
        "summary": describe(frame),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_described() {
        let mut arp = vec![0xff; 6];
        arp.extend([0x52, 0x54, 0, 0, 0, 1, 0x08, 0x06]);
        arp.resize(42, 0);
        assert_eq!(
            describe(&arp),
            "52:54:00:00:00:01 > ff:ff:ff:ff:ff:ff, ARP, length 42"
        );
        let mut udp = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00];
        udp.extend([
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        udp.extend([0, 68, 0, 67, 0, 8, 0, 0]);
        assert_eq!(
            describe(&udp),
            "52:54:00:00:00:01 > 52:54:00:00:00:02, IPv4 10.0.0.1.68 > 10.0.0.2.67 UDP, length 42"
        );
        assert_eq!(describe(&[1, 2, 3]), "truncated, length 3");
        assert_eq!(
            clock(Duration::new(1_700_000_000, 5_000)),
            "22:13:20.000005"
        );
    }
}
