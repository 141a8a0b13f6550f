//! The virtio-net device this backend implements: the features and protocol features it
//! offers, its configuration space, its queue layout, and what the acked features mean for the
//! datapath.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::{VIRTIO_F_ANY_LAYOUT, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::config::MacAddr;
use crate::vhost_user::device::DeviceSpec;

const fn bit(n: u32) -> u64 {
    1 << n
}

/// The virtio features every port offers.
///
/// CTRL_VQ is offered because cloud-hypervisor creates (and serves itself) a control queue only
/// when the backend offers it, and a Linux guest refuses MQ without one; QEMU and DPDK serve the
/// control queue themselves and never pass it to the backend. The queue count stays 2 x pairs.
pub const OFFERED_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_F_ANY_LAYOUT)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_CTRL_VQ)
    | bit(VIRTIO_NET_F_MQ)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The protocol features every port offers.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::CONFIG
}

/// Whether vring `index` is a receive queue (even) or a transmit queue (odd).
pub fn is_rx_queue(index: usize) -> bool {
    index.is_multiple_of(2)
}

/// The configuration space (struct virtio_net_config, little-endian): mac, status,
/// max_virtqueue_pairs, mtu, speed (unknown), duplex (unknown).
pub fn config_space(mac: MacAddr, queue_pairs: u16, mtu: u16) -> Vec<u8> {
    let mut c = Vec::with_capacity(17);
    c.extend_from_slice(&mac.0);
    c.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c.extend_from_slice(&queue_pairs.to_le_bytes());
    c.extend_from_slice(&mtu.to_le_bytes());
    c.extend_from_slice(&u32::MAX.to_le_bytes());
    c.push(0xff);
    c
}

/// What a port offers to its frontend.
pub fn device_spec(mac: MacAddr, queue_pairs: u16, mtu: u16) -> DeviceSpec {
    DeviceSpec {
        features: OFFERED_FEATURES,
        protocol_features: protocol_features(),
        queues: 2 * usize::from(queue_pairs),
        config: config_space(mac, queue_pairs, mtu),
    }
}

/// The acked features, as the datapath needs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated(pub u64);

impl Negotiated {
    fn has(self, n: u32) -> bool {
        self.0 & bit(n) != 0
    }

    /// Size of the virtio-net header in front of every frame: 12 bytes with VERSION_1 or
    /// MRG_RXBUF, else the legacy 10.
    pub fn header_len(self) -> usize {
        if self.has(VIRTIO_F_VERSION_1) || self.has(VIRTIO_NET_F_MRG_RXBUF) {
            12
        } else {
            10
        }
    }

    /// Whether a received frame may span several RX chains.
    pub fn mrg_rxbuf(self) -> bool {
        self.has(VIRTIO_NET_F_MRG_RXBUF)
    }

    /// Whether descriptors may point to indirect tables.
    pub fn indirect(self) -> bool {
        self.has(VIRTIO_RING_F_INDIRECT_DESC)
    }

    /// Whether the guest sends frames with partial checksums.
    pub fn host_csum(self) -> bool {
        self.has(VIRTIO_NET_F_CSUM)
    }

    /// Whether the guest sends TCPv4 / TCPv6 segments larger than the MTU.
    pub fn host_tso(self) -> (bool, bool) {
        (
            self.has(VIRTIO_NET_F_HOST_TSO4),
            self.has(VIRTIO_NET_F_HOST_TSO6),
        )
    }

    /// Whether the guest takes frames with partial checksums.
    pub fn guest_csum(self) -> bool {
        self.has(VIRTIO_NET_F_GUEST_CSUM)
    }

    /// Whether the guest takes TCPv4 / TCPv6 segments larger than the MTU.
    pub fn guest_tso(self) -> (bool, bool) {
        (
            self.has(VIRTIO_NET_F_GUEST_TSO4),
            self.has(VIRTIO_NET_F_GUEST_TSO6),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_layout() {
        let c = config_space(MacAddr([2, 0, 0, 0, 0, 9]), 2, 9000);
        assert_eq!(&c[0..6], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "status: link up");
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 2, "max_virtqueue_pairs");
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000, "mtu");
        assert_eq!(c.len(), 17);
    }

    #[test]
    fn header_length_follows_version_and_mergeable_buffers() {
        assert_eq!(Negotiated(0).header_len(), 10);
        assert_eq!(Negotiated(bit(VIRTIO_NET_F_MRG_RXBUF)).header_len(), 12);
        assert_eq!(Negotiated(bit(VIRTIO_F_VERSION_1)).header_len(), 12);
    }

    #[test]
    fn spec_has_two_queues_per_pair() {
        let s = device_spec(MacAddr([2, 0, 0, 0, 0, 1]), 3, 1500);
        assert_eq!(s.queues, 6);
        assert!(s.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
        assert!(is_rx_queue(0) && !is_rx_queue(1));
    }
}
