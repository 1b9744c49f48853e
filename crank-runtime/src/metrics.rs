//! Prometheus metrics (prometheus-client, OpenMetrics text format), fed by lifecycle
//! events through [`PrometheusSink`] and by a request-tracking middleware. Served at
//! `/metrics` to callers that policy allows the capability `metrics.read` (by default:
//! administrators, and workers granted it).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `crank_cert_expiration_seconds` | gauge | seconds until this process's certificate expires |
//! | `crank_cert_issuance_total` | counter | certificates issued (CA) or obtained (worker) |
//! | `crank_cert_renewal_total` | counter | successful renewals |
//! | `crank_cert_errors_total{type}` | counter | failures by event type (`csr_failed`, `cert_validation_failed`, `cert_expired`, `cert_revoked`, `ca_unavailable`) |
//! | `crank_ca_unavailable_total` | counter | times the CA could not be reached |
//! | `crank_http_requests_total{method,route,status}` | counter | HTTP requests served |
//! | `crank_http_request_duration_seconds{method,route}` | histogram | request latency |
//! | `crank_http_requests_in_flight` | gauge | requests being served (the heartbeat's load score) |
//! | `crank_crl_next_update_seconds` | gauge | seconds until the worker's CRL passes its nextUpdate (negative once stale) |
//! | `crank_crl_stale` | gauge | 1 while the worker has no CRL, or only a stale one |
//! | `crank_connections_open` | gauge | TLS connections open (handshaking or serving) |
//! | `crank_connections_refused_total{reason}` | counter | new connections closed at once: `max_connections`, `max_connections_per_ip` |
//! | `crank_connections_closed_total{reason}` | counter | connections ended: `handshake_timeout`, `handshake_failed`, `header_timeout`, `keepalive_timeout`, `idle_timeout`, `max_age`, `shutdown`, `closed`, `error`, `revoked` (its client certificate was revoked) |
//! | `crank_connection_accept_errors_total` | counter | failed accepts (e.g. out of file descriptors) |
//! | `crank_requests_shed_total` | counter | requests answered 503 at once because `max_in_flight_requests` were being served |
//! | `crank_access_decisions_total{capability,decision}` | counter | `can_access_capability` decisions: `allow`, `deny`, `error` (the engine failed: denied), `limited` (allowed, over the rate limit: 429) |
//!
//! Every label comes from a fixed set, never from what a client sends: `method` is one of
//! GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS or `other`; `route` is the route that
//! matched (as declared, with its `{parameters}`) or `unmatched`; `status` is the status
//! code the server answered with.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use crank_security_core::{CertificateEvent, EventKind, EventSink};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::server::ConnectionMetrics;

/// The `method` label values besides `other`.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccessLabels {
    capability: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: &'static str,
    route: String,
}

/// The metrics of one process.
pub struct Metrics {
    registry: Registry,
    expiration: Gauge,
    issuance: Counter,
    renewal: Counter,
    errors: Family<ErrorLabels, Counter>,
    ca_unavailable: Counter,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    in_flight: Gauge,
    access: Family<AccessLabels, Counter>,
    shed: Counter,
    connections: ConnectionMetrics,
    /// Unix time of the current certificate's expiry (0: none yet).
    not_after: AtomicI64,
    /// Where the current expiry is read at scrape time, when set.
    expiry_source: std::sync::OnceLock<ExpirySource>,
    crl_next_update: Gauge,
    crl_stale: Gauge,
    /// Where the CRL's nextUpdate (Unix seconds) is read at scrape time, when set.
    crl_source: std::sync::OnceLock<CrlSource>,
}

type CrlSource = Box<dyn Fn() -> Option<i64> + Send + Sync>;

type ExpirySource = Box<dyn Fn() -> time::OffsetDateTime + Send + Sync>;

impl Metrics {
    /// A fresh registry with every crank metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let expiration = Gauge::default();
        registry.register(
            "crank_cert_expiration_seconds",
            "Seconds until this process's certificate expires",
            expiration.clone(),
        );
        let issuance = Counter::default();
        registry.register("crank_cert_issuance", "Certificates issued or obtained", issuance.clone());
        let renewal = Counter::default();
        registry.register("crank_cert_renewal", "Successful certificate renewals", renewal.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("crank_cert_errors", "Certificate errors by type", errors.clone());
        let ca_unavailable = Counter::default();
        registry.register("crank_ca_unavailable", "Times the CA could not be reached", ca_unavailable.clone());
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("crank_http_requests", "HTTP requests served", requests.clone());
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.5, 12))
        });
        registry.register("crank_http_request_duration_seconds", "HTTP request latency", latency.clone());
        let in_flight = Gauge::default();
        registry.register("crank_http_requests_in_flight", "HTTP requests being served", in_flight.clone());
        let shed = Counter::default();
        registry.register("crank_requests_shed", "Requests shed with 503: too many in flight", shed.clone());
        let access = Family::<AccessLabels, Counter>::default();
        registry.register("crank_access_decisions", "Capability access decisions", access.clone());
        let crl_next_update = Gauge::default();
        registry.register(
            "crank_crl_next_update_seconds",
            "Seconds until the CRL in force passes its nextUpdate (negative: stale)",
            crl_next_update.clone(),
        );
        let crl_stale = Gauge::default();
        registry.register("crank_crl_stale", "1 while this worker has no current CRL", crl_stale.clone());
        let connections = ConnectionMetrics::default();
        connections.register(&mut registry);
        Arc::new(Self {
            registry,
            crl_next_update,
            crl_stale,
            crl_source: std::sync::OnceLock::new(),
            expiration,
            issuance,
            renewal,
            errors,
            ca_unavailable,
            requests,
            latency,
            in_flight,
            access,
            shed,
            connections,
            not_after: AtomicI64::new(0),
            expiry_source: std::sync::OnceLock::new(),
        })
    }

    /// Records the expiry of this process's current certificate.
    pub fn set_certificate_expiry(&self, not_after: time::OffsetDateTime) {
        self.not_after.store(not_after.unix_timestamp(), Ordering::Relaxed);
    }

    /// The connection metrics, for [`ServerHandle::spawn`](crate::ServerHandle::spawn).
    pub fn connections(&self) -> ConnectionMetrics {
        self.connections.clone()
    }

    /// Counts a capability access decision (`capability` is the route's, or `none`).
    pub fn access_decision(&self, capability: &str, decision: &'static str) {
        self.access.get_or_create(&AccessLabels { capability: capability.to_owned(), decision }).inc();
    }

    /// The counter of one (capability, decision), to count into without looking it up
    /// each time.
    pub(crate) fn access_counter(&self, capability: &str, decision: &'static str) -> Counter {
        self.access.get_or_create(&AccessLabels { capability: capability.to_owned(), decision }).clone()
    }

    /// Requests being served right now (the worker's load score).
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Reads the certificate expiry from `source` at every scrape (e.g. the rotator's
    /// current certificate). Only the first call takes effect.
    pub fn set_expiry_source(&self, source: impl Fn() -> time::OffsetDateTime + Send + Sync + 'static) {
        let _ = self.expiry_source.set(Box::new(source));
    }

    /// Reads the nextUpdate of the CRL in force from `source` at every scrape (`None`:
    /// no CRL yet). Only the first call takes effect.
    pub fn set_crl_source(&self, source: impl Fn() -> Option<i64> + Send + Sync + 'static) {
        let _ = self.crl_source.set(Box::new(source));
    }

    /// The metrics in OpenMetrics text format.
    pub fn render(&self) -> String {
        if let Some(source) = self.crl_source.get() {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let next = source();
            self.crl_next_update.set(next.map_or(0, |n| n - now));
            self.crl_stale.set(i64::from(next.is_none_or(|n| n <= now)));
        }
        if let Some(source) = self.expiry_source.get() {
            self.set_certificate_expiry(source());
        }
        let not_after = self.not_after.load(Ordering::Relaxed);
        if not_after != 0 {
            self.expiration.set(not_after - time::OffsetDateTime::now_utc().unix_timestamp());
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn observe(&self, event: &CertificateEvent) {
        let error = |t: &str| {
            self.errors.get_or_create(&ErrorLabels { r#type: t.to_owned() }).inc();
        };
        match event.event {
            EventKind::CertIssued => {
                self.issuance.inc();
            }
            EventKind::CertRenewed => {
                self.renewal.inc();
            }
            EventKind::CaUnavailable => {
                self.ca_unavailable.inc();
                error("ca_unavailable");
            }
            EventKind::CsrFailed => error("csr_failed"),
            EventKind::CertValidationFailed => error("cert_validation_failed"),
            EventKind::CertExpired => error("cert_expired"),
            EventKind::CertRevoked => error("cert_revoked"),
            EventKind::CsrGenerated
            | EventKind::CsrSubmitted
            | EventKind::CertExpiringSoon
            | EventKind::AccessDenied => {}
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

/// An [`EventSink`] that counts events into [`Metrics`].
#[derive(Debug, Clone)]
pub struct PrometheusSink(pub Arc<Metrics>);

impl EventSink for PrometheusSink {
    fn emit(&self, event: &CertificateEvent) {
        self.0.observe(event);
    }
}

/// A request in flight until dropped: when its response is ready, or when it is dropped
/// before (a timeout, a client gone).
struct InFlight(Gauge);

impl InFlight {
    fn start(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware counting requests and their latency. Labels come from fixed sets (see the
/// module docs), so no request can add series.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = METHODS.into_iter().find(|m| *m == req.method().as_str()).unwrap_or("other");
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let in_flight = InFlight::start(&metrics.in_flight);
    let response = next.run(req).await;
    drop(in_flight);
    let status = response.status().as_u16();
    let labels = LatencyLabels { method, route };
    metrics.latency.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    let LatencyLabels { method, route } = labels;
    metrics.requests.get_or_create(&RequestLabels { method, route, status }).inc();
    response
}

/// Middleware shedding load: past `limit` requests in flight (counted by [`track`],
/// which must run outside it), a request is answered 503 with `Retry-After: 1` at once
/// and counted in `crank_requests_shed_total`.
pub async fn shed(State((metrics, limit)): State<(Arc<Metrics>, usize)>, req: Request, next: Next) -> Response {
    if usize::try_from(metrics.in_flight()).unwrap_or(0) > limit {
        metrics.shed.inc();
        let body = crate::api::ErrorBody {
            error: crate::api::ErrorDetail {
                code: "overloaded".into(),
                message: format!("this worker is serving {limit} requests already; retry shortly"),
                capability: None,
            },
        };
        let mut r = (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        r.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return r;
    }
    next.run(req).await
}

/// `GET /metrics`. Serve it behind [`AccessControl`](crate::AccessControl) with the
/// capability [`METRICS_CAPABILITY`](crate::METRICS_CAPABILITY), as workers and the CA
/// do.
pub async fn handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.render())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;
    use tower_http::timeout::TimeoutLayer;

    use super::*;

    #[tokio::test]
    async fn a_request_dropped_by_the_timeout_is_no_longer_in_flight() {
        let metrics = Metrics::new();
        let app = Router::new()
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(30))))
            .layer(axum::middleware::from_fn_with_state(metrics.clone(), track))
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_millis(50)));
        let response = app.oneshot(Request::get("/slow").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(metrics.in_flight(), 0);
    }

    #[tokio::test]
    async fn made_up_methods_are_counted_as_other_in_one_series() {
        let metrics = Metrics::new();
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(metrics.clone(), track));
        for i in 0..50 {
            let req = Request::builder().method(format!("M{i}").as_str()).uri("/health").body(Body::empty()).unwrap();
            assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
        }
        let text = metrics.render();
        let series: Vec<_> = text.lines().filter(|l| l.starts_with("crank_http_requests_total{")).collect();
        assert_eq!(series, [r#"crank_http_requests_total{method="other",route="/health",status="405"} 50"#], "{text}");
    }
}
