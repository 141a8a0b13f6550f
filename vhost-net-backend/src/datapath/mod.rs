//! The datapath: descriptor chains, virtio-net headers, copying frames guest to guest, and
//! delivery into receive queues.

pub mod chain;
pub mod copy;
pub mod rx;
pub mod vnet_hdr;
