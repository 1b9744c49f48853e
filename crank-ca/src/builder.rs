//! Assembling a CA: [`LocalCa::builder`].
//!
//! ```no_run
//! # async fn f() -> Result<(), crank_ca::SetupError> {
//! use crank_ca::{CaDir, LocalCa};
//!
//! let ca = LocalCa::builder(CaDir::new("/var/lib/crank-ca"))
//!     .environment("production")
//!     .store_url("postgres://crank@db:5432/crank")
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crank_security_core::{CertificateProvider, EventSink, EventSinks, PolicyEngine};

use crate::authority::{LocalCa, LocalCaConfig};
use crate::error::SetupError;
use crate::files::CaDir;
use crate::store::CaStore;

/// Where a CA keeps its state.
#[derive(Debug, Clone)]
enum StoreChoice {
    Embedded,
    Url(String),
    Given(Arc<dyn CaStore>),
}

/// Builds a [`LocalCa`] from its directory. Every setting has a default: the built-in
/// policy, the JSON log for events, the embedded SQLite store in the directory, the CA's
/// own key as signer, environment `development`, 24 h CRLs.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until built"]
pub struct LocalCaBuilder {
    dir: CaDir,
    config: LocalCaConfig,
    policy: Arc<dyn PolicyEngine>,
    events: Arc<dyn EventSink>,
    store: StoreChoice,
    signer: Option<Arc<dyn CertificateProvider>>,
}

impl LocalCa {
    /// A builder for the CA in `dir` (made by `crank ca init`, or `init_ca`).
    pub fn builder(dir: CaDir) -> LocalCaBuilder {
        LocalCaBuilder {
            dir,
            config: LocalCaConfig::default(),
            policy: crank_policy::builtin(),
            events: Arc::new(EventSinks::default()),
            store: StoreChoice::Embedded,
            signer: None,
        }
    }
}

impl LocalCaBuilder {
    /// The deployment environment policy is told (default `development`).
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.config.environment = environment.into();
        self
    }

    /// The policy engine (default: the built-in policy).
    pub fn policy(mut self, policy: Arc<dyn PolicyEngine>) -> Self {
        self.policy = policy;
        self
    }

    /// Where lifecycle events go (default: the JSON log).
    pub fn events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = events;
        self
    }

    /// This replica's name in the ledger (default: host name and process id).
    pub fn replica(mut self, replica: impl Into<String>) -> Self {
        self.config.replica = replica.into();
        self
    }

    /// How long a CRL stays current (default 24 h; at least 2 s).
    pub fn crl_validity(mut self, validity: Duration) -> Self {
        self.config.crl_validity = validity;
        self
    }

    /// The store, opened already (default: the embedded store in the directory).
    pub fn store(mut self, store: Arc<dyn CaStore>) -> Self {
        self.store = StoreChoice::Given(store);
        self
    }

    /// The store named by a URL: `sqlite://PATH` or `postgres://...` (see
    /// [`store::open`](crate::store::open)).
    pub fn store_url(mut self, url: impl Into<String>) -> Self {
        self.store = StoreChoice::Url(url.into());
        self
    }

    /// An upstream CA that signs leaves instead of the CA's own key (see
    /// [`LocalCa::with_signer`]).
    pub fn signer(mut self, signer: Arc<dyn CertificateProvider>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Opens the store and loads the CA.
    pub async fn build(self) -> Result<Arc<LocalCa>, SetupError> {
        if self.config.crl_validity < Duration::from_secs(2) {
            return Err(SetupError::invalid(format!("the CRL validity {:?} is below 2 s", self.config.crl_validity)));
        }
        let store = match self.store {
            StoreChoice::Given(s) => s,
            StoreChoice::Embedded => open_store(&self.dir, None).await?,
            StoreChoice::Url(u) => open_store(&self.dir, Some(&u)).await?,
        };
        let policy = crank_policy::PolicyGuard::new(self.policy);
        let ca = LocalCa::load(&self.dir, self.config, policy, store, self.events)?;
        Ok(Arc::new(match self.signer {
            Some(signer) => ca.with_signer(signer).await?,
            None => ca,
        }))
    }
}

/// Opens the store named by `url` (default: the CA directory's embedded store).
pub async fn open_store(dir: &CaDir, url: Option<&str>) -> Result<Arc<dyn CaStore>, SetupError> {
    crate::store::open(url, &dir.store()).await.map_err(|source| SetupError::OpenStore {
        store: url.map_or_else(|| format!("sqlite://{}", dir.store().display()), crate::store::redact),
        source,
    })
}
