//! Writes the man pages (`vhost-net-backend.1` and one per subcommand) from the command
//! line's definition into docs/man/:
//!
//! ```text
//! cargo run -p vhost-net-backend --example man
//! ```
//! A unit test (`cli::tests::man_pages_are_current`) fails when they are out of date.

use clap::CommandFactory;
use vhost_net_backend::cli::Args;

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man");
    std::fs::create_dir_all(&dir)?;
    clap_mangen::generate_to(Args::command(), &dir)?;
    println!("man pages written to {}", dir.display());
    Ok(())
}
