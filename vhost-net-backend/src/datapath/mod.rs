//! The datapath: each port's worker takes frames from its guest's TX queues, asks the switch
//! where they go, and copies each one straight into the receiving guests' RX buffers.
//!
//! | module | what it holds |
//! |---|---|
//! | [`worker`] | the per-port thread: epoll on kick fds and the port's wake/stop fds |
//! | [`tx`] | one TX batch: chains, headers, decisions, delivery, notifications |
//! | [`rx`] | delivery of one frame into a receive queue |
//! | [`chain`] | walking a descriptor chain an untrusted guest posted |
//! | [`vnet_hdr`] | the virtio-net header |
//! | [`copy`] | copying guest to guest (or from local bytes) |
//! | [`counters`] | device-level drop reasons |

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use bridge_core::{PortId, Switch};

use crate::port::Port;

pub mod chain;
pub mod copy;
pub mod counters;
pub mod rx;
pub mod tx;
pub mod vnet_hdr;
pub mod worker;

/// What all workers share: the switch, the ports by switch id, and the clock's origin.
#[derive(Debug)]
pub struct Datapath {
    switch: Arc<Switch>,
    ports: RwLock<Vec<Option<Arc<Port>>>>,
    epoch: std::time::Instant,
}

/// The ports by switch id, read-locked for one batch.
pub type PortTable<'a> = RwLockReadGuard<'a, Vec<Option<Arc<Port>>>>;

impl Datapath {
    /// A datapath around `switch` with no ports.
    pub fn new(switch: Arc<Switch>) -> Self {
        Datapath {
            switch,
            ports: RwLock::new(Vec::new()),
            epoch: std::time::Instant::now(),
        }
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
        let mut ports = self.ports.write().unwrap_or_else(PoisonError::into_inner);
        let i = port.id().0 as usize;
        if ports.len() <= i {
            ports.resize(i + 1, None);
        }
        ports[i] = Some(port);
    }

    /// Removes port `id`; no batch delivers to it once this returns.
    pub fn remove(&self, id: PortId) -> Option<Arc<Port>> {
        let mut ports = self.ports.write().unwrap_or_else(PoisonError::into_inner);
        ports.get_mut(id.0 as usize).and_then(Option::take)
    }
}
