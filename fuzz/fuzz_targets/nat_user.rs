//! Guest frames through a NAT network's gateway and its `user` egress (the passt/slirp model:
//! smoltcp's TCP stack, UDP and echo flows on host sockets), as a hostile guest would send them.
//!
//! Each input is a series of frames: a little-endian u16 length, then that many bytes, then a
//! byte that moves the clock on (in tens of milliseconds). A frame whose length is even is made
//! well formed first, so that it reaches the flows: IPv4 (TCP, UDP or ICMP, by its first byte)
//! from a guest of the network to the gateway's MAC, not a fragment, with right lengths and
//! checksums, and (by its first byte too) to this target's TCP or UDP server on loopback. An odd
//! one goes as it is. Each frame goes to the gateway, and what the gateway hands over goes to
//! the egress as the network's event loop does it; then the host sockets are all reported
//! ready, the servers accept, read and answer, the egress and the gateway run their timers, and
//! the frames they send are taken.
//!
//! Everything runs in a network namespace of the fuzzer's own, made at its start, with only
//! its loopback up: the network lets guests reach that loopback (`loopback_egress`), where the
//! servers are, and nothing leaves the process's namespace. Needs root, for the namespace.
#![no_main]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Once;

use bridge_core::conntrack::{Conntrack, ConntrackConfig};
use bridge_core::gateway::GatewayConfig;
use bridge_core::time::{Duration, Instant};
use bridge_core::wire::{
    EthernetAddress, Icmpv4Packet, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket,
    UdpPacket,
};
use event_manager::EventSet;
use libfuzzer_sys::fuzz_target;
use vhost_net_backend::nat::gateway_port::GatewayPort;
use vhost_net_backend::nat::outbox::Outbox;
use vhost_net_backend::nat::rate_log::RateLimited;
use vhost_net_backend::nat::registry::{Kind, Registry, Token};
use vhost_net_backend::nat::user::{EgressCx, UserEgress};

const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xb9, 0xb0, 0x96]);
const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const ZONE: u32 = 1;
/// Flow slots reported ready after each frame, of each kind.
const SLOTS: usize = 4;

static NAMESPACE: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    NAMESPACE.call_once(|| {
        // SAFETY: unshare takes no pointers; it moves this (the fuzzing) thread into a new
        // network namespace, which the `ip` below inherits.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "nat_user needs root: {}",
            std::io::Error::last_os_error()
        );
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");
    });
    let servers = Servers::new();
    let mut now = Instant::from_secs(1_700_000_000);
    let mut config = GatewayConfig::libvirt_default(GATEWAY_MAC, Vec::new());
    config.loopback_egress = true;
    let gateway_net = config.address;
    let mut gateway = GatewayPort::new("fuzz", config, None, now).unwrap();
    let mut user = UserEgress::new(gateway_net, GATEWAY_MAC, 1500, None, 0, now);
    let conntrack = Conntrack::new(ConntrackConfig::default());
    let (mut out, mut reg, mut log) = (
        Outbox::default(),
        Registry::default(),
        RateLimited::default(),
    );
    let mut accepted = Vec::new();

    let mut rest = data;
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi]) % 1600).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        let mut frame = bytes.to_vec();
        if len % 2 == 0 {
            well_formed(&mut frame, &servers);
        }
        let handoff = gateway.handle(now, &frame, &mut out, &mut reg);
        let mut cx = EgressCx {
            now,
            out: &mut out,
            reg: &mut reg,
            gateway_mac: GATEWAY_MAC,
            gateway_ip: gateway.address(),
            zone: ZONE,
            conntrack: &conntrack,
            log: &mut log,
        };
        user.hand_off(&mut cx, handoff, &frame);
        servers.serve(&mut accepted);
        for kind in [Kind::Tcp, Kind::Udp, Kind::Icmp] {
            for index in 0..SLOTS {
                let ready = EventSet::IN | EventSet::OUT;
                user.on_socket(&mut cx, Token::new(kind, index), ready);
            }
        }
        user.poll(&mut cx);
        gateway.poll(now, &mut out, &mut reg);
        out.drain(|_| Some(GUEST_MAC), |_| {}, |_| {});
        rest = match next.split_first() {
            Some((step, next)) => {
                now += Duration::from_millis(10 * u64::from(*step));
                next
            }
            None => &[],
        };
    }
});

/// A TCP server that answers what it reads, and a UDP one that echoes, on loopback, with
/// their ports.
struct Servers {
    tcp: TcpListener,
    udp: UdpSocket,
    tcp_port: u16,
    udp_port: u16,
}

impl Servers {
    fn new() -> Self {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        let tcp_port = tcp.local_addr().unwrap().port();
        let udp_port = udp.local_addr().unwrap().port();
        Servers {
            tcp,
            udp,
            tcp_port,
            udp_port,
        }
    }

    /// Accepts the connections waiting (into `accepted`), and answers what every one and the
    /// UDP socket have to read.
    fn serve(&self, accepted: &mut Vec<TcpStream>) {
        while let Ok((s, _)) = self.tcp.accept() {
            s.set_nonblocking(true).unwrap();
            accepted.push(s);
        }
        let mut buf = [0u8; 2048];
        for s in accepted.iter_mut() {
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write(&buf[..n]);
            }
        }
        while let Ok((n, from)) = self.udp.recv_from(&mut buf) {
            let _ = self.udp.send_to(&buf[..n], from);
        }
    }
}

/// Makes `frame` an IPv4 packet from a guest of 192.168.122.0/24 to the gateway's MAC, with the
/// protocol its first byte names, not a fragment, with right lengths and checksums; to one of
/// `servers` if its first byte says so, else to the destination its bytes name (if it is long
/// enough to hold the headers; else leaves it as it is).
fn well_formed(frame: &mut [u8], servers: &Servers) {
    const ETH: usize = 14;
    const IP: usize = 20;
    let Some(&selector) = frame.first() else {
        return;
    };
    let (protocol, l4_header) = match selector % 3 {
        0 => (IpProtocol::Tcp, 20),
        1 => (IpProtocol::Udp, 8),
        _ => (IpProtocol::Icmp, 8),
    };
    let to_server = selector & 0x80 != 0 && protocol != IpProtocol::Icmp;
    if frame.len() < ETH + IP + l4_header {
        return;
    }
    frame[..6].copy_from_slice(&GATEWAY_MAC.0);
    frame[6..12].copy_from_slice(&GUEST_MAC.0);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (frame.len() - ETH) as u16;
    let (src, dst) = {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[ETH..]);
        ip.set_version(4);
        ip.set_header_len(IP as u8);
        ip.set_total_len(total);
        ip.set_more_frags(false);
        ip.set_frag_offset(0);
        ip.set_hop_limit(ip.hop_limit().max(2));
        ip.set_next_header(protocol);
        let src = Ipv4Address::new(192, 168, 122, 2 + ip.src_addr().octets()[3] % 200);
        ip.set_src_addr(src);
        if to_server {
            ip.set_dst_addr(Ipv4Address::LOCALHOST);
        }
        ip.fill_checksum();
        (IpAddress::Ipv4(src), IpAddress::Ipv4(ip.dst_addr()))
    };
    let l4 = &mut frame[ETH + IP..];
    let l4_len = l4.len() as u16;
    match protocol {
        IpProtocol::Tcp => {
            let mut tcp = TcpPacket::new_unchecked(l4);
            tcp.set_header_len(20);
            if to_server {
                tcp.set_dst_port(servers.tcp_port);
            }
            tcp.fill_checksum(&src, &dst);
        }
        IpProtocol::Udp => {
            let mut udp = UdpPacket::new_unchecked(l4);
            udp.set_len(l4_len);
            if to_server {
                udp.set_dst_port(servers.udp_port);
            }
            udp.fill_checksum(&src, &dst);
        }
        _ => Icmpv4Packet::new_unchecked(l4).fill_checksum(),
    }
}
