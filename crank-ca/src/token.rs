//! Join tokens: ES256 JWTs signed by the CA's token key.

use std::net::IpAddr;
use std::time::Duration;

use crank_security_core::{ADMIN_CAPABILITY, JoinTokenClaims, TrustDomain, WorkerId, validate_host_name};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::KeyPair;

use crate::error::SetupError;

/// The `aud` of every join token.
pub const TOKEN_AUDIENCE: &str = "crank-join";
/// Default token lifetime: 15 minutes.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest token lifetime accepted at creation: 7 days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The prefix of a capability that lets a worker ask for one more DNS name or IP address.
pub(crate) const SAN_CAPABILITY: &str = "san:";

/// Signs and verifies join tokens.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    trust_domain: TrustDomain,
    root_fingerprint: String,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority").field("trust_domain", &self.trust_domain).field("key", &"<redacted>").finish()
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
}

impl TokenAuthority {
    /// A token authority using `key` (P-256) for the CA with this trust domain and root.
    pub fn new(key: &KeyPair, trust_domain: TrustDomain, root_fingerprint: String) -> Result<Self, SetupError> {
        let unusable = || SetupError::certificate("the join-token key is not a usable ES256 (P-256) key");
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).map_err(unusable())?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).map_err(unusable())?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[TOKEN_AUDIENCE]);
        validation.set_issuer(&[issuer(&trust_domain)]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 0;
        Ok(Self { encoding, decoding, validation, trust_domain, root_fingerprint })
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
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(SetupError::certificate("signing the join token"))
    }

    /// Verifies signature, audience, issuer, expiry and CA binding.
    pub fn verify(&self, token: &str) -> Result<JoinTokenClaims, TokenError> {
        let data = jsonwebtoken::decode::<JoinTokenClaims>(token.trim(), &self.decoding, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                    TokenError::ForeignCa("issuer does not match this CA's trust domain".into())
                }
                _ => TokenError::Invalid(e.to_string()),
            },
        )?;
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

/// Creates a join token for `worker` with the token key of the CA in `dir` (what
/// `crank token create` does). A worker id that is one of the CA service's names is
/// refused.
pub fn create_token(
    dir: &crate::files::CaDir,
    worker: &WorkerId,
    ttl: Duration,
    capabilities: Vec<String>,
) -> Result<String, SetupError> {
    dir.recover()?;
    let key = crate::files::CaDir::read_key(&dir.token_key()).map_err(|e| {
        SetupError::not_ready(format!("is {} a CA directory made by `crank ca init`?", dir.dir.display())).because(e)
    })?;
    if dir.service_names().iter().any(|n| n == worker.as_str()) {
        return Err(SetupError::invalid(format!(
            "worker id {worker:?} is a name of the CA service itself; a worker may not carry the CA's names: choose another worker id"
        )));
    }
    let authority = TokenAuthority::new(&key, dir.trust_domain()?, dir.pinned_fingerprint()?)?;
    authority.create(worker, ttl, capabilities)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> TokenAuthority {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        TokenAuthority::new(&key, TrustDomain::default(), "ab".repeat(32)).unwrap()
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
