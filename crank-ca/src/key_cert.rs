//! The certificate of a key the CA rotates and publishes to its replicas (the join-token
//! key and the JWT-SVID key): what it says (its id, when it was made, until when what it
//! signed is accepted), how the signing key issues it, how it is read, and how a replica
//! checks one another replica published. See [`crate::key_rotation`] for the rotation.

use std::time::Duration;

use crank_security_core::{TrustDomain, parse_pem_certs};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::Digest;
use time::OffsetDateTime;

use crate::error::SetupError;

/// Longest token lifetime accepted at creation: 7 days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The extended key usage of a join-token key's certificate, 2.25.2392588353997214659.1
/// (under the arc of crank's capabilities extension). The CA puts it on nothing else.
pub const TOKEN_KEY_PURPOSE_OID: [u64; 4] = [2, 25, 2_392_588_353_997_214_659, 1];
/// The extended key usage of a JWT-SVID key's certificate, 2.25.2392588353997214659.2.
/// The CA puts it on nothing else.
pub const JWT_KEY_PURPOSE_OID: [u64; 4] = [2, 25, 2_392_588_353_997_214_659, 2];
/// [`TOKEN_KEY_PURPOSE_OID`]'s DER contents, as webpki asks for it.
static TOKEN_KEY_PURPOSE_DER: [u8; 11] = [0x69, 0xa1, 0x9a, 0x8b, 0xcd, 0xe7, 0xad, 0xf6, 0xa7, 0x43, 0x01];
/// [`JWT_KEY_PURPOSE_OID`]'s DER contents.
static JWT_KEY_PURPOSE_DER: [u8; 11] = [0x69, 0xa1, 0x9a, 0x8b, 0xcd, 0xe7, 0xad, 0xf6, 0xa7, 0x43, 0x02];

/// How long a JWT-SVID lasts.
pub const JWT_SVID_TTL: time::Duration = time::Duration::minutes(5);
/// Default age at which `crank ca serve` replaces the join-token key: 30 days.
pub const DEFAULT_TOKEN_KEY_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default age at which `crank ca serve` replaces the JWT-SVID key: 7 days.
pub const DEFAULT_JWT_KEY_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest `--token-key-max-age` and `--jwt-key-max-age`.
pub const MIN_KEY_MAX_AGE: Duration = Duration::from_secs(2);
/// Longest time a new JWT-SVID key is published before it signs.
const MAX_PREPUBLISH: Duration = Duration::from_secs(3600);
/// How far a key's certificate is backdated, so that replicas whose clocks lag accept it.
pub(crate) const BACKDATE: time::Duration = time::Duration::minutes(5);
/// How long a key's certificate outlasts the last token the key may sign.
const MARGIN: time::Duration = time::Duration::hours(1);

/// What a rotated key signs; its certificate says so with an extended key usage of its
/// own, so that no other certificate of the CA passes for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Join tokens (`token.key`, `token.crt`).
    JoinToken,
    /// JWT-SVIDs (`jwt.key`, `jwt.crt`).
    JwtSvid,
}

impl KeyPurpose {
    /// The purpose's name in messages.
    pub fn what(self) -> &'static str {
        match self {
            Self::JoinToken => "join-token key",
            Self::JwtSvid => "JWT-SVID key",
        }
    }

    /// The extended key usage of its certificates.
    pub fn oid(self) -> &'static [u64] {
        match self {
            Self::JoinToken => &TOKEN_KEY_PURPOSE_OID,
            Self::JwtSvid => &JWT_KEY_PURPOSE_OID,
        }
    }

    fn oid_der(self) -> &'static [u8] {
        match self {
            Self::JoinToken => &TOKEN_KEY_PURPOSE_DER,
            Self::JwtSvid => &JWT_KEY_PURPOSE_DER,
        }
    }

    /// The longest lifetime of what the key signs.
    fn longest_use(self) -> Duration {
        match self {
            Self::JoinToken => MAX_TOKEN_TTL,
            Self::JwtSvid => JWT_SVID_TTL.unsigned_abs(),
        }
    }

    /// How long a new key is published before it signs, for a rotation at `max_age`:
    /// long enough for every replica, agent and workload to hold it in its bundle first.
    /// A join token is checked by the CA alone, so its key signs at once.
    pub fn prepublish(self, max_age: Duration) -> Duration {
        match self {
            Self::JoinToken => Duration::ZERO,
            Self::JwtSvid => (max_age / 4).min(MAX_PREPUBLISH),
        }
    }
}

/// The id of a rotated key (the `kid` of what it signs): the first 16 bytes of the
/// SHA-256 of its SubjectPublicKeyInfo, in hex.
pub fn key_id(spki_der: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(spki_der)[..16])
}

/// The id of `key` ([`key_id`] of its SubjectPublicKeyInfo).
pub(crate) fn kid_of(key: &KeyPair) -> String {
    key_id(&rcgen::PublicKeyData::subject_public_key_info(key))
}

/// A rotated key and its certificate.
pub struct CertifiedKey {
    /// What it signs.
    pub purpose: KeyPurpose,
    /// The key.
    pub key: KeyPair,
    /// Its certificate (PEM).
    pub certificate_pem: String,
    /// Its id (`kid`).
    pub kid: String,
    /// When it was made (the certificate's notBefore plus the backdating).
    pub made: OffsetDateTime,
    /// Its certificate's notAfter: what it signed is accepted until then.
    pub not_after: OffsetDateTime,
}

/// The join-token key and its certificate.
pub type TokenKey = CertifiedKey;

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("purpose", &self.purpose)
            .field("kid", &self.kid)
            .field("made", &self.made)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertifiedKey {
    /// When the key is due for replacement at `max_age`: at that age, or earlier if its
    /// certificate would not outlast its successor's prepublication and what it signs
    /// until then.
    pub fn due(&self, max_age: Duration) -> OffsetDateTime {
        let by_age = self.made + time::Duration::try_from(max_age).unwrap_or(time::Duration::MAX);
        let after = self.purpose.longest_use() + self.purpose.prepublish(max_age);
        let by_end = self.not_after - time::Duration::try_from(after).unwrap_or(time::Duration::ZERO) - MARGIN;
        by_age.min(by_end)
    }
}

/// The certificate (PEM) the signing key `issuer` gives the `purpose` key `key` made
/// `now`, for a rotation at `max_age`; `issuer_end` bounds it. It lasts the key's
/// prepublication, its use and what it signed last, plus a margin.
pub(crate) fn certificate_for(
    purpose: KeyPurpose,
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
    dn.push(DnType::CommonName, format!("crank {} {kid}", purpose.what()));
    dn.push(DnType::OrganizationName, trust_domain.as_str());
    params.distinguished_name = dn;
    params.serial_number = Some(crate::serial::random_serial());
    params.not_before = now - BACKDATE;
    let life = max_age.saturating_add(purpose.prepublish(max_age)).saturating_add(purpose.longest_use());
    let lifetime = time::Duration::try_from(life).unwrap_or(time::Duration::MAX);
    let mut not_after = now.checked_add(lifetime).unwrap_or(now) + MARGIN;
    if let Some(end) = issuer_end {
        not_after = not_after.min(end);
    }
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(purpose.oid().to_vec())];
    params.use_authority_key_identifier_extension = true;
    let cert =
        params.signed_by(key, issuer).map_err(SetupError::certificate(format!("certifying the {}", purpose.what())))?;
    Ok(cert.pem())
}

/// `key` with its certificate `certificate_pem`, which must be for that key.
pub(crate) fn with_certificate(
    purpose: KeyPurpose,
    key: KeyPair,
    certificate_pem: String,
) -> Result<CertifiedKey, SetupError> {
    let what = purpose.what();
    let label = match purpose {
        KeyPurpose::JoinToken => "join-token key certificate",
        KeyPurpose::JwtSvid => "JWT-SVID key certificate",
    };
    let der = parse_pem_certs(label, certificate_pem.as_bytes())?
        .into_iter()
        .next()
        .ok_or_else(|| SetupError::invalid(format!("the {what} certificate file holds no certificate")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| SetupError::invalid(format!("the {what} certificate does not parse: {e}")))?;
    let kid = kid_of(&key);
    if key_id(cert.public_key().raw) != kid {
        return Err(SetupError::invalid(format!(
            "the {what} certificate certifies the key {}, not the key on disk ({kid})",
            key_id(cert.public_key().raw)
        )));
    }
    let at = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp())
            .map_err(|e| SetupError::invalid(format!("the {what} certificate's validity: {e}")))
    };
    let made = at(cert.validity().not_before)? + BACKDATE;
    let not_after = at(cert.validity().not_after)?;
    Ok(CertifiedKey { purpose, key, certificate_pem, kid, made, not_after })
}

/// A key another replica published, once its certificate is checked.
#[derive(Debug)]
pub(crate) struct PublishedKey {
    /// The key's SubjectPublicKeyInfo (DER).
    pub spki: Vec<u8>,
    /// Its certificate's notAfter.
    pub not_after: OffsetDateTime,
}

/// What a published key's certificate must verify to: the CA's trust bundle, through
/// the signing key's chain.
pub(crate) struct KeyTrust {
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
}

impl KeyTrust {
    /// Trust in keys certified through `intermediates` to one of `anchors`.
    pub(crate) fn new(
        anchors: &[CertificateDer<'static>],
        intermediates: Vec<CertificateDer<'static>>,
    ) -> Result<Self, SetupError> {
        let anchors = anchors
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                SetupError::invalid(format!("a certificate of the trust bundle is not a usable anchor: {e:?}"))
            })?;
        Ok(Self { anchors, intermediates })
    }

    /// The key `kid` that a replica published with `certificate_pem`, if that certificate
    /// verifies to the CA at `now` with `purpose` and certifies a key whose id is `kid`.
    /// Else why not. The store is not trusted: this is the whole check.
    pub(crate) fn verify(
        &self,
        purpose: KeyPurpose,
        kid: &str,
        certificate_pem: &str,
        now: UnixTime,
    ) -> Result<PublishedKey, String> {
        let der = pem::parse(certificate_pem).map_err(|e| format!("its certificate is not PEM: {e}"))?;
        if der.tag() != "CERTIFICATE" {
            return Err(format!("its certificate is a PEM {:?}, not a CERTIFICATE", der.tag()));
        }
        let der = CertificateDer::from(der.into_contents());
        let ee = webpki::EndEntityCert::try_from(&der).map_err(|e| format!("its certificate does not parse: {e:?}"))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &self.intermediates,
            now,
            webpki::KeyUsage::required(purpose.oid_der()),
            None,
            None,
        )
        .map_err(|e| format!("its certificate is not a {} certificate of this CA: {e:?}", purpose.what()))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| format!("its certificate does not parse: {e}"))?;
        let spki = cert.public_key().raw;
        if key_id(spki) != kid {
            return Err(format!("its certificate is for the key {}, not {kid}", key_id(spki)));
        }
        let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .map_err(|e| format!("its certificate's notAfter: {e}"))?;
        Ok(PublishedKey { spki: spki.to_vec(), not_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const JWT_SVID_LIFE: Duration = JWT_SVID_TTL.unsigned_abs();

    fn new_key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    #[test]
    fn the_purpose_ders_encode_their_oids() {
        for purpose in [KeyPurpose::JoinToken, KeyPurpose::JwtSvid] {
            let oid = x509_parser::der_parser::oid::Oid::from(purpose.oid()).unwrap();
            assert_eq!(oid.as_bytes(), purpose.oid_der(), "{purpose:?}");
        }
    }

    #[test]
    fn a_jwt_key_is_due_at_its_age_and_its_certificate_outlasts_its_successors_prepublication() {
        let key = new_key();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = Issuer::new(ca, new_key());
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let day = Duration::from_secs(24 * 3600);
        let pem = certificate_for(KeyPurpose::JwtSvid, &key, &TrustDomain::default(), &issuer, None, now, day).unwrap();
        let k = with_certificate(KeyPurpose::JwtSvid, key, pem).unwrap();
        assert_eq!(k.made, now);
        assert_eq!(k.due(day), now + time::Duration::days(1));
        // Retired at its age, it still verifies through its successor's prepublication
        // (an hour at most) and the last JWT-SVID it signed (5 minutes).
        let prepublish = KeyPurpose::JwtSvid.prepublish(day);
        assert_eq!(prepublish, Duration::from_secs(3600));
        assert!(k.not_after >= k.due(day) + prepublish + JWT_SVID_LIFE);
        // Bounded by its issuer, it is due early enough for the same.
        let end = now + time::Duration::hours(12);
        let key = new_key();
        let pem =
            certificate_for(KeyPurpose::JwtSvid, &key, &TrustDomain::default(), &issuer, Some(end), now, day).unwrap();
        let k = with_certificate(KeyPurpose::JwtSvid, key, pem).unwrap();
        assert_eq!(k.not_after, end);
        assert!(k.due(day) + prepublish + JWT_SVID_LIFE <= end);
        // A join-token key signs at once.
        assert_eq!(KeyPurpose::JoinToken.prepublish(day), Duration::ZERO);
    }
}
