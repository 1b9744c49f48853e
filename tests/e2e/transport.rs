//! Transport-level behaviour: plaintext, an unavailable CA, restarts.

use std::sync::Arc;
use std::time::Duration;

use crank_runtime::demo::hello_routes;
use crank_runtime::{BootstrapError, RetryPolicy};
use crank_security_core::{EventKind, EventSinks, ProviderError};
use crank_tests::{Recorder, TestCa, free_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a plaintext HTTP request and returns whatever comes back before the close.
async fn plaintext_request(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    buf
}

#[tokio::test]
async fn plaintext_http_gets_no_http_answer() {
    let ca = TestCa::start().await;
    let worker = ca.worker("tls-only", hello_routes()).await;
    for addr in [ca.addr(), worker.addr()] {
        let answer = plaintext_request(addr).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{addr} answered plaintext HTTP: {:?}",
            String::from_utf8_lossy(&answer)
        );
        // At most a TLS alert record (content type 21), never a page.
        assert!(answer.is_empty() || answer[0] == 21, "{addr} sent {answer:?}");
    }
    // Both still serve TLS afterwards.
    let me = ca.bootstrap("after-plaintext").await;
    let r = super::mtls(&me, me.ca()).get(format!("https://{}/health", worker.addr())).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_ca_that_is_down_gives_retries_then_a_clear_failure() {
    let mut ca = TestCa::start().await;
    let mut opts = ca.bootstrap_options("patient");
    ca.stop().await;
    opts.retry = RetryPolicy { initial: Duration::from_millis(20), max_delay: Duration::from_millis(100), attempts: 4 };
    let rec = Arc::new(Recorder::default());
    let sinks = EventSinks::empty();
    sinks.register(rec.clone());
    let started = std::time::Instant::now();
    let err = crank_runtime::bootstrap(&opts, &sinks).await.unwrap_err();
    assert!(matches!(&err, BootstrapError::Unavailable { attempts: 4, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("unavailable after 4 attempts") && msg.contains(opts.ca_urls[0].as_str()), "{msg}");
    assert_eq!(rec.of(EventKind::CsrSubmitted).len(), 4);
    assert_eq!(rec.of(EventKind::CaUnavailable).len(), 4, "three retries and the final give-up: {:?}", rec.kinds());
    assert_eq!(rec.of(EventKind::CsrFailed).len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(20 + 40), "backoff was not applied: {:?}", started.elapsed());
}

#[tokio::test]
async fn the_worker_waits_for_a_ca_that_comes_back() {
    let mut ca = TestCa::start().await;
    let addr = ca.addr();
    let mut opts = ca.bootstrap_options("late-ca");
    opts.retry =
        RetryPolicy { initial: Duration::from_millis(200), max_delay: Duration::from_millis(400), attempts: 10 };
    ca.stop().await;
    let pending = tokio::spawn(async move { crank_runtime::bootstrap(&opts, &EventSinks::empty()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ca.restart_on(addr).await;
    let bundle = pending.await.unwrap().unwrap();
    assert_eq!(bundle.metadata().spiffe().unwrap().worker_id.as_str(), "late-ca");
}

#[tokio::test]
async fn single_use_survives_a_ca_restart() {
    let mut ca = TestCa::start().await;
    let mut opts = ca.bootstrap_options("restart");
    crank_runtime::bootstrap(&opts, &EventSinks::empty()).await.unwrap();
    ca.restart_on(free_addr()).await;
    opts.ca_urls = vec![ca.url()];
    opts.cert_dir = ca.tmp.path().join("second-try");
    match crank_runtime::bootstrap(&opts, &EventSinks::empty()).await.unwrap_err() {
        BootstrapError::Refused(ProviderError::Unauthorized(m)) => {
            assert!(m.contains("already used"), "{m}")
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn several_ca_urls_fail_over() {
    let ca = TestCa::start().await;
    let mut opts = ca.bootstrap_options("failover");
    let dead: url::Url = format!("https://{}", free_addr()).parse().unwrap();
    opts.ca_urls = vec![dead, ca.url()];
    let bundle = crank_runtime::bootstrap(&opts, &EventSinks::empty()).await.unwrap();
    assert_eq!(bundle.metadata().spiffe().unwrap().worker_id.as_str(), "failover");
}
