//! Embedding the backend in a VMM: start the daemon in-process, add a port per VM NIC as the
//! VMM creates them, read counters, remove a port when its VM goes, shut down cleanly.
//!
//! ```text
//! cargo run -p vhost-net-backend --example embed -- /tmp/vm0.sock /tmp/vm1.sock
//! ```
//! then attach QEMU guests to the sockets (docs/device.md has the command line). The example
//! prints each port's counters every 5 seconds for a minute, then shuts down.

use std::time::Duration;

use vhost_net_backend::{start, Config, PortConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sockets: Vec<String> = std::env::args().skip(1).collect();
    if sockets.is_empty() {
        return Err("usage: embed SOCKET [SOCKET...]".into());
    }
    // An empty daemon first, then one port per NIC, as a VMM would add them.
    let daemon = start(Config::default())?;
    for socket in &sockets {
        let mut port = PortConfig::new(socket);
        port.queue_pairs = 2;
        let id = daemon.add_port(port)?;
        println!("port {} serves {socket}", id.0);
    }
    for _ in 0..12 {
        std::thread::sleep(Duration::from_secs(5));
        for id in daemon.ports() {
            if let Some(r) = daemon.port_report(id) {
                println!(
                    "port {} ({}): from guest {} frames, to guest {} frames, switch drops {}, device drops {}",
                    id.0,
                    r.config.socket.display(),
                    r.switch.rx_frames,
                    r.switch.tx_frames,
                    r.switch.drops.total(),
                    r.device.total()
                );
            }
        }
    }
    if let Some(first) = daemon.ports().first() {
        daemon.remove_port(*first)?;
    }
    daemon.shutdown();
    Ok(())
}
