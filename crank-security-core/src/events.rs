use std::fmt::{self, Debug};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::CertMetadata;

/// The ten certificate lifecycle events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    /// A key and CSR were generated locally.
    CsrGenerated,
    /// A CSR was sent to the CA.
    CsrSubmitted,
    /// A certificate was issued (CA side) or received and stored (worker side).
    CertIssued,
    /// A certificate was renewed before expiry.
    CertRenewed,
    /// The renewal warning threshold passed without a successful renewal.
    CertExpiringSoon,
    /// The certificate expired.
    CertExpired,
    /// The certificate was revoked.
    CertRevoked,
    /// A certificate or policy check failed.
    CertValidationFailed,
    /// A CSR was rejected or could not be completed.
    CsrFailed,
    /// The CA could not be reached.
    CaUnavailable,
    /// Policy refused a request (`can_access_capability`), or a caller went over its
    /// rate limit.
    AccessDenied,
}

impl EventKind {
    /// The event name as it appears in logs, e.g. `CERT_ISSUED`.
    pub fn name(self) -> &'static str {
        match self {
            Self::CsrGenerated => "CSR_GENERATED",
            Self::CsrSubmitted => "CSR_SUBMITTED",
            Self::CertIssued => "CERT_ISSUED",
            Self::CertRenewed => "CERT_RENEWED",
            Self::CertExpiringSoon => "CERT_EXPIRING_SOON",
            Self::CertExpired => "CERT_EXPIRED",
            Self::CertRevoked => "CERT_REVOKED",
            Self::CertValidationFailed => "CERT_VALIDATION_FAILED",
            Self::CsrFailed => "CSR_FAILED",
            Self::CaUnavailable => "CA_UNAVAILABLE",
            Self::AccessDenied => "ACCESS_DENIED",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An id that follows one operation across processes (worker, CA).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CorrelationId(String);

impl CorrelationId {
    /// The HTTP header that carries it.
    pub const HEADER: &'static str = "x-correlation-id";

    /// A fresh random id, `req_` followed by 32 hex digits.
    pub fn new() -> Self {
        Self(format!("req_{}", uuid::Uuid::new_v4().simple()))
    }

    /// Accepts an id from a peer if it is 1–128 printable ASCII characters without
    /// spaces; otherwise a fresh one is made (the peer's value is never trusted blindly).
    pub fn from_peer(value: &str) -> Self {
        let ok = !value.is_empty() && value.len() <= 128 && value.chars().all(|c| c.is_ascii_graphic());
        if ok { Self(value.to_owned()) } else { Self::new() }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The certificate fields every event carries when a certificate is involved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    /// Serial number (hex).
    pub serial: String,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Seconds remaining when the event was made.
    pub seconds_remaining: i64,
}

impl From<&CertMetadata> for CertSummary {
    fn from(m: &CertMetadata) -> Self {
        Self {
            serial: m.serial.clone(),
            subject: m.subject.clone(),
            issuer: m.issuer.clone(),
            expires_at: m.not_after,
            seconds_remaining: m.seconds_remaining_now(),
        }
    }
}

/// What went wrong, for failure events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorContext {
    /// The phase that failed (`csr`, `submit`, `policy`, `store`, ...).
    pub phase: String,
    /// The error message.
    pub message: String,
    /// The CA URL involved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_url: Option<String>,
    /// The HTTP status the CA answered with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Attempt number, for retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// One certificate lifecycle event.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateEvent {
    /// Which event.
    pub event: EventKind,
    /// Correlation id of the operation.
    pub correlation_id: CorrelationId,
    /// The worker concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// When it happened (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// The certificate involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_metadata: Option<CertSummary>,
    /// The failure, for failure events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorContext>,
    /// Further event-specific fields (SANs, CA URL, ...).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl CertificateEvent {
    /// A new event stamped now.
    pub fn new(event: EventKind, correlation_id: &CorrelationId) -> Self {
        Self {
            event,
            correlation_id: correlation_id.clone(),
            worker_id: None,
            timestamp: OffsetDateTime::now_utc(),
            cert_metadata: None,
            error: None,
            details: serde_json::Map::new(),
        }
    }

    /// Sets the worker id.
    pub fn worker(mut self, worker_id: impl ToString) -> Self {
        self.worker_id = Some(worker_id.to_string());
        self
    }

    /// Sets the certificate metadata.
    pub fn cert(mut self, meta: &CertMetadata) -> Self {
        self.cert_metadata = Some(meta.into());
        self
    }

    /// Sets the error context.
    pub fn error(mut self, phase: &str, message: impl ToString) -> Self {
        self.error = Some(ErrorContext { phase: phase.into(), message: message.to_string(), ..Default::default() });
        self
    }

    /// Adds a detail field.
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// The event as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Receives every certificate lifecycle event. Implementations must be cheap and must
/// not block: they are called on issuance and handshake paths.
pub trait EventSink: Debug + Send + Sync {
    /// Handles one event.
    fn emit(&self, event: &CertificateEvent);
}

/// The default sink: one structured `tracing` record per event, target `crank::events`,
/// with the whole event as a JSON string in the `event_json` field. Failures log at
/// WARN, `CERT_EXPIRED` at ERROR (critical), everything else at INFO.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLogSink;

impl EventSink for JsonLogSink {
    fn emit(&self, event: &CertificateEvent) {
        let json = event.to_json().to_string();
        let name = event.event.name();
        let cid = event.correlation_id.as_str();
        let worker = event.worker_id.as_deref().unwrap_or("");
        match event.event {
            EventKind::CertExpired => {
                tracing::error!(target: "crank::events", event = name, correlation_id = cid, worker_id = worker, severity = "critical", event_json = %json, "{name}");
            }
            EventKind::CsrFailed
            | EventKind::AccessDenied
            | EventKind::CaUnavailable
            | EventKind::CertValidationFailed
            | EventKind::CertRevoked
            | EventKind::CertExpiringSoon => {
                tracing::warn!(target: "crank::events", event = name, correlation_id = cid, worker_id = worker, event_json = %json, "{name}");
            }
            _ => {
                tracing::info!(target: "crank::events", event = name, correlation_id = cid, worker_id = worker, event_json = %json, "{name}");
            }
        }
    }
}

/// Discards every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _event: &CertificateEvent) {}
}

/// A registry of sinks: every event goes to each registered sink, in order.
/// Starts with [`JsonLogSink`] when made by `Default`.
#[derive(Debug, Clone)]
pub struct EventSinks {
    sinks: Arc<RwLock<Vec<Arc<dyn EventSink>>>>,
}

impl EventSinks {
    /// A registry with no sinks.
    pub fn empty() -> Self {
        Self { sinks: Arc::new(RwLock::new(Vec::new())) }
    }

    /// Adds a sink; it receives every event emitted after this call.
    pub fn register(&self, sink: Arc<dyn EventSink>) {
        if let Ok(mut sinks) = self.sinks.write() {
            sinks.push(sink);
        }
    }

    /// How many sinks are registered.
    pub fn len(&self) -> usize {
        self.sinks.read().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether no sink is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for EventSinks {
    fn default() -> Self {
        let sinks = Self::empty();
        sinks.register(Arc::new(JsonLogSink));
        sinks
    }
}

impl EventSink for EventSinks {
    fn emit(&self, event: &CertificateEvent) {
        let sinks = match self.sinks.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for sink in sinks {
            sink.emit(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    struct Collect(Mutex<Vec<EventKind>>);
    impl EventSink for Collect {
        fn emit(&self, e: &CertificateEvent) {
            self.0.lock().unwrap().push(e.event);
        }
    }

    #[test]
    fn fan_out_reaches_every_sink() {
        let sinks = EventSinks::empty();
        let (a, b) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
        sinks.register(a.clone());
        sinks.register(b.clone());
        let cid = CorrelationId::new();
        sinks.emit(&CertificateEvent::new(EventKind::CsrGenerated, &cid).worker("w"));
        assert_eq!(*a.0.lock().unwrap(), vec![EventKind::CsrGenerated]);
        assert_eq!(*b.0.lock().unwrap(), vec![EventKind::CsrGenerated]);
    }

    #[test]
    fn json_has_the_reference_field_names() {
        let cid = CorrelationId::from_peer("req_abc123");
        let e = CertificateEvent::new(EventKind::CsrFailed, &cid).worker("w-1").error("submit", "refused");
        let j = e.to_json();
        assert_eq!(j["event"], "CSR_FAILED");
        assert_eq!(j["correlation_id"], "req_abc123");
        assert_eq!(j["worker_id"], "w-1");
        assert_eq!(j["error"]["phase"], "submit");
        assert!(j["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_ne!(CorrelationId::from_peer("bad id with spaces").as_str(), "bad id with spaces");
    }
}
