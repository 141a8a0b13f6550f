//! DPDK as a frontend: dpdk-testpmd with a virtio-user port (`net_virtio_user`, no hugepages)
//! attached to a daemon port, with the daemon listening and with testpmd listening
//! (`server=1`, the daemon connecting), forwarding in `macswap` mode. Frames from a harness NIC
//! on another port cross to testpmd and come back, counted by the harness, by testpmd and by
//! the daemon. Needs `dpdk-testpmd` (Debian's dpdk-dev, from scripts/install-deps).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tests::frontend::connection::Role;
use tests::frontend::frames::{number, numbered};
use tests::frontend::net::{NetOptions, VirtioNet};
use tests::testpmd::{Listener, VirtioUser};
use vhost_net_backend::{start, Config, PortConfig, SocketRole};

/// Frames sent through testpmd and back.
const COUNT: u32 = 200;
const BURST: u32 = 50;
const WAIT: Duration = Duration::from_secs(10);
const HARNESS_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const TESTPMD_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xdd];

/// One testpmd at a time: each busy-polls a core.
static SERIAL: Mutex<()> = Mutex::new(());

fn frames_cross_testpmd_and_come_back(listener: Listener) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (pmd_sock, nic_sock): (PathBuf, PathBuf) =
        (dir.path().join("pmd.sock"), dir.path().join("nic.sock"));
    let mut pmd_port = PortConfig::new(&pmd_sock);
    if listener == Listener::Testpmd {
        pmd_port.role = SocketRole::Connect;
    }
    let daemon = start(Config::with_ports(vec![
        pmd_port,
        PortConfig::new(&nic_sock),
    ]))
    .unwrap();
    let pmd_id = daemon
        .ports()
        .into_iter()
        .find(|&id| {
            daemon
                .port_report(id)
                .is_some_and(|r| r.config.socket == pmd_sock)
        })
        .unwrap();
    let pmd = VirtioUser::start(&pmd_sock, listener, TESTPMD_MAC, "macswap").unwrap();
    let mut nic = VirtioNet::new(Role::Connect(nic_sock), NetOptions::default()).unwrap();

    // In bursts the harness's receive queue holds.
    for burst in (0..COUNT).step_by(BURST as usize) {
        for n in burst..burst + BURST {
            nic.send(0, &numbered(TESTPMD_MAC, HARNESS_MAC, n, 200))
                .unwrap();
        }
        for n in burst..burst + BURST {
            let (_, frame) = nic.recv(WAIT).unwrap().unwrap_or_else(|| {
                panic!("frame {n} did not come back; testpmd: {:?}", pmd.counters())
            });
            assert_eq!(number(&frame), Some(n), "in order");
            assert_eq!(frame[..6], HARNESS_MAC, "macswap: to the sender");
            assert_eq!(frame[6..12], TESTPMD_MAC, "macswap: from testpmd");
        }
    }

    let counted = pmd
        .wait_counters(WAIT, |c| {
            c.rx_packets >= u64::from(COUNT) && c.tx_packets >= u64::from(COUNT)
        })
        .unwrap();
    assert_eq!(
        (counted.rx_packets, counted.tx_packets),
        (u64::from(COUNT), u64::from(COUNT)),
        "testpmd received and sent each frame once"
    );
    let report = daemon.port_report(pmd_id).unwrap();
    assert_eq!(report.switch.rx_frames, u64::from(COUNT), "from testpmd");
    assert!(report.switch.tx_frames >= u64::from(COUNT), "to testpmd");
    assert_eq!(report.device.total(), 0, "no drops: {:?}", report.device);
}

#[test]
fn testpmd_attaches_to_a_listening_daemon() {
    frames_cross_testpmd_and_come_back(Listener::Daemon);
}

#[test]
fn the_daemon_attaches_to_a_listening_testpmd() {
    frames_cross_testpmd_and_come_back(Listener::Testpmd);
}
