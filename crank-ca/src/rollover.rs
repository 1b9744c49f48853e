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

use anyhow::{Context, bail};
use crank_security_core::{CertMetadata, parse_pem_certs, write_file_atomic};
use rcgen::{DnType, KeyPair};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::files::{CaDir, root_params, server_certificate};
use super::store::CaStore;

/// Refuses a rollover in intermediate mode: the root belongs to the enterprise PKI.
fn refuse_intermediate(dir: &CaDir) -> anyhow::Result<()> {
    if dir.is_intermediate() {
        bail!(
            "this CA is an intermediate under an external root (it has intermediate.key): `crank ca rollover` rolls a root this CA owns, and it owns none. \
             To renew the intermediate's certificate, have the enterprise root sign intermediate.csr again and run `crank ca import`"
        );
    }
    Ok(())
}

/// Step 1: create the next root and publish the two-root bundle.
pub fn prepare(dir: &CaDir) -> anyhow::Result<String> {
    refuse_intermediate(dir)?;
    if dir.next_root_cert().exists() {
        bail!("a rollover is already prepared (next-root.crt exists); run `crank ca rollover activate`");
    }
    if dir.activated_at_file().exists() {
        bail!("the previous rollover is not finished; run `crank ca rollover finish` first");
    }
    let td = dir.trust_domain()?;
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = root_params(&td, now);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Crank Platform CA {}", now.format(&Rfc3339)?));
    dn.push(DnType::OrganizationName, td.as_str());
    params.distinguished_name = dn;
    let cert = params.self_signed(&key)?;
    let current = std::fs::read_to_string(dir.root_cert())?;
    let current_der = dir.root_der()?;
    let current_key = CaDir::read_key(&dir.root_key())?;
    // Each root vouches for the other: a worker pinned to either accepts both.
    let mut current_params = root_params(&td, now);
    current_params.distinguished_name = super::cross::subject_of(&current_der)?;
    let next_end = params.not_after;
    let current_end = CertMetadata::from_der(&current_der)?.not_after;
    let next_issuer = rcgen::Issuer::from_ca_cert_der(cert.der(), KeyPair::from_pem(&key.serialize_pem())?)?;
    let current_by_next = super::cross::certificate(current_params, &current_key, &next_issuer, next_end, now)?;
    let current_issuer = rcgen::Issuer::from_ca_cert_der(&current_der, current_key)?;
    let next_by_current = super::cross::certificate(params, &key, &current_issuer, current_end, now)?;
    let crosses = format!("{next_by_current}{current_by_next}");
    write_file_atomic(&dir.next_root_key(), key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.next_root_cert(), cert.pem().as_bytes(), 0o644)?;
    write_file_atomic(&dir.cross_certs_file(), crosses.as_bytes(), 0o644)?;
    write_file_atomic(&dir.trust_bundle_file(), format!("{current}{}{crosses}", cert.pem()).as_bytes(), 0o644)?;
    Ok(crank_security_core::fingerprint_sha256(cert.der()))
}

/// Step 2: the next root becomes the signing root.
pub fn activate(dir: &CaDir) -> anyhow::Result<String> {
    refuse_intermediate(dir)?;
    if !dir.next_root_cert().exists() {
        bail!("no rollover is prepared; run `crank ca rollover prepare` first");
    }
    let td = dir.trust_domain()?;
    let now = OffsetDateTime::now_utc();
    let old_pem = std::fs::read_to_string(dir.root_cert())?;
    let new_pem = std::fs::read_to_string(dir.next_root_cert())?;
    let new_key = CaDir::read_key(&dir.next_root_key())?;
    let new_der = parse_pem_certs("next root", new_pem.as_bytes())?.remove(0);
    // The CA service keeps its names; its new TLS certificate comes from the new root.
    let old_server = parse_pem_certs("server certificate", &std::fs::read(dir.server_cert())?)?.remove(0);
    let old_meta = CertMetadata::from_der(&old_server)?;
    let mut sans = old_meta.dns_sans.clone();
    sans.extend(old_meta.ip_sans.iter().cloned());
    let new_pem_key = new_key.serialize_pem();
    let issuer = rcgen::Issuer::from_ca_cert_der(&new_der, new_key)?;
    let (server_key, server) = server_certificate(&sans, &td, &issuer, now, None)?;

    write_file_atomic(&dir.previous_root_cert(), old_pem.as_bytes(), 0o644)?;
    let crosses = std::fs::read_to_string(dir.cross_certs_file()).unwrap_or_default();
    write_file_atomic(&dir.trust_bundle_file(), format!("{new_pem}{old_pem}{crosses}").as_bytes(), 0o644)?;
    write_file_atomic(&dir.server_key(), server_key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&dir.server_cert(), format!("{}{new_pem}", server.pem()).as_bytes(), 0o644)?;
    write_file_atomic(&dir.root_key(), new_pem_key.as_bytes(), 0o600)?;
    write_file_atomic(&dir.root_cert(), new_pem.as_bytes(), 0o644)?;
    write_file_atomic(&dir.activated_at_file(), now.format(&Rfc3339)?.as_bytes(), 0o644)?;
    std::fs::remove_file(dir.next_root_key())?;
    std::fs::remove_file(dir.next_root_cert())?;
    Ok(crank_security_core::fingerprint_sha256(&new_der))
}

/// Step 3: drop the old root once nothing it signed is still valid.
pub async fn finish(dir: &CaDir, store: &dyn CaStore) -> anyhow::Result<()> {
    refuse_intermediate(dir)?;
    let activated = std::fs::read_to_string(dir.activated_at_file())
        .context("no activated rollover to finish (run `crank ca rollover activate` first)")?;
    let activated = OffsetDateTime::parse(activated.trim(), &Rfc3339)?;
    if let Some(last) = store.latest_expiry_issued_before(activated).await? {
        let now = OffsetDateTime::now_utc();
        if last > now {
            bail!(
                "certificates signed by the old root are valid until {}; run `crank ca rollover finish` after that",
                last.format(&Rfc3339)?
            );
        }
    }
    // Without trust-bundle.crt the bundle is root.crt alone.
    std::fs::remove_file(dir.trust_bundle_file())?;
    std::fs::remove_file(dir.activated_at_file())?;
    let _ = std::fs::remove_file(dir.cross_certs_file());
    Ok(())
}
