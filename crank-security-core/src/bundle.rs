use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::ownership::{Contents, read_checked};
use crate::{CertFiles, Error, SpiffeId};

/// How far the CA backdates `not_before` to absorb clock skew between machines: a host
/// whose clock is up to this much behind the CA's can use a certificate at once. The
/// documented bound on skew between a CA and its workers (docs/operations.md).
pub const CLOCK_SKEW_BACKDATE: time::Duration = time::Duration::minutes(15);

/// What a certificate says about itself, read with x509-parser.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertMetadata {
    /// Serial number, lowercase hex with `:` separators.
    pub serial: String,
    /// Subject distinguished name in RFC 4514 form.
    pub subject: String,
    /// Issuer distinguished name in RFC 4514 form.
    pub issuer: String,
    /// DNS subject alternative names.
    pub dns_sans: Vec<String>,
    /// IP address subject alternative names.
    pub ip_sans: Vec<String>,
    /// URI subject alternative names.
    pub uri_sans: Vec<String>,
    /// The SPIFFE ID, when a URI SAN holds a worker SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// SHA-256 fingerprint of the DER encoding, lowercase hex.
    pub fingerprint_sha256: String,
    /// Whether BasicConstraints says CA:true.
    pub is_ca: bool,
    /// The capabilities the CA granted (crank's capabilities extension,
    /// [`crate::CAPABILITIES_OID`]); empty when the certificate has none, or when the
    /// extension cannot be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

impl CertMetadata {
    /// Whether `now` is inside the validity window. A certificate not valid yet means
    /// the issuer's clock is ahead of this host's by more than [`CLOCK_SKEW_BACKDATE`]:
    /// the error says so.
    pub fn check_validity(&self, now: OffsetDateTime) -> Result<(), Error> {
        if now > self.not_after {
            return Err(Error::OutsideValidity(format!("expired at {}", rfc3339(self.not_after))));
        }
        if now < self.not_before {
            // Only a clock behind the issuer's by more than the backdate gets here.
            let ahead = (self.not_before - now).whole_seconds();
            return Err(Error::OutsideValidity(format!(
                "not valid before {}, {ahead} s ahead of this host's clock: the issuing CA's clock is ahead of this \
                 host's by more than the {} min it allows for (clock skew); synchronise the clocks (NTP)",
                rfc3339(self.not_before),
                CLOCK_SKEW_BACKDATE.whole_minutes(),
            )));
        }
        Ok(())
    }

    /// Reads the metadata of one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::parse("certificate", e))?;
        Ok(Self::from_parsed(der, &cert))
    }

    /// The metadata of `cert`, already parsed from `der` (saves a second parse).
    pub fn from_parsed(der: &[u8], cert: &X509Certificate<'_>) -> Self {
        let mut dns_sans = Vec::new();
        let mut ip_sans = Vec::new();
        let mut uri_sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                    GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                    GeneralName::IPAddress(bytes) => ip_sans.push(ip_to_string(bytes)),
                    _ => {}
                }
            }
        }
        let spiffe_id = uri_sans.iter().find(|u| SpiffeId::parse(u).is_ok()).cloned();
        let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
        let capabilities = cert
            .extensions()
            .iter()
            .find(|e| e.oid.iter().is_some_and(|arcs| arcs.eq(crate::CAPABILITIES_OID.iter().copied())))
            .and_then(|e| crate::parse_capabilities_extension(e.value).ok())
            .unwrap_or_default();
        Self {
            serial: cert.raw_serial_as_string(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            dns_sans,
            ip_sans,
            uri_sans,
            spiffe_id,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            fingerprint_sha256: fingerprint_sha256(der),
            is_ca,
            capabilities,
        }
    }

    /// Seconds until `not_after`, negative once expired.
    pub fn seconds_remaining(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_seconds()
    }

    /// Seconds remaining from the current system time.
    pub fn seconds_remaining_now(&self) -> i64 {
        self.seconds_remaining(OffsetDateTime::now_utc())
    }

    /// Total lifetime, `not_after - not_before`.
    pub fn lifetime(&self) -> time::Duration {
        self.not_after - self.not_before
    }

    /// When the certificate was issued: `not_before` plus the CA's clock-skew backdate
    /// ([`CLOCK_SKEW_BACKDATE`]) when the lifetime is longer than the backdate.
    pub fn issued_at(&self) -> OffsetDateTime {
        if self.lifetime() > CLOCK_SKEW_BACKDATE { self.not_before + CLOCK_SKEW_BACKDATE } else { self.not_before }
    }

    /// The validity the CA granted: `not_after - issued_at()`. Renewal timing is based on
    /// this, so the 60 s backdate does not make short certificates look older.
    pub fn granted_lifetime(&self) -> time::Duration {
        self.not_after - self.issued_at()
    }

    /// The parsed SPIFFE ID, if the certificate carries one.
    pub fn spiffe(&self) -> Option<SpiffeId> {
        self.spiffe_id.as_deref().and_then(|s| SpiffeId::parse(s).ok())
    }
}

fn ip_to_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => hex::encode(bytes),
    }
}

/// SHA-256 of a DER encoding, lowercase hex without separators.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// One certificate as a PEM `CERTIFICATE` block (64-column base64, trailing newline).
pub fn cert_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// A certificate revocation list as a PEM `X509 CRL` block.
pub fn crl_pem(der: &[u8]) -> String {
    pem_block("X509 CRL", der)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der.to_vec()), config)
}

/// Parses every `CERTIFICATE` block of a PEM text; an input without one is an error.
pub fn parse_pem_certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| Error::parse(what, e))?;
    if certs.is_empty() {
        return Err(Error::parse(what, "no PEM CERTIFICATE block found"));
    }
    Ok(certs)
}

/// The certificate chain of `client.crt`: at least one certificate, the leaf first.
fn parse_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    parse_pem_certs("certificate", pem)
}

/// The private key of `client.key`.
fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::parse("private key", e))
}

/// A worker's certificate chain, private key and trusted CA certificates.
///
/// `Debug` never prints the key.
#[derive(Clone)]
pub struct CertificateBundle {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    ca: Vec<CertificateDer<'static>>,
    metadata: CertMetadata,
}

impl fmt::Debug for CertificateBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateBundle")
            .field("metadata", &self.metadata)
            .field("chain_len", &self.chain.len())
            .field("ca_len", &self.ca.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateBundle {
    /// Builds a bundle from PEM texts: leaf first (then any intermediates), key, CA roots.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<Self, Error> {
        Self::from_parts(parse_chain(cert_pem)?, parse_key(key_pem)?, parse_pem_certs("CA certificate", ca_pem)?)
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca: Vec<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        let leaf = chain.first().ok_or_else(|| Error::parse("certificate", "no certificate"))?;
        let metadata = CertMetadata::from_der(leaf)?;
        Ok(Self { chain, key: Arc::new(key), ca, metadata })
    }

    /// Loads `client.crt`, `client.key` and `ca.crt` from a cert directory, finishing or
    /// discarding any interrupted write first (see [`crate::BundleWriter`]).
    ///
    /// The directory must pass [`CertFiles::check_dir`]. No file is read through a
    /// symbolic link (crank never writes one). `client.key` must belong to the running
    /// user and be closed to group and others (0600); the certificates must belong to the
    /// running user or root and be writable by their owner only. Each refusal names the
    /// command that fixes it.
    pub fn load(files: &CertFiles) -> Result<Self, Error> {
        // Read while no writer is half-way: one whole bundle, old or new.
        let (cert, key, ca) = files.locked(|| {
            // Every file passes its ownership checks before any is parsed: a planted link
            // or a key others may read is refused as such, whatever the other files hold.
            Ok((
                read_checked(&files.cert, Contents::Certificate)?,
                read_checked(&files.key, Contents::PrivateKey)?,
                read_checked(&files.ca, Contents::Certificate)?,
            ))
        })?;
        // A damaged file (truncated, garbage) is named, so the operator knows which.
        fn in_file(path: &Path) -> impl FnOnce(Error) -> Error + '_ {
            move |e| Error::InFile { path: path.to_owned(), source: Box::new(e) }
        }
        let chain = parse_chain(&cert).map_err(in_file(&files.cert))?;
        let key = parse_key(&key).map_err(in_file(&files.key))?;
        let ca = parse_pem_certs("CA certificate", &ca).map_err(in_file(&files.ca))?;
        // What can fail here is reading the leaf.
        Self::from_parts(chain, key, ca).map_err(in_file(&files.cert))
    }

    /// Writes the bundle into `files` the way a new certificate is written (journaled,
    /// atomic, the key 0600): how a worker puts back files damaged on disk from the
    /// certificate it holds.
    pub fn write_to(&self, files: &CertFiles) -> Result<(), Error> {
        let chain: String = self.chain.iter().map(|c| cert_pem(c)).collect();
        let ca: String = self.ca.iter().map(|c| cert_pem(c)).collect();
        let label = match self.key.as_ref() {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        let key = pem_block(label, self.key.secret_der());
        crate::BundleWriter::write(files, chain.as_bytes(), key.as_bytes(), ca.as_bytes())
    }

    /// Checks the bundle: the key matches the leaf, the leaf is inside its validity window
    /// at `now`, and the chain verifies to one of the CA certificates for both client and
    /// server authentication.
    pub fn validate(&self, now: SystemTime) -> Result<(), Error> {
        self.metadata.check_validity(OffsetDateTime::from(now))?;
        self.certified_key()?;
        let anchors = self
            .ca
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidBundle(format!("CA certificate unusable as trust anchor: {e:?}")))?;
        let (leaf, intermediates) =
            self.chain.split_first().ok_or_else(|| Error::InvalidBundle("empty certificate chain".into()))?;
        let leaf = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| Error::InvalidBundle(format!("leaf certificate: {e:?}")))?;
        let time = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
        for usage in [webpki::KeyUsage::client_auth(), webpki::KeyUsage::server_auth()] {
            leaf.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, intermediates, time, usage, None, None)
                .map_err(|e| Error::InvalidBundle(format!("chain does not verify to the CA: {e:?}")))?;
        }
        Ok(())
    }

    /// The chain and key as a rustls [`CertifiedKey`]; fails if the key does not match.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, Error> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let ck = CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider)
            .map_err(|e| Error::InvalidBundle(format!("private key does not match certificate: {e}")))?;
        Ok(Arc::new(ck))
    }

    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The trusted CA certificates.
    pub fn ca(&self) -> &[CertificateDer<'static>] {
        &self.ca
    }

    /// The private key (DER). Handle with care.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// Metadata of the leaf certificate.
    pub fn metadata(&self) -> &CertMetadata {
        &self.metadata
    }
}

/// A time as RFC 3339 (`2026-11-26T08:00:00Z`), the format of every timestamp crank writes.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}
