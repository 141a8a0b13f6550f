//! `libvirt-nat`: the filter rules libvirt installs with iptables for its NAT network
//! ("default", virbr0 at 192.168.122.1/24), as a policy.
//!
//! Configuration:
//! ```text
//! network 192.168.122.0/24
//! gateway 192.168.122.1
//! ```
//!
//! | rule | iptables rule it stands for |
//! |---|---|
//! | 1-4 | `INPUT -i virbr0 -p udp/tcp --dport 53/67 -j ACCEPT` (DNS and DHCP to the gateway) |
//! | 5 | `INPUT -p icmp -j ACCEPT` (ping the gateway) |
//! | 6 | `INPUT ... -j REJECT` (anything else to the gateway) |
//! | 7 | `OUTPUT` policy ACCEPT (the gateway's own frames) |
//! | 8 | `FORWARD -o virbr0 -d 192.168.122.0/24 -m state --state RELATED,ESTABLISHED -j ACCEPT` |
//! | 9 | `FORWARD -i virbr0 -s 192.168.122.0/24 -j ACCEPT` (guests go out) |
//! | 10 | `FORWARD -i virbr0 -o virbr0 -j ACCEPT` (intra-network) |
//! | 11 | `FORWARD -o virbr0 -j REJECT --reject-with icmp-port-unreachable` (new inbound) |
//! | 12 | `FORWARD -i virbr0 -j REJECT --reject-with icmp-port-unreachable` (spoofed source) |
//! | 13 | ARP and other non-IP frames pass (iptables sees IP only) |
//! | 14 | IPv6 is not configured on this network: drop |
#![deny(unsafe_code)]

use policy_sdk::abi::{ct, flag, HOOK_NAT_EGRESS};
use policy_sdk::config::{lines, Cidr, ConfigError};
use policy_sdk::headers::{ETH_IPV4, ETH_IPV6, IP_ICMP, IP_TCP, IP_UDP};
use policy_sdk::{export_policy, hostcall, Frame, Manifest, Policy, Verdict};

/// Rule numbers and what they stand for (see the crate doc).
pub const RULES: [(u32, &str); 14] = [
    (1, "INPUT udp dpt:53 from the network ACCEPT"),
    (2, "INPUT tcp dpt:53 from the network ACCEPT"),
    (3, "INPUT udp dpt:67 from the network ACCEPT"),
    (4, "INPUT tcp dpt:67 from the network ACCEPT"),
    (5, "INPUT icmp ACCEPT"),
    (6, "INPUT other to the gateway REJECT"),
    (7, "OUTPUT from the gateway ACCEPT"),
    (8, "FORWARD to the network state RELATED,ESTABLISHED ACCEPT"),
    (9, "FORWARD from the network out ACCEPT"),
    (10, "FORWARD within the network ACCEPT"),
    (11, "FORWARD to the network REJECT icmp-port-unreachable"),
    (12, "FORWARD from the network REJECT icmp-port-unreachable"),
    (13, "non-IP ACCEPT"),
    (14, "IPv6 not configured DROP"),
];

/// The NAT network's addresses.
#[derive(Debug)]
pub struct LibvirtNat {
    network: Cidr,
    gateway: [u8; 4],
}

impl Policy for LibvirtNat {
    const MANIFEST: Manifest<'static> = Manifest {
        name: "libvirt-nat",
        version: env!("CARGO_PKG_VERSION"),
        hooks: 0b11,
        caps: 0,
        memory_pages: 2,
        maps: &[],
        counters: &[],
    };

    fn init(config: &[u8]) -> Result<Self, ConfigError> {
        let (mut network, mut gateway) = (None, None);
        for mut line in lines(config)? {
            match line.word("directive")? {
                "network" => network = Some(line.cidr()?),
                "gateway" => gateway = Some(line.ipv4()?),
                _ => return Err(line.error("expected `network` or `gateway`")),
            }
            line.end()?;
        }
        let missing = |what| ConfigError { line: 0, what };
        let network = network.ok_or(missing("`network` is required"))?;
        let gateway = gateway.ok_or(missing("`gateway` is required"))?;
        if !matches!(network, Cidr::V4(..)) || !network.contains_v4(gateway) {
            return Err(missing("the gateway must be inside the IPv4 network"));
        }
        for (id, text) in RULES {
            let _ = hostcall::rule_describe(id, text);
        }
        Ok(LibvirtNat { network, gateway })
    }

    fn on_new_flow(&mut self, f: &Frame<'_>) -> Verdict {
        let rule = |id| Verdict::ACCEPT.by_rule(id);
        let reject = |id| Verdict::REJECT.by_rule(id);
        match f.desc.ethertype {
            ETH_IPV4 => {}
            ETH_IPV6 => return Verdict::DROP.by_rule(14),
            _ => return rule(13),
        }
        let (Some(src), Some(dst)) = (f.ipv4_src(), f.ipv4_dst()) else {
            return Verdict::DROP.by_rule(12);
        };
        let from_guest = f.desc.flags & flag::FROM_GUEST != 0;
        let src_inside = self.network.contains_v4(src);
        if f.desc.hook == HOOK_NAT_EGRESS {
            return if src_inside { rule(9) } else { reject(12) };
        }
        if !from_guest {
            if src == self.gateway {
                return rule(7);
            }
            if f.desc.ct_state & (ct::ESTABLISHED | ct::RELATED) != 0 {
                return rule(8);
            }
            return reject(11);
        }
        let proto = f.desc.ip_proto;
        let dport = f.dst_port();
        // DHCP requests go to the broadcast address before the guest has an address.
        if proto == IP_UDP && dport == Some(67) {
            return rule(3);
        }
        if !src_inside {
            return reject(12);
        }
        if dst == self.gateway {
            return match (proto, dport) {
                (IP_UDP, Some(53)) => rule(1),
                (IP_TCP, Some(53)) => rule(2),
                (IP_TCP, Some(67)) => rule(4),
                (IP_ICMP, _) => rule(5),
                _ => reject(6),
            };
        }
        if self.network.contains_v4(dst) {
            rule(10)
        } else {
            rule(9)
        }
    }
}

export_policy!(LibvirtNat);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::abi::{action, OUT_GATEWAY};
    use policy_sdk::frames::{
        arp_request, dhcp_request, ping4, tcp4, udp4, udp6, Endpoint, TCP_SYN,
    };
    use policy_sdk::testing::{Harness, TestFrame};

    const CONFIG: &str = "network 192.168.122.0/24\ngateway 192.168.122.1\n";
    const GW: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 1], [192, 168, 122, 1]);
    const VM1: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 0x10], [192, 168, 122, 10]);
    const VM2: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 0x11], [192, 168, 122, 11]);
    const NET: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 1], [203, 0, 113, 5]);

    fn judge(h: &mut Harness<LibvirtNat>, f: TestFrame) -> (u8, u32) {
        let v = h.judge_one(f);
        (v.action, v.rule)
    }

    #[test]
    fn guests_reach_dhcp_dns_and_the_outside() {
        let mut h = Harness::<LibvirtNat>::new(CONFIG).unwrap();
        let g = |b| TestFrame::new(b).from_guest().port(1);
        assert_eq!(judge(&mut h, g(dhcp_request(VM1.mac))), (action::ACCEPT, 3));
        assert_eq!(
            judge(&mut h, g(udp4(VM1, GW, 5000, 53, b"q"))),
            (action::ACCEPT, 1)
        );
        assert_eq!(
            judge(&mut h, g(tcp4(VM1, GW, 5000, 53, TCP_SYN))),
            (action::ACCEPT, 2)
        );
        assert_eq!(judge(&mut h, g(ping4(VM1, GW))), (action::ACCEPT, 5));
        assert_eq!(
            judge(&mut h, g(tcp4(VM1, GW, 5000, 22, TCP_SYN))),
            (action::REJECT, 6)
        );
        let out = g(tcp4(VM1, NET, 5000, 443, TCP_SYN)).out(OUT_GATEWAY);
        assert_eq!(judge(&mut h, out), (action::ACCEPT, 9));
        let egress = TestFrame::new(tcp4(VM1, NET, 5000, 443, TCP_SYN)).hook(HOOK_NAT_EGRESS);
        assert_eq!(judge(&mut h, egress), (action::ACCEPT, 9));
    }

    #[test]
    fn inbound_only_for_replies() {
        let mut h = Harness::<LibvirtNat>::new(CONFIG).unwrap();
        let syn = TestFrame::new(tcp4(NET, VM1, 443, 5000, TCP_SYN)).port(0);
        assert_eq!(judge(&mut h, syn.clone()), (action::REJECT, 11));
        let reply = syn.ct(ct::ESTABLISHED | ct::REPLY);
        assert_eq!(judge(&mut h, reply), (action::ACCEPT, 8));
        let from_gw = TestFrame::new(udp4(GW, VM1, 53, 5000, b"a"));
        assert_eq!(judge(&mut h, from_gw), (action::ACCEPT, 7));
    }

    #[test]
    fn intra_network_spoofing_and_other_protocols() {
        let mut h = Harness::<LibvirtNat>::new(CONFIG).unwrap();
        let g = |b| TestFrame::new(b).from_guest().port(1);
        assert_eq!(
            judge(&mut h, g(tcp4(VM1, VM2, 1, 2, TCP_SYN))),
            (action::ACCEPT, 10)
        );
        let spoof = Endpoint {
            ip: [10, 9, 9, 9],
            ..VM1
        };
        assert_eq!(
            judge(&mut h, g(tcp4(spoof, NET, 1, 2, TCP_SYN))),
            (action::REJECT, 12)
        );
        let egress = TestFrame::new(tcp4(spoof, NET, 1, 2, TCP_SYN)).hook(HOOK_NAT_EGRESS);
        assert_eq!(judge(&mut h, egress), (action::REJECT, 12));
        assert_eq!(
            judge(&mut h, g(arp_request(VM1, GW.ip))),
            (action::ACCEPT, 13)
        );
        let v6 = g(udp6(VM1.mac, [0xfe; 16], [0xff; 16], 1, 2));
        assert_eq!(judge(&mut h, v6), (action::DROP, 14));
    }

    #[test]
    fn configuration_is_checked() {
        assert!(Harness::<LibvirtNat>::new("network 192.168.122.0/24").is_err());
        assert!(Harness::<LibvirtNat>::new("network 10.0.0.0/8\ngateway 192.168.122.1").is_err());
        assert!(Harness::<LibvirtNat>::new("bridge virbr0").is_err());
    }
}
