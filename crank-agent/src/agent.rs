//! The agent's loop: learn the registration entries the CA assigns to this agent, hold a
//! current X509-SVID for each (key made here, CSR to the CA), renew it at 40 to 50 %
//! of its lifetime or as soon as it is revoked or the roots change, publish everything to the
//! Workload API, and keep certificate directories fresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crank_runtime::CaClient;
use crank_runtime::api::{AgentIssueBody, Entry, JwtSvidBody};
use crank_runtime::trust::TrustStore;
use crank_runtime::worker::{Rotator, accept_issued, default_sans};
use crank_security_core::{
    CertificateBundle, CorrelationId, KeyType, ProviderError, Selector, SpiffeId, TrustDomain, WorkerId, build_csr,
    generate_key,
};
use futures_util::StreamExt;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::files::FileTarget;
use crate::state::{HeldEntry, JwtMinter, MintError, Svid, WorkloadState};

/// How often the agent asks the CA for its entries by default.
pub const DEFAULT_SYNC: Duration = Duration::from_secs(5);
/// Workload certificates asked for at once.
const CONCURRENT_ISSUANCE: usize = 8;
/// Workload certificates issued between two publications of the state.
const PUBLISH_BATCH: usize = 64;
/// First wait after a failed issuance; doubled on each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between attempts for one entry.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the agent does besides holding its own identity.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Certificate directories kept fresh, each for a worker id.
    pub files: Vec<FileTarget>,
    /// How often the entries are fetched again.
    pub sync: Duration,
    /// Key type of workload keys.
    pub key_type: KeyType,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self { files: Vec::new(), sync: DEFAULT_SYNC, key_type: KeyType::EcdsaP256 }
    }
}

/// The agent's own identity, as the worker runtime keeps it (renewed, with its trust
/// store and CRL).
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// The agent's worker id.
    pub worker_id: WorkerId,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// The CA's URLs.
    pub ca_urls: Vec<url::Url>,
    /// Roots and CRLs in force (updated by the runtime).
    pub trust: Arc<TrustStore>,
    /// The agent's current certificate and key (swapped by the runtime on renewal).
    pub credentials: Arc<crank_runtime::tls::Credentials>,
    /// The runtime's keeper of the agent's certificate (it knows when it is revoked).
    pub rotator: Option<Arc<Rotator>>,
}

/// One entry's SVID and when to try again after a failure.
#[derive(Debug, Default)]
struct Slot {
    entry: Option<Entry>,
    svid: Option<Arc<Svid>>,
    /// When the held SVID is to be renewed: between 40 % and 50 % of the lifetime the
    /// CA granted, so that SVIDs issued together are not all renewed together.
    renew_at: Option<OffsetDateTime>,
    /// The roots the held SVID was issued under.
    roots: Vec<Vec<u8>>,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

/// The running agent.
#[derive(Debug)]
pub struct Agent {
    id: AgentIdentity,
    opts: AgentOptions,
    client: CaClient,
    slots: HashMap<String, Slot>,
    state: watch::Sender<Arc<WorkloadState>>,
    refusal: Option<String>,
    entries_synced: Option<tokio::time::Instant>,
    jwt_bundle: Option<Vec<u8>>,
}

impl Agent {
    /// An agent with `id`; its state is published on the returned receiver.
    pub fn new(
        id: AgentIdentity,
        opts: AgentOptions,
    ) -> Result<(Self, watch::Receiver<Arc<WorkloadState>>), ProviderError> {
        let client = CaClient::mtls(id.ca_urls.clone(), &id.trust, id.credentials.clone(), &id.trust_domain)?;
        let (state, rx) = watch::channel(Arc::new(WorkloadState {
            trust_domain: id.trust_domain.to_string(),
            ..WorkloadState::default()
        }));
        Ok((
            Self {
                id,
                opts,
                client,
                slots: HashMap::new(),
                state,
                refusal: None,
                entries_synced: None,
                jwt_bundle: None,
            },
            rx,
        ))
    }

    /// The agent's client of the CA (mutual TLS with the agent's identity).
    pub fn client(&self) -> &CaClient {
        &self.client
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.id.trust_domain
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut trust_changes = self.id.trust.changes();
        loop {
            let next = self.step().await;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                changed = trust_changes.changed() => {
                    if changed.is_err() { return; }
                }
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// One pass: sync entries if due, renew what needs it, publish, write files.
    /// Returns when the next pass is due.
    pub async fn step(&mut self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        if self.id.rotator.as_ref().is_some_and(|r| r.is_revoked()) {
            self.refuse("this agent's own certificate is revoked (it is in the CRL); it hands out nothing until it has a new identity (a new join token)".into());
        }
        let due = self.entries_synced.is_none_or(|t| now.duration_since(t) >= self.opts.sync);
        if due && self.refusal.is_none() {
            self.sync_entries().await;
            self.sync_jwt_bundle().await;
        }
        if self.refusal.is_none() {
            self.renew_due().await;
        }
        self.publish();
        self.next_due()
    }

    fn refuse(&mut self, why: String) {
        if self.refusal.as_deref() != Some(why.as_str()) {
            tracing::error!(reason = %why, "the agent stops handing out certificates");
            self.refusal = Some(why);
        }
    }

    async fn sync_entries(&mut self) {
        match self.client.agent_entries().await {
            Ok(entries) => {
                self.entries_synced = Some(tokio::time::Instant::now());
                let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
                self.slots.retain(|id, _| {
                    let keep = ids.contains(id);
                    if !keep {
                        tracing::info!(entry = %id, "registration entry removed at the CA; its SVID is no longer handed out");
                    }
                    keep
                });
                for entry in entries {
                    let slot = self.slots.entry(entry.id.clone()).or_default();
                    if slot.entry.as_ref().is_none_or(|e| e.worker_id != entry.worker_id) {
                        slot.svid = None;
                    }
                    slot.entry = Some(entry);
                }
            }
            Err(ProviderError::Revoked(m)) => {
                self.refuse(format!("the CA says this agent's certificate is revoked: {m}"));
            }
            Err(e) => {
                // Keep serving what is held; try again at the next sync.
                self.entries_synced = Some(tokio::time::Instant::now());
                tracing::warn!(error = %e, "could not fetch this agent's registration entries; serving what is held");
            }
        }
    }

    async fn sync_jwt_bundle(&mut self) {
        match self.client.jwt_bundle().await {
            Ok(jwks) => match serde_json::to_vec(&jwks) {
                Ok(bytes) => self.jwt_bundle = Some(bytes),
                Err(e) => tracing::warn!(error = %e, "the CA's JWT bundle could not be encoded"),
            },
            Err(e) => tracing::warn!(error = %e, "could not fetch the CA's JWT bundle; serving the one held"),
        }
    }

    /// Whether `svid` must be replaced now: past its renewal time, revoked, or issued
    /// under other roots than those in force.
    fn needs_renewal(&self, slot: &Slot, svid: &Svid, now: OffsetDateTime) -> bool {
        if slot.renew_at.is_none_or(|t| now >= t) {
            return true;
        }
        let leaf = CertificateDer::from(svid.chain_der[0].clone());
        if self.id.trust.is_revoked(&leaf) {
            tracing::warn!(serial = %svid.serial, spiffe_id = %svid.spiffe_id, "a held SVID is revoked; replacing it");
            return true;
        }
        let roots = self.id.trust.roots();
        !slot.roots.iter().map(Vec::as_slice).eq(roots.iter().map(|r| r.as_ref()))
    }

    async fn renew_due(&mut self) {
        let now = OffsetDateTime::now_utc();
        let instant = tokio::time::Instant::now();
        let due: Vec<Entry> = self
            .slots
            .values()
            .filter(|s| s.retry_at.is_none_or(|t| t <= instant))
            .filter(|s| s.svid.as_ref().is_none_or(|v| self.needs_renewal(s, v, now)))
            .filter_map(|s| s.entry.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        // In batches, each published as soon as it is issued: with many entries the first
        // workloads need not wait for the last.
        for batch in due.chunks(PUBLISH_BATCH) {
            if !self.issue_batch(batch).await {
                return;
            }
            self.publish();
        }
    }

    /// Issues `batch` and keeps the results; false when the CA said this agent is
    /// revoked.
    async fn issue_batch(&mut self, batch: &[Entry]) -> bool {
        let this = &*self;
        let results: Vec<(String, Result<Issued, ProviderError>)> = futures_util::stream::iter(batch.to_vec())
            .map(|entry| async move { (entry.id.clone(), this.issue(&entry).await) })
            .buffer_unordered(CONCURRENT_ISSUANCE)
            .collect()
            .await;
        for (id, result) in results {
            let Some(slot) = self.slots.get_mut(&id) else { continue };
            match result {
                Ok(Issued { svid, not_before, roots }) => {
                    slot.renew_at = Some(renewal_time(not_before, svid.not_after, 0.4 + rand_fraction() * 0.1));
                    slot.roots = roots;
                    tracing::info!(entry = %id, spiffe_id = %svid.spiffe_id, serial = %svid.serial, not_after = %svid.not_after, "workload SVID issued");
                    slot.svid = Some(Arc::new(svid));
                    slot.failures = 0;
                    slot.retry_at = None;
                }
                Err(ProviderError::Revoked(m)) => {
                    self.refuse(format!("the CA says this agent's certificate is revoked: {m}"));
                    return false;
                }
                Err(e) => {
                    slot.failures = slot.failures.saturating_add(1);
                    let wait = backoff(slot.failures);
                    slot.retry_at = Some(tokio::time::Instant::now() + wait);
                    tracing::warn!(entry = %id, error = %e, retry_in_ms = wait.as_millis() as u64, still_held = slot.svid.is_some(), "workload SVID not issued; retrying later");
                }
            }
        }
        true
    }

    /// Makes a key here, sends the CSR, and checks the answer against the roots in force.
    async fn issue(&self, entry: &Entry) -> Result<Issued, ProviderError> {
        let worker = WorkerId::new(entry.worker_id.clone()).map_err(|e| ProviderError::Other(e.to_string()))?;
        let key = generate_key(self.opts.key_type).map_err(|e| ProviderError::Other(e.to_string()))?;
        let csr = build_csr(&key, &worker, &default_sans(&worker)).map_err(|e| ProviderError::Other(e.to_string()))?;
        let cid = CorrelationId::new();
        let issued = self.client.agent_issue(&AgentIssueBody { worker_id: worker.to_string(), csr }, &cid).await?;
        let expected = SpiffeId::new(self.id.trust_domain.clone(), worker);
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        let roots = self.id.trust.roots();
        let bundle = accept_issued(&issued, &key_pem, &expected, &roots).map_err(|e| {
            ProviderError::Refused(format!("the CA's answer for entry {} was not accepted: {e}", entry.id))
        })?;
        let mut issued = svid_of(&entry.id, &bundle, zeroize::Zeroizing::new(key.serialize_der()));
        // Renewed again when the roots in force change (a rollover), not when the
        // answer's bundle lists them otherwise.
        issued.roots = roots.iter().map(|r| r.to_vec()).collect();
        Ok(issued)
    }

    fn next_due(&self) -> tokio::time::Instant {
        let now_i = tokio::time::Instant::now();
        let now = OffsetDateTime::now_utc();
        let mut next = self.entries_synced.map_or(now_i, |t| t + self.opts.sync);
        for slot in self.slots.values() {
            if let Some(t) = slot.retry_at {
                next = next.min(t);
            } else if let (Some(_), Some(half)) = (&slot.svid, slot.renew_at) {
                let wait = Duration::try_from(half - now).unwrap_or(Duration::ZERO);
                next = next.min(now_i + wait);
            }
        }
        next.max(now_i + Duration::from_millis(50))
    }

    /// Publishes the state (if anything changed) and writes the file targets whose
    /// certificate changed.
    fn publish(&mut self) {
        let mut entries: Vec<HeldEntry> = self
            .slots
            .values()
            .filter_map(|s| {
                let e = s.entry.as_ref()?;
                let selectors = e.selectors.iter().filter_map(|s| s.parse::<Selector>().ok()).collect();
                Some(HeldEntry {
                    id: e.id.clone(),
                    worker_id: e.worker_id.clone(),
                    selectors,
                    svid: if self.refusal.is_some() { None } else { s.svid.clone() },
                })
            })
            .collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let next = WorkloadState {
            trust_domain: self.id.trust_domain.to_string(),
            bundle_der: self.id.trust.roots().iter().map(|c| c.to_vec()).collect(),
            crl_der: self.id.trust.crls().iter().map(|c| c.to_vec()).collect(),
            jwt_bundle: self.jwt_bundle.clone(),
            entries,
            refusal: self.refusal.clone(),
        };
        self.state.send_if_modified(|current| {
            if same_state(current, &next) {
                return false;
            }
            *current = Arc::new(next.clone());
            true
        });
        if self.refusal.is_some() {
            return;
        }
        let state = self.state.borrow().clone();
        for target in &mut self.opts.files {
            let held = state.entries.iter().find(|e| e.worker_id == target.worker_id.as_str() && e.svid.is_some());
            match held {
                Some(entry) => {
                    if let Err(e) = target.refresh(entry, &state) {
                        tracing::error!(cert_dir = %target.dir.display(), error = %e, "could not write the certificate directory");
                    }
                }
                None => target.missing(&self.id.worker_id),
            }
        }
    }
}

/// JWT-SVIDs signed by the CA, asked for as the agent.
#[derive(Debug, Clone)]
pub struct CaJwt {
    client: CaClient,
    trust_domain: TrustDomain,
}

impl CaJwt {
    /// Minting through `client` (the agent's mutual-TLS client of the CA).
    pub fn new(client: CaClient, trust_domain: TrustDomain) -> Self {
        Self { client, trust_domain }
    }
}

#[async_trait::async_trait]
impl JwtMinter for CaJwt {
    async fn mint(&self, entry: &HeldEntry, audience: &[String]) -> Result<String, MintError> {
        let body = JwtSvidBody { worker_id: entry.worker_id.clone(), audience: audience.to_vec() };
        match self.client.agent_jwt(&body).await {
            Ok(answer) => Ok(answer.token),
            Err(ProviderError::Unavailable(m)) => Err(MintError::Unavailable(m)),
            Err(e) => {
                tracing::warn!(entry = %entry.id, trust_domain = %self.trust_domain, error = %e, "the CA refused a JWT-SVID");
                Err(MintError::Refused(e.to_string()))
            }
        }
    }
}

fn same_state(a: &WorkloadState, b: &WorkloadState) -> bool {
    let serials = |s: &WorkloadState| -> Vec<(String, Option<String>)> {
        s.entries.iter().map(|e| (e.id.clone(), e.svid.as_ref().map(|v| v.serial.clone()))).collect()
    };
    a.bundle_der == b.bundle_der
        && a.crl_der == b.crl_der
        && a.refusal == b.refusal
        && a.jwt_bundle == b.jwt_bundle
        && serials(a) == serials(b)
        && a.entries.iter().map(|e| &e.selectors).eq(b.entries.iter().map(|e| &e.selectors))
}

/// A workload SVID just issued, with what the agent keeps about it.
struct Issued {
    svid: Svid,
    not_before: OffsetDateTime,
    roots: Vec<Vec<u8>>,
}

fn svid_of(entry_id: &str, bundle: &CertificateBundle, key: zeroize::Zeroizing<Vec<u8>>) -> Issued {
    let meta = bundle.metadata();
    Issued {
        svid: Svid {
            entry_id: entry_id.to_owned(),
            spiffe_id: meta.spiffe_id.clone().unwrap_or_default(),
            chain_der: bundle.chain().iter().map(|c| c.to_vec()).collect(),
            key_pkcs8_der: key,
            serial: meta.serial.clone(),
            not_after: meta.not_after,
        },
        // When the CA issued it (notBefore is backdated for clock skew).
        not_before: meta.issued_at(),
        roots: Vec::new(),
    }
}

/// When an SVID issued at `issued` (its notBefore without the backdate) is renewed:
/// after `fraction` of its lifetime, and never within its first second, so that a CA
/// handing out very short certificates cannot make the agent ask in a loop.
fn renewal_time(issued: OffsetDateTime, not_after: OffsetDateTime, fraction: f64) -> OffsetDateTime {
    (issued + (not_after - issued) * fraction).max(issued + time::Duration::SECOND)
}

/// Doubling from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], with up to a quarter of jitter.
fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(8)).min(MAX_BACKOFF);
    let jitter = base.mul_f64(rand_fraction() * 0.25);
    base + jitter
}

fn rand_fraction() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_svid_is_renewed_at_its_fraction_of_the_granted_lifetime_and_never_in_its_first_second() {
        let t = OffsetDateTime::now_utc();
        let s = time::Duration::seconds;
        assert_eq!(renewal_time(t, t + s(12), 0.5), t + s(6));
        assert_eq!(renewal_time(t, t + s(100), 0.4), t + s(40));
        // A certificate granted half a second is not asked for again at once.
        assert_eq!(renewal_time(t, t + time::Duration::milliseconds(500), 0.5), t + s(1));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        for (failures, base) in [(1, 1), (2, 2), (3, 4), (7, 60), (30, 60)] {
            let wait = backoff(failures);
            let base = Duration::from_secs(base);
            assert!(wait >= base && wait <= base.mul_f64(1.25), "{failures}: {wait:?}");
        }
    }
}
