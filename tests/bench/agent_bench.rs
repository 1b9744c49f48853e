//! Benchmarks of `crank agent` (the agent issue's targets), on the release binaries: a
//! `crank ca serve` process, `crank agent` processes, and workload clients over the SPIFFE
//! Workload API in this process.
//!
//! ```sh
//! cargo build --release -p crank-tests --bin agent-bench -p crank-cli --bin crank -p crank-examples --bin hello-world
//! ${CARGO_TARGET_DIR:-target}/release/agent-bench [--streams 1000] [--rotations 8]
//!     [--entries 1000] [--samples 2000] [--issue-n 2000] [--issue-pairs 5] [--concurrency 16]
//! ```
//!
//! 1. Rotation fan-out: a CA issuing `--leaf-validity` (10 s) certificates, one agent, one
//!    registration entry matching this uid, `--streams` `FetchX509SVID` streams open on
//!    it, each on its own connection (as that many workload processes would). For each
//!    rotation (the agent renews at half the lifetime): the time from the first stream
//!    seeing the new serial to the last, and from the agent's log line "workload SVID
//!    issued" (its timestamp) to the first and the last stream.
//! 2. Memory: a CA issuing 24 h certificates; an agent with `--entries` registration
//!    entries (distinct worker ids, each for another uid) and, beside it, the same agent
//!    with no entry and the `hello-world` worker. VmRSS and VmHWM from `/proc/<pid>/status`
//!    once the agent logged every SVID issued.
//! 3. First-response latency: connect, call `FetchX509SVID`, first message, close,
//!    one at a time, the SVID already held; against the agent and against a peer (this
//!    binary run as `agent-bench peer`: a bare tonic server of the same service on a Unix
//!    socket answering the agent's own response, fixed), in alternating rounds.
//! 4. CA issuance: `--issue-n` certificates through `POST /v1/agent/certificates` (the
//!    agent's mTLS identity from step 2) and as many through `POST /v1/certificates` with
//!    fresh join tokens, `--concurrency` in flight over one keep-alive client each, in
//!    alternating rounds (agent, token, agent, token, ...); keys, CSRs and tokens made
//!    before the clock starts. Each round also issues as many through the identity of
//!    the agent of step 3, which has a single entry: how the agent's entry count weighs.
//!
//! The binaries come from the directory of this one (`crank_tests::bin`): build them
//! in the same profile (`--bin` applies to every `-p` of one cargo command, hence the
//! three of them above).
//!
//! Prints each measurement as it goes and a summary at the end.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use crank_agent::proto::{
    JWTBundlesRequest, JWTBundlesResponse, JWTSVIDRequest, JWTSVIDResponse, SpiffeWorkloadAPI, SpiffeWorkloadAPIServer,
    ValidateJWTSVIDRequest, ValidateJWTSVIDResponse, X509BundlesRequest, X509BundlesResponse, X509SVIDRequest,
    X509SVIDResponse,
};
use crank_ca::{CaDir, TokenAuthority};
use crank_runtime::CaClient;
use crank_runtime::api::{AgentIssueBody, EntryBody};
use crank_runtime::tls::Credentials;
use crank_runtime::trust::TrustStore;
use crank_runtime::worker::default_sans;
use crank_security_core::{
    CertFiles, CertMetadata, CertificateBundle, CertificateProvider, CorrelationId, IssueRequest, KeyType, WorkerId,
    build_csr, generate_key,
};
use crank_tests::{BenchOpts, KillOnDrop, Platform, PlatformOptions, crank_command, free_addr};
use prost::Message;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_stream::StreamExt;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The metadata every Workload API call carries (the SPIFFE Workload Endpoint spec).
const SECURITY_HEADER: &str = "workload.spiffe.io";
const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
/// Streams being opened at once.
const OPENING: usize = 32;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let peer = args.peek().is_some_and(|a| a == "peer");
    if peer {
        args.next();
    }
    let opts = BenchOpts::parse(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if peer { rt.block_on(serve_peer(&opts)) } else { rt.block_on(run(&opts)) }
}

/// What the run measured, for the summary.
#[derive(Default)]
struct Summary {
    lines: Vec<String>,
}

impl Summary {
    fn add(&mut self, line: String) {
        println!("{line}");
        self.lines.push(line);
    }
}

async fn run(opts: &BenchOpts) -> anyhow::Result<()> {
    let streams = opts.num_or("streams", 1000)?;
    let rotations = opts.num_or("rotations", 8)?;
    let validity = opts.opt("leaf-validity").unwrap_or("10s").to_owned();
    let entries = opts.num_or("entries", 1000)?;
    let samples = opts.num_or("samples", 2000)?;
    let rounds = opts.num_or("latency-rounds", 10)?.max(1);
    let issue_n = opts.num_or("issue-n", 2000)?;
    let issue_pairs = opts.num_or("issue-pairs", 5)?;
    let concurrency = opts.num_or("concurrency", 16)?;
    let started = Instant::now();
    let mut summary = Summary::default();

    println!("== 1. rotation fan-out: {streams} streams, certificates of {validity}, {rotations} rotations");
    rotation_fan_out(&mut summary, streams, rotations, &validity).await?;

    println!("== 2-4. a CA issuing 24 h certificates");
    let p = Platform::start_with(PlatformOptions::default()).await;
    let admin = p.admin("ops");
    let admin_client = admin_client(&p, &admin)?;

    println!("== 2. memory: {entries} entries");
    let worker_ids = memory(&mut summary, &p, &admin_client, entries).await?;

    println!("== 3. first-response latency: {samples} samples each side, {rounds} rounds");
    latency(&mut summary, &p, &admin_client, samples, rounds).await?;

    println!("== 4. CA issuance: {issue_n} per round, {issue_pairs} pairs, {concurrency} in flight");
    issuance(&mut summary, &p, &worker_ids, issue_n, issue_pairs, concurrency).await?;

    println!("\n== summary (total {:.0} s)", started.elapsed().as_secs_f64());
    for line in &summary.lines {
        println!("{line}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Processes

/// A running `crank agent`, its socket and its log.
struct AgentProc {
    process: KillOnDrop,
    socket: PathBuf,
    log: PathBuf,
    started: SystemTime,
}

impl AgentProc {
    fn pid(&self) -> u32 {
        self.process.0.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON lines of its log.
    fn lines(&self) -> Vec<Value> {
        self.log().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Its "workload SVID issued" lines: (serial, when).
    fn issued(&self) -> Vec<(String, SystemTime)> {
        self.lines()
            .iter()
            .filter(|l| l["message"] == "workload SVID issued")
            .filter_map(|l| Some((l["serial"].as_str()?.to_owned(), log_time(l)?)))
            .collect()
    }

    /// Its warnings and errors, counted by message.
    fn complaints(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for l in self.lines() {
            let level = l["level"].as_str().unwrap_or_default();
            if level == "WARN" || level == "ERROR" {
                let what = format!(
                    "{level} {} {}",
                    l["message"].as_str().unwrap_or_default(),
                    l["reason"].as_str().or(l["error"].as_str()).unwrap_or_default()
                );
                *counts.entry(what).or_default() += 1;
            }
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.1));
        v
    }
}

fn log_time(line: &Value) -> Option<SystemTime> {
    let t = OffsetDateTime::parse(line["timestamp"].as_str()?, &Rfc3339).ok()?;
    Some(SystemTime::from(t))
}

/// Starts `crank agent NAME` against `p`'s CA (a join token with `ca.agent`), its
/// socket at `<tmp>/NAME.sock`, and waits until the socket exists.
async fn start_agent(p: &Platform, name: &str) -> anyhow::Result<AgentProc> {
    let certs = p.tmp.path().join(name);
    let socket = p.tmp.path().join(format!("{name}.sock"));
    let log = p.tmp.path().join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    let mut c = crank_command(&["agent", "--socket", &format!("unix://{}", socket.display())]);
    c.env("RUST_LOG", "info")
        .env("CRANK_LOG_FORMAT", "json")
        .env("CA_SERVICE_URL", p.ca_url())
        .env("CERT_DIR", &certs)
        .env("CRANK_AGENT_PORT", free_addr().port().to_string())
        .env("CRANK_LISTEN_HOST", "127.0.0.1")
        .env("CRANK_AGENT_SYNC", "1s")
        .env("CRANK_JOIN_TOKEN", p.token_with(name, &["ca.agent"]))
        .stdout(file.try_clone()?)
        .stderr(file);
    let started = SystemTime::now();
    let mut agent = AgentProc { process: KillOnDrop(c.spawn()?), socket, log, started };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.socket.exists() {
        if let Some(status) = agent.process.0.try_wait()? {
            bail!("crank agent {name} exited with {status}; its log:\n{}", agent.log());
        }
        if Instant::now() > deadline {
            bail!("crank agent {name} did not open its socket; its log:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(agent)
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} for {pid}"))?;
        Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn admin_client(p: &Platform, admin: &Path) -> anyhow::Result<CaClient> {
    let read = |f: &str| std::fs::read(admin.join(f)).with_context(|| format!("reading {f}"));
    let bundle = CertificateBundle::from_pem(&read("admin.crt")?, &read("admin.key")?, &read("ca.crt")?)?;
    let td = CaDir::new(&p.ca_dir).trust_domain()?;
    Ok(CaClient::mtls(
        vec![p.ca_url().parse()?],
        &TrustStore::new(bundle.ca())?,
        Credentials::new(bundle.certified_key()?),
        &td,
    )?)
}

/// Creates one entry per `(worker id, selector)` for `agent`, 16 at a time.
async fn create_entries(client: &CaClient, agent: &str, entries: Vec<(String, String)>) -> anyhow::Result<()> {
    let client = client.clone();
    let agent = agent.to_owned();
    let results = run_limited(entries, 16, move |(worker_id, selector)| {
        let (client, agent) = (client.clone(), agent.clone());
        async move {
            client.create_entry(&EntryBody { worker_id, selectors: vec![selector], agent_id: agent }).await.map(drop)
        }
    })
    .await;
    for r in results {
        r?;
    }
    Ok(())
}

fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Runs `work` on every item, `limit` at a time; the results in completion order.
async fn run_limited<T, R, F, Fut>(items: Vec<T>, limit: usize, work: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let queue = Arc::new(Mutex::new(VecDeque::from(items)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..limit.max(1) {
        let (queue, work) = (queue.clone(), work.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some(item) = next else { break };
                out.push(work(item).await);
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap_or_default());
    }
    all
}

// ---------------------------------------------------------------------------------------
// Workload API client

async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    let endpoint = spiffe::transport::Endpoint::parse(&format!("unix://{}", socket.display()))?;
    Ok(spiffe::transport::connect(&endpoint).await?)
}

/// Opens a `FetchX509SVID` stream on `channel`.
async fn fetch_x509(channel: Channel) -> anyhow::Result<tonic::Streaming<X509SVIDResponse>> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut request = Request::new(X509SVIDRequest {});
    request.metadata_mut().insert(SECURITY_HEADER, tonic::metadata::MetadataValue::from_static("true"));
    let codec = tonic_prost::ProstCodec::<X509SVIDRequest, X509SVIDResponse>::default();
    let response = grpc.server_streaming(request, PathAndQuery::from_static(FETCH_X509_SVID), codec).await?;
    Ok(response.into_inner())
}

/// Connect, call, first message: how long it took, and the message.
async fn first_response(socket: &Path) -> anyhow::Result<(Duration, X509SVIDResponse)> {
    let t0 = Instant::now();
    let channel = connect(socket).await?;
    let mut stream = fetch_x509(channel).await?;
    let message = stream.message().await?.context("the stream ended without a message")?;
    Ok((t0.elapsed(), message))
}

/// Waits until `socket` answers `FetchX509SVID` with an SVID.
async fn wait_for_svid(socket: &Path, within: Duration) -> anyhow::Result<X509SVIDResponse> {
    let deadline = Instant::now() + within;
    loop {
        match first_response(socket).await {
            Ok((_, m)) if !m.svids.is_empty() => return Ok(m),
            Ok(_) => {}
            Err(e) if Instant::now() > deadline => return Err(e.context("no SVID in time")),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("no SVID in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn chain_hash(m: &X509SVIDResponse) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.svids.first().map(|s| s.x509_svid.as_slice()).unwrap_or_default().hash(&mut h);
    h.finish()
}

// ---------------------------------------------------------------------------------------
// 1. Rotation fan-out

/// What one stream saw: when each message came and which chain it carried.
#[derive(Default)]
struct StreamLog {
    seen: Vec<(Instant, u64)>,
    error: Option<String>,
}

async fn rotation_fan_out(s: &mut Summary, streams: usize, rotations: usize, validity: &str) -> anyhow::Result<()> {
    let p = Platform::start_with(PlatformOptions::serve(&["--leaf-validity", validity])).await;
    let admin = p.admin("ops");
    let client = admin_client(&p, &admin)?;
    create_entries(&client, "agent-rot", vec![("bench-rotation".into(), format!("unix:uid:{}", uid()))]).await?;
    let agent = start_agent(&p, "agent-rot").await?;
    wait_for_svid(&agent.socket, Duration::from_secs(30)).await?;
    let (rss_before, _) = memory_of(agent.pid())?;

    // Each stream on its own connection, as `streams` workload processes would have.
    let chains: Arc<Mutex<HashMap<u64, Vec<u8>>>> = Arc::default();
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let opened = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let open_started = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (socket, chains, opening, opened, mut stop) =
            (agent.socket.clone(), chains.clone(), opening.clone(), opened.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut log = StreamLog::default();
            let permit = opening.acquire_owned().await;
            let stream = async {
                let channel = connect(&socket).await?;
                fetch_x509(channel).await
            }
            .await;
            let mut stream = match stream {
                Ok(st) => st,
                Err(e) => {
                    log.error = Some(format!("{e:#}"));
                    opened.fetch_add(1, Ordering::SeqCst);
                    return log;
                }
            };
            let mut permit = Some(permit);
            loop {
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(m)) => {
                            let at = Instant::now();
                            let h = chain_hash(&m);
                            log.seen.push((at, h));
                            if let Some(first) = m.svids.first() {
                                chains.lock().unwrap_or_else(|e| e.into_inner()).entry(h).or_insert_with(|| first.x509_svid.clone());
                            }
                            if permit.take().is_some() {
                                opened.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Ok(None) => { log.error = Some("the stream ended".into()); break }
                        Err(e) => { log.error = Some(format!("{}: {}", e.code(), e.message())); break }
                    },
                    _ = stop.changed() => break,
                }
            }
            if permit.is_some() {
                opened.fetch_add(1, Ordering::SeqCst);
            }
            log
        }));
    }
    while opened.load(Ordering::SeqCst) < streams {
        if open_started.elapsed() > Duration::from_secs(120) {
            bail!("only {} of {streams} streams opened in 120 s", opened.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_open = Instant::now();
    let open_secs = (all_open - open_started).as_secs_f64();
    let (rss_open, _) = memory_of(agent.pid())?;
    println!(
        "{streams} streams open in {open_secs:.2} s; agent RSS {:.1} -> {:.1} MiB",
        mib(rss_before),
        mib(rss_open)
    );

    // Wait for `rotations` issuances after every stream was open, and a little more.
    let issued_before = agent.issued().len();
    let half = humantime::parse_duration(validity).unwrap_or(Duration::from_secs(10)) / 2;
    let deadline = Instant::now() + half * (rotations as u32 + 2) + Duration::from_secs(20);
    while agent.issued().len() < issued_before + rotations {
        if Instant::now() > deadline {
            println!("only {} rotations before the deadline", agent.issued().len() - issued_before);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_end, hwm_end) = memory_of(agent.pid())?;
    let _ = stop_tx.send(true);
    let mut logs = Vec::with_capacity(streams);
    for t in tasks {
        logs.push(t.await?);
    }
    let ref_instant = Instant::now();
    let ref_system = SystemTime::now();
    let at_secs = |t: Instant| -(ref_instant - t).as_secs_f64();
    let sys_secs = |t: SystemTime| match ref_system.duration_since(t) {
        Ok(d) => -d.as_secs_f64(),
        Err(e) => e.duration().as_secs_f64(),
    };

    let errors: Vec<&String> = logs.iter().filter_map(|l| l.error.as_ref()).collect();
    let chains = chains.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let serial_of: HashMap<u64, String> =
        chains.iter().filter_map(|(h, der)| Some((*h, CertMetadata::from_der(der).ok()?.serial))).collect();
    let issued_at: HashMap<String, SystemTime> = agent.issued().into_iter().collect();
    // Each chain first seen after every stream was open: a rotation.
    let mut first_seen: HashMap<u64, Vec<Instant>> = HashMap::new();
    let mut messages = 0usize;
    let mut same_chain_updates = 0usize;
    for l in &logs {
        let mut known = std::collections::HashSet::new();
        for (at, h) in &l.seen {
            messages += 1;
            if known.insert(*h) {
                first_seen.entry(*h).or_default().push(*at);
            } else {
                same_chain_updates += 1;
            }
        }
    }
    let mut rotations_seen: Vec<(Instant, u64, Vec<Instant>)> = first_seen
        .into_iter()
        .filter_map(|(h, mut times)| {
            times.sort();
            let first = *times.first()?;
            (first > all_open).then_some((first, h, times))
        })
        .collect();
    rotations_seen.sort_by_key(|r| r.0);
    let mut spreads = Vec::new();
    let mut from_log_last = Vec::new();
    let mut from_log_first = Vec::new();
    for (i, (first, h, times)) in rotations_seen.iter().enumerate() {
        let last = *times.last().unwrap_or(first);
        let spread = (last - *first).as_secs_f64() * 1000.0;
        let serial = serial_of.get(h).cloned().unwrap_or_default();
        let logged = issued_at.get(&serial).map(|t| sys_secs(*t));
        let (to_first, to_last) = match logged {
            Some(l) => ((at_secs(*first) - l) * 1000.0, (at_secs(last) - l) * 1000.0),
            None => (f64::NAN, f64::NAN),
        };
        println!(
            "rotation {}: serial {serial}: {} of {streams} streams; first to last {spread:.1} ms; log line to first {to_first:.1} ms, to last {to_last:.1} ms",
            i + 1,
            times.len()
        );
        spreads.push(spread);
        if logged.is_some() {
            from_log_first.push(to_first);
            from_log_last.push(to_last);
        }
        if times.len() < streams {
            println!("  {} streams never saw serial {serial}", streams - times.len());
        }
    }
    let complete = rotations_seen.iter().filter(|r| r.2.len() == streams).count();
    s.add(format!(
        "1. rotation fan-out: {streams} streams ({} connections), {} rotations, {complete} reached every stream; first-to-last stream p50 {:.1} ms, max {:.1} ms; agent log line to last stream p50 {:.1} ms, max {:.1} ms (to first stream p50 {:.1} ms); each rotation first-to-last: [{}] ms",
        streams,
        rotations_seen.len(),
        median(&spreads),
        max(&spreads),
        median(&from_log_last),
        max(&from_log_last),
        median(&from_log_first),
        spreads.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", ")
    ));
    s.add(format!(
        "   streams opened in {open_secs:.2} s ({OPENING} at a time); {messages} messages, {same_chain_updates} of them the same SVID again (bundle or CRL changes); stream errors: {}; agent RSS {:.1} MiB before the streams, {:.1} with them open, {:.1} at the end (VmHWM {:.1})",
        errors.len(),
        mib(rss_before),
        mib(rss_open),
        mib(rss_end),
        mib(hwm_end)
    ));
    if let Some(e) = errors.first() {
        s.add(format!("   first stream error: {e}"));
    }
    report_complaints(s, "agent-rot", &agent);
    drop(agent);
    Ok(())
}

fn report_complaints(s: &mut Summary, name: &str, agent: &AgentProc) {
    let complaints = agent.complaints();
    if complaints.is_empty() {
        s.add(format!("   {name} log: no warning or error"));
    }
    for (what, n) in complaints.iter().take(5) {
        s.add(format!("   {name} log: {n} x {what}"));
    }
}

// ---------------------------------------------------------------------------------------
// 2. Memory

async fn memory(s: &mut Summary, p: &Platform, admin: &CaClient, entries: usize) -> anyhow::Result<Vec<String>> {
    let worker_ids: Vec<String> = (0..entries).map(|i| format!("bench-svid-{i:04}")).collect();
    let t0 = Instant::now();
    // Each workload of its own uid, as on a host: none is this process.
    let list = worker_ids.iter().enumerate().map(|(i, w)| (w.clone(), format!("unix:uid:{}", 200_000 + i))).collect();
    create_entries(admin, "agent-rss", list).await?;
    println!("{entries} entries created in {:.1} s", t0.elapsed().as_secs_f64());

    let zero = start_agent(p, "agent-zero").await?;
    let (hello, _) = p.worker("hello-world", &[]).await;
    let hello_pid = hello.0.id();
    let full = start_agent(p, "agent-rss").await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while full.issued().len() < entries {
        if Instant::now() > deadline {
            bail!("agent-rss issued {} of {entries} SVIDs in 180 s; its log:\n{}", full.issued().len(), full.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let issued = full.issued();
    let last = issued.iter().map(|(_, t)| *t).max().unwrap_or(full.started);
    let took = last.duration_since(full.started).unwrap_or_default().as_secs_f64();
    println!("agent-rss: {entries} SVIDs issued {took:.1} s after it started");
    // Let a few entry syncs pass, then sample.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut full_rss, mut zero_rss, mut hello_rss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        full_rss.push(memory_of(full.pid())?);
        zero_rss.push(memory_of(zero.pid())?);
        hello_rss.push(memory_of(hello_pid)?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let med = |v: &[(u64, u64)]| {
        let rss: Vec<f64> = v.iter().map(|x| mib(x.0)).collect();
        let hwm = v.iter().map(|x| mib(x.1)).fold(0.0, f64::max);
        (median(&rss), hwm)
    };
    let (f, fh) = med(&full_rss);
    let (z, zh) = med(&zero_rss);
    let (h, hh) = med(&hello_rss);
    s.add(format!(
        "2. memory: agent holding {entries} SVIDs VmRSS {f:.1} MiB (VmHWM {fh:.1}); same agent with 0 entries {z:.1} MiB (VmHWM {zh:.1}); ratio {:.2}, difference {:.1} MiB ({:.1} KiB per SVID); hello-world {h:.1} MiB (VmHWM {hh:.1}); {entries} SVIDs issued {took:.1} s after the agent started",
        f / z,
        f - z,
        (f - z) * 1024.0 / entries.max(1) as f64
    ));
    report_complaints(s, "agent-rss", &full);
    report_complaints(s, "agent-zero", &zero);
    Ok(worker_ids)
}

// ---------------------------------------------------------------------------------------
// 3. Latency

/// A Workload API server answering `FetchX509SVID` with a fixed response and nothing
/// else: the peer of the latency measurement.
struct FixedAnswer(X509SVIDResponse);

type Answers<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SpiffeWorkloadAPI for FixedAnswer {
    type FetchX509SVIDStream = Answers<X509SVIDResponse>;
    type FetchX509BundlesStream = Answers<X509BundlesResponse>;
    type FetchJWTBundlesStream = Answers<JWTBundlesResponse>;

    async fn fetch_x509_svid(
        &self,
        _: Request<X509SVIDRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let first = tokio_stream::once(Ok(self.0.clone()));
        Ok(Response::new(Box::pin(first.chain(tokio_stream::pending()))))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("peer"))
    }

    async fn fetch_jwt_svid(&self, _: Request<JWTSVIDRequest>) -> Result<Response<JWTSVIDResponse>, Status> {
        Err(Status::unimplemented("peer"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JWTBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("peer"))
    }

    async fn validate_jwt_svid(
        &self,
        _: Request<ValidateJWTSVIDRequest>,
    ) -> Result<Response<ValidateJWTSVIDResponse>, Status> {
        Err(Status::unimplemented("peer"))
    }
}

/// `agent-bench peer --socket PATH --response FILE`: serves [`FixedAnswer`] with the
/// encoded `X509SVIDResponse` in FILE until killed.
async fn serve_peer(opts: &BenchOpts) -> anyhow::Result<()> {
    let response = X509SVIDResponse::decode(std::fs::read(opts.get("response")?)?.as_slice())?;
    let listener = tokio::net::UnixListener::bind(opts.get("socket")?)?;
    tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadAPIServer::new(FixedAnswer(response)))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await?;
    Ok(())
}

async fn latency(s: &mut Summary, p: &Platform, admin: &CaClient, samples: usize, rounds: usize) -> anyhow::Result<()> {
    create_entries(admin, "agent-lat", vec![("bench-latency".into(), format!("unix:uid:{}", uid()))]).await?;
    let agent = start_agent(p, "agent-lat").await?;
    let answer = wait_for_svid(&agent.socket, Duration::from_secs(30)).await?;
    let answer_file = p.tmp.path().join("peer-response.bin");
    std::fs::write(&answer_file, answer.encode_to_vec())?;
    let peer_socket = p.tmp.path().join("peer.sock");
    let exe = std::env::current_exe()?;
    let peer = KillOnDrop(
        std::process::Command::new(exe)
            .args(["peer", "--socket", peer_socket.to_str().context("socket path")?])
            .args(["--response", answer_file.to_str().context("response path")?])
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !peer_socket.exists() {
        anyhow::ensure!(Instant::now() < deadline, "the peer did not open its socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both answer the same bytes.
    let (_, from_peer) = first_response(&peer_socket).await?;
    anyhow::ensure!(from_peer == answer, "the peer's answer differs from the agent's");
    let size = answer.encoded_len();

    let per_round = samples.div_ceil(rounds);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut round_medians = Vec::new();
    // Warm-up, not counted.
    for socket in [&agent.socket, &peer_socket] {
        for _ in 0..20 {
            first_response(socket).await?;
        }
    }
    for _ in 0..rounds {
        let mut a = Vec::with_capacity(per_round);
        for _ in 0..per_round {
            a.push(first_response(&agent.socket).await?.0.as_secs_f64() * 1000.0);
        }
        let mut b = Vec::with_capacity(per_round);
        for _ in 0..per_round {
            b.push(first_response(&peer_socket).await?.0.as_secs_f64() * 1000.0);
        }
        round_medians.push((median(&a), median(&b)));
        ours.extend(a);
        theirs.extend(b);
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    let ratios: Vec<f64> = round_medians.iter().map(|(a, b)| a / b).collect();
    s.add(format!(
        "3. FetchX509SVID first response (connect, call, first message; {size} bytes; {} samples each): agent p50 {:.3} ms, p90 {:.3}, p99 {:.3}; bare tonic peer p50 {:.3} ms, p90 {:.3}, p99 {:.3}; ratio of p50s {:.2} (median of the rounds' ratios {:.2}; rounds [{}])",
        ours.len(),
        pct(&ours, 0.5),
        pct(&ours, 0.9),
        pct(&ours, 0.99),
        pct(&theirs, 0.5),
        pct(&theirs, 0.9),
        pct(&theirs, 0.99),
        pct(&ours, 0.5) / pct(&theirs, 0.5),
        median(&ratios),
        round_medians.iter().map(|(a, b)| format!("{a:.3}/{b:.3}")).collect::<Vec<_>>().join(", ")
    ));
    report_complaints(s, "agent-lat", &agent);
    drop(peer);
    drop(agent);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 4. Issuance

/// One prepared request: the worker id, its CSR, and for the join-token path a token.
type Prepared = (String, String, Option<String>);

async fn issuance(
    s: &mut Summary,
    p: &Platform,
    worker_ids: &[String],
    n: usize,
    pairs: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(!worker_ids.is_empty(), "issuance needs the entries of step 2");
    let url: url::Url = p.ca_url().parse()?;
    // The agents' mTLS identities, as `crank agent` got them in steps 2 and 3: agent-rss
    // (the entries of step 2) and agent-lat (one entry).
    let identity = |name: &str| CertificateBundle::load(&CertFiles::in_dir(p.tmp.path().join(name)));
    let agent_client = crank_tests::ca_client(vec![url.clone()], &identity("agent-rss")?);
    let small_client = crank_tests::ca_client(vec![url.clone()], &identity("agent-lat")?);
    // A worker's first contact: the CA pinned by the token's fingerprint, no client cert.
    let dir = CaDir::new(&p.ca_dir);
    let td = dir.trust_domain()?;
    let fingerprint = dir.pinned_fingerprint()?;
    let token_client = CaClient::pinned(vec![url], &fingerprint, &td)?;
    let authority = TokenAuthority::new(&CaDir::read_key(&dir.token_key())?, td, fingerprint)?;
    let token_ids: Vec<String> = (0..worker_ids.len()).map(|i| format!("bench-token-{i:04}")).collect();
    let small_ids = vec!["bench-latency".to_owned()];

    let prepare = |ids: &[String], count: usize, tokens: bool| -> anyhow::Result<Vec<Prepared>> {
        let mut v = Vec::with_capacity(count);
        for i in 0..count {
            let worker = WorkerId::new(ids[i % ids.len()].clone())?;
            let key = generate_key(KeyType::EcdsaP256)?;
            let csr = build_csr(&key, &worker, &default_sans(&worker))?;
            let token = if tokens { Some(authority.create(&worker, Duration::from_secs(3600), vec![])?) } else { None };
            v.push((worker.to_string(), csr, token));
        }
        Ok(v)
    };
    // The sides of a round, in order: (name, client, worker ids, with join tokens).
    let sides: [(&str, &CaClient, &[String], bool); 3] = [
        ("agent", &agent_client, worker_ids, false),
        ("join token", &token_client, &token_ids, true),
        ("agent with 1 entry", &small_client, &small_ids, false),
    ];
    // One each before the clock, so that every client holds a connection.
    for (_, client, ids, tokens) in &sides {
        let batch = prepare(ids, 1, *tokens)?;
        issue_all(client, batch, 1).await.into_iter().collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
    }

    let mut rounds: Vec<[f64; 3]> = Vec::new();
    for pair in 0..pairs {
        let mut rates = [0.0f64; 3];
        for (i, (name, client, ids, tokens)) in sides.iter().enumerate() {
            let items = prepare(ids, n, *tokens)?;
            let t0 = Instant::now();
            let results = issue_all(client, items, concurrency).await;
            let secs = t0.elapsed().as_secs_f64();
            let ok = results.iter().filter(|r| r.is_ok()).count();
            let first_error = results.iter().find_map(|r| r.as_ref().err().cloned());
            rates[i] = ok as f64 / secs;
            println!(
                "round {}: {name}: {ok} of {n} in {secs:.2} s = {:.0}/s{}",
                pair + 1,
                rates[i],
                first_error.map(|e| format!("; first error: {e}")).unwrap_or_default()
            );
        }
        rounds.push(rates);
    }
    let ratios: Vec<f64> = rounds.iter().map(|r| r[0] / r[1]).collect();
    let small: Vec<f64> = rounds.iter().map(|r| r[2] / r[1]).collect();
    let col = |i: usize| median(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>());
    s.add(format!(
        "4. CA issuance, {n} per round, {concurrency} in flight: agent with {} entries (POST /v1/agent/certificates, mTLS) vs join token (POST /v1/certificates): median ratio {:.2}; rounds (agent/s, token/s, ratio): [{}]; medians {:.0}/s vs {:.0}/s",
        worker_ids.len(),
        median(&ratios),
        rounds
            .iter()
            .zip(&ratios)
            .map(|(r, q)| format!("{:.0} {:.0} {q:.2}", r[0], r[1]))
            .collect::<Vec<_>>()
            .join("; "),
        col(0),
        col(1),
    ));
    s.add(format!(
        "   the same rounds, an agent with 1 entry (agent-lat) vs join token: median ratio {:.2}; rounds [{}]; median {:.0}/s",
        median(&small),
        rounds
            .iter()
            .zip(&small)
            .map(|(r, q)| format!("{:.0} {q:.2}", r[2]))
            .collect::<Vec<_>>()
            .join("; "),
        col(2),
    ));
    Ok(())
}

/// Issues every prepared request through `client`, `concurrency` at a time: as an agent
/// when the request has no token, with its join token otherwise.
async fn issue_all(client: &CaClient, items: Vec<Prepared>, concurrency: usize) -> Vec<Result<(), String>> {
    let client = client.clone();
    run_limited(items, concurrency, move |(worker_id, csr, token)| {
        let client = client.clone();
        async move {
            let cid = CorrelationId::new();
            let issued = match token {
                None => client.agent_issue(&AgentIssueBody { worker_id, csr }, &cid).await,
                Some(token) => client.issue(IssueRequest { csr_pem: csr, token, correlation_id: cid }).await,
            };
            match issued {
                Ok(c) if c.certificate_chain.contains("BEGIN CERTIFICATE") => Ok(()),
                Ok(_) => Err("no certificate in the answer".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Statistics

/// The `q` quantile of sorted values (nearest rank).
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    pct(&v, 0.5)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}
