//! `allow-all`: accepts every frame. The identity policy, and the baseline the policy
//! benchmarks measure the host's own cost with.
#![deny(unsafe_code)]

use policy_sdk::config::{lines, ConfigError};
use policy_sdk::{export_policy, hostcall, Frame, Manifest, Policy, Verdict};

/// The only rule.
pub const RULE_ACCEPT: u32 = 1;

/// Accepts everything; takes no configuration.
#[derive(Debug)]
pub struct AllowAll;

impl Policy for AllowAll {
    const MANIFEST: Manifest<'static> = Manifest {
        name: "allow-all",
        version: env!("CARGO_PKG_VERSION"),
        hooks: 0b11,
        caps: 0,
        memory_pages: 2,
        maps: &[],
        counters: &[],
    };

    fn init(config: &[u8]) -> Result<Self, ConfigError> {
        if let Some(line) = lines(config)?.next() {
            return Err(line.error("allow-all takes no configuration"));
        }
        let _ = hostcall::rule_describe(RULE_ACCEPT, "accept all");
        Ok(AllowAll)
    }

    fn on_new_flow(&mut self, _frame: &Frame<'_>) -> Verdict {
        Verdict::ACCEPT.by_rule(RULE_ACCEPT)
    }
}

export_policy!(AllowAll);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::frames::{arp_request, tcp4, Endpoint, TCP_SYN};
    use policy_sdk::testing::{rule, Harness, TestFrame};

    const A: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 1], [10, 0, 0, 1]);
    const B: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 2], [10, 0, 0, 2]);

    #[test]
    fn accepts_everything() {
        let mut h = Harness::<AllowAll>::new("# nothing\n").unwrap();
        let frames = [
            TestFrame::new(tcp4(A, B, 1, 2, TCP_SYN)),
            TestFrame::new(arp_request(A, B.ip)),
            TestFrame::new(vec![0; 3]),
        ];
        for v in h.judge(&frames) {
            assert_eq!(v, Verdict::ACCEPT.by_rule(RULE_ACCEPT));
        }
        assert_eq!(rule(RULE_ACCEPT).as_deref(), Some("accept all"));
    }

    #[test]
    fn refuses_configuration() {
        assert!(Harness::<AllowAll>::new("port 1").is_err());
    }
}
