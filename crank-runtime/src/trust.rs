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

use std::collections::HashSet;
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
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::tls::{provider, root_store};

/// What a peer's leaf is verified with: the roots, and the published intermediates that
/// must have issued it (when there are any).
struct Verifiers {
    trust: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    server: Arc<WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
    issued_by: Option<(Arc<WebPkiServerVerifier>, Arc<dyn ClientCertVerifier>)>,
    /// How the CA service is verified: as peers are, but a missing or stale CRL never
    /// refuses it (in fail-closed mode the CA is where a current CRL comes from).
    ca: (Arc<WebPkiServerVerifier>, Option<Arc<WebPkiServerVerifier>>),
    /// (issuer name, serial) of every certificate the CRLs list.
    revoked: HashSet<(Vec<u8>, Vec<u8>)>,
}

/// How many TLS sessions each cache keeps (rustls' default for servers).
const SESSION_CACHE_SIZE: usize = 256;

/// What a missing or stale CRL means for a peer's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrlMode {
    /// A peer whose issuer has no CRL here is accepted, and a CRL past its nextUpdate is
    /// still applied (a stale list is better than none). Staleness is reported (event,
    /// metric, readiness). The default.
    #[default]
    Warn,
    /// A peer is refused unless a CRL of its issuer is here and within its nextUpdate
    /// (`CRANK_CRL_MODE=fail-closed`). An unreachable CA then stops new connections
    /// once the CRL it last published expires (24 h after it was signed).
    FailClosed,
}

impl std::str::FromStr for CrlMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "warn" => Ok(Self::Warn),
            "fail-closed" | "fail_closed" | "failclosed" => Ok(Self::FailClosed),
            other => Err(format!("{other:?} is not warn or fail-closed")),
        }
    }
}

/// The CA certificates a process trusts, swappable at run time.
pub struct TrustStore {
    current: ArcSwap<Verifiers>,
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
            current: ArcSwap::from_pointee(build(trust, Vec::new(), mode)?),
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
    /// signature before installing it (see [`crate::worker::crl::verify_crl`]): a CRL
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
        Arc::new(FollowingServerVerifier { store: self.clone(), ca: false })
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
        let inner = Arc::new(FollowingServerVerifier { store: self.clone(), ca: true });
        Arc::new(RequireCaIdentity { inner, expected: trust_domain.ca_spiffe_id() })
    }

    /// A client-certificate verifier (for servers) that follows this store;
    /// `mandatory` refuses clients without a certificate.
    pub fn client_verifier(self: &Arc<Self>, mandatory: bool) -> Arc<dyn ClientCertVerifier> {
        Arc::new(FollowingClientVerifier { store: self.clone(), mandatory })
    }
}

/// (raw issuer name, serial octets) of a certificate, as a CRL entry names it.
fn revocation_key(leaf: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    Some((cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec()))
}

fn crl_entries(crls: &[CertificateRevocationListDer<'static>]) -> HashSet<(Vec<u8>, Vec<u8>)> {
    let mut out = HashSet::new();
    for der in crls {
        if let Ok((_, crl)) = CertificateRevocationList::from_der(der) {
            let issuer = crl.issuer().as_raw().to_vec();
            out.extend(crl.iter_revoked_certificates().map(|r| (issuer.clone(), r.raw_serial().to_vec())));
        }
    }
    out
}

fn parsed<'a>(der: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

fn self_signed(c: &X509Certificate<'_>) -> bool {
    c.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(None).is_ok()
}

fn is_ca(c: &X509Certificate<'_>) -> bool {
    c.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca)
}

/// Splits CA certificates into self-signed roots, and the others (intermediates a
/// trust domain publishes). Cross-certificates (a certificate for the subject and key of
/// a root of the same list, signed by another CA) and anything unparsable are dropped.
fn partition(certs: &[CertificateDer<'static>]) -> (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>) {
    let parsed: Vec<_> = certs.iter().filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| (d, c))).collect();
    let roots: Vec<_> = parsed.iter().filter(|(_, c)| self_signed(c)).collect();
    let is_cross = |c: &X509Certificate<'_>| {
        roots
            .iter()
            .any(|(_, r)| r.subject().as_raw() == c.subject().as_raw() && r.public_key().raw == c.public_key().raw)
    };
    let mut published = Vec::new();
    for (d, c) in &parsed {
        if !self_signed(c) && is_ca(c) && !is_cross(c) && !published.contains(*d) {
            published.push((*d).clone());
        }
    }
    let mut root_ders: Vec<CertificateDer<'static>> = Vec::new();
    for (d, _) in &roots {
        if !root_ders.contains(*d) {
            root_ders.push((*d).clone());
        }
    }
    (root_ders, published)
}

/// The trust set of `certs`: its roots, then the intermediates it publishes.
pub fn trust_set(certs: &[CertificateDer<'static>]) -> Vec<CertificateDer<'static>> {
    let (mut roots, published) = partition(certs);
    roots.extend(published);
    roots
}

fn build(
    trust: &[CertificateDer<'static>],
    crls: Vec<CertificateRevocationListDer<'static>>,
    mode: CrlMode,
) -> Result<Verifiers, rustls::Error> {
    let (roots, published) = partition(trust);
    if roots.is_empty() && published.is_empty() {
        return Err(rustls::Error::General("the trust bundle holds no CA certificate".into()));
    }
    // The intermediates alone when no root came with them (a worker that pinned the
    // CA's intermediate and has not learned the enterprise root).
    let anchors = if roots.is_empty() { published.clone() } else { roots.clone() };
    let (server, client) = verifiers(&anchors, &crls, mode)?;
    let constrained = !(published.is_empty() || roots.is_empty());
    let issued_by = if constrained { Some(verifiers(&published, &crls, mode)?) } else { None };
    let ca = match mode {
        CrlMode::Warn => (server.clone(), issued_by.as_ref().map(|(s, _)| s.clone())),
        CrlMode::FailClosed => (
            verifiers(&anchors, &crls, CrlMode::Warn)?.0,
            if constrained { Some(verifiers(&published, &crls, CrlMode::Warn)?.0) } else { None },
        ),
    };
    let mut set = roots;
    set.extend(published);
    Ok(Verifiers { trust: set, revoked: crl_entries(&crls), crls, server, client, issued_by, ca })
}

fn verifiers(
    anchors: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
    mode: CrlMode,
) -> Result<(Arc<WebPkiServerVerifier>, Arc<dyn ClientCertVerifier>), rustls::Error> {
    let store = root_store(anchors)?;
    let mut server = WebPkiServerVerifier::builder_with_provider(store.clone(), provider())
        .with_crls(crls.to_vec())
        .only_check_end_entity_revocation();
    let mut client = WebPkiClientVerifier::builder_with_provider(store, provider())
        .with_crls(crls.to_vec())
        .only_check_end_entity_revocation()
        .allow_unauthenticated();
    match mode {
        CrlMode::Warn => {
            server = server.allow_unknown_revocation_status();
            client = client.allow_unknown_revocation_status();
        }
        CrlMode::FailClosed => {
            server = server.enforce_revocation_expiration();
            client = client.enforce_revocation_expiration();
        }
    }
    let server = server.build().map_err(|e| rustls::Error::General(format!("server verifier: {e}")))?;
    let client = client.build().map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
    Ok((server, client))
}

/// Decides what a CA's answer (its `ca_bundle`, and the chain of the certificate it
/// issued) may change in a worker's trust set `current`. Returns the new trust set.
///
/// - A root already in `current` stays if the bundle still has it; one the bundle no
///   longer lists is dropped (the end of a rollover).
/// - A new root is accepted only when the bundle also carries a cross-certificate for it
///   (its subject and key, CA:true, within validity) whose signature verifies with a root
///   already trusted: new roots arrive only through the rollover protocol. A new root
///   that the pinned intermediate of `current` chains to (its issuer, verified by
///   signature) is also accepted: it widens nothing, since peers must still come
///   through that intermediate. Any other new root refuses the whole answer.
/// - An intermediate the bundle publishes is accepted if a trusted CA certificate signed
///   it.
/// - The issued certificate must verify to the result, as a peer's handshake would: to
///   a CA certificate the worker trusted, or a root one of those vouches for.
pub fn accept_trust_update(
    current: &[CertificateDer<'static>],
    bundle: &[CertificateDer<'static>],
    issued_chain: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let (leaf, intermediates) = issued_chain.split_first().ok_or("the answer holds no certificate")?;
    let trusted: Vec<X509Certificate<'_>> = current.iter().filter_map(|d| parsed(d)).collect();
    let offered: Vec<(&CertificateDer<'static>, X509Certificate<'_>)> =
        bundle.iter().filter_map(|d| parsed(d).map(|c| (d, c))).collect();
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let valid_now = |c: &X509Certificate<'_>| {
        c.validity().not_before.timestamp() <= now_secs && now_secs <= c.validity().not_after.timestamp()
    };
    let signed_by_trusted = |c: &X509Certificate<'_>| {
        trusted
            .iter()
            .filter(|t| self_signed(t) || is_ca(t))
            .any(|t| t.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(Some(t.public_key())).is_ok())
    };
    // The trusted intermediates and, through the issued chain, every CA above them.
    let mut ancestors: Vec<&X509Certificate<'_>> = trusted.iter().filter(|t| !self_signed(t)).collect();
    let above: Vec<X509Certificate<'_>> = intermediates.iter().filter_map(|d| parsed(d)).collect();
    while let Some(next) = above.iter().find(|a| {
        !ancestors.iter().any(|x| x.subject().as_raw() == a.subject().as_raw())
            && ancestors.iter().any(|x| {
                x.issuer().as_raw() == a.subject().as_raw() && x.verify_signature(Some(a.public_key())).is_ok()
            })
    }) {
        ancestors.push(next);
    }
    let mut accepted = Vec::new();
    for (der, cert) in &offered {
        if current.contains(der) {
            accepted.push((*der).clone());
            continue;
        }
        if !is_ca(cert) {
            return Err(format!("the CA bundle holds {}, which is not a CA certificate", cert.subject()));
        }
        if self_signed(cert) {
            let vouched = offered.iter().any(|(_, x)| {
                !self_signed(x)
                    && is_ca(x)
                    && valid_now(x)
                    && x.subject().as_raw() == cert.subject().as_raw()
                    && x.public_key().raw == cert.public_key().raw
                    && signed_by_trusted(x)
            });
            let issuer_of_pinned = ancestors.iter().any(|t| {
                t.issuer().as_raw() == cert.subject().as_raw() && t.verify_signature(Some(cert.public_key())).is_ok()
            });
            if !(vouched || issuer_of_pinned) {
                return Err(format!(
                    "the CA bundle adds the root {} (sha256 {}) that no root this worker trusts vouches for; a new root is trusted only through the rollover protocol (a cross-certificate from a trusted root)",
                    cert.subject(),
                    crank_security_core::fingerprint_sha256(der)
                ));
            }
            accepted.push((*der).clone());
        } else if signed_by_trusted(cert) {
            accepted.push((*der).clone());
        }
        // Anything else (a cross-certificate, an intermediate no trusted root signed) is
        // not kept.
    }
    let accepted = trust_set(&accepted);
    verify_leaf(leaf, intermediates, &accepted, now).map_err(|e| {
        format!("the issued certificate does not verify to a CA certificate this worker trusts (or a root one of them vouches for): {e}")
    })?;
    Ok(accepted)
}

/// Verifies `leaf` to the trust set `trust` as a server verifies a client certificate
/// in the handshake (chain, validity, clientAuth, and issuance by a published
/// intermediate when the set has one).
fn verify_leaf(
    leaf: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    trust: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), String> {
    let v = build(trust, Vec::new(), CrlMode::Warn).map_err(|e| e.to_string())?;
    v.client.verify_client_cert(leaf, intermediates, now).map_err(|e| e.to_string())?;
    if let Some((_, client)) = &v.issued_by {
        client
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| format!("it is not issued by an intermediate the trust domain publishes: {e}"))?;
    }
    Ok(())
}

/// A server verifier that, after `inner` accepted the chain, requires the CA's identity.
#[derive(Debug)]
struct RequireCaIdentity {
    inner: Arc<dyn ServerCertVerifier>,
    expected: String,
}

impl ServerCertVerifier for RequireCaIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        require_uri(end_entity, &self.expected)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Refuses a (verified) server certificate whose URI SANs are not exactly `[expected]`.
pub(crate) fn require_uri(end_entity: &CertificateDer<'_>, expected: &str) -> Result<(), rustls::Error> {
    let uris: Vec<String> = X509Certificate::from_der(end_entity)
        .ok()
        .and_then(|(_, c)| c.subject_alternative_name().ok().flatten().map(|san| san.value.general_names.clone()))
        .unwrap_or_default()
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect();
    if uris == [expected] {
        return Ok(());
    }
    let msg = format!(
        "the server is not this trust domain's CA: its certificate carries the URI SANs {uris:?}, the CA's carries exactly {expected:?}"
    );
    Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(msg),
    )))))
}

#[derive(Debug)]
struct FollowingServerVerifier {
    store: Arc<TrustStore>,
    /// Verifying the CA service (see `Verifiers::ca`).
    ca: bool,
}

impl ServerCertVerifier for FollowingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cur = self.store.current.load();
        let (chain, issued_by) = if self.ca {
            (&cur.ca.0, cur.ca.1.as_ref())
        } else {
            (&cur.server, cur.issued_by.as_ref().map(|(s, _)| s))
        };
        let verified = chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if let Some(server) = issued_by {
            server.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.store.current.load().server.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.store.current.load().server.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store.current.load().server.supported_verify_schemes()
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
        let cur = self.store.current.load();
        let verified = cur.client.verify_client_cert(end_entity, intermediates, now)?;
        if let Some((_, client)) = &cur.issued_by {
            client.verify_client_cert(end_entity, intermediates, now)?;
        }
        Ok(verified)
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
