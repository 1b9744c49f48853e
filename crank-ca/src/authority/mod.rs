//! The local CA: verifies a CSR and its credential, asks policy, has its signer sign
//! (its own key by default, or an upstream CA), checks what came back, and records the
//! certificate durably before handing it out.

use std::sync::Arc;

use crank_policy::PolicyGuard;
use crank_security_core::{CertificateProvider, EventSink, TrustDomain, fingerprint_sha256, parse_pem_certs};

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::crl::SignedCrl;
use super::files::CaDir;
use super::signer::LocalSigner;
use super::store::CaStore;
use super::token::TokenAuthority;
use crate::error::SetupError;

mod admin;
mod agent;
mod entries;
mod issuance;
mod revocation;

pub use agent::AgentCaller;

/// Clock-skew allowance: not-before is set this far in the past.
pub const BACKDATE: time::Duration = crank_security_core::CLOCK_SKEW_BACKDATE;

/// Settings of a [`LocalCa`].
#[derive(Debug, Clone)]
pub struct LocalCaConfig {
    /// Deployment environment passed to policy (default `development`).
    pub environment: String,
    /// Name of this replica, recorded in the ledger (default: host name and pid).
    pub replica: String,
    /// How long a CRL stays current: its nextUpdate is thisUpdate plus this (default
    /// [`CRL_VALIDITY`](super::crl::CRL_VALIDITY), 24 h). The CA re-signs it after
    /// [`CRL_REFRESH_AFTER`](crate::CRL_REFRESH_AFTER) or half of this, whichever is shorter.
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
    /// Signs JWT-SVIDs and keeps the JWT bundle.
    jwt: crate::jwt_svid::JwtAuthority,
    /// The CA service's own names ([`CaDir::service_names`]): never issued to a worker.
    reserved_names: Vec<String>,
    policy: PolicyGuard,
    store: Arc<dyn CaStore>,
    events: Arc<dyn EventSink>,
    /// The refusals this replica saw last, for the console.
    denials: Arc<crate::denials::RecentDenials>,
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
    ) -> Result<Self, SetupError> {
        dir.recover()?;
        let trust_domain = dir.trust_domain()?;
        let pinned = dir.pinned_der()?;
        let own = Arc::new(LocalSigner::load(dir)?);
        let bundle_pem = dir.trust_bundle_pem()?;
        // Metrics decorate the event sink: every event is also counted.
        let metrics = crank_runtime::metrics::Metrics::new();
        let sinks = crank_security_core::EventSinks::empty();
        sinks.register(events);
        sinks.register(Arc::new(crank_runtime::metrics::PrometheusSink(metrics.clone())));
        let denials = Arc::new(crate::denials::RecentDenials::default());
        sinks.register(denials.clone());
        let events: Arc<dyn EventSink> = Arc::new(sinks);
        // Keys that replicas publish are accepted when the signing key certified them.
        let anchors = parse_pem_certs("trust bundle", bundle_pem.as_bytes())?;
        let tokens = TokenAuthority::new(
            &CaDir::read_key(&dir.token_key())?,
            trust_domain.clone(),
            fingerprint_sha256(&pinned),
        )?
        .with_key_trust(&anchors, dir.signing_chain()?)?;
        let jwt = crate::jwt_svid::JwtAuthority::new(
            crate::jwt_svid::JwtSvidKey::load_or_create(dir)?,
            crate::key_cert::KeyTrust::new(&anchors, dir.signing_chain()?)?,
        );
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
            jwt,
            policy,
            store,
            events,
            denials,
            metrics,
            crl: arc_swap::ArcSwapOption::empty(),
            crl_regen: tokio::sync::Mutex::new(()),
            crl_updates: tokio::sync::watch::channel(None).0,
        })
    }

    /// Leaves are signed by `signer` (an upstream CA) instead of the CA's own key. Its
    /// trust bundle is added to the one handed out, and every certificate it returns is
    /// checked against what policy decided before it is recorded.
    pub async fn with_signer(mut self, signer: Arc<dyn CertificateProvider>) -> Result<Self, SetupError> {
        let pem = signer.trust_bundle().await.map_err(|source| SetupError::Signer { what: "trust bundle", source })?;
        let anchors = parse_pem_certs("signer trust bundle", pem.as_bytes())?;
        let mut bundle = parse_pem_certs("trust bundle", self.bundle_pem.as_bytes())?;
        let now = OffsetDateTime::now_utc();
        for a in &anchors {
            if !bundle.contains(a) {
                // Workers trust the signer's root because this CA vouches for it with a
                // cross-certificate: no root reaches a worker otherwise.
                let cross = super::cross::for_root(a, self.own.issuer(), self.own.not_after(), now).map_err(|e| {
                    SetupError::refused("the signer's trust bundle must hold its self-signed root(s)").because(e)
                })?;
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

    /// The JWT-SVID keys: the one that signs, and the JWT bundle.
    pub fn jwt(&self) -> &crate::jwt_svid::JwtAuthority {
        &self.jwt
    }

    /// The token authority (for `crank token create` and tests).
    pub fn tokens(&self) -> &TokenAuthority {
        &self.tokens
    }

    /// This replica's name in the ledger.
    pub fn replica(&self) -> &str {
        &self.config.replica
    }

    /// The refusals this replica saw last (access denied, certificate requests
    /// refused), newest first.
    pub fn recent_denials(&self) -> Vec<crank_security_core::CertificateEvent> {
        self.denials.newest_first()
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

    /// Capability access control for the CA's own endpoints (service `ca`), deciding
    /// with the CA's policy.
    pub fn access_control(&self) -> crank_runtime::AccessControl {
        crank_runtime::AccessControl::new(
            self.policy.clone(),
            "ca",
            self.trust_domain.as_str(),
            self.config.environment.clone(),
            self.events.clone(),
        )
        .with_metrics(self.metrics.clone())
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CaStore> {
        &self.store
    }
}

/// A CA in a temporary directory, with the embedded store, for the tests of the
/// authority's rooms.
#[cfg(test)]
pub(crate) async fn test_ca() -> (tempfile::TempDir, Arc<LocalCa>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CaDir::new(tmp.path().join("ca"));
    let options = crate::files::InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false };
    crate::files::init_ca(&dir, &options).unwrap();
    let ca = LocalCa::builder(dir).replica("test").build().await.unwrap();
    (tmp, ca)
}
