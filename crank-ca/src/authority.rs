//! The local CA: verifies a CSR and its credential, asks policy, has its signer sign
//! (its own key by default, or an upstream CA), checks what came back, and records the
//! certificate durably before handing it out.

use std::sync::Arc;

use async_trait::async_trait;
use crank_policy::PolicyGuard;
use crank_security_core::{
    CertMetadata, CertificateEvent, CertificateProvider, CertificateTemplate, CorrelationId, EventKind, EventSink,
    IssuanceInput, IssueRequest, IssuedCertificate, JoinTokenClaims, ProviderError, RenewRequest, SignRequest,
    SpiffeId, TrustDomain, WorkerId, fingerprint_sha256, parse_pem_certs, rfc3339,
};
use rcgen::{DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};

use crate::serial::random_serial;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::crl::{CRL_REFRESH_AFTER, SignedCrl};
pub use super::csr::{MAX_CSR_BYTES, ParsedCsr, parse_csr};
use super::files::CaDir;
use super::signer::LocalSigner;
use super::store::{
    CaStore, CertificateRecord, Renewal, Revocation, RevocationReason, RevocationRecord, RevokeTarget, StoreError,
    TokenUse,
};
use super::token::TokenAuthority;
use crank_runtime::ApiError;

/// Clock-skew allowance: not-before is set this far in the past.
pub const BACKDATE: time::Duration = crank_security_core::CLOCK_SKEW_BACKDATE;

/// What authorises an issuance, recorded with it in one durable write.
#[derive(Debug)]
enum Grant {
    /// A first issuance: the join token is consumed.
    Token(TokenUse),
    /// A renewal: the certificate that authenticated it is retired.
    Renewal(Renewal),
}

impl Grant {
    /// The ledger's `kind` of the certificate issued.
    fn kind(&self) -> &'static str {
        match self {
            Self::Token(_) => "issue",
            Self::Renewal(_) => "renew",
        }
    }
}

/// Settings of a [`LocalCa`].
#[derive(Debug, Clone)]
pub struct LocalCaConfig {
    /// Deployment environment passed to policy (default `development`).
    pub environment: String,
    /// Name of this replica, recorded in the ledger (default: host name and pid).
    pub replica: String,
    /// How long a CRL stays current: its nextUpdate is thisUpdate plus this (default
    /// [`CRL_VALIDITY`](super::crl::CRL_VALIDITY), 24 h). The CA re-signs it after
    /// [`CRL_REFRESH_AFTER`] or half of this, whichever is shorter.
    pub crl_validity: std::time::Duration,
}

impl Default for LocalCaConfig {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        Self {
            environment: "development".into(),
            replica: format!("{host}:{}", std::process::id()),
            crl_validity: super::crl::CRL_VALIDITY,
        }
    }
}

/// The in-process CA behind `crank ca serve`.
pub struct LocalCa {
    trust_domain: TrustDomain,
    config: LocalCaConfig,
    /// The CA's own key: CRLs, administrator certificates, and leaves unless another
    /// signer is set.
    own: Arc<LocalSigner>,
    /// Who signs leaves.
    signer: Arc<dyn CertificateProvider>,
    /// What an upstream signer's leaves must verify to; `None` while the CA's own key
    /// signs (its certificate was checked against that key when it was loaded or
    /// imported, so verifying each leaf's signature again would only cost a signature
    /// verification per issuance).
    signer_anchors: Option<Vec<CertificateDer<'static>>>,
    /// The certificate join tokens pin: the root, or the CA's intermediate.
    pinned: CertificateDer<'static>,
    /// The trust bundle handed out: the root (two during a rollover), plus the signer's
    /// roots when an upstream CA signs.
    bundle_pem: String,
    tokens: TokenAuthority,
    /// The CA service's own names ([`CaDir::service_names`]): never issued to a worker.
    reserved_names: Vec<String>,
    policy: PolicyGuard,
    store: Arc<dyn CaStore>,
    events: Arc<dyn EventSink>,
    metrics: Arc<crank_runtime::metrics::Metrics>,
    crl: arc_swap::ArcSwapOption<SignedCrl>,
    crl_regen: tokio::sync::Mutex<()>,
    /// Every CRL this replica makes, for its own TLS verifier.
    crl_updates: tokio::sync::watch::Sender<Option<Arc<SignedCrl>>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("trust_domain", &self.trust_domain)
            .field("replica", &self.config.replica)
            .field("policy", &self.policy.engine_name())
            .field("signer", &self.signer.name())
            .field("root_key", &"<redacted>")
            .finish()
    }
}

impl LocalCa {
    /// Loads the CA from its directory.
    pub fn load(
        dir: &CaDir,
        config: LocalCaConfig,
        policy: PolicyGuard,
        store: Arc<dyn CaStore>,
        events: Arc<dyn EventSink>,
    ) -> anyhow::Result<Self> {
        let trust_domain = dir.trust_domain()?;
        let pinned = dir.pinned_der()?;
        let own = Arc::new(LocalSigner::load(dir)?);
        let bundle_pem = dir.trust_bundle_pem()?;
        // Metrics decorate the event sink: every event is also counted.
        let metrics = crank_runtime::metrics::Metrics::new();
        let sinks = crank_security_core::EventSinks::empty();
        sinks.register(events);
        sinks.register(Arc::new(crank_runtime::metrics::PrometheusSink(metrics.clone())));
        let events: Arc<dyn EventSink> = Arc::new(sinks);
        let tokens = TokenAuthority::new(
            &CaDir::read_key(&dir.token_key())?,
            trust_domain.clone(),
            fingerprint_sha256(&pinned),
        )?;
        Ok(Self {
            trust_domain,
            config,
            signer: own.clone(),
            own,
            signer_anchors: None,
            pinned,
            reserved_names: dir.service_names(),
            bundle_pem,
            tokens,
            policy,
            store,
            events,
            metrics,
            crl: arc_swap::ArcSwapOption::empty(),
            crl_regen: tokio::sync::Mutex::new(()),
            crl_updates: tokio::sync::watch::channel(None).0,
        })
    }

    /// Leaves are signed by `signer` (an upstream CA) instead of the CA's own key. Its
    /// trust bundle is added to the one handed out, and every certificate it returns is
    /// checked against what policy decided before it is recorded.
    pub async fn with_signer(mut self, signer: Arc<dyn CertificateProvider>) -> anyhow::Result<Self> {
        let pem = signer.trust_bundle().await.map_err(|e| anyhow::anyhow!("the signer's trust bundle: {e}"))?;
        let anchors = parse_pem_certs("signer trust bundle", pem.as_bytes())?;
        let mut bundle = parse_pem_certs("trust bundle", self.bundle_pem.as_bytes())?;
        let now = OffsetDateTime::now_utc();
        for a in &anchors {
            if !bundle.contains(a) {
                // Workers trust the signer's root because this CA vouches for it with a
                // cross-certificate: no root reaches a worker otherwise.
                let cross = super::cross::for_root(a, self.own.issuer(), self.own.not_after(), now)
                    .map_err(|e| anyhow::anyhow!("the signer's trust bundle must hold its self-signed root(s): {e}"))?;
                bundle.push(a.clone());
                self.bundle_pem.push_str(&crank_security_core::cert_pem(a));
                self.bundle_pem.push_str(&cross);
            }
        }
        self.signer_anchors = Some(anchors);
        self.signer = signer;
        Ok(self)
    }

    /// The trust bundle handed to workers and used to verify client certificates, PEM.
    pub fn trust_bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The name of the provider that signs leaves (`local`, `cfssl`, ...).
    pub fn signer_name(&self) -> &str {
        self.signer.name()
    }

    /// The token authority (for `crank token create` and tests).
    pub fn tokens(&self) -> &TokenAuthority {
        &self.tokens
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The certificate join tokens pin: the CA's root, or its intermediate in
    /// intermediate mode ([`CaDir::pinned_der`]).
    pub fn pinned(&self) -> &CertificateDer<'static> {
        &self.pinned
    }

    /// The CA's metrics.
    pub fn metrics(&self) -> &Arc<crank_runtime::metrics::Metrics> {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CaStore> {
        &self.store
    }

    /// The current CRL, regenerated when a revocation was recorded anywhere since it was
    /// made, or when it is older than [`CRL_REFRESH_AFTER`]. With the store unreachable,
    /// the last CRL made (still signed, still within its nextUpdate) is served.
    pub async fn crl(&self) -> Result<Arc<SignedCrl>, ApiError> {
        let cached = self.crl.load_full();
        let generation = match self.store.revocation_generation().await {
            Ok(g) => g,
            Err(e) => {
                return match cached {
                    Some(c) if c.next_update > OffsetDateTime::now_utc() => {
                        tracing::warn!(error = %e, crl_number = c.number, "store unreachable; serving the last CRL");
                        Ok(c)
                    }
                    _ => Err(ApiError::unavailable(format!("cannot build the CRL: {e}"))),
                };
            }
        };
        if let Some(c) = cached.filter(|c| self.fresh(c, generation)) {
            return Ok(c);
        }
        let _one_at_a_time = self.crl_regen.lock().await;
        if let Some(c) = self.crl.load_full().filter(|c| self.fresh(c, generation)) {
            return Ok(c);
        }
        self.regenerate_crl(generation).await
    }

    /// Whether `crl` still stands: made after the last revocation, and not older than
    /// the re-signing interval.
    fn fresh(&self, crl: &SignedCrl, generation: u64) -> bool {
        let every = CRL_REFRESH_AFTER.min(self.config.crl_validity / 2);
        crl.generation == generation && OffsetDateTime::now_utc() < crl.this_update + every
    }

    /// Follows every CRL this replica makes (at once after a revocation here; other
    /// replicas' revocations when [`LocalCa::crl`] next finds the store changed).
    pub fn crl_updates(&self) -> tokio::sync::watch::Receiver<Option<Arc<SignedCrl>>> {
        self.crl_updates.subscribe()
    }

    /// Builds and signs a new CRL now, whatever the cached one (benchmarks, operators).
    pub async fn regenerate_crl_now(&self) -> Result<Arc<SignedCrl>, ApiError> {
        let _one_at_a_time = self.crl_regen.lock().await;
        let generation = self.store.revocation_generation().await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        self.regenerate_crl(generation).await
    }

    async fn regenerate_crl(&self, generation: u64) -> Result<Arc<SignedCrl>, ApiError> {
        let now = OffsetDateTime::now_utc();
        let unavailable = |e: StoreError| ApiError::unavailable(format!("cannot build the CRL: {e}"));
        let entries = self.store.revoked_unexpired(now).await.map_err(unavailable)?;
        let number = self.store.next_crl_number().await.map_err(unavailable)?;
        let validity = self.config.crl_validity;
        let crl = super::crl::sign(self.own.issuer(), &entries, number, generation, now, validity).map_err(|e| {
            ApiError { status: axum::http::StatusCode::INTERNAL_SERVER_ERROR, code: "crl_failed", message: e }
        })?;
        tracing::info!(crl_number = number, entries = crl.entries, "CRL generated");
        let crl = Arc::new(crl);
        self.crl.store(Some(crl.clone()));
        self.crl_updates.send_replace(Some(crl.clone()));
        Ok(crl)
    }

    /// Revokes a certificate (or every live certificate of a worker) for an
    /// administrator, after asking the `revoke_certificate` hook for each worker
    /// concerned; then regenerates the CRL.
    pub async fn revoke(
        &self,
        target: RevokeTarget,
        reason: RevocationReason,
        admin: &str,
        cid: &CorrelationId,
    ) -> Result<Vec<RevocationRecord>, ApiError> {
        // Administrators are not workers: the worker policy hook is not asked about them
        // (and a worker's name never reaches an administrator of the same name).
        let worker = match &target {
            RevokeTarget::Worker(w) => Some(w.clone()),
            RevokeTarget::Admin(_) => None,
            RevokeTarget::Serial(serial) => match self.store.certificate(serial).await {
                Ok(Some(r)) if r.kind == "admin" => None,
                Ok(Some(r)) => Some(r.worker_id),
                Ok(None) => {
                    return Err(ApiError::missing(
                        "unknown_serial",
                        format!("no certificate with serial {serial} in the ledger"),
                    ));
                }
                Err(e) => return Err(ApiError::unavailable(e.to_string())),
            },
        };
        if let Some(worker) = &worker
            && let Err(d) = self.policy.may_revoke(worker, reason.as_str())
        {
            if d.engine_failure {
                let ev = CertificateEvent::new(EventKind::CertValidationFailed, cid)
                    .worker(worker.as_str())
                    .error("policy", ProviderError::PolicyDenied(d.reason.clone()))
                    .detail("component", "ca")
                    .detail("operation", "revoke");
                self.events.emit(&ev);
            }
            tracing::warn!(worker_id = %worker, reason = %reason, admin, correlation_id = %cid, "revocation denied by policy");
            return Err(ApiError::forbidden("policy_denied", format!("denied by policy: {}", d.reason)));
        }
        let revocation = Revocation { target, reason, revoked_by: admin.to_owned(), at: OffsetDateTime::now_utc() };
        if self.signer.name() != "local" {
            tracing::warn!(
                signer = self.signer.name(),
                "revocation recorded: the certificate cannot renew and its worker stops using it, but peers enforce this CA's CRL only for certificates this CA signed; revoke it at the upstream CA too"
            );
        }
        let records = self.store.revoke(&revocation).await.map_err(|e| match e {
            StoreError::NotFound(m) => ApiError::missing("nothing_to_revoke", m),
            other => ApiError::unavailable(format!("the CA could not record the revocation: {other}")),
        })?;
        for r in &records {
            self.events.emit(
                &CertificateEvent::new(EventKind::CertRevoked, cid)
                    .worker(r.worker_id.as_str())
                    .detail("component", "ca")
                    .detail("serial", r.serial.clone())
                    .detail("reason", r.reason.as_str())
                    .detail("revoked_by", admin),
            );
        }
        // Publish at once; a failure here leaves the revocation recorded, and the next
        // CRL request regenerates.
        let _one_at_a_time = self.crl_regen.lock().await;
        match self.store.revocation_generation().await {
            Ok(g) => {
                if let Err(e) = self.regenerate_crl(g).await {
                    tracing::warn!(error = %e.message, "CRL not regenerated after revocation; next request retries");
                }
            }
            Err(e) => tracing::warn!(error = %e, "CRL not regenerated after revocation; next request retries"),
        }
        Ok(records)
    }

    /// Issues an administrator certificate (`spiffe://<td>/admin/<name>`, client auth
    /// only) for a key made here, and records it in the ledger. Returns the certificate
    /// and key, PEM.
    pub async fn issue_admin(&self, name: &WorkerId, validity: time::Duration) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let uri = admin_spiffe_id(&self.trust_domain, name.as_str());
        let now = OffsetDateTime::now_utc();
        let mut params = rcgen::CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("admin {name}"));
        dn.push(DnType::OrganizationName, self.trust_domain.as_str());
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
        params.not_after = params.not_after.min(self.own.not_after());
        let cert = params.signed_by(&key, self.own.issuer())?;
        let chain = format!("{}{}", cert.pem(), self.own.chain_pem());
        let meta = CertMetadata::from_der(cert.der())?;
        let record = CertificateRecord {
            serial: meta.serial.clone(),
            worker_id: name.to_string(),
            spiffe_id: uri.clone(),
            sans: vec![uri],
            capabilities: vec!["admin".into()],
            not_before: rfc3339(meta.not_before),
            not_after: rfc3339(meta.not_after),
            fingerprint: meta.fingerprint_sha256.clone(),
            issued_by: self.config.replica.clone(),
            kind: "admin".into(),
            correlation_id: CorrelationId::new().to_string(),
            issued_at: super::store::now_rfc3339(),
            status: "valid".into(),
            pem: chain.clone(),
        };
        self.store.record_issuance(None, record).await?;
        Ok((chain, key.serialize_pem()))
    }

    /// The administrator name of a verified client certificate: its SPIFFE ID must be
    /// `spiffe://<td>/admin/<name>` and its ledger row an unrevoked admin certificate.
    pub async fn admin_of(&self, leaf: &CertificateDer<'_>) -> Result<String, ApiError> {
        let refuse = |m: String| ApiError::forbidden("admin_required", m);
        let meta = CertMetadata::from_der(leaf).map_err(|e| refuse(format!("unreadable client certificate: {e}")))?;
        let prefix = format!("spiffe://{}/admin/", self.trust_domain);
        let Some(name) = meta.uri_sans.iter().find_map(|u| u.strip_prefix(&prefix)) else {
            return Err(refuse(format!(
                "this endpoint needs an administrator certificate ({prefix}<name>, from `crank ca admin-cert`); the client certificate is not one"
            )));
        };
        match self.store.certificate(&meta.serial).await {
            Ok(Some(r)) if r.fingerprint != meta.fingerprint_sha256 => Err(refuse(format!(
                "client certificate {} is not the one this CA's ledger holds under that serial",
                meta.serial
            ))),
            Ok(Some(r)) if r.kind == "admin" && r.status == "valid" && r.worker_id == name => Ok(name.to_owned()),
            Ok(Some(r)) => {
                Err(refuse(format!("administrator certificate {} is {} ({})", meta.serial, r.status, r.kind)))
            }
            Ok(None) => Err(refuse(format!("administrator certificate {} is not in the ledger", meta.serial))),
            Err(e) => Err(ApiError::unavailable(e.to_string())),
        }
    }

    /// A renewal authenticated by a certificate that was renewed already. The same
    /// request retried (same key: its answer was lost) gets the certificate already
    /// issued for it, as long as that one is still the worker's current one; anything
    /// else is refused and raised as a possible key compromise: someone else holds the
    /// old key and tries to mint with it.
    async fn renewed_again(
        &self,
        old: &CertificateRecord,
        request_sha256: &str,
        cid: &CorrelationId,
    ) -> Result<IssuedCertificate, ProviderError> {
        let next = self.store.renewal_of(&old.serial).await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        if let Some((hash, next)) = &next
            && hash == request_sha256
            && next.status == "valid"
            && time::OffsetDateTime::parse(&next.not_after, &time::format_description::well_known::Rfc3339)
                .is_ok_and(|t| t > OffsetDateTime::now_utc())
        {
            tracing::info!(serial = %next.serial, worker_id = %next.worker_id, correlation_id = %cid, "the same renewal retried; answering with the certificate already issued");
            return Ok(self
                .answer(next.pem.clone(), next.serial.clone(), next.spiffe_id.clone(), next.not_after.clone())
                .await);
        }
        let by = next.as_ref().map_or_else(|| "another certificate".to_owned(), |(_, n)| n.serial.clone());
        tracing::error!(
            serial = %old.serial, superseded_by = %by, worker_id = %old.worker_id, correlation_id = %cid,
            "a renewed certificate tried to renew again: possible key compromise"
        );
        let err = ProviderError::Unauthorized(format!(
            "client certificate {} was already renewed (superseded by {by}) and cannot renew again; if this worker did not renew it, its key may be compromised: revoke worker {} and issue a new join token",
            old.serial, old.worker_id
        ));
        let event = CertificateEvent::new(EventKind::CsrFailed, cid)
            .worker(old.worker_id.as_str())
            .error("superseded", &err)
            .detail("component", "ca")
            .detail("alert", "possible_key_compromise")
            .detail("severity", "critical")
            .detail("serial", old.serial.clone())
            .detail("superseded_by", by);
        self.events.emit(&event);
        Err(err)
    }

    fn fail(
        &self,
        kind: EventKind,
        cid: &CorrelationId,
        worker: Option<&str>,
        phase: &str,
        err: ProviderError,
    ) -> ProviderError {
        let mut ev = CertificateEvent::new(kind, cid).error(phase, &err).detail("component", "ca");
        if let Some(w) = worker {
            ev = ev.worker(w);
        }
        self.events.emit(&ev);
        err
    }

    /// Verifies the token. A used token is refused, except for the very request it was
    /// used for (same CSR): that gets the certificate already issued for it, so a client
    /// whose answer was lost (a replica died, the connection broke) can retry safely.
    async fn check_token(
        &self,
        token: &str,
        request_sha256: &str,
    ) -> Result<Result<JoinTokenClaims, IssuedCertificate>, ProviderError> {
        let claims = self.tokens.verify(token).map_err(|e| ProviderError::Unauthorized(e.to_string()))?;
        match self.store.token_used(&claims.jti).await {
            Ok(true) => self.replay(&claims.jti, request_sha256).await.map(Err),
            Ok(false) => Ok(Ok(claims)),
            Err(e) => Err(ProviderError::Unavailable(e.to_string())),
        }
    }

    async fn replay(&self, jti: &str, request_sha256: &str) -> Result<IssuedCertificate, ProviderError> {
        let used = || {
            ProviderError::Unauthorized(format!(
                "join token {jti} was already used; a join token is single use, create a new one with `crank token create`"
            ))
        };
        let found = self.store.issued_with_token(jti).await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let Some((hash, record)) = found else { return Err(used()) };
        let live = time::OffsetDateTime::parse(&record.not_after, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t > OffsetDateTime::now_utc());
        if hash != request_sha256 || record.status != "valid" || !live || record.pem.is_empty() {
            return Err(used());
        }
        tracing::info!(serial = %record.serial, worker_id = %record.worker_id, "same request retried with its token; answering with the certificate already issued");
        Ok(self.answer(record.pem, record.serial, record.spiffe_id, record.not_after).await)
    }

    /// The answer to a worker: its chain, the trust bundle, and the current CRL (so that
    /// no worker starts without one; a CRL the CA cannot make now is left out, and the
    /// worker fetches one later).
    async fn answer(&self, chain: String, serial: String, spiffe_id: String, not_after: String) -> IssuedCertificate {
        let crl = match self.crl().await {
            Ok(c) => Some(crank_security_core::crl_pem(&c.der)),
            Err(e) => {
                tracing::warn!(error = %e.message, "answering without a CRL");
                None
            }
        };
        IssuedCertificate {
            certificate_chain: chain,
            ca_bundle: self.bundle_pem.clone(),
            serial,
            spiffe_id,
            not_after,
            crl,
        }
    }

    /// Decides, has the signer sign, checks what it returned, and records it with its
    /// `grant` (the token consumed, or the certificate renewed retired) in one durable
    /// write.
    async fn sign_and_record(
        &self,
        worker: &WorkerId,
        capabilities: Vec<String>,
        (csr_pem, csr): (&str, ParsedCsr),
        grant: Grant,
        cid: &CorrelationId,
    ) -> Result<IssuedCertificate, ProviderError> {
        let kind = grant.kind();
        let input = IssuanceInput {
            worker_id: worker.to_string(),
            capabilities: capabilities.clone(),
            requested_dns_sans: csr.dns.clone(),
            requested_ip_sans: csr.ips.clone(),
            key_type: csr.key_type.clone(),
            environment: self.config.environment.clone(),
            trust_domain: self.trust_domain.to_string(),
            renewal: matches!(grant, Grant::Renewal(_)),
        };
        let policy_failed = |d: crank_policy::Denied| {
            let kind = if d.engine_failure { EventKind::CertValidationFailed } else { EventKind::CsrFailed };
            self.fail(kind, cid, Some(worker.as_str()), "policy", ProviderError::PolicyDenied(d.reason))
        };
        self.policy.may_issue(&input).map_err(policy_failed)?;
        // Whatever policy says, the CA's own names stay the CA's.
        let reserved = std::iter::once(worker.as_str())
            .chain(csr.dns.iter().map(String::as_str))
            .map(str::to_owned)
            .chain(csr.ips.iter().map(ToString::to_string))
            .find(|n| self.reserved_names.contains(n));
        if let Some(name) = reserved {
            let e = ProviderError::PolicyDenied(format!(
                "{name:?} is a name of the CA service itself; no worker certificate may carry it"
            ));
            return Err(self.fail(EventKind::CsrFailed, cid, Some(worker.as_str()), "names", e));
        }
        let validity = self.policy.validity(worker.as_str(), &self.config.environment).map_err(policy_failed)?;
        if csr.asked_for_ca {
            tracing::warn!(worker_id = %worker, correlation_id = %cid, "CSR asked for CA:true; issuing a non-CA leaf");
        }

        let now = OffsetDateTime::now_utc();
        let template = CertificateTemplate {
            spiffe_id: SpiffeId::new(self.trust_domain.clone(), worker.clone()),
            dns_sans: csr.dns.clone(),
            ip_sans: csr.ips.clone(),
            not_before: now - BACKDATE,
            not_after: now + validity,
            renewal: matches!(grant, Grant::Renewal(_)),
        };
        let request =
            SignRequest { csr_pem: csr_pem.to_owned(), template: template.clone(), correlation_id: cid.clone() };
        let chain = self.signer.sign(request).await.map_err(|e| {
            let event = if matches!(e, ProviderError::Unavailable(_)) {
                EventKind::CaUnavailable
            } else {
                EventKind::CsrFailed
            };
            let e = match e {
                ProviderError::Unavailable(m) => {
                    ProviderError::Unavailable(format!("the signer ({}) is unavailable: {m}", self.signer.name()))
                }
                other => other,
            };
            self.fail(event, cid, Some(worker.as_str()), "sign", e)
        })?;
        let meta = super::check::check_signed(&chain, &csr.public_key, &template, self.signer_anchors.as_deref(), now)
            .map_err(|m| {
                self.fail(
                    EventKind::CsrFailed,
                    cid,
                    Some(worker.as_str()),
                    "verify",
                    ProviderError::Refused(format!(
                        "the certificate the signer ({}) returned was not handed out: {m}",
                        self.signer.name()
                    )),
                )
            })?;

        let uri = template.spiffe_id.to_string();
        let mut all_sans = vec![uri.clone()];
        all_sans.extend(csr.dns.iter().cloned());
        all_sans.extend(csr.ips.iter().map(ToString::to_string));
        let record = CertificateRecord {
            serial: meta.serial.clone(),
            worker_id: worker.to_string(),
            spiffe_id: uri.clone(),
            sans: all_sans,
            capabilities,
            not_before: rfc3339(meta.not_before),
            not_after: rfc3339(meta.not_after),
            fingerprint: meta.fingerprint_sha256.clone(),
            issued_by: self.config.replica.clone(),
            kind: kind.into(),
            correlation_id: cid.to_string(),
            issued_at: super::store::now_rfc3339(),
            status: "valid".into(),
            pem: chain.clone(),
        };
        let recorded = match grant {
            Grant::Token(token) => self.store.record_issuance(Some(token), record).await,
            Grant::Renewal(renewal) => self.store.record_renewal(renewal, record).await,
        };
        recorded.map_err(|e| {
            let err = match e {
                StoreError::TokenUsed(jti) => ProviderError::Unauthorized(format!(
                    "join token {jti} was already used; create a new one with `crank token create`"
                )),
                StoreError::Superseded(serial) => ProviderError::Unauthorized(format!(
                    "client certificate {serial} was renewed already (by a concurrent request) or revoked; it cannot renew again"
                )),
                StoreError::DuplicateSerial(s) => ProviderError::Unavailable(format!("serial collision on {s}; retry")),
                other => ProviderError::Unavailable(format!("the CA could not record the certificate: {other}")),
            };
            self.fail(EventKind::CsrFailed, cid, Some(worker.as_str()), "ledger", err)
        })?;
        self.events.emit(
            &CertificateEvent::new(EventKind::CertIssued, cid)
                .worker(worker)
                .cert(&meta)
                .detail("component", "ca")
                .detail("kind", kind)
                .detail("signer", self.signer.name())
                .detail("spiffe_id", uri.clone()),
        );
        Ok(self.answer(chain, meta.serial, uri, rfc3339(meta.not_after)).await)
    }
}

/// The SPIFFE ID of an administrator.
pub fn admin_spiffe_id(td: &TrustDomain, name: &str) -> String {
    format!("spiffe://{td}/admin/{name}")
}

#[async_trait]
impl CertificateProvider for LocalCa {
    async fn issue(&self, req: IssueRequest) -> Result<IssuedCertificate, ProviderError> {
        let cid = &req.correlation_id;
        let request_sha256 = fingerprint_sha256(req.csr_pem.trim().as_bytes());
        let claims = match self.check_token(&req.token, &request_sha256).await {
            Ok(Ok(claims)) => claims,
            Ok(Err(already_issued)) => return Ok(already_issued),
            Err(e) => return Err(self.fail(EventKind::CsrFailed, cid, None, "token", e)),
        };
        let worker = WorkerId::new(claims.sub.clone()).map_err(|e| ProviderError::Unauthorized(e.to_string()))?;
        let csr = parse_csr(&req.csr_pem)
            .map_err(|e| self.fail(EventKind::CsrFailed, cid, Some(worker.as_str()), "csr", e))?;
        let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp).map(rfc3339).unwrap_or_default();
        let jti = claims.jti.clone();
        let token = TokenUse { jti: claims.jti, worker_id: worker.to_string(), expires_at, request_sha256 };
        let hash = token.request_sha256.clone();
        match self.sign_and_record(&worker, claims.caps, (&req.csr_pem, csr), Grant::Token(token), cid).await {
            // Another replica (or a concurrent retry) consumed the token first: if it was
            // for this very request, answer with that certificate.
            Err(ProviderError::Unauthorized(m)) if m.contains(&jti) => self.replay(&jti, &hash).await,
            other => other,
        }
    }

    /// Renewal: the authenticating certificate must be in the ledger, valid, and belong
    /// to the worker; its capabilities carry over (never taken from the request).
    async fn renew(&self, req: RenewRequest) -> Result<IssuedCertificate, ProviderError> {
        let cid = &req.correlation_id;
        let worker = req.worker_id.as_str();
        let unauthorized =
            |m: String| self.fail(EventKind::CsrFailed, cid, Some(worker), "auth", ProviderError::Unauthorized(m));
        let record = match self.store.certificate(&req.current_serial).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(unauthorized(format!(
                    "client certificate {} is not in this CA's ledger",
                    req.current_serial
                )));
            }
            Err(e) => return Err(ProviderError::Unavailable(e.to_string())),
        };
        if req.current_fingerprint.as_ref().is_some_and(|fp| *fp != record.fingerprint) {
            return Err(unauthorized(format!(
                "client certificate {} is not the certificate this CA's ledger holds under that serial",
                req.current_serial
            )));
        }
        if record.worker_id != worker {
            return Err(unauthorized(format!("client certificate {} belongs to another worker", req.current_serial)));
        }
        if record.status == "revoked" {
            return Err(self.fail(
                EventKind::CsrFailed,
                cid,
                Some(worker),
                "auth",
                ProviderError::Revoked(format!(
                    "client certificate {} was revoked and cannot renew; the worker needs a new join token",
                    req.current_serial
                )),
            ));
        }
        let csr = parse_csr(&req.csr_pem).map_err(|e| self.fail(EventKind::CsrFailed, cid, Some(worker), "csr", e))?;
        let request_sha256 = fingerprint_sha256(&csr.public_key);
        if record.status == "superseded" {
            return self.renewed_again(&record, &request_sha256, cid).await;
        }
        if record.status != "valid" || record.kind == "admin" {
            return Err(unauthorized(format!(
                "client certificate {} ({}, {}) cannot renew",
                req.current_serial, record.kind, record.status
            )));
        }
        let worker_id = WorkerId::new(worker).map_err(|e| ProviderError::Unauthorized(e.to_string()))?;
        let grant = Grant::Renewal(Renewal { previous_serial: record.serial.clone(), request_sha256 });
        self.sign_and_record(&worker_id, record.capabilities, (&req.csr_pem, csr), grant, cid).await
    }

    async fn trust_bundle(&self) -> Result<String, ProviderError> {
        Ok(self.bundle_pem.clone())
    }
}
