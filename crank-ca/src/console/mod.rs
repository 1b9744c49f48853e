//! The operator console: read-only pages on the CA's mTLS port, rendered on the server
//! (askama templates, no JavaScript), behind the capability `ca.console`, which the
//! default policy grants administrators.
//!
//! | path | shows |
//! |---|---|
//! | `/console` | the CRL, certificate counts, CA replicas and their health, recent refusals |
//! | `/console/certificates?q=&status=&after=` | the ledger, newest first, searchable by worker id or serial, paged by cursor |
//! | `/console/certificates/{serial}` | one certificate and what happened to it |
//! | `/console/workers` | the workers the platform registry sees (with `--platform-url`) |
//! | `/console/api/status` | the overview as JSON (`crank status`) |

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

mod view;

pub use crate::denials::RecentDenials;
pub use view::relative;

use crate::authority::LocalCa;
use crate::store::{CertificateQuery, StatusFilter};

/// The capability the console's pages are behind.
pub const CONSOLE_CAPABILITY: &str = "ca.console";

/// Rows per page of the certificate list.
pub const PAGE_ROWS: u32 = 50;

/// A certificate counts as expiring when it ends within this: workers renew with a
/// third of the lifetime left, so a day's certificate this close to its end has missed
/// its renewal.
pub const EXPIRING_WITHIN: time::Duration = time::Duration::hours(1);

/// A replica counts as healthy when the store heard from it within this.
pub const REPLICA_HEALTHY_WITHIN: time::Duration = time::Duration::seconds(30);

/// How often each replica tells the store it is alive.
pub const REPLICA_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the console finds the platform registry, and the client identity it calls it
/// with: a certificate directory (`client.crt`, `client.key`, `ca.crt`, as `crank cert
/// init` writes them) of a worker granted `platform.workers.read`, read at each call so
/// that a renewed certificate is used.
#[derive(Debug, Clone)]
pub struct PlatformSource {
    /// `https://HOST:PORT` of the registry.
    pub url: url::Url,
    /// The certificate directory.
    pub client_dir: std::path::PathBuf,
}

#[derive(Debug, Clone)]
struct Console {
    ca: Arc<LocalCa>,
    platform: Option<PlatformSource>,
}

/// The console's routes (state applied), for [`crate::server`] to put behind
/// [`CONSOLE_CAPABILITY`].
pub fn routes(ca: Arc<LocalCa>, platform: Option<PlatformSource>) -> Router {
    Router::new()
        .route("/console", get(overview))
        .route("/console/api/status", get(status_json))
        .route("/console/certificates", get(certificates))
        .route("/console/certificates/{serial}", get(certificate))
        .route("/console/workers", get(workers))
        .with_state(Console { ca, platform })
}

/// Tells the store every [`REPLICA_HEARTBEAT`] that this replica (listening at
/// `address`) is alive, until the process ends. Failures are logged and tried again.
pub async fn replica_heartbeats(ca: Arc<LocalCa>, address: String) {
    let mut tick = tokio::time::interval(REPLICA_HEARTBEAT);
    let mut failing = false;
    loop {
        tick.tick().await;
        match ca.store().replica_heartbeat(ca.replica(), &address, OffsetDateTime::now_utc()).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "could not record this replica's heartbeat in the store");
            }
            Err(_) => {}
        }
    }
}

/// What `/console` and `crank status` show.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// The trust domain.
    pub trust_domain: String,
    /// The replica that answered.
    pub replica: String,
    /// `sqlite` or `postgres`.
    pub store: String,
    /// Who signs leaves.
    pub signer: String,
    /// The CRL in force at this replica.
    pub crl: Option<CrlStatus>,
    /// Certificates in the ledger.
    pub certificates: Counts,
    /// Every replica the store has heard from.
    pub replicas: Vec<ReplicaStatus>,
    /// The last refusals this replica saw (up to 20), newest first.
    pub recent_denials: Vec<Denial>,
    /// When this was read, RFC 3339.
    pub at: String,
}

/// The CRL's number and age.
#[derive(Debug, Serialize, Deserialize)]
pub struct CrlStatus {
    /// Its CRL number.
    pub number: u64,
    /// thisUpdate, RFC 3339.
    pub this_update: String,
    /// nextUpdate, RFC 3339.
    pub next_update: String,
    /// Seconds since thisUpdate.
    pub age_seconds: i64,
    /// Revoked certificates it lists.
    pub entries: usize,
}

/// Certificate counts.
#[derive(Debug, Serialize, Deserialize)]
pub struct Counts {
    /// Every certificate ever issued.
    pub total: u64,
    /// Valid now.
    pub valid: u64,
    /// Valid and ending within the hour.
    pub expiring: u64,
    /// Revoked.
    pub revoked: u64,
    /// Past their notAfter.
    pub expired: u64,
}

/// A CA replica.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Its name in the ledger.
    pub name: String,
    /// Where it listens.
    pub address: String,
    /// Last heartbeat, RFC 3339.
    pub last_seen: String,
    /// Heard from within 30 s.
    pub healthy: bool,
    /// The replica that answered.
    pub this: bool,
}

/// A refusal: a request denied by access policy, or a certificate request refused.
#[derive(Debug, Serialize, Deserialize)]
pub struct Denial {
    /// `ACCESS_DENIED` or `CSR_FAILED`.
    pub event: String,
    /// When, RFC 3339.
    pub at: String,
    /// The worker or caller concerned.
    pub who: String,
    /// The capability, for an access denial.
    pub capability: Option<String>,
    /// The reason given.
    pub reason: String,
    /// The correlation id.
    pub correlation_id: String,
}

/// A failure reading what the console shows: 503 naming it.
struct Unavailable(String);

impl IntoResponse for Unavailable {
    fn into_response(self) -> Response {
        let body = view::ErrorPage { message: &self.0 }.render().unwrap_or_else(|_| self.0.clone());
        (StatusCode::SERVICE_UNAVAILABLE, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
    }
}

fn unavailable(what: &str) -> impl FnOnce(crate::store::StoreError) -> Unavailable + '_ {
    move |e| Unavailable(format!("{what}: {e}"))
}

/// An HTML page, never cached (it shows the ledger).
fn page(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the page failed: {e}")).into_response(),
    }
}

async fn read_status(console: &Console) -> Result<Status, Unavailable> {
    let ca = &console.ca;
    let now = OffsetDateTime::now_utc();
    let counts =
        ca.store().certificate_counts(now, EXPIRING_WITHIN).await.map_err(unavailable("counting certificates"))?;
    let replicas = ca.store().replicas().await.map_err(unavailable("reading the replicas"))?;
    let crl = ca.crl_updates().borrow().clone().map(|c| CrlStatus {
        number: c.number,
        this_update: view::rfc3339(c.this_update),
        next_update: view::rfc3339(c.next_update),
        age_seconds: (now - c.this_update).whole_seconds(),
        entries: c.entries,
    });
    Ok(Status {
        trust_domain: ca.trust_domain().to_string(),
        replica: ca.replica().to_owned(),
        store: ca.store().backend().to_owned(),
        signer: ca.signer_name().to_owned(),
        crl,
        certificates: Counts {
            total: counts.total,
            valid: counts.valid,
            expiring: counts.expiring,
            revoked: counts.revoked,
            expired: counts.expired,
        },
        replicas: replicas
            .into_iter()
            .map(|r| {
                let seen = OffsetDateTime::from_unix_timestamp(r.last_seen).unwrap_or(OffsetDateTime::UNIX_EPOCH);
                ReplicaStatus {
                    this: r.name == ca.replica(),
                    healthy: now - seen <= REPLICA_HEALTHY_WITHIN,
                    name: r.name,
                    address: r.address,
                    last_seen: view::rfc3339(seen),
                }
            })
            .collect(),
        recent_denials: ca
            .recent_denials()
            .into_iter()
            .take(20)
            .map(|e| Denial {
                event: e.event.name().to_owned(),
                at: view::rfc3339(e.timestamp),
                who: e
                    .details
                    .get("caller")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .or(e.worker_id.clone())
                    .unwrap_or_default(),
                capability: e.details.get("capability").and_then(|v| v.as_str()).map(str::to_owned),
                reason: e
                    .details
                    .get("reason")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .or_else(|| e.error.as_ref().map(|x| format!("{}: {}", x.phase, x.message)))
                    .unwrap_or_default(),
                correlation_id: e.correlation_id.to_string(),
            })
            .collect(),
        at: view::rfc3339(now),
    })
}

async fn overview(State(console): State<Console>) -> Result<Response, Unavailable> {
    let status = read_status(&console).await?;
    Ok(page(&view::Overview::new(&status, OffsetDateTime::now_utc())))
}

async fn status_json(State(console): State<Console>) -> Result<Response, Unavailable> {
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(read_status(&console).await?)).into_response())
}

/// The certificate list's query string.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    /// Worker id or serial (prefix).
    #[serde(default)]
    q: String,
    /// `all`, `valid`, `expiring`, `revoked`, `expired`.
    #[serde(default)]
    status: String,
    /// The cursor: `ISSUED_AT|SERIAL` of the last row of the previous page.
    #[serde(default)]
    after: String,
}

fn status_filter(name: &str) -> Option<StatusFilter> {
    Some(match name {
        "" | "all" => StatusFilter::All,
        "valid" => StatusFilter::Valid,
        "expiring" => StatusFilter::Expiring,
        "revoked" => StatusFilter::Revoked,
        "expired" => StatusFilter::Expired,
        _ => return None,
    })
}

/// A serial as the ledger stores it (lower-case hex pairs joined by colons) from what an
/// operator types (`0A1B...`, `0a:1b:...`), or `None` if it is not hex.
fn normalise_serial(typed: &str) -> Option<String> {
    let hex: String = typed.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let pairs: Vec<String> = hex.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    Some(pairs.join(":"))
}

async fn certificates(
    State(console): State<Console>,
    Query(params): Query<ListParams>,
) -> Result<Response, Unavailable> {
    let Some(status) = status_filter(&params.status) else {
        return Ok((StatusCode::BAD_REQUEST, format!("unknown status {:?}", params.status)).into_response());
    };
    let after = match params.after.split_once('|') {
        Some((at, serial)) => Some((at.to_owned(), serial.to_owned())),
        None if params.after.is_empty() => None,
        None => return Ok((StatusCode::BAD_REQUEST, "the cursor is not ISSUED_AT|SERIAL").into_response()),
    };
    let q = params.q.trim();
    let now = OffsetDateTime::now_utc();
    let query = |search: Option<String>| CertificateQuery {
        search,
        status,
        after: after.clone(),
        limit: PAGE_ROWS + 1,
        now,
        expiring_within: EXPIRING_WITHIN,
    };
    let store = console.ca.store();
    let list = |q| async move {
        match store.list_certificates(&q).await {
            Err(crate::store::StoreError::InvalidQuery(why)) => Err(Ok((StatusCode::BAD_REQUEST, why).into_response())),
            other => other.map_err(|e| Err(Unavailable(format!("reading the ledger: {e}")))),
        }
    };
    let mut rows = match list(query((!q.is_empty()).then(|| q.to_owned()))).await {
        Ok(rows) => rows,
        Err(answer) => return answer,
    };
    // What was typed may be a serial in another spelling: search that too.
    if let Some(serial) = normalise_serial(q).filter(|s| s != q) {
        let more = match list(query(Some(serial))).await {
            Ok(rows) => rows,
            Err(answer) => return answer,
        };
        rows.extend(more);
        rows.sort_by(|a, b| (&b.issued_at, &b.serial).cmp(&(&a.issued_at, &a.serial)));
        rows.dedup_by(|a, b| a.serial == b.serial);
    }
    let next = (rows.len() > PAGE_ROWS as usize).then(|| {
        rows.truncate(PAGE_ROWS as usize);
        rows.last().map(|r| format!("{}|{}", r.issued_at, r.serial)).unwrap_or_default()
    });
    Ok(page(&view::Certificates::new(&rows, q, &params.status, next, now)))
}

async fn certificate(State(console): State<Console>, Path(serial): Path<String>) -> Result<Response, Unavailable> {
    let serial = normalise_serial(&serial).unwrap_or(serial);
    let history = console.ca.store().certificate_history(&serial).await.map_err(unavailable("reading the ledger"))?;
    Ok(match history {
        Some(h) => page(&view::Certificate::new(&h, OffsetDateTime::now_utc())),
        None => (
            StatusCode::NOT_FOUND,
            page(&view::ErrorPage { message: &format!("no certificate {serial} in the ledger") }),
        )
            .into_response(),
    })
}

async fn workers(State(console): State<Console>) -> Response {
    let Some(platform) = &console.platform else {
        return page(&view::Workers::not_configured());
    };
    let url = platform.url.join("v1/workers").unwrap_or_else(|_| platform.url.clone());
    let answer = async {
        let files = crank_security_core::CertFiles::in_dir(&platform.client_dir);
        let bundle = crank_security_core::CertificateBundle::load(&files)
            .map_err(|e| format!("the console's client identity in {}: {e}", platform.client_dir.display()))?;
        let client = crank_runtime::MtlsClient::from_bundle(&bundle).map_err(|e| e.to_string())?;
        let r = client.get(url.clone()).send().await.map_err(|e| crank_runtime::worker::error_chain(&e))?;
        if !r.status().is_success() {
            return Err(format!("{} answered {}: {}", url, r.status(), r.text().await.unwrap_or_default()));
        }
        r.json::<Vec<crank_runtime::platform::WorkerRecord>>().await.map_err(|e| e.to_string())
    };
    match answer.await {
        Ok(list) => page(&view::Workers::listed(&platform.url, &list, OffsetDateTime::now_utc())),
        Err(e) => (StatusCode::BAD_GATEWAY, page(&view::Workers::failed(&platform.url, &e))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_found_however_they_are_typed() {
        assert_eq!(normalise_serial("0A1B2c").as_deref(), Some("0a:1b:2c"));
        assert_eq!(normalise_serial("0a:1b:2c").as_deref(), Some("0a:1b:2c"));
        assert_eq!(normalise_serial("0a1").as_deref(), Some("0a:1"));
        assert_eq!(normalise_serial("hello-world"), None);
        assert_eq!(normalise_serial(""), None);
    }

    #[test]
    fn status_names() {
        assert_eq!(status_filter("revoked"), Some(StatusFilter::Revoked));
        assert_eq!(status_filter(""), Some(StatusFilter::All));
        assert_eq!(status_filter("gone"), None);
    }
}
