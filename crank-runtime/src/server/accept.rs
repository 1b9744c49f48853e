//! The accept loop: admission against the connection limits, backoff on accept errors,
//! one task per admitted connection, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::admission::{Admission, Refusal};
use super::connection::{SHUTDOWN_GRACE, Shared, serve_connection};
use super::limits::ConnectionLimits;
use super::limits::open_files_budget;
use super::metrics::ConnectionMetrics;

/// Delays after failed accepts: 10 ms, doubling, at most 1 s.
const ACCEPT_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(10))
    .with_max_delay(Duration::from_secs(1))
    .with_factor(2.0)
    .without_max_times();

/// Refused connections are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then stops
/// accepting, asks open connections to close gracefully and waits (up to 30 s) for them.
///
/// Each connection uses the server config current at accept time, so a new config
/// (rotation) applies to new handshakes only. Plaintext or failed handshakes are dropped
/// without an answer. `limits` bound what connections may hold (see
/// [`ConnectionLimits`]): past `max_connections` or `max_connections_per_ip` a new
/// connection is closed at once, before any TLS work, counted in
/// `crank_connections_refused_total{reason}` and logged at most every 10 s. When
/// accepting fails (out of file descriptors), the loop backs off from 10 ms to 1 s and
/// logs once until an accept succeeds again. With `revocations`, a connection whose
/// client certificate a later CRL of that store lists is closed at once.
pub async fn serve_tls(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    router: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    revocations: Option<Arc<crate::trust::TrustStore>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    limits.validate().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    if let Some(budget) = open_files_budget().filter(|b| limits.max_connections > *b) {
        tracing::warn!(
            max_connections = limits.max_connections,
            open_files_budget = budget,
            "max_connections is above three quarters of the open-files limit: the process can run out of descriptors"
        );
    }
    let shared = Shared::new(router, limits, metrics, revocations);
    let admission = Admission::new(&limits);
    let (stop, stopped) = watch::channel(false);
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RefusalLog::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(e) => {
                shared.metrics.accept_error();
                let delay = backoff.failed(&e);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        let admitted = match admission.admit(remote.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                drop(tcp);
                shared.metrics.refused(refusal);
                refusals.note(refusal, remote);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.borrow().clone());
        tokio::spawn(serve_connection(tcp, remote, acceptor, shared.clone(), stopped.clone(), admitted));
    }
    drop(listener);
    drop(stopped);
    stop.send_replace(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, stop.closed()).await.is_err() {
        tracing::warn!("open connections did not finish within {SHUTDOWN_GRACE:?} of shutdown");
    }
    Ok(())
}

/// Backoff after failed accepts, one warning per episode of failures; a successful
/// accept ends the episode.
#[derive(Debug, Default)]
struct AcceptBackoff {
    delays: Option<ExponentialBackoff>,
    errors: u64,
}

impl AcceptBackoff {
    /// The delay before the next accept.
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.errors += 1;
        let delays = self.delays.get_or_insert_with(|| {
            tracing::warn!(
                %error,
                "accepting connections failed; retrying after 10 ms doubling to 1 s, without logging again until an accept succeeds"
            );
            ACCEPT_BACKOFF.build()
        });
        delays.next().unwrap_or(Duration::from_secs(1))
    }

    fn succeeded(&mut self) {
        if self.delays.take().is_some() {
            tracing::info!(errors = self.errors, "accepting connections again");
            self.errors = 0;
        }
    }
}

/// Logs refused connections at most every [`REFUSAL_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn note(&mut self, refusal: Refusal, remote: SocketAddr) {
        self.unlogged += 1;
        if self.last.is_some_and(|t| t.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        tracing::warn!(
            %remote,
            reason = refusal.label(),
            refused = self.unlogged,
            "connection limit reached: new connections are closed before their TLS handshake (refused: count since the last such message)"
        );
        self.last = Some(Instant::now());
        self.unlogged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets_after_a_success() {
        let mut backoff = AcceptBackoff::default();
        let error = std::io::Error::from_raw_os_error(24);
        let delays: Vec<f64> = (0..9).map(|_| backoff.failed(&error).as_secs_f64()).collect();
        let expected = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0];
        assert!(delays.iter().zip(expected).all(|(d, e)| (d - e).abs() < 0.001), "{delays:?}");
        assert_eq!(backoff.errors, 9);
        backoff.succeeded();
        assert_eq!(backoff.failed(&error), Duration::from_millis(10));
    }

    #[test]
    fn refusals_are_logged_once_per_interval() {
        let mut log = RefusalLog::default();
        let remote: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        log.note(Refusal::MaxConnectionsPerIp, remote);
        assert_eq!(log.unlogged, 0);
        for _ in 0..5 {
            log.note(Refusal::MaxConnectionsPerIp, remote);
        }
        assert_eq!(log.unlogged, 5, "suppressed until the interval has passed");
    }
}
