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
            .current()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crank_security_core::{
        CertMetadata, CertificateProvider, CorrelationId, IssueRequest, IssuedCertificate, KeyType, ProviderError,
        RenewRequest, WorkerId, build_csr, generate_key, parse_pem_certs,
    };

    use super::AgentCaller;
    use crate::LocalCa;
    use crate::authority::test_ca as ca;
    use crate::store::{CertKind, RevocationReason, RevokeTarget};

    fn csr(worker: &str) -> String {
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        build_csr(&key, &WorkerId::new(worker).unwrap(), &[]).unwrap()
    }

    /// Who presents `issued` as a client certificate.
    fn caller(issued: &IssuedCertificate) -> AgentCaller {
        let leaf = &parse_pem_certs("chain", issued.certificate_chain.as_bytes()).unwrap()[0];
        let meta = CertMetadata::from_der(leaf).unwrap();
        AgentCaller {
            worker_id: meta.spiffe().unwrap().worker_id.to_string(),
            serial: meta.serial,
            fingerprint: meta.fingerprint_sha256,
        }
    }

    async fn agent_identity(ca: &LocalCa, name: &str) -> AgentCaller {
        let token = ca.tokens().create(&WorkerId::new(name).unwrap(), Duration::from_secs(60), vec!["ca.agent".into()]);
        let req = IssueRequest { csr_pem: csr(name), token: token.unwrap(), correlation_id: CorrelationId::new() };
        caller(&ca.issue(req).await.unwrap())
    }

    #[tokio::test]
    async fn an_agent_gets_only_assigned_worker_ids_and_its_workloads_certificates_stay_its_own() {
        let (_tmp, ca) = ca().await;
        let cid = CorrelationId::new();
        let agent = agent_identity(&ca, "agent-1").await;
        ca.create_entry("api", &["unix:uid:1000".into()], "agent-1", "admin/ops").await.unwrap();

        let issued = ca.issue_for_agent(&agent, "api", &csr("api"), &cid).await.unwrap();
        assert_eq!(issued.spiffe_id, "spiffe://crank.local/worker/api");
        let workload = caller(&issued);
        let record = ca.store().certificate(&workload.serial).await.unwrap().unwrap();
        assert_eq!(record.kind, CertKind::Agent);

        let refused = ca.issue_for_agent(&agent, "payments", &csr("payments"), &cid).await.unwrap_err();
        assert!(
            matches!(&refused, ProviderError::PolicyDenied(m) if m.contains("no registration entry assigns worker id payments to agent agent-1")),
            "{refused:?}"
        );

        // A workload's certificate is not an agent's, even when an entry names it as one.
        ca.create_entry("other", &["unix:uid:1000".into()], "api", "admin/ops").await.unwrap();
        let refused = ca.issue_for_agent(&workload, "other", &csr("other"), &cid).await.unwrap_err();
        assert!(
            matches!(&refused, ProviderError::Unauthorized(m) if m.contains("cannot act as an agent")),
            "{refused:?}"
        );
        // Nor does it renew itself: its agent does.
        let renew = RenewRequest {
            csr_pem: csr("api"),
            worker_id: "api".into(),
            current_serial: workload.serial.clone(),
            current_fingerprint: Some(workload.fingerprint.clone()),
            correlation_id: cid.clone(),
        };
        let refused = ca.renew(renew).await.unwrap_err();
        assert!(matches!(&refused, ProviderError::Unauthorized(m) if m.contains("the agent renews it")), "{refused:?}");

        // A certificate presented under another's serial is refused.
        let forged = AgentCaller { fingerprint: "00".repeat(32), ..agent.clone() };
        assert!(matches!(
            ca.issue_for_agent(&forged, "api", &csr("api"), &cid).await,
            Err(ProviderError::Unauthorized(_))
        ));

        // A revoked agent gets nothing, and is told why.
        ca.revoke(RevokeTarget::Worker("agent-1".into()), RevocationReason::KeyCompromise, "admin/ops", &cid)
            .await
            .unwrap();
        let refused = ca.issue_for_agent(&agent, "api", &csr("api"), &cid).await.unwrap_err();
        assert!(matches!(&refused, ProviderError::Revoked(m) if m.contains("was revoked")), "{refused:?}");
        assert!(matches!(ca.entries_of_agent(&agent, &cid).await, Err(ProviderError::Revoked(_))));
    }

    #[tokio::test]
    async fn jwt_svids_name_only_assigned_workloads_and_verify_with_the_bundle() {
        let (_tmp, ca) = ca().await;
        let cid = CorrelationId::new();
        let agent = agent_identity(&ca, "agent-1").await;
        ca.create_entry("api", &["unix:uid:1000".into()], "agent-1", "admin/ops").await.unwrap();
        let (token, exp) = ca.jwt_for_agent(&agent, "api", &["orders".into()], &cid).await.unwrap();
        assert!(exp > time::OffsetDateTime::now_utc().unix_timestamp());
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value((*ca.jwt().jwks()).clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["orders"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap().claims;
        assert_eq!(claims["sub"], "spiffe://crank.local/worker/api");
        let refused = ca.jwt_for_agent(&agent, "payments", &["orders".into()], &cid).await.unwrap_err();
        assert!(matches!(refused, ProviderError::PolicyDenied(_)), "{refused:?}");
        let refused = ca.jwt_for_agent(&agent, "api", &[], &cid).await.unwrap_err();
        assert!(matches!(refused, ProviderError::BadRequest(_)), "{refused:?}");
    }
}
