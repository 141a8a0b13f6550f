//! vhost-net-backend's device, started in-process with `start(config)`, driven by the frontend
//! harness: negotiation, forwarding, flooding, buffer layouts, headers, offloads, multiqueue,
//! the three frontends' message sequences, reconnects, and hostile descriptors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use bridge_core::PortId;
use tests::frontend::connection::Role;
use tests::frontend::features;
use tests::frontend::frames::{check_tcp, is_gso, number, numbered, TcpFlow};
use tests::frontend::hostile::{is_marker, HostileChain};
use tests::frontend::memory::MemoryLayout;
use tests::frontend::net::{NetOptions, TxLayout, VirtioNet};
use tests::frontend::net_hdr::{NetHdr, LEGACY_HDR_LEN};
use tests::frontend::replay::FrontendKind;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_net_backend::{start, Config, Daemon, MacAddr, PortConfig, SocketRole};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(200);
const BROADCAST: [u8; 6] = [0xff; 6];

/// A daemon with ports on its default network, in a scratch directory.
struct Lab {
    daemon: Daemon,
    ids: Vec<PortId>,
    ports: Vec<PortConfig>,
    _dir: tempfile::TempDir,
}

fn mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x00, 0x00, i as u8 + 1]
}

/// The embedded default with `ports`, its state in `dir`.
fn config(dir: &tempfile::TempDir, ports: &[PortConfig]) -> Config {
    let mut config = Config::with_ports(ports.to_vec());
    config.state_dir = Some(dir.path().to_path_buf());
    config
}

/// Starts a daemon with one port per entry of `ports` (queue pairs, MTU, daemon's socket role).
fn lab(ports: &[(u16, u16, SocketRole)]) -> Lab {
    lab_tuned(ports, |_| {})
}

/// [`lab`] with its configuration changed by `tune`.
fn lab_tuned(ports: &[(u16, u16, SocketRole)], tune: impl FnOnce(&mut Config)) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<PortConfig> = ports
        .iter()
        .enumerate()
        .map(|(i, &(queue_pairs, mtu, role))| PortConfig {
            role,
            mac: MacAddr(mac(i)),
            queue_pairs,
            mtu,
            ..PortConfig::new(dir.path().join(format!("port{i}.sock")))
        })
        .collect();
    let mut config = config(&dir, &ports);
    tune(&mut config);
    let daemon = start(config).unwrap();
    let ids = daemon.ports();
    assert_eq!(ids.len(), ports.len());
    Lab {
        daemon,
        ids,
        ports,
        _dir: dir,
    }
}

/// A lab of `n` one-pair ports with MTU 1500 on which the daemon listens.
fn simple_lab(n: usize) -> Lab {
    lab(&vec![(1, 1500, SocketRole::Listen); n])
}

impl Lab {
    fn socket(&self, i: usize) -> PathBuf {
        self.ports[i].socket.clone()
    }

    /// Attaches a harness NIC to port `i`.
    fn attach(&self, i: usize, options: NetOptions) -> VirtioNet {
        let role = match self.ports[i].role {
            SocketRole::Listen => Role::Connect(self.socket(i)),
            SocketRole::Connect => Role::Listen(self.socket(i)),
        };
        VirtioNet::new(role, options).unwrap_or_else(|e| panic!("port {i}: {e:?}"))
    }

    /// The device's drop count on port `i`.
    fn device_drops(&self, i: usize) -> u64 {
        self.daemon.port_report(self.ids[i]).unwrap().device.total()
    }
}

fn options(kind: FrontendKind) -> NetOptions {
    NetOptions {
        frontend: kind,
        timeout: WAIT,
        ..NetOptions::default()
    }
}

/// Each NIC broadcasts once so the switch learns where its MAC is; the others drain it.
fn introduce(nics: &mut [&mut VirtioNet]) {
    for i in 0..nics.len() {
        nics[i]
            .send(0, &numbered(BROADCAST, mac(i), 0, 60))
            .unwrap();
        for (j, nic) in nics.iter_mut().enumerate() {
            if j != i {
                let (_, frame) = nic
                    .recv(WAIT)
                    .unwrap()
                    .unwrap_or_else(|| panic!("broadcast from NIC {i} lost at NIC {j}"));
                assert_eq!(&frame[6..12], &mac(i));
            }
        }
    }
}

/// Sends `count` numbered frames of assorted sizes up to `max` from `a` (port `from`) to `b`
/// (port `to`), each received intact before the next is sent.
fn unicast(a: &mut VirtioNet, from: usize, b: &mut VirtioNet, to: usize, count: u32, max: usize) {
    for n in 1..=count {
        let len = 60 + (n as usize * 211) % (max - 59);
        let sent = numbered(mac(to), mac(from), n, len);
        a.send(0, &sent).unwrap();
        let (hdr, got) = b
            .recv(WAIT)
            .unwrap()
            .unwrap_or_else(|| panic!("frame {n} lost"));
        assert!(got == sent, "frame {n}: {} bytes for {len}", got.len());
        assert!(!is_gso(&hdr));
    }
}

fn assert_silent(nic: &mut VirtioNet, what: &str) {
    let frames = nic.drain(QUIET).unwrap();
    assert!(
        frames.is_empty(),
        "{what}: {} unexpected frames",
        frames.len()
    );
}

#[test]
fn negotiation_acks_features_and_reads_config() {
    let lab = lab(&[(2, 9000, SocketRole::Listen)]);
    let mut opts = options(FrontendKind::CloudHypervisor);
    opts.queue_pairs = 2;
    let nic = lab.attach(0, opts);
    let n = nic.negotiated();
    for f in [
        features::VERSION_1,
        features::MRG_RXBUF,
        features::EVENT_IDX,
        features::INDIRECT_DESC,
        features::CSUM,
        features::GUEST_CSUM,
        features::HOST_TSO4 | features::HOST_TSO6,
        features::GUEST_TSO4 | features::GUEST_TSO6,
        features::MQ,
        features::MTU | features::MAC | features::STATUS,
        features::PROTOCOL_FEATURES,
    ] {
        assert!(n.offered & f == f, "{f:#x} offered");
    }
    assert_eq!(
        n.acked,
        n.offered & (features::DRIVER | features::PROTOCOL_FEATURES)
    );
    use VhostUserProtocolFeatures as P;
    let wanted = P::MQ | P::REPLY_ACK | P::CONFIG | P::CONFIGURE_MEM_SLOTS;
    assert_eq!(n.protocol, wanted);
    assert_eq!(n.queue_num, Some(4));
    let config = n.config.expect("config space read");
    assert_eq!(config.mac, mac(0));
    assert_eq!((config.mtu, config.max_virtqueue_pairs), (9000, 2));
    assert!(config.link_up());
}

#[test]
fn two_ports_forward_both_ways() {
    let lab = simple_lab(2);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut b = lab.attach(1, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b]);
    unicast(&mut a, 0, &mut b, 1, 300, 1514);
    unicast(&mut b, 1, &mut a, 0, 300, 1514);
    assert_silent(&mut a, "port 0");
    assert_silent(&mut b, "port 1");
}

#[test]
fn batches_forward_without_loss() {
    let lab = simple_lab(2);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut b = lab.attach(1, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b]);
    let frames: Vec<Vec<u8>> = (0..64).map(|n| numbered(mac(1), mac(0), n, 64)).collect();
    let (mut sent, mut received) = (0usize, 0usize);
    while received < 20_000 {
        if sent - received < 128 {
            let batch = frames
                .iter()
                .cycle()
                .skip(sent % 64)
                .take(64)
                .map(Vec::as_slice);
            sent += a.send_batch(0, &NetHdr::plain(), batch).unwrap();
        }
        let got = b
            .recv_batch(0, 64, WAIT, |_, data| {
                assert_eq!(number(data), Some((received % 64) as u32), "in order");
                received += 1;
            })
            .unwrap();
        assert!(got > 0, "stalled at {received} of {sent}");
    }
    assert_eq!(lab.device_drops(1), 0);
}

#[test]
fn a_frame_waits_for_receive_buffers_instead_of_being_dropped() {
    let lab = simple_lab(2);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let few = NetOptions {
        rx_buffers: Some(4),
        ..options(FrontendKind::Qemu)
    };
    let mut b = lab.attach(1, few);
    introduce(&mut [&mut a, &mut b]);
    // Twice what B keeps posted: the second half waits in A's ring until B posts buffers again.
    let sent: Vec<Vec<u8>> = (1..=8).map(|n| numbered(mac(1), mac(0), n, 200)).collect();
    for frame in &sent {
        a.send(0, frame).unwrap();
    }
    for (n, frame) in sent.iter().enumerate() {
        let (_, got) = b
            .recv(WAIT)
            .unwrap()
            .unwrap_or_else(|| panic!("frame {n} lost"));
        assert!(got == *frame, "frame {n} in order");
    }
    assert_eq!(lab.device_drops(1), 0);
}

#[test]
fn a_receiver_that_never_posts_buffers_holds_its_senders_only_briefly() {
    let lab = simple_lab(3);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut c = lab.attach(1, options(FrontendKind::Qemu));
    let none = NetOptions {
        rx_buffers: Some(0),
        ..options(FrontendKind::Qemu)
    };
    let mut b = lab.attach(2, none);
    introduce(&mut [&mut a, &mut c]);
    b.send(0, &numbered(BROADCAST, mac(2), 0, 60)).unwrap();
    for nic in [&mut a, &mut c] {
        assert!(nic.recv(WAIT).unwrap().is_some(), "B's broadcast");
    }
    let dropped = lab.device_drops(2);
    // Frames to B, then to C, all in A's one transmit queue: those to B wait for a bounded time
    // and are dropped; C's come through after them.
    for n in 1..=3 {
        a.send(0, &numbered(mac(2), mac(0), n, 60)).unwrap();
    }
    for n in 4..=6 {
        a.send(0, &numbered(mac(1), mac(0), n, 60)).unwrap();
    }
    for n in 4..=6 {
        let (_, got) = c
            .recv(WAIT)
            .unwrap()
            .unwrap_or_else(|| panic!("frame {n} held up behind B's"));
        assert_eq!(number(&got), Some(n));
    }
    assert_eq!(
        lab.device_drops(2),
        dropped + 3,
        "B's frames dropped and counted"
    );
    assert_eq!(lab.device_drops(1), 0);
}

#[test]
fn one_worker_serves_many_ports_that_wait_and_come_and_go() {
    let one = |c: &mut Config| c.workers = NonZeroUsize::new(1);
    let lab = lab_tuned(&[(1, 1500, SocketRole::Listen); 4], one);
    let few = NetOptions {
        rx_buffers: Some(4),
        ..options(FrontendKind::Qemu)
    };
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut b = lab.attach(1, few);
    let mut c = lab.attach(2, options(FrontendKind::Qemu));
    let mut d = lab.attach(3, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b, &mut c, &mut d]);
    // A and C each send B four times what it keeps posted: both transmit queues wait for B's
    // buffers at once, and every frame arrives, each sender's in order.
    for n in 1..=16 {
        a.send(0, &numbered(mac(1), mac(0), n, 200)).unwrap();
        c.send(0, &numbered(mac(1), mac(2), 100 + n, 200)).unwrap();
    }
    let (mut from_a, mut from_c) = (Vec::new(), Vec::new());
    for _ in 0..32 {
        let (_, got) = b.recv(WAIT).unwrap().expect("a frame to B");
        let n = number(&got).unwrap();
        if got[6..12] == mac(0) {
            from_a.push(n);
        } else {
            from_c.push(n);
        }
    }
    assert_eq!(from_a, (1..=16).collect::<Vec<_>>());
    assert_eq!(from_c, (101..=116).collect::<Vec<_>>());
    assert_eq!(lab.device_drops(1), 0);
    // A port leaves, and another joins on its socket with its MAC, while the others talk.
    lab.daemon.remove_port(lab.ids[3]).unwrap();
    drop(d);
    unicast(&mut a, 0, &mut c, 2, 20, 1514);
    let added = PortConfig {
        mac: MacAddr(mac(3)),
        ..PortConfig::new(lab.socket(3))
    };
    lab.daemon.add_port(added).unwrap();
    let mut e = lab.attach(3, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b, &mut c, &mut e]);
    unicast(&mut e, 3, &mut a, 0, 20, 1514);
    unicast(&mut a, 0, &mut e, 3, 20, 1514);
    unicast(&mut c, 2, &mut b, 1, 20, 1514);
}

#[test]
fn a_frame_whose_kick_was_lost_is_sent_within_the_kick_check() {
    let lab = simple_lab(2);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut b = lab.attach(1, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b]);
    // The worker sleeps with A's kicks on; the driver makes a frame available and its kick is
    // lost. The worker's once-a-second look finds it.
    thread::sleep(QUIET);
    let sent = numbered(mac(1), mac(0), 1, 100);
    a.send_unkicked(0, &sent).unwrap();
    let (_, got) = b
        .recv(WAIT)
        .unwrap()
        .expect("the frame without a kick is never sent");
    assert_eq!(got, sent);
    // Kicks work as before afterwards.
    unicast(&mut a, 0, &mut b, 1, 3, 200);
}

#[test]
fn a_polling_worker_takes_frames_without_kicks_then_sleeps() {
    let poll = Duration::from_secs(2);
    let tune = |c: &mut Config| c.poll_us = poll.as_micros() as u32;
    let lab = lab_tuned(&[(1, 1500, SocketRole::Listen); 2], tune);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut b = lab.attach(1, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b]);
    // One frame at a time, each received before the next: the worker, polling, keeps A's
    // transmit queue's kicks off (EVENT_IDX: one kick at most, as the first entry passes the
    // avail_event it last set).
    let before = a.vring_stats(1).unwrap().kicks;
    unicast(&mut a, 0, &mut b, 1, 30, 200);
    let polled = a.vring_stats(1).unwrap().kicks - before;
    assert!(polled <= 1, "{polled} kicks for 30 frames while polled");
    // After the window the worker turns kicks back on and sleeps: the next frame kicks.
    thread::sleep(poll + Duration::from_millis(500));
    unicast(&mut a, 0, &mut b, 1, 1, 200);
    assert_eq!(a.vring_stats(1).unwrap().kicks, before + polled + 1);
}

#[test]
fn broadcast_and_unknown_unicast_flood_to_every_other_port() {
    let lab = simple_lab(3);
    let mut nics: Vec<VirtioNet> = (0..3)
        .map(|i| lab.attach(i, options(FrontendKind::Qemu)))
        .collect();
    let broadcast = numbered(BROADCAST, mac(0), 7, 100);
    let unknown = numbered([0x52, 0x54, 0, 0, 0, 0x99], mac(0), 8, 100);
    for frame in [&broadcast, &unknown] {
        nics[0].send(0, frame).unwrap();
        for nic in &mut nics[1..] {
            assert_eq!(&nic.recv(WAIT).unwrap().expect("flooded").1, frame);
        }
    }
    assert_silent(&mut nics[0], "the sender");
}

#[test]
fn mergeable_and_big_receive_buffers_take_jumbo_frames() {
    let lab = lab(&[(1, 9000, SocketRole::Listen); 3]);
    let mut sender = lab.attach(0, options(FrontendKind::CloudHypervisor));
    let mut merging = lab.attach(1, options(FrontendKind::CloudHypervisor));
    let mut opts = options(FrontendKind::CloudHypervisor);
    opts.features &= !(features::MRG_RXBUF | features::GUEST_OFFLOADS);
    let mut big = lab.attach(2, opts);
    assert_eq!(
        big.rx_buffer_size(),
        12 + 18 + 9000,
        "sized for the MTU in config space"
    );
    introduce(&mut [&mut sender, &mut merging, &mut big]);
    for (to, nic) in [(1, &mut merging), (2, &mut big)] {
        let frame = numbered(mac(to), mac(0), 1, 9014);
        sender.send(0, &frame).unwrap();
        let (hdr, got) = nic.recv(WAIT).unwrap().expect("jumbo frame");
        assert!(got == frame, "port {to}: {} bytes", got.len());
        // 12 + 9014 bytes: five 2 KiB buffers when merging, one big buffer otherwise.
        let buffers = if to == 1 { 5 } else { 1 };
        assert_eq!(hdr.num_buffers, buffers, "port {to}");
    }
}

#[test]
fn legacy_header_port_talks_to_a_modern_port() {
    let lab = simple_lab(2);
    let mut opts = options(FrontendKind::Qemu);
    opts.features &= !(features::VERSION_1 | features::MRG_RXBUF);
    let mut legacy = lab.attach(0, opts);
    let mut modern = lab.attach(1, options(FrontendKind::Qemu));
    assert_eq!(legacy.hdr_len(), LEGACY_HDR_LEN);
    introduce(&mut [&mut legacy, &mut modern]);
    unicast(&mut legacy, 0, &mut modern, 1, 100, 1514);
    unicast(&mut modern, 1, &mut legacy, 0, 100, 1514);
}

fn tcp_flow(v6: bool) -> TcpFlow {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        let net = |h| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, h).into();
        (net(1), net(2))
    } else {
        (
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(10, 0, 0, 2).into(),
        )
    };
    TcpFlow {
        src_mac: mac(0),
        dst_mac: mac(1),
        src,
        dst,
        src_port: 40000,
        dst_port: 5201,
    }
}

/// A lab where port 0 sends TCP with offloads to port 1, which negotiated `receiver_features`.
fn offload_pair(receiver_features: u64) -> (Lab, VirtioNet, VirtioNet) {
    let lab = simple_lab(2);
    let mut sender = lab.attach(0, options(FrontendKind::Qemu));
    let mut opts = options(FrontendKind::Qemu);
    opts.features = receiver_features;
    let mut receiver = lab.attach(1, opts);
    introduce(&mut [&mut sender, &mut receiver]);
    (lab, sender, receiver)
}

#[test]
fn tso_frames_pass_whole_to_a_tso_port() {
    // Into mergeable 2 KiB buffers, and into 64 KiB buffers without MRG_RXBUF.
    for receiver_features in [features::DRIVER, features::DRIVER & !features::MRG_RXBUF] {
        tso_whole(receiver_features);
    }
}

fn tso_whole(receiver_features: u64) {
    let (_lab, mut sender, mut receiver) = offload_pair(receiver_features);
    for v6 in [false, true] {
        let flow = tcp_flow(v6);
        let payload: Vec<u8> = (0..32_000u32).map(|i| (i * 7) as u8).collect();
        let (hdr, frame) = flow.offloaded(1000, &payload, false, Some(1448));
        sender.send_with_hdr(0, &hdr, &frame).unwrap();
        let (got_hdr, got) = receiver.recv(WAIT).unwrap().expect("the TSO frame");
        assert!(is_gso(&got_hdr), "v6 {v6}: {got_hdr:?}");
        assert_eq!(
            (got_hdr.gso_type, got_hdr.gso_size),
            (hdr.gso_type, hdr.gso_size)
        );
        let seg = check_tcp(&got_hdr, &got).unwrap();
        assert_eq!((seg.seq, seg.payload.len()), (1000, payload.len()));
        assert!(seg.payload == payload);
    }
}

#[test]
fn tso_frames_are_segmented_with_valid_checksums_for_a_port_without_tso() {
    let without = features::DRIVER & !(features::GUEST_OFFLOADS);
    let (lab, mut sender, mut receiver) = offload_pair(without);
    for v6 in [false, true] {
        let flow = tcp_flow(v6);
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 13) as u8).collect();
        let mss = if v6 { 1428 } else { 1448 };
        let (hdr, frame) = flow.offloaded(5, &payload, true, Some(mss));
        sender.send_with_hdr(0, &hdr, &frame).unwrap();
        let mut data = Vec::new();
        let count = payload.len().div_ceil(usize::from(mss));
        for i in 0..count {
            let (got_hdr, got) = receiver
                .recv(WAIT)
                .unwrap()
                .unwrap_or_else(|| panic!("segment {i}"));
            assert!(!is_gso(&got_hdr) && !got_hdr.is_needs_csum(), "{got_hdr:?}");
            let seg = check_tcp(&NetHdr::plain(), &got)
                .unwrap_or_else(|e| panic!("v6 {v6} segment {i}: {e}"));
            assert_eq!(seg.seq as usize, 5 + data.len(), "segment {i} in order");
            assert!(seg.payload.len() <= usize::from(mss));
            let last = i + 1 == count;
            assert_eq!(seg.fin, last, "FIN on the last segment only");
            data.extend_from_slice(&seg.payload);
        }
        assert!(data == payload);
        assert_silent(&mut receiver, "after the segments");
    }
    assert_eq!(lab.device_drops(1), 0);
}

#[test]
fn partial_checksums_are_completed_for_a_port_without_guest_csum() {
    let without = features::DRIVER & !(features::GUEST_OFFLOADS);
    let (_lab, mut sender, mut receiver) = offload_pair(without);
    for v6 in [false, true] {
        let (hdr, frame) = tcp_flow(v6).offloaded(77, b"partial checksum", false, None);
        sender.send_with_hdr(0, &hdr, &frame).unwrap();
        let (got_hdr, got) = receiver.recv(WAIT).unwrap().expect("the segment");
        assert!(!got_hdr.is_needs_csum());
        let seg = check_tcp(&NetHdr::plain(), &got).unwrap();
        assert_eq!(seg.payload, b"partial checksum");
    }
}

#[test]
fn partial_checksums_reach_a_guest_csum_port_valid_or_to_complete() {
    let (_lab, mut sender, mut receiver) = offload_pair(features::DRIVER);
    for v6 in [false, true] {
        let (hdr, frame) = tcp_flow(v6).offloaded(9, b"left to the receiver", false, None);
        sender.send_with_hdr(0, &hdr, &frame).unwrap();
        let (got_hdr, got) = receiver.recv(WAIT).unwrap().expect("the segment");
        let seg = check_tcp(&got_hdr, &got).unwrap_or_else(|e| panic!("{got_hdr:?}: {e}"));
        assert_eq!(seg.payload, b"left to the receiver");
    }
}

#[test]
fn any_descriptor_layout_and_many_regions() {
    let lab = simple_lab(2);
    let mut opts = options(FrontendKind::Qemu);
    opts.memory = MemoryLayout {
        base: 0x4000_0000,
        regions: 8,
        gap: 0x10_0000,
    };
    opts.tx_layout = TxLayout {
        header_apart: true,
        chunk: Some(100),
        indirect: false,
    };
    let mut a = lab.attach(0, opts.clone());
    opts.rx_segment = Some(256);
    let mut b = lab.attach(1, opts);
    introduce(&mut [&mut a, &mut b]);
    for layout in [
        TxLayout {
            header_apart: true,
            chunk: Some(100),
            indirect: false,
        },
        TxLayout {
            header_apart: false,
            chunk: Some(64),
            indirect: true,
        },
        TxLayout {
            header_apart: true,
            chunk: None,
            indirect: true,
        },
        TxLayout::default(),
    ] {
        a.set_tx_layout(layout).unwrap();
        b.set_tx_layout(layout).unwrap();
        unicast(&mut a, 0, &mut b, 1, 30, 1514);
        unicast(&mut b, 1, &mut a, 0, 30, 1514);
    }
    assert_eq!(lab.device_drops(0) + lab.device_drops(1), 0);
}

#[test]
fn frames_too_big_are_dropped_and_counted() {
    let lab = simple_lab(2);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut opts = options(FrontendKind::Qemu);
    opts.features &= !(features::MRG_RXBUF | features::GUEST_OFFLOADS);
    opts.tx_buffer_size = Some(12 + 2000);
    let mut b = lab.attach(1, opts);
    introduce(&mut [&mut a, &mut b]);
    // Over the sender's MTU, without segmentation asked for.
    let drops = lab.device_drops(1);
    b.send(0, &numbered(mac(0), mac(1), 1, 1600)).unwrap();
    assert_silent(&mut a, "an over-MTU frame");
    assert!(lab.device_drops(1) > drops, "over-MTU frame not counted");
    // A TSO super-segment for a receiver whose buffers hold 1518 bytes and that cannot take
    // it whole: segmented, it fits.
    let flow = TcpFlow {
        src_mac: mac(0),
        dst_mac: mac(1),
        ..tcp_flow(false)
    };
    let (hdr, frame) = flow.offloaded(1, &[7; 5000], false, Some(1448));
    a.send_with_hdr(0, &hdr, &frame).unwrap();
    for i in 0..4 {
        let (_, got) = b
            .recv(WAIT)
            .unwrap()
            .unwrap_or_else(|| panic!("segment {i}"));
        assert!(got.len() <= 1514);
    }
    // Both ports still work.
    unicast(&mut a, 0, &mut b, 1, 10, 1514);
    unicast(&mut b, 1, &mut a, 0, 10, 1514);
}

#[test]
fn frames_larger_than_the_receive_buffers_are_dropped_and_counted() {
    let lab = simple_lab(2);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut opts = options(FrontendKind::Qemu);
    opts.features &= !features::MRG_RXBUF;
    opts.rx_buffer_size = Some(12 + 600);
    let mut b = lab.attach(1, opts);
    introduce(&mut [&mut a, &mut b]);
    let drops = lab.device_drops(1);
    a.send(0, &numbered(mac(1), mac(0), 1, 1000)).unwrap();
    assert_silent(&mut b, "a frame larger than its buffers");
    assert!(lab.device_drops(1) > drops, "not counted");
    unicast(&mut a, 0, &mut b, 1, 10, 600);
}

#[test]
fn multiqueue_pairs_all_forward() {
    let lab = lab(&[(2, 1500, SocketRole::Listen); 2]);
    let mut opts = options(FrontendKind::Qemu);
    opts.queue_pairs = 2;
    let mut a = lab.attach(0, opts.clone());
    let mut b = lab.attach(1, opts);
    introduce(&mut [&mut a, &mut b]);
    for pair in [1, 0, 1] {
        for n in 0..50 {
            let frame = numbered(mac(1), mac(0), n, 200);
            a.send(pair, &frame).unwrap();
            assert_eq!(
                b.recv(WAIT).unwrap().expect("frame").1,
                frame,
                "pair {pair}"
            );
        }
    }
    // The receiver's driver goes down to one pair: its second receive ring is disabled and
    // must stay untouched, frames still arrive.
    b.set_active_pairs(1).unwrap();
    let used = b.vring(2).used_idx().unwrap();
    for n in 0..20 {
        let frame = numbered(mac(1), mac(0), n, 200);
        a.send(1, &frame).unwrap();
        assert_eq!(
            b.recv_on(0, WAIT).unwrap().expect("frame on pair 0").1,
            frame
        );
    }
    assert_eq!(b.vring(2).used_idx().unwrap(), used, "disabled ring used");
}

#[test]
fn each_frontend_attaches_and_talks_to_the_others() {
    let lab = simple_lab(3);
    let kinds = [
        FrontendKind::Qemu,
        FrontendKind::CloudHypervisor,
        FrontendKind::Dpdk,
    ];
    let mut nics: Vec<VirtioNet> = (0..3).map(|i| lab.attach(i, options(kinds[i]))).collect();
    {
        let [a, b, c] = &mut nics[..] else {
            unreachable!()
        };
        introduce(&mut [a, b, c]);
    }
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                let frame = numbered(mac(to), mac(from), 1, 300);
                nics[from].send(0, &frame).unwrap();
                let got = nics[to].recv(WAIT).unwrap().expect("frame").1;
                assert_eq!(got, frame, "{:?} to {:?}", kinds[from], kinds[to]);
            }
        }
    }
}

#[test]
fn harness_listens_and_the_daemon_connects() {
    let lab = lab(&[
        (1, 1500, SocketRole::Connect),
        (1, 1500, SocketRole::Listen),
    ]);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut b = lab.attach(1, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b]);
    unicast(&mut a, 0, &mut b, 1, 20, 1514);
    // QEMU server=on: the VMM goes away and comes back; the daemon connects again.
    a.reconnect().unwrap();
    unicast(&mut b, 1, &mut a, 0, 20, 1514);
}

/// Port 0 reconnects (as `kind` does) while ports 1 and 2 keep exchanging frames.
fn reconnect_while_others_talk(kind: FrontendKind) {
    let lab = simple_lab(3);
    let mut a = lab.attach(0, options(kind));
    let mut b = lab.attach(1, options(FrontendKind::Qemu));
    let mut c = lab.attach(2, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b, &mut c]);
    unicast(&mut a, 0, &mut b, 1, 20, 1514);
    a.disconnect();
    // The guest keeps transmitting while its VMM is away: the frames wait in its ring.
    let queued: Vec<Vec<u8>> = (100..105)
        .map(|n| numbered(mac(1), mac(0), n, 200))
        .collect();
    for frame in &queued {
        a.send(0, frame).unwrap();
    }
    unicast(&mut b, 1, &mut c, 2, 50, 1514);
    a.reconnect().unwrap();
    // The ring restarts at its used index whatever base the frontend sent: the queued frames
    // go out (at the latest with the next kick), in order.
    let next = numbered(mac(1), mac(0), 105, 200);
    a.send(0, &next).unwrap();
    for frame in queued.iter().chain([&next]) {
        let got = b.recv(WAIT).unwrap().expect("queued frame");
        assert_eq!(number(&got.1), number(frame), "{kind:?}");
    }
    unicast(&mut c, 2, &mut b, 1, 50, 1514);
    unicast(&mut a, 0, &mut b, 1, 50, 1514);
    unicast(&mut b, 1, &mut a, 0, 50, 1514);
    assert_eq!(lab.device_drops(1) + lab.device_drops(2), 0);
}

#[test]
fn qemu_reconnects_while_others_keep_traffic() {
    reconnect_while_others_talk(FrontendKind::Qemu);
}

#[test]
fn cloud_hypervisor_reconnects_while_others_keep_traffic() {
    reconnect_while_others_talk(FrontendKind::CloudHypervisor);
}

#[test]
fn dpdk_reconnects_while_others_keep_traffic() {
    reconnect_while_others_talk(FrontendKind::Dpdk);
}

#[test]
fn stop_restart_and_reset_keep_the_port_working() {
    let lab = simple_lab(2);
    for kind in [
        FrontendKind::Qemu,
        FrontendKind::CloudHypervisor,
        FrontendKind::Dpdk,
    ] {
        let mut a = lab.attach(0, options(kind));
        let mut b = lab.attach(1, options(FrontendKind::Qemu));
        introduce(&mut [&mut a, &mut b]);
        unicast(&mut a, 0, &mut b, 1, 10, 1514);
        if kind == FrontendKind::Qemu {
            // QEMU's vm stop/cont: the rings resume at the bases GET_VRING_BASE returned.
            a.stop().unwrap();
            a.restart().unwrap();
            unicast(&mut b, 1, &mut a, 0, 10, 1514);
        }
        a.reset().unwrap();
        unicast(&mut a, 0, &mut b, 1, 10, 1514);
        unicast(&mut b, 1, &mut a, 0, 10, 1514);
    }
}

#[test]
fn daemon_restart_resumes_traffic_without_a_guest_reset() {
    let ports = [(1, 1500, SocketRole::Listen); 2];
    let lab = lab(&ports);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut b = lab.attach(1, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b]);
    unicast(&mut a, 0, &mut b, 1, 20, 1514);
    let configs = lab.ports.clone();
    let Lab {
        daemon, _dir: dir, ..
    } = lab;
    daemon.shutdown();
    let daemon = start(config(&dir, &configs)).unwrap();
    let lab = Lab {
        ids: daemon.ports(),
        daemon,
        ports: configs,
        _dir: dir,
    };
    a.reconnect().unwrap();
    b.reconnect().unwrap();
    introduce(&mut [&mut a, &mut b]);
    unicast(&mut a, 0, &mut b, 1, 20, 1514);
    unicast(&mut b, 1, &mut a, 0, 20, 1514);
    drop(lab);
}

#[test]
fn hostile_transmit_chains_are_dropped_counted_and_harmless() {
    let lab = simple_lab(2);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut b = lab.attach(1, options(FrontendKind::Qemu));
    introduce(&mut [&mut a, &mut b]);
    let mut faults = Vec::new();
    for (n, chain) in HostileChain::ALL.into_iter().enumerate() {
        let drops = lab.device_drops(0);
        a.post_hostile(1, chain)
            .unwrap_or_else(|e| panic!("{chain:?}: {e}"));
        // The port keeps working: a valid frame after the hostile chain arrives.
        let frame = numbered(mac(1), mac(0), n as u32, 100);
        a.send(0, &frame)
            .unwrap_or_else(|e| panic!("after {chain:?}: {e}"));
        match b.recv(WAIT).unwrap() {
            Some((_, got)) if is_marker(&got) => faults.push(format!("{chain:?} reached port 1")),
            Some((_, got)) if got == frame => {}
            Some(_) => faults.push(format!("after {chain:?}: another frame arrived")),
            None => faults.push(format!("after {chain:?}: the valid frame was lost")),
        }
        if lab.device_drops(0) <= drops {
            faults.push(format!("{chain:?} not counted"));
        }
        a.reclaim_tx(0).unwrap();
        let returned = a.hostile_returned(1).len();
        if chain != HostileChain::HeadOutOfRange && returned != 1 {
            faults.push(format!("{chain:?} not returned to the guest"));
        }
    }
    assert_silent(&mut b, "port 1");
    assert_eq!(lab.device_drops(1), 0, "the other port saw nothing");
    assert!(faults.is_empty(), "{faults:#?}");
}

/// Posts each of `chains` as a receive buffer of port 1 behind two valid ones while port 0
/// sends; returns what went wrong.
fn hostile_receive(chains: &[HostileChain]) -> Vec<String> {
    let lab = simple_lab(2);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut opts = options(FrontendKind::Qemu);
    opts.rx_buffers = Some(2);
    let mut b = lab.attach(1, opts);
    introduce(&mut [&mut a, &mut b]);
    let mut faults = Vec::new();
    for (n, &chain) in chains.iter().enumerate() {
        let drops = lab.device_drops(1);
        // Frames 0 and 1 fill the valid buffers, frame 2 meets the hostile one (and may be
        // dropped with it), frame 3 must arrive.
        b.post_hostile(0, chain)
            .unwrap_or_else(|e| panic!("{chain:?}: {e}"));
        for k in 0..4 {
            let frame = numbered(mac(1), mac(0), (n * 4 + k) as u32, 100);
            a.send(0, &frame).unwrap();
            let wait = if k == 2 { QUIET } else { WAIT };
            match b.recv(wait).unwrap() {
                Some((_, got)) if got == frame => {}
                Some(_) => faults.push(format!("after {chain:?}: frame {k} garbled")),
                None if k == 2 => {}
                None => faults.push(format!("after {chain:?}: frame {k} lost")),
            }
        }
        // A zero-length receive buffer holds nothing: a device may pass over it silently.
        if lab.device_drops(1) <= drops && chain != HostileChain::ZeroLength {
            faults.push(format!("{chain:?} not counted"));
        }
        let returned = b.hostile_returned(0);
        if chain != HostileChain::HeadOutOfRange && returned.len() != 1 {
            faults.push(format!("{chain:?} not returned to the guest"));
        }
        if returned.iter().any(|u| u.len != 0) {
            faults.push(format!("{chain:?} returned with {returned:?}"));
        }
    }
    if lab.device_drops(0) != 0 {
        faults.push("the sender's port counted drops".into());
    }
    faults
}

/// Receive chains whose `next` link points outside their table.
const BAD_NEXT: [HostileChain; 2] = [
    HostileChain::NextOutOfRange,
    HostileChain::IndirectNextOutOfRange,
];

#[test]
fn hostile_receive_buffers_are_dropped_counted_and_returned() {
    let chains: Vec<HostileChain> = HostileChain::ALL
        .into_iter()
        .filter(|c| !BAD_NEXT.contains(c))
        .collect();
    let faults = hostile_receive(&chains);
    assert!(faults.is_empty(), "{faults:#?}");
}

#[test]
fn hostile_receive_buffers_with_a_bad_next_link_are_returned() {
    let faults = hostile_receive(&BAD_NEXT);
    assert!(faults.is_empty(), "{faults:#?}");
}

#[test]
fn event_idx_suppresses_calls_and_signals_once_per_batch() {
    let lab = simple_lab(2);
    let mut a = lab.attach(0, options(FrontendKind::Qemu));
    let mut b = lab.attach(1, options(FrontendKind::Qemu));
    assert!(b.vring(0).event_idx());
    introduce(&mut [&mut a, &mut b]);
    let frames: Vec<Vec<u8>> = (0..32).map(|n| numbered(mac(1), mac(0), n, 100)).collect();
    let batch = || frames.iter().map(Vec::as_slice);

    // The receiver is not waiting (its used_event lies behind): the device must not call it.
    let calls = b.vring_stats(0).unwrap().notifications;
    assert_eq!(a.send_batch(0, &NetHdr::plain(), batch()).unwrap(), 32);
    let deadline = Instant::now() + WAIT;
    while b.vring(0).used_idx().unwrap() != b.vring(0).last_used().wrapping_add(32) {
        assert!(Instant::now() < deadline, "the batch was not delivered");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        b.vring_stats(0).unwrap().notifications,
        calls,
        "called while suppressed"
    );
    assert_eq!(b.recv_batch(0, 64, WAIT, |_, _| {}).unwrap(), 32);

    // The receiver waits: one call for the whole batch.
    let calls = b.vring_stats(0).unwrap().notifications;
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let mut got = 0;
            while got < 32 {
                got += b.recv_batch(0, 64, WAIT, |_, _| {}).unwrap();
            }
        });
        thread::sleep(QUIET);
        assert_eq!(a.send_batch(0, &NetHdr::plain(), batch()).unwrap(), 32);
        waiter.join().unwrap();
    });
    assert_eq!(
        b.vring_stats(0).unwrap().notifications - calls,
        1,
        "one call per batch"
    );
    // The sender never asked for transmit completions.
    assert_eq!(
        a.vring_stats(1).unwrap().notifications,
        0,
        "transmit calls suppressed"
    );
}
