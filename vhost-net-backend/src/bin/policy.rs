//! `policy`: offline tooling for policy modules.
//!
//! `policy test MODULE --pcap FILE [--config TEXT | --config-file FILE] [--guest MAC]...`
//! runs a module over a capture and prints each frame's verdict, then the module's counters.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use vhost_net_backend::cli::error_chain;
use vhost_net_backend::policy::offline::{read_capture, render, run, OfflineOptions};
use vhost_net_backend::policy::FailMode;

#[derive(Debug, Parser)]
#[command(about = "Offline tooling for vhost-net-backend policy modules")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Hook {
    PortIn,
    NatEgress,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Fail {
    Closed,
    Open,
    Baseline,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run MODULE over a capture and print each frame's verdict.
    Test {
        /// The policy module (.wasm).
        module: PathBuf,
        /// A pcap or pcapng capture of Ethernet frames.
        #[arg(long)]
        pcap: PathBuf,
        /// The module's configuration text.
        #[arg(long, conflicts_with = "config_file")]
        config: Option<String>,
        /// A file holding the module's configuration.
        #[arg(long)]
        config_file: Option<PathBuf>,
        /// A guest's MAC: its frames come in on port N (the Nth --guest), others on port 0.
        #[arg(long = "guest", value_parser = parse_mac)]
        guests: Vec<[u8; 6]>,
        /// The network the frames are in.
        #[arg(long, default_value_t = 0)]
        network: u32,
        /// The hook point.
        #[arg(long, value_enum, default_value = "port-in")]
        hook: Hook,
        /// What frames get when the module faults.
        #[arg(long, value_enum, default_value = "closed")]
        fail_mode: Fail,
    },
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    policy_sdk::config::parse_mac(s).ok_or_else(|| format!("`{s}` is not a MAC address"))
}

fn main() -> ExitCode {
    let Command::Test {
        module,
        pcap,
        config,
        config_file,
        guests,
        network,
        hook,
        fail_mode,
    } = Args::parse().command;
    let result = (|| -> Result<String, Box<dyn std::error::Error>> {
        let config = match (config, config_file) {
            (Some(c), _) => c,
            (None, Some(f)) => std::fs::read_to_string(f)?,
            (None, None) => String::new(),
        };
        let opts = OfflineOptions {
            config,
            fail_mode: match fail_mode {
                Fail::Closed => FailMode::Closed,
                Fail::Open => FailMode::Open,
                Fail::Baseline => FailMode::Baseline,
            },
            guests,
            network,
            hook: match hook {
                Hook::PortIn => bridge_core::policy::HookPoint::PortIn,
                Hook::NatEgress => bridge_core::policy::HookPoint::NatEgress,
            },
        };
        let frames = read_capture(&pcap)?;
        let (host, results) = run(std::fs::read(&module)?, &opts, &frames)?;
        Ok(render(&host, &frames, &results))
    })();
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("policy test: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
