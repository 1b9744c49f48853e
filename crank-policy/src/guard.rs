use std::sync::Arc;
use std::time::Duration;

use crank_security_core::{
    AccessDecision, AccessInput, CertMetadata, IssuanceInput, PolicyEngine, RenewalDecision, RenewalInput,
};
use time::OffsetDateTime;

/// The longest validity any engine may grant; longer answers are treated as malformed.
const MAX_VALIDITY: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest validity that makes sense (clock skew backdating alone is 60 s).
const MIN_VALIDITY: Duration = Duration::from_secs(5);

/// A policy decision that denies, with the reason shown to the requester.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    /// Why.
    pub reason: String,
    /// True when the engine failed (error, timeout, malformed output) rather than deciding.
    pub engine_failure: bool,
}

impl Denied {
    fn decided(reason: String) -> Self {
        Self { reason, engine_failure: false }
    }

    fn failed(hook: &str, engine: &str, err: impl std::fmt::Display) -> Self {
        Self { reason: format!("policy engine {engine} failed in {hook}, denying: {err}"), engine_failure: true }
    }
}

/// Wraps an engine so that every hook fails closed: an engine error is a denial.
#[derive(Debug, Clone)]
pub struct PolicyGuard {
    engine: Arc<dyn PolicyEngine>,
}

impl PolicyGuard {
    /// Guards `engine`.
    pub fn new(engine: Arc<dyn PolicyEngine>) -> Self {
        Self { engine }
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &str {
        self.engine.name()
    }

    /// `can_issue_certificate`; `Ok` only on an explicit allow.
    pub fn may_issue(&self, input: &IssuanceInput) -> Result<(), Denied> {
        match self.engine.can_issue_certificate(input) {
            Ok(d) if d.allow => Ok(()),
            Ok(d) => Err(Denied::decided(d.reason.unwrap_or_else(|| "no reason given".into()))),
            Err(e) => Err(Denied::failed("can_issue_certificate", self.engine.name(), e)),
        }
    }

    /// `certificate_validity_period`, bounded to 5 s ..= 366 days.
    pub fn validity(&self, worker_id: &str, environment: &str) -> Result<Duration, Denied> {
        let hook = "certificate_validity_period";
        match self.engine.certificate_validity_period(worker_id, environment) {
            Ok(v) if (MIN_VALIDITY..=MAX_VALIDITY).contains(&v) => Ok(v),
            Ok(v) => {
                Err(Denied::failed(hook, self.engine.name(), format!("validity {v:?} is outside 5 s ..= 366 days")))
            }
            Err(e) => Err(Denied::failed(hook, self.engine.name(), e)),
        }
    }

    /// `should_renew_certificate`; an engine failure answers "renew" so that a broken
    /// policy never lets a certificate run out silently.
    pub fn renewal(&self, cert: &CertMetadata, now: OffsetDateTime) -> Result<RenewalDecision, Denied> {
        self.engine
            .should_renew_certificate(&RenewalInput::new(cert, now))
            .map_err(|e| Denied::failed("should_renew_certificate", self.engine.name(), e))
    }

    /// `can_access_capability`; `Ok` (with the policy's rate limit, if any) only on an
    /// explicit allow.
    pub fn may_access(&self, input: &AccessInput) -> Result<AccessDecision, Denied> {
        match self.engine.can_access_capability(input) {
            Ok(d) if d.allow => Ok(d),
            Ok(d) => Err(Denied::decided(d.reason.unwrap_or_else(|| "no reason given".into()))),
            Err(e) => Err(Denied::failed("can_access_capability", self.engine.name(), e)),
        }
    }

    /// The engine's [`PolicyEngine::generation`].
    pub fn generation(&self) -> u64 {
        self.engine.generation()
    }

    /// `revoke_certificate`; `Ok` only on an explicit allow.
    pub fn may_revoke(&self, worker_id: &str, reason: &str) -> Result<(), Denied> {
        match self.engine.revoke_certificate(worker_id, reason) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Denied::decided(format!("revocation of {worker_id} for {reason} denied by policy"))),
            Err(e) => Err(Denied::failed("revoke_certificate", self.engine.name(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crank_security_core::{IssuanceDecision, PolicyError};

    use super::*;

    #[derive(Debug)]
    struct Broken;
    impl PolicyEngine for Broken {
        fn can_issue_certificate(&self, _: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
            Err(PolicyError::Evaluation("boom".into()))
        }
        fn certificate_validity_period(&self, _: &str, _: &str) -> Result<Duration, PolicyError> {
            Ok(Duration::from_secs(10 * 366 * 24 * 3600))
        }
        fn should_renew_certificate(&self, _: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
            Err(PolicyError::Evaluation("boom".into()))
        }
        fn revoke_certificate(&self, _: &str, _: &str) -> Result<bool, PolicyError> {
            Err(PolicyError::Other("boom".into()))
        }
        fn can_access_capability(&self, _: &AccessInput) -> Result<AccessDecision, PolicyError> {
            Err(PolicyError::Evaluation("boom".into()))
        }
    }

    #[test]
    fn engine_errors_deny() {
        let g = PolicyGuard::new(Arc::new(Broken));
        let input = IssuanceInput {
            worker_id: "w".into(),
            capabilities: vec![],
            requested_dns_sans: vec![],
            requested_ip_sans: vec![],
            key_type: "ecdsa-p256".into(),
            environment: "development".into(),
            trust_domain: "crank.local".into(),
            renewal: false,
            agent: None,
        };
        let d = g.may_issue(&input).unwrap_err();
        assert!(d.engine_failure);
        assert!(d.reason.contains("boom"));
        assert!(g.validity("w", "e").unwrap_err().reason.contains("outside"));
        assert!(g.may_revoke("w", "keyCompromise").is_err());
        let access: AccessInput = serde_json::from_value(serde_json::json!({
            "caller": {"spiffe_id": "spiffe://td/worker/c", "worker_id": "c", "administrator": true,
                       "trust_domain": "td", "serial": "01", "not_after": 0, "capabilities": ["admin"]},
            "target": {"worker_id": "w", "trust_domain": "td", "capability": null},
            "request": {"method": "GET", "path": "/", "route": "/"}, "environment": "e"}))
        .unwrap();
        let d = g.may_access(&access).unwrap_err();
        assert!(d.engine_failure && d.reason.contains("can_access_capability"), "{d:?}");
    }
}
