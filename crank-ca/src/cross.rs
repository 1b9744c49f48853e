//! Cross-certificates: how a CA certificate a worker already trusts vouches for another
//! root. A worker never trusts a new root because an answer lists it; it trusts it when
//! the same answer carries a certificate for that root's name and key signed by a root it
//! trusts ([`crank_runtime::trust::accept_trust_update`]). The CA makes them for the next root
//! of a rollover (both ways) and for an upstream signer's roots.

use anyhow::Context;
use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The subject of `der`, rebuilt with the same attribute types and string encodings so
/// that a certificate naming it matches byte for byte (names are compared as encoded).
pub(crate) fn subject_of(der: &[u8]) -> anyhow::Result<DistinguishedName> {
    let (_, cert) = X509Certificate::from_der(der)?;
    let mut dn = DistinguishedName::new();
    for attr in cert.subject().iter_attributes() {
        let oid: Vec<u64> = attr.attr_type().iter().context("an attribute type is not a valid OID")?.collect();
        let text = attr.as_str().context("a subject attribute is not a string")?.to_owned();
        let value = match attr.attr_value().tag() {
            Tag::PrintableString => DnValue::PrintableString(text.try_into()?),
            Tag::Ia5String => DnValue::Ia5String(text.try_into()?),
            Tag::Utf8String => DnValue::Utf8String(text),
            other => anyhow::bail!("a subject attribute is encoded as {other:?}, which cannot be reproduced"),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

/// A CA certificate for `subject`'s name (set in `params`) and `subject_key`, issued by
/// `issuer` (whose own validity ends at `issuer_end`), valid from now (less a minute of
/// skew) to no later than the end of its issuer's validity or of `params`.
pub(crate) fn certificate(
    mut params: CertificateParams,
    subject_key: &impl PublicKeyData,
    issuer: &Issuer<'_, KeyPair>,
    issuer_end: OffsetDateTime,
    now: OffsetDateTime,
) -> anyhow::Result<String> {
    params.serial_number = Some(crate::serial::random_serial());
    params.not_before = now - time::Duration::seconds(60);
    params.not_after = params.not_after.min(issuer_end);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    Ok(params.signed_by(subject_key, issuer)?.pem())
}

/// A cross-certificate for the self-signed root `root`: its name, its key, its validity
/// (bounded by the issuer's), issued by `issuer`.
pub(crate) fn for_root(
    root: &CertificateDer<'_>,
    issuer: &Issuer<'_, KeyPair>,
    issuer_end: OffsetDateTime,
    now: OffsetDateTime,
) -> anyhow::Result<String> {
    let (_, cert) = X509Certificate::from_der(root)?;
    anyhow::ensure!(
        cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok(),
        "{} is not a self-signed root",
        cert.subject()
    );
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_of(root)?;
    params.not_after = cert.validity().not_after.to_datetime();
    let key = rcgen::SubjectPublicKeyInfo::from_der(cert.public_key().raw)?;
    certificate(params, &key, issuer, issuer_end, now)
}
