//! Heartbeats to the platform registry, identified by the verified certificate.

use std::time::Duration;

use crank_runtime::demo::hello_routes;
use crank_runtime::platform::{Registry, WorkerRecord, serve_on};
use crank_tests::{TestCa, wait_until};

use super::mtls;

#[tokio::test]
async fn workers_register_by_certificate_identity_and_expire_when_silent() {
    let ca = TestCa::start().await;
    let registry = Registry::new(Duration::from_millis(1500));
    let platform = serve_on(ca.app("platform", axum::Router::new()), registry.clone()).start().await.unwrap();
    let platform_url = format!("https://127.0.0.1:{}", platform.addr().port());
    let hello = ca
        .app("hello-world", hello_routes())
        .platform_url(&platform_url)
        .heartbeat_interval(Duration::from_millis(200))
        .start()
        .await
        .unwrap();

    let registered = || registry.list().into_iter().find(|w| w.worker_id == "hello-world");
    wait_until("hello-world to register", Duration::from_secs(10), || registered().is_some()).await;
    let record = registered().unwrap();
    assert_eq!(record.spiffe_id, "spiffe://crank.local/worker/hello-world");
    assert_eq!(record.serial, hello.rotator.current().metadata().serial);
    assert_eq!(record.service_type, "hello-world");
    assert!(record.cert_not_after.starts_with(&hello.rotator.current().metadata().not_after.year().to_string()));

    // A worker cannot claim another identity in the form: it is recorded as itself.
    let mallory = ca.bootstrap("mallory").await;
    let client = mtls(&mallory, mallory.ca());
    let r = client
        .post(format!("{platform_url}/v1/workers/heartbeat"))
        .form(&[("service_type", "hello-world"), ("load_score", "0"), ("worker_id", "hello-world")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec: WorkerRecord = r.json().await.unwrap();
    assert_eq!(rec.worker_id, "mallory");
    let bad =
        client.post(format!("{platform_url}/v1/workers/heartbeat")).form(&[("load_score", "x")]).send().await.unwrap();
    assert_eq!(bad.status(), 422);

    // The listing over mTLS: the capability platform.workers.read, which mallory lacks.
    let refused = client.get(format!("{platform_url}/v1/workers")).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let ops = ca.bootstrap_with("ops", &["platform.workers.read"]).await;
    let listed: Vec<WorkerRecord> =
        mtls(&ops, ops.ca()).get(format!("{platform_url}/v1/workers")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|w| w.worker_id.as_str()).collect();
    assert!(ids.contains(&"hello-world") && ids.contains(&"mallory"), "{ids:?}");

    // A silent worker is dropped after the expiry window.
    hello.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let ids: Vec<String> = registry.list().into_iter().map(|w| w.worker_id).collect();
    assert!(!ids.contains(&"hello-world".to_owned()), "{ids:?}");
    platform.shutdown().await.unwrap();
}
