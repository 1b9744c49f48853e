//! Everything that must be refused, and how.

use std::time::Duration;

use crank_ca::CaDir;
use crank_runtime::demo::hello_routes;
use crank_runtime::{BootstrapError, ErrorBody};
use crank_security_core::{CertificateBundle, EventKind, EventSinks, ProviderError};
use crank_tests::{AllowAll, OPENSSL_P256, TestCa, crank, openssl_csr_with};
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

/// Posts `csr_pem` with a fresh join token for `worker` (carrying `caps`) to the CA's
/// HTTP API: the status and the error message, if any.
async fn submit(ca: &TestCa, worker: &str, caps: &[&str], csr_pem: &str) -> (u16, String) {
    let roots = vec![ca.dir.root_der().unwrap()];
    let token = ca.token_with(worker, Duration::from_secs(60), caps.iter().map(|c| (*c).to_owned()).collect());
    let url = format!("{}v1/certificates", ca.url());
    let r = no_client_cert(&roots).post(url).json(&serde_json::json!({"csr": csr_pem, "token": token})).send();
    let r = r.await.unwrap();
    let status = r.status().as_u16();
    let message = if status == 200 { String::new() } else { r.json::<ErrorBody>().await.unwrap().error.message };
    (status, message)
}

#[tokio::test]
async fn csrs_signed_with_sha1_or_with_small_rsa_keys_are_refused_with_400_whatever_the_policy() {
    // A policy that allows everything: these refusals come before policy.
    let ca = TestCa::start_with_policy(std::sync::Arc::new(AllowAll)).await;
    let dir = ca.tmp.path();
    let csr = |name: &str, newkey: &[&str], args: &[&str]| {
        std::fs::read_to_string(openssl_csr_with(dir, name, &format!("/CN={name}"), newkey, args)).unwrap()
    };

    // `openssl req -sha1`, with an RSA key (which a SHA-1 check alone would let through)
    // and with an EC key.
    for (name, newkey, algorithm) in
        [("sha1-rsa", &["rsa:2048"][..], "sha1WithRSAEncryption"), ("sha1-ec", OPENSSL_P256, "ecdsa-with-SHA1")]
    {
        let (status, m) = submit(&ca, name, &[], &csr(name, newkey, &["-sha1"])).await;
        assert_eq!(status, 400, "{name}: {m}");
        assert!(m.contains(algorithm) && m.contains("SHA-1"), "{name}: the refusal names the algorithm: {m}");
        assert!(m.contains("SHA-256 or stronger"), "{name}: the refusal says what to use instead: {m}");
    }
    let (status, m) = submit(&ca, "md5", &[], &csr("md5", &["rsa:2048"], &["-md5"])).await;
    assert!(status == 400 && m.contains("md5WithRSAEncryption"), "{status} {m}");

    // RSA-1024, signed with SHA-256.
    let (status, m) = submit(&ca, "rsa1024", &[], &csr("rsa1024", &["rsa:1024"], &["-sha256"])).await;
    assert_eq!(status, 400, "{m}");
    assert!(
        m.contains("RSA key of 1024 bits, which is too small: at least 2048 bits are required (use ECDSA P-256"),
        "{m}"
    );

    // The same keys and tools, done right, are issued.
    let (status, m) = submit(&ca, "rsa2048", &[], &csr("rsa2048", &["rsa:2048"], &["-sha256"])).await;
    assert_eq!(status, 200, "{m}");
    let (status, m) = submit(&ca, "p256", &[], &csr("p256", OPENSSL_P256, &["-sha256"])).await;
    assert_eq!(status, 200, "{m}");
    // Nothing refused was recorded.
    assert_eq!(ca.events.of(EventKind::CertIssued).len(), 2);
}

/// A CSR from a fresh P-256 key asking for the DNS names `names`, made with rcgen (which,
/// unlike the worker's `build_csr`, does not check them).
fn csr_asking_for(names: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = names.iter().map(|n| SanType::DnsName((*n).try_into().unwrap())).collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn dns_names_that_are_not_host_names_are_refused_with_400_even_when_policy_grants_them() {
    // Granted by a san: capability under the default policy (capabilities are checked when
    // tokens are made, so this token is made as an older crank would have made it), and
    // by a policy that allows everything.
    let default = TestCa::start().await;
    let claims = crank_security_core::JoinTokenClaims {
        caps: vec!["san:a\nb.example".into()],
        ..crank_security_core::peek_token_claims(&default.token("newline")).unwrap()
    };
    let old_token = forge_with_token_key(&default.dir, &claims);
    let r = crank_security_core::CertificateProvider::issue(
        default.ca.as_ref(),
        crank_security_core::IssueRequest {
            csr_pem: csr_asking_for(&["a\nb.example"]),
            token: old_token,
            correlation_id: Default::default(),
        },
    )
    .await;
    match r {
        Err(ProviderError::BadRequest(m)) => assert!(m.contains(r#""a\nb.example""#), "{m}"),
        other => panic!("a name with a newline must be refused with 400, got {other:?}"),
    }

    let ca = TestCa::start_with_policy(std::sync::Arc::new(AllowAll)).await;
    for (name, why) in [
        ("a\nb.example", "control character"),
        ("*.example.internal", "wildcard"),
        ("a b.example", "space"),
        ("a..example", "empty label"),
        ("under_score.example", "letters, digits"),
    ] {
        let (status, m) = submit(&ca, "names", &[], &csr_asking_for(&["names", name])).await;
        assert_eq!(status, 400, "{name:?}: {m}");
        assert!(m.contains(&format!("{name:?}")) && m.contains(why), "the refusal names {name:?}, escaped: {m}");
    }
    let (status, m) = submit(&ca, "names", &[], &csr_asking_for(&["names", "api.example.internal"])).await;
    assert_eq!(status, 200, "{m}");
}

/// A join token with `claims`, signed with the CA's token key as `crank token create`
/// signs (but without its checks).
fn forge_with_token_key(dir: &CaDir, claims: &crank_security_core::JoinTokenClaims) -> String {
    let pem = CaDir::read_key(&dir.token_key()).unwrap().serialize_pem();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), claims, &key).unwrap()
}

#[test]
fn crank_token_create_refuses_a_san_capability_that_is_not_a_name_or_an_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let dir = dir.to_str().unwrap();
    crank(&["ca", "init", "--dir", dir]).unwrap();
    for bad in ["san:a\nb.example", "san:*.example.internal", "san:"] {
        let e = crank(&["token", "create", "--dir", dir, "--worker-id", "w", "--capability", bad]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains(&format!("capability {bad:?} is not valid")), "{bad:?}: {e}");
    }
    let token = crank(&["token", "create", "--dir", dir, "--worker-id", "w", "--capability", "san:API.example"]);
    let claims = crank_security_core::peek_token_claims(&token.unwrap()).unwrap();
    assert_eq!(claims.caps, ["san:api.example"]);
}
