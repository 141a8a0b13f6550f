//! End-to-end: the test guest itself, without a network. It boots under TCG, reports on the
//! serial console, runs a per-test /test.sh, and can be killed and booted again.

use std::error::Error;
use std::time::Duration;

use tests::e2e::E2e;
use tests::guest_script;
use tests::qemu::{Guest, GuestSpec};

/// A TCG boot takes about 10 s on an idle core; leave room for a busy machine.
const BOOT: Duration = Duration::from_secs(120);

#[test]
fn guest_without_network_boots_runs_its_script_and_powers_off() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let image = e2e.guest_image();
    // The script functions the network tests use, over the guest's loopback.
    let script = guest_script::script(
        "say KERNEL $(uname -r)\n\
         serve\n\
         pings 127.0.0.1 3\n\
         iperf 127.0.0.1 1\n\
         ethtool --version >/dev/null && say HAS ethtool\n\
         exit 7",
    );
    let mut guest = Guest::start(&image, &GuestSpec::new("vm0").script(&script), e2e.dir())?;
    assert_eq!(
        guest.expect("GUEST UP", BOOT)?,
        "GUEST UP mac=none features=none"
    );
    assert!(guest.expect("GUEST KERNEL", BOOT)?.ends_with("-amd64"));
    guest.expect("GUEST HAS ethtool", BOOT)?;
    assert_eq!(
        guest.expect("GUEST TEST-EXIT", BOOT)?,
        "GUEST TEST-EXIT rc=7"
    );
    guest.expect("GUEST DONE", BOOT)?;
    assert!(guest.wait_exit(BOOT)?.success());

    let pings = guest.lines_with("GUEST PING");
    assert_eq!(guest_script::ping_replies(&pings), [0, 1, 2]);
    let summary = guest_script::ping_summary(&pings).ok_or("no ping summary")?;
    assert_eq!((summary.transmitted, summary.received), (3, 3));
    let iperf = guest.lines_with("GUEST IPERF");
    assert!(
        iperf.contains(&"GUEST IPERF-RC send 0".to_string()),
        "{iperf:?}"
    );
    assert!(
        iperf.contains(&"GUEST IPERF-RC receive 0".to_string()),
        "{iperf:?}"
    );
    for direction in ["send", "receive"] {
        let figure = guest_script::iperf_receiver(&iperf, direction).ok_or("no iperf3 figure")?;
        assert!(figure.megabytes > 0.0, "{direction}: {figure:?}");
    }
    Ok(())
}

#[test]
fn guest_without_script_reports_up_and_done() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let image = e2e.guest_image();
    let mut guest = Guest::start(&image, &GuestSpec::new("vm0"), e2e.dir())?;
    guest.expect("GUEST UP", BOOT)?;
    guest.expect("GUEST DONE", BOOT)?;
    guest.wait_exit(BOOT)?;
    assert!(guest.lines_with("GUEST TEST-EXIT").is_empty());
    Ok(())
}

#[test]
fn a_killed_guest_boots_again_on_restart() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let image = e2e.guest_image();
    // Each boot counts its ticks from 0: a restart is a new boot, not a resumed one.
    let script =
        "#!/bin/sh\ni=0; while true; do echo \"GUEST TICK $i\"; i=$((i+1)); sleep 1; done\n";
    let mut guest = Guest::start(&image, &GuestSpec::new("vm0").script(script), e2e.dir())?;
    guest.expect("GUEST TICK 2", BOOT)?;
    guest.kill()?;
    assert!(
        guest.expect("GUEST TICK", Duration::from_secs(5)).is_err(),
        "a killed guest prints nothing"
    );
    guest.restart()?;
    assert_eq!(guest.expect("GUEST TICK", BOOT)?, "GUEST TICK 0");
    guest.expect("GUEST TICK 1", BOOT)?;
    assert_eq!(
        guest.lines_with("GUEST UP").len(),
        1,
        "one boot per console"
    );
    Ok(())
}
