//! What the access check costs a request: `AccessControl::decide` (the policy hook
//! `can_access_capability` behind the fail-closed guard, with the decision cache
//! workers use) per engine, for the same input again (a keep-alive caller: answered
//! from the cache) and for a new input each time (a new path: decided by the engine).
//!
//! `cargo bench -p crank-runtime --bench access` (build the Rust WASM policy first:
//! see `crank-policy/tests/support/wasm_module.rs`).

use std::path::Path;
use std::sync::Arc;

use crank_policy::{PolicyEngine, PolicyGuard, RegoEngine, WasmEngine};
use crank_runtime::AccessControl;
use crank_security_core::{AccessInput, NoEvents};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../../crank-policy/tests/support/wasm_module.rs"]
mod wasm_module;

/// A worker granted the capability calling another's route `/classify/{id}` at `path`.
fn input(path: String) -> AccessInput {
    serde_json::from_value(serde_json::json!({
        "caller": {"spiffe_id": "spiffe://crank.local/worker/billing", "worker_id": "billing",
                   "administrator": false, "trust_domain": "crank.local", "serial": "3d:ec:cb",
                   "not_after": 1_086_400, "capabilities": ["email.classify", "metrics.read"]},
        "target": {"worker_id": "email", "trust_domain": "crank.local", "capability": "email.classify"},
        "request": {"method": "POST", "path": path, "route": "/classify/{id}"},
        "environment": "production"
    }))
    .expect("an access input")
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let wasm = WasmEngine::from_file(&wasm_module::default_wasm_policy())
        .unwrap_or_else(|e| panic!("the Rust WASM policy: {e}"));
    let engines: Vec<(&str, Arc<dyn PolicyEngine>)> = vec![
        ("builtin", crank_policy::builtin()),
        ("rego", Arc::new(RegoEngine::from_dir(&root.join("default")).expect("rego"))),
        ("wasm", Arc::new(wasm)),
    ];
    let mut g = c.benchmark_group("access");
    for (name, engine) in engines {
        let access =
            AccessControl::new(PolicyGuard::new(engine), "email", "crank.local", "production", Arc::new(NoEvents));
        let same = input("/classify/1".into());
        assert!(access.decide(&same).is_ok());
        g.bench_function(format!("{name}/same input"), |b| b.iter(|| assert!(access.decide(&same).is_ok())));
        // A different path every time: a miss (the cache starts over at its size).
        let mut n = 0u64;
        g.bench_function(format!("{name}/new input"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    input(format!("/classify/{n}"))
                },
                |i| assert!(access.decide(&i).is_ok()),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
