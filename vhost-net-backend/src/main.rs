//! `vhost-net-backend`: with a subcommand, asks a running daemon over its control socket and
//! prints the answer; without, parses the configuration, starts the daemon, its control socket
//! and (if configured) its metrics endpoint, and runs until SIGINT, SIGTERM or SIGHUP.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use vhost_net_backend::cli::{self, error_chain, Args, Loaded};
use vhost_net_backend::config::file;
use vhost_net_backend::{control, metrics, sys};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(command) = args.command {
        return match cli::run(command) {
            Ok(text) => {
                let _ = std::io::stdout().write_all(text.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vhost-net-backend: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let Loaded { config, notes } = match Loaded::try_from(&args.daemon) {
        Ok(l) => l,
        Err(e) => {
            error!("{}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    for note in notes {
        warn!("not imported: {note}");
    }
    if args.daemon.print_config {
        print!("{}", file::to_toml(&config));
        return ExitCode::SUCCESS;
    }
    // Blocked before any thread starts, so that only the main thread takes them.
    if let Err(e) = sys::block_termination_signals() {
        error!(error = %e, "blocking signals failed");
        return ExitCode::FAILURE;
    }
    let control_config = config.control.clone();
    let metrics_addr = config.metrics;
    let daemon = match vhost_net_backend::start(config) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            error!("{}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let server = match control::Server::start(Arc::clone(&daemon), &control_config) {
        Ok(s) => s,
        Err(e) => {
            error!("{}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let metrics = match metrics_addr.map(|a| metrics::Server::start(Arc::clone(&daemon), a)) {
        Some(Err(e)) => {
            error!("{}", error_chain(&e));
            return ExitCode::FAILURE;
        }
        m => m.and_then(Result::ok),
    };
    match sys::wait_for_termination() {
        Ok(sig) => info!(signal = sig, "shutting down"),
        Err(e) => error!(error = %e, "waiting for signals failed; shutting down"),
    }
    // The control and metrics loops hold the other references; they are joined here.
    drop(server);
    drop(metrics);
    match Arc::try_unwrap(daemon) {
        Ok(d) => d.shutdown(),
        Err(_) => error!("the daemon is still in use; exiting without a clean shutdown"),
    }
    ExitCode::SUCCESS
}
