//! First contact with the CA: the certificate a join token pins, and the CA's identity.

use std::sync::Arc;

use crank_security_core::fingerprint_sha256;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::crypto::root_store;

/// Verifies a server with full WebPKI rules, using as the only trust anchor the CA
/// certificate in the server's chain whose fingerprint matches the pin, and requires
/// the CA's identity.
#[derive(Debug)]
pub(super) struct PinnedRootVerifier {
    pub(super) fingerprint: String,
    pub(super) ca_identity: String,
    pub(super) provider: Arc<CryptoProvider>,
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
