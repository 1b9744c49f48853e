//! Issuance and renewal: the credential (a join token, or the current certificate),
//! policy, the signer, the check of what it signed, and the durable record, in that
//! order; retried requests answered with what was already issued.

use async_trait::async_trait;
use crank_security_core::{
    CertificateEvent, CertificateProvider, CertificateTemplate, CorrelationId, EventKind, IssuanceInput, IssueRequest,
    IssuedCertificate, JoinTokenClaims, ProviderError, RenewRequest, SignRequest, SpiffeId, WorkerId,
    fingerprint_sha256, rfc3339, validate_capability,
};
use time::OffsetDateTime;

use super::{BACKDATE, LocalCa};
use crate::TokenError;
use crate::csr::{ParsedCsr, parse_csr};
use crate::store::{CertKind, CertStatus, CertificateRecord, Renewal, StoreError, TokenUse};

/// What authorises an issuance, recorded with it in one durable write.
#[derive(Debug)]
pub(super) enum Grant {
    /// A first issuance: the join token is consumed.
    Token(TokenUse),
    /// A renewal: the certificate that authenticated it is retired.
    Renewal(Renewal),
    /// A workload's certificate, asked for by the agent a registration entry assigns it
    /// to (its worker id).
    Agent(String),
}

impl Grant {
    /// The ledger's `kind` of the certificate issued.
    fn kind(&self) -> CertKind {
        match self {
            Self::Token(_) => CertKind::Issue,
            Self::Renewal(_) => CertKind::Renew,
            Self::Agent(_) => CertKind::Agent,
        }
    }
}

impl LocalCa {
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
            && next.status == CertStatus::Valid
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

    pub(super) fn fail(
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
        let claims = match self.tokens.verify(token) {
            Err(TokenError::UnknownKey(kid)) => {
                self.learn_token_key(&kid).await?;
                self.tokens.verify(token)
            }
            verified => verified,
        }
        .map_err(|e| ProviderError::Unauthorized(e.to_string()))?;
        match self.store.token_used(&claims.jti).await {
            Ok(true) => self.replay(&claims.jti, request_sha256).await.map(Err),
            Ok(false) => Ok(Ok(claims)),
            Err(e) => Err(ProviderError::Unavailable(e.to_string())),
        }
    }

    /// Looks up the join-token key `kid` in the store (another replica rotated to it,
    /// or this one did before a restart) and accepts it if the CA certified it.
    async fn learn_token_key(&self, kid: &str) -> Result<(), ProviderError> {
        let found = self.store.token_key(kid).await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let Some(pem) = found else {
            return Err(ProviderError::Unauthorized(TokenError::UnknownKey(kid.to_owned()).to_string()));
        };
        self.tokens.learn(kid, &pem).map_err(|why| {
            tracing::warn!(kid, reason = %why, "the store holds a join-token key this CA did not certify; refused");
            ProviderError::Unauthorized(format!(
                "join token is signed by key {kid}, which the store lists but this CA did not certify: {why}"
            ))
        })
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
        if hash != request_sha256 || record.status != CertStatus::Valid || !live || record.pem.is_empty() {
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
                tracing::warn!(error = %e, "answering without a CRL");
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
    pub(super) async fn sign_and_record(
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
            agent: match &grant {
                Grant::Agent(agent) => Some(agent.clone()),
                _ => None,
            },
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
            // Access capabilities go into the certificate; `san:` and other issuance-only
            // capabilities stay in the ledger.
            capabilities: capabilities.iter().filter(|c| validate_capability(c).is_ok()).cloned().collect(),
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
        let meta = crate::check::check_signed(&chain, &csr.public_key, &template, self.signer_anchors.as_deref(), now)
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
            kind,
            correlation_id: cid.to_string(),
            issued_at: crate::store::now_rfc3339(),
            status: CertStatus::Valid,
            pem: chain.clone(),
        };
        let recorded = match grant {
            Grant::Token(token) => self.store.record_issuance(Some(token), record).await,
            Grant::Renewal(renewal) => self.store.record_renewal(renewal, record).await,
            Grant::Agent(_) => self.store.record_issuance(None, record).await,
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
                .detail("kind", kind.as_str())
                .detail("signer", self.signer.name())
                .detail("spiffe_id", uri.clone()),
        );
        Ok(self.answer(chain, meta.serial, uri, rfc3339(meta.not_after)).await)
    }
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
        if record.status == CertStatus::Revoked {
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
        if record.status == CertStatus::Superseded {
            return self.renewed_again(&record, &request_sha256, cid).await;
        }
        if record.kind == CertKind::Agent {
            return Err(unauthorized(format!(
                "client certificate {} was issued to a workload through its agent; the agent renews it, not the workload",
                req.current_serial
            )));
        }
        if record.status != CertStatus::Valid || record.kind == CertKind::Admin {
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
