//! End-to-end: a bridged network whose uplink is a TAP the daemon enslaves to a kernel bridge
//! (br0, holding the host end of a veth pair to a "lan" namespace), as libvirt does with vnet0:
//! guests get leases from the LAN's DHCP server, reach the LAN host and are reached by it, talk
//! to each other without using the uplink, and keep working after the bridge is deleted and
//! made again.

use std::error::Error;

use tests::lan::{bridged_network, Attach};

#[test]
fn tap_uplink_puts_guests_on_the_lan() -> Result<(), Box<dyn Error>> {
    bridged_network(Attach::Bridge, "bridge tap")
}
