//! Gaps in revocation, attacked on the real binaries: a revoked peer keeping its open
//! connections, a CRL rolled back or gone stale, a stolen key that keeps renewing, and
//! administrators sharing the workers' namespace.

use std::time::Duration;

use crank_tests::{Handshake, Platform, eventually, tls_client_config, tls_connect, wait_closed, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Refresh the CRL every second; keep idle HTTP/1.1 connections open for a long time
/// (so that nothing but a revocation closes them within a test).
const WORKER_ENV: &[(&str, &str)] =
    &[("CRANK_CRL_REFRESH", "1s"), ("CRANK_HEADER_READ_TIMEOUT", "120s"), ("CRANK_IDLE_TIMEOUT", "120s")];

/// One HTTP/1.1 `GET /health` on an open TLS stream: the status line.
async fn get_health(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin)) -> String {
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned()
}

/// `GET URL` with `client`: the status, or the error.
async fn status(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    client.get(url).send().await.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_loses_the_connection_it_holds_open() {
    let p = Platform::start(&[]).await;
    let (_hello, addr) = p.worker("hello-world", WORKER_ENV).await;
    let ops = p.identity("ops");
    let alice = p.admin("alice");

    let tls = tls_client_config(ops.ca(), Some(&ops), &[b"http/1.1"]);
    let Handshake::Done(mut stream) =
        tls_connect(tls, "127.0.0.1".parse().unwrap(), addr, Duration::from_secs(5)).await
    else {
        panic!("the handshake failed before the revocation");
    };
    assert!(get_health(&mut stream).await.contains("200"));

    p.revoke(&alice, &["--worker-id", "ops"]).unwrap();
    // The worker's next CRL (1 s) lists ops: the connection ops holds is closed.
    let closed = wait_closed(&mut stream, Duration::from_secs(8)).await;
    assert!(closed.is_some(), "the revoked client's open connection was still served 8 s after the revocation");

    // Counted as such at the worker (read with another identity).
    let metrics = Platform::client(&p.identity_with("scraper", &["metrics.read"]))
        .get(format!("https://127.0.0.1:{}/metrics", addr.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"crank_connections_closed_total{reason="revoked"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_does_not_reuse_a_connection_to_a_server_revoked_since() {
    let p = Platform::start(&[]).await;
    let (_hello, hello) = p.worker("hello-world", WORKER_ENV).await;
    let hello_url = format!("https://127.0.0.1:{}", hello.port());
    let env: Vec<(&str, &str)> = WORKER_ENV.iter().copied().chain([("HELLO_WORLD_URL", hello_url.as_str())]).collect();
    let (_caller, caller) = p.worker("caller", &env).await;
    let ops = Platform::client(&p.identity("ops"));
    let call = format!("https://127.0.0.1:{}/call", caller.port());
    // The caller keeps a pooled connection to hello-world hot.
    for _ in 0..3 {
        assert_eq!(status(&ops, &call).await, Ok(200));
    }
    let alice = p.admin("alice");
    p.revoke(&alice, &["--worker-id", "hello-world"]).unwrap();
    // Within the caller's CRL refresh, its calls fail: no request goes over the
    // connection it opened before the revocation (keep calling, to keep it hot).
    eventually("the caller to stop reaching the revoked hello-world", Duration::from_secs(8), || async {
        status(&ops, &call).await == Ok(502)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_restored_from_an_old_backup_cannot_roll_the_crl_back() {
    let mut p = Platform::start(&[]).await;
    let ops = p.identity("ops");
    let alice = p.admin("alice");
    // An old copy of the ledger, from before the revocation (taken with the CA stopped).
    p.stop_ca();
    let backup = p.tmp.path().join("backup.db");
    std::fs::copy(p.ca_dir.join("ca.db"), &backup).unwrap();
    p.start_ca().await;

    let (hello, addr) = p.worker("hello-world", WORKER_ENV).await;
    let url = format!("https://127.0.0.1:{}/health", addr.port());
    let client = Platform::client(&ops);
    assert_eq!(status(&client, &url).await, Ok(200));
    p.revoke(&alice, &["--worker-id", "ops"]).unwrap();
    eventually("the revocation to be enforced", Duration::from_secs(8), || async {
        status(&Platform::client(&ops), &url).await.is_err()
    })
    .await;

    // The CA comes back from the old backup: its CRL does not list ops, and its number is
    // lower. The worker restarts too (nothing in memory).
    p.stop_ca();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(p.ca_dir.join(format!("ca.db{suffix}")));
    }
    std::fs::copy(&backup, p.ca_dir.join("ca.db")).unwrap();
    p.start_ca().await;
    drop(hello);
    let (_hello, addr) = p.worker("hello-world", WORKER_ENV).await;
    let url = format!("https://127.0.0.1:{}/health", addr.port());
    wait_until("the worker to meet the older CRL", Duration::from_secs(10), || {
        p.log("hello-world").contains("older CRL")
    })
    .await;
    assert!(
        status(&Platform::client(&ops), &url).await.is_err(),
        "ops was served again after the CA rolled its CRL back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_crl_is_reported_and_fail_closed_refuses_peers_until_a_current_one_comes() {
    // CRLs valid for 6 s (re-signed every 3 s; the workers fetch every second).
    let mut p = Platform::start(&["--crl-validity", "6s"]).await;
    let ops = p.identity_with("ops", &["metrics.read"]);
    let (_warn, warn) = p.worker("hello-world", WORKER_ENV).await;
    let strict_env: Vec<(&str, &str)> = WORKER_ENV.iter().copied().chain([("CRANK_CRL_MODE", "fail-closed")]).collect();
    let (_strict, strict) = p.worker("caller", &strict_env).await;
    let client = Platform::client(&ops);
    let (warn_url, strict_url) =
        (format!("https://127.0.0.1:{}", warn.port()), format!("https://127.0.0.1:{}", strict.port()));
    let ready = client.get(format!("{warn_url}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    assert_eq!(status(&client, &format!("{strict_url}/health")).await, Ok(200));

    // The CA goes away; the CRLs the workers hold pass their nextUpdate.
    p.stop_ca();
    eventually("/ready to report the stale CRL", Duration::from_secs(15), || async {
        status(&client, &format!("{warn_url}/ready")).await == Ok(503)
    })
    .await;
    let metrics = client.get(format!("{warn_url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("crank_crl_stale 1"), "{metrics}");
    wait_until("CERT_VALIDATION_FAILED for the stale CRL", Duration::from_secs(5), || {
        p.log("hello-world").lines().any(|l| l.contains("CERT_VALIDATION_FAILED") && l.contains("is stale"))
    })
    .await;
    // Warn mode keeps serving; fail-closed refuses peers in the handshake.
    assert_eq!(status(&client, &format!("{warn_url}/health")).await, Ok(200));
    assert!(status(&Platform::client(&ops), &format!("{strict_url}/health")).await.is_err());

    // A current CRL again: both serve, and /ready is 200.
    p.start_ca().await;
    eventually("fail-closed to recover with a current CRL", Duration::from_secs(10), || async {
        status(&Platform::client(&ops), &format!("{strict_url}/health")).await == Ok(200)
    })
    .await;
    eventually("/ready to recover with a current CRL", Duration::from_secs(10), || async {
        status(&client, &format!("{warn_url}/ready")).await == Ok(200)
    })
    .await;
}

/// A renewal at the CA with `bundle`'s certificate and a CSR for `key`.
async fn renew_with(
    p: &Platform,
    bundle: &crank_security_core::CertificateBundle,
    key: &rcgen::KeyPair,
) -> Result<crank_security_core::IssuedCertificate, crank_security_core::ProviderError> {
    use crank_security_core::{CertificateProvider, CorrelationId, RenewRequest};
    let worker = bundle.metadata().spiffe().unwrap().worker_id;
    let client = crank_tests::ca_client(vec![p.ca_url().parse().unwrap()], bundle);
    client
        .renew(RenewRequest {
            csr_pem: crank_security_core::build_csr(key, &worker, &[worker.to_string()]).unwrap(),
            worker_id: worker.to_string(),
            current_serial: bundle.metadata().serial.clone(),
            current_fingerprint: None,
            correlation_id: CorrelationId::new(),
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_key_cannot_keep_renewing_and_the_second_renewal_is_raised() {
    let mut p = Platform::start(&[]).await;
    // Restarted with its log kept, to read the CA's events.
    p.stop_ca();
    p.start_ca_logging().await;
    let victim = p.identity("victim");
    // The thief, holding a copy of the victim's certificate and key, renews first.
    let thief_key = crank_security_core::generate_key(Default::default()).unwrap();
    let first = renew_with(&p, &victim, &thief_key).await.unwrap();
    // Its answer lost, the same request again gets the same certificate (not a refusal).
    let again = renew_with(&p, &victim, &thief_key).await.unwrap();
    assert_eq!(again.serial, first.serial);
    // The victim's own renewal with the (now superseded) certificate is refused, and the
    // CA raises it as a possible key compromise.
    let victim_key = crank_security_core::generate_key(Default::default()).unwrap();
    let err = renew_with(&p, &victim, &victim_key).await.unwrap_err().to_string();
    assert!(err.contains("already renewed") && err.contains(&first.serial), "{err}");
    wait_until("the CA's possible_key_compromise event", Duration::from_secs(5), || {
        p.ca_log().lines().any(|l| l.contains("CSR_FAILED") && l.contains("possible_key_compromise"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_have_their_own_namespace_and_the_ca_enforces_its_crl() {
    let p = Platform::start(&[]).await;
    let alice = p.admin("alice");
    let w1_admin = p.admin("w1");
    let w1 = p.identity("w1");
    p.identity("other");

    // Revoking worker w1 leaves administrator w1 alone: it still revokes.
    let out = p.revoke(&alice, &["--worker-id", "w1"]).unwrap();
    assert!(out.contains(&w1.metadata().serial), "{out}");
    p.revoke(&w1_admin, &["--worker-id", "other"]).unwrap();

    // The revoked worker can no longer read the CA's /metrics (it could, before).
    let metrics = format!("{}/metrics", p.ca_url());
    assert!(status(&Platform::client(&w1), &metrics).await.is_err(), "a revoked worker read the CA's /metrics");

    // Administrators are revoked by name; the CA refuses the revoked one at once.
    p.revoke(&alice, &["--admin", "w1"]).unwrap();
    let err = p.revoke(&w1_admin, &["--serial", "01"]).unwrap_err().to_string();
    assert!(!err.contains("unknown_serial"), "a revoked administrator reached the revocation API: {err}");
}
