//! The daemon's configuration: networks, ports, port forwards, policies, and the control and
//! metrics endpoints. [`Config::default`] is the embedded default: one NAT network named
//! "default", as libvirt's.
//!
//! | module | what it holds |
//! |---|---|
//! | this one | [`Config`], [`PortConfig`], [`MacAddr`], [`SocketRole`], [`ForwardConfig`], [`PolicyConfig`], [`ControlConfig`], validation ([`Invalid`], [`FieldPath`], [`ConfigError`]) |
//! | [`network`] | [`NetworkConfig`] and its modes: [`NatConfig`] (gateway, DHCP, DNS, egress), [`BridgeConfig`] (uplink), isolated |
//! | [`file`] | the TOML file: [`file::load`], errors naming the file, line and field |
//! | [`libvirt`] | libvirt network XML import: [`libvirt::import`] |

use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;

use bridge_core::{PortVlan, VlanId, VlanSet};

pub mod file;
pub mod libvirt;
pub mod network;

pub use network::{
    BridgeConfig, DhcpConfig, DhcpRange, DnsConfig, Egress, NatConfig, NetworkConfig, NetworkMode,
    StaticHost, SwitchSettings, Uplink,
};

/// Default MTU of a port.
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU a port accepts (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// Largest MTU a port accepts (jumbo frames).
pub const MAX_MTU: u16 = 9000;
/// Most queue pairs a port offers.
pub const MAX_QUEUE_PAIRS: u16 = 16;
/// The name of the embedded default network, and of a port's network when none is given.
pub const DEFAULT_NETWORK: &str = "default";
/// The control socket's permissions by default: the owner only.
pub const DEFAULT_CONTROL_MODE: u32 = 0o600;

/// Errors in a configuration.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A MAC address that does not parse.
    #[error("invalid MAC address {0:?} (expected six hex octets like 52:54:00:12:34:56)")]
    BadMac(String),
    /// A multicast MAC address given to a port.
    #[error("MAC address {0} is multicast")]
    MulticastMac(MacAddr),
    /// An MTU out of range.
    #[error("MTU {0} is outside {MIN_MTU}..={MAX_MTU}")]
    BadMtu(u32),
    /// A queue pair count out of range.
    #[error("queue pair count {0} is outside 1..={MAX_QUEUE_PAIRS}")]
    BadQueues(u32),
    /// A socket role that is neither listen nor connect.
    #[error("invalid role {0:?} (expected server/listen or client/connect)")]
    BadRole(String),
    /// A port option that is not known.
    #[error("unknown port option {0:?}")]
    UnknownOption(String),
    /// A port option without a value.
    #[error("port option {0:?} needs a value (key=value)")]
    MissingValue(String),
    /// A number that does not parse.
    #[error("{key}={value:?} is not a number")]
    BadNumber {
        /// The option.
        key: String,
        /// Its value.
        value: String,
    },
    /// Two ports on the same socket path.
    #[error("socket {0} is given twice")]
    DuplicateSocket(PathBuf),
    /// A port specification without a socket path.
    #[error("a port needs a socket path")]
    NoSocket,
    /// A VLAN id outside 1..=4094, or a VLAN list that does not parse.
    #[error("invalid VLAN {0:?} (expected ids 1..=4094, lists like 10,20,100-200)")]
    BadVlan(String),
    /// A port with VLAN settings on a network that does not filter VLANs.
    #[error("network {0:?} does not filter VLANs (set vlan_filtering = true on it)")]
    VlanFilteringOff(String),
    /// A port that is both an access port and a trunk.
    #[error("a port is either an access port (vlan) or a trunk (trunk, native_vlan), not both")]
    AccessAndTrunk,
    /// A name (of a network or a policy) that is not allowed.
    #[error("invalid name {0:?} (1 to 32 letters, digits, '-', '_' or '.')")]
    BadName(String),
    /// Two networks or policies with one name.
    #[error("the name {0:?} is given twice")]
    DuplicateName(String),
    /// A reference to a network that is not configured.
    #[error("no network is named {0:?}")]
    NoSuchNetwork(String),
    /// A configuration without any network.
    #[error("at least one network is needed")]
    NoNetworks,
    /// A network setting that is invalid (the gateway, DHCP, DNS, uplink, ...).
    #[error("{0}")]
    Network(String),
    /// A port forward to a network that is not a NAT network, or to an address outside it.
    #[error("port forwards go to a host address of a NAT network's subnet: {0}")]
    BadForward(String),
    /// Two port forwards listening on the same address.
    #[error("{0} is forwarded twice")]
    DuplicateForward(String),
    /// A policy without a module.
    #[error("a policy needs a module path")]
    NoModule,
    /// Permission bits beyond 0o777.
    #[error("mode {0:#o} is not a permission mode (0o000..=0o777)")]
    BadMode(u32),
}

/// Where in a configuration something is: `network[0].dhcp.ranges[1]`. Keys are the TOML
/// file's keys, so that a path locates a line in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<PathSegment>);

/// One step of a [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSegment {
    /// A table key.
    Key(&'static str),
    /// An array index.
    Index(usize),
}

impl FieldPath {
    /// The path of a top-level key.
    pub fn root(key: &'static str) -> Self {
        FieldPath(vec![PathSegment::Key(key)])
    }

    /// This path and then `key`.
    pub fn key(&self, key: &'static str) -> Self {
        let mut p = self.clone();
        p.0.push(PathSegment::Key(key));
        p
    }

    /// This path and then index `i`.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(PathSegment::Index(i));
        p
    }

    /// Its steps.
    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }

    /// An error at this path.
    pub fn invalid(&self, error: ConfigError) -> Invalid {
        Invalid {
            field: self.clone(),
            error,
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                PathSegment::Key(k) if i == 0 => f.write_str(k)?,
                PathSegment::Key(k) => write!(f, ".{k}")?,
                PathSegment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A configuration error and the field it is about.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}")]
pub struct Invalid {
    /// The field.
    pub field: FieldPath,
    /// What is wrong with it.
    #[source]
    pub error: ConfigError,
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (stable for the same seed,
    /// so a port keeps its address across daemon restarts).
    pub fn local_from(seed: &[u8]) -> Self {
        // FNV-1a, 64 bit.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in seed {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let b = h.to_le_bytes();
        MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }

    /// Whether the group bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl FromStr for MacAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Which side of the unix socket the daemon is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SocketRole {
    /// The daemon listens; the VMM connects (QEMU `-chardev socket,...,reconnect=1`,
    /// cloud-hypervisor's default `vhost_mode=client`). A new connection is accepted after a
    /// disconnect.
    #[default]
    Listen,
    /// The daemon connects to a socket the VMM listens on (QEMU `server=on,wait=off`,
    /// cloud-hypervisor `vhost_mode=server`), and reconnects with backoff when it goes away.
    Connect,
}

impl FromStr for SocketRole {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "server" | "listen" => Ok(SocketRole::Listen),
            "client" | "connect" => Ok(SocketRole::Connect),
            _ => Err(ConfigError::BadRole(s.to_string())),
        }
    }
}

impl fmt::Display for SocketRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SocketRole::Listen => "listen",
            SocketRole::Connect => "connect",
        })
    }
}

/// A VLAN id, 1..=4094.
pub fn parse_vlan(s: &str) -> Result<VlanId, ConfigError> {
    s.trim()
        .parse::<u16>()
        .ok()
        .and_then(VlanId::new)
        .ok_or_else(|| ConfigError::BadVlan(s.to_string()))
}

/// A VLAN list: ids and ranges separated by commas, `10,20,100-200`.
pub fn parse_vlan_list(s: &str) -> Result<VlanSet, ConfigError> {
    let mut set = VlanSet::new();
    for item in s.split(',') {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let (a, b) = (parse_vlan(a)?, parse_vlan(b)?);
        if a.get() > b.get() {
            return Err(ConfigError::BadVlan(item.to_string()));
        }
        for v in a.get()..=b.get() {
            set.insert(VlanId::new(v).ok_or_else(|| ConfigError::BadVlan(item.to_string()))?);
        }
    }
    Ok(set)
}

/// A VLAN list in the form [`parse_vlan_list`] reads, with runs as ranges.
pub fn format_vlan_list(set: &VlanSet) -> String {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for v in set.iter().map(VlanId::get) {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == v => *end = v,
            _ => runs.push((v, v)),
        }
    }
    let items: Vec<String> = runs
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    items.join(",")
}

/// One port: a virtio-net device on a vhost-user socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// The unix socket path.
    pub socket: PathBuf,
    /// Listen or connect.
    pub role: SocketRole,
    /// The network it is attached to, by name.
    pub network: String,
    /// The MAC address in the config space.
    pub mac: MacAddr,
    /// Number of queue pairs (RX + TX).
    pub queue_pairs: u16,
    /// The MTU in the config space.
    pub mtu: u16,
    /// VLAN membership, on a network that filters VLANs (`None`: untagged in VLAN 1).
    pub vlan: Option<PortVlan>,
    /// Most addresses the switch learns from this port.
    pub max_learned: u32,
}

impl PortConfig {
    /// A port with defaults: listen, on the "default" network, one queue pair, MTU 1500, and a
    /// locally administered MAC derived from the socket path.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        let socket = socket.into();
        PortConfig {
            mac: MacAddr::local_from(socket.as_os_str().as_encoded_bytes()),
            socket,
            role: SocketRole::Listen,
            network: DEFAULT_NETWORK.to_string(),
            queue_pairs: 1,
            mtu: DEFAULT_MTU,
            vlan: None,
            max_learned: bridge_core::PortConfig::DEFAULT_MAX_LEARNED,
        }
    }

    /// Checks the values' ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|i| i.error)
    }

    /// Checks the values' ranges; errors name the field (relative to the port).
    fn check(&self) -> Result<(), Invalid> {
        let at = FieldPath::default();
        if self.socket.as_os_str().is_empty() {
            return Err(at.key("socket").invalid(ConfigError::NoSocket));
        }
        if self.mac.is_multicast() {
            return Err(at.key("mac").invalid(ConfigError::MulticastMac(self.mac)));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(at.key("mtu").invalid(ConfigError::BadMtu(self.mtu.into())));
        }
        if !(1..=MAX_QUEUE_PAIRS).contains(&self.queue_pairs) {
            let e = ConfigError::BadQueues(self.queue_pairs.into());
            return Err(at.key("queues").invalid(e));
        }
        Ok(())
    }

    /// The switch's view of the port.
    pub fn switch_config(&self) -> bridge_core::PortConfig {
        bridge_core::PortConfig {
            vlan: self.vlan.clone().unwrap_or_default(),
            max_learned: self.max_learned,
        }
    }
}

impl FromStr for PortConfig {
    type Err = ConfigError;

    /// `PATH[,network=NAME][,mac=MAC][,queues=N][,mtu=N][,role=server|client][,vlan=N]`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(ConfigError::NoSocket)?;
        let mut port = PortConfig::new(path);
        for opt in parts {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| ConfigError::MissingValue(opt.to_string()))?;
            let number = || -> Result<u32, ConfigError> {
                value.parse().map_err(|_| ConfigError::BadNumber {
                    key: key.to_string(),
                    value: value.to_string(),
                })
            };
            match key {
                "network" => port.network = value.to_string(),
                "mac" => port.mac = value.parse()?,
                "queues" => {
                    let n = number()?;
                    port.queue_pairs = u16::try_from(n).map_err(|_| ConfigError::BadQueues(n))?;
                }
                "mtu" => {
                    let n = number()?;
                    port.mtu = u16::try_from(n).map_err(|_| ConfigError::BadMtu(n))?;
                }
                "role" => port.role = value.parse()?,
                "vlan" => port.vlan = Some(PortVlan::Access(parse_vlan(value)?)),
                _ => return Err(ConfigError::UnknownOption(key.to_string())),
            }
        }
        port.validate()?;
        Ok(port)
    }
}

/// The transport protocol of a port forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl FromStr for Protocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(ConfigError::BadForward(format!(
                "protocol {s:?} is neither tcp nor udp"
            ))),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A port forward: connections to a host address go to a guest's address on a NAT network
/// (libvirt users write iptables DNAT rules for this).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ForwardConfig {
    /// The NAT network the guest is on.
    pub network: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host address and port to listen on.
    pub listen: SocketAddr,
    /// The guest's address and port.
    pub guest: SocketAddrV4,
}

/// What a policy's frames get when the module cannot judge them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Drop (the default).
    #[default]
    Closed,
    /// No opinion: the rest of the chain decides.
    Open,
    /// A static baseline: established and related flows, ARP and DHCP pass; the rest drops.
    Baseline,
}

impl FromStr for FailMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "closed" => Ok(FailMode::Closed),
            "open" => Ok(FailMode::Open),
            "baseline" => Ok(FailMode::Baseline),
            _ => Err(format!("fail mode {s:?} is not closed, open or baseline")),
        }
    }
}

impl fmt::Display for FailMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
            FailMode::Baseline => "baseline",
        })
    }
}

/// A WASM policy module to load (policy-abi.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Its name, unique; keys its maps and counters across reloads.
    pub name: String,
    /// The module's path.
    pub module: PathBuf,
    /// Its configuration text, given to the module at load.
    pub config: String,
    /// What its frames get when it cannot judge them.
    pub fail_mode: FailMode,
    /// The network whose chain it joins; `None`: the operator chain (every network, first).
    pub network: Option<String>,
}

/// The control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlConfig {
    /// Its path; `None`: the default location (`/run/vhost-net-backend/control.sock` for root,
    /// under `$XDG_RUNTIME_DIR` otherwise).
    pub socket: Option<PathBuf>,
    /// Its permission bits.
    pub mode: u32,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: None,
            mode: DEFAULT_CONTROL_MODE,
        }
    }
}

/// The daemon's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The networks, in order (the first is network 0).
    pub networks: Vec<NetworkConfig>,
    /// The ports.
    pub ports: Vec<PortConfig>,
    /// Port forwards into NAT networks.
    pub forwards: Vec<ForwardConfig>,
    /// Policy modules, in chain order.
    pub policies: Vec<PolicyConfig>,
    /// The control socket.
    pub control: ControlConfig,
    /// The OpenMetrics endpoint's address, if any (off by default).
    pub metrics: Option<SocketAddr>,
    /// Where the daemon keeps its state (the NAT networks' leases files); `None`: the default
    /// location (`/var/lib/vhost-net-backend` for root, else `$XDG_STATE_HOME` or
    /// `~/.local/state`, `/vhost-net-backend`).
    pub state_dir: Option<PathBuf>,
    /// A pool of this many datapath threads shares the ports; `None`: each port has its own.
    pub workers: Option<NonZeroUsize>,
    /// Microseconds a worker keeps polling its dry transmit queues, kicks off, before it sleeps;
    /// 0: it sleeps at once.
    pub poll_us: u32,
}

impl Default for Config {
    /// The embedded default: libvirt's "default" NAT network, no ports.
    fn default() -> Self {
        Config {
            networks: vec![NetworkConfig::libvirt_default()],
            ports: Vec::new(),
            forwards: Vec::new(),
            policies: Vec::new(),
            control: ControlConfig::default(),
            metrics: None,
            state_dir: None,
            workers: None,
            poll_us: 0,
        }
    }
}

/// Whether `name` can name a network or a policy.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Config {
    /// The embedded default with these ports.
    pub fn with_ports(ports: Vec<PortConfig>) -> Self {
        Config {
            ports,
            ..Config::default()
        }
    }

    /// Puts a port that names the network "default" (the default) on the first network when
    /// no network has that name.
    pub fn place_port(&self, port: &mut PortConfig) {
        if port.network == DEFAULT_NETWORK && self.network(DEFAULT_NETWORK).is_none() {
            if let Some(first) = self.networks.first() {
                port.network.clone_from(&first.name);
            }
        }
    }

    /// The network named `name`.
    pub fn network(&self, name: &str) -> Option<&NetworkConfig> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// Checks everything; the error names the field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.networks.is_empty() {
            return Err(FieldPath::root("network").invalid(ConfigError::NoNetworks));
        }
        for (i, n) in self.networks.iter().enumerate() {
            let at = FieldPath::root("network").index(i);
            if !valid_name(&n.name) {
                return Err(at.key("name").invalid(ConfigError::BadName(n.name.clone())));
            }
            if self.networks[..i].iter().any(|m| m.name == n.name) {
                let e = ConfigError::DuplicateName(n.name.clone());
                return Err(at.key("name").invalid(e));
            }
            n.validate(&at)?;
        }
        for (i, p) in self.ports.iter().enumerate() {
            self.check_port(p, &self.ports[..i])
                .map_err(|e| e.under(FieldPath::root("port").index(i)))?;
        }
        for (i, f) in self.forwards.iter().enumerate() {
            self.check_forward(f, &self.forwards[..i])
                .map_err(|e| e.under(FieldPath::root("forward").index(i)))?;
        }
        for (i, p) in self.policies.iter().enumerate() {
            let at = FieldPath::root("policy").index(i);
            if !valid_name(&p.name) {
                return Err(at.key("name").invalid(ConfigError::BadName(p.name.clone())));
            }
            if self.policies[..i].iter().any(|q| q.name == p.name) {
                let e = ConfigError::DuplicateName(p.name.clone());
                return Err(at.key("name").invalid(e));
            }
            if p.module.as_os_str().is_empty() {
                return Err(at.key("module").invalid(ConfigError::NoModule));
            }
            if let Some(net) = &p.network {
                if self.network(net).is_none() {
                    let e = ConfigError::NoSuchNetwork(net.clone());
                    return Err(at.key("network").invalid(e));
                }
            }
        }
        if self.control.mode > 0o777 {
            let e = ConfigError::BadMode(self.control.mode);
            return Err(FieldPath::root("control").key("mode").invalid(e));
        }
        Ok(())
    }

    /// Checks `port` against the networks and the ports before it (`others`); the error's
    /// field is relative to the port.
    pub fn check_port(&self, port: &PortConfig, others: &[PortConfig]) -> Result<(), Invalid> {
        port.check()?;
        let at = FieldPath::default();
        if others.iter().any(|q| q.socket == port.socket) {
            let e = ConfigError::DuplicateSocket(port.socket.clone());
            return Err(at.key("socket").invalid(e));
        }
        let Some(network) = self.network(&port.network) else {
            let e = ConfigError::NoSuchNetwork(port.network.clone());
            return Err(at.key("network").invalid(e));
        };
        if port.vlan.is_some() && !network.switch.vlan_filtering {
            let e = ConfigError::VlanFilteringOff(network.name.clone());
            let field = match port.vlan {
                Some(PortVlan::Trunk { .. }) => "trunk",
                _ => "vlan",
            };
            return Err(at.key(field).invalid(e));
        }
        Ok(())
    }

    /// Checks a port forward against the networks and the forwards before it; the error's
    /// field is relative to the forward.
    pub fn check_forward(
        &self,
        forward: &ForwardConfig,
        others: &[ForwardConfig],
    ) -> Result<(), Invalid> {
        let at = FieldPath::default();
        let Some(network) = self.network(&forward.network) else {
            let e = ConfigError::NoSuchNetwork(forward.network.clone());
            return Err(at.key("network").invalid(e));
        };
        let NetworkMode::Nat(nat) = &network.mode else {
            let e = ConfigError::BadForward(format!("network {:?} is not NAT", network.name));
            return Err(at.key("network").invalid(e));
        };
        if !nat.is_host_address(*forward.guest.ip()) {
            let e = ConfigError::BadForward(format!(
                "{} is not a guest address of {}",
                forward.guest.ip(),
                nat.subnet
            ));
            return Err(at.key("guest").invalid(e));
        }
        let clash = |o: &ForwardConfig| {
            o.protocol == forward.protocol
                && o.listen.port() == forward.listen.port()
                && (o.listen.ip() == forward.listen.ip()
                    || o.listen.ip().is_unspecified()
                    || forward.listen.ip().is_unspecified())
        };
        if others.iter().any(clash) {
            let e =
                ConfigError::DuplicateForward(format!("{} {}", forward.protocol, forward.listen));
            return Err(at.key("listen").invalid(e));
        }
        Ok(())
    }
}

impl Invalid {
    /// The same error with its field placed under `base`.
    pub fn under(self, base: FieldPath) -> Invalid {
        let mut field = base;
        field.0.extend(self.field.0);
        Invalid {
            field,
            error: self.error,
        }
    }
}

/// A DNS server address: an IP address with an optional port (53 by default), `[v6]:port` for
/// IPv6 with a port.
pub fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not an IP address (with an optional :port)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let m: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m, MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1]));
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!("52-54-00-ab-cd-01".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
            "",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_mac_is_local_unicast_and_stable() {
        let a = MacAddr::local_from(b"/tmp/vm0.sock");
        assert_eq!(a.0[0] & 0x03, 0x02);
        assert_eq!(a, MacAddr::local_from(b"/tmp/vm0.sock"));
        assert_ne!(a, MacAddr::local_from(b"/tmp/vm1.sock"));
    }

    #[test]
    fn port_spec_defaults() {
        let p: PortConfig = "/tmp/vm0.sock".parse().unwrap();
        assert_eq!(p, PortConfig::new("/tmp/vm0.sock"));
        assert_eq!(
            (p.role, p.queue_pairs, p.mtu, p.network.as_str(), &p.vlan),
            (SocketRole::Listen, 1, 1500, "default", &None)
        );
    }

    #[test]
    fn port_spec_options() {
        let p: PortConfig =
            "/tmp/a.sock,mac=52:54:00:00:00:07,queues=2,mtu=9000,role=client,network=lan,vlan=10"
                .parse()
                .unwrap();
        assert_eq!(
            p,
            PortConfig {
                socket: "/tmp/a.sock".into(),
                role: SocketRole::Connect,
                network: "lan".into(),
                mac: MacAddr([0x52, 0x54, 0, 0, 0, 7]),
                queue_pairs: 2,
                mtu: 9000,
                vlan: Some(PortVlan::Access(VlanId::new(10).unwrap())),
                max_learned: bridge_core::PortConfig::DEFAULT_MAX_LEARNED,
            }
        );
        assert_eq!(
            "/a,role=server".parse::<PortConfig>().unwrap().role,
            SocketRole::Listen
        );
    }

    #[test]
    fn port_spec_errors() {
        let err = |s: &str| s.parse::<PortConfig>().unwrap_err();
        assert_eq!(err(""), ConfigError::NoSocket);
        assert_eq!(err("/a,mtu=9001"), ConfigError::BadMtu(9001));
        assert_eq!(err("/a,mtu=70000"), ConfigError::BadMtu(70000));
        assert_eq!(err("/a,queues=0"), ConfigError::BadQueues(0));
        assert_eq!(err("/a,queues=17"), ConfigError::BadQueues(17));
        assert_eq!(err("/a,role=both"), ConfigError::BadRole("both".into()));
        assert_eq!(err("/a,vlan=4095"), ConfigError::BadVlan("4095".into()));
        assert_eq!(
            err("/a,speed=10"),
            ConfigError::UnknownOption("speed".into())
        );
        assert_eq!(err("/a,mtu"), ConfigError::MissingValue("mtu".into()));
        assert!(matches!(err("/a,mtu=x"), ConfigError::BadNumber { .. }));
        assert_eq!(
            err("/a,mac=01:00:5e:00:00:01"),
            ConfigError::MulticastMac(MacAddr([1, 0, 0x5e, 0, 0, 1]))
        );
    }

    #[test]
    fn vlan_lists_parse_and_print() {
        let set = parse_vlan_list("10,20,100-103,21").unwrap();
        let ids: Vec<u16> = set.iter().map(VlanId::get).collect();
        assert_eq!(ids, [10, 20, 21, 100, 101, 102, 103]);
        assert_eq!(format_vlan_list(&set), "10,20-21,100-103");
        for bad in ["0", "4095", "10-5", "a", "", "1,,2"] {
            assert!(parse_vlan_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_is_libvirts_nat_network() {
        let c = Config::default();
        assert_eq!(c.networks.len(), 1);
        let n = &c.networks[0];
        assert_eq!(n.name, "default");
        let NetworkMode::Nat(nat) = &n.mode else {
            panic!("not NAT: {:?}", n.mode)
        };
        assert_eq!(nat.subnet.to_string(), "192.168.122.0/24");
        assert_eq!(nat.gateway.to_string(), "192.168.122.1");
        let dhcp = nat.dhcp.as_ref().unwrap();
        assert_eq!(dhcp.ranges.len(), 1);
        assert_eq!(dhcp.ranges[0].to_string(), "192.168.122.2-192.168.122.254");
        assert_eq!(nat.egress, Egress::User);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn duplicate_sockets_are_rejected() {
        let c = Config::with_ports(vec![PortConfig::new("/tmp/x"), PortConfig::new("/tmp/x")]);
        let e = c.validate().unwrap_err();
        assert_eq!(e.field.to_string(), "port[1].socket");
        assert_eq!(e.error, ConfigError::DuplicateSocket("/tmp/x".into()));
    }

    #[test]
    fn ports_name_existing_networks_and_vlans_need_filtering() {
        let mut p = PortConfig::new("/tmp/x");
        p.network = "lan".into();
        let e = Config::with_ports(vec![p]).validate().unwrap_err();
        assert_eq!(e.field.to_string(), "port[0].network");
        assert_eq!(e.error, ConfigError::NoSuchNetwork("lan".into()));

        let mut p = PortConfig::new("/tmp/x");
        p.vlan = Some(PortVlan::Access(VlanId::new(5).unwrap()));
        let mut c = Config::with_ports(vec![p]);
        let e = c.validate().unwrap_err();
        assert_eq!(e.field.to_string(), "port[0].vlan");
        c.networks[0].switch.vlan_filtering = true;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn forwards_go_into_nat_subnets_once() {
        let mut c = Config::default();
        let f = ForwardConfig {
            network: "default".into(),
            protocol: Protocol::Tcp,
            listen: "0.0.0.0:2222".parse().unwrap(),
            guest: "192.168.122.10:22".parse().unwrap(),
        };
        c.forwards.push(f.clone());
        assert_eq!(c.validate(), Ok(()));
        let mut g = f.clone();
        g.listen = "127.0.0.1:2222".parse().unwrap();
        c.forwards.push(g.clone());
        assert_eq!(
            c.validate().unwrap_err().field.to_string(),
            "forward[1].listen"
        );
        c.forwards[1].protocol = Protocol::Udp;
        assert_eq!(c.validate(), Ok(()));
        c.forwards[1].guest = "192.168.123.10:22".parse().unwrap();
        assert_eq!(
            c.validate().unwrap_err().field.to_string(),
            "forward[1].guest"
        );
    }

    #[test]
    fn dns_servers_default_to_port_53() {
        assert_eq!(
            parse_dns_server("9.9.9.9"),
            Ok("9.9.9.9:53".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("[2620:fe::fe]:5353"),
            Ok("[2620:fe::fe]:5353".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("2620:fe::fe"),
            Ok("[2620:fe::fe]:53".parse().unwrap())
        );
        assert!(parse_dns_server("resolver").is_err());
    }
}
