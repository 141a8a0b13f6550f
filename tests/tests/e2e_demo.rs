//! End-to-end: the README's demo (`scripts/demo` runs the `demo` binary) shows two guests on the
//! embedded default network getting leases, reaching each other, the gateway and the outside,
//! and the daemon's views listing them.

use std::process::Command;

use tests::e2e::E2e;

/// The line of `out` that starts with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{out}"))
}

/// The lines of `out` after the line `$ vhost-net-backend CMD` (last occurrence) up to the next
/// line starting with `$` or `==`, or a blank line.
fn view<'a>(out: &'a str, cmd: &str) -> Vec<&'a str> {
    let head = format!("$ vhost-net-backend {cmd}");
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .rposition(|l| *l == head)
        .unwrap_or_else(|| panic!("no {head:?} in\n{out}"));
    lines[at + 1..]
        .iter()
        .take_while(|l| !(l.starts_with('$') || l.starts_with("==") || l.is_empty()))
        .copied()
        .collect()
}

#[test]
fn the_demo_shows_leases_traffic_and_the_views() {
    let e2e = E2e::start();
    e2e.guest_image();
    let run = Command::new(env!("CARGO_BIN_EXE_demo")).output().unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{out}\n{log}");
    assert!(out.ends_with("demo: everything worked\n"), "{out}");

    let mut addresses = Vec::new();
    for (i, peer) in [(0, "vm1"), (1, "vm0")] {
        let lease = line(&out, &format!("vm{i}: LEASE 192.168.122."));
        assert!(
            lease.ends_with("router=192.168.122.1 dns=192.168.122.1"),
            "{lease}"
        );
        let address = lease.split_whitespace().nth(2).unwrap();
        addresses.push(address.split('/').next().unwrap().to_string());
        for host in [peer, "192.168.122.1", "198.51.100.2"] {
            let ping = line(&out, &format!("vm{i}: ping {host} "));
            assert!(
                ping.ends_with(": 3 packets transmitted, 3 packets received, 0% packet loss"),
                "{ping}"
            );
        }
        let page = line(&out, &format!("vm{i}: http://198.51.100.2/index.html"));
        assert!(page.ends_with(": \"hello from the wan\""), "{page}");
    }
    assert_ne!(addresses[0], addresses[1]);

    let show = view(&out, "show").join("\n");
    assert!(show.contains("default  nat   192.168.122.1/24"), "{show}");
    for port in ["port1", "port2"] {
        assert!(show.contains(&format!("{port} (up)")), "{show}");
    }
    let leases = view(&out, "leases");
    for (i, ip) in addresses.iter().enumerate() {
        let mac = format!("52:54:00:00:00:0{}", i + 1);
        assert!(
            leases.iter().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 4 && w[..4] == ["default", ip.as_str(), &mac, &format!("vm{i}")]
            }),
            "vm{i}'s lease in {leases:?}"
        );
    }
    let conntrack = view(&out, "conntrack");
    for ip in &addresses {
        for proto in ["icmp", "tcp"] {
            assert!(
                conntrack.iter().any(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.get(1) == Some(&proto)
                        && w.iter().any(|f| f.starts_with(&format!("{ip}:")))
                        && w.iter().any(|f| f.starts_with("198.51.100.2:"))
                }),
                "a {proto} flow from {ip} to the outside in {conntrack:?}"
            );
        }
    }
}
