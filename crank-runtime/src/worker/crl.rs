//! Revocation on the worker side: fetch the CA's CRL on an interval, verify it, and
//! install it in the [`TrustStore`] so that the server and the mTLS client refuse
//! revoked peers in the handshake.
//!
//! The window between `crank revoke` and enforcement is at most one refresh interval
//! (`CRANK_CRL_REFRESH`, default 30 s) plus one CA request: the CA regenerates its CRL
//! at once on revocation (and every replica on its next CRL request).
//!
//! A fetched CRL is used only if its signature verifies with the trusted certificate
//! named as its issuer (a root, or in intermediate mode the worker's own intermediate),
//! and if its CRL number is not lower than the one in use. When the worker finds its own
//! certificate listed, it tells the rotator, which emits CERT_REVOKED, stops renewing,
//! and waits for a new join token.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio::sync::watch;
use url::Url;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::ca_client::CaClient;
use super::rotation::Rotator;
use crate::tls::Credentials;
use crate::trust::TrustStore;

/// Default interval between CRL fetches.
pub const DEFAULT_CRL_REFRESH: Duration = Duration::from_secs(30);

/// What a verified CRL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// CRL number (0 if absent).
    pub number: u128,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds, if present.
    pub next_update: Option<i64>,
    /// Revoked serials, hex with `:` (as the ledger and `crank cert inspect` write them).
    pub serials: HashSet<String>,
}

/// Parses `der` and verifies its signature with the certificate named as its issuer:
/// a trusted root, or (intermediate mode) an intermediate of `intermediates` whose own
/// signature chains to a trusted root.
pub fn verify_crl(
    der: &[u8],
    roots: &[CertificateDer<'_>],
    intermediates: &[CertificateDer<'_>],
) -> Result<CrlInfo, String> {
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|e| format!("not a DER CRL: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the CRL".into());
    }
    let issuer = crl.issuer();
    let mut named = false;
    for cert in trusted_issuers(roots, intermediates) {
        if cert.subject().as_raw() != issuer.as_raw() {
            continue;
        }
        named = true;
        if crl.verify_signature(cert.public_key()).is_ok() {
            let number = crl.crl_number().map_or(0, |n| u128::try_from(n.clone()).unwrap_or(u128::MAX));
            return Ok(CrlInfo {
                number,
                this_update: crl.last_update().timestamp(),
                next_update: crl.next_update().map(|t| t.timestamp()),
                serials: crl.iter_revoked_certificates().map(|r| r.raw_serial_as_string()).collect(),
            });
        }
    }
    Err(if named {
        format!("the CRL's signature does not verify with the trusted certificate {issuer}")
    } else {
        format!("the CRL's issuer {issuer} is neither a trusted root nor an intermediate that chains to one")
    })
}

/// The roots, then every CA certificate of `intermediates` whose signature verifies with
/// a certificate already accepted.
fn trusted_issuers<'a>(
    roots: &'a [CertificateDer<'_>],
    intermediates: &'a [CertificateDer<'_>],
) -> Vec<X509Certificate<'a>> {
    let parse = |c: &'a CertificateDer<'_>| X509Certificate::from_der(c).ok().map(|(_, x)| x);
    let mut accepted: Vec<X509Certificate<'a>> = roots.iter().filter_map(parse).collect();
    let mut pending: Vec<X509Certificate<'a>> = intermediates
        .iter()
        .filter_map(parse)
        .filter(|c| c.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca))
        .collect();
    while let Some(pos) = pending.iter().position(|c| {
        accepted
            .iter()
            .any(|a| a.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(Some(a.public_key())).is_ok())
    }) {
        accepted.push(pending.swap_remove(pos));
    }
    accepted
}

/// Keeps a worker's CRL current.
#[derive(Debug)]
pub struct CrlWatcher {
    ca_urls: Vec<Url>,
    trust: Arc<TrustStore>,
    credentials: Arc<Credentials>,
    rotator: Arc<Rotator>,
    interval: Duration,
}

impl CrlWatcher {
    /// A watcher fetching from `ca_urls` every `interval`.
    pub fn new(
        ca_urls: Vec<Url>,
        trust: Arc<TrustStore>,
        credentials: Arc<Credentials>,
        rotator: Arc<Rotator>,
        interval: Duration,
    ) -> Self {
        Self { ca_urls, trust, credentials, rotator, interval }
    }

    /// Fetches, verifies and installs the CRL once. Returns what was installed (or kept).
    pub async fn refresh(&self, current: Option<&CrlInfo>) -> Result<Option<CrlInfo>, String> {
        let roots = self.trust.roots();
        let bundle = self.rotator.current();
        let td = bundle.metadata().spiffe().map(|s| s.trust_domain).ok_or("the certificate has no SPIFFE ID")?;
        let client = CaClient::mtls(self.ca_urls.clone(), &self.trust, self.credentials.clone(), &td)
            .map_err(|e| e.to_string())?;
        let der = client.crl().await.map_err(|e| e.to_string())?;
        let intermediates = bundle.chain().get(1..).unwrap_or_default();
        let info = verify_crl(&der, &roots, intermediates)?;
        if let Some(cur) = current
            && info.number < cur.number
        {
            tracing::debug!(got = info.number, have = cur.number, "CA served an older CRL; keeping ours");
            return Ok(None);
        }
        self.trust.set_crls(vec![CertificateRevocationListDer::from(der)]).map_err(|e| e.to_string())?;
        let own = self.rotator.current().metadata().serial.clone();
        if info.serials.contains(&own) {
            self.rotator.mark_revoked(&own);
        }
        Ok(Some(info))
    }

    /// Refreshes every interval until `shutdown` turns true. Failures are logged and
    /// retried at the next interval; the last good CRL stays in force.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut current: Option<CrlInfo> = None;
        loop {
            match self.refresh(current.as_ref()).await {
                Ok(Some(info)) => {
                    if current.as_ref().map(|c| c.number) != Some(info.number) {
                        tracing::info!(crl_number = info.number, revoked = info.serials.len(), "CRL installed");
                    }
                    current = Some(info);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "CRL refresh failed; the last CRL stays in force"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}
