//! Where the daemon's lost frames went: its drop counters (device drops such as
//! `rx_no_buffers`, switch drops, policy drops, frames of removed ports) read through its
//! control socket with the daemon's own client, as `vhost-net-backend stats` reads them.
//! Readings at the window's start and after its drain give the window's drops by reason.

use std::path::Path;

use thiserror::Error;
use vhost_net_backend::control::client::{Client, ClientError};
use vhost_net_backend::control::protocol::{Request, StatsView};
use vhost_net_backend::control::render::count;

/// Errors reading the counters.
#[derive(Debug, Error)]
pub enum DropsError {
    /// The control socket did not answer the stats request.
    #[error("reading the daemon's counters at {0}")]
    Client(String, #[source] ClientError),
}

/// Drop counters by where and why: `port1 device rx_no_buffers`, `port0 switch policy_drop`,
/// `removed ports`; in the order the daemon reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drops(Vec<(String, u64)>);

impl Drops {
    /// The counters of the daemon whose control socket is `control`.
    pub fn read(control: &Path) -> Result<Drops, DropsError> {
        let stats: StatsView = Client::connect(control)
            .and_then(|mut c| c.get(&Request::Stats { port: None }))
            .map_err(|e| DropsError::Client(control.display().to_string(), e))?;
        Ok(Drops::of(&stats))
    }

    /// The drop counters of a stats view.
    pub fn of(stats: &StatsView) -> Drops {
        let mut out = Vec::new();
        for p in &stats.ports {
            for (kind, drops) in [("switch", &p.switch_drops), ("device", &p.device_drops)] {
                for (reason, n) in drops {
                    out.push((format!("port{} {kind} {reason}", p.id), *n));
                }
            }
        }
        for u in &stats.uplinks {
            for (kind, drops) in [("switch", &u.switch_drops), ("uplink", &u.uplink_drops)] {
                for (reason, n) in drops {
                    out.push((format!("uplink {} {kind} {reason}", u.interface), *n));
                }
            }
        }
        out.push(("removed ports".into(), stats.unknown_port_drops));
        Drops(out)
    }

    /// What counted from `before` to `self` (counters absent before count from zero).
    pub fn since(&self, before: &Drops) -> Drops {
        Drops(
            self.0
                .iter()
                .map(|(what, n)| (what.clone(), n.saturating_sub(before.get(what))))
                .collect(),
        )
    }

    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &Drops) {
        for (what, n) in &other.0 {
            match self.0.iter_mut().find(|(w, _)| w == what) {
                Some((_, m)) => *m += n,
                None => self.0.push((what.clone(), *n)),
            }
        }
    }

    /// The counter named `what` (0 when absent).
    pub fn get(&self, what: &str) -> u64 {
        self.0
            .iter()
            .find(|(w, _)| w == what)
            .map_or(0, |(_, n)| *n)
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// The counters that counted anything, as `port1 device rx_no_buffers 1234K, ...`
    /// (counts as `stats` prints them), or `none`.
    pub fn render(&self) -> String {
        let counted: Vec<String> = self
            .0
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{what} {}", count(*n)))
            .collect();
        if counted.is_empty() {
            "none".into()
        } else {
            counted.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost_net_backend::control::protocol::PortStatsView;

    fn port(id: u32, switch: u64, device: u64) -> PortStatsView {
        PortStatsView {
            id,
            socket: format!("/x/p{id}.sock"),
            rx_frames: 0,
            rx_bytes: 0,
            tx_frames: 0,
            tx_bytes: 0,
            fdb_limit_hits: 0,
            switch_drops: vec![("policy_drop".into(), switch), ("hairpin".into(), 0)],
            device_drops: vec![("rx_no_buffers".into(), device)],
        }
    }

    #[test]
    fn a_window_counts_the_differences_by_port_and_reason() {
        let view = |sw, dev, removed| StatsView {
            ports: vec![port(0, sw, 0), port(1, 0, dev)],
            uplinks: Vec::new(),
            unknown_port_drops: removed,
        };
        let before = Drops::of(&view(5, 100, 1));
        let after = Drops::of(&view(7, 250_100, 1));
        let window = after.since(&before);
        assert_eq!(window.get("port0 switch policy_drop"), 2);
        assert_eq!(window.get("port1 device rx_no_buffers"), 250_000);
        assert_eq!(window.total(), 250_002);
        assert_eq!(
            window.render(),
            "port0 switch policy_drop 2, port1 device rx_no_buffers 250K"
        );
        let mut sum = window.clone();
        sum.add(&window);
        assert_eq!(sum.total(), 500_004);
        assert_eq!(Drops::default().since(&before).render(), "none");
    }
}
