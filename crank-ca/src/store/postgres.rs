//! The PostgreSQL store, for several CA replicas sharing one ledger.
//!
//! Each change is one transaction on a pooled connection; PostgreSQL's own group
//! commit (with the default `synchronous_commit = on`) makes it durable before the
//! call returns. Uniqueness (serials, token ids) is enforced by primary keys, so two
//! replicas can never both record the same serial or both accept the same token.
//! Migrations run under an advisory lock, so replicas starting together apply each
//! one exactly once.

use std::fmt::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use time::OffsetDateTime;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crank_security_core::rfc3339;

use super::model::{
    CaStore, CertificateCounts, CertificateHistory, CertificateQuery, CertificateRecord, MAX_PAGE, RegistrationEntry,
    Renewal, ReplicaRecord, Revocation, RevocationRecord, RevokeTarget, StatusFilter, StoreError, TokenUse,
    expiring_until, parse_rfc3339, query_cursor, redact, search_range, selectors_from_key, selectors_key,
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
    // 3: the operator console: the ledger newest first (all rows; by status), with the
    // status and expiry beside the order for filtered walks; status by expiry (the
    // counts, and the valid, expiring or expired rows when they are few); prefix
    // searches of worker ids and serials; a certificate's predecessor; the replicas'
    // heartbeats. Text is ordered and ranged in byte order (the "C" collation) whatever
    // the database's collation, as in SQLite, so that both stores page alike.
    "CREATE INDEX certificates_issued ON certificates (issued_at, serial COLLATE \"C\") INCLUDE (status, not_after);
    CREATE INDEX certificates_status_issued ON certificates (status, issued_at, serial COLLATE \"C\") INCLUDE (not_after);
    CREATE INDEX certificates_status_not_after ON certificates (status, not_after);
    CREATE INDEX certificates_worker_prefix ON certificates (worker_id COLLATE \"C\");
    CREATE INDEX certificates_serial_prefix ON certificates (serial COLLATE \"C\");
    CREATE INDEX certificates_superseded_by ON certificates (superseded_by) WHERE superseded_by IS NOT NULL;
    CREATE TABLE replicas (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL
    );",
    // 4: the join-token keys' certificates, by key id, so that every replica accepts the
    // tokens any of them signs after a rotation.
    "CREATE TABLE token_keys (kid TEXT PRIMARY KEY, certificate TEXT NOT NULL, published_at BIGINT NOT NULL);",
    // 5: registration entries: which agent may obtain certificates for which worker id,
    // for processes matching which selectors (the JSON array text of the sorted list).
    // `seq` breaks ties of `created_at` in the order the entries were recorded.
    "CREATE TABLE registration_entries (
        id TEXT PRIMARY KEY,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        worker_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        created_by TEXT NOT NULL,
        CONSTRAINT registration_entries_unique UNIQUE (worker_id, agent_id, selectors)
    );
    CREATE INDEX registration_entries_agent ON registration_entries (agent_id, created_at, seq);",
    // 6: the JWT-SVID keys' certificates, by key id, so that every replica's JWT bundle
    // holds the keys any of them signs with.
    "CREATE TABLE jwt_keys (kid TEXT PRIMARY KEY, certificate TEXT NOT NULL, published_at BIGINT NOT NULL);",
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
    /// Publishes a rotated key's certificate in `table` (`token_keys` or `jwt_keys`),
    /// keeping the first one published under `kid`.
    async fn publish_key(&self, table: &'static str, kid: &str, certificate_pem: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let at = OffsetDateTime::now_utc().unix_timestamp();
        let sql = format!(
            "INSERT INTO {table} (kid, certificate, published_at) VALUES ($1, $2, $3) ON CONFLICT (kid) DO NOTHING"
        );
        client.execute(sql.as_str(), &[&kid, &certificate_pem, &at]).await?;
        Ok(())
    }

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

/// A `registration_entries` row (id, worker_id, agent_id, selectors, created_at,
/// created_by).
fn entry_from_row(r: &tokio_postgres::Row) -> Result<RegistrationEntry, StoreError> {
    let id: String = r.get(0);
    Ok(RegistrationEntry {
        selectors: selectors_from_key(&id, r.get(3))?,
        id,
        worker_id: r.get(1),
        agent_id: r.get(2),
        created_at: rfc3339(r.get(4)),
        created_by: r.get(5),
    })
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

    async fn list_certificates(&self, query: &CertificateQuery) -> Result<Vec<CertificateRecord>, StoreError> {
        let limit = usize::try_from(query.limit.min(MAX_PAGE)).unwrap_or(0);
        // No worker id or serial holds a NUL (PostgreSQL cannot store one).
        if limit == 0 || query.search.as_deref().is_some_and(|s| s.contains('\0')) {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let rows = list(&tx, query, limit).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn certificate_counts(
        &self,
        now: OffsetDateTime,
        expiring_within: time::Duration,
    ) -> Result<CertificateCounts, StoreError> {
        let client = self.client().await?;
        let until = expiring_until(now, expiring_within);
        // One statement: one snapshot. All but the total are ranges of
        // `certificates_status_not_after`; "expired" is what remains of the total once the
        // revoked and the unexpired (valid or superseded) are taken away.
        let r = client
            .query_one(
                "SELECT (SELECT count(*) FROM certificates),
                        (SELECT count(*) FROM certificates WHERE status = 'revoked'),
                        (SELECT count(*) FROM certificates WHERE status = 'valid' AND not_after >= $1),
                        (SELECT count(*) FROM certificates WHERE status = 'valid' AND not_after >= $1 AND not_after <= $2),
                        (SELECT count(*) FROM certificates WHERE status = 'superseded' AND not_after >= $1)",
                &[&now, &until],
            )
            .await?;
        let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
        let (total, revoked, valid, expiring, live_superseded) = (n(0), n(1), n(2), n(3), n(4));
        let expired = total.saturating_sub(revoked).saturating_sub(valid).saturating_sub(live_superseded);
        Ok(CertificateCounts { total, valid, expiring, revoked, expired })
    }

    async fn certificate_history(&self, serial: &str) -> Result<Option<CertificateHistory>, StoreError> {
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let Some(row) = tx
            .query_opt(&format!("SELECT {CERT_COLUMNS}, superseded_by FROM certificates WHERE serial = $1"), &[&serial])
            .await?
        else {
            return Ok(None);
        };
        let record = cert_row(&row)?;
        let superseded_by: Option<String> = row.get(14);
        let renewed_from = tx
            .query_opt(
                "SELECT serial FROM certificates WHERE superseded_by = $1 ORDER BY serial COLLATE \"C\" LIMIT 1",
                &[&serial],
            )
            .await?
            .map(|r| r.get::<_, String>(0));
        let revocation = tx
            .query_opt(
                "SELECT serial, worker_id, reason, revoked_at, revoked_by, not_after FROM revocations WHERE serial = $1",
                &[&serial],
            )
            .await?
            .map(|r| revocation(&r))
            .transpose()?;
        tx.commit().await?;
        Ok(Some(CertificateHistory { record, renewed_from, superseded_by, revocation }))
    }

    async fn replica_heartbeat(&self, replica: &str, address: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO replicas (name, address, first_seen, last_seen) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (name) DO UPDATE SET
                     address = CASE WHEN EXCLUDED.last_seen >= replicas.last_seen
                                    THEN EXCLUDED.address ELSE replicas.address END,
                     first_seen = LEAST(replicas.first_seen, EXCLUDED.first_seen),
                     last_seen = GREATEST(replicas.last_seen, EXCLUDED.last_seen)",
                &[&replica, &address, &at.unix_timestamp()],
            )
            .await?;
        Ok(())
    }

    async fn publish_token_key(&self, kid: &str, certificate_pem: &str) -> Result<(), StoreError> {
        self.publish_key("token_keys", kid, certificate_pem).await
    }

    async fn token_key(&self, kid: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT certificate FROM token_keys WHERE kid = $1", &[&kid]).await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn publish_jwt_key(&self, kid: &str, certificate_pem: &str) -> Result<(), StoreError> {
        self.publish_key("jwt_keys", kid, certificate_pem).await
    }

    async fn jwt_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT kid, certificate FROM jwt_keys ORDER BY published_at, kid", &[]).await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn create_entry(&self, e: &RegistrationEntry) -> Result<(), StoreError> {
        let client = self.client().await?;
        let created_at = ts("created_at", &e.created_at)?;
        let selectors = selectors_key(&e.selectors);
        // An identical entry recorded (by any replica) is found after the insert did
        // nothing; should it be deleted in between, the insert is tried again.
        for _ in 0..3 {
            let inserted = client
                .execute(
                    "INSERT INTO registration_entries (id, worker_id, agent_id, selectors, created_at, created_by)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (worker_id, agent_id, selectors) DO NOTHING",
                    &[&e.id, &e.worker_id, &e.agent_id, &selectors, &created_at, &e.created_by],
                )
                .await;
            match inserted {
                Ok(1) => return Ok(()),
                Ok(_) => {}
                // The only other unique constraint: the id.
                Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    return Err(StoreError::Database(format!("registration entry id {} is already recorded", e.id)));
                }
                Err(err) => return Err(err.into()),
            }
            let existing = client
                .query_opt(
                    "SELECT id FROM registration_entries WHERE worker_id = $1 AND agent_id = $2 AND selectors = $3",
                    &[&e.worker_id, &e.agent_id, &selectors],
                )
                .await?;
            if let Some(row) = existing {
                return Err(StoreError::DuplicateEntry(row.get(0)));
            }
        }
        Err(StoreError::Database(format!(
            "registration entry {}: an identical entry kept being created and deleted concurrently",
            e.id
        )))
    }

    async fn entries(&self, agent_id: Option<&str>) -> Result<Vec<RegistrationEntry>, StoreError> {
        let client = self.client().await?;
        const COLUMNS: &str =
            "SELECT id, worker_id, agent_id, selectors, created_at, created_by FROM registration_entries";
        let rows = match agent_id {
            Some(agent) => {
                client.query(&format!("{COLUMNS} WHERE agent_id = $1 ORDER BY created_at, seq"), &[&agent]).await?
            }
            None => client.query(&format!("{COLUMNS} ORDER BY created_at, seq"), &[]).await?,
        };
        rows.iter().map(entry_from_row).collect()
    }

    async fn entry_for(&self, agent_id: &str, worker_id: &str) -> Result<Option<RegistrationEntry>, StoreError> {
        let client = self.client().await?;
        // By the unique index on (worker_id, agent_id, selectors).
        let row = client
            .query_opt(
                "SELECT id, worker_id, agent_id, selectors, created_at, created_by FROM registration_entries
                 WHERE worker_id = $1 AND agent_id = $2 ORDER BY created_at, seq LIMIT 1",
                &[&worker_id, &agent_id],
            )
            .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    async fn delete_entry(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM registration_entries WHERE id = $1", &[&id]).await? > 0)
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT name, address, first_seen, last_seen FROM replicas ORDER BY name COLLATE \"C\"", &[])
            .await?;
        Ok(rows
            .iter()
            .map(|r| ReplicaRecord { name: r.get(0), address: r.get(1), first_seen: r.get(2), last_seen: r.get(3) })
            .collect())
    }
}

/// A read-only transaction on one snapshot (repeatable read) for reads that take several
/// statements.
async fn snapshot(client: &mut deadpool_postgres::Object) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

type Param = Box<dyn ToSql + Sync + Send>;

/// A statement being put together: its text and, in order, the values it binds. Every
/// value from a query is bound; only the store's own words go into the text.
#[derive(Default)]
struct Sql {
    text: String,
    args: Vec<Param>,
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
    fn arg(&mut self, v: impl ToSql + Sync + Send + 'static) -> &mut Self {
        self.args.push(Box::new(v));
        let _ = write!(self.text, "${}", self.args.len());
        self
    }

    /// ` AND (issued_at, serial) <op> (.., ..)`: one side of a keyset range, serials in
    /// byte order.
    fn keyset(&mut self, op: &str, at: Option<&Position>) -> &mut Self {
        if let Some((t, serial)) = at {
            self.push(" AND (issued_at, serial COLLATE \"C\") ").push(op).push(" (").arg(*t);
            self.push(", ").arg(serial.clone()).push(")");
        }
        self
    }

    async fn rows(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let params: Vec<&(dyn ToSql + Sync)> = self.args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        Ok(tx.query(&self.text, &params).await?)
    }
}

/// A place in the console's order: (issued_at, serial), newest first.
type Position = (OffsetDateTime, String);

/// A console query in the ledger's terms.
struct Filter {
    status: StatusFilter,
    now: OffsetDateTime,
    until: OffsetDateTime,
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
                sql.push(" AND status = 'valid' AND not_after >= ").arg(self.now);
            }
            StatusFilter::Expiring => {
                sql.push(" AND status = 'valid' AND not_after >= ").arg(self.now);
                sql.push(" AND not_after <= ").arg(self.until);
            }
            StatusFilter::Revoked => {
                sql.push(" AND status = 'revoked'");
            }
            StatusFilter::Expired => {
                sql.push(" AND status IN ('valid', 'superseded') AND not_after < ").arg(self.now);
            }
        }
    }

    /// ` AND` `column` starts with the search, in byte order (`column` is one of the
    /// store's names).
    fn prefix(&self, sql: &mut Sql, column: &str) {
        if let Some((prefix, upper)) = &self.search {
            sql.push(" AND ").push(column).push(" COLLATE \"C\" >= ").arg(prefix.clone());
            if let Some(upper) = upper {
                sql.push(" AND ").push(column).push(" COLLATE \"C\" < ").arg(upper.clone());
            }
        }
    }

    /// ` AND` the search condition of the query (worker id or serial).
    fn search(&self, sql: &mut Sql) {
        if self.search.is_some() {
            sql.push(" AND ((TRUE");
            self.prefix(sql, "worker_id");
            sql.push(") OR (TRUE");
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

    /// `SELECT <what> FROM certificates WHERE <the walk's status>`: the ordered walk
    /// (`certificates_issued`, or `certificates_status_issued` for one status).
    fn walk_select(&self, what: &str) -> Sql {
        let mut sql = Sql::new(&format!("SELECT {what} FROM certificates WHERE TRUE"));
        match self.status {
            StatusFilter::All | StatusFilter::Expired => {}
            StatusFilter::Valid | StatusFilter::Expiring => {
                sql.push(" AND status = 'valid'");
            }
            StatusFilter::Revoked => {
                sql.push(" AND status = 'revoked'");
            }
        }
        sql
    }

    /// `SELECT <what> FROM certificates WHERE <range>`.
    fn range_select(&self, range: Range, what: &str) -> Sql {
        let mut sql = Sql::new(&format!("SELECT {what} FROM certificates WHERE TRUE"));
        match range {
            Range::Worker => self.prefix(&mut sql, "worker_id"),
            Range::Serial => self.prefix(&mut sql, "serial"),
            Range::Status => self.status(&mut sql),
        }
        sql
    }
}

/// How many index entries each plan of [`list`] may read in its first round; four times
/// as many in each further round.
const FIRST_SCAN: i64 = 2_048;

/// The console's order.
const NEWEST_FIRST: &str = " ORDER BY issued_at DESC, serial COLLATE \"C\" DESC";

/// A page for the console: the same two plans taking turns as the SQLite store's (see
/// there): an ordered walk newest first, and a selective index range sorted, each
/// round with a budget four times the last. PostgreSQL would pick one plan from its
/// statistics, and a `LIMIT` over a walk is exactly where they mislead it (matches
/// that are few, or all old).
async fn list(
    tx: &deadpool_postgres::Transaction<'_>,
    q: &CertificateQuery,
    limit: usize,
) -> Result<Vec<CertificateRecord>, StoreError> {
    let mut pos: Option<Position> = query_cursor(q)?;
    let f = Filter {
        status: q.status,
        now: q.now,
        until: expiring_until(q.now, q.expiring_within),
        search: search_range(q),
    };
    let ranges = f.ranges();
    let select = format!("{CERT_COLUMNS}, issued_at AS sort_at");
    let mut out: Vec<(CertificateRecord, OffsetDateTime)> = Vec::new();
    let mut budget = FIRST_SCAN;
    let with_time = |r: &tokio_postgres::Row| cert_row(r).map(|c| (c, r.get::<_, OffsetDateTime>(14)));
    loop {
        let need = i64::try_from(limit - out.len()).unwrap_or(i64::MAX);
        if ranges.is_empty() {
            let mut sql = f.walk_select(&select);
            sql.keyset("<", pos.as_ref()).push(NEWEST_FIRST).push(" LIMIT ").arg(need);
            for r in sql.rows(tx).await? {
                out.push(with_time(&r)?);
            }
            break;
        }
        let mut in_ranges = 0;
        for &range in ranges {
            let inner = f.range_select(range, "1");
            let mut sql = Sql { text: format!("SELECT count(*) FROM ({} LIMIT ", inner.text), args: inner.args };
            sql.arg(budget).push(") AS r");
            in_ranges += sql.rows(tx).await?.first().map_or(0, |r| r.get::<_, i64>(0));
        }
        if in_ranges < budget {
            let mut found = Vec::new();
            for &range in ranges {
                // Materialized: the range's few rows are read by its index and sorted,
                // whatever the planner thinks of walking newest first instead.
                let mut inner = f.range_select(range, &select);
                if !matches!(range, Range::Status) {
                    f.status(&mut inner);
                }
                inner.keyset("<", pos.as_ref());
                let mut sql =
                    Sql { text: format!("WITH r AS MATERIALIZED ({}) SELECT * FROM r", inner.text), args: inner.args };
                sql.push(NEWEST_FIRST).push(" LIMIT ").arg(need);
                for r in sql.rows(tx).await? {
                    found.push(with_time(&r)?);
                }
            }
            found.sort_by(|(a, at), (b, bt)| (bt, &b.serial).cmp(&(at, &a.serial)));
            found.dedup_by(|(a, _), (b, _)| a.serial == b.serial);
            found.truncate(limit - out.len());
            out.extend(found);
            break;
        }
        let mut sql = f.walk_select("issued_at, serial");
        sql.keyset("<", pos.as_ref()).push(NEWEST_FIRST).push(" OFFSET ").arg(budget - 1).push(" LIMIT 1");
        let boundary: Option<Position> = sql.rows(tx).await?.first().map(|r| (r.get(0), r.get(1)));
        let mut sql = f.walk_select(&select);
        sql.keyset("<", pos.as_ref()).keyset(">=", boundary.as_ref());
        f.status(&mut sql);
        f.search(&mut sql);
        sql.push(NEWEST_FIRST).push(" LIMIT ").arg(need);
        for r in sql.rows(tx).await? {
            out.push(with_time(&r)?);
        }
        match boundary {
            Some(b) if out.len() < limit => pos = Some(b),
            _ => break,
        }
        budget = budget.saturating_mul(4);
    }
    Ok(out.into_iter().map(|(r, _)| r).collect())
}
