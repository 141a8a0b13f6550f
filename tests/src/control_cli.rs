//! The daemon's CLI subcommands run in-process against a control socket, as
//! `vhost-net-backend SUBCOMMAND --control SOCKET` would run them.

use std::path::Path;

use clap::Parser;
use vhost_net_backend::cli::{self, error_chain, Args};
use vhost_net_backend::metrics;

/// Runs a CLI subcommand against the control socket `control`: its output, or its error in one
/// line.
pub fn run(control: &Path, args: &[&str]) -> Result<String, String> {
    let control = control.to_str().expect("a UTF-8 socket path");
    let argv = ["vhost-net-backend"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--control", control]);
    let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    cli::run(args.command.expect("a subcommand")).map_err(|e| error_chain(&e))
}

/// Runs a CLI subcommand with `--json` and decodes its output.
pub fn json<T: serde::de::DeserializeOwned>(control: &Path, args: &[&str]) -> T {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let text = run(control, &with_json).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

/// The samples the metrics endpoint `server` serves (checked to answer 200 OK) whose lines
/// start with one of `prefixes`.
pub fn metrics_samples(server: &metrics::Server, prefixes: &[&str]) -> Vec<String> {
    let response = metrics::scrape(server.addr()).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    body.lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// A daemon started in-process with its control socket; its ports' sockets, control socket and
/// state live in a scratch directory.
#[derive(Debug)]
pub struct Lab {
    pub daemon: std::sync::Arc<vhost_net_backend::Daemon>,
    pub server: vhost_net_backend::control::Server,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// A daemon on the embedded default config with `n` ports (`vm<i>.sock`, MAC `mac(i)`),
    /// changed by `adjust` before it starts.
    pub fn start(
        n: usize,
        mac: impl Fn(usize) -> [u8; 6],
        adjust: impl FnOnce(&mut vhost_net_backend::Config),
    ) -> Lab {
        use vhost_net_backend::{Config, MacAddr, PortConfig};
        let dir = tempfile::tempdir().unwrap();
        let ports = (0..n)
            .map(|i| PortConfig {
                mac: MacAddr(mac(i)),
                ..PortConfig::new(dir.path().join(format!("vm{i}.sock")))
            })
            .collect();
        let mut config = Config::with_ports(ports);
        config.control.socket = Some(dir.path().join("control.sock"));
        config.state_dir = Some(dir.path().to_path_buf());
        adjust(&mut config);
        let control = config.control.clone();
        let daemon = std::sync::Arc::new(vhost_net_backend::start(config).unwrap());
        let server =
            vhost_net_backend::control::Server::start(std::sync::Arc::clone(&daemon), &control)
                .unwrap();
        Lab {
            daemon,
            server,
            dir,
        }
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a CLI subcommand against the daemon: its output, or its error in one line.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        run(self.server.path(), args)
    }

    /// Runs a CLI subcommand with `--json` and decodes its output.
    pub fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        json(self.server.path(), args)
    }
}
