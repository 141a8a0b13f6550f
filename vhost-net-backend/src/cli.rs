//! The command line: `vhost-net-backend [--config FILE | --import-libvirt FILE...]
//! [--socket PATH[,OPTION=VALUE...]]...`.

use std::path::PathBuf;

use clap::Parser;

use crate::config::file::{self, LoadError};
use crate::config::libvirt::{self, ImportError};
use crate::config::{Config, ConfigError, Invalid, PortConfig, DEFAULT_NETWORK};

/// A user-space network stack for VMs: a vhost-user virtio-net backend with a learning switch,
/// NAT networks with DHCP and DNS, bridged networks and WASM policies. Without --config or
/// --import-libvirt it runs the embedded default: libvirt's "default" NAT network
/// (192.168.122.0/24, gateway .1, DHCP .2-.254).
#[derive(Debug, Parser, PartialEq, Eq)]
#[command(version, about)]
pub struct Args {
    /// A port: PATH[,network=NAME][,mac=MAC][,queues=N][,mtu=N][,role=server|client][,vlan=N].
    /// `role=server` (default) listens on PATH (QEMU `-chardev socket,...,reconnect=1`,
    /// cloud-hypervisor's default); `role=client` connects to PATH (QEMU `server=on,wait=off`)
    /// and reconnects when it goes away. Without `network`, the port joins the network named
    /// "default", or the first network when none has that name. Without `mac`, a locally
    /// administered address is derived from PATH. `queues` is the number of queue pairs
    /// (default 1), `mtu` 68..=9000 (default 1500), `vlan` the access VLAN (on a network with
    /// VLAN filtering). Repeat for more ports; the config file's ports come first.
    #[arg(long = "socket", value_name = "PATH[,OPTION=VALUE...]")]
    pub sockets: Vec<String>,

    /// The configuration file (TOML: networks, ports, port forwards, policies, control and
    /// metrics endpoints; see docs/operations.md).
    #[arg(long, value_name = "FILE", conflicts_with = "import_libvirt")]
    pub config: Option<PathBuf>,

    /// A libvirt network XML file (`virsh net-dumpxml NAME`, or libvirt's networks/default.xml)
    /// to run as one of the networks. Repeat for more networks. With --print-config, converts
    /// them to a configuration file.
    #[arg(long, value_name = "FILE")]
    pub import_libvirt: Vec<PathBuf>,

    /// Print the resulting configuration as TOML, every setting explicit, and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Errors making a configuration from the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A libvirt network file could not be imported.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// A `--socket` value does not parse.
    #[error("--socket {spec}")]
    PortSpec {
        /// The value.
        spec: String,
        /// Why.
        #[source]
        source: ConfigError,
    },
    /// A `--socket` port does not fit the configuration.
    #[error("--socket {spec}")]
    Port {
        /// The value.
        spec: String,
        /// Why.
        #[source]
        source: Invalid,
    },
    /// The resulting configuration is invalid (imported networks sharing a name).
    #[error("invalid configuration")]
    Invalid(#[from] Invalid),
}

/// A configuration from the command line, and what an import left out.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Lines about parts of libvirt files without an effect here.
    pub notes: Vec<String>,
}

impl TryFrom<&Args> for Loaded {
    type Error = CliError;

    fn try_from(args: &Args) -> Result<Loaded, CliError> {
        let mut notes = Vec::new();
        let mut config = match &args.config {
            Some(path) => file::load(path)?,
            None if args.import_libvirt.is_empty() => Config::default(),
            None => {
                let mut c = Config::default();
                c.networks.clear();
                for path in &args.import_libvirt {
                    let imported = libvirt::import(path)?;
                    notes.extend(imported.notes);
                    c.networks.push(imported.network);
                }
                c.validate()?;
                c
            }
        };
        for spec in &args.sockets {
            let mut port: PortConfig = spec.parse().map_err(|source| CliError::PortSpec {
                spec: spec.clone(),
                source,
            })?;
            if port.network == DEFAULT_NETWORK && config.network(DEFAULT_NETWORK).is_none() {
                port.network.clone_from(&config.networks[0].name);
            }
            config
                .check_port(&port, &config.ports)
                .map_err(|source| CliError::Port {
                    spec: spec.clone(),
                    source,
                })?;
            config.ports.push(port);
        }
        Ok(Loaded { config, notes })
    }
}

/// An error and its causes, for one log line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NetworkMode, SocketRole};
    use std::io::Write;

    fn parse(args: &[&str]) -> Result<Loaded, String> {
        let args =
            Args::try_parse_from(std::iter::once("vhost-net-backend").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        Loaded::try_from(&args).map_err(|e| error_chain(&e))
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn sockets_alone_are_ports_on_the_embedded_default() {
        let c = parse(&["--socket", "/tmp/vm0.sock"]).unwrap().config;
        assert_eq!(
            c,
            Config::with_ports(vec![PortConfig::new("/tmp/vm0.sock")])
        );
        assert_eq!(parse(&[]).unwrap().config, Config::default());
    }

    #[test]
    fn repeated_sockets_are_ports_in_order() {
        let c = parse(&[
            "--socket",
            "/tmp/vm0.sock",
            "--socket",
            "/tmp/vm1.sock,queues=2,role=client",
        ])
        .unwrap()
        .config;
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0], PortConfig::new("/tmp/vm0.sock"));
        assert_eq!(c.ports[1].queue_pairs, 2);
        assert_eq!(c.ports[1].role, SocketRole::Connect);
    }

    #[test]
    fn a_config_file_and_sockets_add_up() {
        let f = file(
            "[[network]]\nname = \"lan\"\nmode = \"isolated\"\n[[port]]\nsocket = \"/tmp/a.sock\"\n",
        );
        let path = f.path().to_str().unwrap();
        let c = parse(&["--config", path, "--socket", "/tmp/b.sock"])
            .unwrap()
            .config;
        assert_eq!(c.networks.len(), 1);
        let nets: Vec<&str> = c.ports.iter().map(|p| p.network.as_str()).collect();
        assert_eq!(
            nets,
            ["lan", "lan"],
            "the first network when none is \"default\""
        );
        let e = parse(&["--config", path, "--socket", "/tmp/a.sock"]).unwrap_err();
        assert_eq!(
            e,
            "--socket /tmp/a.sock: socket: socket /tmp/a.sock is given twice"
        );
        let e = parse(&["--config", path, "--socket", "/tmp/c.sock,network=wan"]).unwrap_err();
        assert!(e.ends_with("no network is named \"wan\""), "{e}");
    }

    #[test]
    fn libvirt_files_are_the_networks() {
        let default = file(
            "<network><name>default</name><forward mode='nat'/>\
             <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>\
             <range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>",
        );
        let bridged =
            file("<network><name>br</name><forward mode='bridge'/><bridge name='br0'/></network>");
        let (d, b) = (
            default.path().to_str().unwrap(),
            bridged.path().to_str().unwrap(),
        );
        let c = parse(&["--import-libvirt", d, "--socket", "/tmp/a.sock"])
            .unwrap()
            .config;
        assert_eq!(c, Config::with_ports(vec![PortConfig::new("/tmp/a.sock")]));
        let c = parse(&["--import-libvirt", b, "--import-libvirt", d])
            .unwrap()
            .config;
        assert!(matches!(c.networks[0].mode, NetworkMode::Bridge(_)));
        assert_eq!(c.networks[1].name, "default");
        let e = parse(&["--import-libvirt", d, "--import-libvirt", d]).unwrap_err();
        assert_eq!(
            e,
            "invalid configuration: network[1].name: the name \"default\" is given twice"
        );
        let e = parse(&["--import-libvirt", d, "--config", d]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn errors_are_reported() {
        assert!(parse(&["--socket", "/a,mtu=10"])
            .unwrap_err()
            .ends_with("MTU 10 is outside 68..=9000"));
        assert!(parse(&["--socket", "/a", "--socket", "/a"])
            .unwrap_err()
            .contains("twice"));
        let e = parse(&["--config", "/nonexistent.toml"]).unwrap_err();
        assert!(e.starts_with("cannot read /nonexistent.toml: "), "{e}");
    }
}
