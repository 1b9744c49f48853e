//! What the servers count about connections.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::admission::Refusal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The connection metrics of one server: open connections, connections refused past the
/// limits and ended, by reason, and failed accepts. [`Metrics::connections`](crate::metrics::Metrics::connections) gives the
/// registered ones; [`Default`] makes a set registered nowhere.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    open: Gauge,
    refused: Family<ReasonLabels, Counter>,
    closed: Family<ReasonLabels, Counter>,
    accept_errors: Counter,
}

impl ConnectionMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register("crank_connections_open", "TLS connections open", self.open.clone());
        registry.register(
            "crank_connections_refused",
            "New connections closed at once past a connection limit",
            self.refused.clone(),
        );
        registry.register("crank_connections_closed", "Connections ended, by reason", self.closed.clone());
        registry.register("crank_connection_accept_errors", "Failed accepts", self.accept_errors.clone());
    }

    pub(crate) fn opened(&self) {
        self.open.inc();
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.open.dec();
        self.closed.get_or_create(&ReasonLabels { reason: reason.label() }).inc();
    }

    pub(crate) fn refused(&self, reason: Refusal) {
        self.refused.get_or_create(&ReasonLabels { reason: reason.label() }).inc();
    }

    pub(crate) fn accept_error(&self) {
        self.accept_errors.inc();
    }
}

/// Why a connection ended: the `reason` label of `crank_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The TLS handshake took longer than `handshake_timeout`.
    HandshakeTimeout,
    /// The TLS handshake failed (plaintext, no or a refused client certificate, ...).
    HandshakeFailed,
    /// HTTP/1.1: a request header took longer than `header_read_timeout`.
    HeaderTimeout,
    /// HTTP/2: a keep-alive ping went unanswered.
    KeepAliveTimeout,
    /// No request for `idle_timeout`.
    IdleTimeout,
    /// Open for `max_connection_age`.
    MaxAge,
    /// The server shut down.
    Shutdown,
    /// Ended without an error: the client closed it, or hyper closed an idle HTTP/1.1
    /// connection at the header-read timeout.
    Closed,
    /// An I/O or protocol error.
    Error,
    /// The peer's certificate was revoked (a new CRL lists it).
    Revoked,
}

impl CloseReason {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HandshakeFailed => "handshake_failed",
            Self::HeaderTimeout => "header_timeout",
            Self::KeepAliveTimeout => "keepalive_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::MaxAge => "max_age",
            Self::Shutdown => "shutdown",
            Self::Closed => "closed",
            Self::Error => "error",
            Self::Revoked => "revoked",
        }
    }
}
