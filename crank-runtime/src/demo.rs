//! The hello-world worker's routes, used by the `hello-world` example and `crank demo`.

use axum::routing::get;
use axum::{Json, Router};

use crate::WorkerContext;
use crate::tls::PeerIdentity;

/// The hello-world routes: `/` greets the caller by its verified identity.
pub fn hello_routes() -> Router {
    Router::new().route("/", get(hello)).route("/whoami", get(whoami))
}

async fn hello(peer: PeerIdentity, axum::Extension(ctx): axum::Extension<WorkerContext>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "message": format!("Hello, {}!", peer.worker_id()),
        "served_by": ctx.spiffe_id.to_string(),
    }))
}

async fn whoami(peer: PeerIdentity) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "caller_spiffe_id": peer.spiffe_id.to_string(),
        "caller_worker_id": peer.worker_id(),
        "caller_serial": peer.serial,
    }))
}
