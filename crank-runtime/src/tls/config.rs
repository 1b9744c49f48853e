//! rustls configurations: servers that require (or offer) client authentication, mTLS
//! clients, the CA client, and the pinned client of first contact.

use std::sync::Arc;

use crank_security_core::TrustDomain;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;

use super::credentials::Credentials;
use super::pinned::PinnedRootVerifier;
use crate::crypto::provider;
use crate::trust::TrustStore;

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
