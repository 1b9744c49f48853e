//! CA state backends side by side: issuance throughput with the PostgreSQL store vs the
//! embedded SQLite store (alternating runs, medians), and CRL generation time with
//! 100,000 revoked certificates on each.
//!
//! ```sh
//! cargo build --release -p crank-tests --bin store-bench
//! target/release/store-bench [--runs 3] [--seconds 5] [--revoked 100000]
//! ```
//!
//! Starts its own PostgreSQL server on 127.0.0.1 (see `crank_tests::PgServer`). One
//! issuance = CSR check, ES256 token check against the used-token table, policy,
//! ECDSA P-256 signing and the durable ledger commit; 64 issuances in flight at a time,
//! in process (no HTTP), tokens and CSRs made before the clock starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_ca::LocalCa;
use crank_ca::store::{CaStore, CertificateRecord, Revocation, RevocationReason, RevokeTarget};
use crank_ca::{CaDir, InitOptions, init_ca};
use crank_security_core::{
    CertificateProvider, CorrelationId, EventSinks, IssueRequest, KeyType, TrustDomain, WorkerId, build_csr,
    generate_key,
};
use crank_tests::PgServer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const CONCURRENCY: usize = 64;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn ca_on(store_url: Option<&str>) -> (tempfile::TempDir, Arc<LocalCa>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CaDir::new(tmp.path().join("ca"));
    init_ca(&dir, &InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false }).unwrap();
    let mut builder = LocalCa::builder(dir.clone()).events(Arc::new(EventSinks::empty()));
    if let Some(url) = store_url {
        builder = builder.store_url(url);
    }
    (tmp, builder.build().await.unwrap())
}

/// Issuances per second over `seconds`, `CONCURRENCY` in flight.
async fn issuance_rate(ca: &Arc<LocalCa>, csr: &str, seconds: u64) -> f64 {
    let w = WorkerId::new("bench-worker").unwrap();
    // Enough tokens for a fast run; made before the clock starts.
    let n = 40_000;
    let mut reqs: Vec<IssueRequest> = (0..n)
        .map(|_| IssueRequest {
            csr_pem: csr.to_owned(),
            token: ca.tokens().create(&w, Duration::from_secs(3600), vec![]).unwrap(),
            correlation_id: CorrelationId::new(),
        })
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(std::mem::take(&mut reqs)));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (ca, queue) = (ca.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let Some(req) = queue.lock().unwrap().pop() else { break };
                ca.issue(req).await.expect("issuance");
                done += 1;
            }
            done
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Records `n` live certificates of one worker and revokes them all, then times CRL
/// generation (query + sign) a few times; returns the median and the entry count.
async fn crl_time(ca: &Arc<LocalCa>, n: usize) -> (Duration, usize) {
    let store = ca.store().clone();
    let now = OffsetDateTime::now_utc();
    let not_after = (now + time::Duration::days(1)).format(&Rfc3339).unwrap();
    let mut pending = Vec::new();
    for i in 0..n {
        let store: Arc<dyn CaStore> = store.clone();
        let serial = hex_serial(i);
        let rec = CertificateRecord {
            serial: serial.clone(),
            worker_id: "revoked-worker".into(),
            spiffe_id: "spiffe://crank.local/worker/revoked-worker".into(),
            sans: vec![],
            capabilities: vec![],
            not_before: now.format(&Rfc3339).unwrap(),
            not_after: not_after.clone(),
            fingerprint: serial,
            issued_by: "bench".into(),
            kind: crank_ca::store::CertKind::Issue,
            correlation_id: "bench".into(),
            issued_at: now.format(&Rfc3339).unwrap(),
            status: crank_ca::store::CertStatus::Valid,
            pem: String::new(),
        };
        pending.push(tokio::spawn(async move { store.record_issuance(None, rec).await }));
        if pending.len() >= 256 {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    let revocation = Revocation {
        target: RevokeTarget::Worker("revoked-worker".into()),
        reason: RevocationReason::KeyCompromise,
        revoked_by: "bench".into(),
        at: OffsetDateTime::now_utc(),
    };
    store.revoke(&revocation).await.unwrap();
    let mut times = Vec::new();
    let mut entries = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let crl = ca.regenerate_crl_now().await.unwrap();
        times.push(start.elapsed());
        entries = crl.entries;
    }
    times.sort();
    (times[times.len() / 2], entries)
}

fn hex_serial(i: usize) -> String {
    let mut bytes = [0u8; 16];
    bytes[0] = 0x42;
    bytes[8..].copy_from_slice(&(i as u64).to_be_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs = arg("--runs", 3);
    let seconds = arg("--seconds", 5);
    let revoked = arg("--revoked", 100_000) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let pg = PgServer::start();
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let csr = build_csr(&key, &WorkerId::new("bench-worker").unwrap(), &["bench-worker".to_owned()]).unwrap();
    rt.block_on(async {
        let (mut sqlite, mut postgres) = (Vec::new(), Vec::new());
        for run in 0..runs {
            // Alternate which backend goes first.
            let order: [bool; 2] = if run % 2 == 0 { [false, true] } else { [true, false] };
            for use_pg in order {
                let url = use_pg.then(|| pg.create_db(&format!("bench_{run}")));
                let (_tmp, ca) = ca_on(url.as_deref()).await;
                let rate = issuance_rate(&ca, &csr, seconds).await;
                println!("run {run}: {:<8} {rate:>8.0} issuances/s", if use_pg { "postgres" } else { "sqlite" });
                if use_pg { postgres.push(rate) } else { sqlite.push(rate) }
            }
        }
        let (s, p) = (median(sqlite), median(postgres));
        println!();
        println!(
            "| store | issuances/s (median of {runs}, {CONCURRENCY} in flight, {seconds} s each) | vs. embedded |"
        );
        println!("|---|---|---|");
        println!("| embedded SQLite (WAL, synchronous=FULL, group commit) | {s:.0} | 1.00 |");
        println!("| PostgreSQL 15 (pool of 16, synchronous_commit=on) | {p:.0} | {:.2} |", p / s);
        println!();
        println!("| store | CRL generation (query + sign), median of 5 | entries |");
        println!("|---|---|---|");
        let (_tmp, ca) = ca_on(None).await;
        let (t, n) = crl_time(&ca, revoked).await;
        println!("| embedded SQLite | {:.0} ms | {n} |", t.as_secs_f64() * 1000.0);
        let url = pg.create_db("bench_crl");
        let (_tmp, ca) = ca_on(Some(&url)).await;
        let (t, n) = crl_time(&ca, revoked).await;
        println!("| PostgreSQL | {:.0} ms | {n} |", t.as_secs_f64() * 1000.0);
    });
}
