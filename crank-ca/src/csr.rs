//! Reading a CSR: the verified public key and the names it asks for, nothing else.
//!
//! Refused here, before any policy sees the request, because no policy may allow them:
//! a signature made with SHA-1 or anything weaker (MD5, MD2, MD4), an RSA key under
//! 2048 bits, an elliptic curve other than P-256 and P-384, and a DNS name that is not a
//! host name ([`validate_host_name`]).

use std::net::IpAddr;

use crank_security_core::{ProviderError, validate_host_name};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_HASH_SHA1, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_MD5_WITH_RSA, OID_NIST_EC_P384, OID_NIST_HASH_SHA256,
    OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_MD2WITHRSAENC, OID_PKCS1_MD4WITHRSAENC,
    OID_PKCS1_MD5WITHRSAENC, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SHA1_WITH_RSA,
    OID_SIG_DSA_WITH_SHA1, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519, Oid,
};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension};
use x509_parser::public_key::PublicKey;
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::AlgorithmIdentifier;

/// Largest CSR accepted (DER bytes).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Smallest RSA key the CA certifies, in bits. A floor below policy: no policy can lower it.
pub const MIN_RSA_BITS: usize = 2048;

/// ecdsa-with-SHA1 (RFC 3279), which the OID registry does not name.
const OID_SIG_ECDSA_WITH_SHA1: Oid<'static> = x509_parser::der_parser::oid!(1.2.840.10045.4.1);

/// Signature algorithms whose digest is SHA-1 or weaker: collisions can be made for them,
/// so a signature made with one proves nothing.
const WEAK_SIGNATURES: [(&Oid<'static>, &str, &str); 8] = [
    (&OID_PKCS1_SHA1WITHRSA, "sha1WithRSAEncryption", "SHA-1"),
    (&OID_SHA1_WITH_RSA, "sha1WithRSAEncryption (OIW)", "SHA-1"),
    (&OID_SIG_ECDSA_WITH_SHA1, "ecdsa-with-SHA1", "SHA-1"),
    (&OID_SIG_DSA_WITH_SHA1, "dsa-with-sha1", "SHA-1"),
    (&OID_PKCS1_MD5WITHRSAENC, "md5WithRSAEncryption", "MD5"),
    (&OID_MD5_WITH_RSA, "md5WithRSASignature", "MD5"),
    (&OID_PKCS1_MD4WITHRSAENC, "md4WithRSAEncryption", "MD4"),
    (&OID_PKCS1_MD2WITHRSAENC, "md2WithRSAEncryption", "MD2"),
];

/// Signature algorithms accepted (RSASSA-PSS too, with SHA-256 or stronger).
const STRONG_SIGNATURES: [&Oid<'static>; 6] = [
    &OID_PKCS1_SHA256WITHRSA,
    &OID_PKCS1_SHA384WITHRSA,
    &OID_PKCS1_SHA512WITHRSA,
    &OID_SIG_ECDSA_WITH_SHA256,
    &OID_SIG_ECDSA_WITH_SHA384,
    &OID_SIG_ED25519,
];

const USE_INSTEAD: &str = "sign it with SHA-256 or stronger (`openssl req -sha256`), or let crank make the key and CSR (ECDSA P-256 with SHA-256, the default)";

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
    check_signature_algorithm(&csr.signature_algorithm).map_err(bad)?;
    let info = &csr.certification_request_info;
    let key_type = key_type_name(&info.subject_pki).map_err(bad)?;
    if verify_signature {
        csr.verify_signature()
            .map_err(|e| bad(format!("csr signature does not verify with its own public key: {e}")))?;
    }
    let spki = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|e| bad(format!("unsupported public key in csr: {e}")))?;
    let (mut dns, mut ips, mut asked_for_ca) = (Vec::new(), Vec::new(), false);
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(d) => {
                                validate_host_name(d).map_err(|e| bad(format!("csr asks for an {e}")))?;
                                dns.push(d.to_ascii_lowercase());
                            }
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

/// The short name of an algorithm OID (`sha1WithRSAEncryption`), or its dotted form.
fn algorithm_name(oid: &Oid<'_>) -> String {
    x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry())
        .map_or_else(|_| oid.to_id_string(), ToOwned::to_owned)
}

/// Refuses a CSR signed with SHA-1 or weaker, and any algorithm the CA cannot verify.
fn check_signature_algorithm(alg: &AlgorithmIdentifier<'_>) -> Result<(), String> {
    let oid = &alg.algorithm;
    if STRONG_SIGNATURES.contains(&oid) {
        return Ok(());
    }
    let weak = |name: &str, digest: &str| {
        format!(
            "csr is signed with {name}, which uses {digest}: signatures made with SHA-1 or anything weaker are not accepted, because collisions can be forged for them; {USE_INSTEAD}"
        )
    };
    if let Some((_, name, digest)) = WEAK_SIGNATURES.iter().find(|(weak, ..)| *weak == oid) {
        return Err(weak(name, digest));
    }
    if *oid == OID_PKCS1_RSASSAPSS {
        let params = alg.parameters.as_ref().map(RsaSsaPssParams::try_from).transpose();
        // Absent parameters mean SHA-1 (RFC 4055).
        let hash = match &params {
            Ok(Some(p)) => p.hash_algorithm_oid().clone(),
            Ok(None) => OID_HASH_SHA1,
            Err(e) => return Err(format!("csr has malformed RSASSA-PSS parameters: {e}")),
        };
        if [OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512].contains(&hash) {
            return Ok(());
        }
        return Err(weak(&format!("RSASSA-PSS with {}", algorithm_name(&hash)), &algorithm_name(&hash)));
    }
    Err(format!(
        "csr is signed with {}, which the CA does not accept; it accepts RSA (PKCS#1 v1.5 or PSS) with SHA-256, SHA-384 or SHA-512, ECDSA with SHA-256 or SHA-384, and Ed25519: {USE_INSTEAD}",
        algorithm_name(oid)
    ))
}

/// The key type name policy sees (`ecdsa-p256`, `rsa-2048`, `ed25519`), refusing keys no
/// policy may allow: RSA under [`MIN_RSA_BITS`] and curves other than P-256 and P-384.
fn key_type_name(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<String, String> {
    let oid = &spki.algorithm.algorithm;
    let parsed = spki.parsed();
    if *oid == OID_SIG_ED25519 {
        return Ok("ed25519".into());
    }
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 && matches!(parsed, Ok(PublicKey::EC(_))) => Ok("ecdsa-p256".into()),
            Some(c) if c == OID_NIST_EC_P384 && matches!(parsed, Ok(PublicKey::EC(_))) => Ok("ecdsa-p384".into()),
            Some(c) => Err(format!(
                "csr public key is on the elliptic curve {}, which is not supported: use P-256 (the default) or P-384",
                algorithm_name(&c)
            )),
            None => {
                Err("csr EC public key does not name its curve: use a named curve, P-256 (the default) or P-384".into())
            }
        };
    }
    if *oid == OID_PKCS1_RSAENCRYPTION
        && let Ok(PublicKey::RSA(rsa)) = parsed
    {
        let bits = rsa_bits(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "csr has an RSA key of {bits} bits, which is too small: at least {MIN_RSA_BITS} bits are required (use ECDSA P-256, the default)"
            ));
        }
        return Ok(format!("rsa-{bits}"));
    }
    Err(format!(
        "csr public key algorithm {} is not supported (use ECDSA P-256, the default, P-384, Ed25519, or RSA of at least {MIN_RSA_BITS} bits)",
        algorithm_name(oid)
    ))
}

/// The size in bits of an RSA modulus (big-endian, maybe with leading zero octets).
fn rsa_bits(modulus: &[u8]) -> usize {
    let significant = modulus.iter().position(|b| *b != 0).map_or(&[][..], |i| modulus.get(i..).unwrap_or_default());
    significant.first().map_or(0, |first| significant.len() * 8 - first.leading_zeros() as usize)
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

    /// A CSR for `CN=w` made by `openssl req` (the outside tool people sign CSRs with)
    /// with a new key (`-newkey NEWKEY...`) and `args` (`-sha1`, `-addext ...`).
    fn openssl_csr(newkey: &[&str], args: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args(["req", "-new", "-nodes", "-keyout", "key.pem", "-out", "req.csr", "-subj", "/CN=w", "-newkey"])
            .args(newkey)
            .args(args)
            .output()
            .expect("running openssl (scripts/test.sh installs it)");
        assert!(out.status.success(), "openssl req {newkey:?} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(dir.path().join("req.csr")).unwrap()
    }

    const P256: [&str; 3] = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

    fn refusal(pem: &str) -> String {
        match parse_csr(pem) {
            Err(ProviderError::BadRequest(m)) => m,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn sha1_and_weaker_signatures_are_refused_naming_the_algorithm() {
        for (newkey, args, name) in [
            (&["rsa:2048"][..], &["-sha1"][..], "sha1WithRSAEncryption"),
            (&P256[..], &["-sha1"][..], "ecdsa-with-SHA1"),
            (&["rsa:2048"][..], &["-md5"][..], "md5WithRSAEncryption"),
            (&["rsa:2048"][..], &["-sha1", "-sigopt", "rsa_padding_mode:pss"][..], "RSASSA-PSS with"),
        ] {
            let m = refusal(&openssl_csr(newkey, args));
            assert!(m.contains(name), "{args:?}: {m}");
            assert!(m.contains("SHA-256 or stronger"), "{args:?}: the refusal says what to use instead: {m}");
            // parse_verified_csr skips only the signature verification, not this check.
            assert!(parse_verified_csr(&openssl_csr(newkey, args)).is_err(), "{args:?}");
        }
        // MD2 and MD4 are no longer made by openssl; the check itself.
        for oid in [OID_PKCS1_MD2WITHRSAENC, OID_PKCS1_MD4WITHRSAENC, OID_SHA1_WITH_RSA] {
            let m = check_signature_algorithm(&AlgorithmIdentifier::new(oid.clone(), None)).unwrap_err();
            assert!(m.contains("SHA-1 or anything weaker"), "{oid}: {m}");
        }
    }

    #[test]
    fn sha256_and_stronger_signatures_are_accepted() {
        for (newkey, args, key_type) in [
            (&["rsa:2048"][..], &["-sha256"][..], "rsa-2048"),
            (
                &["rsa:3072"][..],
                &["-sha512", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"][..],
                "rsa-3072",
            ),
            (&P256[..], &["-sha256"][..], "ecdsa-p256"),
            (&["ec", "-pkeyopt", "ec_paramgen_curve:P-384"][..], &["-sha384"][..], "ecdsa-p384"),
            (&["ed25519"][..], &[][..], "ed25519"),
        ] {
            let parsed = parse_csr(&openssl_csr(newkey, args)).unwrap_or_else(|e| panic!("{newkey:?} {args:?}: {e}"));
            assert_eq!(parsed.key_type, key_type);
        }
    }

    #[test]
    fn rsa_under_2048_bits_is_refused_whatever_the_policy() {
        for bits in ["1024", "2040"] {
            let m = refusal(&openssl_csr(&[&format!("rsa:{bits}")], &["-sha256"]));
            assert!(m.contains(&format!("RSA key of {bits} bits, which is too small")), "{m}");
            assert!(m.contains("at least 2048 bits") && m.contains("ECDSA P-256"), "{m}");
        }
        assert_eq!(rsa_bits(&[0, 0x80, 0]), 16);
        assert_eq!(rsa_bits(&[0x01, 0xff]), 9);
        assert_eq!(rsa_bits(&[]), 0);
    }

    #[test]
    fn curves_other_than_p256_and_p384_are_refused_by_name() {
        let m = refusal(&openssl_csr(&["ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"], &["-sha256"]));
        assert!(m.contains("elliptic curve 1.3.132.0.10") && m.contains("P-256"), "secp256k1: {m}");
    }

    #[test]
    fn invalid_dns_names_are_refused_naming_the_name_escaped() {
        let key = rcgen::KeyPair::generate().unwrap();
        for (name, why) in [
            ("a\nb.example", "control character"),
            ("*.example.internal", "wildcard"),
            ("a_b.example", "letters, digits"),
            ("a..b", "empty label"),
        ] {
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = vec![rcgen::SanType::DnsName(name.try_into().unwrap())];
            let pem = params.serialize_request(&key).unwrap().pem().unwrap();
            let m = refusal(&pem);
            assert!(m.contains(&format!("{name:?}")) && m.contains(why), "{name:?}: {m}");
            assert!(!m.contains('\n'), "the name is escaped in the message: {m}");
        }
        let m = refusal(&openssl_csr(&P256, &["-addext", "subjectAltName=DNS:*.example.internal"]));
        assert!(m.contains("wildcard"), "{m}");
        let ok = openssl_csr(&P256, &["-addext", "subjectAltName=DNS:API.Example.internal,DNS:w"]);
        assert_eq!(parse_csr(&ok).unwrap().dns, ["api.example.internal", "w"]);
    }

    #[test]
    fn csr_garbage_is_a_clear_bad_request() {
        for bad in ["", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"] {
            let e = parse_csr(bad).unwrap_err();
            assert!(matches!(e, ProviderError::BadRequest(_)), "{bad:?}: {e}");
        }
    }
}
