//! The embedded store: SQLite in WAL mode with `synchronous=FULL`: a commit is on
//! disk before it returns. Writes go through one writer thread that commits whatever
//! requests are waiting as one transaction (group commit), so many concurrent issuances
//! share one fsync while each still returns only after its own row is durable.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::model::{
    CaStore, CertificateRecord, Renewal, Revocation, RevocationRecord, RevokeTarget, StoreError, TokenUse, now_rfc3339,
    parse_rfc3339,
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
        tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(i64::MAX))?;
        tx.commit()?;
    }
    Ok(())
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
            "INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after, fingerprint, issued_by, kind, correlation_id, issued_at, status, pem)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
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
            c.pem
        ]);
    match res {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            Err(StoreError::DuplicateSerial(c.serial.clone()))
        }
        Err(e) => Err(e.into()),
    }
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
}
