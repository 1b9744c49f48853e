//! Support for the end-to-end tests: a CA on a free port, tokens, workers, raw TLS
//! clients and the paths of the built binaries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use crank_ca::LocalCa;
use crank_ca::{CaDir, InitOptions, init_ca};
use crank_runtime::{BootstrapOptions, RetryPolicy, RunningWorker, ServerHandle, WorkerApplication};
use crank_security_core::{
    CertificateBundle, CertificateEvent, CertificateProvider, DefaultPolicy, EventKind, EventSink, EventSinks,
    IssuanceDecision, IssuanceInput, KeyType, PolicyEngine, PolicyError, RenewalDecision, RenewalInput, SecurityConfig,
    TrustDomain, WorkerId,
};
use tempfile::TempDir;

#[path = "support/bench_opts.rs"]
mod bench_opts;
#[path = "support/ca_copy.rs"]
mod ca_copy;
pub mod upstream;
#[path = "../crank-policy/tests/support/wasm_module.rs"]
mod wasm_module;
pub use bench_opts::BenchOpts;
pub use ca_copy::copy_ca_dir;

/// Collects events for assertions.
#[derive(Debug, Default)]
pub struct Recorder(pub Mutex<Vec<CertificateEvent>>);

impl Recorder {
    /// The kinds seen, in order.
    pub fn kinds(&self) -> Vec<EventKind> {
        self.0.lock().unwrap().iter().map(|e| e.event).collect()
    }
    /// All events of one kind.
    pub fn of(&self, kind: EventKind) -> Vec<CertificateEvent> {
        self.0.lock().unwrap().iter().filter(|e| e.event == kind).cloned().collect()
    }
}

impl EventSink for Recorder {
    fn emit(&self, event: &CertificateEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// A CA serving on 127.0.0.1 on a free port, in this process.
#[derive(Debug)]
pub struct TestCa {
    /// Keeps the directory alive.
    pub tmp: TempDir,
    /// CA directory.
    pub dir: CaDir,
    /// The CA.
    pub ca: Arc<LocalCa>,
    /// The server.
    pub server: Option<ServerHandle>,
    /// CA-side events.
    pub events: Arc<Recorder>,
    /// The CA's policy engine.
    pub policy: Arc<dyn PolicyEngine>,
    /// An upstream signer, if leaves are not signed by the CA's own key.
    pub signer: Option<Arc<dyn CertificateProvider>>,
}

impl TestCa {
    /// Inits and serves a new CA issuing 24 h certificates.
    pub async fn start() -> Self {
        Self::start_with_validity(DefaultPolicy::DEFAULT_VALIDITY).await
    }

    /// Inits and serves a new CA issuing certificates valid for `validity`.
    pub async fn start_with_validity(validity: Duration) -> Self {
        Self::start_with_policy(Arc::new(DefaultPolicy { validity })).await
    }

    /// Inits and serves a new CA deciding with `policy`.
    pub async fn start_with_policy(policy: Arc<dyn PolicyEngine>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::new(tmp.path().join("ca"));
        init_ca(&dir, &InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false }).unwrap();
        Self::serve_dir(tmp, dir, policy, None).await
    }

    /// Inits and serves a new CA whose leaves `signer` signs (24 h validity).
    pub async fn start_with_signer(signer: Arc<dyn CertificateProvider>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::new(tmp.path().join("ca"));
        init_ca(&dir, &InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false }).unwrap();
        Self::serve_dir(tmp, dir, Arc::new(DefaultPolicy::default()), Some(signer)).await
    }

    /// Inits an intermediate CA, has an `openssl` root (`enterprise.pem` in the CA's temp
    /// dir) sign it, imports it and serves it.
    pub async fn start_intermediate() -> Self {
        use crank_ca::intermediate::{CsrOptions, import, init_csr};
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::new(tmp.path().join("ca"));
        let opts = CsrOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false };
        init_csr(&dir, &opts).unwrap();
        let root = openssl_root(tmp.path(), "enterprise", None);
        let ext = "basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign";
        let cert = openssl_sign(tmp.path(), &dir.intermediate_csr(), "enterprise", ext, "intermediate.pem").unwrap();
        import(&dir, &std::fs::read(cert).unwrap(), &std::fs::read(root).unwrap(), false).unwrap();
        Self::serve_dir(tmp, dir, Arc::new(DefaultPolicy::default()), None).await
    }

    /// Serves the CA already made in `dir` (inside `tmp`).
    pub async fn serve_dir(
        tmp: TempDir,
        dir: CaDir,
        policy: Arc<dyn PolicyEngine>,
        signer: Option<Arc<dyn CertificateProvider>>,
    ) -> Self {
        let events = Arc::default();
        let ca = load_ca(&dir, &events, policy.clone(), signer.clone()).await;
        let server = Some(crank_ca::server::bind_and_spawn(&dir, free_addr(), ca.clone()).await.unwrap());
        Self { tmp, dir, ca, server, events, policy, signer }
    }

    /// (Re)loads the CA from its directory and serves it on `addr`.
    pub async fn restart_on(&mut self, addr: SocketAddr) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
        self.ca = load_ca(&self.dir, &self.events, self.policy.clone(), self.signer.clone()).await;
        self.server = Some(crank_ca::server::bind_and_spawn(&self.dir, addr, self.ca.clone()).await.unwrap());
    }

    /// Stops serving.
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }

    /// The CA's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().addr()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> url::Url {
        format!("https://{}", self.addr()).parse().unwrap()
    }

    /// A join token.
    pub fn token(&self, worker: &str) -> String {
        self.token_with(worker, Duration::from_secs(300), vec![])
    }

    /// A join token with TTL and capabilities.
    pub fn token_with(&self, worker: &str, ttl: Duration, caps: Vec<String>) -> String {
        crank_ca::create_token(&self.dir, &WorkerId::new(worker).unwrap(), ttl, caps).unwrap()
    }

    /// Bootstrap options for `worker` into a fresh directory under the CA's temp dir.
    pub fn bootstrap_options(&self, worker: &str) -> BootstrapOptions {
        BootstrapOptions {
            worker_id: Some(WorkerId::new(worker).unwrap()),
            token: self.token(worker),
            ca_urls: vec![self.url()],
            cert_dir: self.tmp.path().join("workers").join(worker),
            sans: vec![],
            key_type: KeyType::default(),
            retry: RetryPolicy {
                initial: Duration::from_millis(50),
                max_delay: Duration::from_millis(200),
                attempts: 3,
            },
        }
    }

    /// Bootstraps `worker` and returns its bundle.
    pub async fn bootstrap(&self, worker: &str) -> CertificateBundle {
        crank_runtime::bootstrap(&self.bootstrap_options(worker), &EventSinks::empty()).await.unwrap()
    }

    /// Bootstraps `worker` with a join token granting `capabilities`.
    pub async fn bootstrap_with(&self, worker: &str, capabilities: &[&str]) -> CertificateBundle {
        let caps = capabilities.iter().map(|c| (*c).to_owned()).collect();
        let opts = BootstrapOptions {
            token: self.token_with(worker, Duration::from_secs(300), caps),
            ..self.bootstrap_options(worker)
        };
        crank_runtime::bootstrap(&opts, &EventSinks::empty()).await.unwrap()
    }

    /// Starts a worker on a free loopback port with `routes`.
    pub async fn worker(&self, worker: &str, routes: Router) -> RunningWorker {
        self.worker_with(worker, routes, Arc::new(Recorder::default())).await
    }

    /// Starts a worker whose events also go to `events`.
    pub async fn worker_with(&self, worker: &str, routes: Router, events: Arc<Recorder>) -> RunningWorker {
        self.app(worker, routes).event_sink(events).start().await.unwrap()
    }

    /// A worker application configured for this CA, on a free loopback port, with a
    /// fresh join token; add options and `start()` it.
    pub fn app(&self, worker: &str, routes: Router) -> WorkerApplication {
        let config = SecurityConfig {
            cert_dir: self.tmp.path().join("workers").join(worker),
            ca_urls: vec![self.url()],
            environment: "test".into(),
        };
        WorkerApplication::new(worker)
            .port(0)
            .host("127.0.0.1".parse().unwrap())
            .routes(routes)
            .security_config(config)
            .join_token(self.token(worker))
            .retry(RetryPolicy {
                initial: Duration::from_millis(50),
                max_delay: Duration::from_millis(200),
                attempts: 3,
            })
    }
}

async fn load_ca(
    dir: &CaDir,
    events: &Arc<Recorder>,
    policy: Arc<dyn PolicyEngine>,
    signer: Option<Arc<dyn CertificateProvider>>,
) -> Arc<LocalCa> {
    let sinks = EventSinks::default();
    sinks.register(events.clone());
    let mut builder = LocalCa::builder(dir.clone()).environment("test").policy(policy).events(Arc::new(sinks));
    if let Some(s) = signer {
        builder = builder.signer(s);
    }
    builder.build().await.unwrap()
}

/// A policy that allows every issuance and revocation (24 h certificates, default
/// renewal): what the CA refuses under it, it refuses before any policy is asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl PolicyEngine for AllowAll {
    fn can_issue_certificate(&self, _: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
        Ok(IssuanceDecision::allow())
    }
    fn certificate_validity_period(&self, _: &str, _: &str) -> Result<Duration, PolicyError> {
        Ok(DefaultPolicy::DEFAULT_VALIDITY)
    }
    fn should_renew_certificate(&self, input: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
        Ok(crank_security_core::default_renewal(input))
    }
    fn revoke_certificate(&self, _: &str, _: &str) -> Result<bool, PolicyError> {
        Ok(true)
    }
}

/// Waits until `cond` holds, polling every 100 ms; panics with `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, cond: impl FnMut() -> bool) {
    wait_or_explain(what, within, cond, String::new).await;
}

/// [`wait_until`], adding what `explain` says to the panic after a timeout.
async fn wait_or_explain(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        if std::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}{}", explain());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the asynchronous check `cond` holds, polling every 100 ms; panics with
/// `what` after `within`.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + within;
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `openssl ARGS` in `dir`: its stdout, or an error carrying its stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = openssl_output(dir, args);
    anyhow::ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `openssl ARGS` in `dir` to completion: its output, whatever its exit status (the
/// one way the tests run openssl).
pub fn openssl_output(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("running openssl")
}

/// `openssl req -newkey` arguments for a P-256 key, what the tests use unless they say
/// otherwise.
pub const OPENSSL_P256: &[&str] = &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// `openssl req` with a new key (`-newkey NEWKEY...`) written to `NAME.key` in `dir`;
/// `args` say what else to make.
fn openssl_req(dir: &Path, name: &str, subject: &str, newkey: &[&str], args: &[&str]) -> anyhow::Result<()> {
    let key = format!("{name}.key");
    let mut all = vec!["req", "-newkey"];
    all.extend_from_slice(newkey);
    all.extend_from_slice(&["-nodes", "-keyout", &key, "-subj", subject]);
    all.extend_from_slice(args);
    openssl(dir, &all).map(drop)
}

/// A new P-256 key and CSR made by `openssl` in `dir`: `NAME.key`, `NAME.csr`.
pub fn openssl_csr(dir: &Path, name: &str, subject: &str) -> PathBuf {
    openssl_csr_with(dir, name, subject, OPENSSL_P256, &[])
}

/// [`openssl_csr`] with another key (`newkey`, e.g. `["rsa:1024"]`) and more `openssl req`
/// arguments (e.g. `["-sha1"]`); returns the CSR's path.
pub fn openssl_csr_with(dir: &Path, name: &str, subject: &str, newkey: &[&str], args: &[&str]) -> PathBuf {
    let csr = format!("{name}.csr");
    let mut all = vec!["-new", "-out", &csr];
    all.extend_from_slice(args);
    openssl_req(dir, name, subject, newkey, &all).unwrap();
    dir.join(csr)
}

/// A self-signed P-256 root made by `openssl` in `dir` as `NAME.pem`/`NAME.key`, with
/// `basicConstraints=critical,CA:true[,pathlen:N]` and keyCertSign, cRLSign.
pub fn openssl_root(dir: &Path, name: &str, pathlen: Option<u32>) -> PathBuf {
    let bc = match pathlen {
        Some(n) => format!("basicConstraints=critical,CA:true,pathlen:{n}"),
        None => "basicConstraints=critical,CA:true".to_owned(),
    };
    let pem = format!("{name}.pem");
    let ku = "keyUsage=critical,keyCertSign,cRLSign";
    let subject = format!("/CN={name}/O=Example Enterprise");
    openssl_req(
        dir,
        name,
        &subject,
        OPENSSL_P256,
        &["-x509", "-out", &pem, "-days", "30", "-addext", &bc, "-addext", ku],
    )
    .unwrap();
    dir.join(pem)
}

/// Renews `bundle` at `ca` over mTLS with a new key, as a worker's rotator does, and
/// checks the answer against the roots `bundle` trusts.
pub async fn renew_over_mtls(ca: &TestCa, bundle: &CertificateBundle) -> CertificateBundle {
    use crank_security_core::{CertificateProvider, CorrelationId, RenewRequest};
    let identity = bundle.metadata().spiffe().unwrap();
    let worker = identity.worker_id.clone();
    let key = crank_security_core::generate_key(KeyType::EcdsaP256).unwrap();
    let client = ca_client(vec![ca.url()], bundle);
    let req = RenewRequest {
        csr_pem: crank_security_core::build_csr(&key, &worker, &[worker.to_string()]).unwrap(),
        worker_id: worker.to_string(),
        current_serial: bundle.metadata().serial.clone(),
        current_fingerprint: None,
        correlation_id: CorrelationId::new(),
    };
    let issued = client.renew(req).await.unwrap();
    crank_runtime::worker::accept_issued(&issued, &key.serialize_pem(), &identity, bundle.ca()).unwrap()
}

/// A CA client presenting `bundle`, trusting what it trusts, and requiring the CA
/// identity of its trust domain, as a worker's renewal does.
pub fn ca_client(urls: Vec<url::Url>, bundle: &CertificateBundle) -> crank_runtime::CaClient {
    let td = bundle.metadata().spiffe().expect("a worker certificate").trust_domain;
    let trust = crank_runtime::trust::TrustStore::new(bundle.ca()).unwrap();
    let creds = crank_runtime::tls::Credentials::new(bundle.certified_key().unwrap());
    crank_runtime::CaClient::mtls(urls, &trust, creds, &td).unwrap()
}

/// Has `openssl` sign `csr` with `issuer` (`ISSUER.pem`/`ISSUER.key` in `dir`) into
/// `out`, with the extension lines `ext` (openssl config syntax).
pub fn openssl_sign(dir: &Path, csr: &Path, issuer: &str, ext: &str, out: &str) -> anyhow::Result<PathBuf> {
    let ext_file = dir.join(format!("{out}.ext"));
    std::fs::write(&ext_file, format!("[v3]\n{ext}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"))?;
    let serial = format!("0x{:032x}", rand_serial());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr.display().to_string(),
            "-CA",
            &format!("{issuer}.pem"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-set_serial",
            &serial,
            "-days",
            "20",
            "-extfile",
            &ext_file.display().to_string(),
            "-extensions",
            "v3",
            "-out",
            out,
        ],
    )?;
    Ok(dir.join(out))
}

fn rand_serial() -> u128 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    (nanos ^ u128::from(std::process::id()) << 64) | 1
}

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `crank ARGS` as a command, logging warnings only: the one way the tests run it (add
/// what else it needs, then run it).
pub fn crank_command(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(bin("crank"));
    c.args(args).env("RUST_LOG", "warn");
    c
}

/// Runs `crank ARGS` to completion: its output, whatever its exit status.
pub fn crank_output(args: &[&str]) -> std::process::Output {
    crank_command(args).output().unwrap()
}

/// Runs `crank ARGS`: its trimmed stdout on success, an error carrying its stderr
/// otherwise.
pub fn crank(args: &[&str]) -> anyhow::Result<String> {
    let out = crank_command(args).output()?;
    anyhow::ensure!(out.status.success(), "crank {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// An example worker binary (`hello-world`, `caller`) as a command, with a clean
/// environment plus `env`, logging at info, its output piped.
pub fn example_command(name: &str, env: &[(&str, &str)]) -> std::process::Command {
    let mut c = std::process::Command::new(bin(name));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied());
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    c
}

/// The `policies/` folder of the workspace (the shipped policies and their cases).
pub fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A policy directory holding only the defaults as a WebAssembly module: the Rust WASM
/// policy the test command builds (`policies/wasm/default-policy`), copied into `dir`.
pub fn wasm_policy_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(wasm_module::default_wasm_policy(), dir.join("defaults.wasm")).unwrap();
    dir.to_path_buf()
}

/// Runs `crank cert init` for `worker` with `token` at `ca_url`, writing into
/// `cert_dir`: its trimmed stdout, or an error carrying its stderr.
pub fn cert_init(worker: &str, token: &str, ca_url: &str, cert_dir: &Path) -> anyhow::Result<String> {
    let dir = cert_dir.to_str().ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", cert_dir.display()))?;
    crank(&["cert", "init", "--worker-id", worker, "--token", token, "--ca-url", ca_url, "--cert-dir", dir])
}

/// Waits (up to 20 s) until something listens on `addr`.
pub async fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Starts `crank ca serve --dir DIR --listen <free port> EXTRA...` as a process and waits
/// until it listens.
pub async fn serve_ca_process(dir: &Path, extra: &[&str]) -> anyhow::Result<(KillOnDrop, SocketAddr)> {
    serve_ca_process_with(dir, extra, &ProcessOptions::default()).await
}

/// What else a process started by the test support gets.
#[derive(Debug, Default, Clone)]
pub struct ProcessOptions {
    /// Added to its environment.
    pub env: Vec<(String, String)>,
    /// Its open-files limit (soft and hard), set by util-linux `prlimit`.
    pub nofile: Option<u32>,
    /// A file that receives its stderr (default: discarded).
    pub stderr: Option<PathBuf>,
    /// A command it runs under, e.g. `ip netns exec NAME` (default: none).
    pub wrapper: Vec<String>,
}

impl ProcessOptions {
    /// With `vars` added to the environment.
    pub fn env(vars: &[(&str, &str)]) -> Self {
        Self { env: vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(), ..Self::default() }
    }

    /// With its clock `offset` off this host's (libfaketime, e.g. `+10m`), the monotonic
    /// clock left alone.
    pub fn clock(offset: &str) -> Self {
        let lib = libfaketime();
        Self::env(&[("LD_PRELOAD", lib.to_str().unwrap()), ("FAKETIME", offset), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")])
    }

    /// `program` with these options applied (under the wrapper, through `prlimit` when
    /// `nofile` is set); logging at error, stdout discarded.
    pub fn command(&self, program: &Path) -> std::process::Command {
        let mut argv: Vec<std::ffi::OsString> = self.wrapper.iter().map(Into::into).collect();
        if let Some(n) = self.nofile {
            argv.extend(["prlimit".into(), format!("--nofile={n}:{n}").into(), "--".into()]);
        }
        argv.push(program.into());
        let mut c = std::process::Command::new(&argv[0]);
        c.args(&argv[1..]);
        c.env("RUST_LOG", "error").envs(self.env.iter().map(|(k, v)| (k, v))).stdout(std::process::Stdio::null());
        match &self.stderr {
            Some(path) => c.stderr(std::fs::File::create(path).unwrap()),
            None => c.stderr(std::process::Stdio::null()),
        };
        c
    }
}

/// The lifecycle events in a JSON log (`CRANK_LOG_FORMAT=json`), in order: each line's
/// `event_json` field, parsed. Other lines are skipped.
pub fn logged_events(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| {
            let json = l.get("fields").and_then(|f| f.get("event_json")).or_else(|| l.get("event_json"))?;
            serde_json::from_str(json.as_str()?).ok()
        })
        .collect()
}

/// A policy (Rego) under which a worker renews at every look: every tick (a fortieth of
/// the certificate's lifetime, 250 ms to 30 s) and once at start. A policy folder defines
/// every hook; the others answer as the built-in defaults do for a worker.
pub const RENEW_AT_EVERY_LOOK: &str = r#"package crank

import rego.v1

can_issue_certificate := {"allow": true}

certificate_validity_period := 86400

should_renew_certificate := {"renew": true, "expiring_soon": false}

revoke_certificate := true
"#;

/// libfaketime's multi-threaded library: `CRANK_LIBFAKETIME`, else where Debian's
/// `libfaketime` package puts it for this machine's architecture.
pub fn libfaketime() -> PathBuf {
    if let Some(p) = std::env::var_os("CRANK_LIBFAKETIME") {
        return PathBuf::from(p);
    }
    let candidates = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .chain(std::iter::once(PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")));
    candidates.into_iter().find(|p| p.exists()).expect(
        "libfaketime not found: install it (`apt-get install faketime`, as scripts/test.sh does) or set CRANK_LIBFAKETIME",
    )
}

/// Starts `crank ca serve` as [`serve_ca_process`] does, with `opts`.
pub async fn serve_ca_process_with(
    dir: &Path,
    extra: &[&str],
    opts: &ProcessOptions,
) -> anyhow::Result<(KillOnDrop, SocketAddr)> {
    let addr = free_addr();
    let child = opts
        .command(&bin("crank"))
        .arg("ca")
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", &addr.to_string()])
        .args(extra)
        .spawn()?;
    let guard = KillOnDrop(child);
    wait_for_port(addr).await?;
    Ok((guard, addr))
}

/// A rustls client config trusting `roots`, presenting `client`'s certificate if given,
/// offering the ALPN protocols `alpn` (none: the server decides by the first bytes).
pub fn tls_client_config(
    roots: &[rustls_pki_types::CertificateDer<'static>],
    client: Option<&CertificateBundle>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut config = match client {
        Some(bundle) => {
            let creds = crank_runtime::tls::Credentials::new(bundle.certified_key().unwrap());
            crank_runtime::tls::mtls_client_config(roots, creds).unwrap()
        }
        None => rustls::ClientConfig::builder_with_provider(crank_runtime::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(crank_runtime::tls::root_store(roots).unwrap())
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TCP connection to `addr` from the local address `from` (Linux routes all of
/// 127.0.0.0/8 to the loopback interface, so 127.0.0.2 is another client address).
pub async fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// How a client's TLS handshake ended.
#[derive(Debug)]
pub enum Handshake {
    /// Done: the connection is open.
    Done(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    /// The server closed or reset the connection, or the handshake failed.
    Failed(std::io::Error),
    /// No answer within the time given.
    TimedOut,
}

/// Connects from `from` to `addr` (server name `localhost`) and does a TLS handshake with
/// `config`, all within `within`.
pub async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    from: std::net::IpAddr,
    addr: SocketAddr,
    within: Duration,
) -> Handshake {
    let connect = async {
        let tcp = connect_from(from, addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
    };
    match tokio::time::timeout(within, connect).await {
        Ok(Ok(tls)) => Handshake::Done(Box::new(tls)),
        Ok(Err(e)) => Handshake::Failed(e),
        Err(_) => Handshake::TimedOut,
    }
}

/// Waits up to `within` for the peer to close `stream` (end of stream or an error),
/// discarding whatever it sends first: how long that took, or `None` if it stayed open.
pub async fn wait_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let drain = async {
        let mut buf = [0u8; 4096];
        while matches!(stream.read(&mut buf).await, Ok(1..)) {}
    };
    tokio::time::timeout(within, drain).await.ok().map(|()| start.elapsed())
}

/// A free port on 127.0.0.1, for a server a test starts (which binds it a moment later).
///
/// Not a port the kernel picks (`bind` to port 0): those come from its ephemeral range,
/// where every server started on port 0 and every outgoing connection also takes one, so
/// between this check and the server's bind another test's process could take it, and
/// the test would then talk to a stranger's server. These ports come from just below the
/// ephemeral range, in turn (a counter per test process, starting where the process id
/// says): two servers of concurrent tests never get the same one.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const SPAN: u32 = 8192;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(SPAN).max(1024);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(low + (start + n) % SPAN) else { continue };
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The directory holding the workspace's built binaries (`target/<profile>`, or
/// `$CARGO_TARGET_DIR/<profile>`), found from where this test binary (in `deps/`) or a
/// binary beside them runs, so it follows wherever cargo put them.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().unwrap().to_path_buf() } else { dir.to_path_buf() }
}

/// Path of a workspace binary; panics with what to do if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`), as scripts/test.sh does",
        p.display()
    );
    p
}

/// A PostgreSQL server of its own on 127.0.0.1 and a free port, in a temporary data
/// directory; stopped (immediate mode) and deleted when dropped. Run as root, the
/// server runs as the `postgres` user, as PostgreSQL requires.
#[derive(Debug)]
pub struct PgServer {
    data: TempDir,
    bindir: PathBuf,
    /// The port it listens on.
    pub port: u16,
}

impl PgServer {
    /// initdb + start. Panics with what to install when PostgreSQL is missing.
    pub fn start() -> Self {
        let bindir = pg_bindir();
        let data = tempfile::Builder::new().prefix("crank-pg-").tempdir().unwrap();
        let port = free_addr().port();
        let as_root = running_as_root();
        if as_root {
            let st = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(data.path()).status();
            assert!(st.is_ok_and(|s| s.success()), "chown of the PostgreSQL data dir to postgres failed");
        }
        let pgdata = data.path().join("data");
        let out = pg_command(&bindir, "initdb", as_root)
            .args(["-D"])
            .arg(&pgdata)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("running initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let server = Self { data, bindir, port };
        server.start_again();
        server
    }

    fn pgdata(&self) -> PathBuf {
        self.data.path().join("data")
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.data.path().display()
        );
        let log = self.data.path().join("server.log");
        let out = pg_command(&self.bindir, "pg_ctl", running_as_root())
            .args(["-D"])
            .arg(self.pgdata())
            .args(["-o", &opts, "-l"])
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("running pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once (like a crash: `-m immediate`).
    pub fn stop(&self) {
        let _ = pg_command(&self.bindir, "pg_ctl", running_as_root())
            .args(["-D"])
            .arg(self.pgdata())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Creates database `name` and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let out = std::process::Command::new(self.bindir.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .output()
            .expect("running createdb");
        assert!(out.status.success(), "createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.url(name)
    }

    /// URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the tests run as root.
pub fn running_as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether `test`, which acts as another user, can run: it needs root. Without root it
/// fails under `CI=true` (CI runs as root, so a skip there would hide a lost test), and
/// elsewhere says on the terminal, past the test harness's capture, that it is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if running_as_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root, to act as an unprivileged user with runuser; CI runs the tests as root"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {test}: it needs root, to act as an unprivileged user; run the tests as root to run it !!!!!!!!\n"
    );
    false
}

/// Runs `args` as the unprivileged `user` (`runuser -u USER -- ARGS`, as root); panics
/// with its stderr if it fails.
pub fn run_as(user: &str, args: &[&str]) {
    let out = std::process::Command::new("runuser").args(["-u", user, "--"]).args(args).output().expect("runuser");
    assert!(out.status.success(), "runuser -u {user} -- {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn pg_command(bindir: &Path, tool: &str, as_root: bool) -> std::process::Command {
    if as_root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bindir.join(tool));
        c
    } else {
        std::process::Command::new(bindir.join(tool))
    }
}

/// The PostgreSQL server binaries: `CRANK_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("CRANK_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).expect(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (`apt-get install postgresql`, as scripts/test.sh does) or set CRANK_PG_BINDIR",
    )
}

/// How a [`Platform`] is made: what `crank ca init` and `crank ca serve` get, and how the
/// CA's processes run.
#[derive(Debug, Default, Clone)]
pub struct PlatformOptions {
    /// Extra `crank ca init` arguments (e.g. `--san 10.0.0.2`).
    pub init: Vec<String>,
    /// Extra `crank ca serve` arguments.
    pub serve: Vec<String>,
    /// How `crank ca serve` and `crank token create` run: their environment (e.g. a
    /// faked clock) and wrapper (e.g. `ip netns exec NAME`).
    pub ca_process: ProcessOptions,
    /// Where the CA listens (default: a free port on 127.0.0.1).
    pub listen: Option<SocketAddr>,
    /// Whether the CA logs its events (JSON) into `<tmp>/ca.log` ([`Platform::ca_log`]).
    pub ca_log: bool,
}

impl PlatformOptions {
    /// `crank ca serve` with `args`.
    pub fn serve(args: &[&str]) -> Self {
        Self { serve: args.iter().map(|s| (*s).to_owned()).collect(), ..Self::default() }
    }
}

/// A platform made of the real binaries: a CA directory (`crank ca init`), its
/// `crank ca serve` process, and helpers that run `crank` and the example workers
/// against it as an operator would.
#[derive(Debug)]
pub struct Platform {
    /// Holds every directory of the platform.
    pub tmp: TempDir,
    /// The CA directory.
    pub ca_dir: PathBuf,
    /// Where the CA listens.
    pub ca_addr: SocketAddr,
    opts: PlatformOptions,
    ca: Option<KillOnDrop>,
}

impl Platform {
    /// `crank ca init` and `crank ca serve EXTRA...`.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with(PlatformOptions::serve(extra)).await
    }

    /// `crank ca init` and `crank ca serve` as `opts` says.
    pub async fn start_with(opts: PlatformOptions) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("ca");
        let init: Vec<&str> = opts.init.iter().map(String::as_str).collect();
        crank(&[&["ca", "init", "--dir", ca_dir.to_str().unwrap()][..], &init].concat()).unwrap();
        let ca_addr = opts.listen.unwrap_or_else(free_addr);
        let log = opts.ca_log;
        let mut p = Self { tmp, ca_dir, ca_addr, opts, ca: None };
        if log {
            p.start_ca_logging().await
        } else {
            p.start_ca().await
        }
        p
    }

    /// `https://ADDR` of the CA.
    pub fn ca_url(&self) -> String {
        format!("https://{}", self.ca_addr)
    }

    /// Stops the CA process.
    pub fn stop_ca(&mut self) {
        self.ca = None;
    }

    /// Replaces the extra `crank ca serve` arguments used by the next
    /// [`Platform::start_ca`].
    pub fn set_serve_args(&mut self, args: &[&str]) {
        self.opts.serve = args.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Whether the CA process is still running (it has not exited).
    pub fn ca_is_running(&mut self) -> bool {
        self.ca.as_mut().is_some_and(|c| matches!(c.0.try_wait(), Ok(None)))
    }

    /// Starts the CA process again on the same address and arguments.
    pub async fn start_ca(&mut self) {
        self.start_ca_with(None, "error").await;
    }

    /// Starts the CA process again, logging its events (JSON) into `<tmp>/ca.log`.
    pub async fn start_ca_logging(&mut self) {
        let log = self.tmp.path().join("ca.log");
        self.start_ca_with(Some(log), "info").await;
    }

    /// What the CA logged (after [`Platform::start_ca_logging`]).
    pub fn ca_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("ca.log")).unwrap_or_default()
    }

    /// The lifecycle events the CA logged so far.
    pub fn ca_events(&self) -> Vec<serde_json::Value> {
        logged_events(&self.ca_log())
    }

    /// The lifecycle events a worker started by [`Platform::worker`] logged so far.
    pub fn events(&self, name: &str) -> Vec<serde_json::Value> {
        logged_events(&self.log(name))
    }

    async fn start_ca_with(&mut self, log: Option<PathBuf>, level: &str) {
        let mut c = self.opts.ca_process.command(&bin("crank"));
        c.args(["ca", "serve", "--dir", self.ca_dir.to_str().unwrap(), "--listen", &self.ca_addr.to_string()])
            .args(&self.opts.serve)
            .env("RUST_LOG", level)
            .env("CRANK_LOG_FORMAT", "json");
        if let Some(log) = log {
            c.stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap());
        }
        self.ca = Some(KillOnDrop(c.spawn().unwrap()));
        wait_for_port(self.ca_addr).await.unwrap();
    }

    /// A join token (`crank token create`).
    /// Made where the CA directory is, so on the CA's clock.
    pub fn token(&self, worker: &str) -> String {
        self.token_with(worker, &[])
    }

    /// A join token granting `capabilities` (`crank token create --capability`).
    pub fn token_with(&self, worker: &str, capabilities: &[&str]) -> String {
        let mut args = vec!["token", "create", "--dir", self.ca_dir.to_str().unwrap(), "--worker-id", worker];
        for c in capabilities {
            args.extend(["--capability", c]);
        }
        let out = crank_command(&args).envs(self.opts.ca_process.env.iter().map(|(k, v)| (k, v))).output().unwrap();
        assert!(out.status.success(), "crank token create: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `crank cert init` for `worker` into `<tmp>/<worker>`; its bundle.
    pub fn identity(&self, worker: &str) -> CertificateBundle {
        self.identity_with(worker, &[])
    }

    /// [`Platform::identity`] with a join token granting `capabilities`.
    pub fn identity_with(&self, worker: &str, capabilities: &[&str]) -> CertificateBundle {
        let dir = self.tmp.path().join(worker);
        cert_init(worker, &self.token_with(worker, capabilities), &self.ca_url(), &dir).unwrap();
        CertificateBundle::load(&crank_security_core::CertFiles::in_dir(&dir)).unwrap()
    }

    /// `crank ca admin-cert --name NAME` into `<tmp>/admin-NAME`; that folder.
    pub fn admin(&self, name: &str) -> PathBuf {
        let out = self.tmp.path().join(format!("admin-{name}"));
        let (dir, o) = (self.ca_dir.to_str().unwrap(), out.to_str().unwrap());
        crank(&["ca", "admin-cert", "--dir", dir, "--name", name, "--out", o]).unwrap();
        out
    }

    /// `crank revoke --admin-dir ADMIN TARGET...`: its output, or its error.
    pub fn revoke(&self, admin: &Path, target: &[&str]) -> anyhow::Result<String> {
        let url = self.ca_url();
        let args = ["revoke", "--admin-dir", admin.to_str().unwrap(), "--ca-url", &url, "--reason", "keyCompromise"];
        crank(&[&args[..], target].concat())
    }

    /// The example worker `name` (`hello-world`, `caller`) as a command: listening on
    /// `addr`'s port, its certificates in `<tmp>/<name>` (with a new join token when there
    /// are none yet), this CA, `env` added, its log (JSON) appended to `<tmp>/<name>.log`.
    pub fn worker_command(&self, name: &str, addr: SocketAddr, env: &[(&str, &str)]) -> std::process::Command {
        let certs = self.tmp.path().join(name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(name)).unwrap();
        let port_var = format!("{}_HTTPS_PORT", name.to_ascii_uppercase().replace('-', "_"));
        let port = addr.port().to_string();
        let certs_s = certs.to_str().unwrap();
        let base = [
            ("CRANK_LOG_FORMAT", "json"),
            ("CA_SERVICE_URL", &self.ca_url()),
            ("CERT_DIR", certs_s),
            (&port_var, &port),
            ("CRANK_LISTEN_HOST", "127.0.0.1"),
        ];
        let mut c = example_command(name, &[&base[..], env].concat());
        c.stdout(std::process::Stdio::from(log.try_clone().unwrap())).stderr(std::process::Stdio::from(log));
        if !certs.join("client.crt").exists() {
            c.env("CRANK_JOIN_TOKEN", self.token(name));
        }
        c
    }

    /// Starts [`Platform::worker_command`] on a free port and waits until it listens
    /// (panicking with its log if it does not).
    pub async fn worker(&self, name: &str, env: &[(&str, &str)]) -> (KillOnDrop, SocketAddr) {
        let addr = free_addr();
        let process = KillOnDrop(self.worker_command(name, addr, env).spawn().unwrap());
        if let Err(e) = wait_for_port(addr).await {
            panic!("{name} does not serve ({e}); its log:\n{}", self.log(name));
        }
        (process, addr)
    }

    /// The log file of a worker started by [`Platform::worker`].
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.log"))
    }

    /// What a worker has logged so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// [`wait_until`], but a timeout shows what `name` logged meanwhile.
    pub async fn wait_logged(&self, name: &str, what: &str, within: Duration, cond: impl FnMut() -> bool) {
        let seen = self.log(name).len();
        let explain = || format!("; {name} logged meanwhile:\n{}", &self.log(name)[seen..]);
        wait_or_explain(what, within, cond, explain).await;
    }

    /// An HTTPS client presenting `bundle` and trusting what it trusts.
    pub fn client(bundle: &CertificateBundle) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(Arc::unwrap_or_clone(tls_client_config(bundle.ca(), Some(bundle), &[])))
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap()
    }
}
