//! `CfsslProvider`: an upstream [cfssl](https://github.com/cloudflare/cfssl) signs what
//! the CA decided, through its sign API. The CA keeps the join tokens, policy and the
//! ledger; cfssl holds the signing key.
//!
//! ```text
//! worker ──CSR + token──► crank ca serve ── token, policy ──► CertificateTemplate
//!                                │
//!                                ├─ POST /api/v1/cfssl/sign      (mutual TLS)
//!                                │  or /api/v1/cfssl/authsign    (HMAC-SHA256 token)
//!                                │  {certificate_request, hosts: [spiffe URI, DNS, IP],
//!                                │   subject, profile}
//!                                ▼
//!                      check_signed: key, subject, SANs, usages, validity, chain
//!                                ▼
//!                      ledger commit ──► answer (leaf + chain, trust bundle)
//! ```
//!
//! Over HTTPS only, with cfssl's certificate verified against a configured CA. The
//! request is authenticated with a client certificate (`cfssl serve -mutual-tls-ca`), an
//! `authsign` HMAC key (a profile with `auth_key`), or both; one of them is required.
//! An unreachable cfssl is [`ProviderError::Unavailable`] (the CA answers 503 and emits
//! CA_UNAVAILABLE); a refusal is [`ProviderError::Refused`] with cfssl's own message.
//!
//! Needs cfssl 1.6 or newer: cfssl 1.2 writes the SPIFFE ID as a DNS name, and the CA
//! refuses that certificate. cfssl's sign API takes no validity from the request: the
//! profile's `expiry` decides it, and must not be longer than policy grants (see
//! docs/providers.md for a profile that signs exactly what the CA decided).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use crank_security_core::{CertificateProvider, ProviderError, SignRequest, parse_pem_certs};
use hmac::{Hmac, Mac};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use url::Url;

use crank_runtime::worker::error_chain;

/// Default timeout of one request to cfssl.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An `authsign` key (cfssl's `auth_keys` entry of type `standard`). `Debug` never
/// prints it.
#[derive(Clone)]
pub struct AuthKey(Vec<u8>);

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl AuthKey {
    /// The key as cfssl's configuration writes it: hex.
    pub fn from_hex(hex_key: &str) -> Result<Self, String> {
        let bytes = hex::decode(hex_key.trim())
            .map_err(|e| format!("the cfssl auth key must be hex, as in cfssl's auth_keys \"key\" field: {e}"))?;
        if bytes.len() < 16 {
            return Err(format!("the cfssl auth key is {} bytes; use at least 16 (32 hex digits)", bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// cfssl's `standard` token: HMAC-SHA256 of the request bytes.
    fn token(&self, request: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).map_err(|e| ProviderError::Other(e.to_string()))?;
        mac.update(request);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

/// A client certificate chain and key for mutual TLS to cfssl. `Debug` never prints the
/// key.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity").field("chain_len", &self.chain.len()).field("key", &"<redacted>").finish()
    }
}

impl ClientIdentity {
    /// From PEM texts: the certificate (then any intermediates) and its key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let chain = parse_pem_certs("cfssl client certificate", cert_pem).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("cfssl client key: {e}"))?;
        Ok(Self { chain, key })
    }
}

/// Settings of a [`CfsslProvider`].
#[derive(Debug)]
pub struct CfsslConfig {
    /// cfssl's API, `https://HOST:PORT`.
    pub url: Url,
    /// CA certificates that verify cfssl's TLS certificate.
    pub server_roots: Vec<CertificateDer<'static>>,
    /// Client certificate for mutual TLS (cfssl serve `-mutual-tls-ca`), if any.
    pub client_identity: Option<ClientIdentity>,
    /// `authsign` key, if any; then requests go to `/api/v1/cfssl/authsign`.
    pub auth_key: Option<AuthKey>,
    /// cfssl signing profile (default: cfssl's default profile).
    pub profile: Option<String>,
    /// The CA certificates cfssl signs under, PEM: handed to workers, and what every
    /// certificate cfssl returns must verify to.
    pub trust_bundle_pem: String,
    /// Intermediates appended after each leaf, PEM (when cfssl signs with an
    /// intermediate); usually empty.
    pub chain_pem: String,
    /// Timeout of one request (default [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
}

/// Forwards CSRs to cfssl's sign API.
#[derive(Debug)]
pub struct CfsslProvider {
    url: Url,
    http: reqwest::Client,
    auth_key: Option<AuthKey>,
    profile: Option<String>,
    trust_bundle_pem: String,
    chain_pem: String,
}

impl CfsslProvider {
    /// A provider for `config`. Refuses a plain `http://` URL and a configuration
    /// without any way to authenticate to cfssl.
    pub fn new(config: CfsslConfig) -> Result<Self, String> {
        if config.url.scheme() != "https" {
            return Err(format!("the cfssl URL {} must use https://", config.url));
        }
        if config.client_identity.is_none() && config.auth_key.is_none() {
            return Err(
                "cfssl needs a client certificate (--cfssl-client-cert/--cfssl-client-key, with cfssl serve -mutual-tls-ca) or an authsign key (--cfssl-auth-key), or both: without either, cfssl signs for anyone who reaches it".into(),
            );
        }
        if config.server_roots.is_empty() {
            return Err("no CA certificate to verify cfssl's TLS certificate (--cfssl-ca)".into());
        }
        parse_pem_certs("cfssl trust bundle", config.trust_bundle_pem.as_bytes()).map_err(|e| e.to_string())?;
        if !config.chain_pem.trim().is_empty() {
            parse_pem_certs("cfssl chain", config.chain_pem.as_bytes()).map_err(|e| e.to_string())?;
        }
        let roots = crank_runtime::tls::root_store(&config.server_roots).map_err(|e| format!("--cfssl-ca: {e}"))?;
        let builder = rustls::ClientConfig::builder_with_provider(crank_runtime::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let tls = match config.client_identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .map_err(|e| format!("the cfssl client certificate and key do not fit together: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| format!("building the cfssl client: {e}"))?;
        Ok(Self {
            url: config.url,
            http,
            auth_key: config.auth_key,
            profile: config.profile,
            trust_bundle_pem: config.trust_bundle_pem,
            chain_pem: config.chain_pem,
        })
    }
}

/// cfssl's sign request: `hosts` replace the CSR's names; the subject's fields replace
/// the CSR's (a profile `CSRWhitelist` without `Subject` keeps the CSR's other fields
/// out). No validity: the sign API has none, the profile's `expiry` decides.
#[derive(Serialize)]
struct SignBody<'a> {
    certificate_request: &'a str,
    hosts: Vec<String>,
    subject: Subject<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
}

#[derive(Serialize)]
struct Subject<'a> {
    #[serde(rename = "CN")]
    cn: &'a str,
    names: [Name<'a>; 1],
}

#[derive(Serialize)]
struct Name<'a> {
    #[serde(rename = "O")]
    o: &'a str,
}

/// cfssl's `authsign` envelope: the request and its HMAC, base64.
#[derive(Serialize)]
struct AuthBody {
    token: String,
    request: String,
}

/// cfssl's answer envelope.
#[derive(Deserialize)]
struct Answer {
    success: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    errors: Vec<AnswerError>,
}

#[derive(Deserialize)]
struct AnswerError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[async_trait]
impl CertificateProvider for CfsslProvider {
    async fn sign(&self, request: SignRequest) -> Result<String, ProviderError> {
        let t = &request.template;
        let mut hosts = vec![t.spiffe_id.to_string()];
        hosts.extend(t.dns_sans.iter().cloned());
        hosts.extend(t.ip_sans.iter().map(ToString::to_string));
        let body = SignBody {
            certificate_request: &request.csr_pem,
            hosts,
            subject: Subject { cn: t.common_name(), names: [Name { o: t.organization() }] },
            profile: self.profile.as_deref(),
        };
        let json = serde_json::to_vec(&body).map_err(|e| ProviderError::Other(e.to_string()))?;
        let (path, payload) = match &self.auth_key {
            Some(key) => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let envelope = AuthBody { token: b64.encode(key.token(&json)?), request: b64.encode(&json) };
                (
                    "/api/v1/cfssl/authsign",
                    serde_json::to_vec(&envelope).map_err(|e| ProviderError::Other(e.to_string()))?,
                )
            }
            None => ("/api/v1/cfssl/sign", json),
        };
        let url = self.url.join(path).map_err(|e| ProviderError::Other(e.to_string()))?;
        let response = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload)
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(format!("cfssl at {url}: {}", error_chain(&e))))?;
        let status = response.status();
        if matches!(status.as_u16(), 408 | 429 | 502..=504) {
            return Err(ProviderError::Unavailable(format!("cfssl at {url} answered HTTP {status}")));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ProviderError::Unavailable(format!("cfssl at {url}: {}", error_chain(&e))))?;
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::Refused(format!(
                "cfssl at {url} answered HTTP {status} with a body that is not cfssl's JSON: {e}"
            ))
        })?;
        if !answer.success || !status.is_success() {
            let errors: Vec<String> =
                answer.errors.iter().map(|e| format!("{} (code {})", e.message, e.code)).collect();
            let said = if errors.is_empty() { "no error message".to_owned() } else { errors.join("; ") };
            return Err(ProviderError::Refused(format!("cfssl at {url} refused to sign (HTTP {status}): {said}")));
        }
        let certificate =
            answer.result.as_ref().and_then(|r| r.get("certificate")).and_then(serde_json::Value::as_str).ok_or_else(
                || ProviderError::Refused(format!("cfssl at {url} answered success without a certificate")),
            )?;
        let mut chain = certificate.trim_end().to_owned();
        chain.push('\n');
        chain.push_str(&self.chain_pem);
        Ok(chain)
    }

    async fn trust_bundle(&self) -> Result<String, ProviderError> {
        Ok(self.trust_bundle_pem.clone())
    }

    fn name(&self) -> &str {
        "cfssl"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_hmac_sha256_of_the_request_bytes() {
        // RFC 4231 test case 2 ("Jefe" is too short for from_hex, so use the raw key).
        let key = AuthKey(b"Jefe".to_vec());
        let token = key.token(b"what do ya want for nothing?").unwrap();
        assert_eq!(hex::encode(token), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(AuthKey::from_hex("zz").unwrap_err().contains("hex"));
        assert!(AuthKey::from_hex("0011").unwrap_err().contains("at least 16"));
        assert_eq!(format!("{:?}", AuthKey::from_hex(&"ab".repeat(16)).unwrap()), "AuthKey(<redacted>)");
    }
}
