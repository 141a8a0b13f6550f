//! /test.sh scripts for guests on a test network, and parsers for the lines they print.
//!
//! [`script`] gives a script that defines shell functions for the test's own lines to call, and
//! [`net_script`] one that also configures eth0. Each function prints `GUEST <WORD> ...` lines
//! on the serial console:
//! - `reach HOST`: pings until HOST answers (120 tries): `GUEST REACHED HOST` or
//!   `GUEST UNREACHABLE HOST`;
//! - `pings HOST COUNT [SIZE]`: `ping -c COUNT -i 0.2`, every output line as `GUEST PING ...`;
//! - `ping_forever HOST`: the same without an end;
//! - `iperf HOST SECONDS [ARGS]`: iperf3 TCP to HOST, then reversed: `GUEST IPERF send|receive
//!   <iperf3's sender/receiver lines>` and `GUEST IPERF-RC send|receive <rc>` (a run that hangs
//!   is killed after SECONDS + 60 s);
//! - `serve`: starts an iperf3 server in the background, logging to a file;
//! - `served`: that log's restarts, connections, results, errors and warnings as
//!   `GUEST IPERF-SERVER ...`;
//! - `stats`: `ethtool -S eth0` as `GUEST STAT <name> <value>` lines;
//! - `ipstats`: the kernel's IP counters (/proc/net/snmp) as `GUEST IP <name> <value>` lines;
//! - `carrier`: `GUEST CARRIER <eth0's carrier_changes>` (how often the link went up or down);
//! - `offloads`: `GUEST OFFLOAD <feature> on|off` for eth0's checksum and TSO offloads;
//! - `notify HOST` / `wait_notified`: one guest tells another it is done (TCP port 5001; both
//!   give up after a while);
//! - `dhcp [HOSTNAME]`: busybox udhcpc on eth0, sending HOSTNAME when given (address, default
//!   route, resolv.conf): `GUEST LEASE <address/prefix> router=<router> dns=<servers>` or
//!   `GUEST NO-LEASE`;
//! - `resolve NAME`: `GUEST RESOLVED NAME <address>` (busybox nslookup's last answer);
//! - `fetch HOST PATH`: an HTTP/1.0 GET over busybox nc (the static busybox's wget crashes
//!   resolving even a literal address), the response's lines as `GUEST FETCH ...` and
//!   `GUEST FETCH-RC <rc>`.

/// Shell functions every network script defines.
const FUNCTIONS: &str = r#"
say() { echo "GUEST $*"; }
reach() {
  i=0
  until ping -c 1 -W 1 "$1" >/dev/null 2>&1; do
    i=$((i+1)); [ $i -ge 120 ] && { say UNREACHABLE "$1"; return 1; }
  done
  say REACHED "$1"
}
pings() { ping -c "$2" -i 0.2 -s "${3:-56}" "$1" 2>&1 | while read -r l; do say PING "$l"; done; }
ping_forever() { ping -i 0.2 "$1" 2>&1 | while read -r l; do say PING "$l"; done; }
# Not -D with --logfile: iperf3 closes that log before it writes a failed test's error.
serve() { iperf3 -s --forceflush >/tmp/iperf3.log 2>&1 & }
served() {
  grep -E 'listening|Accepted|sender|receiver|iperf3:' /tmp/iperf3.log |
    while read -r l; do say IPERF-SERVER "$l"; done
}
iperf() {
  host=$1; secs=$2; shift 2
  for dir in send receive; do
    flag=; [ $dir = receive ] && flag=-R
    # The server may still be starting: retry the connection for a while.
    for try in 1 2 3 4 5 6 7 8 9 10; do
      out=$(timeout $((secs + 60)) iperf3 -c "$host" -t "$secs" -f m $flag "$@" 2>&1); rc=$?
      case "$out" in *"unable to connect"*|*"Connection refused"*) sleep 1 ;; *) break ;; esac
    done
    echo "$out" | grep -E 'sender|receiver' | while read -r l; do say IPERF $dir "$l"; done
    [ $rc = 0 ] || echo "$out" | tail -3 | while read -r l; do say IPERF-ERR $dir "$l"; done
    say IPERF-RC $dir $rc
  done
}
stats() { ethtool -S eth0 | while read -r k v; do say STAT "${k%:}" "$v"; done; }
ipstats() {
  awk '/^Ip:/ { if (!h) { for (i = 2; i <= NF; i++) n[i] = $i; h = 1 }
                else for (i = 2; i <= NF; i++) print "GUEST IP", n[i], $i }' /proc/net/snmp
}
carrier() { say CARRIER "$(cat /sys/class/net/eth0/carrier_changes)"; }
notify() {
  i=0
  until echo done | nc "$1" 5001; do i=$((i+1)); [ $i -ge 30 ] && return 1; sleep 1; done
}
wait_notified() { timeout 180 nc -l -p 5001 >/dev/null; }
dhcp() {
  cat > /tmp/udhcpc.sh <<'S'
#!/bin/sh
case "$1" in bound|renew)
  ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface"
  for r in $router; do ip route replace default via "$r"; break; done
  : > /etc/resolv.conf
  for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
  echo "$ip/${mask:-24} router=$router dns=$dns" > /tmp/lease ;;
esac
S
  chmod +x /tmp/udhcpc.sh
  if udhcpc -i eth0 -s /tmp/udhcpc.sh -n -q -t 60 -T 2 ${1:+-x "hostname:$1"} >/dev/null 2>&1; then
    say LEASE "$(cat /tmp/lease)"
  else
    say NO-LEASE
  fi
}
resolve() { say RESOLVED "$1" "$(nslookup "$1" 2>/dev/null | awk '/^Address/ { a = $NF } END { print a }')"; }
fetch() {
  out=$(printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" | nc -w 10 "$1" 80 2>&1); rc=$?
  echo "$out" | while read -r l; do say FETCH "$l"; done
  say FETCH-RC $rc
}
offloads() {
  ethtool -k eth0 | grep -E '^(tx-checksumming|rx-checksumming|tcp-segmentation-offload):' |
    while read -r k v rest; do say OFFLOAD "${k%:}" "$v"; done
}
"#;

/// A script that defines the functions above, then runs `body`.
pub fn script(body: &str) -> String {
    format!("#!/bin/sh\n{FUNCTIONS}\n{body}\n")
}

/// A script that gives eth0 `address` (`"192.0.2.1/24"`) and `mtu` when given, defines the
/// functions above, then runs `body`.
pub fn net_script(address: &str, mtu: Option<u16>, body: &str) -> String {
    let mtu = mtu.map_or(String::new(), |mtu| format!("ip link set eth0 mtu {mtu}\n"));
    script(&format!("ip addr add {address} dev eth0\n{mtu}{body}"))
}

/// A script that gets eth0's address by DHCP (the `dhcp` function's `GUEST LEASE` line),
/// defines the functions above, then runs `body`.
pub fn net_script_dhcp(body: &str) -> String {
    script(&format!("dhcp\n{body}"))
}

/// A ping summary: frames sent and replies received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingSummary {
    pub transmitted: u32,
    pub received: u32,
}

/// The summary of `GUEST PING` lines ("N packets transmitted, M packets received, ...").
pub fn ping_summary(lines: &[String]) -> Option<PingSummary> {
    lines.iter().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let before = |word: &str| {
            let at = words.iter().position(|w| w.trim_end_matches(',') == word)?;
            words.get(at.checked_sub(2)?)?.parse().ok()
        };
        Some(PingSummary {
            transmitted: before("transmitted")?,
            received: before("received")?,
        })
    })
}

/// The `seq=` numbers of the replies among `GUEST PING` lines, in order.
pub fn ping_replies(lines: &[String]) -> Vec<u32> {
    lines
        .iter()
        .filter(|line| line.contains("bytes from"))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("seq=")?.parse().ok())
        })
        .collect()
}

/// One iperf3 result line: how much it moved and at what rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfFigure {
    pub megabytes: f64,
    pub megabits_per_second: f64,
}

/// The receiver's figure among `GUEST IPERF <dir>` lines (`iperf3 -f m`; with several streams
/// the `[SUM]` line, which comes last).
pub fn iperf_receiver(lines: &[String], direction: &str) -> Option<IperfFigure> {
    let prefix = format!("GUEST IPERF {direction} ");
    receiver_figure(lines.iter().filter(|line| line.starts_with(&prefix)))
}

/// The receiver's figure in iperf3's own output (`iperf3 -f m` run on a host).
pub fn iperf_output_receiver(output: &str) -> Option<IperfFigure> {
    receiver_figure(output.lines())
}

/// The last iperf3 `receiver` line's figure among `lines`.
fn receiver_figure<'a, S: AsRef<str> + 'a>(
    lines: impl DoubleEndedIterator<Item = S>,
) -> Option<IperfFigure> {
    lines
        .rev()
        .filter(|line| line.as_ref().trim_end().ends_with("receiver"))
        .find_map(|line| {
            let words: Vec<&str> = line.as_ref().split_whitespace().collect();
            let before = |unit: &str| {
                words
                    .get(words.iter().position(|w| *w == unit)?.checked_sub(1)?)?
                    .parse()
                    .ok()
            };
            // `-f m` fixes the rate's unit only: the amount is in KBytes, MBytes or GBytes
            // (1024-based).
            let megabytes = before("MBytes")
                .or_else(|| before("GBytes").map(|g: f64| g * 1024.0))
                .or_else(|| before("KBytes").map(|k: f64| k / 1024.0))?;
            Some(IperfFigure {
                megabytes,
                megabits_per_second: before("Mbits/sec")?,
            })
        })
}

/// The counter `name` from `GUEST <WORD> <name> <value>` lines (`word`: `STAT` for `stats`,
/// `IP` for `ipstats`).
pub fn counter(lines: &[String], word: &str, name: &str) -> Option<u64> {
    let prefix = format!("GUEST {word} {name} ");
    lines
        .iter()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn ping_lines() {
        let out = lines(
            "GUEST PING PING 192.0.2.2 (192.0.2.2): 56 data bytes\n\
             GUEST PING 64 bytes from 192.0.2.2: seq=0 ttl=64 time=1.2 ms\n\
             GUEST PING 64 bytes from 192.0.2.2: seq=2 ttl=64 time=0.9 ms\n\
             GUEST PING --- 192.0.2.2 ping statistics ---\n\
             GUEST PING 3 packets transmitted, 2 packets received, 33% packet loss",
        );
        assert_eq!(ping_replies(&out), [0, 2]);
        let summary = ping_summary(&out).unwrap();
        assert_eq!((summary.transmitted, summary.received), (3, 2));
        assert_eq!(ping_summary(&out[..3]), None);
    }

    #[test]
    fn iperf_lines() {
        let out = lines(
            "GUEST IPERF send [  5]   0.00-5.00   sec   120 MBytes   201 Mbits/sec    0             sender\n\
             GUEST IPERF send [  5]   0.00-5.04   sec   119 MBytes   198 Mbits/sec                  receiver\n\
             GUEST IPERF receive [SUM]   0.00-5.00   sec  60.5 MBytes   101 Mbits/sec                  receiver",
        );
        let send = iperf_receiver(&out, "send").unwrap();
        assert_eq!((send.megabytes, send.megabits_per_second), (119.0, 198.0));
        let receive = iperf_receiver(&out, "receive").unwrap();
        assert_eq!(
            (receive.megabytes, receive.megabits_per_second),
            (60.5, 101.0)
        );
        let host = "[  5]   0.00-3.00   sec   400 MBytes  1118 Mbits/sec    2             sender\n\
                    [  5]   0.00-3.01   sec   399 MBytes  1112 Mbits/sec                  receiver\n";
        let figure = iperf_output_receiver(host).unwrap();
        assert_eq!(
            (figure.megabytes, figure.megabits_per_second),
            (399.0, 1112.0)
        );
        let fast = "[  5]   0.00-5.02   sec  1.04 GBytes  1779 Mbits/sec                  receiver";
        let figure = iperf_output_receiver(fast).unwrap();
        assert_eq!(
            (figure.megabytes, figure.megabits_per_second),
            (1.04 * 1024.0, 1779.0)
        );
        assert_eq!(iperf_output_receiver("iperf3: error"), None);
    }

    #[test]
    fn counter_lines() {
        let out = lines(
            "GUEST STAT NIC statistics:\nGUEST STAT rx_queue_0_packets 17\nGUEST IP FragCreates 0",
        );
        assert_eq!(counter(&out, "STAT", "rx_queue_0_packets"), Some(17));
        assert_eq!(counter(&out, "STAT", "rx_queue_1_packets"), None);
        assert_eq!(counter(&out, "IP", "FragCreates"), Some(0));
    }
}
