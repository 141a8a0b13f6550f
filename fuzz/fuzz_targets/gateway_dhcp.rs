//! Guest bytes through the gateway's DHCP server: each input is a series of messages, each a
//! little-endian u16 length then that many bytes, sent in turn to one gateway a second apart as
//! DHCP datagrams (broadcast and unicast); the whole input is also read as a leases file.
#![no_main]

use bridge_core::gateway::frame::{udp_frame, Ipv4Route};
use bridge_core::gateway::{leases, Gateway, GatewayConfig};
use bridge_core::time::{Duration, Instant};
use bridge_core::wire::{EthernetAddress, Ipv4Address};
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let gw_mac = EthernetAddress([0x52, 0x54, 0x00, 0xb9, 0xb0, 0x96]);
    let mut gw = Gateway::new(GatewayConfig::libvirt_default(gw_mac, Vec::new())).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let mut now = Instant::from_secs(1_700_000_000);
    if let Ok(records) = leases::decode(&String::from_utf8_lossy(data)) {
        gw.dhcp_mut().unwrap().restore(now, &records);
    }
    let guest = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    let mut rest = data;
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi]) % 1500).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        for (dst_mac, dst_ip) in [
            (EthernetAddress::BROADCAST, Ipv4Address::BROADCAST),
            (gw_mac, Ipv4Address::new(192, 168, 122, 1)),
        ] {
            let route = Ipv4Route {
                src_mac: guest,
                dst_mac,
                src_ip: Ipv4Address::UNSPECIFIED,
                dst_ip,
            };
            let _ = gw.handle(now, &udp_frame(&route, 68, 67, payload), &mut rng);
            // Also with chaddr taken from the payload, so messages pass the MAC check.
            if payload.len() >= 34 {
                let mut route = route;
                route.src_mac = EthernetAddress::from_bytes(&payload[28..34]);
                let _ = gw.handle(now, &udp_frame(&route, 68, 67, payload), &mut rng);
            }
        }
        now += Duration::from_secs(1);
        gw.poll(now);
    }
    let _ = leases::encode(&gw.dhcp().unwrap().leases().records(now));
});
