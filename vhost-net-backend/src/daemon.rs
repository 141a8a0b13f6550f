//! The daemon: the switch with the configured networks, the ports with their threads, and the
//! housekeeping loop; started with [`start`], run until [`Daemon::shutdown`] (or drop).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bridge_core::{NetworkId, PortId, PortStats, Switch};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{info, warn};
use vmm_sys_util::timerfd::TimerFd;

use crate::config::{Config, FieldPath, ForwardConfig, Invalid, NetworkMode, PortConfig};
use crate::control::hooks::Hooks;
use crate::datapath::counters::DeviceStats;
use crate::datapath::policy::PolicyPlane;
use crate::datapath::worker::Workers;
use crate::datapath::Datapath;
use crate::event_loop::LoopThread;
use crate::nat::network::{NatError, NatNetwork};
use crate::nat::views::NatViews;
use crate::policy::control::{ControlError, PolicyControl};
use crate::policy::{HostConfig, LoadError, PolicyHost};
use crate::port::{self, Link, Port};
use crate::socket::{Endpoint, SocketError};
use crate::uplink::{self, UplinkError, UplinkHandle, UplinkStatus, UplinkViews};
use crate::vring::QueueState;

/// How often learned addresses are aged out.
const AGEING_INTERVAL: Duration = Duration::from_secs(1);

/// Errors starting the daemon or changing its ports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] Invalid),
    /// A port's socket could not be set up.
    #[error("setting up a port's socket failed")]
    Socket(#[from] SocketError),
    /// The switch refused the port.
    #[error("the switch refused the port")]
    Switch(#[from] bridge_core::switch::Error),
    /// Another port already uses the socket.
    #[error("socket {0} is already a port")]
    SocketInUse(std::path::PathBuf),
    /// No port has this id.
    #[error("no port {0:?}")]
    NoSuchPort(PortId),
    /// No network has this name.
    #[error("no network is named {0:?}")]
    NoSuchNetwork(String),
    /// A bridged network's uplink could not be started.
    #[error("starting an uplink failed")]
    Uplink(#[from] UplinkError),
    /// Creating an eventfd, a timer or a thread failed.
    #[error("creating a daemon resource failed")]
    Resource(#[source] io::Error),
    /// A NAT network could not be started or changed.
    #[error("NAT network {0:?}")]
    Nat(String, #[source] NatError),
    /// A port forward names a network that is not a running NAT network.
    #[error("no NAT network is named {0:?}")]
    NoSuchNatNetwork(String),
    /// The policy host could not start.
    #[error("the policy host could not start")]
    PolicyHost(#[source] LoadError),
    /// A configured policy could not be loaded.
    #[error("loading the configured policies failed")]
    Policy(#[source] ControlError),
}

/// A running port and its connection thread.
#[derive(Debug)]
struct PortHandle {
    port: Arc<Port>,
    connections: Option<JoinHandle<()>>,
}

/// A port's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortReport {
    /// The port's configuration.
    pub config: PortConfig,
    /// The switch's counters: frames from the guest (rx) and to it (tx), switch drops.
    pub switch: PortStats,
    /// The device's drops (malformed descriptors, no receive buffers, ...).
    pub device: DeviceStats,
    /// Its link.
    pub link: Link,
}

/// A running daemon. Dropping it shuts it down.
#[derive(Debug)]
pub struct Daemon {
    datapath: Arc<Datapath>,
    /// The configuration it was started with, less the ports (those are in `ports`).
    config: Config,
    /// The switch's id of each of `config.networks`, in order.
    network_ids: Vec<NetworkId>,
    /// What other parts register for the control API's views.
    hooks: Hooks,
    /// The policy host and the configuration of each loaded policy.
    policies: Arc<PolicyControl>,
    /// The NAT networks' gateways and egress.
    nat: Vec<NatNetwork>,
    ports: Mutex<BTreeMap<PortId, PortHandle>>,
    /// The threads that run the ports' transmit queues.
    workers: Workers,
    /// The bridged networks' uplinks.
    uplinks: Vec<UplinkHandle>,
    /// The loop that ages learned addresses and flows, while it runs.
    housekeeping: Option<LoopThread>,
}

/// Starts the daemon: the networks of `config`, and one port per entry.
pub fn start(mut config: Config) -> Result<Daemon, Error> {
    config.validate()?;
    let ports = std::mem::take(&mut config.ports);
    let switch = Arc::new(Switch::new());
    let network_ids: Vec<_> = config
        .networks
        .iter()
        .map(|n| switch.add_network(n.switch.to_switch()))
        .collect();
    let host = PolicyHost::new(HostConfig::default()).map_err(Error::PolicyHost)?;
    let plane = Arc::new(PolicyPlane::new(host.clone()));
    let datapath = Arc::new(Datapath::with_policy(switch, Some(plane)));
    let names = config.networks.iter().map(|n| n.name.clone());
    let policies = Arc::new(PolicyControl::new(
        host,
        names.zip(network_ids.clone()).collect(),
    ));
    policies.apply(&config.policies).map_err(Error::Policy)?;
    let poll = Duration::from_micros(config.poll_us.into());
    let workers = Workers::start(&datapath, config.workers, poll).map_err(Error::Resource)?;
    // From here on, a failed step drops the daemon: its Drop stops and joins what was started.
    let mut daemon = Daemon {
        datapath,
        config,
        network_ids,
        hooks: Hooks::default(),
        policies: Arc::clone(&policies),
        nat: Vec::new(),
        ports: Mutex::new(BTreeMap::new()),
        workers,
        uplinks: Vec::new(),
        housekeeping: None,
    };
    daemon.hooks.set_policies(Some(policies));
    daemon.start_nat()?;
    daemon.start_housekeeping()?;
    daemon.start_uplinks()?;
    for port in ports {
        daemon.add_port(port)?;
    }
    Ok(daemon)
}

impl Daemon {
    /// The switch (for a control plane: networks, FDB, counters).
    pub fn switch(&self) -> &Arc<Switch> {
        self.datapath.switch()
    }

    /// The configuration the daemon was started with (its `ports` is empty: see
    /// [`Daemon::ports`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the parts behind the control API's views register.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// The port captures.
    pub fn captures(&self) -> &crate::capture::Captures {
        self.datapath.captures()
    }

    /// The policy plane: the policy host and the flow table of each hook.
    pub fn policy_plane(&self) -> Option<&Arc<PolicyPlane>> {
        self.datapath.policy()
    }

    /// The datapath's clock, as the switch is given it.
    pub fn now(&self) -> bridge_core::time::Instant {
        self.datapath.now()
    }

    /// The switch's id of the network named `name`.
    pub fn network_id(&self, name: &str) -> Option<NetworkId> {
        let i = self.config.networks.iter().position(|n| n.name == name)?;
        self.network_ids.get(i).copied()
    }

    /// Adds a port on its network and starts serving its socket.
    pub fn add_port(&self, config: PortConfig) -> Result<PortId, Error> {
        let mut ports = self.lock_ports();
        if ports
            .values()
            .any(|h| h.port.config().socket == config.socket)
        {
            return Err(Error::SocketInUse(config.socket));
        }
        self.config
            .check_port(&config, &[])
            .map_err(|e| e.under(FieldPath::root("port")))?;
        let network = self
            .network_id(&config.network)
            .ok_or(Error::NoSuchNetwork(config.network.clone()))?;
        let endpoint = Endpoint::new(&config.socket, config.role)?;
        let switch = self.switch();
        let id = switch.add_port(network, config.switch_config())?;
        let counters = switch.port_counters(id).ok_or(Error::NoSuchPort(id))?;
        let port = match Port::new(id, config, counters) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let _ = switch.remove_port(id);
                return Err(Error::Resource(e));
            }
        };
        self.policies.host().set_port_network(id.0, Some(network.0));
        self.datapath.insert(Arc::clone(&port));
        let spawned = {
            let p = Arc::clone(&port);
            thread::Builder::new()
                .name(format!("port{}-vu", id.0))
                .spawn(move || port::run_connections(p, endpoint))
        };
        let handle = match spawned {
            Ok(t) => PortHandle {
                port,
                connections: Some(t),
            },
            Err(e) => {
                let connections = None;
                self.stop_port(PortHandle { port, connections });
                return Err(Error::Resource(e));
            }
        };
        if let Err(e) = self.workers.add(Arc::clone(&handle.port)) {
            self.stop_port(handle);
            return Err(Error::Resource(e));
        }
        info!(port = id.0, socket = %handle.port.config().socket.display(), mac = %handle.port.config().mac, "port added");
        ports.insert(id, handle);
        Ok(id)
    }

    /// Removes a port: its threads end, its socket is closed, its guest loses its link.
    pub fn remove_port(&self, id: PortId) -> Result<(), Error> {
        let handle = self.lock_ports().remove(&id).ok_or(Error::NoSuchPort(id))?;
        self.stop_port(handle);
        Ok(())
    }

    /// The bridged networks' uplinks: host interface, link state, counters.
    pub fn uplinks(&self) -> Vec<UplinkStatus> {
        self.uplinks.iter().map(|u| u.port().status()).collect()
    }

    /// The ports' ids.
    pub fn ports(&self) -> Vec<PortId> {
        self.lock_ports().keys().copied().collect()
    }

    /// A port's configuration and counters.
    pub fn port_report(&self, id: PortId) -> Option<PortReport> {
        let ports = self.lock_ports();
        let port = &ports.get(&id)?.port;
        Some(PortReport {
            config: port.config().clone(),
            switch: port.switch_counters().snapshot(),
            device: port.counters().snapshot(),
            link: port.link(),
        })
    }

    /// The state of each of a port's vrings, by index (each locked only while it is read).
    pub fn queue_states(&self, id: PortId) -> Option<Vec<QueueState>> {
        let port = Arc::clone(&self.lock_ports().get(&id)?.port);
        let device = port.device();
        let states = (0..device.queue_count()).filter_map(|i| Some(device.vring(i)?.state()));
        Some(states.collect())
    }

    /// The running NAT network named `name`.
    pub fn nat_network(&self, name: &str) -> Option<&NatNetwork> {
        self.nat.iter().find(|n| n.handle().name() == name)
    }

    /// The running NAT networks.
    pub fn nat_networks(&self) -> &[NatNetwork] {
        &self.nat
    }

    /// Starts forwarding a host address and port into a guest of a NAT network.
    pub fn add_forward(&self, forward: ForwardConfig) -> Result<(), Error> {
        self.config
            .check_forward(&forward, &[])
            .map_err(|e| e.under(FieldPath::root("forward")))?;
        let nat = self
            .nat_network(&forward.network)
            .ok_or_else(|| Error::NoSuchNatNetwork(forward.network.clone()))?;
        let nat = nat.handle();
        nat.add_forward(forward)
            .map_err(|e| Error::Nat(nat.name().to_string(), e))
    }

    /// Stops forwarding `forward` (connections already forwarded go on).
    pub fn remove_forward(&self, forward: &ForwardConfig) -> Result<(), Error> {
        let nat = self
            .nat_network(&forward.network)
            .ok_or_else(|| Error::NoSuchNatNetwork(forward.network.clone()))?;
        let nat = nat.handle();
        nat.remove_forward(forward.clone())
            .map_err(|e| Error::Nat(nat.name().to_string(), e))
    }

    /// The port forwards in place, on every NAT network.
    pub fn forwards(&self) -> Vec<ForwardConfig> {
        self.nat
            .iter()
            .filter_map(|n| n.handle().forwards().ok())
            .flatten()
            .collect()
    }

    /// Starts the NAT networks and registers their views.
    fn start_nat(&mut self) -> Result<(), Error> {
        for (n, &id) in self.config.networks.iter().zip(&self.network_ids) {
            if let NetworkMode::Nat(c) = &n.mode {
                let forwards: Vec<_> = self
                    .config
                    .forwards
                    .iter()
                    .filter(|f| f.network == n.name)
                    .cloned()
                    .collect();
                let state_dir = self.config.state_dir.as_deref();
                let dp = &self.datapath;
                let started = NatNetwork::start(&n.name, id, id.0, c, &forwards, state_dir, dp);
                self.nat
                    .push(started.map_err(|e| Error::Nat(n.name.clone(), e))?);
            }
        }
        if !self.nat.is_empty() {
            let views = Arc::new(NatViews::new(
                self.nat.iter().map(|n| n.handle().clone()).collect(),
            ));
            self.hooks.set_leases(Some(views.clone()));
            self.hooks.set_conntrack(Some(views.clone()));
            self.hooks.set_nat_stats(Some(views.clone()));
            self.hooks.set_forwards(Some(views));
        }
        Ok(())
    }

    /// Starts the thread that ages learned addresses and flows every [`AGEING_INTERVAL`].
    fn start_housekeeping(&mut self) -> Result<(), Error> {
        let mut timer = TimerFd::new().map_err(|e| Error::Resource(e.into()))?;
        if let Err(e) = timer.reset(AGEING_INTERVAL, Some(AGEING_INTERVAL)) {
            warn!(error = %e, "the ageing timer cannot be armed");
        }
        let datapath = Arc::clone(&self.datapath);
        let ageing = Box::new(Ageing { datapath, timer });
        let thread = LoopThread::spawn("housekeeping", ageing).map_err(Error::Resource)?;
        self.housekeeping = Some(thread);
        Ok(())
    }

    /// Starts the bridged networks' uplinks and registers their views.
    fn start_uplinks(&mut self) -> Result<(), Error> {
        for (n, id) in self.config.networks.iter().zip(&self.network_ids) {
            if let NetworkMode::Bridge(bridge) = &n.mode {
                let port = self
                    .switch()
                    .add_port(*id, bridge_core::PortConfig::default())?;
                let handle = uplink::start(&self.datapath, &n.name, port, bridge.uplink.clone())?;
                info!(network = %n.name, kind = bridge.uplink.kind(), interface = bridge.uplink.interface(), "uplink started");
                self.uplinks.push(handle);
            }
        }
        if !self.uplinks.is_empty() {
            let views = UplinkViews {
                ports: self.uplinks.iter().map(|u| Arc::clone(u.port())).collect(),
                switch: Arc::clone(self.switch()),
            };
            self.hooks.set_uplinks(Some(Arc::new(views)));
        }
        Ok(())
    }

    /// Stops every port and thread and waits for them.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        let handles = std::mem::take(&mut *self.lock_ports());
        for (_, handle) in handles {
            self.stop_port(handle);
        }
        self.workers.stop();
        for nat in std::mem::take(&mut self.nat) {
            nat.stop(&self.datapath);
        }
        for uplink in self.uplinks.drain(..) {
            let id = uplink.port().status().port;
            self.datapath.remove(id);
            uplink.stop();
        }
        drop(self.housekeeping.take());
    }

    fn stop_port(&self, handle: PortHandle) {
        let id = handle.port.id();
        self.policies.host().set_port_network(id.0, None);
        if let Err(e) = self.switch().remove_port(id) {
            warn!(port = id.0, error = %e, "removing the port from the switch failed");
        }
        self.datapath.remove(id);
        self.workers.remove(id);
        handle.port.stop();
        if let Some(t) = handle.connections {
            let _ = t.join();
        }
        // Joined: nothing holds the rings any more; fds and mappings close with the port.
        handle.port.device().reset();
    }

    fn lock_ports(&self) -> std::sync::MutexGuard<'_, BTreeMap<PortId, PortHandle>> {
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Ages learned addresses every [`AGEING_INTERVAL`].
struct Ageing {
    datapath: Arc<Datapath>,
    timer: TimerFd,
}

impl MutEventSubscriber for Ageing {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        let now = self.datapath.now();
        self.datapath.switch().age(now);
        if let Some(plane) = self.datapath.policy() {
            plane.expire(now);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            warn!(error = ?e, "the ageing timer cannot be watched");
        }
    }
}
