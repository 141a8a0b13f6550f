//! The DHCP server through the gateway: real udhcpc frames, full exchanges, leases.

#[path = "fixtures/gateway_frames.rs"]
mod frames;
#[path = "fixtures/gateway_util.rs"]
mod util;

use bridge_core::gateway::dhcp_server::{DhcpDrop, DhcpRange, StaticHost};
use bridge_core::gateway::leases::{self, LeaseRecord};
use bridge_core::gateway::{Action, DropReason, Gateway};
use proptest::prelude::*;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{DhcpMessageType as Msg, EthernetAddress, Ipv4Address};
use util::*;

const T0: Instant = Instant::from_millis_const(1_700_000_000_000);

fn handle(gw: &mut Gateway, now: Instant, frame: &[u8]) -> Action {
    gw.handle(now, frame, &mut rng())
}

fn dhcp(gw: &mut Gateway, now: Instant, msg: &ClientMsg) -> Reply {
    parse_reply(&reply_frame(handle(gw, now, &msg.frame(false))))
}

/// DISCOVER then REQUEST: the bound address.
fn lease(
    gw: &mut Gateway,
    now: Instant,
    mac: EthernetAddress,
    hostname: Option<&'static str>,
) -> Ipv4Address {
    let mut msg = ClientMsg::new(Msg::Discover, mac);
    msg.hostname = hostname;
    let offer = dhcp(gw, now, &msg);
    assert_eq!(offer.kind, Msg::Offer);
    msg.kind = Msg::Request;
    msg.requested = Some(offer.yiaddr);
    msg.server_id = Some(GW_IP);
    let ack = dhcp(gw, now, &msg);
    assert_eq!(ack.kind, Msg::Ack);
    assert_eq!(ack.yiaddr, offer.yiaddr);
    ack.yiaddr
}

#[test]
fn udhcpc_exchange_as_recorded() {
    let mut gw = gateway();
    let offer = parse_reply(&reply_frame(handle(&mut gw, T0, &frames::DHCP_DISCOVER)));
    let dnsmasq = parse_reply(&frames::DHCP_OFFER_DNSMASQ);
    assert_eq!(offer.kind, Msg::Offer);
    assert_eq!(offer.xid, 0xa9d2_6070);
    assert_eq!(offer.yiaddr, ip(2), "first free address of the range");
    // Addressed like dnsmasq's offer: unicast to the client's MAC and new address.
    assert_eq!(offer.dst_mac, dnsmasq.dst_mac);
    assert_eq!(offer.src_ip, dnsmasq.src_ip);
    assert_eq!(offer.dst_ip, offer.yiaddr);
    // The options dnsmasq sends for libvirt's default network, with the same values.
    for kind in [1u8, 3, 6, 28, 51, 54, 58, 59] {
        assert_eq!(
            offer.options.get(&kind),
            dnsmasq.options.get(&kind),
            "option {kind}"
        );
    }

    // udhcpc selected dnsmasq's 192.168.122.76; the address is free here too, so it is ACKed.
    let ack = parse_reply(&reply_frame(handle(
        &mut gw,
        T0,
        &frames::DHCP_REQUEST_SELECTING,
    )));
    let dnsmasq = parse_reply(&frames::DHCP_ACK_DNSMASQ);
    assert_eq!(ack.kind, Msg::Ack);
    assert_eq!(ack.yiaddr, ip(76));
    for kind in [1u8, 3, 6, 28, 51, 54, 58, 59] {
        assert_eq!(
            ack.options.get(&kind),
            dnsmasq.options.get(&kind),
            "option {kind}"
        );
    }
    let lease = gw
        .dhcp()
        .unwrap()
        .leases()
        .by_mac(&GUEST_MAC)
        .unwrap()
        .clone();
    assert_eq!(lease.ip, ip(76));
    assert_eq!(lease.hostname.as_deref(), Some("guest1"));
    assert_eq!(lease.expires, T0 + Duration::from_secs(3600));
    // The offer for .2 was replaced by the lease on .76.
    assert!(gw.dhcp().unwrap().leases().by_ip(&ip(2)).is_none());

    // Renewing: unicast with ciaddr, answered unicast to ciaddr.
    let t1 = T0 + Duration::from_secs(1800);
    let renew = parse_reply(&reply_frame(handle(
        &mut gw,
        t1,
        &frames::DHCP_REQUEST_RENEW,
    )));
    assert_eq!(
        (renew.kind, renew.yiaddr, renew.ciaddr),
        (Msg::Ack, ip(76), ip(76))
    );
    assert_eq!((renew.dst_mac, renew.dst_ip), (GUEST_MAC, ip(76)));
    let leases = gw.dhcp().unwrap().leases();
    assert_eq!(
        leases.by_mac(&GUEST_MAC).unwrap().expires,
        t1 + Duration::from_secs(3600)
    );
    assert_eq!(
        leases.by_mac(&GUEST_MAC).unwrap().hostname.as_deref(),
        Some("guest1")
    );

    let release = handle(&mut gw, t1, &frames::DHCP_RELEASE);
    assert_eq!(release, Action::Consumed);
    assert_eq!(gw.dhcp().unwrap().leases().bound(t1).count(), 0);
    // The released address stays the client's first choice.
    let again = parse_reply(&reply_frame(handle(&mut gw, t1, &frames::DHCP_DISCOVER)));
    assert_eq!(again.yiaddr, ip(76));
}

#[test]
fn dora_renew_rebind_release_decline() {
    let mut gw = gateway();
    let a = mac(1);
    let addr = lease(&mut gw, T0, a, Some("alpha"));
    assert_eq!(addr, ip(2));

    // Renew (unicast) and rebind (broadcast) both extend the lease.
    let mut renew = ClientMsg::new(Msg::Request, a);
    renew.ciaddr = addr;
    let t1 = T0 + Duration::from_secs(1800);
    let ack = dhcp(&mut gw, t1, &renew);
    assert_eq!((ack.kind, ack.dst_ip), (Msg::Ack, addr));
    let t2 = T0 + Duration::from_secs(3200);
    let ack = parse_reply(&reply_frame(handle(&mut gw, t2, &renew.frame(true))));
    assert_eq!((ack.kind, ack.yiaddr, ack.dst_ip), (Msg::Ack, addr, addr));
    assert_eq!(
        gw.dhcp().unwrap().leases().by_mac(&a).unwrap().expires,
        t2 + Duration::from_secs(3600)
    );

    // Release, then another client is offered a never-used address before the released one.
    let mut release = ClientMsg::new(Msg::Release, a);
    release.ciaddr = addr;
    release.server_id = Some(GW_IP);
    assert_eq!(handle(&mut gw, t2, &release.frame(false)), Action::Consumed);
    assert_eq!(lease(&mut gw, t2, mac(2), None), ip(3));

    // Decline: the address is quarantined, the client gets another, and after ten minutes
    // the declined address is handed out again.
    let b = mac(3);
    let declined = lease(&mut gw, t2, b, None);
    let mut decline = ClientMsg::new(Msg::Decline, b);
    decline.requested = Some(declined);
    decline.server_id = Some(GW_IP);
    assert_eq!(handle(&mut gw, t2, &decline.frame(false)), Action::Consumed);
    assert!(gw.dhcp().unwrap().leases().by_mac(&b).is_none());
    let mut request = ClientMsg::new(Msg::Request, mac(9));
    request.requested = Some(declined);
    assert_eq!(dhcp(&mut gw, t2, &request).kind, Msg::Nak, "quarantined");
    let next = lease(&mut gw, t2, b, None);
    assert_ne!(next, declined);
    let later = t2 + Duration::from_secs(601);
    gw.poll(later);
    assert_eq!(dhcp(&mut gw, later, &request).kind, Msg::Ack);

    // A RELEASE of a lease the client does not hold changes nothing.
    let mut bogus = ClientMsg::new(Msg::Release, mac(2));
    bogus.ciaddr = next;
    assert_eq!(
        handle(&mut gw, later, &bogus.frame(false)),
        Action::Drop(DropReason::Dhcp(DhcpDrop::UnknownLease))
    );
    assert!(gw
        .dhcp()
        .unwrap()
        .leases()
        .by_ip(&next)
        .unwrap()
        .is_bound(later));
}

#[test]
fn naks_and_ignored_messages() {
    let mut gw = gateway();
    let a = mac(1);
    // Init-reboot into another network: NAK, broadcast.
    let mut reboot = ClientMsg::new(Msg::Request, a);
    reboot.requested = Some(Ipv4Address::new(10, 0, 0, 5));
    let nak = dhcp(&mut gw, T0, &reboot);
    assert_eq!(nak.kind, Msg::Nak);
    assert_eq!(
        (nak.dst_mac, nak.dst_ip),
        (EthernetAddress::BROADCAST, Ipv4Address::BROADCAST)
    );
    assert_eq!(nak.options.get(&54), Some(&GW_IP.octets().to_vec()));
    assert!(!nak.options.contains_key(&51));

    // Init-reboot with a free address of the range: ACK (authoritative, no lease known).
    reboot.requested = Some(ip(40));
    assert_eq!(dhcp(&mut gw, T0, &reboot).kind, Msg::Ack);
    // Someone else asking for it: NAK.
    let mut other = ClientMsg::new(Msg::Request, mac(2));
    other.requested = Some(ip(40));
    assert_eq!(dhcp(&mut gw, T0, &other).kind, Msg::Nak);
    // The gateway's own address, the broadcast address: NAK.
    for addr in [GW_IP, ip(255), ip(0)] {
        other.requested = Some(addr);
        assert_eq!(dhcp(&mut gw, T0, &other).kind, Msg::Nak, "{addr}");
    }

    // Selecting another server's offer releases ours silently.
    let mut discover = ClientMsg::new(Msg::Discover, mac(3));
    let offer = dhcp(&mut gw, T0, &discover);
    discover.kind = Msg::Request;
    discover.requested = Some(offer.yiaddr);
    discover.server_id = Some(Ipv4Address::new(192, 168, 122, 254));
    assert_eq!(
        handle(&mut gw, T0, &discover.frame(false)),
        Action::Consumed
    );
    assert!(gw.dhcp().unwrap().leases().by_mac(&mac(3)).is_none());

    // chaddr must be the sender's MAC.
    let mut frame = ClientMsg::new(Msg::Discover, mac(4)).frame(false);
    frame[6..12].copy_from_slice(&mac(5).0);
    assert_eq!(
        handle(&mut gw, T0, &frame),
        Action::Drop(DropReason::Dhcp(DhcpDrop::ChaddrMismatch))
    );
    // A server's message from a guest (a rogue OFFER) is not served.
    let mut rogue = ClientMsg::new(Msg::Discover, mac(4)).frame(false);
    rogue[14 + 20 + 8] = 2; // op = BOOTREPLY
    rogue[14 + 20 + 8 + 242] = 2; // message type OFFER
    rogue[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]); // no UDP checksum
    assert!(matches!(
        handle(&mut gw, T0, &rogue),
        Action::Drop(DropReason::Dhcp(_))
    ));
    // Truncated messages.
    for len in [14, 34, 42, 200, 281] {
        let frame = ClientMsg::new(Msg::Discover, mac(4)).frame(false);
        assert!(
            matches!(handle(&mut gw, T0, &frame[..len]), Action::Drop(_)),
            "{len}"
        );
    }
}

#[test]
fn inform_gets_options_without_a_lease() {
    let mut gw = gateway();
    let mut inform = ClientMsg::new(Msg::Inform, mac(1));
    inform.ciaddr = ip(99);
    let ack = dhcp(&mut gw, T0, &inform);
    assert_eq!(ack.kind, Msg::Ack);
    assert_eq!(ack.yiaddr, Ipv4Address::UNSPECIFIED);
    assert_eq!(ack.dst_ip, ip(99));
    assert!(!ack.options.contains_key(&51) && !ack.options.contains_key(&58));
    assert_eq!(ack.options.get(&3), Some(&GW_IP.octets().to_vec()));
    assert!(gw.dhcp().unwrap().leases().by_mac(&mac(1)).is_none());
}

#[test]
fn options_domain_mtu_dns_and_broadcast_flag() {
    let mut config = config();
    config.domain = Some("vm.test".into());
    let dhcp = config.dhcp.as_mut().unwrap();
    dhcp.mtu = Some(1400);
    dhcp.dns_servers = vec![
        Ipv4Address::new(192, 0, 2, 1),
        Ipv4Address::new(192, 0, 2, 2),
    ];
    dhcp.lease_time = Duration::from_secs(600);
    let mut gw = Gateway::new(config).unwrap();
    let mut discover = ClientMsg::new(Msg::Discover, mac(1));
    discover.broadcast_flag = true;
    let offer = dhcp_reply(&mut gw, &discover);
    assert_eq!(
        (offer.dst_mac, offer.dst_ip),
        (EthernetAddress::BROADCAST, Ipv4Address::BROADCAST)
    );
    assert!(offer.broadcast_flag);
    assert_eq!(offer.options[&15], b"vm.test");
    assert_eq!(offer.options[&26], 1400u16.to_be_bytes());
    assert_eq!(offer.options[&6], [192, 0, 2, 1, 192, 0, 2, 2]);
    assert_eq!(offer.options[&1], [255, 255, 255, 0]);
    assert_eq!(offer.options[&28], [192, 168, 122, 255]);
    assert_eq!(offer.option_u32(51), Some(600));
    assert_eq!(offer.option_u32(58), Some(300));
    assert_eq!(offer.option_u32(59), Some(525));
}

fn dhcp_reply(gw: &mut Gateway, msg: &ClientMsg) -> Reply {
    dhcp(gw, T0, msg)
}

#[test]
fn lease_expiry_and_reuse() {
    let mut config = config();
    let dhcp = config.dhcp.as_mut().unwrap();
    dhcp.ranges = vec![DhcpRange {
        start: ip(10),
        end: ip(11),
    }];
    let mut gw = Gateway::new(config).unwrap();
    assert_eq!(lease(&mut gw, T0, mac(1), None), ip(10));
    let t = T0 + Duration::from_secs(10);
    assert_eq!(lease(&mut gw, t, mac(2), None), ip(11));
    let discover = ClientMsg::new(Msg::Discover, mac(3));
    assert_eq!(
        handle(&mut gw, t, &discover.frame(false)),
        Action::Drop(DropReason::Dhcp(DhcpDrop::PoolExhausted))
    );
    // An unanswered offer holds its address for a minute only.
    // After the first lease expires, its address is reused.
    let expired = T0 + Duration::from_secs(3600);
    assert_eq!(lease(&mut gw, expired, mac(3), None), ip(10));
    // The first client comes back: its old address is gone, none is free until .11 expires.
    assert_eq!(
        handle(
            &mut gw,
            expired,
            &ClientMsg::new(Msg::Discover, mac(1)).frame(false)
        ),
        Action::Drop(DropReason::Dhcp(DhcpDrop::PoolExhausted))
    );
    assert_eq!(
        lease(&mut gw, t + Duration::from_secs(3600), mac(1), None),
        ip(11)
    );
}

#[test]
fn offers_are_held_briefly() {
    let mut config = config();
    config.dhcp.as_mut().unwrap().ranges = vec![DhcpRange {
        start: ip(10),
        end: ip(10),
    }];
    let mut gw = Gateway::new(config).unwrap();
    let offer = dhcp(&mut gw, T0, &ClientMsg::new(Msg::Discover, mac(1)));
    assert_eq!(offer.yiaddr, ip(10));
    let other = ClientMsg::new(Msg::Discover, mac(2));
    assert!(matches!(
        handle(&mut gw, T0, &other.frame(false)),
        Action::Drop(_)
    ));
    let later = T0 + Duration::from_secs(61);
    assert_eq!(dhcp(&mut gw, later, &other).yiaddr, ip(10));
}

#[test]
fn static_hosts() {
    let mut config = config();
    config.dhcp.as_mut().unwrap().hosts = vec![StaticHost {
        mac: mac(1),
        ip: ip(50),
        hostname: Some("db".into()),
    }];
    let mut gw = Gateway::new(config).unwrap();
    assert_eq!(lease(&mut gw, T0, mac(1), Some("whatever")), ip(50));
    let l = gw.dhcp().unwrap().leases().by_mac(&mac(1)).unwrap();
    assert_eq!(l.hostname.as_deref(), Some("db"));
    // The static host is told its name.
    let ack = dhcp(&mut gw, T0, &{
        let mut m = ClientMsg::new(Msg::Request, mac(1));
        m.ciaddr = ip(50);
        m
    });
    assert_eq!(ack.options[&12], b"db");
    // Its address is nobody else's, and it gets no other.
    let mut other = ClientMsg::new(Msg::Request, mac(2));
    other.requested = Some(ip(50));
    assert_eq!(dhcp(&mut gw, T0, &other).kind, Msg::Nak);
    let mut elsewhere = ClientMsg::new(Msg::Request, mac(1));
    elsewhere.requested = Some(ip(60));
    assert_eq!(dhcp(&mut gw, T0, &elsewhere).kind, Msg::Nak);
    // Another client's DISCOVER skips it.
    assert_ne!(
        dhcp(&mut gw, T0, &ClientMsg::new(Msg::Discover, mac(2))).yiaddr,
        ip(50)
    );
}

#[test]
fn bad_configs_are_refused() {
    let mut c = config();
    c.dhcp.as_mut().unwrap().ranges = vec![DhcpRange {
        start: ip(10),
        end: Ipv4Address::new(192, 168, 123, 5),
    }];
    assert!(Gateway::new(c).is_err());
    let mut c = config();
    c.dhcp.as_mut().unwrap().hosts = vec![StaticHost {
        mac: mac(1),
        ip: GW_IP,
        hostname: None,
    }];
    assert!(Gateway::new(c).is_err());
    let mut c = config();
    c.domain = Some("bad_domain..x".into());
    assert!(Gateway::new(c).is_err());
}

#[test]
fn leases_survive_a_restart() {
    let mut gw = gateway();
    let a = lease(&mut gw, T0, mac(1), Some("alpha"));
    let b = lease(&mut gw, T0, mac(2), None);
    let generation = gw.dhcp().unwrap().leases().generation();
    assert!(generation > 0);
    let now = T0 + Duration::from_secs(100);
    let text = leases::encode(&gw.dhcp().unwrap().leases().records(now));
    let expiry = T0.secs() + 3600;
    assert_eq!(
        text,
        format!("{expiry} 52:54:00:00:00:01 {a} alpha *\n{expiry} 52:54:00:00:00:02 {b} * *\n")
    );

    let mut restarted = gateway();
    let records = leases::decode(&text).unwrap();
    assert_eq!(restarted.dhcp_mut().unwrap().restore(now, &records), 2);
    // The client renews and keeps its address; a new client does not get it.
    let mut renew = ClientMsg::new(Msg::Request, mac(1));
    renew.ciaddr = a;
    assert_eq!(dhcp(&mut restarted, now, &renew).kind, Msg::Ack);
    let mut thief = ClientMsg::new(Msg::Request, mac(3));
    thief.requested = Some(b);
    assert_eq!(dhcp(&mut restarted, now, &thief).kind, Msg::Nak);
    // Expired records are not restored.
    let mut fresh = gateway();
    let late = T0 + Duration::from_secs(3601);
    assert_eq!(fresh.dhcp_mut().unwrap().restore(late, &records), 0);
}

#[test]
fn lease_file_decoding() {
    let text = "1700003600 52:54:00:ab:cd:ef 192.168.122.9 web 01:52:54:00:ab:cd:ef\n\
                duid 00:01:00:01:2c:00:00:00:52:54:00:00:00:01\n\n\
                1700003601 52:54:00:ab:cd:f0 192.168.122.10 * *\n";
    let records = leases::decode(text).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].hostname.as_deref(), Some("web"));
    assert_eq!(records[1].ip, ip(10));
    for bad in [
        "1700003600 52:54:00:ab:cd:ef 192.168.122.9",
        "soon 52:54:00:ab:cd:ef 192.168.122.9 web *",
        "1700003600 52:54:00:ab:cd 192.168.122.9 web *",
        "1700003600 52:54:00:ab:cd:ef 192.168.122.900 web *",
        "1700003600 52:54:00:ab:cd:ef 192.168.122.9 we_b *",
    ] {
        assert!(leases::decode(bad).is_err(), "{bad}");
    }
}

proptest! {
    #[test]
    fn lease_records_round_trip(
        expires in 0i64..=i64::MAX / 1_000_000,
        mac in any::<[u8; 6]>(),
        addr in any::<[u8; 4]>(),
        hostname in proptest::option::of("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"),
    ) {
        let record = LeaseRecord {
            expires,
            mac: EthernetAddress(mac),
            ip: Ipv4Address::from(addr),
            hostname,
        };
        let decoded = leases::decode(&leases::encode(std::slice::from_ref(&record))).unwrap();
        prop_assert_eq!(decoded, vec![record]);
    }

    #[test]
    fn dhcp_never_panics_on_guest_bytes(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut gw = gateway();
        let route = bridge_core::gateway::frame::Ipv4Route {
            src_mac: GUEST_MAC,
            dst_mac: EthernetAddress::BROADCAST,
            src_ip: Ipv4Address::UNSPECIFIED,
            dst_ip: Ipv4Address::BROADCAST,
        };
        let frame = bridge_core::gateway::frame::udp_frame(&route, 68, 67, &payload);
        let _ = gw.handle(T0, &frame, &mut rng());
    }
}
