//! `rate-limit`: puts each port's traffic in a rate-limit class. The host keeps a token bucket
//! per class and ingress port (packets/s and bytes/s, one second deep) and polices every frame
//! of the flow, also when the verdict is cached: the module runs once per flow.
//!
//! Configuration:
//! ```text
//! class 1 pps 1000 bps 1250000     # 0 means unlimited
//! class 2 pps 100 bps 0
//! port 3 class 1
//! default class 2                   # optional: every other guest port
//! ```
#![deny(unsafe_code)]

use policy_sdk::abi::flag;
use policy_sdk::config::{lines, ConfigError};
use policy_sdk::{export_policy, hostcall, Frame, Manifest, Policy, Verdict};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Port-to-class assignments.
#[derive(Debug)]
pub struct RateLimit {
    ports: BTreeMap<u32, u16>,
    default: Option<u16>,
}

impl Policy for RateLimit {
    const MANIFEST: Manifest<'static> = Manifest {
        name: "rate-limit",
        version: env!("CARGO_PKG_VERSION"),
        hooks: 0b01,
        caps: 0,
        memory_pages: 20,
        maps: &[],
        counters: &[],
    };

    fn init(config: &[u8]) -> Result<Self, ConfigError> {
        let mut classes = BTreeMap::new();
        let mut ports = BTreeMap::new();
        let mut default = None;
        for mut line in lines(config)? {
            match line.word("directive")? {
                "class" => {
                    let id: u16 = line.parse("class id")?;
                    let (kw1, pps) = (line.word("`pps`")?, line.parse::<u64>("packets/s")?);
                    let (kw2, bps) = (line.word("`bps`")?, line.parse::<u64>("bytes/s")?);
                    if id == 0
                        || kw1 != "pps"
                        || kw2 != "bps"
                        || classes.insert(id, (pps, bps)).is_some()
                    {
                        return Err(line.error("expected `class ID pps N bps N`, ID 1-65535, once"));
                    }
                }
                "port" => {
                    let port: u32 = line.parse("port number")?;
                    let class = parse_class(&mut line)?;
                    if ports.insert(port, class).is_some() {
                        return Err(line.error("port listed twice"));
                    }
                }
                "default" => default = Some(parse_class(&mut line)?),
                _ => return Err(line.error("expected `class`, `port` or `default`")),
            }
            line.end()?;
        }
        for class in ports.values().chain(default.iter()) {
            if !classes.contains_key(class) {
                return Err(ConfigError {
                    line: 0,
                    what: "a port names an undefined class",
                });
            }
        }
        for (&id, &(pps, bps)) in &classes {
            hostcall::rate_class(id, pps, bps).map_err(|_| ConfigError {
                line: 0,
                what: "the host refused a rate class",
            })?;
            let mut text = String::new();
            let _ = write!(text, "class {id}: limit {pps} pkt/s {bps} B/s per port");
            let _ = hostcall::rule_describe(u32::from(id), &text);
        }
        Ok(RateLimit { ports, default })
    }

    fn on_new_flow(&mut self, f: &Frame<'_>) -> Verdict {
        if f.desc.flags & flag::FROM_GUEST == 0 {
            return Verdict::CONTINUE;
        }
        match self
            .ports
            .get(&f.desc.ingress_port)
            .copied()
            .or(self.default)
        {
            Some(class) => Verdict::CONTINUE
                .with_rate_class(class)
                .by_rule(u32::from(class)),
            None => Verdict::CONTINUE,
        }
    }
}

fn parse_class(line: &mut policy_sdk::config::Line<'_>) -> Result<u16, ConfigError> {
    if line.word("`class`")? != "class" {
        return Err(line.error("expected `class ID`"));
    }
    line.parse("class id")
}

export_policy!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::frames::{tcp4, Endpoint, TCP_SYN};
    use policy_sdk::testing::{rate_class, rule, Harness, TestFrame};

    const CONFIG: &str =
        "class 1 pps 1000 bps 1250000\nclass 2 pps 100 bps 0\nport 3 class 1\ndefault class 2\n";
    const A: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 1], [10, 0, 0, 1]);
    const B: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 2], [10, 0, 0, 2]);

    #[test]
    fn ports_get_their_class() {
        let mut h = Harness::<RateLimit>::new(CONFIG).unwrap();
        assert_eq!(rate_class(1), Some((1000, 1_250_000)));
        assert_eq!(rate_class(2), Some((100, 0)));
        assert_eq!(
            rule(2).as_deref(),
            Some("class 2: limit 100 pkt/s 0 B/s per port")
        );
        let f = |port| {
            TestFrame::new(tcp4(A, B, 1, 2, TCP_SYN))
                .port(port)
                .from_guest()
        };
        assert_eq!(
            h.judge_one(f(3)),
            Verdict::CONTINUE.with_rate_class(1).by_rule(1)
        );
        assert_eq!(
            h.judge_one(f(8)),
            Verdict::CONTINUE.with_rate_class(2).by_rule(2)
        );
        let inbound = TestFrame::new(tcp4(B, A, 2, 1, TCP_SYN)).port(0);
        assert_eq!(h.judge_one(inbound), Verdict::CONTINUE);
    }

    #[test]
    fn without_default_other_ports_are_unlimited() {
        let mut h = Harness::<RateLimit>::new("class 1 pps 10 bps 0\nport 3 class 1").unwrap();
        let f = TestFrame::new(tcp4(A, B, 1, 2, TCP_SYN))
            .port(4)
            .from_guest();
        assert_eq!(h.judge_one(f), Verdict::CONTINUE);
    }

    #[test]
    fn configuration_is_checked() {
        for cfg in [
            "port 3 class 1",
            "class 0 pps 1 bps 1",
            "class 1 pps 1 bps 1\nclass 1 pps 2 bps 2",
            "class 1 bps 1 pps 1",
            "default class 9",
        ] {
            assert!(Harness::<RateLimit>::new(cfg).is_err(), "{cfg}");
        }
    }
}
