//! What the agent holds and hands out: its entries, each with its current SVID, the
//! trust bundle and CRLs. The agent's loops build a new [`WorkloadState`] on every
//! change and publish it on a `watch` channel; the Workload API reads it.

use std::sync::Arc;

use crank_security_core::Selector;
use time::OffsetDateTime;

/// An X509-SVID held for one registration entry: the key was made in the agent.
pub struct Svid {
    /// The registration entry it was issued for.
    pub entry_id: String,
    /// `spiffe://<trust domain>/<worker id>`.
    pub spiffe_id: String,
    /// The certificate chain, leaf first, DER.
    pub chain_der: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER. Never logged.
    pub key_pkcs8_der: zeroize::Zeroizing<Vec<u8>>,
    /// The leaf's serial (lowercase hex).
    pub serial: String,
    /// The leaf's notAfter.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("entry_id", &self.entry_id)
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A registration entry assigned to this agent, with the SVID it holds for it.
#[derive(Debug, Clone)]
pub struct HeldEntry {
    /// The entry's id at the CA.
    pub id: String,
    /// The worker id its SVIDs name.
    pub worker_id: String,
    /// Every one must match a caller for it to get this entry's SVID.
    pub selectors: Vec<Selector>,
    /// The current SVID, once issued.
    pub svid: Option<Arc<Svid>>,
}

/// A snapshot of everything the Workload API serves. Published whole on every change.
#[derive(Debug, Clone, Default)]
pub struct WorkloadState {
    /// The trust domain's name (`example.org`), without the scheme.
    pub trust_domain: String,
    /// The trust domain's X.509 roots, DER.
    pub bundle_der: Vec<Vec<u8>>,
    /// The current CRLs, DER.
    pub crl_der: Vec<Vec<u8>>,
    /// The trust domain's JWT bundle (a JWKS document, JSON), once known.
    pub jwt_bundle: Option<Vec<u8>>,
    /// The entries assigned to this agent.
    pub entries: Vec<HeldEntry>,
    /// Set when the agent must not hand anything out (its own certificate was revoked,
    /// say), with the reason that callers are told.
    pub refusal: Option<String>,
}

/// Why a JWT-SVID could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The CA refused (policy, unknown entry): a permanent answer.
    #[error("{0}")]
    Refused(String),
    /// The CA could not be reached or failed: try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// Mints JWT-SVIDs for an entry (the CA signs them; the agent asks).
#[async_trait::async_trait]
pub trait JwtMinter: Send + Sync + std::fmt::Debug {
    /// A JWT-SVID for `entry`'s SPIFFE ID with these audiences (at least one).
    async fn mint(&self, entry: &HeldEntry, audience: &[String]) -> Result<String, MintError>;
}
