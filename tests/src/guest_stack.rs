//! A guest's network stack on a harness NIC, for tests of what sits behind a port (the NAT
//! gateway and its egress) without a VM: smoltcp (Ethernet, ARP, IPv4, TCP) whose device is a
//! [`VirtioNet`]. Received frames with a partial checksum are completed first, as a guest's
//! driver hands them up; every received frame is also kept (with its virtio-net header) for the
//! test to look at, and the test can send frames it builds itself.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use tests::frontend::{connection::Role, net::{NetOptions, VirtioNet}};
//! # use bridge_core::wire::{Ipv4Address, Ipv4Cidr};
//! # use tests::guest_stack::GuestStack;
//! let nic = VirtioNet::new(Role::Connect("/tmp/vm0.sock".into()), NetOptions::default())?;
//! let cidr = Ipv4Cidr::new(Ipv4Address::new(192, 168, 122, 50), 24);
//! let mut guest = GuestStack::new(nic, [0x52, 0x54, 0, 0, 0, 1], cidr,
//!     Ipv4Address::new(192, 168, 122, 1));
//! let tcp = guest.connect("127.0.0.1:8080".parse()?);
//! assert!(guest.until(Duration::from_secs(5), |g| g.tcp(tcp).may_send()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant as StdInstant};

use bridge_core::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpCidr, IpEndpoint, IpListenEndpoint};

use crate::frontend::frames::complete_checksum;
use crate::frontend::net::VirtioNet;
use crate::frontend::net_hdr::NetHdr;

/// Bytes of each socket's buffers.
const SOCKET_BUFFER: usize = 256 << 10;
/// Frames kept for the test to look at.
const KEPT: usize = 4096;

/// The stack's device: the harness NIC, with the frames received in this poll.
struct Phy<'a> {
    nic: &'a mut VirtioNet,
    rx: &'a mut VecDeque<Vec<u8>>,
    mtu: usize,
}

struct RxToken(Vec<u8>);

impl smoltcp::phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxToken<'a> {
    nic: &'a mut VirtioNet,
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        // A full transmit queue times out in the harness: a lost frame, as on a real NIC.
        let _ = self.nic.send(0, &frame);
        r
    }
}

impl Device for Phy<'_> {
    type RxToken<'a>
        = RxToken
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken { nic: self.nic }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { nic: self.nic })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps.checksum = ChecksumCapabilities::default();
        caps
    }
}

/// A guest: its NIC and its stack.
pub struct GuestStack {
    nic: VirtioNet,
    iface: Interface,
    sockets: SocketSet<'static>,
    rx: VecDeque<Vec<u8>>,
    seen: VecDeque<(NetHdr, Vec<u8>)>,
    mac: EthernetAddress,
    ip: Ipv4Address,
    mtu: usize,
    epoch: StdInstant,
    next_port: u16,
}

impl std::fmt::Debug for GuestStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestStack")
            .field("mac", &self.mac)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

impl GuestStack {
    /// A guest with `mac` and address `cidr` on `nic`, its default route via `gateway`.
    pub fn new(nic: VirtioNet, mac: [u8; 6], cidr: Ipv4Cidr, gateway: Ipv4Address) -> Self {
        let mut nic = nic;
        let mtu = 1514;
        let epoch = StdInstant::now();
        let mut rx = VecDeque::new();
        let mut phy = Phy {
            nic: &mut nic,
            rx: &mut rx,
            mtu,
        };
        let mac = EthernetAddress(mac);
        let config = Config::new(HardwareAddress::Ethernet(mac));
        let mut iface = Interface::new(config, &mut phy, Instant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            addrs.push(IpCidr::Ipv4(cidr)).expect("one address");
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(gateway)
            .expect("one route");
        GuestStack {
            nic,
            iface,
            sockets: SocketSet::new(Vec::new()),
            rx,
            seen: VecDeque::new(),
            mac,
            ip: cidr.address(),
            mtu,
            epoch,
            next_port: 40000,
        }
    }

    /// The guest's MAC.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    /// The guest's address.
    pub fn ip(&self) -> Ipv4Address {
        self.ip
    }

    /// The NIC, to send frames the test built.
    pub fn nic(&mut self) -> &mut VirtioNet {
        &mut self.nic
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Takes the frames that arrived within `wait`, lets the stack handle them and send.
    pub fn poll(&mut self, wait: Duration) {
        let mut wait = wait;
        while let Ok(Some((hdr, mut frame))) = self.nic.recv(wait) {
            wait = Duration::ZERO;
            let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
            if hdr.is_needs_csum() && start + offset + 2 <= frame.len() {
                complete_checksum(&mut frame, start, offset);
            }
            self.rx.push_back(frame.clone());
            if self.seen.len() == KEPT {
                self.seen.pop_front();
            }
            self.seen.push_back((hdr, frame));
        }
        let now = self.now();
        let mut phy = Phy {
            nic: &mut self.nic,
            rx: &mut self.rx,
            mtu: self.mtu,
        };
        self.iface.poll(now, &mut phy, &mut self.sockets);
    }

    /// Polls until `done` holds or `timeout` passes; returns whether it held.
    pub fn until(&mut self, timeout: Duration, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let deadline = StdInstant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if StdInstant::now() >= deadline {
                return false;
            }
            self.poll(Duration::from_millis(2));
        }
    }

    /// The first frame received (since it was last asked) that `matches`, taken out.
    pub fn take_seen(&mut self, mut matches: impl FnMut(&[u8]) -> bool) -> Option<Vec<u8>> {
        let i = self.seen.iter().position(|(_, f)| matches(f))?;
        self.seen.remove(i).map(|(_, f)| f)
    }

    /// The virtio-net headers of the frames received since the last call.
    pub fn take_headers(&mut self) -> Vec<NetHdr> {
        self.seen.drain(..).map(|(h, _)| h).collect()
    }

    /// A TCP socket connecting to `remote` from a new local port.
    pub fn connect(&mut self, remote: SocketAddrV4) -> SocketHandle {
        let port = self.next_port;
        self.next_port += 1;
        let handle = self.sockets.add(socket());
        let remote = IpEndpoint::new((*remote.ip()).into(), remote.port());
        self.sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(self.iface.context(), remote, port)
            .expect("a fresh socket connects");
        handle
    }

    /// A TCP socket listening on `port`.
    pub fn listen(&mut self, port: u16) -> SocketHandle {
        let mut s = socket();
        s.listen(IpListenEndpoint::from(port))
            .expect("a fresh socket listens");
        self.sockets.add(s)
    }

    /// A TCP socket.
    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(handle)
    }

    /// Sends what fits of `data` on `handle` and receives into `into`, until all was sent and
    /// `want` bytes arrived, or `timeout` passes. Returns whether both happened.
    pub fn exchange(
        &mut self,
        handle: SocketHandle,
        data: &[u8],
        into: &mut Vec<u8>,
        want: usize,
        timeout: Duration,
    ) -> bool {
        let mut sent = 0;
        self.until(timeout, |g| {
            let s = g.tcp(handle);
            if sent < data.len() && s.can_send() {
                sent += s.send_slice(&data[sent..]).unwrap_or(0);
            }
            while s.can_recv() {
                let _ = s.recv(|b| {
                    into.extend_from_slice(b);
                    (b.len(), ())
                });
            }
            sent == data.len() && into.len() >= want
        })
    }
}

fn socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    );
    s.set_ack_delay(None);
    s
}
