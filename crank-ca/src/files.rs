//! The CA's data directory: keys, certificates and the embedded store.

use std::path::{Path, PathBuf};

use crank_security_core::{CertMetadata, TrustDomain, fingerprint_sha256, parse_pem_certs, write_file_atomic};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::error::SetupError;
use crate::key_cert::KeyPurpose;

/// Default SANs of the CA service's own TLS certificate (besides its SPIFFE ID).
pub const DEFAULT_CA_SANS: [&str; 4] = ["localhost", "127.0.0.1", "::1", "cert-authority"];

/// `localhost` and loopback addresses: names every service on a host answers to, so
/// workers may carry them too (they never identify the CA).
pub(crate) fn shared_local_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Validity of a new root: 10 years.
const ROOT_VALIDITY: Duration = Duration::days(3650);
/// Validity of the CA service's TLS certificate: 1 year.
/// How long the CA service's own TLS certificates are valid, unless `crank ca serve
/// --tls-validity` says otherwise.
pub const SERVER_VALIDITY: Duration = Duration::days(365);

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

    /// Finishes a change of the directory's files that a killed process left half done
    /// (a rollover step), so that what is read next is all of it or none of it. Every
    /// command that reads or changes the CA directory calls this first.
    pub fn recover(&self) -> Result<(), SetupError> {
        if self.dir.is_dir() {
            crank_security_core::FileChange::recover(&self.dir)?;
        }
        Ok(())
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
    /// The key JWT-SVIDs are signed with (see [`crate::jwt_svid`]).
    pub fn jwt_key(&self) -> PathBuf {
        self.dir.join("jwt.key")
    }
    /// The JWT-SVID key's certificate, issued by the signing key (see
    /// [`crate::key_rotation`]): its age and the proof replicas check.
    pub fn jwt_cert(&self) -> PathBuf {
        self.dir.join("jwt.crt")
    }
    /// The join-token key's certificate, issued by the signing key (see
    /// [`crate::key_rotation`]): its age and the proof replicas check.
    pub fn token_cert(&self) -> PathBuf {
        self.dir.join("token.crt")
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
    /// During a rollover, the cross-certificates by which the current and the next root
    /// vouch for each other.
    pub fn cross_certs_file(&self) -> PathBuf {
        self.dir.join("rollover-cross.crt")
    }
    /// The previous root after a rollover was activated.
    pub fn previous_root_cert(&self) -> PathBuf {
        self.dir.join("previous-root.crt")
    }
    /// When the current root started signing (after a rollover).
    pub fn activated_at_file(&self) -> PathBuf {
        self.dir.join("rollover-activated-at")
    }
    /// Intermediate mode: the CA's signing key (0600), made by `crank ca init --csr`.
    pub fn intermediate_key(&self) -> PathBuf {
        self.dir.join("intermediate.key")
    }
    /// Intermediate mode: the CSR for the enterprise root to sign.
    pub fn intermediate_csr(&self) -> PathBuf {
        self.dir.join("intermediate.csr")
    }
    /// Intermediate mode: the CA's certificate, then any intermediates between it and
    /// the enterprise root (installed by `crank ca import`).
    pub fn intermediate_cert(&self) -> PathBuf {
        self.dir.join("intermediate.crt")
    }
    /// Intermediate mode: the names of the CA service's TLS certificate, one a line
    /// (chosen at init, used at import).
    pub fn server_sans_file(&self) -> PathBuf {
        self.dir.join("server-sans")
    }

    /// Whether this CA is an intermediate under an external root (made with
    /// `crank ca init --csr`) rather than a root of its own.
    pub fn is_intermediate(&self) -> bool {
        self.intermediate_key().exists()
    }

    /// The key that signs leaves, CRLs and the CA service's certificate: `root.key`, or
    /// `intermediate.key` in intermediate mode.
    pub fn signing_key(&self) -> PathBuf {
        if self.is_intermediate() { self.intermediate_key() } else { self.root_key() }
    }

    /// The certificate of the signing key, then the intermediates above it up to (not
    /// including) the trust anchor: `[root]`, or the content of `intermediate.crt`.
    pub fn signing_chain(&self) -> Result<Vec<CertificateDer<'static>>, SetupError> {
        if !self.is_intermediate() {
            return Ok(vec![self.root_der()?]);
        }
        let p = self.intermediate_cert();
        let pem = std::fs::read(&p).map_err(|e| {
            SetupError::not_ready(format!(
                "reading {}: the intermediate certificate is not installed yet; have the enterprise root sign {} and run `crank ca import --dir {} --cert INTERMEDIATE.pem --chain ROOT.pem`",
                p.display(),
                self.intermediate_csr().display(),
                self.dir.display()
            ))
            .because(e)
        })?;
        Ok(parse_pem_certs("intermediate certificate", &pem)?)
    }

    /// The file that starts with the signing key's certificate: `root.crt`, or
    /// `intermediate.crt` in intermediate mode.
    pub(crate) fn signing_cert_file(&self) -> PathBuf {
        if self.is_intermediate() { self.intermediate_cert() } else { self.root_cert() }
    }

    /// The trust bundle the CA publishes, PEM: `trust-bundle.crt` during a rollover (both
    /// roots and the cross-certificates by which each vouches for the other), else
    /// `root.crt`; in intermediate mode followed by the CA's intermediate, through which
    /// alone peers of this trust domain are accepted.
    pub fn trust_bundle_pem(&self) -> Result<String, SetupError> {
        let p = if self.trust_bundle_file().exists() { self.trust_bundle_file() } else { self.root_cert() };
        let mut pem = std::fs::read_to_string(&p).map_err(SetupError::io("reading", &p))?;
        if self.is_intermediate() {
            pem.push_str(&crank_security_core::cert_pem(&self.pinned_der()?));
        }
        Ok(pem)
    }

    /// The CA's own policy directory, `policies/` (made by `crank ca init`).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }

    /// The embedded store.
    pub fn store(&self) -> PathBuf {
        self.dir.join("ca.db")
    }

    /// Whether a CA exists here.
    pub fn exists(&self) -> bool {
        self.root_key().exists() || self.root_cert().exists() || self.intermediate_key().exists()
    }

    /// The trust domain recorded at init.
    pub fn trust_domain(&self) -> Result<TrustDomain, SetupError> {
        let p = self.trust_domain_file();
        let s = std::fs::read_to_string(&p).map_err(|e| {
            SetupError::not_ready(format!("reading {}; is this a CA directory made by `crank ca init`?", p.display()))
                .because(e)
        })?;
        Ok(TrustDomain::new(s.trim())?)
    }

    /// The root certificate: the trust anchor (the enterprise root in intermediate mode).
    pub fn root_der(&self) -> Result<CertificateDer<'static>, SetupError> {
        let p = self.root_cert();
        let pem = std::fs::read(&p).map_err(|e| {
            let message = if self.is_intermediate() {
                format!(
                    "reading {}; this CA is an intermediate waiting for its certificate: run `crank ca import --dir {}` first",
                    p.display(),
                    self.dir.display()
                )
            } else {
                format!("reading {}; run `crank ca init --dir {}` first", p.display(), self.dir.display())
            };
            SetupError::not_ready(message).because(e)
        })?;
        first_cert(parse_pem_certs("root certificate", &pem)?, p)
    }

    /// SHA-256 fingerprint of the root.
    pub fn root_fingerprint(&self) -> Result<String, SetupError> {
        Ok(fingerprint_sha256(&self.root_der()?))
    }

    /// The certificate join tokens pin, which a worker requires in the CA's TLS chain on
    /// first contact: the root, or in intermediate mode the CA's own intermediate (the
    /// enterprise root also anchors other CAs, and none of them may pose as this one).
    pub fn pinned_der(&self) -> Result<CertificateDer<'static>, SetupError> {
        if !self.is_intermediate() {
            return self.root_der();
        }
        first_cert(self.signing_chain()?, self.signing_cert_file())
    }

    /// SHA-256 fingerprint of [`CaDir::pinned_der`] (the `ca_fp` of join tokens).
    pub fn pinned_fingerprint(&self) -> Result<String, SetupError> {
        Ok(fingerprint_sha256(&self.pinned_der()?))
    }

    /// The names of the CA service (DNS names and IP addresses of its TLS certificate,
    /// else those chosen at init). No worker may be issued one of them, except
    /// `localhost` and loopback addresses, which every service on a host shares and which
    /// never identify anyone: the CA is told apart by its SPIFFE ID.
    pub fn service_names(&self) -> Vec<String> {
        let from_cert = std::fs::read(self.server_cert())
            .ok()
            .and_then(|pem| parse_pem_certs("server certificate", &pem).ok())
            .and_then(|certs| certs.first().and_then(|c| CertMetadata::from_der(c).ok()))
            .map(|m| m.dns_sans.into_iter().chain(m.ip_sans).collect::<Vec<_>>());
        let names = from_cert.unwrap_or_else(|| match std::fs::read_to_string(self.server_sans_file()) {
            Ok(s) => s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
            Err(_) => server_sans(&[]),
        });
        names.into_iter().filter(|n| !shared_local_name(n)).map(|n| n.to_ascii_lowercase()).collect()
    }

    /// Gives the CA service a TLS certificate carrying its SPIFFE ID
    /// ([`TrustDomain::ca_spiffe_id`]) if the installed one lacks it (a CA directory made
    /// by an older release): the same names, signed by the signing key. Returns whether it
    /// reissued.
    pub fn ensure_service_identity(&self) -> Result<bool, SetupError> {
        let td = self.trust_domain()?;
        let server_cert = self.server_cert();
        let pem = std::fs::read(&server_cert).map_err(SetupError::io("reading", &server_cert))?;
        let chain = parse_pem_certs("server certificate", &pem)?;
        let leaf = chain.first().ok_or_else(|| SetupError::no_certificate(server_cert))?;
        let meta = CertMetadata::from_der(leaf)?;
        if meta.uri_sans == [td.ca_spiffe_id()] {
            return Ok(false);
        }
        self.reissue_service_certificate(SERVER_VALIDITY)?;
        Ok(true)
    }

    /// Issues the CA service a new TLS key and certificate, valid for `validity` (never
    /// past the signing certificate), with the names and chain of the installed one (or,
    /// if that cannot be read, the names chosen at init and the signing chain), signed by
    /// the signing key; installs both (the key 0600, each file written atomically) and
    /// returns (certificate chain PEM, key PEM). A crash between the two writes leaves a
    /// pair that does not match, which `crank ca serve` repairs the same way at start.
    pub fn reissue_service_certificate(&self, validity: Duration) -> Result<(String, String), SetupError> {
        let td = self.trust_domain()?;
        let installed = std::fs::read(self.server_cert())
            .ok()
            .and_then(|pem| parse_pem_certs("server certificate", &pem).ok())
            .filter(|chain| !chain.is_empty());
        let sans = match installed.as_ref().and_then(|c| c.first()).and_then(|c| CertMetadata::from_der(c).ok()) {
            Some(meta) => meta.dns_sans.into_iter().chain(meta.ip_sans).collect(),
            None => match std::fs::read_to_string(self.server_sans_file()) {
                Ok(s) => s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
                Err(_) => server_sans(&[]),
            },
        };
        let rest: Vec<CertificateDer<'static>> = match &installed {
            Some(chain) => chain.iter().skip(1).cloned().collect(),
            None => self.signing_chain()?,
        };
        let signing_cert = first_cert(self.signing_chain()?, self.signing_cert_file())?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&signing_cert, Self::read_key(&self.signing_key())?)
            .map_err(SetupError::certificate("reading the signing certificate"))?;
        let issuer_end = CertMetadata::from_der(&signing_cert)?.not_after;
        let (key, cert) =
            server_certificate(&sans, &td, &issuer, OffsetDateTime::now_utc(), Some(issuer_end), validity)?;
        let mut pem = cert.pem();
        for c in &rest {
            pem.push_str(&crank_security_core::cert_pem(c));
        }
        let key_pem = key.serialize_pem();
        write_file_atomic(&self.server_key(), key_pem.as_bytes(), 0o600)?;
        write_file_atomic(&self.server_cert(), pem.as_bytes(), 0o644)?;
        Ok((pem, key_pem))
    }

    /// Reads a PEM key file.
    pub fn read_key(path: &Path) -> Result<KeyPair, SetupError> {
        let pem = std::fs::read_to_string(path).map_err(SetupError::io("reading", path))?;
        KeyPair::from_pem(&pem).map_err(SetupError::certificate(format!("parsing key {}", path.display())))
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
pub fn init_ca(dir: &CaDir, opts: &InitOptions) -> Result<(), SetupError> {
    make_room(dir, opts.force)?;
    let now = OffsetDateTime::now_utc();
    let root_key = new_key("the root key")?;
    let root_params = root_params(&opts.trust_domain, now);
    let root = root_params.self_signed(&root_key).map_err(SetupError::certificate("self-signing the root"))?;
    let issuer = rcgen::Issuer::new(root_params, &root_key);

    let sans = server_sans(&opts.extra_sans);
    let (server_key, server) = server_certificate(&sans, &opts.trust_domain, &issuer, now, None, SERVER_VALIDITY)?;

    let token_key = new_key("the join-token key")?;

    write_file_atomic(&dir.root_key(), root_key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.root_cert(), root.pem().as_bytes(), 0o644)?;
    write_file_atomic(&dir.server_key(), server_key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.server_cert(), format!("{}{}", server.pem(), root.pem()).as_bytes(), 0o644)?;
    let token_cert = crate::key_cert::certificate_for(
        KeyPurpose::JoinToken,
        &token_key,
        &opts.trust_domain,
        &issuer,
        None,
        now,
        crate::key_cert::DEFAULT_TOKEN_KEY_MAX_AGE,
    )?;
    let jwt_key = new_key("the JWT-SVID key")?;
    let jwt_cert = crate::key_cert::certificate_for(
        KeyPurpose::JwtSvid,
        &jwt_key,
        &opts.trust_domain,
        &issuer,
        None,
        now,
        crate::key_cert::DEFAULT_JWT_KEY_MAX_AGE,
    )?;
    write_file_atomic(&dir.token_key(), token_key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.token_cert(), token_cert.as_bytes(), 0o644)?;
    write_file_atomic(&dir.jwt_key(), jwt_key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.jwt_cert(), jwt_cert.as_bytes(), 0o644)?;
    write_file_atomic(&dir.trust_domain_file(), format!("{}\n", opts.trust_domain).as_bytes(), 0o644)?;
    seed_policy_dir(dir)?;
    Ok(())
}

/// Creates the CA's policy directory (`<dir>/policies`) with the defaults as readable
/// Rego (`defaults.rego`, package `crank.defaults`), unless it exists. `crank ca serve`
/// uses it when no other is named; a `.rego` file copied into it changes decisions
/// within the reload interval.
pub(crate) fn seed_policy_dir(dir: &CaDir) -> Result<(), SetupError> {
    let policies = dir.policy_dir();
    if policies.exists() {
        return Ok(());
    }
    std::fs::create_dir(&policies).map_err(SetupError::io("creating", &policies))?;
    let defaults = policies.join("defaults.rego");
    write_file_atomic(&defaults, crank_policy::rego::DEFAULTS.as_bytes(), 0o644)?;
    Ok(())
}

/// Removes what an existing CA left in `dir` (for `--force`).
fn clear(dir: &CaDir) {
    for p in [
        dir.store(),
        dir.dir.join("ca.db-wal"),
        dir.dir.join("ca.db-shm"),
        dir.root_key(),
        dir.root_cert(),
        dir.server_key(),
        dir.server_cert(),
        dir.trust_bundle_file(),
        dir.next_root_key(),
        dir.next_root_cert(),
        dir.previous_root_cert(),
        dir.activated_at_file(),
        dir.cross_certs_file(),
        dir.intermediate_key(),
        dir.intermediate_csr(),
        dir.intermediate_cert(),
        dir.server_sans_file(),
        dir.token_cert(),
        dir.jwt_key(),
        dir.jwt_cert(),
    ] {
        let _ = std::fs::remove_file(p);
    }
}

/// Refuses to overwrite an existing CA without `force`; with it, clears the old one.
pub(crate) fn make_room(dir: &CaDir, force: bool) -> Result<(), SetupError> {
    if dir.exists() && !force {
        return Err(SetupError::AlreadyExists { dir: dir.dir.clone() });
    }
    if force {
        clear(dir);
    }
    Ok(())
}

/// The CA service's names: [`DEFAULT_CA_SANS`] plus `extra`.
pub(crate) fn server_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = DEFAULT_CA_SANS.iter().map(|s| (*s).to_owned()).collect();
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

/// A key and TLS server certificate for the CA service, signed by `issuer`.
pub(crate) fn server_certificate(
    sans: &[String],
    td: &TrustDomain,
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    now: OffsetDateTime,
    issuer_not_after: Option<OffsetDateTime>,
    validity: Duration,
) -> Result<(KeyPair, rcgen::Certificate), SetupError> {
    let server_key = new_key("the CA service's key")?;
    let mut sp = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "cert-authority");
    dn.push(DnType::OrganizationName, td.as_str());
    sp.distinguished_name = dn;
    sp.not_before = now - Duration::seconds(60);
    // Never beyond the issuer's own validity.
    sp.not_after = issuer_not_after.map_or(now + validity, |end| end.min(now + validity));
    sp.serial_number = Some(crate::serial::random_serial());
    sp.is_ca = IsCa::ExplicitNoCa;
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.use_authority_key_identifier_extension = true;
    // The CA's identity: a URI SAN no worker certificate can carry (workers get exactly
    // one, spiffe://<td>/worker/<id>), required by every CA client.
    let id = td.ca_spiffe_id();
    let id =
        id.as_str().try_into().map_err(SetupError::certificate(format!("the CA's SPIFFE ID {id} as a URI SAN")))?;
    let mut names = vec![SanType::URI(id)];
    for s in sans {
        names.push(san(s)?);
    }
    sp.subject_alt_names = names;
    let server =
        sp.signed_by(&server_key, issuer).map_err(SetupError::certificate("signing the CA service's certificate"))?;
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
    p.serial_number = Some(crate::serial::random_serial());
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

pub(crate) fn san(s: &str) -> Result<SanType, SetupError> {
    Ok(match s.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            s.try_into().map_err(|e| SetupError::invalid(format!("{s:?} is not a valid DNS name")).because(e))?,
        ),
    })
}

/// A new P-256 key; `what` names it if that fails.
pub(crate) fn new_key(what: &'static str) -> Result<KeyPair, SetupError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| SetupError::Certificate { message: format!("generating {what}"), source: Some(e.into()) })
}

/// The first certificate of `certs`, read from `file`.
pub(crate) fn first_cert(
    certs: Vec<CertificateDer<'static>>,
    file: PathBuf,
) -> Result<CertificateDer<'static>, SetupError> {
    certs.into_iter().next().ok_or_else(|| SetupError::no_certificate(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_says_what_to_run_and_keeps_the_cause() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::new(tmp.path());
        let e = dir.root_der().unwrap_err();
        assert!(matches!(e, SetupError::NotReady { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("run `crank ca init --dir {}` first", tmp.path().display())), "{e}");
        let cause = std::error::Error::source(&e).and_then(|c| c.downcast_ref::<std::io::Error>());
        assert_eq!(cause.map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound), "{e:?}");
    }

    #[test]
    fn init_refuses_to_overwrite_a_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::new(tmp.path().join("ca"));
        let opts = InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false };
        init_ca(&dir, &opts).unwrap();
        let e = init_ca(&dir, &opts).unwrap_err();
        assert!(matches!(e, SetupError::AlreadyExists { .. }), "{e:?}");
        assert!(e.to_string().contains("refusing to overwrite it (pass --force"), "{e}");
        init_ca(&dir, &InitOptions { force: true, ..opts }).unwrap();
    }
}
