//! An in-process vhost-user frontend: plays a VMM and its guest's virtio-net driver against a
//! vhost-user backend socket, for fast deterministic tests and load generation.
//!
//! | module | holds |
//! |---|---|
//! | [`net`] | [`VirtioNet`](net::VirtioNet), the driver: negotiation, queue pairs, `send`/`recv` and their batch variants, stop/reset/reconnect; [`NetOptions`](net::NetOptions), [`TxLayout`](net::TxLayout), [`NetConfig`](net::NetConfig), [`Negotiated`](net::Negotiated) |
//! | [`bulk`] | load generation on [`VirtioNet`](net::VirtioNet): `prepare_tx` / `send_prepared` / `send_stamped` (frames written once per transmit buffer), `recv_heads` (received frames reaped reading only their first bytes) |
//! | [`replay`] | [`FrontendKind`](replay::FrontendKind): the message sequences of QEMU, cloud-hypervisor and DPDK virtio-user |
//! | [`hostile`] | [`HostileChain`](hostile::HostileChain): descriptor chains a guest must not post, to check a backend drops them |
//! | [`connection`] | [`Role`](connection::Role) (connect or listen), [`Connection`](connection::Connection): the `vhost` crate's `Frontend` plus message-level requests it refuses, with a log of every request |
//! | [`virtqueue`] | [`SplitQueue`](virtqueue::SplitQueue), the driver side of a split ring, EVENT_IDX both ways |
//! | [`memory`] | [`GuestMemory`](memory::GuestMemory): memfd-backed regions with gaps, a bump allocator; [`MappedBlock`](memory::MappedBlock), a block resolved once to its mapping (rings, buffers) |
//! | [`net_hdr`] | [`NetHdr`](net_hdr::NetHdr), the virtio-net header (10 or 12 bytes) |
//! | [`frames`] | numbered test frames; TCP segments with complete, partial (CSUM) or TSO checksum state, and [`check_tcp`](frames::check_tcp) for what arrives |
//! | [`features`] | feature bit masks |
//!
//! ```no_run
//! use std::time::Duration;
//! use tests::frontend::{connection::Role, net::{NetOptions, VirtioNet}, replay::FrontendKind};
//!
//! let options = NetOptions { frontend: FrontendKind::Qemu, ..NetOptions::default() };
//! let mut nic = VirtioNet::new(Role::Connect("/tmp/vm0.sock".into()), options)?;
//! nic.send(0, &[0xff; 60])?;
//! if let Some((hdr, frame)) = nic.recv(Duration::from_secs(1))? {
//!     println!("{} bytes, header {hdr:?}", frame.len());
//! }
//! # Ok::<(), tests::frontend::net::NetError>(())
//! ```

pub mod bulk;
pub mod connection;
pub mod features;
pub mod frames;
pub mod hostile;
pub mod memory;
pub mod net;
pub mod net_hdr;
pub mod replay;
mod sys;
pub mod virtqueue;
