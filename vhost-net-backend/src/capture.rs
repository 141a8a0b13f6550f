//! Live capture of ports, both directions, to pcapng.
//!
//! The datapath asks [`Captures::is_active`] once per batch (one relaxed atomic load; nothing
//! else happens while no capture is on). While a capture is on, the port's frames are copied
//! into its [`Tap`]'s bounded queue and the tap's eventfd wakes the control loop, which encodes
//! them as pcapng blocks ([`PcapNgStream`]) off the datapath. A full queue drops frames and
//! counts them; the next packet block carries the count (pcapng's `epb_dropcount`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bridge_core::PortId;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, PcapError};
use vmm_sys_util::eventfd::EventFd;

/// Bytes a tap queues before it drops frames.
pub const QUEUE_BYTES: usize = 8 << 20;

/// Which way a frame crossed the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the guest (or host port) into the switch: pcapng "inbound".
    In,
    /// From the switch to the guest: pcapng "outbound".
    Out,
}

impl Direction {
    /// pcapng's `epb_flags` direction bits.
    fn flags(self) -> u32 {
        match self {
            Direction::In => 1,
            Direction::Out => 2,
        }
    }
}

/// A captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    /// When (since the Unix epoch).
    pub time: Duration,
    /// Which way.
    pub direction: Direction,
    /// The frame, from its Ethernet header (a TSO frame whole, as the guest sent it).
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Captured>,
    bytes: usize,
    dropped: u64,
}

/// One capture of one port.
#[derive(Debug)]
pub struct Tap {
    port: PortId,
    queue: Mutex<Queue>,
    wake: EventFd,
}

impl Tap {
    /// The captured port.
    pub fn port(&self) -> PortId {
        self.port
    }

    /// Signalled when frames are queued.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Takes the queued frames, and the count of frames dropped since the last call.
    pub fn take(&self) -> (Vec<Captured>, u64) {
        let _ = self.wake.read();
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.bytes = 0;
        let dropped = std::mem::take(&mut q.dropped);
        (q.frames.drain(..).collect(), dropped)
    }

    fn push(&self, direction: Direction, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.bytes + len > QUEUE_BYTES {
            q.dropped += 1;
            return;
        }
        let mut data = Vec::with_capacity(len);
        for p in parts {
            data.extend_from_slice(p);
        }
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        q.bytes += len;
        q.frames.push_back(Captured {
            time,
            direction,
            data,
        });
        drop(q);
        // Fails only when the counter is saturated, which wakes the reader anyway.
        let _ = self.wake.write(1);
    }
}

/// The captures running on a datapath.
#[derive(Debug, Default)]
pub struct Captures {
    active: AtomicUsize,
    taps: RwLock<Vec<Arc<Tap>>>,
}

impl Captures {
    /// Whether any capture runs: the datapath's one check per batch.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) != 0
    }

    /// Starts capturing `port`.
    pub fn open(&self, port: PortId) -> io::Result<Arc<Tap>> {
        let tap = Arc::new(Tap {
            port,
            queue: Mutex::default(),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        let mut taps = self.taps.write().unwrap_or_else(PoisonError::into_inner);
        taps.push(Arc::clone(&tap));
        self.active.store(taps.len(), Ordering::Relaxed);
        Ok(tap)
    }

    /// Stops a capture.
    pub fn close(&self, tap: &Arc<Tap>) {
        let mut taps = self.taps.write().unwrap_or_else(PoisonError::into_inner);
        taps.retain(|t| !Arc::ptr_eq(t, tap));
        self.active.store(taps.len(), Ordering::Relaxed);
    }

    /// Whether `port` is captured (call only while [`Captures::is_active`]).
    pub fn wants(&self, port: PortId) -> bool {
        let taps = self.taps.read().unwrap_or_else(PoisonError::into_inner);
        taps.iter().any(|t| t.port == port)
    }

    /// Records a frame of `port` made of `parts` (call only while [`Captures::is_active`]).
    pub fn record(&self, port: PortId, direction: Direction, parts: &[&[u8]]) {
        let taps = self.taps.read().unwrap_or_else(PoisonError::into_inner);
        for tap in taps.iter().filter(|t| t.port == port) {
            tap.push(direction, parts);
        }
    }
}

/// Encodes captured frames as a pcapng stream: a section header and one Ethernet interface
/// (named after the port) first, then a packet block per frame with its direction.
pub struct PcapNgStream {
    writer: PcapNgWriter<Vec<u8>>,
}

impl std::fmt::Debug for PcapNgStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapNgStream")
            .field("pending", &self.writer.get_ref().len())
            .finish()
    }
}

impl PcapNgStream {
    /// A stream for the interface called `name` (its description: `description`).
    pub fn new(name: &str, description: &str) -> Result<Self, PcapError> {
        let mut writer = PcapNgWriter::new(Vec::new())?;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.to_string())),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(description.to_string())),
                // Packet blocks carry nanoseconds.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        writer.write_pcapng_block(idb)?;
        Ok(PcapNgStream { writer })
    }

    /// Appends a packet block; `dropped` frames were lost before it.
    pub fn push(&mut self, frame: &Captured, dropped: u64) -> Result<(), PcapError> {
        let mut options = vec![EnhancedPacketOption::Flags(frame.direction.flags())];
        if dropped > 0 {
            options.push(EnhancedPacketOption::DropCount(dropped));
        }
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: frame.time,
            original_len: u32::try_from(frame.data.len()).unwrap_or(u32::MAX),
            data: Cow::Borrowed(&frame.data),
            options,
        };
        self.writer.write_pcapng_block(block)?;
        Ok(())
    }

    /// The bytes encoded since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.writer.get_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

    #[test]
    fn nothing_is_recorded_without_a_capture() {
        let c = Captures::default();
        assert!(!c.is_active());
        let tap = c.open(PortId(3)).unwrap();
        assert!(c.is_active() && c.wants(PortId(3)) && !c.wants(PortId(4)));
        c.record(PortId(4), Direction::In, &[b"other"]);
        c.record(PortId(3), Direction::Out, &[b"ab", b"cd"]);
        let (frames, dropped) = tap.take();
        assert_eq!(dropped, 0);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            (frames[0].direction, &frames[0].data[..]),
            (Direction::Out, &b"abcd"[..])
        );
        c.close(&tap);
        assert!(!c.is_active());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let c = Captures::default();
        let tap = c.open(PortId(0)).unwrap();
        let big = vec![0u8; 65536];
        for _ in 0..(QUEUE_BYTES / big.len() + 3) {
            c.record(PortId(0), Direction::In, &[&big]);
        }
        let (frames, dropped) = tap.take();
        assert_eq!((frames.len(), dropped), (QUEUE_BYTES / big.len(), 3));
        c.record(PortId(0), Direction::In, &[&big]);
        assert_eq!(tap.take().0.len(), 1, "room again once taken");
    }

    #[test]
    fn the_stream_reads_back() {
        let mut s = PcapNgStream::new("port0", "/run/vm0.sock").unwrap();
        let frame = Captured {
            time: Duration::new(1_700_000_000, 123_456_789),
            direction: Direction::In,
            data: vec![0xff; 60],
        };
        s.push(&frame, 2).unwrap();
        let bytes = s.take();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let Block::InterfaceDescription(idb) = r.next_block().unwrap().unwrap() else {
            panic!("no interface first")
        };
        assert_eq!(idb.linktype, DataLink::ETHERNET);
        let Block::EnhancedPacket(epb) = r.next_block().unwrap().unwrap() else {
            panic!("no packet")
        };
        assert_eq!(epb.timestamp, frame.time);
        assert_eq!(&epb.data[..], &frame.data[..]);
        assert!(epb.options.contains(&EnhancedPacketOption::Flags(1)));
        assert!(epb.options.contains(&EnhancedPacketOption::DropCount(2)));
        assert!(r.next_block().is_none());
    }
}
