//! Join-token claims. Tokens are signed and verified by the CA service; a worker only
//! reads the claims (to learn its worker id and the CA fingerprint to pin).

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The claims of a join token (a JWT signed by the CA with ES256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenClaims {
    /// Issuer: `crank-ca:<trust-domain>`.
    pub iss: String,
    /// Audience: always `crank-join`.
    pub aud: String,
    /// The worker id the token is bound to.
    pub sub: String,
    /// Unique token id; a token id is accepted once.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Capabilities granted to the worker.
    #[serde(default)]
    pub caps: Vec<String>,
    /// SHA-256 fingerprint (hex) of the CA root the worker must pin on first contact.
    pub ca_fp: String,
    /// The trust domain.
    pub td: String,
}

/// Reads a join token's claims **without verifying its signature**. Only the CA can
/// verify a token; a worker uses this to learn its worker id and the CA fingerprint to
/// pin, and the CA re-checks everything.
pub fn peek_token_claims(token: &str) -> Result<JoinTokenClaims, Error> {
    let mut parts = token.trim().split('.');
    let (Some(_header), Some(payload), Some(_sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::parse("join token", "expected three dot-separated parts (a JWT)"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| Error::parse("join token", format!("payload is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::parse("join token", format!("payload: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(peek_token_claims("abc").is_err());
        assert!(peek_token_claims("a.!!!.c").is_err());
        assert!(peek_token_claims("a.e30.c").is_err(), "missing claims");
    }
}
