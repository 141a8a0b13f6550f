//! End-to-end: two QEMU guests on the daemon ping each other and run iperf3 TCP both ways,
//! with all offloads and in the variants that take other datapaths: no mergeable RX buffers,
//! checksum and TSO offloads on one side only (software segmentation), MTU 9000, two queue
//! pairs. The iperf3 figures are printed (`e2e figure:` lines).

use std::error::Error;

use tests::e2e::E2e;
use tests::guest_script::{counter, iperf_receiver, ping_summary, PingSummary};
use tests::qemu::{Feature, SocketRole};
use tests::vm_network::{nic, two_guest_traffic, Traffic, TrafficRun};

/// Checks what every traffic run must show: all pings answered both ways, both iperf3 runs
/// succeeded and moved data.
fn assert_traffic_flowed(run: &TrafficRun) {
    let pings = |lines: &[String]| {
        let pings: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("GUEST PING"))
            .cloned()
            .collect();
        ping_summary(&pings)
    };
    assert_eq!(
        pings(&run.server),
        Some(PingSummary {
            transmitted: 3,
            received: 3
        }),
        "vm0 -> vm1 pings"
    );
    assert_eq!(
        pings(&run.client),
        Some(PingSummary {
            transmitted: 10,
            received: 10
        }),
        "vm1 -> vm0 pings"
    );
    for direction in ["send", "receive"] {
        let rc = format!("GUEST IPERF-RC {direction} 0");
        assert!(
            run.client.contains(&rc),
            "iperf3 {direction} failed: {:?}",
            run.client
        );
        let figure = iperf_receiver(&run.client, direction).expect("an iperf3 receiver line");
        assert!(
            figure.megabytes > 0.0,
            "iperf3 {direction} moved nothing: {figure:?}"
        );
    }
}

/// Whether `lines` show offload `name` (an `ethtool -k` feature) on.
fn offload_on(lines: &[String], name: &str) -> bool {
    lines.contains(&format!("GUEST OFFLOAD {name} on"))
}

#[test]
fn two_guests_ping_and_run_iperf3_both_ways() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    // One port of each role: the daemon listens for vm0 and connects to vm1's QEMU.
    let nic1 = nic(&e2e, 1).role(SocketRole::QemuListens);
    let run = two_guest_traffic(
        &e2e,
        nic(&e2e, 0),
        nic1,
        &Traffic::default(),
        "default offloads",
    )?;
    assert_traffic_flowed(&run);
    for lines in [&run.server, &run.client] {
        assert!(
            offload_on(lines, "tcp-segmentation-offload"),
            "TSO offered to both guests: {lines:?}"
        );
    }
    Ok(())
}

#[test]
fn without_mergeable_rx_buffers() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let nic0 = nic(&e2e, 0).without(&[Feature::MrgRxbuf]);
    let nic1 = nic(&e2e, 1).without(&[Feature::MrgRxbuf]);
    let run = two_guest_traffic(&e2e, nic0, nic1, &Traffic::default(), "mrg_rxbuf=off")?;
    assert_traffic_flowed(&run);
    Ok(())
}

#[test]
fn checksum_and_tso_offloads_on_one_side_only() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    // vm0 sends 64 KiB TSO segments; vm1 takes neither TSO nor partial checksums, so the
    // daemon must segment and checksum vm0's frames in software on the way to vm1.
    let nic1 = nic(&e2e, 1).without(&[
        Feature::Csum,
        Feature::GuestCsum,
        Feature::HostTso4,
        Feature::GuestTso4,
        Feature::HostTso6,
        Feature::GuestTso6,
    ]);
    let run = two_guest_traffic(
        &e2e,
        nic(&e2e, 0),
        nic1,
        &Traffic::default(),
        "csum/tso off on vm1",
    )?;
    assert_traffic_flowed(&run);
    assert!(
        offload_on(&run.server, "tcp-segmentation-offload"),
        "vm0 uses TSO: {:?}",
        run.server
    );
    assert!(
        !offload_on(&run.client, "tcp-segmentation-offload"),
        "vm1 has no TSO: {:?}",
        run.client
    );
    assert!(
        !offload_on(&run.client, "tx-checksumming"),
        "vm1 has no checksum offload: {:?}",
        run.client
    );
    Ok(())
}

#[test]
fn jumbo_frames_with_mtu_9000() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let traffic = Traffic {
        mtu: Some(9000),
        ping_size: Some(8000),
        ..Traffic::default()
    };
    let nic0 = nic(&e2e, 0).host_mtu(9000);
    let nic1 = nic(&e2e, 1).host_mtu(9000);
    let run = two_guest_traffic(&e2e, nic0, nic1, &traffic, "MTU 9000")?;
    assert_traffic_flowed(&run);
    // 8000-byte pings crossed as single frames: nothing was fragmented or reassembled.
    for (name, lines) in [("vm0", &run.server), ("vm1", &run.client)] {
        for ip_counter in ["FragCreates", "ReasmReqds"] {
            assert_eq!(
                counter(lines, "IP", ip_counter),
                Some(0),
                "{name} {ip_counter}"
            );
        }
    }
    Ok(())
}

#[test]
fn two_queue_pairs_both_carry_traffic() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let traffic = Traffic {
        setup: "ethtool -L eth0 combined 2 && say QUEUES 2",
        // Many flows: each picks its transmit queue by its hash.
        iperf_args: "-P 16",
        ..Traffic::default()
    };
    let nic0 = nic(&e2e, 0).queue_pairs(2);
    let nic1 = nic(&e2e, 1).queue_pairs(2);
    let run = two_guest_traffic(&e2e, nic0, nic1, &traffic, "2 queue pairs")?;
    assert_traffic_flowed(&run);
    for (name, lines) in [("vm0", &run.server), ("vm1", &run.client)] {
        assert!(
            lines.contains(&"GUEST QUEUES 2".to_string()),
            "{name} enabled 2 queue pairs"
        );
        for queue in 0..2 {
            let sent = counter(lines, "STAT", &format!("tx_queue_{queue}_packets")).unwrap_or(0);
            assert!(
                sent > 0,
                "{name} sent nothing on queue pair {queue}: {lines:?}"
            );
        }
        let received: u64 = (0..2)
            .map(|queue| counter(lines, "STAT", &format!("rx_queue_{queue}_packets")).unwrap_or(0))
            .sum();
        assert!(received > 0, "{name} received nothing");
    }
    Ok(())
}
