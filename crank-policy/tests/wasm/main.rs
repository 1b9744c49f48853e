//! The WebAssembly engine, both interfaces: the shipped policies agree with the other
//! engines on every case, and hostile modules are contained.

mod crank_abi;
mod opa;
#[path = "../support/policies.rs"]
mod policies;
#[path = "../support/wasm_module.rs"]
mod wasm_module;

use std::path::Path;
use std::time::{Duration, Instant};

use crank_policy::{PolicyEngine, PolicyGuard, WasmEngine, cases};
use policies::policies;

/// Every shipped default case, run on `engine`; the failures.
fn default_case_failures(engine: &dyn PolicyEngine) -> Vec<String> {
    let all = cases::load_dir(&policies().join("default/cases")).unwrap();
    assert!(all.len() >= 12, "only {} cases", all.len());
    all.iter().filter_map(|c| cases::run(engine, c).err().map(|e| format!("{}: {e}", c.name))).collect()
}

fn issuance_input() -> serde_json::Value {
    serde_json::json!({"worker_id": "w", "capabilities": [], "requested_dns_sans": ["w"], "requested_ip_sans": [],
        "key_type": "ecdsa-p256", "environment": "e", "trust_domain": "crank.local", "renewal": false})
}

/// Asks `engine` for an issuance decision and checks it fails closed, quickly; the reason.
fn denied_quickly(engine: WasmEngine, what: &str) -> String {
    let guard = PolicyGuard::new(std::sync::Arc::new(engine));
    let start = Instant::now();
    let input = serde_json::from_value(issuance_input()).unwrap();
    let denied = guard.may_issue(&input).unwrap_err();
    assert!(denied.engine_failure, "{what}: {denied:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "{what} took {:?}", start.elapsed());
    eprintln!("{what}: {} in {:?}", denied.reason, start.elapsed());
    denied.reason
}

/// Runs `check` on `engine` from four threads at once; a panic in any fails the test.
fn on_four_threads(engine: WasmEngine, check: fn(&WasmEngine)) {
    let engine = std::sync::Arc::new(engine);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let e = engine.clone();
            std::thread::spawn(move || check(&e))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Loads a module from WebAssembly text; the load error, if any, as text.
fn load(name: &str, wat: &str) -> Result<WasmEngine, String> {
    WasmEngine::from_bytes(Path::new(name), wat.as_bytes()).map_err(|e| e.to_string())
}
