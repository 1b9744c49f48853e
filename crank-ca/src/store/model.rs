//! What the CA stores and the trait every backend implements.

use std::fmt::Debug;
use std::str::FromStr;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRecord {
    /// Serial, hex with `:`.
    pub serial: String,
    /// Worker id.
    pub worker_id: String,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// All SANs (JSON array text).
    pub sans: Vec<String>,
    /// Capabilities the certificate was issued under (carried over on renewal).
    pub capabilities: Vec<String>,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// Which CA replica issued it.
    pub issued_by: String,
    /// How it was issued.
    pub kind: CertKind,
    /// Correlation id of the issuance.
    pub correlation_id: String,
    /// When it was recorded, RFC 3339.
    pub issued_at: String,
    /// Where it stands.
    pub status: CertStatus,
    /// The certificate, PEM (so a retried request can be answered with it).
    pub pem: String,
}

/// How a certificate in the ledger was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// A first certificate, with a join token.
    Issue,
    /// A renewal, authenticated by the previous certificate.
    Renew,
    /// An administrator's certificate (`crank ca admin-cert`).
    Admin,
    /// A workload's certificate, asked for by the agent a registration entry assigns
    /// it to (`crank agent`); its key was made in the agent.
    Agent,
}

/// Where a certificate in the ledger stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    /// In force.
    Valid,
    /// Renewed: it still works in handshakes until it expires, but cannot renew again.
    Superseded,
    /// Revoked.
    Revoked,
}

macro_rules! stored_as_text {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// How the store writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = StoreError;

            fn from_str(s: &str) -> Result<Self, StoreError> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(StoreError::Database(format!(
                        "{other:?} in the store is not a {} the CA knows",
                        stringify!($ty)
                    ))),
                }
            }
        }
    };
}

stored_as_text!(CertKind { Issue => "issue", Renew => "renew", Admin => "admin", Agent => "agent" });
stored_as_text!(CertStatus { Valid => "valid", Superseded => "superseded", Revoked => "revoked" });

/// A used join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    /// Token id.
    pub jti: String,
    /// Worker it was bound to.
    pub worker_id: String,
    /// Token expiry, RFC 3339.
    pub expires_at: String,
    /// SHA-256 of the request the token was used for (the CSR), hex: the same request
    /// retried with the same token gets the same certificate back.
    pub request_sha256: String,
}

/// A renewal as the store records it: the certificate it replaces, and the SHA-256 of
/// the request (the CSR's public key) so that the same renewal retried gets the same
/// certificate back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// Serial of the certificate that authenticated the renewal; it is retired
    /// (`superseded`) in the same durable write.
    pub previous_serial: String,
    /// SHA-256 (hex) of the CSR's public key.
    pub request_sha256: String,
}

/// RFC 5280 CRL reason codes (section 5.3.1). `removeFromCRL` (8) only makes sense for
/// delta CRLs and is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// 0
    Unspecified,
    /// 1
    KeyCompromise,
    /// 2
    CaCompromise,
    /// 3
    AffiliationChanged,
    /// 4
    Superseded,
    /// 5
    CessationOfOperation,
    /// 6
    CertificateHold,
    /// 9
    PrivilegeWithdrawn,
    /// 10
    AaCompromise,
}

impl RevocationReason {
    /// Every accepted reason.
    pub const ALL: [Self; 9] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::CaCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::CertificateHold,
        Self::PrivilegeWithdrawn,
        Self::AaCompromise,
    ];

    /// The RFC 5280 name (`keyCompromise`, ...), also what policy sees.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::CaCompromise => "cACompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::CertificateHold => "certificateHold",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
            Self::AaCompromise => "aACompromise",
        }
    }

    /// The RFC 5280 `CRLReason` code.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::CertificateHold => 6,
            Self::PrivilegeWithdrawn => 9,
            Self::AaCompromise => 10,
        }
    }

    /// The rcgen value written into the CRL entry.
    pub fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Self::Unspecified => R::Unspecified,
            Self::KeyCompromise => R::KeyCompromise,
            Self::CaCompromise => R::CaCompromise,
            Self::AffiliationChanged => R::AffiliationChanged,
            Self::Superseded => R::Superseded,
            Self::CessationOfOperation => R::CessationOfOperation,
            Self::CertificateHold => R::CertificateHold,
            Self::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            Self::AaCompromise => R::AaCompromise,
        }
    }
}

impl std::fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = String;

    /// Accepts the RFC 5280 name in any case, with or without `-`/`_`
    /// (`keyCompromise`, `key-compromise`, `KEY_COMPROMISE`), or the numeric code.
    fn from_str(s: &str) -> Result<Self, String> {
        let norm: String = s.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().to_ascii_lowercase() == norm || r.code().to_string() == norm)
            .ok_or_else(|| {
                format!("unknown revocation reason {s:?}; use one of {}", Self::ALL.map(Self::as_str).join(", "))
            })
    }
}

impl Serialize for RevocationReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevocationRecord {
    /// Serial, hex with `:`.
    pub serial: String,
    /// The worker it belonged to.
    pub worker_id: String,
    /// Why.
    pub reason: RevocationReason,
    /// When, Unix seconds.
    pub revoked_at: i64,
    /// Who asked (the administrator's identity).
    pub revoked_by: String,
    /// The certificate's expiry, Unix seconds; after it the entry leaves the CRL.
    pub not_after: i64,
}

impl From<RevocationRecord> for crank_runtime::api::Revoked {
    fn from(r: RevocationRecord) -> Self {
        Self {
            serial: r.serial,
            worker_id: r.worker_id,
            reason: r.reason.as_str().to_owned(),
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
            not_after: r.not_after,
        }
    }
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One certificate.
    Serial(String),
    /// Every certificate of a worker that has not expired (never an administrator's).
    Worker(String),
    /// Every certificate of an administrator that has not expired.
    Admin(String),
}

/// A revocation request as the store records it.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// What.
    pub target: RevokeTarget,
    /// Why.
    pub reason: RevocationReason,
    /// Who asked.
    pub revoked_by: String,
    /// When (also the cut-off for "not expired").
    pub at: OffsetDateTime,
}

pub use crank_security_core::RegistrationEntry;

/// The selectors of an entry as the store keys them: the JSON array text of the sorted
/// list (two entries with the same selectors in another order are the same entry).
pub(crate) fn selectors_key(selectors: &[String]) -> String {
    let mut sorted = selectors.to_vec();
    sorted.sort();
    serde_json::to_string(&sorted).unwrap_or_default()
}

/// The selectors of an entry from their [`selectors_key`] text.
pub(crate) fn selectors_from_key(id: &str, text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Database(format!("the selectors of registration entry {id} in the store are not a JSON list: {e}"))
    })
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The join token was already used.
    #[error("join token {0} was already used")]
    TokenUsed(String),
    /// A certificate with this serial is already recorded.
    #[error("serial {0} is already recorded")]
    DuplicateSerial(String),
    /// The certificate a renewal presented was already renewed (or is no longer
    /// valid): it cannot renew again.
    #[error("certificate {0} was already renewed or is no longer valid")]
    Superseded(String),
    /// A registration entry with the same worker id, agent and selectors is already
    /// recorded, under this id.
    #[error("registration entry {0} already assigns this worker id to this agent with the same selectors")]
    DuplicateEntry(String),
    /// Nothing matched (unknown serial, or a worker without live certificates).
    #[error("{0}")]
    NotFound(String),
    /// The database failed or cannot be reached.
    #[error("CA store error: {0}")]
    Database(String),
    /// A query the store cannot answer as asked (a console cursor that is not one the
    /// store handed out).
    #[error("{0}")]
    InvalidQuery(String),
}

/// Which certificates the console lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFilter {
    /// Every certificate.
    #[default]
    All,
    /// Status valid and not expired at `now`.
    Valid,
    /// Status valid, not expired, and notAfter within `expiring_within` of `now`.
    Expiring,
    /// Revoked.
    Revoked,
    /// notAfter before `now` (whatever the status, except revoked).
    Expired,
}

/// A page of the ledger for the console: newest first, by (issued_at, serial) descending.
///
/// Times compare as instants (not as text): `issued_at` orders by the moment it names,
/// and a certificate is expired when its notAfter is before `now` (notAfter itself is
/// the last moment it is valid). Ties on `issued_at` are broken by the serial's bytes.
#[derive(Debug, Clone)]
pub struct CertificateQuery {
    /// Rows whose worker id starts with this, or whose serial starts with this (serials
    /// as stored: lower-case hex with colons; the caller normalises). None or empty: all.
    pub search: Option<String>,
    /// Which certificates, by status and expiry.
    pub status: StatusFilter,
    /// Keyset cursor: only rows strictly after this (issued_at, serial) in the descending
    /// order. `issued_at` as the store returned it (RFC 3339); anything else is
    /// [`StoreError::InvalidQuery`].
    pub after: Option<(String, String)>,
    /// At most this many rows (the store caps it at [`MAX_PAGE`]).
    pub limit: u32,
    /// The moment "expired" and "expiring" are measured at.
    pub now: OffsetDateTime,
    /// How close to its notAfter a valid certificate is "expiring" (notAfter at most
    /// this long after `now`).
    pub expiring_within: time::Duration,
}

/// Most rows one [`CaStore::list_certificates`] returns, whatever the query's `limit`.
pub const MAX_PAGE: u32 = 500;

/// Counts for the console's overview, with the definitions of [`StatusFilter`]:
/// `expiring` is part of `valid`; a superseded certificate that has not expired is
/// only in `total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertificateCounts {
    /// Every ledger row.
    pub total: u64,
    /// Status valid and not expired ([`StatusFilter::Valid`]).
    pub valid: u64,
    /// Valid and ending within the window asked for ([`StatusFilter::Expiring`]).
    pub expiring: u64,
    /// Revoked ([`StatusFilter::Revoked`]).
    pub revoked: u64,
    /// Expired and not revoked ([`StatusFilter::Expired`]).
    pub expired: u64,
}

/// One certificate with what happened to it.
#[derive(Debug, Clone)]
pub struct CertificateHistory {
    /// Its ledger row.
    pub record: CertificateRecord,
    /// The certificate this one renewed (whose superseded_by is this serial), if any.
    pub renewed_from: Option<String>,
    /// The certificate that replaced it at renewal, if any.
    pub superseded_by: Option<String>,
    /// Its revocation, if it was revoked.
    pub revocation: Option<RevocationRecord>,
}

/// A CA replica as the store last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// The replica's name (what it writes as `issued_by`).
    pub name: String,
    /// Where it listens, as it last said.
    pub address: String,
    /// Its first heartbeat, Unix seconds.
    pub first_seen: i64,
    /// Its latest heartbeat, Unix seconds.
    pub last_seen: i64,
}

/// The search of a [`CertificateQuery`], when there is one: the prefix, and the least
/// string greater than every string starting with it (`None` when there is none), so
/// that "starts with" is the index range `prefix <= s < upper` in byte order (SQLite's
/// `BINARY`, PostgreSQL's `"C"` collation; UTF-8 byte order is code point order).
pub(crate) fn search_range(query: &CertificateQuery) -> Option<(String, Option<String>)> {
    let prefix = query.search.as_deref().filter(|s| !s.is_empty())?;
    let mut chars: Vec<char> = prefix.chars().collect();
    let mut upper = None;
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            upper = Some(chars.into_iter().collect());
            break;
        }
    }
    Some((prefix.to_owned(), upper))
}

/// The keyset cursor of a query, its time parsed.
pub(crate) fn query_cursor(query: &CertificateQuery) -> Result<Option<(OffsetDateTime, String)>, StoreError> {
    query
        .after
        .as_ref()
        .map(|(at, serial)| {
            OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .map(|t| (t, serial.clone()))
                .map_err(|e| StoreError::InvalidQuery(format!("the cursor's time {at:?} is not RFC 3339: {e}")))
        })
        .transpose()
}

/// The end of the "expiring" window: `now + within`, at the last representable date
/// rather than overflowing.
pub(crate) fn expiring_until(now: OffsetDateTime, within: time::Duration) -> OffsetDateTime {
    now.saturating_add(within)
}

/// Durable CA state. Every method that changes state returns only after the change is
/// durable.
#[async_trait]
pub trait CaStore: Debug + Send + Sync {
    /// The backend's name (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;
    /// Records an issued certificate, consuming `token` first when given, atomically:
    /// either both are recorded or neither.
    async fn record_issuance(&self, token: Option<TokenUse>, cert: CertificateRecord) -> Result<(), StoreError>;
    /// Records a renewed certificate and retires the one that authenticated it
    /// (`status = superseded`), atomically; [`StoreError::Superseded`] if that one is not
    /// `valid` any more (renewed already, by this replica or another, or revoked).
    async fn record_renewal(&self, renewal: Renewal, cert: CertificateRecord) -> Result<(), StoreError>;
    /// For a superseded certificate: the SHA-256 of the renewal request that retired it,
    /// and the ledger row of the certificate that replaced it.
    async fn renewal_of(&self, previous_serial: &str) -> Result<Option<(String, CertificateRecord)>, StoreError>;
    /// Whether a token id has been used.
    async fn token_used(&self, jti: &str) -> Result<bool, StoreError>;
    /// For a used token: the SHA-256 of the request it was used for, and the ledger row
    /// of the certificate issued for it.
    async fn issued_with_token(&self, jti: &str) -> Result<Option<(String, CertificateRecord)>, StoreError>;
    /// The ledger row of a serial.
    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError>;
    /// Number of ledger rows.
    async fn certificate_count(&self) -> Result<u64, StoreError>;
    /// The latest `not_after` among certificates issued before `before`.
    async fn latest_expiry_issued_before(&self, before: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError>;
    /// Revokes, atomically: marks the certificates revoked and records why, and bumps
    /// the revocation generation. Revoking an already revoked serial returns its
    /// existing record. A serial not in the ledger, or a worker with no unexpired
    /// valid certificate, is [`StoreError::NotFound`].
    async fn revoke(&self, revocation: &Revocation) -> Result<Vec<RevocationRecord>, StoreError>;
    /// Revoked certificates that have not expired at `now`, oldest revocation first.
    async fn revoked_unexpired(&self, now: OffsetDateTime) -> Result<Vec<RevocationRecord>, StoreError>;
    /// A number that changes whenever a revocation is recorded (by any replica).
    async fn revocation_generation(&self) -> Result<u64, StoreError>;
    /// The next CRL number: strictly increasing across every replica of this store.
    async fn next_crl_number(&self) -> Result<u64, StoreError>;
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// A page of the ledger for the console ([`CertificateQuery`]): newest first, by
    /// (issued_at, serial) descending, at most [`MAX_PAGE`] rows. Paging with the last
    /// row's (issued_at, serial) as the next `after` visits every row exactly once.
    async fn list_certificates(&self, query: &CertificateQuery) -> Result<Vec<CertificateRecord>, StoreError>;
    /// How many certificates there are, and how many are valid, expiring within
    /// `expiring_within`, revoked and expired at `now` (as [`StatusFilter`] defines
    /// them), from one snapshot of the ledger.
    async fn certificate_counts(
        &self,
        now: OffsetDateTime,
        expiring_within: time::Duration,
    ) -> Result<CertificateCounts, StoreError>;
    /// A certificate with the one it renewed, the one that replaced it, and its
    /// revocation; `None` for a serial not in the ledger.
    async fn certificate_history(&self, serial: &str) -> Result<Option<CertificateHistory>, StoreError>;
    /// Records that `replica` (listening at `address`) is alive at `at` (an upsert):
    /// `first_seen` and `last_seen` become the earliest and latest `at` heard, and the
    /// address the one of the latest heartbeat (a late one does not move them back).
    async fn replica_heartbeat(&self, replica: &str, address: &str, at: OffsetDateTime) -> Result<(), StoreError>;
    /// Every replica the store has heard from, by name.
    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError>;
    /// Publishes a join-token key: its certificate (PEM, signed by the CA's signing key)
    /// under `kid`, so that every replica accepts tokens it signs. Publishing a `kid`
    /// again keeps the first certificate.
    async fn publish_token_key(&self, kid: &str, certificate_pem: &str) -> Result<(), StoreError>;
    /// The certificate published under `kid`, if any. What it says is checked by the
    /// caller (the store is not trusted to vouch for a key).
    async fn token_key(&self, kid: &str) -> Result<Option<String>, StoreError>;
    /// Publishes a JWT-SVID key: its certificate (PEM, signed by the CA's signing key)
    /// under `kid`, so that every replica's JWT bundle holds it. Publishing a `kid` again
    /// keeps the first certificate.
    async fn publish_jwt_key(&self, kid: &str, certificate_pem: &str) -> Result<(), StoreError>;
    /// Every published JWT-SVID key, `(kid, certificate PEM)`, oldest first. What they
    /// say is checked by the caller (the store is not trusted to vouch for a key).
    async fn jwt_keys(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Records a new registration entry (its selectors kept sorted). An entry with the
    /// same worker id, agent and selectors already present is
    /// [`StoreError::DuplicateEntry`], naming the existing entry's id.
    async fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError>;
    /// Registration entries, oldest first (by `created_at`, then in the order they were
    /// recorded); only `agent_id`'s when given.
    async fn entries(&self, agent_id: Option<&str>) -> Result<Vec<RegistrationEntry>, StoreError>;
    /// Deletes registration entry `id`; whether it existed.
    async fn delete_entry(&self, id: &str) -> Result<bool, StoreError>;
    /// The oldest entry assigning `worker_id` to `agent_id`, if any (one indexed read:
    /// the CA asks on every certificate an agent requests).
    async fn entry_for(&self, agent_id: &str, worker_id: &str) -> Result<Option<RegistrationEntry>, StoreError>;
}

pub(crate) fn now_rfc3339() -> String {
    crank_security_core::rfc3339(OffsetDateTime::now_utc())
}

pub(crate) fn parse_rfc3339(what: &str, s: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Database(format!("{what} {s:?} in the store is not RFC 3339: {e}")))
}

/// Hides the password of a URL for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable store URL>".into(),
    }
}
