//! The kernel egress's life cycle in a network namespace made by the test (root): the TAP with
//! the gateway address, forwarding, the nftables table with its port forwards, a guest's ping
//! to the gateway answered by the kernel through the TAP, a table left by a crashed run
//! replaced, everything gone after drop.
//!
//! `kernel_egress_in_a_namespace` makes the namespace and runs this same test binary inside it
//! (`ip netns exec`) for `inside_the_namespace`, which is ignored otherwise: it changes the
//! namespace it runs in.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use bridge_core::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
};
use vhost_net_backend::config::{ForwardConfig, NatConfig, Protocol};
use vhost_net_backend::datapath::vnet_hdr::VnetHdr;
use vhost_net_backend::kernel_egress::KernelEgress;

mod netns;

use netns::run;

const INSIDE: &str = "VNB_KERNEL_EGRESS_NETNS";

#[test]
fn kernel_egress_in_a_namespace() {
    netns::run_inside("vnb-kegress", "inside_the_namespace", INSIDE);
}

fn nat() -> NatConfig {
    let mut nat = NatConfig::libvirt_default();
    nat.subnet = "10.99.0.0/24".parse().unwrap();
    nat.gateway = Ipv4Addr::new(10, 99, 0, 1);
    nat
}

fn forward(port: u16) -> ForwardConfig {
    ForwardConfig {
        network: "t".into(),
        protocol: Protocol::Tcp,
        listen: format!("0.0.0.0:{port}").parse().unwrap(),
        guest: "10.99.0.10:80".parse().unwrap(),
    }
}

/// An ICMP echo request from a guest (10.99.0.10) to the gateway's MAC and address.
fn echo_request(gateway_mac: [u8; 6]) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data: b"kernel-egress",
    };
    let ip = Ipv4Repr {
        src_addr: Ipv4Address::new(10, 99, 0, 10),
        dst_addr: Ipv4Address::new(10, 99, 0, 1),
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress([0x52, 0x54, 0, 0, 0, 10]),
        dst_addr: EthernetAddress(gateway_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut f = vec![0u8; eth.buffer_len() + ip.buffer_len() + icmp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut f[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &Default::default());
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
        &Default::default(),
    );
    f
}

#[test]
#[ignore = "changes the network namespace it runs in: run by kernel_egress_in_a_namespace"]
fn inside_the_namespace() {
    netns::assert_inside(INSIDE);
    let nat = nat();
    let mac = nat.gateway_mac("t");
    // A table as a crashed run leaves it.
    let stale =
        "table ip vnb_t { chain postrouting { type nat hook postrouting priority srcnat; }; }";
    vhost_net_backend::kernel_egress::nft(stale).unwrap();

    let egress = KernelEgress::start("t", &nat, "vnbk0", &[forward(8080)]).unwrap();
    let link = run("ip", &["-d", "link", "show", "vnbk0"]);
    assert!(link.contains("NOARP") && link.contains(",UP"), "{link}");
    assert!(link.contains(&mac.to_string()), "{link}");
    let addr = run("ip", &["-4", "addr", "show", "vnbk0"]);
    assert!(addr.contains("inet 10.99.0.1/24"), "{addr}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let table = run("nft", &["list", "table", "ip", "vnb_t"]);
    assert!(table.contains("masquerade"), "{table}");
    assert!(
        table.contains("tcp dport 8080 dnat to 10.99.0.10:80"),
        "{table}"
    );
    assert_eq!(
        table.matches("chain postrouting").count(),
        1,
        "replaced, not added to"
    );

    // Port forwards change at run time.
    egress.set_forwards(&[forward(9090)]).unwrap();
    let table = run("nft", &["list", "table", "ip", "vnb_t"]);
    assert!(
        !table.contains("dport 8080") && table.contains("tcp dport 9090"),
        "{table}"
    );

    // A guest's ping to the gateway: the kernel answers through the TAP.
    assert!(egress.send(&VnetHdr::default(), &echo_request(mac.0)));
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let n = egress.tap().read(&mut buf).unwrap();
        if n > 10 {
            let frame = EthernetFrame::new_checked(&buf[10..n]).unwrap();
            if frame.ethertype() == EthernetProtocol::Ipv4 {
                let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
                if ip.next_header() == IpProtocol::Icmp {
                    break (
                        frame.src_addr(),
                        ip.src_addr(),
                        ip.dst_addr(),
                        ip.payload().to_vec(),
                    );
                }
            }
        }
        assert!(Instant::now() < deadline, "no echo reply from the kernel");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(reply.0, EthernetAddress(mac.0), "from the gateway's MAC");
    assert_eq!(
        (reply.1, reply.2),
        (
            Ipv4Address::new(10, 99, 0, 1),
            Ipv4Address::new(10, 99, 0, 10)
        )
    );
    let icmp = Icmpv4Packet::new_checked(&reply.3[..]).unwrap();
    assert!(matches!(
        Icmpv4Repr::parse(&icmp, &Default::default()).unwrap(),
        Icmpv4Repr::EchoReply {
            ident: 7,
            seq_no: 1,
            data: b"kernel-egress"
        }
    ));

    drop(egress);
    let tables = run("nft", &["list", "tables"]);
    assert!(!tables.contains("vnb_t"), "{tables}");
    let gone = Command::new("ip")
        .args(["link", "show", "vnbk0"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the TAP is gone");
}
