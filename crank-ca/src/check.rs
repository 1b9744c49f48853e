//! What a signer returned is checked before it is recorded or handed out: a signer is
//! trusted to sign, not to decide. An upstream CA whose profile adds a name, a usage or
//! a longer validity, or that signs another key, is refused here.

use crank_security_core::{CertMetadata, CertificateTemplate, parse_pem_certs};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// How far in the future a signer's `not_before` may be (clock skew).
const FUTURE_SKEW: time::Duration = time::Duration::seconds(60);

/// Checks `chain_pem` (leaf first) against `template`: the CSR's public key, exactly the
/// subject and SANs decided, not a CA, key usage digitalSignature (keyEncipherment and
/// keyAgreement tolerated), extended key usages exactly clientAuth and serverAuth,
/// validity within the grant (a backdate of up to
/// [`CertificateTemplate::MAX_BACKDATE`] allowed), and, for an upstream signer
/// (`anchors` given), a chain that verifies to `anchors` for client and server
/// authentication. `None` is for the CA's own key, whose certificate was checked
/// against it at load: its leaves get every field check but no second signature
/// verification. Every mismatch is named.
pub fn check_signed(
    chain_pem: &str,
    csr_public_key: &[u8],
    template: &CertificateTemplate,
    anchors: Option<&[CertificateDer<'static>]>,
    now: OffsetDateTime,
) -> Result<CertMetadata, String> {
    let chain = parse_pem_certs("certificate chain", chain_pem.as_bytes()).map_err(|e| e.to_string())?;
    let (leaf_der, intermediates) = chain.split_first().ok_or("the chain is empty")?;
    let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| format!("the certificate does not parse: {e}"))?;
    let mut problems = Vec::new();
    if leaf.public_key().subject_public_key.data.as_ref() != csr_public_key {
        problems.push("its public key is not the CSR's".to_owned());
    }
    check_subject(&leaf, template, &mut problems);
    check_sans(&leaf, template, &mut problems);
    check_usages(&leaf, &mut problems);
    check_capabilities(&leaf, template, &mut problems);
    let (nb, na) = (leaf.validity().not_before.to_datetime(), leaf.validity().not_after.to_datetime());
    if na > template.not_after + time::Duration::seconds(1) {
        problems.push(format!("it is valid until {na}, later than the {} policy granted", template.not_after));
    }
    if nb < template.not_before - CertificateTemplate::MAX_BACKDATE {
        problems.push(format!(
            "it is valid from {nb}, more than {} before the {} granted",
            CertificateTemplate::MAX_BACKDATE,
            template.not_before
        ));
    }
    if nb > now + FUTURE_SKEW || na <= now {
        problems.push(format!("it is not valid now (valid from {nb} to {na})"));
    }
    if problems.is_empty()
        && let Some(anchors) = anchors
        && let Err(e) = verify_chain(leaf_der, intermediates, anchors, now)
    {
        problems.push(e);
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(CertMetadata::from_parsed(leaf_der, &leaf))
}

fn check_subject(leaf: &X509Certificate<'_>, t: &CertificateTemplate, problems: &mut Vec<String>) {
    let cns: Vec<_> = leaf.subject().iter_common_name().filter_map(|a| a.as_str().ok()).collect();
    let orgs: Vec<_> = leaf.subject().iter_organization().filter_map(|a| a.as_str().ok()).collect();
    let count = leaf.subject().iter_attributes().count();
    if cns != [t.common_name()] || orgs != [t.organization()] || count != 2 {
        problems.push(format!(
            "its subject is \"{}\", not \"CN={}, O={}\"",
            leaf.subject(),
            t.common_name(),
            t.organization()
        ));
    }
}

fn check_sans(leaf: &X509Certificate<'_>, t: &CertificateTemplate, problems: &mut Vec<String>) {
    let spiffe = t.spiffe_id.to_string();
    let (mut uris, mut dns, mut ips, mut other) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    match leaf.subject_alternative_name() {
        Ok(Some(san)) => {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) => match super::csr::ip_from_bytes(b) {
                        Some(ip) => ips.push(ip),
                        None => other.push("a malformed IP address".to_owned()),
                    },
                    o => other.push(o.to_string()),
                }
            }
        }
        Ok(None) => problems.push("it has no subjectAltName".to_owned()),
        Err(e) => problems.push(format!("its subjectAltName does not parse: {e}")),
    }
    if uris != [spiffe.clone()] {
        if dns.contains(&spiffe) {
            problems.push(format!(
                "the SPIFFE ID {spiffe} is a DNS name SAN instead of a URI SAN: this signer cannot write URI SANs (cfssl 1.2, packaged in Debian 12, cannot: use cfssl 1.6 or newer)"
            ));
        } else {
            problems.push(format!("its URI SANs are {uris:?}, not exactly [{spiffe:?}]"));
        }
    }
    dns.retain(|d| *d != spiffe);
    dns.sort();
    ips.sort();
    if dns != t.dns_sans {
        problems.push(format!("its DNS SANs are {dns:?}, policy allowed {:?}", t.dns_sans));
    }
    if ips != t.ip_sans {
        problems.push(format!("its IP SANs are {ips:?}, policy allowed {:?}", t.ip_sans));
    }
    if !other.is_empty() {
        problems.push(format!("it carries SANs policy never allows: {}", other.join(", ")));
    }
}

/// The capabilities extension, when there is one, holds exactly what the CA granted
/// (a signer that cannot write it, such as cfssl, leaves it out: the worker then holds
/// no capabilities).
fn check_capabilities(leaf: &X509Certificate<'_>, t: &CertificateTemplate, problems: &mut Vec<String>) {
    let oid = crank_security_core::CAPABILITIES_OID;
    let found: Vec<_> =
        leaf.extensions().iter().filter(|e| e.oid.iter().is_some_and(|arcs| arcs.eq(oid.iter().copied()))).collect();
    match found.as_slice() {
        [] => {}
        [ext] => match crank_security_core::parse_capabilities_extension(ext.value) {
            Ok(caps) if caps == t.capabilities => {}
            Ok(caps) => problems.push(format!("its capabilities are {caps:?}, the CA granted {:?}", t.capabilities)),
            Err(e) => problems.push(format!("its capabilities extension does not parse: {e}")),
        },
        _ => problems.push("it carries the capabilities extension twice".to_owned()),
    }
}

fn check_usages(leaf: &X509Certificate<'_>, problems: &mut Vec<String>) {
    if leaf.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca) {
        problems.push("it is a CA certificate (basicConstraints CA:true)".to_owned());
    }
    match leaf.key_usage() {
        Ok(Some(ku)) => {
            let k = &ku.value;
            if !k.digital_signature() {
                problems.push("its keyUsage lacks digitalSignature".to_owned());
            }
            let forbidden = [
                (k.key_cert_sign(), "keyCertSign"),
                (k.crl_sign(), "cRLSign"),
                (k.non_repudiation(), "nonRepudiation"),
                (k.data_encipherment(), "dataEncipherment"),
                (k.encipher_only(), "encipherOnly"),
                (k.decipher_only(), "decipherOnly"),
            ];
            let extra: Vec<_> = forbidden.iter().filter(|(set, _)| *set).map(|(_, n)| *n).collect();
            if !extra.is_empty() {
                problems.push(format!("its keyUsage includes {}", extra.join(", ")));
            }
        }
        Ok(None) => problems.push("it has no keyUsage (digitalSignature expected)".to_owned()),
        Err(e) => problems.push(format!("its keyUsage does not parse: {e}")),
    }
    match leaf.extended_key_usage() {
        Ok(Some(eku)) => {
            let e = &eku.value;
            let exact = e.client_auth
                && e.server_auth
                && !e.any
                && !e.code_signing
                && !e.email_protection
                && !e.time_stamping
                && !e.ocsp_signing
                && e.other.is_empty();
            if !exact {
                problems.push(format!(
                    "its extendedKeyUsage is {}, not exactly clientAuth and serverAuth",
                    describe_eku(e)
                ));
            }
        }
        Ok(None) => problems.push("it has no extendedKeyUsage (clientAuth and serverAuth expected)".to_owned()),
        Err(e) => problems.push(format!("its extendedKeyUsage does not parse: {e}")),
    }
}

fn describe_eku(e: &x509_parser::extensions::ExtendedKeyUsage<'_>) -> String {
    let mut names: Vec<String> = [
        (e.any, "any"),
        (e.server_auth, "serverAuth"),
        (e.client_auth, "clientAuth"),
        (e.code_signing, "codeSigning"),
        (e.email_protection, "emailProtection"),
        (e.time_stamping, "timeStamping"),
        (e.ocsp_signing, "OCSPSigning"),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, n)| (*n).to_owned())
    .collect();
    names.extend(e.other.iter().map(ToString::to_string));
    if names.is_empty() { "empty".to_owned() } else { names.join(", ") }
}

fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'static>],
    anchors: &[CertificateDer<'static>],
    now: OffsetDateTime,
) -> Result<(), String> {
    let anchors = anchors
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a trust anchor is unusable: {e:?}"))?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("the certificate does not parse: {e:?}"))?;
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or_default();
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    for usage in [webpki::KeyUsage::client_auth(), webpki::KeyUsage::server_auth()] {
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, intermediates, time, usage, None, None)
            .map_err(|e| format!("its chain does not verify to the trust bundle: {e:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::leaf_params;
    use crank_security_core::{SpiffeId, TrustDomain, WorkerId};
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };

    fn template(now: OffsetDateTime) -> CertificateTemplate {
        CertificateTemplate {
            spiffe_id: SpiffeId::new(TrustDomain::default(), WorkerId::new("w1").unwrap()),
            dns_sans: vec!["localhost".into(), "w1".into()],
            ip_sans: vec!["127.0.0.1".parse().unwrap()],
            not_before: now - time::Duration::seconds(60),
            not_after: now + time::Duration::hours(1),
            renewal: false,
            capabilities: vec![],
        }
    }

    /// Each case changes one thing of a correct leaf and names the problem expected.
    #[test]
    fn every_field_the_policy_did_not_decide_is_refused() {
        let root_key = KeyPair::generate().unwrap();
        let mut rp = CertificateParams::new(Vec::<String>::new()).unwrap();
        rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = rp.self_signed(&root_key).unwrap();
        let issuer = Issuer::from_ca_cert_der(root.der(), root_key).unwrap();
        let anchors = vec![root.der().clone()];
        let key = KeyPair::generate().unwrap();
        let other_key = KeyPair::generate().unwrap();
        let now = OffsetDateTime::now_utc();
        let t = template(now);
        type Change = fn(&mut CertificateParams);
        let cases: [(&str, Change, Option<&str>); 10] = [
            ("as decided", |_| {}, None),
            ("CA", |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained), Some("CA certificate")),
            (
                "extra DNS",
                |p| p.subject_alt_names.push(SanType::DnsName("bank.example".try_into().unwrap())),
                Some("bank.example"),
            ),
            ("no URI", |p| p.subject_alt_names.retain(|s| !matches!(s, SanType::URI(_))), Some("URI SANs are []")),
            (
                "URI as DNS",
                |p| {
                    p.subject_alt_names.retain(|s| !matches!(s, SanType::URI(_)));
                    p.subject_alt_names.push(SanType::DnsName("spiffe://crank.local/worker/w1".try_into().unwrap()));
                },
                Some("DNS name SAN instead of a URI SAN"),
            ),
            ("longer", |p| p.not_after += time::Duration::days(365), Some("later than")),
            (
                "server only",
                |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth],
                Some("not exactly clientAuth"),
            ),
            ("cert sign", |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign), Some("keyCertSign")),
            (
                "subject",
                |p| p.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "x"),
                Some("its subject is"),
            ),
            (
                "capabilities not granted",
                |p| p.custom_extensions.push(crate::signer::capabilities_extension(&["admin".to_owned()])),
                Some("its capabilities are [\"admin\"], the CA granted []"),
            ),
        ];
        for (name, change, expected) in cases {
            let mut p = leaf_params(&t).unwrap();
            change(&mut p);
            let pem = p.signed_by(&key, &issuer).unwrap().pem();
            match (check_signed(&pem, key.public_key_raw(), &t, Some(&anchors), now), expected) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => assert!(e.contains(want), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, expected {want:?}"),
            }
        }
        let pem = leaf_params(&t).unwrap().signed_by(&other_key, &issuer).unwrap().pem();
        let e = check_signed(&pem, key.public_key_raw(), &t, Some(&anchors), now).unwrap_err();
        assert!(e.contains("not the CSR's"), "{e}");
        let stranger = KeyPair::generate().unwrap();
        let stranger_root = rp.self_signed(&stranger).unwrap();
        let pem = leaf_params(&t)
            .unwrap()
            .signed_by(&key, &Issuer::from_ca_cert_der(stranger_root.der(), stranger).unwrap())
            .unwrap()
            .pem();
        let e = check_signed(&pem, key.public_key_raw(), &t, Some(&anchors), now).unwrap_err();
        assert!(e.contains("does not verify to the trust bundle"), "{e}");
    }
}
