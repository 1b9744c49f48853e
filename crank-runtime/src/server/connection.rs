//! Serving one accepted connection: the TLS handshake, then HTTP until the client closes
//! it, a limit closes it, or the server shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::admission::Admitted;
use super::limits::ConnectionLimits;
use super::metrics::{CloseReason, ConnectionMetrics};
use crate::tls::Connection;
use crate::trust::TrustStore;
use rustls_pki_types::CertificateDer;

/// How long requests in progress may take to finish once a connection is closed for its
/// age or because the server shuts down.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long an idle connection may take to close once told to: HTTP/2 sends GOAWAY and
/// waits for the answer to a ping, which a client that sends nothing never gives.
const IDLE_GRACE: Duration = Duration::from_secs(5);

/// What every connection of one server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    limits: ConnectionLimits,
    pub(crate) metrics: ConnectionMetrics,
    revocations: Option<Arc<TrustStore>>,
}

impl Shared {
    /// hyper's HTTP/1.1 header-read timeout and HTTP/2 keep-alive pings, on Tokio's timer.
    pub(crate) fn new(
        router: Router,
        limits: ConnectionLimits,
        metrics: ConnectionMetrics,
        revocations: Option<Arc<TrustStore>>,
    ) -> Arc<Self> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.http2_keep_alive_interval)
            .keep_alive_timeout(limits.http2_keep_alive_timeout);
        // Turns every handler into its service once: a router never given a state builds
        // the service of the matched handler (and of each layer on it) on every request.
        let router = router.with_state(());
        Arc::new(Self { builder, router, limits, metrics, revocations })
    }
}

/// Serves one accepted TCP connection until it ends, then counts why. `admitted` holds
/// its place in the connection counts until then.
pub(crate) async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    admitted: Admitted,
) {
    shared.metrics.opened();
    let reason = serve(tcp, remote, acceptor, &shared, &mut shutdown).await;
    drop(admitted);
    shared.metrics.closed(reason);
    tracing::debug!(%remote, reason = reason.label(), "connection closed");
}

async fn serve(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> CloseReason {
    let tls = match handshake(tcp, remote, acceptor, shared.limits.handshake_timeout, shutdown).await {
        Ok(tls) => tls,
        Err(reason) => return reason,
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let certificate = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
    let connection = Arc::new(Connection::from_verified(certificate.clone(), remote));
    let (activity, mut requests) = watch::channel(0_usize);
    let service = service(shared.router.clone(), connection, Arc::new(activity));
    let conn = shared.builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let limits = &shared.limits;
    // Every reason to close a connection before its client does is one arm here.
    let (reason, grace) = tokio::select! {
        ended = conn.as_mut() => return ended_by(ended, h2, remote),
        // Not one more request from a revoked peer: dropped, not drained.
        () = revoked(shared.revocations.as_deref(), certificate.as_ref()) => {
            tracing::info!(%remote, "closing a connection: the client's certificate was revoked");
            return CloseReason::Revoked;
        }
        () = stopped(shutdown) => (CloseReason::Shutdown, SHUTDOWN_GRACE),
        () = idle_for(&mut requests, limits.idle_timeout) => (CloseReason::IdleTimeout, IDLE_GRACE),
        () = tokio::time::sleep(limits.max_connection_age) => (CloseReason::MaxAge, SHUTDOWN_GRACE),
    };
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(grace, conn).await.is_err() {
        tracing::debug!(%remote, reason = reason.label(), "connection did not close within {grace:?}; dropped");
    }
    reason
}

/// The TLS handshake, within `timeout`, unless the server shuts down first.
async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<TlsStream<TcpStream>, CloseReason> {
    tokio::select! {
        done = tokio::time::timeout(timeout, acceptor.accept(tcp)) => match done {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                Err(CloseReason::HandshakeFailed)
            }
            Err(_) => Err(CloseReason::HandshakeTimeout),
        },
        () = stopped(shutdown) => Err(CloseReason::Shutdown),
    }
}

type Request = axum::extract::Request<hyper::body::Incoming>;

/// The router as a hyper service: every request gets the connection's [`Connection`]
/// and counts in `activity` while it is handled.
fn service(
    router: Router,
    connection: Arc<Connection>,
    activity: Arc<watch::Sender<usize>>,
) -> TowerToHyperService<
    impl tower::Service<
        Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
> {
    use tower::ServiceExt;
    let svc = router
        .map_request(move |mut req: Request| {
            req.extensions_mut().insert(connection.clone());
            req
        })
        .map_future(move |handled| {
            let busy = Busy::start(&activity);
            async move {
                let response = handled.await;
                drop(busy);
                response
            }
        });
    TowerToHyperService::new(svc)
}

/// One request being handled on a connection, counted until dropped.
struct Busy(Arc<watch::Sender<usize>>);

impl Busy {
    fn start(activity: &Arc<watch::Sender<usize>>) -> Self {
        activity.send_modify(|n| *n += 1);
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Resolves once no request has been handled for `timeout`; any request restarts it.
async fn idle_for(requests: &mut watch::Receiver<usize>, timeout: Duration) {
    loop {
        let handling = *requests.borrow_and_update() > 0;
        let changed = if handling {
            requests.changed().await
        } else {
            match tokio::time::timeout(timeout, requests.changed()).await {
                Ok(changed) => changed,
                Err(_) => return,
            }
        };
        if changed.is_err() {
            // The service is gone, so the connection is ending by itself.
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves once the CRLs of `trust` list `leaf`: looked at again at every change of
/// the store. Never resolves without a store or a client certificate.
async fn revoked(trust: Option<&TrustStore>, leaf: Option<&CertificateDer<'static>>) {
    let (Some(trust), Some(leaf)) = (trust, leaf) else {
        return std::future::pending().await;
    };
    let mut changes = trust.changes();
    loop {
        if trust.is_revoked(leaf) {
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves when the server shuts down (or is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Why a connection that hyper finished serving ended.
fn ended_by(ended: Result<(), Box<dyn std::error::Error + Send + Sync>>, h2: bool, remote: SocketAddr) -> CloseReason {
    match ended {
        Ok(()) => CloseReason::Closed,
        Err(e) if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) => {
            if h2 {
                CloseReason::KeepAliveTimeout
            } else {
                CloseReason::HeaderTimeout
            }
        }
        Err(e) => {
            tracing::debug!(%remote, error = %e, "connection ended with an error");
            CloseReason::Error
        }
    }
}
