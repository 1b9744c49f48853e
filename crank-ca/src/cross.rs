//! Cross-certificates: how a CA certificate a worker already trusts vouches for another
//! root. A worker never trusts a new root because an answer lists it; it trusts it when
//! the same answer carries a certificate for that root's name and key signed by a root it
//! trusts ([`crank_runtime::trust::accept_trust_update`]). The CA makes them for the next root
//! of a rollover (both ways) and for an upstream signer's roots.

use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::SetupError;

/// `der` parsed; `what` names it if it cannot be.
fn parse<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, SetupError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(SetupError::certificate(format!("reading {what}")))?;
    Ok(cert)
}

/// The subject of `der`, rebuilt with the same attribute types and string encodings so
/// that a certificate naming it matches byte for byte (names are compared as encoded).
pub(crate) fn subject_of(der: &[u8]) -> Result<DistinguishedName, SetupError> {
    let cert = parse("the root", der)?;
    let unusable = |message: &str| SetupError::Certificate { message: message.to_owned(), source: None };
    let mut dn = DistinguishedName::new();
    for attr in cert.subject().iter_attributes() {
        let oid: Vec<u64> =
            attr.attr_type().iter().ok_or_else(|| unusable("an attribute type is not a valid OID"))?.collect();
        let text = attr.as_str().map_err(|e| unusable("a subject attribute is not a string").because(e))?.to_owned();
        let value = match attr.attr_value().tag() {
            Tag::PrintableString => DnValue::PrintableString(
                text.try_into().map_err(SetupError::certificate("a subject attribute is not a PrintableString"))?,
            ),
            Tag::Ia5String => DnValue::Ia5String(
                text.try_into().map_err(SetupError::certificate("a subject attribute is not an IA5String"))?,
            ),
            Tag::Utf8String => DnValue::Utf8String(text),
            other => {
                return Err(unusable(&format!(
                    "a subject attribute is encoded as {other:?}, which cannot be reproduced"
                )));
            }
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
) -> Result<String, SetupError> {
    params.serial_number = Some(crate::serial::random_serial());
    params.not_before = now - time::Duration::seconds(60);
    params.not_after = params.not_after.min(issuer_end);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    Ok(params.signed_by(subject_key, issuer).map_err(SetupError::certificate("signing a cross-certificate"))?.pem())
}

/// A cross-certificate for the self-signed root `root`: its name, its key, its validity
/// (bounded by the issuer's), issued by `issuer`.
pub(crate) fn for_root(
    root: &CertificateDer<'_>,
    issuer: &Issuer<'_, KeyPair>,
    issuer_end: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<String, SetupError> {
    let cert = parse("the root", root)?;
    if cert.subject().as_raw() != cert.issuer().as_raw() || cert.verify_signature(None).is_err() {
        return Err(SetupError::refused(format!("{} is not a self-signed root", cert.subject())));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_of(root)?;
    params.not_after = cert.validity().not_after.to_datetime();
    let key = rcgen::SubjectPublicKeyInfo::from_der(cert.public_key().raw)
        .map_err(SetupError::certificate(format!("reading the public key of {}", cert.subject())))?;
    certificate(params, &key, issuer, issuer_end, now)
}
