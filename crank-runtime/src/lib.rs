//! # crank-runtime
//!
//! The services around crank-security's core: the CA service, the worker runtime and
//! its mTLS client, and the `crank` CLI.
//!
//! ```text
//!  crank ca init ──► CA dir (root.key 0600, root.crt, server.crt, token.key, ca.db)
//!  crank token create ──► join token (JWT: worker id, caps, CA fingerprint, 15 min, once)
//!
//!  worker: WorkerApplication::run()
//!     ├─ valid certs in CERT_DIR? reuse
//!     └─ else key + CSR ──HTTPS (CA pinned by token)──► crank ca serve
//!                                                        ├─ token, policy, sign
//!                                                        └─ ledger commit, then answer
//!     serve axum over rustls, client certificate required, PeerIdentity to handlers
//! ```
//!
//! A worker in three lines:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use crank_runtime::{RuntimeError, WorkerApplication};
//!
//! fn main() -> Result<(), RuntimeError> {
//!     WorkerApplication::new("hello-world")
//!         .port_from_env("HELLO_WORLD_HTTPS_PORT", 8500)
//!         .routes(Router::new().route("/", get(|| async { "hello" })))
//!         .run()
//! }
//! ```

// The CA, the TLS plumbing and the worker runtime sit on issuance and handshake paths:
// input must never make them panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod access;
pub mod api;
mod crypto;
pub mod demo;
mod error;
pub mod events;
pub mod logging;
pub mod metrics;
pub mod platform;
pub mod probe;
mod server;
pub mod tls;
pub mod trust;
pub mod worker;

pub use access::AccessControl;
pub use api::{ErrorBody, ErrorDetail};
pub use error::{ApiError, RuntimeError};
pub use server::{ConnectionLimits, ConnectionMetrics, ServerHandle, Serving, serve_tls, shutdown_signal};
pub use tls::{PeerIdentity, Resumption};
pub use worker::{
    BootstrapError, BootstrapOptions, CALL_ATTEMPTS, CaClient, CallError, METRICS_CAPABILITY, MtlsClient,
    MtlsHttpClient, RetryPolicy, RunningWorker, WorkerApplication, WorkerContext, bootstrap,
};
