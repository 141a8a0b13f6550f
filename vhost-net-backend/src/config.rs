//! The daemon's configuration: its ports (one vhost-user socket each) and their options.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Default MTU of a port.
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU a port accepts (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// Largest MTU a port accepts (jumbo frames).
pub const MAX_MTU: u16 = 9000;
/// Most queue pairs a port offers.
pub const MAX_QUEUE_PAIRS: u16 = 16;

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
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// One port: a virtio-net device on a vhost-user socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// The unix socket path.
    pub socket: PathBuf,
    /// Listen or connect.
    pub role: SocketRole,
    /// The MAC address in the config space.
    pub mac: MacAddr,
    /// Number of queue pairs (RX + TX).
    pub queue_pairs: u16,
    /// The MTU in the config space.
    pub mtu: u16,
}

impl PortConfig {
    /// A port with defaults: listen, one queue pair, MTU 1500, and a locally administered MAC
    /// derived from the socket path.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        let socket = socket.into();
        PortConfig {
            mac: MacAddr::local_from(socket.as_os_str().as_encoded_bytes()),
            socket,
            role: SocketRole::Listen,
            queue_pairs: 1,
            mtu: DEFAULT_MTU,
        }
    }

    /// Checks the values' ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::NoSocket);
        }
        if self.mac.is_multicast() {
            return Err(ConfigError::MulticastMac(self.mac));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::BadMtu(self.mtu.into()));
        }
        if !(1..=MAX_QUEUE_PAIRS).contains(&self.queue_pairs) {
            return Err(ConfigError::BadQueues(self.queue_pairs.into()));
        }
        Ok(())
    }
}

impl FromStr for PortConfig {
    type Err = ConfigError;

    /// `PATH[,mac=MAC][,queues=N][,mtu=N][,role=server|client]`.
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
                _ => return Err(ConfigError::UnknownOption(key.to_string())),
            }
        }
        port.validate()?;
        Ok(port)
    }
}

/// The daemon's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The ports, all on the default network.
    pub ports: Vec<PortConfig>,
}

impl Config {
    /// Checks every port and that no socket is used twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, p) in self.ports.iter().enumerate() {
            p.validate()?;
            if self.ports[..i].iter().any(|q| q.socket == p.socket) {
                return Err(ConfigError::DuplicateSocket(p.socket.clone()));
            }
        }
        Ok(())
    }
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
            (p.role, p.queue_pairs, p.mtu),
            (SocketRole::Listen, 1, 1500)
        );
    }

    #[test]
    fn port_spec_options() {
        let p: PortConfig = "/tmp/a.sock,mac=52:54:00:00:00:07,queues=2,mtu=9000,role=client"
            .parse()
            .unwrap();
        assert_eq!(
            p,
            PortConfig {
                socket: "/tmp/a.sock".into(),
                role: SocketRole::Connect,
                mac: MacAddr([0x52, 0x54, 0, 0, 0, 7]),
                queue_pairs: 2,
                mtu: 9000,
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
    fn duplicate_sockets_are_rejected() {
        let c = Config {
            ports: vec![PortConfig::new("/tmp/x"), PortConfig::new("/tmp/x")],
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::DuplicateSocket("/tmp/x".into()))
        );
    }
}
