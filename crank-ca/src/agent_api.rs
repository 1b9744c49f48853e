//! The CA's endpoints for registration entries (administrators) and for agents
//! (`crank agent`): an agent lists the entries assigned to it and asks for its
//! workloads' certificates, authenticated by its own certificate.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use crank_runtime::api::{
    AGENT_ENTRIES_PATH, AGENT_ISSUE_PATH, AGENT_JWT_PATH, AgentIssueBody, ENTRIES_PATH, Entry, EntryBody,
    JWT_BUNDLE_PATH, JwtSvidAnswer, JwtSvidBody,
};
use crank_runtime::{AccessControl, ApiError, PeerIdentity};
use crank_security_core::{IssuedCertificate, fingerprint_sha256};

use crate::LocalCa;
use crate::authority::AgentCaller;

/// The capability that lets an administrator (or a worker granted it) keep
/// registration entries.
pub const ENTRIES_CAPABILITY: &str = "ca.entries";
/// The capability an agent's identity must hold to use the agent endpoints: grant it
/// with `crank token create --worker-id <agent> --capability ca.agent`.
pub const AGENT_CAPABILITY: &str = "ca.agent";

/// The routes, each group behind its capability.
pub(crate) fn routes(ca: Arc<LocalCa>, access: &Arc<AccessControl>) -> Router {
    let admin = access.protect(
        Some(ENTRIES_CAPABILITY),
        Router::new()
            .route(ENTRIES_PATH, post(create_entry).get(list_entries))
            .route(&format!("{ENTRIES_PATH}/{{id}}"), delete(delete_entry))
            .with_state(ca.clone()),
    );
    let agent = access.protect(
        Some(AGENT_CAPABILITY),
        Router::new()
            .route(AGENT_ENTRIES_PATH, get(agent_entries))
            .route(AGENT_ISSUE_PATH, post(agent_issue))
            .route(AGENT_JWT_PATH, post(agent_jwt))
            .with_state(ca.clone()),
    );
    let public = Router::new().route(JWT_BUNDLE_PATH, get(jwt_bundle)).with_state(ca);
    admin.merge(agent).merge(public)
}

async fn actor(
    ca: &LocalCa,
    connection: Option<axum::Extension<Arc<crank_runtime::tls::Connection>>>,
) -> Result<String, ApiError> {
    let Some(certificate) = connection.as_ref().and_then(|c| c.certificate.as_ref()) else {
        return Err(ApiError::unauthorized(
            "client_certificate_required",
            "registration entries need an administrator client certificate (`crank ca admin-cert`)",
        ));
    };
    ca.revoker_of(certificate).await.map_err(crate::answers::api_error)
}

async fn create_entry(
    State(ca): State<Arc<LocalCa>>,
    connection: Option<axum::Extension<Arc<crank_runtime::tls::Connection>>>,
    body: Result<Json<EntryBody>, JsonRejection>,
) -> Result<Json<Entry>, ApiError> {
    let who = actor(&ca, connection).await?;
    let Json(body) = body.map_err(crate::answers::json_error)?;
    let created = ca
        .create_entry(&body.worker_id, &body.selectors, &body.agent_id, &who)
        .await
        .map_err(crate::answers::api_error)?;
    tracing::info!(entry = %created.id, worker_id = %created.worker_id, agent_id = %created.agent_id, by = %who, "registration entry created");
    Ok(Json(created))
}

/// `?agent_id=` on the entry list.
#[derive(Debug, serde::Deserialize)]
struct EntryFilter {
    agent_id: Option<String>,
}

async fn list_entries(
    State(ca): State<Arc<LocalCa>>,
    connection: Option<axum::Extension<Arc<crank_runtime::tls::Connection>>>,
    Query(filter): Query<EntryFilter>,
) -> Result<Json<Vec<Entry>>, ApiError> {
    actor(&ca, connection).await?;
    let list = ca.entries(filter.agent_id.as_deref()).await.map_err(crate::answers::api_error)?;
    Ok(Json(list))
}

async fn delete_entry(
    State(ca): State<Arc<LocalCa>>,
    connection: Option<axum::Extension<Arc<crank_runtime::tls::Connection>>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = actor(&ca, connection).await?;
    ca.delete_entry(&id).await.map_err(crate::answers::api_error)?;
    tracing::info!(entry = %id, by = %who, "registration entry deleted");
    Ok(Json(serde_json::json!({ "deleted": id })))
}

fn agent_of(ca: &LocalCa, peer: &PeerIdentity) -> Result<AgentCaller, ApiError> {
    if &peer.spiffe_id.trust_domain != ca.trust_domain() {
        return Err(ApiError::unauthorized("foreign_trust_domain", "client certificate is from another trust domain"));
    }
    Ok(AgentCaller {
        worker_id: peer.worker_id().to_owned(),
        serial: peer.serial.clone(),
        fingerprint: fingerprint_sha256(&peer.certificate),
    })
}

async fn agent_entries(
    State(ca): State<Arc<LocalCa>>,
    peer: PeerIdentity,
    headers: HeaderMap,
) -> Result<Json<Vec<Entry>>, ApiError> {
    let agent = agent_of(&ca, &peer)?;
    let cid = crate::answers::correlation(&headers);
    let list = ca.entries_of_agent(&agent, &cid).await?;
    Ok(Json(list))
}

async fn agent_issue(
    State(ca): State<Arc<LocalCa>>,
    peer: PeerIdentity,
    headers: HeaderMap,
    body: Result<Json<AgentIssueBody>, JsonRejection>,
) -> Result<crate::answers::Issued, ApiError> {
    let agent = agent_of(&ca, &peer)?;
    let Json(body) = body.map_err(crate::answers::json_error)?;
    let cid = crate::answers::correlation(&headers);
    let cert: IssuedCertificate = ca.issue_for_agent(&agent, &body.worker_id, &body.csr, &cid).await?;
    Ok(crate::answers::issued(&cid, cert))
}

async fn agent_jwt(
    State(ca): State<Arc<LocalCa>>,
    peer: PeerIdentity,
    headers: HeaderMap,
    body: Result<Json<JwtSvidBody>, JsonRejection>,
) -> Result<Json<JwtSvidAnswer>, ApiError> {
    let agent = agent_of(&ca, &peer)?;
    let Json(body) = body.map_err(crate::answers::json_error)?;
    let cid = crate::answers::correlation(&headers);
    let (token, expires_at) = ca.jwt_for_agent(&agent, &body.worker_id, &body.audience, &cid).await?;
    Ok(Json(JwtSvidAnswer { token, expires_at }))
}

/// The JWT bundle, for anyone (like the trust bundle): a JWKS of the keys JWT-SVIDs are
/// signed with.
async fn jwt_bundle(State(ca): State<Arc<LocalCa>>) -> Json<serde_json::Value> {
    Json((*ca.jwt().jwks()).clone())
}
