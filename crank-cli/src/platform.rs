//! `crank platform serve`: the platform registry, itself a worker.

use std::time::Duration;

use clap::Subcommand;
use crank_runtime::WorkerApplication;
use crank_runtime::platform::{Registry, serve_on, spawn_sweeper};

use crate::connections::ConnectionArgs;

/// `crank platform ...`
#[derive(Debug, Subcommand)]
pub(crate) enum PlatformCommand {
    /// Serve the registry over mTLS. It is a worker itself: it gets its certificate like
    /// any worker (CERT_DIR, CA_SERVICE_URL, CRANK_JOIN_TOKEN).
    Serve {
        /// HTTPS port.
        #[arg(long, env = "PLATFORM_HTTPS_PORT", default_value_t = crank_runtime::platform::DEFAULT_PLATFORM_PORT)]
        port: u16,
        /// Drop workers silent for longer than this.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        expire_after: Duration,
        /// Timeouts and connection limits.
        #[command(flatten)]
        connections: ConnectionArgs,
    },
}

pub(crate) fn run(cmd: PlatformCommand) -> anyhow::Result<()> {
    let PlatformCommand::Serve { port, expire_after, connections } = cmd;
    let registry = Registry::new(expire_after);
    crate::runtime()?.block_on(async move {
        spawn_sweeper(registry.clone());
        let app = WorkerApplication::new("platform").port(port).connection_limits(connections.limits());
        let worker = serve_on(app, registry).start().await?;
        tracing::info!(addr = %worker.addr(), "platform registry serving over mTLS");
        crank_runtime::shutdown_signal().await;
        worker.shutdown().await?;
        Ok(())
    })
}
