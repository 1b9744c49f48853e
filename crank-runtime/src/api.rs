//! The wire types of the CA's HTTP API, used by both sides: the CA service
//! (`crank-ca`) and its client ([`CaClient`](crate::CaClient)).
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | POST | [`ISSUE_PATH`] | [`IssueBody`] | [`IssuedCertificate`](crank_security_core::IssuedCertificate) |
//! | POST | [`RENEW_PATH`] | [`RenewBody`] (mTLS) | [`IssuedCertificate`](crank_security_core::IssuedCertificate) |
//! | POST | [`REVOKE_PATH`] | [`RevokeBody`] (administrator mTLS) | [`RevokeAnswer`] |
//! | GET | [`CRL_PATH`] | | the CRL, DER |
//! | GET | [`TRUST_BUNDLE_PATH`] | | the trust bundle, PEM |
//! | POST | [`ENTRIES_PATH`] | [`EntryBody`] (administrator mTLS) | [`Entry`] |
//! | GET | [`ENTRIES_PATH`] | (administrator mTLS) | [`Entry`] list |
//! | DELETE | [`ENTRIES_PATH`]`/{id}` | (administrator mTLS) | |
//! | GET | [`AGENT_ENTRIES_PATH`] | (agent mTLS) | the agent's [`Entry`] list |
//! | POST | [`AGENT_ISSUE_PATH`] | [`AgentIssueBody`] (agent mTLS) | [`IssuedCertificate`](crank_security_core::IssuedCertificate) |
//! | POST | [`AGENT_JWT_PATH`] | [`JwtSvidBody`] (agent mTLS) | [`JwtSvidAnswer`] |
//! | GET | [`JWT_BUNDLE_PATH`] | | the JWT bundle (JWKS, JSON) |
//!
//! Every error is an [`ErrorBody`].

use serde::{Deserialize, Serialize};

/// First issuance with a join token.
pub const ISSUE_PATH: &str = "/v1/certificates";
/// Renewal, authenticated by the current certificate.
pub const RENEW_PATH: &str = "/v1/certificates/renew";
/// Revocation, by an administrator.
pub const REVOKE_PATH: &str = "/v1/revocations";
/// The CA's CRL.
pub const CRL_PATH: &str = "/v1/crl";
/// The CA's trust bundle.
pub const TRUST_BUNDLE_PATH: &str = "/v1/trust-bundle";
/// Registration entries, kept by administrators.
pub const ENTRIES_PATH: &str = "/v1/entries";
/// The registration entries assigned to the calling agent.
pub const AGENT_ENTRIES_PATH: &str = "/v1/agent/entries";
/// A workload's certificate, asked for by its agent.
pub const AGENT_ISSUE_PATH: &str = "/v1/agent/certificates";
/// A workload's JWT-SVID, asked for by its agent.
pub const AGENT_JWT_PATH: &str = "/v1/agent/jwt-svids";
/// The keys JWT-SVIDs are signed with, as a JWKS (the SPIFFE JWT bundle).
pub const JWT_BUNDLE_PATH: &str = "/v1/jwt-bundle";

/// Body of `POST /v1/agent/jwt-svids`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSvidBody {
    /// The workload's worker id (a registration entry must assign it to this agent).
    pub worker_id: String,
    /// The audiences (at least one).
    pub audience: Vec<String>,
}

/// Answer of `POST /v1/agent/jwt-svids`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwtSvidAnswer {
    /// The JWT-SVID (compact JWS).
    pub token: String,
    /// Its `exp`, Unix seconds.
    pub expires_at: i64,
}

/// Body of `POST /v1/entries`: `agent_id` may obtain certificates for `worker_id`, for
/// processes matching every one of `selectors` (`unix:uid:1000`, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    /// The worker id the workload's certificates name.
    pub worker_id: String,
    /// What a process must match (all of them).
    pub selectors: Vec<String>,
    /// The agent's worker id.
    pub agent_id: String,
}

/// A registration entry as the CA keeps it.
pub use crank_security_core::RegistrationEntry as Entry;

/// Body of `POST /v1/agent/certificates`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentIssueBody {
    /// The workload's worker id (a registration entry must assign it to this agent).
    pub worker_id: String,
    /// PEM CSR; the key stays in the agent.
    pub csr: String,
}

/// Body of `POST /v1/certificates`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueBody {
    /// PEM CSR.
    pub csr: String,
    /// Join token.
    pub token: String,
}

/// Body of `POST /v1/certificates/renew`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewBody {
    /// PEM CSR for the new key.
    pub csr: String,
}

/// Body of `POST /v1/revocations`: exactly one of `serial`, `worker_id` and `admin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// Serial of one certificate (hex, `:`-separated as `crank cert inspect` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A worker: every unexpired certificate of it (never an administrator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// An administrator: every unexpired certificate of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// RFC 5280 reason (`keyCompromise`, `superseded`, ...).
    pub reason: String,
}

/// One certificate a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Serial, hex with `:`.
    pub serial: String,
    /// The worker (or administrator) it belonged to.
    pub worker_id: String,
    /// RFC 5280 reason name.
    pub reason: String,
    /// When, Unix seconds.
    pub revoked_at: i64,
    /// Who asked (`admin/<name>`).
    pub revoked_by: String,
    /// The certificate's expiry, Unix seconds; after it the entry leaves the CRL.
    pub not_after: i64,
}

/// Answer of `POST /v1/revocations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeAnswer {
    /// What is now revoked.
    pub revoked: Vec<Revoked>,
    /// Number of the CRL that lists them (absent if it could not be regenerated yet).
    pub crl_number: Option<u64>,
}

/// The JSON shape of every error answer:
/// `{"error": {"code": "token_reused", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inner error object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: String,
    /// Human-readable message: what was wrong and what to do.
    pub message: String,
    /// The capability refused (`access_denied`, `rate_limited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
}
