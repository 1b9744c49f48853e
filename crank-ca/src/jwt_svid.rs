//! JWT-SVIDs: tokens naming a workload's SPIFFE ID for an audience, signed by the CA's
//! JWT key (`jwt.key`, ECDSA P-256, ES256) and verified with the CA's JWT bundle, a
//! JWKS document served at `GET /v1/jwt-bundle` and handed to workloads by agents.
//!
//! `crank ca init` makes the key; a CA directory made before JWT-SVIDs existed gets one
//! at the first `crank ca serve`. Every replica uses the key of its copy of the CA
//! directory, so copies made from one `crank ca init` sign and verify alike.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use crank_security_core::write_file_atomic;
use rcgen::KeyPair;
use time::OffsetDateTime;

use crate::error::SetupError;
use crate::files::{CaDir, new_key};

/// How long a JWT-SVID lasts.
pub const JWT_SVID_TTL: time::Duration = time::Duration::minutes(5);
/// The most audiences one JWT-SVID may carry.
pub const MAX_AUDIENCES: usize = 16;

/// The CA's JWT-SVID signing key and its public JWK.
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
        let point = key.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err(bad("the JWT-SVID key must be an ECDSA P-256 key".into()));
        }
        let kid = crate::token_cert::key_id(&rcgen::PublicKeyData::subject_public_key_info(key));
        let encoding = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
            .map_err(|e| bad(format!("loading the JWT-SVID key: {e}")))?;
        let jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            "kid": kid,
            "use": "jwt-svid",
            "alg": "ES256",
        });
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

    /// The JWT bundle: a JWKS with this key.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk.clone()] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
