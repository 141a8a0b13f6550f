//! A NAT network's `kernel` egress, the libvirt way (root): a TAP interface holds the gateway
//! address as virbr0 does, the kernel routes the guests' packets and masquerades them, and
//! port forwards are DNAT rules.
//!
//! | module | what it holds |
//! |---|---|
//! | this one | [`KernelEgress`]: the TAP, its address, IPv4 forwarding, the rules' life cycle |
//! | [`nftables`] | the rules ([`nftables::Ruleset`]) as an `nft -f` script |
//!
//! The network's gateway port (DHCP, DNS, ARP and ping for the gateway address) stays in the
//! daemon, as dnsmasq stays beside virbr0: what it hands on (packets routed beyond the network,
//! and those for the gateway address that no gateway service takes) goes into the TAP with
//! [`KernelEgress::send`], and what the kernel sends back is read from [`KernelEgress::tap`].
//! The TAP has the gateway's MAC and does no ARP: the kernel addresses frames to guests with
//! its own MAC, and the gateway port puts in the guest's MAC from its ARP table, as for the
//! `user` egress. Offloads go both ways: guests' TSO frames go into the TAP whole, and the
//! kernel hands over TSO frames and partial checksums (completed for guests without the
//! offloads on the way to them). The NAT network's side is `crate::nat::kernel`.
//!
//! Everything is undone when the egress is dropped: the table is deleted and the TAP goes with
//! the daemon's descriptor (its address and route with it). A daemon killed before that leaves
//! the table: the next start replaces it. IPv4 forwarding stays on, as libvirt leaves it.

use std::io::{self, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use tracing::{info, warn};

use crate::config::{ForwardConfig, NatConfig};
use crate::datapath::vnet_hdr::VnetHdr;
use crate::uplink::netlink::{Netlink, NetlinkError};
use crate::uplink::tap::Tap;
use crate::uplink::VNET_HDR_LEN;

pub mod nftables;

use nftables::{Dnat, Ruleset};

/// Where the kernel's IPv4 forwarding switch is.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Errors setting up or changing the kernel egress.
#[derive(Debug, thiserror::Error)]
pub enum KernelEgressError {
    /// The TAP could not be created.
    #[error("creating TAP interface {0}")]
    Tap(String, #[source] io::Error),
    /// The TAP vanished right after it was made.
    #[error("TAP interface {0} is not there")]
    TapGone(String),
    /// Configuring the TAP through rtnetlink failed.
    #[error("configuring the TAP")]
    Netlink(#[from] NetlinkError),
    /// IPv4 forwarding could not be turned on.
    #[error("turning on IPv4 forwarding ({IP_FORWARD})")]
    Forwarding(#[source] io::Error),
    /// `nft` could not be run.
    #[error("running nft")]
    NftSpawn(#[source] io::Error),
    /// `nft` refused the rules.
    #[error("nft refused the rules: {0}")]
    Nft(String),
    /// A port forward the kernel cannot do (IPv6 to an IPv4 guest).
    #[error("port forward from {0} needs an IPv4 listen address in kernel egress")]
    Ipv6Forward(std::net::SocketAddr),
}

/// Runs `nft -f -` with `script`.
pub fn nft(script: &str) -> Result<(), KernelEgressError> {
    nft_with(&["-f", "-"], script)
}

fn nft_with(args: &[&str], script: &str) -> Result<(), KernelEgressError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(KernelEgressError::NftSpawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(KernelEgressError::NftSpawn)?;
    }
    let out = child
        .wait_with_output()
        .map_err(KernelEgressError::NftSpawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KernelEgressError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// The DNAT rules of `forwards` that belong to `network`.
fn dnat_rules(network: &str, forwards: &[ForwardConfig]) -> Result<Vec<Dnat>, KernelEgressError> {
    forwards
        .iter()
        .filter(|f| f.network == network)
        .map(|f| match f.listen.ip() {
            IpAddr::V4(_) => Ok(Dnat {
                protocol: f.protocol,
                listen: f.listen,
                guest: f.guest,
            }),
            IpAddr::V6(_) => Err(KernelEgressError::Ipv6Forward(f.listen)),
        })
        .collect()
}

/// A NAT network's kernel egress.
#[derive(Debug)]
pub struct KernelEgress {
    network: String,
    tap: Tap,
    rules: Mutex<Ruleset>,
}

impl KernelEgress {
    /// Sets up network `network`'s egress through TAP `interface`, with the port forwards of
    /// `forwards` that are the network's: replaces a table left by an earlier run, creates and
    /// configures the TAP, turns on IPv4 forwarding, installs the rules.
    pub fn start(
        network: &str,
        nat: &NatConfig,
        interface: &str,
        forwards: &[ForwardConfig],
    ) -> Result<Self, KernelEgressError> {
        let rules = Ruleset {
            table: nftables::table_name(network),
            interface: interface.to_string(),
            subnet: nat.subnet,
            dnat: dnat_rules(network, forwards)?,
        };
        // A table left by a crashed run goes before anything else is made.
        nft(&nftables::delete_script(&rules.table))?;
        let tap = Tap::create(interface, true)
            .map_err(|e| KernelEgressError::Tap(interface.to_string(), e))?;
        let netlink = Netlink::new()?;
        let link = netlink
            .link(tap.name())?
            .ok_or_else(|| KernelEgressError::TapGone(tap.name().to_string()))?;
        netlink.set_mac(link.index, nat.gateway_mac(network))?;
        netlink.set_mtu(link.index, u32::from(nat.mtu))?;
        netlink.set_noarp(link.index)?;
        netlink.add_address(link.index, nat.gateway, nat.subnet.prefix_len())?;
        netlink.set_up(link.index)?;
        std::fs::write(IP_FORWARD, "1").map_err(KernelEgressError::Forwarding)?;
        nft(&rules.script())?;
        info!(network, interface = tap.name(), gateway = %nat.gateway, table = rules.table, "kernel egress up");
        Ok(KernelEgress {
            network: network.to_string(),
            tap,
            rules: Mutex::new(rules),
        })
    }

    /// The TAP: read the kernel's frames to guests from it ([`Tap::read`]: a virtio-net header,
    /// then the frame).
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Hands a guest's frame (to the gateway's MAC) to the kernel. Returns whether the TAP took
    /// it.
    pub fn send(&self, hdr: &VnetHdr, frame: &[u8]) -> bool {
        let mut vnet = [0u8; VNET_HDR_LEN];
        hdr.emit(&mut vnet, 0);
        self.tap.send(&vnet, frame).is_ok()
    }

    /// Replaces the port forwards with those of `forwards` that are this network's (one
    /// transaction: the other rules stay in force throughout).
    pub fn set_forwards(&self, forwards: &[ForwardConfig]) -> Result<(), KernelEgressError> {
        let dnat = dnat_rules(&self.network, forwards)?;
        let mut rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        let next = Ruleset {
            dnat,
            ..rules.clone()
        };
        nft(&next.script())?;
        *rules = next;
        Ok(())
    }
}

impl Drop for KernelEgress {
    fn drop(&mut self) {
        let rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = nft(&nftables::delete_script(&rules.table)) {
            warn!(network = %self.network, error = %e, "removing the kernel egress rules failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    #[test]
    fn nft_accepts_the_rules() {
        // Checked by the real nft without applying anything (-c).
        let rules = Ruleset {
            table: nftables::table_name("check"),
            interface: "vnb-check".into(),
            subnet: "192.168.122.0/24".parse().unwrap(),
            dnat: dnat_rules(
                "check",
                &[ForwardConfig {
                    network: "check".into(),
                    protocol: Protocol::Tcp,
                    listen: "0.0.0.0:8080".parse().unwrap(),
                    guest: "192.168.122.10:80".parse().unwrap(),
                }],
            )
            .unwrap(),
        };
        nft_with(&["-c", "-f", "-"], &rules.script()).unwrap();
        let bad = nft_with(
            &["-c", "-f", "-"],
            "table ip x { chain y { masquerade to } }",
        );
        assert!(matches!(bad, Err(KernelEgressError::Nft(_))), "{bad:?}");
    }

    #[test]
    fn only_the_networks_ipv4_forwards_become_rules() {
        let f = |network: &str, listen: &str| ForwardConfig {
            network: network.into(),
            protocol: Protocol::Udp,
            listen: listen.parse().unwrap(),
            guest: "192.168.122.10:53".parse().unwrap(),
        };
        let rules = dnat_rules("a", &[f("a", "0.0.0.0:53"), f("b", "0.0.0.0:54")]).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].listen.port(), 53);
        assert!(matches!(
            dnat_rules("a", &[f("a", "[::]:53")]),
            Err(KernelEgressError::Ipv6Forward(_))
        ));
    }
}
