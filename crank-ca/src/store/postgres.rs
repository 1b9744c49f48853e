//! The PostgreSQL store, for several CA replicas sharing one ledger.
//!
//! Each change is one transaction on a pooled connection; PostgreSQL's own group
//! commit (with the default `synchronous_commit = on`) makes it durable before the
//! call returns. Uniqueness (serials, token ids) is enforced by primary keys, so two
//! replicas can never both record the same serial or both accept the same token.
//! Migrations run under an advisory lock, so replicas starting together apply each
//! one exactly once.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use time::OffsetDateTime;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crank_security_core::rfc3339;

use super::model::{
    CaStore, CertificateRecord, Renewal, Revocation, RevocationRecord, RevokeTarget, StoreError, TokenUse,
    parse_rfc3339, redact,
};

/// Versioned schema migrations; `crank_schema.version` holds how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: ledger, used tokens, revocations, CRL counters
    "CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL,
        spiffe_id TEXT NOT NULL,
        sans JSONB NOT NULL,
        capabilities JSONB NOT NULL,
        not_before TIMESTAMPTZ NOT NULL,
        not_after TIMESTAMPTZ NOT NULL,
        fingerprint TEXT NOT NULL,
        issued_by TEXT NOT NULL,
        kind TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        issued_at TIMESTAMPTZ NOT NULL,
        status TEXT NOT NULL DEFAULT 'valid',
        pem TEXT NOT NULL
    );
    CREATE INDEX certificates_worker ON certificates(worker_id);
    CREATE TABLE used_tokens (
        jti TEXT PRIMARY KEY,
        worker_id TEXT NOT NULL,
        used_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        serial TEXT NOT NULL,
        request_sha256 TEXT NOT NULL
    );
    CREATE TABLE revocations (
        serial TEXT PRIMARY KEY REFERENCES certificates(serial),
        worker_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        revoked_at BIGINT NOT NULL,
        revoked_by TEXT NOT NULL,
        not_after BIGINT NOT NULL
    );
    CREATE INDEX revocations_not_after ON revocations(not_after);
    CREATE TABLE crl_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        generation BIGINT NOT NULL,
        crl_number BIGINT NOT NULL
    );
    INSERT INTO crl_state (id, generation, crl_number) VALUES (1, 0, 0);",
    // 2: renewal retires the certificate it replaces
    "ALTER TABLE certificates ADD COLUMN superseded_by TEXT;
    ALTER TABLE certificates ADD COLUMN renewal_sha256 TEXT;",
];

/// Key of the advisory lock that serialises migrations between replicas.
const MIGRATION_LOCK: i64 = 0x0063_7261_6e6b;
/// Connections per replica.
const POOL_SIZE: usize = 16;
/// How long to wait for a connection (to connect, or for a free pooled one).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    url: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("url", &self.url).finish()
    }
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

fn pg(e: &tokio_postgres::Error) -> StoreError {
    // The server's message (with its code) is more useful than "db error".
    match e.as_db_error() {
        Some(d) => StoreError::Database(format!("PostgreSQL: {} ({})", d.message(), d.code().code())),
        None => StoreError::Database(format!("PostgreSQL: {e}")),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        pg(&e)
    }
}

impl PostgresStore {
    /// Connects to `url` and applies pending migrations. The URL's password never
    /// appears in errors or logs.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let shown = redact(url);
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Database(format!("store URL {shown} is not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("crank-ca");
        }
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Database(format!("PostgreSQL pool for {shown}: {e}")))?;
        let store = Self { pool, url: shown };
        store.migrate().await?;
        Ok(store)
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => pg(&e),
            other => StoreError::Database(format!("PostgreSQL at {} is unreachable: {other}", self.url)),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS crank_schema (version INTEGER NOT NULL)").await?;
        let version: i32 = match tx.query_opt("SELECT version FROM crank_schema", &[]).await? {
            Some(row) => row.get(0),
            None => {
                tx.execute("INSERT INTO crank_schema (version) VALUES (0)", &[]).await?;
                0
            }
        };
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(StoreError::Database(format!(
                "the store is at schema version {version}, newer than this build knows ({}); upgrade crank",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.batch_execute(sql).await?;
            let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute("UPDATE crank_schema SET version = $1", &[&v]).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn ts(what: &str, s: &str) -> Result<OffsetDateTime, StoreError> {
    parse_rfc3339(what, s)
}

fn json_list(v: &[String]) -> serde_json::Value {
    serde_json::Value::Array(v.iter().cloned().map(serde_json::Value::String).collect())
}

fn from_json_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

const CERT_COLUMNS: &str = "serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after, fingerprint, \
     issued_by, kind, correlation_id, issued_at, status, pem";

fn cert_row(r: &tokio_postgres::Row) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        serial: r.get(0),
        worker_id: r.get(1),
        spiffe_id: r.get(2),
        sans: from_json_list(&r.get(3)),
        capabilities: from_json_list(&r.get(4)),
        not_before: rfc3339(r.get(5)),
        not_after: rfc3339(r.get(6)),
        fingerprint: r.get(7),
        issued_by: r.get(8),
        kind: r.get::<_, String>(9).parse()?,
        correlation_id: r.get(10),
        issued_at: rfc3339(r.get(11)),
        status: r.get::<_, String>(12).parse()?,
        pem: r.get(13),
    })
}

fn revocation(row: &tokio_postgres::Row) -> Result<RevocationRecord, StoreError> {
    let serial: String = row.get(0);
    let reason: String = row.get(2);
    Ok(RevocationRecord {
        reason: reason.parse().map_err(|e| StoreError::Database(format!("revocation of {serial}: {e}")))?,
        worker_id: row.get(1),
        revoked_at: row.get(3),
        revoked_by: row.get(4),
        not_after: row.get(5),
        serial,
    })
}

impl PostgresStore {
    /// Records a certificate with what authorised it (a join token, or the certificate a
    /// renewal retires) in one transaction.
    async fn record(
        &self,
        token: Option<TokenUse>,
        renewal: Option<Renewal>,
        cert: CertificateRecord,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = OffsetDateTime::now_utc();
        if let Some(r) = &renewal {
            let n = tx
                .execute(
                    "UPDATE certificates SET status = 'superseded', superseded_by = $1, renewal_sha256 = $2
                     WHERE serial = $3 AND status = 'valid'",
                    &[&cert.serial, &r.request_sha256, &r.previous_serial],
                )
                .await?;
            if n == 0 {
                return Err(StoreError::Superseded(r.previous_serial.clone()));
            }
        }
        if let Some(t) = &token {
            let expires = ts("token expiry", &t.expires_at)?;
            let n = tx
                .execute(
                    "INSERT INTO used_tokens (jti, worker_id, used_at, expires_at, serial, request_sha256)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (jti) DO NOTHING",
                    &[&t.jti, &t.worker_id, &now, &expires, &cert.serial, &t.request_sha256],
                )
                .await?;
            if n == 0 {
                return Err(StoreError::TokenUsed(t.jti.clone()));
            }
        }
        let c = &cert;
        let res = tx
            .execute(
                "INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after,
                     fingerprint, issued_by, kind, correlation_id, issued_at, status, pem)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                &[
                    &c.serial,
                    &c.worker_id,
                    &c.spiffe_id,
                    &json_list(&c.sans),
                    &json_list(&c.capabilities),
                    &ts("not_before", &c.not_before)?,
                    &ts("not_after", &c.not_after)?,
                    &c.fingerprint,
                    &c.issued_by,
                    &c.kind.as_str(),
                    &c.correlation_id,
                    &ts("issued_at", &c.issued_at)?,
                    &c.status.as_str(),
                    &c.pem,
                ],
            )
            .await;
        match res {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(StoreError::DuplicateSerial(c.serial.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        // A token raced in by another replica between our insert and commit shows up
        // as a unique violation at commit time; anything else is a database failure.
        tx.commit().await.map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                token.map_or_else(|| StoreError::DuplicateSerial(c.serial.clone()), |t| StoreError::TokenUsed(t.jti))
            } else {
                pg(&e)
            }
        })
    }
}

#[async_trait]
impl CaStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn record_issuance(&self, token: Option<TokenUse>, cert: CertificateRecord) -> Result<(), StoreError> {
        self.record(token, None, cert).await
    }

    async fn record_renewal(&self, renewal: Renewal, cert: CertificateRecord) -> Result<(), StoreError> {
        self.record(None, Some(renewal), cert).await
    }

    async fn renewal_of(&self, previous_serial: &str) -> Result<Option<(String, CertificateRecord)>, StoreError> {
        let client = self.client().await?;
        let Some(t) = client
            .query_opt(
                "SELECT superseded_by, renewal_sha256 FROM certificates WHERE serial = $1 AND superseded_by IS NOT NULL",
                &[&previous_serial],
            )
            .await?
        else {
            return Ok(None);
        };
        let (serial, hash): (String, String) = (t.get(0), t.get(1));
        let stmt = client.prepare_cached(&format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1")).await?;
        Ok(client.query_opt(&stmt, &[&serial]).await?.as_ref().map(cert_row).transpose()?.map(|r| (hash, r)))
    }

    async fn token_used(&self, jti: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("SELECT 1 FROM used_tokens WHERE jti = $1").await?;
        Ok(client.query_opt(&stmt, &[&jti]).await?.is_some())
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1")).await?;
        client.query_opt(&stmt, &[&serial]).await?.as_ref().map(cert_row).transpose()
    }

    async fn issued_with_token(&self, jti: &str) -> Result<Option<(String, CertificateRecord)>, StoreError> {
        let client = self.client().await?;
        let Some(t) =
            client.query_opt("SELECT serial, request_sha256 FROM used_tokens WHERE jti = $1", &[&jti]).await?
        else {
            return Ok(None);
        };
        let (serial, hash): (String, String) = (t.get(0), t.get(1));
        let stmt = client.prepare_cached(&format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1")).await?;
        Ok(client.query_opt(&stmt, &[&serial]).await?.as_ref().map(cert_row).transpose()?.map(|r| (hash, r)))
    }

    async fn certificate_count(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client.query_one("SELECT COUNT(*) FROM certificates", &[]).await?.get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn latest_expiry_issued_before(&self, before: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT max(not_after) FROM certificates WHERE issued_at < $1", &[&before]).await?;
        Ok(row.get(0))
    }

    async fn revoke(&self, rev: &Revocation) -> Result<Vec<RevocationRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = rev.at.unix_timestamp();
        let mut targets: Vec<(String, String, i64)> = Vec::new();
        match &rev.target {
            RevokeTarget::Serial(serial) => {
                let row = tx
                    .query_opt(
                        "SELECT worker_id, not_after, status FROM certificates WHERE serial = $1 FOR UPDATE",
                        &[serial],
                    )
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound(format!("no certificate with serial {serial} in the ledger")));
                };
                let status: String = row.get(2);
                if status == "revoked"
                    && let Some(existing) = tx
                        .query_opt(
                            "SELECT serial, worker_id, reason, revoked_at, revoked_by, not_after
                             FROM revocations WHERE serial = $1",
                            &[serial],
                        )
                        .await?
                {
                    return Ok(vec![revocation(&existing)?]);
                }
                let not_after: OffsetDateTime = row.get(1);
                targets.push((serial.clone(), row.get(0), not_after.unix_timestamp()));
            }
            RevokeTarget::Worker(worker) | RevokeTarget::Admin(worker) => {
                // A superseded certificate still works in handshakes until it expires.
                let admins = matches!(rev.target, RevokeTarget::Admin(_));
                let rows = tx
                    .query(
                        "SELECT serial, not_after FROM certificates
                         WHERE worker_id = $1 AND status IN ('valid', 'superseded') AND not_after > $2
                           AND (kind = 'admin') = $3 FOR UPDATE",
                        &[worker, &rev.at, &admins],
                    )
                    .await?;
                if rows.is_empty() {
                    let who = if admins { "administrator" } else { "worker" };
                    return Err(StoreError::NotFound(format!("{who} {worker} has no unexpired valid certificate")));
                }
                for row in rows {
                    let not_after: OffsetDateTime = row.get(1);
                    targets.push((row.get(0), worker.clone(), not_after.unix_timestamp()));
                }
            }
        }
        let mut out = Vec::with_capacity(targets.len());
        for (serial, worker_id, not_after) in targets {
            tx.execute(
                "INSERT INTO revocations (serial, worker_id, reason, revoked_at, revoked_by, not_after)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&serial, &worker_id, &rev.reason.as_str(), &now, &rev.revoked_by, &not_after],
            )
            .await?;
            tx.execute("UPDATE certificates SET status = 'revoked' WHERE serial = $1", &[&serial]).await?;
            out.push(RevocationRecord {
                serial,
                worker_id,
                reason: rev.reason,
                revoked_at: now,
                revoked_by: rev.revoked_by.clone(),
                not_after,
            });
        }
        tx.execute("UPDATE crl_state SET generation = generation + 1 WHERE id = 1", &[]).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn revoked_unexpired(&self, now: OffsetDateTime) -> Result<Vec<RevocationRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT serial, worker_id, reason, revoked_at, revoked_by, not_after FROM revocations
                 WHERE not_after > $1 ORDER BY revoked_at, serial",
                &[&now.unix_timestamp()],
            )
            .await?;
        rows.iter().map(revocation).collect()
    }

    async fn revocation_generation(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let g: i64 = client.query_one("SELECT generation FROM crl_state WHERE id = 1", &[]).await?.get(0);
        Ok(u64::try_from(g).unwrap_or(0))
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one("UPDATE crl_state SET crl_number = crl_number + 1 WHERE id = 1 RETURNING crl_number", &[])
            .await?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        tokio::time::timeout(CONNECT_TIMEOUT, client.simple_query("SELECT 1"))
            .await
            .map_err(|_| db(format!("PostgreSQL at {} did not answer within {CONNECT_TIMEOUT:?}", self.url)))??;
        Ok(())
    }
}
