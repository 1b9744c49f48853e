//! The WebAssembly engine: the shipped Rust policy agrees with the other engines, and
//! hostile modules are contained.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crank_policy::{PolicyEngine, PolicyGuard, WasmEngine, cases};

fn default_module() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/wasm/default-policy/target/wasm32-unknown-unknown/release/crank_default_wasm_policy.wasm");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --release --target wasm32-unknown-unknown --manifest-path policies/wasm/default-policy/Cargo.toml` (scripts/test.sh does)",
        p.display()
    );
    p
}

fn issuance_input() -> serde_json::Value {
    serde_json::json!({"worker_id": "w", "capabilities": [], "requested_dns_sans": ["w"], "requested_ip_sans": [],
        "key_type": "ecdsa-p256", "environment": "e", "trust_domain": "crank.local", "renewal": false})
}

#[test]
fn the_rust_wasm_policy_passes_every_default_case() {
    let engine = WasmEngine::from_file(&default_module()).unwrap();
    let all = cases::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/cases")).unwrap();
    let failures: Vec<String> =
        all.iter().filter_map(|c| cases::run(&engine, c).err().map(|e| format!("{}: {e}", c.name))).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A module with the crank ABI whose `crank_evaluate` body is `body`.
fn hostile(body: &str) -> WasmEngine {
    let wat = format!(
        r#"(module
            (memory (export "memory") 1)
            (func (export "crank_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "crank_evaluate") (param i32 i32 i32 i32) (result i64) {body}))"#
    );
    WasmEngine::from_bytes(Path::new("hostile.wat"), wat.as_bytes()).unwrap()
}

fn denied_quickly(engine: WasmEngine, what: &str) {
    let guard = PolicyGuard::new(std::sync::Arc::new(engine));
    let start = Instant::now();
    let input = serde_json::from_value(issuance_input()).unwrap();
    let denied = guard.may_issue(&input).unwrap_err();
    assert!(denied.engine_failure, "{what}: {denied:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "{what} took {:?}", start.elapsed());
    eprintln!("{what}: {} in {:?}", denied.reason, start.elapsed());
}

#[test]
fn an_endless_loop_runs_out_of_fuel_and_denies() {
    denied_quickly(hostile("(loop (br 0)) (i64.const 0)"), "endless loop");
}

#[test]
fn unbounded_allocation_hits_the_memory_cap_and_denies() {
    // Grow memory until it fails, then trap: the cap stops it long before the host suffers.
    denied_quickly(
        hostile("(loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable"),
        "unbounded allocation",
    );
}

#[test]
fn a_trap_denies() {
    denied_quickly(hostile("unreachable"), "trap");
}

#[test]
fn an_answer_out_of_bounds_or_malformed_denies() {
    denied_quickly(hostile("(i64.const 0x7fff000000000010)"), "answer out of bounds");
    // Points at 4 zero bytes: not JSON.
    denied_quickly(hostile("(i64.const 0x0000000000000004)"), "not JSON");
}

#[test]
fn modules_with_imports_or_without_the_abi_are_rejected_at_load() {
    let err =
        WasmEngine::from_bytes(Path::new("imp.wat"), br#"(module (import "env" "f" (func)))"#).unwrap_err().to_string();
    assert!(err.contains("imp.wat") && err.contains("may import nothing"), "{err}");
    let err = WasmEngine::from_bytes(Path::new("bare.wat"), b"(module (memory (export \"memory\") 1))")
        .unwrap_err()
        .to_string();
    assert!(err.contains("crank_alloc"), "{err}");
    let err = WasmEngine::from_bytes(Path::new("junk.wasm"), b"\0asm junk").unwrap_err().to_string();
    assert!(err.contains("junk.wasm") && err.contains("not a valid WebAssembly module"), "{err}");
}

#[test]
fn the_engine_can_be_shared_across_threads() {
    let engine = std::sync::Arc::new(WasmEngine::from_file(&default_module()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let e = engine.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(e.certificate_validity_period("w", "e").unwrap(), Duration::from_secs(86400));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
