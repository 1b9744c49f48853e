//! WebAssembly policy modules: loading (validation, the ABI checks of both interfaces)
//! and evaluation, where the module is the untrusted side. An organisation's module is
//! code the CA runs on every issuance; a broken or hostile one must give an error (the
//! guard then fails closed), never a panic, a hang or unbounded memory in the host.
//!
//! Input: byte 0 chooses what the rest is.
//!
//! | byte 0 % 5 | the rest |
//! |---|---|
//! | 0 | a module (binary or text), loaded and, if it loads, asked every hook |
//! | 1 | a crank-ABI module's answers (`crank_fuzz::hostile_crank_module`) |
//! | 2 | a policy input (`crank_fuzz::call_policy_hook`) for the Rust default policy (crank ABI) |
//! | 3 | a policy input for the OPA-ABI module of `policies/wasm/opa-default` |
//! | 4 | static data written over that OPA module (`crank_fuzz::hostile_opa_module`) |
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crank_fuzz::{call_policy_hook, hostile_crank_module, hostile_opa_module};
use crank_policy::WasmEngine;
use crank_security_core::{AccessInput, IssuanceInput, PolicyEngine, RenewalInput};
use libfuzzer_sys::fuzz_target;

/// The Rust default policy as the test command builds it (scripts/fuzz.sh builds it).
fn rust_policy_path() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("policies/wasm/default-policy/target"),
    };
    target.join("wasm32-unknown-unknown/release/crank_default_wasm_policy.wasm")
}

fn rust_policy() -> &'static WasmEngine {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let path = rust_policy_path();
        WasmEngine::from_file(&path).unwrap_or_else(|e| panic!("{e}; build it as scripts/fuzz.sh does"))
    })
}

fn opa_policy() -> &'static WasmEngine {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/wasm/opa-default/crank.wat");
        WasmEngine::from_file(&path).expect("the OPA-ABI module loads")
    })
}

/// Every hook once, with ordinary input.
fn ask_every_hook(engine: &dyn PolicyEngine) {
    let input = IssuanceInput {
        worker_id: "fuzz".into(),
        capabilities: vec!["san:api.internal".into()],
        requested_dns_sans: vec!["fuzz".into(), "api.internal".into()],
        requested_ip_sans: vec!["127.0.0.1".parse().unwrap()],
        key_type: "ecdsa-p256".into(),
        environment: "production".into(),
        trust_domain: "crank.local".into(),
        renewal: false,
        agent: Some("fuzz-agent".into()),
    };
    let _ = engine.can_issue_certificate(&input);
    let _ = engine.certificate_validity_period("fuzz", "production");
    let renewal = RenewalInput {
        serial: "01:02".into(),
        worker_id: Some("fuzz".into()),
        issued_at: 1_700_000_000,
        not_before: 1_700_000_000,
        not_after: 1_700_086_400,
        now: 1_700_060_000,
        jitter: 0.5,
    };
    let _ = engine.should_renew_certificate(&renewal);
    let _ = engine.revoke_certificate("fuzz", "keyCompromise");
    // A worker granted `email.*` calling another's `email.classify`.
    let access: AccessInput = serde_json::from_value(serde_json::json!({
        "caller": {"spiffe_id": "spiffe://crank.local/fuzz", "worker_id": "fuzz", "administrator": false,
                   "trust_domain": "crank.local", "serial": "01:02", "not_after": 1_700_086_400_i64,
                   "capabilities": ["email.*"]},
        "target": {"worker_id": "email", "trust_domain": "crank.local", "capability": "email.classify"},
        "request": {"method": "POST", "path": "/classify", "route": "/classify"},
        "environment": "production"
    }))
    .unwrap();
    let _ = engine.can_access_capability(&access);
}

fn load(text_or_binary: &[u8]) -> Option<WasmEngine> {
    WasmEngine::from_bytes(Path::new("fuzz.wasm"), text_or_binary).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 5 {
        0 => {
            if let Some(engine) = load(rest) {
                ask_every_hook(&engine);
            }
        }
        1 => {
            if let Some(engine) = load(hostile_crank_module(rest).as_bytes()) {
                ask_every_hook(&engine);
            }
        }
        2 => call_policy_hook(rust_policy(), rest),
        3 => call_policy_hook(opa_policy(), rest),
        _ => {
            if let Some(engine) = load(hostile_opa_module(rest).as_bytes()) {
                ask_every_hook(&engine);
            }
        }
    }
});
