//! The join-token key on disk, and its rotation by age.
//!
//! ```text
//!  token.key (0600)  the key `crank token create` signs with; `kid` = key_id(its public key)
//!  token.crt         its certificate from the signing key: purpose "join-token key",
//!                    notBefore = when the key was made (backdated BACKDATE),
//!                    notAfter  = notBefore + max age + the longest token + an hour
//!
//!  crank ca serve, every replica:
//!    start ──► token.crt missing or for another key? certify token.key now (its age starts)
//!          ──► publish token.crt in the store (every replica accepts the key's tokens)
//!    age ≥ --token-key-max-age ──► new key ──► certify ──► publish ──► write token.key,
//!          then token.crt (atomic) ──► sign with it; the old key's tokens stay accepted
//!          until its certificate ends (no token outlives it)
//! ```
//!
//! A replica that meets a token of a key it does not know looks the key up in the
//! store and accepts it only if the certificate verifies to the CA (see
//! [`TokenAuthority::learn`](crate::TokenAuthority::learn)): write access to the store
//! does not let anyone mint join tokens.

use std::time::Duration;

use crank_security_core::{CertMetadata, WorkerId, write_file_atomic};
use rcgen::{Issuer, KeyPair};
use time::OffsetDateTime;

use crate::authority::LocalCa;
use crate::error::SetupError;
use crate::files::{CaDir, first_cert, new_key};
use crate::token::TokenAuthority;
pub use crate::token_cert::{DEFAULT_TOKEN_KEY_MAX_AGE, MIN_TOKEN_KEY_MAX_AGE, TokenKey};
use crate::token_cert::{certificate_for, with_certificate};

/// Certifies `key` with the signing key of the CA in `dir`, as made now.
fn certify(dir: &CaDir, key: &KeyPair, max_age: Duration) -> Result<String, SetupError> {
    let signing_cert = first_cert(dir.signing_chain()?, dir.signing_cert_file())?;
    let issuer = Issuer::from_ca_cert_der(&signing_cert, CaDir::read_key(&dir.signing_key())?)
        .map_err(SetupError::certificate("reading the signing certificate"))?;
    let end = CertMetadata::from_der(&signing_cert)?.not_after;
    certificate_for(key, &dir.trust_domain()?, &issuer, Some(end), OffsetDateTime::now_utc(), max_age)
}

/// The key and certificate as they are in `dir`: the certificate must be for that key.
pub fn read(dir: &CaDir) -> Result<TokenKey, SetupError> {
    let key = CaDir::read_key(&dir.token_key())?;
    let pem = std::fs::read_to_string(dir.token_cert()).map_err(SetupError::io("reading", &dir.token_cert()))?;
    with_certificate(key, pem)
}

/// The key in `dir` with its certificate; a certificate that is missing or for another
/// key (a CA made before keys rotated, or a stop between the two writes of a rotation)
/// is issued anew, as if the key were made now. Writing it may fail (a read-only
/// directory): then it is kept in memory only, and said so.
pub fn load_or_certify(dir: &CaDir, max_age: Duration) -> Result<TokenKey, SetupError> {
    match read(dir) {
        Ok(k) => Ok(k),
        Err(why) => {
            let key = CaDir::read_key(&dir.token_key())?;
            tracing::warn!(reason = %why, "certifying the join-token key anew; its age counts from now");
            let pem = certify(dir, &key, max_age)?;
            if let Err(e) = write_file_atomic(&dir.token_cert(), pem.as_bytes(), 0o644) {
                tracing::warn!(error = %e, "could not write token.crt; the certificate is published in the store only");
            }
            with_certificate(key, pem)
        }
    }
}

/// A new key, certified, published in `ca`'s store, then written to `dir` (key, then
/// certificate, each atomically). Nothing is written if publishing fails.
pub async fn rotate(dir: &CaDir, ca: &LocalCa, max_age: Duration) -> Result<TokenKey, SetupError> {
    let key = new_key("the join-token key")?;
    let pem = certify(dir, &key, max_age)?;
    let next = with_certificate(key, pem)?;
    ca.store().publish_token_key(&next.kid, &next.certificate_pem).await.map_err(|e| SetupError::NotReady {
        message: format!("publishing the new join-token key in the store: {e}"),
        source: None,
    })?;
    write_file_atomic(&dir.token_key(), next.key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.token_cert(), next.certificate_pem.as_bytes(), 0o644)?;
    Ok(next)
}

/// Keeps the join-token key of `ca` younger than `max_age`, on this replica, until
/// `ca` is dropped: publishes the current key's certificate, then rotates whenever it
/// is due, switching `ca` to the new key without a restart. Failures are logged and
/// tried again.
pub async fn keep_fresh(dir: CaDir, weak: std::sync::Weak<LocalCa>, max_age: Duration) {
    let retry = (max_age / 10).clamp(MIN_TOKEN_KEY_MAX_AGE, Duration::from_secs(60));
    let mut current: Option<TokenKey> = None;
    loop {
        let Some(ca) = weak.upgrade() else { return };
        if current.is_none() {
            match load_or_certify(&dir, max_age) {
                Ok(k) => current = Some(k),
                Err(e) => tracing::warn!(error = %e, "the join-token key cannot be certified; it is not rotated"),
            }
        }
        let Some(key) = current.as_ref() else {
            drop(ca);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            continue;
        };
        if let Err(e) = ca.store().publish_token_key(&key.kid, &key.certificate_pem).await {
            tracing::warn!(error = %e, kid = %key.kid, "publishing the join-token key failed; trying again");
            drop(ca);
            tokio::time::sleep(retry).await;
            continue;
        }
        let wait = Duration::try_from(key.due(max_age) - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO);
        drop(ca);
        // Wakes at least hourly, so a clock that jumps is noticed.
        tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
        let Some(ca) = weak.upgrade() else { return };
        let Some(old) = current.as_ref().filter(|k| k.due(max_age) <= OffsetDateTime::now_utc()) else { continue };
        match rotate(&dir, &ca, max_age).await {
            Ok(next) => match ca.tokens().rotate_to(&next.key, old.not_after) {
                Ok(()) => {
                    tracing::info!(kid = %next.kid, retired_kid = %old.kid, old_tokens_until = %old.not_after, "the join-token key was rotated");
                    current = Some(next);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the new join-token key could not be used; trying again");
                    tokio::time::sleep(retry).await;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = retry.as_secs(), "rotating the join-token key failed; the current one stays in use");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// Creates a join token for `worker` with the token key of the CA in `dir` (what
/// `crank token create` does). A worker id that is one of the CA service's names is
/// refused.
pub fn create_token(
    dir: &CaDir,
    worker: &WorkerId,
    ttl: Duration,
    capabilities: Vec<String>,
) -> Result<String, SetupError> {
    dir.recover()?;
    let key = CaDir::read_key(&dir.token_key()).map_err(|e| {
        SetupError::not_ready(format!("is {} a CA directory made by `crank ca init`?", dir.dir.display())).because(e)
    })?;
    if dir.service_names().iter().any(|n| n == worker.as_str()) {
        return Err(SetupError::invalid(format!(
            "worker id {worker:?} is a name of the CA service itself; a worker may not carry the CA's names: choose another worker id"
        )));
    }
    // A token must not outlive its key's certificate: replicas stop accepting the key then.
    if let Ok(current) = read(dir)
        && let Ok(ttl) = time::Duration::try_from(ttl)
        && OffsetDateTime::now_utc() + ttl > current.not_after
    {
        return Err(SetupError::invalid(format!(
            "the join-token key in {} (kid {}) is retired: its certificate ended, or ends before this token would, at {}. Is this a stale copy of the CA directory? Create tokens with the directory of a running CA (`crank ca serve` rotates the key)",
            dir.dir.display(),
            current.kid,
            current.not_after
        )));
    }
    let authority = TokenAuthority::new(&key, dir.trust_domain()?, dir.pinned_fingerprint()?)?;
    authority.create(worker, ttl, capabilities)
}
