//! The OPA Wasm ABI: the hand-written OPA-shaped default policy passes every case on
//! both evaluation paths, hostile modules deny or are refused at load.

use std::path::PathBuf;
use std::sync::Arc;

use crank_policy::wasm::Abi;
use crank_policy::{DefaultPolicy, PolicyEngine, PolicyGuard, RegoEngine, WasmEngine, cases};
use crank_security_core::{AccessDecision, AccessInput, RateLimit};
use serde_json::{Value, json};

use super::{default_case_failures, denied_quickly, load, on_four_threads, policies};

fn opa_module() -> PathBuf {
    policies().join("wasm/opa-default/crank.wat")
}

/// The OPA module's text, claiming ABI 1.1: decisions then go through the evaluation
/// context instead of `opa_eval`.
fn opa_module_abi_1_1() -> String {
    let text = std::fs::read_to_string(opa_module()).unwrap();
    let minor_1 = text.replace(
        r#"(global (export "opa_wasm_abi_minor_version") i32 (i32.const 2))"#,
        r#"(global (export "opa_wasm_abi_minor_version") i32 (i32.const 1))"#,
    );
    assert_ne!(text, minor_1);
    minor_1
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
    let engine = load("crank-1.1.wat", &opa_module_abi_1_1()).unwrap();
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

/// An access input: a caller of `crank.local` holding `grants`, asking for `capability`.
fn access_input(grants: &[&str], capability: Option<&str>) -> Value {
    json!({
        "caller": {"spiffe_id": "spiffe://crank.local/caller", "worker_id": "caller", "administrator": false,
            "trust_domain": "crank.local", "serial": "3d:ec:01", "not_after": 1_763_986_400, "capabilities": grants},
        "target": {"worker_id": "email", "trust_domain": "crank.local", "capability": capability},
        "request": {"method": "POST", "path": "/classify", "route": "/classify"},
        "environment": "development"
    })
}

/// `input` with the value at JSON pointer `at` replaced by `value`.
fn with(mut input: Value, at: &str, value: Value) -> Value {
    *input.pointer_mut(at).unwrap_or_else(|| panic!("no {at}")) = value;
    input
}

/// Inputs covering every branch of the Rego default's `can_access_capability`, with
/// whether it allows.
fn access_table() -> Vec<(&'static str, Value, bool)> {
    let foreign = |input| with(input, "/caller/trust_domain", json!("other.example"));
    let admin = |input| with(input, "/caller/administrator", json!(true));
    let same_domain = |input, domain: &str| {
        with(with(input, "/caller/trust_domain", json!(domain)), "/target/trust_domain", json!(domain))
    };
    vec![
        ("no capability named", access_input(&[], None), true),
        ("no capability named, no route", with(access_input(&[], None), "/request/route", Value::Null), true),
        ("foreign domain, no capability named", foreign(access_input(&[], None)), false),
        (
            "foreign domain, capability granted",
            foreign(access_input(&["email.classify"], Some("email.classify"))),
            false,
        ),
        ("foreign administrator", foreign(admin(access_input(&["admin"], Some("ca.revoke")))), false),
        ("administrator", admin(access_input(&[], Some("ca.revoke"))), true),
        ("open: platform.register", access_input(&[], Some("platform.register")), true),
        ("open: platform.heartbeat", access_input(&[], Some("platform.heartbeat")), true),
        ("not open: under platform.register", access_input(&[], Some("platform.register.x")), false),
        ("not open: prefix of platform.heartbeat", access_input(&[], Some("platform.heart")), false),
        ("exact grant", access_input(&["email.classify"], Some("email.classify")), true),
        (
            "exact grant, last of several",
            access_input(&["metrics.read", "san:w", "email.send"], Some("email.send")),
            true,
        ),
        ("admin grant", access_input(&["metrics.read", "admin"], Some("ca.revoke")), true),
        ("admin is no prefix", access_input(&["admin"], Some("admin.x")), true),
        ("not admin: administrator", access_input(&["administrator"], Some("ca.revoke")), false),
        ("wildcard grant", access_input(&["email.*"], Some("email.classify")), true),
        ("wildcard grant, deeper", access_input(&["email.*"], Some("email.send.bulk")), true),
        ("wildcard grant, after others", access_input(&["metrics.read", "email.*"], Some("email.x")), true),
        ("wildcard grant, nested", access_input(&["email.send.*"], Some("email.send.bulk")), true),
        ("wildcard covers only under its prefix", access_input(&["email.*"], Some("emailer.send")), false),
        ("wildcard does not cover its prefix", access_input(&["email.*"], Some("email")), false),
        ("nested wildcard does not cover a sibling", access_input(&["email.send.*"], Some("email.read")), false),
        ("a bare * is no wildcard", access_input(&["*"], Some("email.classify")), false),
        ("a grant that is a prefix only", access_input(&["email"], Some("email.classify")), false),
        ("a grant longer than the capability", access_input(&["email.classify.x"], Some("email.classify")), false),
        ("plain denial", access_input(&["metrics.read"], Some("email.classify")), false),
        ("no grants at all", access_input(&[], Some("email.classify")), false),
        // Strings the module compares and passes to sprintf in their JSON-escaped form.
        ("escaped grant", access_input(&[r#"q"x\y"#], Some(r#"q"x\y"#)), true),
        ("escaped denial", access_input(&[r#"q"x"#], Some(r#"q"x\y"#)), false),
        ("escaped wildcard", access_input(&[r#"q"\.*"#], Some(r#"q"\.z"#)), true),
        ("same non-ASCII domain", same_domain(access_input(&[], None), "caf\u{e9}.example"), true),
        (
            "same non-ASCII domain, wildcard grant",
            same_domain(access_input(&["caf\u{e9}.*"], Some("caf\u{e9}.menu")), "caf\u{e9}.example"),
            true,
        ),
        ("foreign non-ASCII domain", with(access_input(&[], None), "/caller/trust_domain", json!("caf\u{e9}")), false),
        (
            "quotes in the foreign domain",
            with(access_input(&[], Some("x")), "/caller/trust_domain", json!("o\"t\\h\ner")),
            false,
        ),
    ]
}

/// A caller whose trust domain has a DEL in it, refused: the host `sprintf` the module
/// words its denials with quotes the domain as Go's `%q` does (`\x7f`, as regorus does
/// too), the built-in Rust rule as Rust's `{:?}` does (`\u{7f}`). The reason tells who
/// decided.
fn foreign_del_reason(engine: &dyn PolicyEngine) -> String {
    let input = with(access_input(&[], Some("email.classify")), "/caller/trust_domain", json!("other\u{7f}.example"));
    let decision = cases::evaluate(engine, "can_access_capability", &input).unwrap();
    assert_eq!(decision["allow"], false, "{decision}");
    decision["reason"].as_str().unwrap().to_owned()
}

/// The reason the module gives in [`foreign_del_reason`].
const MODULE_DEL_REASON: &str =
    r#"caller spiffe://crank.local/caller is of trust domain "other\x7f.example", not "crank.local""#;

#[test]
fn the_opa_module_decides_can_access_capability_itself_as_the_rego_default_does() {
    let rego = RegoEngine::from_dir(&policies().join("default")).unwrap();
    let opa_1_2 = WasmEngine::from_file(&opa_module()).unwrap();
    let opa_1_1 = load("crank-1.1.wat", &opa_module_abi_1_1()).unwrap();
    for engine in [&opa_1_2, &opa_1_1] {
        let abi = engine.abi();
        for (name, input, allow) in access_table() {
            let from_opa = cases::evaluate(engine, "can_access_capability", &input).unwrap();
            let from_rego = cases::evaluate(&rego, "can_access_capability", &input).unwrap();
            assert_eq!(from_opa, from_rego, "{name} ({abi:?})");
            assert_eq!(from_opa["allow"], allow, "{name} ({abi:?}): {from_opa}");
            assert_eq!(from_opa["rate_limit"], Value::Null, "{name} ({abi:?})");
            let reason = from_opa["reason"].as_str();
            if allow {
                assert_eq!(reason, None, "{name} ({abi:?})");
            } else {
                let reason = reason.unwrap_or_else(|| panic!("{name} ({abi:?}): no reason"));
                assert!(
                    reason.starts_with("caller spiffe://crank.local/caller ")
                        && (reason.contains(" is of trust domain ") || reason.contains(" does not hold capability ")),
                    "{name} ({abi:?}): {reason}"
                );
            }
        }
        assert_eq!(foreign_del_reason(engine), MODULE_DEL_REASON, "{abi:?}");
    }
    assert_eq!(foreign_del_reason(&rego), MODULE_DEL_REASON);
    let reason = cases::evaluate(
        &opa_1_2,
        "can_access_capability",
        &access_input(&["email.*", "metrics.read"], Some("emailer.send")),
    )
    .unwrap()["reason"]
        .clone();
    assert_eq!(
        reason,
        "caller spiffe://crank.local/caller does not hold capability emailer.send; grant it at issuance \
         (`crank token create --capability emailer.send`) or allow it in can_access_capability"
    );

    // The same module without the entrypoint leaves the hook to the built-in rule, which
    // words that denial otherwise: the check above tells the module's answers apart.
    let text = std::fs::read_to_string(opa_module()).unwrap();
    let without = text.replace("crank/can_access_capability", "crank/can_access_capabilitx");
    assert_ne!(text, without);
    let built_in = load("crank-without-access.wat", &without).unwrap();
    let reason = foreign_del_reason(&built_in);
    assert_ne!(reason, MODULE_DEL_REASON);
    assert_eq!(reason, foreign_del_reason(&DefaultPolicy::default()));
}

#[test]
fn a_malformed_access_answer_denies_and_without_the_entrypoint_the_built_in_rule_decides() {
    let entrypoints = ENTRYPOINTS.replace('}', r#","crank/can_access_capability":4}"#);
    let module = |answer| Hostile { entrypoints: &entrypoints, answer, ..Hostile::default() }.load().unwrap();
    // The built-in rule would allow this caller.
    let input: AccessInput = serde_json::from_value(access_input(&[], None)).unwrap();
    for answer in [
        "not json",
        "[]",
        r#"[{"result":{"allow":"yes"}}]"#,
        r#"[{"result":{"reason":"no allow"}}]"#,
        r#"[{"result":true}]"#,
        r#"[{"result":{"allow":true}},{"result":{"allow":true}}]"#,
    ] {
        let denied = PolicyGuard::new(Arc::new(module(answer))).may_access(&input).unwrap_err();
        assert!(denied.engine_failure && denied.reason.contains("can_access_capability"), "{answer}: {denied:?}");
    }
    // Well-formed answers are the decision, a rate limit included.
    assert_eq!(
        module(r#"[{"result":{"allow":false,"reason":"the module says no"}}]"#).can_access_capability(&input).unwrap(),
        AccessDecision::deny("the module says no")
    );
    let limited = module(r#"[{"result":{"allow":true,"rate_limit":{"requests_per_second":2.5}}}]"#)
        .can_access_capability(&input)
        .unwrap();
    assert!(limited.allow);
    assert_eq!(limited.rate_limit, Some(RateLimit { requests_per_second: 2.5, burst: 1 }));

    // Without the entrypoint the module is not asked: the built-in rule allows.
    let engine = Hostile { answer: r#"[{"result":{"allow":"yes"}}]"#, ..Hostile::default() }.load().unwrap();
    assert_eq!(engine.can_access_capability(&input).unwrap(), AccessDecision::allow());
}

#[test]
fn the_engine_can_be_shared_across_threads() {
    on_four_threads(WasmEngine::from_file(&opa_module()).unwrap(), |e| {
        let failures = default_case_failures(e);
        assert!(failures.is_empty(), "{failures:#?}");
    });
}

/// The four required entrypoints, as `entrypoints()` lists them.
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
