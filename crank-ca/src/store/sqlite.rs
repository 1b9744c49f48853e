//! The embedded store: SQLite in WAL mode with `synchronous=FULL`: a commit is on
//! disk before it returns. Writes go through one writer thread that commits whatever
//! requests are waiting as one transaction (group commit), so many concurrent issuances
//! share one fsync while each still returns only after its own row is durable.

use std::fmt::{Debug, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::model::{
    CaStore, CertificateCounts, CertificateHistory, CertificateQuery, CertificateRecord, MAX_PAGE, RegistrationEntry,
    Renewal, ReplicaRecord, Revocation, RevocationRecord, RevokeTarget, StatusFilter, StoreError, TokenUse,
    expiring_until, now_rfc3339, parse_rfc3339, query_cursor, search_range, selectors_from_key, selectors_key,
};

/// Versioned schema migrations, applied in order at start; `PRAGMA user_version` holds
/// how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: ledger and used tokens
    "CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL,
        spiffe_id TEXT NOT NULL,
        sans TEXT NOT NULL,
        capabilities TEXT NOT NULL,
        not_before TEXT NOT NULL,
        not_after TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        issued_by TEXT NOT NULL,
        kind TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'valid'
    );
    CREATE INDEX certificates_worker ON certificates(worker_id);
    CREATE TABLE used_tokens (
        jti TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL,
        used_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );",
    // 2: revocations and the CRL counters
    "CREATE TABLE revocations (
        serial TEXT PRIMARY KEY REFERENCES certificates(serial),
        worker_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        revoked_at INTEGER NOT NULL,
        revoked_by TEXT NOT NULL,
        not_after INTEGER NOT NULL
    );
    CREATE INDEX revocations_not_after ON revocations(not_after);
    CREATE TABLE crl_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL,
        crl_number INTEGER NOT NULL
    );
    INSERT INTO crl_state (id, generation, crl_number) VALUES (1, 0, 0);",
    // 3: answering a retried request: which certificate a token was used for
    "ALTER TABLE used_tokens ADD COLUMN serial TEXT;
    ALTER TABLE used_tokens ADD COLUMN request_sha256 TEXT;
    ALTER TABLE certificates ADD COLUMN pem TEXT NOT NULL DEFAULT '';",
    // 4: renewal retires the certificate it replaces
    "ALTER TABLE certificates ADD COLUMN superseded_by TEXT;
    ALTER TABLE certificates ADD COLUMN renewal_sha256 TEXT;",
    // 5: the operator console. Times as integers (Unix nanoseconds, UTC) beside the RFC
    // 3339 text, which does not sort as time (fractional seconds of varying width,
    // offsets); `fill_times` computes them for the rows already recorded. And the
    // replicas' heartbeats.
    "ALTER TABLE certificates ADD COLUMN issued_ns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE certificates ADD COLUMN not_after_ns INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE replicas (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );",
    // 6: the console's indexes: the ledger newest first (all rows; by status); status by
    // expiry (the counts, and the valid, expiring or expired rows when they are few);
    // worker ids (prefix searches; it replaces `certificates_worker`); a certificate's
    // predecessor; serials (prefix searches). Each carries the order and the filters'
    // columns, so that a page reads only index entries until it knows its rows.
    "CREATE INDEX certificates_issued ON certificates(issued_ns, serial, status, not_after_ns);
    CREATE INDEX certificates_status_issued ON certificates(status, issued_ns, serial, not_after_ns);
    CREATE INDEX certificates_status_not_after ON certificates(status, not_after_ns, issued_ns, serial);
    CREATE INDEX certificates_worker_issued ON certificates(worker_id, issued_ns, serial, status, not_after_ns);
    CREATE INDEX certificates_serial_issued ON certificates(serial, issued_ns, status, not_after_ns);
    DROP INDEX certificates_worker;
    CREATE INDEX certificates_superseded_by ON certificates(superseded_by) WHERE superseded_by IS NOT NULL;",
    // 7: how many rows each status has, kept by triggers, so that the console's counts
    // need not scan the ledger (an upsert of one small row per issuance).
    "CREATE TABLE certificate_tally (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO certificate_tally (status, n) SELECT status, count(*) FROM certificates GROUP BY status;
    CREATE TRIGGER certificates_tally_insert AFTER INSERT ON certificates BEGIN
        INSERT INTO certificate_tally (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER certificates_tally_status AFTER UPDATE OF status ON certificates
    WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE certificate_tally SET n = n - 1 WHERE status = OLD.status;
        INSERT INTO certificate_tally (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER certificates_tally_delete AFTER DELETE ON certificates BEGIN
        UPDATE certificate_tally SET n = n - 1 WHERE status = OLD.status;
    END;",
    // 8: the join-token keys' certificates, by key id, so that every replica accepts the
    // tokens any of them signs after a rotation.
    "CREATE TABLE token_keys (kid TEXT PRIMARY KEY, certificate TEXT NOT NULL, published_at INTEGER NOT NULL);",
    // 9: registration entries: which agent may obtain certificates for which worker id,
    // for processes matching which selectors (the JSON array text of the sorted list).
    // `created_ns` (Unix nanoseconds) orders them oldest first, as for the ledger.
    "CREATE TABLE registration_entries (
        id TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        created_at TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        UNIQUE (worker_id, agent_id, selectors)
    );
    CREATE INDEX registration_entries_agent ON registration_entries(agent_id, created_ns);",
    // 10: the JWT-SVID keys' certificates, by key id, so that every replica's JWT bundle
    // holds the keys any of them signs with.
    "CREATE TABLE jwt_keys (kid TEXT PRIMARY KEY, certificate TEXT NOT NULL, published_at INTEGER NOT NULL);",
];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e.to_string())
    }
}

struct Job {
    token: Option<TokenUse>,
    renewal: Option<Renewal>,
    cert: CertificateRecord,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    /// For scans and other reads that may take a while: used on the blocking pool.
    reader: Arc<Mutex<Connection>>,
    /// For point lookups by primary key on the issuance path (a few microseconds in WAL
    /// mode, never waiting for the writer): used in place, since handing each one to
    /// the blocking pool cost more CPU than the query (profiled under load).
    lookups: Arc<[Mutex<Connection>]>,
}

impl Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("serial", &self.cert.serial).finish()
    }
}

/// Connections for in-place point lookups (one per core is plenty).
const LOOKUP_CONNECTIONS: usize = 4;

/// Largest number of issuances committed in one transaction.
const MAX_BATCH: usize = 512;

impl SqliteStore {
    /// Publishes a rotated key's certificate in `table` (`token_keys` or `jwt_keys`),
    /// keeping the first one published under `kid`.
    async fn publish_key(&self, table: &'static str, kid: &str, certificate_pem: &str) -> Result<(), StoreError> {
        let (kid, pem, at) = (kid.to_owned(), certificate_pem.to_owned(), OffsetDateTime::now_utc().unix_timestamp());
        let sql = format!(
            "INSERT INTO {table} (kid, certificate, published_at) VALUES (?1, ?2, ?3) ON CONFLICT (kid) DO NOTHING"
        );
        // Rare and small, like a heartbeat: through the reader connection.
        self.with_conn(move |c| {
            c.prepare_cached(&sql)?.execute(params![kid, pem, at])?;
            Ok(())
        })
        .await
    }

    /// Opens (creating and migrating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open_conn(path)?;
        migrate(&conn)?;
        let reader = open_conn(path)?;
        let lookups =
            (0..LOOKUP_CONNECTIONS).map(|_| open_conn(path).map(Mutex::new)).collect::<Result<Arc<[_]>, _>>()?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("crank-ledger-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Database(format!("starting the writer thread: {e}")))?;
        Ok(Self { path: path.to_path_buf(), writer: tx, reader: Arc::new(Mutex::new(reader)), lookups })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| StoreError::Database("reader lock poisoned".into()))?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader task: {e}")))?
    }
}

impl SqliteStore {
    /// Hands a change to the writer thread and waits until it is durable.
    async fn write(
        &self,
        token: Option<TokenUse>,
        renewal: Option<Renewal>,
        cert: CertificateRecord,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job { token, renewal, cert, reply })
            .map_err(|_| StoreError::Database("the ledger writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Database("the ledger writer dropped the request".into()))?
    }

    /// A point lookup on a free lookup connection, in place; when all are busy, on the
    /// blocking pool like any other read.
    async fn lookup<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        for conn in self.lookups.iter() {
            if let Ok(conn) = conn.try_lock() {
                return f(&conn);
            }
        }
        self.with_conn(f).await
    }
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Database(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))?.try_into().unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the store is at schema version {version}, newer than this build knows ({}); upgrade crank",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        if i + 1 == TIME_COLUMNS_MIGRATION {
            fill_times(&tx)?;
        }
        tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(i64::MAX))?;
        tx.commit()?;
    }
    Ok(())
}

/// The migration that adds `issued_ns` and `not_after_ns`.
const TIME_COLUMNS_MIGRATION: usize = 5;

/// Computes `issued_ns` and `not_after_ns` of the rows recorded before they existed. A
/// time that does not parse (the CA never writes one) counts as 1970, with a warning:
/// the console lists such a row last, as expired, rather than the CA refusing to start.
fn fill_times(c: &Connection) -> Result<(), StoreError> {
    let mut times = Vec::new();
    {
        let mut stmt = c.prepare("SELECT rowid, serial, issued_at, not_after FROM certificates")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let serial: String = r.get(1)?;
            let time = |what: &str, text: String| {
                ledger_nanos(what, &text).unwrap_or_else(|e| {
                    tracing::warn!(serial, "{e}; the console counts it as 1970-01-01");
                    0
                })
            };
            times.push((r.get::<_, i64>(0)?, time("issued_at", r.get(2)?), time("not_after", r.get(3)?)));
        }
    }
    let mut update = c.prepare("UPDATE certificates SET issued_ns = ?1, not_after_ns = ?2 WHERE rowid = ?3")?;
    for (rowid, issued, not_after) in times {
        update.execute(params![issued, not_after, rowid])?;
    }
    Ok(())
}

/// `t` as Unix nanoseconds, the integer the ledger's indexes order by (saturating past
/// the year 2262, which only a "no expiry" notAfter of 9999 reaches).
fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(if t.unix_timestamp() < 0 { i64::MIN } else { i64::MAX })
}

/// An RFC 3339 time of a record as [`nanos`].
fn ledger_nanos(what: &str, text: &str) -> Result<i64, StoreError> {
    parse_rfc3339(what, text).map(nanos)
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcomes = commit_batch(&mut conn, &batch);
        match outcomes {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Database(e.to_string())));
                }
            }
        }
    }
}

/// Writes a batch in one transaction; each job in its own savepoint so that one refused
/// job (used token, duplicate serial) does not undo the others. Every statement is
/// prepared once per connection (`prepare_cached`): the writer runs them thousands of
/// times a second.
fn commit_batch(conn: &mut Connection, batch: &[Job]) -> Result<Vec<Result<(), StoreError>>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        tx.prepare_cached("SAVEPOINT job")?.execute([])?;
        let r = insert_job(&tx, job);
        if r.is_err() {
            // Undo this job only.
            tx.prepare_cached("ROLLBACK TO job")?.execute([])?;
        }
        tx.prepare_cached("RELEASE job")?.execute([])?;
        results.push(r);
    }
    tx.commit()?;
    Ok(results)
}

fn insert_job(conn: &Connection, job: &Job) -> Result<(), StoreError> {
    let now = now_rfc3339();
    // Refused as PostgreSQL refuses them: the console orders and filters by these.
    let issued_ns = ledger_nanos("issued_at", &job.cert.issued_at)?;
    let not_after_ns = ledger_nanos("not_after", &job.cert.not_after)?;
    if let Some(r) = &job.renewal {
        let n = conn
            .prepare_cached(
                "UPDATE certificates SET status = 'superseded', superseded_by = ?1, renewal_sha256 = ?2
                 WHERE serial = ?3 AND status = 'valid'",
            )?
            .execute(params![job.cert.serial, r.request_sha256, r.previous_serial])?;
        if n == 0 {
            return Err(StoreError::Superseded(r.previous_serial.clone()));
        }
    }
    if let Some(t) = &job.token {
        let n = conn
            .prepare_cached(
                "INSERT INTO used_tokens (jti, worker_id, used_at, expires_at, serial, request_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(jti) DO NOTHING",
            )?
            .execute(params![t.jti, t.worker_id, now, t.expires_at, job.cert.serial, t.request_sha256])?;
        if n == 0 {
            return Err(StoreError::TokenUsed(t.jti.clone()));
        }
    }
    let c = &job.cert;
    let res = conn
        .prepare_cached(
            "INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after, fingerprint, issued_by, kind, correlation_id, issued_at, status, pem, issued_ns, not_after_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?
        .execute(params![
            c.serial,
            c.worker_id,
            c.spiffe_id,
            serde_json::to_string(&c.sans).unwrap_or_default(),
            serde_json::to_string(&c.capabilities).unwrap_or_default(),
            c.not_before,
            c.not_after,
            c.fingerprint,
            c.issued_by,
            c.kind.as_str(),
            c.correlation_id,
            c.issued_at,
            c.status.as_str(),
            c.pem,
            issued_ns,
            not_after_ns
        ]);
    match res {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            Err(StoreError::DuplicateSerial(c.serial.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

/// A `registration_entries` row (id, worker_id, agent_id, selectors, created_at,
/// created_by), its selectors still as the store keys them.
fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RegistrationEntry, String)> {
    Ok((
        RegistrationEntry {
            id: r.get(0)?,
            worker_id: r.get(1)?,
            agent_id: r.get(2)?,
            selectors: Vec::new(),
            created_at: r.get(4)?,
            created_by: r.get(5)?,
        },
        r.get::<_, String>(3)?,
    ))
}

/// The entry of [`entry_row`] with its selectors read.
fn with_selectors((mut entry, selectors): (RegistrationEntry, String)) -> Result<RegistrationEntry, StoreError> {
    entry.selectors = selectors_from_key(&entry.id, &selectors)?;
    Ok(entry)
}

#[async_trait]
impl CaStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn record_issuance(&self, token: Option<TokenUse>, cert: CertificateRecord) -> Result<(), StoreError> {
        self.write(token, None, cert).await
    }

    async fn record_renewal(&self, renewal: Renewal, cert: CertificateRecord) -> Result<(), StoreError> {
        self.write(None, Some(renewal), cert).await
    }

    async fn renewal_of(&self, previous_serial: &str) -> Result<Option<(String, CertificateRecord)>, StoreError> {
        let serial = previous_serial.to_owned();
        self.lookup(move |c| {
            let Some((next, hash)) = c
                .prepare_cached(
                    "SELECT superseded_by, renewal_sha256 FROM certificates
                     WHERE serial = ?1 AND superseded_by IS NOT NULL",
                )?
                .query_row([serial], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .optional()?
            else {
                return Ok(None);
            };
            let row = c
                .prepare_cached(&format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1"))?
                .query_row([next], cert_row)
                .optional()?;
            Ok(row.map(|r| (hash, r)))
        })
        .await
    }

    async fn token_used(&self, jti: &str) -> Result<bool, StoreError> {
        let jti = jti.to_owned();
        self.lookup(move |c| {
            Ok(c.prepare_cached("SELECT 1 FROM used_tokens WHERE jti = ?1")?
                .query_row([jti], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let serial = serial.to_owned();
        self.lookup(move |c| {
            Ok(c.prepare_cached(&format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1"))?
                .query_row([serial], cert_row)
                .optional()?)
        })
        .await
    }

    async fn issued_with_token(&self, jti: &str) -> Result<Option<(String, CertificateRecord)>, StoreError> {
        let jti = jti.to_owned();
        self.lookup(move |c| {
            let found = c
                .prepare_cached("SELECT serial, request_sha256 FROM used_tokens WHERE jti = ?1")?
                .query_row([jti], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?)))
                .optional()?;
            let Some((Some(serial), Some(hash))) = found else { return Ok(None) };
            let cert = c
                .prepare_cached(&format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1"))?
                .query_row([serial], cert_row)
                .optional()?;
            Ok(cert.map(|c| (hash, c)))
        })
        .await
    }

    async fn latest_expiry_issued_before(&self, before: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError> {
        self.with_conn(move |c| {
            let parse =
                |s: String| time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok();
            let mut stmt = c.prepare("SELECT issued_at, not_after FROM certificates")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut latest: Option<time::OffsetDateTime> = None;
            for row in rows {
                let (issued, not_after) = row?;
                if let (Some(issued), Some(not_after)) = (parse(issued), parse(not_after))
                    && issued < before
                {
                    latest = Some(latest.map_or(not_after, |l| l.max(not_after)));
                }
            }
            Ok(latest)
        })
        .await
    }

    async fn certificate_count(&self) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            Ok(c.query_row("SELECT COUNT(*) FROM certificates", [], |r| r.get::<_, i64>(0))?.try_into().unwrap_or(0))
        })
        .await
    }

    async fn revoke(&self, revocation: &Revocation) -> Result<Vec<RevocationRecord>, StoreError> {
        let rev = revocation.clone();
        // Revocations are rare: they write through the second connection (its busy
        // timeout waits out a group commit in progress).
        self.with_conn(move |c| {
            c.execute_batch("BEGIN IMMEDIATE")?;
            let out = revoke_in(c, &rev).and_then(|records| {
                c.execute_batch("COMMIT")?;
                Ok(records)
            });
            if out.is_err() && !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
            out
        })
        .await
    }

    async fn revoked_unexpired(&self, now: OffsetDateTime) -> Result<Vec<RevocationRecord>, StoreError> {
        let now = now.unix_timestamp();
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT serial, worker_id, reason, revoked_at, revoked_by, not_after FROM revocations
                 WHERE not_after > ?1 ORDER BY revoked_at, serial",
            )?;
            let rows = stmt.query_map([now], revocation_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
        .await
    }

    async fn revocation_generation(&self) -> Result<u64, StoreError> {
        self.lookup(|c| {
            let g: i64 =
                c.prepare_cached("SELECT generation FROM crl_state WHERE id = 1")?.query_row([], |r| r.get(0))?;
            Ok(u64::try_from(g).unwrap_or(0))
        })
        .await
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            let n: i64 = c.query_row(
                "UPDATE crl_state SET crl_number = crl_number + 1 WHERE id = 1 RETURNING crl_number",
                [],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }

    async fn list_certificates(&self, query: &CertificateQuery) -> Result<Vec<CertificateRecord>, StoreError> {
        let query = query.clone();
        self.with_conn(move |c| read_snapshot(c, |c| list(c, &query, FIRST_SCAN))).await
    }

    async fn certificate_counts(
        &self,
        now: OffsetDateTime,
        expiring_within: time::Duration,
    ) -> Result<CertificateCounts, StoreError> {
        let (now, until) = (nanos(now), nanos(expiring_until(now, expiring_within)));
        self.with_conn(move |c| read_snapshot(c, |c| counts(c, now, until))).await
    }

    async fn certificate_history(&self, serial: &str) -> Result<Option<CertificateHistory>, StoreError> {
        let serial = serial.to_owned();
        self.with_conn(move |c| {
            read_snapshot(c, |c| {
                let Some((record, superseded_by)) = c
                    .prepare_cached(&format!(
                        "SELECT {CERT_COLUMNS}, superseded_by FROM certificates WHERE serial = ?1"
                    ))?
                    .query_row([&serial], |r| Ok((cert_row(r)?, r.get::<_, Option<String>>(14)?)))
                    .optional()?
                else {
                    return Ok(None);
                };
                let renewed_from = c
                    .prepare_cached("SELECT serial FROM certificates WHERE superseded_by = ?1 ORDER BY serial LIMIT 1")?
                    .query_row([&serial], |r| r.get::<_, String>(0))
                    .optional()?;
                let revocation = c
                    .prepare_cached(
                        "SELECT serial, worker_id, reason, revoked_at, revoked_by, not_after FROM revocations
                         WHERE serial = ?1",
                    )?
                    .query_row([&serial], revocation_row)
                    .optional()?
                    .transpose()?;
                Ok(Some(CertificateHistory { record, renewed_from, superseded_by, revocation }))
            })
        })
        .await
    }

    async fn replica_heartbeat(&self, replica: &str, address: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        let (replica, address, at) = (replica.to_owned(), address.to_owned(), at.unix_timestamp());
        // A write, but a rare and small one: like revocations it goes through the reader
        // connection (its busy timeout waits out a group commit in progress).
        self.with_conn(move |c| {
            c.prepare_cached(
                "INSERT INTO replicas (name, address, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (name) DO UPDATE SET
                     address = CASE WHEN excluded.last_seen >= last_seen THEN excluded.address ELSE address END,
                     first_seen = min(first_seen, excluded.first_seen),
                     last_seen = max(last_seen, excluded.last_seen)",
            )?
            .execute(params![replica, address, at])?;
            Ok(())
        })
        .await
    }

    async fn publish_token_key(&self, kid: &str, certificate_pem: &str) -> Result<(), StoreError> {
        self.publish_key("token_keys", kid, certificate_pem).await
    }

    async fn token_key(&self, kid: &str) -> Result<Option<String>, StoreError> {
        let kid = kid.to_owned();
        self.with_conn(move |c| {
            Ok(c.prepare_cached("SELECT certificate FROM token_keys WHERE kid = ?1")?
                .query_row([&kid], |r| r.get::<_, String>(0))
                .optional()?)
        })
        .await
    }

    async fn publish_jwt_key(&self, kid: &str, certificate_pem: &str) -> Result<(), StoreError> {
        self.publish_key("jwt_keys", kid, certificate_pem).await
    }

    async fn jwt_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached("SELECT kid, certificate FROM jwt_keys ORDER BY published_at, kid")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        // Refused as PostgreSQL refuses it: entries are listed in this order.
        let created_ns = ledger_nanos("created_at", &entry.created_at)?;
        let (entry, selectors) = (entry.clone(), selectors_key(&entry.selectors));
        // Rare and small, like a heartbeat: through the reader connection.
        self.with_conn(move |c| {
            let e = &entry;
            let inserted = c
                .prepare_cached(
                    "INSERT INTO registration_entries
                         (id, worker_id, agent_id, selectors, created_at, created_ns, created_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (worker_id, agent_id, selectors) DO NOTHING",
                )?
                .execute(params![e.id, e.worker_id, e.agent_id, selectors, e.created_at, created_ns, e.created_by]);
            match inserted {
                Ok(1) => return Ok(()),
                // The same worker, agent and selectors (or, with another constraint
                // violated, perhaps the same id): said below.
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::ConstraintViolation => {}
                Err(other) => return Err(other.into()),
            }
            let existing = c
                .prepare_cached(
                    "SELECT id FROM registration_entries WHERE worker_id = ?1 AND agent_id = ?2 AND selectors = ?3",
                )?
                .query_row(params![e.worker_id, e.agent_id, selectors], |r| r.get::<_, String>(0))
                .optional()?;
            Err(existing.map_or_else(
                || StoreError::Database(format!("registration entry id {} is already recorded", e.id)),
                StoreError::DuplicateEntry,
            ))
        })
        .await
    }

    async fn entries(&self, agent_id: Option<&str>) -> Result<Vec<RegistrationEntry>, StoreError> {
        let agent_id = agent_id.map(str::to_owned);
        self.with_conn(move |c| {
            // Two statements, so that one agent's entries are read by its index.
            let (mut stmt, args) = match &agent_id {
                Some(agent) => (
                    c.prepare_cached(
                        "SELECT id, worker_id, agent_id, selectors, created_at, created_by FROM registration_entries
                         WHERE agent_id = ?1 ORDER BY created_ns, rowid",
                    )?,
                    vec![agent],
                ),
                None => (
                    c.prepare_cached(
                        "SELECT id, worker_id, agent_id, selectors, created_at, created_by FROM registration_entries
                         ORDER BY created_ns, rowid",
                    )?,
                    vec![],
                ),
            };
            let rows = stmt.query_map(rusqlite::params_from_iter(args), entry_row)?;
            rows.map(|row| with_selectors(row?)).collect()
        })
        .await
    }

    async fn entry_for(&self, agent_id: &str, worker_id: &str) -> Result<Option<RegistrationEntry>, StoreError> {
        let (agent_id, worker_id) = (agent_id.to_owned(), worker_id.to_owned());
        self.with_conn(move |c| {
            // By the unique index on (worker_id, agent_id, selectors).
            let row = c
                .prepare_cached(
                    "SELECT id, worker_id, agent_id, selectors, created_at, created_by FROM registration_entries
                     WHERE worker_id = ?1 AND agent_id = ?2 ORDER BY created_ns, rowid LIMIT 1",
                )?
                .query_row([&worker_id, &agent_id], entry_row)
                .optional()?;
            row.map(with_selectors).transpose()
        })
        .await
    }

    async fn delete_entry(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        // Rare and small, like a heartbeat: through the reader connection.
        self.with_conn(move |c| {
            Ok(c.prepare_cached("DELETE FROM registration_entries WHERE id = ?1")?.execute([&id])? > 0)
        })
        .await
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        self.with_conn(|c| {
            let mut stmt =
                c.prepare_cached("SELECT name, address, first_seen, last_seen FROM replicas ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok(ReplicaRecord { name: r.get(0)?, address: r.get(1)?, first_seen: r.get(2)?, last_seen: r.get(3)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// Runs the reads of `f` in one read transaction: one snapshot of the ledger.
fn read_snapshot<T>(c: &Connection, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
    let tx = c.unchecked_transaction()?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// The console's counts: the total and the revoked from `certificate_tally`, the others
/// ranges of `certificates_status_not_after` (as many entries as there are unexpired
/// certificates); "expired" is what remains of the total once the revoked and the
/// unexpired (valid or superseded) are taken away.
fn counts(c: &Connection, now: i64, until: i64) -> Result<CertificateCounts, StoreError> {
    let count = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> Result<u64, StoreError> {
        let n: i64 = c.prepare_cached(sql)?.query_row(args, |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let total = count("SELECT coalesce(sum(n), 0) FROM certificate_tally", &[])?;
    let revoked = count("SELECT coalesce(sum(n), 0) FROM certificate_tally WHERE status = 'revoked'", &[])?;
    let in_status = "SELECT count(*) FROM certificates INDEXED BY certificates_status_not_after WHERE status = ";
    let valid = count(&format!("{in_status}'valid' AND not_after_ns >= ?1"), &[&now])?;
    let expiring =
        count(&format!("{in_status}'valid' AND not_after_ns >= ?1 AND not_after_ns <= ?2"), &[&now, &until])?;
    let live_superseded = count(&format!("{in_status}'superseded' AND not_after_ns >= ?1"), &[&now])?;
    let expired = total.saturating_sub(revoked).saturating_sub(valid).saturating_sub(live_superseded);
    Ok(CertificateCounts { total, valid, expiring, revoked, expired })
}

/// A statement being put together: its text and, in order, the values it binds. Every
/// value from a query is bound; only the store's own words go into the text.
#[derive(Debug, Default)]
struct Sql {
    text: String,
    args: Vec<Value>,
}

impl Sql {
    fn new(text: &str) -> Self {
        Self { text: text.to_owned(), args: Vec::new() }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// A placeholder bound to `v`.
    fn arg(&mut self, v: impl Into<Value>) -> &mut Self {
        self.args.push(v.into());
        let _ = write!(self.text, "?{}", self.args.len());
        self
    }

    /// ` AND (issued_ns, serial) <op> (.., ..)`: one side of a keyset range.
    fn keyset(&mut self, op: &str, at: Option<&Position>) -> &mut Self {
        if let Some((ns, serial)) = at {
            self.push(" AND (issued_ns, serial) ")
                .push(op)
                .push(" (")
                .arg(*ns)
                .push(", ")
                .arg(serial.clone())
                .push(")");
        }
        self
    }

    fn rows<T>(
        &self,
        c: &Connection,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = c.prepare_cached(&self.text)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(&self.args), f)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn count(&self, c: &Connection) -> Result<i64, StoreError> {
        Ok(c.prepare_cached(&self.text)?.query_row(rusqlite::params_from_iter(&self.args), |r| r.get(0))?)
    }
}

/// A place in the console's order: (issued_ns, serial), newest first.
type Position = (i64, String);

/// A console query in the ledger's terms.
#[derive(Debug)]
struct Filter {
    status: StatusFilter,
    now: i64,
    until: i64,
    /// The search prefix and the bound past it.
    search: Option<(String, Option<String>)>,
}

/// Where a console query can start besides the ordered walk: an index whose range holds
/// every row it wants (with others, which the query's conditions drop).
#[derive(Debug, Clone, Copy)]
enum Range {
    Worker,
    Serial,
    Status,
}

impl Filter {
    /// ` AND` the status condition of the query.
    fn status(&self, sql: &mut Sql) {
        match self.status {
            StatusFilter::All => {}
            StatusFilter::Valid => {
                sql.push(" AND status = 'valid' AND not_after_ns >= ").arg(self.now);
            }
            StatusFilter::Expiring => {
                sql.push(" AND status = 'valid' AND not_after_ns >= ").arg(self.now);
                sql.push(" AND not_after_ns <= ").arg(self.until);
            }
            StatusFilter::Revoked => {
                sql.push(" AND status = 'revoked'");
            }
            StatusFilter::Expired => {
                sql.push(" AND status IN ('valid', 'superseded') AND not_after_ns < ").arg(self.now);
            }
        }
    }

    /// ` AND` `column` starts with the search (`column` is one of the store's names).
    fn prefix(&self, sql: &mut Sql, column: &str) {
        if let Some((prefix, upper)) = &self.search {
            sql.push(" AND ").push(column).push(" >= ").arg(prefix.clone());
            if let Some(upper) = upper {
                sql.push(" AND ").push(column).push(" < ").arg(upper.clone());
            }
        }
    }

    /// ` AND` the search condition of the query (worker id or serial).
    fn search(&self, sql: &mut Sql) {
        if self.search.is_some() {
            sql.push(" AND ((1");
            self.prefix(sql, "worker_id");
            sql.push(") OR (1");
            self.prefix(sql, "serial");
            sql.push("))");
        }
    }

    /// The ranges that together hold every row the query wants, when the walk is not
    /// exact.
    fn ranges(&self) -> &'static [Range] {
        match (&self.search, self.status) {
            (Some(_), _) => &[Range::Worker, Range::Serial],
            (None, StatusFilter::Valid | StatusFilter::Expiring | StatusFilter::Expired) => &[Range::Status],
            (None, StatusFilter::All | StatusFilter::Revoked) => &[],
        }
    }

    /// The index of the ordered walk, and the status it is restricted to.
    fn walk(&self) -> (&'static str, Option<&'static str>) {
        match self.status {
            StatusFilter::All | StatusFilter::Expired => ("certificates_issued", None),
            StatusFilter::Valid | StatusFilter::Expiring => ("certificates_status_issued", Some("valid")),
            StatusFilter::Revoked => ("certificates_status_issued", Some("revoked")),
        }
    }

    /// `SELECT <what> FROM certificates INDEXED BY <walk index> WHERE <walk status>`.
    fn walk_select(&self, what: &str) -> Sql {
        let (index, status) = self.walk();
        let mut sql = Sql::new(&format!("SELECT {what} FROM certificates INDEXED BY {index} WHERE 1"));
        if let Some(status) = status {
            sql.push(" AND status = '").push(status).push("'");
        }
        sql
    }

    /// `SELECT <what> FROM certificates INDEXED BY <range's index> WHERE <range>`.
    fn range_select(&self, range: Range, what: &str) -> Sql {
        let (index, column) = match range {
            Range::Worker => ("certificates_worker_issued", Some("worker_id")),
            Range::Serial => ("certificates_serial_issued", Some("serial")),
            Range::Status => ("certificates_status_not_after", None),
        };
        let mut sql = Sql::new(&format!("SELECT {what} FROM certificates INDEXED BY {index} WHERE 1"));
        match column {
            Some(column) => self.prefix(&mut sql, column),
            None => self.status(&mut sql),
        }
        sql
    }
}

/// How many index entries the walk of [`list`] may read in its first round; four times
/// as many in each further round.
const FIRST_SCAN: i64 = 2_048;

/// How many more entries a range may hold than the walk reads in the same round, and
/// still be read: a range's entries cost less (read from its index alone, sorted as
/// small keys) than the walk's (which reads a row for each when searching worker ids).
const RANGE_WEIGHT: i64 = 8;

/// A page for the console.
///
/// Two plans answer a filtered query, and which is fast depends on the data: walking the
/// ledger newest first and keeping the rows that match (fast when matches are dense
/// among recent rows), or reading the few rows of a selective index range (worker id or
/// serial prefix; status by expiry) and sorting them (fast when that range is small).
/// Neither alone is safe on a large ledger (a prefix matching most rows; a prefix whose
/// rows are all a year old), so they take turns with a budget of index entries that
/// grows fourfold: a round counts the range's entries up to [`RANGE_WEIGHT`] times the
/// budget and, if fewer, reads them; else it walks the next budget of entries. The cost
/// is within a small factor of the cheaper plan. All rounds read one snapshot (the
/// caller's transaction).
fn list(c: &Connection, q: &CertificateQuery, first_scan: i64) -> Result<Vec<CertificateRecord>, StoreError> {
    let limit = usize::try_from(q.limit.min(MAX_PAGE)).unwrap_or(0);
    // No worker id or serial holds a NUL (PostgreSQL cannot store one).
    if limit == 0 || q.search.as_deref().is_some_and(|s| s.contains('\0')) {
        return Ok(Vec::new());
    }
    let mut pos: Option<Position> = query_cursor(q)?.map(|(t, serial)| (nanos(t), serial));
    let f = Filter {
        status: q.status,
        now: nanos(q.now),
        until: nanos(expiring_until(q.now, q.expiring_within)),
        search: search_range(q),
    };
    let ranges = f.ranges();
    let select = format!("{CERT_COLUMNS}, issued_ns");
    let row = |r: &rusqlite::Row<'_>| Ok((cert_row(r)?, r.get::<_, i64>(14)?));
    let mut out: Vec<(CertificateRecord, i64)> = Vec::new();
    let mut budget = first_scan.max(1);
    loop {
        let need = i64::try_from(limit - out.len()).unwrap_or(i64::MAX);
        if ranges.is_empty() {
            // The walk's index holds exactly the rows wanted: the page is its next rows.
            let mut sql = f.walk_select(&select);
            sql.keyset("<", pos.as_ref()).push(" ORDER BY issued_ns DESC, serial DESC LIMIT ").arg(need);
            out.extend(sql.rows(c, row)?);
            break;
        }
        let cap = budget.saturating_mul(RANGE_WEIGHT);
        let mut in_ranges = 0;
        for &range in ranges {
            let mut sql = f.range_select(range, "1");
            sql.text = format!("SELECT count(*) FROM ({} LIMIT ?{})", sql.text, sql.args.len() + 1);
            sql.args.push(Value::Integer(cap));
            in_ranges += sql.count(c)?;
        }
        if in_ranges < cap {
            let mut found = Vec::new();
            for &range in ranges {
                // The range's page by its index entries alone, then those rows: sorting
                // whole rows (PEM and all) would cost more than finding them.
                let mut inner = f.range_select(range, "rowid");
                if !matches!(range, Range::Status) {
                    f.status(&mut inner);
                }
                inner.keyset("<", pos.as_ref()).push(" ORDER BY issued_ns DESC, serial DESC LIMIT ").arg(need);
                let sql = Sql {
                    text: format!("SELECT {select} FROM certificates WHERE rowid IN ({})", inner.text),
                    args: inner.args,
                };
                found.extend(sql.rows(c, row)?);
            }
            found.sort_by(|(a, an), (b, bn)| (bn, &b.serial).cmp(&(an, &a.serial)));
            found.dedup_by(|(a, _), (b, _)| a.serial == b.serial);
            found.truncate(limit - out.len());
            out.extend(found);
            break;
        }
        // The walk's next `budget` entries: the last of them bounds this round.
        let mut sql = f.walk_select("issued_ns, serial");
        sql.keyset("<", pos.as_ref()).push(" ORDER BY issued_ns DESC, serial DESC LIMIT 1 OFFSET ").arg(budget - 1);
        let boundary = sql.rows(c, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?.pop();
        let mut sql = f.walk_select(&select);
        sql.keyset("<", pos.as_ref()).keyset(">=", boundary.as_ref());
        f.status(&mut sql);
        f.search(&mut sql);
        sql.push(" ORDER BY issued_ns DESC, serial DESC LIMIT ").arg(need);
        out.extend(sql.rows(c, row)?);
        match boundary {
            Some(b) if out.len() < limit => pos = Some(b),
            _ => break,
        }
        budget = budget.saturating_mul(4);
    }
    Ok(out.into_iter().map(|(r, _)| r).collect())
}

const CERT_COLUMNS: &str = "serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after, fingerprint, \
     issued_by, kind, correlation_id, issued_at, status, pem";

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertificateRecord> {
    let sans: String = r.get(3)?;
    let caps: String = r.get(4)?;
    Ok(CertificateRecord {
        serial: r.get(0)?,
        worker_id: r.get(1)?,
        spiffe_id: r.get(2)?,
        sans: serde_json::from_str(&sans).unwrap_or_default(),
        capabilities: serde_json::from_str(&caps).unwrap_or_default(),
        not_before: r.get(5)?,
        not_after: r.get(6)?,
        fingerprint: r.get(7)?,
        issued_by: r.get(8)?,
        kind: text_column(r, 9)?,
        correlation_id: r.get(10)?,
        issued_at: r.get(11)?,
        status: text_column(r, 12)?,
        pem: r.get(13)?,
    })
}

/// A column holding one of the CA's words (`valid`, `renew`, ...).
fn text_column<T: std::str::FromStr<Err = StoreError>>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    text.parse()
        .map_err(|e: StoreError| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

type RowResult = Result<RevocationRecord, StoreError>;

fn revocation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult> {
    let reason: String = r.get(2)?;
    let serial: String = r.get(0)?;
    Ok(match reason.parse() {
        Ok(reason) => Ok(RevocationRecord {
            serial,
            worker_id: r.get(1)?,
            reason,
            revoked_at: r.get(3)?,
            revoked_by: r.get(4)?,
            not_after: r.get(5)?,
        }),
        Err(e) => Err(StoreError::Database(format!("revocation of {serial}: {e}"))),
    })
}

fn revoke_in(c: &Connection, rev: &Revocation) -> Result<Vec<RevocationRecord>, StoreError> {
    let now = rev.at.unix_timestamp();
    // (serial, worker, not_after) of the certificates to revoke.
    let mut targets = Vec::new();
    match &rev.target {
        RevokeTarget::Serial(serial) => {
            let row = c
                .query_row("SELECT worker_id, not_after, status FROM certificates WHERE serial = ?1", [serial], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                })
                .optional()?;
            let Some((worker, not_after, status)) = row else {
                return Err(StoreError::NotFound(format!("no certificate with serial {serial} in the ledger")));
            };
            if status == "revoked" {
                let existing = c
                    .query_row(
                        "SELECT serial, worker_id, reason, revoked_at, revoked_by, not_after FROM revocations WHERE serial = ?1",
                        [serial],
                        revocation_row,
                    )
                    .optional()?;
                if let Some(existing) = existing {
                    return Ok(vec![existing?]);
                }
            }
            targets.push((serial.clone(), worker, parse_rfc3339("not_after", &not_after)?.unix_timestamp()));
        }
        RevokeTarget::Worker(worker) | RevokeTarget::Admin(worker) => {
            // A superseded certificate still works in handshakes until it expires.
            let admins = matches!(rev.target, RevokeTarget::Admin(_));
            let mut stmt = c.prepare(
                "SELECT serial, not_after FROM certificates
                 WHERE worker_id = ?1 AND status IN ('valid', 'superseded') AND (kind = 'admin') = ?2",
            )?;
            let rows =
                stmt.query_map(params![worker, admins], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (serial, not_after) = row?;
                let not_after = parse_rfc3339("not_after", &not_after)?.unix_timestamp();
                if not_after > now {
                    targets.push((serial, worker.clone(), not_after));
                }
            }
            if targets.is_empty() {
                let who = if admins { "administrator" } else { "worker" };
                return Err(StoreError::NotFound(format!("{who} {worker} has no unexpired valid certificate")));
            }
        }
    }
    let mut out = Vec::with_capacity(targets.len());
    for (serial, worker_id, not_after) in targets {
        c.execute(
            "INSERT INTO revocations (serial, worker_id, reason, revoked_at, revoked_by, not_after) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![serial, worker_id, rev.reason.as_str(), now, rev.revoked_by, not_after],
        )?;
        c.execute("UPDATE certificates SET status = 'revoked' WHERE serial = ?1", [&serial])?;
        out.push(RevocationRecord {
            serial,
            worker_id,
            reason: rev.reason,
            revoked_at: now,
            revoked_by: rev.revoked_by.clone(),
            not_after,
        });
    }
    c.execute("UPDATE crl_state SET generation = generation + 1 WHERE id = 1", [])?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::{CertKind, CertStatus};

    fn rec(serial: &str) -> CertificateRecord {
        CertificateRecord {
            serial: serial.into(),
            worker_id: "w".into(),
            spiffe_id: "spiffe://crank.local/worker/w".into(),
            sans: vec!["w".into()],
            capabilities: vec![],
            not_before: now_rfc3339(),
            not_after: now_rfc3339(),
            fingerprint: "00".into(),
            issued_by: "test".into(),
            kind: CertKind::Issue,
            correlation_id: "req_1".into(),
            issued_at: now_rfc3339(),
            status: CertStatus::Valid,
            pem: String::new(),
        }
    }

    fn tok(jti: &str) -> TokenUse {
        TokenUse { jti: jti.into(), worker_id: "w".into(), expires_at: now_rfc3339(), request_sha256: "h".into() }
    }

    #[tokio::test]
    async fn token_single_use_and_serials_unique_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.record_issuance(Some(tok("t1")), rec("01")).await.unwrap();
            assert!(matches!(s.record_issuance(Some(tok("t1")), rec("02")).await, Err(StoreError::TokenUsed(_))));
            assert!(matches!(s.record_issuance(None, rec("01")).await, Err(StoreError::DuplicateSerial(_))));
            // The refused job left nothing behind: serial 02 is not recorded.
            assert!(s.certificate("02").await.unwrap().is_none());
        }
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.token_used("t1").await.unwrap());
        assert!(!s.token_used("t2").await.unwrap());
        assert_eq!(s.certificate_count().await.unwrap(), 1);
        assert_eq!(s.certificate("01").await.unwrap().unwrap().worker_id, "w");
    }

    #[tokio::test]
    async fn concurrent_issuances_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("ca.db")).unwrap();
        let mut handles = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.record_issuance(Some(tok(&format!("t{i}"))), rec(&format!("{i:04x}"))).await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        assert_eq!(s.certificate_count().await.unwrap(), 200);
    }

    fn entry(id: &str, worker: &str, agent: &str, selectors: &[&str], created_at: &str) -> RegistrationEntry {
        RegistrationEntry {
            id: id.into(),
            worker_id: worker.into(),
            selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
            agent_id: agent.into(),
            created_at: created_at.into(),
            created_by: "alice".into(),
        }
    }

    #[tokio::test]
    async fn entries_are_ordered_by_time_unique_and_kept_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.db");
        let (late, early, tie) = (
            entry("e1", "web", "agent-a", &["unix:uid:1"], "2026-01-01T10:00:00Z"),
            // Earlier as an instant, though later as text.
            entry("e2", "db", "agent-a", &["unix:uid:2"], "2026-01-01T11:00:00+02:00"),
            entry("e3", "web", "agent-b", &["unix:uid:1"], "2026-01-01T10:00:00Z"),
        );
        {
            let s = SqliteStore::open(&path).unwrap();
            for e in [&late, &early, &tie] {
                s.create_entry(e).await.unwrap();
            }
            // Selectors are a set: another order is the same entry.
            let e = s.create_entry(&entry("e4", "db", "agent-a", &["unix:uid:2"], "2026-01-02T00:00:00Z")).await;
            assert!(matches!(e, Err(StoreError::DuplicateEntry(ref id)) if id == "e2"), "{e:?}");
            let two = entry("e5", "web", "agent-a", &["unix:uid:1", "unix:gid:1"], "2026-01-02T00:00:00Z");
            s.create_entry(&two).await.unwrap();
            let e = s
                .create_entry(&entry("e6", "web", "agent-a", &["unix:gid:1", "unix:uid:1"], "2026-01-03T00:00:00Z"))
                .await;
            assert!(matches!(e, Err(StoreError::DuplicateEntry(ref id)) if id == "e5"), "{e:?}");
            // The same id again with other content is not a duplicate entry.
            let e = s.create_entry(&entry("e1", "mail", "agent-a", &["unix:uid:9"], "2026-01-03T00:00:00Z")).await;
            assert!(matches!(e, Err(StoreError::Database(ref m)) if m.contains("e1")), "{e:?}");
            let e = s.create_entry(&entry("e7", "mail", "agent-a", &["unix:uid:9"], "yesterday")).await;
            assert!(matches!(e, Err(StoreError::Database(ref m)) if m.contains("yesterday")), "{e:?}");
            assert!(s.delete_entry("e5").await.unwrap());
            assert!(!s.delete_entry("e5").await.unwrap());
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.entries(None).await.unwrap(), [early.clone(), late.clone(), tie.clone()]);
        assert_eq!(s.entries(Some("agent-a")).await.unwrap(), [early, late]);
        assert_eq!(s.entries(Some("agent-b")).await.unwrap(), [tie]);
        assert!(s.entries(Some("agent-c")).await.unwrap().is_empty());
    }
}

#[cfg(test)]
mod console_tests {
    //! The console's reads: every page against a plain model of the query (filter the
    //! rows, sort them by time), under budgets that force every round of [`list`]; the
    //! migration of an existing ledger; and, ignored by default, timings on 1,000,000
    //! rows.

    use std::collections::HashSet;

    use time::format_description::well_known::Rfc3339;
    use time::{Duration, UtcOffset};

    use super::*;
    use crate::store::model::{CertKind, CertStatus, RevocationReason};

    fn at(t: OffsetDateTime) -> String {
        t.format(&Rfc3339).unwrap()
    }

    fn parse(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    fn serial(i: u64) -> String {
        let bytes = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555).to_be_bytes();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
    }

    fn record(serial: String, worker: &str, issued: OffsetDateTime, not_after: OffsetDateTime) -> CertificateRecord {
        CertificateRecord {
            serial: serial.clone(),
            worker_id: worker.into(),
            spiffe_id: format!("spiffe://crank.local/worker/{worker}"),
            sans: vec![worker.into()],
            capabilities: vec![],
            not_before: at(issued),
            not_after: at(not_after),
            fingerprint: format!("fp-{serial}"),
            issued_by: "replica-a".into(),
            kind: CertKind::Issue,
            correlation_id: format!("req_{serial}"),
            issued_at: at(issued),
            status: CertStatus::Valid,
            pem: String::new(),
        }
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

    /// Every page of `q`, following the cursor.
    fn pages(c: &Connection, mut q: CertificateQuery, page: u32, budget: i64) -> Vec<CertificateRecord> {
        q.limit = page;
        let mut out = Vec::new();
        loop {
            let rows = read_snapshot(c, |c| list(c, &q, budget)).unwrap();
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

    /// A ledger with what makes ordering and filtering hard: times with fractional seconds
    /// of every width and with offsets (text order is not time order), equal instants
    /// (the serial decides), renewals, revocations, expired and expiring rows, prefixes
    /// of one another as worker ids, non-ASCII ids.
    async fn sample(s: &SqliteStore, now: OffsetDateTime) -> Vec<CertificateRecord> {
        let workers = ["alpha-1", "alpha-2", "alpha-10", "al", "beta", "ünï-1", "ünï-2", "z\u{10FFFF}", "\u{10FFFF}"];
        let offsets = [UtcOffset::UTC, UtcOffset::from_hms(2, 0, 0).unwrap(), UtcOffset::from_hms(-5, -30, 0).unwrap()];
        let mut serials = Vec::new();
        for i in 0..360u64 {
            let worker = workers[(i % workers.len() as u64) as usize];
            // Several rows share an instant; sub-second parts of every width.
            let secs = i64::try_from(i / 3).unwrap() * 600 - 40 * 86_400;
            let nanos = [0, 500_000_000, 50_000_000, 123_456_789, 1][(i % 5) as usize];
            let issued =
                (now + Duration::seconds(secs) + Duration::nanoseconds(nanos)).to_offset(offsets[(i % 3) as usize]);
            let life =
                [Duration::hours(1), Duration::hours(20), Duration::days(30), Duration::days(400)][(i % 4) as usize];
            let r = record(serial(i), worker, issued, (issued + life).replace_nanosecond(0).unwrap());
            s.record_issuance(None, r).await.unwrap();
            serials.push(serial(i));
        }
        // Renewals: every 7th row renews the one before it (a valid one only).
        for i in (7..360u64).step_by(7) {
            let prev = s.certificate(&serial(i - 1)).await.unwrap().unwrap();
            if prev.status != CertStatus::Valid {
                continue;
            }
            let issued = parse(&prev.issued_at) + Duration::seconds(1);
            let mut r = record(serial(10_000 + i), &prev.worker_id, issued, issued + Duration::hours(20));
            r.kind = CertKind::Renew;
            let renewal = Renewal { previous_serial: prev.serial.clone(), request_sha256: format!("h{i}") };
            s.record_renewal(renewal, r).await.unwrap();
            serials.push(serial(10_000 + i));
        }
        // Revocations: a few serials, and one worker's live certificates.
        for i in [5u64, 50, 51, 200, 10_000 + 14] {
            let rev = Revocation {
                target: RevokeTarget::Serial(serial(i)),
                reason: RevocationReason::KeyCompromise,
                revoked_by: "admin/alice".into(),
                at: now,
            };
            s.revoke(&rev).await.unwrap();
        }
        let rev = Revocation {
            target: RevokeTarget::Worker("beta".into()),
            reason: RevocationReason::CessationOfOperation,
            revoked_by: "admin/alice".into(),
            at: now,
        };
        s.revoke(&rev).await.unwrap();
        let mut all = Vec::new();
        for serial in serials {
            all.push(s.certificate(&serial).await.unwrap().unwrap());
        }
        all
    }

    fn searches(all: &[CertificateRecord]) -> Vec<Option<String>> {
        let mut out: Vec<Option<String>> = [
            None,
            Some(""),
            Some("al"),
            Some("alpha"),
            Some("alpha-1"),
            Some("beta"),
            Some("ü"),
            Some("ünï-"),
            Some("z"),
            Some("\u{10FFFF}"),
            Some("nobody"),
            Some("a"),
        ]
        .into_iter()
        .map(|s| s.map(str::to_owned))
        .collect();
        // Serial prefixes (one also a prefix of a worker id: "a" above).
        out.push(Some(all[0].serial[..2].to_owned()));
        out.push(Some(all[17].serial[..5].to_owned()));
        out.push(Some(all[42].serial.clone()));
        out
    }

    #[tokio::test]
    async fn pages_match_the_model_under_every_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.db");
        let s = SqliteStore::open(&path).unwrap();
        let now = OffsetDateTime::now_utc();
        let all = sample(&s, now).await;
        let c = open_conn(&path).unwrap();
        let mut checked = 0;
        for status in FILTERS {
            for search in searches(&all) {
                let q = CertificateQuery {
                    search: search.clone(),
                    status,
                    after: None,
                    limit: 0,
                    now,
                    expiring_within: Duration::days(1),
                };
                let want = expected(&all, &q);
                for (page, budget) in [(1, 2), (7, 1), (7, 5), (13, 64), (500, FIRST_SCAN)] {
                    let got = pages(&c, q.clone(), page, budget);
                    let serials = |v: &[CertificateRecord]| v.iter().map(|r| r.serial.clone()).collect::<Vec<_>>();
                    assert_eq!(
                        serials(&got),
                        serials(&want),
                        "{status:?} search {search:?}, pages of {page}, budget {budget}"
                    );
                    assert_eq!(got, want);
                    checked += got.len();
                }
            }
        }
        assert!(checked > 10_000, "the sample exercises the filters ({checked} rows checked)");
        // Through the store, too.
        let q = CertificateQuery {
            search: None,
            status: StatusFilter::All,
            after: None,
            limit: 50,
            now,
            expiring_within: Duration::days(1),
        };
        assert_eq!(s.list_certificates(&q).await.unwrap(), expected(&all, &q)[..50]);
    }

    #[tokio::test]
    async fn counts_match_the_filters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.db");
        let s = SqliteStore::open(&path).unwrap();
        let now = OffsetDateTime::now_utc();
        let all = sample(&s, now).await;
        // Refused writes (rolled back to their savepoint) leave the tally alone.
        let e = s.record_issuance(None, all[0].clone()).await.unwrap_err();
        assert!(matches!(e, StoreError::DuplicateSerial(_)), "{e}");
        let retired = all.iter().find(|r| r.status == CertStatus::Superseded).unwrap();
        let renewal = Renewal { previous_serial: retired.serial.clone(), request_sha256: "h".into() };
        let e = s.record_renewal(renewal, record("ee:ee".into(), "w", now, now)).await.unwrap_err();
        assert!(matches!(e, StoreError::Superseded(_)), "{e}");
        let c = open_conn(&path).unwrap();
        let by_status = |sql: &str| {
            let mut stmt = c.prepare(sql).unwrap();
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        assert_eq!(
            by_status("SELECT status, n FROM certificate_tally WHERE n > 0 ORDER BY status"),
            by_status("SELECT status, count(*) FROM certificates GROUP BY status ORDER BY status")
        );
        for within in [Duration::ZERO, Duration::hours(1), Duration::days(1), Duration::days(90), Duration::MAX] {
            let n = |status| {
                let q = CertificateQuery { search: None, status, after: None, limit: 0, now, expiring_within: within };
                expected(&all, &q).len() as u64
            };
            let counts = s.certificate_counts(now, within).await.unwrap();
            let want = CertificateCounts {
                total: all.len() as u64,
                valid: n(StatusFilter::Valid),
                expiring: n(StatusFilter::Expiring),
                revoked: n(StatusFilter::Revoked),
                expired: n(StatusFilter::Expired),
            };
            assert_eq!(counts, want, "expiring within {within}");
            assert!(want.valid > 0 && want.revoked > 0 && want.expired > 0, "{want:?}");
        }
    }

    #[tokio::test]
    async fn limits_and_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("ca.db")).unwrap();
        let now = OffsetDateTime::now_utc();
        for i in 0..620u64 {
            let issued = now - Duration::seconds(i64::try_from(i).unwrap());
            s.record_issuance(None, record(serial(i), "w", issued, issued + Duration::hours(1))).await.unwrap();
        }
        let mut q = CertificateQuery {
            search: None,
            status: StatusFilter::All,
            after: None,
            limit: 10_000,
            now,
            expiring_within: Duration::days(1),
        };
        assert_eq!(s.list_certificates(&q).await.unwrap().len(), MAX_PAGE as usize);
        q.search = Some("w".into());
        assert_eq!(s.list_certificates(&q).await.unwrap().len(), MAX_PAGE as usize);
        q.limit = 0;
        assert!(s.list_certificates(&q).await.unwrap().is_empty());
        q.limit = 5;
        q.search = Some("w\0".into());
        assert!(s.list_certificates(&q).await.unwrap().is_empty());
        q.search = None;
        q.after = Some(("yesterday".into(), "01".into()));
        let e = s.list_certificates(&q).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidQuery(ref m) if m.contains("yesterday")), "{e}");
        // A cursor past the oldest row: nothing more.
        q.after = Some((at(now - Duration::days(1)), String::new()));
        assert!(s.list_certificates(&q).await.unwrap().is_empty());
        // A cursor in another offset than the row's: the same instant.
        let first = s.list_certificates(&CertificateQuery { after: None, ..q.clone() }).await.unwrap();
        let shifted = parse(&first[1].issued_at).to_offset(UtcOffset::from_hms(9, 0, 0).unwrap());
        q.after = Some((at(shifted), first[1].serial.clone()));
        assert_eq!(s.list_certificates(&q).await.unwrap()[0], first[2]);
    }

    #[tokio::test]
    async fn history_and_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("ca.db")).unwrap();
        let now = OffsetDateTime::now_utc();
        s.record_issuance(None, record("01".into(), "w", now, now + Duration::hours(1))).await.unwrap();
        let mut renewed = record("02".into(), "w", now + Duration::seconds(1), now + Duration::hours(2));
        renewed.kind = CertKind::Renew;
        s.record_renewal(Renewal { previous_serial: "01".into(), request_sha256: "h".into() }, renewed).await.unwrap();
        let rev = Revocation {
            target: RevokeTarget::Serial("02".into()),
            reason: RevocationReason::KeyCompromise,
            revoked_by: "admin/alice".into(),
            at: now,
        };
        s.revoke(&rev).await.unwrap();
        let h1 = s.certificate_history("01").await.unwrap().unwrap();
        assert_eq!((h1.renewed_from, h1.superseded_by.as_deref()), (None, Some("02")));
        assert_eq!(h1.record.status, CertStatus::Superseded);
        assert!(h1.revocation.is_none());
        let h2 = s.certificate_history("02").await.unwrap().unwrap();
        assert_eq!((h2.renewed_from.as_deref(), h2.superseded_by), (Some("01"), None));
        assert_eq!(h2.revocation.unwrap().reason, RevocationReason::KeyCompromise);
        assert!(s.certificate_history("03").await.unwrap().is_none());

        // Join-token keys: published once, the first certificate kept.
        assert_eq!(s.token_key("k1").await.unwrap(), None);
        s.publish_token_key("k1", "first").await.unwrap();
        s.publish_token_key("k1", "second").await.unwrap();
        assert_eq!(s.token_key("k1").await.unwrap().as_deref(), Some("first"));

        assert!(s.replicas().await.unwrap().is_empty());
        let t = |secs| OffsetDateTime::from_unix_timestamp(secs).unwrap();
        s.replica_heartbeat("b", "10.0.0.2:8443", t(100)).await.unwrap();
        s.replica_heartbeat("a", "10.0.0.1:8443", t(105)).await.unwrap();
        s.replica_heartbeat("b", "10.0.0.3:8443", t(110)).await.unwrap();
        // A late heartbeat moves neither last_seen nor the address back.
        s.replica_heartbeat("b", "10.0.0.9:8443", t(90)).await.unwrap();
        let r = |name: &str, address: &str, first_seen, last_seen| ReplicaRecord {
            name: name.into(),
            address: address.into(),
            first_seen,
            last_seen,
        };
        assert_eq!(s.replicas().await.unwrap(), [r("a", "10.0.0.1:8443", 105, 105), r("b", "10.0.0.3:8443", 90, 110)]);
    }

    /// A ledger written by the previous schema (version 4) gets its integer times at
    /// migration, and lists and counts right.
    #[tokio::test]
    async fn an_existing_ledger_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.db");
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let mut all = Vec::new();
        {
            let c = open_conn(&path).unwrap();
            for sql in &MIGRATIONS[..4] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            for i in 0..40u64 {
                let issued = (now - Duration::minutes(i64::try_from(i).unwrap()) + Duration::nanoseconds(i as i64 * 7))
                    .to_offset(UtcOffset::from_hms(if i % 2 == 0 { 0 } else { 3 }, 0, 0).unwrap());
                let r =
                    record(serial(i), if i % 3 == 0 { "old" } else { "new" }, issued, issued + Duration::minutes(15));
                c.execute(
                    "INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after,
                         fingerprint, issued_by, kind, correlation_id, issued_at, status, pem)
                     VALUES (?1, ?2, ?3, '[]', '[]', ?4, ?5, ?6, ?7, 'issue', ?8, ?9, 'valid', '')",
                    params![
                        r.serial,
                        r.worker_id,
                        r.spiffe_id,
                        r.not_before,
                        r.not_after,
                        r.fingerprint,
                        r.issued_by,
                        r.correlation_id,
                        r.issued_at
                    ],
                )
                .unwrap();
                all.push(CertificateRecord { sans: vec![], ..r });
            }
            c.execute(
                "INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after,
                     fingerprint, issued_by, kind, correlation_id, issued_at, status, pem)
                 VALUES ('ff', 'broken', '', '[]', '[]', '', 'never', '', '', 'issue', '', 'sometime', 'valid', '')",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let q = CertificateQuery {
            search: None,
            status: StatusFilter::All,
            after: None,
            limit: 100,
            now,
            expiring_within: Duration::minutes(10),
        };
        let got = s.list_certificates(&q).await.unwrap();
        // The row whose times do not parse lists last.
        assert_eq!(got.last().unwrap().serial, "ff");
        assert_eq!(got[..got.len() - 1], expected(&all, &q));
        for status in FILTERS {
            let q = CertificateQuery { status, search: Some("new".into()), ..q.clone() };
            assert_eq!(s.list_certificates(&q).await.unwrap(), expected(&all, &q), "{status:?}");
        }
        let counts = s.certificate_counts(now, Duration::minutes(10)).await.unwrap();
        let expired = expected(&all, &CertificateQuery { status: StatusFilter::Expired, ..q.clone() }).len() as u64;
        // The row whose times do not parse counts as expired.
        assert_eq!((counts.total, counts.expired), (41, expired + 1));
        assert_eq!(expired, 24);
        let served: HashSet<String> = got.iter().map(|r| r.serial.clone()).collect();
        assert_eq!(served.len(), 41);
    }
}
