//! The input documents the validity and revocation hooks receive in every engine but
//! the built-in one, and the check of a validity answer.

use std::time::Duration;

use crank_security_core::PolicyError;

/// Input of `certificate_validity_period`.
#[derive(serde::Serialize)]
pub(crate) struct ValidityInput<'a> {
    pub(crate) worker_id: &'a str,
    pub(crate) environment: &'a str,
}

/// Input of `revoke_certificate`.
#[derive(serde::Serialize)]
pub(crate) struct RevokeInput<'a> {
    pub(crate) worker_id: &'a str,
    pub(crate) reason: &'a str,
}

/// A validity answer in seconds; anything but a positive finite number is malformed.
pub(crate) fn validity(secs: f64, rule: &str) -> Result<Duration, PolicyError> {
    if !secs.is_finite() || secs <= 0.0 {
        return Err(PolicyError::MalformedOutput(format!("{rule} = {secs}: must be a positive number of seconds")));
    }
    Ok(Duration::from_secs_f64(secs))
}
