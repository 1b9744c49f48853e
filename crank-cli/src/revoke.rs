//! `crank revoke`: revocation at the CA with an administrator certificate.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use crank_runtime::CaClient;
use crank_runtime::api::RevokeBody;
use crank_runtime::tls::Credentials;
use crank_runtime::trust::TrustStore;
use crank_security_core::{CertificateBundle, SecurityConfig, TrustDomain};

/// `crank revoke`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "worker_id", "admin"])))]
pub(crate) struct RevokeArgs {
    /// Serial of the certificate (as `crank cert inspect` prints it).
    #[arg(long)]
    pub(crate) serial: Option<String>,
    /// Revoke every unexpired certificate of this worker (never an administrator's).
    #[arg(long)]
    pub(crate) worker_id: Option<String>,
    /// Revoke every unexpired certificate of this administrator (`crank ca admin-cert
    /// --name`).
    #[arg(long)]
    pub(crate) admin: Option<String>,
    /// RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged,
    /// superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.
    #[arg(long)]
    pub(crate) reason: String,
    /// CA URL(s), comma-separated (default: CA_SERVICE_URL).
    #[arg(long)]
    pub(crate) ca_url: Option<String>,
    /// Folder with admin.crt, admin.key and ca.crt from `crank ca admin-cert`.
    #[arg(long, env = "CRANK_ADMIN_DIR")]
    pub(crate) admin_dir: PathBuf,
}

pub(crate) async fn run(args: RevokeArgs) -> anyhow::Result<()> {
    let client = admin_client(&args.admin_dir, args.ca_url.as_deref())?;
    let body = RevokeBody { serial: args.serial, worker_id: args.worker_id, admin: args.admin, reason: args.reason };
    let answer = client.revoke(&body).await?;
    say!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// A client of the CA at `ca_url` (else `CA_SERVICE_URL`) presenting the administrator
/// certificate in `admin_dir` (`crank ca admin-cert`), verifying that the CA is this
/// trust domain's.
pub(crate) fn admin_client(admin_dir: &std::path::Path, ca_url: Option<&str>) -> anyhow::Result<CaClient> {
    let ca_urls = match ca_url {
        Some(list) => crank_security_core::parse_ca_urls(list)?,
        None => SecurityConfig::from_env()?.ca_urls,
    };
    let read = |f: &str| {
        let p = admin_dir.join(f);
        std::fs::read(&p).with_context(|| format!("reading {} (made by `crank ca admin-cert`)", p.display()))
    };
    let bundle = CertificateBundle::from_pem(&read("admin.crt")?, &read("admin.key")?, &read("ca.crt")?)?;
    // spiffe://<td>/admin/<name>: the CA must prove it is this trust domain's CA.
    let td = bundle
        .metadata()
        .uri_sans
        .iter()
        .find_map(|u| u.strip_prefix("spiffe://")?.split_once("/admin/").map(|(td, _)| td.to_owned()))
        .context("admin.crt is not an administrator certificate (no spiffe://<td>/admin/<name> URI)")?;
    Ok(CaClient::mtls(
        ca_urls,
        &TrustStore::new(bundle.ca())?,
        Credentials::new(bundle.certified_key()?),
        &TrustDomain::new(td)?,
    )?)
}
