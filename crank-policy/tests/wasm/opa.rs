//! The OPA Wasm ABI: the hand-written OPA-shaped default policy passes every case on
//! both evaluation paths, hostile modules deny or are refused at load.

use std::path::PathBuf;

use crank_policy::wasm::Abi;
use crank_policy::{PolicyEngine, RegoEngine, WasmEngine, cases};

use super::{default_case_failures, denied_quickly, load, on_four_threads, policies};

fn opa_module() -> PathBuf {
    policies().join("wasm/opa-default/crank.wat")
}

#[test]
fn the_opa_module_passes_every_default_case_through_opa_eval() {
    let engine = WasmEngine::from_file(&opa_module()).unwrap();
    assert_eq!(engine.abi(), Abi::Opa { minor: 2 });
    let failures = default_case_failures(&engine);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn before_abi_1_2_decisions_go_through_the_evaluation_context() {
    let text = std::fs::read_to_string(opa_module()).unwrap();
    let minor_1 = text.replace(
        r#"(global (export "opa_wasm_abi_minor_version") i32 (i32.const 2))"#,
        r#"(global (export "opa_wasm_abi_minor_version") i32 (i32.const 1))"#,
    );
    assert_ne!(text, minor_1);
    let engine = load("crank-1.1.wat", &minor_1).unwrap();
    assert_eq!(engine.abi(), Abi::Opa { minor: 1 });
    let failures = default_case_failures(&engine);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn denials_are_worded_by_the_host_sprintf_exactly_as_in_rego() {
    let opa = WasmEngine::from_file(&opa_module()).unwrap();
    let rego = RegoEngine::from_dir(&policies().join("default")).unwrap();
    let input = serde_json::json!({"worker_id": "w1", "capabilities": ["san:ok.example"],
        "requested_dns_sans": ["w1", "bank.example", "ok.example", "w1.crank.local"],
        "requested_ip_sans": ["127.0.0.1", "10.1.2.3"], "key_type": "rsa-1024", "environment": "e",
        "trust_domain": "crank.local", "renewal": false});
    let from_opa = cases::evaluate(&opa, "can_issue_certificate", &input).unwrap();
    let from_rego = cases::evaluate(&rego, "can_issue_certificate", &input).unwrap();
    assert_eq!(
        from_opa["reason"],
        "DNS name \"bank.example\" is not allowed for worker \"w1\"; \
         IP address 10.1.2.3 is not allowed for worker \"w1\"; key type rsa-1024 is not allowed"
    );
    assert_eq!(from_opa, from_rego);
}

#[test]
fn the_engine_can_be_shared_across_threads() {
    on_four_threads(WasmEngine::from_file(&opa_module()).unwrap(), |e| {
        let failures = default_case_failures(e);
        assert!(failures.is_empty(), "{failures:#?}");
    });
}

/// The four entrypoints, as `entrypoints()` lists them.
const ENTRYPOINTS: &str = r#"{"crank/can_issue_certificate":0,"crank/certificate_validity_period":1,"crank/should_renew_certificate":2,"crank/revoke_certificate":3}"#;
/// An allowing result set.
const ALLOW: &str = r#"[{"result":{"allow":true}}]"#;

/// The smallest module with the OPA ABI's shape: a value is the address of its
/// NUL-terminated JSON text; `opa_eval` (and `eval`'s result) answers the text at 2048
/// (`answer`) unless `body` says otherwise.
struct Hostile<'a> {
    major: i32,
    entrypoints: &'a str,
    builtins: &'a str,
    answer: &'a str,
    body: &'a str,
    memory_pages: u32,
}

impl Default for Hostile<'_> {
    fn default() -> Self {
        Self {
            major: 1,
            entrypoints: ENTRYPOINTS,
            builtins: "{}",
            answer: ALLOW,
            body: "(i32.const 2048)",
            memory_pages: 1,
        }
    }
}

impl Hostile<'_> {
    fn wat(&self) -> String {
        let esc = |s: &str| s.replace('"', "\\\"");
        let Self { major, body, memory_pages, .. } = self;
        let (entrypoints, builtins, answer) = (esc(self.entrypoints), esc(self.builtins), esc(self.answer));
        format!(
            r#"(module
              (import "env" "memory" (memory {memory_pages}))
              (import "env" "opa_abort" (func $abort (param i32)))
              (import "env" "opa_builtin2" (func $builtin2 (param i32 i32 i32 i32) (result i32)))
              (global (export "opa_wasm_abi_version") i32 (i32.const {major}))
              (global (export "opa_wasm_abi_minor_version") i32 (i32.const 2))
              (global $heap (mut i32) (i32.const 8192))
              (global $calls (mut i32) (i32.const 0))
              (data (i32.const 256) "{entrypoints}\00")
              (data (i32.const 1024) "{builtins}\00")
              (data (i32.const 2048) "{answer}\00")
              (data (i32.const 3072) "boom\00")
              (data (i32.const 3100) "\"%d\"\00")
              (data (i32.const 3120) "[\"x\"]\00")
              (func (export "opa_malloc") (param i32) (result i32)
                (global.get $heap)
                (global.set $heap (i32.add (global.get $heap) (local.get 0))))
              (func (export "opa_json_parse") (param i32 i32) (result i32) (local.get 0))
              (func (export "opa_json_dump") (param i32) (result i32) (local.get 0))
              (func (export "opa_heap_ptr_get") (result i32) (global.get $heap))
              (func (export "opa_heap_ptr_set") (param i32) (global.set $heap (local.get 0)))
              (func (export "opa_eval_ctx_new") (result i32) (i32.const 0))
              (func (export "opa_eval_ctx_set_input") (param i32 i32))
              (func (export "opa_eval_ctx_set_data") (param i32 i32))
              (func (export "opa_eval_ctx_set_entrypoint") (param i32 i32))
              (func (export "opa_eval_ctx_get_result") (param i32) (result i32) (i32.const 2048))
              (func (export "eval") (param i32) (result i32) (i32.const 0))
              (func (export "entrypoints") (result i32) (i32.const 256))
              (func (export "builtins") (result i32) (i32.const 1024))
              (func (export "opa_eval") (param i32 i32 i32 i32 i32 i32 i32) (result i32) {body}))"#
        )
    }

    fn load(&self) -> Result<WasmEngine, String> {
        load("hostile-opa.wat", &self.wat())
    }
}

#[test]
fn the_hostile_template_allows_when_it_behaves() {
    // Without this, the denials below could come from a broken template.
    let engine = Hostile::default().load().unwrap();
    let input = serde_json::from_value(super::issuance_input()).unwrap();
    assert!(engine.can_issue_certificate(&input).unwrap().allow);
}

#[test]
fn traps_loops_aborts_and_runaway_memory_deny() {
    let deny = |body: &str, what: &str| denied_quickly(Hostile { body, ..Hostile::default() }.load().unwrap(), what);
    assert!(deny("unreachable", "trap").contains("trapped"));
    assert!(deny("(loop (br 0)) (i32.const 0)", "endless loop").contains("ran out of fuel"));
    assert!(deny("(call $abort (i32.const 3072)) (i32.const 2048)", "opa_abort").contains("opa_abort: boom"));
    deny("(loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable", "unbounded memory");
}

#[test]
fn results_that_are_not_one_well_formed_answer_deny() {
    let deny =
        |answer: &str, what: &str| denied_quickly(Hostile { answer, ..Hostile::default() }.load().unwrap(), what);
    deny("not json", "bad JSON");
    assert!(deny("[]", "undefined").contains("undefined"));
    assert!(
        deny(&format!("[{},{}]", &ALLOW[1..ALLOW.len() - 1], &ALLOW[1..ALLOW.len() - 1]), "two results")
            .contains("2 results")
    );
    deny(r#"[{"result":{"allow":"yes"}}]"#, "wrong shape");
    deny(r#"[{"x":{"allow":true}}]"#, "no result binding");
    let deny = |body: &str, what: &str| denied_quickly(Hostile { body, ..Hostile::default() }.load().unwrap(), what);
    assert!(deny("(i32.const -16)", "out of bounds").contains("out of bounds"));
    assert!(
        deny("(memory.fill (i32.const 4096) (i32.const 65) (i32.const 61440)) (i32.const 4096)", "no NUL")
            .contains("not NUL-terminated")
    );
}

#[test]
fn a_failing_or_unknown_builtin_denies() {
    let hostile = |body| Hostile { builtins: r#"{"sprintf":0}"#, body, ..Hostile::default() };
    let reason = denied_quickly(
        hostile(
            "(drop (call $builtin2 (i32.const 0) (i32.const 0) (i32.const 3100) (i32.const 3120))) (i32.const 2048)",
        )
        .load()
        .unwrap(),
        "sprintf error",
    );
    assert!(reason.contains("sprintf: %d needs an integer"), "{reason}");
    let reason = denied_quickly(
        hostile(
            "(drop (call $builtin2 (i32.const 7) (i32.const 0) (i32.const 3100) (i32.const 3120))) (i32.const 2048)",
        )
        .load()
        .unwrap(),
        "unknown builtin",
    );
    assert!(reason.contains("unknown builtin id 7"), "{reason}");
}

#[test]
fn every_decision_starts_from_a_fresh_instance() {
    let body = "(if (i32.or (global.get $calls) (i32.load (i32.const 64))) (then unreachable)) \
                (global.set $calls (i32.const 1)) (i32.store (i32.const 64) (i32.const 1)) (i32.const 2048)";
    let engine = Hostile { body, ..Hostile::default() }.load().unwrap();
    let input = serde_json::from_value(super::issuance_input()).unwrap();
    for _ in 0..300 {
        assert!(engine.can_issue_certificate(&input).unwrap().allow);
    }
}

#[test]
fn missing_entrypoints_and_host_builtins_are_named_at_load() {
    let err = Hostile { entrypoints: r#"{"crank/can_issue_certificate":0}"#, ..Hostile::default() }.load().unwrap_err();
    assert!(
        err.contains("hostile-opa.wat") && err.contains("no entrypoint crank/certificate_validity_period"),
        "{err}"
    );
    assert!(err.contains("opa build -t wasm -e crank/can_issue_certificate"), "{err}");

    // `data.crank.x` names the same rule as `crank/x`.
    let dotted = ENTRYPOINTS.replace("crank/", "data.crank.");
    Hostile { entrypoints: &dotted, ..Hostile::default() }.load().unwrap();

    let err = Hostile { builtins: r#"{"http.send":0,"sprintf":1,"time.now_ns":2}"#, ..Hostile::default() }
        .load()
        .unwrap_err();
    assert!(err.contains("does not provide: http.send, time.now_ns (provided: sprintf"), "{err}");
}

#[test]
fn modules_that_do_not_speak_the_abi_are_refused_at_load() {
    let err = Hostile { major: 2, ..Hostile::default() }.load().unwrap_err();
    assert!(err.contains("ABI 2.2"), "{err}");
    let err = Hostile { memory_pages: 1000, ..Hostile::default() }.load().unwrap_err();
    assert!(err.contains("env.memory asks for 1000 pages"), "{err}");

    let wasi = Hostile::default().wat().replacen(
        "(import \"env\" \"opa_abort\"",
        "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32)))\n(import \"env\" \"opa_abort\"",
        1,
    );
    let err = load("wasi.wat", &wasi).unwrap_err();
    assert!(err.contains("imports wasi_snapshot_preview1::fd_write"), "{err}");

    let err = load(
        "bare-opa.wat",
        r#"(module (import "env" "memory" (memory 1)) (global (export "opa_wasm_abi_version") i32 (i32.const 1)))"#,
    )
    .unwrap_err();
    assert!(err.contains("does not export `opa_malloc`") && err.contains("does not export `eval`"), "{err}");
}

#[test]
fn a_policy_directory_with_an_opa_module_is_detected_and_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let binary = wat::parse_file(opa_module()).unwrap();
    std::fs::write(dir.path().join("policy.wasm"), binary).unwrap();
    let engine = crank_policy::load_dir(dir.path()).unwrap();
    let failures = default_case_failures(engine.as_ref());
    assert!(failures.is_empty(), "{failures:#?}");
}
