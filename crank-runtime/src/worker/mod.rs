//! The worker runtime: bootstrap, the mTLS server and the mTLS client, renewal and
//! revocation.
//!
//! ```text
//!  WorkerApplication::start ── settings (builder, else environment)
//!     ├─ bootstrap: key here, CSR + join token ──► CA (pinned, CA identity)
//!     ├─ rotation: renew before expiry over mTLS; recover from a token file
//!     ├─ crl_watch: fetch, verify, keep and install the CA's CRL
//!     └─ serve: HTTPS, client certificate required; MtlsHttpClient for calls
//! ```

mod app;
mod bootstrap;
mod ca_client;
mod crl;
mod crl_watch;
mod mtls;
mod rotation;
mod settings;
mod stack;

pub use self::app::{METRICS_CAPABILITY, RunningWorker, WorkerApplication, WorkerContext};
pub use self::bootstrap::{
    BootstrapError, BootstrapOptions, RetryPolicy, accept_issued, bootstrap, default_sans, keep_issued_crl, trust_pem,
};
pub use self::ca_client::{CaClient, error_chain};
pub use self::crl::{CrlInfo, CrlStatus, DEFAULT_CRL_REFRESH, crl_der, keep_crl, load_crl, verify_crl};
pub use self::mtls::{CALL_ATTEMPTS, CallError, MtlsClient, MtlsHttpClient};
pub use self::rotation::{MAX_RETRY_DELAY, RotationConfig, Rotator};
pub use self::stack::{MAX_REQUEST_BODY, REQUEST_TIMEOUT, worker_router};
