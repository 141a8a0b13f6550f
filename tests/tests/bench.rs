//! The benchmark command runs: `bench --smoke` on a few rows prints its tables, with ratios to
//! testpmd when testpmd is installed. Figures are printed, never asserted.

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
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 64B VM-to-VM, 2 ports | none"))
        .unwrap_or_else(|| panic!("no 64B row:\n{stdout}"));
    assert!(row.contains(" M "), "a frame rate: {row}");
    assert!(
        stdout.contains("| vhost-net-backend  |"),
        "a latency row:\n{stdout}"
    );
    if testpmd::installed() {
        let ratios = row.split('|').filter(|c| c.trim().ends_with('x')).count();
        assert_eq!(ratios, 2, "rate and CPU ratios to testpmd: {row}");
        assert!(stdout.contains("| testpmd io-forward |"), "{stdout}");
    }
    assert!(
        !stdout.contains("Memory"),
        "--only leaves the other sections out"
    );
}
