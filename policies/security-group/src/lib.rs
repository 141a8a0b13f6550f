//! `security-group`: OpenStack-style security groups. Stateful: a flow's first packet is
//! judged and the verdict is cached in its conntrack entry, so replies pass; traffic not
//! allowed by a rule is denied (ingress and egress) for the ports a group covers.
//!
//! Configuration: a `group` line names a group and its ports; the rule lines that follow
//! belong to it.
//! ```text
//! group web ports 3 4
//! ingress ipv4 tcp 22 0.0.0.0/0
//! ingress ipv4 tcp 80-81 10.0.0.0/8
//! ingress ipv4 icmp any 0.0.0.0/0
//! egress ipv4 any any 0.0.0.0/0
//! egress ipv6 udp 53 ::/0
//! ```
//! A rule is `direction ethertype protocol port-range remote-cidr`: direction `ingress`
//! (to the port) or `egress` (from it), ethertype `ipv4`/`ipv6`, protocol `tcp`, `udp`,
//! `icmp`, `any` or a number, port range `N`, `N-M` or `any` (TCP/UDP destination port),
//! remote the peer's prefix. DHCP client traffic is allowed as OpenStack does; ARP and other
//! non-IP frames get no opinion. Frames the bridge floods get no ingress check (and are not
//! cached, so the flow is judged again once the bridge knows the destination port).
#![deny(unsafe_code)]

use policy_sdk::abi::{ct, flag, vflag, HOOK_PORT_IN};
use policy_sdk::config::{lines, Cidr, ConfigError, Line};
use policy_sdk::headers::{ETH_IPV4, ETH_IPV6, IP_ICMP, IP_ICMPV6, IP_TCP, IP_UDP};
use policy_sdk::{export_policy, hostcall, Frame, Manifest, Policy, Verdict};
use std::fmt::Write;

/// Rule: the flow is established or related (re-judged flows).
pub const RULE_ESTABLISHED: u32 = 1;
/// Rule: DHCP client traffic.
pub const RULE_DHCP: u32 = 2;
/// Rule: no ingress rule matched.
pub const RULE_DENY_INGRESS: u32 = 3;
/// Rule: no egress rule matched.
pub const RULE_DENY_EGRESS: u32 = 4;
/// Id of the first configured rule; configured rules are numbered in order from it.
pub const FIRST_RULE: u32 = 10;
/// Most groups.
pub const MAX_GROUPS: usize = 64;
/// Most rules over all groups.
pub const MAX_RULES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    id: u32,
    direction: Direction,
    ethertype: u16,
    /// `None`: any protocol.
    proto: Option<u8>,
    ports: (u16, u16),
    remote: Cidr,
}

#[derive(Debug)]
struct Group {
    ports: Vec<u32>,
    rules: Vec<Rule>,
}

/// Groups of ports and their rules.
#[derive(Debug)]
pub struct SecurityGroups {
    groups: Vec<Group>,
}

fn parse_rule(line: &mut Line<'_>, direction: Direction, id: u32) -> Result<Rule, ConfigError> {
    let ethertype = match line.word("ethertype")? {
        "ipv4" => ETH_IPV4,
        "ipv6" => ETH_IPV6,
        _ => return Err(line.error("ethertype must be ipv4 or ipv6")),
    };
    let proto = match line.word("protocol")? {
        "any" => None,
        "tcp" => Some(IP_TCP),
        "udp" => Some(IP_UDP),
        "icmp" if ethertype == ETH_IPV4 => Some(IP_ICMP),
        "icmp" => Some(IP_ICMPV6),
        other => Some(other.parse().map_err(|_| line.error("protocol"))?),
    };
    let ports = line.port_range()?;
    let remote = line.cidr()?;
    let family_ok = matches!(
        (ethertype, remote),
        (ETH_IPV4, Cidr::V4(..)) | (ETH_IPV6, Cidr::V6(..))
    );
    if !family_ok {
        return Err(line.error("remote prefix is not of the rule's ethertype"));
    }
    line.end()?;
    Ok(Rule {
        id,
        direction,
        ethertype,
        proto,
        ports,
        remote,
    })
}

impl Rule {
    fn matches(&self, f: &Frame<'_>, remote_is_src: bool) -> bool {
        if f.desc.ethertype != self.ethertype {
            return false;
        }
        if let Some(p) = self.proto {
            if p != f.desc.ip_proto {
                return false;
            }
        }
        if matches!(f.desc.ip_proto, IP_TCP | IP_UDP) && self.ports != (0, u16::MAX) {
            match f.dst_port() {
                Some(port) if (self.ports.0..=self.ports.1).contains(&port) => {}
                _ => return false,
            }
        }
        if self.ethertype == ETH_IPV4 {
            let remote = if remote_is_src {
                f.ipv4_src()
            } else {
                f.ipv4_dst()
            };
            remote.is_some_and(|ip| self.remote.contains_v4(ip))
        } else {
            let remote = if remote_is_src {
                f.ipv6_src()
            } else {
                f.ipv6_dst()
            };
            remote.is_some_and(|ip| self.remote.contains_v6(ip))
        }
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        let dir = if self.direction == Direction::Ingress {
            "ingress"
        } else {
            "egress"
        };
        let eth = if self.ethertype == ETH_IPV4 {
            "ipv4"
        } else {
            "ipv6"
        };
        let _ = write!(s, "{dir} {eth} ");
        match self.proto {
            None => s.push_str("any"),
            Some(p) => {
                let _ = write!(s, "proto {p}");
            }
        }
        let _ = write!(
            s,
            " dpt:{}-{} remote {:?} ACCEPT",
            self.ports.0, self.ports.1, self.remote
        );
        s
    }
}

impl SecurityGroups {
    fn group_of(&self, port: u32) -> Option<&Group> {
        self.groups.iter().find(|g| g.ports.contains(&port))
    }

    /// The id of the first rule of `group` in `direction` that matches, if any.
    fn allowed(group: &Group, direction: Direction, f: &Frame<'_>) -> Option<u32> {
        let remote_is_src = direction == Direction::Ingress;
        group
            .rules
            .iter()
            .find(|r| r.direction == direction && r.matches(f, remote_is_src))
            .map(|r| r.id)
    }
}

impl Policy for SecurityGroups {
    const MANIFEST: Manifest<'static> = Manifest {
        name: "security-group",
        version: env!("CARGO_PKG_VERSION"),
        hooks: 1 << HOOK_PORT_IN,
        caps: 0,
        memory_pages: 20,
        maps: &[],
        counters: &[],
    };

    fn init(config: &[u8]) -> Result<Self, ConfigError> {
        let mut groups: Vec<Group> = Vec::new();
        let mut next_id = FIRST_RULE;
        for mut line in lines(config)? {
            let direction = match line.word("directive")? {
                "group" => {
                    let _name = line.word("group name")?;
                    if line.word("`ports`")? != "ports" || groups.len() == MAX_GROUPS {
                        return Err(
                            line.error("expected `group NAME ports N...` (at most 64 groups)")
                        );
                    }
                    let mut ports = Vec::new();
                    while let Some(w) = line.next_word() {
                        let port: u32 = w.parse().map_err(|_| line.error("port number"))?;
                        if groups.iter().any(|g| g.ports.contains(&port)) {
                            return Err(line.error("a port belongs to one group"));
                        }
                        ports.push(port);
                    }
                    groups.push(Group {
                        ports,
                        rules: Vec::new(),
                    });
                    continue;
                }
                "ingress" => Direction::Ingress,
                "egress" => Direction::Egress,
                _ => return Err(line.error("expected `group`, `ingress` or `egress`")),
            };
            let Some(group) = groups.last_mut() else {
                return Err(line.error("a rule before any `group`"));
            };
            if next_id - FIRST_RULE == MAX_RULES as u32 {
                return Err(line.error("too many rules"));
            }
            let rule = parse_rule(&mut line, direction, next_id)?;
            let _ = hostcall::rule_describe(rule.id, &rule.describe());
            group.rules.push(rule);
            next_id += 1;
        }
        for (id, text) in [
            (RULE_ESTABLISHED, "state RELATED,ESTABLISHED ACCEPT"),
            (RULE_DHCP, "DHCP client ACCEPT"),
            (RULE_DENY_INGRESS, "default ingress DROP"),
            (RULE_DENY_EGRESS, "default egress DROP"),
        ] {
            let _ = hostcall::rule_describe(id, text);
        }
        Ok(SecurityGroups { groups })
    }

    fn on_new_flow(&mut self, f: &Frame<'_>) -> Verdict {
        if !matches!(f.desc.ethertype, ETH_IPV4 | ETH_IPV6) {
            return Verdict::CONTINUE;
        }
        let from = (f.desc.flags & flag::FROM_GUEST != 0)
            .then(|| self.group_of(f.desc.ingress_port))
            .flatten();
        let to = (f.desc.flags & flag::TO_GUEST != 0)
            .then(|| self.group_of(f.desc.bridge_out))
            .flatten();
        if from.is_none() && to.is_none() {
            // Flooded frames towards guests: no single destination to check yet.
            let flooded = f.desc.flags & flag::TO_GUEST != 0;
            return if flooded {
                Verdict::CONTINUE.with_flags(vflag::NO_CACHE)
            } else {
                Verdict::CONTINUE
            };
        }
        if f.desc.ct_state & (ct::ESTABLISHED | ct::RELATED) != 0 {
            return Verdict::ACCEPT.by_rule(RULE_ESTABLISHED);
        }
        let dhcp = f.desc.ip_proto == IP_UDP
            && matches!(
                (f.src_port(), f.dst_port()),
                (Some(68), Some(67)) | (Some(67), Some(68))
            );
        if dhcp {
            return Verdict::ACCEPT.by_rule(RULE_DHCP);
        }
        let mut decided = 0;
        if let Some(g) = from {
            match Self::allowed(g, Direction::Egress, f) {
                Some(id) => decided = id,
                None => return Verdict::DROP.by_rule(RULE_DENY_EGRESS),
            }
        }
        if let Some(g) = to {
            match Self::allowed(g, Direction::Ingress, f) {
                Some(id) => decided = id,
                None => return Verdict::DROP.by_rule(RULE_DENY_INGRESS),
            }
        }
        Verdict::ACCEPT.by_rule(decided)
    }
}

export_policy!(SecurityGroups);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::abi::{action, OUT_FLOOD, OUT_GATEWAY};
    use policy_sdk::frames::{
        arp_request, dhcp_request, ping4, tcp4, udp4, udp6, Endpoint, TCP_SYN,
    };
    use policy_sdk::testing::{rule, Harness, TestFrame};

    const CONFIG: &str = "\
group web ports 3 4
ingress ipv4 tcp 22 0.0.0.0/0
ingress ipv4 tcp 80-81 10.0.0.0/8
ingress ipv4 icmp any 0.0.0.0/0
egress ipv4 any any 0.0.0.0/0
group db ports 5
ingress ipv4 tcp 5432 192.168.122.0/24
egress ipv6 udp 53 fd00::/8
";
    const WEB: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 3], [192, 168, 122, 3]);
    const DB: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 5], [192, 168, 122, 5]);
    const LAN: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 9], [10, 1, 2, 3]);
    const NET: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 1], [203, 0, 113, 9]);

    fn inbound(bytes: Vec<u8>, to_port: u32) -> TestFrame {
        TestFrame::new(bytes).port(0).out(to_port).to_guest()
    }

    fn verdict(h: &mut Harness<SecurityGroups>, f: TestFrame) -> (u8, u32) {
        let v = h.judge_one(f);
        (v.action, v.rule)
    }

    #[test]
    fn ingress_is_default_deny() {
        let mut h = Harness::<SecurityGroups>::new(CONFIG).unwrap();
        assert_eq!(
            verdict(&mut h, inbound(tcp4(NET, WEB, 9, 22, TCP_SYN), 3)),
            (action::ACCEPT, 10)
        );
        assert_eq!(
            verdict(&mut h, inbound(tcp4(LAN, WEB, 9, 81, TCP_SYN), 4)),
            (action::ACCEPT, 11)
        );
        assert_eq!(
            verdict(&mut h, inbound(tcp4(NET, WEB, 9, 80, TCP_SYN), 3)),
            (action::DROP, RULE_DENY_INGRESS)
        );
        assert_eq!(
            verdict(&mut h, inbound(udp4(NET, WEB, 9, 22, b""), 3)).1,
            RULE_DENY_INGRESS
        );
        assert_eq!(
            verdict(&mut h, inbound(ping4(NET, WEB), 3)),
            (action::ACCEPT, 12)
        );
        assert_eq!(
            rule(11).as_deref(),
            Some("ingress ipv4 proto 6 dpt:80-81 remote V4([10, 0, 0, 0], 8) ACCEPT")
        );
    }

    #[test]
    fn egress_rules_and_guest_to_guest() {
        let mut h = Harness::<SecurityGroups>::new(CONFIG).unwrap();
        let from_web = TestFrame::new(tcp4(WEB, NET, 9, 443, TCP_SYN))
            .port(3)
            .from_guest()
            .out(OUT_GATEWAY);
        assert_eq!(verdict(&mut h, from_web), (action::ACCEPT, 13));
        let from_db = TestFrame::new(tcp4(DB, NET, 9, 443, TCP_SYN))
            .port(5)
            .from_guest()
            .out(OUT_GATEWAY);
        assert_eq!(verdict(&mut h, from_db), (action::DROP, RULE_DENY_EGRESS));
        let web_to_db = TestFrame::new(tcp4(WEB, DB, 9, 5432, TCP_SYN))
            .port(3)
            .from_guest()
            .out(5)
            .to_guest();
        assert_eq!(verdict(&mut h, web_to_db), (action::ACCEPT, 14));
        let db_dns6 = TestFrame::new(udp6(DB.mac, [0xfd; 16], [0xfd; 16], 9, 53))
            .port(5)
            .from_guest();
        assert_eq!(verdict(&mut h, db_dns6), (action::ACCEPT, 15));
    }

    #[test]
    fn state_dhcp_non_ip_and_floods() {
        let mut h = Harness::<SecurityGroups>::new(CONFIG).unwrap();
        let reply = inbound(tcp4(NET, WEB, 443, 9, 0x12), 3).ct(ct::ESTABLISHED | ct::REPLY);
        assert_eq!(verdict(&mut h, reply), (action::ACCEPT, RULE_ESTABLISHED));
        let dhcp = TestFrame::new(dhcp_request(DB.mac))
            .port(5)
            .from_guest()
            .out(OUT_FLOOD);
        assert_eq!(verdict(&mut h, dhcp), (action::ACCEPT, RULE_DHCP));
        assert_eq!(
            h.judge_one(TestFrame::new(arp_request(WEB, DB.ip)).port(3).from_guest()),
            Verdict::CONTINUE
        );
        let flood = TestFrame::new(tcp4(NET, WEB, 9, 80, TCP_SYN))
            .out(OUT_FLOOD)
            .to_guest();
        assert_eq!(
            h.judge_one(flood),
            Verdict::CONTINUE.with_flags(vflag::NO_CACHE)
        );
        let unrelated = TestFrame::new(tcp4(NET, LAN, 9, 80, TCP_SYN))
            .port(7)
            .from_guest();
        assert_eq!(h.judge_one(unrelated), Verdict::CONTINUE);
    }

    #[test]
    fn configuration_is_checked() {
        let bad = [
            "ingress ipv4 tcp 22 0.0.0.0/0",
            "group a ports 1\ningress ipv4 tcp 22 ::/0",
            "group a ports 1\ningress ipx tcp 22 0.0.0.0/0",
            "group a ports 1\ningress ipv4 tcp 22-1 0.0.0.0/0",
            "group a ports 1\ngroup b ports 1",
            "group a ports 1\nsideways ipv4 tcp 22 0.0.0.0/0",
            "group a ports 1\ningress ipv4 tcp 22 0.0.0.0/0 extra",
        ];
        for cfg in bad {
            assert!(Harness::<SecurityGroups>::new(cfg).is_err(), "{cfg}");
        }
    }
}
