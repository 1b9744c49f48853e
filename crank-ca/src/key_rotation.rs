//! The keys the CA rotates by age, on disk and in the store: the join-token key and the
//! JWT-SVID key.
//!
//! ```text
//!  token.key / jwt.key (0600)  the key; `kid` = key_id(its public key)
//!  token.crt / jwt.crt         its certificate from the signing key, with the key's own
//!                              purpose (an extended key usage the CA puts on nothing else):
//!                              notBefore = when the key was made (backdated BACKDATE),
//!                              notAfter  = notBefore + max age + prepublication
//!                                          + the longest thing it signs + an hour
//!
//!  crank ca serve, every replica, for each key:
//!    start ──► certificate missing or for another key? certify the key now (its age starts)
//!          ──► publish the certificate in the store (every replica accepts the key)
//!    age ≥ max age ──► new key ──► certify ──► publish
//!          ──► JWT-SVID key: wait its prepublication (a quarter of the max age, at most an
//!              hour) while every replica's JWT bundle, and so every agent and workload,
//!              learns it
//!          ──► write the key, then the certificate (atomic) ──► sign with it; what the
//!              old key signed stays accepted until its certificate ends
//! ```
//!
//! A replica accepts a key another replica published only if its certificate verifies
//! to the CA with the key's purpose: write access to the
//! store does not let anyone mint join tokens or JWT-SVIDs.

use std::path::PathBuf;
use std::time::Duration;

use crank_security_core::{CertMetadata, write_file_atomic};
use rcgen::{Issuer, KeyPair};
use time::OffsetDateTime;

use crate::authority::LocalCa;
use crate::error::SetupError;
use crate::files::{CaDir, first_cert, new_key};
pub use crate::key_cert::{CertifiedKey, KeyPurpose, MIN_KEY_MAX_AGE};
use crate::key_cert::{certificate_for, with_certificate};

/// The key file and the certificate file of `purpose` in `dir`.
fn paths(dir: &CaDir, purpose: KeyPurpose) -> (PathBuf, PathBuf) {
    match purpose {
        KeyPurpose::JoinToken => (dir.token_key(), dir.token_cert()),
        KeyPurpose::JwtSvid => (dir.jwt_key(), dir.jwt_cert()),
    }
}

/// Certifies `key` for `purpose` with the signing key of the CA in `dir`, as made now.
fn certify(dir: &CaDir, purpose: KeyPurpose, key: &KeyPair, max_age: Duration) -> Result<String, SetupError> {
    let signing_cert = first_cert(dir.signing_chain()?, dir.signing_cert_file())?;
    let issuer = Issuer::from_ca_cert_der(&signing_cert, CaDir::read_key(&dir.signing_key())?)
        .map_err(SetupError::certificate("reading the signing certificate"))?;
    let end = CertMetadata::from_der(&signing_cert)?.not_after;
    certificate_for(purpose, key, &dir.trust_domain()?, &issuer, Some(end), OffsetDateTime::now_utc(), max_age)
}

/// The `purpose` key and its certificate as they are in `dir`: the certificate must be
/// for that key.
pub fn read(dir: &CaDir, purpose: KeyPurpose) -> Result<CertifiedKey, SetupError> {
    let (key_path, cert_path) = paths(dir, purpose);
    let key = CaDir::read_key(&key_path)?;
    let pem = std::fs::read_to_string(&cert_path).map_err(SetupError::io("reading", &cert_path))?;
    with_certificate(purpose, key, pem)
}

/// The `purpose` key in `dir` with its certificate; a certificate that is missing or
/// for another key (a CA made before the key rotated, or a stop between the two writes
/// of a rotation) is issued anew, as if the key were made now. Writing it may fail (a
/// read-only directory): then it is kept in memory only, and said so.
pub fn load_or_certify(dir: &CaDir, purpose: KeyPurpose, max_age: Duration) -> Result<CertifiedKey, SetupError> {
    match read(dir, purpose) {
        Ok(k) => Ok(k),
        Err(why) => {
            let (key_path, cert_path) = paths(dir, purpose);
            let key = CaDir::read_key(&key_path)?;
            tracing::warn!(reason = %why, "certifying the {} anew; its age counts from now", purpose.what());
            let pem = certify(dir, purpose, &key, max_age)?;
            if let Err(e) = write_file_atomic(&cert_path, pem.as_bytes(), 0o644) {
                tracing::warn!(error = %e, path = %cert_path.display(), "could not write the {}'s certificate; it is published in the store only", purpose.what());
            }
            with_certificate(purpose, key, pem)
        }
    }
}

/// Publishes `key`'s certificate in `ca`'s store.
async fn publish(ca: &LocalCa, key: &CertifiedKey) -> Result<(), String> {
    let store = ca.store();
    let done = match key.purpose {
        KeyPurpose::JoinToken => store.publish_token_key(&key.kid, &key.certificate_pem).await,
        KeyPurpose::JwtSvid => store.publish_jwt_key(&key.kid, &key.certificate_pem).await,
    };
    done.map_err(|e| format!("publishing the {} {} in the store: {e}", key.purpose.what(), key.kid))
}

/// A new `purpose` key, certified and published in `ca`'s store (and, for the JWT-SVID
/// key, in this replica's JWT bundle). Nothing is written to `dir` yet.
async fn make_next(dir: &CaDir, ca: &LocalCa, purpose: KeyPurpose, max_age: Duration) -> Result<CertifiedKey, String> {
    let key = new_key(purpose.what()).map_err(|e| e.to_string())?;
    let pem = certify(dir, purpose, &key, max_age).map_err(|e| e.to_string())?;
    let next = with_certificate(purpose, key, pem).map_err(|e| e.to_string())?;
    publish(ca, &next).await?;
    if purpose == KeyPurpose::JwtSvid {
        ca.jwt().prepublish(&next).map_err(|e| e.to_string())?;
    }
    Ok(next)
}

/// Writes `next` to `dir` (key, then certificate, each atomically) and signs with it
/// from now on; what `old` signed stays accepted until its certificate ends.
fn switch_to(dir: &CaDir, ca: &LocalCa, next: &CertifiedKey, old: &CertifiedKey) -> Result<(), SetupError> {
    let (key_path, cert_path) = paths(dir, next.purpose);
    write_file_atomic(&key_path, next.key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&cert_path, next.certificate_pem.as_bytes(), 0o644)?;
    match next.purpose {
        KeyPurpose::JoinToken => ca.tokens().rotate_to(&next.key, old.not_after),
        KeyPurpose::JwtSvid => ca.jwt().rotate_to(next, old.not_after),
    }
}

/// Keeps the `purpose` key of `ca` younger than `max_age`, on this replica, until `ca`
/// is dropped: publishes the current key's certificate, then rotates whenever it is
/// due, switching `ca` to the new key without a restart. Failures are logged and tried
/// again.
pub async fn keep_fresh(dir: CaDir, weak: std::sync::Weak<LocalCa>, purpose: KeyPurpose, max_age: Duration) {
    let what = purpose.what();
    let retry = (max_age / 10).clamp(MIN_KEY_MAX_AGE, Duration::from_secs(60));
    let mut current: Option<CertifiedKey> = None;
    let mut next: Option<(CertifiedKey, OffsetDateTime)> = None;
    loop {
        let Some(ca) = weak.upgrade() else { return };
        if current.is_none() {
            match load_or_certify(&dir, purpose, max_age) {
                Ok(k) => current = Some(k),
                Err(e) => tracing::warn!(error = %e, "the {what} cannot be certified; it is not rotated"),
            }
        }
        let Some(key) = current.as_ref() else {
            drop(ca);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            continue;
        };
        if let Err(e) = publish(&ca, key).await {
            tracing::warn!(error = %e, "the {what} is not published yet; trying again");
            drop(ca);
            tokio::time::sleep(retry).await;
            continue;
        }
        let now = OffsetDateTime::now_utc();
        let wake = match &next {
            Some((_, signs_at)) => *signs_at,
            None => key.due(max_age),
        };
        let wait = Duration::try_from(wake - now).unwrap_or(Duration::ZERO);
        drop(ca);
        // Wakes at least hourly, so a clock that jumps is noticed.
        tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
        let Some(ca) = weak.upgrade() else { return };
        let now = OffsetDateTime::now_utc();
        let Some(old) = current.as_ref() else { continue };
        if next.is_none() && old.due(max_age) <= now {
            match make_next(&dir, &ca, purpose, max_age).await {
                Ok(k) => {
                    let signs_at = now + time::Duration::try_from(purpose.prepublish(max_age)).unwrap_or_default();
                    tracing::info!(kid = %k.kid, signs_at = %signs_at, "a new {what} is published");
                    next = Some((k, signs_at));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = retry.as_secs(), "rotating the {what} failed; the current one stays in use");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            }
        }
        let Some((k, signs_at)) = next.take() else { continue };
        if signs_at > now {
            next = Some((k, signs_at));
            continue;
        }
        match switch_to(&dir, &ca, &k, old) {
            Ok(()) => {
                tracing::info!(kid = %k.kid, retired_kid = %old.kid, retired_accepted_until = %old.not_after, "the {what} was rotated");
                current = Some(k);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the new {what} could not be used; trying again");
                next = Some((k, signs_at));
                tokio::time::sleep(retry).await;
            }
        }
    }
}
