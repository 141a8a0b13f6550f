//! The daemon's embedding API and restarts, driven by the harness's frontends (the device's
//! behaviour itself is covered by harness_device.rs): ports added and removed while others
//! run, and a daemon restart under each frontend kind's reconnect sequence (QEMU sends the
//! used index as the ring base, cloud-hypervisor the available index, DPDK zero).

use std::path::PathBuf;
use std::time::Duration;

use tests::frontend::connection::Role;
use tests::frontend::frames::{number, numbered};
use tests::frontend::net::{NetOptions, VirtioNet};
use tests::frontend::replay::FrontendKind;
use vhost_net_backend::{start, Config, PortConfig};

const WAIT: Duration = Duration::from_secs(5);

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0, n]
}

fn options(kind: FrontendKind) -> NetOptions {
    NetOptions {
        frontend: kind,
        ..NetOptions::default()
    }
}

fn sockets(dir: &tempfile::TempDir, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| dir.path().join(format!("p{i}.sock")))
        .collect()
}

/// The embedded default with a port per path, its state in `dir`.
fn config(dir: &tempfile::TempDir, paths: &[PathBuf]) -> Config {
    let mut config = Config::with_ports(paths.iter().map(PortConfig::new).collect());
    config.state_dir = Some(dir.path().to_path_buf());
    config
}

/// Sends numbered frames `from` -> `to` and checks they all arrive, in order.
fn exchange(from: &mut VirtioNet, to: &mut VirtioNet, src: u8, dst: u8, first: u32, count: u32) {
    for n in first..first + count {
        from.send(0, &numbered(mac(dst), mac(src), n, 200)).unwrap();
    }
    for n in first..first + count {
        let (_, frame) = to.recv(WAIT).unwrap().expect("frame lost");
        assert_eq!(number(&frame), Some(n));
    }
}

#[test]
fn ports_are_added_and_removed_while_others_run() {
    let dir = tempfile::tempdir().unwrap();
    let paths = sockets(&dir, 3);
    let daemon = start(config(&dir, &paths[..2])).unwrap();
    let nic = |i: usize| {
        VirtioNet::new(Role::Connect(paths[i].clone()), options(FrontendKind::Qemu)).unwrap()
    };
    let (mut a, mut b) = (nic(0), nic(1));
    exchange(&mut a, &mut b, 1, 2, 0, 3);

    let ids = daemon.ports();
    daemon.remove_port(ids[1]).unwrap();
    assert!(!paths[1].exists(), "a removed port's socket is gone");
    assert!(daemon.remove_port(ids[1]).is_err());
    assert!(daemon.port_report(ids[1]).is_none());
    // A keeps sending into a network without B.
    a.send(0, &numbered(mac(2), mac(1), 99, 60)).unwrap();

    let c_id = daemon.add_port(PortConfig::new(&paths[2])).unwrap();
    let mut c = nic(2);
    exchange(&mut a, &mut c, 1, 3, 100, 3);
    assert!(
        daemon.add_port(PortConfig::new(&paths[2])).is_err(),
        "one port per socket"
    );

    // B comes back on its old socket and reconnects; A reaches it again.
    let b_id = daemon.add_port(PortConfig::new(&paths[1])).unwrap();
    b.reconnect().unwrap();
    b.send(0, &numbered([0xff; 6], mac(2), 200, 60)).unwrap();
    assert_eq!(number(&a.recv(WAIT).unwrap().unwrap().1), Some(200));
    assert_eq!(number(&c.recv(WAIT).unwrap().unwrap().1), Some(200));
    exchange(&mut a, &mut b, 1, 2, 300, 3);
    let report = daemon.port_report(b_id).unwrap();
    assert_eq!(report.config.socket, paths[1]);
    assert!(report.switch.tx_frames >= 3 && report.switch.rx_frames >= 1);
    assert_eq!(report.device.total(), 0);
    assert_eq!(daemon.ports().len(), 3);
    assert!(daemon.port_report(c_id).is_some());
    daemon.shutdown();
    assert!(
        paths.iter().all(|p| !p.exists()),
        "shutdown removes the sockets"
    );
}

#[test]
fn a_daemon_restart_resumes_traffic_under_every_frontend_kind() {
    for kind in [
        FrontendKind::CloudHypervisor,
        FrontendKind::Dpdk,
        FrontendKind::Qemu,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let paths = sockets(&dir, 2);
        let daemon = start(config(&dir, &paths)).unwrap();
        let nic =
            |i: usize| VirtioNet::new(Role::Connect(paths[i].clone()), options(kind)).unwrap();
        let (mut a, mut b) = (nic(0), nic(1));
        // Move the rings well away from index 0 first (in bursts the receive queue holds).
        for burst in 0..6 {
            exchange(&mut a, &mut b, 1, 2, burst * 50, 50);
        }
        exchange(&mut b, &mut a, 2, 1, 300, 10);
        drop(daemon);
        let daemon = start(config(&dir, &paths)).unwrap();
        a.reconnect().unwrap();
        b.reconnect().unwrap();
        exchange(&mut a, &mut b, 1, 2, 1000, 50);
        exchange(&mut b, &mut a, 2, 1, 2000, 50);
        for id in daemon.ports() {
            assert_eq!(
                daemon.port_report(id).unwrap().device.total(),
                0,
                "{kind:?}"
            );
        }
    }
}
