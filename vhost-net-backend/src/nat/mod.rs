//! NAT networks (libvirt's "default" network rebuilt in the daemon): the gateway as a port of
//! the network's switch and its egress (`user` or `kernel`), on one event loop per network.
//!
//! | module | holds |
//! |---|---|
//! | [`network`] | [`network::NatNetwork`] and its [`network::NatHandle`]: starts a network's gateway port and egress, its event loop, and the calls the daemon makes on it (port forwards, leases, conntrack, counters) |
//! | [`gateway_port`] | [`gateway_port::GatewayPort`]: bridge-core's gateway fed with frames, DNS upstream sockets, the leases file; independent of the egress kind |
//! | [`egress_policy`] | [`egress_policy::EgressPolicy`]: the policies at the `NatEgress` hook, before the egress |
//! | [`inbox`] | the gateway port's side of the switch: a bounded frame queue and its eventfd |
//! | [`outbox`] | frames into the network, addressed by the gateway's ARP table |
//! | [`user`] | the `user` egress: smoltcp TCP, UDP and ICMP flows from host sockets, port forwards |
//! | [`kernel`] | [`kernel::KernelSide`]: the `kernel` egress's TAP as the gateway's way out and in, port forwards as DNAT rules |
//! | [`leases_file`], [`resolv_conf`] | the leases file (dnsmasq's format, atomic rewrite) and the host's resolvers |
//! | [`views`] | [`views::NatViews`]: leases, conntrack, port forwards and counters for the control API |
//! | [`registry`], [`slots`], [`rate_log`] | host sockets watched by the event loop, bounded tables, rate-limited logging |
//!
//! Design and figures: docs/nat.md.

pub mod egress_policy;
pub mod gateway_port;
pub mod inbox;
pub mod kernel;
pub mod leases_file;
pub mod network;
pub mod outbox;
pub mod rate_log;
pub mod registry;
pub mod resolv_conf;
pub mod slots;
pub mod user;
pub mod views;
