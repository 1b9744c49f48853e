//! What a CA's answer may change in a worker's trust set.

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::X509Certificate;

use super::certs::{is_ca, parsed, self_signed, trust_set};
use super::mode::CrlMode;
use super::verify::build;

/// Decides what a CA's answer (its `ca_bundle`, and the chain of the certificate it
/// issued) may change in a worker's trust set `current`. Returns the new trust set.
///
/// - A root already in `current` stays if the bundle still has it; one the bundle no
///   longer lists is dropped (the end of a rollover).
/// - A new root is accepted only when the bundle also carries a cross-certificate for it
///   (its subject and key, CA:true, within validity) whose signature verifies with a root
///   already trusted: new roots arrive only through the rollover protocol. A new root
///   that the pinned intermediate of `current` chains to (its issuer, verified by
///   signature) is also accepted: it widens nothing, since peers must still come
///   through that intermediate. Any other new root refuses the whole answer.
/// - An intermediate the bundle publishes is accepted if a trusted CA certificate signed
///   it.
/// - The issued certificate must verify to the result, as a peer's handshake would: to
///   a CA certificate the worker trusted, or a root one of those vouches for.
pub fn accept_trust_update(
    current: &[CertificateDer<'static>],
    bundle: &[CertificateDer<'static>],
    issued_chain: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let (leaf, intermediates) = issued_chain.split_first().ok_or("the answer holds no certificate")?;
    let trusted: Vec<X509Certificate<'_>> = current.iter().filter_map(|d| parsed(d)).collect();
    let offered: Vec<(&CertificateDer<'static>, X509Certificate<'_>)> =
        bundle.iter().filter_map(|d| parsed(d).map(|c| (d, c))).collect();
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let valid_now = |c: &X509Certificate<'_>| {
        c.validity().not_before.timestamp() <= now_secs && now_secs <= c.validity().not_after.timestamp()
    };
    let signed_by_trusted = |c: &X509Certificate<'_>| {
        trusted
            .iter()
            .filter(|t| self_signed(t) || is_ca(t))
            .any(|t| t.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(Some(t.public_key())).is_ok())
    };
    // The trusted intermediates and, through the issued chain, every CA above them.
    let mut ancestors: Vec<&X509Certificate<'_>> = trusted.iter().filter(|t| !self_signed(t)).collect();
    let above: Vec<X509Certificate<'_>> = intermediates.iter().filter_map(|d| parsed(d)).collect();
    while let Some(next) = above.iter().find(|a| {
        !ancestors.iter().any(|x| x.subject().as_raw() == a.subject().as_raw())
            && ancestors.iter().any(|x| {
                x.issuer().as_raw() == a.subject().as_raw() && x.verify_signature(Some(a.public_key())).is_ok()
            })
    }) {
        ancestors.push(next);
    }
    let mut accepted = Vec::new();
    for (der, cert) in &offered {
        if current.contains(der) {
            accepted.push((*der).clone());
            continue;
        }
        if !is_ca(cert) {
            return Err(format!("the CA bundle holds {}, which is not a CA certificate", cert.subject()));
        }
        if self_signed(cert) {
            let vouched = offered.iter().any(|(_, x)| {
                !self_signed(x)
                    && is_ca(x)
                    && valid_now(x)
                    && x.subject().as_raw() == cert.subject().as_raw()
                    && x.public_key().raw == cert.public_key().raw
                    && signed_by_trusted(x)
            });
            let issuer_of_pinned = ancestors.iter().any(|t| {
                t.issuer().as_raw() == cert.subject().as_raw() && t.verify_signature(Some(cert.public_key())).is_ok()
            });
            if !(vouched || issuer_of_pinned) {
                return Err(format!(
                    "the CA bundle adds the root {} (sha256 {}) that no root this worker trusts vouches for; a new root is trusted only through the rollover protocol (a cross-certificate from a trusted root)",
                    cert.subject(),
                    crank_security_core::fingerprint_sha256(der)
                ));
            }
            accepted.push((*der).clone());
        } else if signed_by_trusted(cert) {
            accepted.push((*der).clone());
        }
        // Anything else (a cross-certificate, an intermediate no trusted root signed) is
        // not kept.
    }
    let accepted = trust_set(&accepted);
    verify_leaf(leaf, intermediates, &accepted, now).map_err(|e| {
        format!("the issued certificate does not verify to a CA certificate this worker trusts (or a root one of them vouches for): {e}")
    })?;
    Ok(accepted)
}

/// Verifies `leaf` to the trust set `trust` as a server verifies a client certificate
/// in the handshake (chain, validity, clientAuth, and issuance by a published
/// intermediate when the set has one).
fn verify_leaf(
    leaf: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    trust: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), String> {
    let v = build(trust, Vec::new(), CrlMode::Warn).map_err(|e| e.to_string())?;
    v.client.verify_client_cert(leaf, intermediates, now).map_err(|e| e.to_string())?;
    if let Some((_, client)) = &v.issued_by {
        client
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| format!("it is not issued by an intermediate the trust domain publishes: {e}"))?;
    }
    Ok(())
}
