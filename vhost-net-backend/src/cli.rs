//! The command line: `vhost-net-backend [--config FILE | --import-libvirt FILE...]
//! [--socket PATH[,OPTION=VALUE...]]...`.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::file::{self, LoadError};
use crate::config::libvirt::{self, ImportError};
use crate::config::{Config, ConfigError, Invalid, PortConfig};
use crate::control::capture_client::{self, CaptureError, Sink};
use crate::control::client::{Client, ClientError};
use crate::control::protocol::{ForwardInfo, Request};
use crate::control::{default_socket_path, render};

/// A user-space network stack for VMs: a vhost-user virtio-net backend with a learning switch,
/// NAT networks with DHCP and DNS, bridged networks and WASM policies.
///
/// Without a subcommand, runs the daemon. Without --config or --import-libvirt it runs the
/// embedded default: libvirt's "default" NAT network (192.168.122.0/24, gateway .1, DHCP
/// .2-.254). The subcommands talk to a running daemon over its control socket.
#[derive(Debug, Parser, PartialEq)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Args {
    /// A client subcommand; none runs the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The daemon's options.
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// The daemon's options.
#[derive(Debug, clap::Args, PartialEq, Eq)]
pub struct DaemonArgs {
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

    /// The control socket (default: /run/vhost-net-backend/control.sock for root, else
    /// $XDG_RUNTIME_DIR/vhost-net-backend/control.sock); overrides the file's [control] socket.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Where the daemon keeps its state, the NAT networks' leases files (default:
    /// /var/lib/vhost-net-backend for root, else $XDG_STATE_HOME/vhost-net-backend or
    /// ~/.local/state/vhost-net-backend); overrides the file's `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// A pool of N datapath threads shares the ports (default: each port has its own);
    /// overrides the file's `workers`.
    #[arg(long, value_name = "N")]
    pub workers: Option<NonZeroUsize>,

    /// Microseconds a datapath thread keeps polling its dry queues (guests need not kick) before
    /// it sleeps (default 0: it sleeps at once); overrides the file's `poll_us`.
    #[arg(long, value_name = "US")]
    pub poll_us: Option<u32>,

    /// Print the resulting configuration as TOML, every setting explicit, and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Options of every client subcommand.
#[derive(Debug, clap::Args, Clone, PartialEq, Eq)]
pub struct ClientArgs {
    /// The daemon's control socket (default: $VHOST_NET_BACKEND_CONTROL, else the daemon's
    /// default path).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Print the answer as JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The client subcommands.
#[derive(Debug, Subcommand, PartialEq)]
pub enum Command {
    /// Networks with their ports and uplinks, link states and counters (like `brctl show`).
    Show(ClientArgs),
    /// The forwarding database: learned and static addresses (like `brctl showmacs`).
    Fdb {
        /// Only this network.
        network: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Counters and drop reasons of every port and uplink, or of one (id, `portN`, socket
    /// path, or an uplink's host interface).
    Stats {
        /// Only this port or uplink.
        port: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The vrings of every port, or of one (id, `portN` or socket path): state, eventfds, the
    /// device's positions and the ring's indices and flags in guest memory.
    Queues {
        /// Only this port.
        port: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// DHCP leases of the NAT networks (like dnsmasq's leases file).
    Leases(ClientArgs),
    /// Tracked connections (like `conntrack -L`).
    Conntrack(ClientArgs),
    /// Counters of the NAT networks: the gateway port's, the gateway's (ARP, DHCP, DNS) and the
    /// egress's (user: TCP, UDP and echo flows; kernel: the TAP).
    NatStats {
        /// Only this NAT network.
        network: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Policies: list with per-rule counters (like `iptables -L -nv`), load, reload, unload.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Ports: add one (a new VM attaches without a restart) or remove one.
    #[command(subcommand)]
    Port(PortCommand),
    /// Port forwards into NAT networks: list, add, remove.
    #[command(subcommand)]
    Forward(ForwardCommand),
    /// Captures a port's frames, both directions, as pcapng (Wireshark, tshark and tcpdump
    /// read it); without -w, prints a line per frame.
    Capture {
        /// The port (id, `portN` or socket path).
        port: String,
        /// Write pcapng to FILE (`-`: standard output, e.g. `| wireshark -k -i -`).
        #[arg(short = 'w', value_name = "FILE")]
        write: Option<PathBuf>,
        /// Stop after N frames.
        #[arg(short = 'c', long, value_name = "N")]
        count: Option<u64>,
        /// Stop after SECONDS.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `policy` subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum PolicyCommand {
    /// Loaded policies with per-rule packet and byte counters.
    List(ClientArgs),
    /// Loads a policy module.
    Load {
        /// Its name (unique; keys its counters and maps across reloads).
        name: String,
        /// The module (.wasm).
        module: PathBuf,
        /// Its configuration text.
        #[arg(long, value_name = "TEXT")]
        config: Option<String>,
        /// closed (default), open or baseline.
        #[arg(long, value_name = "MODE")]
        fail_mode: Option<String>,
        /// The network whose chain it joins (default: the operator chain, every network).
        #[arg(long, value_name = "NAME")]
        network: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reloads a policy from its module file (and new configuration text if given).
    Reload {
        /// Its name.
        name: String,
        /// New configuration text.
        #[arg(long, value_name = "TEXT")]
        config: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Unloads a policy.
    Unload {
        /// Its name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `port` subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum PortCommand {
    /// Adds a port, served at once: PATH[,network=NAME][,mac=MAC][,queues=N][,mtu=N][,role=..][,vlan=N].
    Add {
        /// The port, as --socket takes it.
        spec: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Removes a port (id, `portN` or socket path): its VM loses its link.
    Remove {
        /// The port.
        port: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `forward` subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum ForwardCommand {
    /// The port forwards in place.
    List(ClientArgs),
    /// Forwards connections to a host address to a guest: `forward add tcp 0.0.0.0:2222
    /// 192.168.122.10:22`.
    Add(ForwardArgs),
    /// Removes a port forward (the same arguments as add).
    Remove(ForwardArgs),
}

/// A port forward on the command line.
#[derive(Debug, clap::Args, PartialEq, Eq)]
pub struct ForwardArgs {
    /// tcp or udp.
    pub protocol: String,
    /// The host address and port to listen on.
    pub listen: String,
    /// The guest's address and port.
    pub guest: String,
    /// The NAT network.
    #[arg(long, default_value = crate::config::DEFAULT_NETWORK)]
    pub network: String,
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// The daemon could not be reached or refused the request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A capture could not be received.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// A path on the command line could not be made absolute.
    #[error("cannot resolve {}", .0.display())]
    Path(PathBuf, #[source] std::io::Error),
}

/// A configuration from the command line, and what an import left out.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Lines about parts of libvirt files without an effect here.
    pub notes: Vec<String>,
}

impl TryFrom<&DaemonArgs> for Loaded {
    type Error = CliError;

    fn try_from(args: &DaemonArgs) -> Result<Loaded, CliError> {
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
            config.place_port(&mut port);
            config
                .check_port(&port, &config.ports)
                .map_err(|source| CliError::Port {
                    spec: spec.clone(),
                    source,
                })?;
            config.ports.push(port);
        }
        if let Some(control) = &args.control {
            config.control.socket = Some(control.clone());
        }
        if let Some(dir) = &args.state_dir {
            config.state_dir = Some(dir.clone());
        }
        if let Some(n) = args.workers {
            config.workers = Some(n);
        }
        if let Some(us) = args.poll_us {
            config.poll_us = us;
        }
        Ok(Loaded { config, notes })
    }
}

/// `path` made absolute against the current directory (the daemon's may differ).
fn absolute(path: PathBuf) -> Result<PathBuf, CliError> {
    std::path::absolute(&path).map_err(|e| CliError::Path(path, e))
}

/// A port spec with its socket path made absolute.
fn absolute_spec(spec: &str) -> Result<String, CliError> {
    let (path, options) = spec
        .split_once(',')
        .map_or((spec, None), |(p, o)| (p, Some(o)));
    let path = absolute(PathBuf::from(path))?.display().to_string();
    Ok(match options {
        Some(o) => format!("{path},{o}"),
        None => path,
    })
}

impl ClientArgs {
    fn socket(&self) -> PathBuf {
        self.control
            .clone()
            .or_else(|| std::env::var_os("VHOST_NET_BACKEND_CONTROL").map(PathBuf::from))
            .unwrap_or_else(default_socket_path)
    }
}

/// Sends `request` and renders the answer: as JSON with `--json`, else with `text`.
fn ask<T: serde::de::DeserializeOwned>(
    client: &ClientArgs,
    request: &Request,
    text: impl FnOnce(&T) -> String,
) -> Result<String, CliError> {
    let value = Client::connect(&client.socket())?.call(request)?;
    if client.json {
        let mut out = serde_json::to_string_pretty(&value).map_err(ClientError::from)?;
        out.push('\n');
        return Ok(out);
    }
    let decoded: T = serde_json::from_value(value).map_err(ClientError::from)?;
    Ok(text(&decoded))
}

/// Runs a client subcommand; returns what to print.
pub fn run(command: Command) -> Result<String, CliError> {
    let done = |_: &()| String::new();
    match command {
        Command::Show(c) => ask(&c, &Request::Show, render::show),
        Command::Fdb { network, client } => ask(&client, &Request::Fdb { network }, render::fdb),
        Command::Stats { port, client } => ask(&client, &Request::Stats { port }, render::stats),
        Command::Queues { port, client } => ask(&client, &Request::Queues { port }, render::queues),
        Command::Leases(c) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            ask(&c, &Request::Leases, |l: &Vec<_>| render::leases(l, now))
        }
        Command::Conntrack(c) => ask(&c, &Request::Conntrack, |f: &Vec<_>| render::conntrack(f)),
        Command::NatStats { network, client } => {
            let request = Request::NatStats { network };
            ask(&client, &request, |n: &Vec<_>| render::nat_stats(n))
        }
        Command::Policy(PolicyCommand::List(c)) => {
            ask(&c, &Request::PolicyList, |p: &Vec<_>| render::policies(p))
        }
        Command::Policy(PolicyCommand::Load {
            name,
            module,
            config,
            fail_mode,
            network,
            client,
        }) => {
            let request = Request::PolicyLoad {
                name,
                module: absolute(module)?.display().to_string(),
                config: config.unwrap_or_default(),
                fail_mode,
                network,
            };
            ask(&client, &request, done)
        }
        Command::Policy(PolicyCommand::Reload {
            name,
            config,
            client,
        }) => ask(&client, &Request::PolicyReload { name, config }, done),
        Command::Policy(PolicyCommand::Unload { name, client }) => {
            ask(&client, &Request::PolicyUnload { name }, done)
        }
        Command::Port(PortCommand::Add { spec, client }) => {
            let request = Request::PortAdd {
                spec: absolute_spec(&spec)?,
            };
            ask(&client, &request, render::port)
        }
        Command::Port(PortCommand::Remove { port, client }) => {
            ask(&client, &Request::PortRemove { port }, done)
        }
        Command::Capture {
            port,
            write,
            count,
            duration,
            client,
        } => {
            let request = Request::Capture {
                port,
                count,
                duration_ms: duration.map(|s| (s * 1000.0).round().max(1.0) as u64),
            };
            let (_, stream) = Client::connect(&client.socket())?.stream(&request)?;
            let sink = match &write {
                Some(p) if p.as_os_str() == "-" => Sink::Stdout,
                Some(p) => Sink::File(p),
                None => Sink::Lines { json: client.json },
            };
            let frames = capture_client::receive(stream, sink)?;
            Ok(match write {
                Some(p) if p.as_os_str() != "-" => {
                    format!("{frames} frames written to {}\n", p.display())
                }
                _ => String::new(),
            })
        }
        Command::Forward(ForwardCommand::List(c)) => {
            ask(&c, &Request::ForwardList, |f: &Vec<_>| render::forwards(f))
        }
        Command::Forward(ForwardCommand::Add(f)) => {
            let (client, info) = forward_info(f);
            ask(&client, &Request::ForwardAdd(info), done)
        }
        Command::Forward(ForwardCommand::Remove(f)) => {
            let (client, info) = forward_info(f);
            ask(&client, &Request::ForwardRemove(info), done)
        }
    }
}

fn forward_info(f: ForwardArgs) -> (ClientArgs, ForwardInfo) {
    let info = ForwardInfo {
        network: f.network,
        protocol: f.protocol,
        listen: f.listen,
        guest: f.guest,
    };
    (f.client, info)
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
    use std::path::Path;

    fn parse(args: &[&str]) -> Result<Loaded, String> {
        let args =
            Args::try_parse_from(std::iter::once("vhost-net-backend").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        Loaded::try_from(&args.daemon).map_err(|e| error_chain(&e))
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
    fn the_workers_option_overrides_the_file() {
        let f = file("workers = 3\n");
        let path = f.path().to_str().unwrap();
        let c = parse(&["--config", path]).unwrap().config;
        assert_eq!(c.workers, NonZeroUsize::new(3));
        let c = parse(&["--config", path, "--workers", "1"]).unwrap().config;
        assert_eq!(c.workers, NonZeroUsize::new(1));
        assert_eq!(parse(&[]).unwrap().config.workers, None);
        assert!(parse(&["--workers", "0"]).is_err());
        let zero = file("workers = 0\n");
        assert!(parse(&["--config", zero.path().to_str().unwrap()]).is_err());
    }

    #[test]
    fn the_poll_option_overrides_the_file() {
        let f = file("poll_us = 50\n");
        let path = f.path().to_str().unwrap();
        assert_eq!(parse(&["--config", path]).unwrap().config.poll_us, 50);
        let c = parse(&["--config", path, "--poll-us", "0"]).unwrap().config;
        assert_eq!(c.poll_us, 0);
        assert_eq!(parse(&[]).unwrap().config.poll_us, 0);
    }

    #[test]
    fn the_state_dir_option_overrides_the_file() {
        let f = file("state_dir = \"/var/lib/vnb-test\"\n");
        let path = f.path().to_str().unwrap();
        let c = parse(&["--config", path]).unwrap().config;
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/var/lib/vnb-test")));
        let c = parse(&["--config", path, "--state-dir", "/tmp/s"])
            .unwrap()
            .config;
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/tmp/s")));
        assert_eq!(parse(&[]).unwrap().config.state_dir, None);
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
    fn man_pages_are_current() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().unwrap();
        clap_mangen::generate_to(Args::command(), dir.path()).unwrap();
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man");
        let mut pages = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            let generated = std::fs::read_to_string(entry.path()).unwrap();
            let name = entry.file_name();
            let current = std::fs::read_to_string(shipped.join(&name)).unwrap_or_default();
            assert!(
                generated == current,
                "docs/man/{} is out of date: cargo run -p vhost-net-backend --example man",
                name.to_string_lossy()
            );
            pages += 1;
        }
        assert_eq!(std::fs::read_dir(&shipped).unwrap().count(), pages);
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
