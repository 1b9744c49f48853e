//! The certificate of a join-token key: what it says (its id, when it was made, until
//! when its tokens are accepted), how the signing key issues it, and how it is read.
//! See [`crate::token_key`] for the key's rotation.

use std::time::Duration;

use crank_security_core::{TrustDomain, parse_pem_certs};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::Digest;
use time::OffsetDateTime;

use crate::error::SetupError;

/// Longest token lifetime accepted at creation: 7 days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The extended key usage of a join-token key's certificate, 2.25.2392588353997214659.1
/// (under the arc of crank's capabilities extension). The CA puts it on nothing else.
pub const TOKEN_KEY_PURPOSE_OID: [u64; 4] = [2, 25, 2_392_588_353_997_214_659, 1];
/// [`TOKEN_KEY_PURPOSE_OID`]'s DER contents, as webpki asks for it.
pub(crate) static TOKEN_KEY_PURPOSE_DER: [u8; 11] = [0x69, 0xa1, 0x9a, 0x8b, 0xcd, 0xe7, 0xad, 0xf6, 0xa7, 0x43, 0x01];

/// The id of a join-token key (the `kid` of its tokens): the first 16 bytes of the
/// SHA-256 of its SubjectPublicKeyInfo, in hex.
pub fn key_id(spki_der: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(spki_der)[..16])
}

/// The id of `key` ([`key_id`] of its SubjectPublicKeyInfo).
pub(crate) fn kid_of(key: &KeyPair) -> String {
    key_id(&rcgen::PublicKeyData::subject_public_key_info(key))
}

/// Default age at which `crank ca serve` replaces the join-token key: 30 days.
pub const DEFAULT_TOKEN_KEY_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shortest `--token-key-max-age`.
pub const MIN_TOKEN_KEY_MAX_AGE: Duration = Duration::from_secs(2);
/// How far a key's certificate is backdated, so that replicas whose clocks lag accept it.
pub(crate) const BACKDATE: time::Duration = time::Duration::minutes(5);
/// How long a key's certificate outlasts the last token the key may sign.
const MARGIN: time::Duration = time::Duration::hours(1);

/// The join-token key and its certificate.
pub struct TokenKey {
    /// The key.
    pub key: KeyPair,
    /// Its certificate (PEM).
    pub certificate_pem: String,
    /// Its id (`kid`).
    pub kid: String,
    /// When it was made (the certificate's notBefore plus the backdating).
    pub made: OffsetDateTime,
    /// Its certificate's notAfter: its tokens are accepted until then.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .field("made", &self.made)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TokenKey {
    /// When the key is due for replacement at `max_age`: at that age, or earlier if its
    /// certificate would not outlast a token signed then.
    pub fn due(&self, max_age: Duration) -> OffsetDateTime {
        let by_age = self.made + time::Duration::try_from(max_age).unwrap_or(time::Duration::MAX);
        let by_end = self.not_after - time::Duration::try_from(MAX_TOKEN_TTL).unwrap_or(time::Duration::ZERO) - MARGIN;
        by_age.min(by_end)
    }
}

/// The certificate (PEM) the signing key `issuer` gives the join-token key `key` made
/// `now`, for a rotation at `max_age`; `issuer_end` bounds it.
pub(crate) fn certificate_for(
    key: &KeyPair,
    trust_domain: &TrustDomain,
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
    issuer_end: Option<OffsetDateTime>,
    now: OffsetDateTime,
    max_age: Duration,
) -> Result<String, SetupError> {
    let kid = kid_of(key);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("crank join-token key {kid}"));
    dn.push(DnType::OrganizationName, trust_domain.as_str());
    params.distinguished_name = dn;
    params.serial_number = Some(crate::serial::random_serial());
    params.not_before = now - BACKDATE;
    let lifetime = time::Duration::try_from(max_age + MAX_TOKEN_TTL).unwrap_or(time::Duration::MAX);
    let mut not_after = now.checked_add(lifetime).unwrap_or(now) + MARGIN;
    if let Some(end) = issuer_end {
        not_after = not_after.min(end);
    }
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(TOKEN_KEY_PURPOSE_OID.to_vec())];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(key, issuer).map_err(SetupError::certificate("certifying the join-token key"))?;
    Ok(cert.pem())
}

/// `key` with its certificate `certificate_pem`, which must be for that key.
pub(crate) fn with_certificate(key: KeyPair, certificate_pem: String) -> Result<TokenKey, SetupError> {
    let der = parse_pem_certs("join-token key certificate", certificate_pem.as_bytes())?
        .into_iter()
        .next()
        .ok_or_else(|| SetupError::invalid("token.crt holds no certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| SetupError::invalid(format!("the join-token key certificate does not parse: {e}")))?;
    let kid = kid_of(&key);
    if key_id(cert.public_key().raw) != kid {
        return Err(SetupError::invalid(format!(
            "token.crt certifies the key {}, not the key in token.key ({kid})",
            key_id(cert.public_key().raw)
        )));
    }
    let at = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp())
            .map_err(|e| SetupError::invalid(format!("the join-token key certificate's validity: {e}")))
    };
    let made = at(cert.validity().not_before)? + BACKDATE;
    let not_after = at(cert.validity().not_after)?;
    Ok(TokenKey { key, certificate_pem, kid, made, not_after })
}
