//! A second worker that calls the hello-world worker through the mTLS client and
//! returns the identity the hello-world worker saw.
//!
//! `GET /call` -> `{"hello_world_url": ..., "hello_world_saw": {"caller_spiffe_id": ...}}`
//!
//! Environment: `CALLER_HTTPS_PORT` (default 8501), `HELLO_WORLD_URL` (default
//! `https://127.0.0.1:8500`), plus the usual `CERT_DIR`, `CA_SERVICE_URL`,
//! `CRANK_JOIN_TOKEN`.

use axum::extract::Extension;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use crank_runtime::{RuntimeError, WorkerApplication, WorkerContext};

async fn call(Extension(ctx): Extension<WorkerContext>) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let base = std::env::var("HELLO_WORLD_URL").unwrap_or_else(|_| "https://127.0.0.1:8500".into());
    let url = format!("{}/whoami", base.trim_end_matches('/'));
    let bad_gateway = |e: String| (StatusCode::BAD_GATEWAY, format!("calling {url}: {e}"));
    let resp = ctx.client.get(&url).send().await.map_err(|e| bad_gateway(e.to_string()))?;
    let saw: serde_json::Value = resp
        .error_for_status()
        .map_err(|e| bad_gateway(e.to_string()))?
        .json()
        .await
        .map_err(|e| bad_gateway(e.to_string()))?;
    Ok(Json(serde_json::json!({ "me": ctx.spiffe_id.to_string(), "hello_world_url": base, "hello_world_saw": saw })))
}

fn main() -> Result<(), RuntimeError> {
    WorkerApplication::new("caller")
        .port_from_env("CALLER_HTTPS_PORT", 8501)
        .routes(Router::new().route("/call", get(call)))
        .run()
}
