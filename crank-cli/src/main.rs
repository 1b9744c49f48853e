//! The `crank` command: run and operate a crank-security CA, create join tokens,
//! bootstrap and inspect certificates, test policies, run the platform registry and the
//! demo. One module per subcommand group; the library crates do the work.

/// `println!` that ends the process quietly when standard output is closed (`crank
/// cert inspect --json | head`), where `println!` would panic.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*)
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            std::process::exit(0);
        }
    }};
}

mod agent;
mod ca;
mod cert;
mod connections;
mod demo;
mod entry;
mod platform;
mod policy;
mod revoke;
mod status;
mod token;

use clap::{Parser, Subcommand};

/// crank-security: certificate authority, join tokens and worker certificates.
#[derive(Debug, Parser)]
#[command(name = "crank", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Create join tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Bootstrap and inspect worker certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Evaluate and test policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run the platform registry that workers send heartbeats to.
    #[command(subcommand)]
    Platform(platform::PlatformCommand),
    /// Run an agent: certificates for workloads that do not link crank-runtime, as files
    /// and over the SPIFFE Workload API.
    Agent(agent::AgentArgs),
    /// Registration entries: which agent may obtain certificates for which worker id
    /// (needs an administrator certificate from `crank ca admin-cert`).
    #[command(subcommand)]
    Entry(entry::EntryCommand),
    /// Revoke a certificate, or every live certificate of a worker or an administrator,
    /// at the CA (needs an administrator certificate from `crank ca admin-cert`).
    Revoke(revoke::RevokeArgs),
    /// Run a local CA and the hello-world worker over mTLS, and print a curl command.
    Demo(demo::DemoArgs),
    /// The CA's overview (CRL, certificate counts, replicas, recent refusals), as the
    /// console shows it; needs an administrator certificate.
    Status(status::StatusArgs),
    /// Call a probe (`/livez`, `/readyz`) over TLS without a client certificate, as an
    /// orchestrator does; exits 0 on 200 (for an image's HEALTHCHECK).
    Probe(ProbeArgs),
}

/// Arguments of `crank probe`.
#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// The probe's URL, e.g. `https://localhost:8501/readyz`.
    url: String,
    /// Verify the server against these CA certificates (PEM); without it the server is
    /// not verified, like `curl -k` (a probe sends nothing and only reads a status).
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    crank_runtime::logging::init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca(cmd) => ca::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Cert(cmd) => cert::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Platform(cmd) => platform::run(cmd),
        Command::Agent(args) => agent::run(args),
        Command::Entry(cmd) => runtime()?.block_on(entry::run(cmd)),
        Command::Revoke(args) => runtime()?.block_on(revoke::run(args)),
        Command::Demo(args) => runtime()?.block_on(demo::run(args)),
        Command::Probe(args) => probe(args),
        Command::Status(args) => runtime()?.block_on(status::run(args)),
    }
}

fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let roots = match &args.cacert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            Some(crank_security_core::parse_pem_certs("CA certificate", &pem)?)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = rt.block_on(crank_runtime::probe::probe(&args.url, roots.as_deref())).map_err(anyhow::Error::msg)?;
    say!("{body}");
    Ok(())
}

/// A multi-threaded Tokio runtime for the commands that talk over the network.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use crank_runtime::ConnectionLimits;

    use super::*;

    #[test]
    fn the_platform_registry_takes_the_connection_flags() {
        let cli = Cli::try_parse_from([
            "crank",
            "platform",
            "serve",
            "--idle-timeout",
            "5s",
            "--max-connections-per-ip",
            "8",
        ])
        .unwrap();
        let Command::Platform(platform::PlatformCommand::Serve { connections, .. }) = cli.command else {
            panic!("not platform serve")
        };
        let limits = connections.limits();
        assert_eq!((limits.idle_timeout, limits.max_connections_per_ip), (Duration::from_secs(5), 8));
        assert_eq!(limits.header_read_timeout, ConnectionLimits::default().header_read_timeout);
        let err = Cli::try_parse_from(["crank", "platform", "serve", "--max-connections", "0"]).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}
