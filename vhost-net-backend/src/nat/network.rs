//! One NAT network at run time: its gateway port on the switch, its egress (`user` or
//! `kernel`), and the event loop (rust-vmm's event-manager, one subscriber per source: the
//! gateway's frames, the host sockets, the kernel egress's TAP, the timer, the control calls,
//! the stop signal) on a thread of its own.
//!
//! Frames the gateway hands to the egress pass the policies at the `NatEgress` hook first
//! ([`EgressPolicy`]).
//!
//! Each round of events ends with the same steps: the egress relays and sends, the gateway
//! runs its timers, the frames gathered for the network go through the switch (each guest
//! signalled once), socket registrations are applied, and the timer is set for the next
//! deadline.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use bridge_core::conntrack::{Conntrack, ConntrackConfig, FlowInfo};
use bridge_core::counters::{PortCounters, PortStats};
use bridge_core::gateway::leases::LeaseRecord;
use bridge_core::reject::{reject_reply, MAX_REPLY_LEN};
use bridge_core::time::{Duration, Instant};
use bridge_core::wire::EthernetAddress;
use bridge_core::{DropReason, NetworkId, PortId};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use tracing::{info, warn};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::egress_policy::EgressPolicy;
use super::gateway_port::{GatewayPort, GatewayPortError, GatewayPortStats, Handoff};
use super::inbox::Inbox;
use super::kernel::{KernelSide, KernelSideError, KernelSideStats};
use super::outbox::Outbox;
use super::rate_log::RateLimited;
use super::registry::{Kind, Registry, Token};
use super::user::forward::ForwardError;
use super::user::{EgressCx, UserEgress, UserEgressStats};
use super::{leases_file, resolv_conf};
use crate::config::{Egress as EgressConfig, ForwardConfig, NatConfig};
use crate::datapath::host::{HostPort, Injector};
use crate::datapath::policy::Outcome;
use crate::datapath::vnet_hdr::VnetHdr;
use crate::datapath::Datapath;
use crate::event_loop::Stopper;

/// How often conntrack drops expired flows.
const CONNTRACK_SWEEP: Duration = Duration::from_secs(1);
/// How long a control call waits for the loop.
pub(crate) const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Errors starting or driving a NAT network.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The gateway port could not be set up.
    #[error("setting up the gateway port")]
    Gateway(#[from] GatewayPortError),
    /// The switch refused the gateway port.
    #[error("adding the gateway port to the switch")]
    Switch(#[from] bridge_core::switch::Error),
    /// An eventfd, a timer or the thread could not be made.
    #[error("creating the network's event loop")]
    Resource(#[source] io::Error),
    /// A port forward could not be added or removed.
    #[error("port forward")]
    Forward(#[from] ForwardError),
    /// The kernel egress could not be set up.
    #[error("starting the kernel egress")]
    Kernel(#[from] KernelSideError),
    /// The network's event loop is gone or did not answer.
    #[error("the network's event loop does not answer")]
    NotRunning,
}

/// Where a forward's addition or removal is answered.
type ForwardReply = Sender<Result<(), ForwardError>>;

/// A call into the event loop.
enum Command {
    AddForward(ForwardConfig, ForwardReply),
    RemoveForward(ForwardConfig, ForwardReply),
    Forwards(Sender<Vec<ForwardConfig>>),
    Counters(Sender<NatCounters>),
}

/// The counters of a NAT network's egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EgressStats {
    /// The `user` egress: its TCP, UDP and echo flows.
    User(UserEgressStats),
    /// The `kernel` egress: its TAP.
    Kernel(KernelSideStats),
}

/// A NAT network's counters: its gateway port (on the switch and its own) and its egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatCounters {
    /// The gateway's switch port.
    pub port: PortId,
    /// The switch's counters of the gateway port: frames delivered to it are from guests,
    /// frames received from it go to guests; drops include the policies' at the egress.
    pub switch: PortStats,
    /// The gateway's own counters.
    pub gateway: GatewayPortStats,
    /// Frames for the gateway dropped because its queue was full.
    pub queue_full: u64,
    /// The egress's counters.
    pub egress: EgressStats,
}

/// A running NAT network as other threads reach it (the daemon, the control API's views): its
/// leases, its flows, and calls into its event loop. Cheap to clone; once the network stopped,
/// calls fail with [`NatError::NotRunning`].
#[derive(Clone, Debug)]
pub struct NatHandle {
    name: Arc<str>,
    conntrack: Arc<Conntrack>,
    leases: Arc<Mutex<Vec<LeaseRecord>>>,
    calls: Arc<Calls>,
}

/// The way into the event loop.
#[derive(Debug)]
struct Calls {
    commands: Mutex<Sender<Command>>,
    wake: Arc<EventFd>,
}

/// A running NAT network.
#[derive(Debug)]
pub struct NatNetwork {
    handle: NatHandle,
    port: PortId,
    network: NetworkId,
    mac: EthernetAddress,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl NatNetwork {
    /// Starts network `name` (switch network `network`, conntrack zone `zone`) with `config`
    /// and the port forwards `forwards`; its leases file, unless configured, goes into
    /// `state_dir` (`None`: the default state directory).
    pub fn start(
        name: &str,
        network: NetworkId,
        zone: u32,
        config: &NatConfig,
        forwards: &[ForwardConfig],
        state_dir: Option<&Path>,
        dp: &Arc<Datapath>,
    ) -> Result<Self, NatError> {
        let now = Instant::now();
        let upstreams = match config.dns.as_ref().map(|d| d.upstreams.clone()) {
            Some(u) if !u.is_empty() => u,
            _ => resolv_conf::load(Path::new(resolv_conf::RESOLV_CONF)).unwrap_or_else(|e| {
                warn!(network = name, error = %e, "no DNS upstreams: {} is unreadable", resolv_conf::RESOLV_CONF);
                Vec::new()
            }),
        };
        let gateway_config = config.gateway_config(name, &upstreams);
        let mac = gateway_config.mac;
        let address = gateway_config.address;
        let mtu = gateway_config.mtu;
        let leases_path = config
            .leases_file
            .clone()
            .unwrap_or_else(|| leases_file::default_path(state_dir, name));
        let gateway = GatewayPort::new(name, gateway_config, Some(leases_path), now)?;
        let leases = gateway.leases();
        let dns_upstream = config.dns.as_ref().and(upstreams.first().copied());
        let egress = match &config.egress {
            EgressConfig::User => {
                let user = UserEgress::new(address, mac, mtu, dns_upstream, seed(), now);
                Egress::User(Box::new(user))
            }
            EgressConfig::Kernel { interface } => Egress::Kernel(Box::new(KernelSide::start(
                name, config, interface, forwards,
            )?)),
        };

        let switch = dp.switch();
        let port = switch.add_port(network, bridge_core::PortConfig::default())?;
        let inbox = Arc::new(Inbox::new().map_err(NatError::Resource)?);
        if let Err(e) = switch.add_static(network, None, mac, port) {
            let _ = switch.remove_port(port);
            return Err(e.into());
        }
        dp.insert_host(port, Arc::clone(&inbox) as Arc<dyn HostPort>);

        let conntrack = Arc::new(Conntrack::new(ConntrackConfig::default()));
        let (commands, receiver) = mpsc::channel();
        let resources = (|| {
            Ok::<_, io::Error>((
                Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
                Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            ))
        })();
        let timer = match TimerFd::new() {
            Ok(t) => t,
            Err(e) => {
                dp.remove(port);
                let _ = switch.remove_port(port);
                return Err(NatError::Resource(e.into()));
            }
        };
        let mut nat = Nat {
            name: name.to_string(),
            gateway,
            egress,
            out: Outbox::default(),
            reg: Registry::default(),
            inbox: Arc::clone(&inbox),
            frames: VecDeque::new(),
            injector: Injector::new(Arc::clone(dp), port),
            policy: EgressPolicy::new(dp, port, network),
            port,
            port_counters: switch.port_counters(port),
            conntrack: Arc::clone(&conntrack),
            zone,
            log: RateLimited::default(),
            commands: receiver,
            next_conntrack_sweep: now + CONNTRACK_SWEEP,
            timer,
            removed: Vec::new(),
        };
        let started = resources.map_err(NatError::Resource).and_then(|r| {
            // The kernel egress started with its forwards.
            if matches!(nat.egress, Egress::User(_)) {
                for f in forwards {
                    nat.add_forward(f.clone())?;
                }
            }
            Ok(r)
        });
        let (wake, stop) = match started {
            Ok(r) => r,
            Err(e) => {
                dp.remove(port);
                let _ = switch.remove_port(port);
                return Err(e);
            }
        };
        let thread = {
            let (wake, stop) = (Arc::clone(&wake), Arc::clone(&stop));
            thread::Builder::new()
                .name(format!("nat-{name}"))
                .spawn(move || run(nat, wake, stop))
        };
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                dp.remove(port);
                let _ = switch.remove_port(port);
                return Err(NatError::Resource(e));
            }
        };
        let egress = config.egress.name();
        info!(network = name, gateway = %address, mac = %mac, ?upstreams, egress, "NAT network up");
        Ok(NatNetwork {
            handle: NatHandle {
                name: name.into(),
                conntrack,
                leases,
                calls: Arc::new(Calls {
                    commands: Mutex::new(commands),
                    wake,
                }),
            },
            port,
            network,
            mac,
            stop,
            thread: Some(thread),
        })
    }

    /// The way to the network from other threads.
    pub fn handle(&self) -> &NatHandle {
        &self.handle
    }

    /// The gateway's switch port.
    pub fn port(&self) -> PortId {
        self.port
    }

    /// Stops the event loop and removes the gateway port.
    pub fn stop(mut self, dp: &Datapath) {
        self.halt();
        dp.remove(self.port);
        let switch = dp.switch();
        let _ = switch.remove_static(self.network, None, self.mac);
        let _ = switch.remove_port(self.port);
    }

    fn halt(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NatNetwork {
    fn drop(&mut self) {
        self.halt();
    }
}

impl NatHandle {
    /// The network's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bound DHCP leases.
    pub fn leases(&self) -> Vec<LeaseRecord> {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The flows conntrack holds.
    pub fn flows(&self) -> Vec<FlowInfo<u32>> {
        self.conntrack.flows(Instant::now())
    }

    /// The conntrack table.
    pub fn conntrack(&self) -> &Arc<Conntrack> {
        &self.conntrack
    }

    /// Sends a call to the event loop; its answer is awaited with [`Pending::wait`].
    fn send<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<Pending<T>, NatError> {
        let (tx, rx) = mpsc::channel();
        self.calls
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(make(tx))
            .map_err(|_| NatError::NotRunning)?;
        // Fails only when the counter is saturated, which still wakes the loop.
        let _ = self.calls.wake.write(1);
        Ok(Pending(rx))
    }

    fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, NatError> {
        self.send(make)?.wait(call_deadline())
    }

    /// Starts forwarding `forward` (its network is this one).
    pub fn add_forward(&self, forward: ForwardConfig) -> Result<(), NatError> {
        Ok(self.call(|tx| Command::AddForward(forward, tx))??)
    }

    /// Stops forwarding `forward`.
    pub fn remove_forward(&self, forward: ForwardConfig) -> Result<(), NatError> {
        Ok(self.call(|tx| Command::RemoveForward(forward, tx))??)
    }

    /// The port forwards in place.
    pub fn forwards(&self) -> Result<Vec<ForwardConfig>, NatError> {
        self.call(Command::Forwards)
    }

    /// Asks the event loop for the network's counters, read there. Several networks can be
    /// asked before any answer is awaited, all with one deadline ([`call_deadline`]), so that
    /// loops that do not answer hold the caller back once, not once each.
    pub fn ask_counters(&self) -> Result<Pending<NatCounters>, NatError> {
        self.send(Command::Counters)
    }
}

#[cfg(test)]
impl NatHandle {
    /// A handle to network `name` whose event loop is stuck: calls wait in the returned queue,
    /// which nothing serves; once it is dropped, the loop is gone.
    pub(crate) fn unserved(name: &str) -> (NatHandle, impl std::fmt::Debug) {
        let (commands, queue) = mpsc::channel::<Command>();
        let handle = NatHandle {
            name: name.into(),
            conntrack: Arc::new(Conntrack::new(ConntrackConfig::default())),
            leases: Arc::default(),
            calls: Arc::new(Calls {
                commands: Mutex::new(commands),
                wake: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            }),
        };
        (handle, queue)
    }
}

/// The deadline of a call into an event loop made now.
pub fn call_deadline() -> std::time::Instant {
    std::time::Instant::now() + CALL_TIMEOUT
}

/// A call into a network's event loop whose answer is still to come.
#[derive(Debug)]
pub struct Pending<T>(Receiver<T>);

impl<T> Pending<T> {
    /// The answer, if it comes by `deadline` ([`NatError::NotRunning`] otherwise).
    pub fn wait(self, deadline: std::time::Instant) -> Result<T, NatError> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        self.0.recv_timeout(left).map_err(|_| NatError::NotRunning)
    }
}

/// A seed for the guest-facing TCP stack (initial sequence numbers, ports).
fn seed() -> u64 {
    use rand::{Rng, SeedableRng};
    rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng)
        .map(|mut r| r.next_u64())
        .unwrap_or_else(|_| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id())
        })
}

/// How the network's traffic leaves.
enum Egress {
    // Boxed: both are large, and a network keeps its egress for its lifetime.
    User(Box<UserEgress>),
    Kernel(Box<KernelSide>),
}

/// The network's state on its event loop.
struct Nat {
    name: String,
    gateway: GatewayPort,
    egress: Egress,
    out: Outbox,
    reg: Registry,
    inbox: Arc<Inbox>,
    frames: VecDeque<(VnetHdr, Vec<u8>)>,
    injector: Injector,
    /// The policy stage before egress, when the daemon runs policies.
    policy: Option<EgressPolicy>,
    /// The gateway's switch port.
    port: PortId,
    /// The switch's counters of the gateway port.
    port_counters: Option<Arc<PortCounters>>,
    conntrack: Arc<Conntrack>,
    zone: u32,
    log: RateLimited,
    commands: Receiver<Command>,
    next_conntrack_sweep: Instant,
    timer: TimerFd,
    /// Answers to removals, sent once the sockets they closed are closed.
    removed: Vec<(ForwardReply, Result<(), ForwardError>)>,
}

impl Nat {
    /// The egress with its context.
    fn split(&mut self, now: Instant) -> (&mut Egress, EgressCx<'_>) {
        let cx = EgressCx {
            now,
            out: &mut self.out,
            reg: &mut self.reg,
            gateway_mac: self.gateway.mac(),
            gateway_ip: self.gateway.address(),
            zone: self.zone,
            conntrack: &self.conntrack,
            log: &mut self.log,
        };
        (&mut self.egress, cx)
    }

    /// Frames the switch sent to the gateway; those it hands to the egress pass the policies
    /// first.
    fn on_frames(&mut self) {
        let now = Instant::now();
        self.inbox.take(&mut self.frames);
        let mut frames = std::mem::take(&mut self.frames);
        // Out of `self` for the batch, so that carrying out its outcomes can use `self`.
        let mut policy = self.policy.take();
        let judging = policy.as_mut().is_some_and(EgressPolicy::begin_batch);
        for (hdr, frame) in frames.drain(..) {
            let handoff = self
                .gateway
                .handle(now, &frame, &mut self.out, &mut self.reg);
            match policy.as_mut() {
                Some(p) if judging && handoff == Handoff::Egress => {
                    p.judge(hdr, frame, |o, hdr, frame| {
                        self.carry_out(now, o, hdr, frame)
                    })
                }
                _ => {
                    self.hand_off(now, handoff, &hdr, &frame);
                    self.inbox.recycle(frame);
                }
            }
        }
        if let Some(p) = policy.as_mut() {
            p.judge_aside(|o, hdr, frame| self.carry_out(now, o, hdr, frame));
        }
        self.policy = policy;
        self.frames = frames;
    }

    /// Hands a frame the gateway did not take to the egress.
    fn hand_off(&mut self, now: Instant, handoff: Handoff, hdr: &VnetHdr, frame: &[u8]) {
        let (egress, mut cx) = self.split(now);
        match (handoff, egress) {
            (Handoff::None, _) => {}
            (_, Egress::User(user)) => user.hand_off(&mut cx, handoff, frame),
            // The kernel routes both: beyond the network, or to the host's own sockets
            // (replies of port-forwarded connections from the host among them).
            (Handoff::Egress | Handoff::Local, Egress::Kernel(kernel)) => {
                kernel.send(now, hdr, frame)
            }
        }
    }

    /// Carries out the policies' outcome for a frame bound for egress: to the egress (or a
    /// redirect target instead; a mirror target gets a copy), or dropped and counted on the
    /// gateway port, or rejected (counted, and answered to the guest through the network).
    /// A redirect or mirror to the gateway's own port is no redirect or mirror.
    fn carry_out(&mut self, now: Instant, outcome: Outcome, hdr: VnetHdr, frame: Vec<u8>) {
        match outcome {
            Outcome::Deliver { redirect, mirror } => {
                let other = |p: &PortId| *p != self.port;
                let (redirect, mirror) = (redirect.filter(other), mirror.filter(other));
                match redirect {
                    Some(port) => self.injector.deliver_to(port, &hdr, &frame),
                    None => self.hand_off(now, Handoff::Egress, &hdr, &frame),
                }
                if let Some(port) = mirror {
                    self.injector.deliver_to(port, &hdr, &frame);
                }
            }
            Outcome::Drop(reason) => self.injector.record_drop(reason),
            Outcome::Reject => {
                self.injector.record_drop(DropReason::PolicyReject);
                let mut reply = vec![0; MAX_REPLY_LEN];
                if let Ok(n) = reject_reply(&frame, &mut reply) {
                    reply.truncate(n);
                    self.out.frame(reply);
                }
            }
        }
        self.inbox.recycle(frame);
    }

    /// A host socket is ready.
    fn on_socket(&mut self, token: Token, events: EventSet) {
        let now = Instant::now();
        if token.kind == Kind::Dns {
            return self
                .gateway
                .on_dns_socket(token.index as usize, &mut self.out, &mut self.reg);
        }
        if let (Egress::User(user), mut cx) = self.split(now) {
            user.on_socket(&mut cx, token, events);
        }
    }

    /// The kernel egress's TAP is readable.
    fn on_tap(&mut self) {
        if let Egress::Kernel(kernel) = &mut self.egress {
            let now = Instant::now();
            kernel.receive(now, &mut self.gateway, &mut self.out, &mut self.injector);
        }
    }

    fn add_forward(&mut self, forward: ForwardConfig) -> Result<(), ForwardError> {
        let added = match self.split(Instant::now()) {
            (Egress::User(user), mut cx) => user.add_forward(&mut cx, forward.clone()),
            (Egress::Kernel(kernel), _) => kernel.add_forward(forward.clone()),
        };
        if added.is_ok() {
            info!(network = %self.name, listen = %forward.listen, guest = %forward.guest, protocol = %forward.protocol, "port forward added");
        }
        added
    }

    /// Control calls.
    fn on_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::AddForward(f, reply) => {
                    let _ = reply.send(self.add_forward(f));
                }
                Command::RemoveForward(f, reply) => {
                    let result = match self.split(Instant::now()) {
                        (Egress::User(user), mut cx) => user.remove_forward(&mut cx, &f),
                        (Egress::Kernel(kernel), _) => kernel.remove_forward(&f),
                    };
                    self.removed.push((reply, result));
                }
                Command::Forwards(reply) => {
                    let _ = reply.send(match &self.egress {
                        Egress::User(user) => user.forwards(),
                        Egress::Kernel(kernel) => kernel.forwards(),
                    });
                }
                Command::Counters(reply) => {
                    let _ = reply.send(NatCounters {
                        port: self.port,
                        switch: self
                            .port_counters
                            .as_ref()
                            .map(|c| c.snapshot())
                            .unwrap_or_default(),
                        gateway: self.gateway.stats(),
                        queue_full: self.inbox.dropped(),
                        egress: match &self.egress {
                            Egress::User(user) => EgressStats::User(user.stats()),
                            Egress::Kernel(kernel) => EgressStats::Kernel(kernel.stats()),
                        },
                    });
                }
            }
        }
    }

    /// The steps after each round of events; returns the next deadline.
    fn after_round(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let egress_at = match self.split(now) {
            (Egress::User(user), mut cx) => user.poll(&mut cx),
            (Egress::Kernel(_), _) => None,
        };
        let gateway_at = self.gateway.poll(now, &mut self.out, &mut self.reg);
        if now >= self.next_conntrack_sweep {
            self.conntrack.expire(now);
            self.next_conntrack_sweep = now + CONNTRACK_SWEEP;
        }
        let injector = &mut self.injector;
        self.gateway
            .flush(now, &mut self.out, |frame| injector.send(frame));
        self.injector.flush();
        [egress_at, gateway_at, Some(self.next_conntrack_sweep)]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The subscriber of one source: what it watches and what it calls.
struct Source {
    fd: std::os::fd::RawFd,
    nat: Rc<RefCell<Nat>>,
    kind: SourceKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    /// The gateway port's frames (the inbox's eventfd).
    Frames,
    /// Control calls (an eventfd).
    Control,
    /// The kernel egress's TAP.
    Tap,
    /// The timer.
    Timer,
}

impl MutEventSubscriber for Source {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut nat = self.nat.borrow_mut();
        match self.kind {
            SourceKind::Frames => nat.on_frames(),
            SourceKind::Control => nat.on_commands(),
            SourceKind::Tap => nat.on_tap(),
            // Every round polls everything; the expiry count is not needed.
            SourceKind::Timer => drop(nat.timer.wait()),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            warn!(error = ?e, "a NAT event source cannot be watched");
        }
    }
}

/// The subscriber of the host sockets (DNS queries, flows, port forwards).
struct Sockets(Rc<RefCell<Nat>>);

impl MutEventSubscriber for Sockets {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(token) = Token::decode(events.data()) {
            self.0.borrow_mut().on_socket(token, events.event_set());
        }
    }

    fn init(&mut self, _ops: &mut EventOps) {}
}

fn run(nat: Nat, wake: Arc<EventFd>, stop: Arc<EventFd>) {
    use std::os::fd::AsRawFd;
    let name = nat.name.clone();
    let mut manager = match EventManager::<Box<dyn MutEventSubscriber>>::new() {
        Ok(m) => m,
        Err(e) => return warn!(network = %name, error = ?e, "no event loop for the NAT network"),
    };
    let inbox_fd = nat.inbox.wake_fd().as_raw_fd();
    let timer_fd = nat.timer.as_raw_fd();
    let tap_fd = match &nat.egress {
        Egress::Kernel(kernel) => Some(kernel.fd()),
        Egress::User(_) => None,
    };
    let nat = Rc::new(RefCell::new(nat));
    let source = |fd, kind| {
        Box::new(Source {
            fd,
            nat: Rc::clone(&nat),
            kind,
        })
    };
    manager.add_subscriber(source(inbox_fd, SourceKind::Frames));
    manager.add_subscriber(source(wake.as_raw_fd(), SourceKind::Control));
    manager.add_subscriber(source(timer_fd, SourceKind::Timer));
    if let Some(fd) = tap_fd {
        manager.add_subscriber(source(fd, SourceKind::Tap));
    }
    let sockets = manager.add_subscriber(Box::new(Sockets(Rc::clone(&nat))));
    let stopper = Stopper::new(stop);
    let stopped = stopper.stopped();
    manager.add_subscriber(Box::new(stopper));
    loop {
        let deadline = nat.borrow_mut().after_round();
        let mut n = nat.borrow_mut();
        if let Ok(mut ops) = manager.event_ops(sockets) {
            n.reg.apply(&mut ops);
        }
        for (reply, result) in n.removed.drain(..) {
            let _ = reply.send(result);
        }
        let now = Instant::now();
        // A zero duration disarms the timer: a deadline due now waits a microsecond.
        let wait = match deadline {
            Some(d) if d > now => std::time::Duration::from_micros((d - now).total_micros()),
            Some(_) => std::time::Duration::from_micros(1),
            None => std::time::Duration::ZERO,
        };
        let _ = n.timer.reset(wait, None);
        drop(n);
        if let Err(e) = manager.run() {
            return warn!(network = %name, error = ?e, "the NAT network's event loop failed");
        }
        if stopped.load(Ordering::Relaxed) {
            return;
        }
    }
}
