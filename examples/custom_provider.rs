//! A CA service whose leaves are signed by a provider of your own: the shape of a
//! provider for Vault PKI, ADCS or a cloud CA (see docs/providers.md). The CA service
//! keeps join tokens, policy and the ledger; the provider only signs what policy
//! decided, and the CA checks its answer before handing it out.
//!
//! Here the "enterprise PKI" is a small CA of its own kept in `DIR/team-ca.{key,crt}`;
//! replace the body of `sign` with a call to your PKI.
//!
//! ```sh
//! custom-provider --dir ./team --listen 127.0.0.1:9091
//! crank cert init --worker-id w1 --token "$(crank token create --dir ./team --worker-id w1)" \
//!     --ca-url https://127.0.0.1:9091 --cert-dir ./certs/w1
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use crank_ca::LocalCa;
use crank_ca::leaf_params;
use crank_ca::{CaDir, InitOptions, init_ca};
use crank_security_core::{CertificateProvider, ProviderError, SignRequest, TrustDomain, write_file_atomic};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The stand-in for your PKI: a CA key and certificate of its own.
struct TeamCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl std::fmt::Debug for TeamCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamCa").field("key", &"<redacted>").finish()
    }
}

impl TeamCa {
    /// Loads the team CA from `dir`, making it on first use (key 0600).
    fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let (key_path, cert_path) = (dir.join("team-ca.key"), dir.join("team-ca.crt"));
        if !key_path.exists() {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, "Team CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = p.self_signed(&key)?;
            write_file_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
        }
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)?;
        let root_pem = std::fs::read_to_string(&cert_path)?;
        let der = crank_security_core::parse_pem_certs("team CA", root_pem.as_bytes())?.remove(0);
        Ok(Self { issuer: Issuer::from_ca_cert_der(&der, key)?, root_pem })
    }
}

#[async_trait]
impl CertificateProvider for TeamCa {
    /// Sign exactly what the template says. A provider for a remote PKI maps the
    /// template onto that PKI's request instead (Vault `pki/sign/:role`: `csr`,
    /// `common_name`, `uri_sans`, `alt_names`, `ip_sans`, `ttl`) and returns its chain;
    /// an unreachable PKI is `Unavailable`, a refusal `Refused`.
    async fn sign(&self, request: SignRequest) -> Result<String, ProviderError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&request.csr_pem)
            .map_err(|e| ProviderError::BadRequest(format!("CSR: {e}")))?;
        let params = leaf_params(&request.template)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| ProviderError::Refused(format!("team CA: {e}")))?;
        Ok(cert.pem())
    }

    /// What peers trust for the certificates `sign` returns.
    async fn trust_bundle(&self) -> Result<String, ProviderError> {
        Ok(self.root_pem.clone())
    }

    fn name(&self) -> &str {
        "team-ca"
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    crank_runtime::logging::init();
    let dir = CaDir::new(arg("--dir").context("usage: custom-provider --dir DIR [--listen ADDR]")?);
    let listen: SocketAddr = arg("--listen").unwrap_or_else(|| "127.0.0.1:9091".into()).parse()?;
    if !dir.exists() {
        init_ca(&dir, &InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false })?;
    }
    let team = Arc::new(TeamCa::load_or_create(&dir.dir)?);
    tokio::runtime::Runtime::new()?.block_on(async {
        let ca = LocalCa::builder(dir.clone()).signer(team).build().await?;
        let server = crank_ca::server::bind_and_spawn(&dir, listen, ca).await?;
        println!("CA with the team-ca signer listening on https://{}", server.addr());
        crank_runtime::shutdown_signal().await;
        server.shutdown().await?;
        Ok(())
    })
}
