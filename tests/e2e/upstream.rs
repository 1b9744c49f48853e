//! The cfssl signer: a real `cfssl serve` (Debian's golang-cfssl) for the wire, the
//! authentication and every refusal, and a stand-in for a newer cfssl (which writes URI
//! SANs) for the path where the CA hands a cfssl-signed certificate out.

use crank_runtime::demo::hello_routes;
use crank_security_core::{
    CertificateProvider, CorrelationId, EventKind, IssueRequest, KeyType, ProviderError, WorkerId, build_csr,
    generate_key,
};
use crank_tests::upstream::{AUTH_KEY_HEX, Behaviour, Cfssl, SignApiStandIn, first_cert};
use crank_tests::{TestCa, renew_over_mtls, serve_ca_process};

use super::{mtls, whoami};

/// Issues directly at the CA for `worker`; the token is returned for a retry.
async fn issue(ca: &TestCa, worker: &str) -> (Result<crank_security_core::IssuedCertificate, ProviderError>, String) {
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let w = WorkerId::new(worker).unwrap();
    let csr = build_csr(&key, &w, &[worker.into(), "localhost".into(), "127.0.0.1".into()]).unwrap();
    let token = ca.token(worker);
    let req = IssueRequest { csr_pem: csr, token: token.clone(), correlation_id: CorrelationId::new() };
    (ca.ca.issue(req).await, token)
}

async fn ledger_rows(ca: &TestCa) -> u64 {
    ca.ca.store().certificate_count().await.unwrap()
}

/// The last CA-side event of `kind`, as JSON.
fn last(ca: &TestCa, kind: EventKind) -> serde_json::Value {
    let events = ca.events.of(kind);
    serde_json::to_value(events.last().unwrap_or_else(|| panic!("no {kind:?} event"))).unwrap()
}

#[tokio::test]
async fn a_stand_in_for_newer_cfssl_signs_workers_that_talk_mtls_and_renew() {
    let upstream = SignApiStandIn::start(Behaviour::Honest).await;
    let signer = upstream.files.provider(upstream.addr(), Some("crank-auth"), true, Some(AUTH_KEY_HEX));
    let ca = TestCa::start_with_signer(signer).await;
    let up_root = first_cert(&upstream.files.path("up.pem"));
    let hello = ca.worker("hello-world", hello_routes()).await;
    let caller = ca.bootstrap("caller").await;
    assert_eq!(caller.metadata().issuer, "CN=up, O=Example Enterprise");
    assert!(caller.ca().contains(&up_root) && caller.ca().contains(&ca.dir.root_der().unwrap()));
    let client = mtls(&caller, caller.ca());
    let who = whoami(&client, &hello).await;
    assert_eq!(who["caller_spiffe_id"], "spiffe://crank.local/worker/caller");

    // What cfssl was asked: the CA's decision, the SPIFFE ID first.
    let asked = upstream.requests();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[1]["hosts"][0], "spiffe://crank.local/worker/caller");
    assert_eq!(asked[1]["subject"]["CN"], "caller");
    assert_eq!(asked[1]["profile"], "crank-auth");
    assert!(asked[1]["NotAfter"].is_string());

    // Renewal goes through cfssl too, and the ledger keeps both.
    let renewed = renew_over_mtls(&ca, &caller).await;
    assert_eq!(renewed.metadata().issuer, "CN=up, O=Example Enterprise");
    assert_eq!(ledger_rows(&ca).await, 3);
    let record = ca.ca.store().certificate(&renewed.metadata().serial).await.unwrap().unwrap();
    assert_eq!(record.kind, "renew");
    assert_eq!(last(&ca, EventKind::CertIssued)["details"]["signer"], "cfssl");
    hello.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stand_in_that_signs_other_fields_gets_nothing_handed_out() {
    for (behaviour, expected) in [
        (Behaviour::ExtraName, "payments.example"),
        (Behaviour::CaCertificate, "CA certificate"),
        (Behaviour::OtherKey, "not the CSR's"),
    ] {
        let upstream = SignApiStandIn::start(behaviour).await;
        let ca = TestCa::start_with_signer(upstream.files.provider(upstream.addr(), None, true, None)).await;
        let (got, _) = issue(&ca, "w1").await;
        let err = got.unwrap_err();
        assert!(matches!(&err, ProviderError::Refused(m) if m.contains(expected)), "{behaviour:?}: {err}");
        assert_eq!(ledger_rows(&ca).await, 0, "{behaviour:?}");
        assert_eq!(last(&ca, EventKind::CsrFailed)["error"]["phase"], "verify");
    }
}

#[tokio::test]
async fn real_cfssl_signs_over_mutual_tls_and_its_certificate_without_a_uri_san_is_refused() {
    let cfssl = Cfssl::start().await;
    let ca = TestCa::start_with_signer(cfssl.files.provider(cfssl.addr, Some("crank"), true, None)).await;
    let (got, token) = issue(&ca, "w1").await;
    let err = got.unwrap_err();
    // cfssl 1.2 signed (over mutual TLS), but wrote the SPIFFE ID as a DNS name.
    assert!(
        matches!(&err, ProviderError::Refused(m) if m.contains("DNS name SAN instead of a URI SAN")),
        "{err}\ncfssl log: {}",
        cfssl.log()
    );
    assert!(cfssl.log().contains("signed certificate with serial number"), "{}", cfssl.log());
    assert_eq!(ledger_rows(&ca).await, 0);
    let failed = last(&ca, EventKind::CsrFailed);
    assert_eq!(failed["error"]["phase"], "verify");
    // The token was not used up by the refusal: the same token is refused for the same
    // reason, not as "already used".
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let csr = build_csr(&key, &WorkerId::new("w1").unwrap(), &["w1".into()]).unwrap();
    let again = ca.ca.issue(IssueRequest { csr_pem: csr, token, correlation_id: CorrelationId::new() }).await;
    assert!(matches!(&again, Err(ProviderError::Refused(_))), "{again:?}");

    // A profile with a longer expiry, or without client auth, is named as well.
    for (profile, expected) in [("long", "later than"), ("server-only", "not exactly clientAuth and serverAuth")] {
        let ca = TestCa::start_with_signer(cfssl.files.provider(cfssl.addr, Some(profile), true, None)).await;
        let err = issue(&ca, "w1").await.0.unwrap_err();
        assert!(matches!(&err, ProviderError::Refused(m) if m.contains(expected)), "{profile}: {err}");
        assert_eq!(ledger_rows(&ca).await, 0);
    }
}

#[tokio::test]
async fn real_cfssl_authsign_takes_the_right_key_and_refuses_a_wrong_one() {
    let cfssl = Cfssl::start().await;
    let right =
        TestCa::start_with_signer(cfssl.files.provider(cfssl.addr, Some("crank-auth"), true, Some(AUTH_KEY_HEX))).await;
    let err = issue(&right, "w1").await.0.unwrap_err();
    // cfssl accepted the HMAC and signed; what it signed is refused by the CA's check.
    assert!(matches!(&err, ProviderError::Refused(m) if m.contains("not handed out")), "{err}");

    let wrong_key = "ff".repeat(32);
    let wrong =
        TestCa::start_with_signer(cfssl.files.provider(cfssl.addr, Some("crank-auth"), true, Some(&wrong_key))).await;
    let err = issue(&wrong, "w1").await.0.unwrap_err();
    assert!(matches!(&err, ProviderError::Refused(m) if m.contains("invalid token")), "{err}");
    assert_eq!(last(&wrong, EventKind::CsrFailed)["error"]["phase"], "sign");
    assert_eq!(ledger_rows(&wrong).await, 0);

    // cfssl requires a client certificate (-mutual-tls-ca): the HMAC alone does not get
    // through its TLS handshake.
    let no_cert =
        TestCa::start_with_signer(cfssl.files.provider(cfssl.addr, Some("crank-auth"), false, Some(AUTH_KEY_HEX)))
            .await;
    let err = issue(&no_cert, "w1").await.0.unwrap_err();
    assert!(matches!(&err, ProviderError::Unavailable(m) if m.contains("cfssl at")), "{err}");
    assert_eq!(ledger_rows(&no_cert).await, 0);

    // Without authsign, a profile with an auth key is refused by cfssl.
    let plain = TestCa::start_with_signer(cfssl.files.provider(cfssl.addr, Some("crank-auth"), true, None)).await;
    let err = issue(&plain, "w1").await.0.unwrap_err();
    assert!(matches!(&err, ProviderError::Refused(m) if m.contains("authentication required")), "{err}");
}

#[tokio::test]
async fn cfssl_down_is_a_503_and_ca_unavailable() {
    let mut cfssl = Cfssl::start().await;
    let ca = TestCa::start_with_signer(cfssl.files.provider(cfssl.addr, Some("crank"), true, None)).await;
    cfssl.stop();
    let err = issue(&ca, "w1").await.0.unwrap_err();
    assert!(matches!(&err, ProviderError::Unavailable(m) if m.contains("cfssl at https://127.0.0.1")), "{err}");
    assert_eq!(crank_runtime::ApiError::from(err).status, 503);
    let unavailable = last(&ca, EventKind::CaUnavailable);
    assert_eq!(unavailable["error"]["phase"], "sign");
    assert_eq!(ledger_rows(&ca).await, 0);
}

#[tokio::test]
async fn ca_serve_with_the_cfssl_signer_answers_workers_with_the_reason() {
    let cfssl = Cfssl::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    crank_tests::crank(&["ca", "init", "--dir", &dir.display().to_string()]).unwrap();
    let args = cfssl.files.serve_args(cfssl.addr, "crank");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_ca, addr) = serve_ca_process(&dir, &args).await.unwrap();
    let token =
        crank_tests::crank(&["token", "create", "--dir", &dir.display().to_string(), "--worker-id", "w1"]).unwrap();
    let url = format!("https://{addr}");
    let certs = tmp.path().join("w1");
    let err = crank_tests::crank(&[
        "cert",
        "init",
        "--worker-id",
        "w1",
        "--token",
        &token,
        "--ca-url",
        &url,
        "--cert-dir",
        &certs.display().to_string(),
        "--attempts",
        "1",
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("DNS name SAN instead of a URI SAN"), "{err}");
    assert!(!certs.join("client.crt").exists());

    // A plain-HTTP cfssl URL is refused at start.
    let mut args = cfssl.files.serve_args(cfssl.addr, "crank");
    args[3] = format!("http://{}", cfssl.addr);
    let bad = std::process::Command::new(crank_tests::bin("crank"))
        .args(["ca", "serve", "--dir", &dir.display().to_string()])
        .args(&args)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("must use https://"), "{stderr}");
}

#[tokio::test]
async fn the_custom_provider_example_serves_a_ca_whose_leaves_its_provider_signs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("team");
    let addr = crank_tests::free_addr();
    let child = std::process::Command::new(crank_tests::bin("custom-provider"))
        .args(["--dir", &dir.display().to_string(), "--listen", &addr.to_string()])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = crank_tests::KillOnDrop(child);
    crank_tests::wait_for_port(addr).await.unwrap();
    let url: url::Url = format!("https://{addr}").parse().unwrap();
    let ca_dir = crank_runtime::ca::files::CaDir::new(&dir);
    let mut bundles = Vec::new();
    for worker in ["w1", "w2"] {
        let token = crank_runtime::cli::create_token(
            &ca_dir,
            &WorkerId::new(worker).unwrap(),
            std::time::Duration::from_secs(60),
            vec![],
        )
        .unwrap();
        let opts = crank_runtime::BootstrapOptions {
            worker_id: Some(WorkerId::new(worker).unwrap()),
            token,
            ca_urls: vec![url.clone()],
            cert_dir: tmp.path().join(worker),
            sans: vec![],
            key_type: KeyType::default(),
            retry: crank_runtime::RetryPolicy::default(),
        };
        bundles.push(crank_runtime::bootstrap(&opts, &crank_security_core::EventSinks::empty()).await.unwrap());
    }
    assert_eq!(bundles[0].metadata().issuer, "CN=Team CA");
    let team_root = first_cert(&dir.join("team-ca.crt"));
    assert!(bundles[0].ca().contains(&team_root));
    // A worker serving with the team-signed certificate, called over mTLS by the other.
    let app = crank_runtime::WorkerApplication::new("w1")
        .port(0)
        .host("127.0.0.1".parse().unwrap())
        .routes(hello_routes())
        .security_config(crank_security_core::SecurityConfig {
            cert_dir: tmp.path().join("w1"),
            ca_urls: vec![url],
            environment: "test".into(),
        });
    let hello = app.start().await.unwrap();
    let who = whoami(&mtls(&bundles[1], bundles[1].ca()), &hello).await;
    assert_eq!(who["caller_spiffe_id"], "spiffe://crank.local/worker/w2");
    hello.shutdown().await.unwrap();
}
