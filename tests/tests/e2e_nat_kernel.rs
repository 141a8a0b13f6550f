//! End-to-end: the NAT network with the `kernel` egress (a TAP holds the gateway address, the
//! kernel routes and masquerades, port forwards are DNAT rules), with real QEMU guests and a
//! "wan" namespace; the scenarios are tests/src/nat_e2e.rs, shared with the `user` egress.
//! The daemon's namespace holds the TAP and the nftables table; the test checks that both are
//! gone after the daemon exits, and that a killed daemon's table is replaced at the next start.

use std::error::Error;

use tests::nat_e2e::{self, EgressKind};

#[test]
fn a_guest_gets_a_lease_that_survives_a_restart_and_reaches_the_wan() -> Result<(), Box<dyn Error>>
{
    nat_e2e::lease_restart_and_wan(EgressKind::Kernel)
}

#[test]
fn guests_resolve_each_other_and_a_runtime_port_forward_reaches_one() -> Result<(), Box<dyn Error>>
{
    nat_e2e::names_and_port_forward(EgressKind::Kernel)
}
