//! A running TLS server and its handle.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use rustls::ServerConfig;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A server running in the background. Dropping the handle does not stop it; call
/// [`ServerHandle::shutdown`].
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    config: watch::Sender<Arc<ServerConfig>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    /// Serves `router` over TLS on `listener` in a background task.
    pub fn spawn(
        listener: tokio::net::TcpListener,
        config: Arc<ServerConfig>,
        router: Router,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (config_tx, config_rx) = watch::channel(config);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::tls::serve_tls(listener, config_rx, router, async move {
            let _ = stop_rx.await;
        }));
        Ok(Self { addr, config: config_tx, stop: Some(stop_tx), task })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the TLS configuration for new connections.
    pub fn set_config(&self, config: Arc<ServerConfig>) {
        self.config.send_replace(config);
    }

    /// Stops accepting, lets open connections finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.map_err(std::io::Error::other)?
    }

    /// Waits until the server ends on its own (it does not, unless it fails).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }
}
