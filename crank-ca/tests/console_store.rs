//! The console's reads on both stores: the same ledger, written through [`CaStore`] to
//! SQLite and to PostgreSQL (a server of the test's own on 127.0.0.1), gives the same
//! pages, counts, histories and replicas, and the pages are the model's (the rows that
//! match, newest first), each row exactly once.
//!
//! PostgreSQL: the newest `/usr/lib/postgresql/<version>/bin` (or `CRANK_PG_BINDIR`), as
//! in the end-to-end tests (`crank_tests::PgServer`, which this crate cannot depend on:
//! the end-to-end crate depends on this one). Without PostgreSQL the test says so and
//! passes, except under `CI=true`, where it fails.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crank_ca::store::{
    CaStore, CertKind, CertStatus, CertificateCounts, CertificateQuery, CertificateRecord, MAX_PAGE, PostgresStore,
    Renewal, Revocation, RevocationReason, RevokeTarget, SqliteStore, StatusFilter,
};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

fn at(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

fn parse(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

fn serial(i: u64) -> String {
    let bytes = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5).to_be_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A record at microsecond precision in UTC (what PostgreSQL keeps, so that both stores
/// hand back the same text).
fn record(serial: String, worker: &str, issued: OffsetDateTime, not_after: OffsetDateTime) -> CertificateRecord {
    let micros = |t: OffsetDateTime| t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).unwrap();
    CertificateRecord {
        serial: serial.clone(),
        worker_id: worker.into(),
        spiffe_id: format!("spiffe://crank.local/worker/{worker}"),
        sans: vec![format!("spiffe://crank.local/worker/{worker}")],
        capabilities: vec!["san:svc.example.internal".into()],
        not_before: at(micros(issued)),
        not_after: at(not_after.replace_nanosecond(0).unwrap()),
        fingerprint: format!("fp-{serial}"),
        issued_by: "replica-a".into(),
        kind: CertKind::Issue,
        correlation_id: format!("req_{serial}"),
        issued_at: at(micros(issued)),
        status: CertStatus::Valid,
        pem: format!("-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n"),
    }
}

const BULK: u64 = 2_300;

/// The same history for every store: issuances (2,300 of them for 250 "bulk-" workers,
/// enough that the stores' plans take several rounds), renewals, revocations of serials
/// and of a worker, expired and expiring certificates, equal issue times, heartbeats.
/// Returns every serial.
async fn write_ledger(s: &Arc<dyn CaStore>, now: OffsetDateTime) -> Vec<String> {
    let mut serials = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..BULK {
        let s = s.clone();
        let issued = now - Duration::seconds(i64::try_from(i).unwrap() * 61) + Duration::microseconds(137);
        let r = record(serial(i), &format!("bulk-{:03}", i % 250), issued, issued + Duration::days(3));
        serials.push(r.serial.clone());
        tasks.spawn(async move { s.record_issuance(None, r).await });
        if tasks.len() >= 16 {
            tasks.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let workers = ["alpha-1", "alpha-2", "alpha-10", "al", "beta", "ünï-1", "z\u{10FFFF}", "\u{10FFFF}x"];
    for i in 0..240u64 {
        let worker = workers[usize::try_from(i).unwrap() % workers.len()];
        // Three rows per instant; sub-second parts of several widths.
        let secs = i64::try_from(i / 3).unwrap() * 32_000 - 30 * 86_400;
        let micros = [0, 500_000, 50_000, 123_456, 1][usize::try_from(i % 5).unwrap()];
        let issued = now + Duration::seconds(secs) + Duration::microseconds(micros);
        let life = [Duration::hours(1), Duration::hours(20), Duration::days(30), Duration::days(400)]
            [usize::try_from(i / 3 % 4).unwrap()];
        let mut r = record(serial(100_000 + i), worker, issued, issued + life);
        if i % 11 == 0 {
            r.kind = CertKind::Admin;
        }
        serials.push(r.serial.clone());
        s.record_issuance(None, r).await.unwrap();
    }
    for i in (100_007..100_240u64).step_by(7) {
        let prev = s.certificate(&serial(i - 1)).await.unwrap().unwrap();
        if prev.status != CertStatus::Valid {
            continue;
        }
        let issued = parse(&prev.issued_at) + Duration::seconds(1);
        let mut r = record(serial(200_000 + i), &prev.worker_id, issued, issued + Duration::hours(20));
        r.kind = CertKind::Renew;
        serials.push(r.serial.clone());
        s.record_renewal(Renewal { previous_serial: prev.serial, request_sha256: format!("h{i}") }, r).await.unwrap();
    }
    let revoke = |target, reason| Revocation { target, reason, revoked_by: "admin/alice".into(), at: now };
    for i in [5u64, 100_050, 100_051, 100_200, 300_014] {
        s.revoke(&revoke(RevokeTarget::Serial(serial(i)), RevocationReason::KeyCompromise)).await.unwrap();
    }
    s.revoke(&revoke(RevokeTarget::Worker("beta".into()), RevocationReason::CessationOfOperation)).await.unwrap();
    s.revoke(&revoke(RevokeTarget::Worker("bulk-007".into()), RevocationReason::Superseded)).await.unwrap();
    let t = |secs| OffsetDateTime::from_unix_timestamp(secs).unwrap();
    s.replica_heartbeat("replica-b", "10.0.0.2:8443", t(1_000)).await.unwrap();
    s.replica_heartbeat("replica-a", "10.0.0.1:8443", t(1_005)).await.unwrap();
    s.replica_heartbeat("replica-b", "10.0.0.3:8443", t(1_010)).await.unwrap();
    s.replica_heartbeat("replica-b", "10.0.0.9:8443", t(990)).await.unwrap();
    serials
}

/// What a query should answer: the rows it matches, newest first.
fn expected(all: &[CertificateRecord], q: &CertificateQuery) -> Vec<CertificateRecord> {
    let until = q.now.saturating_add(q.expiring_within);
    let mut out: Vec<CertificateRecord> = all
        .iter()
        .filter(|r| {
            let na = parse(&r.not_after);
            let status = match q.status {
                StatusFilter::All => true,
                StatusFilter::Valid => r.status == CertStatus::Valid && na >= q.now,
                StatusFilter::Expiring => r.status == CertStatus::Valid && na >= q.now && na <= until,
                StatusFilter::Revoked => r.status == CertStatus::Revoked,
                StatusFilter::Expired => r.status != CertStatus::Revoked && na < q.now,
            };
            let search = match q.search.as_deref() {
                None | Some("") => true,
                Some(p) => r.worker_id.starts_with(p) || r.serial.starts_with(p),
            };
            status && search
        })
        .cloned()
        .collect();
    out.sort_by(|a, b| (parse(&b.issued_at), &b.serial).cmp(&(parse(&a.issued_at), &a.serial)));
    out
}

/// Every page of `q` of `page` rows, following the cursor.
async fn pages(s: &Arc<dyn CaStore>, mut q: CertificateQuery, page: u32) -> Vec<CertificateRecord> {
    q.limit = page;
    let mut out = Vec::new();
    loop {
        let rows = s.list_certificates(&q).await.unwrap();
        assert!(rows.len() <= page as usize);
        let Some(last) = rows.last() else { break };
        q.after = Some((last.issued_at.clone(), last.serial.clone()));
        let full = rows.len() == page as usize;
        out.extend(rows);
        if !full {
            break;
        }
    }
    out
}

const FILTERS: [StatusFilter; 5] =
    [StatusFilter::All, StatusFilter::Valid, StatusFilter::Expiring, StatusFilter::Revoked, StatusFilter::Expired];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_and_postgres_answer_the_console_alike() {
    let Some(pg) = PgServer::start_or_skip("sqlite_and_postgres_answer_the_console_alike") else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn CaStore> = Arc::new(SqliteStore::open(&dir.path().join("ca.db")).unwrap());
    let postgres: Arc<dyn CaStore> = Arc::new(PostgresStore::connect(&pg.create_db("console")).await.unwrap());
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let serials = write_ledger(&sqlite, now).await;
    assert_eq!(write_ledger(&postgres, now).await, serials);

    // The same rows, field for field.
    let mut all = Vec::new();
    for serial in &serials {
        let row = sqlite.certificate(serial).await.unwrap().unwrap();
        assert_eq!(postgres.certificate(serial).await.unwrap().as_ref(), Some(&row));
        all.push(row);
    }
    let statuses: HashSet<CertStatus> = all.iter().map(|r| r.status).collect();
    assert_eq!(statuses.len(), 3, "valid, superseded and revoked rows");

    // Pages: the model's, each row once, alike on both stores.
    let mut searches: Vec<Option<String>> =
        [None, Some(""), Some("a"), Some("al"), Some("alpha-1"), Some("bulk-00"), Some("bulk"), Some("ü"), Some("z")]
            .into_iter()
            .map(|s| s.map(str::to_owned))
            .collect();
    searches.extend([Some("\u{10FFFF}".into()), Some("nobody".into()), Some(serials[3][..2].to_owned())]);
    searches.extend([Some(serials[2_400][..5].to_owned()), Some(serials[2_350].clone())]);
    let mut visited = 0;
    for status in FILTERS {
        for search in &searches {
            let q = CertificateQuery {
                search: search.clone(),
                status,
                after: None,
                limit: 0,
                now,
                expiring_within: Duration::hours(24),
            };
            let want = expected(&all, &q);
            // Small pages through the large results too, but not every one of them.
            let sizes: &[u32] = if want.len() > 600 { &[MAX_PAGE, 97] } else { &[MAX_PAGE, 7] };
            for &page in sizes {
                let from_sqlite = pages(&sqlite, q.clone(), page).await;
                let from_postgres = pages(&postgres, q.clone(), page).await;
                let what = format!("{status:?}, search {search:?}, pages of {page}");
                let unique: HashSet<&str> = from_postgres.iter().map(|r| r.serial.as_str()).collect();
                assert_eq!(unique.len(), from_postgres.len(), "{what}: a row twice");
                assert_eq!(from_sqlite, want, "{what}: SQLite");
                assert_eq!(from_postgres, want, "{what}: PostgreSQL");
                visited += want.len();
            }
        }
    }
    assert!(visited > 20_000, "{visited}");

    // At most 500 rows a page, whatever is asked.
    for s in [&sqlite, &postgres] {
        let q = CertificateQuery {
            search: None,
            status: StatusFilter::All,
            after: None,
            limit: u32::MAX,
            now,
            expiring_within: Duration::hours(24),
        };
        assert_eq!(s.list_certificates(&q).await.unwrap().len(), MAX_PAGE as usize);
        let q = CertificateQuery { search: Some("bulk".into()), status: StatusFilter::Valid, ..q };
        assert_eq!(s.list_certificates(&q).await.unwrap().len(), MAX_PAGE as usize);
    }

    // Counts: the filters', alike.
    for within in [Duration::ZERO, Duration::hours(1), Duration::hours(24), Duration::days(90)] {
        let n = |status| {
            let q = CertificateQuery { search: None, status, after: None, limit: 0, now, expiring_within: within };
            expected(&all, &q).len() as u64
        };
        let want = CertificateCounts {
            total: all.len() as u64,
            valid: n(StatusFilter::Valid),
            expiring: n(StatusFilter::Expiring),
            revoked: n(StatusFilter::Revoked),
            expired: n(StatusFilter::Expired),
        };
        assert_eq!(sqlite.certificate_counts(now, within).await.unwrap(), want, "SQLite, within {within}");
        assert_eq!(postgres.certificate_counts(now, within).await.unwrap(), want, "PostgreSQL, within {within}");
    }

    // Histories, alike: renewals both ways, revocations.
    let mut renewed = 0;
    for serial in serials.iter().skip(2_200) {
        let a = sqlite.certificate_history(serial).await.unwrap().unwrap();
        let b = postgres.certificate_history(serial).await.unwrap().unwrap();
        assert_eq!(
            (&a.record, &a.renewed_from, &a.superseded_by, &a.revocation),
            (&b.record, &b.renewed_from, &b.superseded_by, &b.revocation),
            "{serial}"
        );
        if let Some(next) = &a.superseded_by {
            renewed += 1;
            let n = sqlite.certificate_history(next).await.unwrap().unwrap();
            assert_eq!(n.renewed_from.as_deref(), Some(serial.as_str()));
        }
        assert_eq!(a.revocation.is_some(), a.record.status == CertStatus::Revoked, "{serial}");
    }
    assert!(renewed > 10, "{renewed}");
    assert!(sqlite.certificate_history("00:no").await.unwrap().is_none());
    assert!(postgres.certificate_history("00:no").await.unwrap().is_none());

    // Replicas, alike: the late heartbeat moved neither the last one nor the address.
    let replicas = sqlite.replicas().await.unwrap();
    assert_eq!(postgres.replicas().await.unwrap(), replicas);
    let b = &replicas[1];
    assert_eq!(
        (b.name.as_str(), b.address.as_str(), b.first_seen, b.last_seen),
        ("replica-b", "10.0.0.3:8443", 990, 1_010)
    );
}

/// A PostgreSQL server of the test's own on 127.0.0.1 and a free port, in a temporary
/// data directory; stopped (immediate mode) and deleted when dropped. Run as root, the
/// server runs as the `postgres` user. (The end-to-end tests' `crank_tests::PgServer`,
/// cut down.)
#[derive(Debug)]
struct PgServer {
    data: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
}

impl PgServer {
    /// initdb + start; `None` (said on the terminal) when PostgreSQL is not installed,
    /// except under `CI=true`.
    fn start_or_skip(test: &str) -> Option<Self> {
        let Some(bindir) = pg_bindir() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (`apt-get install postgresql`) or set CRANK_PG_BINDIR"
            );
            eprintln!("skipping {test}: PostgreSQL is not installed (set CRANK_PG_BINDIR or install postgresql)");
            return None;
        };
        let data = tempfile::Builder::new().prefix("crank-pg-").tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let as_root = running_as_root();
        if as_root {
            let st = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(data.path()).status();
            assert!(st.is_ok_and(|s| s.success()), "chown of the PostgreSQL data dir to postgres failed");
        }
        let pgdata = data.path().join("data");
        let out = pg_command(&bindir, "initdb", as_root)
            .arg("-D")
            .arg(&pgdata)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("running initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c fsync=off",
            data.path().display()
        );
        let log = data.path().join("server.log");
        let out = pg_command(&bindir, "pg_ctl", as_root)
            .arg("-D")
            .arg(&pgdata)
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
        Some(Self { data, bindir, port })
    }

    /// Creates database `name` and returns its URL.
    fn create_db(&self, name: &str) -> String {
        let out = std::process::Command::new(self.bindir.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .output()
            .expect("running createdb");
        assert!(out.status.success(), "createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = pg_command(&self.bindir, "pg_ctl", running_as_root())
            .arg("-D")
            .arg(self.data.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
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

/// `CRANK_PG_BINDIR`, else the newest `/usr/lib/postgresql/<version>/bin`.
fn pg_bindir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("CRANK_PG_BINDIR") {
        return Some(PathBuf::from(dir));
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
    found.pop().map(|(_, p)| p)
}

/// Timings on 1,000,000 rows in PostgreSQL. Ignored by default (filling takes a minute or
/// two); run it optimised:
///
/// `cargo test -p crank-ca --release --test console_store postgres_million -- --ignored --nocapture`
///
/// The rows are those of [`sqlite_million`],
/// written by one `INSERT ... SELECT`: a year of 2,000 workers renewing 24-hour
/// certificates (the latest of each valid, the rest superseded, 1% revoked), 20,000
/// certificates of a retired service ("legacy-...", all from the first month), and 1,000
/// administrators' certificates valid for a year. Then `VACUUM ANALYZE`, as autovacuum
/// would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fills a 1,000,000-row PostgreSQL ledger; run it with --ignored --release"]
async fn postgres_million() {
    use std::time::Instant;

    let Some(pg) = PgServer::start_or_skip("postgres_million") else { return };
    let url = pg.create_db("million");
    let store = PostgresStore::connect(&url).await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let now = OffsetDateTime::now_utc();
    let fill = Instant::now();
    client
        .execute(
            "INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after,
                 fingerprint, issued_by, kind, correlation_id, issued_at, status, pem, superseded_by)
             SELECT serial, worker, 'spiffe://crank.local/worker/' || worker, jsonb_build_array(worker), '[]',
                    issued, date_trunc('second', issued + life), md5(i::text), 'replica-a', kind, 'req_' || i, issued,
                    CASE WHEN random() < 0.01 THEN 'revoked' WHEN next IS NOT NULL THEN 'superseded' ELSE 'valid' END,
                    repeat('MIIBkTCCATegAwIBAgIQQUJDREVGR0hJSktMTU5PUDAKBggqhkjOPQQDAjAUMRIwEAYDVQQDEwljcmFuay1jYTAeFw0y', 9),
                    next
             FROM (SELECT *, lead(serial) OVER (PARTITION BY worker ORDER BY i) AS next
                   FROM (SELECT i,
                                regexp_replace(md5(i::text || 'serial'), '(..)(?!$)', '\\1:', 'g') AS serial,
                                issued,
                                CASE WHEN i % 1000 = 500 THEN 'admin-' || lpad((i / 1000)::text, 4, '0')
                                     WHEN i % 4 = 1 AND issued < $1::timestamptz - interval '335 days'
                                         THEN 'legacy-' || lpad((i % 997)::text, 3, '0')
                                     ELSE 'svc-' || lpad((i % 2000 / 10 % 200)::text, 3, '0') || '-'
                                          || lpad((i % 10)::text, 2, '0') END AS worker,
                                CASE WHEN i % 1000 = 500 THEN interval '365 days' ELSE interval '24 hours' END AS life,
                                CASE WHEN i % 1000 = 500 THEN 'admin' ELSE 'renew' END AS kind
                         FROM (SELECT i, $1::timestamptz - interval '365 days'
                                         + (i * interval '31.536 seconds') + random() * interval '1 second' AS issued
                               FROM generate_series(0, 999999) AS i) AS t) AS w) AS r",
            &[&now],
        )
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE certificates").await.unwrap();
    println!("filled 1,000,000 rows in {:.1} s", fill.elapsed().as_secs_f64());
    let serials: Vec<String> = client
        .query("SELECT serial FROM certificates ORDER BY issued_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let store: Arc<dyn CaStore> = Arc::new(store);
    time_console_queries(&store, &serials, now).await;
}

/// Timings on 1,000,000 rows. Ignored by default (filling the ledger takes a minute);
/// run it optimised:
///
/// `cargo test -p crank-ca --release --test console_store sqlite_million -- --ignored --nocapture`
///
/// A year of a fleet of 2,000 workers renewing 24-hour certificates every ~17.5 hours
/// (the latest of each valid, the rest superseded; 1% revoked; a tenth of the workers
/// gone, their last certificate expired), 20,000 certificates of a retired service
/// ("legacy-...", all from the first month), and 1,000 administrators' certificates
/// valid for a year.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "fills a 1,000,000-row ledger (about a minute, 1.5 GB); run it with --ignored --release"]
async fn sqlite_million() {
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.db");
    let s = SqliteStore::open(&path).unwrap();
    let now = OffsetDateTime::now_utc();
    let start = now - Duration::days(365);
    let fill = Instant::now();
    let serials = fill_million(&path, start, now);
    println!("filled 1,000,000 rows in {:.1} s", fill.elapsed().as_secs_f64());
    let s: Arc<dyn CaStore> = Arc::new(s);
    time_console_queries(&s, &serials, now).await;
}

/// Writes the rows of [`sqlite_million`] in one transaction, straight into the tables
/// of a store `SqliteStore::open` made.
fn fill_million(path: &Path, start: OffsetDateTime, now: OffsetDateTime) -> Vec<String> {
    use rand::{Rng, SeedableRng};

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "synchronous", "OFF").unwrap();
    c.pragma_update(None, "cache_size", -1_000_000).unwrap();
    let tx = c.transaction().unwrap();
    let pem: String = format!(
        "-----BEGIN CERTIFICATE-----\n{}-----END CERTIFICATE-----\n",
        "MIIBkTCCATegAwIBAgIQQUJDREVGR0hJSktMTU5PUDAKBggqhkjOPQQDAjAUMRIwEAYDVQQDEwljcmFuay1jYTAeFw0y\n".repeat(9)
    );
    let mut insert = tx
        .prepare(
            "INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after,
                 fingerprint, issued_by, kind, correlation_id, issued_at, status, pem, superseded_by, issued_ns,
                 not_after_ns)
             VALUES (?1, ?2, ?3, ?4, '[]', ?5, ?6, ?7, 'replica-a', ?8, ?9, ?5, ?10, ?11, ?12, ?13, ?14)",
        )
        .unwrap();
    let workers = 2_000u64;
    let fleet = 960_000u64;
    let gone_at: Vec<u64> =
        (0..workers).map(|w| if w % 10 == 3 { rng.random_range(0..fleet) } else { fleet }).collect();
    let mut serials = Vec::with_capacity(1_000_000);
    // (serial, issued_at, not_after, worker, kind) for the whole ledger, then statuses.
    let mut rows: Vec<(String, OffsetDateTime, OffsetDateTime, String, &str)> = Vec::with_capacity(1_000_000);
    let step = (now - start) / 1_000_000;
    for i in 0..1_000_000u64 {
        let issued =
            start + step * u32::try_from(i).unwrap() + Duration::nanoseconds(rng.random_range(0..1_000_000_000));
        let bytes: [u8; 16] = rng.random();
        let serial = bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let (worker, life, kind) = if i % 1_000 == 500 {
            (format!("admin-{:04}", i / 1_000), Duration::days(365), "admin")
        } else if i % 4 == 1 && issued < start + Duration::days(30) {
            (format!("legacy-{:03}", i % 997), Duration::hours(24), "renew")
        } else {
            let w = i % workers;
            if i >= gone_at[usize::try_from(w).unwrap()] {
                // A gone worker's rows go to one still running.
                (format!("svc-{:03}-{:02}", (w + 1) / 10 % 200, (w + 1) % 10), Duration::hours(24), "renew")
            } else {
                (format!("svc-{:03}-{:02}", w / 10 % 200, w % 10), Duration::hours(24), "renew")
            }
        };
        serials.push(serial.clone());
        rows.push((serial, issued, (issued + life).replace_nanosecond(0).unwrap(), worker, kind));
    }
    // The latest certificate of each worker is valid and the earlier ones superseded
    // by the next; 1% revoked.
    let mut next_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut superseded_by: Vec<Option<String>> = vec![None; rows.len()];
    for (i, row) in rows.iter().enumerate().rev() {
        if let Some(&next) = next_of.get(row.3.as_str()) {
            superseded_by[i] = Some(rows[next].0.clone());
        }
        next_of.insert(row.3.as_str(), i);
    }
    for (i, (serial, issued, not_after, worker, kind)) in rows.iter().enumerate() {
        let status = if rng.random_range(0..100) == 0 {
            "revoked"
        } else if superseded_by[i].is_some() {
            "superseded"
        } else {
            "valid"
        };
        insert
            .execute(rusqlite::params![
                serial,
                worker,
                format!("spiffe://crank.local/worker/{worker}"),
                format!("[\"spiffe://crank.local/worker/{worker}\"]"),
                at(*issued),
                at(*not_after),
                format!("{:064x}", i),
                kind,
                format!("req_{i:016x}"),
                status,
                pem,
                superseded_by[i],
                nanos(*issued),
                nanos(*not_after),
            ])
            .unwrap();
    }
    drop(insert);
    tx.commit().unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    serials
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap()
}

/// Times the console's reads on a million-row ledger `store` (rows as
/// [`sqlite_million`] and [`postgres_million`] write them; `serials` in issue order):
/// each filter's first page and a page half-way down, the searches, the counts and one
/// certificate's history. Prints first and median of 5 runs; asserts nothing.
async fn time_console_queries(store: &Arc<dyn CaStore>, serials: &[String], now: OffsetDateTime) {
    use std::time::Instant;

    let base = CertificateQuery {
        search: None,
        status: StatusFilter::All,
        after: None,
        limit: 51,
        now,
        expiring_within: Duration::hours(24),
    };
    let time = |what: String, q: CertificateQuery| {
        let s = store.clone();
        async move {
            let mut samples = Vec::new();
            let mut n = 0;
            for _ in 0..5 {
                let t = Instant::now();
                n = s.list_certificates(&q).await.unwrap().len();
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let first = samples[0];
            samples.sort_by(f64::total_cmp);
            println!("{what:<58} {n:>3} rows  first {first:>7.2} ms  median {:>7.2} ms", samples[2]);
        }
    };
    // A cursor deep in: the row half-way down the ledger.
    let mid = store.certificate(&serials[500_000]).await.unwrap().unwrap();
    let deep = Some((mid.issued_at.clone(), mid.serial.clone()));
    for status in FILTERS {
        time(format!("{status:?}: first page"), CertificateQuery { status, ..base.clone() }).await;
        time(
            format!("{status:?}: page half-way down"),
            CertificateQuery { status, after: deep.clone(), ..base.clone() },
        )
        .await;
    }
    for (what, search) in [
        ("worker prefix, one worker (svc-042-07)", "svc-042-07"),
        ("worker prefix, one service (svc-042-)", "svc-042-"),
        ("worker prefix, nearly all rows (svc)", "svc"),
        ("worker prefix, 20,000 rows all a year old (legacy)", "legacy"),
        ("worker prefix, no match (nobody)", "nobody"),
    ] {
        time(format!("search {what}"), CertificateQuery { search: Some(search.into()), ..base.clone() }).await;
    }
    let short = serials[42][..2].to_owned();
    time(
        format!("search serial prefix, 1/256 of the rows ({short})"),
        CertificateQuery { search: Some(short), ..base.clone() },
    )
    .await;
    let serial_prefix = serials[123_456][..5].to_owned();
    time(
        format!("search serial prefix ({serial_prefix})"),
        CertificateQuery { search: Some(serial_prefix), ..base.clone() },
    )
    .await;
    let whole = serials[654_321].clone();
    time("search whole serial".into(), CertificateQuery { search: Some(whole), ..base.clone() }).await;
    time(
        "search svc-042- + Valid".into(),
        CertificateQuery { search: Some("svc-042-".into()), status: StatusFilter::Valid, ..base.clone() },
    )
    .await;
    time(
        "search legacy + Expired, half-way down".into(),
        CertificateQuery {
            search: Some("legacy".into()),
            status: StatusFilter::Expired,
            after: deep.clone(),
            ..base.clone()
        },
    )
    .await;
    for _ in 0..3 {
        let t = Instant::now();
        let counts = store.certificate_counts(now, Duration::hours(24)).await.unwrap();
        println!("certificate_counts {counts:?}  {:.2} ms", t.elapsed().as_secs_f64() * 1000.0);
    }
    let t = Instant::now();
    let h = store.certificate_history(&serials[500_000]).await.unwrap().unwrap();
    println!(
        "certificate_history  {:.2} ms ({:?} <- {:?})",
        t.elapsed().as_secs_f64() * 1000.0,
        h.superseded_by,
        h.renewed_from
    );
}
