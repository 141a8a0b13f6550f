//! The daemon's CLI subcommands run in-process against a control socket, as
//! `vhost-net-backend SUBCOMMAND --control SOCKET` would run them.

use std::path::Path;

use clap::Parser;
use vhost_net_backend::cli::{self, error_chain, Args};

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
