//! The `PolicyEngine` trait and the built-in defaults.

use std::fmt::Debug;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{AccessDecision, AccessInput, CertMetadata, default_access};

/// What an issuance or renewal asks for; the input of `can_issue_certificate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuanceInput {
    /// The worker id (from the join token, or from the current certificate on renewal).
    pub worker_id: String,
    /// Capabilities granted by the join token (empty on renewal unless carried over).
    pub capabilities: Vec<String>,
    /// DNS names the CSR asks for.
    pub requested_dns_sans: Vec<String>,
    /// IP addresses the CSR asks for.
    pub requested_ip_sans: Vec<IpAddr>,
    /// Key type of the CSR (`ecdsa-p256`, ...).
    pub key_type: String,
    /// Deployment environment of the CA.
    pub environment: String,
    /// The CA's trust domain.
    pub trust_domain: String,
    /// Whether this is a renewal authenticated by the current certificate.
    pub renewal: bool,
    /// The agent asking on the workload's behalf (`crank agent`, its worker id), or
    /// `null` when the worker asks itself.
    #[serde(default)]
    pub agent: Option<String>,
}

/// The answer of `can_issue_certificate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuanceDecision {
    /// Whether a certificate may be issued.
    pub allow: bool,
    /// Why not, when denied (shown to the requester).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl IssuanceDecision {
    /// Allow.
    pub fn allow() -> Self {
        Self { allow: true, reason: None }
    }

    /// Deny, saying why.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self { allow: false, reason: Some(reason.into()) }
    }
}

/// The input of `should_renew_certificate`, as policy engines other than the built-in
/// one receive it: times are Unix seconds; `jitter` is a per-certificate number in
/// [0, 1) derived from the serial, so every engine spreads renewals the same way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenewalInput {
    /// The certificate's serial (hex).
    pub serial: String,
    /// The worker id, if the certificate names one.
    pub worker_id: Option<String>,
    /// When the CA issued it (`not_before` plus the CA's clock-skew backdate).
    pub issued_at: i64,
    /// `not_before` as written in the certificate.
    pub not_before: i64,
    /// `not_after`.
    pub not_after: i64,
    /// The time of the decision.
    pub now: i64,
    /// Per-certificate jitter in [0, 1).
    pub jitter: f64,
}

impl RenewalInput {
    /// The input for `cert` at `now`.
    pub fn new(cert: &CertMetadata, now: OffsetDateTime) -> Self {
        let seed = cert.serial.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Self {
            serial: cert.serial.clone(),
            worker_id: cert.spiffe().map(|s| s.worker_id.to_string()),
            issued_at: cert.issued_at().unix_timestamp(),
            not_before: cert.not_before.unix_timestamp(),
            not_after: cert.not_after.unix_timestamp(),
            now: now.unix_timestamp(),
            jitter: (seed % 1000) as f64 / 1000.0,
        }
    }
}

/// The answer of `should_renew_certificate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalDecision {
    /// Renew now.
    pub renew: bool,
    /// Less than the warning share of the lifetime remains.
    pub expiring_soon: bool,
}

/// A policy engine failed to produce a decision. Callers treat this as a denial.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Evaluation failed (runtime error, timeout, trap).
    #[error("policy evaluation failed: {0}")]
    Evaluation(String),
    /// The engine produced output of the wrong shape.
    #[error("policy output is malformed: {0}")]
    MalformedOutput(String),
    /// Any other engine error.
    #[error("{0}")]
    Other(String),
}

/// The five policy hooks. Every call site fails closed: an `Err` denies.
pub trait PolicyEngine: Debug + Send + Sync {
    /// May `input.worker_id` receive a certificate with these names and this key?
    fn can_issue_certificate(&self, input: &IssuanceInput) -> Result<IssuanceDecision, PolicyError>;

    /// How long a new certificate for this worker stays valid.
    fn certificate_validity_period(&self, worker_id: &str, environment: &str) -> Result<Duration, PolicyError>;

    /// Should the holder of this certificate renew it now? (`input` is built from the
    /// certificate's metadata and the current time by [`RenewalInput::new`].)
    fn should_renew_certificate(&self, input: &RenewalInput) -> Result<RenewalDecision, PolicyError>;

    /// May this worker's certificates be revoked for this reason?
    fn revoke_certificate(&self, worker_id: &str, reason: &str) -> Result<bool, PolicyError>;

    /// May this caller use this capability of this worker, with this request? Asked for
    /// every request before its handler runs. Engines that do not define it answer with
    /// the built-in default, [`default_access`].
    fn can_access_capability(&self, input: &AccessInput) -> Result<AccessDecision, PolicyError> {
        Ok(default_access(input))
    }

    /// Changes whenever the engine's decisions may have changed (a reloaded policy):
    /// callers that cache decisions drop them when it does. Engines that never change
    /// keep the default, 0.
    fn generation(&self) -> u64 {
        0
    }

    /// A short name for logs and metrics.
    fn name(&self) -> &str {
        "custom"
    }
}

/// The built-in defaults, used when no policy is configured.
///
/// - Issue to any valid worker with a key type in [`DefaultPolicy::ALLOWED_KEY_TYPES`];
///   DNS SANs must be the worker id, `<worker-id>.<trust-domain>`, `localhost`, or a
///   name granted by a `san:<name>` capability; IP SANs must be loopback or granted by
///   `san:<ip>`. Anything else is denied, naming the name.
/// - Validity 24 hours.
/// - Renew once 2/3 of the granted lifetime ([`CertMetadata::granted_lifetime`]) has passed, plus a per-certificate jitter of up to
///   1/20 of the lifetime (derived from the serial, so stable across calls); expiring
///   soon once less than 1/4 remains.
/// - Revocation allowed.
#[derive(Debug, Clone)]
pub struct DefaultPolicy {
    /// Validity of new certificates (default 24 h).
    pub validity: Duration,
}

impl DefaultPolicy {
    /// Key types issued by default.
    pub const ALLOWED_KEY_TYPES: [&'static str; 5] = ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072"];
    /// Default validity: 24 hours.
    pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
}

impl Default for DefaultPolicy {
    fn default() -> Self {
        Self { validity: Self::DEFAULT_VALIDITY }
    }
}

impl PolicyEngine for DefaultPolicy {
    fn can_issue_certificate(&self, input: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
        if !Self::ALLOWED_KEY_TYPES.contains(&input.key_type.as_str()) {
            return Ok(IssuanceDecision::deny(format!("key type {} is not allowed", input.key_type)));
        }
        let granted = |name: &str| input.capabilities.iter().any(|c| c.strip_prefix("san:") == Some(name));
        let own_fqdn = format!("{}.{}", input.worker_id, input.trust_domain);
        for dns in &input.requested_dns_sans {
            let ok = *dns == input.worker_id || *dns == own_fqdn || dns == "localhost" || granted(dns);
            if !ok {
                return Ok(IssuanceDecision::deny(format!(
                    "DNS name {dns:?} is not allowed for worker {:?} (allowed: the worker id, {own_fqdn}, localhost, or a san:<name> capability in the join token)",
                    input.worker_id
                )));
            }
        }
        for ip in &input.requested_ip_sans {
            if !(ip.is_loopback() || granted(&ip.to_string())) {
                return Ok(IssuanceDecision::deny(format!(
                    "IP address {ip} is not allowed for worker {:?} (allowed: loopback, or a san:<ip> capability in the join token)",
                    input.worker_id
                )));
            }
        }
        Ok(IssuanceDecision::allow())
    }

    fn certificate_validity_period(&self, _worker_id: &str, _environment: &str) -> Result<Duration, PolicyError> {
        Ok(self.validity)
    }

    fn should_renew_certificate(&self, input: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
        Ok(default_renewal(input))
    }

    fn revoke_certificate(&self, _worker_id: &str, _reason: &str) -> Result<bool, PolicyError> {
        Ok(true)
    }

    fn name(&self) -> &str {
        "builtin"
    }
}

/// The default renewal rule on a [`RenewalInput`]: renew once 2/3 of the granted
/// lifetime plus `jitter`/20 of it has passed; expiring soon under 1/4 remaining.
pub fn default_renewal(i: &RenewalInput) -> RenewalDecision {
    let lifetime = (i.not_after - i.issued_at) as f64;
    if lifetime <= 0.0 {
        return RenewalDecision { renew: true, expiring_soon: true };
    }
    let elapsed = (i.now - i.issued_at) as f64;
    let remaining = (i.not_after - i.now) as f64;
    let threshold = lifetime * (2.0 / 3.0) + lifetime * i.jitter / 20.0;
    RenewalDecision { renew: elapsed >= threshold, expiring_soon: remaining < lifetime / 4.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(dns: &[&str], ips: &[&str], caps: &[&str]) -> IssuanceInput {
        IssuanceInput {
            worker_id: "w1".into(),
            capabilities: caps.iter().map(|s| (*s).into()).collect(),
            requested_dns_sans: dns.iter().map(|s| (*s).into()).collect(),
            requested_ip_sans: ips.iter().map(|s| s.parse().unwrap()).collect(),
            key_type: "ecdsa-p256".into(),
            environment: "development".into(),
            trust_domain: "crank.local".into(),
            renewal: false,
            agent: None,
        }
    }

    #[test]
    fn default_sans() {
        let p = DefaultPolicy::default();
        assert!(
            p.can_issue_certificate(&input(&["w1", "w1.crank.local", "localhost"], &["127.0.0.1", "::1"], &[]))
                .unwrap()
                .allow
        );
        let d = p.can_issue_certificate(&input(&["bank.example"], &[], &[])).unwrap();
        assert!(!d.allow);
        assert!(d.reason.unwrap().contains("bank.example"));
        assert!(p.can_issue_certificate(&input(&["api.example"], &[], &["san:api.example"])).unwrap().allow);
        assert!(!p.can_issue_certificate(&input(&[], &["10.0.0.1"], &[])).unwrap().allow);
    }

    #[test]
    fn renews_after_two_thirds() {
        let p = DefaultPolicy::default();
        let nb = OffsetDateTime::now_utc();
        let meta = CertMetadata {
            serial: "01:02".into(),
            subject: String::new(),
            issuer: String::new(),
            dns_sans: vec![],
            ip_sans: vec![],
            uri_sans: vec![],
            spiffe_id: None,
            not_before: nb - crate::CLOCK_SKEW_BACKDATE,
            not_after: nb + time::Duration::hours(24),
            fingerprint_sha256: String::new(),
            is_ca: false,
            capabilities: vec![],
        };
        let at = |h: f64| {
            p.should_renew_certificate(&RenewalInput::new(&meta, nb + time::Duration::seconds_f64(h * 3600.0))).unwrap()
        };
        assert!(!at(12.0).renew);
        assert!(!at(15.9).renew);
        assert!(at(17.3).renew, "past 2/3 + max jitter (1.2 h)");
        assert!(!at(17.0).expiring_soon);
        assert!(at(18.5).expiring_soon);
    }
}
