//! What an orchestrator sees, on the real binaries: probe listeners that need no client
//! certificate (and serve nothing else), readiness that follows the certificate and the
//! CRL, and a CA that renews its own TLS certificate without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crank_tests::{Handshake, Platform, PlatformOptions, eventually, free_addr, tls_client_config, tls_connect};

/// `curl -k -s URL` (what the worker pattern's healthcheck runs): the HTTP status and body,
/// or `Err` with curl's exit code when no HTTP answer came (a refused handshake).
fn curl_k(url: &str, extra: &[&str]) -> Result<(u16, String), i32> {
    let out = std::process::Command::new("curl")
        .args(["-k", "-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs (scripts/test.sh installs it)");
    if !out.status.success() {
        return Err(out.status.code().unwrap_or(-1));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

/// `/readyz`'s answer as (status, JSON body).
fn readyz(port: u16) -> (u16, serde_json::Value) {
    let (status, body) = curl_k(&format!("https://127.0.0.1:{port}/readyz"), &[]).expect("the probe port answers");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz body {body:?}: {e}")))
}

/// `crank probe URL [ARGS]`: whether it exited 0, and what it printed.
fn crank_probe(url: &str, args: &[&str]) -> (bool, String) {
    let out = crank_tests::crank_output(&[&["probe", url][..], args].concat());
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_ports_need_no_client_certificate_serve_only_probes_and_the_main_ports_still_refuse() {
    let ca_probe = free_addr().port();
    let p = Platform::start(&["--probe-port", &ca_probe.to_string()]).await;
    let worker_probe = free_addr().port();
    let (_hello, main) = p.worker("hello-world", &[("CRANK_PROBE_PORT", &worker_probe.to_string())]).await;
    crank_tests::wait_for_port(SocketAddr::from(([127, 0, 0, 1], worker_probe))).await.unwrap();

    for (who, port) in [("the CA", ca_probe), ("hello-world", worker_probe)] {
        // The seeds' healthcheck, as written: curl -k, no client certificate.
        let live = curl_k(&format!("https://localhost:{port}/livez"), &[]);
        assert_eq!(live.as_ref().map(|(s, _)| *s), Ok(200), "{who} /livez: {live:?}");
        let (status, body) = readyz(port);
        assert_eq!(status, 200, "{who} /readyz: {body}");
        assert_eq!(body["status"], "ready", "{who}: {body}");
        for check in ["certificate", "trust", "crl", "listener"] {
            assert_eq!(body["checks"][check], "ok", "{who} check {check}: {body}");
        }
        // Nothing else is served there: not the API, not metrics, not another method.
        for path in ["/metrics", "/health", "/v1/crl", "/v1/trust-bundle", "/"] {
            let r = curl_k(&format!("https://127.0.0.1:{port}{path}"), &[]);
            assert_eq!(r.as_ref().map(|(s, _)| *s), Ok(404), "{who} {path} on the probe port: {r:?}");
        }
        // Another method is refused. Over HTTP/2 a server that answers before reading a
        // request body may reset the stream after its answer, and curl then reports the
        // reset (exit 92) instead of the status, so the POST with a body goes over
        // HTTP/1.1 and a bodiless DELETE over HTTP/2.
        let post = curl_k(&format!("https://127.0.0.1:{port}/readyz"), &["--http1.1", "-X", "POST", "-d", "x"]);
        assert!(matches!(post, Ok((405 | 413, _))), "{who} POST /readyz: {post:?}");
        let delete = curl_k(&format!("https://127.0.0.1:{port}/readyz"), &["-X", "DELETE"]);
        assert_eq!(delete.as_ref().map(|(s, _)| *s), Ok(405), "{who} DELETE /readyz: {delete:?}");
        // `crank probe` (an image's HEALTHCHECK) agrees, and fails on a path that is not 200.
        let (ok, said) = crank_probe(&format!("https://localhost:{port}/readyz"), &[]);
        assert!(ok && said.contains("\"ready\""), "{who}: crank probe said {said}");
        let (ok, said) = crank_probe(&format!("https://localhost:{port}/nope"), &[]);
        assert!(!ok && said.contains("404"), "{who}: crank probe on /nope said {said}");
    }
    assert_eq!(readyz(ca_probe).1["checks"]["store"], "ok");
    // Verified against the CA's root, the probe port proves the server with its own
    // certificate: the CA's, and hello-world's.
    let roots = p.ca_dir.join("root.crt");
    for port in [ca_probe, worker_probe] {
        let (ok, said) =
            crank_probe(&format!("https://localhost:{port}/livez"), &["--cacert", roots.to_str().unwrap()]);
        assert!(ok, "crank probe --cacert on {port}: {said}");
    }
    let elsewhere = p.tmp.path().join("other-ca");
    crank_tests::crank(&["ca", "init", "--dir", elsewhere.to_str().unwrap()]).unwrap();
    let (ok, said) = crank_probe(
        &format!("https://localhost:{worker_probe}/livez"),
        &["--cacert", elsewhere.join("root.crt").to_str().unwrap()],
    );
    assert!(!ok, "a probe verifying against another CA's root was answered: {said}");
    let (ok, said) = crank_probe(&format!("http://localhost:{worker_probe}/livez"), &[]);
    assert!(!ok && said.contains("https only"), "{said}");

    // The main ports still refuse a client without a certificate in the handshake
    // (hello-world) or at the endpoint (the CA's /metrics).
    let refused = curl_k(&format!("https://127.0.0.1:{}/health", main.port()), &[]);
    assert!(refused.is_err(), "hello-world answered a client without a certificate: {refused:?}");
    let metrics = curl_k(&format!("https://127.0.0.1:{}/metrics", p.ca_addr.port()), &[]);
    assert_eq!(metrics.as_ref().map(|(s, _)| *s), Ok(401), "{metrics:?}");
    // And a probe port is off unless asked for: the CA gets none by default.
    assert!(!p.ca_log().contains("probe listener"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_on_a_stale_crl_and_an_expired_certificate_while_the_ca_is_down_and_true_after_recovery()
{
    // CRLs current for 4 s, worker certificates for 15 s; the worker fetches the CRL every
    // second.
    let mut p = Platform::start(&["--crl-validity", "4s", "--leaf-validity", "15s"]).await;
    let probe = free_addr().port();
    let env = [("CRANK_PROBE_PORT", probe.to_string()), ("CRANK_CRL_REFRESH", "1s".into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_hello, _) = p.worker("hello-world", &env).await;
    crank_tests::wait_for_port(SocketAddr::from(([127, 0, 0, 1], probe))).await.unwrap();
    eventually("ready at first", Duration::from_secs(10), || async { readyz(probe).0 == 200 }).await;

    p.stop_ca();
    // The CRL passes its nextUpdate first: not ready, naming it; the certificate is still fine.
    eventually("/readyz to report the stale CRL", Duration::from_secs(15), || async { readyz(probe).0 == 503 }).await;
    let (_, body) = readyz(probe);
    assert_eq!(body["status"], "not_ready");
    assert!(body["checks"]["crl"].as_str().is_some_and(|s| s.contains("stale")), "{body}");
    assert_eq!(body["checks"]["listener"], "ok", "{body}");
    // /livez stays 200: the process is alive, an orchestrator must not restart it for this.
    assert_eq!(curl_k(&format!("https://127.0.0.1:{probe}/livez"), &[]).map(|(s, _)| s), Ok(200));

    // Then the certificate expires with no CA to renew it.
    eventually("/readyz to report the expired certificate", Duration::from_secs(30), || async {
        readyz(probe).1["checks"]["certificate"].as_str().is_some_and(|s| s.contains("expired"))
    })
    .await;
    assert_eq!(readyz(probe).0, 503);

    // Recovery: the CA is back and a join token is dropped where the worker looks for one.
    p.start_ca().await;
    let token = p.token("hello-world");
    write_token(&p.tmp.path().join("hello-world"), &token);
    eventually("/readyz to turn true again", Duration::from_secs(90), || async { readyz(probe).0 == 200 }).await;
    let (_, body) = readyz(probe);
    assert!(["certificate", "crl", "trust", "listener"].iter().all(|c| body["checks"][c] == "ok"), "{body}");
}

fn write_token(cert_dir: &Path, token: &str) {
    crank_security_core::write_file_atomic(&cert_dir.join("join-token"), token.as_bytes(), 0o600).unwrap();
}

/// The certificate the CA at `addr` serves now: (serial, notBefore, notAfter), from a
/// handshake verified against `roots`.
async fn served_certificate(
    roots: &[rustls_pki_types::CertificateDer<'static>],
    addr: SocketAddr,
) -> (String, time::OffsetDateTime, time::OffsetDateTime) {
    let config = tls_client_config(roots, None, &[b"http/1.1"]);
    let Handshake::Done(tls) = tls_connect(config, "127.0.0.1".parse().unwrap(), addr, Duration::from_secs(5)).await
    else {
        panic!("no verified handshake with the CA")
    };
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let meta = crank_security_core::CertMetadata::from_der(&leaf).unwrap();
    (meta.serial, meta.not_before, meta.not_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_renews_its_own_tls_certificate_without_a_restart_and_workers_keep_renewing_across_the_swaps() {
    // The CA gives itself certificates valid for 12 s (renewed with 4 s left), workers get
    // 10 s ones.
    let opts = PlatformOptions {
        ca_log: true,
        ..PlatformOptions::serve(&["--tls-validity", "12s", "--leaf-validity", "10s"])
    };
    let mut p = Platform::start_with(opts).await;
    let roots =
        crank_security_core::parse_pem_certs("root", &std::fs::read(p.ca_dir.join("root.crt")).unwrap()).unwrap();
    // At start, the year-long certificate of `crank ca init` was reissued for 12 s.
    let (first, _, first_end) = served_certificate(&roots, p.ca_addr).await;
    assert!(first_end <= time::OffsetDateTime::now_utc() + time::Duration::seconds(15), "served until {first_end}");
    assert!(p.ca_log().contains("reissuing the CA service's TLS certificate"), "{}", p.ca_log());

    let (_hello, hello) = p.worker("hello-world", &[]).await;
    let ops = p.identity_with("ops", &["metrics.read"]);
    let client = Platform::client(&ops);
    let url = format!("https://127.0.0.1:{}/health", hello.port());

    // 30 s: several swaps at the CA, with the worker renewing against it throughout, and
    // the worker answering every request.
    let mut serials = vec![first];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let (serial, not_before, not_after) = served_certificate(&roots, p.ca_addr).await;
        assert!(not_after > time::OffsetDateTime::now_utc(), "the CA served an expired certificate ({serial})");
        assert!(not_after - not_before <= time::Duration::seconds(12 + 61), "{serial}: {not_before} .. {not_after}");
        if serials.last() != Some(&serial) {
            serials.push(serial);
        }
        let status = client.get(&url).send().await.map(|r| r.status().as_u16());
        assert_eq!(status.as_ref().ok(), Some(&200), "hello-world: {status:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(serials.len() >= 4, "the CA served only {serials:?} in 30 s");
    let swaps = p.ca_log().matches("renewed and swapped in").count();
    assert!(swaps >= 3, "{swaps} swaps logged");
    assert!(p.ca_is_running(), "the CA process ended");

    // The worker renewed across the swaps (10 s certificates: at least three times in
    // 30 s), each time verifying the CA's current certificate, and never failed to.
    let renewed = p.events("hello-world").iter().filter(|e| e["event"] == "CERT_RENEWED").count();
    assert!(renewed >= 3, "hello-world renewed {renewed} times:\n{}", p.log("hello-world"));
    let failures: Vec<_> = p
        .events("hello-world")
        .into_iter()
        .filter(|e| e["event"] == "CA_UNAVAILABLE" || e["event"] == "CSR_FAILED")
        .collect();
    assert!(failures.is_empty(), "renewal failures: {failures:?}");

    // The files hold the current certificate and key, the key 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.ca_dir.join("server.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let on_disk =
        crank_security_core::parse_pem_certs("server", &std::fs::read(p.ca_dir.join("server.crt")).unwrap()).unwrap();
    let disk_serial = crank_security_core::CertMetadata::from_der(&on_disk[0]).unwrap().serial;
    let (now_serial, _, _) = served_certificate(&roots, p.ca_addr).await;
    assert!(
        serials.contains(&disk_serial) && (disk_serial == now_serial || serials.len() > 1),
        "server.crt holds {disk_serial}, served {now_serial}"
    );

    // A restart serves what was renewed: it fits the validity asked for, so nothing is
    // reissued at start.
    p.stop_ca();
    p.start_ca_logging().await;
    let (after_restart, _, _) = served_certificate(&roots, p.ca_addr).await;
    let reissued = p.ca_log().matches("reissuing the CA service's TLS certificate").count();
    assert_eq!(reissued, 1, "{}", p.ca_log());
    assert!(after_restart == disk_serial || p.ca_log().matches("renewed and swapped in").count() > swaps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_of_the_probe_port_holds_a_few_connections_briefly_and_probes_still_answer() {
    let p = Platform::start(&[]).await;
    let probe = free_addr().port();
    let (_hello, main) = p.worker("hello-world", &[("CRANK_PROBE_PORT", &probe.to_string())]).await;
    let probe_addr = SocketAddr::from(([127, 0, 0, 1], probe));
    crank_tests::wait_for_port(probe_addr).await.unwrap();

    // 40 connections from one address that never start a handshake.
    let attacker: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(crank_tests::connect_from(attacker, probe_addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let mut closes = tokio::task::JoinSet::new();
    for mut s in held {
        closes.spawn(async move { crank_tests::wait_closed(&mut s, Duration::from_secs(12)).await });
    }
    let mut closed_at_once = 0;
    let mut closed_later = Vec::new();
    while let Some(r) = closes.join_next().await {
        match r.unwrap() {
            Some(d) if d < Duration::from_secs(1) => closed_at_once += 1,
            Some(d) => closed_later.push(d),
            None => panic!("a connection that sent nothing was still open after 12 s"),
        }
    }
    // 8 per address are admitted and closed by the 5 s handshake timeout; the rest at once.
    assert_eq!(closed_at_once, 32, "closed later: {closed_later:?}");
    assert!(
        closed_later.iter().all(|d| *d >= Duration::from_secs(4) && *d < Duration::from_secs(8)),
        "{closed_later:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(12));

    // Meanwhile and after, another client is answered, on both ports.
    assert_eq!(readyz(probe).0, 200);
    let ops = p.identity("ops");
    let status = Platform::client(&ops).get(format!("https://127.0.0.1:{}/health", main.port())).send().await;
    assert_eq!(status.map(|r| r.status().as_u16()).ok(), Some(200));
}
