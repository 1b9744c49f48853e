//! Capability access policy: every request authorised by `can_access_capability`, from
//! the capabilities the CA wrote into the caller's certificate.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use crank_security_core::{CertificateBundle, EventKind, WorkerId};
use crank_tests::{Recorder, TestCa};
use serde_json::Value;

/// A worker serving `email.classify` at `POST /classify`, and `GET /` (no capability).
fn email_routes() -> (Router, Router) {
    let open = crank_runtime::demo::hello_routes();
    let classify = Router::new().route("/classify", post(|| async { "spam" }));
    (open, classify)
}

/// A policy file defining only `can_access_capability`: `capability` allowed to every
/// caller, under a rate limit.
fn allow_with_rate_limit(capability: &str, per_second: f64, burst: u32) -> String {
    format!(
        "package crank\nimport rego.v1\n\
         can_access_capability := {{\"allow\": true, \"rate_limit\": {{\"requests_per_second\": {per_second}, \"burst\": {burst}}}}} \
         if input.target.capability == \"{capability}\"\n"
    )
}

async fn admin(ca: &TestCa) -> CertificateBundle {
    let (cert, key) = ca.ca.issue_admin(&WorkerId::new("alice").unwrap(), time::Duration::hours(1)).await.unwrap();
    let roots = ca.dir.trust_bundle_pem().unwrap();
    CertificateBundle::from_pem(cert.as_bytes(), key.as_bytes(), roots.as_bytes()).unwrap()
}

async fn post_classify(client: &reqwest::Client, base: &str) -> (u16, Value, Option<String>) {
    let r = client.post(format!("{base}/classify")).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = r.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_is_served_to_holders_and_administrators_and_refused_to_others_with_a_reason() {
    let ca = TestCa::start().await;
    let events = Arc::new(Recorder::default());
    let (open, classify) = email_routes();
    let worker =
        ca.app("email", open).capability("email.classify", classify).event_sink(events.clone()).start().await.unwrap();
    let base = format!("https://127.0.0.1:{}", worker.addr().port());
    let holder = ca.bootstrap_with("classifier-client", &["email.classify"]).await;
    assert_eq!(holder.metadata().capabilities, ["email.classify"], "the CA wrote the grant into the certificate");
    let plain = ca.bootstrap("plain-client").await;
    let admin = admin(&ca).await;
    assert_eq!(admin.metadata().capabilities, ["admin"]);
    let client = |b: &CertificateBundle| super::mtls(b, b.ca());

    assert_eq!(post_classify(&client(&holder), &base).await.0, 200);
    assert_eq!(post_classify(&client(&admin), &base).await.0, 200, "administrators hold every capability");
    let (status, body, _) = post_classify(&client(&plain), &base).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "access_denied");
    assert_eq!(body["error"]["capability"], "email.classify");
    let reason = body["error"]["message"].as_str().unwrap();
    assert!(reason.contains("does not hold capability email.classify"), "{reason}");
    // A route that names no capability: any worker of the trust domain.
    let r = client(&plain).get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // /metrics is the capability metrics.read.
    let r = client(&plain).get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = client(&admin).get(format!("{base}/metrics")).send().await.unwrap();
    let metrics = r.text().await.unwrap();
    assert!(
        metrics.contains(r#"crank_access_decisions_total{capability="email.classify",decision="deny"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"crank_access_decisions_total{capability="email.classify",decision="allow"} 2"#));
    let denied = events.of(EventKind::AccessDenied);
    assert_eq!(denied.len(), 2, "one per refusal (classify, metrics)");
    assert_eq!(denied[0].worker_id.as_deref(), Some("plain-client"));
    assert!(denied[0].correlation_id.as_str().starts_with("req_"));
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rego_file_dropped_in_changes_access_live_and_sets_a_rate_limit() {
    let ca = TestCa::start().await;
    let policy = tempfile::tempdir().unwrap();
    // At first, the defaults only (a directory needs one file: an unrelated extension).
    std::fs::write(
        policy.path().join("deny.rego"),
        "package crank\nimport rego.v1\ndeny contains \"never\" if false\n",
    )
    .unwrap();
    let engine = crank_policy::ReloadingEngine::start(policy.path()).unwrap();
    let (open, classify) = email_routes();
    let worker = ca.app("email", open).capability("email.classify", classify).policy(engine).start().await.unwrap();
    let base = format!("https://127.0.0.1:{}", worker.addr().port());
    let plain = super::mtls(&ca.bootstrap("plain-client").await, worker.bundle.ca());
    assert_eq!(post_classify(&plain, &base).await.0, 403);

    // A file defining only can_access_capability: everyone of the domain, one request
    // every 2 s with a burst of 2.
    std::fs::write(policy.path().join("access.rego"), allow_with_rate_limit("email.classify", 0.5, 2)).unwrap();
    let mut last = 0;
    for _ in 0..50 {
        last = post_classify(&plain, &base).await.0;
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 200, "the dropped-in file allowed the call within the reload interval");
    // One more within the burst, then 429 with Retry-After.
    let (second, _, _) = post_classify(&plain, &base).await;
    let (third, body, retry) = post_classify(&plain, &base).await;
    assert_eq!((second, third), (200, 429), "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Undeclared routes still follow the defaults.
    assert_eq!(plain.get(format!("{base}/")).send().await.unwrap().status(), 200);

    // The file removed: the default decides again.
    std::fs::remove_file(policy.path().join("access.rego")).unwrap();
    let mut status = 0;
    for _ in 0..50 {
        status = post_classify(&plain, &base).await.0;
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 403);
    worker.shutdown().await.unwrap();
}

/// An administrator's bundle from `crank ca admin-cert`.
fn admin_bundle(p: &crank_tests::Platform, name: &str) -> CertificateBundle {
    let dir = p.admin(name);
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    CertificateBundle::from_pem(&read("admin.crt"), &read("admin.key"), &read("ca.crt")).unwrap()
}

async fn status(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `/metrics` (the capability `metrics.read`) at each of `urls` (the hello-world
/// worker's and the CA's): refused to a plain worker (`prometheus`) with the policy's
/// reason, served to a worker granted it and to an administrator; the worker logged the
/// refusal. The plain worker's client, for more.
async fn metrics_read_is_for_holders_and_administrators(p: &crank_tests::Platform, urls: &[&str]) -> reqwest::Client {
    let plain = crank_tests::Platform::client(&p.identity("prometheus"));
    let granted = crank_tests::Platform::client(&p.identity_with("grafana", &["metrics.read"]));
    let admin = crank_tests::Platform::client(&admin_bundle(p, "ops"));
    for url in urls {
        let (code, body) = status(&plain, url).await;
        assert_eq!(code, 403, "{url}: {body}");
        assert_eq!(body["error"]["capability"], "metrics.read");
        assert!(body["error"]["message"].as_str().unwrap().contains("does not hold capability metrics.read"));
        assert_eq!(status(&granted, url).await.0, 200, "{url}");
        assert_eq!(status(&admin, url).await.0, 200, "{url}");
    }
    assert!(
        p.log("hello-world").lines().any(|l| l.contains("ACCESS_DENIED") && l.contains("prometheus")),
        "the worker logged the refusal"
    );
    plain
}

/// The same decisions with the defaults as a WebAssembly module (the Rust WASM policy)
/// in the CA's `--policy-dir` and the worker's `CRANK_POLICY_DIR`: `/metrics` of both,
/// and the CA's revocation (`ca.revoke`): refused to a plain worker, allowed to an
/// administrator and to a worker granted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_access_decisions_under_a_wasm_policy_on_the_real_binaries() {
    let scratch = tempfile::tempdir().unwrap();
    let wasm = crank_tests::wasm_policy_dir(&scratch.path().join("policy"));
    let wasm_s = wasm.to_str().unwrap();
    let p = crank_tests::Platform::start_with(crank_tests::PlatformOptions {
        ca_log: true,
        ..crank_tests::PlatformOptions::serve(&["--policy-dir", wasm_s])
    })
    .await;
    let (_hello, addr) = p.worker("hello-world", &[("CRANK_POLICY_DIR", wasm_s)]).await;
    for (who, log) in [("the CA", p.ca_log()), ("the worker", p.log("hello-world"))] {
        assert!(
            log.lines().any(|l| l.contains("policy loaded") && l.contains(r#""engine":"wasm""#)),
            "{who} decides with the WASM policy: {log}"
        );
    }
    let worker_metrics = format!("https://127.0.0.1:{}/metrics", addr.port());
    let ca_metrics = format!("{}/metrics", p.ca_url());
    let plain = metrics_read_is_for_holders_and_administrators(&p, &[&worker_metrics, &ca_metrics]).await;

    let revocations = format!("{}/v1/revocations", p.ca_url());
    let victim = p.identity("victim");
    let body = serde_json::json!({"serial": victim.metadata().serial, "reason": "keyCompromise"});
    let r = plain.post(&revocations).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let refusal: Value = r.json().await.unwrap();
    assert_eq!(refusal["error"]["capability"], "ca.revoke", "{refusal}");
    assert!(refusal["error"]["message"].as_str().unwrap().contains("does not hold capability ca.revoke"), "{refusal}");
    let revoker = crank_tests::Platform::client(&p.identity_with("revoker", &["ca.revoke"]));
    let r = revoker.post(&revocations).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let out = p.revoke(&p.admin("ops-revoker"), &["--worker-id", "prometheus"]).unwrap();
    assert!(out.contains("prometheus"), "{out}");
    let refused = p.ca_events().into_iter().filter(|e| e["event"] == "ACCESS_DENIED").count();
    assert!(refused >= 2, "the CA logged its refusals (metrics, revocation): {refused}");
}

/// The real binaries: `crank ca serve` with the policy directory `crank ca init` made,
/// `hello-world` with `CRANK_POLICY_DIR`. `/metrics` (the capability `metrics.read`) of
/// the worker and of the CA: refused to a plain worker with the reason, served to a
/// worker granted it and to an administrator. A Rego file copied into the worker's
/// policy directory, and one into the CA's, change decisions while everything serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_read_is_decided_by_policy_on_the_real_binaries_and_dropped_in_files_change_it_live() {
    let p = crank_tests::Platform::start(&[]).await;
    assert!(p.ca_dir.join("policies/defaults.rego").is_file(), "crank ca init made the CA's policy directory");
    let worker_policy = p.tmp.path().join("worker-policy");
    std::fs::create_dir(&worker_policy).unwrap();
    std::fs::copy(crank_tests::policies().join("examples/deny_workers.rego"), worker_policy.join("deny.rego")).unwrap();
    let (_hello, addr) = p.worker("hello-world", &[("CRANK_POLICY_DIR", worker_policy.to_str().unwrap())]).await;
    let worker_metrics = format!("https://127.0.0.1:{}/metrics", addr.port());
    let ca_metrics = format!("{}/metrics", p.ca_url());

    let plain = metrics_read_is_for_holders_and_administrators(&p, &[&worker_metrics, &ca_metrics]).await;

    // The example that lets `prometheus` scrape, copied into the worker's directory.
    std::fs::copy(
        crank_tests::policies().join("examples/metrics_scrapers.rego"),
        worker_policy.join("metrics_scrapers.rego"),
    )
    .unwrap();
    crank_tests::eventually("the dropped-in policy in force at the worker", Duration::from_secs(10), || async {
        status(&plain, &worker_metrics).await.0 == 200
    })
    .await;
    assert_eq!(status(&plain, &ca_metrics).await.0, 403, "the CA's policy did not change");

    // And a deny list copied into the CA's own policy directory: no certificate for
    // mallory, without a restart.
    std::fs::copy(crank_tests::policies().join("examples/deny_workers.rego"), p.ca_dir.join("policies/deny.rego"))
        .unwrap();
    let mut refused = String::new();
    for i in 0..50 {
        let dir = p.tmp.path().join(format!("mallory-{i}"));
        match crank_tests::cert_init("mallory", &p.token("mallory"), &p.ca_url(), &dir) {
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => {
                refused = e.to_string();
                break;
            }
        }
    }
    assert!(refused.contains("deny list"), "mallory was refused by the dropped-in file: {refused}");
}

/// Past its bound on requests in flight a worker sheds at once (503, `Retry-After`),
/// and counts it; the runtime's mTLS client honours `Retry-After` (a 429 is waited out
/// and the call succeeds) and gives a 403 as a typed error naming the capability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_sheds_and_the_mtls_client_waits_out_limits_and_names_refusals() {
    let ca = TestCa::start().await;
    let policy = tempfile::tempdir().unwrap();
    std::fs::write(policy.path().join("access.rego"), allow_with_rate_limit("email.limited", 1.0, 1)).unwrap();
    let slow = Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "done"
        }),
    );
    let limited = Router::new().route("/limited", axum::routing::get(|| async { "ok" }));
    let worker = ca
        .app("email", slow)
        .capability("email.limited", limited)
        .capability("email.classify", Router::new().route("/classify", post(|| async { "spam" })))
        .policy(Arc::new(crank_policy::RegoEngine::from_dir(policy.path()).unwrap()))
        .connection_limits(crank_runtime::ConnectionLimits {
            max_in_flight_requests: 1,
            ..crank_runtime::ConnectionLimits::default()
        })
        .start()
        .await
        .unwrap();
    let base = format!("https://127.0.0.1:{}", worker.addr().port());
    let me = super::mtls(&ca.bootstrap("caller").await, worker.bundle.ca());

    // One slow request in flight: the next is shed.
    let busy = tokio::spawn({
        let (me, url) = (me.clone(), format!("{base}/slow"));
        async move { me.get(url).send().await.unwrap().status().as_u16() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = me.get(format!("{base}/limited")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(busy.await.unwrap(), 200);

    // The runtime's client (the worker calling itself, as a peer would): a 429 is waited
    // out, a 403 is a typed error.
    let client = &worker.context.client;
    let started = std::time::Instant::now();
    for _ in 0..2 {
        let r = client.call(client.get(format!("{base}/limited"))).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(started.elapsed() >= Duration::from_millis(700), "the second call waited for Retry-After");
    match client.call(client.post(format!("{base}/classify"))).await {
        Err(crank_runtime::CallError::Denied { capability, reason }) => {
            assert_eq!(capability.as_deref(), Some("email.classify"));
            assert!(reason.contains("does not hold capability email.classify"), "{reason}");
        }
        other => panic!("a 403 must be CallError::Denied: {other:?}"),
    }
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 403, "the worker's own identity does not hold metrics.read");
    worker.shutdown().await.unwrap();
}

/// A rate limit set by configuration (the builder, as `CRANK_RATE_LIMITS` does) applies
/// when the policy's decision sets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_rate_limit_applies_when_policy_sets_none() {
    let ca = TestCa::start().await;
    let (open, classify) = email_routes();
    let limit = crank_security_core::RateLimit { requests_per_second: 0.5, burst: 1 };
    let worker = ca
        .app("email", open)
        .capability("email.classify", classify)
        .rate_limit("email.classify", limit)
        .start()
        .await
        .unwrap();
    let base = format!("https://127.0.0.1:{}", worker.addr().port());
    let holder = ca.bootstrap_with("classifier-client", &["email.classify"]).await;
    let client = super::mtls(&holder, holder.ca());
    assert_eq!(post_classify(&client, &base).await.0, 200);
    let (status, body, retry) = post_classify(&client, &base).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("2"));
    // Another caller has its own bucket.
    let other = ca.bootstrap_with("other-client", &["email.classify"]).await;
    assert_eq!(post_classify(&super::mtls(&other, other.ca()), &base).await.0, 200);
    worker.shutdown().await.unwrap();
}

/// Who else could present a grant. On the real binaries, against `hello-world`'s and the
/// CA's `/metrics` (`metrics.read`) and the CA's revocation (`ca.revoke`):
/// - a CSR that carries the capabilities extension itself, asking for `admin`: the CA
///   writes only what the join token granted, so the certificate holds nothing;
/// - a join token granting `admin`: `crank token create` refuses it;
/// - a worker named `admin`: a worker, not an administrator;
/// - another crank CA's certificates granting `metrics.read`, and its administrator:
///   refused in the handshake, before any policy is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_that_the_ca_did_not_write_get_nothing_on_the_real_binaries() {
    let p = crank_tests::Platform::start(&[]).await;
    let (_hello, addr) = p.worker("hello-world", &[]).await;
    let urls = [format!("https://127.0.0.1:{}/metrics", addr.port()), format!("{}/metrics", p.ca_url())];
    let roots = vec![p.identity("probe").ca()[0].clone()];

    // A CSR asking for `admin` through the capabilities extension.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.custom_extensions.push(rcgen::CustomExtension::from_oid_content(
        &[2, 25, 2_392_588_353_997_214_659],
        crank_security_core::capabilities_extension(&["admin".to_owned()]),
    ));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let anonymous = super::no_client_cert(&roots);
    let r = anonymous
        .post(format!("{}/v1/certificates", p.ca_url()))
        .json(&serde_json::json!({"csr": csr, "token": p.token("forger")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let issued: Value = r.json().await.unwrap();
    let (chain, bundle) = (issued["certificate_chain"].as_str().unwrap(), issued["ca_bundle"].as_str().unwrap());
    let forger =
        CertificateBundle::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes(), bundle.as_bytes()).unwrap();
    assert!(forger.metadata().capabilities.is_empty(), "{:?}", forger.metadata().capabilities);
    let forger = super::mtls(&forger, &roots);
    for url in &urls {
        let (code, body) = status(&forger, url).await;
        assert_eq!(code, 403, "{url}: {body}");
    }

    // A token granting `admin`.
    let refused = crank_tests::crank(&[
        "token",
        "create",
        "--dir",
        p.ca_dir.to_str().unwrap(),
        "--worker-id",
        "w",
        "--capability",
        "admin",
    ])
    .unwrap_err()
    .to_string();
    assert!(refused.contains("admin"), "{refused}");

    // A worker named admin.
    let named_admin = super::mtls(&p.identity("admin"), &roots);
    for url in &urls {
        assert_eq!(status(&named_admin, url).await.0, 403, "{url}");
    }

    // Another crank CA's grants and administrator.
    let other = crank_tests::Platform::start(&[]).await;
    for (who, bundle) in [
        ("a worker granted metrics.read", other.identity_with("grafana", &["metrics.read"])),
        ("an administrator", admin_bundle(&other, "ops")),
    ] {
        let client = super::mtls(&bundle, &roots);
        for url in &urls {
            let e = client.get(url).send().await.expect_err(&format!("{who} of another CA at {url}"));
            assert!(e.is_connect() || e.is_request(), "{who} at {url}: refused in the handshake: {e:?}");
        }
    }
}

/// Limits on the real binaries. `hello-world` with `CRANK_RATE_LIMITS` answers a caller
/// past its rate 429 with `Retry-After` (another caller has its own bucket). `caller`
/// with `CRANK_MAX_IN_FLIGHT=1`, while its one request waits on a `hello-world` that
/// stopped answering (SIGSTOP), sheds the next ones at once (503, `Retry-After`, counted),
/// and serves again once `hello-world` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_rate_429_and_past_the_in_flight_bound_503_on_the_real_binaries() {
    let p = crank_tests::Platform::start(&[]).await;
    let (hello, addr) = p.worker("hello-world", &[("CRANK_RATE_LIMITS", "metrics.read=0.5/s:1")]).await;
    let hello_url = format!("https://127.0.0.1:{}", addr.port());
    let (_caller, caller_addr) =
        p.worker("caller", &[("CRANK_MAX_IN_FLIGHT", "1"), ("HELLO_WORLD_URL", hello_url.as_str())]).await;

    let metrics = format!("{hello_url}/metrics");
    let scraper = crank_tests::Platform::client(&p.identity_with("grafana", &["metrics.read"]));
    assert_eq!(status(&scraper, &metrics).await.0, 200);
    let r = scraper.get(&metrics).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let admin = crank_tests::Platform::client(&admin_bundle(&p, "ops"));
    assert_eq!(status(&admin, &metrics).await.0, 200, "another caller has its own bucket");

    let user = crank_tests::Platform::client(&p.identity("user"));
    let call = format!("https://127.0.0.1:{}/call", caller_addr.port());
    assert_eq!(status(&user, &call).await.0, 200);
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &hello.0.id().to_string()]).status().unwrap();
        assert!(ok.success(), "kill {sig}");
    };
    signal("-STOP");
    let waiting = tokio::spawn({
        let (user, call) = (user.clone(), call.clone());
        async move { user.get(&call).send().await.map(|r| r.status().as_u16()) }
    });
    // Wait until the waiting call is in flight: until then `/health` is served; from
    // then on it is shed too. (A fixed sleep raced on a loaded machine: the second call
    // could be admitted first and hang on the stopped hello-world.)
    let health = format!("https://127.0.0.1:{}/health", caller_addr.port());
    crank_tests::eventually("the first call is in flight at the caller", Duration::from_secs(20), || async {
        status(&user, &health).await.0 == 503
    })
    .await;
    let r = user.get(&call).send().await.unwrap();
    let shed = (r.status().as_u16(), r.headers().get("retry-after").cloned());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    signal("-CONT");
    assert_eq!(shed.0, 503, "{body}");
    assert_eq!(shed.1.unwrap(), "1");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let _ = waiting.await.unwrap();
    crank_tests::eventually("caller serves again", Duration::from_secs(10), || async {
        status(&user, &call).await.0 == 200
    })
    .await;
    let caller_metrics = status_text(&admin, &format!("https://127.0.0.1:{}/metrics", caller_addr.port())).await;
    assert!(caller_metrics.contains("crank_requests_shed_total 2"), "one /health and one /call: {caller_metrics}");
}

async fn status_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}
