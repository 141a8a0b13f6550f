//! The datapath: the worker serving a port takes frames from its guest's TX queues, asks the switch
//! where they go, and copies each one straight into the receiving guests' RX buffers.
//!
//! | module | what it holds |
//! |---|---|
//! | [`worker`] | the worker threads (one per port, or a pool): epoll on their ports' kick and wake fds |
//! | [`tx`] | one TX batch: chains, headers, decisions, delivery, notifications |
//! | [`rx`] | delivery of one frame into a receive queue |
//! | [`backpressure`] | how long a receive queue without buffers may hold the frames sent to it |
//! | [`chain`] | walking a descriptor chain an untrusted guest posted |
//! | [`vnet_hdr`] | the virtio-net header |
//! | [`copy`] | copying guest to guest (or from local bytes) |
//! | [`counters`] | device-level drop reasons |
//! | [`policy`] | the policy stage: flow tables with cached verdicts ([`policy::PolicyPlane`]), a thread's [`policy::PolicyStage`] |
//! | [`host`] | ports served in the daemon ([`host::HostPort`]: the NAT gateway, uplinks) and the [`host::Injector`] that sends their frames |

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use bridge_core::{PortId, Switch};

use crate::capture::Captures;
use crate::port::Port;
use host::{HostAttachment, HostPort};
use policy::PolicyPlane;

pub mod backpressure;
pub mod chain;
pub mod copy;
pub mod counters;
pub mod host;
pub mod policy;
pub mod rx;
pub mod tx;
pub mod vnet_hdr;
pub mod worker;

/// A switch port the datapath delivers to.
#[derive(Clone, Debug)]
pub enum Attachment {
    /// A guest's NIC: frames go into its receive queues.
    Guest(Arc<Port>),
    /// A port served in the daemon.
    Host(HostAttachment),
}

/// What all workers share: the switch, the ports by switch id, the policy plane, and the
/// clock's origin.
#[derive(Debug)]
pub struct Datapath {
    switch: Arc<Switch>,
    ports: RwLock<Vec<Option<Attachment>>>,
    policy: Option<Arc<PolicyPlane>>,
    epoch: std::time::Instant,
    captures: Captures,
}

/// The ports by switch id, read-locked for one batch.
pub type PortTable<'a> = RwLockReadGuard<'a, Vec<Option<Attachment>>>;

impl Datapath {
    /// A datapath around `switch` with no ports and no policies.
    pub fn new(switch: Arc<Switch>) -> Self {
        Self::with_policy(switch, None)
    }

    /// A datapath around `switch` whose frames pass the policies of `policy`.
    pub fn with_policy(switch: Arc<Switch>, policy: Option<Arc<PolicyPlane>>) -> Self {
        Datapath {
            switch,
            ports: RwLock::new(Vec::new()),
            policy,
            epoch: std::time::Instant::now(),
            captures: Captures::default(),
        }
    }

    /// The port captures (checked once per batch).
    pub fn captures(&self) -> &Captures {
        &self.captures
    }

    /// The policy plane, if frames pass policies.
    pub fn policy(&self) -> Option<&Arc<PolicyPlane>> {
        self.policy.as_ref()
    }

    /// The switch.
    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }

    /// The time to give the switch.
    pub fn now(&self) -> bridge_core::time::Instant {
        let us = self.epoch.elapsed().as_micros();
        bridge_core::time::Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
    }

    /// The port table, for the length of a batch.
    pub fn ports(&self) -> PortTable<'_> {
        self.ports.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `port` a destination. Waits for batches in progress.
    pub fn insert(&self, port: Arc<Port>) {
        let id = port.id();
        self.attach(id, Attachment::Guest(port));
    }

    /// Makes host port `port`, switch port `id`, a destination. Waits for batches in progress.
    pub fn insert_host(&self, id: PortId, port: Arc<dyn HostPort>) {
        let Some(counters) = self.switch.port_counters(id) else {
            return;
        };
        self.attach(id, Attachment::Host(HostAttachment { port, counters }));
    }

    fn attach(&self, id: PortId, attachment: Attachment) {
        let mut ports = self.ports.write().unwrap_or_else(PoisonError::into_inner);
        let i = id.0 as usize;
        if ports.len() <= i {
            ports.resize(i + 1, None);
        }
        ports[i] = Some(attachment);
    }

    /// Removes port `id`; no batch delivers to it once this returns.
    pub fn remove(&self, id: PortId) -> Option<Attachment> {
        let mut ports = self.ports.write().unwrap_or_else(PoisonError::into_inner);
        ports.get_mut(id.0 as usize).and_then(Option::take)
    }
}
