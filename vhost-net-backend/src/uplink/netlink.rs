//! Host interfaces through rtnetlink: what a link is (index, MTU, MAC, state, master) and the
//! changes the daemon makes (enslave, bring up, set the MAC, add an address, delete). rtnetlink
//! is async: each [`Netlink`] owns a small current-thread tokio runtime that runs only while a
//! request is made, at set-up and on link events.
//!
//! [`LinkEvents`] is a plain netlink socket subscribed to link notifications: readable when a
//! link appears, changes or goes away. It is an event source for the uplink's event loop; the
//! loop then asks [`Netlink`] what the links it cares about look like now.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{Handle, LinkUnspec};

use crate::config::MacAddr;

/// `RTNLGRP_LINK` as a bind mask.
const LINK_GROUP_MASK: u32 = 1;

/// Errors talking to the kernel through netlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The runtime or the netlink socket could not be created.
    #[error("opening a netlink connection failed")]
    Open(#[source] io::Error),
    /// A request failed.
    #[error("netlink request {what} failed")]
    Request {
        /// The request.
        what: &'static str,
        /// Why.
        #[source]
        source: rtnetlink::Error,
    },
}

/// A host interface as rtnetlink shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its MAC address (none for links without one).
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// Carrier present (lower layer up).
    pub carrier: bool,
    /// The index of the bridge (or bond) it is enslaved to.
    pub master: Option<u32>,
}

impl LinkInfo {
    fn from_message(m: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: m.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            up: m.header.flags.contains(LinkFlags::Up),
            carrier: m.header.flags.contains(LinkFlags::LowerUp),
            master: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => info.name.clone_from(n),
                LinkAttribute::Mtu(v) => info.mtu = *v,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(a);
                    info.mac = Some(MacAddr(mac));
                }
                LinkAttribute::Controller(c) => info.master = Some(*c),
                _ => {}
            }
        }
        info
    }
}

/// An rtnetlink connection with its runtime.
#[derive(Debug)]
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

fn failed(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError::Request { what, source }
}

/// Whether a request failed because the link does not exist.
fn no_such_device(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV)
}

impl Netlink {
    /// Opens a connection.
    pub fn new() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Open)?;
        let (connection, handle) = {
            // The connection's socket registers with the runtime's reactor.
            let _enter = runtime.enter();
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(NetlinkError::Open)?;
            (connection, handle)
        };
        runtime.spawn(connection);
        Ok(Netlink { runtime, handle })
    }

    /// The link named `name`, if there is one.
    pub fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let request = self.handle.link().get().match_name(name.to_string());
        match self.runtime.block_on(request.execute().try_next()) {
            Ok(m) => Ok(m.as_ref().map(LinkInfo::from_message)),
            Err(e) if no_such_device(&e) => Ok(None),
            Err(e) => Err(failed("get link")(e)),
        }
    }

    fn set(&self, what: &'static str, message: LinkMessage) -> Result<(), NetlinkError> {
        let request = self.handle.link().set(message);
        self.runtime
            .block_on(request.execute())
            .map_err(failed(what))
    }

    /// Enslaves link `index` to bridge `master`.
    pub fn set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let m = LinkUnspec::new_with_index(index).controller(master).build();
        self.set("set master", m)
    }

    /// Brings link `index` up.
    pub fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.set("set up", LinkUnspec::new_with_index(index).up().build())
    }

    /// Sets link `index`'s MAC address.
    pub fn set_mac(&self, index: u32, mac: MacAddr) -> Result<(), NetlinkError> {
        let m = LinkUnspec::new_with_index(index)
            .address(mac.0.to_vec())
            .build();
        self.set("set address", m)
    }

    /// Turns ARP off on link `index` (its neighbours' MACs are then never asked for).
    pub fn set_noarp(&self, index: u32) -> Result<(), NetlinkError> {
        self.set(
            "set arp off",
            LinkUnspec::new_with_index(index).arp(false).build(),
        )
    }

    /// Sets link `index`'s MTU.
    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set(
            "set mtu",
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
    }

    /// Adds `address/prefix` to link `index` (an existing identical address is kept).
    pub fn add_address(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let request = self
            .handle
            .address()
            .add(index, address.into(), prefix)
            .replace();
        self.runtime
            .block_on(request.execute())
            .map_err(failed("add address"))
    }
}

/// A netlink socket that becomes readable on every link notification.
#[derive(Debug)]
pub struct LinkEvents {
    socket: Socket,
}

impl LinkEvents {
    /// Subscribes to link notifications.
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, LINK_GROUP_MASK))?;
        socket.set_non_blocking(true)?;
        Ok(LinkEvents { socket })
    }

    /// Reads every pending notification. Returns whether there was any (an overrun counts:
    /// the caller then looks at the links again either way).
    pub fn drain(&self) -> bool {
        let mut buf = vec![0u8; 16 * 1024];
        let mut any = false;
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ENOBUFS: notifications were lost; the links must be looked at again.
                Err(_) => return true,
            }
        }
    }
}

impl AsRawFd for LinkEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
