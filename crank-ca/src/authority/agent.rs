//! Issuance for workloads through an agent (`crank agent`): the agent authenticates with
//! its own certificate, and a registration entry must assign the worker id to it.

use crank_security_core::{CorrelationId, EventKind, IssuedCertificate, ProviderError, WorkerId};

use super::LocalCa;
use super::issuance::Grant;
use crate::csr::parse_csr;
use crate::store::{CertKind, CertStatus};

/// An agent (`crank agent`) as its client certificate presents it.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    /// The agent's worker id.
    pub worker_id: String,
    /// Its certificate's serial (lowercase hex).
    pub serial: String,
    /// SHA-256 of its certificate (hex).
    pub fingerprint: String,
}

impl LocalCa {
    /// Checks that `agent`'s certificate is one this CA issued to a worker by token or
    /// renewal and has not revoked. An administrator's certificate, or one issued to a
    /// workload through an agent, cannot act as an agent.
    async fn check_agent(&self, agent: &AgentCaller, cid: &CorrelationId) -> Result<(), ProviderError> {
        let who = agent.worker_id.as_str();
        let refuse =
            |m: String| self.fail(EventKind::CsrFailed, cid, Some(who), "agent", ProviderError::Unauthorized(m));
        let record = match self.store.certificate(&agent.serial).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(refuse(format!("agent certificate {} is not in this CA's ledger", agent.serial))),
            Err(e) => return Err(ProviderError::Unavailable(e.to_string())),
        };
        if record.fingerprint != agent.fingerprint || record.worker_id != who {
            return Err(refuse(format!(
                "agent certificate {} is not the certificate this CA's ledger holds under that serial",
                agent.serial
            )));
        }
        if record.status == CertStatus::Revoked {
            return Err(self.fail(
                EventKind::CsrFailed,
                cid,
                Some(who),
                "agent",
                ProviderError::Revoked(format!(
                    "agent certificate {} was revoked; the agent {who} may hand out nothing until it has a new identity",
                    agent.serial
                )),
            ));
        }
        let through_agent = record.kind == CertKind::Agent;
        if record.kind == CertKind::Admin || through_agent {
            return Err(refuse(format!(
                "certificate {} ({}) cannot act as an agent: an agent's identity comes from a join token",
                agent.serial,
                if through_agent { "issued to a workload through an agent" } else { "an administrator's" }
            )));
        }
        Ok(())
    }

    /// A JWT-SVID for `worker_id`, asked for by the agent a registration entry assigns
    /// it to: the token and its `exp`.
    pub async fn jwt_for_agent(
        &self,
        agent: &AgentCaller,
        worker_id: &str,
        audience: &[String],
        cid: &CorrelationId,
    ) -> Result<(String, i64), ProviderError> {
        self.check_agent(agent, cid).await?;
        let worker = WorkerId::new(worker_id).map_err(|e| ProviderError::BadRequest(e.to_string()))?;
        self.assigned(agent, &worker, cid).await?;
        let spiffe_id = crank_security_core::SpiffeId::new(self.trust_domain.clone(), worker.clone());
        let (token, exp) = self
            .jwt
            .sign(&spiffe_id.to_string(), audience, time::OffsetDateTime::now_utc())
            .map_err(ProviderError::BadRequest)?;
        tracing::info!(worker_id = %worker, agent = %agent.worker_id, audience = ?audience, correlation_id = %cid, "JWT-SVID issued");
        Ok((token, exp))
    }

    /// Refuses unless a registration entry assigns `worker` to `agent`.
    async fn assigned(&self, agent: &AgentCaller, worker: &WorkerId, cid: &CorrelationId) -> Result<(), ProviderError> {
        let assigned = self
            .entry_for(&agent.worker_id, worker.as_str())
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        if assigned.is_some() {
            return Ok(());
        }
        let e = ProviderError::PolicyDenied(format!(
            "no registration entry assigns worker id {worker} to agent {}; an administrator creates one with `crank entry create --worker-id {worker} --agent {} --selector ...`",
            agent.worker_id, agent.worker_id
        ));
        Err(self.fail(EventKind::CsrFailed, cid, Some(worker.as_str()), "entry", e))
    }

    /// The registration entries assigned to `agent`, once its certificate checks out.
    pub async fn entries_of_agent(
        &self,
        agent: &AgentCaller,
        cid: &CorrelationId,
    ) -> Result<Vec<crate::store::RegistrationEntry>, ProviderError> {
        self.check_agent(agent, cid).await?;
        self.entries(Some(&agent.worker_id)).await.map_err(|e| ProviderError::Unavailable(e.to_string()))
    }

    /// Issues a certificate for `worker_id` to the agent a registration entry assigns it
    /// to. The key was made in the agent; `can_issue_certificate` sees `agent`.
    pub async fn issue_for_agent(
        &self,
        agent: &AgentCaller,
        worker_id: &str,
        csr_pem: &str,
        cid: &CorrelationId,
    ) -> Result<IssuedCertificate, ProviderError> {
        self.check_agent(agent, cid).await?;
        let worker = WorkerId::new(worker_id).map_err(|e| ProviderError::BadRequest(e.to_string()))?;
        self.assigned(agent, &worker, cid).await?;
        let csr =
            parse_csr(csr_pem).map_err(|e| self.fail(EventKind::CsrFailed, cid, Some(worker.as_str()), "csr", e))?;
        self.sign_and_record(&worker, Vec::new(), (csr_pem, csr), Grant::Agent(agent.worker_id.clone()), cid).await
    }
}
