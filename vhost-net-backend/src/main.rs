//! `vhost-net-backend`: parses the command line, starts the daemon, and runs it until SIGINT,
//! SIGTERM or SIGHUP.

use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use vhost_net_backend::cli::{error_chain, Args, Loaded};
use vhost_net_backend::config::file;
use vhost_net_backend::sys;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let Loaded { config, notes } = match Loaded::try_from(&args) {
        Ok(l) => l,
        Err(e) => {
            error!("{}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    for note in notes {
        warn!("not imported: {note}");
    }
    if args.print_config {
        print!("{}", file::to_toml(&config));
        return ExitCode::SUCCESS;
    }
    // Blocked before any thread starts, so that only the main thread takes them.
    if let Err(e) = sys::block_termination_signals() {
        error!(error = %e, "blocking signals failed");
        return ExitCode::FAILURE;
    }
    let daemon = match vhost_net_backend::start(config) {
        Ok(d) => d,
        Err(e) => {
            error!("{}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match sys::wait_for_termination() {
        Ok(sig) => info!(signal = sig, "shutting down"),
        Err(e) => error!(error = %e, "waiting for signals failed; shutting down"),
    }
    daemon.shutdown();
    ExitCode::SUCCESS
}
