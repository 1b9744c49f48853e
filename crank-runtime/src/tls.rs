//! rustls configuration shared by the CA service, workers and clients, and what a
//! connection's handshake established ([`Connection`], [`PeerIdentity`]). Serving is in
//! [`serve_tls`](crate::serve_tls).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use crank_security_core::{SpiffeId, TrustDomain, fingerprint_sha256};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};

use crate::trust::TrustStore;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The crypto provider used everywhere (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The current certificate and key of a process, swappable at run time. Until one is
/// stored, handshakes fail rather than fall back to anything.
#[derive(Default)]
pub struct Credentials {
    current: ArcSwapOption<CertifiedKey>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("loaded", &self.current.load().is_some()).finish()
    }
}

impl Credentials {
    /// Credentials holding `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        let c = Self::default();
        c.current.store(Some(key));
        Arc::new(c)
    }

    /// Replaces the certificate used by new handshakes; open connections keep theirs.
    pub fn store(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
    }

    /// The certificate new handshakes use.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

/// A root store holding `roots`.
pub fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    Ok(Arc::new(store))
}

/// Whether a server lets clients resume TLS sessions (skipping the certificate
/// signature and verification of a full handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resumption {
    /// Sessions are cached (256 per server) and resumed; the cache is emptied whenever
    /// the trusted roots or the CRL change, so a revoked peer cannot resume. The default.
    #[default]
    On,
    /// Every connection does a full handshake (`CRANK_TLS_RESUMPTION=off`).
    Off,
}

impl std::str::FromStr for Resumption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => Ok(Self::On),
            "off" | "false" | "0" => Ok(Self::Off),
            other => Err(format!("{other:?} is not on or off")),
        }
    }
}

/// A server config whose client verification follows `trust` (a client certificate is
/// required when `mandatory`) and whose certificate follows `creds`: rotation, root
/// changes and revocations need no new config.
pub fn server_config(
    trust: &Arc<TrustStore>,
    mandatory: bool,
    creds: Arc<Credentials>,
    resumption: Resumption,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(trust.client_verifier(mandatory))
        .with_cert_resolver(creds);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    match resumption {
        Resumption::On => cfg.session_storage = trust.server_session_storage(),
        Resumption::Off => {
            cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            cfg.send_tls13_tickets = 0;
        }
    }
    Ok(Arc::new(cfg))
}

/// A client config that verifies servers against `roots` and presents `creds`.
pub fn mtls_client_config(
    roots: &[CertificateDer<'static>],
    creds: Arc<Credentials>,
) -> Result<ClientConfig, rustls::Error> {
    client_config(&TrustStore::new(roots)?, creds)
}

/// A client config whose server verification follows `trust` and which presents
/// whatever `creds` holds at handshake time.
/// Sessions are resumed from a cache that `trust` empties on every root or CRL change.
pub fn client_config(trust: &Arc<TrustStore>, creds: Arc<Credentials>) -> Result<ClientConfig, rustls::Error> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(trust.server_verifier())
        .with_client_cert_resolver(creds);
    cfg.resumption = rustls::client::Resumption::store(trust.client_session_storage());
    Ok(cfg)
}

/// A client config for talking to the CA service of `trust_domain`: it verifies the
/// server against `trust` and requires the CA's identity (`spiffe://<td>/ca`, which no
/// worker certificate carries), and presents `creds`. Renewal, CRL fetches and
/// revocation use it.
pub fn ca_client_config(
    trust: &Arc<TrustStore>,
    creds: Arc<Credentials>,
    trust_domain: &TrustDomain,
) -> Result<ClientConfig, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(trust.ca_verifier(trust_domain))
        .with_client_cert_resolver(creds))
}

/// A client config, without a client certificate, that accepts a server only if its
/// chain verifies to a CA certificate whose SHA-256 fingerprint is `fingerprint` and
/// which the server sent in its chain, and if it is the CA service of `trust_domain`
/// (`spiffe://<td>/ca`). This is how a worker pins the CA on first contact with the
/// fingerprint and trust domain carried by its join token.
pub fn pinned_client_config(fingerprint: &str, trust_domain: &TrustDomain) -> Result<ClientConfig, rustls::Error> {
    let verifier = Arc::new(PinnedRootVerifier {
        fingerprint: fingerprint.to_ascii_lowercase(),
        ca_identity: trust_domain.ca_spiffe_id(),
        provider: provider(),
    });
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Verifies a server with full WebPKI rules, using as the only trust anchor the CA
/// certificate in the server's chain whose fingerprint matches the pin, and requires
/// the CA's identity.
#[derive(Debug)]
struct PinnedRootVerifier {
    fingerprint: String,
    ca_identity: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(root) = intermediates.iter().find(|c| fingerprint_sha256(c) == self.fingerprint) else {
            return Err(rustls::Error::General(format!(
                "the CA did not present the root pinned by the join token (sha256 {})",
                self.fingerprint
            )));
        };
        let roots = root_store(&[root.clone().into_owned()])?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("server verifier: {e}")))?;
        let verified = inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        crate::trust::require_uri(end_entity, &self.ca_identity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

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

/// What a connection's TLS handshake established, shared by every request on the
/// connection: a request extension, `Extension<Arc<Connection>>`.
#[derive(Debug)]
pub struct Connection {
    /// The peer's worker identity, if its certificate carries one.
    pub peer: Option<PeerIdentity>,
    /// The client certificate rustls verified (any identity, not only workers).
    pub certificate: Option<CertificateDer<'static>>,
    /// The peer's socket address.
    pub remote: SocketAddr,
}

impl Connection {
    fn of(parts: &axum::http::request::Parts) -> Option<&Self> {
        parts.extensions.get::<Arc<Self>>().map(AsRef::as_ref)
    }
}
