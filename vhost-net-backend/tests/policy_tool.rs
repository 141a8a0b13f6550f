//! `policy test MODULE --pcap FILE`: the offline tool, run as a user would.

mod support;

use pcap_file::pcap::{PcapPacket, PcapWriter};
use policy_sdk::frames::{arp_request, tcp4, udp4, Endpoint, TCP_ACK, TCP_SYN};
use std::process::Command;
use std::time::Duration;
use support::policy_wasm::policy_wasm;

const GW: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 1], [192, 168, 122, 1]);
const VM: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 3], [192, 168, 122, 10]);
const NET: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 1], [203, 0, 113, 5]);

#[test]
fn policy_test_prints_each_frames_verdict() {
    let dir = std::env::temp_dir().join(format!("policy-tool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("libvirt_nat.wasm");
    std::fs::write(&module, policy_wasm("libvirt-nat")).unwrap();
    let pcap = dir.join("capture.pcap");
    let frames = [
        arp_request(VM, GW.ip),
        tcp4(VM, NET, 40000, 443, TCP_SYN),
        tcp4(NET, VM, 443, 40000, TCP_SYN | TCP_ACK),
        tcp4(VM, NET, 40000, 443, TCP_ACK),
        tcp4(NET, VM, 443, 40001, TCP_SYN),
        udp4(VM, GW, 5353, 53, b"q"),
    ];
    let mut w = PcapWriter::new(std::fs::File::create(&pcap).unwrap()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(
            Duration::from_millis(i as u64),
            f.len() as u32,
            f,
        ))
        .unwrap();
    }
    drop(w);
    let out = Command::new(env!("CARGO_BIN_EXE_policy"))
        .arg("test")
        .arg(&module)
        .arg("--pcap")
        .arg(&pcap)
        .args([
            "--config",
            "network 192.168.122.0/24\ngateway 192.168.122.1",
            "--guest",
            "52:54:00:00:00:03",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .take(frames.len())
        .map(|l| l.split_whitespace().collect())
        .collect();
    let summary: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[2], r[3], r[4])).collect();
    assert_eq!(
        summary,
        [
            ("untracked", "ACCEPT", "module"),
            ("New", "ACCEPT", "module"),
            ("Reply", "ACCEPT", "cached"),
            ("Established", "ACCEPT", "cached"),
            ("New", "REJECT", "module"),
            ("New", "ACCEPT", "module"),
        ],
        "{text}"
    );
    assert!(
        text.contains("FORWARD from the network out ACCEPT"),
        "{text}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_policy"))
        .arg("test")
        .arg(&module)
        .arg("--pcap")
        .arg(dir.join("missing"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    std::fs::remove_dir_all(dir).unwrap();
}
