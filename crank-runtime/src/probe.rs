//! Probes an orchestrator can call without a client certificate: a TLS listener of its
//! own (`CRANK_PROBE_PORT`) that proves the server with its usual certificate, asks for
//! no client certificate, and serves `/livez` and `/readyz` and nothing else.
//!
//! ```text
//!  kubelet / HEALTHCHECK ──TLS, no client cert──► probe port ─┬─ GET /livez  200 while the process serves
//!                                                             ├─ GET /readyz 200 when every check passes,
//!                                                             │              503 naming each one that fails
//!                                                             └─ anything else 404
//!  workers and peers ──mTLS, client cert required──► main port (unchanged)
//! ```
//!
//! The probe port is off unless configured. What an unauthenticated client can make it
//! hold is bounded by [`probe_limits`]: a few connections, short timeouts, no request
//! bodies, answers of a few hundred bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Json;
use axum::routing::get;
use crank_security_core::CertMetadata;
use rustls::ServerConfig;

use crate::crypto::provider;
use crate::server::{ConnectionLimits, ConnectionMetrics, ServerHandle, Serving};
use crate::tls::Credentials;
use crate::trust::TrustStore;

/// The variable that opens the probe listener on a port (workers and `crank ca serve`).
pub const PROBE_PORT_VAR: &str = "CRANK_PROBE_PORT";

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = dyn Fn() -> CheckFuture + Send + Sync;

/// What `/readyz` checks: named conditions, each passing or failing with a reason.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Arc<CheckFn>)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.checks.iter().map(|(name, _)| name)).finish()
    }
}

impl Readiness {
    /// No checks yet (ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check that answers at once.
    #[must_use]
    pub fn check(self, name: &'static str, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.check_async(name, move || {
            let r = check();
            async move { r }
        })
    }

    /// Adds a check that waits on something (a database); it fails if it takes more
    /// than 3 s.
    #[must_use]
    pub fn check_async<F>(mut self, name: &'static str, check: impl Fn() -> F + Send + Sync + 'static) -> Self
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(check()) as CheckFuture)));
        self
    }

    /// Whether every check passes, and each check's result by name.
    pub async fn evaluate(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let mut ready = true;
        let mut results = serde_json::Map::new();
        for (name, check) in &self.checks {
            let outcome = match tokio::time::timeout(Duration::from_secs(3), check()).await {
                Ok(r) => r,
                Err(_) => Err("the check did not answer within 3 s".into()),
            };
            let value = match outcome {
                Ok(()) => "ok".into(),
                Err(reason) => {
                    ready = false;
                    reason
                }
            };
            results.insert((*name).to_owned(), value.into());
        }
        (ready, results)
    }

    /// The certificate `creds` serves is within its validity (and there is one).
    #[must_use]
    pub fn certificate(self, creds: Arc<Credentials>) -> Self {
        self.check("certificate", move || certificate_problem(&creds))
    }

    /// `trust` holds at least one root.
    #[must_use]
    pub fn trust(self, trust: Arc<TrustStore>) -> Self {
        self.check("trust", move || if trust.roots().is_empty() { Err("no CA root is trusted".into()) } else { Ok(()) })
    }

    /// The listener of `serving` is still accepting.
    #[must_use]
    pub fn listener(self, serving: Serving) -> Self {
        self.check(
            "listener",
            move || {
                if serving.is_serving() { Ok(()) } else { Err("the mTLS listener has stopped".into()) }
            },
        )
    }
}

/// Why the certificate in `creds` should not be served now, if it should not.
fn certificate_problem(creds: &Credentials) -> Result<(), String> {
    let key = creds.current().ok_or("no certificate loaded")?;
    let leaf = key.cert.first().ok_or("the certificate chain is empty")?;
    let meta = CertMetadata::from_der(leaf).map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let now = time::OffsetDateTime::now_utc();
    if now >= meta.not_after {
        return Err(format!("the certificate (serial {}) expired at {}", meta.serial, meta.not_after));
    }
    if now < meta.not_before {
        return Err(format!("the certificate (serial {}) is not valid before {}", meta.serial, meta.not_before));
    }
    Ok(())
}

/// Limits for a listener anyone may connect to: 32 connections, 8 per address, 5 s to
/// finish a handshake or send a request header, closed after 15 s idle or 60 s open.
pub fn probe_limits() -> ConnectionLimits {
    ConnectionLimits {
        handshake_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(15),
        max_connection_age: Duration::from_secs(60),
        max_connections: 32,
        max_connections_per_ip: 8,
        max_in_flight_requests: 32,
        ..ConnectionLimits::default()
    }
}

/// The probe routes: `/livez`, `/readyz`, and 404 for anything else.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/livez", get(|| async { Json(serde_json::json!({"status": "alive"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "the probe port serves only /livez and /readyz"})))
        })
        .with_state(Arc::new(readiness))
        .layer(DefaultBodyLimit::max(0))
}

async fn readyz(State(readiness): State<Arc<Readiness>>) -> (StatusCode, Json<serde_json::Value>) {
    let (ready, checks) = readiness.evaluate().await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks})))
}

/// Serves the probes on `listener` over TLS with the certificate `creds` holds (swapped
/// on rotation like the main port's), asking for no client certificate.
pub fn spawn(
    listener: tokio::net::TcpListener,
    creds: Arc<Credentials>,
    readiness: Readiness,
) -> Result<ServerHandle, crate::RuntimeError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::RuntimeError::Config(format!("probe listener TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(creds);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    ServerHandle::spawn(
        listener,
        Arc::new(config),
        router(readiness),
        probe_limits(),
        ConnectionMetrics::default(),
        None,
    )
    .map_err(|e| crate::RuntimeError::Config(format!("probe listener: {e}")))
}

/// Binds `host`:`port` and serves the probes there.
pub async fn bind_and_spawn(
    host: std::net::IpAddr,
    port: u16,
    creds: Arc<Credentials>,
    readiness: Readiness,
) -> Result<ServerHandle, crate::RuntimeError> {
    let addr = std::net::SocketAddr::new(host, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::RuntimeError::Config(format!("cannot listen for probes on {addr}: {e}")))?;
    tracing::info!(%addr, "probe listener (/livez, /readyz; no client certificate asked)");
    spawn(listener, creds, readiness)
}

/// `GET url` over TLS without a client certificate, as an orchestrator's probe does:
/// `Ok` with the body when the answer is 200, else `Err` naming the status or the
/// failure. The server is verified against `roots` when given, else not at all (the
/// probe sends nothing and only reads a status, like `curl -k`).
pub async fn probe(url: &str, roots: Option<&[rustls_pki_types::CertificateDer<'static>]>) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("{url}: probes are served over https only"));
    }
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
    let builder = match roots {
        Some(roots) => {
            let store = crate::crypto::root_store(roots).map_err(|e| format!("the CA file: {e}"))?;
            let config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(store)
                .with_no_client_auth();
            builder.tls_backend_preconfigured(config)
        }
        None => builder.tls_danger_accept_invalid_certs(true),
    };
    let client = builder.build().map_err(|e| format!("building the client: {e}"))?;
    let response = client.get(parsed).send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::OK { Ok(body) } else { Err(format!("{url}: {status} {body}")) }
}
