//! `vhost-net-backend`: parses the command line, starts the daemon, and runs it until SIGINT,
//! SIGTERM or SIGHUP.

use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use vhost_net_backend::cli::Args;
use vhost_net_backend::{sys, Config};

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
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

/// An error and its causes, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
