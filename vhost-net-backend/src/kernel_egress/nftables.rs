//! The kernel egress's nftables rules, in a table of the daemon's own per network
//! (`ip vnb_<network>`), written as an `nft -f` script and applied in one transaction.
//!
//! They are libvirt's iptables rules for its default network, in nftables:
//!
//! | libvirt (iptables) | here (nftables) |
//! |---|---|
//! | `-t nat POSTROUTING -s SUBNET ! -d SUBNET -j MASQUERADE` | `postrouting`: `ip saddr SUBNET ip daddr != SUBNET masquerade` (multicast and broadcast excepted, as libvirt does) |
//! | `FORWARD -o virbr0 -d SUBNET -m state --state RELATED,ESTABLISHED -j ACCEPT` | `forward`: `oifname IF ip daddr SUBNET ct state related,established accept` |
//! | `FORWARD -i virbr0 -s SUBNET -j ACCEPT` | `iifname IF ip saddr SUBNET accept` |
//! | `FORWARD -i virbr0 -o virbr0 -j ACCEPT` | `iifname IF oifname IF accept` |
//! | `FORWARD -o virbr0 -j REJECT`, `FORWARD -i virbr0 -j REJECT` | `oifname IF reject`, `iifname IF reject` |
//! | a DNAT rule per port forward (users write them by hand) | `prerouting` and `output`: `[ip daddr LISTEN] tcp dport P dnat to GUEST:GP`, and `forward`: `oifname IF ct status dnat accept` |
//!
//! Re-applying the script replaces the whole table atomically (it deletes the table in the same
//! transaction), so adding or removing a port forward rewrites it, and a table left by a crashed
//! daemon is replaced on the next start.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use bridge_core::wire::Ipv4Cidr;

use crate::config::Protocol;

/// A DNAT rule: connections to `listen` go to `guest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dnat {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host address and port (0.0.0.0: every local address).
    pub listen: SocketAddr,
    /// The guest's address and port.
    pub guest: SocketAddrV4,
}

/// The name of network `network`'s table: `vnb_` and the name with characters nft does not take
/// in an identifier replaced by `_`.
pub fn table_name(network: &str) -> String {
    let clean: String = network
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("vnb_{clean}")
}

/// The rules of one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    /// The table.
    pub table: String,
    /// The host interface holding the gateway address (virbr0's role).
    pub interface: String,
    /// The network's subnet.
    pub subnet: Ipv4Cidr,
    /// Port forwards.
    pub dnat: Vec<Dnat>,
}

impl Ruleset {
    /// The `nft -f` script that makes the table hold exactly these rules.
    pub fn script(&self) -> String {
        let (t, i) = (&self.table, &self.interface);
        let net = format!(
            "{}/{}",
            self.subnet.network().address(),
            self.subnet.prefix_len()
        );
        let mut s = delete_script(t);
        let _ = writeln!(s, "table ip {t} {{");
        let _ = writeln!(s, "  chain postrouting {{");
        let _ = writeln!(
            s,
            "    type nat hook postrouting priority srcnat; policy accept;"
        );
        let _ = writeln!(s, "    ip saddr {net} ip daddr 224.0.0.0/24 return");
        let _ = writeln!(s, "    ip saddr {net} ip daddr 255.255.255.255 return");
        let _ = writeln!(s, "    ip saddr {net} ip daddr != {net} masquerade");
        let _ = writeln!(s, "  }}");
        // dstnat is -100; nft 1.0.6 takes the name only in prerouting.
        for hook in ["prerouting", "output"] {
            let _ = writeln!(s, "  chain {hook} {{");
            let _ = writeln!(s, "    type nat hook {hook} priority -100; policy accept;");
            for d in &self.dnat {
                let _ = writeln!(s, "    {}", dnat_rule(d));
            }
            let _ = writeln!(s, "  }}");
        }
        let _ = writeln!(s, "  chain forward {{");
        let _ = writeln!(
            s,
            "    type filter hook forward priority filter; policy accept;"
        );
        let _ = writeln!(
            s,
            "    oifname \"{i}\" ip daddr {net} ct state related,established accept"
        );
        let _ = writeln!(
            s,
            "    oifname \"{i}\" ip daddr {net} ct status dnat accept"
        );
        let _ = writeln!(s, "    iifname \"{i}\" ip saddr {net} accept");
        let _ = writeln!(s, "    iifname \"{i}\" oifname \"{i}\" accept");
        let _ = writeln!(
            s,
            "    oifname \"{i}\" reject with icmp type port-unreachable"
        );
        let _ = writeln!(
            s,
            "    iifname \"{i}\" reject with icmp type port-unreachable"
        );
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }
}

fn dnat_rule(d: &Dnat) -> String {
    let dst = match d.listen.ip() {
        IpAddr::V4(a) if !a.is_unspecified() => format!("ip daddr {a}"),
        _ => "fib daddr type local".to_string(),
    };
    format!(
        "{dst} {} dport {} dnat to {}",
        d.protocol,
        d.listen.port(),
        d.guest
    )
}

/// A script that deletes table `table` whether or not it exists (it declares it first).
pub fn delete_script(table: &str) -> String {
    format!("table ip {table}\ndelete table ip {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn ruleset() -> Ruleset {
        Ruleset {
            table: table_name("default"),
            interface: "virbr0".into(),
            subnet: "192.168.122.0/24".parse().unwrap(),
            dnat: vec![
                Dnat {
                    protocol: Protocol::Tcp,
                    listen: "0.0.0.0:2222".parse().unwrap(),
                    guest: "192.168.122.10:22".parse().unwrap(),
                },
                Dnat {
                    protocol: Protocol::Udp,
                    listen: "192.0.2.1:5353".parse().unwrap(),
                    guest: "192.168.122.11:53".parse().unwrap(),
                },
            ],
        }
    }

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("default"), "vnb_default");
        assert_eq!(table_name("lab-net.2"), "vnb_lab_net_2");
    }

    #[test]
    fn the_script_replaces_the_table_with_libvirts_rules() {
        let s = ruleset().script();
        assert!(
            s.starts_with("table ip vnb_default\ndelete table ip vnb_default\n"),
            "{s}"
        );
        for line in [
            "ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 masquerade",
            "oifname \"virbr0\" ip daddr 192.168.122.0/24 ct state related,established accept",
            "iifname \"virbr0\" ip saddr 192.168.122.0/24 accept",
            "iifname \"virbr0\" oifname \"virbr0\" accept",
            "oifname \"virbr0\" reject with icmp type port-unreachable",
            "iifname \"virbr0\" reject with icmp type port-unreachable",
            "fib daddr type local tcp dport 2222 dnat to 192.168.122.10:22",
            "ip daddr 192.0.2.1 udp dport 5353 dnat to 192.168.122.11:53",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
        // Each DNAT rule is in prerouting (from outside) and output (from the host).
        assert_eq!(s.matches("dnat to 192.168.122.10:22").count(), 2);
        // The ordering of the forward chain: accepts before rejects.
        let accept = s.find("iifname \"virbr0\" ip saddr").unwrap();
        let reject = s.find("reject").unwrap();
        assert!(accept < reject);
    }

    #[test]
    fn deleting_is_idempotent() {
        assert_eq!(
            delete_script("vnb_x"),
            "table ip vnb_x\ndelete table ip vnb_x\n"
        );
    }
}
