//! `crank cert`: bootstrap a worker certificate with a join token, and inspect one.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use crank_runtime::{BootstrapOptions, RetryPolicy, bootstrap};
use crank_security_core::{CertMetadata, EventSinks, KeyType, SecurityConfig, WorkerId, parse_pem_certs};

/// `crank cert ...`
#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Get a first certificate for a worker with a join token.
    Init(CertInitArgs),
    /// Show a certificate's metadata.
    Inspect {
        /// PEM certificate file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `crank cert init`
#[derive(Debug, Args)]
pub(crate) struct CertInitArgs {
    /// The worker id (must match the token).
    #[arg(long)]
    pub(crate) worker_id: String,
    /// The join token.
    #[arg(long, env = "CRANK_JOIN_TOKEN", hide_env_values = true)]
    pub(crate) token: String,
    /// CA URL(s), comma-separated (default: CA_SERVICE_URL).
    #[arg(long)]
    pub(crate) ca_url: Option<String>,
    /// Where to write the files (default: CERT_DIR rules).
    #[arg(long)]
    pub(crate) cert_dir: Option<PathBuf>,
    /// SAN to ask for (repeatable; default: worker id, localhost, 127.0.0.1, ::1).
    #[arg(long = "san")]
    pub(crate) sans: Vec<String>,
    /// Key type.
    #[arg(long, default_value = "ecdsa-p256")]
    pub(crate) key_type: KeyType,
    /// Attempts while the CA is unavailable.
    #[arg(long, default_value_t = 5)]
    pub(crate) attempts: usize,
}

pub(crate) fn run(cmd: CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Init(args) => crate::runtime()?.block_on(init(args)),
        CertCommand::Inspect { file, json } => inspect(&file, json),
    }
}

async fn init(args: CertInitArgs) -> anyhow::Result<()> {
    let env = SecurityConfig::from_env()?;
    let ca_urls = match &args.ca_url {
        Some(list) => {
            SecurityConfig::from_lookup(
                |k| {
                    if k == "CA_SERVICE_URL" { Some(list.clone()) } else { None }
                },
                &crank_security_core::FixedCertDir(env.cert_dir.clone()),
            )?
            .ca_urls
        }
        None => env.ca_urls.clone(),
    };
    let opts = BootstrapOptions {
        worker_id: Some(WorkerId::new(args.worker_id)?),
        token: args.token,
        ca_urls,
        cert_dir: args.cert_dir.unwrap_or(env.cert_dir),
        sans: args.sans,
        key_type: args.key_type,
        retry: RetryPolicy { attempts: args.attempts.max(1), ..RetryPolicy::default() },
    };
    let bundle = bootstrap(&opts, &EventSinks::default()).await?;
    let m = bundle.metadata();
    say!("certificate written to {}", opts.cert_dir.display());
    say!("  spiffe id: {}", m.spiffe_id.as_deref().unwrap_or("-"));
    say!("  serial:    {}", m.serial);
    say!("  expires:   {}", crank_security_core::rfc3339(m.not_after));
    Ok(())
}

fn inspect(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let pem = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let certs =
        parse_pem_certs("certificate", &pem).with_context(|| format!("{} holds no PEM certificate", file.display()))?;
    let leaf = certs.first().context("no certificate")?;
    let m = CertMetadata::from_der(leaf)?;
    let remaining = m.seconds_remaining_now();
    if json {
        #[derive(serde::Serialize)]
        struct Inspected<'a> {
            #[serde(flatten)]
            metadata: &'a CertMetadata,
            seconds_remaining: i64,
            chain_length: usize,
        }
        let out = Inspected { metadata: &m, seconds_remaining: remaining, chain_length: certs.len() };
        say!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        say!("subject:      {}", m.subject);
        say!("issuer:       {}", m.issuer);
        say!("serial:       {}", m.serial);
        say!("spiffe id:    {}", m.spiffe_id.as_deref().unwrap_or("-"));
        say!("dns sans:     {}", m.dns_sans.join(", "));
        say!("ip sans:      {}", m.ip_sans.join(", "));
        say!("not before:   {}", crank_security_core::rfc3339(m.not_before));
        say!("not after:    {}", crank_security_core::rfc3339(m.not_after));
        say!("remaining:    {remaining} s");
        say!("is CA:        {}", m.is_ca);
        say!("sha256:       {}", m.fingerprint_sha256);
    }
    Ok(())
}
