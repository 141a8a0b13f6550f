//! The NAT networks behind the control API's views: their DHCP leases (`leases`), their
//! conntrack tables (`conntrack`), their port forwards (`forward list/add/remove`) and their
//! counters (`nat-stats`), as the daemon registers them in its
//! [`Hooks`](crate::control::hooks::Hooks).

use bridge_core::conntrack::{FlowInfo as CtFlow, Protocol, TcpState};
use bridge_core::time::Instant;

use super::network::{call_deadline, NatCounters, NatHandle};
use crate::cli::error_chain;
use crate::config::{ForwardConfig, MacAddr};
use crate::control::hooks::{Conntrack, Forwards, Leases, NatStats};
use crate::control::protocol::{FlowInfo, LeaseInfo, NatStatsView};
use crate::control::views::switch_drops;

/// The running NAT networks.
#[derive(Debug)]
pub struct NatViews {
    networks: Vec<NatHandle>,
}

impl NatViews {
    /// The views of `networks`.
    pub fn new(networks: Vec<NatHandle>) -> Self {
        NatViews { networks }
    }

    fn network(&self, name: &str) -> Result<&NatHandle, String> {
        self.networks
            .iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| format!("no NAT network is named {name:?}"))
    }
}

impl Leases for NatViews {
    fn leases(&self) -> Vec<LeaseInfo> {
        self.networks
            .iter()
            .flat_map(|n| {
                n.leases().into_iter().map(|l| LeaseInfo {
                    network: n.name().to_string(),
                    expires: l.expires,
                    mac: MacAddr(l.mac.0).to_string(),
                    ip: l.ip.to_string(),
                    hostname: l.hostname,
                })
            })
            .collect()
    }
}

impl Conntrack for NatViews {
    fn flows(&self) -> Vec<FlowInfo> {
        let now = Instant::now();
        self.networks
            .iter()
            .flat_map(|n| {
                let name = n.name();
                n.flows().into_iter().map(move |f| flow_info(name, now, &f))
            })
            .collect()
    }
}

impl Forwards for NatViews {
    fn list(&self) -> Vec<ForwardConfig> {
        self.networks
            .iter()
            .filter_map(|n| n.forwards().ok())
            .flatten()
            .collect()
    }

    fn add(&self, forward: ForwardConfig) -> Result<(), String> {
        let network = self.network(&forward.network)?;
        network.add_forward(forward).map_err(|e| error_chain(&e))
    }

    fn remove(&self, forward: &ForwardConfig) -> Result<(), String> {
        let network = self.network(&forward.network)?;
        network
            .remove_forward(forward.clone())
            .map_err(|e| error_chain(&e))
    }
}

impl NatStats for NatViews {
    fn stats(&self, network: Option<&str>) -> Result<Vec<NatStatsView>, String> {
        let networks = match network {
            Some(name) => vec![self.network(name)?],
            None => self.networks.iter().collect(),
        };
        counters(&networks).into_iter().map(|(_, r)| r).collect()
    }

    fn each(&self) -> Vec<(String, Result<NatStatsView, String>)> {
        let networks: Vec<&NatHandle> = self.networks.iter().collect();
        counters(&networks)
            .into_iter()
            .map(|(name, r)| (name.to_string(), r))
            .collect()
    }
}

/// The counters of `networks`, asked of all their loops before any answer is awaited, with one
/// deadline: loops that do not answer hold the caller back once.
fn counters<'a>(networks: &[&'a NatHandle]) -> Vec<(&'a str, Result<NatStatsView, String>)> {
    let deadline = call_deadline();
    let asked: Vec<_> = networks.iter().map(|n| (n, n.ask_counters())).collect();
    asked
        .into_iter()
        .map(|(n, pending)| {
            let counters = pending.and_then(|p| p.wait(deadline));
            let view = counters
                .map(|c| nat_stats_view(n.name(), &c))
                .map_err(|e| format!("{}: {e}", n.name()));
            (n.name(), view)
        })
        .collect()
}

/// A network's counters as the control API shows them.
fn nat_stats_view(network: &str, c: &NatCounters) -> NatStatsView {
    NatStatsView {
        network: network.to_string(),
        port: c.port.0,
        from_guests_frames: c.switch.tx_frames,
        from_guests_bytes: c.switch.tx_bytes,
        to_guests_frames: c.switch.rx_frames,
        to_guests_bytes: c.switch.rx_bytes,
        queue_full: c.queue_full,
        switch_drops: switch_drops(&c.switch.drops),
        gateway: c.gateway,
        egress: c.egress,
    }
}

/// A flow as `conntrack -L` shows it. The `user` egress originates the host side from its own
/// sockets, so the reply direction is the original one reversed.
fn flow_info(network: &str, now: Instant, f: &CtFlow<u32>) -> FlowInfo {
    let t = &f.original;
    let endpoint = |e: &bridge_core::conntrack::Endpoint| format!("{}:{}", e.addr, e.port);
    let (protocol, state) = match (t.protocol, f.tcp) {
        (Protocol::Tcp, s) => ("tcp", s.map_or("NONE", tcp_state_name)),
        (Protocol::Udp, _) => ("udp", assurance(f)),
        (Protocol::Icmp, _) => ("icmp", assurance(f)),
    };
    let expires_in = if f.expires > now {
        (f.expires - now).secs()
    } else {
        0
    };
    FlowInfo {
        network: network.to_string(),
        protocol: protocol.into(),
        state: state.into(),
        expires_in,
        src: endpoint(&t.src),
        dst: endpoint(&t.dst),
        reply_src: endpoint(&t.dst),
        reply_dst: endpoint(&t.src),
        packets: None,
        bytes: None,
        verdict: f.verdict.map(|v| v.to_string()),
    }
}

fn assurance(f: &CtFlow<u32>) -> &'static str {
    if f.assured {
        "ASSURED"
    } else {
        "UNREPLIED"
    }
}

/// The state's name as Linux's conntrack prints it.
fn tcp_state_name(s: TcpState) -> &'static str {
    match s {
        TcpState::SynSent => "SYN_SENT",
        TcpState::SynRecv => "SYN_RECV",
        TcpState::Established => "ESTABLISHED",
        TcpState::FinWait => "FIN_WAIT",
        TcpState::CloseWait => "CLOSE_WAIT",
        TcpState::LastAck => "LAST_ACK",
        TcpState::TimeWait => "TIME_WAIT",
        TcpState::Close => "CLOSE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::network::CALL_TIMEOUT;

    #[test]
    fn networks_whose_loops_do_not_answer_are_errors_of_their_own_and_cost_one_wait() {
        let (stuck, _queue) = NatHandle::unserved("stuck");
        let (also_stuck, _also_queue) = NatHandle::unserved("also-stuck");
        let (gone, queue) = NatHandle::unserved("gone");
        drop(queue);
        let views = NatViews::new(vec![stuck, gone, also_stuck]);
        let started = std::time::Instant::now();
        let each = views.each();
        // Both stuck loops were asked before either was waited for.
        assert!(
            started.elapsed() < CALL_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
        let names: Vec<&str> = each.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["stuck", "gone", "also-stuck"]);
        for (name, result) in &each {
            let e = result.as_ref().unwrap_err();
            assert_eq!(
                e,
                &format!("{name}: the network's event loop does not answer")
            );
        }
        assert_eq!(
            views.stats(Some("gone")).unwrap_err(),
            "gone: the network's event loop does not answer"
        );
        assert_eq!(
            views.stats(Some("elsewhere")).unwrap_err(),
            "no NAT network is named \"elsewhere\""
        );
    }
}
