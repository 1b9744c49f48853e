//! `crank status`: the console's overview in the terminal, from the CA's
//! `/console/api/status` with an administrator certificate.

use std::path::PathBuf;

use clap::Args;
use crank_ca::console::{Status, relative};
use time::OffsetDateTime;

/// `crank status`
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// CA URL(s), comma-separated (default: CA_SERVICE_URL).
    #[arg(long)]
    ca_url: Option<String>,
    /// Folder with admin.crt, admin.key and ca.crt from `crank ca admin-cert`.
    #[arg(long, env = "CRANK_ADMIN_DIR")]
    admin_dir: PathBuf,
    /// Print the overview as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = crate::revoke::admin_client(&args.admin_dir, args.ca_url.as_deref())?;
    let status: Status = client.get_json("/console/api/status").await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        say!("{}", render(&status, OffsetDateTime::now_utc()).trim_end());
    }
    Ok(())
}

fn when(rfc3339: &str, now: OffsetDateTime) -> String {
    match OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339) {
        Ok(t) => format!("{} ({rfc3339})", relative(t, now)),
        Err(_) => rfc3339.to_owned(),
    }
}

/// The overview as text.
fn render(s: &Status, now: OffsetDateTime) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "CA {}: replica {}, store {}, signer {}", s.trust_domain, s.replica, s.store, s.signer);
    match &s.crl {
        Some(c) => {
            let _ = writeln!(
                out,
                "CRL: number {}, {} entries, signed {}, next update {}",
                c.number,
                c.entries,
                when(&c.this_update, now),
                when(&c.next_update, now)
            );
        }
        None => out.push_str("CRL: none signed yet\n"),
    }
    let c = &s.certificates;
    let _ = writeln!(
        out,
        "Certificates: {} total, {} valid, {} expiring within 1 h, {} revoked, {} expired",
        c.total, c.valid, c.expiring, c.revoked, c.expired
    );
    out.push_str("Replicas:\n");
    for r in &s.replicas {
        let _ = writeln!(
            out,
            "  {:<24} {:<22} {:<8} last heartbeat {}{}",
            r.name,
            r.address,
            if r.healthy { "healthy" } else { "SILENT" },
            when(&r.last_seen, now),
            if r.this { "  (answered)" } else { "" }
        );
    }
    if s.recent_denials.is_empty() {
        out.push_str("Recent refusals: none\n");
    } else {
        out.push_str("Recent refusals (newest first):\n");
        for d in &s.recent_denials {
            let cap = d.capability.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default();
            let _ = writeln!(out, "  {} {} {}{}: {}", d.at, d.event, d.who, cap, d.reason);
        }
    }
    out
}
