//! The DHCP lease table and its file format.
//!
//! One lease per address and per MAC. A lease is `Offered` (held for a client between OFFER and
//! REQUEST) or `Bound` (acknowledged); it is active until it expires. Expired and released
//! leases stay as history, so a returning client gets its old address back and new clients get
//! the address that has been free longest. Declined addresses are quarantined for a while.
//!
//! Bound leases are saved as lines in dnsmasq's leases-file format,
//! `<expiry> <mac> <address> <hostname or *> <client id or *>`, with the expiry in seconds on
//! the clock the gateway is driven with (Unix time when `now` comes from
//! `smoltcp::time::Instant::now()`), so the file survives a restart and reads like dnsmasq's.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::AddrParseError;
use std::num::ParseIntError;
use std::str::FromStr;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, Ipv4Address};

/// A malformed line in a leases file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseFileError {
    /// The line has fewer than the four fields expiry, MAC, address, hostname.
    #[error("line {line}: missing fields")]
    MissingField {
        /// 1-based line number.
        line: usize,
    },
    /// The expiry is not a number of seconds.
    #[error("line {line}: bad expiry")]
    Expiry {
        /// 1-based line number.
        line: usize,
        /// The parse failure.
        #[source]
        source: ParseIntError,
    },
    /// The MAC is not six colon-separated hex bytes.
    #[error("line {line}: bad MAC address")]
    Mac {
        /// 1-based line number.
        line: usize,
    },
    /// The address is not an IPv4 address.
    #[error("line {line}: bad IPv4 address")]
    Address {
        /// 1-based line number.
        line: usize,
        /// The parse failure.
        #[source]
        source: AddrParseError,
    },
    /// The hostname is not a valid DNS label.
    #[error("line {line}: bad hostname")]
    Hostname {
        /// 1-based line number.
        line: usize,
    },
}

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Offered, waiting for the client's REQUEST.
    Offered,
    /// Acknowledged: the client uses the address.
    Bound,
}

/// One lease: a MAC holding an address until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The client's MAC (DHCP `chaddr`).
    pub mac: EthernetAddress,
    /// The leased address.
    pub ip: Ipv4Address,
    /// The client's hostname (DHCP option 12, or the static host's name), a valid DNS label.
    pub hostname: Option<String>,
    /// When the lease ends (or ended).
    pub expires: Instant,
    /// Offered or bound.
    pub state: LeaseState,
}

impl Lease {
    /// True while the lease has not expired at `now`.
    pub fn is_active(&self, now: Instant) -> bool {
        now < self.expires
    }

    /// True while the lease is bound and has not expired at `now`.
    pub fn is_bound(&self, now: Instant) -> bool {
        self.state == LeaseState::Bound && self.is_active(now)
    }
}

/// A bound lease as saved in the leases file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Expiry in whole seconds on the gateway's clock (Unix time in the daemon).
    pub expires: i64,
    /// The client's MAC.
    pub mac: EthernetAddress,
    /// The leased address.
    pub ip: Ipv4Address,
    /// The client's hostname, if any.
    pub hostname: Option<String>,
}

impl fmt::Display for LeaseRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.mac.0;
        write!(
            f,
            "{} {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} {} {} *",
            self.expires,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            self.ip,
            self.hostname.as_deref().unwrap_or("*")
        )
    }
}

impl LeaseRecord {
    /// Parses one line of a leases file (`line` is its 1-based number, for errors).
    fn parse_line(text: &str, line: usize) -> Result<Self, LeaseFileError> {
        let mut fields = text.split_ascii_whitespace();
        let (Some(expires), Some(mac), Some(ip), Some(hostname)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(LeaseFileError::MissingField { line });
        };
        let expires = expires
            .parse()
            .map_err(|source| LeaseFileError::Expiry { line, source })?;
        let mac = EthernetAddress::from_str(mac).map_err(|()| LeaseFileError::Mac { line })?;
        let ip = ip
            .parse()
            .map_err(|source| LeaseFileError::Address { line, source })?;
        let hostname = match hostname {
            "*" => None,
            name => Some(valid_hostname(name).ok_or(LeaseFileError::Hostname { line })?),
        };
        Ok(Self {
            expires,
            mac,
            ip,
            hostname,
        })
    }
}

/// The leases file text holding `records`, one line each.
pub fn encode(records: &[LeaseRecord]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// The records of a leases file. Blank lines and dnsmasq's `duid` lines are skipped.
pub fn decode(text: &str) -> Result<Vec<LeaseRecord>, LeaseFileError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with("duid "))
        .map(|(i, l)| LeaseRecord::parse_line(l, i + 1))
        .collect()
}

/// The hostname a client may be known by: the first label of `name`, lower-cased, if it is a
/// valid DNS label (letters, digits and inner hyphens, at most 63 bytes); `None` otherwise.
pub fn valid_hostname(name: &str) -> Option<String> {
    let label = name.split('.').next()?;
    let valid = (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    valid.then(|| label.to_ascii_lowercase())
}

/// The leases of one network, with declined addresses in quarantine.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    by_ip: BTreeMap<Ipv4Address, Lease>,
    by_mac: HashMap<EthernetAddress, Ipv4Address>,
    quarantine: BTreeMap<Ipv4Address, Instant>,
    generation: u64,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease (active or not) held by `mac`.
    pub fn by_mac(&self, mac: &EthernetAddress) -> Option<&Lease> {
        self.by_mac.get(mac).and_then(|ip| self.by_ip.get(ip))
    }

    /// The lease (active or not) on `ip`.
    pub fn by_ip(&self, ip: &Ipv4Address) -> Option<&Lease> {
        self.by_ip.get(ip)
    }

    /// All leases, active or not, by address.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    /// The leases bound and unexpired at `now`.
    pub fn bound(&self, now: Instant) -> impl Iterator<Item = &Lease> {
        self.by_ip.values().filter(move |l| l.is_bound(now))
    }

    /// Counts changes to the bound leases: when it moves, the leases file is due to be written.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Inserts `lease`, replacing whatever `lease.mac` held and whatever was on `lease.ip`.
    pub fn insert(&mut self, lease: Lease) {
        let bound_change = lease.state == LeaseState::Bound
            || self
                .by_mac(&lease.mac)
                .is_some_and(|l| l.state == LeaseState::Bound)
            || self
                .by_ip(&lease.ip)
                .is_some_and(|l| l.state == LeaseState::Bound);
        self.remove_mac(&lease.mac);
        if let Some(old) = self.by_ip.remove(&lease.ip) {
            self.by_mac.remove(&old.mac);
        }
        if let Some(name) = &lease.hostname {
            // A name belongs to one client: the newest lease takes it.
            for other in self.by_ip.values_mut() {
                if other.hostname.as_deref() == Some(name) {
                    other.hostname = None;
                }
            }
        }
        self.by_mac.insert(lease.mac, lease.ip);
        self.by_ip.insert(lease.ip, lease);
        if bound_change {
            self.generation += 1;
        }
    }

    /// Removes the lease of `mac`, returning it.
    pub fn remove_mac(&mut self, mac: &EthernetAddress) -> Option<Lease> {
        let ip = self.by_mac.remove(mac)?;
        let lease = self.by_ip.remove(&ip)?;
        if lease.state == LeaseState::Bound {
            self.generation += 1;
        }
        Some(lease)
    }

    /// Ends `mac`'s lease at `now` (RELEASE), keeping it as history.
    pub fn end(&mut self, mac: &EthernetAddress, now: Instant) -> bool {
        let Some(lease) = self.by_mac.get(mac).and_then(|ip| self.by_ip.get_mut(ip)) else {
            return false;
        };
        lease.expires = lease.expires.min(now);
        self.generation += 1;
        true
    }

    /// Keeps `ip` from being leased until `until` (DECLINE).
    pub fn quarantine(&mut self, ip: Ipv4Address, until: Instant) {
        self.quarantine.insert(ip, until);
    }

    /// True while `ip` is quarantined at `now`.
    pub fn is_quarantined(&self, ip: &Ipv4Address, now: Instant) -> bool {
        self.quarantine.get(ip).is_some_and(|&until| now < until)
    }

    /// Forgets quarantines over at `now`.
    pub fn expire(&mut self, now: Instant) {
        self.quarantine.retain(|_, until| now < *until);
    }

    /// The bound, unexpired leases at `now` as file records.
    pub fn records(&self, now: Instant) -> Vec<LeaseRecord> {
        self.bound(now)
            .map(|l| LeaseRecord {
                expires: l.expires.secs(),
                mac: l.mac,
                ip: l.ip,
                hostname: l.hostname.clone(),
            })
            .collect()
    }

    /// The bound, unexpired lease whose hostname is `name` (ASCII case ignored).
    pub fn find_name(&self, name: &str, now: Instant) -> Option<&Lease> {
        self.bound(now).find(|l| {
            l.hostname
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(name))
        })
    }
}
