//! Everything that must be refused, and how.

use std::time::Duration;

use crank_runtime::ca::files::CaDir;
use crank_runtime::demo::hello_routes;
use crank_runtime::{BootstrapError, ErrorBody};
use crank_security_core::{CertificateBundle, EventSinks, ProviderError};
use crank_tests::TestCa;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};

use super::{mtls, no_client_cert};

async fn health(client: &reqwest::Client, port: u16) -> Result<reqwest::StatusCode, reqwest::Error> {
    client.get(format!("https://127.0.0.1:{port}/health")).send().await.map(|r| r.status())
}

/// A leaf signed by the real CA root that expired an hour ago.
fn expired_leaf(dir: &CaDir, worker: &str) -> CertificateBundle {
    let root_key = CaDir::read_key(&dir.root_key()).unwrap();
    let issuer = Issuer::from_ca_cert_der(&dir.root_der().unwrap(), root_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![worker.to_owned()]).unwrap();
    p.subject_alt_names.push(SanType::URI(format!("spiffe://crank.local/worker/{worker}").try_into().unwrap()));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(2);
    p.not_after = now - time::Duration::hours(1);
    let cert = p.signed_by(&key, &issuer).unwrap();
    let root_pem = std::fs::read(dir.root_cert()).unwrap();
    CertificateBundle::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes(), &root_pem).unwrap()
}

#[tokio::test]
async fn clients_without_a_valid_certificate_from_this_ca_are_refused() {
    let ca = TestCa::start().await;
    let worker = ca.worker("guarded", hello_routes()).await;
    let port = worker.addr().port();
    let good = ca.bootstrap("good-client").await;
    assert_eq!(health(&mtls(&good, good.ca()), port).await.unwrap(), 200);

    // No certificate at all.
    let err = health(&no_client_cert(good.ca()), port).await.expect_err("no client certificate must be refused");
    assert!(err.is_request() || err.is_connect(), "{err}");

    // A certificate from another CA.
    let other = TestCa::start().await;
    let foreign = other.bootstrap("intruder").await;
    assert!(health(&mtls(&foreign, good.ca()), port).await.is_err(), "certificate from another CA accepted");

    // An expired certificate signed by the right CA.
    let expired = expired_leaf(&ca.dir, "stale");
    assert!(expired.validate(std::time::SystemTime::now()).is_err());
    assert!(health(&mtls(&expired, good.ca()), port).await.is_err(), "expired certificate accepted");

    // The worker is still fine afterwards.
    assert_eq!(health(&mtls(&good, good.ca()), port).await.unwrap(), 200);
}

fn refused(err: BootstrapError) -> ProviderError {
    match err {
        BootstrapError::Refused(p) => p,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn reused_expired_tampered_and_foreign_tokens_are_refused_clearly() {
    let ca = TestCa::start().await;
    let none = EventSinks::empty();

    // Reused.
    let mut opts = ca.bootstrap_options("once");
    crank_runtime::bootstrap(&opts, &none).await.unwrap();
    opts.cert_dir = ca.tmp.path().join("again");
    let e = refused(crank_runtime::bootstrap(&opts, &none).await.unwrap_err());
    assert!(matches!(&e, ProviderError::Unauthorized(m) if m.contains("already used")), "{e}");

    // Expired: the CA refuses it even if the worker does not check first.
    let mut opts = ca.bootstrap_options("late");
    opts.token = ca.token_with("late", Duration::from_secs(1), vec![]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = crank_runtime::bootstrap(&opts, &none).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    let key = crank_security_core::generate_key(Default::default()).unwrap();
    let csr = crank_security_core::build_csr(&key, &crank_security_core::WorkerId::new("late").unwrap(), &[]).unwrap();
    let direct = crank_security_core::CertificateProvider::issue(
        ca.ca.as_ref(),
        crank_security_core::IssueRequest {
            csr_pem: csr.clone(),
            token: opts.token.clone(),
            correlation_id: Default::default(),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(&direct, ProviderError::Unauthorized(m) if m.contains("expired")), "{direct}");

    // Tampered: a claim changed after signing.
    let mut opts = ca.bootstrap_options("victim");
    let parts: Vec<&str> = opts.token.split('.').collect();
    use base64::Engine;
    let eng = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(eng.decode(parts[1]).unwrap())
        .unwrap()
        .replace("\"caps\":[]", "\"caps\":[\"san:evil.example\"]");
    opts.token = format!("{}.{}.{}", parts[0], eng.encode(payload), parts[2]);
    let e = refused(crank_runtime::bootstrap(&opts, &none).await.unwrap_err());
    assert!(matches!(&e, ProviderError::Unauthorized(m) if m.contains("invalid")), "{e}");

    // Another worker's token.
    let mut opts = ca.bootstrap_options("me");
    opts.token = ca.token("someone-else");
    let err = crank_runtime::bootstrap(&opts, &none).await.unwrap_err();
    assert!(matches!(&err, BootstrapError::Token(m) if m.contains("someone-else") && m.contains("me")), "{err}");

    // A token from another CA, sent to this one: the worker pins the other CA's root,
    // so it refuses to talk to this CA at all.
    let other = TestCa::start().await;
    let mut opts = ca.bootstrap_options("drifter");
    opts.token = other.token("drifter");
    let err = crank_runtime::bootstrap(&opts, &none).await.unwrap_err();
    assert!(err.to_string().contains("pinned"), "{err}");
    // And the CA itself refuses the foreign token.
    let direct = crank_security_core::CertificateProvider::issue(
        ca.ca.as_ref(),
        crank_security_core::IssueRequest {
            csr_pem: csr,
            token: other.token("drifter"),
            correlation_id: Default::default(),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(&direct, ProviderError::Unauthorized(_)), "{direct}");
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_4xx_codes() {
    let ca = TestCa::start().await;
    let roots = vec![ca.dir.root_der().unwrap()];
    let client = no_client_cert(&roots);
    let url = |p: &str| format!("{}{p}", ca.url().as_str().trim_end_matches('/'));

    let r = client
        .post(url("/v1/certificates"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error.code, "invalid_body");

    let r = client
        .post(url("/v1/certificates"))
        .json(&serde_json::json!({"csr": "garbage", "token": ca.token("x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: ErrorBody = r.json().await.unwrap();
    assert!(body.error.message.contains("csr"), "{}", body.error.message);

    let r = client
        .post(url("/v1/certificates"))
        .json(&serde_json::json!({"csr": "x", "token": "not-a-token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let big = "a".repeat(200 * 1024);
    let r =
        client.post(url("/v1/certificates")).json(&serde_json::json!({"csr": big, "token": "t"})).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error.code, "body_too_large");

    let r = client.get(url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // The CA is still serving after all that.
    let r = client.get(url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(url("/v1/trust-bundle")).send().await.unwrap();
    assert!(r.text().await.unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
}
