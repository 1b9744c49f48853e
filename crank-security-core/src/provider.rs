//! The `CertificateProvider` trait: who issues and renews certificates.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::CorrelationId;

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
    /// The CA answered with an error not covered above.
    #[error("CA error: {0}")]
    Other(String),
}

/// Issues, renews and publishes trust for certificates.
///
/// Default implementations: the local CA (in-process, rcgen, used by the CA service)
/// and the CA service client (what workers use, over HTTPS). Enterprise PKI plugs in
/// here.
#[async_trait]
pub trait CertificateProvider: Debug + Send + Sync {
    /// First issuance with a join token.
    async fn issue(&self, request: IssueRequest) -> Result<IssuedCertificate, ProviderError>;

    /// Renewal authenticated by the current certificate.
    async fn renew(&self, request: RenewRequest) -> Result<IssuedCertificate, ProviderError>;

    /// The CA certificates (PEM) that peers should trust.
    async fn trust_bundle(&self) -> Result<String, ProviderError>;
}
