//! A port: one VM NIC, i.e. a virtio-net device on a vhost-user socket, attached to the
//! switch. Each port has two threads: the connection thread (the vhost-user protocol, with the
//! socket role's accept/reconnect loop) and the datapath worker (its guest's TX queues).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};

use bridge_core::{PortCounters, PortId};
use vmm_sys_util::eventfd::EventFd;

use crate::config::PortConfig;
use crate::datapath::counters::DeviceCounters;
use crate::socket::Endpoint;
use crate::vhost_user::device::Device;
use crate::vhost_user::server::{self, End};
use crate::vhu_net;
use crate::vring::Vring;

/// One VM NIC.
#[derive(Debug)]
pub struct Port {
    id: PortId,
    config: PortConfig,
    device: Device,
    counters: DeviceCounters,
    switch_counters: Arc<PortCounters>,
    stop: EventFd,
    connected: AtomicBool,
}

/// A port's link, as an operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// No frontend is connected.
    Down,
    /// A frontend is connected; its driver has not started the rings (yet).
    Connected,
    /// The guest's driver runs the rings.
    Up,
}

impl Link {
    /// down, connected or up.
    pub fn name(self) -> &'static str {
        match self {
            Link::Down => "down",
            Link::Connected => "connected",
            Link::Up => "up",
        }
    }
}

impl Port {
    /// A port with switch id `id` whose delivered frames are counted in `switch_counters`.
    pub fn new(
        id: PortId,
        config: PortConfig,
        switch_counters: Arc<PortCounters>,
    ) -> io::Result<Self> {
        let spec = vhu_net::device_spec(config.mac, config.queue_pairs, config.mtu);
        Ok(Port {
            id,
            counters: DeviceCounters::new(config.socket.display().to_string()),
            device: Device::new(spec)?,
            config,
            switch_counters,
            stop: EventFd::new(libc::EFD_NONBLOCK)?,
            connected: AtomicBool::new(false),
        })
    }

    /// The switch's id of this port.
    pub fn id(&self) -> PortId {
        self.id
    }

    /// Its configuration.
    pub fn config(&self) -> &PortConfig {
        &self.config
    }

    /// The device state shared with the connection thread.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Device-level drop counters.
    pub fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    /// The switch's counters of this port (frames delivered to it are counted here).
    pub fn switch_counters(&self) -> &PortCounters {
        &self.switch_counters
    }

    /// Signalled when the port is being removed.
    pub fn stop_fd(&self) -> &EventFd {
        &self.stop
    }

    /// Asks the port's threads to end.
    pub fn stop(&self) {
        // Fails only if the counter is saturated, which still wakes every waiter.
        let _ = self.stop.write(1);
    }

    /// Its link: whether a frontend is connected and the guest runs a ring.
    pub fn link(&self) -> Link {
        if !self.connected.load(Ordering::Relaxed) {
            return Link::Down;
        }
        let running = (0..self.device.queue_count())
            .any(|i| self.device.vring(i).is_some_and(|v| v.is_running()));
        if running {
            Link::Up
        } else {
            Link::Connected
        }
    }

    /// A running receive queue for frames that came in on queue pair `pair` of another port:
    /// the same pair index modulo this port's pairs, else pair 0. Returns its index, locked.
    pub fn rx_vring(&self, pair: usize) -> Option<(usize, MutexGuard<'_, Vring>)> {
        let pairs = (self.device.queue_count() / 2).max(1);
        let first = 2 * (pair % pairs);
        for index in [first, 0] {
            let vring = self.device.vring(index)?;
            if vring.is_running() {
                return Some((index, vring));
            }
        }
        None
    }
}

/// The connection thread: serves one connection after another until the port stops.
pub fn run_connections(port: Arc<Port>, mut endpoint: Endpoint) {
    while let Some(stream) = endpoint.next(&port.stop) {
        port.connected.store(true, Ordering::Relaxed);
        let end = server::serve(&stream, &port.device, &port.stop);
        port.connected.store(false, Ordering::Relaxed);
        match end {
            End::Stopped => return,
            End::Disconnected => {
                if !endpoint.pause_after_disconnect(&port.stop) {
                    return;
                }
            }
        }
    }
}
