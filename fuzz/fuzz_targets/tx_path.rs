//! Drives vhost-net-backend's TX path (descriptor walk, virtio-net header, switch decision,
//! delivery with or without software offloads) with an arbitrary transmit queue: descriptors,
//! available ring, buffer contents and negotiated features all come from the input, as a
//! hostile guest would set them. Two receiving ports (one with well-formed buffers, one with
//! arbitrary receive descriptors) take whatever is forwarded, unicast where the input writes
//! their address into a frame; while a frame waits for C's receive buffers, the guest rewrites
//! bytes of its buffers. Checks that nothing panics, that
//! the used ring only ever names chains that were made available, and that the well-formed
//! receiver's used lengths fit its buffers.
#![no_main]

use std::fs::File;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use bridge_core::{NetworkConfig, Switch};
use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::message::VhostUserMemoryRegion;
use vhost_net_backend::datapath::tx::{run_batch, Progress, TxScratch};
use vhost_net_backend::datapath::Datapath;
use vhost_net_backend::port::Port;
use vhost_net_backend::vhost_user::memory::MemoryTable;
use vhost_net_backend::vhu_net::OFFERED_FEATURES;
use vhost_net_backend::vring::RingAddresses;
use vhost_net_backend::PortConfig;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::DescriptorTable;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x40000;
const QUEUE: u16 = 64;
/// Ring structures of the three queues: A's TX, B's RX (well-formed), C's RX (arbitrary).
const RINGS: [u64; 3] = [0x0000, 0x4000, 0x8000];
/// B's receive buffers.
const B_BUFS: u64 = 0x10000;
const B_BUF_LEN: u32 = 256;
/// A's MAC address (the source of the frames `Input::aim` addresses).
const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
/// The MAC addresses of B and C.
const RECEIVERS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 0xb], [2, 0, 0, 0, 0, 0xc]];
/// Where the input's bytes go (frames, headers, indirect tables).
const DATA: u64 = 0x20000;
const DATA_LEN: u64 = MEM_SIZE - DATA;

#[derive(Debug, Arbitrary)]
struct Desc {
    addr: u32,
    /// An address from `addr` alone (possibly outside memory, or on the rings for transmit
    /// buffers) instead of one inside the data area.
    raw_addr: bool,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Debug, Arbitrary)]
struct Input {
    features: [u64; 3],
    tx_descs: Vec<Desc>,
    tx_avail: Vec<u16>,
    /// Added to the avail index beyond the entries written (a corrupt index when large).
    avail_skew: u8,
    /// The addresses of a frame at the start of the data area (after a virtio-net header of 10
    /// or 12 bytes), written over the data: from A, unicast to B or C (to C, without receive
    /// buffers, it waits). 0-3: to B or C, after 10 or 12 bytes; any other: none.
    aim: u8,
    c_descs: Vec<Desc>,
    c_avail: Vec<u16>,
    data: Vec<u8>,
    /// Bytes of the data area the guest rewrites while a frame waits (offset, value).
    rewrites: Vec<(u16, u8)>,
}

/// Guest memory backed by one file, and the table translating ring addresses (identity).
fn memory() -> &'static (Arc<GuestMemoryMmap>, MemoryTable) {
    static MEM: OnceLock<(Arc<GuestMemoryMmap>, MemoryTable)> = OnceLock::new();
    MEM.get_or_init(|| {
        let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let file: File = tmp.into_file();
        file.set_len(MEM_SIZE).unwrap();
        let mut table = MemoryTable::default();
        let region = VhostUserMemoryRegion::new(0, MEM_SIZE, 0, 0);
        table.add(&region, file).unwrap();
        (table.guest_memory().unwrap(), table)
    })
}

/// A descriptor; `raw_floor` is the lowest address a raw one may name (receive buffers must
/// not land on the other queues' rings, which in a real daemon are in other guests' memory).
fn raw(d: &Desc, raw_floor: u64) -> RawDescriptor {
    let addr = if d.raw_addr {
        raw_floor.saturating_add(u64::from(d.addr) << 8)
    } else {
        DATA + u64::from(d.addr) % DATA_LEN
    };
    RawDescriptor::from(Descriptor::new(addr, d.len, d.flags, d.next))
}

/// Writes a queue's descriptors and available ring (at `base`: table, +0x1000 avail,
/// +0x2000 used); returns the available index.
fn write_queue(
    mem: &GuestMemoryMmap,
    base: u64,
    descs: &[Desc],
    raw_floor: u64,
    avail: &[u16],
    skew: u8,
) -> u16 {
    let table = DescriptorTable::new(mem, GuestAddress(base), QUEUE);
    for (i, d) in descs.iter().take(usize::from(QUEUE)).enumerate() {
        table.store(i as u16, raw(d, raw_floor)).unwrap();
    }
    let entries = avail.len().min(usize::from(QUEUE)) as u16;
    for (i, head) in avail.iter().take(usize::from(entries)).enumerate() {
        mem.write_obj(*head, GuestAddress(base + 0x1000 + 4 + 2 * i as u64)).unwrap();
    }
    let idx = entries.wrapping_add(u16::from(skew));
    mem.write_obj(idx, GuestAddress(base + 0x1002)).unwrap();
    idx
}

fn used_idx(mem: &GuestMemoryMmap, base: u64) -> u16 {
    mem.read_obj(GuestAddress(base + 0x2002)).unwrap()
}

fn used(mem: &GuestMemoryMmap, base: u64, i: u16) -> (u32, u32) {
    let at = base + 0x2004 + 8 * u64::from(i % QUEUE);
    (
        mem.read_obj(GuestAddress(at)).unwrap(),
        mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}

fuzz_target!(|input: Input| {
    let (mem, table) = memory();
    mem.write_slice(&vec![0u8; MEM_SIZE as usize], GuestAddress(0)).unwrap();
    let data = &input.data[..input.data.len().min(DATA_LEN as usize)];
    mem.write_slice(data, GuestAddress(DATA)).unwrap();
    if input.aim < 4 {
        let (to, after) = (usize::from(input.aim / 2), 10 + 2 * u64::from(input.aim % 2));
        mem.write_slice(&RECEIVERS[to], GuestAddress(DATA + after)).unwrap();
        mem.write_slice(&A_MAC, GuestAddress(DATA + after + 6)).unwrap();
    }

    // A's transmit queue and C's receive queue: as the input says.
    let posted = write_queue(mem, RINGS[0], &input.tx_descs, 0, &input.tx_avail, input.avail_skew);
    write_queue(mem, RINGS[2], &input.c_descs, MEM_SIZE, &input.c_avail, 0);
    // B's receive queue: one well-formed writable buffer per entry.
    let b_descs: Vec<Desc> = (0..QUEUE)
        .map(|i| Desc {
            addr: 0,
            raw_addr: false,
            len: 0,
            flags: 0,
            next: i,
        })
        .collect();
    let b_avail: Vec<u16> = (0..QUEUE).collect();
    write_queue(mem, RINGS[1], &b_descs, 0, &b_avail, 0);
    let b_table = DescriptorTable::new(mem.as_ref(), GuestAddress(RINGS[1]), QUEUE);
    for i in 0..QUEUE {
        let addr = B_BUFS + u64::from(i) * u64::from(B_BUF_LEN);
        let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        let d = Descriptor::new(addr, B_BUF_LEN, write, 0);
        b_table.store(i, RawDescriptor::from(d)).unwrap();
    }

    let switch = Arc::new(Switch::new());
    let net = switch.add_network(NetworkConfig::default());
    let dp = Datapath::new(Arc::clone(&switch));
    let ports: Vec<Arc<Port>> = (0..3)
        .map(|i| {
            let id = switch.add_port(net, bridge_core::PortConfig::default()).unwrap();
            let config = PortConfig::new(format!("/fuzz/{i}"));
            let port = Arc::new(Port::new(id, config, switch.port_counters(id).unwrap()).unwrap());
            dp.insert(Arc::clone(&port));
            port
        })
        .collect();
    for (i, port) in ports.iter().enumerate() {
        let index = if i == 0 { 1 } else { 0 };
        let mut v = port.device().vring(index).unwrap();
        let base = RINGS[i];
        v.set_size(u32::from(QUEUE)).unwrap();
        v.set_addresses(RingAddresses {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
        });
        v.set_features(input.features[i] & OFFERED_FEATURES);
        v.start(None, false);
        v.set_memory(Some(Arc::clone(mem)), table);
    }

    // B and C have sent a frame each: A's frames to their addresses are unicast.
    for (port, mac) in ports[1..].iter().zip(RECEIVERS) {
        let mut hello = [0xff; 14];
        hello[6..12].copy_from_slice(&mac);
        switch.process(dp.now(), port.id(), &hello);
    }

    let mut scratch = TxScratch::default();
    let mut retry = None;
    for _ in 0..4 {
        match run_batch(&dp, &ports[0], 1, &mut scratch, retry.take(), false) {
            Progress::Idle => break,
            Progress::More => {}
            Progress::Stalled(stall) => {
                // A hostile guest rewrites the chain it made available while the frame waits.
                for &(at, byte) in &input.rewrites {
                    let at = DATA + u64::from(at) % DATA_LEN;
                    mem.write_obj(byte, GuestAddress(at)).unwrap();
                }
                retry = Some(stall);
            }
        }
    }

    // The used ring names only chains that were made available, with nothing written; an
    // available index more than a queue ahead makes nothing available.
    let returned = used_idx(mem, RINGS[0]);
    let available = if posted > QUEUE { 0 } else { posted };
    assert!(returned <= available, "{returned} used of {available} available");
    let heads: Vec<u16> = (0..available)
        .map(|i| mem.read_obj(GuestAddress(RINGS[0] + 0x1004 + 2 * u64::from(i))).unwrap())
        .collect();
    for i in 0..returned {
        let (head, len) = used(mem, RINGS[0], i);
        assert!(head < u32::from(QUEUE) && len == 0);
        assert!(heads.contains(&(head as u16)));
    }
    // B's used entries fit its buffers.
    for i in 0..used_idx(mem, RINGS[1]) {
        let (head, len) = used(mem, RINGS[1], i);
        assert!(head < u32::from(QUEUE) && len <= B_BUF_LEN);
    }
});
