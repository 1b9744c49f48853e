//! The mTLS HTTP client factory. There is no way to turn verification off and no
//! plaintext HTTP: `https_only` is always set.

use std::sync::Arc;
use std::time::Duration;

use crank_security_core::CertificateBundle;
use rustls_pki_types::CertificateDer;

use crate::tls::{Credentials, client_config};
use crate::trust::TrustStore;

/// Builds mTLS clients.
#[derive(Debug, Clone, Copy)]
pub struct MtlsClient;

impl MtlsClient {
    /// A reqwest client that verifies servers against the bundle's CA and presents the
    /// bundle's certificate.
    pub fn from_bundle(bundle: &CertificateBundle) -> Result<reqwest::Client, crate::RuntimeError> {
        let creds = Credentials::new(bundle.certified_key()?);
        Self::with_credentials(bundle.ca(), creds)
    }

    /// A client that presents whatever `creds` holds at handshake time (so a rotated
    /// certificate is used by new connections without rebuilding the client).
    pub fn with_credentials(
        roots: &[CertificateDer<'static>],
        creds: Arc<Credentials>,
    ) -> Result<reqwest::Client, crate::RuntimeError> {
        Self::following(&TrustStore::new(roots)?, creds)
    }

    /// A client that trusts whatever `trust` holds and presents whatever `creds` holds at
    /// handshake time: rotation and CA root changes apply to new connections.
    pub fn following(trust: &Arc<TrustStore>, creds: Arc<Credentials>) -> Result<reqwest::Client, crate::RuntimeError> {
        let mut tls = client_config(trust, creds)?;
        // HTTP/1.1 with a connection pool: under heavy multiplexing the h2 client gives up
        // on a connection with "too_many_internal_resets" (see BENCHMARKS.md).
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            // Servers close idle HTTP/1.1 connections at their header-read timeout (10 s
            // by default): drop pooled ones sooner, so a request never races that close.
            .pool_idle_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| crate::RuntimeError::Config(format!("building the mTLS client: {e}")))
    }
}
