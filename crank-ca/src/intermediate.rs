//! Intermediate-CA mode: the CA's key signs under a root from the organisation's
//! established PKI instead of a root of its own.
//!
//! ```text
//! crank ca init --dir DIR --csr   ──► intermediate.key (0600), intermediate.csr, token.key
//!                                      │
//!             enterprise PKI signs ◄───┘  (CA:true, keyCertSign, cRLSign)
//!                                      │
//! crank ca import --dir DIR --cert INTERMEDIATE.pem --chain ROOT.pem
//!     checks: CA, key match, key usage, path lengths, validity, webpki path to the root
//!     ──► intermediate.crt, root.crt (= the enterprise root: what workers trust),
//!         server.key/server.crt (the CA service's TLS identity, from the intermediate)
//! ```
//!
//! Leaves carry the chain (leaf, intermediate, any intermediates above it), so a peer
//! that trusts only the enterprise root verifies them; join tokens pin the enterprise
//! root; CRLs are signed by the intermediate.

use crank_security_core::{TrustDomain, cert_pem, fingerprint_sha256, parse_pem_certs, write_file_atomic};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::files::{CaDir, make_room, new_key, server_certificate, server_sans};
use crate::error::SetupError;

/// Options of `crank ca init --csr`.
#[derive(Debug, Clone)]
pub struct CsrOptions {
    /// Trust domain (default `crank.local`).
    pub trust_domain: TrustDomain,
    /// Extra names for the CA service's TLS certificate (issued at import).
    pub extra_sans: Vec<String>,
    /// Replace an existing CA.
    pub force: bool,
}

/// Makes the intermediate's key and CSR, the join-token key and the trust domain file;
/// returns the CSR, PEM (also written to `intermediate.csr`).
pub fn init_csr(dir: &CaDir, opts: &CsrOptions) -> Result<String, SetupError> {
    make_room(dir, opts.force)?;
    let key = new_key("the intermediate's key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Crank Platform Intermediate CA");
    dn.push(DnType::OrganizationName, opts.trust_domain.as_str());
    params.distinguished_name = dn;
    // What the CA asks for; the enterprise PKI decides what it signs, and import checks it.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(SetupError::certificate("making the intermediate's CSR"))?;
    let token_key = new_key("the join-token key")?;
    let sans = server_sans(&opts.extra_sans).join("\n");
    write_file_atomic(&dir.intermediate_key(), key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.intermediate_csr(), csr.as_bytes(), 0o644)?;
    write_file_atomic(&dir.token_key(), token_key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.trust_domain_file(), format!("{}\n", opts.trust_domain).as_bytes(), 0o644)?;
    write_file_atomic(&dir.server_sans_file(), format!("{sans}\n").as_bytes(), 0o644)?;
    Ok(csr)
}

/// What `import` installed.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Subject of the intermediate.
    pub subject: String,
    /// Subject of the enterprise root (the trust anchor).
    pub root_subject: String,
    /// SHA-256 of the enterprise root (what join tokens pin).
    pub root_fingerprint: String,
    /// End of the intermediate's validity.
    pub not_after: OffsetDateTime,
    /// Number of certificates between the intermediate and the root.
    pub upper_intermediates: usize,
}

/// Checks the certificate the enterprise root signed for `intermediate.csr` and installs
/// it with its chain. `intermediate_pem` holds the intermediate (optionally followed by the
/// intermediates above it); `chain_pem` the enterprise root, optionally with
/// intermediates. A different root than the installed one needs `switch_root`.
pub fn import(
    dir: &CaDir,
    intermediate_pem: &[u8],
    chain_pem: &[u8],
    switch_root: bool,
) -> Result<Imported, SetupError> {
    if !dir.is_intermediate() {
        return Err(SetupError::not_ready(format!(
            "{} has no intermediate.key: run `crank ca init --dir {} --csr` first (a CA made without --csr is a root of its own)",
            dir.dir.display(),
            dir.dir.display()
        )));
    }
    let key = CaDir::read_key(&dir.intermediate_key())?;
    let td = dir.trust_domain()?;
    let mut given = parse_pem_certs("intermediate certificate (--cert)", intermediate_pem)?;
    given.extend(parse_pem_certs("chain (--chain)", chain_pem)?);
    let ours = given.remove(0);
    let path = build_path(&ours, &given)?;
    let (anchor, uppers) = path.split_last().ok_or_else(|| SetupError::refused("the chain has no root"))?;
    check_intermediate(&ours, &key)?;
    check_path(&ours, &path)?;

    let anchor_fp = fingerprint_sha256(anchor);
    if let Ok(current) = dir.root_der()
        && fingerprint_sha256(&current) != anchor_fp
        && !switch_root
    {
        return Err(SetupError::refused(format!(
            "the chain ends at a different root (sha256 {anchor_fp}) than the installed one (sha256 {}); workers trust the installed root and join tokens pin it. Pass --switch-root to replace it anyway",
            fingerprint_sha256(&current)
        )));
    }

    let now = OffsetDateTime::now_utc();
    let meta = crank_security_core::CertMetadata::from_der(&ours)?;
    let issuer = Issuer::from_ca_cert_der(&ours, key).map_err(|e| {
        SetupError::refused("the intermediate certificate cannot be used to sign with intermediate.key").because(e)
    })?;
    let sans = read_sans(dir);
    let (server_key, server) =
        server_certificate(&sans, &td, &issuer, now, Some(meta.not_after), crate::files::SERVER_VALIDITY)?;
    let mut intermediates = vec![ours.clone()];
    intermediates.extend(uppers.iter().cloned());
    // The probe proves, with webpki's full rules (signatures, CA flags, key usage, path
    // length, name constraints, EKU nesting, validity), that what this CA will issue
    // verifies to the root alone.
    let anchors = [webpki::anchor_from_trusted_cert(anchor)
        .map_err(|e| SetupError::refused("the root is unusable as a trust anchor").because(e))?];
    verify_issued(server.der(), &intermediates, &anchors, webpki::KeyUsage::server_auth()).map_err(|e| {
        SetupError::refused("the CA service's certificate, signed by this intermediate, does not verify to the root")
            .because(e)
    })?;
    let probe = probe_leaf(&td, &issuer, meta.not_after)?;
    for usage in [webpki::KeyUsage::client_auth(), webpki::KeyUsage::server_auth()] {
        verify_issued(probe.der(), &intermediates, &anchors, usage).map_err(|e| {
            SetupError::refused("a worker certificate signed by this intermediate does not verify to the root")
                .because(e)
        })?;
    }

    let to_pem = |certs: &[CertificateDer<'_>]| certs.iter().map(|c| cert_pem(c)).collect::<String>();
    let anchor_pem = to_pem(std::slice::from_ref(anchor));
    write_file_atomic(&dir.intermediate_cert(), to_pem(&intermediates).as_bytes(), 0o644)?;
    write_file_atomic(&dir.root_cert(), anchor_pem.as_bytes(), 0o644)?;
    write_file_atomic(&dir.server_key(), server_key.serialize_pem().as_bytes(), 0o600)?;
    let server_chain = format!("{}{}{anchor_pem}", server.pem(), to_pem(&intermediates));
    write_file_atomic(&dir.server_cert(), server_chain.as_bytes(), 0o644)?;
    let root_meta = crank_security_core::CertMetadata::from_der(anchor)?;
    Ok(Imported {
        subject: meta.subject,
        root_subject: root_meta.subject,
        root_fingerprint: anchor_fp,
        not_after: meta.not_after,
        upper_intermediates: uppers.len(),
    })
}

fn read_sans(dir: &CaDir) -> Vec<String> {
    match std::fs::read_to_string(dir.server_sans_file()) {
        Ok(s) => s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
        Err(_) => server_sans(&[]),
    }
}

fn parse<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, SetupError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| SetupError::refused(format!("{what} is not a valid X.509 certificate")).because(e))
}

fn self_signed(c: &X509Certificate<'_>) -> bool {
    c.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(None).is_ok()
}

/// Orders the certificates from `ours` up to a self-signed root by issuer name and
/// signature; returns the path above `ours`, the root last.
fn build_path(
    ours: &CertificateDer<'static>,
    given: &[CertificateDer<'static>],
) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let mut path = Vec::new();
    let mut current = ours.clone();
    loop {
        let cur = parse("a certificate of the chain", &current)?;
        if self_signed(&cur) {
            if path.is_empty() {
                return Err(SetupError::refused(format!(
                    "the certificate given with --cert is self-signed ({}): give the intermediate the enterprise root signed for intermediate.csr",
                    cur.subject()
                )));
            }
            return Ok(path);
        }
        if path.len() > 8 {
            return Err(SetupError::refused("the chain is longer than 8 certificates or loops"));
        }
        let issuer = given.iter().find(|c| {
            parse("a certificate of the chain", c).is_ok_and(|p| {
                p.subject().as_raw() == cur.issuer().as_raw() && cur.verify_signature(Some(p.public_key())).is_ok()
            })
        });
        let Some(issuer) = issuer else {
            return Err(SetupError::refused(format!(
                "the chain does not reach a root: no certificate given with --cert/--chain is the issuer of {} (issuer {}) with a matching signature; --chain must end with the enterprise root (self-signed)",
                cur.subject(),
                cur.issuer()
            )));
        };
        path.push(issuer.clone());
        current = issuer.clone();
    }
}

/// The intermediate itself: this CA's key, a CA, allowed to sign certificates and CRLs,
/// valid now.
fn check_intermediate(ours: &CertificateDer<'_>, key: &KeyPair) -> Result<(), SetupError> {
    let cert = parse("the intermediate certificate", ours)?;
    let name = cert.subject();
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(SetupError::refused(format!(
            "the intermediate certificate ({name}) is for another key: its public key is not the one in intermediate.key, so it was not issued for this CA's intermediate.csr"
        )));
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => {
            return Err(SetupError::refused(format!(
                "the intermediate certificate ({name}) is not a CA certificate (basicConstraints CA:true is missing); have the enterprise root sign intermediate.csr as a CA (openssl: -extensions v3_ca with basicConstraints=critical,CA:true)"
            )));
        }
        Err(e) => {
            return Err(
                SetupError::refused("the intermediate certificate's basicConstraints cannot be read").because(e)
            );
        }
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            let mut missing = Vec::new();
            if !ku.value.key_cert_sign() {
                missing.push("keyCertSign");
            }
            if !ku.value.crl_sign() {
                missing.push("cRLSign");
            }
            if !missing.is_empty() {
                return Err(SetupError::refused(format!(
                    "the intermediate certificate ({name}) may not sign what this CA signs: its keyUsage lacks {}",
                    missing.join(" and ")
                )));
            }
        }
        Ok(None) => {
            return Err(SetupError::refused(format!(
                "the intermediate certificate ({name}) has no keyUsage extension; a CA certificate needs keyUsage keyCertSign and cRLSign"
            )));
        }
        Err(e) => {
            return Err(SetupError::refused("the intermediate certificate's keyUsage cannot be read").because(e));
        }
    }
    Ok(())
}

/// Every certificate above the intermediate: a CA whose path length allows the CAs
/// beneath it, and every certificate of the path valid now.
fn check_path(ours: &CertificateDer<'_>, path: &[CertificateDer<'_>]) -> Result<(), SetupError> {
    let now = OffsetDateTime::now_utc();
    for (depth, der) in std::iter::once(ours).chain(path.iter()).enumerate() {
        let cert = parse("a certificate of the chain", der)?;
        let name = cert.subject();
        let (nb, na) = (cert.validity().not_before.to_datetime(), cert.validity().not_after.to_datetime());
        if now < nb || now > na {
            return Err(SetupError::refused(format!("{name} is not valid now (valid from {nb} to {na})")));
        }
        if depth == 0 {
            continue;
        }
        let bc = cert.basic_constraints().ok().flatten();
        if !bc.as_ref().is_some_and(|b| b.value.ca) {
            return Err(SetupError::refused(format!("{name}, above the intermediate, is not a CA certificate")));
        }
        // `depth` CA certificates (the intermediate and those between) sit below it.
        if let Some(limit) = bc.and_then(|b| b.value.path_len_constraint)
            && (limit as usize) < depth
        {
            return Err(SetupError::refused(format!(
                "{name} has pathLenConstraint {limit}: it allows {limit} intermediate CA(s) beneath it, but this CA would be CA number {depth} below it, so certificates this intermediate issues would not verify; ask the enterprise PKI for an intermediate under a CA whose path length allows it"
            )));
        }
    }
    Ok(())
}

/// A worker-shaped leaf signed by the intermediate, only to check the path.
fn probe_leaf(
    td: &TrustDomain,
    issuer: &Issuer<'_, KeyPair>,
    not_after: OffsetDateTime,
) -> Result<rcgen::Certificate, SetupError> {
    let key = new_key("a probe certificate's key")?;
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "import-probe");
    p.not_before = now - time::Duration::seconds(60);
    p.not_after = not_after.min(now + time::Duration::hours(1));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    let uri = format!("spiffe://{td}/worker/import-probe");
    let uri = uri.as_str().try_into().map_err(SetupError::certificate(format!("{uri} as a URI SAN")))?;
    p.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    p.signed_by(&key, issuer).map_err(SetupError::certificate("signing a probe certificate with the intermediate"))
}

/// Whether `leaf` verifies to `anchors` through `intermediates` for `usage`, now, by
/// webpki's rules.
fn verify_issued(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'static>],
    anchors: &[rustls_pki_types::TrustAnchor<'_>],
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    let now = UnixTime::since_unix_epoch(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default(),
    );
    ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, anchors, intermediates, now, usage, None, None)?;
    Ok(())
}
