//! End-to-end support: network namespaces and veth pairs are created, carry traffic, and are
//! gone after the test.

use std::error::Error;

use tests::e2e::E2e;
use tests::netns::{run, Netns, Veth};

#[test]
fn veth_between_two_namespaces_carries_jumbo_pings_and_is_removed() -> Result<(), Box<dyn Error>> {
    let _e2e = E2e::start();
    let left = Netns::new("left")?;
    let right = Netns::new("right")?;
    let veth = Veth::new(Some(&left), Some(&right))?;
    veth.a.add_address("192.0.2.1/24")?;
    veth.b.add_address("192.0.2.2/24")?;
    veth.a.set_mtu(9000)?;
    veth.b.set_mtu(9000)?;
    let ping = left.exec(&[
        "ping",
        "-c",
        "2",
        "-W",
        "5",
        "-s",
        "8000",
        "-M",
        "do",
        "192.0.2.2",
    ])?;
    let ping = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.contains("2 received"), "{ping}");

    let end_b = veth.b.name.clone();
    drop(veth);
    assert!(
        right.exec(&["ip", "link", "show", "dev", &end_b]).is_err(),
        "{end_b} left behind"
    );
    let names = [left.name().to_string(), right.name().to_string()];
    drop(left);
    drop(right);
    for name in &names {
        assert!(!Netns::exists(name)?, "namespace {name} left behind");
    }
    Ok(())
}

#[test]
fn veth_from_the_host_into_a_namespace_is_removed() -> Result<(), Box<dyn Error>> {
    let _e2e = E2e::start();
    let netns = Netns::new("peer")?;
    let veth = Veth::new(None, Some(&netns))?;
    assert!(veth.a.netns.is_none());
    assert_eq!(veth.b.netns.as_deref(), Some(netns.name()));
    run("ip", &["link", "show", "dev", &veth.a.name])?;
    netns.exec(&["ip", "link", "show", "dev", &veth.b.name])?;
    let host_end = veth.a.name.clone();
    drop(veth);
    assert!(
        run("ip", &["link", "show", "dev", &host_end]).is_err(),
        "{host_end} left behind"
    );
    Ok(())
}
