//! The CA's HTTPS API (axum over rustls).
//!
//! | method | path | authorisation | |
//! |---|---|---|---|
//! | GET  | `/health` | none (TLS) | `{"status":"healthy"}`, or 503 `{"status":"degraded"}` when the store is unreachable |
//! | GET  | `/v1/trust-bundle` | none (TLS) | root certificate(s), PEM |
//! | POST | `/v1/certificates` | join token in the body | `{"csr": PEM, "token": JWT}` |
//! | POST | `/v1/certificates/renew` | current client certificate (mTLS) | `{"csr": PEM}` |
//! | GET  | `/v1/crl` | none (TLS) | the CRL, DER (`application/pkix-crl`) |
//! | POST | `/v1/revocations` | an administrator certificate (mTLS) | `{"serial", "worker_id" or "admin", "reason"}` |
//! | GET  | `/metrics` | a client certificate from this CA | Prometheus metrics |
//! | GET  | `/console...` | capability `ca.console` (administrators by default) | the operator console ([`crate::console`]) |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use crank_security_core::{CertificateProvider, IssueRequest, RenewRequest, WorkerId, parse_pem_certs};
use tower_http::timeout::TimeoutLayer;

use super::authority::LocalCa;
use super::files::CaDir;
use super::store::{RevocationReason, RevokeTarget};
use crank_runtime::api::{
    CRL_PATH, ISSUE_PATH, IssueBody, RENEW_PATH, REVOKE_PATH, RenewBody, RevokeAnswer, RevokeBody, Revoked,
    TRUST_BUNDLE_PATH,
};
use crank_runtime::probe::Readiness;
use crank_runtime::tls::{Credentials, PeerIdentity, Resumption, server_config};
use crank_runtime::trust::TrustStore;
use crank_runtime::{ApiError, ConnectionLimits, ServerHandle};

use crate::answers::{Issued, api_error, correlation, issued, json_error};
use crate::error::SetupError;
use crate::key_rotation::{KeyPurpose, keep_fresh};

/// The capability of revoking certificates at the CA (administrators, and workers
/// granted it, under the default policy).
pub const REVOKE_CAPABILITY: &str = "ca.revoke";

pub use crate::answers::MAX_BODY_BYTES;
/// Longest time a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default listen address of `crank ca serve`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9090";

/// The CA API router.
pub fn router(ca: Arc<LocalCa>) -> Router {
    routes(ca, None, None)
}

/// The CA API router; its cached access decisions are dropped whenever
/// `trust_changes` moves (the serving trust store's CRL and roots).
fn routes(
    ca: Arc<LocalCa>,
    trust_changes: Option<tokio::sync::watch::Receiver<u64>>,
    platform: Option<crate::console::PlatformSource>,
) -> Router {
    let metrics = ca.metrics().clone();
    let access = ca.access_control();
    let access = Arc::new(match trust_changes {
        Some(changes) => access.with_trust_changes(changes),
        None => access,
    });
    let metrics_route = access.protect(
        Some(crank_runtime::METRICS_CAPABILITY),
        Router::new().route("/metrics", get(crank_runtime::metrics::handler)).with_state(metrics.clone()),
    );
    let revoke_route =
        access.protect(Some(REVOKE_CAPABILITY), Router::new().route(REVOKE_PATH, post(revoke)).with_state(ca.clone()));
    let console =
        access.protect(Some(crate::console::CONSOLE_CAPABILITY), crate::console::routes(ca.clone(), platform));
    let ca_for_agents = ca.clone();
    Router::new()
        .route("/health", get(health))
        .route(TRUST_BUNDLE_PATH, get(trust_bundle))
        .route(ISSUE_PATH, post(issue))
        .route(RENEW_PATH, post(renew))
        .route(CRL_PATH, get(crl))
        .with_state(ca)
        .merge(revoke_route)
        .merge(metrics_route)
        .merge(console)
        .merge(crate::agent_api::routes(ca_for_agents, &access))
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        // Outermost, so requests that time out are counted (408).
        .layer(axum::middleware::from_fn_with_state(metrics, crank_runtime::metrics::track))
}

/// Starts the CA service on `listener` with the TLS certificate from `dir`, within
/// `limits` (no probe listener, certificates renewed for [`SERVER_VALIDITY`](crate::SERVER_VALIDITY)).
pub fn spawn(
    dir: &CaDir,
    listener: tokio::net::TcpListener,
    ca: Arc<LocalCa>,
    limits: ConnectionLimits,
) -> Result<ServerHandle, SetupError> {
    Ok(spawn_service(dir, listener, ca, limits, ServeOptions::default())?.server)
}

/// What the CA service runs beside its mTLS listener.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// Serves `/livez` and `/readyz` here over TLS, asking for no client certificate
    /// (`crank ca serve --probe-port`, or `CRANK_PROBE_PORT`).
    pub probe: Option<tokio::net::TcpListener>,
    /// Validity of the TLS certificates the CA issues itself (`--tls-validity`; default
    /// [`SERVER_VALIDITY`](crate::SERVER_VALIDITY)). It renews its certificate when a
    /// third of that is left.
    pub tls_validity: Option<time::Duration>,
    /// Where the console finds the platform registry's workers.
    pub platform: Option<crate::console::PlatformSource>,
    /// Age at which the join-token key is replaced (`--token-key-max-age`; default
    /// [`DEFAULT_TOKEN_KEY_MAX_AGE`](crate::token_key::DEFAULT_TOKEN_KEY_MAX_AGE)).
    pub token_key_max_age: Option<std::time::Duration>,
    /// Age at which the JWT-SVID key is replaced (`--jwt-key-max-age`; default
    /// [`DEFAULT_JWT_KEY_MAX_AGE`](crate::jwt_svid::DEFAULT_JWT_KEY_MAX_AGE)).
    pub jwt_key_max_age: Option<std::time::Duration>,
}

/// The CA service: its mTLS listener and, if asked for, its probe listener.
#[derive(Debug)]
pub struct CaService {
    /// The API (mTLS).
    pub server: ServerHandle,
    /// The probes, if a listener was given.
    pub probe: Option<ServerHandle>,
}

impl CaService {
    /// Stops both listeners and waits for open connections to finish.
    pub async fn shutdown(self) -> std::io::Result<()> {
        if let Some(probe) = self.probe {
            probe.shutdown().await?;
        }
        self.server.shutdown().await
    }
}

/// Starts the CA service on `listener` within `limits`, with what `options` add. Its TLS
/// certificate is renewed before it expires and swapped in without a restart, and its
/// join-token and JWT-SVID keys are replaced when they reach their maximum age.
pub fn spawn_service(
    dir: &CaDir,
    listener: tokio::net::TcpListener,
    ca: Arc<LocalCa>,
    limits: ConnectionLimits,
    options: ServeOptions,
) -> Result<CaService, SetupError> {
    if dir.ensure_service_identity()? {
        tracing::warn!(
            spiffe_id = %ca.trust_domain().ca_spiffe_id(),
            "the CA service's TLS certificate lacked the CA identity that workers require; reissued it with the same names"
        );
    }
    let validity = options.tls_validity.unwrap_or(crate::SERVER_VALIDITY);
    let root = ca.trust_bundle_pem().as_bytes().to_vec();
    let bundle = crate::service_tls::load_or_reissue(dir, &root, validity)?;
    let creds = Credentials::new(bundle.certified_key()?);
    ca.metrics().set_certificate_expiry(bundle.metadata().not_after);
    let roots = parse_pem_certs("root certificate", &root)?;
    let trust = TrustStore::new(&roots)?;
    let config = server_config(&trust, false, creds.clone(), Resumption::On)?;
    tokio::spawn(enforce_own_crl(Arc::downgrade(&trust), ca.clone()));
    tokio::spawn(crate::service_tls::keep_fresh(dir.clone(), ca.clone(), Arc::downgrade(&creds), validity));
    let token_key_max_age = options.token_key_max_age.unwrap_or(crate::token_key::DEFAULT_TOKEN_KEY_MAX_AGE);
    tokio::spawn(keep_fresh(dir.clone(), Arc::downgrade(&ca), KeyPurpose::JoinToken, token_key_max_age));
    let jwt_key_max_age = options.jwt_key_max_age.unwrap_or(crate::jwt_svid::DEFAULT_JWT_KEY_MAX_AGE);
    tokio::spawn(keep_fresh(dir.clone(), Arc::downgrade(&ca), KeyPurpose::JwtSvid, jwt_key_max_age));
    let refresh = crate::jwt_svid::bundle_refresh(jwt_key_max_age);
    tokio::spawn(crate::jwt_svid::keep_bundle_fresh(Arc::downgrade(&ca), refresh));
    let metrics = ca.metrics().connections();
    let router = routes(ca.clone(), Some(trust.changes()), options.platform);
    let server = ServerHandle::spawn(listener, config, router, limits, metrics, Some(trust.clone()))
        .map_err(SetupError::Serve)?;
    tokio::spawn(crate::console::replica_heartbeats(ca.clone(), server.addr().to_string()));
    let probe = match options.probe {
        Some(listener) => {
            let store = ca.clone();
            let crl = ca.crl_updates();
            let readiness = Readiness::new()
                .certificate(creds.clone())
                .trust(trust)
                .check("crl", move || crl_problem(crl.borrow().as_deref()))
                .check_async("store", move || {
                    let store = store.clone();
                    async move { store.store().ping().await.map_err(|e| format!("the store does not answer: {e}")) }
                })
                .listener(server.serving());
            Some(
                crank_runtime::probe::spawn(listener, creds, readiness)
                    .map_err(|e| SetupError::NotReady { message: e.to_string(), source: None })?,
            )
        }
        None => None,
    };
    Ok(CaService { server, probe })
}

/// Why the CA's own CRL makes it not ready: none signed yet, or past its nextUpdate.
fn crl_problem(crl: Option<&crate::SignedCrl>) -> Result<(), String> {
    match crl {
        None => Err("no CRL signed yet".into()),
        Some(c) if c.next_update <= time::OffsetDateTime::now_utc() => {
            Err(format!("the CRL in force (number {}) is stale: its nextUpdate was {}", c.number, c.next_update))
        }
        Some(_) => Ok(()),
    }
}

/// How often the CA looks for revocations made at other replicas of its store.
pub const OWN_CRL_REFRESH: Duration = Duration::from_secs(10);

/// Keeps the CA's own client verifier on its current CRL: a revoked worker or
/// administrator is refused in the handshake here too (renewal, `/metrics`,
/// revocation). Ends when the server's trust store is gone.
async fn enforce_own_crl(trust: std::sync::Weak<TrustStore>, ca: Arc<LocalCa>) {
    let mut updates = ca.crl_updates();
    loop {
        // Picks up revocations recorded by other replicas (and regenerates when due).
        let crl = match ca.crl().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "the CA's own CRL could not be refreshed; the last one stays in force");
                updates.borrow().clone()
            }
        };
        let Some(trust) = trust.upgrade() else { return };
        if let Some(crl) = crl
            && let Err(e) = trust.set_crls(vec![crl.der.clone().into()])
        {
            tracing::warn!(error = %e, "the CA's own CRL could not be installed");
        }
        drop(trust);
        tokio::select! {
            () = tokio::time::sleep(OWN_CRL_REFRESH) => {}
            r = updates.changed() => if r.is_err() { return },
        }
    }
}

/// Binds `listen` and starts the CA service with the default [`ConnectionLimits`].
pub async fn bind_and_spawn(dir: &CaDir, listen: SocketAddr, ca: Arc<LocalCa>) -> Result<ServerHandle, SetupError> {
    bind_and_spawn_with(dir, listen, ca, ConnectionLimits::default()).await
}

/// Binds `listen` and starts the CA service within `limits`.
pub async fn bind_and_spawn_with(
    dir: &CaDir,
    listen: SocketAddr,
    ca: Arc<LocalCa>,
    limits: ConnectionLimits,
) -> Result<ServerHandle, SetupError> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|source| SetupError::Listen { addr: listen, source })?;
    spawn(dir, listener, ca, limits)
}

async fn health(State(ca): State<Arc<LocalCa>>) -> (StatusCode, Json<serde_json::Value>) {
    let backend = ca.store().backend();
    match tokio::time::timeout(Duration::from_secs(3), ca.store().ping()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(serde_json::json!({"status": "healthy", "store": backend}))),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "degraded", "store": backend, "error": e.to_string()})),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"status": "degraded", "store": backend, "error": "the store did not answer within 3 s"}),
            ),
        ),
    }
}

async fn crl(State(ca): State<Arc<LocalCa>>) -> Result<impl IntoResponse, ApiError> {
    let crl = ca.crl().await.map_err(api_error)?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], crl.der.clone()))
}

async fn revoke(
    State(ca): State<Arc<LocalCa>>,
    connection: Option<axum::Extension<Arc<crank_runtime::tls::Connection>>>,
    headers: HeaderMap,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Json<RevokeAnswer>, ApiError> {
    let Some(certificate) = connection.as_ref().and_then(|c| c.certificate.as_ref()) else {
        return Err(ApiError::unauthorized(
            "client_certificate_required",
            "revocation needs an administrator client certificate (`crank ca admin-cert`)",
        ));
    };
    let who = ca.revoker_of(certificate).await.map_err(api_error)?;
    let Json(body) = body.map_err(json_error)?;
    let cid = correlation(&headers);
    let name = |w: String| WorkerId::new(w).map_err(|e| ApiError::bad_request("bad_worker_id", e.to_string()));
    let target = match (body.serial, body.worker_id, body.admin) {
        (Some(s), None, None) => RevokeTarget::Serial(s.trim().to_ascii_lowercase()),
        (None, Some(w), None) => RevokeTarget::Worker(name(w)?.to_string()),
        (None, None, Some(a)) => RevokeTarget::Admin(name(a)?.to_string()),
        _ => {
            return Err(ApiError::bad_request(
                "bad_target",
                "give exactly one of \"serial\", \"worker_id\" and \"admin\"",
            ));
        }
    };
    let reason: RevocationReason = body.reason.parse().map_err(|e: String| ApiError::bad_request("bad_reason", e))?;
    let records = ca.revoke(target, reason, &who, &cid).await.map_err(api_error)?;
    let crl_number = ca.crl().await.ok().map(|c| c.number);
    let revoked = records.into_iter().map(Revoked::from).collect();
    Ok(Json(RevokeAnswer { revoked, crl_number }))
}

async fn trust_bundle(State(ca): State<Arc<LocalCa>>) -> Result<impl IntoResponse, ApiError> {
    let pem = ca.trust_bundle().await?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem))
}

async fn issue(
    State(ca): State<Arc<LocalCa>>,
    headers: HeaderMap,
    body: Result<Json<IssueBody>, JsonRejection>,
) -> Result<Issued, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let cid = correlation(&headers);
    tracing::debug!(correlation_id = %cid, "issuance request");
    let cert = ca.issue(IssueRequest { csr_pem: body.csr, token: body.token, correlation_id: cid.clone() }).await?;
    Ok(issued(&cid, cert))
}

async fn renew(
    State(ca): State<Arc<LocalCa>>,
    peer: PeerIdentity,
    headers: HeaderMap,
    body: Result<Json<RenewBody>, JsonRejection>,
) -> Result<Issued, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let cid = correlation(&headers);
    if &peer.spiffe_id.trust_domain != ca.trust_domain() {
        return Err(ApiError::unauthorized("foreign_trust_domain", "client certificate is from another trust domain"));
    }
    let req = RenewRequest {
        csr_pem: body.csr,
        worker_id: peer.worker_id().to_owned(),
        current_serial: peer.serial.clone(),
        current_fingerprint: Some(crank_security_core::fingerprint_sha256(&peer.certificate)),
        correlation_id: cid.clone(),
    };
    let cert = ca.renew(req).await?;
    Ok(issued(&cid, cert))
}
