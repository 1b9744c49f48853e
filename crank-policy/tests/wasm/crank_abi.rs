//! crank ABI v1: the Rust policy and hostile modules.

use std::time::Duration;

use crank_policy::wasm::Abi;
use crank_policy::{PolicyEngine, WasmEngine};

use super::wasm_module::default_wasm_policy;
use super::{default_case_failures, denied_quickly, load, on_four_threads};

#[test]
fn the_rust_wasm_policy_passes_every_default_case() {
    let engine = WasmEngine::from_file(&default_wasm_policy()).unwrap();
    assert_eq!(engine.abi(), Abi::Crank);
    let failures = default_case_failures(&engine);
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
    load("hostile.wat", &wat).unwrap()
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
    let err = load(
        "imp.wat",
        r#"(module (import "env" "f" (func)) (memory (export "memory") 1)
            (func (export "crank_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "crank_evaluate") (param i32 i32 i32 i32) (result i64) (i64.const 0)))"#,
    )
    .unwrap_err();
    assert!(err.contains("imp.wat") && err.contains("may import nothing"), "{err}");
    let err = load(
        "half.wat",
        r#"(module (memory (export "memory") 1) (func (export "crank_evaluate") (param i32 i32 i32 i32) (result i64) (i64.const 0)))"#,
    )
    .unwrap_err();
    assert!(err.contains("crank_alloc"), "{err}");
    let err = load(
        "typed.wat",
        r#"(module (memory (export "memory") 1) (func (export "crank_alloc") (param i64) (result i32) (i32.const 0))
            (func (export "crank_evaluate") (param i32 i32 i32 i32) (result i64) (i64.const 0)))"#,
    )
    .unwrap_err();
    assert!(err.contains("crank_alloc") && err.contains("must be a function"), "{err}");
    let err = load("bare.wat", r#"(module (memory (export "memory") 1))"#).unwrap_err();
    assert!(err.contains("exports neither `crank_evaluate`") && err.contains("opa_wasm_abi_version"), "{err}");
    let err = load("junk.wasm", "\0asm junk").unwrap_err();
    assert!(err.contains("junk.wasm") && err.contains("not a valid WebAssembly module"), "{err}");
}

#[test]
fn every_decision_starts_from_a_fresh_instance() {
    // Traps if it sees a global or memory written by an earlier decision.
    let engine = load(
        "stateful.wat",
        r#"(module
            (memory (export "memory") 1)
            (global $calls (mut i32) (i32.const 0))
            (data (i32.const 16) "true")
            (func (export "crank_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "crank_evaluate") (param i32 i32 i32 i32) (result i64)
              (if (i32.or (global.get $calls) (i32.load (i32.const 64))) (then unreachable))
              (global.set $calls (i32.const 1))
              (i32.store (i32.const 64) (i32.const 1))
              (i64.const 0x0000001000000004)))"#,
    )
    .unwrap();
    for _ in 0..300 {
        assert!(engine.revoke_certificate("w", "keyCompromise").unwrap());
    }
}

#[test]
fn the_engine_can_be_shared_across_threads() {
    on_four_threads(WasmEngine::from_file(&default_wasm_policy()).unwrap(), |e| {
        for _ in 0..50 {
            assert_eq!(e.certificate_validity_period("w", "e").unwrap(), Duration::from_secs(86400));
        }
    });
}
