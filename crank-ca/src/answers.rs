//! How the CA's handlers answer: errors as the API's JSON error body, the correlation id
//! of a request, and an issued certificate with its correlation id.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use crank_runtime::ApiError;
use crank_security_core::{CorrelationId, IssuedCertificate};

use crate::error::CaError;

/// The largest request body the CA reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The request's correlation id (a fresh one when it carries none or a bad one).
pub(crate) fn correlation(headers: &HeaderMap) -> CorrelationId {
    headers
        .get(CorrelationId::HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or_else(CorrelationId::new, CorrelationId::from_peer)
}

/// Maps a [`CaError`] to its HTTP status and JSON body.
pub(crate) fn api_error(e: CaError) -> ApiError {
    use axum::http::StatusCode as S;
    let (status, code, message) = match e {
        CaError::Invalid { code, message } => (S::BAD_REQUEST, code, message),
        CaError::Denied { code, message } => (S::FORBIDDEN, code, message),
        CaError::NotFound { code, message } => (S::NOT_FOUND, code, message),
        CaError::Unavailable(message) => (S::SERVICE_UNAVAILABLE, "unavailable", message),
        CaError::Failed { code, message } => (S::INTERNAL_SERVER_ERROR, code, message),
    };
    ApiError { status, code, message }
}

/// A body that is not the expected JSON (or too large, or not JSON at all), said so.
pub(crate) fn json_error(e: JsonRejection) -> ApiError {
    let mut err =
        ApiError::bad_request("invalid_body", format!("request body is not the expected JSON: {}", e.body_text()));
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        err.status = StatusCode::PAYLOAD_TOO_LARGE;
        err.code = "body_too_large";
        err.message = format!("request body is larger than {MAX_BODY_BYTES} bytes");
    } else if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        err.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        err.code = "unsupported_media_type";
        err.message = "send the body as JSON with Content-Type: application/json".into();
    }
    err
}

/// An issued certificate with the request's correlation id as a header.
pub(crate) type Issued = ([(header::HeaderName, HeaderValue); 1], Json<IssuedCertificate>);

/// The answer carrying `cert`.
pub(crate) fn issued(cid: &CorrelationId, cert: IssuedCertificate) -> Issued {
    let v = HeaderValue::from_str(cid.as_str()).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    ([(header::HeaderName::from_static(CorrelationId::HEADER), v)], Json(cert))
}
