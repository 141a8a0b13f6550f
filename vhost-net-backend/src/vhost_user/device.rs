//! What one port's connection thread and the datapath share: the device's fixed offer (features,
//! queue count, config space), its vrings, and the eventfd that wakes the port's worker when
//! ring state changes.

use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vmm_sys_util::eventfd::EventFd;

use crate::vring::Vring;

/// What a device offers to every frontend that connects: the same on every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Virtio features offered (GET_FEATURES), including VHOST_USER_F_PROTOCOL_FEATURES.
    pub features: u64,
    /// Protocol features offered (GET_PROTOCOL_FEATURES).
    pub protocol_features: VhostUserProtocolFeatures,
    /// Number of virtqueues (GET_QUEUE_NUM).
    pub queues: usize,
    /// The device configuration space (GET_CONFIG).
    pub config: Vec<u8>,
}

/// A device's state shared between its connection thread and the datapath.
#[derive(Debug)]
pub struct Device {
    spec: DeviceSpec,
    vrings: Box<[Mutex<Vring>]>,
    wake: EventFd,
}

impl Device {
    /// A device with `spec.queues` idle vrings.
    pub fn new(spec: DeviceSpec) -> io::Result<Self> {
        let vrings = (0..spec.queues)
            .map(|_| Mutex::new(Vring::default()))
            .collect();
        Ok(Device {
            spec,
            vrings,
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The fixed offer.
    pub fn spec(&self) -> &DeviceSpec {
        &self.spec
    }

    /// Number of vrings.
    pub fn queue_count(&self) -> usize {
        self.vrings.len()
    }

    /// Locks vring `index`. A panic elsewhere while holding the lock leaves a consistent ring
    /// (every update is a plain field store), so poisoning is ignored.
    pub fn vring(&self, index: usize) -> Option<MutexGuard<'_, Vring>> {
        self.vrings
            .get(index)
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The eventfd the port's worker waits on for ring changes.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Tells the worker that ring state changed.
    pub fn wake(&self) {
        // Fails only when the counter is saturated, and then the worker is woken anyway.
        let _ = self.wake.write(1);
    }

    /// Back to the state of a fresh connection: all rings stopped, no memory, no fds.
    pub fn reset(&self) {
        for i in 0..self.vrings.len() {
            if let Some(mut v) = self.vring(i) {
                v.reset();
            }
        }
        self.wake();
    }
}
