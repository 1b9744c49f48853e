//! Reading CA certificates and CRLs: roots, published intermediates, cross-certificates,
//! and the entries a CRL lists.

use std::collections::HashSet;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// (raw issuer name, serial octets) of a certificate, as a CRL entry names it.
pub(super) fn revocation_key(leaf: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    Some((cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec()))
}

pub(super) fn crl_entries(crls: &[CertificateRevocationListDer<'static>]) -> HashSet<(Vec<u8>, Vec<u8>)> {
    let mut out = HashSet::new();
    for der in crls {
        if let Ok((_, crl)) = CertificateRevocationList::from_der(der) {
            let issuer = crl.issuer().as_raw().to_vec();
            out.extend(crl.iter_revoked_certificates().map(|r| (issuer.clone(), r.raw_serial().to_vec())));
        }
    }
    out
}

pub(super) fn parsed<'a>(der: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

pub(super) fn self_signed(c: &X509Certificate<'_>) -> bool {
    c.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(None).is_ok()
}

pub(super) fn is_ca(c: &X509Certificate<'_>) -> bool {
    c.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca)
}

/// Splits CA certificates into self-signed roots, and the others (intermediates a
/// trust domain publishes). Cross-certificates (a certificate for the subject and key of
/// a root of the same list, signed by another CA) and anything unparsable are dropped.
pub(super) fn partition(
    certs: &[CertificateDer<'static>],
) -> (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>) {
    let parsed: Vec<_> = certs.iter().filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| (d, c))).collect();
    let roots: Vec<_> = parsed.iter().filter(|(_, c)| self_signed(c)).collect();
    let is_cross = |c: &X509Certificate<'_>| {
        roots
            .iter()
            .any(|(_, r)| r.subject().as_raw() == c.subject().as_raw() && r.public_key().raw == c.public_key().raw)
    };
    let mut published = Vec::new();
    for (d, c) in &parsed {
        if !self_signed(c) && is_ca(c) && !is_cross(c) && !published.contains(*d) {
            published.push((*d).clone());
        }
    }
    let mut root_ders: Vec<CertificateDer<'static>> = Vec::new();
    for (d, _) in &roots {
        if !root_ders.contains(*d) {
            root_ders.push((*d).clone());
        }
    }
    (root_ders, published)
}

/// The trust set of `certs`: its roots, then the intermediates it publishes.
pub fn trust_set(certs: &[CertificateDer<'static>]) -> Vec<CertificateDer<'static>> {
    let (mut roots, published) = partition(certs);
    roots.extend(published);
    roots
}
