//! The views as text tables, in the spirit of `brctl show`, `brctl showmacs`, dnsmasq's leases,
//! `conntrack -L` and `iptables -L -nv`.

use std::fmt::Write;

use virtio_bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};

use super::protocol::{
    EgressStats, FdbView, FlowInfo, ForwardInfo, GuestRing, LeaseInfo, NatStatsView, PolicyInfo,
    PortView, QueueState, QueuesView, ShowView, StatsView,
};

/// Columns of text, left-aligned, two spaces apart.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                let cells = self.rows.iter().filter_map(|r| r.get(c));
                cells.map(|s| s.chars().count()).max().unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A count as `iptables -nv` prints it: exact below 100000, then K, M, G (powers of 1000).
pub fn count(n: u64) -> String {
    const UNITS: [&str; 4] = ["", "K", "M", "G"];
    let mut value = n;
    let mut unit = 0;
    while value >= 100_000 && unit + 1 < UNITS.len() {
        value /= 1000;
        unit += 1;
    }
    format!("{value}{}", UNITS[unit])
}

/// A duration in seconds as `1h2m3s`.
pub fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}

fn port_name(id: u32) -> String {
    format!("port{id}")
}

/// `show`: the networks with their interfaces (as `brctl show`), then the ports and uplinks.
pub fn show(v: &ShowView) -> String {
    let mut nets = Table::new(&["network", "mode", "address", "details", "interfaces"]);
    for n in &v.networks {
        let (address, details) = match n.mode.as_str() {
            "nat" => {
                let mut d = vec![format!("egress {}", n.egress.as_deref().unwrap_or("-"))];
                if !n.dhcp_ranges.is_empty() {
                    d.push(format!("dhcp {}", n.dhcp_ranges.join(",")));
                }
                if n.gateway_running == Some(false) {
                    d.push("gateway not running".to_string());
                }
                (n.gateway.clone().unwrap_or_default(), d.join(", "))
            }
            "bridge" => (String::new(), n.uplink.clone().unwrap_or_default()),
            _ => (String::new(), String::new()),
        };
        let mut interfaces: Vec<String> = n
            .ports
            .iter()
            .filter_map(|id| v.ports.iter().find(|p| p.id == *id))
            .map(|p| format!("{} ({})", port_name(p.id), p.link.name()))
            .collect();
        let uplinks = v.uplinks.iter().filter(|u| u.network == n.name);
        interfaces.extend(
            uplinks.map(|u| format!("{} ({})", u.interface, if u.up { "up" } else { "down" })),
        );
        let mut first = vec![n.name.clone(), n.mode.clone(), address, details];
        first.push(interfaces.first().cloned().unwrap_or_default());
        nets.row(first);
        for i in interfaces.iter().skip(1) {
            nets.row(vec![
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                i.clone(),
            ]);
        }
    }
    let mut out = nets.render();
    if !v.ports.is_empty() {
        out.push('\n');
        out.push_str(&ports(&v.ports));
    }
    if !v.uplinks.is_empty() {
        out.push('\n');
        let mut t = Table::new(&[
            "uplink",
            "port",
            "network",
            "kind",
            "link",
            "mtu",
            "mac",
            "rx frames",
            "tx frames",
            "drops",
            "recoveries",
        ]);
        for u in &v.uplinks {
            let kind = match &u.bridge {
                Some(b) => format!("{} in {b}", u.kind),
                None => u.kind.clone(),
            };
            t.row(vec![
                u.interface.clone(),
                port_name(u.port),
                u.network.clone(),
                kind,
                (if u.up { "up" } else { "down" }).to_string(),
                u.mtu.map_or_else(|| "-".to_string(), |m| m.to_string()),
                u.mac.clone().unwrap_or_else(|| "-".to_string()),
                count(u.rx_frames),
                count(u.tx_frames),
                count(u.drops),
                u.recoveries.to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

fn ports(ports: &[PortView]) -> String {
    let mut t = Table::new(&[
        "port",
        "network",
        "link",
        "mac",
        "queues",
        "mtu",
        "vlan",
        "rx frames",
        "rx bytes",
        "tx frames",
        "tx bytes",
        "drops",
        "socket",
    ]);
    for p in ports {
        t.row(vec![
            port_name(p.id),
            p.network.clone(),
            p.link.name().to_string(),
            p.mac.clone(),
            p.queue_pairs.to_string(),
            p.mtu.to_string(),
            p.vlan.clone(),
            count(p.rx_frames),
            count(p.rx_bytes),
            count(p.tx_frames),
            count(p.tx_bytes),
            count(p.drops),
            format!("{} ({})", p.socket, p.role),
        ]);
    }
    t.render()
}

/// One added port.
pub fn port(p: &PortView) -> String {
    ports(std::slice::from_ref(p))
}

/// `fdb` (as `brctl showmacs`).
pub fn fdb(v: &FdbView) -> String {
    let mut t = Table::new(&["network", "vlan", "mac", "port", "type", "ageing timer"]);
    for e in &v.entries {
        t.row(vec![
            e.network.clone(),
            e.vlan.map_or_else(|| "-".to_string(), |v| v.to_string()),
            e.mac.clone(),
            port_name(e.port),
            (if e.is_static { "static" } else { "learned" }).to_string(),
            e.age_ms.map_or_else(String::new, |ms| {
                format!("{}.{:02}", ms / 1000, ms % 1000 / 10)
            }),
        ]);
    }
    t.render()
}

/// The drop reasons that counted anything, or `none`.
fn counted(drops: &[(String, u64)]) -> String {
    let counted: Vec<String> = drops
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    if counted.is_empty() {
        "none".to_string()
    } else {
        counted.join(", ")
    }
}

/// `stats`: counters, and the drop reasons that counted anything.
pub fn stats(v: &StatsView) -> String {
    let mut out = String::new();
    for p in &v.ports {
        let _ = writeln!(out, "{} {}", port_name(p.id), p.socket);
        let _ = writeln!(
            out,
            "  from guest {} frames {} bytes, to guest {} frames {} bytes, fdb limit hits {}",
            p.rx_frames, p.rx_bytes, p.tx_frames, p.tx_bytes, p.fdb_limit_hits
        );
        for (what, drops) in [("switch", &p.switch_drops), ("device", &p.device_drops)] {
            let _ = writeln!(out, "  {what} drops: {}", counted(drops));
        }
    }
    for u in &v.uplinks {
        let _ = writeln!(
            out,
            "uplink {} {} (network {})",
            u.interface,
            port_name(u.port),
            u.network
        );
        let _ = writeln!(
            out,
            "  from LAN {} frames {} bytes, to LAN {} frames {} bytes, recoveries {}",
            u.rx_frames, u.rx_bytes, u.tx_frames, u.tx_bytes, u.recoveries
        );
        for (what, drops) in [("switch", &u.switch_drops), ("uplink", &u.uplink_drops)] {
            let _ = writeln!(out, "  {what} drops: {}", counted(drops));
        }
    }
    if v.unknown_port_drops > 0 {
        let _ = writeln!(out, "frames from removed ports: {}", v.unknown_port_drops);
    }
    out
}

/// `queues`: a line per vring, the device's positions next to the ring's indices in guest
/// memory (`-` while the ring is not ready).
pub fn queues(v: &QueuesView) -> String {
    let mut t = Table::new(&[
        "port",
        "queue",
        "state",
        "size",
        "fds",
        "event_idx",
        "avail.idx",
        "avail_seen",
        "next_avail",
        "next_used",
        "used.idx",
        "signalled",
        "used_event",
        "avail_event",
        "flags",
    ]);
    for p in &v.ports {
        for q in &p.queues {
            let s = &q.state;
            let guest = |field: fn(&GuestRing) -> u16| {
                s.guest
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |g| field(g).to_string())
            };
            t.row(vec![
                port_name(p.id),
                format!("{} {}", q.index, q.kind),
                queue_state(s).to_string(),
                s.size.to_string(),
                queue_fds(s),
                (if s.event_idx { "yes" } else { "no" }).to_string(),
                guest(|g| g.avail_idx),
                s.avail_seen.to_string(),
                s.next_avail.to_string(),
                s.next_used.to_string(),
                guest(|g| g.used_idx),
                s.signalled_used.to_string(),
                guest(|g| g.used_event),
                guest(|g| g.avail_event),
                s.guest.as_ref().map_or_else(|| "-".to_string(), ring_flags),
            ]);
        }
    }
    t.render()
}

/// A vring's state in a word.
fn queue_state(s: &QueueState) -> &'static str {
    match (s.running, s.started, s.enabled) {
        (true, _, _) => "running",
        (false, false, _) => "stopped",
        (false, true, false) => "disabled",
        (false, true, true) => "not ready",
    }
}

/// `items` separated by commas, or `-`.
fn listed(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(",")
    }
}

/// The eventfds a vring has: `kick,call`, one of them, or `-`.
fn queue_fds(s: &QueueState) -> String {
    let fds: Vec<String> = [(s.kick_fd, "kick"), (s.call_fd, "call")]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| name.to_string())
        .collect();
    listed(&fds)
}

/// The ring flags that are set, by name (`no_interrupt`: the driver wants no calls;
/// `no_notify`: the device wants no kicks), other bits in hex, or `-`.
fn ring_flags(g: &GuestRing) -> String {
    let mut set = Vec::new();
    for (part, flags, known, name) in [
        (
            "avail",
            g.avail_flags,
            VRING_AVAIL_F_NO_INTERRUPT,
            "no_interrupt",
        ),
        ("used", g.used_flags, VRING_USED_F_NO_NOTIFY, "no_notify"),
    ] {
        let known = known as u16;
        if flags & known != 0 {
            set.push(name.to_string());
        }
        if flags & !known != 0 {
            set.push(format!("{part} {:#x}", flags & !known));
        }
    }
    listed(&set)
}

/// `nat-stats`: per NAT network, its gateway port's counters, the gateway's and the egress's.
pub fn nat_stats(networks: &[NatStatsView]) -> String {
    let mut out = String::new();
    for n in networks {
        let kind = match n.egress {
            EgressStats::User(_) => "user",
            EgressStats::Kernel(_) => "kernel",
        };
        let _ = writeln!(
            out,
            "network {} (egress {kind}, gateway {})",
            n.network,
            port_name(n.port)
        );
        let _ = writeln!(
            out,
            "  from guests {} frames {} bytes, to guests {} frames {} bytes, queue full {}",
            n.from_guests_frames,
            n.from_guests_bytes,
            n.to_guests_frames,
            n.to_guests_bytes,
            n.queue_full
        );
        let _ = writeln!(out, "  switch drops: {}", counted(&n.switch_drops));
        let g = &n.gateway;
        let _ = writeln!(
            out,
            "  gateway: dropped {}, dns send failed {}, unresolved {}",
            g.dropped, g.dns_send_failed, g.unresolved
        );
        match &n.egress {
            EgressStats::User(u) => {
                let (t, d, i) = (&u.tcp, &u.udp, &u.icmp);
                let _ = writeln!(
                    out,
                    "  tcp: opened {}, refused {}, connect failed {}, reset {}",
                    t.opened, t.refused, t.connect_failed, t.reset
                );
                let _ = writeln!(out, "  udp: opened {}, dropped {}", d.opened, d.dropped);
                let _ = writeln!(out, "  icmp: opened {}, dropped {}", i.opened, i.dropped);
                let _ = writeln!(
                    out,
                    "  refused: conntrack full {}, unsupported protocol {}",
                    u.conntrack_full, u.unsupported
                );
            }
            EgressStats::Kernel(k) => {
                let _ = writeln!(
                    out,
                    "  tap: tx errors {}, rx bad header {}, rx unsent {}",
                    k.tx_errors, k.rx_bad_header, k.rx_unsent
                );
            }
        }
    }
    out
}

/// `leases` (dnsmasq's leases, with the time left), `now` in Unix seconds.
pub fn leases(leases: &[LeaseInfo], now: i64) -> String {
    let mut t = Table::new(&["network", "ip", "mac", "hostname", "expires in"]);
    for l in leases {
        t.row(vec![
            l.network.clone(),
            l.ip.clone(),
            l.mac.clone(),
            l.hostname.clone().unwrap_or_else(|| "*".to_string()),
            duration(u64::try_from(l.expires - now).unwrap_or(0)),
        ]);
    }
    t.render()
}

/// `conntrack` (as `conntrack -L`).
pub fn conntrack(flows: &[FlowInfo]) -> String {
    let mut t = Table::new(&[
        "network",
        "proto",
        "state",
        "expires",
        "src",
        "dst",
        "reply src",
        "reply dst",
        "packets",
        "bytes",
        "verdict",
    ]);
    for f in flows {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), count);
        t.row(vec![
            f.network.clone(),
            f.protocol.clone(),
            f.state.clone(),
            duration(f.expires_in),
            f.src.clone(),
            f.dst.clone(),
            f.reply_src.clone(),
            f.reply_dst.clone(),
            opt(f.packets),
            opt(f.bytes),
            f.verdict.clone().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    t.render()
}

/// `policy list` (as `iptables -L -nv`: a chain head per policy, then its rules).
pub fn policies(policies: &[PolicyInfo]) -> String {
    let mut out = String::new();
    for p in policies {
        let chain = p
            .network
            .as_ref()
            .map_or_else(|| "operator chain".to_string(), |n| format!("network {n}"));
        let faults = match (p.faults, p.fail_mode_frames) {
            (0, 0) => String::new(),
            (f, n) => format!(", {f} faults, {} fail-mode frames", count(n)),
        };
        let _ = writeln!(
            out,
            "Policy {} ({chain}, fail {}, {}, {} packets, {} bytes{faults}) {}",
            p.name,
            p.fail_mode,
            p.state,
            count(p.packets),
            count(p.bytes),
            p.module
        );
        let mut t = Table::new(&["pkts", "bytes", "rule", "description"]);
        for r in &p.rules {
            t.row(vec![
                count(r.packets),
                count(r.bytes),
                r.id.to_string(),
                r.description.clone(),
            ]);
        }
        for line in t.render().lines() {
            let _ = writeln!(out, " {line}");
        }
        out.push('\n');
    }
    out
}

/// `forward list`.
pub fn forwards(forwards: &[ForwardInfo]) -> String {
    let mut t = Table::new(&["network", "proto", "listen", "guest"]);
    for f in forwards {
        t.row(vec![
            f.network.clone(),
            f.protocol.clone(),
            f.listen.clone(),
            f.guest.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{Link, NetworkView, RuleInfo};

    #[test]
    fn counts_and_durations() {
        assert_eq!(count(99_999), "99999");
        assert_eq!(count(178_000), "178K");
        assert_eq!(count(195_000_000), "195M");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3599), "59m59s");
        assert_eq!(duration(3661), "1h01m01s");
    }

    #[test]
    fn show_lists_interfaces_under_their_network() {
        let port = |id, link| PortView {
            id,
            socket: format!("/run/vm{id}.sock"),
            role: "listen".into(),
            network: "default".into(),
            mac: format!("52:54:00:00:00:0{id}"),
            queue_pairs: 1,
            mtu: 1500,
            vlan: "-".into(),
            link,
            rx_frames: 10,
            rx_bytes: 1000,
            tx_frames: 20,
            tx_bytes: 2000,
            drops: 0,
        };
        let v = ShowView {
            networks: vec![NetworkView {
                name: "default".into(),
                mode: "nat".into(),
                gateway: Some("192.168.122.1/24".into()),
                gateway_running: Some(true),
                dhcp_ranges: vec!["192.168.122.2-192.168.122.254".into()],
                egress: Some("user".into()),
                uplink: None,
                vlan_filtering: false,
                learned: 2,
                statics: 0,
                mac_moves: 0,
                fdb_limit_hits: 0,
                ports: vec![0, 1],
            }],
            ports: vec![port(0, Link::Up), port(1, Link::Down)],
            uplinks: Vec::new(),
        };
        let text = show(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "network  mode  address           details                                          interfaces",
                "default  nat   192.168.122.1/24  egress user, dhcp 192.168.122.2-192.168.122.254  port0 (up)",
                "                                                                                  port1 (down)",
            ]
        );
        assert!(lines[4].starts_with("port   network  link"), "{text}");
        assert!(
            lines[5].starts_with("port0  default  up    52:54:00:00:00:00"),
            "{text}"
        );
    }

    #[test]
    fn queues_line_up_the_device_and_the_guest_ring() {
        use crate::control::protocol::{PortQueuesView, QueueView};
        let running = QueueState {
            running: true,
            started: true,
            enabled: true,
            size: 256,
            event_idx: true,
            next_avail: 1034,
            next_used: 1034,
            signalled_used: 1034,
            avail_seen: 1040,
            kick_fd: true,
            call_fd: true,
            guest: Some(GuestRing {
                avail_idx: 1040,
                avail_flags: 0,
                used_event: 1033,
                used_idx: 1034,
                used_flags: VRING_USED_F_NO_NOTIFY as u16 | 4,
                avail_event: 1034,
            }),
        };
        let stopped = QueueState {
            size: 1024,
            ..QueueState::default()
        };
        let v = QueuesView {
            ports: vec![PortQueuesView {
                id: 1,
                socket: "/run/vm0.sock".into(),
                queues: vec![
                    QueueView {
                        index: 0,
                        kind: "rx".into(),
                        state: stopped,
                    },
                    QueueView {
                        index: 1,
                        kind: "tx".into(),
                        state: running,
                    },
                ],
            }],
        };
        assert_eq!(
            queues(&v),
            "port   queue  state    size  fds        event_idx  avail.idx  avail_seen  next_avail  next_used  used.idx  signalled  used_event  avail_event  flags\n\
             port1  0 rx   stopped  1024  -          no         -          0           0           0          -         0          -           -            -\n\
             port1  1 tx   running  256   kick,call  yes        1040       1040        1034        1034       1034      1034       1033        1034         no_notify,used 0x4\n"
        );
    }

    #[test]
    fn nat_stats_show_the_gateway_and_the_egress_in_use() {
        use crate::control::protocol::{EgressStats, GatewayPortStats};
        use crate::nat::kernel::KernelSideStats;
        use crate::nat::user::UserEgressStats;
        let mut user = UserEgressStats::default();
        user.tcp.opened = 2;
        user.tcp.connect_failed = 1;
        user.udp.opened = 1;
        user.icmp.dropped = 3;
        user.unsupported = 1;
        let default = NatStatsView {
            network: "default".into(),
            port: 0,
            from_guests_frames: 40,
            from_guests_bytes: 4000,
            to_guests_frames: 30,
            to_guests_bytes: 3500,
            queue_full: 0,
            switch_drops: vec![("hairpin".into(), 0), ("policy_drop".into(), 2)],
            gateway: GatewayPortStats {
                dropped: 1,
                dns_send_failed: 0,
                unresolved: 4,
            },
            egress: EgressStats::User(user),
        };
        let kernel = NatStatsView {
            network: "wan".into(),
            port: 3,
            switch_drops: vec![("hairpin".into(), 0)],
            queue_full: 7,
            egress: EgressStats::Kernel(KernelSideStats {
                tx_errors: 1,
                rx_bad_header: 0,
                rx_unsent: 9,
            }),
            ..default.clone()
        };
        assert_eq!(
            nat_stats(&[default, kernel]),
            "network default (egress user, gateway port0)\n\
             \x20 from guests 40 frames 4000 bytes, to guests 30 frames 3500 bytes, queue full 0\n\
             \x20 switch drops: policy_drop 2\n\
             \x20 gateway: dropped 1, dns send failed 0, unresolved 4\n\
             \x20 tcp: opened 2, refused 0, connect failed 1, reset 0\n\
             \x20 udp: opened 1, dropped 0\n\
             \x20 icmp: opened 0, dropped 3\n\
             \x20 refused: conntrack full 0, unsupported protocol 1\n\
             network wan (egress kernel, gateway port3)\n\
             \x20 from guests 40 frames 4000 bytes, to guests 30 frames 3500 bytes, queue full 7\n\
             \x20 switch drops: none\n\
             \x20 gateway: dropped 1, dns send failed 0, unresolved 4\n\
             \x20 tap: tx errors 1, rx bad header 0, rx unsent 9\n"
        );
    }

    #[test]
    fn policies_look_like_iptables() {
        let p = PolicyInfo {
            name: "no-smtp".into(),
            network: None,
            module: "/etc/p/no_smtp.wasm".into(),
            fail_mode: "closed".into(),
            state: "active".into(),
            packets: 16924,
            bytes: 2_759_000,
            faults: 0,
            fail_mode_frames: 0,
            rules: vec![RuleInfo {
                id: 1,
                description: "DROP tcp dpt:25".into(),
                packets: 421,
                bytes: 31847,
            }],
        };
        assert_eq!(
            policies(std::slice::from_ref(&p)),
            "Policy no-smtp (operator chain, fail closed, active, 16924 packets, 2759K bytes) /etc/p/no_smtp.wasm\n \
             pkts  bytes  rule  description\n \
             421   31847  1     DROP tcp dpt:25\n\n"
        );
        let faulty = PolicyInfo {
            faults: 5,
            fail_mode_frames: 12,
            rules: Vec::new(),
            ..p
        };
        let text = policies(&[faulty]);
        assert!(
            text.starts_with("Policy no-smtp (operator chain, fail closed, active, 16924 packets, 2759K bytes, 5 faults, 12 fail-mode frames) "),
            "{text}"
        );
    }
}
