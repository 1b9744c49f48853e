//! Durable CA state: the ledger of issued certificates and the set of used join tokens.
//!
//! The embedded default is SQLite in WAL mode with `synchronous=FULL`: a commit is on
//! disk before it returns. Writes go through one writer thread that commits whatever
//! requests are waiting as one transaction (group commit), so many concurrent issuances
//! share one fsync while each still returns only after its own row is durable.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::oneshot;

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
];

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRecord {
    /// Serial, hex with `:`.
    pub serial: String,
    /// Worker id.
    pub worker_id: String,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// All SANs (JSON array text).
    pub sans: Vec<String>,
    /// Capabilities the certificate was issued under (carried over on renewal).
    pub capabilities: Vec<String>,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// Which CA replica issued it.
    pub issued_by: String,
    /// `issue` or `renew`.
    pub kind: String,
    /// Correlation id of the issuance.
    pub correlation_id: String,
    /// When it was recorded, RFC 3339.
    pub issued_at: String,
    /// `valid` (or `revoked`).
    pub status: String,
}

/// A used join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    /// Token id.
    pub jti: String,
    /// Worker it was bound to.
    pub worker_id: String,
    /// Token expiry, RFC 3339.
    pub expires_at: String,
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The join token was already used.
    #[error("join token {0} was already used")]
    TokenUsed(String),
    /// A certificate with this serial is already recorded.
    #[error("serial {0} is already recorded")]
    DuplicateSerial(String),
    /// The database failed.
    #[error("CA store error: {0}")]
    Database(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e.to_string())
    }
}

/// Durable CA state. Every method returns only after its change is durable.
#[async_trait]
pub trait CaStore: Debug + Send + Sync {
    /// Records an issued certificate, consuming `token` first when given, atomically:
    /// either both are recorded or neither.
    async fn record_issuance(&self, token: Option<TokenUse>, cert: CertificateRecord) -> Result<(), StoreError>;
    /// Whether a token id has been used.
    async fn token_used(&self, jti: &str) -> Result<bool, StoreError>;
    /// The ledger row of a serial.
    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError>;
    /// Number of ledger rows.
    async fn certificate_count(&self) -> Result<u64, StoreError>;
    /// The latest `not_after` among certificates issued before `before`.
    async fn latest_expiry_issued_before(
        &self,
        before: time::OffsetDateTime,
    ) -> Result<Option<time::OffsetDateTime>, StoreError>;
}

struct Job {
    token: Option<TokenUse>,
    cert: CertificateRecord,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
}

impl Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("serial", &self.cert.serial).finish()
    }
}

/// Largest number of issuances committed in one transaction.
const MAX_BATCH: usize = 512;

impl SqliteStore {
    /// Opens (creating and migrating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open_conn(path)?;
        migrate(&conn)?;
        let reader = open_conn(path)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("crank-ledger-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Database(format!("starting the writer thread: {e}")))?;
        Ok(Self { path: path.to_path_buf(), writer: tx, reader: Arc::new(Mutex::new(reader)) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<T: Send + 'static>(
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
/// job (used token, duplicate serial) does not undo the others.
fn commit_batch(conn: &mut Connection, batch: &[Job]) -> Result<Vec<Result<(), StoreError>>, rusqlite::Error> {
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let sp = tx.savepoint()?;
        let r = insert_job(&sp, job);
        if r.is_ok() {
            sp.commit()?;
        } else {
            drop(sp); // rolls back this job only
        }
        results.push(r);
    }
    tx.commit()?;
    Ok(results)
}

fn insert_job(conn: &Connection, job: &Job) -> Result<(), StoreError> {
    let now = now_rfc3339();
    if let Some(t) = &job.token {
        let n = conn.execute(
            "INSERT INTO used_tokens (jti, worker_id, used_at, expires_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(jti) DO NOTHING",
            params![t.jti, t.worker_id, now, t.expires_at],
        )?;
        if n == 0 {
            return Err(StoreError::TokenUsed(t.jti.clone()));
        }
    }
    let c = &job.cert;
    let res = conn.execute(
        "INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after, fingerprint, issued_by, kind, correlation_id, issued_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            c.serial,
            c.worker_id,
            c.spiffe_id,
            serde_json::to_string(&c.sans).unwrap_or_default(),
            serde_json::to_string(&c.capabilities).unwrap_or_default(),
            c.not_before,
            c.not_after,
            c.fingerprint,
            c.issued_by,
            c.kind,
            c.correlation_id,
            c.issued_at,
            c.status
        ],
    );
    match res {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            Err(StoreError::DuplicateSerial(c.serial.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[async_trait]
impl CaStore for SqliteStore {
    async fn record_issuance(&self, token: Option<TokenUse>, cert: CertificateRecord) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job { token, cert, reply })
            .map_err(|_| StoreError::Database("the ledger writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Database("the ledger writer dropped the request".into()))?
    }

    async fn token_used(&self, jti: &str) -> Result<bool, StoreError> {
        let jti = jti.to_owned();
        self.read(move |c| {
            Ok(c.query_row("SELECT 1 FROM used_tokens WHERE jti = ?1", [jti], |_| Ok(())).optional()?.is_some())
        })
        .await
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let serial = serial.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after, fingerprint, issued_by, kind, correlation_id, issued_at, status FROM certificates WHERE serial = ?1",
                [serial],
                |r| {
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
                        kind: r.get(9)?,
                        correlation_id: r.get(10)?,
                        issued_at: r.get(11)?,
                        status: r.get(12)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn latest_expiry_issued_before(
        &self,
        before: time::OffsetDateTime,
    ) -> Result<Option<time::OffsetDateTime>, StoreError> {
        self.read(move |c| {
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
        self.read(|c| {
            Ok(c.query_row("SELECT COUNT(*) FROM certificates", [], |r| r.get::<_, i64>(0))?.try_into().unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            kind: "issue".into(),
            correlation_id: "req_1".into(),
            issued_at: now_rfc3339(),
            status: "valid".into(),
        }
    }

    fn tok(jti: &str) -> TokenUse {
        TokenUse { jti: jti.into(), worker_id: "w".into(), expires_at: now_rfc3339() }
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
