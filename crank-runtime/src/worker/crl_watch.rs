//! Keeping a worker's CRL current: fetched on an interval (without a client certificate:
//! the CRL is public, and a revoked worker must still learn it), verified, kept beside the
//! certificate, installed in the trust store, and reported when stale.
//!
//! The window between `crank revoke` and enforcement is at most one refresh interval
//! (`CRANK_CRL_REFRESH`, default 30 s) plus one CA request: the CA regenerates its CRL
//! at once on revocation (and every replica on its next CRL request). A stale CRL is
//! reported (event, metric, `/ready`), and in fail-closed mode every peer is refused
//! until a current one arrives. When the worker finds its own certificate listed, it
//! tells the rotator, which emits CERT_REVOKED, stops renewing, and waits for a new
//! join token.

use std::sync::Arc;
use std::time::Duration;

use crank_security_core::EventSink;
use rustls_pki_types::CertificateRevocationListDer;
use tokio::sync::watch;

use super::ca_client::CaClient;
use super::crl::{CrlInfo, CrlStatus, keep_crl, load_crl};
use super::rotation::Rotator;

/// Keeps a worker's CRL current.
#[derive(Debug)]
pub(crate) struct CrlWatcher {
    rotator: Arc<Rotator>,
    interval: Duration,
    status: Arc<CrlStatus>,
    events: Arc<dyn EventSink>,
}

impl CrlWatcher {
    /// A watcher fetching the CRL every `interval` from the CA `rotator` renews at, into
    /// the trust store it renews, keeping it beside its certificate and reporting it in
    /// `status`.
    pub(crate) fn new(
        rotator: Arc<Rotator>,
        interval: Duration,
        status: Arc<CrlStatus>,
        events: Arc<dyn EventSink>,
    ) -> Self {
        Self { rotator, interval, status, events }
    }

    /// Installs the CRL kept beside the certificate, if any (at start, before serving).
    pub(crate) fn load_kept(&self) -> Result<Option<CrlInfo>, String> {
        let bundle = self.rotator.current();
        let intermediates = bundle.chain().get(1..).unwrap_or_default();
        let Some((der, info)) = load_crl(self.rotator.files(), &self.rotator.trust().roots(), intermediates)? else {
            return Ok(None);
        };
        self.install(der, &info)?;
        Ok(Some(info))
    }

    fn install(&self, der: Vec<u8>, info: &CrlInfo) -> Result<(), String> {
        self.rotator.trust().set_crls(vec![CertificateRevocationListDer::from(der)]).map_err(|e| e.to_string())?;
        self.status.set(info.clone());
        let own = self.rotator.current().metadata().serial.clone();
        if info.serials.contains(&own) {
            self.rotator.mark_revoked(&own);
        }
        Ok(())
    }

    /// Fetches, verifies and installs the CRL once. Returns what was installed (or kept).
    pub(crate) async fn refresh(&self, current: Option<&CrlInfo>) -> Result<Option<CrlInfo>, String> {
        let roots = self.rotator.trust().roots();
        let bundle = self.rotator.current();
        let td = bundle.metadata().spiffe().map(|s| s.trust_domain).ok_or("the certificate has no SPIFFE ID")?;
        // The CRL is public: fetched without a client certificate, so a worker whose own
        // certificate was revoked (and is refused by the CA) still learns it.
        let client = CaClient::anonymous(self.rotator.ca_urls().to_vec(), self.rotator.trust(), &td)
            .map_err(|e| e.to_string())?;
        let der = client.crl().await.map_err(|e| e.to_string())?;
        let intermediates = bundle.chain().get(1..).unwrap_or_default();
        let (info, newest) = keep_crl(self.rotator.files(), &der, &roots, intermediates)?;
        if !newest || current.is_some_and(|cur| info.number < cur.number) {
            tracing::warn!(got = info.number, have = ?current.map(|c| c.number), "the CA served an older CRL than this worker holds; keeping ours");
            return Ok(None);
        }
        self.install(der, &info)?;
        Ok(Some(info))
    }

    /// Refreshes every interval until `shutdown` turns true. Failures are logged and
    /// retried at the next interval; the last good CRL stays in force. A CRL past its
    /// nextUpdate is reported once per episode (`CERT_VALIDATION_FAILED`, phase `crl`).
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut current: Option<CrlInfo> = self.status.current().map(|c| (*c).clone());
        let mut stale_reported = false;
        loop {
            match self.refresh(current.as_ref()).await {
                Ok(Some(info)) => {
                    if current.as_ref().map(|c| c.number) != Some(info.number) {
                        tracing::info!(crl_number = info.number, revoked = info.serials.len(), "CRL installed");
                    }
                    current = Some(info);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "CRL refresh failed; the last CRL stays in force"),
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            match (self.status.problem(now), stale_reported) {
                (Some(problem), false) => {
                    stale_reported = true;
                    let mut ev = crank_security_core::CertificateEvent::new(
                        crank_security_core::EventKind::CertValidationFailed,
                        &crank_security_core::CorrelationId::new(),
                    )
                    .error("crl", &problem)
                    .detail("crl_mode", format!("{:?}", self.rotator.trust().crl_mode()));
                    if let Some(c) = &current {
                        ev = ev.detail("crl_number", c.number.to_string());
                    }
                    if let Some(w) = self.rotator.current().metadata().spiffe() {
                        ev = ev.worker(w.worker_id);
                    }
                    self.events.emit(&ev);
                }
                (None, true) => {
                    stale_reported = false;
                    tracing::info!("the CRL is current again");
                }
                _ => {}
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}
