//! End-to-end: the test guest itself, without a network. It boots under TCG, reports on the
//! serial console, runs a per-test /test.sh, and can be killed and booted again.

use std::error::Error;
use std::time::Duration;

use tests::e2e::E2e;
use tests::qemu::{Guest, GuestSpec};

/// A TCG boot takes about 10 s on an idle core; leave room for a busy machine.
const BOOT: Duration = Duration::from_secs(120);

#[test]
fn guest_without_network_boots_runs_its_script_and_powers_off() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let image = e2e.guest_image();
    let script = "#!/bin/sh\n\
                  echo \"GUEST KERNEL $(uname -r)\"\n\
                  iperf3 --version >/dev/null && echo GUEST HAS iperf3\n\
                  ethtool --version >/dev/null && echo GUEST HAS ethtool\n\
                  exit 7\n";
    let mut guest = Guest::start(&image, GuestSpec::new("vm0").script(script), e2e.dir())?;
    assert_eq!(
        guest.expect("GUEST UP", BOOT)?,
        "GUEST UP mac=none features=none"
    );
    assert!(guest.expect("GUEST KERNEL", BOOT)?.ends_with("-amd64"));
    guest.expect("GUEST HAS iperf3", BOOT)?;
    guest.expect("GUEST HAS ethtool", BOOT)?;
    assert_eq!(
        guest.expect("GUEST TEST-EXIT", BOOT)?,
        "GUEST TEST-EXIT rc=7"
    );
    guest.expect("GUEST DONE", BOOT)?;
    assert!(guest.wait_exit(BOOT)?.success());
    Ok(())
}

#[test]
fn guest_without_script_reports_up_and_done() -> Result<(), Box<dyn Error>> {
    let e2e = E2e::start();
    let image = e2e.guest_image();
    let mut guest = Guest::start(&image, GuestSpec::new("vm0"), e2e.dir())?;
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
    let mut guest = Guest::start(&image, GuestSpec::new("vm0").script(script), e2e.dir())?;
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
