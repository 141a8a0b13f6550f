//! vhost-net-backend: a user-space virtio-net vhost-user backend.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`config::Config`] (networks, ports, forwards, policies), the TOML file ([`config::file`]), libvirt XML import ([`config::libvirt`]) |
//! | [`control`] | the control socket ([`control::Server`]), its protocol, views and client; [`control::hooks`] for the parts that fill views |
//! | [`capture`] | live port capture to pcapng: [`capture::Captures`] (the datapath's check), [`capture::Tap`], [`capture::PcapNgStream`] |
//! | [`cli`] | the command line: daemon options and the client subcommands |
//! | [`metrics`] | the OpenMetrics endpoint ([`metrics::Server`]) and the metrics it serves |
//! | [`event_loop`] | the event-manager loops (housekeeping, control) |
//! | [`vhost_user`] | the protocol layer: [`vhost_user::wire`] (framing), [`vhost_user::session`] (the per-connection dispatcher), [`vhost_user::memory`] (memory table), [`vhost_user::device`] (state shared with the datapath), [`vhost_user::server`] (the connection loop) |
//! | [`socket`] | the listen and connect roles of a port's socket, with reconnect |
//! | [`vring`] | [`vring::Vring`]: one virtqueue's configuration and the split-ring operations the datapath adds to `virtio_queue::Queue` |
//! | [`vhu_net`] | the virtio-net device: offered features, config space, negotiated view |
//! | [`datapath`] | descriptor chains ([`datapath::chain`]), virtio-net headers ([`datapath::vnet_hdr`]), the single copy ([`datapath::copy`]), delivery into RX queues ([`datapath::rx`]) |
//! | [`policy`] | the WASM policy host: [`policy::PolicyHost`] (load, publish, quarantine), [`policy::PolicyWorker`] (a datapath thread's policy hook) |
//! | [`uplink`] | bridged networks' uplinks ([`uplink::UplinkPort`]: af_packet, tap), rtnetlink ([`uplink::netlink`]) |
//! | [`kernel_egress`] | a NAT network's `kernel` egress: TAP with the gateway address, forwarding, nftables ([`kernel_egress::KernelEgress`]) |
//! | [`sys`] | the crate's `unsafe` code (fd passing, poll, signals) |
//!
//! Design notes: docs/device.md; why the protocol layer is the project's own: docs/decisions.md.

pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod event_loop;
pub mod kernel_egress;
pub mod metrics;
pub mod nat;
pub mod policy;
pub mod port;
pub mod socket;
pub mod sys;
pub mod uplink;
pub mod vhost_user;
pub mod vhu_net;
pub mod vring;

pub use config::{Config, MacAddr, PortConfig, SocketRole};
pub use daemon::{start, Daemon, Error, PortReport};

#[cfg(test)]
mod test_util;
