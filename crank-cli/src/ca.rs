//! `crank ca`: create, import, serve and roll over the certificate authority, and make
//! administrator certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use crank_ca::{CaDir, InitOptions, LocalCa, init_ca, open_store};
use crank_runtime::ConnectionLimits;
use crank_security_core::{DefaultPolicy, PolicyEngine, TrustDomain, WorkerId, parse_pem_certs};

use crate::connections::ConnectionArgs;

/// `crank ca ...`
#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
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
        #[arg(long, default_value = crank_ca::server::DEFAULT_LISTEN)]
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
        /// Policy directory: `.rego` files (layered on the defaults) or one `.wasm`
        /// module, hot-reloaded. Default: the CA's own `DIR/policies`, which `crank ca
        /// init` creates.
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
        /// Probes, the service's own TLS certificate, the console.
        #[command(flatten)]
        service: Box<ServiceArgs>,
    },
    /// Issue an administrator client certificate (for `crank revoke`), signed by the
    /// root and recorded in the ledger. Run it where the CA's key is.
    AdminCert {
        /// CA data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Administrator name (becomes `spiffe://<trust domain>/admin/<name>`).
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

/// What `crank ca serve` runs beside its API.
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// Also serve `/livez` and `/readyz` on this port (same host as --listen) over
    /// TLS, asking for no client certificate, for orchestrators' probes.
    #[arg(long, env = "CRANK_PROBE_PORT")]
    pub(crate) probe_port: Option<u16>,
    /// Validity of the TLS certificate the CA service gives itself, e.g. `90d`. It is
    /// renewed when a third of that is left, and swapped in without a restart; at
    /// start, one valid for longer is reissued.
    #[arg(long, env = "CRANK_CA_TLS_VALIDITY", default_value = "365d", value_parser = humantime::parse_duration)]
    pub(crate) tls_validity: Duration,
    /// Age at which the join-token key is replaced, e.g. `30d`. Tokens signed by the
    /// old key stay valid until they expire; every replica accepts the new key's
    /// tokens (its certificate is published in the store).
    #[arg(long, env = "CRANK_CA_TOKEN_KEY_MAX_AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub(crate) token_key_max_age: Duration,
    /// Age at which the JWT-SVID key is replaced, e.g. `7d`. A new key is in the JWT
    /// bundle a quarter of this (at most an hour) before it signs, and the old one stays
    /// there until its last JWT-SVID has expired.
    #[arg(long, env = "CRANK_CA_JWT_KEY_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub(crate) jwt_key_max_age: Duration,
    /// The platform registry whose workers the console lists (`/console/workers`).
    #[arg(long, env = "CRANK_CONSOLE_PLATFORM_URL", requires = "platform_client_dir")]
    pub(crate) platform_url: Option<url::Url>,
    /// The console's identity at the registry: a certificate directory (`crank cert
    /// init`) of a worker granted `platform.workers.read`.
    #[arg(long, env = "CRANK_CONSOLE_PLATFORM_CLIENT_DIR", requires = "platform_url")]
    pub(crate) platform_client_dir: Option<PathBuf>,
}

/// Who signs the leaves of `crank ca serve`.
#[derive(Debug, Args)]
pub(crate) struct SignerArgs {
    /// `local`: the CA's own key (root, or intermediate). `cfssl`: an upstream cfssl signs
    /// through its sign API; the CA keeps join tokens, policy and the ledger, and checks
    /// every certificate cfssl returns (see docs/providers.md).
    #[arg(long, default_value = "local", value_parser = ["local", "cfssl"])]
    pub(crate) signer: String,
    /// cfssl's API, `https://HOST:PORT` (https only).
    #[arg(long)]
    pub(crate) cfssl_url: Option<url::Url>,
    /// CA certificate(s), PEM, that verify cfssl's TLS certificate.
    #[arg(long)]
    pub(crate) cfssl_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS to cfssl (`cfssl serve -mutual-tls-ca`), PEM.
    #[arg(long, requires = "cfssl_client_key")]
    pub(crate) cfssl_client_cert: Option<PathBuf>,
    /// Its private key, PEM.
    #[arg(long, requires = "cfssl_client_cert")]
    pub(crate) cfssl_client_key: Option<PathBuf>,
    /// Hex HMAC key of a cfssl profile's `auth_key`: requests go to `authsign`. Prefer the
    /// environment variable to the flag (process listings show flags).
    #[arg(long, env = "CRANK_CFSSL_AUTH_KEY", hide_env_values = true)]
    pub(crate) cfssl_auth_key: Option<String>,
    /// cfssl signing profile (default: cfssl's default profile).
    #[arg(long)]
    pub(crate) cfssl_profile: Option<String>,
    /// The CA certificate(s) cfssl signs under, PEM: handed to workers, and what every
    /// certificate cfssl returns must verify to.
    #[arg(long)]
    pub(crate) cfssl_trust_bundle: Option<PathBuf>,
    /// Intermediates to append after each leaf, PEM, when cfssl signs with an
    /// intermediate.
    #[arg(long)]
    pub(crate) cfssl_chain: Option<PathBuf>,
}

impl SignerArgs {
    /// The upstream signer these options describe; `None` for the CA's own key.
    pub(crate) fn build(&self) -> anyhow::Result<Option<Arc<dyn crank_security_core::CertificateProvider>>> {
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
        use crank_ca::cfssl::{AuthKey, CfsslConfig, CfsslProvider, ClientIdentity};
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
            timeout: crank_ca::cfssl::DEFAULT_TIMEOUT,
        };
        Ok(Some(Arc::new(CfsslProvider::new(config).map_err(anyhow::Error::msg)?)))
    }
}

/// `crank ca rollover ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RolloverCommand {
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

pub(crate) fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { dir, trust_domain, sans, force, csr: true } => {
            let dir = CaDir::new(dir);
            let opts = crank_ca::intermediate::CsrOptions {
                trust_domain: TrustDomain::new(trust_domain)?,
                extra_sans: sans,
                force,
            };
            crank_ca::intermediate::init_csr(&dir, &opts)?;
            say!("intermediate CA key and CSR created in {}", dir.dir.display());
            say!("CSR: {}", dir.intermediate_csr().display());
            say!(
                "have the enterprise root sign it as a CA certificate (basicConstraints critical CA:true; keyUsage critical keyCertSign, cRLSign), then:"
            );
            say!("next: crank ca import --dir {} --cert INTERMEDIATE.pem --chain ROOT.pem", dir.dir.display());
            Ok(())
        }
        CaCommand::Init { dir, trust_domain, sans, force, csr: false } => {
            let dir = CaDir::new(dir);
            init_ca(&dir, &InitOptions { trust_domain: TrustDomain::new(trust_domain)?, extra_sans: sans, force })?;
            say!("CA created in {}", dir.dir.display());
            say!("root fingerprint (sha256): {}", dir.root_fingerprint()?);
            say!("next: crank ca serve --dir {}", dir.dir.display());
            Ok(())
        }
        CaCommand::Import { dir, cert, chain, switch_root } => {
            let dir = CaDir::new(dir);
            let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let done = crank_ca::intermediate::import(&dir, &read(&cert)?, &read(&chain)?, switch_root)?;
            say!("intermediate {} installed in {}", done.subject, dir.dir.display());
            say!("  under root:  {} (sha256 {})", done.root_subject, done.root_fingerprint);
            say!("  valid until: {}", crank_security_core::rfc3339(done.not_after));
            if done.upper_intermediates > 0 {
                say!("  with {} intermediate(s) above it", done.upper_intermediates);
            }
            say!("next: crank ca serve --dir {}", dir.dir.display());
            Ok(())
        }
        CaCommand::Serve {
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
            service,
        } => {
            let ServiceArgs {
                probe_port,
                tls_validity,
                token_key_max_age,
                jwt_key_max_age,
                platform_url,
                platform_client_dir,
            } = *service;
            for (flag, age) in [("--token-key-max-age", token_key_max_age), ("--jwt-key-max-age", jwt_key_max_age)] {
                if age < crank_ca::key_rotation::MIN_KEY_MAX_AGE {
                    anyhow::bail!("{flag} {age:?} is below 2 s");
                }
            }
            if let Some(url) = &platform_url
                && url.scheme() != "https"
            {
                anyhow::bail!("--platform-url {url}: the platform registry is reached over https only");
            }
            let platform = platform_url
                .zip(platform_client_dir)
                .map(|(url, client_dir)| crank_ca::console::PlatformSource { url, client_dir });
            let dir = CaDir::new(dir);
            let tls_validity = time::Duration::try_from(tls_validity).context("--tls-validity is too long")?;
            if tls_validity < time::Duration::seconds(10) {
                anyhow::bail!("--tls-validity {tls_validity} is below 10 s");
            }
            // A named directory, else the CA's own (`crank ca init` makes it), else the
            // built-in defaults (a CA made before policy directories existed).
            let policy_dir = policy_dir.or_else(|| Some(dir.policy_dir()).filter(|p| p.is_dir()));
            let policy: Arc<dyn PolicyEngine> = match policy_dir {
                Some(p) => {
                    let settings = crank_policy::Settings { leaf_validity_seconds: Some(leaf_validity.as_secs()) };
                    let engine = crank_policy::from_dir_with(&p, settings)?;
                    tracing::info!(dir = %p.display(), engine = engine.current().name(), "policy loaded (hot-reloaded)");
                    engine
                }
                None => Arc::new(DefaultPolicy { validity: leaf_validity }),
            };
            let mut builder =
                LocalCa::builder(dir.clone()).environment(environment).policy(policy).crl_validity(crl_validity);
            if let Some(r) = replica {
                builder = builder.replica(r);
            }
            if let Some(s) = signer.build()? {
                builder = builder.signer(s);
            }
            if let Some(url) = store {
                builder = builder.store_url(url);
            }
            let options = ServeExtras { probe_port, tls_validity, token_key_max_age, jwt_key_max_age, platform };
            crate::runtime()?.block_on(serve(dir, listen, builder, connections.limits(), options))
        }
        CaCommand::AdminCert { dir, name, out, validity, store } => {
            crate::runtime()?.block_on(admin_cert(CaDir::new(dir), name, out, validity, store))
        }
        CaCommand::Rollover(step) => rollover(step),
    }
}

/// What `crank ca serve` runs beside its API.
struct ServeExtras {
    probe_port: Option<u16>,
    tls_validity: time::Duration,
    token_key_max_age: Duration,
    jwt_key_max_age: Duration,
    platform: Option<crank_ca::console::PlatformSource>,
}

async fn serve(
    dir: CaDir,
    listen: SocketAddr,
    builder: crank_ca::LocalCaBuilder,
    limits: ConnectionLimits,
    extras: ServeExtras,
) -> anyhow::Result<()> {
    let ServeExtras { probe_port, tls_validity, token_key_max_age, jwt_key_max_age, platform } = extras;
    let ca = builder.build().await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let probe = match probe_port {
        Some(port) => {
            let addr = SocketAddr::new(listen.ip(), port);
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for probes on {addr}"))?;
            tracing::info!(%addr, "probe listener (/livez, /readyz; no client certificate asked)");
            Some(l)
        }
        None => None,
    };
    let options = crank_ca::server::ServeOptions {
        probe,
        tls_validity: Some(tls_validity),
        platform,
        token_key_max_age: Some(token_key_max_age),
        jwt_key_max_age: Some(jwt_key_max_age),
    };
    let server = crank_ca::server::spawn_service(&dir, listener, ca.clone(), limits, options)?;
    tracing::info!(
        addr = %server.server.addr(),
        trust_domain = %ca.trust_domain(),
        store = ca.store().backend(),
        signer = ca.signer_name(),
        intermediate = dir.is_intermediate(),
        "CA service listening (HTTPS)"
    );
    crank_runtime::shutdown_signal().await;
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
    let mut builder = LocalCa::builder(dir.clone()).events(Arc::new(crank_security_core::NoEvents));
    if let Some(url) = store {
        builder = builder.store_url(url);
    }
    let ca = builder.build().await?;
    let (cert, key) = ca.issue_admin(&name, validity).await?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    crank_security_core::write_file_atomic(&out.join("admin.key"), key.as_bytes(), 0o600)?;
    crank_security_core::write_file_atomic(&out.join("admin.crt"), cert.as_bytes(), 0o644)?;
    crank_security_core::write_file_atomic(&out.join("ca.crt"), dir.trust_bundle_pem()?.as_bytes(), 0o644)?;
    say!(
        "administrator certificate for {} written to {}",
        ca.trust_domain().admin_spiffe_id(name.as_str()),
        out.display()
    );
    say!("next: crank revoke --admin-dir {} --serial SERIAL --reason keyCompromise", out.display());
    Ok(())
}

fn rollover(step: RolloverCommand) -> anyhow::Result<()> {
    use crank_ca::rollover;
    match step {
        RolloverCommand::Prepare { dir } => {
            let fp = rollover::prepare(&CaDir::new(&dir))?;
            say!("next root created (sha256 {fp}) and published beside the current one.");
            say!(
                "Restart the CA, wait one certificate lifetime, then: crank ca rollover activate --dir {}",
                dir.display()
            );
        }
        RolloverCommand::Activate { dir } => {
            let fp = rollover::activate(&CaDir::new(&dir))?;
            say!("the new root (sha256 {fp}) signs from now on; the old root stays trusted.");
            say!("Restart the CA. After the last old leaf expires: crank ca rollover finish --dir {}", dir.display());
        }
        RolloverCommand::Finish { dir, store } => {
            let ca = CaDir::new(&dir);
            crate::runtime()?.block_on(async {
                let store = open_store(&ca, store.as_deref()).await?;
                rollover::finish(&ca, store.as_ref()).await
            })?;
            say!("the old root is no longer published. Restart the CA.");
        }
    }
    Ok(())
}
