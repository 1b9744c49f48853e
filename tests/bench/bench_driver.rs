//! Load driver for the side-by-side benchmarks (`bash bench/run.sh`): the runs that a
//! stock HTTP load generator cannot do.
//!
//! ```text
//! bench-driver sign       --url URL --csr FILE --client DIR --concurrency C --seconds S
//!                         [--crank-ca DIR] [--field csr|certificate_request] [--new-connection true]
//! bench-driver renew      --url CA_URL --crank-ca DIR --concurrency C --seconds S
//! bench-driver handshakes --url URL --client DIR --concurrency C --seconds S
//! bench-driver hold       --url URL --client DIR --connections N --seconds S
//! bench-driver serve      --client DIR --listen ADDR --access off|builtin|rego
//! ```
//!
//! `--client DIR` is a cert directory written by `crank cert init` (`client.crt`,
//! `client.key`, `ca.crt`): every run presents that client certificate and verifies
//! the server against that CA, whichever server it talks to.
//!
//! - `sign` POSTs `{FIELD: <CSR PEM>}` to `--url` from `C` tasks over keep-alive
//!   connections for `S` seconds. With `--crank-ca DIR` each request also carries a
//!   fresh join token (`{"csr", "token"}`), made before the clock starts with the CA's
//!   token key, since tokens are single use. With `--new-connection true` every request
//!   opens a connection of its own (a full mTLS handshake), as a renewal must.
//! - `renew` renews as workers do: `C` identities are bootstrapped with join tokens
//!   before the clock starts; then each task renews its identity again and again, each
//!   time with a new key, over a new mTLS connection authenticated by the certificate it
//!   got last (the CA retires a certificate when it renews it, so each certificate
//!   renews once).
//! - `handshakes` opens a new TLS connection per request with session resumption off in
//!   the client (every handshake is a full one, whatever the server offers), sends
//!   `GET <path>` with `Connection: close`, reads the whole answer and closes.
//! - `hold` opens `N` connections, sends one keep-alive `GET` on each, prints `ready`,
//!   keeps them open for `S` seconds, then closes them.
//!
//! - `serve` serves `GET /health` over mutual TLS with the server and HTTP stack every
//!   worker uses (the certificate and CA of `--client DIR`, client certificates
//!   required; request metrics, load shedding, timeout and body limit from
//!   [`worker_router`](crank_runtime::worker::worker_router)), and the capability access
//!   check ([`AccessControl`]) as `--access` says: `off` (the same stack without the
//!   check), `builtin` (the built-in policy) or `rego` (the default policy in Rego,
//!   decisions cached as workers cache them). It prints `listening ADDR`
//!   and serves until killed. The benchmark compares the three under the same load.
//!
//! `sign` and `handshakes` print one line of `key=value` pairs: `ok`, `errors`,
//! `seconds`, `rate` (successful requests per second), `p50_ms`, `p99_ms`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crank_ca::CaDir;
use crank_ca::TokenAuthority;
use crank_runtime::tls::{Credentials, mtls_client_config};
use crank_runtime::{AccessControl, ConnectionLimits, MtlsClient, ServerHandle};
use crank_security_core::{CertFiles, CertificateBundle, WorkerId};
use crank_tests::BenchOpts;
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().context("usage: bench-driver sign|renew|handshakes|hold --option value ...")?;
    let opts = BenchOpts::parse(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match mode.as_str() {
            "sign" => sign(&opts).await,
            "renew" => renew(&opts).await,
            "handshakes" => handshakes(&opts).await,
            "hold" => hold(&opts).await,
            "serve" => serve(&opts).await,
            other => bail!("unknown mode {other:?}: use sign, renew, handshakes, hold or serve"),
        }
    })
}

fn client_bundle(dir: &Path) -> anyhow::Result<CertificateBundle> {
    CertificateBundle::load(&CertFiles::in_dir(dir))
        .with_context(|| format!("loading the client bundle in {}", dir.display()))
}

/// Latencies of successful requests, and the count of failed ones, from one task.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Tally {
    fn record<E: std::fmt::Display>(&mut self, started: Instant, outcome: Result<(), E>) {
        match outcome {
            Ok(()) => self.latencies.push(started.elapsed()),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn report(tallies: Vec<Tally>, elapsed: Duration) {
    let mut all: Vec<Duration> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tallies {
        all.extend(t.latencies);
        errors += t.errors;
        first_error = first_error.or(t.first_error);
    }
    all.sort();
    let pct = |q: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() - 1) as f64 * q).round() as usize;
        all.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    let secs = elapsed.as_secs_f64();
    println!(
        "ok={} errors={errors} seconds={secs:.3} rate={:.1} p50_ms={:.3} p99_ms={:.3}",
        all.len(),
        all.len() as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
}

/// Runs `tasks` copies of `work` until `seconds` have passed; each call of `work` is
/// one timed request.
async fn drive<F, Fut>(tasks: usize, seconds: usize, work: F) -> anyhow::Result<(Vec<Tally>, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<bool>> + Send,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds as u64);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let work = work.clone();
        handles.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match work().await {
                    Ok(true) => tally.record::<String>(t0, Ok(())),
                    // Out of prepared inputs: stop this task.
                    Ok(false) => break,
                    Err(e) => tally.record(t0, Err(format!("{e:#}"))),
                }
            }
            tally
        }));
    }
    let mut tallies = Vec::new();
    for h in handles {
        tallies.push(h.await?);
    }
    Ok((tallies, start.elapsed()))
}

async fn sign(opts: &BenchOpts) -> anyhow::Result<()> {
    let url = opts.get("url")?.to_owned();
    let csr = std::fs::read_to_string(opts.path("csr")?).context("reading --csr")?;
    let field = opts.opt("field").unwrap_or("csr").to_owned();
    let concurrency = opts.num("concurrency")?;
    let seconds = opts.num("seconds")?;
    let bundle = client_bundle(&opts.path("client")?)?;
    let new_connection = opts.opt("new-connection").is_some_and(|v| v == "true");
    let client = MtlsClient::from_bundle(&bundle)?;

    // Fresh single-use tokens for the crank CA, made before the clock starts: enough for
    // `--max-rate` issuances per second (default 6,000) for the whole run.
    let tokens = match opts.opt("crank-ca") {
        Some(dir) => {
            let dir = CaDir::new(dir);
            let key = CaDir::read_key(&dir.token_key())?;
            let authority = TokenAuthority::new(&key, dir.trust_domain()?, dir.pinned_fingerprint()?)?;
            let worker = WorkerId::new("bench-signer")?;
            let max_rate = opts.num_or("max-rate", 6_000)?;
            let mut v = Vec::with_capacity(max_rate * seconds);
            for _ in 0..max_rate * seconds {
                v.push(authority.create(&worker, Duration::from_secs(3600), vec![])?);
            }
            Some(Arc::new(v))
        }
        None => None,
    };
    let next = Arc::new(AtomicUsize::new(0));
    let (tallies, elapsed) = drive(concurrency, seconds, move || {
        let (client, url, csr, field, tokens, next) =
            (client.clone(), url.clone(), csr.clone(), field.clone(), tokens.clone(), next.clone());
        let fresh = new_connection.then(|| MtlsClient::from_bundle(&bundle));
        async move {
            let client = match fresh {
                Some(c) => c?,
                None => client,
            };
            let mut body = serde_json::Map::new();
            body.insert(field, csr.into());
            if let Some(tokens) = &tokens {
                let Some(token) = tokens.get(next.fetch_add(1, Ordering::Relaxed)) else { return Ok(false) };
                body.insert("token".into(), token.clone().into());
            }
            let resp = client.post(&url).json(&body).send().await?;
            let status = resp.status();
            let text = resp.text().await?;
            anyhow::ensure!(status.is_success(), "HTTP {status}: {text}");
            anyhow::ensure!(text.contains("BEGIN CERTIFICATE"), "no certificate in the answer: {text}");
            Ok(true)
        }
    })
    .await?;
    report(tallies, elapsed);
    Ok(())
}

async fn renew(opts: &BenchOpts) -> anyhow::Result<()> {
    use crank_security_core::{CertificateProvider, CorrelationId, RenewRequest, build_csr, generate_key};
    let url: url::Url = opts.get("url")?.parse().context("--url")?;
    let concurrency = opts.num("concurrency")?;
    let seconds = opts.num("seconds")?;
    let dir = CaDir::new(opts.path("crank-ca")?);
    let work = tempfile::tempdir()?;
    // One identity per task, from a join token each, before the clock starts.
    let mut pool = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let worker = WorkerId::new(format!("bench-renewer-{i}"))?;
        let options = crank_runtime::BootstrapOptions {
            worker_id: Some(worker.clone()),
            token: crank_ca::create_token(&dir, &worker, Duration::from_secs(600), vec![])?,
            ca_urls: vec![url.clone()],
            cert_dir: work.path().join(worker.as_str()),
            sans: vec![worker.to_string()],
            key_type: Default::default(),
            retry: Default::default(),
        };
        pool.push(crank_runtime::bootstrap(&options, &crank_security_core::NoEvents).await?);
    }
    let pool = Arc::new(std::sync::Mutex::new(pool));
    let (tallies, elapsed) = drive(concurrency, seconds, move || {
        let (pool, url) = (pool.clone(), url.clone());
        async move {
            let Some(current) = pool.lock().map_err(|_| anyhow::anyhow!("pool poisoned"))?.pop() else {
                return Ok(false);
            };
            let identity = current.metadata().spiffe().context("no SPIFFE ID")?;
            let key = generate_key(Default::default())?;
            let csr = build_csr(&key, &identity.worker_id, &[identity.worker_id.to_string()])?;
            let trust = crank_runtime::trust::TrustStore::new(current.ca())?;
            let client = crank_runtime::CaClient::mtls(
                vec![url],
                &trust,
                Credentials::new(current.certified_key()?),
                &identity.trust_domain,
            )?;
            let request = RenewRequest {
                csr_pem: csr,
                worker_id: identity.worker_id.to_string(),
                current_serial: current.metadata().serial.clone(),
                current_fingerprint: None,
                correlation_id: CorrelationId::new(),
            };
            let outcome = client.renew(request).await;
            let next = match &outcome {
                Ok(issued) => CertificateBundle::from_pem(
                    issued.certificate_chain.as_bytes(),
                    key.serialize_pem().as_bytes(),
                    crank_runtime::worker::trust_pem(current.ca()).as_bytes(),
                )?,
                Err(_) => current,
            };
            pool.lock().map_err(|_| anyhow::anyhow!("pool poisoned"))?.push(next);
            outcome?;
            Ok(true)
        }
    })
    .await?;
    report(tallies, elapsed);
    Ok(())
}

/// Host, port and path of an `https://` URL.
fn split_url(url: &str) -> anyhow::Result<(String, String, String)> {
    let u = url::Url::parse(url)?;
    anyhow::ensure!(u.scheme() == "https", "{url} is not https");
    let host = u.host_str().context("URL without host")?.to_owned();
    let port = u.port_or_known_default().context("URL without port")?;
    Ok((host.clone(), format!("{host}:{port}"), u.path().to_owned()))
}

/// A TLS connector presenting the client certificate of `--client`, with session
/// resumption off.
fn connector(opts: &BenchOpts) -> anyhow::Result<TlsConnector> {
    let bundle = client_bundle(&opts.path("client")?)?;
    let mut cfg = mtls_client_config(bundle.ca(), Credentials::new(bundle.certified_key()?))?;
    cfg.resumption = Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

async fn handshakes(opts: &BenchOpts) -> anyhow::Result<()> {
    let (host, addr, path) = split_url(opts.get("url")?)?;
    let connector = connector(opts)?;
    let name = ServerName::try_from(host.clone())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (tallies, elapsed) = drive(opts.num("concurrency")?, opts.num("seconds")?, move || {
        let (connector, name, addr, request) = (connector.clone(), name.clone(), addr.clone(), request.clone());
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            // A server may close without close_notify after `Connection: close`.
            if let Err(e) = tls.read_to_end(&mut answer).await {
                anyhow::ensure!(e.kind() == std::io::ErrorKind::UnexpectedEof, e);
            }
            anyhow::ensure!(
                answer.starts_with(b"HTTP/1.1 200"),
                "unexpected answer: {}",
                String::from_utf8_lossy(&answer)
            );
            Ok(true)
        }
    })
    .await?;
    report(tallies, elapsed);
    Ok(())
}

async fn hold(opts: &BenchOpts) -> anyhow::Result<()> {
    let (host, addr, path) = split_url(opts.get("url")?)?;
    let connector = connector(opts)?;
    let name = ServerName::try_from(host.clone())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let n = opts.num("connections")?;
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = TcpStream::connect(&addr).await?;
        let mut tls = connector.connect(name.clone(), tcp).await?;
        tls.write_all(request.as_bytes()).await?;
        // Read the head and a small body; enough to know the request was served.
        let mut buf = vec![0u8; 4096];
        let got = tls.read(&mut buf).await?;
        anyhow::ensure!(
            buf.get(..got).is_some_and(|b| b.starts_with(b"HTTP/1.1 200")),
            "request on a held connection failed"
        );
        open.push(tls);
    }
    println!("ready connections={n}");
    tokio::time::sleep(Duration::from_secs(opts.num("seconds")? as u64)).await;
    drop(open);
    Ok(())
}

async fn serve(opts: &BenchOpts) -> anyhow::Result<()> {
    use axum::Router;
    use axum::routing::get;
    use crank_policy::{PolicyEngine, PolicyGuard, RegoEngine};
    use crank_runtime::metrics::Metrics;
    use crank_runtime::trust::TrustStore;

    let bundle = client_bundle(&opts.path("client")?)?;
    let trust = TrustStore::new(bundle.ca())?;
    let config = crank_runtime::tls::server_config(
        &trust,
        true,
        Credentials::new(bundle.certified_key()?),
        crank_runtime::Resumption::On,
    )?;
    let metrics = Metrics::new();
    let health = Router::new().route("/health", get(|| async { axum::Json(serde_json::json!({"status": "healthy"})) }));
    let engine: Option<Arc<dyn PolicyEngine>> = match opts.get("access")? {
        "off" => None,
        "builtin" => Some(crank_policy::builtin()),
        "rego" => Some(Arc::new(RegoEngine::defaults()?)),
        other => bail!("--access {other:?}: use off, builtin or rego"),
    };
    let access = match engine {
        None => None,
        Some(engine) => {
            let id = bundle.metadata().spiffe().context("the certificate carries no SPIFFE ID")?;
            let access = AccessControl::new(
                PolicyGuard::new(engine),
                id.worker_id.as_str(),
                id.trust_domain.as_str(),
                "bench",
                Arc::new(crank_security_core::NoEvents),
            )
            .with_metrics(metrics.clone())
            .with_trust_changes(trust.changes());
            Some(Arc::new(access))
        }
    };
    // The stack every worker serves its routes with, with or without the check.
    let limits =
        ConnectionLimits { max_connections: 4096, max_connections_per_ip: 4096, ..ConnectionLimits::default() };
    let router = crank_runtime::worker::worker_router(
        vec![(None, health)],
        access.as_ref(),
        &metrics,
        limits.max_in_flight_requests,
        (),
    );
    let listener = tokio::net::TcpListener::bind(opts.get("listen")?).await?;
    let server = ServerHandle::spawn(listener, config, router, limits, metrics.connections(), Some(trust))?;
    println!("listening {}", server.addr());
    std::future::pending::<()>().await;
    Ok(())
}
