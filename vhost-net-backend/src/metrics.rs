//! The OpenMetrics endpoint (opt-in: `[metrics] listen = "127.0.0.1:9470"`): `GET /metrics`
//! answers the daemon's counters in the OpenMetrics text format, encoded by prometheus-client
//! from the live counters at each scrape. Served on its own event-manager loop.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `vnb_port_rx_frames_total`, `vnb_port_rx_bytes_total` | port, network | frames and bytes from the guest |
//! | `vnb_port_tx_frames_total`, `vnb_port_tx_bytes_total` | port, network | frames and bytes to the guest |
//! | `vnb_port_drops_total` | port, network, layer (switch, device), reason | drops by reason |
//! | `vnb_port_fdb_limit_hits_total` | port, network | new addresses not learned at a limit |
//! | `vnb_port_link` | port, network | 0 down, 1 connected, 2 up |
//! | `vnb_network_fdb_entries` | network, kind (learned, static) | FDB size |
//! | `vnb_network_mac_moves_total`, `vnb_network_fdb_limit_hits_total` | network | FDB events |
//! | `vnb_unknown_port_drops_total` | | frames from ports already gone |
//! | `vnb_policy_packets_total`, `vnb_policy_bytes_total` | policy, network | judged by a policy |
//! | `vnb_policy_rule_packets_total`, `vnb_policy_rule_bytes_total` | policy, rule | matched by a rule |
//! | `vnb_policy_quarantined` | policy | 1 while the fail mode judges |
//! | `vnb_policy_flows` | hook (port_in, nat_egress) | flows the hook's flow table tracks |
//! | `vnb_uplink_rx_frames_total`, `vnb_uplink_tx_frames_total`, `vnb_uplink_drops_total` | uplink, network | uplink counters |
//! | `vnb_nat_up` | network | 1 when the NAT network's event loop answered the scrape; 0 leaves out the families read there (all but `vnb_nat_flows`) |
//! | `vnb_nat_flows` | network | flows the network's conntrack table tracks (the `user` egress's) |
//! | `vnb_nat_from_guests_frames_total`, `..._bytes_total` | network | frames and bytes the switch delivered to the gateway |
//! | `vnb_nat_to_guests_frames_total`, `..._bytes_total` | network | frames and bytes the gateway sent into the network |
//! | `vnb_nat_queue_full_total` | network | frames for the gateway dropped at its full queue |
//! | `vnb_nat_switch_drops_total` | network, reason | drops on the gateway's switch port |
//! | `vnb_nat_gateway_drops_total`, `vnb_nat_gateway_dns_send_failed_total`, `vnb_nat_gateway_unresolved_total` | network | the gateway's own counters |
//! | `vnb_nat_user_flows_opened_total` | network, protocol (tcp, udp, icmp) | `user` egress: flows opened |
//! | `vnb_nat_user_tcp_refused_total`, `vnb_nat_user_tcp_connect_failed_total`, `vnb_nat_user_tcp_resets_total` | network | `user` egress: TCP flows refused, failed, reset |
//! | `vnb_nat_user_dropped_total` | network, protocol (udp, icmp) | `user` egress: datagrams and echo requests not sent |
//! | `vnb_nat_user_refused_total` | network, reason (conntrack_full, unsupported_protocol) | `user` egress: packets refused |
//! | `vnb_nat_tap_tx_errors_total`, `vnb_nat_tap_rx_bad_header_total`, `vnb_nat_tap_rx_unsent_total` | network | `kernel` egress: the TAP |
//! | `vnb_captures_active` | | whether a capture runs |
//!
//! The NAT networks' counters are those of `nat-stats`, asked of each network's event loop at
//! the scrape (all at once, waited for at most 5 s in all); a network whose loop does not answer
//! is logged (rate-limited) and only its `vnb_nat_up` 0 is served of them. The flow gauges are
//! read from the tables themselves (`Conntrack::len`, flows not yet swept included).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use bridge_core::conntrack::Conntrack;
use bridge_core::policy::HookPoint;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::control::protocol::{EgressStats, NatStatsView};
use crate::daemon::Daemon;
use crate::event_loop::{self, LoopThread};
use crate::nat::rate_log::RateLimited;
use crate::port::Link;

/// Longest request head read.
const MAX_REQUEST: usize = 8192;

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] io::Error),
    /// The stop eventfd or the thread could not be made.
    #[error("cannot start the metrics loop")]
    Resource(#[source] io::Error),
}

/// A running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    _serving: LoopThread,
}

impl Server {
    /// Serves `daemon`'s metrics on `addr`.
    pub fn start(daemon: Arc<Daemon>, addr: SocketAddr) -> Result<Server, MetricsError> {
        let listener = TcpListener::bind(addr).map_err(|e| MetricsError::Bind(addr, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| MetricsError::Bind(addr, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| MetricsError::Bind(addr, e))?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(DaemonCollector {
            daemon,
            log: Mutex::default(),
        }));
        let endpoint = Endpoint {
            listener,
            registry,
            conns: HashMap::new(),
        };
        let serving =
            LoopThread::spawn("metrics", Box::new(endpoint)).map_err(MetricsError::Resource)?;
        info!(%addr, "metrics endpoint");
        Ok(Server {
            addr,
            _serving: serving,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The policy plane's hooks, with their `hook` label.
const HOOKS: [(HookPoint, &str); 2] = [
    (HookPoint::PortIn, "port_in"),
    (HookPoint::NatEgress, "nat_egress"),
];

/// The daemon's counters, read at each scrape.
#[derive(Debug)]
struct DaemonCollector {
    daemon: Arc<Daemon>,
    /// NAT networks that did not answer.
    log: Mutex<RateLimited>,
}

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family with one sample per `(labels, value)`.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, M)],
) -> Result<(), std::fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, samples[0].1.metric_type())?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

/// A gauge of the flows `table` tracks.
fn flows<V: Copy>(table: &Conntrack<V>) -> ConstGauge<i64> {
    gauge(i64::try_from(table.len()).unwrap_or(i64::MAX))
}

impl Collector for DaemonCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let daemon = &self.daemon;
        let mut rx_frames = Vec::new();
        let mut rx_bytes = Vec::new();
        let mut tx_frames = Vec::new();
        let mut tx_bytes = Vec::new();
        let mut drops = Vec::new();
        let mut limit_hits = Vec::new();
        let mut links = Vec::new();
        for id in daemon.ports() {
            let Some(r) = daemon.port_report(id) else {
                continue;
            };
            let labels: Labels = vec![
                ("port", format!("port{}", id.0)),
                ("network", r.config.network.clone()),
            ];
            rx_frames.push((labels.clone(), counter(r.switch.rx_frames)));
            rx_bytes.push((labels.clone(), counter(r.switch.rx_bytes)));
            tx_frames.push((labels.clone(), counter(r.switch.tx_frames)));
            tx_bytes.push((labels.clone(), counter(r.switch.tx_bytes)));
            limit_hits.push((labels.clone(), counter(r.switch.fdb_limit_hits)));
            let link = match r.link {
                Link::Down => 0,
                Link::Connected => 1,
                Link::Up => 2,
            };
            links.push((labels.clone(), gauge(link)));
            let switch = r.switch.drops.iter().map(|(d, n)| ("switch", d.name(), n));
            let device = r.device.iter().map(|(d, n)| ("device", d.name(), n));
            for (layer, reason, n) in switch.chain(device) {
                let mut l = labels.clone();
                l.push(("layer", layer.to_string()));
                l.push(("reason", reason.to_string()));
                drops.push((l, counter(n)));
            }
        }
        family(
            &mut e,
            "vnb_port_rx_frames",
            "Frames from the guest.",
            &rx_frames,
        )?;
        family(
            &mut e,
            "vnb_port_rx_bytes",
            "Bytes from the guest.",
            &rx_bytes,
        )?;
        family(
            &mut e,
            "vnb_port_tx_frames",
            "Frames to the guest.",
            &tx_frames,
        )?;
        family(
            &mut e,
            "vnb_port_tx_bytes",
            "Bytes to the guest.",
            &tx_bytes,
        )?;
        family(
            &mut e,
            "vnb_port_drops",
            "Frames dropped, by layer and reason.",
            &drops,
        )?;
        let help = "New source addresses not learned because of an FDB limit.";
        family(&mut e, "vnb_port_fdb_limit_hits", help, &limit_hits)?;
        let help = "Link state: 0 down, 1 connected, 2 up.";
        family(&mut e, "vnb_port_link", help, &links)?;

        let mut entries = Vec::new();
        let mut moves = Vec::new();
        let mut net_hits = Vec::new();
        let infos = daemon.switch().networks();
        for n in &daemon.config().networks {
            let Some(info) = daemon
                .network_id(&n.name)
                .and_then(|id| infos.iter().find(|i| i.id == id))
            else {
                continue;
            };
            let labels: Labels = vec![("network", n.name.clone())];
            for (kind, count) in [
                ("learned", info.stats.learned),
                ("static", info.stats.statics),
            ] {
                let mut l = labels.clone();
                l.push(("kind", kind.to_string()));
                entries.push((l, gauge(i64::from(count))));
            }
            moves.push((labels.clone(), counter(info.stats.mac_moves)));
            net_hits.push((labels, counter(info.stats.fdb_limit_hits)));
        }
        family(&mut e, "vnb_network_fdb_entries", "FDB entries.", &entries)?;
        let help = "Learned addresses that moved to another port.";
        family(&mut e, "vnb_network_mac_moves", help, &moves)?;
        let help = "New addresses not learned at the network's limit.";
        family(&mut e, "vnb_network_fdb_limit_hits", help, &net_hits)?;
        let unknown = [(Labels::new(), counter(daemon.switch().unknown_port_drops()))];
        let help = "Frames from ports that were gone.";
        family(&mut e, "vnb_unknown_port_drops", help, &unknown)?;

        if let Some(policies) = daemon.hooks().policies() {
            let mut packets = Vec::new();
            let mut bytes = Vec::new();
            let mut rule_packets = Vec::new();
            let mut rule_bytes = Vec::new();
            let mut quarantined = Vec::new();
            for p in policies.list() {
                let labels: Labels = vec![
                    ("policy", p.name.clone()),
                    ("network", p.network.clone().unwrap_or_default()),
                ];
                packets.push((labels.clone(), counter(p.packets)));
                bytes.push((labels.clone(), counter(p.bytes)));
                let q = i64::from(p.state == "quarantined");
                quarantined.push((vec![("policy", p.name.clone())], gauge(q)));
                for r in &p.rules {
                    let l: Labels = vec![("policy", p.name.clone()), ("rule", r.id.to_string())];
                    rule_packets.push((l.clone(), counter(r.packets)));
                    rule_bytes.push((l, counter(r.bytes)));
                }
            }
            family(&mut e, "vnb_policy_packets", "Packets judged.", &packets)?;
            family(&mut e, "vnb_policy_bytes", "Bytes judged.", &bytes)?;
            family(
                &mut e,
                "vnb_policy_rule_packets",
                "Packets a rule matched.",
                &rule_packets,
            )?;
            family(
                &mut e,
                "vnb_policy_rule_bytes",
                "Bytes a rule matched.",
                &rule_bytes,
            )?;
            let help = "1 while the policy's fail mode judges.";
            family(&mut e, "vnb_policy_quarantined", help, &quarantined)?;
        }
        if let Some(plane) = daemon.policy_plane() {
            let tracked = HOOKS.map(|(hook, name)| {
                let l: Labels = vec![("hook", name.to_string())];
                (l, flows(plane.flows(hook)))
            });
            let help = "Flows the hook's flow table tracks.";
            family(&mut e, "vnb_policy_flows", help, &tracked)?;
        }
        if let Some(uplinks) = daemon.hooks().uplinks() {
            let mut rx = Vec::new();
            let mut tx = Vec::new();
            let mut dropped = Vec::new();
            for u in uplinks.uplinks() {
                let l: Labels = vec![("uplink", u.interface.clone()), ("network", u.network)];
                rx.push((l.clone(), counter(u.rx_frames)));
                tx.push((l.clone(), counter(u.tx_frames)));
                dropped.push((l, counter(u.drops)));
            }
            family(&mut e, "vnb_uplink_rx_frames", "Frames from the LAN.", &rx)?;
            family(&mut e, "vnb_uplink_tx_frames", "Frames to the LAN.", &tx)?;
            family(&mut e, "vnb_uplink_drops", "Frames dropped.", &dropped)?;
        }
        if let Some(nat) = daemon.hooks().nat_stats() {
            let networks = nat.each();
            for (_, result) in &networks {
                if let Err(error) = result {
                    let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                    log.warn(bridge_core::time::Instant::now(), || {
                        format!("metrics: NAT counters left out: {error}")
                    });
                }
            }
            nat_families(&mut e, &networks)?;
        }
        let nat_flows: Vec<_> = daemon
            .nat_networks()
            .iter()
            .map(|n| {
                let l: Labels = vec![("network", n.handle().name().to_string())];
                (l, flows(n.handle().conntrack()))
            })
            .collect();
        let help = "Flows the NAT network's conntrack table tracks.";
        family(&mut e, "vnb_nat_flows", help, &nat_flows)?;
        let active = [(
            Labels::new(),
            gauge(i64::from(daemon.captures().is_active())),
        )];
        family(
            &mut e,
            "vnb_captures_active",
            "Whether a capture runs.",
            &active,
        )
    }
}

/// The NAT networks' counter families (name, help), in the order served.
const NAT_FAMILIES: [(&str, &str); 18] = [
    (
        "vnb_nat_from_guests_frames",
        "Frames the switch delivered to the gateway.",
    ),
    (
        "vnb_nat_from_guests_bytes",
        "Bytes the switch delivered to the gateway.",
    ),
    (
        "vnb_nat_to_guests_frames",
        "Frames the gateway sent into the network.",
    ),
    (
        "vnb_nat_to_guests_bytes",
        "Bytes the gateway sent into the network.",
    ),
    (
        "vnb_nat_queue_full",
        "Frames for the gateway dropped because its queue was full.",
    ),
    (
        "vnb_nat_switch_drops",
        "Frames dropped on the gateway's switch port, by reason.",
    ),
    (
        "vnb_nat_gateway_drops",
        "Guests' frames the gateway dropped.",
    ),
    (
        "vnb_nat_gateway_dns_send_failed",
        "DNS queries not sent upstream.",
    ),
    (
        "vnb_nat_gateway_unresolved",
        "Frames to guests whose MAC the gateway did not know.",
    ),
    (
        "vnb_nat_user_flows_opened",
        "Flows the user egress opened, by protocol.",
    ),
    (
        "vnb_nat_user_tcp_refused",
        "Guests' TCP SYNs the user egress refused.",
    ),
    (
        "vnb_nat_user_tcp_connect_failed",
        "Host TCP connections that failed.",
    ),
    ("vnb_nat_user_tcp_resets", "TCP flows ended by a reset."),
    (
        "vnb_nat_user_dropped",
        "Guests' datagrams and echo requests not sent, by protocol.",
    ),
    (
        "vnb_nat_user_refused",
        "Guests' packets the user egress refused, by reason.",
    ),
    (
        "vnb_nat_tap_tx_errors",
        "Guests' frames the kernel egress's TAP refused.",
    ),
    (
        "vnb_nat_tap_rx_bad_header",
        "Frames from the TAP with a virtio-net header not taken.",
    ),
    (
        "vnb_nat_tap_rx_unsent",
        "Frames from the TAP not sent to guests.",
    ),
];

/// A NAT network's sample: its family (of [`NAT_FAMILIES`]), its label besides `network`, its
/// value.
type NatSample<'a> = (&'static str, Option<(&'static str, &'a str)>, u64);

/// A NAT network's samples.
fn nat_samples(n: &NatStatsView) -> Vec<NatSample<'_>> {
    let mut out = vec![
        ("vnb_nat_from_guests_frames", None, n.from_guests_frames),
        ("vnb_nat_from_guests_bytes", None, n.from_guests_bytes),
        ("vnb_nat_to_guests_frames", None, n.to_guests_frames),
        ("vnb_nat_to_guests_bytes", None, n.to_guests_bytes),
        ("vnb_nat_queue_full", None, n.queue_full),
    ];
    for (reason, v) in &n.switch_drops {
        out.push((
            "vnb_nat_switch_drops",
            Some(("reason", reason.as_str())),
            *v,
        ));
    }
    let g = &n.gateway;
    out.extend([
        ("vnb_nat_gateway_drops", None, g.dropped),
        ("vnb_nat_gateway_dns_send_failed", None, g.dns_send_failed),
        ("vnb_nat_gateway_unresolved", None, g.unresolved),
    ]);
    match &n.egress {
        EgressStats::User(u) => {
            let opened = "vnb_nat_user_flows_opened";
            let dropped = "vnb_nat_user_dropped";
            let refused = "vnb_nat_user_refused";
            out.extend([
                (opened, Some(("protocol", "tcp")), u.tcp.opened),
                (opened, Some(("protocol", "udp")), u.udp.opened),
                (opened, Some(("protocol", "icmp")), u.icmp.opened),
                ("vnb_nat_user_tcp_refused", None, u.tcp.refused),
                (
                    "vnb_nat_user_tcp_connect_failed",
                    None,
                    u.tcp.connect_failed,
                ),
                ("vnb_nat_user_tcp_resets", None, u.tcp.reset),
                (dropped, Some(("protocol", "udp")), u.udp.dropped),
                (dropped, Some(("protocol", "icmp")), u.icmp.dropped),
                (
                    refused,
                    Some(("reason", "conntrack_full")),
                    u.conntrack_full,
                ),
                (
                    refused,
                    Some(("reason", "unsupported_protocol")),
                    u.unsupported,
                ),
            ]);
        }
        EgressStats::Kernel(k) => out.extend([
            ("vnb_nat_tap_tx_errors", None, k.tx_errors),
            ("vnb_nat_tap_rx_bad_header", None, k.rx_bad_header),
            ("vnb_nat_tap_rx_unsent", None, k.rx_unsent),
        ]),
    }
    out
}

/// The NAT networks' families from their `nat-stats` views; a network without its view (its
/// loop did not answer) has only `vnb_nat_up` 0.
fn nat_families(
    e: &mut DescriptorEncoder,
    networks: &[(String, Result<NatStatsView, String>)],
) -> Result<(), std::fmt::Error> {
    let mut up = Vec::new();
    let mut samples = Vec::new();
    for (name, result) in networks {
        let labels: Labels = vec![("network", name.clone())];
        up.push((labels.clone(), gauge(i64::from(result.is_ok()))));
        let Ok(n) = result else {
            continue;
        };
        for (family, label, v) in nat_samples(n) {
            let mut l = labels.clone();
            l.extend(label.map(|(k, value)| (k, value.to_string())));
            samples.push((family, l, v));
        }
    }
    let help = "1 when the NAT network's event loop answered the scrape.";
    family(e, "vnb_nat_up", help, &up)?;
    for (name, help) in NAT_FAMILIES {
        let these: Vec<_> = samples
            .iter()
            .filter(|(f, ..)| *f == name)
            .map(|(_, l, v)| (l.clone(), counter(*v)))
            .collect();
        family(e, name, help, &these)?;
    }
    Ok(())
}

/// A scrape in progress.
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    answered: bool,
}

/// The endpoint's subscriber: the listener and the scrapes in progress.
struct Endpoint {
    listener: TcpListener,
    registry: Registry,
    conns: HashMap<RawFd, Conn>,
}

impl Endpoint {
    /// The HTTP response to a request head.
    fn respond(&self, head: &[u8]) -> Vec<u8> {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let mut parts = line.split(|&b| b == b' ');
        let (method, path) = (parts.next(), parts.next());
        let (status, kind, body) = match (method, path) {
            (Some(b"GET"), Some(b"/metrics")) => {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                    Ok(()) => (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    ),
                    Err(_) => ("500 Internal Server Error", "text/plain", String::new()),
                }
            }
            (Some(b"GET"), _) => ("404 Not Found", "text/plain", "GET /metrics\n".into()),
            _ => ("405 Method Not Allowed", "text/plain", String::new()),
        };
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }

    /// Reads, answers once the request head is complete, writes. Returns whether to keep it.
    fn serve(&mut self, fd: RawFd) -> bool {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return false;
        };
        let eof = event_loop::read_available(&mut conn.stream, &mut conn.input, MAX_REQUEST);
        let head_end = conn.input.windows(4).position(|w| w == b"\r\n\r\n");
        if !conn.answered && (head_end.is_some() || eof || conn.input.len() >= MAX_REQUEST) {
            let head = std::mem::take(&mut conn.input);
            conn.answered = true;
            let response = self.respond(&head);
            let Some(conn) = self.conns.get_mut(&fd) else {
                return false;
            };
            conn.output = response;
        }
        let Some(conn) = self.conns.get_mut(&fd) else {
            return false;
        };
        let ok = event_loop::write_pending(&mut conn.stream, &mut conn.output);
        ok && !(conn.answered && conn.output.is_empty()) && (!eof || conn.answered)
    }
}

impl MutEventSubscriber for Endpoint {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            while let Ok((stream, _)) = self.listener.accept() {
                if stream.set_nonblocking(true).is_err()
                    || ops.add(Events::new(&stream, EventSet::IN)).is_err()
                {
                    continue;
                }
                let conn = Conn {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    answered: false,
                };
                self.conns.insert(conn.stream.as_raw_fd(), conn);
            }
            return;
        }
        if self.serve(fd) {
            if let Some(conn) = self.conns.get(&fd) {
                let wanted = if conn.output.is_empty() {
                    EventSet::IN
                } else {
                    EventSet::OUT
                };
                let _ = ops.modify(Events::new(&conn.stream, wanted));
            }
        } else if let Some(conn) = self.conns.remove(&fd) {
            let _ = ops.remove(Events::empty(&conn.stream));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            warn!(error = ?e, "the metrics socket cannot be watched");
        }
    }
}

/// Reads the whole response of `GET /metrics` from `addr` (for tests and the demo).
pub fn scrape(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::GatewayPortStats;
    use crate::nat::kernel::KernelSideStats;
    use crate::nat::user::UserEgressStats;

    /// NAT networks' views as a scrape finds them.
    #[derive(Debug)]
    struct Views(Vec<(String, Result<NatStatsView, String>)>);

    impl Collector for Views {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            nat_families(&mut e, &self.0)
        }
    }

    fn view(network: &str, egress: EgressStats) -> NatStatsView {
        NatStatsView {
            network: network.into(),
            port: 0,
            from_guests_frames: 40,
            from_guests_bytes: 4000,
            to_guests_frames: 30,
            to_guests_bytes: 3500,
            queue_full: 2,
            switch_drops: vec![("hairpin".into(), 0), ("policy_drop".into(), 5)],
            gateway: GatewayPortStats {
                dropped: 1,
                dns_send_failed: 0,
                unresolved: 4,
            },
            egress,
        }
    }

    #[test]
    fn nat_families_label_by_network_and_leave_out_a_network_that_did_not_answer() {
        let mut user = UserEgressStats::default();
        user.tcp.opened = 2;
        user.tcp.connect_failed = 1;
        user.udp.dropped = 3;
        user.unsupported = 7;
        let kernel = KernelSideStats {
            tx_errors: 0,
            rx_bad_header: 0,
            rx_unsent: 9,
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Views(vec![
            (
                "default".into(),
                Ok(view("default", EgressStats::User(user))),
            ),
            ("stuck".into(), Err("stuck: no answer".into())),
            ("wan".into(), Ok(view("wan", EgressStats::Kernel(kernel)))),
        ])));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# TYPE vnb_nat_up gauge",
            "vnb_nat_up{network=\"default\"} 1",
            "vnb_nat_up{network=\"wan\"} 1",
            "# TYPE vnb_nat_from_guests_frames counter",
            "# HELP vnb_nat_from_guests_frames Frames the switch delivered to the gateway.",
            "vnb_nat_from_guests_frames_total{network=\"default\"} 40",
            "vnb_nat_to_guests_bytes_total{network=\"wan\"} 3500",
            "vnb_nat_queue_full_total{network=\"default\"} 2",
            "vnb_nat_switch_drops_total{network=\"default\",reason=\"hairpin\"} 0",
            "vnb_nat_switch_drops_total{network=\"wan\",reason=\"policy_drop\"} 5",
            "vnb_nat_gateway_drops_total{network=\"default\"} 1",
            "vnb_nat_gateway_unresolved_total{network=\"wan\"} 4",
            "vnb_nat_user_flows_opened_total{network=\"default\",protocol=\"tcp\"} 2",
            "vnb_nat_user_flows_opened_total{network=\"default\",protocol=\"icmp\"} 0",
            "vnb_nat_user_tcp_connect_failed_total{network=\"default\"} 1",
            "vnb_nat_user_dropped_total{network=\"default\",protocol=\"udp\"} 3",
            "vnb_nat_user_refused_total{network=\"default\",reason=\"unsupported_protocol\"} 7",
            "vnb_nat_tap_rx_unsent_total{network=\"wan\"} 9",
            "# EOF",
        ] {
            assert!(lines.contains(&expected), "{expected} not in\n{text}");
        }
        // The network whose loop did not answer has only its `up` 0.
        let stuck: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("network=\"stuck\""))
            .collect();
        assert_eq!(stuck, ["vnb_nat_up{network=\"stuck\"} 0"]);
        // Each egress has only its own families, each declared once: besides `up`, the user
        // network's 20 samples (10 of the egress), the kernel network's 13 (3).
        let samples = |network: &str| {
            let label = format!("{{network=\"{network}\"");
            lines.iter().filter(|l| l.contains(&label)).count()
        };
        assert_eq!((samples("default"), samples("wan")), (1 + 20, 1 + 13));
        assert!(!lines
            .iter()
            .any(|l| l.starts_with("vnb_nat_tap_") && l.contains("\"default\"")));
        assert!(!lines
            .iter()
            .any(|l| l.starts_with("vnb_nat_user_") && l.contains("\"wan\"")));
        let types = lines.iter().filter(|l| l.starts_with("# TYPE vnb_nat_"));
        assert_eq!(types.count(), 1 + NAT_FAMILIES.len());
    }
}
