use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use serde::{Deserialize, Serialize};

use crate::{Error, WorkerId};

/// The kind of key a worker generates locally. ECDSA P-256 unless asked otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256 (the default).
    #[default]
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048-bit, PKCS#1 v1.5 with SHA-256.
    Rsa2048,
    /// RSA 3072-bit, PKCS#1 v1.5 with SHA-256.
    Rsa3072,
}

impl KeyType {
    /// Every supported key type, in the order of [`KeyType::name`].
    pub const ALL: [Self; 5] = [Self::EcdsaP256, Self::EcdsaP384, Self::Ed25519, Self::Rsa2048, Self::Rsa3072];

    /// The stable name used in configuration, policy input and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            Error::Config(format!(
                "unknown key type {s:?}; expected one of ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072"
            ))
        })
    }
}

/// Generates a fresh private key of the given type, in this process.
pub fn generate_key(key_type: KeyType) -> Result<KeyPair, Error> {
    let crypto = |e: rcgen::Error| Error::Crypto(format!("generating a {key_type} key: {e}"));
    match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072),
    }
    .map_err(crypto)
}

/// Builds a PEM CSR for `worker_id`, signed by `key`, asking for `sans` (IP addresses, or
/// DNS names that pass [`validate_host_name`](crate::validate_host_name), as the CA
/// requires). The CA decides what the certificate finally holds; the CSR only asks.
pub fn build_csr(key: &KeyPair, worker_id: &WorkerId, sans: &[String]) -> Result<String, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, worker_id.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = sans.iter().map(|s| san_type(s)).collect::<Result<_, _>>()?;
    let csr = params.serialize_request(key).map_err(|e| Error::Crypto(format!("building the CSR: {e}")))?;
    csr.pem().map_err(|e| Error::Crypto(format!("encoding the CSR: {e}")))
}

fn san_type(name: &str) -> Result<SanType, Error> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    crate::validate_host_name(name)?;
    let dns = name.try_into().map_err(|_| Error::InvalidName {
        what: "DNS name",
        value: name.to_owned(),
        reason: "is not a valid DNS name (IA5 string)",
    })?;
    Ok(SanType::DnsName(dns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_type_makes_a_parseable_csr() {
        let worker = WorkerId::new("w").unwrap();
        for kt in KeyType::ALL {
            let key = generate_key(kt).unwrap();
            let pem = build_csr(&key, &worker, &["w.example".into(), "127.0.0.1".into()]).unwrap();
            let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
            assert_eq!(parsed.params.subject_alt_names.len(), 2, "{kt}");
            assert_eq!(kt.name().parse::<KeyType>().unwrap(), kt);
        }
    }
}
