//! The benchmark command runs: `bench --smoke` on a few rows prints its tables (the policy rows
//! with their modules loaded into the daemon), with ratios to testpmd when testpmd is
//! installed. Figures are printed, never asserted.

use std::process::Command;

use tests::testpmd;

#[test]
fn bench_smoke_prints_its_tables() {
    let daemon = tests::daemon::binary().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--smoke",
            "--only",
            "64B VM-to-VM, 2 ports",
            "--only",
            "latency",
        ])
        .arg("--daemon")
        .arg(daemon)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
    let row_of = |policy: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("| 64B VM-to-VM, 2 ports | {policy}")))
            .unwrap_or_else(|| panic!("no 64B row with policy {policy}:\n{stdout}"))
    };
    let row = row_of("none");
    for policy in ["none", "allow-all", "24-rule security group"] {
        let r = row_of(policy);
        assert!(r.contains(" M "), "a frame rate with {policy}: {r}");
        // The policies let the generator's flows through: frames arrived.
        let loss: f64 = r
            .split('|')
            .nth(5)
            .and_then(|c| c.trim().strip_suffix('%'))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("a loss figure with {policy}: {r}"));
        assert!(loss < 100.0, "frames pass with {policy}: {r}");
        // Where the daemon's lost frames went, per row, from its counters.
        let drops = format!("- 64B VM-to-VM, 2 ports / {policy}: lost ");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&drops) && l.contains("; drops: ")),
            "a drops line for {policy}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("| vhost-net-backend  |"),
        "a latency row:\n{stdout}"
    );
    if testpmd::installed() {
        let ratios = row.split('|').filter(|c| c.trim().ends_with('x')).count();
        assert_eq!(
            ratios, 4,
            "rate and CPU ratios to testpmd, of medians and paired: {row}"
        );
        let testpmd_loss = row.split('|').nth(8).unwrap_or_default().trim();
        assert!(testpmd_loss.ends_with('%'), "testpmd's loss: {row}");
        assert!(stdout.contains("| testpmd io-forward |"), "{stdout}");
    }
    assert!(
        !stdout.contains("ports in one daemon"),
        "--only leaves the other sections out"
    );
}
