//! What the CA puts in a certificate, checked with rustls-webpki, x509-parser and the
//! `openssl` command.

use std::time::SystemTime;

use crank_runtime::CaClient;
use crank_security_core::{
    CertificateProvider, CorrelationId, IssueRequest, KeyType, ProviderError, RenewRequest, WorkerId, build_csr,
    generate_key,
};
use crank_tests::TestCa;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

async fn issue(
    ca: &TestCa,
    worker: &str,
    csr_pem: String,
    caps: Vec<String>,
) -> Result<crank_security_core::IssuedCertificate, ProviderError> {
    let token = ca.token_with(worker, std::time::Duration::from_secs(60), caps);
    ca.ca.issue(IssueRequest { csr_pem, token, correlation_id: CorrelationId::new() }).await
}

fn leaf(pem: &str) -> CertificateDer<'static> {
    crank_security_core::parse_pem_certs("leaf", pem.as_bytes()).unwrap().remove(0)
}

#[tokio::test]
async fn issued_chain_verifies_with_webpki_and_openssl() {
    let ca = TestCa::start().await;
    let bundle = ca.bootstrap("verify-me").await;
    bundle.validate(SystemTime::now()).unwrap();

    // rustls-webpki directly, for both EKUs.
    let anchor = webpki::anchor_from_trusted_cert(&bundle.ca()[0]).unwrap();
    let ee = webpki::EndEntityCert::try_from(&bundle.chain()[0]).unwrap();
    let now = UnixTime::since_unix_epoch(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap());
    for usage in [webpki::KeyUsage::client_auth(), webpki::KeyUsage::server_auth()] {
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, std::slice::from_ref(&anchor), &[], now, usage, None, None)
            .unwrap();
    }

    // openssl, an outside implementation.
    let dir = ca.tmp.path().join("workers/verify-me");
    for purpose in ["sslclient", "sslserver"] {
        let out =
            crank_tests::openssl_output(&dir, &["verify", "-purpose", purpose, "-CAfile", "ca.crt", "client.crt"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "openssl verify -purpose {purpose}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn the_ca_sets_every_field_itself() {
    let ca = TestCa::start().await;
    // A CSR that asks for CA:true, certificate signing and code signing.
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let mut params = CertificateParams::new(vec!["greedy".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let issued = issue(&ca, "greedy", csr, vec![]).await.unwrap();

    let der = leaf(&issued.certificate_chain);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let bc = cert.basic_constraints().unwrap().expect("basic constraints present");
    assert!(!bc.value.ca, "a CSR asking for CA:true must yield a non-CA leaf");
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth && !eku.code_signing && eku.other.is_empty());
    let serial = cert.raw_serial();
    assert!(serial.len() >= 8, "serial has {} octets", serial.len());
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 24 * 3600 + 15 * 60, "24 h validity plus 15 min backdating (clock skew)");
    let backdate = time::OffsetDateTime::now_utc().unix_timestamp() - cert.validity().not_before.timestamp();
    assert!((895..=930).contains(&backdate), "not-before backdated {backdate} s");
    let meta = crank_security_core::CertMetadata::from_der(&der).unwrap();
    assert_eq!(meta.uri_sans, vec!["spiffe://crank.local/worker/greedy".to_owned()]);
    assert_eq!(meta.dns_sans, vec!["greedy".to_owned()]);
    assert_eq!(meta.subject, "CN=greedy, O=crank.local");
}

#[tokio::test]
async fn foreign_sans_are_refused_unless_a_capability_grants_them() {
    let ca = TestCa::start().await;
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let w = WorkerId::new("api").unwrap();
    let csr = build_csr(&key, &w, &["api".into(), "payments.bank.example".into()]).unwrap();
    let err = issue(&ca, "api", csr.clone(), vec![]).await.unwrap_err();
    assert!(matches!(&err, ProviderError::PolicyDenied(m) if m.contains("payments.bank.example")), "{err}");
    let ok = issue(&ca, "api", csr, vec!["san:payments.bank.example".into()]).await.unwrap();
    let meta = crank_security_core::CertMetadata::from_der(&leaf(&ok.certificate_chain)).unwrap();
    assert_eq!(meta.dns_sans, vec!["api".to_owned(), "payments.bank.example".to_owned()]);

    // A URI SAN in the CSR (someone else's SPIFFE ID) is refused outright.
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI("spiffe://crank.local/worker/admin".try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let err = issue(&ca, "api", csr, vec![]).await.unwrap_err();
    assert!(matches!(&err, ProviderError::BadRequest(m) if m.contains("unsupported kind")), "{err}");
}

#[tokio::test]
async fn every_key_type_is_issued() {
    let ca = TestCa::start().await;
    for kt in KeyType::ALL {
        let key = generate_key(kt).unwrap();
        let csr = build_csr(&key, &WorkerId::new("k").unwrap(), &["k".into()]).unwrap();
        let issued = issue(&ca, "k", csr, vec![]).await.unwrap_or_else(|e| panic!("{kt}: {e}"));
        let bundle = crank_security_core::CertificateBundle::from_pem(
            issued.certificate_chain.as_bytes(),
            key.serialize_pem().as_bytes(),
            issued.ca_bundle.as_bytes(),
        )
        .unwrap();
        bundle.validate(SystemTime::now()).unwrap_or_else(|e| panic!("{kt}: {e}"));
    }
}

#[tokio::test]
async fn renewal_over_mtls_keeps_the_identity_of_the_presented_certificate() {
    let ca = TestCa::start().await;
    let current = ca.bootstrap("renewer").await;
    let client = crank_tests::ca_client(vec![ca.url()], &current);
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let csr = build_csr(&key, &WorkerId::new("renewer").unwrap(), &["renewer".into()]).unwrap();
    // The worker id in the request body is not what decides: the TLS client certificate is.
    let req = RenewRequest {
        csr_pem: csr.clone(),
        worker_id: "someone-else".into(),
        current_serial: String::new(),
        current_fingerprint: None,
        correlation_id: CorrelationId::new(),
    };
    let renewed = client.renew(req).await.unwrap();
    assert_eq!(renewed.spiffe_id, "spiffe://crank.local/worker/renewer");
    assert_ne!(renewed.serial, current.metadata().serial);
    assert_eq!(
        ca.ca.store().certificate(&renewed.serial).await.unwrap().unwrap().kind,
        crank_ca::store::CertKind::Renew
    );

    // Without a client certificate, renewal is refused with 401.
    let fp = crank_security_core::fingerprint_sha256(&current.ca()[0]);
    let anon = CaClient::pinned(vec![ca.url()], &fp, &Default::default()).unwrap();
    let req = RenewRequest {
        csr_pem: csr,
        worker_id: "renewer".into(),
        current_serial: String::new(),
        current_fingerprint: None,
        correlation_id: CorrelationId::new(),
    };
    let err = anon.renew(req).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Unauthorized(m) if m.contains("requires a client certificate")), "{err}");
}

#[tokio::test]
async fn nothing_is_returned_before_its_ledger_row_exists() {
    let ca = TestCa::start().await;
    let bundle = ca.bootstrap("ledger").await;
    let row = ca.ca.store().certificate(&bundle.metadata().serial).await.unwrap().expect("ledger row");
    assert_eq!(row.worker_id, "ledger");
    assert_eq!(row.fingerprint, bundle.metadata().fingerprint_sha256);
    assert_eq!(row.status, crank_ca::store::CertStatus::Valid);
}
