//! A worker with a custom event sink: every certificate lifecycle event is also
//! appended as one JSON line to `CRANK_EVENTS_FILE` (default `./crank-events.jsonl`),
//! next to the standard JSON log and Prometheus metrics.
//!
//! An `EventSink` is any `Debug + Send + Sync` type with one method, `emit`. It is
//! called on issuance and handshake paths, so it must be quick and must not block for
//! long; a sink that ships events elsewhere should hand them to a channel or a task.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use crank_runtime::WorkerApplication;
use crank_security_core::{CertificateEvent, EventSink};

/// Appends events to a file, one JSON object per line.
#[derive(Debug)]
struct JsonLinesFile(Mutex<File>);

impl EventSink for JsonLinesFile {
    fn emit(&self, event: &CertificateEvent) {
        if let Ok(mut f) = self.0.lock() {
            // A full disk must not take the worker down: the event is dropped, and the
            // standard log still has it.
            let _ = writeln!(f, "{}", event.to_json());
        }
    }
}

fn main() -> anyhow::Result<()> {
    let path = std::env::var("CRANK_EVENTS_FILE").unwrap_or_else(|_| "crank-events.jsonl".into());
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    Ok(WorkerApplication::new("audited")
        .port_from_env("AUDITED_HTTPS_PORT", 8502)
        .routes(Router::new().route("/", get(|| async { "audited" })))
        .event_sink(Arc::new(JsonLinesFile(Mutex::new(file))))
        .run()?)
}
