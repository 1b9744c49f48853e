//! The join-token key on disk: reading it, and creating tokens with it. It rotates by
//! age like the JWT-SVID key ([`crate::key_rotation`]).

use std::time::Duration;

use crank_security_core::WorkerId;
use time::OffsetDateTime;

use crate::error::SetupError;
use crate::files::CaDir;
pub use crate::key_cert::{DEFAULT_TOKEN_KEY_MAX_AGE, MIN_KEY_MAX_AGE as MIN_TOKEN_KEY_MAX_AGE, TokenKey};
use crate::key_rotation::KeyPurpose;
use crate::token::TokenAuthority;

/// The join-token key and its certificate as they are in `dir`: the certificate must be
/// for that key.
pub fn read(dir: &CaDir) -> Result<TokenKey, SetupError> {
    crate::key_rotation::read(dir, KeyPurpose::JoinToken)
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
