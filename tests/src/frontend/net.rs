//! A virtio-net driver over vhost-user: the guest side of one NIC.
//!
//! [`VirtioNet::new`] connects (or accepts), replays a real frontend's negotiation and start
//! (see [`replay`](super::replay)), lays out guest memory with one split virtqueue pair per
//! queue pair, and posts receive buffers. Frames then go out with [`VirtioNet::send`] and come
//! back with [`VirtioNet::recv`]; the batch variants ([`VirtioNet::send_batch`],
//! [`VirtioNet::recv_batch`]) publish and notify once per batch and allocate nothing per frame.
//!
//! Buffer memory is fixed per descriptor index: the chain whose head is descriptor `i` always
//! uses slot `i` of its queue, so no bookkeeping is allocated on the datapath.

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use thiserror::Error;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::VringConfigData;
use vm_memory::{Address, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::{Connection, ConnectionError, Endpoint, Role};
use super::features;
use super::hostile::HostileError;
use super::memory::{GuestMemory, MappedBlock, MemoryError, MemoryLayout};
use super::net_hdr::{NetHdr, HDR_LEN, LEGACY_HDR_LEN};
use super::replay::{self, FrontendKind};
use super::virtqueue::{QueueError, Segment, SplitQueue, Used};

/// Most entries of one indirect table the driver writes.
pub const MAX_INDIRECT: usize = 64;
/// Largest frame a TSO/UFO sender hands over (64 KiB of IP packet plus an Ethernet and VLAN
/// header).
const MAX_GSO_FRAME: u32 = 65_535 + 18;
/// Ethernet and VLAN header bytes on top of the MTU.
const L2_OVERHEAD: u32 = 18;
/// Receive buffer size with MRG_RXBUF, header included.
const MRG_BUFFER: u32 = 2048;
/// Guest memory kept free for hostile chains and tests.
pub(super) const SPARE_MEMORY: u64 = 1 << 20;

/// How the driver lays out a frame it sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxLayout {
    /// The virtio-net header in a descriptor of its own (what a legacy driver without
    /// ANY_LAYOUT does).
    pub header_apart: bool,
    /// Split the frame into descriptors of at most this many bytes (scatter-gather).
    pub chunk: Option<u32>,
    /// Put the chain in an indirect table (needs INDIRECT_DESC).
    pub indirect: bool,
}

/// What the harness's NIC asks for.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// Whose message sequences to replay.
    pub frontend: FrontendKind,
    /// Virtio features the driver accepts; it acks those the backend offers (plus
    /// PROTOCOL_FEATURES), minus what the frontend kind hides from a backend.
    pub features: u64,
    /// Protocol features to ack among those offered; `None` for the frontend kind's set.
    pub protocol_features: Option<VhostUserProtocolFeatures>,
    /// Queue pairs.
    pub queue_pairs: u16,
    /// Entries per queue (a power of two).
    pub queue_size: u16,
    /// Guest memory layout.
    pub memory: MemoryLayout,
    /// Receive buffer size (header included); `None` for what Linux posts given the
    /// negotiated features and MTU.
    pub rx_buffer_size: Option<u32>,
    /// Split each receive buffer into descriptors of at most this many bytes.
    pub rx_segment: Option<u32>,
    /// Receive buffers to keep posted; `None` for as many as the queue holds.
    pub rx_buffers: Option<usize>,
    /// Largest frame to send plus header; `None` for 64 KiB with HOST_TSO/UFO requested, else
    /// the MTU.
    pub tx_buffer_size: Option<u32>,
    /// Layout of frames sent.
    pub tx_layout: TxLayout,
    /// MTU to size buffers for when the config space does not say.
    pub mtu: u16,
    /// Bound on every wait: replies, connect/accept, room in a full transmit queue.
    pub timeout: Duration,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            frontend: FrontendKind::Qemu,
            features: features::DRIVER,
            protocol_features: None,
            queue_pairs: 1,
            queue_size: 256,
            memory: MemoryLayout::default(),
            rx_buffer_size: None,
            rx_segment: None,
            rx_buffers: None,
            tx_buffer_size: None,
            tx_layout: TxLayout::default(),
            mtu: 1500,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The virtio-net config space fields a driver reads (virtio 1.x, 5.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// MAC address (with VIRTIO_NET_F_MAC).
    pub mac: [u8; 6],
    /// `VIRTIO_NET_S_*` (with VIRTIO_NET_F_STATUS).
    pub status: u16,
    /// Queue pairs the device has (with VIRTIO_NET_F_MQ).
    pub max_virtqueue_pairs: u16,
    /// MTU (with VIRTIO_NET_F_MTU).
    pub mtu: u16,
}

/// Bytes of config space the driver reads: up to and including `mtu`.
pub(super) const CONFIG_LEN: u32 = 12;

impl NetConfig {
    /// Parses the first [`CONFIG_LEN`] bytes of config space (little-endian fields).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..CONFIG_LEN as usize)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[..6]);
        Some(NetConfig {
            mac,
            status: u16_at(6),
            max_virtqueue_pairs: u16_at(8),
            mtu: u16_at(10),
        })
    }

    /// VIRTIO_NET_S_LINK_UP.
    pub fn link_up(&self) -> bool {
        u32::from(self.status) & virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP != 0
    }
}

/// What the handshake with the backend settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// GET_FEATURES.
    pub offered: u64,
    /// SET_FEATURES.
    pub acked: u64,
    /// GET_PROTOCOL_FEATURES (empty when not asked).
    pub protocol_offered: VhostUserProtocolFeatures,
    /// SET_PROTOCOL_FEATURES.
    pub protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM, when sent.
    pub queue_num: Option<u64>,
    /// GET_MAX_MEM_SLOTS, when sent.
    pub max_mem_slots: Option<u64>,
    /// Config space, when read with GET_CONFIG.
    pub config: Option<NetConfig>,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated {
            offered: 0,
            acked: 0,
            protocol_offered: VhostUserProtocolFeatures::empty(),
            protocol: VhostUserProtocolFeatures::empty(),
            queue_num: None,
            max_mem_slots: None,
            config: None,
        }
    }
}

impl Negotiated {
    /// Whether all of `mask` was acked.
    pub fn has(&self, mask: u64) -> bool {
        self.acked & mask == mask
    }
}

/// Counters of one vring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VringStats {
    /// Kicks sent (the device asked for them).
    pub kicks: u64,
    /// Calls received from the device.
    pub notifications: u64,
    /// Frames sent or received.
    pub frames: u64,
    /// Frame bytes (without virtio-net header) sent or received.
    pub bytes: u64,
}

/// Errors of the virtio-net driver.
#[derive(Debug, Error)]
pub enum NetError {
    /// The vhost-user connection failed.
    #[error("vhost-user connection")]
    Connection(#[from] ConnectionError),
    /// Guest memory could not be set up.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// A virtqueue operation failed (some mean a device bug, see [`QueueError`]).
    #[error("vring {vring}")]
    Queue {
        /// Vring index.
        vring: usize,
        /// Cause.
        #[source]
        source: QueueError,
    },
    /// An eventfd could not be created, read or written.
    #[error("eventfd")]
    EventFd(#[source] io::Error),
    /// Waiting for notifications failed.
    #[error("epoll")]
    Epoll(#[source] io::Error),
    /// A hostile chain could not be written.
    #[error("vring {vring}: hostile chain")]
    Hostile {
        /// Vring index.
        vring: usize,
        /// Cause.
        #[source]
        source: HostileError,
    },
    /// The options make no sense (zero queue pairs, an indirect layout without
    /// INDIRECT_DESC, ...).
    #[error("invalid options: {0}")]
    Options(String),
    /// The backend has fewer queues than the pairs asked for.
    #[error("backend has {backend} queues, {needed} needed")]
    QueueNum {
        /// GET_QUEUE_NUM.
        backend: u64,
        /// Queues needed.
        needed: usize,
    },
    /// The backend has fewer memory slots than regions.
    #[error("backend has {slots} memory slots, {regions} regions")]
    MemSlots {
        /// GET_MAX_MEM_SLOTS.
        slots: u64,
        /// Regions.
        regions: usize,
    },
    /// On reconnect the backend offered less than what was acked before (QEMU refuses this).
    #[error("backend no longer offers features {missing:#x}")]
    FeaturesLost {
        /// Acked before, not offered now.
        missing: u64,
    },
    /// No such queue pair.
    #[error("no queue pair {0}")]
    NoSuchPair(u16),
    /// A frame does not fit a transmit buffer or an indirect table.
    #[error("frame of {len} bytes does not fit (at most {max})")]
    FrameTooLarge {
        /// Frame length.
        len: usize,
        /// Largest frame.
        max: usize,
    },
    /// The transmit queue stayed full for the whole timeout.
    #[error("transmit queue of pair {0} stayed full")]
    TxTimeout(u16),
    /// The device returned a receive buffer with a length it cannot have written (a device
    /// bug).
    #[error("vring {vring}: used length {len} for a buffer of {max} bytes (header {hdr_len})")]
    UsedLength {
        /// Vring index.
        vring: usize,
        /// Used length.
        len: u32,
        /// Buffer size.
        max: u32,
        /// Header length the first buffer must hold.
        hdr_len: usize,
    },
    /// A merged frame's `num_buffers` does not match the buffers returned (a device bug).
    #[error("vring {vring}: num_buffers {num_buffers}, only {returned} buffers returned")]
    MergeBuffers {
        /// Vring index.
        vring: usize,
        /// Header's num_buffers.
        num_buffers: u16,
        /// Buffers returned before the timeout.
        returned: u16,
    },
}

/// The eventfds of one vring.
#[derive(Debug)]
pub(super) struct Notifiers {
    pub(super) kick: EventFd,
    pub(super) call: EventFd,
    pub(super) err: EventFd,
}

impl Notifiers {
    fn new() -> Result<Self, NetError> {
        let new = || EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Notifiers {
            kick: new()?,
            call: new()?,
            err: new()?,
        })
    }
}

/// A buffer of a vring: where it is in guest memory, and the same bytes resolved once.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) addr: GuestAddress,
    pub(super) block: MappedBlock,
}

/// Driver state of one vring.
#[derive(Debug)]
pub(super) struct Vring {
    pub(super) ring: SplitQueue,
    /// Buffer memory per descriptor index.
    pub(super) slots: Vec<Slot>,
    /// Indirect table memory per descriptor index (transmit vrings).
    tables: Vec<GuestAddress>,
    /// Per descriptor index: the head of a hostile chain in flight.
    pub(super) hostile: Vec<bool>,
    /// Hostile chains in flight.
    pub(super) hostile_in_flight: usize,
    /// Hostile chains the device returned, in order.
    pub(super) hostile_used: Vec<Used>,
    /// Whether the ring is started (NUM..KICK sent, not stopped since).
    pub(super) started: bool,
    /// Whether the last SET_VRING_ENABLE for it said 1.
    pub(super) enabled: bool,
    /// The base the next start sends when the frontend kind keeps one (QEMU).
    pub(super) saved_base: u16,
    pub(super) stats: VringStats,
    /// Per descriptor index: the length of the frame prepared in its transmit slot (empty when
    /// the slots hold no prepared frames).
    pub(super) prepared: Vec<u32>,
}

/// The guest side of one virtio-net NIC attached to a vhost-user backend.
#[derive(Debug)]
pub struct VirtioNet {
    pub(super) options: NetOptions,
    pub(super) endpoint: Endpoint,
    pub(super) conn: Connection,
    pub(super) negotiated: Negotiated,
    pub(super) mem: GuestMemory,
    pub(super) notifiers: Vec<Notifiers>,
    pub(super) vrings: Vec<Vring>,
    /// Whether the memory table went out on the current connection.
    pub(super) mem_table_sent: bool,
    /// Queue pairs enabled (the guest driver's choice).
    pub(super) active_pairs: u16,
    pub(super) hdr_len: usize,
    rx_buffer: u32,
    pub(super) tx_buffer: u32,
    epoll: Epoll,
    events: Vec<EpollEvent>,
    scratch: Vec<u8>,
    segments: Vec<Segment>,
}

impl VirtioNet {
    /// Connects to (or accepts) a backend per `role`, negotiates and starts the NIC the way
    /// `options.frontend` does, and posts receive buffers.
    pub fn new(role: Role, options: NetOptions) -> Result<Self, NetError> {
        let pairs = usize::from(options.queue_pairs);
        if pairs == 0 {
            return Err(NetError::Options("no queue pair".into()));
        }
        let vrings = 2 * pairs;
        let kind = options.frontend;
        let endpoint = Endpoint::new(role)?;
        let stream = endpoint.open(options.timeout)?;
        let mut conn = Connection::new(stream, vrings, options.timeout)?;
        let notifiers = (0..vrings)
            .map(|_| Notifiers::new())
            .collect::<Result<Vec<_>, _>>()?;
        let negotiated = replay::handshake(&mut conn, &options, &notifiers, None)?;
        check_queue_num(&negotiated, vrings)?;
        if options.tx_layout.indirect && !negotiated.has(features::INDIRECT_DESC) {
            return Err(NetError::Options(
                "indirect layout without INDIRECT_DESC".into(),
            ));
        }

        let (hdr_len, rx_buffer, tx_buffer) = buffer_sizes(&options, &negotiated)?;

        let n = u64::from(options.queue_size);
        let per_pair = 2 * ring_bytes(n)
            + n * (u64::from(rx_buffer) + u64::from(tx_buffer))
            + n * MAX_INDIRECT as u64 * 16;
        let total = per_pair * pairs as u64 + SPARE_MEMORY;
        let regions = options.memory.regions.max(1) as u64;
        let largest = u64::from(rx_buffer.max(tx_buffer)) + ring_bytes(n);
        let mut mem = GuestMemory::new(&options.memory, total.div_ceil(regions) + 2 * largest)?;

        let epoll = Epoll::new().map_err(NetError::Epoll)?;
        let mut rings = Vec::with_capacity(vrings);
        for (index, notifier) in notifiers.iter().enumerate() {
            let queue_err = queue_err(index);
            let mut ring = SplitQueue::new(&mut mem, options.queue_size).map_err(queue_err)?;
            ring.set_event_idx(negotiated.has(features::EVENT_IDX));
            let transmit = index % 2 == 1;
            let size = if transmit { tx_buffer } else { rx_buffer };
            let mut slots = Vec::with_capacity(usize::from(options.queue_size));
            let mut tables = Vec::new();
            for _ in 0..options.queue_size {
                let addr = mem.alloc(u64::from(size), 64)?;
                let block = mem.block(addr, size as usize)?;
                slots.push(Slot { addr, block });
                if transmit {
                    tables.push(mem.alloc(MAX_INDIRECT as u64 * 16, 16)?);
                }
            }
            let event = EpollEvent::new(EventSet::IN, index as u64);
            epoll
                .ctl(ControlOperation::Add, notifier.call.as_raw_fd(), event)
                .map_err(NetError::Epoll)?;
            rings.push(Vring {
                ring,
                slots,
                tables,
                hostile: vec![false; usize::from(options.queue_size)],
                hostile_in_flight: 0,
                hostile_used: Vec::new(),
                started: false,
                enabled: false,
                saved_base: 0,
                stats: VringStats::default(),
                prepared: Vec::new(),
            });
        }

        let mut net = VirtioNet {
            options,
            endpoint,
            conn,
            negotiated,
            mem,
            notifiers,
            vrings: rings,
            mem_table_sent: false,
            active_pairs: kind.pairs_enabled_at_start(pairs as u16),
            hdr_len,
            rx_buffer,
            tx_buffer,
            epoll,
            events: vec![EpollEvent::default(); vrings],
            scratch: Vec::new(),
            segments: Vec::with_capacity(MAX_INDIRECT),
        };
        net.start()?;
        if net.active_pairs < net.options.queue_pairs {
            net.set_active_pairs(net.options.queue_pairs)?;
        }
        Ok(net)
    }

    /// The options the NIC was made with.
    pub fn options(&self) -> &NetOptions {
        &self.options
    }

    /// What the last handshake settled.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The current connection (its request log, message-level requests).
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Guest memory, to allocate from (hostile payloads, tests).
    pub fn memory_mut(&mut self) -> &mut GuestMemory {
        &mut self.mem
    }

    /// The virtio-net header length in use (10 or 12).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Receive buffer size in use, header included.
    pub fn rx_buffer_size(&self) -> u32 {
        self.rx_buffer
    }

    /// Largest frame [`VirtioNet::send`] takes.
    pub fn max_frame(&self) -> usize {
        self.tx_buffer as usize - self.hdr_len
    }

    /// Counters of vring `index` (2 × pair for receive, 2 × pair + 1 for transmit), with the
    /// calls the device made so far counted.
    pub fn vring_stats(&mut self, index: usize) -> Result<VringStats, NetError> {
        self.collect_notifications(index)?;
        Ok(self.vrings[index].stats)
    }

    /// Kicks sent so far, on all vrings.
    pub fn kicks(&self) -> u64 {
        self.vrings.iter().map(|v| v.stats.kicks).sum()
    }

    /// The driver side of vring `index`.
    pub fn vring(&self, index: usize) -> &SplitQueue {
        &self.vrings[index].ring
    }

    /// Changes how frames are laid out from now on.
    pub fn set_tx_layout(&mut self, layout: TxLayout) -> Result<(), NetError> {
        if layout.indirect && !self.negotiated.has(features::INDIRECT_DESC) {
            return Err(NetError::Options(
                "indirect layout without INDIRECT_DESC".into(),
            ));
        }
        self.options.tx_layout = layout;
        Ok(())
    }

    /// Sends one frame with no offload on `pair`, waiting up to the timeout for room.
    pub fn send(&mut self, pair: u16, frame: &[u8]) -> Result<(), NetError> {
        self.send_with_hdr(pair, &NetHdr::plain(), frame)
    }

    /// Sends one frame with header `hdr` (offload requests) on `pair`, waiting up to the
    /// timeout for room.
    pub fn send_with_hdr(&mut self, pair: u16, hdr: &NetHdr, frame: &[u8]) -> Result<(), NetError> {
        let vring = self.tx_index(pair)?;
        let deadline = Instant::now() + self.options.timeout;
        loop {
            self.reclaim(vring)?;
            if self.tx_descriptors(frame.len())? <= self.vrings[vring].ring.num_free() {
                break;
            }
            if !self.wait(&[vring], deadline)? {
                return Err(NetError::TxTimeout(pair));
            }
        }
        self.queue_frame(vring, hdr, frame)?;
        self.publish(vring)
    }

    /// Makes one frame with no offload available on `pair` without kicking, whatever the
    /// device asked: a driver whose notification was lost.
    pub fn send_unkicked(&mut self, pair: u16, frame: &[u8]) -> Result<(), NetError> {
        let vring = self.tx_index(pair)?;
        self.reclaim(vring)?;
        self.queue_frame(vring, &NetHdr::plain(), frame)?;
        let ring = &mut self.vrings[vring].ring;
        ring.publish().map_err(queue_err(vring))?;
        Ok(())
    }

    /// Queues as many of `frames` as fit now on `pair`, each with header `hdr`, then publishes
    /// and kicks once; returns how many were queued. Transmit buffers the device finished with
    /// are reclaimed first. Allocates nothing per frame.
    pub fn send_batch<'a, I>(
        &mut self,
        pair: u16,
        hdr: &NetHdr,
        frames: I,
    ) -> Result<usize, NetError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let vring = self.tx_index(pair)?;
        self.reclaim(vring)?;
        let mut sent = 0;
        for frame in frames {
            if self.tx_descriptors(frame.len())? > self.vrings[vring].ring.num_free() {
                break;
            }
            self.queue_frame(vring, hdr, frame)?;
            sent += 1;
        }
        self.publish(vring)?;
        Ok(sent)
    }

    /// Where the frames sent on `pair` lie in guest memory: the first frame byte (after the
    /// virtio-net header) of every transmit slot. A test playing a guest that rewrites a frame
    /// after posting it writes there (through a clone of [`GuestMemory::mmap`]).
    pub fn tx_frame_addresses(&self, pair: u16) -> Result<Vec<GuestAddress>, NetError> {
        let vring = &self.vrings[self.tx_index(pair)?];
        let hdr_len = self.hdr_len as u64;
        Ok(vring
            .slots
            .iter()
            .map(|s| s.addr.unchecked_add(hdr_len))
            .collect())
    }

    /// Reclaims the transmit buffers of `pair` the device finished with; returns how many.
    pub fn reclaim_tx(&mut self, pair: u16) -> Result<usize, NetError> {
        let vring = self.tx_index(pair)?;
        self.reclaim(vring)
    }

    /// Receives one frame from any started queue pair, waiting up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<(NetHdr, Vec<u8>)>, NetError> {
        let pairs: Vec<u16> = (0..self.options.queue_pairs).collect();
        self.recv_from(&pairs, timeout)
    }

    /// Receives one frame from `pair`, waiting up to `timeout`.
    pub fn recv_on(
        &mut self,
        pair: u16,
        timeout: Duration,
    ) -> Result<Option<(NetHdr, Vec<u8>)>, NetError> {
        self.rx_index(pair)?;
        self.recv_from(&[pair], timeout)
    }

    /// Waits up to `timeout` for frames on `pair`, then hands up to `max` of them to `sink`
    /// (header, frame without header), reposts their buffers and kicks once. Returns how many
    /// frames `sink` saw. Allocates nothing per frame.
    pub fn recv_batch(
        &mut self,
        pair: u16,
        max: usize,
        timeout: Duration,
        mut sink: impl FnMut(&NetHdr, &[u8]),
    ) -> Result<usize, NetError> {
        let vring = self.rx_index(pair)?;
        let deadline = Instant::now() + timeout;
        let mut received = 0;
        while received < max {
            if self.take_frame(vring, &mut sink)? {
                received += 1;
                continue;
            }
            if received > 0 || !self.wait(&[vring], deadline)? {
                break;
            }
        }
        self.refill(vring)?;
        Ok(received)
    }

    /// Receives nothing for `timeout`: returns the frames that did arrive (to assert there
    /// are none).
    pub fn drain(&mut self, timeout: Duration) -> Result<Vec<(NetHdr, Vec<u8>)>, NetError> {
        let mut frames = Vec::new();
        let deadline = Instant::now() + timeout;
        while let Some(frame) = self.recv(deadline.saturating_duration_since(Instant::now()))? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// Closes the connection as a VMM that goes away does; guest memory and rings stay, for a
    /// later [`VirtioNet::reconnect`].
    pub fn disconnect(&mut self) {
        self.conn.shutdown();
        for vring in &mut self.vrings {
            vring.started = false;
        }
    }

    fn recv_from(
        &mut self,
        pairs: &[u16],
        timeout: Duration,
    ) -> Result<Option<(NetHdr, Vec<u8>)>, NetError> {
        let deadline = Instant::now() + timeout;
        let vrings: Vec<usize> = pairs.iter().map(|&p| 2 * usize::from(p)).collect();
        loop {
            for &vring in &vrings {
                let mut frame = None;
                if self.take_frame(vring, &mut |hdr: &NetHdr, data: &[u8]| {
                    frame = Some((*hdr, data.to_vec()))
                })? {
                    self.refill(vring)?;
                    return Ok(frame);
                }
            }
            if !self.wait(&vrings, deadline)? {
                return Ok(None);
            }
        }
    }

    /// Starts the rings (the frontend kind's activation), posts receive buffers, and waits
    /// until the backend handled the sequence ([`Connection::barrier`]).
    pub(super) fn start(&mut self) -> Result<(), NetError> {
        replay::activate(self)?;
        for pair in 0..usize::from(self.options.queue_pairs) {
            self.refill(2 * pair)?;
            self.disable_notification(2 * pair + 1)?;
        }
        Ok(self.conn.barrier()?)
    }

    /// The vring configuration SET_VRING_ADDR carries for vring `index`.
    pub(super) fn vring_config(&self, index: usize) -> Result<VringConfigData, NetError> {
        let rings = self.vrings[index].ring.rings();
        let size = self.options.queue_size;
        Ok(VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: self.mem.host_address(rings.desc)?,
            used_ring_addr: self.mem.host_address(rings.used)?,
            avail_ring_addr: self.mem.host_address(rings.avail)?,
            log_addr: None,
        })
    }

    /// Publishes what was made available on vring `index` and kicks if the device asks.
    pub(super) fn publish(&mut self, index: usize) -> Result<(), NetError> {
        let ring = &mut self.vrings[index].ring;
        if ring.publish().map_err(queue_err(index))? {
            self.kick(index)?;
        }
        Ok(())
    }

    /// Kicks vring `index`.
    pub(super) fn kick(&mut self, index: usize) -> Result<(), NetError> {
        self.notifiers[index]
            .kick
            .write(1)
            .map_err(NetError::EventFd)?;
        self.vrings[index].stats.kicks += 1;
        Ok(())
    }

    /// Posts receive buffers on vring `index` while descriptors last, then publishes.
    pub(super) fn refill(&mut self, index: usize) -> Result<(), NetError> {
        let per_buffer = match self.options.rx_segment {
            Some(seg) if seg > 0 => self.rx_buffer.div_ceil(seg) as usize,
            _ => 1,
        };
        let limit = self.options.rx_buffers.unwrap_or(usize::MAX);
        let vring = &mut self.vrings[index];
        let queue_err = queue_err(index);
        while vring.ring.num_free() >= per_buffer
            && vring.ring.in_flight() - vring.hostile_in_flight < limit
        {
            let Some(head) = vring.ring.next_head() else {
                break;
            };
            let base = vring.slots[usize::from(head)].addr;
            self.segments.clear();
            let seg = self
                .options
                .rx_segment
                .filter(|&s| s > 0)
                .unwrap_or(self.rx_buffer);
            let mut offset = 0;
            while offset < self.rx_buffer {
                let len = seg.min(self.rx_buffer - offset);
                let addr = base.unchecked_add(u64::from(offset));
                self.segments.push(Segment {
                    addr,
                    len,
                    writable: true,
                });
                offset += len;
            }
            vring.ring.add(&self.segments).map_err(queue_err)?;
        }
        self.publish(index)
    }

    /// Suppresses the device's calls for vring `index`.
    pub(super) fn disable_notification(&mut self, index: usize) -> Result<(), NetError> {
        let vring = &mut self.vrings[index];
        vring.ring.disable_notification().map_err(queue_err(index))
    }

    /// Reads the calls pending on vring `index` into its counters.
    fn collect_notifications(&mut self, index: usize) -> Result<(), NetError> {
        match self.notifiers[index].call.read() {
            Ok(count) => self.vrings[index].stats.notifications += count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(NetError::EventFd(e)),
        }
        Ok(())
    }

    /// Arms notifications on `vrings` and waits for a call on one of them until `deadline`.
    /// Returns false on timeout; true when used elements may be there.
    fn wait(&mut self, vrings: &[usize], deadline: Instant) -> Result<bool, NetError> {
        for &index in vrings {
            let pending = self.vrings[index]
                .ring
                .enable_notification()
                .map_err(queue_err(index))?;
            if pending {
                self.disable_all(vrings)?;
                return Ok(true);
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.disable_all(vrings)?;
                return Ok(false);
            }
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            let n = match self.epoll.wait(ms, &mut self.events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetError::Epoll(e)),
            };
            let mut ours = false;
            for i in 0..n {
                let index = self.events[i].data() as usize;
                self.collect_notifications(index)?;
                ours |= vrings.contains(&index);
            }
            if ours {
                self.disable_all(vrings)?;
                return Ok(true);
            }
        }
    }

    fn disable_all(&mut self, vrings: &[usize]) -> Result<(), NetError> {
        vrings
            .iter()
            .try_for_each(|&index| self.disable_notification(index))
    }

    /// Reaps used transmit chains of vring `index`.
    pub(super) fn reclaim(&mut self, index: usize) -> Result<usize, NetError> {
        let mut count = 0;
        while let Some(used) = self.pop_used(index)? {
            count += usize::from(!self.record_hostile(index, used));
        }
        Ok(count)
    }

    fn pop_used(&mut self, index: usize) -> Result<Option<Used>, NetError> {
        self.vrings[index].ring.pop_used().map_err(queue_err(index))
    }

    /// If `used` returns a hostile chain, records it and returns true.
    fn record_hostile(&mut self, index: usize, used: Used) -> bool {
        let vring = &mut self.vrings[index];
        let hostile = &mut vring.hostile[usize::from(used.head)];
        if !*hostile {
            return false;
        }
        *hostile = false;
        vring.hostile_in_flight -= 1;
        vring.hostile_used.push(used);
        true
    }

    /// Descriptors a frame of `len` bytes takes with the current layout.
    pub(super) fn tx_descriptors(&self, len: usize) -> Result<usize, NetError> {
        let max = self.max_frame();
        if len > max {
            return Err(NetError::FrameTooLarge { len, max });
        }
        let layout = self.options.tx_layout;
        let chunks = match layout.chunk {
            Some(c) if c > 0 => len.div_ceil(c as usize).max(1),
            _ => 1,
        };
        let pieces = chunks + usize::from(layout.header_apart && len > 0);
        if layout.indirect {
            if pieces > MAX_INDIRECT {
                return Err(NetError::FrameTooLarge {
                    len,
                    max: MAX_INDIRECT * layout.chunk.unwrap_or(0) as usize,
                });
            }
            Ok(1)
        } else {
            Ok(pieces)
        }
    }

    /// Writes one frame into the transmit slot of the next head and makes it available.
    fn queue_frame(&mut self, index: usize, hdr: &NetHdr, frame: &[u8]) -> Result<(), NetError> {
        let head = self.next_tx_head(index)?;
        // The slot no longer holds the frame prepared for it.
        self.vrings[index].prepared.clear();
        self.write_tx_slot(index, usize::from(head), hdr, frame)?;
        self.add_tx_chain(index, frame.len() as u32)
    }

    /// The next head of transmit vring `index` (its slot is the frame's).
    pub(super) fn next_tx_head(&self, index: usize) -> Result<u16, NetError> {
        self.vrings[index]
            .ring
            .next_head()
            .ok_or_else(|| queue_err(index)(QueueError::Full { needed: 1, free: 0 }))
    }

    /// Writes `hdr` and `frame` into transmit slot `slot` of vring `index`.
    pub(super) fn write_tx_slot(
        &self,
        index: usize,
        slot: usize,
        hdr: &NetHdr,
        frame: &[u8],
    ) -> Result<(), NetError> {
        let queue_err = queue_err(index);
        let mut hdr_bytes = [0u8; HDR_LEN];
        hdr.encode(&mut hdr_bytes[..self.hdr_len]);
        let block = &self.vrings[index].slots[slot].block;
        block
            .write_slice(&hdr_bytes[..self.hdr_len], 0)
            .map_err(|e| queue_err(e.into()))?;
        block
            .write_slice(frame, self.hdr_len)
            .map_err(|e| queue_err(e.into()))
    }

    /// Makes the frame of `len` bytes in the transmit slot of the next head available, laid out
    /// as the options say.
    pub(super) fn add_tx_chain(&mut self, index: usize, len: u32) -> Result<(), NetError> {
        let queue_err = queue_err(index);
        let head = self.next_tx_head(index)?;
        let vring = &mut self.vrings[index];
        let slot = vring.slots[usize::from(head)].addr;
        let data = slot.unchecked_add(self.hdr_len as u64);
        let layout = self.options.tx_layout;
        self.segments.clear();
        let hdr_len = self.hdr_len as u32;
        let chunk = layout.chunk.filter(|&c| c > 0).unwrap_or(len.max(1));
        let mut offset = 0;
        if layout.header_apart && len > 0 {
            self.segments.push(Segment {
                addr: slot,
                len: hdr_len,
                writable: false,
            });
        } else {
            // The header rides in front of the first piece.
            let first = chunk.min(len);
            self.segments.push(Segment {
                addr: slot,
                len: hdr_len + first,
                writable: false,
            });
            offset = first;
        }
        while offset < len {
            let piece = chunk.min(len - offset);
            let addr = data.unchecked_add(u64::from(offset));
            self.segments.push(Segment {
                addr,
                len: piece,
                writable: false,
            });
            offset += piece;
        }
        if layout.indirect {
            let table = vring.tables[usize::from(head)];
            vring
                .ring
                .add_indirect(&self.mem, table, &self.segments)
                .map_err(queue_err)?;
        } else {
            vring.ring.add(&self.segments).map_err(queue_err)?;
        }
        vring.stats.frames += 1;
        vring.stats.bytes += u64::from(len);
        Ok(())
    }

    /// Takes one received frame from vring `index` into `sink`, skipping hostile chains.
    /// Returns false when none is there. Does not repost buffers.
    fn take_frame(
        &mut self,
        index: usize,
        sink: &mut impl FnMut(&NetHdr, &[u8]),
    ) -> Result<bool, NetError> {
        self.take(
            index,
            usize::MAX,
            &mut |hdr: &NetHdr, _len: usize, data: &[u8]| sink(hdr, data),
        )
    }

    /// Takes one received frame from vring `index`, skipping hostile chains, and hands `sink`
    /// its header, its length and its first `limit` bytes (all of it for `usize::MAX`).
    /// Returns false when none is there. Does not repost buffers.
    pub(super) fn take(
        &mut self,
        index: usize,
        limit: usize,
        sink: &mut impl FnMut(&NetHdr, usize, &[u8]),
    ) -> Result<bool, NetError> {
        let first = loop {
            let Some(used) = self.pop_used(index)? else {
                return Ok(false);
            };
            if !self.record_hostile(index, used) {
                break used;
            }
        };
        let mut len = self.check_used(index, first, self.hdr_len)?;
        let hdr = self.read_hdr(index, first.head)?;
        let mut read = (len - self.hdr_len).min(limit);
        self.scratch.resize(read, 0);
        self.read_slot(index, first.head, self.hdr_len, 0..read)?;
        if self.negotiated.has(features::MRG_RXBUF) {
            // The clock is read only once a buffer is late (not per frame: a load run's cost).
            let mut deadline = None;
            let mut returned = 1;
            while returned < hdr.num_buffers {
                let Some(used) = self.pop_used(index)? else {
                    let now = Instant::now();
                    if now >= *deadline.get_or_insert(now + self.options.timeout) {
                        return Err(NetError::MergeBuffers {
                            vring: index,
                            num_buffers: hdr.num_buffers,
                            returned,
                        });
                    }
                    std::thread::yield_now();
                    continue;
                };
                if self.record_hostile(index, used) {
                    continue;
                }
                let more = self.check_used(index, used, 0)?;
                let wanted = more.min(limit - read);
                if wanted > 0 {
                    self.scratch.resize(read + wanted, 0);
                    self.read_slot(index, used.head, 0, read..read + wanted)?;
                    read += wanted;
                }
                len += more;
                returned += 1;
            }
            if hdr.num_buffers == 0 {
                return Err(NetError::MergeBuffers {
                    vring: index,
                    num_buffers: 0,
                    returned,
                });
            }
        }
        let stats = &mut self.vrings[index].stats;
        stats.frames += 1;
        stats.bytes += (len - self.hdr_len) as u64;
        sink(&hdr, len - self.hdr_len, &self.scratch[..read]);
        Ok(true)
    }

    fn check_used(&self, index: usize, used: Used, min: usize) -> Result<usize, NetError> {
        let max = self.rx_buffer;
        if used.len > max || (used.len as usize) < min {
            return Err(NetError::UsedLength {
                vring: index,
                len: used.len,
                max,
                hdr_len: min,
            });
        }
        Ok(used.len as usize)
    }

    /// The virtio-net header of the frame in receive slot `head` of vring `index`, read with
    /// one fixed-size load.
    fn read_hdr(&self, index: usize, head: u16) -> Result<NetHdr, NetError> {
        let block = &self.vrings[index].slots[usize::from(head)].block;
        let hdr = if self.hdr_len == HDR_LEN {
            block
                .read_obj::<[u8; HDR_LEN]>(0)
                .map(|b| NetHdr::decode(&b))
        } else {
            block
                .read_obj::<[u8; LEGACY_HDR_LEN]>(0)
                .map(|b| NetHdr::decode(&b))
        };
        hdr.map_err(|e| queue_err(index)(e.into()))
    }

    /// Copies the bytes from `at` in receive slot `head` of vring `index` into `to` of the
    /// scratch buffer.
    fn read_slot(
        &mut self,
        index: usize,
        head: u16,
        at: usize,
        to: Range<usize>,
    ) -> Result<(), NetError> {
        self.vrings[index].slots[usize::from(head)]
            .block
            .read_slice(&mut self.scratch[to], at)
            .map_err(|e| queue_err(index)(e.into()))
    }

    pub(super) fn tx_index(&self, pair: u16) -> Result<usize, NetError> {
        Ok(self.rx_index(pair)? + 1)
    }

    pub(super) fn rx_index(&self, pair: u16) -> Result<usize, NetError> {
        if pair >= self.options.queue_pairs {
            return Err(NetError::NoSuchPair(pair));
        }
        Ok(2 * usize::from(pair))
    }
}

/// Header length and receive/transmit buffer sizes: what Linux posts given the negotiated
/// features and MTU, unless the options say otherwise.
fn buffer_sizes(
    options: &NetOptions,
    negotiated: &Negotiated,
) -> Result<(usize, u32, u32), NetError> {
    let hdr_len = if negotiated.has(features::VERSION_1) || negotiated.has(features::MRG_RXBUF) {
        HDR_LEN
    } else {
        LEGACY_HDR_LEN
    };
    let mtu = negotiated
        .config
        .filter(|_| negotiated.has(features::MTU))
        .map_or(options.mtu, |c| c.mtu);
    let rx_buffer = options.rx_buffer_size.unwrap_or_else(|| {
        if negotiated.has(features::MRG_RXBUF) {
            MRG_BUFFER
        } else if negotiated.acked
            & (features::GUEST_TSO4 | features::GUEST_TSO6 | features::GUEST_UFO)
            != 0
        {
            hdr_len as u32 + MAX_GSO_FRAME
        } else {
            hdr_len as u32 + L2_OVERHEAD + u32::from(mtu)
        }
    });
    let tx_buffer = options.tx_buffer_size.unwrap_or_else(|| {
        if negotiated.acked & (features::HOST_TSO4 | features::HOST_TSO6 | features::HOST_UFO) != 0
        {
            hdr_len as u32 + MAX_GSO_FRAME
        } else {
            hdr_len as u32 + L2_OVERHEAD + u32::from(mtu)
        }
    });
    if rx_buffer as usize <= hdr_len || tx_buffer as usize <= hdr_len {
        return Err(NetError::Options(
            "buffers must be larger than the header".into(),
        ));
    }
    Ok((hdr_len, rx_buffer, tx_buffer))
}

/// Wraps a queue error of vring `vring`.
pub(super) fn queue_err(vring: usize) -> impl Fn(QueueError) -> NetError + Copy {
    move |source| NetError::Queue { vring, source }
}

/// Bytes of the three rings of a queue of `n` entries, each page-aligned.
fn ring_bytes(n: u64) -> u64 {
    let page = |b: u64| b.div_ceil(4096) * 4096;
    page(16 * n) + page(6 + 2 * n) + page(6 + 8 * n)
}

fn check_queue_num(negotiated: &Negotiated, needed: usize) -> Result<(), NetError> {
    match negotiated.queue_num {
        Some(backend) if backend < needed as u64 => Err(NetError::QueueNum { backend, needed }),
        _ => Ok(()),
    }
}
