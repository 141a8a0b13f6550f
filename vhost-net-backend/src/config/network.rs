//! Networks: a name, a mode (NAT with its gateway, bridged to the LAN through an uplink, or
//! isolated) and the switch's settings (FDB ageing and limits, VLAN filtering).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bridge_core::gateway::dhcp_server::{self, DhcpConfigError};
use bridge_core::gateway::{self, dns, Gateway, GatewayError};
use bridge_core::wire::{EthernetAddress, Ipv4Cidr};
use bridge_core::LimitAction;

use super::{ConfigError, FieldPath, Invalid, MacAddr};

/// Shortest DHCP lease (dnsmasq's minimum).
pub const MIN_LEASE_TIME: Duration = Duration::from_secs(120);
/// Longest name of a host interface (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// One network: a learning switch of its own, isolated from the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Its name (ports and forwards refer to it).
    pub name: String,
    /// What it connects to.
    pub mode: NetworkMode,
    /// The switch's settings.
    pub switch: SwitchSettings,
}

impl NetworkConfig {
    /// libvirt's "default" network.
    pub fn libvirt_default() -> Self {
        NetworkConfig {
            name: super::DEFAULT_NETWORK.to_string(),
            mode: NetworkMode::Nat(NatConfig::libvirt_default()),
            switch: SwitchSettings::default(),
        }
    }

    /// Checks the network's settings; `at` is its path.
    pub(super) fn validate(&self, at: &FieldPath) -> Result<(), Invalid> {
        self.switch.validate(at)?;
        match &self.mode {
            NetworkMode::Nat(nat) => nat.validate(&self.name, at),
            NetworkMode::Bridge(bridge) => bridge.uplink.validate(&at.key("uplink")),
            NetworkMode::Isolated => Ok(()),
        }
    }
}

/// What a network connects its ports to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// A gateway in the daemon with DHCP and DNS, and NAT to the outside (libvirt's
    /// `<forward mode='nat'/>`).
    Nat(NatConfig),
    /// The host's LAN through an uplink (libvirt's `<forward mode='bridge'/>`).
    Bridge(BridgeConfig),
    /// The ports reach each other only.
    Isolated,
}

impl NetworkMode {
    /// `nat`, `bridge` or `isolated`.
    pub fn name(&self) -> &'static str {
        match self {
            NetworkMode::Nat(_) => "nat",
            NetworkMode::Bridge(_) => "bridge",
            NetworkMode::Isolated => "isolated",
        }
    }
}

/// The switch's settings of a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchSettings {
    /// Time after which a learned address is forgotten.
    pub ageing_time: Duration,
    /// Most addresses learned on the network.
    pub max_learned: u32,
    /// What happens to a frame from a new address at a limit.
    pub limit_action: LimitAction,
    /// Whether ports' VLAN settings apply (else frames pass with their tags unchanged).
    pub vlan_filtering: bool,
}

impl Default for SwitchSettings {
    fn default() -> Self {
        let d = bridge_core::NetworkConfig::default();
        SwitchSettings {
            ageing_time: Duration::from_secs(d.ageing_time.secs()),
            max_learned: d.max_learned,
            limit_action: d.limit_action,
            vlan_filtering: d.vlan_filtering,
        }
    }
}

impl SwitchSettings {
    /// The switch's network configuration.
    pub fn to_switch(&self) -> bridge_core::NetworkConfig {
        let ms = u64::try_from(self.ageing_time.as_millis()).unwrap_or(u64::MAX);
        bridge_core::NetworkConfig {
            ageing_time: bridge_core::time::Duration::from_millis(ms),
            max_learned: self.max_learned,
            limit_action: self.limit_action,
            vlan_filtering: self.vlan_filtering,
        }
    }

    fn validate(&self, at: &FieldPath) -> Result<(), Invalid> {
        if self.ageing_time < Duration::from_secs(1) {
            let e = ConfigError::Network("the ageing time is at least 1 second".into());
            return Err(at.key("ageing_seconds").invalid(e));
        }
        if self.max_learned == 0 {
            let e = ConfigError::Network("max_learned is at least 1".into());
            return Err(at.key("max_learned").invalid(e));
        }
        Ok(())
    }
}

/// The name of a [`LimitAction`] in the file: `drop` or `forward`.
pub fn limit_action_name(a: LimitAction) -> &'static str {
    match a {
        LimitAction::Drop => "drop",
        LimitAction::ForwardWithoutLearning => "forward",
    }
}

/// A [`LimitAction`] from its name.
pub fn parse_limit_action(s: &str) -> Result<LimitAction, String> {
    match s {
        "drop" => Ok(LimitAction::Drop),
        "forward" => Ok(LimitAction::ForwardWithoutLearning),
        _ => Err(format!("limit action {s:?} is neither drop nor forward")),
    }
}

/// A NAT network: the gateway's address and services, and how its traffic leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// The network's subnet (host bits zero), e.g. 192.168.122.0/24.
    pub subnet: Ipv4Cidr,
    /// The gateway's address in it (virbr0's), e.g. 192.168.122.1.
    pub gateway: Ipv4Addr,
    /// The gateway's MAC; `None`: derived from the network's name.
    pub gateway_mac: Option<MacAddr>,
    /// The network's MTU (what the gateway assumes, and announces with DHCP).
    pub mtu: u16,
    /// The guests' DNS domain, if any.
    pub domain: Option<String>,
    /// The DHCP server; `None`: no DHCP.
    pub dhcp: Option<DhcpConfig>,
    /// The DNS service; `None`: no DNS.
    pub dns: Option<DnsConfig>,
    /// How guests' traffic to the outside leaves.
    pub egress: Egress,
    /// Where leases are kept across restarts; `None`: `<network name>.leases` in the daemon's
    /// state directory ([`Config::state_dir`]).
    pub leases_file: Option<PathBuf>,
    /// Whether guests' packets to 127.0.0.0/8 reach the host's own loopback (`user` egress
    /// only). Off by default: the gateway drops them, as the kernel drops such packets from
    /// an interface, so guests cannot reach services bound to the host's loopback.
    pub host_loopback: bool,
}

impl NatConfig {
    /// libvirt's default network: 192.168.122.0/24, gateway .1, DHCP .2-.254 with one-hour
    /// leases, DNS forwarded to the host's resolvers, user-mode egress.
    pub fn libvirt_default() -> Self {
        let subnet = Ipv4Cidr::new(Ipv4Addr::new(192, 168, 122, 0), 24);
        let gateway = Ipv4Addr::new(192, 168, 122, 1);
        NatConfig {
            subnet,
            gateway,
            gateway_mac: None,
            mtu: super::DEFAULT_MTU,
            domain: None,
            dhcp: Some(DhcpConfig::whole_subnet(subnet, gateway)),
            dns: Some(DnsConfig::default()),
            egress: Egress::User,
            leases_file: None,
            host_loopback: false,
        }
    }

    /// The gateway's MAC: the configured one, or one derived from the network's name.
    pub fn gateway_mac(&self, network: &str) -> MacAddr {
        self.gateway_mac
            .unwrap_or_else(|| MacAddr::local_from(format!("gateway:{network}").as_bytes()))
    }

    /// Whether `ip` is a guest's possible address: in the subnet, not the network, broadcast or
    /// gateway address.
    pub fn is_host_address(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains_addr(&ip)
            && ip != self.subnet.address()
            && Some(ip) != self.subnet.broadcast()
            && ip != self.gateway
    }

    /// The gateway state machine's configuration (bridge-core), with DNS forwarded to
    /// `upstreams` when the configuration names none.
    pub fn gateway_config(
        &self,
        network: &str,
        upstreams: &[SocketAddr],
    ) -> gateway::GatewayConfig {
        let address = Ipv4Cidr::new(self.gateway, self.subnet.prefix_len());
        let mac = EthernetAddress(self.gateway_mac(network).0);
        let mut g = gateway::GatewayConfig::libvirt_default(mac, Vec::new());
        g.address = address;
        g.mtu = self.mtu;
        g.domain.clone_from(&self.domain);
        g.loopback_egress = self.host_loopback;
        g.dhcp = self.dhcp.as_ref().map(|d| {
            let mut c = dhcp_server::DhcpConfig::libvirt_default(address);
            c.ranges = d
                .ranges
                .iter()
                .map(|r| dhcp_server::DhcpRange {
                    start: r.start,
                    end: r.end,
                })
                .collect();
            c.hosts = d
                .hosts
                .iter()
                .map(|h| dhcp_server::StaticHost {
                    mac: EthernetAddress(h.mac.0),
                    ip: h.ip,
                    hostname: h.name.clone(),
                })
                .collect();
            c.lease_time = bridge_core::time::Duration::from_secs(d.lease_time.as_secs());
            c
        });
        g.dns = self.dns.as_ref().map(|d| dns::DnsConfig {
            upstreams: if d.upstreams.is_empty() {
                upstreams.to_vec()
            } else {
                d.upstreams.clone()
            },
            ..dns::DnsConfig::default()
        });
        g
    }

    fn validate(&self, name: &str, at: &FieldPath) -> Result<(), Invalid> {
        let bad = |field: FieldPath, msg: String| Err(field.invalid(ConfigError::Network(msg)));
        if self.subnet.address() != self.subnet.network().address() {
            let msg = format!(
                "subnet {} has host bits set (the subnet is {})",
                self.subnet,
                self.subnet.network()
            );
            return bad(at.key("subnet"), msg);
        }
        if !self.subnet.contains_addr(&self.gateway) {
            let msg = format!("gateway {} is outside subnet {}", self.gateway, self.subnet);
            return bad(at.key("gateway"), msg);
        }
        if let Some(dhcp) = &self.dhcp {
            if dhcp.lease_time < MIN_LEASE_TIME {
                let msg = format!("the lease time is at least {} s", MIN_LEASE_TIME.as_secs());
                return bad(at.key("dhcp").key("lease_seconds"), msg);
            }
        }
        if let Egress::Kernel { interface } = &self.egress {
            check_ifname(interface).or_else(|m| bad(at.key("interface"), m))?;
        }
        Gateway::new(self.gateway_config(name, &[]))
            .map(drop)
            .map_err(|e| self.locate(e, at))
    }

    /// The field a gateway configuration error is about.
    fn locate(&self, e: GatewayError, at: &FieldPath) -> Invalid {
        let dhcp = at.key("dhcp");
        let hosts = || self.dhcp.iter().flat_map(|d| d.hosts.iter()).enumerate();
        let field = match &e {
            GatewayError::Address(_) => at.key("gateway"),
            GatewayError::Mac(_) => at.key("gateway_mac"),
            GatewayError::Domain(_) => at.key("domain"),
            GatewayError::Mtu(_) => at.key("mtu"),
            GatewayError::Dhcp(DhcpConfigError::Range { start, end, .. }) => {
                let ranges = self.dhcp.iter().flat_map(|d| d.ranges.iter());
                let i = ranges
                    .take_while(|r| (r.start, r.end) != (*start, *end))
                    .count();
                dhcp.key("ranges").index(i)
            }
            GatewayError::Dhcp(DhcpConfigError::HostAddress { ip, .. }) => {
                let i = hosts().find(|(_, h)| h.ip == *ip).map_or(0, |(i, _)| i);
                dhcp.key("hosts").index(i).key("ip")
            }
            GatewayError::Dhcp(DhcpConfigError::DuplicateHost { ip }) => {
                let i = hosts()
                    .filter(|(_, h)| h.ip == *ip)
                    .last()
                    .map_or(0, |(i, _)| i);
                dhcp.key("hosts").index(i)
            }
            GatewayError::Dhcp(DhcpConfigError::Hostname(name)) => {
                let named = hosts().find(|(_, h)| h.name.as_deref() == Some(name));
                dhcp.key("hosts")
                    .index(named.map_or(0, |(i, _)| i))
                    .key("name")
            }
        };
        let msg = match e {
            GatewayError::Dhcp(d) => d.to_string(),
            other => other.to_string(),
        };
        field.invalid(ConfigError::Network(msg))
    }
}

/// Checks a host interface name.
fn check_ifname(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_IFNAME_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an interface name (1 to {MAX_IFNAME_LEN} bytes, no '/', ':' or spaces)"
        ))
    }
}

/// The host interface name derived from a network's name: `vnb-NAME`, cut to fit.
pub fn default_ifname(network: &str) -> String {
    let mut s = format!("vnb-{network}");
    s.truncate(MAX_IFNAME_LEN);
    s
}

/// The DHCP server of a NAT network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Address ranges handed out.
    pub ranges: Vec<DhcpRange>,
    /// MACs with reserved addresses.
    pub hosts: Vec<StaticHost>,
    /// How long a lease lasts.
    pub lease_time: Duration,
}

impl DhcpConfig {
    /// Every host address of `subnet` but `gateway`, with one-hour leases (libvirt's default
    /// network has .2-.254).
    pub fn whole_subnet(subnet: Ipv4Cidr, gateway: Ipv4Addr) -> Self {
        let base = u32::from(subnet.network().address());
        let size = 1u64 << (32 - u32::from(subnet.prefix_len()));
        let first = base + 1;
        let last = u32::try_from(u64::from(base) + size - 2).unwrap_or(u32::MAX);
        let gw = u32::from(gateway);
        let mut ranges = Vec::new();
        if first < gw {
            ranges.push(DhcpRange {
                start: first.into(),
                end: (gw - 1).into(),
            });
        }
        if gw < last {
            ranges.push(DhcpRange {
                start: (gw + 1).max(first).into(),
                end: last.into(),
            });
        }
        DhcpConfig {
            ranges,
            hosts: Vec::new(),
            lease_time: default_lease_time(),
        }
    }
}

/// The lease time by default: one hour, as libvirt's (dnsmasq's) default.
pub fn default_lease_time() -> Duration {
    Duration::from_secs(dhcp_server::DEFAULT_LEASE_TIME.secs())
}

/// Addresses handed out, both ends included: `192.168.122.2-192.168.122.254`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpRange {
    /// First address.
    pub start: Ipv4Addr,
    /// Last address.
    pub end: Ipv4Addr,
}

impl FromStr for DhcpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address range like 192.168.122.2-192.168.122.254");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        Ok(DhcpRange {
            start: a.trim().parse().map_err(|_| bad())?,
            end: b.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for DhcpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A MAC's reserved address (libvirt's `<host mac ip name/>`, dnsmasq's `dhcp-host`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticHost {
    /// The guest's MAC.
    pub mac: MacAddr,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its name in DNS.
    pub name: Option<String>,
}

/// The DNS service of a NAT network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Upstream resolvers; empty: the host's (resolv.conf).
    pub upstreams: Vec<SocketAddr>,
}

/// How a NAT network's traffic leaves the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Egress {
    /// Flows end in the daemon and leave from its own sockets (passt/slirp); no privilege.
    #[default]
    User,
    /// A host interface holds the gateway address and the kernel masquerades (libvirt's
    /// way; root).
    Kernel {
        /// The host interface (virbr0's role).
        interface: String,
    },
}

impl Egress {
    /// `user` or `kernel`.
    pub fn name(&self) -> &'static str {
        match self {
            Egress::User => "user",
            Egress::Kernel { .. } => "kernel",
        }
    }
}

/// A bridged network's link to the LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The uplink.
    pub uplink: Uplink,
}

/// A bridged network's uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uplink {
    /// A raw socket on a host NIC, promiscuous.
    AfPacket {
        /// The NIC (eth0).
        interface: String,
    },
    /// A TAP interface, enslaved to a kernel bridge if one is named (libvirt's vnetN in br0).
    Tap {
        /// The TAP interface's name.
        interface: String,
        /// The kernel bridge to enslave it to.
        bridge: Option<String>,
    },
}

impl Uplink {
    /// `af_packet` or `tap`.
    pub fn kind(&self) -> &'static str {
        match self {
            Uplink::AfPacket { .. } => "af_packet",
            Uplink::Tap { .. } => "tap",
        }
    }

    /// The host interface it uses.
    pub fn interface(&self) -> &str {
        match self {
            Uplink::AfPacket { interface } | Uplink::Tap { interface, .. } => interface,
        }
    }

    fn validate(&self, at: &FieldPath) -> Result<(), Invalid> {
        let bad = |field: FieldPath, msg: String| field.invalid(ConfigError::Network(msg));
        check_ifname(self.interface()).map_err(|m| bad(at.key("interface"), m))?;
        if let Uplink::Tap {
            bridge: Some(bridge),
            ..
        } = self
        {
            check_ifname(bridge).map_err(|m| bad(at.key("bridge"), m))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat() -> NatConfig {
        NatConfig::libvirt_default()
    }

    fn check(n: &NatConfig) -> Result<(), String> {
        n.validate("default", &FieldPath::root("network").index(0))
            .map_err(|e| format!("{}: {}", e.field, e.error))
    }

    #[test]
    fn the_default_subnet_gives_libvirts_range() {
        let d = nat().dhcp.unwrap();
        assert_eq!(d.ranges, ["192.168.122.2-192.168.122.254".parse().unwrap()]);
        assert_eq!(d.lease_time, Duration::from_secs(3600));
    }

    #[test]
    fn a_gateway_inside_the_subnet_splits_the_range() {
        let subnet = Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 28);
        let d = DhcpConfig::whole_subnet(subnet, Ipv4Addr::new(10, 0, 0, 5));
        let ranges: Vec<String> = d.ranges.iter().map(ToString::to_string).collect();
        assert_eq!(ranges, ["10.0.0.1-10.0.0.4", "10.0.0.6-10.0.0.14"]);
        let d = DhcpConfig::whole_subnet(subnet, Ipv4Addr::new(10, 0, 0, 14));
        assert_eq!(d.ranges, ["10.0.0.1-10.0.0.13".parse().unwrap()]);
    }

    #[test]
    fn gateway_errors_name_their_field() {
        assert_eq!(check(&nat()), Ok(()));
        let mut n = nat();
        n.subnet = "192.168.122.1/24".parse().unwrap();
        assert!(check(&n).unwrap_err().starts_with("network[0].subnet: "));
        let mut n = nat();
        n.gateway = Ipv4Addr::new(192, 168, 123, 1);
        assert!(check(&n).unwrap_err().starts_with("network[0].gateway: "));
        let mut n = nat();
        n.gateway = Ipv4Addr::new(192, 168, 122, 255);
        assert!(check(&n).unwrap_err().starts_with("network[0].gateway: "));
        let mut n = nat();
        n.gateway_mac = Some(MacAddr([1, 0, 0, 0, 0, 1]));
        assert!(check(&n)
            .unwrap_err()
            .starts_with("network[0].gateway_mac: "));
        let mut n = nat();
        n.domain = Some("bad_domain!".into());
        assert!(check(&n).unwrap_err().starts_with("network[0].domain: "));
        let mut n = nat();
        n.mtu = 500;
        assert!(check(&n).unwrap_err().starts_with("network[0].mtu: "));
    }

    #[test]
    fn dhcp_errors_name_the_range_or_host() {
        let mut n = nat();
        let d = n.dhcp.as_mut().unwrap();
        d.ranges
            .push("192.168.122.10-192.168.123.20".parse().unwrap());
        let e = check(&n).unwrap_err();
        assert!(e.starts_with("network[0].dhcp.ranges[1]: "), "{e}");

        let host = |mac: u8, ip: [u8; 4], name: &str| StaticHost {
            mac: MacAddr([0x52, 0x54, 0, 0, 0, mac]),
            ip: ip.into(),
            name: Some(name.into()),
        };
        let mut n = nat();
        let d = n.dhcp.as_mut().unwrap();
        d.hosts.push(host(1, [192, 168, 122, 10], "a"));
        d.hosts.push(host(2, [192, 168, 122, 10], "b"));
        let e = check(&n).unwrap_err();
        assert!(e.starts_with("network[0].dhcp.hosts[1]: "), "{e}");
        n.dhcp.as_mut().unwrap().hosts[1] = host(2, [192, 168, 122, 1], "b");
        let e = check(&n).unwrap_err();
        assert!(e.starts_with("network[0].dhcp.hosts[1].ip: "), "{e}");
        n.dhcp.as_mut().unwrap().hosts[1] = host(2, [192, 168, 122, 11], "b c");
        let e = check(&n).unwrap_err();
        assert!(e.starts_with("network[0].dhcp.hosts[1].name: "), "{e}");
        n.dhcp.as_mut().unwrap().hosts[1] = host(2, [192, 168, 122, 11], "b");
        assert_eq!(check(&n), Ok(()));
        n.dhcp.as_mut().unwrap().lease_time = Duration::from_secs(60);
        let e = check(&n).unwrap_err();
        assert!(e.starts_with("network[0].dhcp.lease_seconds: "), "{e}");
    }

    #[test]
    fn interface_names_are_checked() {
        let mut n = nat();
        n.egress = Egress::Kernel {
            interface: "a-name-far-too-long".into(),
        };
        assert!(check(&n).unwrap_err().starts_with("network[0].interface: "));
        assert_eq!(default_ifname("default"), "vnb-default");
        assert_eq!(default_ifname("a-long-network-name"), "vnb-a-long-netw");
        let up = Uplink::Tap {
            interface: "vnb0".into(),
            bridge: Some("br/0".into()),
        };
        let e = up.validate(&FieldPath::root("uplink")).unwrap_err();
        assert_eq!(e.field.to_string(), "uplink.bridge");
    }

    #[test]
    fn the_gateway_config_carries_the_settings() {
        let mut n = nat();
        n.domain = Some("vm.test".into());
        let upstream: SocketAddr = "192.0.2.53:53".parse().unwrap();
        let g = n.gateway_config("default", &[upstream]);
        assert_eq!(g.address.to_string(), "192.168.122.1/24");
        assert_eq!(g.domain.as_deref(), Some("vm.test"));
        assert_eq!(g.dns.unwrap().upstreams, [upstream]);
        let dhcp = g.dhcp.unwrap();
        assert_eq!(dhcp.ranges.len(), 1);
        assert_eq!(dhcp.lease_time.secs(), 3600);
        assert_eq!(
            EthernetAddress(n.gateway_mac("default").0),
            g.mac,
            "derived and stable"
        );
    }
}
