//! What an unauthenticated client can make a server hold, against the real `crank ca
//! serve` and `hello-world` binaries: connections that send half a header or nothing,
//! floods from one address, running out of file descriptors, and metric labels taken
//! from requests. Timeouts are configured short (through the environment) so nothing
//! waits for the defaults.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_security_core::{CertFiles, CertificateBundle};
use crank_tests::{
    Handshake, KillOnDrop, ProcessOptions, cert_init, crank, free_addr, serve_ca_process_with, tls_client_config,
    tls_connect, wait_closed, wait_for_port,
};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

/// Where the floods come from.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Another client address (Linux routes all of 127.0.0.0/8 to loopback).
const LEGIT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Slack on top of a configured timeout (two cores, shared with other tests).
const SLACK: Duration = Duration::from_secs(6);
/// How long a server may take to close an idle connection gracefully (HTTP/2: GOAWAY
/// and a ping the client never answers) after the idle timeout.
const IDLE_GRACE: Duration = Duration::from_secs(5);
/// The first bytes of an HTTP/1.1 request that never finishes its header.
const HALF_HEADER: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Half: ";
/// The HTTP/2 client preface and an empty SETTINGS frame, and then nothing.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

type Stream = Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A `crank ca serve` process and a client certificate it issued (`scraper`).
struct Ca {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    addr: SocketAddr,
    client: CertificateBundle,
    _process: KillOnDrop,
}

impl Ca {
    async fn start(opts: ProcessOptions) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        crank(&["ca", "init", "--dir", dir.to_str().unwrap()]).unwrap();
        let (process, addr) = serve_ca_process_with(&dir, &[], &opts).await.unwrap();
        let d = dir.to_str().unwrap();
        let token =
            crank(&["token", "create", "--dir", d, "--worker-id", "scraper", "--capability", "metrics.read"]).unwrap();
        let client_dir = tmp.path().join("scraper");
        cert_init("scraper", &token, &format!("https://{addr}"), &client_dir).unwrap();
        let client = CertificateBundle::load(&CertFiles::in_dir(&client_dir)).unwrap();
        Self { tmp, dir, addr, client, _process: process }
    }

    /// The hello-world binary, bootstrapped at this CA, with `env` added; waits until it
    /// listens.
    async fn hello_world(&self, env: &[(&str, &str)]) -> (KillOnDrop, SocketAddr) {
        let dir = self.dir.to_str().unwrap();
        let token = crank(&["token", "create", "--dir", dir, "--worker-id", "hello-world"]).unwrap();
        let addr = free_addr();
        let (ca_url, port) = (format!("https://{}", self.addr), addr.port().to_string());
        let certs = self.tmp.path().join("hello-world");
        let mut all = vec![
            ("CRANK_JOIN_TOKEN", token.as_str()),
            ("CA_SERVICE_URL", ca_url.as_str()),
            ("CERT_DIR", certs.to_str().unwrap()),
            ("HELLO_WORLD_HTTPS_PORT", port.as_str()),
            ("CRANK_LISTEN_HOST", "127.0.0.1"),
        ];
        all.extend_from_slice(env);
        let child = super::cli::hello_world(&all)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let process = KillOnDrop(child);
        wait_for_port(addr).await.unwrap();
        (process, addr)
    }

    /// A TLS client config trusting this CA, with the scraper's certificate if `mtls`.
    fn tls(&self, mtls: bool, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        tls_client_config(self.client.ca(), mtls.then_some(&self.client), alpn)
    }

    /// An HTTPS client connecting from [`LEGIT`], with the scraper's certificate if `mtls`.
    fn legit(&self, mtls: bool) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(Arc::unwrap_or_clone(self.tls(mtls, &[])))
            .local_address(LEGIT)
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap()
    }

    /// The CA's `/metrics` once it serves again after a flood (within 10 s).
    async fn metrics_when_served_again(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.legit(true).get(format!("https://{}/metrics", self.addr)).send().await {
                Ok(r) if r.status() == 200 => return r.text().await.unwrap(),
                _ => assert!(Instant::now() < deadline, "the CA did not serve again after the flood closed"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET https://ADDR/metrics` from [`LEGIT`] with the scraper's certificate.
    async fn metrics(&self, addr: SocketAddr) -> String {
        let r = self.legit(true).get(format!("https://{addr}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }
}

/// What a flood of connections from [`ATTACKER`] got.
#[derive(Default)]
struct Flood {
    /// Handshake done and `first` sent: the stream and when.
    open: Vec<(Stream, Instant)>,
    /// Closed by the server or failed, with how long that took.
    failed: Vec<Duration>,
    /// No answer within 5 s.
    timed_out: usize,
}

/// Opens `n` TLS connections at once from [`ATTACKER`]; each that completes its
/// handshake sends `first`.
async fn flood(config: Arc<rustls::ClientConfig>, addr: SocketAddr, n: usize, first: &'static [u8]) -> Flood {
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let config = config.clone();
        tasks.spawn(async move {
            let start = Instant::now();
            let outcome = match tls_connect(config, ATTACKER, addr, Duration::from_secs(5)).await {
                Handshake::Done(mut tls) => match tls.write_all(first).await {
                    Ok(()) => Handshake::Done(tls),
                    Err(e) => Handshake::Failed(e),
                },
                other => other,
            };
            (outcome, start.elapsed())
        });
    }
    let mut flood = Flood::default();
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            (Handshake::Done(tls), _) => flood.open.push((tls, Instant::now())),
            (Handshake::Failed(_), took) => flood.failed.push(took),
            (Handshake::TimedOut, _) => flood.timed_out += 1,
        }
    }
    flood
}

/// Waits (for all at once) up to `within` for the server to close each connection: how
/// long after its first bytes each one closed, `None` for those still open.
async fn closes(open: Vec<(Stream, Instant)>, within: Duration) -> Vec<Option<Duration>> {
    let mut tasks = JoinSet::new();
    for (mut tls, sent) in open {
        tasks.spawn(async move { wait_closed(&mut tls, within).await.map(|_| sent.elapsed()) });
    }
    tasks.join_all().await
}

/// Asserts every connection in `closes` closed between `at_least` and `at_most` after
/// its first bytes.
fn assert_closed_between(what: &str, closes: &[Option<Duration>], at_least: Duration, at_most: Duration) {
    let open = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} of {} {what} were still open {at_most:?} after their first bytes", closes.len());
    let first = closes.iter().flatten().min().copied().unwrap_or_default();
    assert!(first >= at_least, "a connection with {what} was closed after {first:?}, before {at_least:?}");
}

/// The sum of the samples of `metric` whose labels include `label` (any, when `None`),
/// and how many such series there are.
fn samples(body: &str, metric: &str, label: Option<(&str, &str)>) -> (f64, usize) {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("not Prometheus text format");
    let mut sum = 0.0;
    let mut series = 0;
    for s in scrape.samples.iter().filter(|s| s.metric == metric) {
        if label.is_some_and(|(k, v)| s.labels.get(k) != Some(v)) {
            continue;
        }
        if let prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) = s.value
        {
            sum += v;
            series += 1;
        }
    }
    (sum, series)
}

#[tokio::test]
async fn a_half_header_flood_is_closed_by_the_header_timeout_while_others_are_served() {
    let ca = Ca::start(ProcessOptions::env(&[
        ("CRANK_HEADER_READ_TIMEOUT", "2s"),
        ("CRANK_IDLE_TIMEOUT", "60s"),
        ("CRANK_MAX_CONNECTIONS_PER_IP", "500"),
    ]))
    .await;
    let flood = flood(ca.tls(false, &[]), ca.addr, 100, HALF_HEADER).await;
    assert_eq!(flood.open.len(), 100, "{} failed, {} timed out", flood.failed.len(), flood.timed_out);

    let r = ca.legit(false).get(format!("https://{}/health", ca.addr)).send().await.unwrap();
    assert_eq!(r.status(), 200, "a legitimate request during the flood");

    let closes = closes(flood.open, Duration::from_secs(2) + SLACK).await;
    assert_closed_between("half a header", &closes, Duration::from_millis(1500), Duration::from_secs(2) + SLACK);
    let body = ca.metrics(ca.addr).await;
    let (closed, _) = samples(&body, "crank_connections_closed_total", Some(("reason", "header_timeout")));
    assert!(closed >= 100.0, "{body}");
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_by_the_idle_timeout() {
    let ca = Ca::start(ProcessOptions::env(&[
        ("CRANK_HEADER_READ_TIMEOUT", "30s"),
        ("CRANK_IDLE_TIMEOUT", "2s"),
        ("CRANK_MAX_CONNECTIONS_PER_IP", "500"),
    ]))
    .await;
    // Nothing at all after the handshake, and an HTTP/2 preface with nothing after it.
    let silent = flood(ca.tls(false, &[]), ca.addr, 40, b"").await;
    let h2 = flood(ca.tls(false, &[b"h2"]), ca.addr, 40, H2_PREFACE).await;
    assert_eq!(silent.open.len() + h2.open.len(), 80);
    let within = Duration::from_secs(2) + IDLE_GRACE + SLACK;
    let (silent, h2) = tokio::join!(closes(silent.open, within), closes(h2.open, within));
    assert_closed_between("nothing sent", &silent, Duration::from_millis(1500), within);
    assert_closed_between("an HTTP/2 preface and nothing else", &h2, Duration::from_millis(1500), within);
    let body = ca.metrics(ca.addr).await;
    let (closed, _) = samples(&body, "crank_connections_closed_total", Some(("reason", "idle_timeout")));
    assert!(closed >= 80.0, "{body}");
}

/// The attacker's setting: a CA that may hold 128 open files, under a flood of `n`
/// connections with half a header that it would otherwise keep for a minute. Asserts
/// that at most `cap` connections were served and the rest closed at once.
async fn flood_a_ca_with_128_files(max_connections_per_ip: &str, n: usize, cap: usize) -> (Ca, Flood) {
    let mut opts = ProcessOptions::env(&[
        ("CRANK_MAX_CONNECTIONS_PER_IP", max_connections_per_ip),
        ("CRANK_HEADER_READ_TIMEOUT", "60s"),
        ("CRANK_IDLE_TIMEOUT", "60s"),
    ]);
    opts.nofile = Some(128);
    let ca = Ca::start(opts).await;
    let flood = flood(ca.tls(false, &[]), ca.addr, n, HALF_HEADER).await;
    assert!(flood.open.len() <= cap, "{} of {n} connections are open, past the limit of {cap}", flood.open.len());
    assert_eq!(flood.timed_out, 0, "connections past the limit must be closed at once, not left waiting");
    assert_eq!(flood.failed.len(), n - flood.open.len());
    let slowest = flood.failed.iter().max().copied().unwrap_or_default();
    assert!(slowest < Duration::from_secs(3), "a refused connection took {slowest:?} to be closed");
    (ca, flood)
}

#[tokio::test]
async fn a_busy_connection_is_closed_at_its_maximum_age() {
    use tokio::io::AsyncReadExt;
    let ca = Ca::start(ProcessOptions::env(&[("CRANK_MAX_CONNECTION_AGE", "2s")])).await;
    let Handshake::Done(mut tls) = tls_connect(ca.tls(false, &[]), ATTACKER, ca.addr, Duration::from_secs(5)).await
    else {
        panic!("handshake failed")
    };
    // A request every 200 ms: never idle, so only its age can end the connection.
    let start = Instant::now();
    let mut served = 0;
    let closed_after = loop {
        let asked = tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        let mut answer = Vec::new();
        while asked.is_ok() && !answer.ends_with(b"}") {
            let mut buf = [0u8; 1024];
            match tls.read(&mut buf).await {
                Ok(n @ 1..) => answer.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        if !answer.starts_with(b"HTTP/1.1 200") {
            break start.elapsed();
        }
        served += 1;
        assert!(start.elapsed() < Duration::from_secs(2) + SLACK, "still open after {served} requests");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(closed_after >= Duration::from_millis(1500), "closed after {closed_after:?}, before its age of 2 s");
    assert!(served >= 5, "{served} requests served");
    let body = ca.metrics(ca.addr).await;
    let (closed, _) = samples(&body, "crank_connections_closed_total", Some(("reason", "max_age")));
    assert!(closed >= 1.0, "{body}");
}

#[tokio::test]
async fn past_the_per_address_limit_connections_are_closed_at_once_and_others_are_served() {
    let (ca, flood) = flood_a_ca_with_128_files("32", 200, 32).await;

    // Another address is served while the flood holds its connections.
    let r = ca.legit(false).get(format!("https://{}/health", ca.addr)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = ca.metrics(ca.addr).await;
    let (refused, _) = samples(&body, "crank_connections_refused_total", Some(("reason", "max_connections_per_ip")));
    assert!(refused >= (200 - 32) as f64, "{body}");
    drop(flood);
}

#[tokio::test]
async fn the_overall_limit_keeps_the_ca_within_its_open_files() {
    // No explicit CRANK_MAX_CONNECTIONS: the default is three quarters of the open-files
    // limit (96 of 128), so the CA always has descriptors left to accept and close.
    let (ca, flood) = flood_a_ca_with_128_files("1000", 150, 96).await;

    // While the server is full, a new client is closed at once too (it does not hang).
    let start = Instant::now();
    match tls_connect(ca.tls(false, &[]), LEGIT, ca.addr, Duration::from_secs(5)).await {
        Handshake::Failed(_) => assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed()),
        Handshake::Done(_) => panic!("a connection past the overall limit was served"),
        Handshake::TimedOut => panic!("a connection past the overall limit was left hanging"),
    }

    drop(flood);
    let body = ca.metrics_when_served_again().await;
    let (refused, _) = samples(&body, "crank_connections_refused_total", Some(("reason", "max_connections")));
    assert!(refused >= (150 - 96 + 1) as f64, "{body}");
    let (errors, _) = samples(&body, "crank_connection_accept_errors_total", None);
    assert_eq!(errors, 0.0, "the CA ran out of file descriptors: {body}");
}

#[tokio::test]
async fn accept_errors_back_off_with_one_warning() {
    // Limits set above what 128 files allow, so accepting runs out of descriptors.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut opts = ProcessOptions::env(&[
        ("CRANK_MAX_CONNECTIONS", "1000"),
        ("CRANK_MAX_CONNECTIONS_PER_IP", "1000"),
        ("RUST_LOG", "warn"),
    ]);
    opts.nofile = Some(128);
    opts.stderr = Some(log.path().to_path_buf());
    let ca = Ca::start(opts).await;
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(crank_tests::connect_from(ATTACKER, ca.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(held);

    // Accepting resumes once descriptors are free again (backoff is at most 1 s).
    let body = ca.metrics_when_served_again().await;
    let text = std::fs::read_to_string(log.path()).unwrap();
    let warnings = text.lines().filter(|l| l.contains("accept") && l.contains("fail")).count();
    assert!(warnings <= 2, "{warnings} warnings about accept errors:\n{text}");
    let (errors, _) = samples(&body, "crank_connection_accept_errors_total", None);
    assert!(errors >= 1.0, "no accept error happened, so this test shows nothing: {body}");
}

#[tokio::test]
async fn a_worker_closes_half_header_and_idle_connections() {
    let ca = Ca::start(ProcessOptions::default()).await;
    let (_worker, addr) = ca
        .hello_world(&[
            ("CRANK_HEADER_READ_TIMEOUT", "2s"),
            ("CRANK_IDLE_TIMEOUT", "3s"),
            ("CRANK_MAX_CONNECTIONS_PER_IP", "500"),
        ])
        .await;
    // A worker's clients need a certificate; this one has one and misuses it.
    let half = flood(ca.tls(true, &[]), addr, 30, HALF_HEADER).await;
    let silent = flood(ca.tls(true, &[]), addr, 30, b"").await;
    assert_eq!(half.open.len() + silent.open.len(), 60);
    let r = ca.legit(true).get(format!("https://{addr}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a legitimate request during the flood");

    let (half_at_most, idle_at_most) = (Duration::from_secs(2) + SLACK, Duration::from_secs(3) + IDLE_GRACE + SLACK);
    let (half, silent) = tokio::join!(closes(half.open, half_at_most), closes(silent.open, idle_at_most));
    assert_closed_between("half a header", &half, Duration::from_millis(1500), half_at_most);
    assert_closed_between("nothing sent", &silent, Duration::from_millis(2500), idle_at_most);
}

#[test]
fn invalid_connection_settings_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let cert_dir = tmp.path().to_str().unwrap();
    let out = super::cli::hello_world(&[("CERT_DIR", cert_dir), ("CRANK_IDLE_TIMEOUT", "soon")]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CRANK_IDLE_TIMEOUT"), "{err}");
    let out = super::cli::hello_world(&[("CERT_DIR", cert_dir), ("CRANK_MAX_CONNECTIONS", "0")]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CRANK_MAX_CONNECTIONS"), "{err}");

    let ca_dir = tmp.path().join("ca");
    crank(&["ca", "init", "--dir", ca_dir.to_str().unwrap()]).unwrap();
    let err = crank(&["ca", "serve", "--dir", ca_dir.to_str().unwrap(), "--header-read-timeout", "0s"]).unwrap_err();
    assert!(err.to_string().contains("invalid value '0s' for '--header-read-timeout"), "{err}");
}

#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let ca = Ca::start(ProcessOptions::default()).await;
    let (_worker, worker) = ca.hello_world(&[]).await;
    for (addr, mtls) in [(ca.addr, false), (worker, true)] {
        let client = ca.legit(mtls);
        for i in 0..300 {
            let method = reqwest::Method::from_bytes(format!("M{i:04}").as_bytes()).unwrap();
            let r = client.request(method, format!("https://{addr}/health")).send().await.unwrap();
            assert_eq!(r.status(), 405);
        }
        let body = ca.metrics(addr).await;
        let (_, series) = samples(&body, "crank_http_requests_total", None);
        assert!(series <= 10, "{series} request series at {addr}:\n{body}");
        let (other, _) = samples(&body, "crank_http_requests_total", Some(("method", "other")));
        assert_eq!(other, 300.0, "{body}");
    }
}
