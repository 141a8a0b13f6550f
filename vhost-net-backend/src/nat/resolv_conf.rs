//! The host's DNS resolvers, from resolv.conf: where a NAT network forwards its guests' queries
//! when the configuration names no upstream.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// The host's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The `nameserver` addresses of resolv.conf text, port 53, in order. Loopback resolvers
/// (systemd-resolved's 127.0.0.53, a local dnsmasq) are kept: the daemon's sockets are on the
/// host, so they reach them. Scoped IPv6 addresses (`fe80::1%eth0`) are skipped.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The nameservers of the file at `path`; glibc's default (the local host) when it names none.
pub fn load(path: &Path) -> io::Result<Vec<SocketAddr>> {
    let found = nameservers(&fs::read_to_string(path)?);
    if found.is_empty() {
        return Ok(vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 53),
        ]);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_in_order() {
        let text = "# generated\nsearch example.test\nnameserver 192.0.2.53\n\
                    nameserver   2001:db8::53 \nnameserver fe80::1%eth0\nnameserver bogus\n\
                    options edns0\nnameserver 127.0.0.53";
        assert_eq!(
            nameservers(text),
            [
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn an_empty_file_means_the_local_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        fs::write(&path, "search x\n").unwrap();
        let got = load(&path).unwrap();
        assert_eq!(got[0], "127.0.0.1:53".parse().unwrap());
        assert!(load(&dir.path().join("none")).is_err());
    }
}
