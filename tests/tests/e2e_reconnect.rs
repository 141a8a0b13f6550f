//! End-to-end: reconnects. The daemon is SIGKILLed and restarted during a ping run and the ping
//! recovers with no guest rebooting; one guest's QEMU is restarted and the other guests never
//! notice.

use std::error::Error;
use std::thread;
use std::time::{Duration, Instant};

use tests::e2e::E2e;
use tests::guest_script::{net_script, ping_replies, ping_summary, PingSummary};
use tests::qemu::SocketRole;
use tests::vm_network::{guest, ip, nic, report, Network};

/// A TCG boot with a busy neighbour, plus reaching the peer.
const BOOT: Duration = Duration::from_secs(180);
/// How long pings may take to resume after a reconnect (QEMU retries every second).
const RECOVERY: Duration = Duration::from_secs(60);

/// The script of a guest that reaches `peer` and then just answers pings.
fn idle(i: usize, peer: usize) -> String {
    net_script(
        &format!("{}/24", ip(i)),
        None,
        &format!("reach {}\nsay READY\nsleep 100000", ip(peer)),
    )
}

#[test]
fn daemon_killed_and_restarted_during_a_ping_run() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let image = e2e.guest_image();
    let pinger = net_script(
        &format!("{}/24", ip(1)),
        None,
        &format!("reach {0}\nping_forever {0}", ip(0)),
    );
    // Both socket roles: the daemon listens for vm0 and connects to vm1's QEMU.
    let specs = [
        guest(0, nic(&e2e, 0), &idle(0, 1)),
        guest(1, nic(&e2e, 1).role(SocketRole::QemuListens), &pinger),
    ];
    let socket0 = specs[0].nics[0].socket.clone();
    let mut net = Network::start(&e2e, &image, &specs)?;
    net.guests[1].expect("GUEST REACHED", BOOT)?;
    for _ in 0..5 {
        net.guests[1].expect("GUEST PING 64 bytes", RECOVERY)?;
    }

    net.daemon.kill()?;
    thread::sleep(Duration::from_secs(1));
    let replies_at_kill = ping_replies(&net.guests[1].lines_with("GUEST PING"));
    thread::sleep(Duration::from_secs(3));
    let replies_while_dead = ping_replies(&net.guests[1].lines_with("GUEST PING"));
    assert_eq!(
        replies_while_dead, replies_at_kill,
        "pings answered without the daemon"
    );
    let last_before = *replies_at_kill.last().ok_or("no replies before the kill")?;

    net.daemon.restart()?;
    let restarted = Instant::now();
    net.daemon.wait_listening(&[&socket0], RECOVERY)?;
    // The next replies come from the new daemon.
    let first = net.guests[1].expect("GUEST PING 64 bytes", RECOVERY)?;
    let recovered = restarted.elapsed();
    for _ in 0..9 {
        net.guests[1].expect("GUEST PING 64 bytes", RECOVERY)?;
    }
    let replies = ping_replies(&net.guests[1].lines_with("GUEST PING"));
    let after: Vec<u32> = replies
        .iter()
        .copied()
        .filter(|&seq| seq > last_before)
        .collect();
    assert!(
        after.len() >= 10,
        "pings did not recover: {first}; replies {replies:?}"
    );
    report(&format!(
        "daemon SIGKILL + restart: pings answered again {recovered:.1?} after the restart"
    ));

    for guest in &mut net.guests {
        assert!(guest.is_running()?, "{} stopped", guest.name());
        assert_eq!(
            guest.lines_with("GUEST UP").len(),
            1,
            "{} rebooted",
            guest.name()
        );
    }
    Ok(())
}

#[test]
fn a_guest_restart_goes_unnoticed_by_the_others() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let image = e2e.guest_image();
    const PINGS: u32 = 200;
    // vm1 pings vm2 for 40 s while vm0's QEMU is killed and started again.
    let pinger = net_script(
        &format!("{}/24", ip(1)),
        None,
        &format!(
            "carrier\nreach {0}\npings {0} {PINGS}\ncarrier\nsay FINISHED\nsleep 100000",
            ip(2)
        ),
    );
    let specs = [
        guest(0, nic(&e2e, 0), &idle(0, 1)),
        guest(1, nic(&e2e, 1), &pinger),
        guest(2, nic(&e2e, 2), &idle(2, 1)),
    ];
    let mut net = Network::start(&e2e, &image, &specs)?;
    net.guests[0].expect("GUEST READY", BOOT)?;
    net.guests[1].expect("GUEST REACHED", BOOT)?;
    for _ in 0..5 {
        net.guests[1].expect("GUEST PING 64 bytes", RECOVERY)?;
    }

    net.guests[0].restart()?;
    // The restarted guest boots, reconnects and reaches vm1 again.
    net.guests[0].expect("GUEST READY", BOOT)?;
    net.guests[1].expect("GUEST FINISHED", BOOT)?;

    let pings = net.guests[1].lines_with("GUEST PING");
    assert_eq!(
        ping_summary(&pings),
        Some(PingSummary {
            transmitted: PINGS,
            received: PINGS
        }),
        "vm1 -> vm2 lost pings while vm0 restarted"
    );
    assert_eq!(
        ping_replies(&pings),
        (0..PINGS).collect::<Vec<_>>(),
        "replies out of order"
    );
    let carrier = net.guests[1].lines_with("GUEST CARRIER");
    assert_eq!(carrier.len(), 2);
    assert_eq!(carrier[0], carrier[1], "vm1's link went down");
    assert!(net.daemon.is_running()?, "the daemon died");
    Ok(())
}
