//! Bootstrap, mTLS calls between workers, files and events.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use crank_runtime::demo::hello_routes;
use crank_security_core::{CertFiles, EventKind, EventSinks};
use crank_tests::{Recorder, TestCa};

use super::mtls;

#[tokio::test]
async fn bootstrap_then_mtls_call_returns_200_with_the_callers_identity() {
    let ca = TestCa::start().await;
    let hello = ca.worker("hello-world", hello_routes()).await;
    let caller = ca.bootstrap("caller-1").await;
    let client = mtls(&caller, caller.ca());

    let url = format!("https://127.0.0.1:{}", hello.addr().port());
    let health = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"status": "healthy"}));

    let who: serde_json::Value = client.get(format!("{url}/whoami")).send().await.unwrap().json().await.unwrap();
    assert_eq!(who["caller_spiffe_id"], "spiffe://crank.local/worker/caller-1");
    assert_eq!(who["caller_serial"], caller.metadata().serial.as_str());
    hello.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_worker_calls_another_through_the_runtime_client() {
    let ca = TestCa::start().await;
    let hello = ca.worker("hello-world", hello_routes()).await;
    let target = format!("https://127.0.0.1:{}/whoami", hello.addr().port());
    let routes = Router::new().route(
        "/call",
        get(move |axum::Extension(ctx): axum::Extension<crank_runtime::WorkerContext>| {
            let target = target.clone();
            async move { ctx.client.get(&target).send().await.unwrap().text().await.unwrap() }
        }),
    );
    let caller = ca.worker("caller", routes).await;
    let me = ca.bootstrap("operator").await;
    let body = mtls(&me, me.ca())
        .get(format!("https://127.0.0.1:{}/call", caller.addr().port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let saw: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(saw["caller_worker_id"], "caller", "hello-world saw {saw}");
    // The runtime client refuses plaintext URLs outright.
    let err =
        caller.context.client.get(format!("http://127.0.0.1:{}/health", hello.addr().port())).send().await.unwrap_err();
    assert!(err.is_builder() || err.to_string().contains("URL scheme is not allowed"), "{err}");
}

#[tokio::test]
async fn files_are_written_with_the_key_0600_and_reused_on_restart() {
    let ca = TestCa::start().await;
    let first = ca.worker("w-files", hello_routes()).await;
    let files = CertFiles::in_dir(ca.tmp.path().join("workers/w-files"));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&files.key), 0o600);
    assert_eq!(mode(&files.cert), 0o644);
    let serial = first.bundle.metadata().serial.clone();
    first.shutdown().await.unwrap();
    // A fresh token is offered but not needed: the valid files on disk are reused.
    let again = ca.worker("w-files", hello_routes()).await;
    assert_eq!(again.bundle.metadata().serial, serial);
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_follow_the_bootstrap_and_share_the_correlation_id_with_the_ca() {
    let ca = TestCa::start().await;
    let rec = Arc::new(Recorder::default());
    let sinks = EventSinks::empty();
    sinks.register(rec.clone());
    let opts = ca.bootstrap_options("w-events");
    crank_runtime::bootstrap(&opts, &sinks).await.unwrap();
    assert_eq!(rec.kinds(), vec![EventKind::CsrGenerated, EventKind::CsrSubmitted, EventKind::CertIssued]);
    let worker_issued = &rec.of(EventKind::CertIssued)[0];
    let ca_issued = ca.events.of(EventKind::CertIssued);
    assert_eq!(ca_issued.len(), 1);
    assert_eq!(ca_issued[0].correlation_id, worker_issued.correlation_id);
    let meta = worker_issued.cert_metadata.as_ref().unwrap();
    assert_eq!(meta.issuer, "CN=Crank Platform CA, O=crank.local");
    assert!(meta.seconds_remaining > 23 * 3600);
    assert_eq!(worker_issued.worker_id.as_deref(), Some("w-events"));
}
