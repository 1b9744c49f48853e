//! The HTTP stack a worker serves its routes with.
//!
//! ```text
//!  request ─► track (metrics, in flight)               ─┐ around the whole router: 404
//!          ─► routing                                   ─┘ and 405 answers are counted
//!          ─► per route, one level: shed (503 past the bound in flight) ─► timeout (408)
//!             ─► body limit ─► the handler's extension ─► the access check ─► handler
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
    let mut router = Router::new();
    for (capability, routes) in groups {
        let group = match access {
            Some(access) => access.protect_within(capability.as_deref(), routes, per_route.clone()),
            None => routes.with_state(()).route_layer(per_route.clone()),
        };
        router = router.merge(group);
    }
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
        let access = Arc::new(AccessControl::new(
            crank_policy::PolicyGuard::new(crank_policy::builtin()),
            "api",
            "crank.local",
            "test",
            Arc::new(crank_security_core::NoEvents),
        ));
        for access in [None, Some(&access)] {
            let app = worker_router(vec![(None, routes())], access, &metrics, 0, "w");
            let shed = app.clone().oneshot(get_req("/who")).await.unwrap();
            assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(shed.headers()[axum::http::header::RETRY_AFTER], "1");
        }
        // Within the bound, the check answers: no client certificate.
        let app = worker_router(vec![(Some("email.send".into()), routes())], Some(&access), &metrics, 16, "w");
        assert_eq!(status(&app, get_req("/who")).await, StatusCode::UNAUTHORIZED);
        // Routing's own answers are not the check's to give.
        assert_eq!(status(&app, get_req("/nowhere")).await, StatusCode::NOT_FOUND);
    }
}
