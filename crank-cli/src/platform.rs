//! `crank platform serve`: the platform registry, itself a worker.

use std::time::Duration;

use clap::Subcommand;
use crank_runtime::WorkerApplication;
use crank_runtime::platform::{Registry, routes, spawn_sweeper};

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
    let routes = routes(registry.clone());
    crate::runtime()?.block_on(async move {
        spawn_sweeper(registry);
        let worker = WorkerApplication::new("platform")
            .port(port)
            .routes(routes)
            .connection_limits(connections.limits())
            .start()
            .await?;
        tracing::info!(addr = %worker.addr(), "platform registry serving over mTLS");
        crank_runtime::shutdown_signal().await;
        worker.shutdown().await?;
        Ok(())
    })
}
