//! Who is on the other end: the identity and certificate a connection's handshake
//! verified, for handlers.

use std::net::SocketAddr;
use std::sync::Arc;

use crank_security_core::SpiffeId;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The identity of a peer, taken from its client certificate after rustls verified it.
/// Handlers take it as an argument (requests without a worker identity get 401), or
/// `Option<PeerIdentity>`; [`Connection`] has the rest of what the handshake established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Serial of the peer's certificate (hex, `:`-separated).
    pub serial: String,
    /// The peer's leaf certificate.
    pub certificate: CertificateDer<'static>,
}

impl PeerIdentity {
    /// Reads the identity from a verified leaf; `None` if it has no worker SPIFFE ID.
    pub fn from_verified_leaf(der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let spiffe_id = san.value.general_names.iter().find_map(|n| match n {
            GeneralName::URI(u) => SpiffeId::parse(u).ok(),
            _ => None,
        })?;
        Some(Self { spiffe_id, serial: cert.raw_serial_as_string(), certificate: der.clone().into_owned() })
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        self.spiffe_id.worker_id.as_str()
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerIdentity {
    type Rejection = crate::ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Connection::of(parts).and_then(|c| c.peer.clone()).ok_or_else(|| {
            crate::ApiError::unauthorized(
                "client_certificate_required",
                "this endpoint requires a client certificate issued by this CA with a worker SPIFFE ID",
            )
        })
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for PeerIdentity {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(Connection::of(parts).and_then(|c| c.peer.clone()))
    }
}

/// A request access policy allowed on a connection (whose caller does not change), and
/// under which policy and trust: the same request again is allowed again, with the same
/// rate limit, until either changes.
#[derive(Debug)]
pub(crate) struct Allowed {
    /// The access control that decided (its address).
    pub(crate) control: usize,
    pub(crate) stamp: (u64, u64),
    pub(crate) capability: Option<std::sync::Arc<str>>,
    pub(crate) method: axum::http::Method,
    pub(crate) path: String,
    pub(crate) route: Option<String>,
    pub(crate) rate_limit: Option<crank_security_core::RateLimit>,
}

impl Allowed {
    pub(crate) fn matches(
        &self,
        control: usize,
        stamp: (u64, u64),
        capability: Option<&std::sync::Arc<str>>,
        req: &axum::extract::Request,
    ) -> bool {
        self.control == control
            && self.stamp == stamp
            && self.capability.as_ref() == capability
            && self.method == *req.method()
            && self.path == req.uri().path()
            && self.route.as_deref()
                == req.extensions().get::<axum::extract::MatchedPath>().map(axum::extract::MatchedPath::as_str)
    }
}

/// What a connection's TLS handshake established, shared by every request on the
/// connection: a request extension, `Extension<Arc<Connection>>`.
#[derive(Debug)]
pub struct Connection {
    /// The peer's worker identity, if its certificate carries one.
    pub peer: Option<PeerIdentity>,
    /// The client certificate rustls verified (any identity, not only workers).
    pub certificate: Option<CertificateDer<'static>>,
    /// What capability access policy knows of the caller (a worker or an
    /// administrator), read once from the certificate.
    pub caller: Option<crank_security_core::Caller>,
    /// The peer's socket address.
    pub remote: SocketAddr,
    /// The last request on this connection that access policy allowed, with its
    /// decision: a keep-alive caller repeating it is answered without asking again
    /// (the access check).
    pub(crate) allowed: std::sync::Mutex<Option<Allowed>>,
}

impl Connection {
    /// What a handshake from `remote` established, from the client certificate rustls
    /// verified (if any): its worker identity and what access policy knows of it.
    /// The certificate is parsed once, for both.
    pub fn from_verified(certificate: Option<CertificateDer<'static>>, remote: SocketAddr) -> Self {
        let meta = certificate.as_ref().and_then(|c| crank_security_core::CertMetadata::from_der(c).ok());
        let peer = certificate.as_ref().zip(meta.as_ref()).and_then(|(der, m)| {
            Some(PeerIdentity { spiffe_id: m.spiffe()?, serial: m.serial.clone(), certificate: der.clone() })
        });
        let caller = meta.as_ref().and_then(crank_security_core::Caller::from_certificate);
        Self { peer, certificate, remote, caller, allowed: std::sync::Mutex::default() }
    }

    fn of(parts: &axum::http::request::Parts) -> Option<&Self> {
        parts.extensions.get::<Arc<Self>>().map(AsRef::as_ref)
    }
}
