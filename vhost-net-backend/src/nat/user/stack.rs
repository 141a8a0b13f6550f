//! The guest-facing TCP stack of the user egress: a smoltcp [`Interface`] that takes every
//! address (AnyIP), so it terminates guests' TCP connections to anywhere, with its own TCP
//! sockets. It works on IPv4 packets (smoltcp's IP medium): frames come in from the gateway
//! port and go out with the gateway's MAC, their destination MAC found by the gateway port.

use bridge_core::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpCidr, Ipv4Cidr, ETHERNET_HEADER_LEN,
};
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::HardwareAddress;

/// The stack's device for one poll: at most one received frame, sent frames queued.
struct Phy<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut Vec<Vec<u8>>,
    mac: EthernetAddress,
    mtu: usize,
}

/// A received frame's IPv4 packet.
struct RxToken<'a>(&'a [u8]);

impl smoltcp::phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

/// Room for one IPv4 packet, sent in an Ethernet frame from the gateway's MAC.
struct TxToken<'a> {
    tx: &'a mut Vec<Vec<u8>>,
    mac: EthernetAddress,
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN + len];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_src_addr(self.mac);
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let r = f(&mut frame[ETHERNET_HEADER_LEN..]);
        self.tx.push(frame);
        r
    }
}

impl Device for Phy<'_> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let frame = self.rx.take()?;
        let tx = TxToken {
            tx: self.tx,
            mac: self.mac,
        };
        Some((RxToken(frame.get(ETHERNET_HEADER_LEN..)?), tx))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: self.tx,
            mac: self.mac,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Guests' frames come from their memory, not a wire, with their checksums left to
        // the device when they negotiated checksum offload: they are not verified.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

/// The stack and its sockets.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    tx: Vec<Vec<u8>>,
    mac: EthernetAddress,
    mtu: usize,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("sockets", &self.sockets.iter().count())
            .finish()
    }
}

impl Stack {
    /// A stack holding the gateway's address (`gateway`, `mac`) for a network of MTU `mtu`.
    pub fn new(gateway: Ipv4Cidr, mac: EthernetAddress, mtu: u16, seed: u64, now: Instant) -> Self {
        let mut tx = Vec::new();
        let mut phy = Phy {
            rx: None,
            tx: &mut tx,
            mac,
            mtu: usize::from(mtu),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut phy, now);
        iface.update_ip_addrs(|addrs| {
            // Fails only when the list is full; it is empty.
            let _ = addrs.push(IpCidr::Ipv4(gateway));
        });
        iface.set_any_ip(true);
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            tx,
            mac,
            mtu: usize::from(mtu),
        }
    }

    fn phy<'a>(
        tx: &'a mut Vec<Vec<u8>>,
        mac: EthernetAddress,
        mtu: usize,
        rx: Option<&'a [u8]>,
    ) -> Phy<'a> {
        Phy { rx, tx, mac, mtu }
    }

    /// Takes one frame (Ethernet + IPv4).
    pub fn ingress(&mut self, now: Instant, frame: &[u8]) {
        let mut phy = Self::phy(&mut self.tx, self.mac, self.mtu, Some(frame));
        self.iface
            .poll_ingress_single(now, &mut phy, &mut self.sockets);
    }

    /// Lets the sockets send what they have: every segment their windows allow, not one per
    /// socket (smoltcp's `poll_egress` dispatches each socket once; it is called until nothing
    /// more goes out).
    pub fn egress(&mut self, now: Instant) {
        let mut phy = Self::phy(&mut self.tx, self.mac, self.mtu, None);
        while self.iface.poll_egress(now, &mut phy, &mut self.sockets)
            == PollResult::SocketStateChanged
        {}
        self.iface.poll_maintenance(now);
    }

    /// The frames sent since the last call (Ethernet destination not set).
    pub fn sent(&mut self) -> std::vec::Drain<'_, Vec<u8>> {
        self.tx.drain(..)
    }

    /// When the stack next needs [`Stack::egress`].
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    /// Adds a socket.
    pub fn add(&mut self, socket: tcp::Socket<'static>) -> SocketHandle {
        self.sockets.add(socket)
    }

    /// A socket.
    pub fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(handle)
    }

    /// A socket and the interface's context (to connect it).
    pub fn socket_and_context(
        &mut self,
        handle: SocketHandle,
    ) -> (&mut tcp::Socket<'static>, &mut smoltcp::iface::Context) {
        (self.sockets.get_mut(handle), self.iface.context())
    }

    /// Removes a socket (it sends nothing more).
    pub fn remove(&mut self, handle: SocketHandle) {
        self.sockets.remove(handle);
    }
}
