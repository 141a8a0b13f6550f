//! libvirt network XML import: the "default" network file (`<forward mode='nat'/>`, `<ip>` with
//! `<dhcp>` ranges and hosts, `<domain>`, `<dns>` forwarders, `<mtu>`, `<mac>`) becomes a NAT
//! network, a bridged one (`<forward mode='bridge'/>` with `<bridge name='br0'/>`, or with
//! `dev='eth0'`) a bridge network, one without `<forward>` an isolated network.
//!
//! Nothing is dropped silently: what has no meaning here (the uuid, the kernel bridge's STP
//! settings, ...) is listed in [`Imported::notes`]; what would change the network's behaviour
//! and is not supported (routed mode, IPv6, DNS host records, QoS, port groups, ...) fails the
//! import, naming the line.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bridge_core::wire::Ipv4Cidr;
use roxmltree::{Document, Node};

use super::network::{default_ifname, default_lease_time};
use super::{
    BridgeConfig, DhcpConfig, DhcpRange, DnsConfig, MacAddr, NatConfig, NetworkConfig, NetworkMode,
    StaticHost, SwitchSettings, Uplink,
};

/// Errors importing a libvirt network file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not well-formed XML.
    #[error("{} is not well-formed XML", path.display())]
    Xml {
        /// The file.
        path: PathBuf,
        /// The parser's error (with its position).
        #[source]
        source: roxmltree::Error,
    },
    /// An element or attribute that cannot be imported.
    #[error("{}:{line}:{column}: <{element}>: {message}", path.display())]
    Element {
        /// The file.
        path: PathBuf,
        /// Line, from 1.
        line: u32,
        /// Column, from 1.
        column: u32,
        /// The element.
        element: String,
        /// What is wrong.
        message: String,
    },
}

/// An imported network, and what of the file was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The network.
    pub network: NetworkConfig,
    /// Parts of the file without an effect here, one line each (for the log).
    pub notes: Vec<String>,
}

/// Imports the libvirt network file at `path`.
pub fn import(path: &Path) -> Result<Imported, ImportError> {
    let xml = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    import_str(&xml, path)
}

/// Imports libvirt network XML; `path` names it in errors.
pub fn import_str(xml: &str, path: &Path) -> Result<Imported, ImportError> {
    let doc = Document::parse(xml).map_err(|source| ImportError::Xml {
        path: path.to_owned(),
        source,
    })?;
    let mut importer = Importer {
        doc: &doc,
        path,
        notes: Vec::new(),
    };
    let network = importer.network(doc.root_element())?;
    Ok(Imported {
        network,
        notes: importer.notes,
    })
}

/// The walk over one document.
struct Importer<'d, 'i> {
    doc: &'d Document<'i>,
    path: &'d Path,
    notes: Vec<String>,
}

/// The parts of `<network>` that are read.
#[derive(Default)]
struct Parts<'d, 'i> {
    name: Option<String>,
    forward: Option<Node<'d, 'i>>,
    bridge: Option<Node<'d, 'i>>,
    mac: Option<Node<'d, 'i>>,
    domain: Option<Node<'d, 'i>>,
    dns: Option<Node<'d, 'i>>,
    mtu: Option<Node<'d, 'i>>,
    ip: Option<Node<'d, 'i>>,
}

impl<'d, 'i> Importer<'d, 'i> {
    fn fail(&self, node: Node<'_, '_>, message: impl Into<String>) -> ImportError {
        let pos = self.doc.text_pos_at(node.range().start);
        ImportError::Element {
            path: self.path.to_owned(),
            line: pos.row,
            column: pos.col,
            element: node.tag_name().name().to_string(),
            message: message.into(),
        }
    }

    fn note(&mut self, node: Node<'_, '_>, message: &str) {
        let pos = self.doc.text_pos_at(node.range().start);
        self.notes.push(format!(
            "{}:{}: <{}>: {message}",
            self.path.display(),
            pos.row,
            node.tag_name().name()
        ));
    }

    /// Fails on an attribute of `node` that is not in `known`; notes those in `ignored`.
    fn attributes(
        &mut self,
        node: Node<'_, '_>,
        known: &[&str],
        ignored: &[(&str, &str)],
    ) -> Result<(), ImportError> {
        for a in node.attributes() {
            if known.contains(&a.name()) {
                continue;
            }
            match ignored.iter().find(|(name, _)| *name == a.name()) {
                Some((name, why)) => self.note(node, &format!("{name}='{}' {why}", a.value())),
                None => {
                    let msg = format!("attribute {}='{}' is not supported", a.name(), a.value());
                    return Err(self.fail(node, msg));
                }
            }
        }
        Ok(())
    }

    /// The element children of `node`.
    fn elements(node: Node<'d, 'i>) -> impl Iterator<Item = Node<'d, 'i>> {
        node.children().filter(Node::is_element)
    }

    fn once(&self, slot: &mut Option<Node<'d, 'i>>, node: Node<'d, 'i>) -> Result<(), ImportError> {
        if slot.replace(node).is_some() {
            return Err(self.fail(node, "given twice"));
        }
        Ok(())
    }

    fn network(&mut self, root: Node<'d, 'i>) -> Result<NetworkConfig, ImportError> {
        if root.tag_name().name() != "network" {
            return Err(self.fail(root, "not a libvirt network (the root is not <network>)"));
        }
        let ignored = [
            ("connections", "(a live count libvirt keeps) is ignored"),
            ("trustGuestRxFilters", "has no meaning here and is ignored"),
        ];
        self.attributes(root, &[], &ignored)?;
        let mut p = Parts::default();
        for child in Self::elements(root) {
            match child.tag_name().name() {
                "name" => p.name = child.text().map(|t| t.trim().to_string()),
                "uuid" | "title" | "description" | "metadata" => {
                    self.note(child, "is libvirt's bookkeeping and is not imported");
                }
                "forward" => self.once(&mut p.forward, child)?,
                "bridge" => self.once(&mut p.bridge, child)?,
                "mac" => self.once(&mut p.mac, child)?,
                "domain" => self.once(&mut p.domain, child)?,
                "dns" => self.once(&mut p.dns, child)?,
                "mtu" => self.once(&mut p.mtu, child)?,
                "ip" => {
                    if child.attribute("family") == Some("ipv6") || is_v6(child) {
                        return Err(self.fail(child, "IPv6 networks are not supported"));
                    }
                    if p.ip.is_some() {
                        return Err(self.fail(child, "a network has one IPv4 gateway address here"));
                    }
                    p.ip = Some(child);
                }
                other => {
                    let msg = format!("<{other}> is not supported");
                    return Err(self.fail(child, msg));
                }
            }
        }
        let name = p
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| self.fail(root, "the network has no <name>"))?;
        let mode = match p.forward {
            None => self.isolated(&p)?,
            Some(fwd) => match fwd.attribute("mode").unwrap_or("nat") {
                "nat" => NetworkMode::Nat(self.nat(fwd, &p)?),
                "bridge" => NetworkMode::Bridge(self.bridged(&name, fwd, &p)?),
                other => {
                    let msg =
                        format!("forward mode '{other}' is not supported (nat and bridge are)");
                    return Err(self.fail(fwd, msg));
                }
            },
        };
        Ok(NetworkConfig {
            name,
            mode,
            switch: SwitchSettings::default(),
        })
    }

    fn isolated(&mut self, p: &Parts<'d, 'i>) -> Result<NetworkMode, ImportError> {
        if let Some(ip) = p.ip {
            let msg = "a network without <forward> but with an address is libvirt's host-only \
                       network; isolated networks here have no gateway: drop <ip> or add \
                       <forward mode='nat'/>";
            return Err(self.fail(ip, msg));
        }
        if let Some(node) = [p.dns, p.domain, p.mtu].into_iter().flatten().next() {
            return Err(self.fail(node, "applies to a network with a gateway (NAT) only"));
        }
        for node in [p.bridge, p.mac].into_iter().flatten() {
            self.note(node, "an isolated network has no host bridge; not imported");
        }
        Ok(NetworkMode::Isolated)
    }

    fn nat(&mut self, fwd: Node<'d, 'i>, p: &Parts<'d, 'i>) -> Result<NatConfig, ImportError> {
        let ignored = [(
            "dev",
            "(the host interface NAT leaves by) is not imported: egress follows the host's routes",
        )];
        self.attributes(fwd, &["mode"], &ignored)?;
        for child in Self::elements(fwd) {
            match child.tag_name().name() {
                "nat" => self.note(
                    child,
                    "(masquerade address and port ranges) is not imported: egress picks its ports",
                ),
                other => return Err(self.fail(child, format!("<{other}> is not supported"))),
            }
        }
        if let Some(bridge) = p.bridge {
            self.attributes(bridge, &["name"], &bridge_ignored())?;
            self.note(
                bridge,
                "the daemon's gateway replaces the host bridge; egress = \"kernel\" makes a host \
                 interface (interface = ...) instead",
            );
        }
        let ip =
            p.ip.ok_or_else(|| self.fail(fwd, "a NAT network needs an <ip address=...>"))?;
        let mut nat = NatConfig::libvirt_default();
        let (gateway, prefix) = self.address(ip)?;
        nat.gateway = gateway;
        nat.subnet = Ipv4Cidr::new(gateway, prefix).network();
        nat.gateway_mac = match p.mac {
            None => None,
            Some(mac) => {
                self.attributes(mac, &["address"], &[])?;
                let text = mac.attribute("address").unwrap_or_default();
                Some(
                    text.parse::<MacAddr>()
                        .map_err(|e| self.fail(mac, e.to_string()))?,
                )
            }
        };
        if let Some(mtu) = p.mtu {
            self.attributes(mtu, &["size"], &[])?;
            let size = mtu.attribute("size").and_then(|s| s.parse().ok());
            nat.mtu = size.ok_or_else(|| self.fail(mtu, "size is not a number"))?;
        }
        if let Some(domain) = p.domain {
            let ignored = [
                (
                    "localOnly",
                    "is how the daemon answers for the domain anyway",
                ),
                ("register", "is not imported"),
            ];
            self.attributes(domain, &["name"], &ignored)?;
            nat.domain = domain.attribute("name").map(str::to_string);
        }
        nat.dns = match p.dns {
            None => Some(DnsConfig::default()),
            Some(dns) => self.dns(dns)?,
        };
        nat.dhcp = self.dhcp(ip)?;
        Ok(nat)
    }

    fn address(&mut self, ip: Node<'d, 'i>) -> Result<(Ipv4Addr, u8), ImportError> {
        let ignored = [(
            "localPtr",
            "is how the daemon answers reverse lookups anyway",
        )];
        self.attributes(ip, &["address", "netmask", "prefix", "family"], &ignored)?;
        let address: Ipv4Addr = ip
            .attribute("address")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| self.fail(ip, "address is missing or not an IPv4 address"))?;
        let prefix = match (ip.attribute("netmask"), ip.attribute("prefix")) {
            (Some(mask), None) => {
                let mask: u32 = mask
                    .parse::<Ipv4Addr>()
                    .map_err(|_| self.fail(ip, format!("netmask '{mask}' is not an address")))?
                    .into();
                if mask.leading_ones() + mask.trailing_zeros() != 32 {
                    return Err(self.fail(ip, "the netmask is not contiguous"));
                }
                mask.leading_ones() as u8
            }
            (None, Some(prefix)) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| self.fail(ip, format!("prefix '{prefix}' is not 0..=32")))?,
            (None, None) => 24,
            (Some(_), Some(_)) => return Err(self.fail(ip, "give netmask or prefix, not both")),
        };
        Ok((address, prefix))
    }

    fn dns(&mut self, dns: Node<'d, 'i>) -> Result<Option<DnsConfig>, ImportError> {
        let ignored = [(
            "forwardPlainNames",
            "is not imported: single-label names are answered from leases only",
        )];
        self.attributes(dns, &["enable"], &ignored)?;
        if dns.attribute("enable") == Some("no") {
            if let Some(child) = Self::elements(dns).next() {
                return Err(self.fail(child, "DNS is disabled (enable='no')"));
            }
            return Ok(None);
        }
        let mut config = DnsConfig::default();
        for child in Self::elements(dns) {
            match child.tag_name().name() {
                "forwarder" => {
                    self.attributes(child, &["addr"], &[])?;
                    let addr = child.attribute("addr").ok_or_else(|| {
                        self.fail(child, "a forwarder for a domain only is not supported")
                    })?;
                    let ip: IpAddr = addr
                        .parse()
                        .map_err(|_| self.fail(child, format!("'{addr}' is not an address")))?;
                    config.upstreams.push((ip, 53).into());
                }
                other => {
                    let msg = format!("DNS records (<{other}>) are not supported");
                    return Err(self.fail(child, msg));
                }
            }
        }
        Ok(Some(config))
    }

    fn dhcp(&mut self, ip: Node<'d, 'i>) -> Result<Option<DhcpConfig>, ImportError> {
        let mut found = None;
        for child in Self::elements(ip) {
            match child.tag_name().name() {
                "dhcp" => self.once(&mut found, child)?,
                other => return Err(self.fail(child, format!("<{other}> is not supported"))),
            }
        }
        let Some(dhcp) = found else {
            return Ok(None);
        };
        self.attributes(dhcp, &[], &[])?;
        let mut config = DhcpConfig {
            ranges: Vec::new(),
            hosts: Vec::new(),
            lease_time: default_lease_time(),
        };
        let mut lease: Option<(Duration, Node<'d, 'i>)> = None;
        for child in Self::elements(dhcp) {
            match child.tag_name().name() {
                "range" => {
                    self.attributes(child, &["start", "end"], &[])?;
                    let addr = |a: &str| -> Result<Ipv4Addr, ImportError> {
                        child
                            .attribute(a)
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| self.fail(child, format!("{a} is not an IPv4 address")))
                    };
                    config.ranges.push(DhcpRange {
                        start: addr("start")?,
                        end: addr("end")?,
                    });
                    self.lease(child, &mut lease)?;
                }
                "host" => {
                    self.attributes(child, &["mac", "ip", "name"], &[])?;
                    let mac = child.attribute("mac").ok_or_else(|| {
                        self.fail(child, "a host without mac (DNS only) is not supported")
                    })?;
                    let mac = mac
                        .parse()
                        .map_err(|e: super::ConfigError| self.fail(child, e.to_string()))?;
                    let ip = child
                        .attribute("ip")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| self.fail(child, "ip is missing or not an IPv4 address"))?;
                    config.hosts.push(StaticHost {
                        mac,
                        ip,
                        name: child.attribute("name").map(str::to_string),
                    });
                    self.lease(child, &mut lease)?;
                }
                other => return Err(self.fail(child, format!("<{other}> is not supported"))),
            }
        }
        if let Some((time, _)) = lease {
            config.lease_time = time;
        }
        Ok(Some(config))
    }

    /// Reads the `<lease>` of a range or host; every one must agree (one lease time per
    /// network here).
    fn lease(
        &mut self,
        parent: Node<'d, 'i>,
        seen: &mut Option<(Duration, Node<'d, 'i>)>,
    ) -> Result<(), ImportError> {
        for child in Self::elements(parent) {
            if child.tag_name().name() != "lease" {
                let msg = format!("<{}> is not supported", child.tag_name().name());
                return Err(self.fail(child, msg));
            }
            self.attributes(child, &["expiry", "unit"], &[])?;
            let expiry: u64 = child
                .attribute("expiry")
                .and_then(|e| e.parse().ok())
                .ok_or_else(|| self.fail(child, "expiry is not a number"))?;
            if expiry == 0 {
                return Err(self.fail(child, "leases that never expire are not supported"));
            }
            let unit = match child.attribute("unit").unwrap_or("minutes") {
                "seconds" => 1,
                "minutes" => 60,
                "hours" => 3600,
                other => return Err(self.fail(child, format!("unit '{other}' is not known"))),
            };
            let time = Duration::from_secs(expiry.saturating_mul(unit));
            match seen {
                Some((t, _)) if *t != time => {
                    let msg = "leases of different lengths in one network are not supported";
                    return Err(self.fail(child, msg));
                }
                _ => *seen = Some((time, child)),
            }
        }
        Ok(())
    }

    fn bridged(
        &mut self,
        name: &str,
        fwd: Node<'d, 'i>,
        p: &Parts<'d, 'i>,
    ) -> Result<BridgeConfig, ImportError> {
        self.attributes(fwd, &["mode", "dev"], &[])?;
        let mut devices: Vec<&str> = fwd.attribute("dev").into_iter().collect();
        for child in Self::elements(fwd) {
            match (child.tag_name().name(), child.attribute("dev")) {
                ("interface", Some(dev)) => {
                    self.attributes(child, &["dev"], &[])?;
                    if !devices.contains(&dev) {
                        devices.push(dev);
                    }
                }
                (other, _) => return Err(self.fail(child, format!("<{other}> is not supported"))),
            }
        }
        if let Some(node) = [p.ip, p.dns, p.domain].into_iter().flatten().next() {
            let msg = "a bridged network's addresses come from the LAN: not supported here";
            return Err(self.fail(node, msg));
        }
        for node in [p.mac, p.mtu].into_iter().flatten() {
            self.note(node, "belongs to the kernel bridge; not imported");
        }
        let uplink = match (p.bridge, devices.as_slice()) {
            (Some(bridge), []) => {
                self.attributes(bridge, &["name"], &bridge_ignored())?;
                let kernel_bridge = bridge
                    .attribute("name")
                    .ok_or_else(|| self.fail(bridge, "the bridge has no name"))?;
                Uplink::Tap {
                    interface: default_ifname(name),
                    bridge: Some(kernel_bridge.to_string()),
                }
            }
            (None, [dev]) => Uplink::AfPacket {
                interface: dev.to_string(),
            },
            (None, []) => {
                return Err(self.fail(fwd, "a bridged network needs <bridge name=...> or dev=..."))
            }
            (None, _) => {
                return Err(self.fail(fwd, "a pool of several host interfaces is not supported"))
            }
            (Some(bridge), _) => {
                return Err(self.fail(bridge, "give a bridge or a host interface, not both"))
            }
        };
        Ok(BridgeConfig { uplink })
    }
}

/// Attributes of `<bridge>` that belong to the kernel bridge.
fn bridge_ignored() -> [(&'static str, &'static str); 4] {
    [
        ("stp", "belongs to the kernel bridge; not imported"),
        ("delay", "belongs to the kernel bridge; not imported"),
        (
            "macTableManager",
            "belongs to the kernel bridge; not imported",
        ),
        ("zone", "(firewalld) is not imported"),
    ]
}

/// Whether an `<ip>` element's address is IPv6 (libvirt infers the family from it).
fn is_v6(ip: Node<'_, '_>) -> bool {
    ip.attribute("address")
        .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Egress, NetworkMode};

    fn import(xml: &str) -> Result<Imported, String> {
        import_str(xml, Path::new("net.xml")).map_err(|e| e.to_string())
    }

    /// libvirt's shipped /usr/share/libvirt/networks/default.xml.
    const SHIPPED_DEFAULT: &str = "<network>
  <name>default</name>
  <bridge name='virbr0'/>
  <forward/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
";

    /// The same network as `virsh net-dumpxml default` shows it once defined.
    const DEFINED_DEFAULT: &str = "<network connections='1'>
  <name>default</name>
  <uuid>3e1ba7b5-2c5f-4c2a-9a3e-6a6f2e3b9e11</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:b9:b0:96'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
";

    #[test]
    fn the_shipped_default_is_the_embedded_default() {
        let i = import(SHIPPED_DEFAULT).unwrap();
        assert_eq!(i.network, NetworkConfig::libvirt_default());
        assert_eq!(i.notes.len(), 1, "{:?}", i.notes);
        assert!(
            i.notes[0].starts_with("net.xml:3: <bridge>: "),
            "{:?}",
            i.notes
        );
    }

    #[test]
    fn the_defined_default_adds_only_the_gateway_mac() {
        let i = import(DEFINED_DEFAULT).unwrap();
        let mut expected = NetworkConfig::libvirt_default();
        let NetworkMode::Nat(nat) = &mut expected.mode else {
            unreachable!()
        };
        nat.gateway_mac = Some("52:54:00:b9:b0:96".parse().unwrap());
        assert_eq!(i.network, expected);
        let notes = i.notes.join("\n");
        for part in [
            "connections='1'",
            "<uuid>",
            "<nat>",
            "stp='on'",
            "delay='0'",
            "<bridge>",
        ] {
            assert!(notes.contains(part), "{part} not in {notes}");
        }
    }

    #[test]
    fn dhcp_hosts_leases_domain_dns_and_mtu() {
        let xml = "<network>
  <name>lab</name>
  <forward mode='nat'/>
  <domain name='lab.test' localOnly='yes'/>
  <dns><forwarder addr='192.0.2.53'/></dns>
  <mtu size='9000'/>
  <ip address='10.10.0.1' prefix='16'>
    <dhcp>
      <range start='10.10.1.0' end='10.10.1.255'><lease expiry='8' unit='hours'/></range>
      <host mac='52:54:00:00:00:10' name='web' ip='10.10.0.10'><lease expiry='8' unit='hours'/></host>
    </dhcp>
  </ip>
</network>";
        let i = import(xml).unwrap();
        let NetworkMode::Nat(nat) = &i.network.mode else {
            panic!("not nat")
        };
        assert_eq!(nat.subnet.to_string(), "10.10.0.0/16");
        assert_eq!(nat.gateway, Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(nat.mtu, 9000);
        assert_eq!(nat.domain.as_deref(), Some("lab.test"));
        assert_eq!(
            nat.dns.as_ref().unwrap().upstreams,
            ["192.0.2.53:53".parse().unwrap()]
        );
        let dhcp = nat.dhcp.as_ref().unwrap();
        assert_eq!(dhcp.ranges, ["10.10.1.0-10.10.1.255".parse().unwrap()]);
        assert_eq!(dhcp.lease_time, Duration::from_secs(8 * 3600));
        assert_eq!(
            dhcp.hosts,
            [StaticHost {
                mac: "52:54:00:00:00:10".parse().unwrap(),
                ip: Ipv4Addr::new(10, 10, 0, 10),
                name: Some("web".into())
            }]
        );
        assert_eq!(nat.egress, Egress::User);
    }

    #[test]
    fn no_dhcp_and_no_dns() {
        let xml = "<network><name>n</name><forward mode='nat'/><dns enable='no'/>\
                   <ip address='192.168.100.1' netmask='255.255.255.0'/></network>";
        let i = import(xml).unwrap();
        let NetworkMode::Nat(nat) = &i.network.mode else {
            panic!("not nat")
        };
        assert_eq!((&nat.dhcp, &nat.dns), (&None, &None));
    }

    #[test]
    fn a_bridged_network_is_a_tap_in_the_kernel_bridge() {
        let xml = "<network>
  <name>host-bridge</name>
  <forward mode='bridge'/>
  <bridge name='br0'/>
</network>";
        let i = import(xml).unwrap();
        assert_eq!(
            i.network,
            NetworkConfig {
                name: "host-bridge".into(),
                mode: NetworkMode::Bridge(BridgeConfig {
                    uplink: Uplink::Tap {
                        interface: "vnb-host-bridge".into(),
                        bridge: Some("br0".into())
                    }
                }),
                switch: SwitchSettings::default(),
            }
        );
        assert!(i.notes.is_empty());
    }

    #[test]
    fn a_bridge_on_a_host_nic_is_an_af_packet_uplink() {
        for xml in [
            "<network><name>lan</name><forward mode='bridge' dev='eth0'/></network>",
            "<network><name>lan</name><forward mode='bridge'><interface dev='eth0'/></forward></network>",
        ] {
            let i = import(xml).unwrap();
            assert_eq!(
                i.network.mode,
                NetworkMode::Bridge(BridgeConfig {
                    uplink: Uplink::AfPacket {
                        interface: "eth0".into()
                    }
                })
            );
        }
    }

    #[test]
    fn without_forward_it_is_isolated() {
        let i = import("<network><name>quiet</name></network>").unwrap();
        assert_eq!(i.network.mode, NetworkMode::Isolated);
    }

    #[test]
    fn what_cannot_be_imported_is_refused_with_its_line() {
        let cases = [
            (
                "<network><name>r</name>\n<forward mode='route'/></network>",
                "net.xml:2:1: <forward>: forward mode 'route' is not supported (nat and bridge are)",
            ),
            (
                "<network><name>v6</name><forward/>\n<ip family='ipv6' address='fd00::1' prefix='64'/></network>",
                "net.xml:2:1: <ip>: IPv6 networks are not supported",
            ),
            (
                "<network><name>h</name>\n  <ip address='10.0.0.1' prefix='24'/></network>",
                "net.xml:2:3: <ip>: a network without <forward> but with an address",
            ),
            (
                "<network><name>p</name><forward/><ip address='10.0.0.1'/>\n<portgroup name='x'/></network>",
                "net.xml:2:1: <portgroup>: <portgroup> is not supported",
            ),
            (
                "<network><name>d</name><forward/><ip address='10.0.0.1'/>\n<dns><host ip='10.0.0.9'><hostname>x</hostname></host></dns></network>",
                "net.xml:2:6: <host>: DNS records (<host>) are not supported",
            ),
            (
                "<network><name>l</name><forward/><ip address='10.0.0.1'><dhcp>\n<range start='10.0.0.2' end='10.0.0.9'><lease expiry='0'/></range></dhcp></ip></network>",
                "net.xml:2:40: <lease>: leases that never expire are not supported",
            ),
            (
                "<network><name>n</name><forward/>\n<ip address='10.0.0.1' foo='1'/></network>",
                "net.xml:2:1: <ip>: attribute foo='1' is not supported",
            ),
            (
                "<net><name>n</name></net>",
                "net.xml:1:1: <net>: not a libvirt network",
            ),
            ("<network><name>n</name>", "net.xml is not well-formed XML"),
            (
                "<network><forward/></network>",
                "net.xml:1:1: <network>: the network has no <name>",
            ),
        ];
        for (xml, expected) in cases {
            let e = import(xml).unwrap_err();
            assert!(e.starts_with(expected), "{e}\nexpected: {expected}");
        }
    }
}
