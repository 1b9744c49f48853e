//! `crank token create`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use crank_ca::CaDir;
use crank_security_core::WorkerId;

/// `crank token ...`
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a new single-use join token on stdout.
    Create {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
        /// The worker the token is for.
        #[arg(long)]
        worker_id: String,
        /// Lifetime, e.g. `15m`, `1h` (at most 7 days).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Capability granted to the worker (repeatable), e.g. `san:api.example.internal`.
        #[arg(long = "capability")]
        capabilities: Vec<String>,
    },
}

pub(crate) fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create { dir, worker_id, ttl, capabilities } = cmd;
    let token = crank_ca::create_token(&CaDir::new(dir), &WorkerId::new(worker_id)?, ttl, capabilities)?;
    say!("{token}");
    Ok(())
}
