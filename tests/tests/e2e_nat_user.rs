//! End-to-end: the NAT network with the `user` egress, as the embedded default configures it
//! (192.168.122.0/24, DHCP, DNS forwarded), with real QEMU guests and a "wan" namespace
//! behind the host (tests/src/wan.rs). The daemon runs in the test process, so the test can
//! restart it and add port forwards while it runs.

use std::error::Error;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tests::e2e::E2e;
use tests::guest_script::{self, script};
use tests::qemu::{Guest, GuestSpec, NicSpec};
use tests::vm_network::{mac, report};
use tests::wan::{self, Wan};
use vhost_net_backend::config::{DnsConfig, ForwardConfig, NetworkMode, Protocol};
use vhost_net_backend::{Config, MacAddr, PortConfig};

/// How long a guest may take for its whole script.
const RUN: Duration = Duration::from_secs(600);
/// How long a guest may take to boot and get its lease.
const LEASE: Duration = Duration::from_secs(180);

/// Shell functions of NAT guests: `dhcp NAME` gets a lease with busybox udhcpc (sending NAME
/// as hostname) and prints `GUEST LEASE <ip> ...`; `resolve NAME` prints `GUEST RESOLVED NAME
/// <address>`.
const NAT_FUNCTIONS: &str = r#"
cat > /tmp/dhcp.sh <<'EOS'
#!/bin/sh
case "$1" in bound|renew)
  ip addr flush dev "$interface"
  ip addr add "$ip/${mask:-24}" dev "$interface"
  for r in $router; do ip route replace default via "$r"; break; done
  : > /etc/resolv.conf
  for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
  echo "GUEST LEASE $ip router=$router dns=$dns" > /dev/console ;;
esac
EOS
chmod +x /tmp/dhcp.sh
dhcp() { udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 30 -T 2 -x "hostname:$1" >/dev/null 2>&1 || say DHCP-FAILED; }
resolve() { say RESOLVED "$1" "$(nslookup "$1" 2>/dev/null | awk '/^Address/ { a = $NF } END { print a }')"; }
"#;

fn nat_script(body: &str) -> String {
    script(&format!("{NAT_FUNCTIONS}\n{body}"))
}

/// The embedded default, with DNS going to the wan's dnsmasq, the leases in the test's
/// directory, and a port per guest.
fn config(e2e: &E2e, guests: usize) -> Config {
    let mut config = Config::default();
    let NetworkMode::Nat(nat) = &mut config.networks[0].mode else {
        panic!("the default network is NAT");
    };
    nat.dns = Some(DnsConfig {
        upstreams: vec![format!("{}:53", wan::WAN_ADDR).parse().unwrap()],
    });
    nat.leases_file = Some(e2e.path("default.leases"));
    config.state_dir = Some(e2e.dir().to_path_buf());
    for i in 0..guests {
        let mut port = PortConfig::new(e2e.path(&format!("vm{i}.sock")));
        port.mac = mac(i).parse::<MacAddr>().unwrap();
        config.ports.push(port);
    }
    config
}

fn guest(e2e: &E2e, i: usize, body: &str) -> Result<Guest, Box<dyn Error>> {
    let nic = NicSpec::new(e2e.path(&format!("vm{i}.sock")), &mac(i));
    let spec = GuestSpec::new(&format!("vm{i}"))
        .nic(nic)
        .script(&nat_script(body));
    Ok(Guest::start(&e2e.guest_image(), &spec, e2e.dir())?)
}

/// The word after `GUEST <WORD>` in the first such line.
fn value(lines: &[String], word: &str) -> Option<String> {
    let prefix = format!("GUEST {word} ");
    lines
        .iter()
        .find_map(|l| Some(l.strip_prefix(&prefix)?.trim().to_string()))
}

fn lease_ip(line: &str) -> String {
    line.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_guest_gets_a_lease_that_survives_a_restart_and_reaches_the_wan() -> Result<(), Box<dyn Error>>
{
    let e2e = E2e::start();
    let wan = Wan::start(e2e.dir())?;
    let mut daemon = vhost_net_backend::start(config(&e2e, 1))?;
    let body = format!(
        "dhcp vm0\n\
         sleep 20\n\
         dhcp vm0\n\
         resolve {name}\n\
         say PAGE \"$(wget -q -O - http://{name}/index.html)\"\n\
         say ECHO \"$(echo udp-hello | socat -T 3 - UDP4:{name}:{echo})\"\n\
         pings {wan} 3\n\
         mkfifo /tmp/f\n\
         sha256sum < /tmp/f > /tmp/sum &\n\
         dd if=/dev/urandom bs=1M count=100 2>/dev/null | tee /tmp/f | socat -u - TCP4:{wan}:{sink}\n\
         wait\n\
         say SENT-SHA \"$(cut -d' ' -f1 /tmp/sum)\"\n\
         iperf {wan} 5\n\
         say FINISHED",
        name = wan::WAN_NAME,
        wan = wan::WAN_ADDR,
        echo = wan::ECHO_PORT,
        sink = wan::SINK_PORT,
    );
    let mut vm = guest(&e2e, 0, &body)?;
    let first = vm.expect("GUEST LEASE", LEASE)?;
    assert!(
        first.contains("router=192.168.122.1 dns=192.168.122.1"),
        "{first}"
    );
    let ip = lease_ip(&first);
    let saved = std::fs::read_to_string(e2e.path("default.leases"))?;
    assert!(saved.contains(&format!("{} {ip} vm0", mac(0))), "{saved}");

    // A new daemon on the same leases file gives the guest the same address.
    daemon.shutdown();
    daemon = vhost_net_backend::start(config(&e2e, 1))?;
    let second = vm.expect("GUEST LEASE", LEASE)?;
    assert_eq!(lease_ip(&second), ip, "the lease survives the restart");

    vm.expect("GUEST FINISHED", RUN)?;
    let lines = vm.lines_with("GUEST ");
    assert_eq!(
        value(&lines, "RESOLVED").as_deref(),
        Some(&*format!("{} {}", wan::WAN_NAME, wan::WAN_ADDR))
    );
    assert_eq!(value(&lines, "PAGE").as_deref(), Some(wan::PAGE.trim()));
    assert_eq!(value(&lines, "ECHO").as_deref(), Some("udp-hello"));
    let pings = guest_script::ping_summary(&lines).expect("a ping summary");
    assert_eq!((pings.transmitted, pings.received), (3, 3), "{lines:?}");
    let sent = value(&lines, "SENT-SHA").expect("the guest's checksum");
    let got = wan
        .sink_sha256(Duration::from_secs(30))
        .expect("the sink's checksum");
    assert_eq!(sent.len(), 64, "{sent}");
    assert_eq!(got, sent, "100 MB arrive intact");
    for direction in ["send", "receive"] {
        let figure = guest_script::iperf_receiver(&lines, direction)
            .unwrap_or_else(|| panic!("an iperf3 {direction} figure: {lines:?}"));
        report(&format!(
            "NAT user egress: iperf3 TCP guest {} wan: {:.0} Mbit/s ({:.1} MB in 5 s)",
            if direction == "send" { "->" } else { "<-" },
            figure.megabits_per_second,
            figure.megabytes
        ));
    }
    drop(daemon);
    Ok(())
}

#[test]
fn guests_resolve_each_other_and_a_runtime_port_forward_reaches_one() -> Result<(), Box<dyn Error>>
{
    let e2e = E2e::start();
    let _wan = Wan::start(e2e.dir())?;
    let daemon = vhost_net_backend::start(config(&e2e, 2))?;
    let server = "dhcp alpha\n\
                  resolve beta-host\n\
                  until nslookup beta-host >/dev/null 2>&1; do sleep 1; done\n\
                  resolve beta-host\n\
                  echo from-alpha | nc -l -p 8080\n\
                  say FINISHED";
    let client = "dhcp beta-host\n\
                  until nslookup alpha >/dev/null 2>&1; do sleep 1; done\n\
                  resolve alpha\n\
                  pings alpha 2\n\
                  say FINISHED";
    let mut alpha = guest(&e2e, 0, server)?;
    let mut beta = guest(&e2e, 1, client)?;
    let alpha_ip = lease_ip(&alpha.expect("GUEST LEASE", LEASE)?);
    let beta_ip = lease_ip(&beta.expect("GUEST LEASE", LEASE)?);
    beta.expect("GUEST FINISHED", RUN)?;
    let lines = beta.lines_with("GUEST ");
    assert_eq!(
        value(&lines, "RESOLVED").as_deref(),
        Some(&*format!("alpha {alpha_ip}"))
    );
    let pings = guest_script::ping_summary(&lines).expect("a ping summary");
    assert_eq!(pings.received, 2, "{lines:?}");

    // A forward added while the daemon runs reaches alpha's server.
    let listen: SocketAddr = "127.0.0.1:18080".parse()?;
    daemon.add_forward(ForwardConfig {
        network: "default".into(),
        protocol: Protocol::Tcp,
        listen,
        guest: format!("{alpha_ip}:8080").parse()?,
    })?;
    assert_eq!(daemon.forwards().len(), 1);
    let mut got = String::new();
    for _ in 0..60 {
        got.clear();
        if let Ok(mut s) = TcpStream::connect_timeout(&listen, Duration::from_secs(5)) {
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let _ = s.read_to_string(&mut got);
            if !got.is_empty() {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(got, "from-alpha\n");
    alpha.expect("GUEST FINISHED", RUN)?;
    let lines = alpha.lines_with("GUEST RESOLVED beta-host");
    assert_eq!(
        lines.last().map(String::as_str),
        Some(&*format!("GUEST RESOLVED beta-host {beta_ip}"))
    );
    let forward = daemon.forwards().remove(0);
    daemon.remove_forward(&forward)?;
    assert!(TcpStream::connect_timeout(&listen, Duration::from_secs(2)).is_err());
    Ok(())
}
