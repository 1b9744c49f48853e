//! Reading a CSR: the verified public key and the names it asks for, nothing else.

use std::net::IpAddr;

use crank_security_core::ProviderError;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension};
use x509_parser::public_key::PublicKey;

/// Largest CSR accepted (DER bytes).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// What the CA read from a CSR: the verified public key and what it asks for.
#[derive(Debug)]
pub struct ParsedCsr {
    spki: rcgen::SubjectPublicKeyInfo,
    /// The raw public key (the SubjectPublicKeyInfo's BIT STRING), to compare with what
    /// a signer returns.
    pub public_key: Vec<u8>,
    /// Key type name (`ecdsa-p256`, `rsa-2048`, ...).
    pub key_type: String,
    /// Requested DNS SANs.
    pub dns: Vec<String>,
    /// Requested IP SANs.
    pub ips: Vec<IpAddr>,
    /// Whether the CSR asked for CA:true (never granted; logged).
    pub asked_for_ca: bool,
}

/// Parses a PEM CSR and verifies its self-signature. Everything else in the CSR
/// (subject, key usages, EKUs, basic constraints, other extensions) is ignored: the CA
/// sets those fields itself.
pub fn parse_csr(pem: &str) -> Result<ParsedCsr, ProviderError> {
    parse(pem, true)
}

/// [`parse_csr`] for a CSR whose self-signature was already verified (a
/// [`SignRequest`](crank_security_core::SignRequest)'s): the same checks but the
/// signature verification, which is the costly part.
pub fn parse_verified_csr(pem: &str) -> Result<ParsedCsr, ProviderError> {
    parse(pem, false)
}

fn parse(pem: &str, verify_signature: bool) -> Result<ParsedCsr, ProviderError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |m: String| ProviderError::BadRequest(m);
    if pem.len() > 4 * MAX_CSR_BYTES {
        return Err(bad(format!("CSR is larger than {} bytes", 4 * MAX_CSR_BYTES)));
    }
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| bad(format!("csr is not a PEM CERTIFICATE REQUEST: {e}")))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| bad(format!("csr is not a valid PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("csr has trailing bytes after the request".into()));
    }
    if verify_signature {
        csr.verify_signature()
            .map_err(|e| bad(format!("csr signature does not verify with its own public key: {e}")))?;
    }
    let info = &csr.certification_request_info;
    let key_type = key_type_name(&info.subject_pki).map_err(bad)?;
    let spki = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|e| bad(format!("unsupported public key in csr: {e}")))?;
    let (mut dns, mut ips, mut asked_for_ca) = (Vec::new(), Vec::new(), false);
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                            GeneralName::IPAddress(b) => ips.push(
                                ip_from_bytes(b).ok_or_else(|| bad("csr has a malformed IP address SAN".into()))?,
                            ),
                            other => {
                                return Err(bad(format!(
                                    "csr asks for a SAN of an unsupported kind ({other}); only DNS names and IP addresses may be requested"
                                )));
                            }
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) => asked_for_ca |= bc.ca,
                _ => {}
            }
        }
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    let public_key = info.subject_pki.subject_public_key.data.to_vec();
    Ok(ParsedCsr { spki, public_key, key_type, dns, ips, asked_for_ca })
}

impl ParsedCsr {
    /// The CSR's public key, for rcgen to certify.
    pub fn spki(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.spki
    }
}

fn key_type_name(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<String, String> {
    let oid = spki.algorithm.algorithm.to_id_string();
    match (oid.as_str(), spki.parsed()) {
        ("1.3.101.112", _) => Ok("ed25519".into()),
        ("1.2.840.10045.2.1", Ok(PublicKey::EC(ec))) => Ok(format!("ecdsa-p{}", ec.key_size())),
        ("1.2.840.113549.1.1.1", Ok(PublicKey::RSA(rsa))) => Ok(format!("rsa-{}", rsa.key_size())),
        _ => Err(format!("csr public key algorithm {oid} is not supported (use ECDSA P-256/P-384, Ed25519 or RSA)")),
    }
}

pub(crate) fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_garbage_is_a_clear_bad_request() {
        for bad in ["", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"] {
            let e = parse_csr(bad).unwrap_err();
            assert!(matches!(e, ProviderError::BadRequest(_)), "{bad:?}: {e}");
        }
    }
}
