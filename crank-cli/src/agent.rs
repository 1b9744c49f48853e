//! `crank agent`: certificates for workloads that do not link crank-runtime, kept fresh
//! as files and served over the SPIFFE Workload API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use crank_agent::agent::{Agent, AgentIdentity, AgentOptions, CaJwt, DEFAULT_SYNC};
use crank_agent::files::{FileTarget, Owner, Reload};
use crank_agent::workload::{WorkloadApi, WorkloadListener};
use crank_runtime::WorkerApplication;
use crank_security_core::WorkerId;

/// `crank agent`
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// The Workload API's Unix socket: a path or `unix:///path` (default:
    /// SPIFFE_ENDPOINT_SOCKET; without either, the Workload API is off).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    socket: Option<String>,
    /// A certificate directory to keep fresh for a worker id, `DIR=WORKER_ID`
    /// (repeatable); a registration entry must assign the worker id to this agent.
    #[arg(long = "files", value_name = "DIR=WORKER_ID")]
    files: Vec<String>,
    /// After `DIR` changed, run `COMMAND` with `sh -c` (`CRANK_CERT_DIR` is set),
    /// `DIR=COMMAND` (repeatable).
    #[arg(long = "reload", value_name = "DIR=COMMAND")]
    reload: Vec<String>,
    /// After `DIR` changed, send `SIGNAL` to the process whose id is in `PIDFILE`,
    /// `DIR=SIGNAL:PIDFILE`, e.g. `/srv/api/certs=HUP:/run/api.pid` (repeatable).
    #[arg(long = "signal", value_name = "DIR=SIGNAL:PIDFILE")]
    signal: Vec<String>,
    /// Give the files of `DIR` to user `UID` (and group `GID`, if given; numeric ids),
    /// `DIR=UID[:GID]`, for a workload of another user than the agent's; it takes an
    /// agent running as root (repeatable).
    #[arg(long = "owner", value_name = "DIR=UID[:GID]")]
    owner: Vec<String>,
    /// How often the agent asks the CA for its registration entries.
    #[arg(long, env = "CRANK_AGENT_SYNC", default_value = "5s", value_parser = humantime::parse_duration)]
    sync: Duration,
    /// The port of the agent's own HTTPS endpoint (`/health`, `/metrics`; mutual TLS like
    /// any worker's).
    #[arg(long, env = "CRANK_AGENT_PORT", default_value_t = 8600)]
    port: u16,
}

/// `DIR=REST` split at the first `=`.
fn split(what: &str, arg: &str) -> anyhow::Result<(PathBuf, String)> {
    let (dir, rest) = arg
        .split_once('=')
        .filter(|(d, r)| !d.is_empty() && !r.is_empty())
        .with_context(|| format!("--{what} {arg:?}: expected DIR=..."))?;
    Ok((PathBuf::from(dir), rest.to_owned()))
}

fn targets(args: &AgentArgs) -> anyhow::Result<Vec<FileTarget>> {
    let mut targets = Vec::new();
    for f in &args.files {
        let (dir, worker) = split("files", f)?;
        let worker = WorkerId::new(worker).with_context(|| format!("--files {f:?}"))?;
        if targets.iter().any(|t: &FileTarget| t.dir == dir) {
            anyhow::bail!("--files: {} is given twice", dir.display());
        }
        targets.push(FileTarget::new(dir, worker));
    }
    let find = |what: &str, dir: &PathBuf| -> anyhow::Result<usize> {
        targets
            .iter()
            .position(|t| &t.dir == dir)
            .with_context(|| format!("--{what}: {} is not a directory given with --files", dir.display()))
    };
    let mut steps = Vec::new();
    for r in &args.reload {
        let (dir, cmd) = split("reload", r)?;
        steps.push((find("reload", &dir)?, Reload::Command(cmd)));
    }
    for s in &args.signal {
        let (dir, rest) = split("signal", s)?;
        let (signal, pid_file) =
            rest.split_once(':').with_context(|| format!("--signal {s:?}: expected DIR=SIGNAL:PIDFILE"))?;
        crank_agent::files::parse_signal(signal).map_err(|e| anyhow::anyhow!("--signal {s:?}: {e}"))?;
        steps.push((find("signal", &dir)?, Reload::Signal { signal: signal.to_owned(), pid_file: pid_file.into() }));
    }
    let mut owners: Vec<(usize, Owner)> = Vec::new();
    for o in &args.owner {
        let (dir, ids) = split("owner", o)?;
        let i = find("owner", &dir)?;
        let id = |what: &str, s: &str| -> anyhow::Result<u32> {
            let hint = if what == "user" { "`id -u NAME` prints it" } else { "`getent group NAME` shows it" };
            s.parse::<u32>()
                .ok()
                .filter(|&n| n != u32::MAX && s.bytes().all(|b| b.is_ascii_digit()))
                .with_context(|| format!("--owner {o:?}: {s:?} is not a numeric {what} id ({hint})"))
        };
        let owner = match ids.split_once(':') {
            Some((uid, gid)) => Owner { uid: id("user", uid)?, gid: Some(id("group", gid)?) },
            None => Owner { uid: id("user", &ids)?, gid: None },
        };
        if owners.iter().any(|(j, _)| *j == i) {
            anyhow::bail!("--owner: {} is given twice", dir.display());
        }
        owners.push((i, owner));
    }
    for (i, step) in steps {
        targets[i].reload.push(step);
    }
    for (i, owner) in owners {
        targets[i].owner = Some(owner);
    }
    Ok(targets)
}

/// The socket path from `--socket` / SPIFFE_ENDPOINT_SOCKET (`unix:///path` or a path).
fn socket_path(arg: &str) -> anyhow::Result<PathBuf> {
    let path = arg.strip_prefix("unix://").unwrap_or(arg);
    if arg.contains("://") && !arg.starts_with("unix://") {
        anyhow::bail!("the Workload API socket {arg:?} must be a unix:// address or a path");
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        anyhow::bail!("the Workload API socket {arg:?} must be an absolute path");
    }
    Ok(path)
}

pub(crate) fn run(args: AgentArgs) -> anyhow::Result<()> {
    crank_runtime::logging::init();
    let files = targets(&args)?;
    let socket = args.socket.as_deref().map(socket_path).transpose()?;
    if socket.is_none() && files.is_empty() {
        anyhow::bail!(
            "nothing to hand out: give the Workload API socket (--socket or SPIFFE_ENDPOINT_SOCKET) and/or certificate directories (--files DIR=WORKER_ID)"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        // Bind first: a socket path that is not ours is refused before a join token is
        // spent.
        let listener = match &socket {
            Some(path) => Some(WorkloadListener::bind(path).await?),
            None => None,
        };
        let worker = WorkerApplication::new("crank-agent").port(args.port).start().await?;
        let id = AgentIdentity {
            worker_id: worker.context.worker_id.clone(),
            trust_domain: worker.context.spiffe_id.trust_domain.clone(),
            ca_urls: worker.rotator.ca_urls().to_vec(),
            trust: worker.trust.clone(),
            credentials: worker.credentials.clone(),
            rotator: Some(worker.rotator.clone()),
        };
        let sync = if args.sync.is_zero() { DEFAULT_SYNC } else { args.sync };
        let opts = AgentOptions { files, sync, ..AgentOptions::default() };
        let (agent, state) = Agent::new(id, opts)?;
        let jwt = Arc::new(CaJwt::new(agent.client().clone(), agent.trust_domain().clone()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(agent.run(stopped));
        tracing::info!(
            worker_id = %worker.context.worker_id,
            socket = ?socket,
            "crank agent running"
        );
        let served = match listener {
            Some(l) => l.serve(WorkloadApi::new(state, jwt), crank_runtime::shutdown_signal()).await,
            None => {
                crank_runtime::shutdown_signal().await;
                Ok(())
            }
        };
        let _ = stop.send(true);
        let _ = running.await;
        if let Some(path) = &socket {
            let _ = std::fs::remove_file(path);
        }
        worker.shutdown().await?;
        served?;
        tracing::info!("crank agent stopped");
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(files: &[&str], reload: &[&str], owner: &[&str]) -> AgentArgs {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        AgentArgs {
            socket: None,
            files: strings(files),
            reload: strings(reload),
            signal: Vec::new(),
            owner: strings(owner),
            sync: DEFAULT_SYNC,
            port: 8600,
        }
    }

    #[test]
    fn owner_gives_a_files_directory_to_a_numeric_uid_and_optional_gid() {
        let t =
            targets(&args(&["/srv/a=api", "/srv/b=web", "/srv/c=db"], &[], &["/srv/a=1000:100", "/srv/b=33"])).unwrap();
        assert_eq!(t[0].owner, Some(Owner { uid: 1000, gid: Some(100) }));
        assert_eq!(t[1].owner, Some(Owner { uid: 33, gid: None }));
        assert_eq!(t[2].owner, None);

        let err = |owner: &str| targets(&args(&["/srv/a=api"], &[], &[owner])).map(|_| ()).unwrap_err().to_string();
        // The same wording as --reload for a directory not given with --files.
        assert_eq!(err("/srv/x=1000"), "--owner: /srv/x is not a directory given with --files");
        assert_eq!(
            targets(&args(&["/srv/a=api"], &["/srv/x=true"], &[])).map(|_| ()).unwrap_err().to_string(),
            "--reload: /srv/x is not a directory given with --files"
        );
        assert_eq!(err("/srv/a"), r#"--owner "/srv/a": expected DIR=..."#);
        assert_eq!(err("/srv/a="), r#"--owner "/srv/a=": expected DIR=..."#);
        for (bad, what, value) in [
            ("/srv/a=www-data", "user", "www-data"),
            ("/srv/a=-1", "user", "-1"),
            ("/srv/a=+5", "user", "+5"),
            ("/srv/a=4294967295", "user", "4294967295"),
            ("/srv/a=99999999999", "user", "99999999999"),
            ("/srv/a=1000:", "group", ""),
            ("/srv/a=1000:staff", "group", "staff"),
            ("/srv/a=:1000", "user", ""),
        ] {
            let e = err(bad);
            assert!(e.starts_with(&format!("--owner {bad:?}: {value:?} is not a numeric {what} id")), "{bad}: {e}");
        }
        let e = targets(&args(&["/srv/a=api"], &[], &["/srv/a=1", "/srv/a=2"])).map(|_| ()).unwrap_err().to_string();
        assert_eq!(e, "--owner: /srv/a is given twice");
    }
}
