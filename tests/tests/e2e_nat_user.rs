//! End-to-end: the NAT network with the `user` egress, as the embedded default configures it
//! (192.168.122.0/24, DHCP, DNS forwarded), with real QEMU guests and a "wan" namespace; the
//! scenarios are tests/src/nat_e2e.rs, shared with the `kernel` egress.

use std::error::Error;

use tests::nat_e2e::{self, EgressKind};

#[test]
fn a_guest_gets_a_lease_that_survives_a_restart_and_reaches_the_wan() -> Result<(), Box<dyn Error>>
{
    nat_e2e::lease_restart_and_wan(EgressKind::User)
}

#[test]
fn guests_resolve_each_other_and_a_runtime_port_forward_reaches_one() -> Result<(), Box<dyn Error>>
{
    nat_e2e::names_and_port_forward(EgressKind::User)
}
