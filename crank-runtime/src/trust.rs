//! Trust that can change while connections are served: the CA roots a process
//! verifies peers against, and the CA's revocation list. Verifiers built from a
//! [`TrustStore`] read the current roots and CRL at every handshake, so a CA root
//! rollover or a revocation reaches the server and the mTLS client without rebuilding
//! either.
//!
//! Revocation is checked for the peer's leaf certificate. A leaf whose issuer has no CRL
//! here (before the first CRL arrives, or a leaf of the previous root during a
//! rollover) is accepted; a leaf listed in the CRL is refused in the handshake. A CRL
//! past its nextUpdate is still applied (a stale list is better than none).
//!
//! A resumed TLS session skips certificate verification, so the store also owns the TLS
//! session caches of the configs built from it, and empties them whenever the roots or
//! the CRL change: a peer revoked after its session was cached must do a full
//! handshake, and is refused there.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::DistinguishedName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
    WebPkiServerVerifier,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, NamedGroup, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};

use crate::tls::{provider, root_store};

struct Verifiers {
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    server: Arc<WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
}

/// How many TLS sessions each cache keeps (rustls' default for servers).
const SESSION_CACHE_SIZE: usize = 256;

/// The CA certificates a process trusts, swappable at run time.
pub struct TrustStore {
    current: ArcSwap<Verifiers>,
    server_sessions: Arc<ServerSessions>,
    client_sessions: Arc<ClientSessions>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore").field("roots", &self.current.load().roots.len()).finish()
    }
}

impl TrustStore {
    /// Trusts `roots`.
    pub fn new(roots: &[CertificateDer<'static>]) -> Result<Arc<Self>, rustls::Error> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(build(roots, Vec::new())?),
            server_sessions: Arc::new(ServerSessions(ArcSwap::new(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)))),
            client_sessions: Arc::new(ClientSessions(ArcSwap::from_pointee(ClientSessionMemoryCache::new(
                SESSION_CACHE_SIZE,
            )))),
        }))
    }

    fn publish(&self, verifiers: Verifiers) {
        self.current.store(Arc::new(verifiers));
        // Sessions cached under the old trust must not be resumed under the new one.
        self.server_sessions.0.store(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE));
        self.client_sessions.0.store(Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE)));
    }

    /// The session cache for servers built on this store (emptied on every trust change).
    pub fn server_session_storage(&self) -> Arc<dyn StoresServerSessions> {
        self.server_sessions.clone()
    }

    /// The session cache for clients built on this store (emptied on every trust change).
    pub fn client_session_storage(&self) -> Arc<dyn ClientSessionStore> {
        self.client_sessions.clone()
    }

    /// Replaces the trusted roots for every later handshake (the CRLs stay).
    pub fn set_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let cur = self.current.load();
        if cur.roots.as_slice() != roots {
            self.publish(build(roots, cur.crls.clone())?);
        }
        Ok(())
    }

    /// Replaces the revocation lists for every later handshake. Verify a CRL's
    /// signature before installing it (see [`crate::worker::crl::verify_crl`]): a CRL
    /// that does not verify makes every handshake with its issuer's leaves fail.
    pub fn set_crls(&self, crls: Vec<CertificateRevocationListDer<'static>>) -> Result<(), rustls::Error> {
        let cur = self.current.load();
        if cur.crls != crls {
            self.publish(build(&cur.roots, crls)?);
        }
        Ok(())
    }

    /// The revocation lists in use.
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.current.load().crls.clone()
    }

    /// The trusted roots.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().roots.clone()
    }

    /// A server-certificate verifier (for clients) that follows this store.
    pub fn server_verifier(self: &Arc<Self>) -> Arc<dyn ServerCertVerifier> {
        Arc::new(FollowingServerVerifier(self.clone()))
    }

    /// A client-certificate verifier (for servers) that follows this store;
    /// `mandatory` refuses clients without a certificate.
    pub fn client_verifier(self: &Arc<Self>, mandatory: bool) -> Arc<dyn ClientCertVerifier> {
        Arc::new(FollowingClientVerifier { store: self.clone(), mandatory })
    }
}

fn build(
    roots: &[CertificateDer<'static>],
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Verifiers, rustls::Error> {
    let store = root_store(roots)?;
    let server = WebPkiServerVerifier::builder_with_provider(store.clone(), provider())
        .with_crls(crls.clone())
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| rustls::Error::General(format!("server verifier: {e}")))?;
    let client = WebPkiClientVerifier::builder_with_provider(store, provider())
        .with_crls(crls.clone())
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
    Ok(Verifiers { roots: roots.to_vec(), crls, server, client })
}

#[derive(Debug)]
struct FollowingServerVerifier(Arc<TrustStore>);

impl ServerCertVerifier for FollowingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current.load().server.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current.load().server.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current.load().server.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current.load().server.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct FollowingClientVerifier {
    store: Arc<TrustStore>,
    mandatory: bool,
}

impl ClientCertVerifier for FollowingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The roots can change under us; send no hints (clients present their one
        // certificate regardless).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.store.current.load().client.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.store.current.load().client.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.store.current.load().client.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store.current.load().client.supported_verify_schemes()
    }
}

/// A server session cache that [`TrustStore`] replaces with an empty one on every trust
/// change.
#[derive(Debug)]
struct ServerSessions(ArcSwap<ServerSessionMemoryCache>);

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// A client session cache that [`TrustStore`] replaces with an empty one on every trust
/// change.
#[derive(Debug)]
struct ClientSessions(ArcSwap<ClientSessionMemoryCache>);

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.load().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.load().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.load().set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.load().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.load().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.0.load().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.0.load().take_tls13_ticket(server_name)
    }
}
