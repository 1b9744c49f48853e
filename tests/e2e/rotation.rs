//! Rotation without dropped requests, CA outages during renewal, expiry and recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crank_runtime::demo::hello_routes;
use crank_runtime::tls::client_config;
use crank_security_core::{CertMetadata, EventKind};
use crank_tests::{Recorder, TestCa, wait_until};
use rustls_pki_types::ServerName;

/// The serial a fresh TLS handshake with `addr` presents, using `loader`'s identity.
async fn presented_serial(loader: &crank_runtime::RunningWorker, addr: std::net::SocketAddr) -> String {
    let cfg = client_config(&loader.trust, loader.credentials.clone()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    CertMetadata::from_der(&leaf).unwrap().serial
}

/// A client that opens a new connection (full handshake) for every request.
fn fresh_connection_client(loader: &crank_runtime::RunningWorker) -> reqwest::Client {
    let mut cfg = client_config(&loader.trust, loader.credentials.clone()).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder().use_preconfigured_tls(cfg).pool_max_idle_per_host(0).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_drops_no_request() {
    let ca = TestCa::start_with_validity(Duration::from_secs(20)).await;
    let hello_events = Arc::new(Recorder::default());
    let hello = ca.worker_with("hello-world", hello_routes(), hello_events.clone()).await;
    // The load comes from another rotating worker, so both sides rotate.
    let loader = ca.worker("loader", axum::Router::new()).await;
    let url = format!("https://127.0.0.1:{}/health", hello.addr().port());

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for client in [loader.context.client.current(), fresh_connection_client(&loader)] {
        for _ in 0..2 {
            let (client, url, stop, ok, failed) =
                (client.clone(), url.clone(), stop.clone(), ok.clone(), failed.clone());
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("status {}", r.status());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("request failed: {e:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
    }

    let mut serials = hello.rotator.subscribe();
    let mut seen = vec![serials.borrow().clone()];
    let deadline = Instant::now() + Duration::from_secs(110);
    while seen.len() < 6 {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, serials.changed()).await.expect("rotation too slow").unwrap();
        let serial = serials.borrow().clone();
        assert_ne!(Some(&serial), seen.last());
        // New handshakes present the new serial.
        assert_eq!(presented_serial(&loader, hello.addr()).await, serial);
        seen.push(serial);
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed requests out of {}", ok + failed);
    assert!(ok > 1000, "only {ok} requests were made");
    // The event follows the swap; give it a moment.
    wait_until("five CERT_RENEWED events", Duration::from_secs(5), || {
        hello_events.of(EventKind::CertRenewed).len() >= 5
    })
    .await;
    // Renewed certificates are in the CA's ledger as renewals.
    let last = seen.last().unwrap();
    assert_eq!(ca.ca.store().certificate(last).await.unwrap().unwrap().kind, crank_ca::store::CertKind::Renew);
    hello.shutdown().await.unwrap();
    loader.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_during_renewal_is_ridden_out() {
    let mut ca = TestCa::start_with_validity(Duration::from_secs(30)).await;
    let addr = ca.addr();
    let events = Arc::new(Recorder::default());
    let hello = ca.worker_with("hello-world", hello_routes(), events.clone()).await;
    let client = ca.bootstrap("outage-client").await;
    let first = hello.rotator.current().metadata().serial.clone();
    ca.stop().await;

    // Renewal is due after ~20 s; wait until it has failed at least once.
    wait_until("CA_UNAVAILABLE while the CA is down", Duration::from_secs(25), || {
        !events.of(EventKind::CaUnavailable).is_empty()
    })
    .await;
    // Still serving with the current certificate.
    let r = super::mtls(&client, client.ca()).get(format!("https://{}/health", hello.addr())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hello.rotator.current().metadata().serial, first);

    ca.restart_on(addr).await;
    let mut serials = hello.rotator.subscribe();
    tokio::time::timeout(Duration::from_secs(9), serials.changed())
        .await
        .expect("no renewal after the CA came back")
        .unwrap();
    assert_ne!(*serials.borrow(), first);
    wait_until("CERT_RENEWED", Duration::from_secs(5), || !events.of(EventKind::CertRenewed).is_empty()).await;
    assert!(events.of(EventKind::CertExpired).is_empty());
    hello.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_while_the_ca_is_down_then_recovery_with_a_new_token() {
    let mut ca = TestCa::start_with_validity(Duration::from_secs(8)).await;
    let addr = ca.addr();
    let events = Arc::new(Recorder::default());
    let hello = ca.worker_with("hello-world", hello_routes(), events.clone()).await;
    let first = hello.rotator.current().metadata().serial.clone();
    ca.stop().await;

    wait_until("CERT_EXPIRED", Duration::from_secs(15), || !events.of(EventKind::CertExpired).is_empty()).await;
    let kinds = events.kinds();
    let soon = kinds.iter().position(|k| *k == EventKind::CertExpiringSoon).expect("CERT_EXPIRING_SOON before expiry");
    let expired = kinds.iter().position(|k| *k == EventKind::CertExpired).unwrap();
    assert!(soon < expired, "{kinds:?}");
    assert_eq!(events.of(EventKind::CertExpiringSoon).len(), 1, "warned once: {kinds:?}");

    // Recovery: the CA is back and an operator drops a new join token into the cert dir.
    ca.restart_on(addr).await;
    let token_file = ca.tmp.path().join("workers/hello-world/join-token");
    std::fs::write(&token_file, ca.token("hello-world")).unwrap();
    let mut serials = hello.rotator.subscribe();
    tokio::time::timeout(Duration::from_secs(10), serials.changed()).await.expect("no recovery").unwrap();
    assert_ne!(*serials.borrow(), first);
    assert!(!token_file.exists(), "the used token file is removed");
    // And the worker serves again with a valid certificate, without a restart.
    let client = ca.bootstrap("after-recovery").await;
    let r = super::mtls(&client, client.ca()).get(format!("https://{}/health", hello.addr())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    hello.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_root_rollover_drill_keeps_workers_talking() {
    use crank_ca::rollover;
    let mut ca = TestCa::start_with_validity(Duration::from_secs(10)).await;
    let addr = ca.addr();
    let ping = || axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let alpha = ca.worker("alpha", ping()).await;
    let beta = ca.worker("beta", ping()).await;
    let old_root = alpha.trust.roots()[0].clone();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for (from, to) in [(&alpha, &beta), (&beta, &alpha)] {
        let (client, url) = (fresh_connection_client(from), format!("https://127.0.0.1:{}/ping", to.addr().port()));
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("rollover drill request failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    // 1. Publish the next root beside the current one; renewals spread it.
    rollover::prepare(&ca.dir).unwrap();
    ca.restart_on(addr).await;
    wait_until("both workers to trust two roots", Duration::from_secs(20), || {
        alpha.trust.roots().len() == 2 && beta.trust.roots().len() == 2
    })
    .await;

    // 2. The next root signs; renewals bring leaves from it.
    rollover::activate(&ca.dir).unwrap();
    ca.restart_on(addr).await;
    let new_root = ca.dir.root_der().unwrap();
    assert_ne!(new_root, old_root);
    let issued_by_new_root = |w: &crank_runtime::RunningWorker| {
        let b = w.rotator.current();
        let anchor = webpki::anchor_from_trusted_cert(&new_root).unwrap();
        let ee = webpki::EndEntityCert::try_from(&b.chain()[0]).unwrap();
        let now = rustls_pki_types::UnixTime::now();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
    };
    wait_until("both workers to hold leaves from the new root", Duration::from_secs(20), || {
        issued_by_new_root(&alpha) && issued_by_new_root(&beta)
    })
    .await;

    // 3. Finish: refused while old leaves live, accepted once they expired.
    let store = ca.ca.store().clone();
    let mut refused_once = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rollover::finish(&ca.dir, store.as_ref()).await {
            Ok(()) => break,
            Err(e) => {
                assert!(e.to_string().contains("signed by the old root are valid until"), "{e}");
                refused_once = true;
            }
        }
        assert!(Instant::now() < deadline, "finish never became possible");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(refused_once, "finish must wait for the old root's leaves to expire");
    ca.restart_on(addr).await;
    wait_until("both workers to drop the old root", Duration::from_secs(20), || {
        alpha.trust.roots() == vec![new_root.clone()] && beta.trust.roots() == vec![new_root.clone()]
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok > 200, "only {ok} requests");
    alpha.shutdown().await.unwrap();
    beta.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_written_by_cert_init_into_a_running_workers_dir_is_picked_up() {
    let ca = TestCa::start().await;
    let hello = ca.worker("hello-world", hello_routes()).await;
    let loader = ca.worker("loader", axum::Router::new()).await;
    let first = hello.rotator.current().metadata().serial.clone();
    // What `crank cert init --cert-dir <the worker's dir>` does.
    let mut opts = ca.bootstrap_options("hello-world");
    opts.cert_dir = ca.tmp.path().join("workers/hello-world");
    let written = crank_runtime::bootstrap(&opts, &crank_security_core::EventSinks::empty()).await.unwrap();
    assert_ne!(written.metadata().serial, first);
    wait_until("the worker to serve the certificate from disk", Duration::from_secs(60), || {
        hello.rotator.current().metadata().serial == written.metadata().serial
    })
    .await;
    assert_eq!(presented_serial(&loader, hello.addr()).await, written.metadata().serial);
    hello.shutdown().await.unwrap();
    loader.shutdown().await.unwrap();
}
