//! The load generator against vhost-net-backend's device started in-process: prepared frames
//! arrive whole and in the flows they were prepared with, stamps come back, TSO segments pass
//! whole, and a short throughput run accounts for every frame. No timing is asserted.

use std::path::PathBuf;
use std::time::Duration;

use bridge_core::wire::{EthernetFrame, Ipv4Packet, UdpPacket};
use tests::load::guest::{Frames, Guest};
use tests::load::run::{self, LatencySpec, ThroughputSpec};
use tests::load::traffic::MAX_FRAME;
use vhost_net_backend::{start, Config, Daemon, PortConfig};

/// A daemon with `n` ports on its default network, and their sockets.
fn daemon(n: usize) -> (Daemon, Vec<PathBuf>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sockets: Vec<PathBuf> = (0..n)
        .map(|i| dir.path().join(format!("p{i}.sock")))
        .collect();
    let ports = sockets.iter().map(PortConfig::new).collect();
    (start(Config::with_ports(ports)).unwrap(), sockets, dir)
}

fn guests(sockets: &[PathBuf], frames: Frames) -> Vec<Guest> {
    let mut guests: Vec<Guest> = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| Guest::connect(s, i, 2, 64, frames).unwrap())
        .collect();
    // The switch learns every guest's MACs; the broadcasts are then drained.
    for g in &mut guests {
        g.announce().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    for g in &mut guests {
        g.receive().unwrap();
    }
    guests
}

#[test]
fn prepared_frames_arrive_whole_in_their_flows() {
    let (_d, sockets, _dir) = daemon(2);
    let mut g = guests(&sockets, Frames::Plain(100));
    let (a, b) = g.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    a.prepare(b, Frames::Plain(100), 8).unwrap();
    let sent = a.send().unwrap();
    assert_eq!(sent, 64, "one frame per transmit buffer");
    let mut flows = std::collections::HashSet::new();
    let mut got = 0;
    for _ in 0..200 {
        got += b
            .nic
            .recv_heads(0, usize::MAX, 100, |hdr, len, head| {
                assert_eq!(hdr.gso_type, 0);
                assert_eq!((len, head.len()), (100, 100));
                let eth = EthernetFrame::new_checked(head).unwrap();
                let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                let udp = UdpPacket::new_checked(ip.payload()).unwrap();
                flows.insert((
                    eth.src_addr(),
                    eth.dst_addr(),
                    ip.src_addr(),
                    udp.src_port(),
                ));
            })
            .unwrap();
        if got == sent {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(got, sent);
    assert_eq!(flows.len(), 8, "eight flows over two MACs each way");
    // The buffers come back: the same frames go out again.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(a.send().unwrap(), 64);
}

#[test]
fn stamps_make_round_trips() {
    let (_d, sockets, _dir) = daemon(2);
    let mut g = guests(&sockets, Frames::Plain(64));
    let (a, b) = g.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    a.prepare(b, Frames::Plain(64), 1).unwrap();
    b.prepare(a, Frames::Plain(64), 1).unwrap();
    let spec = LatencySpec {
        samples: 200,
        warmup: 10,
        timeout: Duration::from_secs(5),
    };
    let l = run::latency(a, b, &spec).unwrap();
    assert_eq!((l.round_trips.len(), l.lost), (200, 0));
    assert!(l.quantile(0.5) <= l.quantile(0.99));
    // A stamp lands where the receiver reads it.
    assert!(a.send_stamped(0xfeed).unwrap());
    let mut seen = Vec::new();
    for _ in 0..500 {
        b.receive_stamps(|s| seen.push(s)).unwrap();
        if !seen.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(seen, [0xfeed]);
}

#[test]
fn tso_segments_pass_whole() {
    let (_d, sockets, _dir) = daemon(2);
    let mut g = guests(&sockets, Frames::Tso);
    let (a, b) = g.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    a.prepare(b, Frames::Tso, 1).unwrap();
    let sent = a.send().unwrap();
    let mut got = 0;
    for _ in 0..500 {
        got += b
            .nic
            .recv_heads(0, usize::MAX, 0, |hdr, len, _| {
                assert_eq!(len, MAX_FRAME);
                assert_eq!(hdr.gso_size, tests::load::traffic::TSO_MSS);
            })
            .unwrap();
        if got == sent {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(got, sent);
}

#[test]
fn a_throughput_run_accounts_for_every_frame() {
    let (_d, sockets, _dir) = daemon(4);
    let mut g = guests(&sockets, Frames::Plain(64));
    for pair in g.chunks_mut(2) {
        let [tx, rx] = pair else { unreachable!() };
        tx.prepare(rx, Frames::Plain(64), 16).unwrap();
    }
    let spec = ThroughputSpec {
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(300),
        threads: 2,
        cpus: Vec::new(),
        backend: Some(std::process::id()),
    };
    let t = run::throughput(&mut g, &spec).unwrap();
    assert!(t.frames > 0 && t.sent > 0);
    assert!(t.frames <= t.received && t.received <= t.sent);
    assert_eq!(t.bytes, t.frames * 64);
    assert!(t.backend_cpu.is_some());
}
