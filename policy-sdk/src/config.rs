//! Parsing helpers for module configuration, which is text: one directive per line, words
//! separated by blanks, `#` starts a comment. No allocation.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A configuration error: the 1-based line and what was wrong there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line number (0: the whole configuration).
    pub line: u32,
    /// What was expected or wrong.
    pub what: &'static str,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "config line {}: {}", self.line, self.what)
    }
}

/// One non-empty configuration line split into words.
#[derive(Clone, Debug)]
pub struct Line<'a> {
    /// 1-based line number.
    pub number: u32,
    words: core::str::SplitAsciiWhitespace<'a>,
}

impl<'a> Line<'a> {
    /// An error at this line.
    pub fn error(&self, what: &'static str) -> ConfigError {
        ConfigError {
            line: self.number,
            what,
        }
    }

    /// The next word, or an error naming what was expected.
    pub fn word(&mut self, what: &'static str) -> Result<&'a str, ConfigError> {
        self.words.next().ok_or(self.error(what))
    }

    /// The next word if there is one.
    pub fn next_word(&mut self) -> Option<&'a str> {
        self.words.next()
    }

    /// Fails unless every word has been read.
    pub fn end(&mut self) -> Result<(), ConfigError> {
        match self.words.next() {
            None => Ok(()),
            Some(_) => Err(self.error("unexpected words at end of line")),
        }
    }

    /// The next word parsed as `T`.
    pub fn parse<T: core::str::FromStr>(&mut self, what: &'static str) -> Result<T, ConfigError> {
        self.word(what)?.parse().map_err(|_| self.error(what))
    }

    /// The next word as a MAC address `aa:bb:cc:dd:ee:ff`.
    pub fn mac(&mut self) -> Result<[u8; 6], ConfigError> {
        let w = self.word("MAC address")?;
        parse_mac(w).ok_or(self.error("MAC address"))
    }

    /// The next word as an IPv4 address.
    pub fn ipv4(&mut self) -> Result<[u8; 4], ConfigError> {
        Ok(self.parse::<Ipv4Addr>("IPv4 address")?.octets())
    }

    /// The next word as a CIDR prefix (`10.0.0.0/8`, `fd00::/8`; a bare address is a host route).
    pub fn cidr(&mut self) -> Result<Cidr, ConfigError> {
        let w = self.word("CIDR prefix")?;
        Cidr::parse(w).ok_or(self.error("CIDR prefix"))
    }

    /// The next word as a port range: `any`, `N` or `N-M`.
    pub fn port_range(&mut self) -> Result<(u16, u16), ConfigError> {
        let w = self.word("port range")?;
        let err = self.error("port range");
        if w == "any" {
            return Ok((0, u16::MAX));
        }
        let (lo, hi) = w.split_once('-').unwrap_or((w, w));
        let lo: u16 = lo.parse().map_err(|_| err)?;
        let hi: u16 = hi.parse().map_err(|_| err)?;
        if lo > hi {
            return Err(err);
        }
        Ok((lo, hi))
    }
}

/// The non-empty, non-comment lines of `config`; fails on invalid UTF-8.
pub fn lines(config: &[u8]) -> Result<impl Iterator<Item = Line<'_>>, ConfigError> {
    let text = core::str::from_utf8(config).map_err(|_| ConfigError {
        line: 0,
        what: "not UTF-8",
    })?;
    Ok(text.lines().enumerate().filter_map(|(i, raw)| {
        let body = raw.split('#').next().unwrap_or("");
        (!body.trim().is_empty()).then(|| Line {
            number: i as u32 + 1,
            words: body.split_ascii_whitespace(),
        })
    }))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// An IPv4 or IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    /// IPv4 network and prefix length.
    V4([u8; 4], u8),
    /// IPv6 network and prefix length.
    V6([u8; 16], u8),
}

impl Cidr {
    /// Parses `addr/len` or a bare address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        match addr.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) => {
                let len = len.unwrap_or(32);
                (len <= 32).then_some(Cidr::V4(a.octets(), len))
            }
            IpAddr::V6(a) => {
                let len = len.unwrap_or(128);
                (len <= 128).then_some(Cidr::V6(a.octets(), len))
            }
        }
    }

    /// Whether the IPv4 address `ip` is inside this prefix.
    pub fn contains_v4(&self, ip: [u8; 4]) -> bool {
        match *self {
            Cidr::V4(net, len) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from_be_bytes(net) & mask == u32::from_be_bytes(ip) & mask
            }
            Cidr::V6(..) => false,
        }
    }

    /// Whether the IPv6 address `ip` is inside this prefix.
    pub fn contains_v6(&self, ip: [u8; 16]) -> bool {
        match *self {
            Cidr::V6(net, len) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from_be_bytes(net) & mask == u128::from(Ipv6Addr::from(ip)) & mask
            }
            Cidr::V4(..) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_blanks_and_comments() {
        let cfg = b"# header\n\nport 3 mac 52:54:00:00:00:03 # trailing\n  \nrule any\n";
        let mut it = lines(cfg).unwrap();
        let mut l = it.next().unwrap();
        assert_eq!(l.number, 3);
        assert_eq!(l.word("kw"), Ok("port"));
        assert_eq!(l.parse::<u32>("port"), Ok(3));
        assert_eq!(l.word("kw"), Ok("mac"));
        assert_eq!(l.mac(), Ok([0x52, 0x54, 0, 0, 0, 3]));
        assert!(l.end().is_ok());
        let mut l = it.next().unwrap();
        assert_eq!((l.number, l.word("kw")), (5, Ok("rule")));
        assert!(it.next().is_none());
        assert!(lines(&[0xff]).is_err());
    }

    #[test]
    fn port_ranges_and_errors() {
        let mut it = lines(b"22 1000-2000 any 5-4 x").unwrap();
        let mut l = it.next().unwrap();
        assert_eq!(l.port_range(), Ok((22, 22)));
        assert_eq!(l.port_range(), Ok((1000, 2000)));
        assert_eq!(l.port_range(), Ok((0, 65535)));
        assert_eq!(
            l.port_range(),
            Err(ConfigError {
                line: 1,
                what: "port range"
            })
        );
        assert!(l.port_range().is_err());
        assert!(l.port_range().is_err(), "no words left");
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("192.168.122.0/24").unwrap();
        assert!(net.contains_v4([192, 168, 122, 7]));
        assert!(!net.contains_v4([192, 168, 123, 7]));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains_v4([8, 8, 8, 8]));
        assert!(Cidr::parse("10.0.0.1").unwrap().contains_v4([10, 0, 0, 1]));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        assert!(v6.contains_v6(a) && !v6.contains_v4([253, 0, 0, 0]));
        assert!(Cidr::parse("::/0").unwrap().contains_v6([0xff; 16]));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(parse_mac("52:54:00:00:00"), None);
        assert_eq!(parse_mac("52:54:00:00:00:0g"), None);
    }
}
