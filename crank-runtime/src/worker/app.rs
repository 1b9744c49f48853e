//! `WorkerApplication`: a worker's `main` in three lines.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use crank_security_core::{
    CertFiles, CertificateBundle, CertificateEvent, CorrelationId, EventKind, EventSink, EventSinks, KeyType,
    PolicyEngine, SecurityConfig, SpiffeId, WorkerId,
};

use super::bootstrap::{BootstrapOptions, RetryPolicy, bootstrap};
use super::mtls::{MtlsClient, MtlsHttpClient};
use super::rotation::{RotationConfig, Rotator};
use super::settings::{Resolved, WorkerSettings};
use crate::access::AccessControl;
use crate::metrics::{Metrics, PrometheusSink};
use crate::probe::Readiness;
use crate::tls::{Credentials, Resumption, server_config};
use crate::trust::{CrlMode, TrustStore};
use crate::{ConnectionLimits, RuntimeError, ServerHandle};
use crank_policy::PolicyGuard;
use tokio::sync::watch;

/// The capability of every worker's `/metrics`.
pub const METRICS_CAPABILITY: &str = "metrics.read";

/// What a handler can reach: this worker's identity and an mTLS client.
/// Extract it with `Extension<WorkerContext>`.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// This worker's id.
    pub worker_id: WorkerId,
    /// This worker's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// An HTTPS client that presents this worker's certificate, trusts only the CA, and
    /// never reuses a connection across a revocation.
    pub client: MtlsHttpClient,
}

/// A worker service: HTTPS with mandatory client certificates, certificates obtained and
/// kept by the runtime.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use crank_runtime::{RuntimeError, WorkerApplication};
///
/// fn main() -> Result<(), RuntimeError> {
///     WorkerApplication::new("hello-world")
///         .port_from_env("HELLO_WORLD_HTTPS_PORT", 8500)
///         .routes(Router::new().route("/", get(|| async { "hello" })))
///         .run()
/// }
/// ```
///
/// Configuration from the environment (explicit builder calls win):
/// `CERT_DIR`, `CA_SERVICE_URL` (comma-separated for failover), `CRANK_ENVIRONMENT`,
/// `HTTPS_ONLY` (only `true` accepted), `CRANK_JOIN_TOKEN` (first start, or recovery),
/// `CRANK_WORKER_ID` (default: the token's worker id, else the service name),
/// `CRANK_SANS` (comma-separated), `CRANK_KEY_TYPE` (default `ecdsa-p256`),
/// `CRANK_BOOTSTRAP_ATTEMPTS` (default 5), `CRANK_LISTEN_HOST` (default `0.0.0.0`),
/// `CRANK_POLICY_DIR` (Rego policy deciding renewal; default: built-in),
/// `CRANK_CRL_REFRESH` (how often the CRL is fetched; default 30 s),
/// `CRANK_TLS_RESUMPTION` (`on`, the default, or `off`: every connection to this worker
/// does a full handshake), `CRANK_CRL_MODE` (`warn`, the default, or `fail-closed`: peers
/// are refused while the CRL is missing or stale), and the connection limits
/// `CRANK_MAX_CONNECTIONS`, `CRANK_MAX_CONNECTIONS_PER_IP`, `CRANK_HANDSHAKE_TIMEOUT`,
/// `CRANK_HEADER_READ_TIMEOUT`, `CRANK_IDLE_TIMEOUT`, `CRANK_MAX_CONNECTION_AGE` and
/// `CRANK_MAX_IN_FLIGHT` (see [`ConnectionLimits`]). `CRANK_POLICY_DIR` also decides
/// who may call which route (`can_access_capability`, see
/// [`WorkerApplication::capability`]).
#[derive(Debug)]
pub struct WorkerApplication {
    service_name: String,
    port: Result<u16, String>,
    routes: Router,
    /// Route groups and the capability each serves.
    capabilities: Vec<(String, Router)>,
    events: EventSinks,
    settings: WorkerSettings,
}

/// A started worker.
#[derive(Debug)]
pub struct RunningWorker {
    /// The HTTPS server.
    pub server: ServerHandle,
    /// The probe listener, if one was opened.
    pub probe: Option<ServerHandle>,
    /// The certificate at start (see [`RunningWorker::rotator`] for the current one).
    pub bundle: CertificateBundle,
    /// The credentials served.
    pub credentials: Arc<Credentials>,
    /// Identity and client.
    pub context: WorkerContext,
    /// Keeps the certificate renewed.
    pub rotator: Arc<Rotator>,
    /// The CA roots this worker trusts (updated by renewals).
    pub trust: Arc<TrustStore>,
    stop_rotation: watch::Sender<bool>,
}

impl RunningWorker {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops renewing, stops accepting, and waits for open connections to finish.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.stop_rotation.send_replace(true);
        if let Some(probe) = self.probe {
            probe.shutdown().await?;
        }
        self.server.shutdown().await
    }
}

impl WorkerApplication {
    /// A worker named `service_name` on port 8500, with only `/health`.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            port: Ok(8500),
            routes: Router::new(),
            capabilities: Vec::new(),
            events: EventSinks::default(),
            settings: WorkerSettings::default(),
        }
    }

    /// The HTTPS port (default 8500; 0 picks a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Ok(port);
        self
    }

    /// The HTTPS port from the environment variable `var`, else `default`. An unparsable
    /// value is reported by `run()`.
    pub fn port_from_env(mut self, var: &str, default: u16) -> Self {
        self.port = match std::env::var(var) {
            Ok(v) => v.trim().parse().map_err(|_| format!("{var}={v:?} is not a port number (1-65535)")),
            Err(_) => Ok(default),
        };
        self
    }

    /// The address to bind (default `0.0.0.0`, or `CRANK_LISTEN_HOST`).
    pub fn host(mut self, host: IpAddr) -> Self {
        self.settings.host = Some(host);
        self
    }

    /// The service's routes; `/health` is added. Every route is behind mTLS. These
    /// routes name no capability: policy's rule for undeclared routes decides who may
    /// call them (by default any caller of the trust domain).
    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = routes;
        self
    }

    /// A rate limit for every caller of `capability`, instead of `CRANK_RATE_LIMITS`: a
    /// token bucket per (caller, capability), over it 429 with `Retry-After`. A limit the
    /// policy's decision sets wins.
    pub fn rate_limit(mut self, capability: impl Into<String>, limit: crank_security_core::RateLimit) -> Self {
        self.settings.rate_limits.insert(capability.into(), limit);
        self
    }

    /// Routes serving `capability` (e.g. `email.classify`): every request to them is
    /// authorised by the policy hook `can_access_capability` for that capability (by
    /// default: callers the CA granted it, and administrators). An invalid name is
    /// reported by `run()`.
    pub fn capability(mut self, capability: impl Into<String>, routes: Router) -> Self {
        self.capabilities.push((capability.into(), routes));
        self
    }

    /// Security settings, instead of reading the environment.
    pub fn security_config(mut self, config: SecurityConfig) -> Self {
        self.settings.security = Some(config);
        self
    }

    /// The join token, instead of `CRANK_JOIN_TOKEN`.
    pub fn join_token(mut self, token: impl Into<String>) -> Self {
        self.settings.join_token = Some(token.into());
        self
    }

    /// The worker id, instead of `CRANK_WORKER_ID` or the token's.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.settings.worker_id = Some(id.into());
        self
    }

    /// Adds a SAN to ask for (default: worker id, localhost, 127.0.0.1, ::1).
    pub fn san(mut self, name: impl Into<String>) -> Self {
        self.settings.sans.push(name.into());
        self
    }

    /// The key type (default ECDSA P-256).
    pub fn key_type(mut self, key_type: KeyType) -> Self {
        self.settings.key_type = Some(key_type);
        self
    }

    /// Retry of an unavailable CA at bootstrap.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = Some(retry);
        self
    }

    /// The policy engine deciding renewal (default: the built-in policy).
    pub fn policy(mut self, engine: Arc<dyn PolicyEngine>) -> Self {
        self.settings.policy = Some(engine);
        self
    }

    /// The platform registry to register with and send heartbeats to, instead of
    /// `PLATFORM_URL`.
    pub fn platform_url(mut self, url: impl Into<String>) -> Self {
        self.settings.platform_url = Some(url.into());
        self
    }

    /// How often the CA's revocation list is fetched (default 30 s, or
    /// `CRANK_CRL_REFRESH`, e.g. `10s`); also the longest time a revoked peer can still
    /// open new connections to this worker.
    pub fn crl_refresh(mut self, interval: Duration) -> Self {
        self.settings.crl_refresh = Some(interval);
        self
    }

    /// Whether clients may resume TLS sessions with this worker (default
    /// [`Resumption::On`], or `CRANK_TLS_RESUMPTION=on|off`). Resumed sessions are never
    /// carried across a CRL or root change.
    pub fn tls_resumption(mut self, resumption: Resumption) -> Self {
        self.settings.resumption = Some(resumption);
        self
    }

    /// What a missing or stale CRL means for peers (default [`CrlMode::Warn`], or
    /// `CRANK_CRL_MODE=warn|fail-closed`).
    pub fn crl_mode(mut self, mode: CrlMode) -> Self {
        self.settings.crl_mode = Some(mode);
        self
    }

    /// Timeouts and connection limits of the HTTPS server, instead of the defaults and the
    /// `CRANK_*` variables read by [`ConnectionLimits::from_env`].
    pub fn connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.settings.limits = Some(limits);
        self
    }

    /// Opens the probe listener on `port` (`/livez`, `/readyz` over TLS, no client
    /// certificate asked; else `CRANK_PROBE_PORT`, else none). See [`crate::probe`].
    pub fn probe_port(mut self, port: u16) -> Self {
        self.settings.probe_port = Some(port);
        self
    }

    /// Heartbeat interval (default 10 s, or `CRANK_HEARTBEAT_INTERVAL`, e.g. `30s`).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.settings.heartbeat_interval = Some(interval);
        self
    }

    /// Registers another event sink (the JSON log sink is always there).
    pub fn event_sink(self, sink: Arc<dyn EventSink>) -> Self {
        self.events.register(sink);
        self
    }

    /// Runs the worker until SIGTERM or Ctrl-C. Builds its own Tokio runtime and, if none
    /// is set, a log subscriber; `main` stays synchronous.
    pub fn run(self) -> Result<(), RuntimeError> {
        crate::logging::init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|source| RuntimeError::Io { action: "cannot start the Tokio runtime", source })?;
        rt.block_on(async move {
            let worker = self.start().await?;
            tracing::info!(addr = %worker.addr(), worker_id = %worker.context.worker_id, "worker serving HTTPS with mandatory client certificates");
            crate::shutdown_signal().await;
            worker.shutdown().await.map_err(|source| RuntimeError::Io { action: "the HTTPS server failed", source })?;
            tracing::info!("worker stopped");
            Ok(())
        })
    }

    /// Obtains certificates and starts serving in the background.
    pub async fn start(self) -> Result<RunningWorker, RuntimeError> {
        let port = self.port.clone().map_err(RuntimeError::Config)?;
        for (capability, _) in &self.capabilities {
            if capability.ends_with('*') {
                return Err(RuntimeError::Config(format!(
                    "capability {capability:?}: a route serves one capability, not a prefix"
                )));
            }
            crank_security_core::validate_capability(capability)?;
        }
        let Resolved {
            security: config,
            join_token: token,
            token_file,
            worker_id: explicit_id,
            sans,
            key_type,
            retry,
            host,
            policy: engine,
            platform,
            crl_refresh,
            crl_mode,
            resumption,
            limits,
            rate_limits,
            probe_port,
        } = self.settings.clone().resolve_from_env()?;
        let sans_for_rotation = sans.clone();
        let metrics = Metrics::new();
        self.events.register(Arc::new(PrometheusSink(metrics.clone())));
        let files = CertFiles::in_dir(&config.cert_dir);
        // A directory another user could write to is refused before anything is read
        // from it or a join token is spent on it.
        files.check_dir()?;
        let existing = load_valid(&files, &self.events);
        let bundle = match (existing, token) {
            (Ok(bundle), _) => bundle,
            (Err(why), Some(token)) => {
                tracing::info!(cert_dir = %config.cert_dir.display(), reason = %why, "bootstrapping a certificate with the join token");
                let worker_id = explicit_id.clone().map(WorkerId::new).transpose()?;
                let opts = BootstrapOptions {
                    worker_id,
                    token,
                    ca_urls: config.ca_urls.clone(),
                    cert_dir: config.cert_dir.clone(),
                    sans,
                    key_type,
                    retry,
                };
                bootstrap(&opts, &self.events).await?
            }
            (Err(why), None) => {
                return Err(RuntimeError::NoCertificate(format!(
                    "{why}; and no join token was given. Create one with `crank token create --dir <CA dir> --worker-id {}` and pass it as CRANK_JOIN_TOKEN",
                    explicit_id.as_deref().unwrap_or(&self.service_name)
                )));
            }
        };
        let spiffe_id = bundle
            .metadata()
            .spiffe()
            .ok_or_else(|| RuntimeError::NoCertificate("the certificate carries no worker SPIFFE ID".into()))?;
        if let Some(id) = &explicit_id
            && id != spiffe_id.worker_id.as_str()
        {
            return Err(RuntimeError::NoCertificate(format!(
                "the certificate in {} is for worker {}, not {id}; use another CERT_DIR or a token for {id}",
                config.cert_dir.display(),
                spiffe_id.worker_id
            )));
        }

        let credentials = Credentials::new(bundle.certified_key()?);
        let trust = TrustStore::with_mode(bundle.ca(), crl_mode)?;
        let server_config = server_config(&trust, true, credentials.clone(), resumption)?;
        let client = MtlsClient::revocation_aware(&trust, credentials.clone())?;
        let rotation = RotationConfig {
            cert_dir: config.cert_dir.clone(),
            token_file,
            ca_urls: config.ca_urls.clone(),
            key_type,
            sans: sans_for_rotation,
        };
        let policy = PolicyGuard::new(engine);
        let events: Arc<dyn EventSink> = Arc::new(self.events.clone());
        let access = Arc::new(
            AccessControl::new(
                policy.clone(),
                spiffe_id.worker_id.as_str(),
                spiffe_id.trust_domain.as_str(),
                config.environment.clone(),
                events.clone(),
            )
            .with_metrics(metrics.clone())
            .with_trust_changes(trust.changes())
            .with_rate_limits(rate_limits),
        );
        let rotator =
            Rotator::new(bundle.clone(), rotation, policy, events.clone(), credentials.clone(), trust.clone())?;
        let (stop_rotation, stop_rx) = watch::channel(false);
        tokio::spawn(rotator.clone().run(stop_rx));
        let crl_status = Arc::new(super::crl::CrlStatus::default());
        let watcher =
            super::crl_watch::CrlWatcher::new(rotator.clone(), crl_refresh, crl_status.clone(), events.clone());
        // The CRL kept beside the certificate is in force before the first handshake.
        match watcher.load_kept() {
            Ok(Some(info)) => tracing::info!(crl_number = info.number, "CRL from the cert directory installed"),
            Ok(None) => tracing::warn!("no CRL in the cert directory yet; fetching one from the CA"),
            Err(e) => {
                tracing::warn!(error = %e, "the CRL in the cert directory is not usable; fetching one from the CA")
            }
        }
        tokio::spawn(watcher.run(stop_rotation.subscribe()));
        let current = rotator.clone();
        metrics.set_expiry_source(move || current.current().metadata().not_after);
        let crl_for_metrics = crl_status.clone();
        metrics.set_crl_source(move || crl_for_metrics.current().and_then(|c| c.next_update));
        let max_in_flight = limits.max_in_flight_requests;
        if let Some((platform, interval)) = platform {
            let load = metrics.clone();
            tokio::spawn(crate::platform::heartbeat_loop(
                client.clone(),
                platform,
                self.service_name.clone(),
                interval,
                move || load.in_flight() as f64 / max_in_flight as f64,
                stop_rotation.subscribe(),
            ));
        }
        let context = WorkerContext { worker_id: spiffe_id.worker_id.clone(), spiffe_id, client };
        let crl_for_probe = crl_status.clone();
        let undeclared = self
            .routes
            .route("/health", get(|| async { Json(serde_json::json!({"status": "healthy"})) }))
            .route("/ready", get(move || ready(crl_status.clone())));
        let mut groups = vec![
            (None, undeclared),
            (
                Some(METRICS_CAPABILITY.to_owned()),
                Router::new().route("/metrics", get(crate::metrics::handler)).with_state(metrics.clone()),
            ),
        ];
        groups.extend(self.capabilities.into_iter().map(|(capability, routes)| (Some(capability), routes)));
        let router = super::stack::worker_router(
            groups,
            Some(&access),
            &metrics,
            limits.max_in_flight_requests,
            context.clone(),
        );
        let addr = SocketAddr::new(host, port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| RuntimeError::Config(format!("cannot listen on {addr}: {e}")))?;
        let server =
            ServerHandle::spawn(listener, server_config, router, limits, metrics.connections(), Some(trust.clone()))
                .map_err(|e| RuntimeError::Config(e.to_string()))?;
        let probe = match probe_port {
            Some(port) => {
                let readiness = Readiness::new()
                    .certificate(credentials.clone())
                    .trust(trust.clone())
                    .check("crl", move || {
                        crl_for_probe.problem(time::OffsetDateTime::now_utc().unix_timestamp()).map_or(Ok(()), Err)
                    })
                    .listener(server.serving());
                Some(crate::probe::bind_and_spawn(host, port, credentials.clone(), readiness).await?)
            }
            None => None,
        };
        Ok(RunningWorker { server, probe, bundle, credentials, context, rotator, trust, stop_rotation })
    }
}

/// `GET /ready`: 200 while the worker holds a current CRL; 503 naming the problem when
/// it has none yet or the one in force is past its nextUpdate (revoked peers might go
/// unrecognised).
async fn ready(crl: Arc<super::crl::CrlStatus>) -> (StatusCode, Json<serde_json::Value>) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let info = crl.current();
    let crl_json = info.as_ref().map(|c| serde_json::json!({"number": c.number, "next_update": c.next_update}));
    match crl.problem(now) {
        None => (StatusCode::OK, Json(serde_json::json!({"status": "ready", "crl": crl_json}))),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "reason": reason, "crl": crl_json})),
        ),
    }
}

/// Loads the bundle in `files` if it is present and valid now; says why not otherwise.
fn load_valid(files: &CertFiles, events: &dyn EventSink) -> Result<CertificateBundle, String> {
    if !files.exist() {
        return Err(format!("no certificate in {}", files.dir.display()));
    }
    let bundle = CertificateBundle::load(files).map_err(|e| {
        if matches!(e, crank_security_core::Error::InFile { .. }) {
            // A damaged file (truncated, garbage): said as an event too, naming the file.
            let cid = CorrelationId::new();
            events.emit(&CertificateEvent::new(EventKind::CertValidationFailed, &cid).error("load", &e));
        }
        format!("the certificate in {} cannot be loaded: {e}", files.dir.display())
    })?;
    if let Err(e) = bundle.validate(SystemTime::now()) {
        let cid = CorrelationId::new();
        let mut ev =
            CertificateEvent::new(EventKind::CertValidationFailed, &cid).cert(bundle.metadata()).error("load", &e);
        if let Some(s) = bundle.metadata().spiffe() {
            ev = ev.worker(s.worker_id);
        }
        events.emit(&ev);
        return Err(format!("the certificate in {} is not usable: {e}", files.dir.display()));
    }
    Ok(bundle)
}
