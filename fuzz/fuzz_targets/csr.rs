//! The CA's reading of a CSR (PEM text, then DER inside: signature, key type and size,
//! names), and its check of the certificate a signer returned before handing it out
//! (`check_signed`: a chain in PEM, checked against the CSR's key and the template
//! policy decided). Both see bytes an attacker (a worker, or an upstream signer) chose.
#![no_main]

use std::sync::OnceLock;

use crank_fuzz::{fixture, fixture_root};
use crank_security_core::{CertificateTemplate, SpiffeId};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

struct Check {
    public_key: Vec<u8>,
    template: CertificateTemplate,
    anchors: Vec<CertificateDer<'static>>,
    now: OffsetDateTime,
}

/// What the fixture leaf (`leaf.pem`, issued for `leaf.csr`) was signed against.
fn check() -> &'static Check {
    static CHECK: OnceLock<Check> = OnceLock::new();
    CHECK.get_or_init(|| {
        let csr = String::from_utf8(fixture("leaf.csr")).expect("fixture CSR is text");
        let parsed = crank_ca::parse_csr(&csr).expect("fixture CSR parses");
        let chain = fixture("leaf.pem");
        let leaf = crank_security_core::parse_pem_certs("fixture leaf", &chain).expect("fixture leaf parses");
        let (_, cert) = X509Certificate::from_der(&leaf[0]).expect("fixture leaf is X.509");
        let not_before = OffsetDateTime::from_unix_timestamp(cert.validity().not_before.timestamp()).unwrap();
        let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).unwrap();
        Check {
            public_key: parsed.public_key.clone(),
            template: CertificateTemplate {
                spiffe_id: SpiffeId::parse("spiffe://crank.local/worker/fuzz").unwrap(),
                dns_sans: vec!["fuzz".into()],
                ip_sans: vec![],
                not_before,
                not_after,
                renewal: false,
                capabilities: vec![],
            },
            anchors: vec![fixture_root()],
            now: not_before + time::Duration::minutes(30),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = crank_ca::parse_csr(&text);
    let c = check();
    let _ = crank_ca::check_signed(&text, &c.public_key, &c.template, Some(&c.anchors), c.now);
});
