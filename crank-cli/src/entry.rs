//! `crank entry`: registration entries at the CA, which say which agent may obtain
//! certificates for which worker id, for which processes (needs an administrator
//! certificate from `crank ca admin-cert`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use crank_runtime::api::EntryBody;

use crate::revoke::admin_client;

/// Where the CA is and who asks.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// CA URL(s), comma-separated (default: CA_SERVICE_URL).
    #[arg(long)]
    ca_url: Option<String>,
    /// Folder with admin.crt, admin.key and ca.crt from `crank ca admin-cert`.
    #[arg(long, env = "CRANK_ADMIN_DIR")]
    admin_dir: PathBuf,
}

/// `crank entry ...`
#[derive(Debug, Subcommand)]
pub(crate) enum EntryCommand {
    /// Let an agent obtain certificates for a worker id, for the processes matching every
    /// selector; prints the entry.
    Create {
        /// The worker id the workload's certificates name.
        #[arg(long)]
        worker_id: String,
        /// What a process must match, repeatable: `unix:uid:1000`, `unix:gid:1000`,
        /// `unix:path:/usr/bin/python3`, `unix:sha256:<hex of the executable>`.
        #[arg(long = "selector", required = true)]
        selectors: Vec<String>,
        /// The agent's worker id (its identity comes from its own join token).
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List entries (only one agent's with `--agent`).
    List {
        /// Only this agent's entries.
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete an entry by id; its agent stops handing out its certificates at its next
    /// sync.
    Delete {
        /// The entry's id (from `create` or `list`).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(crate) async fn run(cmd: EntryCommand) -> anyhow::Result<()> {
    let answer = match cmd {
        EntryCommand::Create { worker_id, selectors, agent, admin } => {
            let client = admin_client(&admin.admin_dir, admin.ca_url.as_deref())?;
            serde_json::to_value(client.create_entry(&EntryBody { worker_id, selectors, agent_id: agent }).await?)?
        }
        EntryCommand::List { agent, admin } => {
            let client = admin_client(&admin.admin_dir, admin.ca_url.as_deref())?;
            serde_json::to_value(client.entries(agent.as_deref()).await?)?
        }
        EntryCommand::Delete { id, admin } => {
            let client = admin_client(&admin.admin_dir, admin.ca_url.as_deref())?;
            client.delete_entry(&id).await?
        }
    };
    say!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
