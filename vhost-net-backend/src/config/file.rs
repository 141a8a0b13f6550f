//! The configuration file (TOML). Errors name the file, the line and column, and the field,
//! and quote the line:
//!
//! ```text
//! /etc/vhost-net-backend.toml:9:21: network[0].dhcp.ranges[0]: DHCP range 192.168.122.2-192.168.123.9 is not an ascending range inside 192.168.122.0/24
//!   |
//! 9 | ranges = ["192.168.122.2-192.168.123.9"]
//!   |           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
//! ```
//!
//! The format, every key with its default, is in docs/operations.md; [`to_toml`] writes a
//! [`Config`] back in it (what `--print-config` shows).

use std::fmt::{self, Display};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bridge_core::wire::Ipv4Cidr;
use bridge_core::{PortVlan, VlanId, VlanSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::network::{default_ifname, limit_action_name, parse_limit_action};
use super::{
    format_vlan_list, parse_dns_server, parse_vlan, parse_vlan_list, BridgeConfig, Config,
    ConfigError, ControlConfig, DhcpConfig, DhcpRange, DnsConfig, Egress, FailMode, FieldPath,
    ForwardConfig, Invalid, MacAddr, NatConfig, NetworkConfig, NetworkMode, PathSegment,
    PolicyConfig, PortConfig, Protocol, SocketRole, StaticHost, SwitchSettings, Uplink,
};

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("{0}")]
    Invalid(Box<Located>),
}

/// A problem at a place in a file.
#[derive(Debug, PartialEq, Eq)]
pub struct Located {
    /// The file.
    pub path: PathBuf,
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
    /// The field, e.g. `network[0].subnet` (empty when the problem is the syntax).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// The line's text.
    pub text: String,
    /// Characters marked on the line.
    pub width: usize,
}

impl Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        writeln!(f, "{}", self.message)?;
        let gutter = " ".repeat(self.line.to_string().len());
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{} | {}", self.line, self.text)?;
        let pad = " ".repeat(self.column - 1);
        write!(f, "{gutter} | {pad}{}", "^".repeat(self.width.max(1)))
    }
}

/// Reads and checks the configuration file at `path`. Relative paths in it are relative to its
/// directory.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, dir).map_err(|(span, field, message)| {
        LoadError::Invalid(Box::new(locate(path, &text, span, field, message)))
    })
}

/// A problem as a span of the text, a field and a message.
type Problem = (Range<usize>, String, String);

/// Parses and checks a configuration's text; relative paths are taken from `dir`.
pub fn parse(text: &str, dir: &Path) -> Result<Config, Problem> {
    let tree = DeTable::parse(text).ok();
    let file: File = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let field = tree
            .as_ref()
            .map(|t| field_at(t, span.start))
            .unwrap_or_default();
        (span, field, e.message().to_string())
    })?;
    let config = file
        .into_config(dir)
        .and_then(|c| c.validate().map(|()| c))
        .map_err(|e| {
            let span = tree
                .as_ref()
                .map_or(0..0, |t| span_of(t, e.field.segments()));
            (span, e.field.to_string(), e.error.to_string())
        })?;
    Ok(config)
}

fn locate(path: &Path, text: &str, span: Range<usize>, field: String, message: String) -> Located {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_text = &text[line_start..line_end];
    let column = text[line_start..start].chars().count() + 1;
    let end = span.end.clamp(start, line_end);
    Located {
        path: path.to_owned(),
        line: text[..line_start].matches('\n').count() + 1,
        column,
        field,
        message,
        text: line_text.to_string(),
        width: text[start..end].chars().count(),
    }
}

/// The span of the value at `path`, or of the nearest enclosing value that is in the text.
fn span_of(tree: &Spanned<DeTable<'_>>, path: &[PathSegment]) -> Range<usize> {
    let mut span = tree.span();
    let mut value: Option<&DeValue<'_>> = None;
    let mut table = Some(tree.get_ref());
    for seg in path {
        let next = match (seg, table, value) {
            (PathSegment::Key(k), Some(t), _) => t.get(*k),
            (PathSegment::Index(i), _, Some(DeValue::Array(a))) => a.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        span = next.span();
        value = Some(next.get_ref());
        table = next.get_ref().as_table();
    }
    span
}

/// The path of the innermost key or value whose span holds `offset`. (The span of a table
/// from `[[header]]` covers the header only, so every branch is searched.)
fn field_at(tree: &Spanned<DeTable<'_>>, offset: usize) -> String {
    fn table(t: &DeTable<'_>, offset: usize) -> Option<String> {
        t.iter().find_map(|(k, v)| {
            let inner = value(v.get_ref(), offset);
            let here = k.span().contains(&offset) || v.span().contains(&offset);
            match inner {
                Some(rest) => Some(format!("{}{rest}", k.get_ref())),
                None => here.then(|| k.get_ref().to_string()),
            }
        })
    }
    fn value(v: &DeValue<'_>, offset: usize) -> Option<String> {
        match v {
            DeValue::Table(t) => table(t, offset).map(|p| format!(".{p}")),
            DeValue::Array(a) => {
                a.iter()
                    .enumerate()
                    .find_map(|(i, e)| match value(e.get_ref(), offset) {
                        Some(rest) => Some(format!("[{i}]{rest}")),
                        None => e.span().contains(&offset).then(|| format!("[{i}]")),
                    })
            }
            _ => None,
        }
    }
    table(tree.get_ref(), offset).unwrap_or_default()
}

/// A value written as a string in the file, parsed with `FromStr`, written with `Display`.
#[derive(Clone, Debug)]
struct Str<T>(T);

impl<'de, T: FromStr> Deserialize<'de> for Str<T>
where
    T::Err: Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Str).map_err(serde::de::Error::custom)
    }
}

impl<T: Display> Serialize for Str<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A DNS server: an address with an optional port.
#[derive(Clone, Debug)]
struct DnsServer(SocketAddr);

impl FromStr for DnsServer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_dns_server(s).map(DnsServer)
    }
}

impl Display for DnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SocketAddr::V4(a) if a.port() == 53 => write!(f, "{}", a.ip()),
            a => write!(f, "{a}"),
        }
    }
}

/// An IPv4 subnet, `192.168.122.0/24`.
#[derive(Clone, Copy, Debug)]
struct Subnet(Ipv4Cidr);

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(Subnet)
            .map_err(|()| format!("{s:?} is not an IPv4 subnet like 192.168.122.0/24"))
    }
}

impl Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A VLAN list, `10,20,100-200`.
#[derive(Clone, Debug)]
struct VlanList(VlanSet);

impl FromStr for VlanList {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        parse_vlan_list(s).map(VlanList)
    }
}

impl Display for VlanList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_vlan_list(&self.0))
    }
}

/// A limit action by name.
#[derive(Clone, Copy, Debug)]
struct LimitName(bridge_core::LimitAction);

impl FromStr for LimitName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_limit_action(s).map(LimitName)
    }
}

impl Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(limit_action_name(self.0))
    }
}

/// The file's shape. Every table refuses keys it does not know.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workers: Option<NonZeroUsize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    poll_us: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    control: Option<ControlFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<MetricsFile>,
    #[serde(default, rename = "network", skip_serializing_if = "Vec::is_empty")]
    networks: Vec<NetworkFile>,
    #[serde(default, rename = "port", skip_serializing_if = "Vec::is_empty")]
    ports: Vec<PortFile>,
    #[serde(default, rename = "forward", skip_serializing_if = "Vec::is_empty")]
    forwards: Vec<ForwardFile>,
    #[serde(default, rename = "policy", skip_serializing_if = "Vec::is_empty")]
    policies: Vec<PolicyFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ControlFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    listen: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    Nat,
    Bridge,
    Isolated,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum EgressName {
    User,
    Kernel,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum UplinkKind {
    AfPacket,
    Tap,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    name: String,
    mode: Option<ModeName>,
    // nat
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet: Option<Str<Subnet>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway_mac: Option<Str<MacAddr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    egress: Option<EgressName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leases_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_loopback: Option<bool>,
    // switch
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vlan_filtering: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ageing_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_learned: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit_action: Option<Str<LimitName>>,
    // tables last, as TOML writes them
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dhcp: Option<DhcpFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<DnsFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uplink: Option<UplinkFile>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DhcpFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ranges: Option<Vec<Str<DhcpRange>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<HostFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    mac: Str<MacAddr>,
    ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DnsFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upstreams: Vec<Str<DnsServer>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct UplinkFile {
    kind: UplinkKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bridge: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PortFile {
    socket: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Str<SocketRole>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<Str<MacAddr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queues: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trunk: Option<Str<VlanList>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    native_vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_learned: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ForwardFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<Str<Protocol>>,
    listen: SocketAddr,
    guest: SocketAddrV4,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    module: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fail_mode: Option<Str<FailMode>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
}

/// An error about a key that does not apply where it is.
fn misplaced(at: FieldPath, what: &str) -> Invalid {
    at.invalid(ConfigError::Network(format!("applies to {what} only")))
}

/// `path` taken relative to `dir` when it is relative.
fn resolve(dir: &Path, path: PathBuf) -> PathBuf {
    if path.is_relative() && dir != Path::new("") {
        dir.join(path)
    } else {
        path
    }
}

impl File {
    fn into_config(self, dir: &Path) -> Result<Config, Invalid> {
        let networks = if self.networks.is_empty() {
            Config::default().networks
        } else {
            let files = self.networks.into_iter().enumerate();
            files
                .map(|(i, n)| n.into_network(&FieldPath::root("network").index(i), dir))
                .collect::<Result<Vec<_>, _>>()?
        };
        let first = networks[0].name.clone();
        let ports = self.ports.into_iter().enumerate();
        let ports = ports
            .map(|(i, p)| p.into_port(&FieldPath::root("port").index(i), dir, &first))
            .collect::<Result<Vec<_>, _>>()?;
        let forwards = self
            .forwards
            .into_iter()
            .map(|f| ForwardConfig {
                network: f.network.unwrap_or_else(|| first.clone()),
                protocol: f.protocol.map_or(Protocol::Tcp, |p| p.0),
                listen: f.listen,
                guest: f.guest,
            })
            .collect();
        let policies = self
            .policies
            .into_iter()
            .map(|p| PolicyConfig {
                name: p.name,
                module: resolve(dir, p.module),
                config: p.config.unwrap_or_default(),
                fail_mode: p.fail_mode.map_or(FailMode::default(), |f| f.0),
                network: p.network,
            })
            .collect();
        let control = self
            .control
            .map_or_else(ControlConfig::default, |c| ControlConfig {
                socket: c.socket.map(|s| resolve(dir, s)),
                mode: c.mode.unwrap_or(super::DEFAULT_CONTROL_MODE),
            });
        Ok(Config {
            networks,
            ports,
            forwards,
            policies,
            control,
            metrics: self.metrics.map(|m| m.listen),
            state_dir: self.state_dir.map(|d| resolve(dir, d)),
            workers: self.workers,
            poll_us: self.poll_us.unwrap_or(0),
        })
    }

    fn from_config(c: &Config) -> File {
        let control = (c.control != ControlConfig::default()).then(|| ControlFile {
            socket: c.control.socket.clone(),
            mode: Some(c.control.mode),
        });
        File {
            state_dir: c.state_dir.clone(),
            workers: c.workers,
            poll_us: Some(c.poll_us).filter(|&p| p != 0),
            control,
            metrics: c.metrics.map(|listen| MetricsFile { listen }),
            networks: c.networks.iter().map(NetworkFile::from_network).collect(),
            ports: c.ports.iter().map(PortFile::from_port).collect(),
            forwards: c
                .forwards
                .iter()
                .map(|f| ForwardFile {
                    network: Some(f.network.clone()),
                    protocol: Some(Str(f.protocol)),
                    listen: f.listen,
                    guest: f.guest,
                })
                .collect(),
            policies: c
                .policies
                .iter()
                .map(|p| PolicyFile {
                    name: p.name.clone(),
                    module: p.module.clone(),
                    config: Some(p.config.clone()).filter(|s| !s.is_empty()),
                    fail_mode: Some(Str(p.fail_mode)),
                    network: p.network.clone(),
                })
                .collect(),
        }
    }
}

impl NetworkFile {
    fn into_network(self, at: &FieldPath, dir: &Path) -> Result<NetworkConfig, Invalid> {
        let defaults = SwitchSettings::default();
        let switch = SwitchSettings {
            ageing_time: self
                .ageing_seconds
                .map_or(defaults.ageing_time, Duration::from_secs),
            max_learned: self.max_learned.unwrap_or(defaults.max_learned),
            limit_action: self
                .limit_action
                .as_ref()
                .map_or(defaults.limit_action, |l| l.0 .0),
            vlan_filtering: self.vlan_filtering.unwrap_or(defaults.vlan_filtering),
        };
        let mode = self.mode.unwrap_or(ModeName::Nat);
        if mode != ModeName::Nat {
            let nat_only = [
                ("subnet", self.subnet.is_some()),
                ("gateway", self.gateway.is_some()),
                ("gateway_mac", self.gateway_mac.is_some()),
                ("mtu", self.mtu.is_some()),
                ("domain", self.domain.is_some()),
                ("egress", self.egress.is_some()),
                ("interface", self.interface.is_some()),
                ("leases_file", self.leases_file.is_some()),
                ("host_loopback", self.host_loopback.is_some()),
                ("dhcp", self.dhcp.is_some()),
                ("dns", self.dns.is_some()),
            ];
            if let Some((key, _)) = nat_only.iter().find(|(_, set)| *set) {
                return Err(misplaced(at.key(key), "nat networks"));
            }
        }
        if mode != ModeName::Bridge && self.uplink.is_some() {
            return Err(misplaced(at.key("uplink"), "bridge networks"));
        }
        let mode = match mode {
            ModeName::Nat => NetworkMode::Nat(self.nat(at, dir)?),
            ModeName::Bridge => {
                let Some(u) = self.uplink else {
                    let e = ConfigError::Network("a bridge network needs an uplink".into());
                    return Err(at.key("uplink").invalid(e));
                };
                let uplink = at.key("uplink");
                let uplink = match u.kind {
                    UplinkKind::AfPacket => {
                        if u.bridge.is_some() {
                            return Err(misplaced(uplink.key("bridge"), "tap uplinks"));
                        }
                        let Some(interface) = u.interface else {
                            let e = ConfigError::Network(
                                "an af_packet uplink needs the host interface".into(),
                            );
                            return Err(uplink.key("interface").invalid(e));
                        };
                        Uplink::AfPacket { interface }
                    }
                    UplinkKind::Tap => Uplink::Tap {
                        interface: u.interface.unwrap_or_else(|| default_ifname(&self.name)),
                        bridge: u.bridge,
                    },
                };
                NetworkMode::Bridge(BridgeConfig { uplink })
            }
            ModeName::Isolated => NetworkMode::Isolated,
        };
        Ok(NetworkConfig {
            name: self.name,
            mode,
            switch,
        })
    }

    fn nat(&self, at: &FieldPath, dir: &Path) -> Result<NatConfig, Invalid> {
        let d = NatConfig::libvirt_default();
        let subnet = self.subnet.as_ref().map_or(d.subnet, |s| s.0 .0);
        let gateway = self.gateway.unwrap_or_else(|| {
            let first = u32::from(subnet.network().address()) + 1;
            first.into()
        });
        let egress = match self.egress {
            None | Some(EgressName::User) => {
                if self.interface.is_some() {
                    return Err(misplaced(at.key("interface"), "egress = \"kernel\""));
                }
                Egress::User
            }
            Some(EgressName::Kernel) => {
                if self.host_loopback.is_some() {
                    return Err(misplaced(at.key("host_loopback"), "egress = \"user\""));
                }
                Egress::Kernel {
                    interface: self
                        .interface
                        .clone()
                        .unwrap_or_else(|| default_ifname(&self.name)),
                }
            }
        };
        let dhcp = match &self.dhcp {
            Some(DhcpFile {
                enabled: Some(false),
                ranges,
                lease_seconds,
                hosts,
            }) => {
                let dhcp = at.key("dhcp");
                let unused = [
                    ("ranges", ranges.is_some()),
                    ("lease_seconds", lease_seconds.is_some()),
                    ("hosts", !hosts.is_empty()),
                ];
                if let Some((key, _)) = unused.iter().find(|(_, set)| *set) {
                    return Err(misplaced(dhcp.key(key), "an enabled DHCP server"));
                }
                None
            }
            Some(f) => {
                let mut dhcp = DhcpConfig::whole_subnet(subnet, gateway);
                if let Some(ranges) = &f.ranges {
                    dhcp.ranges = ranges.iter().map(|r| r.0).collect();
                }
                if let Some(s) = f.lease_seconds {
                    dhcp.lease_time = Duration::from_secs(s);
                }
                dhcp.hosts = f
                    .hosts
                    .iter()
                    .map(|h| StaticHost {
                        mac: h.mac.0,
                        ip: h.ip,
                        name: h.name.clone(),
                    })
                    .collect();
                Some(dhcp)
            }
            None => Some(DhcpConfig::whole_subnet(subnet, gateway)),
        };
        let dns = match &self.dns {
            Some(DnsFile {
                enabled: Some(false),
                upstreams,
            }) => {
                if !upstreams.is_empty() {
                    let at = at.key("dns").key("upstreams");
                    return Err(misplaced(at, "an enabled DNS service"));
                }
                None
            }
            Some(f) => Some(DnsConfig {
                upstreams: f.upstreams.iter().map(|u| u.0 .0).collect(),
            }),
            None => Some(DnsConfig::default()),
        };
        Ok(NatConfig {
            subnet,
            gateway,
            gateway_mac: self.gateway_mac.as_ref().map(|m| m.0),
            mtu: self.mtu.unwrap_or(d.mtu),
            domain: self.domain.clone(),
            dhcp,
            dns,
            egress,
            leases_file: self.leases_file.clone().map(|p| resolve(dir, p)),
            host_loopback: self.host_loopback.unwrap_or(d.host_loopback),
        })
    }

    fn from_network(n: &NetworkConfig) -> NetworkFile {
        let mut f = NetworkFile {
            name: n.name.clone(),
            vlan_filtering: Some(n.switch.vlan_filtering),
            ageing_seconds: Some(n.switch.ageing_time.as_secs()),
            max_learned: Some(n.switch.max_learned),
            limit_action: Some(Str(LimitName(n.switch.limit_action))),
            ..NetworkFile::default()
        };
        match &n.mode {
            NetworkMode::Nat(nat) => {
                f.mode = Some(ModeName::Nat);
                f.subnet = Some(Str(Subnet(nat.subnet)));
                f.gateway = Some(nat.gateway);
                f.gateway_mac = nat.gateway_mac.map(Str);
                f.mtu = Some(nat.mtu);
                f.domain.clone_from(&nat.domain);
                f.leases_file.clone_from(&nat.leases_file);
                f.host_loopback = nat.host_loopback.then_some(true);
                match &nat.egress {
                    Egress::User => f.egress = Some(EgressName::User),
                    Egress::Kernel { interface } => {
                        f.egress = Some(EgressName::Kernel);
                        f.interface = Some(interface.clone());
                    }
                }
                f.dhcp = Some(match &nat.dhcp {
                    None => DhcpFile {
                        enabled: Some(false),
                        ..DhcpFile::default()
                    },
                    Some(d) => DhcpFile {
                        enabled: Some(true),
                        ranges: Some(d.ranges.iter().map(|r| Str(*r)).collect()),
                        lease_seconds: Some(d.lease_time.as_secs()),
                        hosts: d
                            .hosts
                            .iter()
                            .map(|h| HostFile {
                                mac: Str(h.mac),
                                ip: h.ip,
                                name: h.name.clone(),
                            })
                            .collect(),
                    },
                });
                f.dns = Some(match &nat.dns {
                    None => DnsFile {
                        enabled: Some(false),
                        upstreams: Vec::new(),
                    },
                    Some(d) => DnsFile {
                        enabled: Some(true),
                        upstreams: d.upstreams.iter().map(|u| Str(DnsServer(*u))).collect(),
                    },
                });
            }
            NetworkMode::Bridge(b) => {
                f.mode = Some(ModeName::Bridge);
                f.uplink = Some(match &b.uplink {
                    Uplink::AfPacket { interface } => UplinkFile {
                        kind: UplinkKind::AfPacket,
                        interface: Some(interface.clone()),
                        bridge: None,
                    },
                    Uplink::Tap { interface, bridge } => UplinkFile {
                        kind: UplinkKind::Tap,
                        interface: Some(interface.clone()),
                        bridge: bridge.clone(),
                    },
                });
            }
            NetworkMode::Isolated => f.mode = Some(ModeName::Isolated),
        }
        f
    }
}

impl PortFile {
    fn into_port(self, at: &FieldPath, dir: &Path, network: &str) -> Result<PortConfig, Invalid> {
        let mut p = PortConfig::new(resolve(dir, self.socket));
        p.network = self.network.unwrap_or_else(|| network.to_string());
        if let Some(r) = self.role {
            p.role = r.0;
        }
        if let Some(m) = self.mac {
            p.mac = m.0;
        }
        if let Some(q) = self.queues {
            p.queue_pairs = q;
        }
        if let Some(m) = self.mtu {
            p.mtu = m;
        }
        if let Some(m) = self.max_learned {
            p.max_learned = m;
        }
        let vlan_id = |key: &'static str, v: u16| {
            parse_vlan(&v.to_string()).map_err(|e| at.key(key).invalid(e))
        };
        p.vlan = match (self.vlan, self.trunk, self.native_vlan) {
            (None, None, None) => None,
            (Some(v), None, None) => Some(PortVlan::Access(vlan_id("vlan", v)?)),
            (None, trunk, native) => Some(PortVlan::Trunk {
                allowed: trunk.map_or_else(VlanSet::new, |t| t.0 .0),
                native: native.map(|n| vlan_id("native_vlan", n)).transpose()?,
            }),
            (Some(_), _, _) => return Err(at.key("vlan").invalid(ConfigError::AccessAndTrunk)),
        };
        Ok(p)
    }

    fn from_port(p: &PortConfig) -> PortFile {
        let (vlan, trunk, native_vlan) = match &p.vlan {
            None => (None, None, None),
            Some(PortVlan::Access(v)) => (Some(v.get()), None, None),
            Some(PortVlan::Trunk { allowed, native }) => (
                None,
                Some(Str(VlanList(allowed.clone()))),
                native.map(VlanId::get),
            ),
        };
        PortFile {
            socket: p.socket.clone(),
            role: Some(Str(p.role)),
            network: Some(p.network.clone()),
            mac: Some(Str(p.mac)),
            queues: Some(p.queue_pairs),
            mtu: Some(p.mtu),
            vlan,
            trunk,
            native_vlan,
            max_learned: Some(p.max_learned),
        }
    }
}

/// `config` in the file's format, every setting explicit.
pub fn to_toml(config: &Config) -> String {
    toml::to_string(&File::from_config(config)).unwrap_or_else(|e| format!("# {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, String> {
        parse(text, Path::new("/etc/vnb")).map_err(|(span, field, message)| {
            locate(Path::new("/etc/vnb/c.toml"), text, span, field, message).to_string()
        })
    }

    const FULL: &str = r#"
state_dir = "state"

[control]
socket = "run/control.sock"
mode = 0o660

[metrics]
listen = "127.0.0.1:9470"

[[network]]
name = "default"
mode = "nat"
subnet = "192.168.122.0/24"
gateway = "192.168.122.1"
domain = "vm.test"
host_loopback = true

[network.dhcp]
ranges = ["192.168.122.100-192.168.122.200"]
lease_seconds = 7200
hosts = [{ mac = "52:54:00:00:00:10", ip = "192.168.122.10", name = "web" }]

[network.dns]
upstreams = ["9.9.9.9", "[2620:fe::fe]:5353"]

[[network]]
name = "lan"
mode = "bridge"
uplink = { kind = "af_packet", interface = "eth0" }
vlan_filtering = true

[[network]]
name = "office"
mode = "bridge"
uplink = { kind = "tap", bridge = "br0" }

[[network]]
name = "tenants"
mode = "isolated"
max_learned = 256
ageing_seconds = 60
limit_action = "forward"

[[port]]
socket = "/run/vm0.sock"
mac = "52:54:00:00:00:10"
queues = 2

[[port]]
socket = "vm1.sock"
network = "lan"
role = "connect"
vlan = 10

[[port]]
socket = "/run/router.sock"
network = "lan"
trunk = "10,20,100-200"
native_vlan = 1

[[forward]]
listen = "0.0.0.0:2222"
guest = "192.168.122.10:22"

[[policy]]
name = "no-smtp"
module = "policies/no_smtp.wasm"
network = "default"
fail_mode = "open"
config = "deny tcp 25"
"#;

    #[test]
    fn a_full_file_loads() {
        let c = load_str(FULL).unwrap();
        assert_eq!(
            c.control.socket.as_deref(),
            Some(Path::new("/etc/vnb/run/control.sock"))
        );
        assert_eq!(c.control.mode, 0o660);
        assert_eq!(c.metrics, Some("127.0.0.1:9470".parse().unwrap()));
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/etc/vnb/state")));
        let names: Vec<&str> = c.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["default", "lan", "office", "tenants"]);
        let NetworkMode::Nat(nat) = &c.networks[0].mode else {
            panic!("not nat")
        };
        assert_eq!(nat.domain.as_deref(), Some("vm.test"));
        assert!(nat.host_loopback);
        let dhcp = nat.dhcp.as_ref().unwrap();
        assert_eq!(dhcp.lease_time, Duration::from_secs(7200));
        assert_eq!(dhcp.hosts[0].name.as_deref(), Some("web"));
        assert_eq!(
            nat.dns.as_ref().unwrap().upstreams,
            [
                "9.9.9.9:53".parse().unwrap(),
                "[2620:fe::fe]:5353".parse().unwrap()
            ]
        );
        assert_eq!(
            c.networks[1].mode,
            NetworkMode::Bridge(BridgeConfig {
                uplink: Uplink::AfPacket {
                    interface: "eth0".into()
                }
            })
        );
        assert_eq!(
            c.networks[2].mode,
            NetworkMode::Bridge(BridgeConfig {
                uplink: Uplink::Tap {
                    interface: "vnb-office".into(),
                    bridge: Some("br0".into())
                }
            })
        );
        let t = &c.networks[3].switch;
        assert_eq!(
            (t.max_learned, t.ageing_time, t.limit_action),
            (
                256,
                Duration::from_secs(60),
                bridge_core::LimitAction::ForwardWithoutLearning
            )
        );
        assert_eq!(c.ports[0].network, "default", "the first network");
        assert_eq!(c.ports[0].queue_pairs, 2);
        assert_eq!(c.ports[1].socket, Path::new("/etc/vnb/vm1.sock"));
        assert_eq!(c.ports[1].role, SocketRole::Connect);
        let Some(PortVlan::Trunk { allowed, native }) = &c.ports[2].vlan else {
            panic!("not a trunk")
        };
        assert_eq!(format_vlan_list(allowed), "10,20,100-200");
        assert_eq!(native.map(VlanId::get), Some(1));
        assert_eq!(c.forwards[0].network, "default");
        assert_eq!(c.forwards[0].protocol, Protocol::Tcp);
        assert_eq!(c.policies[0].fail_mode, FailMode::Open);
        assert_eq!(
            c.policies[0].module,
            Path::new("/etc/vnb/policies/no_smtp.wasm")
        );
    }

    #[test]
    fn printing_and_loading_again_gives_the_same_config() {
        let c = load_str(FULL).unwrap();
        let text = to_toml(&c);
        assert_eq!(load_str(&text), Ok(c), "{text}");
        let d = Config::default();
        assert_eq!(load_str(&to_toml(&d)), Ok(d));
    }

    #[test]
    fn an_empty_file_is_the_embedded_default() {
        assert_eq!(load_str(""), Ok(Config::default()));
        let c = load_str("[[port]]\nsocket = \"/run/vm0.sock\"\n").unwrap();
        assert_eq!(
            c,
            Config::with_ports(vec![PortConfig::new("/run/vm0.sock")])
        );
    }

    /// The first line of the error for `text`.
    fn error(text: &str) -> String {
        let e = load_str(text).unwrap_err();
        e.lines().next().unwrap().to_string()
    }

    #[test]
    fn syntax_and_type_errors_name_line_and_field() {
        assert_eq!(
            error("[[network]]\nname = \"x\"\nmode = \"nat\"\nmtu = \"big\"\n"),
            "/etc/vnb/c.toml:4:7: network[0].mtu: invalid type: string \"big\", expected u16"
        );
        let e = error("[[network]]\nname = \"x\"\nsubnett = \"10.0.0.0/8\"\n");
        assert!(
            e.starts_with("/etc/vnb/c.toml:3:1: network[0].subnett: unknown field `subnett`"),
            "{e}"
        );
        let e = error("[[port]]\nsocket = \"/a\"\nmac = \"52:54:00\"\n");
        assert!(
            e.starts_with("/etc/vnb/c.toml:3:7: port[0].mac: invalid MAC address"),
            "{e}"
        );
        let e = error("[[network]]\nname = \"x\"\nmode = \"nat\"\nmode = \"bridge\"\n");
        assert!(e.starts_with("/etc/vnb/c.toml:4:1: "), "{e}");
        let e = error("[[network]]\nname = \"x\"\nmode = \"routed\"\n");
        assert!(
            e.starts_with("/etc/vnb/c.toml:3:8: network[0].mode: "),
            "{e}"
        );
    }

    #[test]
    fn validation_errors_name_line_and_field() {
        let text = "[[network]]\nname = \"default\"\nsubnet = \"192.168.122.0/24\"\n\n[network.dhcp]\nranges = [\"192.168.122.2-192.168.123.9\"]\n";
        let e = load_str(text).unwrap_err();
        assert_eq!(
            e,
            "/etc/vnb/c.toml:6:11: network[0].dhcp.ranges[0]: DHCP range 192.168.122.2-192.168.123.9 is not an ascending range inside 192.168.122.0/24\n  |\n6 | ranges = [\"192.168.122.2-192.168.123.9\"]\n  |           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^"
        );
        assert_eq!(
            error("[[port]]\nsocket = \"/a\"\nnetwork = \"lan\"\n"),
            "/etc/vnb/c.toml:3:11: port[0].network: no network is named \"lan\""
        );
        assert_eq!(
            error("[[port]]\nsocket = \"/a\"\nvlan = 5\n"),
            "/etc/vnb/c.toml:3:8: port[0].vlan: network \"default\" does not filter VLANs (set vlan_filtering = true on it)"
        );
        assert_eq!(
            error("[[network]]\nname = \"a\"\n[[network]]\nname = \"a\"\n"),
            "/etc/vnb/c.toml:4:8: network[1].name: the name \"a\" is given twice"
        );
        assert_eq!(
            error("[[network]]\nname = \"lan\"\nmode = \"bridge\"\n"),
            "/etc/vnb/c.toml:1:1: network[0].uplink: a bridge network needs an uplink"
        );
        assert_eq!(
            error("[[network]]\nname = \"lan\"\nmode = \"isolated\"\nsubnet = \"10.0.0.0/8\"\n"),
            "/etc/vnb/c.toml:4:10: network[0].subnet: applies to nat networks only"
        );
        assert_eq!(
            error("[[network]]\nname = \"n\"\negress = \"kernel\"\nhost_loopback = true\n"),
            "/etc/vnb/c.toml:4:17: network[0].host_loopback: applies to egress = \"user\" only"
        );
        assert_eq!(
            error("[[network]]\nname = \"n\"\negress = \"user\"\ninterface = \"virbr0\"\n"),
            "/etc/vnb/c.toml:4:13: network[0].interface: applies to egress = \"kernel\" only"
        );
        assert_eq!(
            error("[[port]]\nsocket = \"/a\"\nvlan = 4095\n"),
            "/etc/vnb/c.toml:3:8: port[0].vlan: invalid VLAN \"4095\" (expected ids 1..=4094, lists like 10,20,100-200)"
        );
        assert_eq!(
            error("[control]\nmode = 0o1777\n"),
            "/etc/vnb/c.toml:2:8: control.mode: mode 0o1777 is not a permission mode (0o000..=0o777)"
        );
        assert_eq!(
            error("[[policy]]\nname = \"p\"\nmodule = \"m.wasm\"\nnetwork = \"nope\"\n"),
            "/etc/vnb/c.toml:4:11: policy[0].network: no network is named \"nope\""
        );
        assert_eq!(
            error("[[network]]\nname = \"n\"\n[network.dhcp]\nenabled = false\nlease_seconds = 600\n"),
            "/etc/vnb/c.toml:5:17: network[0].dhcp.lease_seconds: applies to an enabled DHCP server only"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = load(Path::new("/nonexistent/vnb.toml")).unwrap_err();
        assert_eq!(e.to_string(), "cannot read /nonexistent/vnb.toml");
    }
}
