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
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}
