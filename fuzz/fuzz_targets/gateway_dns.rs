//! Bytes through the gateway's DNS service: the input is a guest's query to the gateway; when it
//! is forwarded, the input (with the upstream ID patched in) and the input as it is are answers
//! from the upstream; then the pending queries time out.
#![no_main]

use bridge_core::gateway::frame::{udp_frame, Ipv4Route};
use bridge_core::gateway::{Action, Gateway, GatewayConfig};
use bridge_core::time::{Duration, Instant};
use bridge_core::wire::{EthernetAddress, Ipv4Address};
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let gw_mac = EthernetAddress([0x52, 0x54, 0x00, 0xb9, 0xb0, 0x96]);
    let upstream = "192.0.2.53:53".parse().unwrap();
    let mut config = GatewayConfig::libvirt_default(gw_mac, vec![upstream]);
    config.domain = Some("vm.test".into());
    let mut gw = Gateway::new(config).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let now = Instant::from_secs(1_700_000_000);
    let route = Ipv4Route {
        src_mac: EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
        dst_mac: gw_mac,
        src_ip: Ipv4Address::new(192, 168, 122, 2),
        dst_ip: Ipv4Address::new(192, 168, 122, 1),
    };
    let action = gw.handle(now, &udp_frame(&route, 40000, 53, data), &mut rng);
    if let Action::DnsUpstream(query) = action {
        let mut answer = data.to_vec();
        if answer.len() >= 2 {
            answer[..2].copy_from_slice(&query.payload[..2]);
        }
        let _ = gw.handle_dns_answer(query.upstream, &answer);
        let _ = gw.handle_dns_answer(query.upstream, &query.payload);
    }
    let _ = gw.handle_dns_answer(upstream, data);
    let _ = gw.poll(now + Duration::from_secs(6));
});
