//! The CA service's own TLS certificate: loaded at start (and reissued from the signing
//! key when its key and certificate do not load as a pair, or it outlives the validity
//! asked for), then renewed when a third of the validity asked for is left and swapped into the
//! running server, on every replica, without a restart.
//!
//! ```text
//!  start ──► server.crt + server.key load and match, not longer than --tls-validity? serve them
//!        └─► else reissue (same names and chain, signing key) and serve that
//!  every replica: ──► a third of the validity left ──► reissue, write (key 0600, atomic), swap in
//!                                                  new handshakes get it; open connections keep theirs
//! ```

use std::sync::{Arc, Weak};
use std::time::Duration;

use crank_runtime::tls::Credentials;
use crank_security_core::{CertMetadata, CertificateBundle};
use time::OffsetDateTime;

use crate::authority::LocalCa;
use crate::error::SetupError;
use crate::files::CaDir;

/// Slack before a certificate counts as longer than the validity asked for (clock steps
/// between issuing and checking).
const SLACK: time::Duration = time::Duration::minutes(2);

/// The service's key and certificate as a bundle, reissued first when they do not load
/// as a pair or end later than `validity` from now.
pub(crate) fn load_or_reissue(
    dir: &CaDir,
    root_pem: &[u8],
    validity: time::Duration,
) -> Result<CertificateBundle, SetupError> {
    let loaded = std::fs::read(dir.server_cert())
        .and_then(|chain| std::fs::read(dir.server_key()).map(|key| (chain, key)))
        .map_err(|e| e.to_string())
        .and_then(|(chain, key)| CertificateBundle::from_pem(&chain, &key, root_pem).map_err(|e| e.to_string()));
    let why = match loaded {
        Ok(bundle) if bundle.metadata().not_after <= OffsetDateTime::now_utc() + validity + SLACK => {
            return Ok(bundle);
        }
        Ok(bundle) => {
            format!("it is valid until {}, longer than the {validity} asked for", bundle.metadata().not_after)
        }
        Err(e) => format!("its key and certificate do not load as a pair: {e}"),
    };
    tracing::warn!(reason = %why, "reissuing the CA service's TLS certificate from the signing key");
    let (chain, key) = dir.reissue_service_certificate(validity)?;
    Ok(CertificateBundle::from_pem(chain.as_bytes(), key.as_bytes(), root_pem)?)
}

/// How long until the certificate `creds` serves is due for renewal (zero when due):
/// when a third of `validity` is left before its notAfter.
fn due_in(creds: &Credentials, validity: time::Duration) -> Option<Duration> {
    let key = creds.current()?;
    let meta = CertMetadata::from_der(key.cert.first()?).ok()?;
    let due = meta.not_after - validity / 3;
    Some(Duration::try_from(due - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO))
}

/// Renews the service's certificate in `creds` whenever it is due, until `creds` is gone
/// (the server stopped). Failures are logged and tried again.
pub(crate) async fn keep_fresh(dir: CaDir, ca: Arc<LocalCa>, creds: Weak<Credentials>, validity: time::Duration) {
    let retry = Duration::try_from(validity / 10)
        .unwrap_or(Duration::ZERO)
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let Some(current) = creds.upgrade() else { return };
        let wait = due_in(&current, validity).unwrap_or(Duration::ZERO);
        drop(current);
        // Wakes at least hourly, so a clock that jumps is noticed.
        tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
        let Some(current) = creds.upgrade() else { return };
        if due_in(&current, validity).is_some_and(|d| !d.is_zero()) {
            continue;
        }
        let root = ca.trust_bundle_pem().as_bytes().to_vec();
        let dir = dir.clone();
        let renewed = tokio::task::spawn_blocking(move || -> Result<CertificateBundle, SetupError> {
            let (chain, key) = dir.reissue_service_certificate(validity)?;
            Ok(CertificateBundle::from_pem(chain.as_bytes(), key.as_bytes(), &root)?)
        })
        .await
        .map_err(|e| SetupError::NotReady { message: format!("the renewal task ended: {e}"), source: None });
        match renewed.and_then(|r| r) {
            Ok(bundle) => match bundle.certified_key() {
                Ok(key) => {
                    current.store(key);
                    let meta = bundle.metadata();
                    ca.metrics().set_certificate_expiry(meta.not_after);
                    tracing::info!(serial = %meta.serial, not_after = %meta.not_after, "the CA service's TLS certificate was renewed and swapped in");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the renewed CA service certificate could not be used; trying again");
                    tokio::time::sleep(retry).await;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = retry.as_secs(), "renewing the CA service's TLS certificate failed; the current one stays in use");
                tokio::time::sleep(retry).await;
            }
        }
    }
}
