//! The HTTP stack a worker serves its routes with.
//!
//! ```text
//!  request ─► track (metrics, in flight)    around the whole router: every answer counted
//!          ─► routing
//!          ─► per route, one level: shed (503 past the bound in flight) ─► timeout (408)
//!             ─► body limit ─► the handler's extension ─► the access check ─► handler
//!             (also for what routing answers itself, 404 and 405, and for a fallback
//!             handler: checked with the group that names no capability, or with the
//!             fallback's own group)
//! ```
//!
//! axum boxes each route once per layer call (`Router::layer`, `Router::route_layer`),
//! and each level costs a clone and a boxed future per request. So the layers every
//! route has are applied to each route group in one call, together with the group's
//! access check: a request goes through one level for all of them, whether the check
//! is there or not.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::{Extension, Router};
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

use crate::access::AccessControl;
use crate::metrics::{self, Metrics};

/// The largest request body a handler reads: 1 MiB.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// How long a request may take before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The worker's router: each group of `groups` (its capability, `None` for routes that
/// name none, and its routes) behind `access` (when given), with request metrics, load
/// shedding past `max_in_flight` requests, [`REQUEST_TIMEOUT`], [`MAX_REQUEST_BODY`], and
/// `extension` for the handlers to extract. [`WorkerApplication`](crate::WorkerApplication)
/// serves this; `access: None` is the same stack without the capability check (for
/// measuring what the check costs).
pub fn worker_router<T>(
    groups: Vec<(Option<String>, Router)>,
    access: Option<&Arc<AccessControl>>,
    metrics: &Arc<Metrics>,
    max_in_flight: usize,
    extension: T,
) -> Router
where
    T: Clone + Send + Sync + 'static,
{
    let per_route = ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state((metrics.clone(), max_in_flight), metrics::shed))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .layer(Extension(extension));
    let layered = |(capability, routes): (Option<String>, Router)| match access {
        Some(access) => access.protect_within(capability.as_deref(), routes, per_route.clone()),
        None => routes.with_state(()).layer(per_route.clone()),
    };
    // Each group's fallbacks are layered with it, and axum keeps the last group's default
    // fallback when it merges: the group that names no capability goes last, so that a
    // path no route serves is checked as an undeclared route. A fallback handler set on
    // a group (one at most) wins, behind its own group's check.
    let (undeclared, declared): (Vec<_>, Vec<_>) = groups.into_iter().partition(|(c, _)| c.is_none());
    let router = declared.into_iter().chain(undeclared).map(layered).reduce(|a, b| a.merge(b)).unwrap_or_default();
    // Outermost, so requests that time out are counted (408), and so are answers routing
    // gives itself (404, 405).
    router.layer(axum::middleware::from_fn_with_state(metrics.clone(), metrics::track))
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, Bytes};
    use axum::http::Request;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    use super::*;

    /// Routes that read a body, the extension, and take a minute.
    fn routes() -> Router {
        Router::new()
            .route("/echo", post(|body: Bytes| async move { body.len().to_string() }))
            .route("/who", get(|Extension(who): Extension<&'static str>| async move { who }))
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(60))))
    }

    async fn status(app: &Router, req: Request<Body>) -> StatusCode {
        app.clone().oneshot(req).await.unwrap().status()
    }

    fn get_req(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn every_route_gets_the_limits_the_extension_and_the_metrics_and_routing_answers_are_counted() {
        let metrics = Metrics::new();
        let app = worker_router(vec![(None, routes())], None, &metrics, 16, "the-worker");
        let who = app.clone().oneshot(get_req("/who")).await.unwrap();
        assert_eq!(who.status(), StatusCode::OK);
        assert_eq!(axum::body::to_bytes(who.into_body(), 64).await.unwrap(), "the-worker");
        let small = Request::post("/echo").body(Body::from(vec![0u8; 1024])).unwrap();
        assert_eq!(status(&app, small).await, StatusCode::OK);
        let big = Request::post("/echo").body(Body::from(vec![0u8; MAX_REQUEST_BODY + 1])).unwrap();
        assert_eq!(status(&app, big).await, StatusCode::PAYLOAD_TOO_LARGE);
        // The clock is paused: the minute-long handler meets the 30 s timeout at once.
        assert_eq!(status(&app, get_req("/slow")).await, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(status(&app, get_req("/nowhere")).await, StatusCode::NOT_FOUND);
        assert_eq!(
            status(&app, Request::delete("/who").body(Body::empty()).unwrap()).await,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let rendered = metrics.render();
        for (route, code) in [("/who", 200), ("/echo", 413), ("/slow", 408), ("unmatched", 404), ("/who", 405)] {
            assert!(
                rendered.lines().any(|l| l.starts_with("crank_http_requests_total{")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("status=\"{code}\""))),
                "{route} {code} not counted:\n{rendered}"
            );
        }
        assert_eq!(metrics.in_flight(), 0);
    }

    #[tokio::test]
    async fn past_the_bound_in_flight_requests_are_shed_before_the_check() {
        let metrics = Metrics::new();
        // Every request is in flight itself: a bound of 0 sheds them all, with or without
        // the check, and before it (no client certificate here, which the check refuses).
        let access = builtin_access();
        for access in [None, Some(&access)] {
            let app = worker_router(vec![(None, routes())], access, &metrics, 0, "w");
            let shed = app.clone().oneshot(get_req("/who")).await.unwrap();
            assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(shed.headers()[axum::http::header::RETRY_AFTER], "1");
        }
        // Within the bound, the check answers: no client certificate. Also for what
        // routing answers itself: no path or method is found out without passing it.
        let app = worker_router(vec![(Some("email.send".into()), routes())], Some(&access), &metrics, 16, "w");
        for req in [get_req("/who"), get_req("/nowhere"), Request::delete("/who").body(Body::empty()).unwrap()] {
            assert_eq!(status(&app, req).await, StatusCode::UNAUTHORIZED);
        }
    }

    #[tokio::test]
    async fn a_fallback_set_on_a_group_is_behind_the_groups_layers_and_check() {
        let metrics = Metrics::new();
        let files = || {
            Router::new()
                .route("/files/index", get(|| async { "index" }))
                .fallback(|Extension(who): Extension<&'static str>| async move { who })
        };
        let groups = || {
            vec![
                (None, routes()),
                (Some("files.read".to_owned()), files()),
                (Some("metrics.read".to_owned()), Router::new().route("/metrics", get(|| async { "m" }))),
            ]
        };
        // Without the check: the fallback serves unknown paths, with the extension.
        let app = worker_router(groups(), None, &metrics, 16, "the-worker");
        let r = app.clone().oneshot(get_req("/anything")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(axum::body::to_bytes(r.into_body(), 64).await.unwrap(), "the-worker");
        assert_eq!(status(&app, get_req("/files/index")).await, StatusCode::OK);
        // With it: the fallback is checked like its group's routes.
        let access = builtin_access();
        let app = worker_router(groups(), Some(&access), &metrics, 16, "the-worker");
        assert_eq!(status(&app, get_req("/anything")).await, StatusCode::UNAUTHORIZED);
        // A worker of the trust domain granted nothing: the undeclared routes serve it,
        // `/metrics` and the files (their fallback included) refuse it.
        for (path, code) in
            [("/who", StatusCode::OK), ("/metrics", StatusCode::FORBIDDEN), ("/anything", StatusCode::FORBIDDEN)]
        {
            assert_eq!(status(&app, as_caller(get_req(path))).await, code, "{path}");
        }
        // Groups with the default fallback merge, and a path none serves is a 404 from the
        // last, undeclared, group's fallback.
        let plain = || {
            vec![
                (None, routes()),
                (Some("metrics.read".to_owned()), Router::new().route("/metrics", get(|| async { "m" }))),
            ]
        };
        let app = worker_router(plain(), None, &metrics, 16, "w");
        assert_eq!(status(&app, get_req("/nowhere")).await, StatusCode::NOT_FOUND);
        assert_eq!(status(&app, get_req("/metrics")).await, StatusCode::OK);
        // With the check, that 404 is the undeclared group's to give: the caller granted
        // nothing gets it, not the 403 of `/metrics`.
        let app = worker_router(plain(), Some(&access), &metrics, 16, "w");
        assert_eq!(status(&app, as_caller(get_req("/nowhere"))).await, StatusCode::NOT_FOUND);
        assert_eq!(status(&app, as_caller(get_req("/metrics"))).await, StatusCode::FORBIDDEN);
    }

    /// The check with the built-in policy, for worker `api` of `crank.local`.
    fn builtin_access() -> Arc<AccessControl> {
        Arc::new(AccessControl::new(
            crank_policy::PolicyGuard::new(crank_policy::builtin()),
            "api",
            "crank.local",
            "test",
            Arc::new(crank_security_core::NoEvents),
        ))
    }

    /// `req` as sent on a connection of a worker of `crank.local` granted no capability.
    fn as_caller(mut req: Request<Body>) -> Request<Body> {
        let caller = crank_security_core::Caller {
            spiffe_id: "spiffe://crank.local/worker/caller".into(),
            worker_id: "caller".into(),
            administrator: false,
            trust_domain: "crank.local".into(),
            serial: "01".into(),
            not_after: i64::MAX,
            capabilities: vec![],
        };
        let connection = crate::tls::Connection {
            peer: None,
            certificate: Some(rustls_pki_types::CertificateDer::from(vec![0u8])),
            caller: Some(caller),
            remote: "127.0.0.1:1".parse().unwrap(),
            allowed: std::sync::Mutex::new(None),
        };
        req.extensions_mut().insert(Arc::new(connection));
        req
    }
}
