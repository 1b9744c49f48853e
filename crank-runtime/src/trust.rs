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

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::DistinguishedName;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};

use crate::tls::{provider, root_store};

struct Verifiers {
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    server: Arc<WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
}

/// The CA certificates a process trusts, swappable at run time.
pub struct TrustStore {
    current: ArcSwap<Verifiers>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore").field("roots", &self.current.load().roots.len()).finish()
    }
}

impl TrustStore {
    /// Trusts `roots`.
    pub fn new(roots: &[CertificateDer<'static>]) -> Result<Arc<Self>, rustls::Error> {
        Ok(Arc::new(Self { current: ArcSwap::from_pointee(build(roots, Vec::new())?) }))
    }

    /// Replaces the trusted roots for every later handshake (the CRLs stay).
    pub fn set_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let cur = self.current.load();
        if cur.roots.as_slice() != roots {
            self.current.store(Arc::new(build(roots, cur.crls.clone())?));
        }
        Ok(())
    }

    /// Replaces the revocation lists for every later handshake. Verify a CRL's
    /// signature before installing it (see [`crate::worker::crl::verify_crl`]): a CRL
    /// that does not verify makes every handshake with its issuer's leaves fail.
    pub fn set_crls(&self, crls: Vec<CertificateRevocationListDer<'static>>) -> Result<(), rustls::Error> {
        let cur = self.current.load();
        if cur.crls != crls {
            self.current.store(Arc::new(build(&cur.roots, crls)?));
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
