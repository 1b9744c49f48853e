//! Zero-downtime rollover of the CA root, in three operator steps:
//!
//! 1. `crank ca rollover prepare`: make the next root and publish it **beside** the
//!    current one (`trust-bundle.crt`), with two cross-certificates: the current root
//!    certifies the next root's key, and the next root the current one's. Restart the CA
//!    (one replica at a time). Workers receive the bundle with their next renewal and
//!    trust the next root because a root they already trust vouches for it (no answer
//!    adds a root otherwise); wait at least one certificate lifetime so that every worker
//!    has renewed.
//! 2. `crank ca rollover activate`: the next root starts signing (with a new TLS
//!    certificate for the CA service); the old root stays in the bundle. Restart the CA.
//!    Leaves from either root verify everywhere.
//! 3. `crank ca rollover finish`: once the last leaf signed by the old root has expired
//!    (checked against the ledger), drop the old root from the bundle. Restart the CA.

use crank_security_core::{CertMetadata, FileChange, parse_pem_certs, rfc3339};
use rcgen::{DnType, KeyPair};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::files::{CaDir, first_cert, new_key, root_params, server_certificate};
use super::store::CaStore;
use crate::error::SetupError;

/// Refuses a rollover in intermediate mode: the root belongs to the enterprise PKI.
fn refuse_intermediate(dir: &CaDir) -> Result<(), SetupError> {
    if dir.is_intermediate() {
        return Err(SetupError::not_ready(
            "this CA is an intermediate under an external root (it has intermediate.key): `crank ca rollover` rolls a root this CA owns, and it owns none. \
             To renew the intermediate's certificate, have the enterprise root sign intermediate.csr again and run `crank ca import`",
        ));
    }
    Ok(())
}

/// The content of `path`.
fn read(path: &std::path::Path) -> Result<String, SetupError> {
    std::fs::read_to_string(path).map_err(SetupError::io("reading", path))
}

/// Step 1: create the next root and publish the two-root bundle.
pub fn prepare(dir: &CaDir) -> Result<String, SetupError> {
    dir.recover()?;
    refuse_intermediate(dir)?;
    if dir.next_root_cert().exists() {
        return Err(SetupError::not_ready(
            "a rollover is already prepared (next-root.crt exists); run `crank ca rollover activate`",
        ));
    }
    if dir.activated_at_file().exists() {
        return Err(SetupError::not_ready(
            "the previous rollover is not finished; run `crank ca rollover finish` first",
        ));
    }
    let td = dir.trust_domain()?;
    let now = OffsetDateTime::now_utc();
    let key = new_key("the next root's key")?;
    let mut params = root_params(&td, now);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Crank Platform CA {}", rfc3339(now)));
    dn.push(DnType::OrganizationName, td.as_str());
    params.distinguished_name = dn;
    let cert = params.self_signed(&key).map_err(SetupError::certificate("self-signing the next root"))?;
    let current = read(&dir.root_cert())?;
    let current_der = dir.root_der()?;
    let current_key = CaDir::read_key(&dir.root_key())?;
    // Each root vouches for the other: a worker pinned to either accepts both.
    let mut current_params = root_params(&td, now);
    current_params.distinguished_name = super::cross::subject_of(&current_der)?;
    let next_end = params.not_after;
    let current_end = CertMetadata::from_der(&current_der)?.not_after;
    let next_key =
        KeyPair::from_pem(&key.serialize_pem()).map_err(SetupError::certificate("copying the next root's key"))?;
    let next_issuer = rcgen::Issuer::from_ca_cert_der(cert.der(), next_key)
        .map_err(SetupError::certificate("reading the next root's certificate"))?;
    let current_by_next = super::cross::certificate(current_params, &current_key, &next_issuer, next_end, now)?;
    let current_issuer = rcgen::Issuer::from_ca_cert_der(&current_der, current_key)
        .map_err(SetupError::certificate("reading the current root's certificate"))?;
    let next_by_current = super::cross::certificate(params, &key, &current_issuer, current_end, now)?;
    let crosses = format!("{next_by_current}{current_by_next}");
    // One change: a CA killed part way through has either all of it or none of it.
    FileChange::in_dir(&dir.dir)
        .write(&dir.next_root_key(), key.serialize_pem(), 0o600)
        .write(&dir.next_root_cert(), cert.pem(), 0o644)
        .write(&dir.cross_certs_file(), crosses.as_bytes(), 0o644)
        .write(&dir.trust_bundle_file(), format!("{current}{}{crosses}", cert.pem()), 0o644)
        .commit()?;
    Ok(crank_security_core::fingerprint_sha256(cert.der()))
}

/// Step 2: the next root becomes the signing root.
pub fn activate(dir: &CaDir) -> Result<String, SetupError> {
    dir.recover()?;
    refuse_intermediate(dir)?;
    if !dir.next_root_cert().exists() {
        return Err(SetupError::not_ready("no rollover is prepared; run `crank ca rollover prepare` first"));
    }
    let td = dir.trust_domain()?;
    let now = OffsetDateTime::now_utc();
    let old_pem = read(&dir.root_cert())?;
    let new_pem = read(&dir.next_root_cert())?;
    let new_key = CaDir::read_key(&dir.next_root_key())?;
    let new_der = first_cert(parse_pem_certs("next root", new_pem.as_bytes())?, dir.next_root_cert())?;
    // The CA service keeps its names; its new TLS certificate comes from the new root.
    let old_server = read(&dir.server_cert())?;
    let old_server = first_cert(parse_pem_certs("server certificate", old_server.as_bytes())?, dir.server_cert())?;
    let old_meta = CertMetadata::from_der(&old_server)?;
    let mut sans = old_meta.dns_sans.clone();
    sans.extend(old_meta.ip_sans.iter().cloned());
    let new_pem_key = new_key.serialize_pem();
    let issuer = rcgen::Issuer::from_ca_cert_der(&new_der, new_key)
        .map_err(SetupError::certificate("reading the next root's certificate"))?;
    let (server_key, server) = server_certificate(&sans, &td, &issuer, now, None, crate::files::SERVER_VALIDITY)?;

    // A rollover prepared by a release without cross-certificates has none.
    let crosses = std::fs::read_to_string(dir.cross_certs_file()).unwrap_or_default();
    // One change: a CA killed part way through has either all of it or none of it (a
    // root key beside another root's certificate, or the new root recorded as the
    // previous one, would break every worker).
    FileChange::in_dir(&dir.dir)
        .write(&dir.previous_root_cert(), old_pem.as_bytes(), 0o644)
        .write(&dir.trust_bundle_file(), format!("{new_pem}{old_pem}{crosses}"), 0o644)
        .write(&dir.server_key(), server_key.serialize_pem(), 0o600)
        .write(&dir.server_cert(), format!("{}{new_pem}", server.pem()), 0o644)
        .write(&dir.root_key(), new_pem_key.as_bytes(), 0o600)
        .write(&dir.root_cert(), new_pem.as_bytes(), 0o644)
        .write(&dir.activated_at_file(), rfc3339(now), 0o644)
        .remove(&dir.next_root_key())
        .remove(&dir.next_root_cert())
        .commit()?;
    Ok(crank_security_core::fingerprint_sha256(&new_der))
}

/// Step 3: drop the old root once nothing it signed is still valid.
pub async fn finish(dir: &CaDir, store: &dyn CaStore) -> Result<(), SetupError> {
    dir.recover()?;
    refuse_intermediate(dir)?;
    let activated = std::fs::read_to_string(dir.activated_at_file()).map_err(|e| {
        SetupError::not_ready("no activated rollover to finish (run `crank ca rollover activate` first)").because(e)
    })?;
    let activated = OffsetDateTime::parse(activated.trim(), &Rfc3339).map_err(|e| SetupError::Damaged {
        path: dir.activated_at_file(),
        problem: "does not hold an RFC 3339 time",
        source: Some(e.into()),
    })?;
    if let Some(last) = store.latest_expiry_issued_before(activated).await? {
        let now = OffsetDateTime::now_utc();
        if last > now {
            return Err(SetupError::not_ready(format!(
                "certificates signed by the old root are valid until {}; run `crank ca rollover finish` after that",
                rfc3339(last)
            )));
        }
    }
    // Without trust-bundle.crt the bundle is root.crt alone.
    FileChange::in_dir(&dir.dir)
        .remove(&dir.trust_bundle_file())
        .remove(&dir.activated_at_file())
        .remove(&dir.cross_certs_file())
        .commit()?;
    Ok(())
}
