//! Join tokens: ES256 JWTs signed by the CA's token key.
//!
//! The token key rotates (`crank ca serve --token-key-max-age`). Each key has an id, the
//! `kid` of the tokens it signs, and a certificate (`token.crt`) that the CA's signing
//! key issued for it, with crank's join-token key purpose. The certificate is published
//! in the CA's store, so that every replica accepts the tokens any replica's key signed,
//! while the certificate is valid (the key's rotation age plus the longest token
//! lifetime). The store is not trusted to vouch for a key: a replica accepts a published
//! key only if its certificate verifies to the CA's trust bundle with that purpose.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crank_security_core::{ADMIN_CAPABILITY, JoinTokenClaims, TrustDomain, WorkerId, validate_host_name};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use crate::error::SetupError;
use crate::key_cert::{KeyPurpose, KeyTrust, kid_of};
pub use crate::key_cert::{MAX_TOKEN_TTL, TOKEN_KEY_PURPOSE_OID, key_id};

/// The `aud` of every join token.
pub const TOKEN_AUDIENCE: &str = "crank-join";
/// Default token lifetime: 15 minutes.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The prefix of a capability that lets a worker ask for one more DNS name or IP address.
pub(crate) const SAN_CAPABILITY: &str = "san:";
/// The key tokens are signed with now.
struct Signing {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// A key whose tokens are still accepted: a retired one of this process, or one
/// published by a replica, until its certificate ends.
struct Accepted {
    decoding: DecodingKey,
    not_after: OffsetDateTime,
}

/// Signs and verifies join tokens.
pub struct TokenAuthority {
    current: RwLock<Arc<Signing>>,
    accepted: RwLock<HashMap<String, Accepted>>,
    key_trust: Option<KeyTrust>,
    validation: Validation,
    trust_domain: TrustDomain,
    root_fingerprint: String,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("kid", &self.current_kid())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Past its `exp`.
    #[error("join token has expired; create a new one with `crank token create`")]
    Expired,
    /// Bad signature, wrong audience or issuer, or not a JWT.
    #[error("join token is invalid: {0}")]
    Invalid(String),
    /// Issued for another CA or trust domain.
    #[error("join token was issued for another CA ({0})")]
    ForeignCa(String),
    /// Signed by a key this process does not know (yet): the store may have it.
    #[error(
        "join token is signed by a join-token key this CA does not know (kid {0}); create a new one with `crank token create` against the CA's directory"
    )]
    UnknownKey(String),
    /// Signed by a key whose certificate has ended.
    #[error(
        "join token is signed by a retired join-token key (kid {0}); create a new one with `crank token create` against the CA's directory"
    )]
    RetiredKey(String),
}

fn signing(key: &KeyPair) -> Result<Signing, SetupError> {
    let unusable = || SetupError::certificate("the join-token key is not a usable ES256 (P-256) key");
    let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).map_err(unusable())?;
    let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).map_err(unusable())?;
    Ok(Signing { kid: kid_of(key), encoding, decoding })
}

impl TokenAuthority {
    /// A token authority using `key` (P-256) for the CA with this trust domain and root.
    /// It accepts tokens of other keys only once told of them ([`Self::rotate_to`],
    /// [`Self::learn`] with [`Self::with_key_trust`]).
    pub fn new(key: &KeyPair, trust_domain: TrustDomain, root_fingerprint: String) -> Result<Self, SetupError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[TOKEN_AUDIENCE]);
        validation.set_issuer(&[issuer(&trust_domain)]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 0;
        Ok(Self {
            current: RwLock::new(Arc::new(signing(key)?)),
            accepted: RwLock::new(HashMap::new()),
            key_trust: None,
            validation,
            trust_domain,
            root_fingerprint,
        })
    }

    /// Accept keys published by replicas whose certificates verify to `anchors` (the
    /// CA's trust bundle) through `intermediates`, with the join-token key purpose.
    pub fn with_key_trust(
        mut self,
        anchors: &[CertificateDer<'static>],
        intermediates: Vec<CertificateDer<'static>>,
    ) -> Result<Self, SetupError> {
        self.key_trust = Some(KeyTrust::new(anchors, intermediates)?);
        Ok(self)
    }

    /// The id of the key tokens are signed with now.
    pub fn current_kid(&self) -> String {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).kid.clone()
    }

    /// Signs with `key` from now on. The key it replaces is still accepted until
    /// `retired_until` (the end of its certificate).
    pub fn rotate_to(&self, key: &KeyPair, retired_until: OffsetDateTime) -> Result<(), SetupError> {
        let next = Arc::new(signing(key)?);
        let old =
            std::mem::replace(&mut *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner), next);
        self.accept(old.kid.clone(), Accepted { decoding: old.decoding.clone(), not_after: retired_until });
        Ok(())
    }

    fn accept(&self, kid: String, key: Accepted) {
        let now = OffsetDateTime::now_utc();
        let mut accepted = self.accepted.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        accepted.retain(|_, k| k.not_after > now);
        accepted.insert(kid, key);
    }

    /// Accepts the key `kid` that a replica published with `certificate_pem`, if that
    /// certificate verifies to the CA now with the join-token key purpose and certifies
    /// a key whose id is `kid`. Else an error saying why.
    pub fn learn(&self, kid: &str, certificate_pem: &str) -> Result<(), String> {
        let trust = self.key_trust.as_ref().ok_or("this CA accepts no published join-token keys")?;
        let published = trust.verify(KeyPurpose::JoinToken, kid, certificate_pem, UnixTime::now())?;
        let public_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", published.spki));
        let decoding = DecodingKey::from_ec_pem(public_pem.as_bytes())
            .map_err(|e| format!("its key is not a usable ES256 (P-256) key: {e}"))?;
        self.accept(kid.to_owned(), Accepted { decoding, not_after: published.not_after });
        Ok(())
    }

    /// A new single-use token for `worker_id`. Each `san:<name>` capability must name one
    /// IP address or one host name the CA can issue ([`validate_host_name`]); host names
    /// are stored in lowercase, as the CA compares them.
    pub fn create(&self, worker_id: &WorkerId, ttl: Duration, capabilities: Vec<String>) -> Result<String, SetupError> {
        if ttl > MAX_TOKEN_TTL {
            return Err(SetupError::invalid(format!("token TTL {ttl:?} is longer than the maximum of 7 days")));
        }
        if ttl.is_zero() {
            return Err(SetupError::invalid("token TTL must be positive"));
        }
        let capabilities = capabilities.into_iter().map(checked_capability).collect::<Result<Vec<_>, _>>()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = JoinTokenClaims {
            iss: issuer(&self.trust_domain),
            aud: TOKEN_AUDIENCE.into(),
            sub: worker_id.to_string(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            caps: capabilities,
            ca_fp: self.root_fingerprint.clone(),
            td: self.trust_domain.to_string(),
        };
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(current.kid.clone());
        jsonwebtoken::encode(&header, &claims, &current.encoding)
            .map_err(SetupError::certificate("signing the join token"))
    }

    /// The key that verifies a token signed by `kid` (none: the current key, as before
    /// keys had ids).
    fn decoding_key(&self, kid: Option<&str>) -> Result<DecodingKey, TokenError> {
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(kid) = kid.filter(|k| *k != current.kid) else {
            return Ok(current.decoding.clone());
        };
        match self.accepted.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(kid) {
            Some(k) if k.not_after > OffsetDateTime::now_utc() => Ok(k.decoding.clone()),
            Some(_) => Err(TokenError::RetiredKey(kid.to_owned())),
            None => Err(TokenError::UnknownKey(kid.to_owned())),
        }
    }

    /// Verifies signature, audience, issuer, expiry and CA binding.
    /// [`TokenError::UnknownKey`] when the token names a key this authority was not told
    /// of: look it up in the store and [`Self::learn`] it.
    pub fn verify(&self, token: &str) -> Result<JoinTokenClaims, TokenError> {
        let token = token.trim();
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        if header.kid.as_ref().is_some_and(|k| k.len() > 64 || !k.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(TokenError::Invalid("its key id (kid) is not a crank key id".into()));
        }
        let decoding = self.decoding_key(header.kid.as_deref())?;
        let data = jsonwebtoken::decode::<JoinTokenClaims>(token, &decoding, &self.validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                TokenError::ForeignCa("issuer does not match this CA's trust domain".into())
            }
            _ => TokenError::Invalid(e.to_string()),
        })?;
        let c = data.claims;
        if c.ca_fp != self.root_fingerprint || c.td != self.trust_domain.as_str() {
            return Err(TokenError::ForeignCa("root fingerprint or trust domain does not match".into()));
        }
        WorkerId::new(c.sub.clone()).map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok(c)
    }
}

/// A `san:` capability with a valid name (lowercased), an access capability with a valid
/// name (`email.classify`), or an error naming it; other `prefix:value` capabilities as
/// they are.
fn checked_capability(cap: String) -> Result<String, SetupError> {
    if cap == ADMIN_CAPABILITY {
        return Err(SetupError::invalid(format!(
            "capability {ADMIN_CAPABILITY:?} cannot be given to a worker: administrators get their certificates from `crank ca admin-cert`"
        )));
    }
    let Some(name) = cap.strip_prefix(SAN_CAPABILITY) else {
        // `prefix:value` capabilities are for issuance policy (e.g. `san-suffix:`); the
        // others are access capabilities, written into the certificate.
        if !cap.contains(':') {
            crank_security_core::validate_capability(&cap).map_err(|e| SetupError::invalid(e.to_string()))?;
        }
        return Ok(cap);
    };
    if name.parse::<IpAddr>().is_ok() {
        return Ok(cap);
    }
    validate_host_name(name).map_err(|e| {
        SetupError::invalid(format!(
            "capability {cap:?} is not valid: {e}. A {SAN_CAPABILITY} capability names one host name or IP address the worker may ask for, e.g. {SAN_CAPABILITY}api.example.internal"
        ))
    })?;
    Ok(format!("{SAN_CAPABILITY}{}", name.to_ascii_lowercase()))
}

fn issuer(td: &TrustDomain) -> String {
    format!("crank-ca:{td}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> TokenAuthority {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        TokenAuthority::new(&key, TrustDomain::default(), "ab".repeat(32)).unwrap()
    }

    fn p256() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    /// A root CA: its certificate and an issuer.
    fn ca() -> (CertificateDer<'static>, rcgen::Issuer<'static, KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = p256();
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), rcgen::Issuer::new(params, key))
    }

    fn at(key: &KeyPair) -> TokenAuthority {
        TokenAuthority::new(key, TrustDomain::default(), "ab".repeat(32)).unwrap()
    }

    #[test]
    fn a_rotated_key_keeps_its_tokens_until_its_certificate_ends() {
        let (k1, k2, k3) = (p256(), p256(), p256());
        let a = at(&k1);
        let w = WorkerId::new("w1").unwrap();
        let t1 = a.create(&w, Duration::from_secs(60), vec![]).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&t1).unwrap().kid.unwrap(), kid_of(&k1));
        a.rotate_to(&k2, OffsetDateTime::now_utc() + time::Duration::minutes(1)).unwrap();
        assert_eq!(a.current_kid(), kid_of(&k2));
        assert_eq!(a.verify(&t1).unwrap().sub, "w1", "the old key's token is still accepted");
        let t2 = a.create(&w, Duration::from_secs(60), vec![]).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&t2).unwrap().kid.unwrap(), kid_of(&k2));
        // k2 retired with a certificate that has ended.
        a.rotate_to(&k3, OffsetDateTime::now_utc() - time::Duration::seconds(1)).unwrap();
        assert_eq!(a.verify(&t2), Err(TokenError::RetiredKey(kid_of(&k2))));
        assert!(a.verify(&t1).is_ok());
        // A token of a key it was never told of.
        let stranger = at(&p256());
        let t = stranger.create(&w, Duration::from_secs(60), vec![]).unwrap();
        assert!(matches!(a.verify(&t), Err(TokenError::UnknownKey(_))));
        // A kid that is not a key id is refused before any lookup.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("../../etc/passwd".into());
        let claims = a.verify(&t1).unwrap();
        let forged =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(k1.serialize_pem().as_bytes()).unwrap())
                .unwrap();
        assert!(matches!(a.verify(&forged), Err(TokenError::Invalid(_))), "{:?}", a.verify(&forged));
    }

    #[test]
    fn a_published_key_is_accepted_only_if_the_ca_certified_it_for_tokens() {
        let (root, issuer) = ca();
        let now = OffsetDateTime::now_utc();
        let td = TrustDomain::default();
        let replica = || at(&p256()).with_key_trust(std::slice::from_ref(&root), vec![]).unwrap();
        let w = WorkerId::new("w1").unwrap();
        let day = Duration::from_secs(86_400);

        // Another replica's key, certified by the CA: learnt, then its tokens verify.
        let other = p256();
        let cert =
            crate::key_cert::certificate_for(KeyPurpose::JoinToken, &other, &td, &issuer, None, now, day).unwrap();
        let token = at(&other).create(&w, Duration::from_secs(60), vec![]).unwrap();
        let b = replica();
        assert_eq!(b.verify(&token), Err(TokenError::UnknownKey(kid_of(&other))));
        b.learn(&kid_of(&other), &cert).unwrap();
        assert_eq!(b.verify(&token).unwrap().sub, "w1");

        // An attacker who can write the store, with a key of their own:
        let evil = p256();
        let kid = kid_of(&evil);
        let refused = |pem: &str, kid: &str| replica().learn(kid, pem).unwrap_err();
        // certified by a CA of their own;
        let (_, own_issuer) = ca();
        let e = refused(
            &crate::key_cert::certificate_for(KeyPurpose::JoinToken, &evil, &td, &own_issuer, None, now, day).unwrap(),
            &kid,
        );
        assert!(e.contains("not a join-token key certificate of this CA"), "{e}");
        // a worker's certificate from this CA (for a key the attacker holds);
        let mut leaf = rcgen::CertificateParams::new(vec!["w1.example".to_owned()]).unwrap();
        leaf.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let e = refused(&leaf.signed_by(&evil, &issuer).unwrap().pem(), &kid);
        assert!(e.contains("RequiredEkuNotFound"), "{e}");
        // this CA's certificate of another key, listed under the attacker's key id;
        let e = refused(&cert, &kid);
        assert!(e.contains("is for the key"), "{e}");
        // a key certificate that has ended;
        let old = now - time::Duration::days(30);
        let e = refused(
            &crate::key_cert::certificate_for(KeyPurpose::JoinToken, &evil, &td, &issuer, None, old, day).unwrap(),
            &kid,
        );
        assert!(e.contains("CertExpired"), "{e}");
        // not a certificate at all.
        assert!(
            refused("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", &kid).contains("not a CERTIFICATE")
        );
        // A replica that trusts no published keys refuses them all.
        assert!(at(&p256()).learn(&kid_of(&other), &cert).is_err());
    }

    #[test]
    fn round_trip_and_tamper() {
        let a = authority();
        let w = WorkerId::new("w1").unwrap();
        let t = a.create(&w, Duration::from_secs(60), vec!["san:x.example".into()]).unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!(c.sub, "w1");
        assert_eq!(c.caps, vec!["san:x.example".to_owned()]);
        // Change the subject in the payload: the signature no longer matches.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        use base64::Engine;
        let eng = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(eng.decode(&parts[1]).unwrap()).unwrap().replace("\"w1\"", "\"w2\"");
        parts[1] = eng.encode(payload);
        assert!(matches!(a.verify(&parts.join(".")), Err(TokenError::Invalid(_))));
        // Another CA's token.
        assert!(authority().verify(&t).is_err());
    }

    #[test]
    fn san_capabilities_must_name_a_host_name_or_an_ip_address() {
        let a = authority();
        let w = WorkerId::new("w1").unwrap();
        let ttl = Duration::from_secs(60);
        for bad in ["san:a\nb.example", "san:*.example", "san:", "san:a b", "san:bad_name.example"] {
            let e = a.create(&w, ttl, vec!["read".into(), bad.into()]).unwrap_err().to_string();
            assert!(e.contains(&format!("capability {bad:?} is not valid")), "{bad:?}: {e}");
        }
        let caps = vec!["san:API.Example".into(), "san:10.0.0.1".into(), "san:::1".into(), "orders:read".into()];
        let c = a.verify(&a.create(&w, ttl, caps).unwrap()).unwrap();
        assert_eq!(c.caps, ["san:api.example", "san:10.0.0.1", "san:::1", "orders:read"]);
    }

    #[test]
    fn access_capabilities_must_be_valid_names_and_admin_is_not_for_workers() {
        let a = authority();
        let w = WorkerId::new("w1").unwrap();
        let ttl = Duration::from_secs(60);
        for bad in ["Email.Classify", "email..classify", "email classify", "admin"] {
            let e = a.create(&w, ttl, vec![bad.into()]).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
        let c = a.verify(&a.create(&w, ttl, vec!["email.classify".into(), "metrics.*".into()]).unwrap()).unwrap();
        assert_eq!(c.caps, ["email.classify", "metrics.*"]);
    }
}
