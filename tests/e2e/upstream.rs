//! The cfssl signer against a real `cfssl serve` (1.6 or newer): workers bootstrapped
//! through the CA, with cfssl signing, talk mTLS and renew, whether the CA authenticates
//! to cfssl with a client certificate or an authsign key; each misconfigured profile
//! cfssl accepts has its certificate refused by the CA's check, and a refusing or
//! unreachable cfssl is reported with its reason. What no cfssl configuration produces
//! (a certificate for another key, an extra DNS name) is covered by the check's unit
//! test in `crank-runtime/src/ca/check.rs`.

use std::process::Command;

use crank_runtime::demo::hello_routes;
use crank_security_core::{
    CertFiles, CertMetadata, CertificateBundle, CertificateProvider, CorrelationId, EventKind, IssueRequest,
    IssuedCertificate, KeyType, ProviderError, WorkerId, build_csr, generate_key, parse_pem_certs,
};
use crank_tests::upstream::{AUTH_KEY_HEX, Cfssl, first_cert};
use crank_tests::{KillOnDrop, TestCa, free_addr, renew_over_mtls, serve_ca_process, wait_for_port};

use super::{mtls, whoami};

/// Issues directly at the CA for `worker` with `csr_pem`; the token is returned for a
/// retry.
async fn issue_csr(ca: &TestCa, worker: &str, csr_pem: String) -> (Result<IssuedCertificate, ProviderError>, String) {
    let token = ca.token(worker);
    let req = IssueRequest { csr_pem, token: token.clone(), correlation_id: CorrelationId::new() };
    (ca.ca.issue(req).await, token)
}

/// A CSR for `worker` as workers make them.
fn worker_csr(worker: &str) -> String {
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    build_csr(&key, &WorkerId::new(worker).unwrap(), &[worker.into(), "localhost".into(), "127.0.0.1".into()]).unwrap()
}

/// Issues for `worker` with a CSR as workers make them.
async fn issue(ca: &TestCa, worker: &str) -> (Result<IssuedCertificate, ProviderError>, String) {
    issue_csr(ca, worker, worker_csr(worker)).await
}

/// A CSR for `w1` with the names policy allows, that also asks for what the CA never
/// grants: an OU, keyCertSign and codeSigning. The CA reads only its key and names.
fn overreaching_csr() -> String {
    use rcgen::{DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["w1".to_owned(), "localhost".into(), "127.0.0.1".into()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "w1");
    p.distinguished_name.push(DnType::OrganizationalUnitName, "payments");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::CodeSigning,
    ];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

/// A CA whose leaves `cfssl` signs with `profile`.
async fn ca_for(cfssl: &Cfssl, profile: &str, mtls: bool, auth_key_hex: Option<&str>) -> TestCa {
    TestCa::start_with_signer(cfssl.files.provider(cfssl.addr, Some(profile), mtls, auth_key_hex)).await
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
async fn ca_serve_with_cfssl_over_mutual_tls_bootstraps_workers_that_talk_mtls() {
    let cfssl = Cfssl::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let dir_s = dir.display().to_string();
    crank_tests::crank(&["ca", "init", "--dir", &dir_s]).unwrap();
    let args = cfssl.files.serve_args(cfssl.addr, "crank");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_ca, addr) = serve_ca_process(&dir, &args).await.unwrap();
    let url = format!("https://{addr}");
    let token =
        |worker: &str| crank_tests::crank(&["token", "create", "--dir", &dir_s, "--worker-id", worker]).unwrap();

    // The hello-world binary, bootstrapped by its runtime from a join token.
    let hello_certs = tmp.path().join("hello-world");
    let port = free_addr().port().to_string();
    let hello_token = token("hello-world");
    let _hello = KillOnDrop(
        super::cli::hello_world(&[
            ("CRANK_JOIN_TOKEN", &hello_token),
            ("CA_SERVICE_URL", &url),
            ("CERT_DIR", &hello_certs.display().to_string()),
            ("HELLO_WORLD_HTTPS_PORT", &port),
            ("CRANK_LISTEN_HOST", "127.0.0.1"),
        ])
        .spawn()
        .unwrap(),
    );
    wait_for_port(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();

    // A client identity with `crank cert init`, calling hello-world over mTLS.
    let client_certs = tmp.path().join("ops-client");
    let client_token = token("ops-client");
    crank_tests::cert_init("ops-client", &client_token, &url, &client_certs).unwrap();
    let bundle = CertificateBundle::load(&CertFiles::in_dir(&client_certs)).unwrap();
    let who = mtls(&bundle, bundle.ca())
        .get(format!("https://127.0.0.1:{port}/whoami"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(who["caller_spiffe_id"], "spiffe://crank.local/worker/ops-client", "{who}");

    // cfssl signed both, with exactly the names and subject the CA decided, and openssl
    // verifies them with cfssl's CA alone.
    let meta = bundle.metadata();
    assert_eq!(meta.issuer, "CN=up, O=Example Enterprise");
    assert_eq!(meta.uri_sans, ["spiffe://crank.local/worker/ops-client"]);
    assert!(meta.subject.contains("CN=ops-client") && meta.subject.contains("O=crank.local"), "{}", meta.subject);
    assert_eq!(cfssl.signed(), 2, "{}", cfssl.log());
    for certs in [&client_certs, &hello_certs] {
        let cert = certs.join("client.crt").display().to_string();
        crank_tests::openssl(cfssl.files.dir.path(), &["verify", "-CAfile", "up.pem", &cert]).unwrap();
    }

    // A plain-HTTP cfssl URL is refused at start.
    let mut args = cfssl.files.serve_args(cfssl.addr, "crank");
    args[3] = format!("http://{}", cfssl.addr);
    let bad =
        Command::new(crank_tests::bin("crank")).args(["ca", "serve", "--dir", &dir_s]).args(&args).output().unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("must use https://"), "{stderr}");
}

#[tokio::test]
async fn cfssl_with_authsign_alone_signs_workers_that_talk_mtls_and_renew() {
    let cfssl = Cfssl::start_without_client_certificates().await;
    let ca = ca_for(&cfssl, "crank-auth", false, Some(AUTH_KEY_HEX)).await;
    let up_root = first_cert(&cfssl.files.path("up.pem"));
    let hello = ca.worker("hello-world", hello_routes()).await;
    let caller = ca.bootstrap("caller").await;
    assert_eq!(caller.metadata().issuer, "CN=up, O=Example Enterprise");
    assert_eq!(caller.metadata().uri_sans, ["spiffe://crank.local/worker/caller"]);
    assert!(caller.ca().contains(&up_root) && caller.ca().contains(&ca.dir.root_der().unwrap()));
    let who = whoami(&mtls(&caller, caller.ca()), &hello).await;
    assert_eq!(who["caller_spiffe_id"], "spiffe://crank.local/worker/caller");

    // Renewal goes through cfssl too, and the ledger keeps all three.
    let renewed = renew_over_mtls(&ca, &caller).await;
    assert_eq!(renewed.metadata().issuer, "CN=up, O=Example Enterprise");
    assert_ne!(renewed.metadata().serial, caller.metadata().serial);
    assert_eq!(ledger_rows(&ca).await, 3);
    assert_eq!(cfssl.signed(), 3, "{}", cfssl.log());
    let record = ca.ca.store().certificate(&renewed.metadata().serial).await.unwrap().unwrap();
    assert_eq!(record.kind, crank_ca::store::CertKind::Renew);
    assert_eq!(record.fingerprint, renewed.metadata().fingerprint_sha256);
    assert_eq!(last(&ca, EventKind::CertIssued)["details"]["signer"], "cfssl");
    hello.shutdown().await.unwrap();

    // A wrong key is refused by cfssl, and so is the plain sign endpoint for a profile
    // with an auth key.
    let wrong = ca_for(&cfssl, "crank-auth", false, Some(&"ff".repeat(32))).await;
    let err = issue(&wrong, "w1").await.0.unwrap_err();
    assert!(matches!(&err, ProviderError::Refused(m) if m.contains("invalid token")), "{err}");
    assert_eq!(last(&wrong, EventKind::CsrFailed)["error"]["phase"], "sign");
    assert_eq!(ledger_rows(&wrong).await, 0);
    let plain = ca_for(&cfssl, "crank-auth", true, None).await;
    let err = issue(&plain, "w1").await.0.unwrap_err();
    assert!(matches!(&err, ProviderError::Refused(m) if m.contains("authentication required")), "{err}");
}

#[tokio::test]
async fn cfssl_requiring_client_certificates_takes_authsign_only_with_one() {
    let cfssl = Cfssl::start().await;
    let both = ca_for(&cfssl, "crank-auth", true, Some(AUTH_KEY_HEX)).await;
    let issued = issue(&both, "w1").await.0.unwrap();
    assert_eq!(issued.spiffe_id, "spiffe://crank.local/worker/w1");
    assert_eq!(ledger_rows(&both).await, 1);

    // Without a client certificate, the HMAC does not get through cfssl's handshake.
    let no_cert = ca_for(&cfssl, "crank-auth", false, Some(AUTH_KEY_HEX)).await;
    let err = issue(&no_cert, "w1").await.0.unwrap_err();
    assert!(matches!(&err, ProviderError::Unavailable(m) if m.contains("cfssl at")), "{err}");
    assert_eq!(ledger_rows(&no_cert).await, 0);
}

#[tokio::test]
async fn certificates_from_misconfigured_cfssl_profiles_are_never_handed_out() {
    let cfssl = Cfssl::start().await;
    // (profile, CSR overreaching, what the CA's refusal names)
    let cases: [(&str, bool, &[&str]); 5] = [
        ("ca", false, &["CA certificate", "keyCertSign"]),
        ("long", false, &["later than"]),
        ("server-only", false, &["not exactly clientAuth and serverAuth"]),
        // cfssl's default fills subject fields the request leaves empty from the CSR.
        ("csr-subject", true, &["its subject is \"", "OU=payments"]),
        // copy_extensions puts the CSR's extensions over cfssl's own: its SANs (without
        // the SPIFFE ID) and the key usages it asked for.
        ("copy-extensions", true, &["URI SANs are []", "keyCertSign", "codeSigning"]),
    ];
    for (profile, overreaching, expected) in cases {
        let ca = ca_for(&cfssl, profile, true, None).await;
        let csr = || if overreaching { overreaching_csr() } else { worker_csr("w1") };
        let signed = cfssl.signed();
        let (got, token) = issue_csr(&ca, "w1", csr()).await;
        let Err(err) = got else { panic!("{profile}: handed out\n{}", cfssl.log()) };
        assert_eq!(cfssl.signed(), signed + 1, "{profile}: cfssl did not sign\n{}", cfssl.log());
        let ProviderError::Refused(message) = &err else { panic!("{profile}: {err}") };
        for want in expected {
            assert!(message.contains(want), "{profile}: {want:?} not in {message}");
        }
        assert_eq!(ledger_rows(&ca).await, 0, "{profile}");
        assert_eq!(last(&ca, EventKind::CsrFailed)["error"]["phase"], "verify", "{profile}");
        assert_eq!(crank_runtime::ApiError::from(err).status, 502);
        // The refusal did not use the token up: the same token is refused for the same
        // reason, not as already used.
        let again = ca.ca.issue(IssueRequest { csr_pem: csr(), token, correlation_id: CorrelationId::new() }).await;
        assert!(matches!(&again, Err(ProviderError::Refused(m)) if m.contains(expected[0])), "{profile}: {again:?}");
    }

    // The recommended profile signs the same overreaching CSR exactly as the CA decided.
    let ca = ca_for(&cfssl, "crank", true, None).await;
    let issued = issue_csr(&ca, "w1", overreaching_csr()).await.0.unwrap();
    let leaf = parse_pem_certs("leaf", issued.certificate_chain.as_bytes()).unwrap().remove(0);
    let meta = CertMetadata::from_der(&leaf).unwrap();
    assert!(meta.subject.contains("CN=w1") && !meta.subject.contains("payments"), "{}", meta.subject);
    assert_eq!(meta.uri_sans, ["spiffe://crank.local/worker/w1"]);
    assert_eq!(ledger_rows(&ca).await, 1);
}

#[tokio::test]
async fn a_refusing_cfssl_is_csr_failed_with_its_reason() {
    let cfssl = Cfssl::start().await;
    let ca = ca_for(&cfssl, "example-com-only", true, None).await;
    let err = issue(&ca, "w1").await.0.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Refused(m) if m.contains("Request does not match policy whitelist")),
        "{err}"
    );
    let failed = last(&ca, EventKind::CsrFailed);
    assert_eq!(failed["error"]["phase"], "sign");
    assert!(failed["error"]["message"].as_str().unwrap().contains("policy whitelist"), "{failed}");
    assert_eq!(crank_runtime::ApiError::from(err).status, 502);
    assert_eq!(ledger_rows(&ca).await, 0);
}

#[tokio::test]
async fn cfssl_down_is_a_503_and_ca_unavailable() {
    let mut cfssl = Cfssl::start().await;
    let ca = ca_for(&cfssl, "crank", true, None).await;
    cfssl.stop();
    let err = issue(&ca, "w1").await.0.unwrap_err();
    assert!(matches!(&err, ProviderError::Unavailable(m) if m.contains("cfssl at https://127.0.0.1")), "{err}");
    assert_eq!(crank_runtime::ApiError::from(err).status, 503);
    let unavailable = last(&ca, EventKind::CaUnavailable);
    assert_eq!(unavailable["error"]["phase"], "sign");
    assert_eq!(ledger_rows(&ca).await, 0);
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
    let ca_dir = crank_ca::CaDir::new(&dir);
    let mut bundles = Vec::new();
    for worker in ["w1", "w2"] {
        let token = crank_ca::create_token(
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
