//! The CA's data directory: keys, certificates and the embedded store.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use crank_security_core::{TrustDomain, fingerprint_sha256, parse_pem_certs, write_file_atomic};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

/// Default SANs of the CA service's own TLS certificate.
pub const DEFAULT_CA_SANS: [&str; 4] = ["localhost", "127.0.0.1", "::1", "cert-authority"];

/// Validity of a new root: 10 years.
const ROOT_VALIDITY: Duration = Duration::days(3650);
/// Validity of the CA service's TLS certificate: 1 year.
const SERVER_VALIDITY: Duration = Duration::days(365);

/// Paths inside a CA directory.
#[derive(Debug, Clone)]
pub struct CaDir {
    /// The directory.
    pub dir: PathBuf,
}

impl CaDir {
    /// The CA directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// Root private key (0600).
    pub fn root_key(&self) -> PathBuf {
        self.dir.join("root.key")
    }
    /// Self-signed root certificate; this is the trust bundle.
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("root.crt")
    }
    /// The CA service's TLS key (0600).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// The CA service's TLS certificate chain (server, root).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    /// Join-token signing key (0600).
    pub fn token_key(&self) -> PathBuf {
        self.dir.join("token.key")
    }
    /// Trust domain of this CA.
    pub fn trust_domain_file(&self) -> PathBuf {
        self.dir.join("trust-domain")
    }
    /// The published trust bundle during a root rollover (all roots peers must trust);
    /// absent otherwise, when the bundle is `root.crt` alone.
    pub fn trust_bundle_file(&self) -> PathBuf {
        self.dir.join("trust-bundle.crt")
    }
    /// The next root's key during a rollover (0600).
    pub fn next_root_key(&self) -> PathBuf {
        self.dir.join("next-root.key")
    }
    /// The next root during a rollover.
    pub fn next_root_cert(&self) -> PathBuf {
        self.dir.join("next-root.crt")
    }
    /// The previous root after a rollover was activated.
    pub fn previous_root_cert(&self) -> PathBuf {
        self.dir.join("previous-root.crt")
    }
    /// When the current root started signing (after a rollover).
    pub fn activated_at_file(&self) -> PathBuf {
        self.dir.join("rollover-activated-at")
    }

    /// The trust bundle peers must trust, PEM: `trust-bundle.crt` during a rollover,
    /// else `root.crt`.
    pub fn trust_bundle_pem(&self) -> anyhow::Result<String> {
        let p = if self.trust_bundle_file().exists() { self.trust_bundle_file() } else { self.root_cert() };
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// The embedded store.
    pub fn store(&self) -> PathBuf {
        self.dir.join("ca.db")
    }

    /// Whether a CA exists here.
    pub fn exists(&self) -> bool {
        self.root_key().exists() || self.root_cert().exists()
    }

    /// The trust domain recorded at init.
    pub fn trust_domain(&self) -> anyhow::Result<TrustDomain> {
        let p = self.trust_domain_file();
        let s = std::fs::read_to_string(&p)
            .with_context(|| format!("reading {}; is this a CA directory made by `crank ca init`?", p.display()))?;
        Ok(TrustDomain::new(s.trim())?)
    }

    /// The root certificate.
    pub fn root_der(&self) -> anyhow::Result<CertificateDer<'static>> {
        let p = self.root_cert();
        let pem = std::fs::read(&p).with_context(|| {
            format!("reading {}; run `crank ca init --dir {}` first", p.display(), self.dir.display())
        })?;
        let mut certs = parse_pem_certs("root certificate", &pem)?;
        Ok(certs.remove(0))
    }

    /// SHA-256 fingerprint of the root.
    pub fn root_fingerprint(&self) -> anyhow::Result<String> {
        Ok(fingerprint_sha256(&self.root_der()?))
    }

    /// Reads a PEM key file.
    pub fn read_key(path: &Path) -> anyhow::Result<KeyPair> {
        let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        KeyPair::from_pem(&pem).with_context(|| format!("parsing key {}", path.display()))
    }
}

/// Options of `crank ca init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Trust domain (default `crank.local`).
    pub trust_domain: TrustDomain,
    /// Extra SANs for the CA service's TLS certificate, added to [`DEFAULT_CA_SANS`].
    pub extra_sans: Vec<String>,
    /// Replace an existing CA.
    pub force: bool,
}

/// Creates the root key and certificate, the CA service's TLS certificate and the
/// join-token key. Refuses to overwrite an existing CA unless `force`.
pub fn init_ca(dir: &CaDir, opts: &InitOptions) -> anyhow::Result<()> {
    if dir.exists() && !opts.force {
        bail!(
            "a CA already exists in {}; refusing to overwrite it (pass --force to replace it, which invalidates every certificate it issued)",
            dir.dir.display()
        );
    }
    if opts.force {
        let _ = std::fs::remove_file(dir.store());
        let _ = std::fs::remove_file(dir.dir.join("ca.db-wal"));
        let _ = std::fs::remove_file(dir.dir.join("ca.db-shm"));
    }
    let now = OffsetDateTime::now_utc();
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let root_params = root_params(&opts.trust_domain, now);
    let root = root_params.self_signed(&root_key)?;
    let issuer = rcgen::Issuer::new(root_params, &root_key);

    let mut sans: Vec<String> = DEFAULT_CA_SANS.iter().map(|s| (*s).to_owned()).collect();
    sans.extend(opts.extra_sans.iter().cloned());
    sans.dedup();
    let (server_key, server) = server_certificate(&sans, &opts.trust_domain, &issuer, now)?;

    let token_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;

    write_file_atomic(&dir.root_key(), root_key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.root_cert(), root.pem().as_bytes(), 0o644)?;
    write_file_atomic(&dir.server_key(), server_key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.server_cert(), format!("{}{}", server.pem(), root.pem()).as_bytes(), 0o644)?;
    write_file_atomic(&dir.token_key(), token_key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.trust_domain_file(), format!("{}\n", opts.trust_domain).as_bytes(), 0o644)?;
    Ok(())
}

/// A key and TLS server certificate for the CA service, signed by `issuer`.
pub(crate) fn server_certificate(
    sans: &[String],
    td: &TrustDomain,
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    now: OffsetDateTime,
) -> anyhow::Result<(KeyPair, rcgen::Certificate)> {
    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut sp = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "cert-authority");
    dn.push(DnType::OrganizationName, td.as_str());
    sp.distinguished_name = dn;
    sp.not_before = now - Duration::seconds(60);
    sp.not_after = now + SERVER_VALIDITY;
    sp.serial_number = Some(crate::ca::authority::random_serial());
    sp.is_ca = IsCa::ExplicitNoCa;
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.use_authority_key_identifier_extension = true;
    sp.subject_alt_names = sans.iter().map(|s| san(s)).collect::<anyhow::Result<_>>()?;
    let server = sp.signed_by(&server_key, issuer)?;
    Ok((server_key, server))
}

pub(crate) fn root_params(td: &TrustDomain, now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Crank Platform CA");
    dn.push(DnType::OrganizationName, td.as_str());
    p.distinguished_name = dn;
    p.not_before = now - Duration::seconds(60);
    p.not_after = now + ROOT_VALIDITY;
    p.serial_number = Some(crate::ca::authority::random_serial());
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

fn san(s: &str) -> anyhow::Result<SanType> {
    Ok(match s.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(s.try_into().with_context(|| format!("{s:?} is not a valid DNS name"))?),
    })
}
