//! The runtime's errors: [`RuntimeError`] for a worker, [`ApiError`] for an HTTP answer.

use std::fmt;

use crate::BootstrapError;
use crate::api::{ErrorBody, ErrorDetail};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crank_security_core::ProviderError;

/// An HTTP error answer: a status and a JSON body saying what was wrong.
///
/// ```json
/// {"error": {"code": "token_reused", "message": "join token ... was already used"}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// A 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }

    /// A 401.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, code, message: message.into() }
    }

    /// A 403.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, code, message: message.into() }
    }

    /// A 404.
    pub fn not_found() -> Self {
        Self { status: StatusCode::NOT_FOUND, code: "not_found", message: "no such endpoint".into() }
    }

    /// A 404 naming what was not found.
    pub fn missing(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, code, message: message.into() }
    }

    /// A 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", message: message.into() }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::BadRequest(m) => Self::bad_request("bad_request", m),
            ProviderError::Unauthorized(m) => Self::unauthorized("unauthorized", m),
            ProviderError::PolicyDenied(m) => Self::forbidden("policy_denied", m),
            ProviderError::Revoked(m) => Self::forbidden("certificate_revoked", m),
            ProviderError::Unavailable(m) => Self::unavailable(m),
            ProviderError::Refused(m) => Self { status: StatusCode::BAD_GATEWAY, code: "upstream_refused", message: m },
            other => Self { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: other.to_string() },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message, capability: None } };
        (self.status, Json(body)).into_response()
    }
}

/// Errors of the worker runtime.
///
/// `Debug` shows the message and, below it, its causes (not the variant's fields): it is
/// what a worker's `fn main() -> Result<(), RuntimeError>` prints when it fails.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Configuration is not acceptable.
    #[error("{0}")]
    Config(String),
    /// No usable certificate and no way to get one.
    #[error("no usable certificate: {0}")]
    NoCertificate(String),
    /// Bootstrap failed.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// A core error (files, keys, bundle).
    #[error(transparent)]
    Core(#[from] crank_security_core::Error),
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The runtime's own I/O failed: starting its Tokio runtime, or serving.
    #[error("{action}")]
    Io {
        /// What failed.
        action: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

impl fmt::Debug for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut causes = std::iter::successors(std::error::Error::source(self), |e| e.source()).peekable();
        if causes.peek().is_some() {
            f.write_str("\n\nCaused by:")?;
            for cause in causes {
                write!(f, "\n    {cause}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_what_a_failing_main_prints() {
        let e = RuntimeError::Config("HELLO_WORLD_HTTPS_PORT=\"eighty\" is not a port number".into());
        assert_eq!(format!("{e:?}"), "HELLO_WORLD_HTTPS_PORT=\"eighty\" is not a port number");
        let e =
            RuntimeError::Io { action: "cannot start the Tokio runtime", source: std::io::Error::other("no threads") };
        assert_eq!(format!("{e:?}"), "cannot start the Tokio runtime\n\nCaused by:\n    no threads");
    }
}
