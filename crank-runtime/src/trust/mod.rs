//! Trust that can change while connections are served: the CA certificates a process
//! verifies peers against, and the CA's revocation list. Verifiers built from a
//! [`TrustStore`] read the current trust and CRL at every handshake, so a CA root
//! rollover or a revocation reaches the server and the mTLS client without rebuilding
//! either.
//!
//! **The trust set** is what a worker keeps in `ca.crt`: self-signed roots (one, or two
//! during a root rollover) and, in intermediate mode, the intermediate(s) the trust
//! domain publishes. A peer's chain must verify to a root; when the set publishes
//! intermediates, the peer's certificate must also be issued directly by one of them, so
//! another CA under the same (enterprise) root cannot mint this trust domain's
//! identities. Cross-certificates in a CA's bundle (a root vouching for the next one
//! during a rollover, see [`accept_trust_update`]) are not part of the set.
//!
//! **Revocation** is checked for the peer's leaf certificate. A leaf whose issuer has no
//! CRL here is accepted, and a CRL past its nextUpdate is still applied, unless the store
//! is in fail-closed mode ([`CrlMode::FailClosed`]), where both are refused. A leaf listed
//! in the CRL is refused in the handshake, and [`TrustStore::changes`] tells open
//! connections to look again ([`TrustStore::is_revoked`]).
//!
//! A resumed TLS session skips certificate verification, so the store also owns the TLS
//! session caches of the configs built from it, and empties them whenever the trust or
//! the CRL change: a peer revoked after its session was cached must do a full
//! handshake, and is refused there.

mod certs;
mod mode;
mod sessions;
mod update;
mod verify;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio::sync::watch;

use self::certs::revocation_key;
pub use self::certs::trust_set;
pub use self::mode::CrlMode;
use self::sessions::{ClientSessions, ServerSessions};
pub use self::update::accept_trust_update;
pub(crate) use self::verify::require_uri;
use self::verify::{FollowingClientVerifier, FollowingServerVerifier, RequireCaIdentity, Shared, Verifiers, build};

/// How many TLS sessions each cache keeps (rustls' default for servers).
const SESSION_CACHE_SIZE: usize = 256;

/// The CA certificates a process trusts, swappable at run time.
pub struct TrustStore {
    current: Shared,
    mode: CrlMode,
    server_sessions: Arc<ServerSessions>,
    client_sessions: Arc<ClientSessions>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("trust", &self.current.load().trust.len())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl TrustStore {
    /// Trusts `trust` (roots, and any intermediates a trust domain publishes; see the
    /// module docs), with no CRL yet, in [`CrlMode::Warn`].
    pub fn new(trust: &[CertificateDer<'static>]) -> Result<Arc<Self>, rustls::Error> {
        Self::with_mode(trust, CrlMode::Warn)
    }

    /// Trusts `trust`, treating missing or stale CRLs as `mode` says.
    pub fn with_mode(trust: &[CertificateDer<'static>], mode: CrlMode) -> Result<Arc<Self>, rustls::Error> {
        Ok(Arc::new(Self {
            current: Arc::new(ArcSwap::from_pointee(build(trust, Vec::new(), mode)?)),
            mode,
            server_sessions: Arc::new(ServerSessions(ArcSwap::new(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)))),
            client_sessions: Arc::new(ClientSessions(ArcSwap::from_pointee(ClientSessionMemoryCache::new(
                SESSION_CACHE_SIZE,
            )))),
            changes: watch::channel(0).0,
        }))
    }

    fn publish(&self, verifiers: Verifiers) {
        self.current.store(Arc::new(verifiers));
        // Sessions cached under the old trust must not be resumed under the new one.
        self.server_sessions.0.store(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE));
        self.client_sessions.0.store(Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE)));
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The session cache for servers built on this store (emptied on every trust change).
    pub fn server_session_storage(&self) -> Arc<dyn StoresServerSessions> {
        self.server_sessions.clone()
    }

    /// The session cache for clients built on this store (emptied on every trust change).
    pub fn client_session_storage(&self) -> Arc<dyn ClientSessionStore> {
        self.client_sessions.clone()
    }

    /// Replaces the trusted CA certificates for every later handshake (the CRLs stay).
    /// Cross-certificates in `trust` are ignored.
    pub fn set_roots(&self, trust: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let cur = self.current.load();
        if cur.trust.as_slice() != trust_set(trust).as_slice() {
            self.publish(build(trust, cur.crls.clone(), self.mode)?);
        }
        Ok(())
    }

    /// Replaces the revocation lists for every later handshake. Verify a CRL's
    /// signature before installing it (see [`crate::worker::verify_crl`]): a CRL
    /// that does not verify makes every handshake with its issuer's leaves fail.
    pub fn set_crls(&self, crls: Vec<CertificateRevocationListDer<'static>>) -> Result<(), rustls::Error> {
        let cur = self.current.load();
        if cur.crls != crls {
            self.publish(build(&cur.trust, crls, self.mode)?);
        }
        Ok(())
    }

    /// The revocation lists in use.
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.current.load().crls.clone()
    }

    /// The trusted CA certificates (the trust set: roots and published intermediates).
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().trust.clone()
    }

    /// How missing or stale CRLs are treated.
    pub fn crl_mode(&self) -> CrlMode {
        self.mode
    }

    /// Whether the CRLs in use list `leaf` (by its issuer and serial).
    pub fn is_revoked(&self, leaf: &CertificateDer<'_>) -> bool {
        let cur = self.current.load();
        !cur.revoked.is_empty() && revocation_key(leaf).is_some_and(|k| cur.revoked.contains(&k))
    }

    /// Changes whenever the trust or the CRLs change; open connections watch it and look
    /// again at their peer ([`TrustStore::is_revoked`]).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A server-certificate verifier (for clients) that follows this store.
    pub fn server_verifier(self: &Arc<Self>) -> Arc<dyn ServerCertVerifier> {
        Arc::new(FollowingServerVerifier { current: self.current.clone(), ca: false })
    }

    /// A server-certificate verifier that follows this store and accepts only the CA
    /// service of `trust_domain`: its certificate must carry exactly the URI SAN
    /// `spiffe://<trust_domain>/ca`, which no worker certificate can. Every CA client
    /// uses it. A missing or stale CRL never refuses the CA (even in fail-closed mode: a
    /// current CRL comes from it).
    pub fn ca_verifier(
        self: &Arc<Self>,
        trust_domain: &crank_security_core::TrustDomain,
    ) -> Arc<dyn ServerCertVerifier> {
        let inner = Arc::new(FollowingServerVerifier { current: self.current.clone(), ca: true });
        Arc::new(RequireCaIdentity { inner, expected: trust_domain.ca_spiffe_id() })
    }

    /// A client-certificate verifier (for servers) that follows this store;
    /// `mandatory` refuses clients without a certificate.
    pub fn client_verifier(self: &Arc<Self>, mandatory: bool) -> Arc<dyn ClientCertVerifier> {
        Arc::new(FollowingClientVerifier { current: self.current.clone(), mandatory })
    }
}
