//! Keeping a worker's certificate alive: renewal before expiry, hot swap, expiry
//! warnings, and recovery from an expired certificate without a restart.
//!
//! Every tick (1/40 of the certificate lifetime, between 250 ms and 30 s) the rotator
//! asks the `should_renew_certificate` hook. When it says renew, a new key is generated
//! here, a CSR is sent over mTLS authenticated by the current certificate, the answer is
//! checked, the files are replaced atomically, and the new certificate is published to
//! the server and the mTLS client (new handshakes use it; open connections keep the old
//! one). An unavailable CA is retried with exponential backoff (from 1 s, factor 2,
//! capped at 60 s, with jitter) for as long as the current certificate is valid.
//!
//! Recovery: a valid certificate written into the cert directory by someone else
//! (`crank cert init`) is picked up; so is a join token dropped into the token file
//! (`CRANK_JOIN_TOKEN_FILE`, default `<cert dir>/join-token`), used once the current
//! certificate is expired or unusable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crank_policy::PolicyGuard;
use crank_security_core::{
    BundleWriter, CertFiles, CertificateBundle, CertificateEvent, CertificateProvider, CorrelationId, EventKind,
    EventSink, KeyType, ProviderError, RenewRequest, RenewalDecision, SpiffeId, WorkerId, build_csr, generate_key,
};
use time::OffsetDateTime;
use tokio::sync::watch;
use url::Url;

use super::bootstrap::{BootstrapOptions, RetryPolicy, accept_issued, bootstrap, keep_issued_crl, trust_pem};
use super::ca_client::CaClient;
use crate::tls::Credentials;
use crate::trust::TrustStore;

/// Largest wait between renewal attempts while the CA is unavailable.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// What the rotator needs.
#[derive(Debug)]
pub struct Rotator {
    worker: WorkerId,
    identity: SpiffeId,
    files: CertFiles,
    token_file: PathBuf,
    ca_urls: Vec<Url>,
    key_type: KeyType,
    sans: Vec<String>,
    policy: PolicyGuard,
    events: Arc<dyn EventSink>,
    credentials: Arc<Credentials>,
    trust: Arc<TrustStore>,
    current: ArcSwap<CertificateBundle>,
    serial_tx: watch::Sender<String>,
    /// Serial of the certificate in use when it was found revoked.
    revoked: arc_swap::ArcSwapOption<String>,
    wake: tokio::sync::Notify,
}

/// Settings of a [`Rotator`].
#[derive(Debug, Clone)]
pub struct RotationConfig {
    /// The cert directory.
    pub cert_dir: PathBuf,
    /// Where a recovery join token may be dropped.
    pub token_file: PathBuf,
    /// CA URLs in failover order.
    pub ca_urls: Vec<Url>,
    /// Key type for new keys.
    pub key_type: KeyType,
    /// SANs to ask for (empty: the defaults).
    pub sans: Vec<String>,
}

impl Rotator {
    /// A rotator for the worker currently holding `bundle`.
    pub fn new(
        bundle: CertificateBundle,
        config: RotationConfig,
        policy: PolicyGuard,
        events: Arc<dyn EventSink>,
        credentials: Arc<Credentials>,
        trust: Arc<TrustStore>,
    ) -> Result<Arc<Self>, crate::RuntimeError> {
        let identity = bundle
            .metadata()
            .spiffe()
            .ok_or_else(|| crate::RuntimeError::NoCertificate("the certificate carries no worker SPIFFE ID".into()))?;
        let worker = identity.worker_id.clone();
        let (serial_tx, _) = watch::channel(bundle.metadata().serial.clone());
        Ok(Arc::new(Self {
            worker,
            identity,
            files: CertFiles::in_dir(&config.cert_dir),
            token_file: config.token_file,
            ca_urls: config.ca_urls,
            key_type: config.key_type,
            sans: config.sans,
            policy,
            events,
            credentials,
            trust,
            current: ArcSwap::from_pointee(bundle),
            serial_tx,
            revoked: arc_swap::ArcSwapOption::empty(),
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// The trust store renewals update.
    pub fn trust(&self) -> &Arc<TrustStore> {
        &self.trust
    }

    /// The credentials renewals update.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// The CA URLs, in failover order.
    pub fn ca_urls(&self) -> &[Url] {
        &self.ca_urls
    }

    /// The files of the cert directory.
    pub fn files(&self) -> &CertFiles {
        &self.files
    }

    /// The certificate in use.
    pub fn current(&self) -> Arc<CertificateBundle> {
        self.current.load_full()
    }

    /// Records that the certificate with `serial` was revoked (seen in the CRL, or told
    /// by the CA). If it is the one in use, the rotator stops renewing, emits
    /// CERT_REVOKED, and waits for a join token in the token file.
    pub fn mark_revoked(&self, serial: &str) {
        if self.current().metadata().serial == serial
            && self.revoked.load().as_deref().map(String::as_str) != Some(serial)
        {
            self.revoked.store(Some(Arc::new(serial.to_owned())));
            self.wake.notify_one();
        }
    }

    /// Whether the certificate in use is known to be revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load().as_deref().map(String::as_str) == Some(self.current().metadata().serial.as_str())
    }

    /// Follows the serial of the certificate in use.
    pub fn subscribe(&self) -> watch::Receiver<String> {
        self.serial_tx.subscribe()
    }

    /// Validates nothing more: `bundle` was checked by the caller. Publishes it to the
    /// server and the client.
    fn install(&self, bundle: CertificateBundle) -> Result<(), String> {
        let key = bundle.certified_key().map_err(|e| e.to_string())?;
        self.trust.set_roots(bundle.ca()).map_err(|e| e.to_string())?;
        self.credentials.store(key);
        let serial = bundle.metadata().serial.clone();
        self.current.store(Arc::new(bundle));
        self.serial_tx.send_replace(serial);
        Ok(())
    }

    fn emit(&self, event: CertificateEvent) {
        self.events.emit(&event.worker(&self.worker));
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut delay = Retry::default();
        let (mut warned_soon, mut warned_expired) = (false, false);
        let mut announced_revoked: Option<String> = None;
        loop {
            if let Some(step) = self.revoked_step(&mut announced_revoked).await {
                match step {
                    Step::Again => {
                        delay = Retry::default();
                        (warned_soon, warned_expired) = (false, false);
                        continue;
                    }
                    Step::Sleep(wait) => {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            _ = shutdown.changed() => {}
                        }
                        if *shutdown.borrow() {
                            return;
                        }
                        continue;
                    }
                }
            }
            let wait = match self.step(&mut delay, &mut warned_soon, &mut warned_expired).await {
                Step::Again => continue,
                Step::Sleep(d) => d,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// While the certificate in use is revoked: announce it once, never renew, and
    /// bootstrap again only with a join token from the token file (if policy still
    /// allows this worker, the CA issues a new certificate). `None` when not revoked.
    async fn revoked_step(&self, announced: &mut Option<String>) -> Option<Step> {
        if self.pick_up_from_disk() || !self.is_revoked() {
            return None;
        }
        let bundle = self.current();
        let meta = bundle.metadata();
        if announced.as_deref() != Some(meta.serial.as_str()) {
            *announced = Some(meta.serial.clone());
            self.emit(
                CertificateEvent::new(EventKind::CertRevoked, &CorrelationId::new())
                    .cert(meta)
                    .detail("severity", "critical")
                    .detail(
                        "action",
                        "renewal stopped; drop a new join token into the token file to get a new certificate",
                    )
                    .detail("token_file", self.token_file.display().to_string()),
            );
        }
        Some(match self.recover_with_token().await {
            Some(()) => Step::Again,
            None => Step::Sleep(tick(meta.granted_lifetime()).min(Duration::from_secs(5))),
        })
    }

    async fn step(&self, delay: &mut Retry, warned_soon: &mut bool, warned_expired: &mut bool) -> Step {
        if self.pick_up_from_disk() {
            *warned_soon = false;
            *warned_expired = false;
            *delay = Retry::default();
        }
        let bundle = self.current();
        let meta = bundle.metadata();
        let now = OffsetDateTime::now_utc();
        let tick = tick(meta.granted_lifetime());
        let cid = CorrelationId::new();
        let decision = self.policy.renewal(meta, now).unwrap_or_else(|denied| {
            self.emit(CertificateEvent::new(EventKind::CertValidationFailed, &cid).cert(meta).error("policy", &denied));
            // A broken policy must not let a certificate run out silently.
            RenewalDecision { renew: true, expiring_soon: true }
        });
        let expired = now >= meta.not_after;
        if expired {
            if !*warned_expired {
                *warned_expired = true;
                self.emit(
                    CertificateEvent::new(EventKind::CertExpired, &cid).cert(meta).detail("severity", "critical"),
                );
            }
            return match self.recover_with_token().await {
                Some(()) => {
                    *warned_soon = false;
                    *warned_expired = false;
                    *delay = Retry::default();
                    Step::Again
                }
                None => Step::Sleep(tick),
            };
        }
        if decision.expiring_soon && !*warned_soon {
            *warned_soon = true;
            self.emit(CertificateEvent::new(EventKind::CertExpiringSoon, &cid).cert(meta));
        }
        if !decision.renew {
            return Step::Sleep(tick);
        }
        // Between retries the loop still wakes every tick, so expiry warnings are never
        // skipped by a long backoff.
        if let Some(at) = delay.at {
            let now = std::time::Instant::now();
            if now < at {
                return Step::Sleep((at - now).min(tick));
            }
        }
        match self.renew(&bundle, &cid).await {
            Ok(()) => {
                *delay = Retry::default();
                *warned_soon = false;
                Step::Sleep(tick)
            }
            Err(ProviderError::Revoked(_)) => {
                self.mark_revoked(&meta.serial);
                Step::Again
            }
            Err(e) => {
                let next = delay.delay.map_or(Duration::from_secs(1), |d| (d * 2).min(MAX_RETRY_DELAY));
                delay.delay = Some(next);
                let kind = if matches!(e, ProviderError::Unavailable(_)) {
                    EventKind::CaUnavailable
                } else {
                    EventKind::CsrFailed
                };
                self.emit(
                    CertificateEvent::new(kind, &cid)
                        .cert(meta)
                        .error("renew", &e)
                        .detail("retry_in_ms", u64::try_from(next.as_millis()).unwrap_or(u64::MAX)),
                );
                // Never wait past expiry: the last attempts happen while still valid.
                let left = (meta.not_after - now).try_into().unwrap_or(Duration::ZERO);
                let wait = jitter(next).min(left.max(Duration::from_millis(100)));
                delay.at = Some(std::time::Instant::now() + wait);
                Step::Sleep(wait.min(tick))
            }
        }
    }

    async fn renew(&self, bundle: &CertificateBundle, cid: &CorrelationId) -> Result<(), ProviderError> {
        let key = self.renewal_key().map_err(|e| ProviderError::Other(e.to_string()))?;
        let sans = if self.sans.is_empty() { super::bootstrap::default_sans(&self.worker) } else { self.sans.clone() };
        let csr = build_csr(&key, &self.worker, &sans).map_err(|e| ProviderError::Other(e.to_string()))?;
        self.emit(
            CertificateEvent::new(EventKind::CsrGenerated, cid).detail("san_names", sans).detail("purpose", "renewal"),
        );
        let client =
            CaClient::mtls(self.ca_urls.clone(), &self.trust, self.credentials.clone(), &self.identity.trust_domain)?;
        self.emit(CertificateEvent::new(EventKind::CsrSubmitted, cid).detail("purpose", "renewal"));
        let req = RenewRequest {
            csr_pem: csr,
            worker_id: self.worker.to_string(),
            current_serial: bundle.metadata().serial.clone(),
            current_fingerprint: None,
            correlation_id: cid.clone(),
        };
        let issued = client.renew(req).await?;
        let key_pem = key.serialize_pem();
        // The answer came from the CA (its identity was verified); still, it may change
        // the trust set only as the rollover rules allow.
        let new =
            accept_issued(&issued, &key_pem, &self.identity, &self.trust.roots()).map_err(ProviderError::Other)?;
        BundleWriter::write(
            &self.files,
            issued.certificate_chain.as_bytes(),
            key_pem.as_bytes(),
            trust_pem(new.ca()).as_bytes(),
        )
        .map_err(|e| ProviderError::Other(e.to_string()))?;
        keep_issued_crl(&self.files, &issued, &new);
        let _ = std::fs::remove_file(self.renewal_key_path());
        let meta = new.metadata().clone();
        self.install(new).map_err(ProviderError::Other)?;
        self.emit(
            CertificateEvent::new(EventKind::CertRenewed, cid)
                .cert(&meta)
                .detail("previous_serial", bundle.metadata().serial.clone()),
        );
        Ok(())
    }

    fn renewal_key_path(&self) -> PathBuf {
        self.files.dir.join(".renewal.key")
    }

    /// The key of the renewal in progress: made once (0600, beside the certificate) and
    /// used by every attempt until one succeeds, also across restarts. The CA retires a
    /// certificate when it renews it, and answers the same renewal (same key) again with
    /// the same certificate, so an attempt whose answer was lost can be repeated; a new
    /// key would be refused as a second renewal.
    fn renewal_key(&self) -> Result<rcgen::KeyPair, crank_security_core::Error> {
        let path = self.renewal_key_path();
        if let Ok(pem) = std::fs::read_to_string(&path)
            && let Ok(key) = rcgen::KeyPair::from_pem(&pem)
        {
            return Ok(key);
        }
        let key = generate_key(self.key_type)?;
        crank_security_core::write_file_atomic(&path, key.serialize_pem().as_bytes(), 0o600)?;
        Ok(key)
    }

    /// Installs a different, valid certificate for this worker found on disk.
    ///
    /// Files that are damaged (truncated, garbage, a key that does not match) are put
    /// back from the certificate in use, with a `CERT_VALIDATION_FAILED` event naming the
    /// file: the worker keeps serving, and a restart finds good files.
    fn pick_up_from_disk(&self) -> bool {
        let found = match CertificateBundle::load(&self.files) {
            Ok(found) => found,
            Err(e @ crank_security_core::Error::InFile { .. }) => {
                self.repair_files(&e);
                return false;
            }
            Err(_) => return false,
        };
        if found.certified_key().is_err() {
            self.repair_files(&"client.key does not match client.crt");
            return false;
        }
        if found.metadata().fingerprint_sha256 == self.current().metadata().fingerprint_sha256 {
            return false;
        }
        let same_worker = found.metadata().spiffe().map(|s| s.worker_id).as_ref() == Some(&self.worker);
        if !same_worker || found.validate(std::time::SystemTime::now()).is_err() {
            return false;
        }
        let meta = found.metadata().clone();
        if self.install(found).is_err() {
            return false;
        }
        let cid = CorrelationId::new();
        self.emit(CertificateEvent::new(EventKind::CertIssued, &cid).cert(&meta).detail("source", "cert_dir"));
        true
    }

    /// Writes the certificate in use over damaged files, and says so.
    fn repair_files(&self, problem: &dyn std::fmt::Display) {
        let bundle = self.current();
        let cid = CorrelationId::new();
        let event = CertificateEvent::new(EventKind::CertValidationFailed, &cid)
            .cert(bundle.metadata())
            .detail("cert_dir", self.files.dir.display().to_string());
        match bundle.write_to(&self.files) {
            Ok(()) => {
                tracing::warn!(cert_dir = %self.files.dir.display(), %problem, "damaged certificate files on disk; wrote them again from the certificate in use");
                self.emit(
                    event
                        .error("cert_dir", problem)
                        .detail("action", "wrote the files again from the certificate in use"),
                );
            }
            Err(e) => {
                tracing::error!(cert_dir = %self.files.dir.display(), %problem, error = %e, "damaged certificate files on disk could not be written again");
                self.emit(event.error("cert_dir", problem).detail("repair_failed", e.to_string()));
            }
        }
    }

    /// Bootstraps again with a join token from the token file, if one is there.
    async fn recover_with_token(&self) -> Option<()> {
        let token = std::fs::read_to_string(&self.token_file).ok()?;
        let token = token.trim().to_owned();
        // Consume the file first: a token is single use whatever happens next.
        let _ = std::fs::remove_file(&self.token_file);
        let opts = BootstrapOptions {
            worker_id: Some(self.worker.clone()),
            token,
            ca_urls: self.ca_urls.clone(),
            cert_dir: self.files.dir.clone(),
            sans: self.sans.clone(),
            key_type: self.key_type,
            retry: RetryPolicy::default(),
        };
        let bundle = bootstrap(&opts, self.events.as_ref()).await.ok()?;
        self.install(bundle).ok()
    }
}

/// Backoff between failed renewals: the current delay and when the next attempt is due.
#[derive(Debug, Default)]
struct Retry {
    delay: Option<Duration>,
    at: Option<std::time::Instant>,
}

enum Step {
    Again,
    Sleep(Duration),
}

/// How often to look at a certificate of this lifetime: 1/40 of it, 250 ms to 30 s.
fn tick(lifetime: time::Duration) -> Duration {
    let l: Duration = lifetime.try_into().unwrap_or(Duration::from_secs(3600));
    (l / 40).clamp(Duration::from_millis(250), Duration::from_secs(30))
}

/// `d` scaled by a random factor in [0.5, 1.0].
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_lifetime() {
        assert_eq!(tick(time::Duration::seconds(20)), Duration::from_millis(500));
        assert_eq!(tick(time::Duration::hours(24)), Duration::from_secs(30));
        assert_eq!(tick(time::Duration::seconds(1)), Duration::from_millis(250));
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2));
        }
    }
}
