//! Carries out one control request against the daemon.

use std::net::{SocketAddr, SocketAddrV4};

use serde::Serialize;
use tracing::info;

use super::protocol::{ForwardInfo, Request, Response};
use super::views;
use crate::config::{FailMode, ForwardConfig, PolicyConfig, PortConfig, Protocol};
use crate::daemon::Daemon;

/// The answer to `request`.
pub fn handle(daemon: &Daemon, request: Request) -> Response {
    match run(daemon, request) {
        Ok(value) => Response::Ok(value),
        Err(message) => Response::Error(message),
    }
}

fn json(value: impl Serialize) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

fn run(daemon: &Daemon, request: Request) -> Result<serde_json::Value, String> {
    let hooks = daemon.hooks();
    match request {
        Request::Show => json(views::show(daemon)),
        Request::Fdb { network } => json(views::fdb(daemon, network.as_deref())?),
        Request::Stats { port } => json(views::stats(daemon, port.as_deref())?),
        Request::Queues { port } => json(views::queues(daemon, port.as_deref())?),
        Request::Leases => {
            let leases = hooks.leases().ok_or(NO_GATEWAY)?;
            json(leases.leases())
        }
        Request::Conntrack => {
            let ct = hooks.conntrack().ok_or(NO_CONNTRACK)?;
            json(ct.flows())
        }
        Request::NatStats { network } => {
            let stats = hooks.nat_stats().ok_or(NO_NAT)?;
            json(stats.stats(network.as_deref())?)
        }
        Request::PolicyList => json(hooks.policies().ok_or(NO_POLICY_HOST)?.list()),
        Request::PolicyLoad {
            name,
            module,
            config,
            fail_mode,
            network,
        } => {
            let host = hooks.policies().ok_or(NO_POLICY_HOST)?;
            let fail_mode = fail_mode
                .map(|f| f.parse::<FailMode>())
                .transpose()?
                .unwrap_or_default();
            if let Some(n) = &network {
                daemon
                    .config()
                    .network(n)
                    .ok_or_else(|| format!("no network is named {n:?}"))?;
            }
            let policy = PolicyConfig {
                name: name.clone(),
                module: module.into(),
                config,
                fail_mode,
                network,
            };
            host.load(policy)?;
            info!(policy = %name, "policy loaded");
            json(())
        }
        Request::PolicyReload { name, config } => {
            hooks
                .policies()
                .ok_or(NO_POLICY_HOST)?
                .reload(&name, config)?;
            info!(policy = %name, "policy reloaded");
            json(())
        }
        Request::PolicyUnload { name } => {
            hooks.policies().ok_or(NO_POLICY_HOST)?.unload(&name)?;
            info!(policy = %name, "policy unloaded");
            json(())
        }
        Request::PortAdd { spec } => {
            let mut port: PortConfig = spec.parse().map_err(|e| format!("{spec}: {e}"))?;
            daemon.config().place_port(&mut port);
            let id = daemon
                .add_port(port)
                .map_err(|e| crate::cli::error_chain(&e))?;
            let report = daemon.port_report(id).ok_or("the port went away")?;
            json(views::port_view(id, &report))
        }
        Request::PortRemove { port } => {
            let id = views::find_port(daemon, &port)?;
            daemon
                .remove_port(id)
                .map_err(|e| crate::cli::error_chain(&e))?;
            json(())
        }
        Request::Capture { .. } => Err("a capture runs on its own connection".to_string()),
        Request::ForwardList => {
            let forwards = hooks.forwards().ok_or(NO_FORWARDS)?.list();
            json(forwards.iter().map(forward_info).collect::<Vec<_>>())
        }
        Request::ForwardAdd(f) => {
            let table = hooks.forwards().ok_or(NO_FORWARDS)?;
            let forward = parse_forward(&f)?;
            daemon
                .config()
                .check_forward(&forward, &table.list())
                .map_err(|e| format!("{}: {}", e.field, e.error))?;
            table.add(forward)?;
            json(())
        }
        Request::ForwardRemove(f) => {
            let forward = parse_forward(&f)?;
            hooks.forwards().ok_or(NO_FORWARDS)?.remove(&forward)?;
            json(())
        }
    }
}

const NO_GATEWAY: &str = "no NAT network runs a gateway with a DHCP server in this daemon";
const NO_CONNTRACK: &str = "no part of this daemon tracks connections";
const NO_NAT: &str = "no NAT network runs in this daemon";
const NO_POLICY_HOST: &str = "no policy host runs in this daemon";
const NO_FORWARDS: &str = "no NAT network takes port forwards in this daemon";

/// A port forward from its textual form.
pub fn parse_forward(f: &ForwardInfo) -> Result<ForwardConfig, String> {
    let listen: SocketAddr = f
        .listen
        .parse()
        .map_err(|_| format!("{:?} is not an address:port", f.listen))?;
    let guest: SocketAddrV4 = f
        .guest
        .parse()
        .map_err(|_| format!("{:?} is not an IPv4 address:port", f.guest))?;
    Ok(ForwardConfig {
        network: f.network.clone(),
        protocol: f.protocol.parse::<Protocol>().map_err(|e| e.to_string())?,
        listen,
        guest,
    })
}

/// The textual form of a port forward.
pub fn forward_info(f: &ForwardConfig) -> ForwardInfo {
    ForwardInfo {
        network: f.network.clone(),
        protocol: f.protocol.to_string(),
        listen: f.listen.to_string(),
        guest: f.guest.to_string(),
    }
}
