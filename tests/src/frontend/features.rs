//! Virtio feature bits as masks, and the sets the harness's driver asks for.

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_RX_EXTRA, VIRTIO_NET_F_CTRL_VLAN, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

const fn bit(n: u32) -> u64 {
    1 << n
}

/// VIRTIO_F_VERSION_1: modern device, 12-byte header, little-endian.
pub const VERSION_1: u64 = bit(VIRTIO_F_VERSION_1);
/// Device completes partial checksums of frames the driver sends.
pub const CSUM: u64 = bit(VIRTIO_NET_F_CSUM);
/// Driver accepts frames with partial checksums.
pub const GUEST_CSUM: u64 = bit(VIRTIO_NET_F_GUEST_CSUM);
/// Config space holds the MTU.
pub const MTU: u64 = bit(VIRTIO_NET_F_MTU);
/// Config space holds the MAC.
pub const MAC: u64 = bit(VIRTIO_NET_F_MAC);
/// Driver accepts TSO over IPv4.
pub const GUEST_TSO4: u64 = bit(VIRTIO_NET_F_GUEST_TSO4);
/// Driver accepts TSO over IPv6.
pub const GUEST_TSO6: u64 = bit(VIRTIO_NET_F_GUEST_TSO6);
/// Driver accepts UFO.
pub const GUEST_UFO: u64 = bit(VIRTIO_NET_F_GUEST_UFO);
/// Device segments TSO over IPv4.
pub const HOST_TSO4: u64 = bit(VIRTIO_NET_F_HOST_TSO4);
/// Device segments TSO over IPv6.
pub const HOST_TSO6: u64 = bit(VIRTIO_NET_F_HOST_TSO6);
/// Device segments UFO.
pub const HOST_UFO: u64 = bit(VIRTIO_NET_F_HOST_UFO);
/// Received frames may span several buffers.
pub const MRG_RXBUF: u64 = bit(VIRTIO_NET_F_MRG_RXBUF);
/// Config space holds the link status.
pub const STATUS: u64 = bit(VIRTIO_NET_F_STATUS);
/// Control queue (run by the VMM, never by a vhost-user backend).
pub const CTRL_VQ: u64 = bit(VIRTIO_NET_F_CTRL_VQ);
/// Several queue pairs.
pub const MQ: u64 = bit(VIRTIO_NET_F_MQ);
/// `used_event` / `avail_event` notification suppression.
pub const EVENT_IDX: u64 = bit(VIRTIO_RING_F_EVENT_IDX);
/// Indirect descriptor tables.
pub const INDIRECT_DESC: u64 = bit(VIRTIO_RING_F_INDIRECT_DESC);
/// vhost-user: protocol features negotiated with GET/SET_PROTOCOL_FEATURES.
pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The control-queue features a VMM implements itself: never acked to a vhost-user backend by
/// QEMU or DPDK.
pub const VMM_CONTROL: u64 = CTRL_VQ
    | bit(VIRTIO_NET_F_CTRL_RX)
    | bit(VIRTIO_NET_F_CTRL_VLAN)
    | bit(VIRTIO_NET_F_CTRL_RX_EXTRA)
    | bit(VIRTIO_NET_F_CTRL_MAC_ADDR);

/// Offloads on frames the driver sends.
pub const HOST_OFFLOADS: u64 = CSUM | HOST_TSO4 | HOST_TSO6 | HOST_UFO;
/// Offloads on frames the driver receives.
pub const GUEST_OFFLOADS: u64 = GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_UFO;

/// Everything the harness's driver can use: what a Linux guest acks.
pub const DRIVER: u64 = VERSION_1
    | CSUM
    | GUEST_CSUM
    | MTU
    | MAC
    | GUEST_TSO4
    | GUEST_TSO6
    | HOST_TSO4
    | HOST_TSO6
    | MRG_RXBUF
    | STATUS
    | MQ
    | EVENT_IDX
    | INDIRECT_DESC;
