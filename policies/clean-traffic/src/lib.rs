//! `clean-traffic`: libvirt nwfilter's `clean-traffic` for the ports it names.
//!
//! A frame from a configured guest port passes only if its source MAC is the port's, its IPv4
//! source is one of the port's static addresses or its current DHCP lease (`0.0.0.0` only for
//! a DHCP request), it is not a DHCP server reply, its ARP speaks only for the port's own
//! MAC and address, and it is IPv4 or ARP (`no-other-l2-traffic`). Passing frames get
//! `CONTINUE`: later modules decide. Ports not configured get no opinion.
//!
//! Verdicts are not cached (every frame of the port is checked): a flow's 5-tuple does not pin
//! the source MAC, and a MAC change inside a flow would poison the bridge's FDB.
//!
//! Configuration, one line per port (up to four static addresses):
//! ```text
//! port 3 mac 52:54:00:00:00:03 ip 192.168.122.10
//! port 4 mac 52:54:00:00:00:04
//! ```
//! Map 0 `leases` (key: port `u32` LE, value: IPv4 address) is filled by the host from its
//! DHCP server; it survives reloads.
#![deny(unsafe_code)]

use policy_sdk::abi::{flag, vflag};
use policy_sdk::config::{lines, ConfigError};
use policy_sdk::headers::{ETH_ARP, ETH_IPV4, IP_UDP};
use policy_sdk::manifest::MapSpec;
use policy_sdk::{export_policy, hostcall, Frame, Manifest, Policy, Verdict};

/// Index of the `leases` map.
pub const MAP_LEASES: u32 = 0;
/// Most ports in the configuration.
pub const MAX_PORTS: usize = 256;
const MAX_STATIC: usize = 4;

/// Rule: the frame is clean.
pub const RULE_CLEAN: u32 = 1;
/// Rule: source MAC is not the port's.
pub const RULE_MAC_SPOOF: u32 = 2;
/// Rule: IPv4 source is not the port's.
pub const RULE_IP_SPOOF: u32 = 3;
/// Rule: ARP for another MAC or address.
pub const RULE_ARP_SPOOF: u32 = 4;
/// Rule: a DHCP server reply from a guest.
pub const RULE_DHCP_SERVER: u32 = 5;
/// Rule: neither IPv4 nor ARP.
pub const RULE_OTHER_L2: u32 = 6;

const RULES: [(u32, &str); 6] = [
    (RULE_CLEAN, "clean traffic CONTINUE"),
    (RULE_MAC_SPOOF, "no-mac-spoofing DROP"),
    (RULE_IP_SPOOF, "no-ip-spoofing DROP"),
    (RULE_ARP_SPOOF, "no-arp-spoofing DROP"),
    (RULE_DHCP_SERVER, "no-dhcp-server DROP"),
    (RULE_OTHER_L2, "no-other-l2-traffic DROP"),
];

#[derive(Clone, Copy, Debug)]
struct PortBinding {
    port: u32,
    mac: [u8; 6],
    ips: [[u8; 4]; MAX_STATIC],
    ip_count: usize,
}

/// Per-port MAC and address bindings.
#[derive(Debug)]
pub struct CleanTraffic {
    ports: Vec<PortBinding>,
}

impl CleanTraffic {
    fn binding(&self, port: u32) -> Option<&PortBinding> {
        self.ports.iter().find(|b| b.port == port)
    }

    fn owns_ip(b: &PortBinding, ip: [u8; 4]) -> bool {
        if b.ips[..b.ip_count].contains(&ip) {
            return true;
        }
        let mut lease = [0u8; 4];
        matches!(
            hostcall::map_lookup(MAP_LEASES, &b.port.to_le_bytes(), &mut lease),
            Ok(true)
        ) && lease == ip
    }

    fn check(b: &PortBinding, f: &Frame<'_>) -> u32 {
        if f.eth_src() != Some(b.mac) {
            return RULE_MAC_SPOOF;
        }
        match f.desc.ethertype {
            ETH_IPV4 => {
                let Some(src) = f.ipv4_src() else {
                    return RULE_IP_SPOOF;
                };
                if f.desc.ip_proto == IP_UDP && f.src_port() == Some(67) {
                    return RULE_DHCP_SERVER;
                }
                let dhcp_request = f.desc.ip_proto == IP_UDP
                    && f.src_port() == Some(68)
                    && f.dst_port() == Some(67);
                if (src == [0; 4] && dhcp_request) || Self::owns_ip(b, src) {
                    RULE_CLEAN
                } else {
                    RULE_IP_SPOOF
                }
            }
            ETH_ARP => {
                let (Some(op), Some(mac), Some(ip)) =
                    (f.arp_op(), f.arp_sender_mac(), f.arp_sender_ip())
                else {
                    return RULE_ARP_SPOOF;
                };
                // An ARP probe (RFC 5227) carries sender address 0.0.0.0.
                let ip_ok = ip == [0; 4] || Self::owns_ip(b, ip);
                if matches!(op, 1 | 2) && mac == b.mac && ip_ok {
                    RULE_CLEAN
                } else {
                    RULE_ARP_SPOOF
                }
            }
            _ => RULE_OTHER_L2,
        }
    }
}

impl Policy for CleanTraffic {
    const MANIFEST: Manifest<'static> = Manifest {
        name: "clean-traffic",
        version: env!("CARGO_PKG_VERSION"),
        hooks: 0b01,
        caps: 0,
        memory_pages: 20,
        maps: &[MapSpec {
            name: "leases",
            key_size: 4,
            value_size: 4,
            max_entries: 4096,
        }],
        counters: &[],
    };

    fn init(config: &[u8]) -> Result<Self, ConfigError> {
        let mut ports: Vec<PortBinding> = Vec::new();
        for mut line in lines(config)? {
            if line.word("`port`")? != "port" {
                return Err(line.error("expected `port N mac MAC [ip A]...`"));
            }
            let port = line.parse("port number")?;
            if line.word("`mac`")? != "mac" {
                return Err(line.error("expected `mac`"));
            }
            let mut b = PortBinding {
                port,
                mac: line.mac()?,
                ips: [[0; 4]; MAX_STATIC],
                ip_count: 0,
            };
            while let Some(kw) = line.next_word() {
                if kw != "ip" || b.ip_count == MAX_STATIC {
                    return Err(line.error("expected at most four `ip A`"));
                }
                b.ips[b.ip_count] = line.ipv4()?;
                b.ip_count += 1;
            }
            if ports.iter().any(|p| p.port == port) || ports.len() == MAX_PORTS {
                return Err(line.error("port listed twice, or too many ports"));
            }
            ports.push(b);
        }
        for (id, text) in RULES {
            let _ = hostcall::rule_describe(id, text);
        }
        Ok(CleanTraffic { ports })
    }

    fn on_new_flow(&mut self, f: &Frame<'_>) -> Verdict {
        let guest = f.desc.flags & flag::FROM_GUEST != 0;
        let Some(b) = self.binding(f.desc.ingress_port).filter(|_| guest) else {
            return Verdict::CONTINUE;
        };
        let rule = Self::check(b, f);
        let v = if rule == RULE_CLEAN {
            Verdict::CONTINUE
        } else {
            Verdict::DROP
        };
        v.by_rule(rule).with_flags(vflag::NO_CACHE)
    }
}

export_policy!(CleanTraffic);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::abi::action;
    use policy_sdk::frames::{
        arp, arp_request, dhcp_reply, dhcp_request, tcp4, udp6, Endpoint, TCP_SYN,
    };
    use policy_sdk::testing::{map_update, Harness, TestFrame};

    const CONFIG: &str =
        "port 3 mac 52:54:00:00:00:03 ip 192.168.122.10\nport 4 mac 52:54:00:00:00:04\n";
    const VM3: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 3], [192, 168, 122, 10]);
    const VM4: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 4], [192, 168, 122, 44]);
    const GW: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 1], [192, 168, 122, 1]);

    fn rule_of(h: &mut Harness<CleanTraffic>, port: u32, bytes: Vec<u8>) -> (u8, u32) {
        let v = h.judge_one(TestFrame::new(bytes).port(port).from_guest());
        assert_eq!(
            v.flags & vflag::NO_CACHE,
            if v.rule == 0 { 0 } else { vflag::NO_CACHE }
        );
        (v.action, v.rule)
    }

    #[test]
    fn clean_frames_continue() {
        let mut h = Harness::<CleanTraffic>::new(CONFIG).unwrap();
        assert_eq!(
            rule_of(&mut h, 3, tcp4(VM3, GW, 1, 2, TCP_SYN)),
            (action::CONTINUE, RULE_CLEAN)
        );
        assert_eq!(
            rule_of(&mut h, 3, arp_request(VM3, GW.ip)),
            (action::CONTINUE, RULE_CLEAN)
        );
        assert_eq!(
            rule_of(&mut h, 4, dhcp_request(VM4.mac)),
            (action::CONTINUE, RULE_CLEAN)
        );
        let probe = Endpoint { ip: [0; 4], ..VM4 };
        assert_eq!(
            rule_of(&mut h, 4, arp_request(probe, VM4.ip)),
            (action::CONTINUE, RULE_CLEAN)
        );
    }

    #[test]
    fn spoofing_is_dropped() {
        let mut h = Harness::<CleanTraffic>::new(CONFIG).unwrap();
        let as_vm3 = Endpoint {
            mac: VM3.mac,
            ..VM4
        };
        assert_eq!(
            rule_of(&mut h, 4, tcp4(VM3, GW, 1, 2, TCP_SYN)),
            (action::DROP, RULE_MAC_SPOOF)
        );
        assert_eq!(
            rule_of(
                &mut h,
                3,
                tcp4(Endpoint { ip: VM4.ip, ..VM3 }, GW, 1, 2, TCP_SYN)
            )
            .1,
            RULE_IP_SPOOF
        );
        let lie = arp(2, Endpoint { ip: GW.ip, ..VM3 }, VM4);
        assert_eq!(rule_of(&mut h, 3, lie), (action::DROP, RULE_ARP_SPOOF));
        assert_eq!(
            rule_of(&mut h, 3, dhcp_reply(VM3, VM4.mac)),
            (action::DROP, RULE_DHCP_SERVER)
        );
        let v6 = udp6(VM3.mac, [0xfe; 16], [0xff; 16], 1, 2);
        assert_eq!(rule_of(&mut h, 3, v6), (action::DROP, RULE_OTHER_L2));
        assert_eq!(
            rule_of(&mut h, 4, tcp4(as_vm3, GW, 1, 2, TCP_SYN)).1,
            RULE_MAC_SPOOF
        );
    }

    #[test]
    fn leases_from_the_host_map_count_as_own() {
        let mut h = Harness::<CleanTraffic>::new(CONFIG).unwrap();
        assert_eq!(
            rule_of(&mut h, 4, tcp4(VM4, GW, 1, 2, TCP_SYN)).1,
            RULE_IP_SPOOF
        );
        assert_eq!(map_update(MAP_LEASES, &4u32.to_le_bytes(), &VM4.ip), 0);
        assert_eq!(
            rule_of(&mut h, 4, tcp4(VM4, GW, 1, 2, TCP_SYN)),
            (action::CONTINUE, RULE_CLEAN)
        );
    }

    #[test]
    fn other_ports_and_inbound_frames_get_no_opinion() {
        let mut h = Harness::<CleanTraffic>::new(CONFIG).unwrap();
        assert_eq!(
            rule_of(&mut h, 9, tcp4(VM4, GW, 1, 2, TCP_SYN)),
            (action::CONTINUE, 0)
        );
        let inbound = TestFrame::new(tcp4(GW, VM3, 1, 2, TCP_SYN)).port(3);
        assert_eq!(h.judge_one(inbound), Verdict::CONTINUE);
    }

    #[test]
    fn configuration_is_checked() {
        assert!(Harness::<CleanTraffic>::new("port 3 mac 52:54:00:00:00").is_err());
        assert!(Harness::<CleanTraffic>::new(
            "port 3 mac 52:54:00:00:00:03\nport 3 mac 52:54:00:00:00:04"
        )
        .is_err());
        assert!(
            Harness::<CleanTraffic>::new("port 3 mac 52:54:00:00:00:03 ip 1.2.3.4 net 2").is_err()
        );
    }
}
