//! The hello-world worker: HTTPS with mandatory client certificates on
//! `HELLO_WORLD_HTTPS_PORT` (default 8500). `/` greets the verified caller, `/whoami`
//! returns the caller's identity, `/health` is added by the runtime.
//!
//! First start: `CRANK_JOIN_TOKEN=$(crank token create --dir ca --worker-id hello-world)
//! CA_SERVICE_URL=https://127.0.0.1:9090 CERT_DIR=./certs/hello-world cargo run -p crank-examples --bin hello-world`

use crank_runtime::{RuntimeError, WorkerApplication, demo::hello_routes};

fn main() -> Result<(), RuntimeError> {
    WorkerApplication::new("hello-world").port_from_env("HELLO_WORLD_HTTPS_PORT", 8500).routes(hello_routes()).run()
}
