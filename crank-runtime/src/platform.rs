//! The platform registry and the worker heartbeat.
//!
//! `crank platform serve` runs a small registry over mTLS (itself a worker with its own
//! certificate). Workers register and then send a heartbeat every interval as form data
//! (`service_type`, `load_score`, as the original platform expects). The registry records
//! each worker by the identity in its **verified client certificate**; any identity a
//! worker claims in the form is ignored. `GET /v1/workers` lists workers with their
//! last-seen time and certificate expiry; workers silent for longer than the expiry
//! window are dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use crank_security_core::{CertMetadata, rfc3339};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;

use crate::ApiError;
use crate::tls::PeerIdentity;

/// Default platform port.
pub const DEFAULT_PLATFORM_PORT: u16 = 8443;
/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// A heartbeat or registration form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatForm {
    /// The kind of service (e.g. the service name).
    pub service_type: String,
    /// How busy the worker is (in-flight requests).
    #[serde(default)]
    pub load_score: f64,
}

/// One registered worker, as listed by `GET /v1/workers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerRecord {
    /// From the verified client certificate.
    pub worker_id: String,
    /// From the verified client certificate.
    pub spiffe_id: String,
    /// Serial of the certificate last seen.
    pub serial: String,
    /// Expiry of that certificate, RFC 3339.
    pub cert_not_after: String,
    /// Reported service type.
    pub service_type: String,
    /// Reported load.
    pub load_score: f64,
    /// First registration, RFC 3339.
    pub registered_at: String,
    /// Last heartbeat, RFC 3339.
    pub last_seen: String,
    #[serde(skip)]
    last_seen_at: Option<OffsetDateTime>,
}

/// The registry's state.
#[derive(Debug, Clone)]
pub struct Registry {
    workers: Arc<Mutex<BTreeMap<String, WorkerRecord>>>,
    expire_after: Duration,
}

impl Registry {
    /// A registry dropping workers silent for longer than `expire_after`.
    pub fn new(expire_after: Duration) -> Self {
        Self { workers: Arc::default(), expire_after }
    }

    fn record(&self, peer: &PeerIdentity, form: HeartbeatForm) -> Result<WorkerRecord, ApiError> {
        let meta = CertMetadata::from_der(&peer.certificate)
            .map_err(|e| ApiError::bad_request("bad_certificate", e.to_string()))?;
        if !form.load_score.is_finite() || form.load_score < 0.0 {
            return Err(ApiError::bad_request("bad_load_score", "load_score must be a non-negative number"));
        }
        let now = OffsetDateTime::now_utc();
        let mut workers = self.workers.lock().map_err(|_| ApiError::unavailable("registry lock poisoned"))?;
        let key = peer.spiffe_id.to_string();
        let registered_at = workers.get(&key).map_or_else(|| rfc3339(now), |w| w.registered_at.clone());
        let record = WorkerRecord {
            worker_id: peer.worker_id().to_owned(),
            spiffe_id: key.clone(),
            serial: meta.serial,
            cert_not_after: rfc3339(meta.not_after),
            service_type: form.service_type,
            load_score: form.load_score,
            registered_at,
            last_seen: rfc3339(now),
            last_seen_at: Some(now),
        };
        workers.insert(key, record.clone());
        Ok(record)
    }

    /// Drops workers silent for longer than the expiry window; returns how many.
    pub fn expire(&self) -> usize {
        let now = OffsetDateTime::now_utc();
        let Ok(mut workers) = self.workers.lock() else { return 0 };
        let before = workers.len();
        workers.retain(|_, w| w.last_seen_at.is_some_and(|t| now - t <= self.expire_after));
        before - workers.len()
    }

    /// The live workers.
    pub fn list(&self) -> Vec<WorkerRecord> {
        self.expire();
        self.workers.lock().map(|w| w.values().cloned().collect()).unwrap_or_default()
    }
}

/// The capability of registering with the registry (open to every worker of the trust
/// domain under the default policy).
pub const REGISTER_CAPABILITY: &str = "platform.register";
/// The capability of sending heartbeats (open to every worker of the trust domain under
/// the default policy).
pub const HEARTBEAT_CAPABILITY: &str = "platform.heartbeat";
/// The capability of listing the registered workers (administrators and workers granted
/// it, under the default policy).
pub const LIST_CAPABILITY: &str = "platform.workers.read";

/// `app` serving the registry: each route behind its capability, decided by the app's
/// policy like any other request.
pub fn serve_on(app: crate::WorkerApplication, registry: Registry) -> crate::WorkerApplication {
    app.capability(
        REGISTER_CAPABILITY,
        Router::new().route("/v1/workers/register", post(beat)).with_state(registry.clone()),
    )
    .capability(
        HEARTBEAT_CAPABILITY,
        Router::new().route("/v1/workers/heartbeat", post(beat)).with_state(registry.clone()),
    )
    .capability(LIST_CAPABILITY, Router::new().route("/v1/workers", get(list)).with_state(registry))
}

async fn beat(
    State(registry): State<Registry>,
    peer: PeerIdentity,
    form: Result<Form<HeartbeatForm>, axum::extract::rejection::FormRejection>,
) -> Result<Json<WorkerRecord>, ApiError> {
    let Form(form) = form.map_err(|e| {
        let mut err = ApiError::bad_request(
            "invalid_form",
            format!("expected form fields service_type and load_score: {}", e.body_text()),
        );
        err.status = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
        err
    })?;
    Ok(Json(registry.record(&peer, form)?))
}

async fn list(State(registry): State<Registry>, _peer: PeerIdentity) -> Json<Vec<WorkerRecord>> {
    Json(registry.list())
}

/// Sweeps silent workers every second until the process ends.
pub fn spawn_sweeper(registry: Registry) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let dropped = registry.expire();
            if dropped > 0 {
                tracing::info!(dropped, "expired silent workers");
            }
        }
    });
}

/// Registers with the platform and sends heartbeats every `interval` until `stop`.
/// Failures are logged and retried at the next beat; they never stop the worker.
pub async fn heartbeat_loop(
    client: crate::MtlsHttpClient,
    platform: Url,
    service_type: String,
    interval: Duration,
    load: impl Fn() -> f64 + Send,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut path = "/v1/workers/register";
    loop {
        let form = HeartbeatForm { service_type: service_type.clone(), load_score: load() };
        match platform.join(path) {
            Ok(url) => match client.post(url).form(&form).send().await {
                Ok(r) if r.status().is_success() => path = "/v1/workers/heartbeat",
                Ok(r) => tracing::warn!(status = %r.status(), %platform, "platform refused the heartbeat"),
                Err(e) => tracing::warn!(error = %e, %platform, "heartbeat failed"),
            },
            Err(e) => tracing::warn!(error = %e, "bad PLATFORM_URL"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}
