//! First issuance: local key, CSR, join token, CA with retries, atomic write.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use crank_security_core::{
    BundleWriter, CertFiles, CertificateBundle, CertificateEvent, CertificateProvider, CorrelationId, EventKind,
    EventSink, IssueRequest, IssuedCertificate, KeyType, ProviderError, SpiffeId, TrustDomain, WorkerId, build_csr,
    cert_pem, fingerprint_sha256, generate_key, parse_pem_certs, peek_token_claims, validate_host_name,
};
use rustls_pki_types::CertificateDer;
use url::Url;

use super::ca_client::CaClient;

/// How an unavailable CA is retried: exponential from `initial`, factor 2, capped at
/// `max_delay`, with jitter, for at most `attempts` attempts in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay (default 1 s).
    pub initial: Duration,
    /// Largest delay (default 60 s).
    pub max_delay: Duration,
    /// Attempts before giving up (default 5).
    pub attempts: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max_delay: Duration::from_secs(60), attempts: 5 }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter()
    }
}

/// What a bootstrap needs.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// The expected worker id; `None` takes it from the token.
    pub worker_id: Option<WorkerId>,
    /// The join token.
    pub token: String,
    /// CA URLs, in failover order.
    pub ca_urls: Vec<Url>,
    /// Where to write the files.
    pub cert_dir: PathBuf,
    /// SANs to ask for; empty means the worker id, `localhost`, `127.0.0.1` and `::1`.
    pub sans: Vec<String>,
    /// Key type (default ECDSA P-256).
    pub key_type: KeyType,
    /// Retry of an unavailable CA.
    pub retry: RetryPolicy,
}

/// Why a bootstrap failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The join token is unreadable or for another worker.
    #[error("join token: {0}")]
    Token(String),
    /// The CA stayed unreachable.
    #[error(
        "the CA at {urls} was unavailable after {attempts} attempts; last error: {last}. Check that `crank ca serve` runs and that CA_SERVICE_URL points at it"
    )]
    Unavailable {
        /// The URLs tried.
        urls: String,
        /// How many attempts were made.
        attempts: usize,
        /// The last error.
        last: String,
    },
    /// The CA refused the request.
    #[error("the CA refused the certificate request: {0}")]
    Refused(ProviderError),
    /// The CA's answer does not fit the request.
    #[error("the CA's answer was rejected: {0}")]
    InvalidResponse(String),
    /// Key generation or file writing failed.
    #[error(transparent)]
    Core(#[from] crank_security_core::Error),
}

/// Checks a CA's answer before anything is written, against what this worker already
/// trusts (`trusted`: its trust set, or at first contact the certificate its join token
/// pins). The certificate must verify to `trusted`, be valid now, match `key_pem` and be
/// `expected`'s; the answer's CA bundle may change the trust set only as
/// [`accept_trust_update`](crate::trust::accept_trust_update) allows (never a new root
/// without a cross-certificate from a trusted one). The bundle returned holds the new
/// trust set as its CA certificates: write that, not the answer's bundle.
pub fn accept_issued(
    issued: &IssuedCertificate,
    key_pem: &str,
    expected: &SpiffeId,
    trusted: &[CertificateDer<'static>],
) -> Result<CertificateBundle, String> {
    let offered = parse_pem_certs("CA bundle", issued.ca_bundle.as_bytes()).map_err(|e| e.to_string())?;
    let chain = parse_pem_certs("certificate chain", issued.certificate_chain.as_bytes()).map_err(|e| e.to_string())?;
    // A leaf not valid yet is clock skew, said as such before the chain check would
    // say "not valid yet" without the reason.
    if let Some(leaf) = chain.first() {
        let meta = crank_security_core::CertMetadata::from_der(leaf).map_err(|e| e.to_string())?;
        meta.check_validity(time::OffsetDateTime::now_utc()).map_err(|e| e.to_string())?;
    }
    let now = rustls_pki_types::UnixTime::now();
    let trust = crate::trust::accept_trust_update(trusted, &offered, &chain, now)?;
    let bundle = CertificateBundle::from_pem(
        issued.certificate_chain.as_bytes(),
        key_pem.as_bytes(),
        trust_pem(&trust).as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    bundle.validate(SystemTime::now()).map_err(|e| e.to_string())?;
    if bundle.metadata().spiffe().as_ref() != Some(expected) {
        return Err(format!(
            "the certificate names {}, not {expected}",
            bundle.metadata().spiffe_id.as_deref().unwrap_or("no worker SPIFFE ID")
        ));
    }
    Ok(bundle)
}

/// Keeps the CRL that came with an accepted answer beside the certificate (see
/// [`keep_crl`](super::crl::keep_crl)); a CRL that does not verify or is older than the
/// one kept is left out, with a warning: the CRL watcher fetches one.
pub fn keep_issued_crl(files: &CertFiles, issued: &IssuedCertificate, bundle: &CertificateBundle) {
    let Some(crl) = &issued.crl else { return };
    let intermediates = bundle.chain().get(1..).unwrap_or_default();
    match super::crl::keep_crl(files, crl.as_bytes(), bundle.ca(), intermediates) {
        Ok((info, true)) => tracing::debug!(crl_number = info.number, "kept the CRL the CA handed over"),
        Ok((info, false)) => {
            tracing::warn!(crl_number = info.number, "the CA handed over an older CRL than the one kept")
        }
        Err(e) => tracing::warn!(error = %e, "the CRL the CA handed over was not kept"),
    }
}

/// CA certificates as one PEM text (what `ca.crt` holds).
pub fn trust_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| cert_pem(c)).collect()
}

/// The SANs a worker asks for when none are configured: its worker id (when that is a
/// host name: worker ids may hold `_` or end in digits, DNS names may not), `localhost`
/// and the loopback addresses.
pub fn default_sans(worker: &WorkerId) -> Vec<String> {
    let own = validate_host_name(worker.as_str()).is_ok().then(|| worker.to_string());
    own.into_iter().chain(["localhost".into(), "127.0.0.1".into(), "::1".into()]).collect()
}

/// Gets a first certificate: generates the key here, sends only the CSR with the join
/// token to the CA (pinned by the token's root fingerprint), checks the answer and
/// writes `client.crt`, `client.key` (0600) and `ca.crt` atomically.
pub async fn bootstrap(opts: &BootstrapOptions, events: &dyn EventSink) -> Result<CertificateBundle, BootstrapError> {
    let cid = CorrelationId::new();
    let result = bootstrap_inner(opts, events, &cid).await;
    if let Err(e) = &result {
        let worker = opts
            .worker_id
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| peek_token_claims(&opts.token).ok().map(|c| c.sub));
        let mut ev = CertificateEvent::new(EventKind::CsrFailed, &cid).error("bootstrap", e);
        if let Some(w) = worker {
            ev = ev.worker(w);
        }
        events.emit(&ev.detail("ca_urls", opts.ca_urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")));
    }
    result
}

async fn bootstrap_inner(
    opts: &BootstrapOptions,
    events: &dyn EventSink,
    cid: &CorrelationId,
) -> Result<CertificateBundle, BootstrapError> {
    let claims = peek_token_claims(&opts.token).map_err(|e| BootstrapError::Token(e.to_string()))?;
    let worker = WorkerId::new(claims.sub.clone()).map_err(|e| BootstrapError::Token(e.to_string()))?;
    if let Some(expected) = &opts.worker_id
        && *expected != worker
    {
        return Err(BootstrapError::Token(format!(
            "the token is for worker {worker:?}, but this worker is {expected:?}; create a token with --worker-id {expected}"
        )));
    }
    if claims.exp < time::OffsetDateTime::now_utc().unix_timestamp() {
        return Err(BootstrapError::Token(
            "the join token has expired; create a new one with `crank token create`".into(),
        ));
    }

    // The directory is checked (and a crashed write finished or discarded) before the
    // join token is spent: a directory the certificate could not be written into safely
    // must not use up the token.
    let files = CertFiles::in_dir(&opts.cert_dir);
    files.recover()?;

    let key = generate_key(opts.key_type)?;
    let sans = if opts.sans.is_empty() { default_sans(&worker) } else { opts.sans.clone() };
    let csr = build_csr(&key, &worker, &sans)?;
    events.emit(
        &CertificateEvent::new(EventKind::CsrGenerated, cid)
            .worker(&worker)
            .detail("san_names", sans.clone())
            .detail("key_type", opts.key_type.name()),
    );

    let trust_domain = TrustDomain::new(claims.td.clone()).map_err(|e| BootstrapError::Token(e.to_string()))?;
    let client =
        CaClient::pinned(opts.ca_urls.clone(), &claims.ca_fp, &trust_domain).map_err(BootstrapError::Refused)?;
    let urls = opts.ca_urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let submit = || async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        events.emit(
            &CertificateEvent::new(EventKind::CsrSubmitted, cid)
                .worker(&worker)
                .detail("ca_urls", urls.clone())
                .detail("attempt", n),
        );
        client
            .issue(IssueRequest { csr_pem: csr.clone(), token: opts.token.clone(), correlation_id: cid.clone() })
            .await
    };
    let issued = submit
        .retry(opts.retry.backoff())
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, ProviderError::Unavailable(_)))
        .notify(|e, delay| {
            let mut ev = CertificateEvent::new(EventKind::CaUnavailable, cid).worker(&worker).error("submit", e);
            if let Some(ctx) = ev.error.as_mut() {
                ctx.ca_url = Some(urls.clone());
                ctx.attempt = u32::try_from(attempt.load(std::sync::atomic::Ordering::SeqCst)).ok();
            }
            events.emit(&ev.detail("retry_in_ms", u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)));
        })
        .await
        .map_err(|e| match e {
            ProviderError::Unavailable(last) => {
                events.emit(
                    &CertificateEvent::new(EventKind::CaUnavailable, cid)
                        .worker(&worker)
                        .error("submit", &last)
                        .detail("final", true),
                );
                BootstrapError::Unavailable {
                    urls: urls.clone(),
                    attempts: attempt.load(std::sync::atomic::Ordering::SeqCst),
                    last,
                }
            }
            other => BootstrapError::Refused(other),
        })?;

    let key_pem = key.serialize_pem();
    // What the token pinned is the only trust so far; the CA presented it in its chain.
    let pinned: Vec<CertificateDer<'static>> = parse_pem_certs("CA bundle", issued.ca_bundle.as_bytes())
        .map_err(|e| BootstrapError::InvalidResponse(e.to_string()))?
        .into_iter()
        .chain(parse_pem_certs("certificate chain", issued.certificate_chain.as_bytes()).unwrap_or_default())
        .filter(|c| fingerprint_sha256(c) == claims.ca_fp)
        .take(1)
        .collect();
    if pinned.is_empty() {
        return Err(BootstrapError::InvalidResponse(format!(
            "the answer does not hold the CA certificate the join token pins (sha256 {})",
            claims.ca_fp
        )));
    }
    let expected = SpiffeId::new(trust_domain, worker.clone());
    let bundle = accept_issued(&issued, &key_pem, &expected, &pinned).map_err(BootstrapError::InvalidResponse)?;
    BundleWriter::write(
        &files,
        issued.certificate_chain.as_bytes(),
        key_pem.as_bytes(),
        trust_pem(bundle.ca()).as_bytes(),
    )?;
    keep_issued_crl(&files, &issued, &bundle);
    events.emit(
        &CertificateEvent::new(EventKind::CertIssued, cid)
            .worker(&worker)
            .cert(bundle.metadata())
            .detail("component", "worker")
            .detail("cert_dir", opts.cert_dir.display().to_string()),
    );
    Ok(bundle)
}
