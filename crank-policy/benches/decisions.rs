//! One decision per hook per engine: built-in, Rego, WASM (crank ABI, the Rust policy)
//! and WASM through the OPA Wasm ABI (the hand-written OPA-shaped module).
//!
//! `cargo bench -p crank-policy --bench decisions` (build the WASM policy first, see
//! policies/README.md; scripts/test.sh does).

use std::path::Path;
use std::sync::Arc;

use crank_policy::{PolicyEngine, RegoEngine, WasmEngine, builtin};
use crank_security_core::{AccessInput, AccessRequest, AccessTarget, Caller, IssuanceInput, RenewalInput};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../tests/support/wasm_module.rs"]
mod wasm_module;

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let rego = RegoEngine::from_dir(&root.join("default")).expect("rego");
    let wasm = WasmEngine::from_file(&wasm_module::default_wasm_policy())
        .unwrap_or_else(|e| panic!("the Rust WASM policy: {e}"));
    // The default policy written against the OPA Wasm ABI, as `opa build -t wasm` output is.
    let opa = WasmEngine::from_file(&root.join("wasm/opa-default/crank.wat")).expect("OPA-ABI module");
    let engines: Vec<(&str, Arc<dyn PolicyEngine>)> =
        vec![("builtin", builtin()), ("rego", Arc::new(rego)), ("wasm", Arc::new(wasm)), ("wasm-opa", Arc::new(opa))];
    let issue = IssuanceInput {
        worker_id: "api".into(),
        capabilities: vec!["san:api.example".into()],
        requested_dns_sans: vec!["api".into(), "api.example".into(), "localhost".into()],
        requested_ip_sans: vec!["127.0.0.1".parse().expect("ip")],
        key_type: "ecdsa-p256".into(),
        environment: "production".into(),
        trust_domain: "crank.local".into(),
        renewal: false,
        agent: None,
    };
    let renew = RenewalInput {
        serial: "3d:ec:cb".into(),
        worker_id: Some("api".into()),
        issued_at: 1_000_000,
        not_before: 999_940,
        not_after: 1_086_400,
        now: 1_061_000,
        jitter: 0.5,
    };
    // A worker granted the capability calling another's declared route.
    let access = AccessInput {
        caller: Caller {
            spiffe_id: "spiffe://crank.local/worker/billing".into(),
            worker_id: "billing".into(),
            administrator: false,
            trust_domain: "crank.local".into(),
            serial: "3d:ec:cb".into(),
            not_after: 1_086_400,
            capabilities: vec!["email.classify".into(), "metrics.read".into()],
        },
        target: AccessTarget {
            worker_id: "email".into(),
            trust_domain: "crank.local".into(),
            capability: Some("email.classify".into()),
        },
        request: AccessRequest { method: "POST".into(), path: "/classify".into(), route: Some("/classify".into()) },
        environment: "production".into(),
    };
    let mut g = c.benchmark_group("decision");
    for (name, engine) in &engines {
        g.bench_function(format!("{name}/can_issue_certificate"), |b| {
            b.iter(|| engine.can_issue_certificate(&issue).expect("decision"))
        });
        g.bench_function(format!("{name}/certificate_validity_period"), |b| {
            b.iter(|| engine.certificate_validity_period("api", "production").expect("decision"))
        });
        g.bench_function(format!("{name}/should_renew_certificate"), |b| {
            b.iter(|| engine.should_renew_certificate(&renew).expect("decision"))
        });
        g.bench_function(format!("{name}/revoke_certificate"), |b| {
            b.iter(|| engine.revoke_certificate("api", "keyCompromise").expect("decision"))
        });
        g.bench_function(format!("{name}/can_access_capability"), |b| {
            b.iter(|| assert!(engine.can_access_capability(&access).expect("decision").allow))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
