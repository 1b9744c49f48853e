//! The `CertificateProvider` trait: who issues, renews and signs certificates.
//!
//! A provider plays one or both of two roles:
//!
//! - **front**: [`issue`](CertificateProvider::issue) with a join token and
//!   [`renew`](CertificateProvider::renew) with the current certificate. It checks the
//!   credential, asks policy and keeps the ledger. The CA service (`LocalCa`) and its
//!   HTTPS client (`CaClient`) are fronts.
//! - **signer**: [`sign`](CertificateProvider::sign) a CSR whose contents a front has
//!   already decided ([`CertificateTemplate`]). The CA's own key (`LocalSigner`) and an
//!   upstream CA such as cfssl, Vault PKI or ADCS are signers. The front checks what a
//!   signer returns against the template before anything is recorded or handed out.

use std::fmt::Debug;
use std::net::IpAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{CorrelationId, SpiffeId};

/// A first issuance, authorised by a join token.
#[derive(Clone, Debug)]
pub struct IssueRequest {
    /// The CSR, PEM.
    pub csr_pem: String,
    /// The one-time join token.
    pub token: String,
    /// Correlation id of the operation.
    pub correlation_id: CorrelationId,
}

/// A renewal, authorised by the requester's current, verified certificate.
#[derive(Clone, Debug)]
pub struct RenewRequest {
    /// The CSR for the new key, PEM.
    pub csr_pem: String,
    /// The worker id proven by the requester's current certificate. Providers that talk
    /// to a remote CA prove it with the TLS client certificate instead.
    pub worker_id: String,
    /// Serial of the current certificate that authenticates the renewal (hex, `:`).
    pub current_serial: String,
    /// SHA-256 fingerprint (hex) of that certificate, when the provider can see it (the
    /// CA service does); a front compares it with its ledger, so a certificate from
    /// another CA that reuses a serial cannot renew.
    pub current_fingerprint: Option<String>,
    /// Correlation id of the operation.
    pub correlation_id: CorrelationId,
}

/// What a front decided a new certificate says, after checking the credential and
/// asking policy. A signer must produce exactly this (it may shorten the validity, and
/// backdate `not_before` by up to [`CertificateTemplate::MAX_BACKDATE`]); the front
/// refuses anything else.
///
/// The certificate it describes: subject `CN=<worker id>, O=<trust domain>`; SANs the
/// SPIFFE ID (URI), then `dns_sans` and `ip_sans`, nothing else; not a CA; key usage
/// digitalSignature (keyEncipherment and keyAgreement tolerated); extended key usages
/// exactly clientAuth and serverAuth; the CSR's public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateTemplate {
    /// The identity, `spiffe://<trust-domain>/worker/<worker-id>`.
    pub spiffe_id: SpiffeId,
    /// DNS names, lowercase, sorted, as policy allowed them.
    pub dns_sans: Vec<String>,
    /// IP addresses, sorted, as policy allowed them.
    pub ip_sans: Vec<IpAddr>,
    /// Start of validity (the CA backdates by 60 s for clock skew).
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity granted by policy; a signer may end earlier, never later.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Whether this is a renewal.
    pub renewal: bool,
    /// Access capabilities the CA grants, written into the certificate's capabilities
    /// extension ([`crate::CAPABILITIES_OID`]); `san:` capabilities are not among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

impl CertificateTemplate {
    /// How much earlier than `not_before` a signer may start the validity (cfssl
    /// backdates by 5 minutes unless its profile says otherwise).
    pub const MAX_BACKDATE: time::Duration = time::Duration::minutes(10);

    /// The subject's common name: the worker id.
    pub fn common_name(&self) -> &str {
        self.spiffe_id.worker_id.as_str()
    }

    /// The subject's organisation: the trust domain.
    pub fn organization(&self) -> &str {
        self.spiffe_id.trust_domain.as_str()
    }
}

/// A CSR to sign as a [`CertificateTemplate`] says.
#[derive(Clone, Debug)]
pub struct SignRequest {
    /// The CSR, PEM. Its self-signature has been verified; only its public key counts.
    pub csr_pem: String,
    /// What the certificate must say.
    pub template: CertificateTemplate,
    /// Correlation id of the operation.
    pub correlation_id: CorrelationId,
}

/// A signed certificate as handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The leaf, then any intermediates, PEM.
    pub certificate_chain: String,
    /// The CA certificates to trust, PEM.
    pub ca_bundle: String,
    /// Serial of the leaf, hex.
    pub serial: String,
    /// The SPIFFE ID in the leaf.
    pub spiffe_id: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// The CA's current CRL (PEM `X509 CRL`), so that a worker never starts without
    /// one. Absent when the CA could not make one at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<String>,
}

/// Why a provider could not issue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The request is malformed (bad CSR, bad PEM, ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The credential (token or certificate) is missing, invalid, expired or used.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Policy denied the request.
    #[error("denied by policy: {0}")]
    PolicyDenied(String),
    /// The certificate presented was revoked; only a new join token can help.
    #[error("certificate revoked: {0}")]
    Revoked(String),
    /// The CA could not be reached or is not ready.
    #[error("CA unavailable: {0}")]
    Unavailable(String),
    /// An upstream signer refused the request, or answered with a certificate the front
    /// did not accept.
    #[error("upstream signer refused: {0}")]
    Refused(String),
    /// This provider does not play this role (a signer asked to check a join token, a
    /// front asked to sign a decided template).
    #[error("not supported by this provider: {0}")]
    Unsupported(String),
    /// The CA answered with an error not covered above.
    #[error("CA error: {0}")]
    Other(String),
}

/// Issues, renews, signs and publishes trust for certificates.
///
/// Implementations: the local CA `LocalCa` (front: tokens, policy, ledger), its signer
/// `LocalSigner` (the CA's root or intermediate key), `CfsslProvider` (signer: an
/// upstream cfssl), and `CaClient` (front, over HTTPS: what workers use). Enterprise PKI
/// plugs in as a signer: implement [`sign`](Self::sign) and
/// [`trust_bundle`](Self::trust_bundle) (see `docs/providers.md`).
#[async_trait]
pub trait CertificateProvider: Debug + Send + Sync {
    /// First issuance with a join token. Default: [`ProviderError::Unsupported`], for
    /// providers that only sign behind a front.
    async fn issue(&self, request: IssueRequest) -> Result<IssuedCertificate, ProviderError> {
        let _ = request;
        Err(ProviderError::Unsupported(format!(
            "{} does not check join tokens; put it behind the CA service",
            self.name()
        )))
    }

    /// Renewal authenticated by the current certificate. Default:
    /// [`ProviderError::Unsupported`], as for [`issue`](Self::issue).
    async fn renew(&self, request: RenewRequest) -> Result<IssuedCertificate, ProviderError> {
        let _ = request;
        Err(ProviderError::Unsupported(format!("{} does not renew; put it behind the CA service", self.name())))
    }

    /// Signs a CSR as `request.template` says; returns the chain, PEM: the leaf, then
    /// any intermediates up to (not including) a certificate of
    /// [`trust_bundle`](Self::trust_bundle). Default: [`ProviderError::Unsupported`],
    /// for fronts.
    ///
    /// Errors: [`ProviderError::Unavailable`] when the signer cannot be reached (the CA
    /// answers 503 and emits CA_UNAVAILABLE), [`ProviderError::Refused`] when it says no.
    async fn sign(&self, request: SignRequest) -> Result<String, ProviderError> {
        let _ = request;
        Err(ProviderError::Unsupported(format!("{} does not sign decided templates", self.name())))
    }

    /// The CA certificates (PEM) that peers should trust.
    async fn trust_bundle(&self) -> Result<String, ProviderError>;

    /// A short name for logs and events (default `custom`).
    fn name(&self) -> &str {
        "custom"
    }
}
