//! Revocation lists on the worker side: verifying a CRL against the trust set, keeping
//! the one in force beside the certificate (`ca.crl`, never replaced by an older one, so
//! a restarted worker starts with it), and what readiness and metrics see of it
//! ([`CrlStatus`]). Fetching it on an interval is [`crl_watch`](super::crl_watch).
//!
//! A CRL is used only if its signature verifies with the trusted certificate named as
//! its issuer (a root, or in intermediate mode the worker's own intermediate), and if its
//! number is not lower than the one kept.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crank_security_core::CertFiles;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// Default interval between CRL fetches.
pub const DEFAULT_CRL_REFRESH: Duration = Duration::from_secs(30);

/// What a verified CRL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// CRL number (0 if absent).
    pub number: u128,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds, if present.
    pub next_update: Option<i64>,
    /// Revoked serials, hex with `:` (as the ledger and `crank cert inspect` write them).
    pub serials: HashSet<String>,
}

/// Parses `der` and verifies its signature with the certificate named as its issuer:
/// a trusted root, or (intermediate mode) an intermediate of `intermediates` whose own
/// signature chains to a trusted root.
pub fn verify_crl(
    der: &[u8],
    roots: &[CertificateDer<'_>],
    intermediates: &[CertificateDer<'_>],
) -> Result<CrlInfo, String> {
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|e| format!("not a DER CRL: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the CRL".into());
    }
    let issuer = crl.issuer();
    let mut named = false;
    for cert in trusted_issuers(roots, intermediates) {
        if cert.subject().as_raw() != issuer.as_raw() {
            continue;
        }
        named = true;
        if crl.verify_signature(cert.public_key()).is_ok() {
            let number = crl.crl_number().map_or(0, |n| u128::try_from(n.clone()).unwrap_or(u128::MAX));
            return Ok(CrlInfo {
                number,
                this_update: crl.last_update().timestamp(),
                next_update: crl.next_update().map(|t| t.timestamp()),
                serials: crl.iter_revoked_certificates().map(|r| r.raw_serial_as_string()).collect(),
            });
        }
    }
    Err(if named {
        format!("the CRL's signature does not verify with the trusted certificate {issuer}")
    } else {
        format!("the CRL's issuer {issuer} is neither a trusted root nor an intermediate that chains to one")
    })
}

/// The roots, then every CA certificate of `intermediates` whose signature verifies with
/// a certificate already accepted.
fn trusted_issuers<'a>(
    roots: &'a [CertificateDer<'_>],
    intermediates: &'a [CertificateDer<'_>],
) -> Vec<X509Certificate<'a>> {
    let parse = |c: &'a CertificateDer<'_>| X509Certificate::from_der(c).ok().map(|(_, x)| x);
    let mut accepted: Vec<X509Certificate<'a>> = roots.iter().filter_map(parse).collect();
    let mut pending: Vec<X509Certificate<'a>> = intermediates
        .iter()
        .filter_map(parse)
        .filter(|c| c.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca))
        .collect();
    while let Some(pos) = pending.iter().position(|c| {
        accepted
            .iter()
            .any(|a| a.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(Some(a.public_key())).is_ok())
    }) {
        accepted.push(pending.swap_remove(pos));
    }
    accepted
}

/// Reads a CRL given as PEM (`X509 CRL`) or DER.
pub fn crl_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    if bytes.starts_with(b"-----") {
        return CertificateRevocationListDer::from_pem_slice(bytes)
            .map(|d| d.to_vec())
            .map_err(|e| format!("not a PEM X509 CRL: {e}"));
    }
    Ok(bytes.to_vec())
}

/// The CRL kept beside the certificate (`ca.crl`), if there is one that verifies with
/// `roots` (and `intermediates`).
pub fn load_crl(
    files: &CertFiles,
    roots: &[CertificateDer<'_>],
    intermediates: &[CertificateDer<'_>],
) -> Result<Option<(Vec<u8>, CrlInfo)>, String> {
    let bytes = match std::fs::read(&files.crl) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", files.crl.display())),
    };
    let der = crl_der(&bytes).map_err(|e| format!("{}: {e}", files.crl.display()))?;
    let info = verify_crl(&der, roots, intermediates).map_err(|e| format!("{}: {e}", files.crl.display()))?;
    Ok(Some((der, info)))
}

/// Verifies a CRL the CA handed over and keeps it beside the certificate, unless the one
/// there already has a higher number: a CRL number never goes backwards, across restarts
/// too, so a replayed old CRL cannot bring a revoked peer back. Returns what it verified,
/// and whether it is now the one kept.
pub fn keep_crl(
    files: &CertFiles,
    crl: &[u8],
    roots: &[CertificateDer<'_>],
    intermediates: &[CertificateDer<'_>],
) -> Result<(CrlInfo, bool), String> {
    let der = crl_der(crl)?;
    let info = verify_crl(&der, roots, intermediates)?;
    let kept = load_crl(files, roots, intermediates).ok().flatten().map(|(_, i)| i.number);
    if kept.is_some_and(|n| n > info.number) {
        return Ok((info, false));
    }
    if kept != Some(info.number) {
        crank_security_core::write_file_atomic(&files.crl, crank_security_core::crl_pem(&der).as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
    }
    Ok((info, true))
}

/// The CRL a worker holds, as readiness and metrics see it.
#[derive(Debug, Default)]
pub struct CrlStatus {
    current: arc_swap::ArcSwapOption<CrlInfo>,
}

impl CrlStatus {
    /// The CRL in force, if any.
    pub fn current(&self) -> Option<Arc<CrlInfo>> {
        self.current.load_full()
    }

    /// Why the worker is not ready as far as revocation goes: no CRL yet, or the one in
    /// force is past its nextUpdate at `now` (Unix seconds).
    pub fn problem(&self, now: i64) -> Option<String> {
        match self.current() {
            None => Some("no CRL from the CA yet: revoked peers cannot be recognised".into()),
            Some(c) if c.next_update.is_some_and(|n| n <= now) => Some(format!(
                "the CRL in force (number {}) is stale: its nextUpdate was {}, and the CA has not answered with a newer one",
                c.number,
                c.next_update.unwrap_or_default()
            )),
            Some(_) => None,
        }
    }

    pub(crate) fn set(&self, info: CrlInfo) {
        self.current.store(Some(Arc::new(info)));
    }
}
