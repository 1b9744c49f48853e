//! The `crank` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use crank_security_core::{
    CertMetadata, CertificateBundle, DefaultPolicy, EventSink, EventSinks, KeyType, PolicyEngine, SecurityConfig,
    TrustDomain, WorkerId, parse_pem_certs,
};

use crate::ca::authority::{LocalCa, LocalCaConfig, admin_spiffe_id};
use crate::ca::files::{CaDir, InitOptions, init_ca};
use crate::ca::store::{CaStore, SqliteStore};
use crate::ca::token::{DEFAULT_TOKEN_TTL, TokenAuthority};
use crate::server::ConnectionLimits;
use crate::worker::bootstrap::{BootstrapOptions, RetryPolicy, bootstrap};

/// crank-security: certificate authority, join tokens and worker certificates.
#[derive(Debug, Parser)]
#[command(name = "crank", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Create join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Bootstrap and inspect worker certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Evaluate and test policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the platform registry that workers send heartbeats to.
    #[command(subcommand)]
    Platform(PlatformCommand),
    /// Revoke a certificate, or every live certificate of a worker, at the CA (needs an
    /// administrator certificate from `crank ca admin-cert`).
    Revoke(RevokeArgs),
    /// Run a local CA and the hello-world worker over mTLS, and print a curl command.
    Demo(DemoArgs),
}

/// `crank revoke`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "worker_id", "admin"])))]
pub struct RevokeArgs {
    /// Serial of the certificate (as `crank cert inspect` prints it).
    #[arg(long)]
    pub serial: Option<String>,
    /// Revoke every unexpired certificate of this worker (never an administrator's).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Revoke every unexpired certificate of this administrator (`crank ca admin-cert
    /// --name`).
    #[arg(long)]
    pub admin: Option<String>,
    /// RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged,
    /// superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.
    #[arg(long)]
    pub reason: String,
    /// CA URL(s), comma-separated (default: CA_SERVICE_URL).
    #[arg(long)]
    pub ca_url: Option<String>,
    /// Folder with admin.crt, admin.key and ca.crt from `crank ca admin-cert`.
    #[arg(long, env = "CRANK_ADMIN_DIR")]
    pub admin_dir: PathBuf,
}

/// `crank policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print one hook's decision as JSON.
    Eval {
        /// Policy directory (`.rego` files or one `.wasm` module); omitted: the built-in policy.
        #[arg(long)]
        policy_dir: Option<PathBuf>,
        /// can_issue_certificate, certificate_validity_period, should_renew_certificate or revoke_certificate.
        #[arg(long)]
        hook: String,
        /// The input document (JSON file; `-` for stdin).
        #[arg(long)]
        input: PathBuf,
    },
    /// Run the table-driven cases in DIR/cases (or DIR itself) against DIR's policy;
    /// exits non-zero on any mismatch.
    Test {
        /// Policy directory.
        dir: PathBuf,
        /// Case directory (default: DIR/cases, else DIR).
        #[arg(long)]
        cases: Option<PathBuf>,
    },
}

/// `crank platform ...`
#[derive(Debug, Subcommand)]
pub enum PlatformCommand {
    /// Serve the registry over mTLS. It is a worker itself: it gets its certificate like
    /// any worker (CERT_DIR, CA_SERVICE_URL, CRANK_JOIN_TOKEN).
    Serve {
        /// HTTPS port.
        #[arg(long, env = "PLATFORM_HTTPS_PORT", default_value_t = crate::platform::DEFAULT_PLATFORM_PORT)]
        port: u16,
        /// Drop workers silent for longer than this.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        expire_after: Duration,
        /// Timeouts and connection limits.
        #[command(flatten)]
        connections: ConnectionArgs,
    },
}

/// Timeouts and connection limits of a server (see docs/operations.md, "Connection
/// limits and timeouts"); what is not given keeps its [`ConnectionLimits`] default.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectionArgs {
    /// Connections open at most; past it new connections are closed at once [default:
    /// 1024, or 3/4 of the open-files limit if lower].
    #[arg(long, env = "CRANK_MAX_CONNECTIONS", value_name = "N", value_parser = crate::server::parse_count)]
    pub max_connections: Option<usize>,
    /// Connections open from one client IP address at most [default: 128, or a quarter
    /// of the default --max-connections if lower].
    #[arg(long, env = "CRANK_MAX_CONNECTIONS_PER_IP", value_name = "N", value_parser = crate::server::parse_count)]
    pub max_connections_per_ip: Option<usize>,
    /// Longest TLS handshake [default: 10s].
    #[arg(long, env = "CRANK_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = crate::server::parse_timeout)]
    pub handshake_timeout: Option<Duration>,
    /// Longest time to receive an HTTP/1.1 request header, also between keep-alive
    /// requests [default: 10s].
    #[arg(long, env = "CRANK_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = crate::server::parse_timeout)]
    pub header_read_timeout: Option<Duration>,
    /// Close a connection after this long without a request [default: 60s].
    #[arg(long, env = "CRANK_IDLE_TIMEOUT", value_name = "DURATION", value_parser = crate::server::parse_timeout)]
    pub idle_timeout: Option<Duration>,
    /// Close a connection gracefully once it is this old [default: 1h].
    #[arg(long, env = "CRANK_MAX_CONNECTION_AGE", value_name = "DURATION", value_parser = crate::server::parse_timeout)]
    pub max_connection_age: Option<Duration>,
}

impl ConnectionArgs {
    /// The defaults with what these options set.
    pub fn limits(&self) -> ConnectionLimits {
        let d = ConnectionLimits::default();
        ConnectionLimits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
            handshake_timeout: self.handshake_timeout.unwrap_or(d.handshake_timeout),
            header_read_timeout: self.header_read_timeout.unwrap_or(d.header_read_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
            max_connection_age: self.max_connection_age.unwrap_or(d.max_connection_age),
            ..d
        }
    }
}

/// `crank ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root key and certificate, the CA service's TLS certificate and the token key.
    Init {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, default_value = TrustDomain::DEFAULT)]
        trust_domain: String,
        /// Extra DNS name or IP for the CA service certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
        /// Intermediate mode: make the CA's key and a CSR (`intermediate.csr`) for the
        /// organisation's root to sign, instead of a root of its own; then `crank ca import`.
        #[arg(long)]
        csr: bool,
    },
    /// Install the intermediate certificate the enterprise root signed for
    /// `intermediate.csr` (after `crank ca init --csr`), with the root it chains to.
    Import {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
        /// The intermediate certificate, PEM (optionally followed by the intermediates
        /// above it).
        #[arg(long)]
        cert: PathBuf,
        /// The enterprise root, PEM (optionally with intermediates between it and ours).
        /// Workers trust this root alone.
        #[arg(long)]
        chain: PathBuf,
        /// Accept a chain ending at a different root than the installed one.
        #[arg(long)]
        switch_root: bool,
    },
    /// Serve the CA over HTTPS.
    Serve {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = crate::ca::server::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Deployment environment given to policy.
        #[arg(long, env = "CRANK_ENVIRONMENT", default_value = "development")]
        environment: String,
        /// Validity of issued certificates under the built-in policy, e.g. `24h`, `20s`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        leaf_validity: Duration,
        /// How long a CRL stays current (its nextUpdate), e.g. `24h`. The CA re-signs it
        /// at least every 5 minutes (or every half of this, if shorter).
        #[arg(long, env = "CRANK_CRL_VALIDITY", default_value = "24h", value_parser = humantime::parse_duration)]
        crl_validity: Duration,
        /// Policy directory: `.rego` files or one `.wasm` module replace the built-in
        /// policy (hot-reloaded).
        #[arg(long, env = "CRANK_POLICY_DIR")]
        policy_dir: Option<PathBuf>,
        /// Where CA state lives: `sqlite://PATH` (default: DIR/ca.db) or
        /// `postgres://USER[:PASSWORD]@HOST:PORT/DB` (several replicas may share it).
        #[arg(long, env = "CRANK_CA_STORE", hide_env_values = true)]
        store: Option<String>,
        /// Name of this replica in the ledger (default: host name and process id).
        #[arg(long, env = "CRANK_CA_REPLICA")]
        replica: Option<String>,
        /// Who signs leaves.
        #[command(flatten)]
        signer: Box<SignerArgs>,
        /// Timeouts and connection limits.
        #[command(flatten)]
        connections: ConnectionArgs,
    },
    /// Issue an administrator client certificate (for `crank revoke`), signed by the
    /// root and recorded in the ledger. Run it where the CA's key is.
    AdminCert {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Administrator name (becomes spiffe://<trust domain>/admin/<name>).
        #[arg(long)]
        name: String,
        /// Folder to write admin.crt, admin.key (0600) and ca.crt into.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, e.g. `8h`, `30d`.
        #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
        validity: Duration,
        /// The CA's store (as for `crank ca serve`).
        #[arg(long, env = "CRANK_CA_STORE", hide_env_values = true)]
        store: Option<String>,
    },
    /// Roll the CA root over without downtime (see docs/operations.md).
    #[command(subcommand)]
    Rollover(RolloverCommand),
}

/// Who signs the leaves of `crank ca serve`.
#[derive(Debug, Args)]
pub struct SignerArgs {
    /// `local`: the CA's own key (root, or intermediate). `cfssl`: an upstream cfssl signs
    /// through its sign API; the CA keeps join tokens, policy and the ledger, and checks
    /// every certificate cfssl returns (see docs/providers.md).
    #[arg(long, default_value = "local", value_parser = ["local", "cfssl"])]
    pub signer: String,
    /// cfssl's API, `https://HOST:PORT` (https only).
    #[arg(long)]
    pub cfssl_url: Option<url::Url>,
    /// CA certificate(s), PEM, that verify cfssl's TLS certificate.
    #[arg(long)]
    pub cfssl_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS to cfssl (`cfssl serve -mutual-tls-ca`), PEM.
    #[arg(long, requires = "cfssl_client_key")]
    pub cfssl_client_cert: Option<PathBuf>,
    /// Its private key, PEM.
    #[arg(long, requires = "cfssl_client_cert")]
    pub cfssl_client_key: Option<PathBuf>,
    /// Hex HMAC key of a cfssl profile's `auth_key`: requests go to `authsign`. Prefer the
    /// environment variable to the flag (process listings show flags).
    #[arg(long, env = "CRANK_CFSSL_AUTH_KEY", hide_env_values = true)]
    pub cfssl_auth_key: Option<String>,
    /// cfssl signing profile (default: cfssl's default profile).
    #[arg(long)]
    pub cfssl_profile: Option<String>,
    /// The CA certificate(s) cfssl signs under, PEM: handed to workers, and what every
    /// certificate cfssl returns must verify to.
    #[arg(long)]
    pub cfssl_trust_bundle: Option<PathBuf>,
    /// Intermediates to append after each leaf, PEM, when cfssl signs with an
    /// intermediate.
    #[arg(long)]
    pub cfssl_chain: Option<PathBuf>,
}

impl SignerArgs {
    /// The upstream signer these options describe; `None` for the CA's own key.
    pub fn build(&self) -> anyhow::Result<Option<Arc<dyn crank_security_core::CertificateProvider>>> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()))
        };
        if self.signer == "local" {
            let given = self.cfssl_url.is_some()
                || self.cfssl_ca.is_some()
                || self.cfssl_client_cert.is_some()
                || self.cfssl_auth_key.is_some()
                || self.cfssl_profile.is_some()
                || self.cfssl_trust_bundle.is_some()
                || self.cfssl_chain.is_some();
            anyhow::ensure!(!given, "--cfssl-* options need --signer cfssl");
            return Ok(None);
        }
        use crate::ca::cfssl::{AuthKey, CfsslConfig, CfsslProvider, ClientIdentity};
        let url = self.cfssl_url.clone().context("--signer cfssl needs --cfssl-url https://HOST:PORT")?;
        let ca =
            self.cfssl_ca.as_deref().context("--signer cfssl needs --cfssl-ca (the CA of cfssl's TLS certificate)")?;
        let bundle = self
            .cfssl_trust_bundle
            .as_deref()
            .context("--signer cfssl needs --cfssl-trust-bundle (the CA certificate cfssl signs with)")?;
        let client_identity = match (&self.cfssl_client_cert, &self.cfssl_client_key) {
            (Some(c), Some(k)) => Some(
                ClientIdentity::from_pem(&read(c, "--cfssl-client-cert")?, &read(k, "--cfssl-client-key")?)
                    .map_err(anyhow::Error::msg)?,
            ),
            _ => None,
        };
        let auth_key = self.cfssl_auth_key.as_deref().map(AuthKey::from_hex).transpose().map_err(anyhow::Error::msg)?;
        let server_roots = parse_pem_certs("--cfssl-ca", &read(ca, "--cfssl-ca")?)?;
        let trust_bundle_pem =
            String::from_utf8(read(bundle, "--cfssl-trust-bundle")?).context("--cfssl-trust-bundle is not text")?;
        let chain_pem = match &self.cfssl_chain {
            Some(p) => String::from_utf8(read(p, "--cfssl-chain")?).context("--cfssl-chain is not text")?,
            None => String::new(),
        };
        let config = CfsslConfig {
            url,
            server_roots,
            client_identity,
            auth_key,
            profile: self.cfssl_profile.clone(),
            trust_bundle_pem,
            chain_pem,
            timeout: crate::ca::cfssl::DEFAULT_TIMEOUT,
        };
        Ok(Some(Arc::new(CfsslProvider::new(config).map_err(anyhow::Error::msg)?)))
    }
}

/// `crank ca rollover ...`
#[derive(Debug, Subcommand)]
pub enum RolloverCommand {
    /// Make the next root and publish it beside the current one.
    Prepare {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make the next root the signing root (the old one stays trusted).
    Activate {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop trusting the old root once its last leaf has expired.
    Finish {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's store (as for `crank ca serve`).
        #[arg(long, env = "CRANK_CA_STORE", hide_env_values = true)]
        store: Option<String>,
    },
}

/// `crank token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new single-use join token on stdout.
    Create {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
        /// The worker the token is for.
        #[arg(long)]
        worker_id: String,
        /// Lifetime, e.g. `15m`, `1h` (at most 7 days).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Capability granted to the worker (repeatable), e.g. `san:api.example.internal`.
        #[arg(long = "capability")]
        capabilities: Vec<String>,
    },
}

/// `crank cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
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
pub struct CertInitArgs {
    /// The worker id (must match the token).
    #[arg(long)]
    pub worker_id: String,
    /// The join token.
    #[arg(long, env = "CRANK_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// CA URL(s), comma-separated (default: CA_SERVICE_URL).
    #[arg(long)]
    pub ca_url: Option<String>,
    /// Where to write the files (default: CERT_DIR rules).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// SAN to ask for (repeatable; default: worker id, localhost, 127.0.0.1, ::1).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Key type.
    #[arg(long, default_value = "ecdsa-p256")]
    pub key_type: KeyType,
    /// Attempts while the CA is unavailable.
    #[arg(long, default_value_t = 5)]
    pub attempts: usize,
}

/// `crank demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the demo's CA and certificates.
    #[arg(long, default_value = "crank-demo")]
    pub dir: PathBuf,
    /// Where the CA listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub ca_listen: SocketAddr,
    /// The hello-world worker's port.
    #[arg(long, env = "HELLO_WORLD_HTTPS_PORT", default_value_t = 8500)]
    pub port: u16,
}

impl Cli {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Ca(CaCommand::Init { dir, trust_domain, sans, force, csr: true }) => {
                let dir = CaDir::new(dir);
                let opts = crate::ca::intermediate::CsrOptions {
                    trust_domain: TrustDomain::new(trust_domain)?,
                    extra_sans: sans,
                    force,
                };
                crate::ca::intermediate::init_csr(&dir, &opts)?;
                println!("intermediate CA key and CSR created in {}", dir.dir.display());
                println!("CSR: {}", dir.intermediate_csr().display());
                println!(
                    "have the enterprise root sign it as a CA certificate (basicConstraints critical CA:true; keyUsage critical keyCertSign, cRLSign), then:"
                );
                println!("next: crank ca import --dir {} --cert INTERMEDIATE.pem --chain ROOT.pem", dir.dir.display());
                Ok(())
            }
            Command::Ca(CaCommand::Import { dir, cert, chain, switch_root }) => {
                let dir = CaDir::new(dir);
                let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
                let done = crate::ca::intermediate::import(&dir, &read(&cert)?, &read(&chain)?, switch_root)?;
                println!("intermediate {} installed in {}", done.subject, dir.dir.display());
                println!("  under root:  {} (sha256 {})", done.root_subject, done.root_fingerprint);
                println!("  valid until: {}", rfc3339(done.not_after));
                if done.upper_intermediates > 0 {
                    println!("  with {} intermediate(s) above it", done.upper_intermediates);
                }
                println!("next: crank ca serve --dir {}", dir.dir.display());
                Ok(())
            }
            Command::Ca(CaCommand::Init { dir, trust_domain, sans, force, csr: false }) => {
                let dir = CaDir::new(dir);
                init_ca(&dir, &InitOptions { trust_domain: TrustDomain::new(trust_domain)?, extra_sans: sans, force })?;
                println!("CA created in {}", dir.dir.display());
                println!("root fingerprint (sha256): {}", dir.root_fingerprint()?);
                println!("next: crank ca serve --dir {}", dir.dir.display());
                Ok(())
            }
            Command::Ca(CaCommand::Serve {
                dir,
                listen,
                environment,
                leaf_validity,
                crl_validity,
                policy_dir,
                store,
                replica,
                signer,
                connections,
            }) => {
                let signer = signer.build()?;
                let policy: Arc<dyn PolicyEngine> = match policy_dir {
                    Some(p) => {
                        let engine = crank_policy::from_dir(&p)?;
                        tracing::info!(dir = %p.display(), engine = engine.current().name(), "policy loaded (hot-reloaded)");
                        engine
                    }
                    None => Arc::new(DefaultPolicy { validity: leaf_validity }),
                };
                let settings = CaSettings {
                    environment,
                    policy,
                    replica,
                    crl_validity: Some(crl_validity),
                    ..CaSettings::default()
                };
                let limits = connections.limits();
                runtime()?.block_on(serve_ca(CaDir::new(dir), listen, settings, store, signer, limits))
            }
            Command::Ca(CaCommand::AdminCert { dir, name, out, validity, store }) => {
                runtime()?.block_on(admin_cert(CaDir::new(dir), name, out, validity, store))
            }
            Command::Revoke(args) => runtime()?.block_on(revoke(args)),
            Command::Ca(CaCommand::Rollover(step)) => rollover(step),
            Command::Token(TokenCommand::Create { dir, worker_id, ttl, capabilities }) => {
                let token = create_token(&CaDir::new(dir), &WorkerId::new(worker_id)?, ttl, capabilities)?;
                println!("{token}");
                Ok(())
            }
            Command::Cert(CertCommand::Init(args)) => runtime()?.block_on(cert_init(args)),
            Command::Cert(CertCommand::Inspect { file, json }) => inspect(&file, json),
            Command::Policy(cmd) => policy(cmd),
            Command::Platform(PlatformCommand::Serve { port, expire_after, connections }) => {
                let registry = crate::platform::Registry::new(expire_after);
                let routes = crate::platform::routes(registry.clone());
                runtime()?.block_on(async move {
                    crate::platform::spawn_sweeper(registry);
                    let worker = crate::WorkerApplication::new("platform")
                        .port(port)
                        .routes(routes)
                        .connection_limits(connections.limits())
                        .start()
                        .await?;
                    tracing::info!(addr = %worker.addr(), "platform registry serving over mTLS");
                    crate::tls::shutdown_signal().await;
                    worker.shutdown().await?;
                    Ok(())
                })
            }
            Command::Demo(args) => runtime()?.block_on(crate::demo::run(args)),
        }
    }
}

fn load_policy(dir: Option<&std::path::Path>) -> anyhow::Result<Arc<dyn PolicyEngine>> {
    Ok(match dir {
        Some(d) => crank_policy::load_dir(d)?,
        None => crank_policy::builtin(),
    })
}

fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Eval { policy_dir, hook, input } => {
            let engine = load_policy(policy_dir.as_deref())?;
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?
            };
            let doc: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", input.display()))?;
            match crank_policy::cases::evaluate(engine.as_ref(), &hook, &doc) {
                Ok(decision) => println!("{}", serde_json::to_string_pretty(&decision)?),
                Err(e) => {
                    // Fail closed, visibly: this is what the CA would do with this input.
                    println!("{}", serde_json::json!({"error": e, "effect": "deny"}));
                    anyhow::bail!("{e}");
                }
            }
            Ok(())
        }
        PolicyCommand::Test { dir, cases } => {
            let engine = load_policy(Some(&dir))?;
            let case_dir =
                cases.unwrap_or_else(|| if dir.join("cases").is_dir() { dir.join("cases") } else { dir.clone() });
            let all = crank_policy::cases::load_dir(&case_dir).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(!all.is_empty(), "no cases (*.json) in {}", case_dir.display());
            let mut failed = 0;
            for case in &all {
                match crank_policy::cases::run(engine.as_ref(), case) {
                    Ok(()) => println!("PASS: {}", case.name),
                    Err(e) => {
                        failed += 1;
                        println!("FAIL: {}: {e}", case.name);
                    }
                }
            }
            println!("{}", "-".repeat(40));
            println!("PASS: {}/{}", all.len() - failed, all.len());
            anyhow::ensure!(failed == 0, "{failed} case(s) failed");
            Ok(())
        }
    }
}

fn rollover(step: RolloverCommand) -> anyhow::Result<()> {
    use crate::ca::rollover;
    match step {
        RolloverCommand::Prepare { dir } => {
            let fp = rollover::prepare(&CaDir::new(&dir))?;
            println!("next root created (sha256 {fp}) and published beside the current one.");
            println!(
                "Restart the CA, wait one certificate lifetime, then: crank ca rollover activate --dir {}",
                dir.display()
            );
        }
        RolloverCommand::Activate { dir } => {
            let fp = rollover::activate(&CaDir::new(&dir))?;
            println!("the new root (sha256 {fp}) signs from now on; the old root stays trusted.");
            println!(
                "Restart the CA. After the last old leaf expires: crank ca rollover finish --dir {}",
                dir.display()
            );
        }
        RolloverCommand::Finish { dir, store } => {
            let ca = CaDir::new(&dir);
            runtime()?.block_on(async {
                let store = open_store(&ca, store.as_deref()).await?;
                rollover::finish(&ca, store.as_ref()).await
            })?;
            println!("the old root is no longer published. Restart the CA.");
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Creates a join token with the CA's token key.
pub fn create_token(
    dir: &CaDir,
    worker: &WorkerId,
    ttl: Duration,
    capabilities: Vec<String>,
) -> anyhow::Result<String> {
    let key = CaDir::read_key(&dir.token_key())
        .with_context(|| format!("is {} a CA directory made by `crank ca init`?", dir.dir.display()))?;
    if dir.service_names().iter().any(|n| n == worker.as_str()) {
        anyhow::bail!(
            "worker id {worker:?} is a name of the CA service itself; a worker may not carry the CA's names: choose another worker id"
        );
    }
    let authority = TokenAuthority::new(&key, dir.trust_domain()?, dir.pinned_fingerprint()?)?;
    authority.create(worker, ttl, capabilities)
}

/// The default token TTL, for callers that do not choose one.
pub const TOKEN_TTL: Duration = DEFAULT_TOKEN_TTL;

/// Loads a CA with the built-in policy and the embedded store, logging its events.
pub fn load_ca(dir: &CaDir, environment: String) -> anyhow::Result<Arc<LocalCa>> {
    load_ca_with(dir, CaSettings { environment, ..CaSettings::default() })
}

/// What a CA is loaded with.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// Deployment environment given to policy (default `development`).
    pub environment: String,
    /// The policy engine (default: the built-in policy).
    pub policy: Arc<dyn PolicyEngine>,
    /// Where events go (default: the JSON log).
    pub events: Arc<dyn EventSink>,
    /// Name of this replica in the ledger (default: host name and process id).
    pub replica: Option<String>,
    /// How long a CRL stays current (default 24 h).
    pub crl_validity: Option<Duration>,
}

impl Default for CaSettings {
    fn default() -> Self {
        Self {
            environment: "development".into(),
            policy: crank_policy::builtin(),
            events: Arc::new(EventSinks::default()),
            replica: None,
            crl_validity: None,
        }
    }
}

/// Loads a CA with the embedded store and `settings`.
pub fn load_ca_with(dir: &CaDir, settings: CaSettings) -> anyhow::Result<Arc<LocalCa>> {
    let store =
        SqliteStore::open(&dir.store()).with_context(|| format!("opening the CA store {}", dir.store().display()))?;
    load_ca_with_store(dir, settings, Arc::new(store))
}

/// Loads a CA with `store` and `settings`.
pub fn load_ca_with_store(dir: &CaDir, settings: CaSettings, store: Arc<dyn CaStore>) -> anyhow::Result<Arc<LocalCa>> {
    Ok(Arc::new(build_ca(dir, settings, store)?))
}

fn build_ca(dir: &CaDir, settings: CaSettings, store: Arc<dyn CaStore>) -> anyhow::Result<LocalCa> {
    let policy = crank_policy::PolicyGuard::new(settings.policy);
    let mut config = LocalCaConfig { environment: settings.environment, ..LocalCaConfig::default() };
    if let Some(r) = settings.replica {
        config.replica = r;
    }
    if let Some(v) = settings.crl_validity {
        anyhow::ensure!(v >= Duration::from_secs(2), "the CRL validity {v:?} is below 2 s");
        config.crl_validity = v;
    }
    LocalCa::load(dir, config, policy, store, settings.events)
}

/// Loads a CA with `store` and `settings` whose leaves `signer` signs (an upstream CA;
/// see [`LocalCa::with_signer`]).
pub async fn load_ca_with_signer(
    dir: &CaDir,
    settings: CaSettings,
    store: Arc<dyn CaStore>,
    signer: Arc<dyn crank_security_core::CertificateProvider>,
) -> anyhow::Result<Arc<LocalCa>> {
    Ok(Arc::new(build_ca(dir, settings, store)?.with_signer(signer).await?))
}

/// Opens the store named by `url` (default: the CA directory's embedded store).
pub async fn open_store(dir: &CaDir, url: Option<&str>) -> anyhow::Result<Arc<dyn CaStore>> {
    let shown = url.map_or_else(|| format!("sqlite://{}", dir.store().display()), crate::ca::store::redact);
    crate::ca::store::open(url, &dir.store()).await.with_context(|| format!("opening the CA store {shown}"))
}

async fn serve_ca(
    dir: CaDir,
    listen: SocketAddr,
    settings: CaSettings,
    store: Option<String>,
    signer: Option<Arc<dyn crank_security_core::CertificateProvider>>,
    limits: ConnectionLimits,
) -> anyhow::Result<()> {
    let store = open_store(&dir, store.as_deref()).await?;
    let backend = store.backend();
    let ca = match signer {
        Some(s) => load_ca_with_signer(&dir, settings, store, s).await?,
        None => load_ca_with_store(&dir, settings, store)?,
    };
    let server = crate::ca::server::bind_and_spawn_with(&dir, listen, ca.clone(), limits).await?;
    tracing::info!(
        addr = %server.addr(),
        trust_domain = %ca.trust_domain(),
        store = backend,
        signer = ca.signer_name(),
        intermediate = dir.is_intermediate(),
        "CA service listening (HTTPS)"
    );
    crate::tls::shutdown_signal().await;
    server.shutdown().await?;
    tracing::info!("CA service stopped");
    Ok(())
}

async fn admin_cert(
    dir: CaDir,
    name: String,
    out: PathBuf,
    validity: Duration,
    store: Option<String>,
) -> anyhow::Result<()> {
    let name = WorkerId::new(name).context("administrator name")?;
    let validity = time::Duration::try_from(validity).context("validity is too long")?;
    let store = open_store(&dir, store.as_deref()).await?;
    let settings = CaSettings { events: Arc::new(crank_security_core::NoEvents), ..CaSettings::default() };
    let ca = load_ca_with_store(&dir, settings, store)?;
    let (cert, key) = ca.issue_admin(&name, validity).await?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    crank_security_core::write_file_atomic(&out.join("admin.key"), key.as_bytes(), 0o600)?;
    crank_security_core::write_file_atomic(&out.join("admin.crt"), cert.as_bytes(), 0o644)?;
    crank_security_core::write_file_atomic(&out.join("ca.crt"), dir.trust_bundle_pem()?.as_bytes(), 0o644)?;
    println!(
        "administrator certificate for {} written to {}",
        admin_spiffe_id(ca.trust_domain(), name.as_str()),
        out.display()
    );
    println!("next: crank revoke --admin-dir {} --serial SERIAL --reason keyCompromise", out.display());
    Ok(())
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let ca_urls = match &args.ca_url {
        Some(list) => crank_security_core::parse_ca_urls(list)?,
        None => SecurityConfig::from_env()?.ca_urls,
    };
    let read = |f: &str| {
        let p = args.admin_dir.join(f);
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
    let client = crate::worker::ca_client::CaClient::mtls(
        ca_urls,
        &crate::trust::TrustStore::new(bundle.ca())?,
        crate::tls::Credentials::new(bundle.certified_key()?),
        &TrustDomain::new(td)?,
    )?;
    let body = crate::ca::server::RevokeBody {
        serial: args.serial,
        worker_id: args.worker_id,
        admin: args.admin,
        reason: args.reason,
    };
    let answer = client.revoke(&body).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

async fn cert_init(args: CertInitArgs) -> anyhow::Result<()> {
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
    println!("certificate written to {}", opts.cert_dir.display());
    println!("  spiffe id: {}", m.spiffe_id.as_deref().unwrap_or("-"));
    println!("  serial:    {}", m.serial);
    println!("  expires:   {}", rfc3339(m.not_after));
    Ok(())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
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
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("subject:      {}", m.subject);
        println!("issuer:       {}", m.issuer);
        println!("serial:       {}", m.serial);
        println!("spiffe id:    {}", m.spiffe_id.as_deref().unwrap_or("-"));
        println!("dns sans:     {}", m.dns_sans.join(", "));
        println!("ip sans:      {}", m.ip_sans.join(", "));
        println!("not before:   {}", rfc3339(m.not_before));
        println!("not after:    {}", rfc3339(m.not_after));
        println!("remaining:    {remaining} s");
        println!("is CA:        {}", m.is_ca);
        println!("sha256:       {}", m.fingerprint_sha256);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

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
        let Command::Platform(PlatformCommand::Serve { connections, .. }) = cli.command else {
            panic!("not platform serve")
        };
        let limits = connections.limits();
        assert_eq!((limits.idle_timeout, limits.max_connections_per_ip), (Duration::from_secs(5), 8));
        assert_eq!(limits.header_read_timeout, ConnectionLimits::default().header_read_timeout);
        let err = Cli::try_parse_from(["crank", "platform", "serve", "--max-connections", "0"]).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}
