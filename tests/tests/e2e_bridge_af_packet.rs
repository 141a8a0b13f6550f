//! End-to-end: a bridged network whose uplink is a packet socket on a NIC (the host end of a
//! veth pair to a "lan" namespace): guests get leases from the LAN's DHCP server, reach the LAN
//! host and are reached by it, talk to each other without using the uplink, and keep working
//! after the NIC is deleted and made again.

use std::error::Error;

use tests::lan::{bridged_network, Attach};

#[test]
fn af_packet_uplink_puts_guests_on_the_lan() -> Result<(), Box<dyn Error>> {
    bridged_network(Attach::Nic, "bridge af_packet")
}
