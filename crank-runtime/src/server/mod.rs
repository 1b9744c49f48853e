//! Serving an axum router over TLS, within [`ConnectionLimits`], and the handle of a
//! running server.
//!
//! ```text
//!  accept ──► admission: past max_connections or max_connections_per_ip? close at once
//!    │          (accept errors: back off 10 ms .. 1 s, one warning per episode)
//!    └─► one task per connection
//!          TLS handshake ........................ handshake_timeout
//!          HTTP/1.1 request header ............. header_read_timeout (also between requests)
//!          no request handled ................... idle_timeout        ─┐ graceful close
//!          open at all .......................... max_connection_age  ─┘ (GOAWAY / Connection: close)
//!          HTTP/2 ping unanswered ............... http2_keep_alive_timeout
//!          client certificate in a new CRL ...... closed at once
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use rustls::ServerConfig;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

mod accept;
mod admission;
mod connection;
mod limits;
mod metrics;

pub use accept::serve_tls;
pub use limits::ConnectionLimits;

pub use self::metrics::ConnectionMetrics;
use crate::trust::TrustStore;

/// A server running in the background. Dropping the handle does not stop it; call
/// [`ServerHandle::shutdown`].
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    serving: Serving,
    config: watch::Sender<Arc<ServerConfig>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    /// Serves `router` over TLS on `listener` in a background task, within `limits`,
    /// counting connections into `metrics` ([`Metrics::connections`](crate::metrics::Metrics::connections),
    /// or `ConnectionMetrics::default()` for none). With `revocations` (the store the
    /// server's client verifier follows), a connection whose client certificate a new CRL
    /// lists is closed at once. Fails if `limits` do not validate.
    pub fn spawn(
        listener: tokio::net::TcpListener,
        config: Arc<ServerConfig>,
        router: Router,
        limits: ConnectionLimits,
        metrics: ConnectionMetrics,
        revocations: Option<Arc<TrustStore>>,
    ) -> std::io::Result<Self> {
        limits.validate().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let addr = listener.local_addr()?;
        let (config_tx, config_rx) = watch::channel(config);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let serving = Serving(Arc::new(std::sync::atomic::AtomicBool::new(true)));
        let ended = serving.clone();
        let task = tokio::spawn(async move {
            let served = serve_tls(listener, config_rx, router, limits, metrics, revocations, async move {
                let _ = stop_rx.await;
            })
            .await;
            ended.0.store(false, std::sync::atomic::Ordering::Relaxed);
            served
        });
        Ok(Self { addr, serving, config: config_tx, stop: Some(stop_tx), task })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the server is still accepting, as a handle readiness checks can keep.
    pub fn serving(&self) -> Serving {
        self.serving.clone()
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

/// Whether a [`ServerHandle`]'s server is still accepting connections.
#[derive(Debug, Clone)]
pub struct Serving(Arc<std::sync::atomic::AtomicBool>);

impl Serving {
    /// `false` once the accept loop has ended (stopped or failed).
    pub fn is_serving(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Resolves when the process receives SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing open connections");
}
