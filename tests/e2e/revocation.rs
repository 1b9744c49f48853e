//! Revocation: the admin API, the signed CRL, and enforcement by every peer in the TLS
//! handshake, in both directions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_runtime::Resumption;
use crank_runtime::RunningWorker;
use crank_runtime::demo::hello_routes;
use crank_runtime::tls::{client_config, mtls_client_config};
use crank_runtime::worker::{CaClient, error_chain};
use crank_security_core::{
    CertificateBundle, CertificateProvider, CorrelationId, EventKind, IssuanceDecision, IssuanceInput, PolicyEngine,
    PolicyError, ProviderError, RenewRequest, RenewalDecision, RenewalInput, WorkerId, build_csr, generate_key,
};
use crank_tests::{Recorder, TestCa, wait_until};
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A reqwest client holding an administrator certificate of `ca`.
async fn admin_client(ca: &TestCa) -> reqwest::Client {
    let (cert, key) = ca.ca.issue_admin(&WorkerId::new("alice").unwrap(), time::Duration::hours(1)).await.unwrap();
    let roots = ca.dir.trust_bundle_pem().unwrap();
    let bundle = CertificateBundle::from_pem(cert.as_bytes(), key.as_bytes(), roots.as_bytes()).unwrap();
    super::mtls(&bundle, bundle.ca())
}

async fn start(ca: &TestCa, name: &str, events: Arc<Recorder>) -> RunningWorker {
    ca.app(name, hello_routes()).crl_refresh(Duration::from_secs(1)).event_sink(events).start().await.unwrap()
}

/// One request from `from` to `to` on a new connection (a full handshake), verified
/// with `from`'s current trust (roots and CRL) and identity.
async fn call(from: &RunningWorker, to: &RunningWorker) -> Result<(), String> {
    let mut cfg = client_config(&from.trust, from.credentials.clone()).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/health", to.addr().port());
    match client.get(&url).send().await {
        Ok(r) if r.status() == 200 => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status())),
        Err(e) => Err(error_chain(&e)),
    }
}

/// One `GET /health` on a new TCP connection with `cfg` (its session cache included);
/// returns how the handshake went.
async fn get_with(cfg: &Arc<rustls::ClientConfig>, to: &RunningWorker) -> Result<HandshakeKind, String> {
    let tcp = tokio::net::TcpStream::connect(to.addr()).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // With TLS 1.3 the server checks the client certificate after the client's side of
    // the handshake is done, so a refusal shows up here, as an alert.
    match tls.read_to_end(&mut answer).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!("unexpected answer: {}", String::from_utf8_lossy(&answer)));
    }
    tls.get_ref().1.handshake_kind().ok_or_else(|| "no handshake kind".to_owned())
}

/// Waits until `w` has installed its first CRL: that empties its session cache, so a
/// test that counts on resumption starts after it.
async fn first_crl(w: &RunningWorker) {
    let t0 = Instant::now();
    while w.trust.crls().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "no CRL after 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client config presenting `w`'s certificate, with its own session cache that
/// nothing empties (a client outside the mesh's control, holding a stolen key).
fn own_cache_client(ca: &TestCa, w: &RunningWorker) -> Arc<rustls::ClientConfig> {
    let mut cfg = mtls_client_config(&[ca.dir.root_der().unwrap()], w.credentials.clone()).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_cannot_resume_a_session_cached_before_the_revocation() {
    let ca = TestCa::start().await;
    let a = start(&ca, "ra", Arc::default()).await;
    let b = start(&ca, "rb", Arc::default()).await;
    // Only the revocation below may change b's trust.
    first_crl(&b).await;
    let stolen = own_cache_client(&ca, &a);
    assert_eq!(get_with(&stolen, &b).await.unwrap(), HandshakeKind::Full);
    assert_eq!(get_with(&stolen, &b).await.unwrap(), HandshakeKind::Resumed, "the worker offers resumption by default");
    // Keep a few tickets in the client's cache.
    for _ in 0..3 {
        get_with(&stolen, &b).await.unwrap();
    }

    let admin = admin_client(&ca).await;
    assert_eq!(revoke(&ca, &admin, json!({"worker_id": "ra", "reason": "keyCompromise"})).await.status(), 200);
    // Wait until b refuses a full handshake with a's certificate (b has the new CRL).
    let t0 = Instant::now();
    while get_with(&own_cache_client(&ca, &a), &b).await.is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(5), "b still accepts the revoked certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cached sessions are gone from b: resuming with a ticket from before the
    // revocation falls back to a full handshake, which b refuses.
    let err = get_with(&stolen, &b).await.expect_err("a revoked client resumed a cached session");
    assert!(err.to_lowercase().contains("revoked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_reads_why_even_with_its_request_already_sent() {
    // A TLS 1.3 client holds its handshake done once it has sent its certificate, and
    // sends its request at once, before it learns that the certificate was refused. It
    // must still read the alert that says so, not just a closed connection. (Both CAs
    // are named alike: what fails is the signature, "DecryptError".)
    let ca = TestCa::start().await;
    let b = start(&ca, "lb", Arc::default()).await;
    let other = TestCa::start().await;
    let stranger = other.bootstrap("stranger").await;
    let cfg = crank_tests::tls_client_config(&[ca.dir.root_der().unwrap()], Some(&stranger), &[b"http/1.1"]);
    for round in 0..3 {
        let tcp = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await.unwrap();
        let body = vec![b'x'; 48 * 1024];
        let head = format!("POST /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len());
        // The server may already have closed: what the client reads next is what counts.
        let _ = tls.write_all(head.as_bytes()).await;
        let _ = tls.write_all(&body).await;
        let _ = tls.flush().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut answer = Vec::new();
        let read = tls.read_to_end(&mut answer).await;
        let e = read.expect_err("the server answered a client certificate of another CA").to_string();
        assert!(e.contains("received fatal alert"), "round {round}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_resumption_off_every_connection_is_a_full_handshake() {
    let ca = TestCa::start().await;
    let a = start(&ca, "fa", Arc::default()).await;
    let b = ca.app("fb", hello_routes()).tls_resumption(Resumption::Off).start().await.unwrap();
    first_crl(&a).await;
    let cfg = own_cache_client(&ca, &a);
    for _ in 0..3 {
        assert_eq!(get_with(&cfg, &b).await.unwrap(), HandshakeKind::Full);
    }
    assert_eq!(get_with(&cfg, &a).await.unwrap(), HandshakeKind::Full);
    assert_eq!(get_with(&cfg, &a).await.unwrap(), HandshakeKind::Resumed);
}

/// Waits (up to 5 s) until new connections fail both ways between `a` and `b`, each
/// naming the revocation; the errors of a -> b and b -> a.
async fn refused_both_ways(a: &RunningWorker, b: &RunningWorker) -> (String, String) {
    let t0 = Instant::now();
    let mut enforced = None;
    loop {
        let (ab, ba) = (call(a, b).await, call(b, a).await);
        if let (Err(ab), Err(ba)) = (&ab, &ba) {
            enforced.get_or_insert_with(|| t0.elapsed());
            // The reasons show once every handshake is refused. Before that a refusal can
            // be a connection closed after a handshake that the CRL came in just after (no
            // more requests from a revoked peer), and the client may report an alert that
            // comes as the connection closes as "connection was not ready".
            if ab.to_lowercase().contains("revoked") && ba.to_lowercase().contains("revoked") {
                eprintln!("enforced after {enforced:?}, reasons after {:?}", t0.elapsed());
                return (ab.clone(), ba.clone());
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not refused as revoked after {:?}: {ab:?} {ba:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn serial_of(w: &RunningWorker) -> String {
    w.rotator.current().metadata().serial.clone()
}

async fn revoke(ca: &TestCa, admin: &reqwest::Client, body: serde_json::Value) -> reqwest::Response {
    admin.post(ca.url().join("/v1/revocations").unwrap()).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_worker_is_refused_in_the_handshake_both_ways_and_recovers_with_a_new_token() {
    let ca = TestCa::start().await;
    let a_events = Arc::new(Recorder::default());
    let a = start(&ca, "wa", a_events.clone()).await;
    let b = start(&ca, "wb", Arc::default()).await;
    let c = start(&ca, "wc", Arc::default()).await;
    for (x, y) in [(&a, &b), (&b, &a), (&c, &b), (&b, &c)] {
        call(x, y).await.unwrap();
    }
    let revoked_serial = serial_of(&a);

    let admin = admin_client(&ca).await;
    let resp = revoke(&ca, &admin, json!({"worker_id": "wa", "reason": "keyCompromise"})).await;
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["revoked"][0]["serial"], revoked_serial);
    assert_eq!(answer["revoked"][0]["reason"], "keyCompromise");
    assert_eq!(answer["revoked"][0]["revoked_by"], "admin/alice");
    assert!(answer["crl_number"].as_u64().is_some());

    // Within the refresh interval (1 s here) plus a fetch, new connections fail in the
    // handshake: b refuses a as a client, and b refuses a as a server.
    let (ab, ba) = refused_both_ways(&a, &b).await;
    assert!(ab.to_lowercase().contains("revoked"), "a -> b should fail with a revoked-certificate alert: {ab}");
    assert!(ba.to_lowercase().contains("revoked"), "b -> a should fail as the server certificate is revoked: {ba}");
    // Unrevoked workers keep working, in both directions.
    for (x, y) in [(&c, &b), (&b, &c)] {
        call(x, y).await.unwrap();
    }

    // a knows: CERT_REVOKED, and the CA refuses its renewal.
    wait_until("CERT_REVOKED from the revoked worker", Duration::from_secs(5), || {
        !a_events.of(EventKind::CertRevoked).is_empty()
    })
    .await;
    assert!(a.rotator.is_revoked());
    let client = CaClient::mtls(vec![ca.url()], &a.trust, a.credentials.clone(), &Default::default()).unwrap();
    let key = generate_key(Default::default()).unwrap();
    let csr = build_csr(&key, &WorkerId::new("wa").unwrap(), &["wa".to_owned()]).unwrap();
    let req = RenewRequest {
        csr_pem: csr,
        worker_id: "wa".into(),
        current_serial: revoked_serial.clone(),
        current_fingerprint: None,
        correlation_id: CorrelationId::new(),
    };
    // The CA enforces its own CRL in the handshake: the request never reaches it (with
    // TLS 1.3 the client sees its connection closed after sending its certificate; hyper
    // says so as a closed connection or, when the close wins the race with the request, a
    // closed channel).
    match client.renew(req).await {
        Err(ProviderError::Revoked(_)) => {}
        Err(ProviderError::Unavailable(m)) => {
            assert!(m.contains("connection") || m.contains("channel closed"), "{m}")
        }
        other => panic!("renewal with a revoked certificate must be refused in the handshake: {other:?}"),
    }

    // Recovery: a new join token in the token file gives a new identity.
    let token_file = ca.tmp.path().join("workers/wa/join-token");
    std::fs::write(&token_file, ca.token("wa")).unwrap();
    wait_until("the revoked worker to recover with the new token", Duration::from_secs(10), || {
        serial_of(&a) != revoked_serial
    })
    .await;
    assert!(!a.rotator.is_revoked());
    call(&a, &b).await.unwrap();
    call(&b, &a).await.unwrap();
}

#[tokio::test]
async fn the_revocation_api_needs_an_administrator_and_names_bad_input() {
    let ca = TestCa::start().await;
    let worker = ca.bootstrap("plain").await;
    let url = ca.url().join("/v1/revocations").unwrap();
    let body = json!({"worker_id": "plain", "reason": "keyCompromise"});

    let anonymous = super::no_client_cert(worker.ca());
    let r = anonymous.post(url.clone()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let as_worker = super::mtls(&worker, worker.ca());
    let r = as_worker.post(url.clone()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(text.contains("access_denied") && text.contains("ca.revoke"), "{text}");

    let admin = admin_client(&ca).await;
    for (bad, code, needle) in [
        (json!({"reason": "keyCompromise"}), 400, "exactly one"),
        (json!({"serial": "01", "worker_id": "plain", "reason": "keyCompromise"}), 400, "exactly one"),
        (json!({"worker_id": "plain", "reason": "because"}), 400, "keyCompromise"),
        (json!({"serial": "7f:7f", "reason": "superseded"}), 404, "7f:7f"),
        (json!({"worker_id": "nobody", "reason": "superseded"}), 404, "nobody"),
    ] {
        let r = revoke(&ca, &admin, bad.clone()).await;
        assert_eq!(r.status(), code, "{bad}");
        let text = r.text().await.unwrap();
        assert!(text.contains(needle), "{bad}: {text}");
    }
    // Nothing was revoked by any of that.
    assert_eq!(
        ca.ca.store().certificate(&worker.metadata().serial).await.unwrap().unwrap().status,
        crank_ca::store::CertStatus::Valid
    );
    assert!(ca.events.of(EventKind::CertRevoked).is_empty());

    // Revoking by serial works and emits CERT_REVOKED at the CA.
    let r = revoke(&ca, &admin, json!({"serial": worker.metadata().serial, "reason": "superseded"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(ca.events.of(EventKind::CertRevoked).len(), 1);

    // "Administrator" is a capability decided by policy: a worker granted ca.revoke
    // may revoke (and is recorded as the revoker).
    let revoker = ca.bootstrap_with("revoker", &["ca.revoke"]).await;
    let victim = ca.bootstrap("victim").await;
    let r = super::mtls(&revoker, revoker.ca())
        .post(url.clone())
        .json(&json!({"serial": victim.metadata().serial, "reason": "keyCompromise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let row = ca.ca.store().revoked_unexpired(time::OffsetDateTime::now_utc()).await.unwrap();
    assert!(row.iter().any(|r| r.serial == victim.metadata().serial && r.revoked_by == "worker/revoker"), "{row:?}");
}

#[tokio::test]
async fn a_revocation_the_policy_denies_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    std::fs::copy(policies.join("default/defaults.rego"), dir.path().join("defaults.rego")).unwrap();
    std::fs::write(
        dir.path().join("protect.rego"),
        "package crank\n\nrevoke_certificate := false if input.worker_id == \"protected\"\n",
    )
    .unwrap();
    let engine = crank_policy::RegoEngine::from_dir(dir.path()).unwrap();
    let ca = TestCa::start_with_policy(Arc::new(engine)).await;
    let protected = ca.bootstrap("protected").await;
    let other = ca.bootstrap("other").await;
    let admin = admin_client(&ca).await;

    let r = revoke(&ca, &admin, json!({"worker_id": "protected", "reason": "keyCompromise"})).await;
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(text.contains("policy_denied"), "{text}");
    let r = revoke(&ca, &admin, json!({"serial": protected.metadata().serial, "reason": "superseded"})).await;
    assert_eq!(r.status(), 403, "by serial too: the hook sees the certificate's worker");
    assert_eq!(
        ca.ca.store().certificate(&protected.metadata().serial).await.unwrap().unwrap().status,
        crank_ca::store::CertStatus::Valid
    );

    let r = revoke(&ca, &admin, json!({"worker_id": "other", "reason": "keyCompromise"})).await;
    assert_eq!(r.status(), 200, "other workers can still be revoked");
    assert_eq!(
        ca.ca.store().certificate(&other.metadata().serial).await.unwrap().unwrap().status,
        crank_ca::store::CertStatus::Revoked
    );
}

/// A policy giving workers named `short-*` 5 s certificates and everyone else 1 h.
#[derive(Debug)]
struct ShortAndLong;

impl PolicyEngine for ShortAndLong {
    fn can_issue_certificate(&self, _: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
        Ok(IssuanceDecision::allow())
    }
    fn certificate_validity_period(&self, worker: &str, _: &str) -> Result<Duration, PolicyError> {
        Ok(if worker.starts_with("short-") { Duration::from_secs(5) } else { Duration::from_secs(3600) })
    }
    fn should_renew_certificate(&self, _: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
        Ok(RenewalDecision { renew: false, expiring_soon: false })
    }
    fn revoke_certificate(&self, _: &str, _: &str) -> Result<bool, PolicyError> {
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_an_intermediate_the_crl_it_signs_is_enforced_in_the_handshake() {
    let ca = TestCa::start_intermediate().await;
    let a = start(&ca, "ia", Arc::default()).await;
    let b = start(&ca, "ib", Arc::default()).await;
    assert_eq!(a.rotator.current().chain().len(), 2, "leaf + intermediate");
    call(&a, &b).await.unwrap();
    call(&b, &a).await.unwrap();
    let admin = admin_client(&ca).await;
    assert_eq!(revoke(&ca, &admin, json!({"worker_id": "ia", "reason": "keyCompromise"})).await.status(), 200);
    let (ab, ba) = refused_both_ways(&a, &b).await;
    assert!(ab.to_lowercase().contains("revoked") && ba.to_lowercase().contains("revoked"), "{ab} / {ba}");
}

/// `openssl crl` on DER bytes: (verify output, listed serials as lowercase hex).
fn openssl_crl(der: &[u8], root_pem: &std::path::Path) -> (String, HashSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.der");
    std::fs::write(&path, der).unwrap();
    let root = root_pem.to_str().unwrap();
    let out = crank_tests::openssl_output(
        dir.path(),
        &["crl", "-inform", "DER", "-noout", "-text", "-verify", "-in", "crl.der", "-CAfile", root],
    );
    assert!(out.status.success(), "openssl crl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let serials = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    (format!("{}{text}", String::from_utf8_lossy(&out.stderr)), serials)
}

fn plain_hex(serial: &str) -> String {
    serial.replace(':', "").to_ascii_lowercase()
}

#[tokio::test]
async fn the_crl_verifies_with_openssl_and_lists_exactly_the_revoked_unexpired_serials() {
    let ca = TestCa::start_with_policy(Arc::new(ShortAndLong)).await;
    let short = ca.bootstrap("short-lived").await;
    let long1 = ca.bootstrap("long-1").await;
    let long2 = ca.bootstrap("long-2").await;
    let kept = ca.bootstrap("long-kept").await;
    let admin = admin_client(&ca).await;
    for w in [&short, &long1, &long2] {
        let r = revoke(&ca, &admin, json!({"serial": w.metadata().serial, "reason": "keyCompromise"})).await;
        assert_eq!(r.status(), 200);
    }
    let anonymous = super::no_client_cert(kept.ca());
    let fetch = || async {
        let r = anonymous.get(ca.url().join("/v1/crl").unwrap()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/pkix-crl");
        r.bytes().await.unwrap().to_vec()
    };
    let root = ca.dir.root_cert();
    let (verify, listed) = openssl_crl(&fetch().await, &root);
    assert!(verify.contains("verify OK"), "{verify}");
    let expect: HashSet<String> = [&short, &long1, &long2].iter().map(|w| plain_hex(&w.metadata().serial)).collect();
    assert_eq!(listed, expect);
    assert!(verify.contains("Next Update"), "{verify}");
    assert!(verify.contains("X509v3 CRL Number"), "{verify}");
    assert!(verify.contains("Key Compromise"), "{verify}");

    // Once the short certificate has expired it drops off the next CRL.
    let wait = (short.metadata().not_after - time::OffsetDateTime::now_utc()).whole_milliseconds().max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait + 1100)).await;
    // A new revocation regenerates the CRL at once.
    let r = revoke(&ca, &admin, json!({"serial": kept.metadata().serial, "reason": "superseded"})).await;
    assert_eq!(r.status(), 200);
    let (verify, listed) = openssl_crl(&fetch().await, &root);
    assert!(verify.contains("verify OK"), "{verify}");
    let expect: HashSet<String> = [&long1, &long2, &kept].iter().map(|w| plain_hex(&w.metadata().serial)).collect();
    assert_eq!(listed, expect, "exactly the revoked, unexpired serials");
}
