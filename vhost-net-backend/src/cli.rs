//! The command line: `vhost-net-backend --socket PATH[,mac=..,queues=N,mtu=N,role=..] ...`.

use clap::Parser;

use crate::config::{Config, ConfigError, PortConfig};

/// A user-space virtio-net vhost-user backend: one port per `--socket`, all on one network.
#[derive(Debug, Parser, PartialEq, Eq)]
#[command(version, about)]
pub struct Args {
    /// A port: PATH[,mac=MAC][,queues=N][,mtu=N][,role=server|client]. `role=server`
    /// (default) listens on PATH (QEMU `-chardev socket,...,reconnect=1`, cloud-hypervisor's
    /// default); `role=client` connects to PATH (QEMU `server=on,wait=off`) and reconnects when it
    /// goes away. Without `mac`, a locally administered address is derived from PATH. `queues` is
    /// the number of queue pairs (default 1), `mtu` 68..=9000 (default 1500). Repeat for more ports.
    #[arg(
        long = "socket",
        value_name = "PATH[,OPTION=VALUE...]",
        required = true
    )]
    pub sockets: Vec<String>,
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Config, ConfigError> {
        let ports = args
            .sockets
            .iter()
            .map(|s| s.parse::<PortConfig>())
            .collect::<Result<Vec<_>, _>>()?;
        let config = Config { ports };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SocketRole;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("vhost-net-backend").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        Config::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn one_socket_alone_is_a_port_with_defaults() {
        assert_eq!(
            parse(&["--socket", "/tmp/vm0.sock"]),
            Ok(Config {
                ports: vec![PortConfig::new("/tmp/vm0.sock")]
            })
        );
    }

    #[test]
    fn repeated_sockets_are_ports_in_order() {
        let c = parse(&[
            "--socket",
            "/tmp/vm0.sock",
            "--socket",
            "/tmp/vm1.sock,queues=2,role=client",
        ])
        .unwrap();
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0], PortConfig::new("/tmp/vm0.sock"));
        assert_eq!(c.ports[1].queue_pairs, 2);
        assert_eq!(c.ports[1].role, SocketRole::Connect);
    }

    #[test]
    fn errors_are_reported() {
        assert!(parse(&[]).unwrap_err().contains("--socket"));
        assert!(parse(&["--socket", "/a,mtu=10"])
            .unwrap_err()
            .contains("MTU 10"));
        assert!(parse(&["--socket", "/a", "--socket", "/a"])
            .unwrap_err()
            .contains("twice"));
    }
}
