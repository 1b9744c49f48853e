//! The mTLS HTTP client factory. There is no way to turn verification off and no
//! plaintext HTTP: `https_only` is always set.
//!
//! [`MtlsHttpClient`] (what handlers get in `WorkerContext`) also drops its pooled
//! connections whenever the trust changes (a new CRL, new roots): a connection opened to
//! a server that has been revoked since is never used again; the next request makes a
//! new handshake, which refuses it.

use std::sync::Arc;

use arc_swap::ArcSwap;
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

    /// A client that follows `trust` and `creds` like [`MtlsClient::following`], and that
    /// starts over with a fresh connection pool at every change of `trust`, so no
    /// connection opened before a revocation serves a request after it. Needs a Tokio
    /// runtime (it watches the store in a task that ends with the last clone).
    pub fn revocation_aware(
        trust: &Arc<TrustStore>,
        creds: Arc<Credentials>,
    ) -> Result<MtlsHttpClient, crate::RuntimeError> {
        let current = Arc::new(ArcSwap::from_pointee(Self::following(trust, creds.clone())?));
        let weak = Arc::downgrade(&current);
        let mut changes = trust.changes();
        let trust = Arc::downgrade(trust);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let (Some(current), Some(trust)) = (weak.upgrade(), trust.upgrade()) else { return };
                match Self::following(&trust, creds.clone()) {
                    Ok(fresh) => current.store(Arc::new(fresh)),
                    Err(e) => tracing::warn!(error = %e, "could not rebuild the mTLS client after a trust change"),
                }
            }
        });
        Ok(MtlsHttpClient { current })
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

/// The mTLS client handlers use ([`MtlsClient::revocation_aware`]): requests go through
/// the current `reqwest::Client`, replaced (with its connection pool) at every trust
/// change. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MtlsHttpClient {
    current: Arc<ArcSwap<reqwest::Client>>,
}

impl MtlsHttpClient {
    /// The client in use now. Take a new one for each request (or batch): a kept copy
    /// keeps connections opened before a revocation.
    pub fn current(&self) -> reqwest::Client {
        self.current.load().as_ref().clone()
    }

    /// `GET url`.
    pub fn get(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.current.load().get(url)
    }

    /// `POST url`.
    pub fn post(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.current.load().post(url)
    }

    /// `PUT url`.
    pub fn put(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.current.load().put(url)
    }

    /// `DELETE url`.
    pub fn delete(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.current.load().delete(url)
    }

    /// A request with any method.
    pub fn request(&self, method: reqwest::Method, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.current.load().request(method, url)
    }

    /// Sends `request` (made with this client) and deals with what the callee's policy
    /// and load say. A 403 `access_denied` is [`CallError::Denied`], with the capability
    /// and the reason. A 429 or 503 with `Retry-After` is sent again after that long
    /// (at least 100 ms, at most 10 s, jittered), up to [`CALL_ATTEMPTS`] attempts in
    /// all, then [`CallError::Busy`]. Any other response is returned as it is.
    pub async fn call(&self, mut request: reqwest::RequestBuilder) -> Result<reqwest::Response, CallError> {
        let mut attempt = 1;
        loop {
            let again = request.try_clone();
            let response = request.send().await?;
            let status = response.status();
            if status == reqwest::StatusCode::FORBIDDEN {
                let body: Option<crate::api::ErrorBody> = response.json().await.ok();
                return Err(match body {
                    Some(b) => CallError::Denied { capability: b.error.capability, reason: b.error.message },
                    None => CallError::Denied { capability: None, reason: "403 Forbidden".into() },
                });
            }
            let busy =
                status == reqwest::StatusCode::TOO_MANY_REQUESTS || status == reqwest::StatusCode::SERVICE_UNAVAILABLE;
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let (true, Some(wait)) = (busy, retry_after) else { return Ok(response) };
            match again {
                Some(next) if attempt < CALL_ATTEMPTS => {
                    let wait = wait.clamp(Duration::from_millis(100), Duration::from_secs(10));
                    tokio::time::sleep(wait.mul_f64(0.75 + rand::random::<f64>() / 2.0)).await;
                    attempt += 1;
                    request = next;
                }
                _ => return Err(CallError::Busy { status: status.as_u16(), attempts: attempt, retry_after: wait }),
            }
        }
    }
}

/// Attempts [`MtlsHttpClient::call`] makes in all when the callee says to come back.
pub const CALL_ATTEMPTS: u32 = 4;

/// How a call to another worker failed, besides an ordinary HTTP answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The callee's policy refused this worker (403 `access_denied`).
    #[error("access denied{}: {reason}", capability.as_deref().map(|c| format!(" to capability {c}")).unwrap_or_default())]
    Denied {
        /// The capability refused, if the callee named it.
        capability: Option<String>,
        /// The callee's policy's reason.
        reason: String,
    },
    /// The callee was still over its rate limit (429) or shedding load (503) after
    /// [`CALL_ATTEMPTS`] attempts.
    #[error("the callee answered {status} after {attempts} attempts (retry after {retry_after:?})")]
    Busy {
        /// The last status, 429 or 503.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The last `Retry-After`.
        retry_after: Duration,
    },
    /// The request could not be sent or answered.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}
