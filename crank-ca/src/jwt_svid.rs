//! JWT-SVIDs: tokens naming a workload's SPIFFE ID for an audience, signed by the CA's
//! JWT-SVID key (`jwt.key`, ECDSA P-256, ES256) and verified with the CA's JWT bundle, a
//! JWKS document served at `GET /v1/jwt-bundle` and handed to workloads by agents.
//!
//! `crank ca init` makes the key; a CA directory made before JWT-SVIDs existed gets one
//! at the first `crank ca serve`. The key rotates by age like the join-token key
//! ([`crate::key_rotation`], `--jwt-key-max-age`): each replica certifies its key with
//! the signing key and publishes the certificate in the store, and a new key is in the
//! bundle a quarter of the maximum age (at most an hour) before it signs. The bundle
//! holds this replica's keys and every key a replica published whose certificate
//! verifies to the CA with the JWT-SVID key purpose, until that certificate ends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use crank_security_core::write_file_atomic;
use rcgen::KeyPair;
use rustls_pki_types::UnixTime;
use time::OffsetDateTime;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

use crate::error::SetupError;
use crate::files::{CaDir, new_key};
use crate::key_cert::{CertifiedKey, KeyPurpose, KeyTrust, key_id};
pub use crate::key_cert::{DEFAULT_JWT_KEY_MAX_AGE, JWT_KEY_PURPOSE_OID, JWT_SVID_TTL};
use crate::store::CaStore;

/// The most audiences one JWT-SVID may carry.
pub const MAX_AUDIENCES: usize = 16;

/// A JWT-SVID signing key and its public JWK.
pub struct JwtSvidKey {
    kid: String,
    encoding: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for JwtSvidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvidKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Claims of a JWT-SVID.
#[derive(Debug, serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    aud: &'a [String],
    exp: i64,
    iat: i64,
}

/// The JWK of the P-256 key whose SubjectPublicKeyInfo is `spki`, under `kid`.
fn jwk_of(kid: &str, spki: &[u8]) -> Result<serde_json::Value, String> {
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| format!("its public key does not parse: {e}"))?;
    let curve = info.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    let point = &info.subject_public_key.data;
    if info.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY
        || curve != Some(OID_EC_P256)
        || point.len() != 65
        || point[0] != 4
    {
        return Err("its key is not an ECDSA P-256 key (ES256)".into());
    }
    Ok(serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        "kid": kid,
        "use": "jwt-svid",
        "alg": "ES256",
    }))
}

impl JwtSvidKey {
    /// The key of the CA in `dir`, made (and written 0600, atomically) if the directory
    /// has none yet.
    pub fn load_or_create(dir: &CaDir) -> Result<Self, SetupError> {
        let path = dir.jwt_key();
        if path.exists() {
            return Self::from_key(&CaDir::read_key(&path)?);
        }
        let key = new_key("the JWT-SVID key")?;
        write_file_atomic(&path, key.serialize_pem().as_bytes(), 0o600)?;
        tracing::info!(path = %path.display(), "made the CA's JWT-SVID key");
        Self::from_key(&key)
    }

    /// From a P-256 key.
    pub fn from_key(key: &KeyPair) -> Result<Self, SetupError> {
        let bad = |m: String| SetupError::Certificate { message: m, source: None };
        let spki = rcgen::PublicKeyData::subject_public_key_info(key);
        let kid = key_id(&spki);
        let jwk = jwk_of(&kid, &spki).map_err(|e| bad(format!("the JWT-SVID key: {e}")))?;
        let encoding = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
            .map_err(|e| bad(format!("loading the JWT-SVID key: {e}")))?;
        Ok(Self { kid, encoding, jwk })
    }

    /// The key's id (the JWT header's `kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A JWT-SVID for `spiffe_id` and `audience`, valid [`JWT_SVID_TTL`] from `now`,
    /// with its `exp`.
    pub fn sign(&self, spiffe_id: &str, audience: &[String], now: OffsetDateTime) -> Result<(String, i64), String> {
        if audience.is_empty() || audience.len() > MAX_AUDIENCES {
            return Err(format!("a JWT-SVID needs between 1 and {MAX_AUDIENCES} audiences"));
        }
        if let Some(a) = audience.iter().find(|a| a.is_empty() || a.len() > 256) {
            return Err(format!("audience {a:?} must be 1 to 256 characters"));
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let exp = (now + JWT_SVID_TTL).unix_timestamp();
        let claims = Claims { sub: spiffe_id, aud: audience, exp, iat: now.unix_timestamp() };
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())?;
        Ok((token, exp))
    }

    /// A JWKS with this key alone.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk.clone()] })
    }
}

/// A key of the JWT bundle.
struct BundleKey {
    jwk: serde_json::Value,
    /// Until when its JWT-SVIDs verify; `None` for the key this replica signs with.
    until: Option<OffsetDateTime>,
}

/// Signs JWT-SVIDs with this replica's current key, and keeps the JWT bundle.
pub struct JwtAuthority {
    current: ArcSwap<JwtSvidKey>,
    keys: RwLock<HashMap<String, BundleKey>>,
    /// Published keys found wanting, by kid: refused once, and said so once.
    refused: Mutex<HashSet<String>>,
    trust: KeyTrust,
    jwks: ArcSwap<serde_json::Value>,
}

impl std::fmt::Debug for JwtAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthority").field("kid", &self.current.load().kid).finish_non_exhaustive()
    }
}

impl JwtAuthority {
    /// Signs with `current`; keys replicas publish are accepted when their certificates
    /// verify with `trust`.
    pub(crate) fn new(current: JwtSvidKey, trust: KeyTrust) -> Self {
        let mut keys = HashMap::new();
        keys.insert(current.kid.clone(), BundleKey { jwk: current.jwk.clone(), until: None });
        let authority = Self {
            current: ArcSwap::from_pointee(current),
            keys: RwLock::new(keys),
            refused: Mutex::new(HashSet::new()),
            trust,
            jwks: ArcSwap::from_pointee(serde_json::Value::Null),
        };
        authority.rebuild(OffsetDateTime::now_utc());
        authority
    }

    /// The key JWT-SVIDs are signed with now.
    pub fn current(&self) -> Arc<JwtSvidKey> {
        self.current.load_full()
    }

    /// The JWT bundle (a JWKS), as served at `GET /v1/jwt-bundle`.
    pub fn jwks(&self) -> Arc<serde_json::Value> {
        self.jwks.load_full()
    }

    /// Puts `next` in the bundle before it signs.
    pub(crate) fn prepublish(&self, next: &CertifiedKey) -> Result<(), SetupError> {
        let key = JwtSvidKey::from_key(&next.key)?;
        self.insert(key.kid.clone(), BundleKey { jwk: key.jwk, until: Some(next.not_after) });
        Ok(())
    }

    /// Signs with `next` from now on; the key it replaces stays in the bundle until
    /// `retired_until` (the end of its certificate).
    pub(crate) fn rotate_to(&self, next: &CertifiedKey, retired_until: OffsetDateTime) -> Result<(), SetupError> {
        let key = JwtSvidKey::from_key(&next.key)?;
        let kid = key.kid.clone();
        let jwk = key.jwk.clone();
        let old = self.current.swap(Arc::new(key));
        {
            let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            keys.insert(old.kid.clone(), BundleKey { jwk: old.jwk.clone(), until: Some(retired_until) });
            keys.insert(kid, BundleKey { jwk, until: None });
        }
        self.rebuild(OffsetDateTime::now_utc());
        Ok(())
    }

    fn insert(&self, kid: String, key: BundleKey) {
        self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner).entry(kid).or_insert(key);
        self.rebuild(OffsetDateTime::now_utc());
    }

    /// Drops the keys whose certificates ended at `now`, and makes the JWKS anew.
    fn rebuild(&self, now: OffsetDateTime) {
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.retain(|_, k| k.until.is_none_or(|t| t > now));
        let mut list: Vec<(&String, &BundleKey)> = keys.iter().collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        let jwks = serde_json::json!({ "keys": list.into_iter().map(|(_, k)| k.jwk.clone()).collect::<Vec<_>>() });
        if *self.jwks.load_full() != jwks {
            self.jwks.store(Arc::new(jwks));
        }
    }

    /// Learns the keys replicas published in `store`: each whose certificate verifies to
    /// the CA with the JWT-SVID key purpose joins the bundle until that certificate
    /// ends; any other is refused, and said so once. Ended keys leave the bundle.
    pub async fn refresh(&self, store: &dyn CaStore) -> Result<(), String> {
        let rows = store.jwt_keys().await.map_err(|e| format!("reading the published JWT-SVID keys: {e}"))?;
        self.learn(rows, UnixTime::now());
        self.rebuild(OffsetDateTime::now_utc());
        Ok(())
    }

    fn learn(&self, rows: Vec<(String, String)>, now: UnixTime) {
        for (kid, pem) in rows {
            if self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&kid)
                || self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&kid)
            {
                continue;
            }
            let checked = self
                .trust
                .verify(KeyPurpose::JwtSvid, &kid, &pem, now)
                .and_then(|p| Ok(BundleKey { jwk: jwk_of(&kid, &p.spki)?, until: Some(p.not_after) }));
            match checked {
                Ok(key) => {
                    tracing::info!(kid = %kid, until = ?key.until, "a replica's JWT-SVID key joins the JWT bundle");
                    self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(kid, key);
                }
                Err(why) => {
                    tracing::warn!(kid = %kid, reason = %why, "a JWT-SVID key published in the store is refused: the CA did not certify it for JWT-SVIDs, or its certificate ended");
                    self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(kid);
                }
            }
        }
    }

    /// Whether the bundle holds `kid`.
    pub fn has(&self, kid: &str) -> bool {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(kid)
    }
}

/// How often a replica reads the keys replicas published, for a rotation at `max_age`:
/// a quarter of the prepublication, between 1 and 30 seconds.
pub fn bundle_refresh(max_age: Duration) -> Duration {
    (KeyPurpose::JwtSvid.prepublish(max_age) / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Keeps `ca`'s JWT bundle up to date with the keys replicas publish, every `every`,
/// until `ca` is dropped.
pub async fn keep_bundle_fresh(weak: std::sync::Weak<crate::LocalCa>, every: Duration) {
    loop {
        {
            let Some(ca) = weak.upgrade() else { return };
            if let Err(e) = ca.jwt().refresh(ca.store().as_ref()).await {
                tracing::warn!(error = %e, "the JWT bundle was not refreshed; trying again");
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crank_security_core::TrustDomain;
    use rcgen::{CertificateParams, Issuer};

    #[test]
    fn a_jwt_svid_verifies_with_the_bundle_and_names_its_subject_and_audience() {
        let key = JwtSvidKey::from_key(&new_key("test").unwrap()).unwrap();
        let now = OffsetDateTime::now_utc();
        let (token, exp) = key.sign("spiffe://crank.local/api", &["db".into()], now).unwrap();
        assert_eq!(exp, (now + JWT_SVID_TTL).unix_timestamp());
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(key.jwks()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        let jwk = jwks.find(key.kid()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["db"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&token, &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(), &v)
                .unwrap();
        assert_eq!(data.claims["sub"], "spiffe://crank.local/api");
        v.set_audience(&["other"]);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&token, &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(), &v)
                .is_err()
        );
        assert!(key.sign("spiffe://crank.local/api", &[], now).unwrap_err().contains("audiences"));
    }

    /// A CA (root key certifying keys directly) and a JWT authority trusting it.
    struct Fixture {
        issuer: Issuer<'static, KeyPair>,
        authority: JwtAuthority,
    }

    fn ca() -> (Issuer<'static, KeyPair>, rustls_pki_types::CertificateDer<'static>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = new_key("root").unwrap();
        let cert = params.self_signed(&key).unwrap();
        (Issuer::new(params, key), cert.der().clone())
    }

    fn fixture() -> Fixture {
        let (issuer, root) = ca();
        let trust = KeyTrust::new(&[root], vec![]).unwrap();
        let authority = JwtAuthority::new(JwtSvidKey::from_key(&new_key("first").unwrap()).unwrap(), trust);
        Fixture { issuer, authority }
    }

    fn certified(issuer: &Issuer<'_, KeyPair>, purpose: KeyPurpose, made: OffsetDateTime) -> CertifiedKey {
        let key = new_key("test").unwrap();
        let hour = Duration::from_secs(3600);
        let pem =
            crate::key_cert::certificate_for(purpose, &key, &TrustDomain::default(), issuer, None, made, hour).unwrap();
        crate::key_cert::with_certificate(purpose, key, pem).unwrap()
    }

    fn kids(a: &JwtAuthority) -> Vec<String> {
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value((*a.jwks()).clone()).unwrap();
        jwks.keys.iter().map(|k| k.common.key_id.clone().unwrap()).collect()
    }

    #[test]
    fn a_new_key_is_in_the_bundle_before_it_signs_and_the_old_one_stays_after() {
        let f = fixture();
        let first = f.authority.current();
        let next = certified(&f.issuer, KeyPurpose::JwtSvid, OffsetDateTime::now_utc());
        f.authority.prepublish(&next).unwrap();
        assert_eq!(f.authority.current().kid(), first.kid(), "prepublished, not yet signing");
        assert!(kids(&f.authority).contains(&next.kid));
        let old_until = OffsetDateTime::now_utc() + time::Duration::minutes(10);
        f.authority.rotate_to(&next, old_until).unwrap();
        assert_eq!(f.authority.current().kid(), next.kid);
        let (token, _) =
            f.authority.current().sign("spiffe://crank.local/api", &["db".into()], OffsetDateTime::now_utc()).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(), Some(next.kid.as_str()));
        let mut both = vec![first.kid().to_owned(), next.kid.clone()];
        both.sort();
        assert_eq!(kids(&f.authority), both);
        // The old key leaves the bundle when its certificate ends; the current one stays.
        f.authority.rebuild(old_until + time::Duration::seconds(1));
        assert_eq!(kids(&f.authority), vec![next.kid]);
    }

    #[test]
    fn published_keys_join_the_bundle_only_when_the_ca_certified_them_for_jwt_svids() {
        let f = fixture();
        let now = OffsetDateTime::now_utc();
        let good = certified(&f.issuer, KeyPurpose::JwtSvid, now);
        // Another CA's certificate with the right purpose.
        let (other, _) = ca();
        let foreign = certified(&other, KeyPurpose::JwtSvid, now);
        // This CA's join-token key certificate: the wrong purpose.
        let token_key = certified(&f.issuer, KeyPurpose::JoinToken, now);
        // A certificate that ended.
        let ended = certified(&f.issuer, KeyPurpose::JwtSvid, now - time::Duration::days(2));
        // This CA's certificate of one key, listed under another key's id.
        let stolen = certified(&f.issuer, KeyPurpose::JwtSvid, now);
        let attacker_kid = key_id(&rcgen::PublicKeyData::subject_public_key_info(&new_key("evil").unwrap()));
        let rows = vec![
            (good.kid.clone(), good.certificate_pem.clone()),
            (foreign.kid.clone(), foreign.certificate_pem.clone()),
            (token_key.kid.clone(), token_key.certificate_pem.clone()),
            (ended.kid.clone(), ended.certificate_pem.clone()),
            (attacker_kid.clone(), stolen.certificate_pem),
            ("not-a-cert".into(), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()),
        ];
        f.authority.learn(rows, UnixTime::now());
        f.authority.rebuild(now);
        let in_bundle = kids(&f.authority);
        assert!(in_bundle.contains(&good.kid));
        assert_eq!(in_bundle.len(), 2, "the current key and the certified one: {in_bundle:?}");
        for refused in [&foreign.kid, &token_key.kid, &ended.kid, &attacker_kid] {
            assert!(!f.authority.has(refused), "{refused} must be refused");
        }
        // A JWT-SVID of the good key verifies with the bundle.
        let signer = JwtSvidKey::from_key(&good.key).unwrap();
        let (token, _) = signer.sign("spiffe://crank.local/api", &["db".into()], now).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value((*f.authority.jwks()).clone()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["db"]);
        let jwk = jwks.find(&good.kid).unwrap();
        jsonwebtoken::decode::<serde_json::Value>(&token, &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(), &v)
            .unwrap();
    }

    #[tokio::test]
    async fn a_replica_learns_the_keys_published_in_the_store() {
        let f = fixture();
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&tmp.path().join("ca.db")).unwrap();
        let published = certified(&f.issuer, KeyPurpose::JwtSvid, OffsetDateTime::now_utc());
        store.publish_jwt_key(&published.kid, &published.certificate_pem).await.unwrap();
        assert!(!f.authority.has(&published.kid));
        f.authority.refresh(&store).await.unwrap();
        assert!(f.authority.has(&published.kid));
        assert!(kids(&f.authority).contains(&published.kid));
    }
}
