//! Revocation and the CRL: what an administrator asks, what the store records, and the
//! signed list every replica publishes.

use std::sync::Arc;

use crank_security_core::{CertificateEvent, CorrelationId, EventKind, ProviderError};
use time::OffsetDateTime;

use super::LocalCa;
use crate::crl::{CRL_REFRESH_AFTER, SignedCrl};
use crate::error::CaError;
use crate::store::{CertKind, Revocation, RevocationReason, RevocationRecord, RevokeTarget, StoreError};

impl LocalCa {
    /// The current CRL, regenerated when a revocation was recorded anywhere since it was
    /// made, or when it is older than [`CRL_REFRESH_AFTER`]. With the store unreachable,
    /// the last CRL made (still signed, still within its nextUpdate) is served.
    pub async fn crl(&self) -> Result<Arc<SignedCrl>, CaError> {
        let cached = self.crl.load_full();
        let generation = match self.store.revocation_generation().await {
            Ok(g) => g,
            Err(e) => {
                return match cached {
                    Some(c) if c.next_update > OffsetDateTime::now_utc() => {
                        tracing::warn!(error = %e, crl_number = c.number, "store unreachable; serving the last CRL");
                        Ok(c)
                    }
                    _ => Err(CaError::unavailable(format!("cannot build the CRL: {e}"))),
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
    pub async fn regenerate_crl_now(&self) -> Result<Arc<SignedCrl>, CaError> {
        let _one_at_a_time = self.crl_regen.lock().await;
        let generation = self.store.revocation_generation().await.map_err(|e| CaError::unavailable(e.to_string()))?;
        self.regenerate_crl(generation).await
    }

    async fn regenerate_crl(&self, generation: u64) -> Result<Arc<SignedCrl>, CaError> {
        let now = OffsetDateTime::now_utc();
        let unavailable = |e: StoreError| CaError::unavailable(format!("cannot build the CRL: {e}"));
        let entries = self.store.revoked_unexpired(now).await.map_err(unavailable)?;
        let number = self.store.next_crl_number().await.map_err(unavailable)?;
        let validity = self.config.crl_validity;
        let crl = crate::crl::sign(self.own.issuer(), &entries, number, generation, now, validity)
            .map_err(|e| CaError::Failed { code: "crl_failed", message: e })?;
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
    ) -> Result<Vec<RevocationRecord>, CaError> {
        // Administrators are not workers: the worker policy hook is not asked about them
        // (and a worker's name never reaches an administrator of the same name).
        let worker = match &target {
            RevokeTarget::Worker(w) => Some(w.clone()),
            RevokeTarget::Admin(_) => None,
            RevokeTarget::Serial(serial) => match self.store.certificate(serial).await {
                Ok(Some(r)) if r.kind == CertKind::Admin => None,
                Ok(Some(r)) => Some(r.worker_id),
                Ok(None) => {
                    return Err(CaError::not_found(
                        "unknown_serial",
                        format!("no certificate with serial {serial} in the ledger"),
                    ));
                }
                Err(e) => return Err(CaError::unavailable(e.to_string())),
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
            return Err(CaError::denied("policy_denied", format!("denied by policy: {}", d.reason)));
        }
        let revocation = Revocation { target, reason, revoked_by: admin.to_owned(), at: OffsetDateTime::now_utc() };
        if self.signer.name() != "local" {
            tracing::warn!(
                signer = self.signer.name(),
                "revocation recorded: the certificate cannot renew and its worker stops using it, but peers enforce this CA's CRL only for certificates this CA signed; revoke it at the upstream CA too"
            );
        }
        let records = self.store.revoke(&revocation).await.map_err(|e| match e {
            StoreError::NotFound(m) => CaError::not_found("nothing_to_revoke", m),
            other => CaError::unavailable(format!("the CA could not record the revocation: {other}")),
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
                    tracing::warn!(error = %e, "CRL not regenerated after revocation; next request retries");
                }
            }
            Err(e) => tracing::warn!(error = %e, "CRL not regenerated after revocation; next request retries"),
        }
        Ok(records)
    }
}
