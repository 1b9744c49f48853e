//! Verifying a peer against the trust set and CRLs in force: the verifiers rustls calls
//! at every handshake, each reading the current [`Verifiers`] (swapped by the store).

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::DistinguishedName;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::certs::{crl_entries, partition};
use super::mode::CrlMode;
use crate::crypto::{provider, root_store};

/// The verifiers in force, shared by a store and every verifier built from it.
pub(super) type Shared = Arc<ArcSwap<Verifiers>>;

/// What a peer's leaf is verified with: the roots, and the published intermediates that
/// must have issued it (when there are any).
#[derive(Debug)]
pub(super) struct Verifiers {
    pub(super) trust: Vec<CertificateDer<'static>>,
    pub(super) crls: Vec<CertificateRevocationListDer<'static>>,
    pub(super) server: Arc<WebPkiServerVerifier>,
    pub(super) client: Arc<dyn ClientCertVerifier>,
    pub(super) issued_by: Option<(Arc<WebPkiServerVerifier>, Arc<dyn ClientCertVerifier>)>,
    /// How the CA service is verified: as peers are, but a missing or stale CRL never
    /// refuses it (in fail-closed mode the CA is where a current CRL comes from).
    pub(super) ca: (Arc<WebPkiServerVerifier>, Option<Arc<WebPkiServerVerifier>>),
    /// (issuer name, serial) of every certificate the CRLs list.
    pub(super) revoked: HashSet<(Vec<u8>, Vec<u8>)>,
}

pub(super) fn build(
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

/// A server verifier that, after `inner` accepted the chain, requires the CA's identity.
#[derive(Debug)]
pub(super) struct RequireCaIdentity {
    pub(super) inner: Arc<dyn ServerCertVerifier>,
    pub(super) expected: String,
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
pub(super) struct FollowingServerVerifier {
    pub(super) current: Shared,
    /// Verifying the CA service (see `Verifiers::ca`).
    pub(super) ca: bool,
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
        let cur = self.current.load();
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
        self.current.load().server.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().server.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().server.supported_verify_schemes()
    }
}

#[derive(Debug)]
pub(super) struct FollowingClientVerifier {
    pub(super) current: Shared,
    pub(super) mandatory: bool,
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
        let cur = self.current.load();
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
        self.current.load().client.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().client.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().client.supported_verify_schemes()
    }
}
