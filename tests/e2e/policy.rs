//! Policy hooks evaluated by Rego change real behaviour, and follow file changes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crank_policy::{RegoEngine, ReloadingEngine};
use crank_runtime::BootstrapError;
use crank_runtime::demo::hello_routes;
use crank_security_core::{EventKind, EventSinks, ProviderError};
use crank_tests::{Recorder, TestCa, crank_command, crank_output, policies};

/// A policy directory: the default policy plus `extra` files.
fn policy_dir(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(policies().join("default/defaults.rego"), dir.path().join("defaults.rego")).unwrap();
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn lifetime_secs(b: &crank_security_core::CertificateBundle) -> i64 {
    b.metadata().granted_lifetime().whole_seconds()
}

#[tokio::test]
async fn a_rego_deny_list_makes_bootstrap_fail_with_a_policy_error() {
    let deny = std::fs::read_to_string(policies().join("examples/deny_workers.rego")).unwrap();
    let dir = policy_dir(&[("deny.rego", &deny)]);
    let ca = TestCa::start_with_policy(Arc::new(RegoEngine::from_dir(dir.path()).unwrap())).await;
    match crank_runtime::bootstrap(&ca.bootstrap_options("mallory"), &EventSinks::empty()).await.unwrap_err() {
        BootstrapError::Refused(ProviderError::PolicyDenied(m)) => {
            assert!(m.contains("mallory") && m.contains("deny list"), "{m}")
        }
        other => panic!("{other}"),
    }
    assert_eq!(ca.events.of(EventKind::CsrFailed).len(), 1);
    // Everyone else still gets a certificate.
    ca.bootstrap("alice").await;
}

#[tokio::test]
async fn a_rego_validity_of_one_hour_yields_one_hour_certificates() {
    let dir = policy_dir(&[]);
    let text = std::fs::read_to_string(dir.path().join("defaults.rego")).unwrap();
    std::fs::write(
        dir.path().join("defaults.rego"),
        text.replace("default certificate_validity_period := 86400", "default certificate_validity_period := 3600"),
    )
    .unwrap();
    let ca = TestCa::start_with_policy(Arc::new(RegoEngine::from_dir(dir.path()).unwrap())).await;
    assert_eq!(lifetime_secs(&ca.bootstrap("hourly").await), 3600);
}

#[tokio::test]
async fn replacing_the_policy_file_while_serving_takes_effect_and_a_broken_file_is_ignored() {
    let dir = policy_dir(&[]);
    let file = dir.path().join("defaults.rego");
    let default = std::fs::read_to_string(&file).unwrap();
    let with_validity = |secs: u32| {
        default.replace(
            "default certificate_validity_period := 86400",
            &format!("default certificate_validity_period := {secs}"),
        )
    };
    std::fs::write(&file, with_validity(3600)).unwrap();
    let engine = ReloadingEngine::start(dir.path()).unwrap();
    let ca = TestCa::start_with_policy(engine.clone()).await;
    assert_eq!(lifetime_secs(&ca.bootstrap("first").await), 3600);

    // The next issuance follows the new file (the reloader polls every second).
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, with_validity(7200)).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(lifetime_secs(&ca.bootstrap("second").await), 7200);

    // A broken file is rejected: the previous policy keeps deciding.
    std::fs::write(&file, "package crank\nimport rego.v1\nthis is not rego\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(engine.reload_if_changed().is_ok(), "already handled by the reloader");
    assert_eq!(lifetime_secs(&ca.bootstrap("third").await), 7200);
}

#[tokio::test]
async fn should_renew_certificate_drives_the_workers_renewal() {
    let ca = TestCa::start().await;
    // Renew as soon as a certificate is 2 seconds old (24 h certificates otherwise).
    let dir = policy_dir(&[]);
    let text = std::fs::read_to_string(dir.path().join("defaults.rego")).unwrap();
    let eager = text.replace(
        "\"renew\": (input.now - input.issued_at) >= ((lifetime * 2) / 3) + ((lifetime * input.jitter) / 20),",
        "\"renew\": (input.now - input.issued_at) >= 2,",
    );
    assert_ne!(eager, text);
    std::fs::write(dir.path().join("defaults.rego"), eager).unwrap();
    let events = Arc::new(Recorder::default());
    let worker = ca
        .app("eager", hello_routes())
        .policy(Arc::new(RegoEngine::from_dir(dir.path()).unwrap()))
        .event_sink(events.clone())
        .start()
        .await
        .unwrap();
    let first = worker.rotator.current().metadata().serial.clone();
    let mut serials = worker.rotator.subscribe();
    // The rotator looks every 30 s at a 24 h certificate.
    tokio::time::timeout(Duration::from_secs(40), serials.changed())
        .await
        .expect("the policy did not drive a renewal")
        .unwrap();
    assert_ne!(*serials.borrow(), first);
    worker.shutdown().await.unwrap();

    // And with the default policy, a fresh 24 h certificate is not renewed.
    let calm = ca.worker("calm", hello_routes()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calm.rotator.current().metadata().serial, calm.bundle.metadata().serial);
    calm.shutdown().await.unwrap();
}

/// `crank policy test DIR --cases CASES`.
fn crank_policy_test(dir: &Path, cases: &Path) -> std::process::Output {
    crank_output(&["policy", "test", dir.to_str().unwrap(), "--cases", cases.to_str().unwrap()])
}

#[test]
fn crank_policy_test_runs_the_cases_and_fails_on_a_mismatch() {
    let ok = crank_policy_test(&policies().join("default"), &policies().join("default/cases"));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}{}", String::from_utf8_lossy(&ok.stderr));
    let n = crank_policy::cases::load_dir(&policies().join("default/cases")).unwrap().len();
    assert!(out.contains(&format!("PASS: {n}/{n}")), "{out}");

    let cases = tempfile::tempdir().unwrap();
    std::fs::write(
        cases.path().join("wrong.json"),
        r#"[{"name": "validity is one minute", "hook": "certificate_validity_period", "input": {"worker_id": "w", "environment": "e"}, "expected": {"seconds": 60}}]"#,
    )
    .unwrap();
    let bad = crank_policy_test(&policies().join("default"), cases.path());
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("FAIL: validity is one minute: seconds: expected 60, got 86400"), "{out}");

    let default = policies().join("default");
    let eval = crank_command(&["policy", "eval", "--policy-dir", default.to_str().unwrap()])
        .args(["--hook", "revoke_certificate", "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(br#"{"worker_id": "w", "reason": "keyCompromise"}"#)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(eval.status.success());
    let v: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"allow": true}));
}

#[test]
fn crank_policy_test_policies_from_the_repository_root_runs_every_case_file_and_passes() {
    let root = policies().parent().unwrap().to_path_buf();
    let run = crank_command(&["policy", "test", "policies"]).current_dir(&root).output().unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{out}{}", String::from_utf8_lossy(&run.stderr));
    let suites = crank_policy::cases::find_suites(&root.join("policies"));
    assert!(suites.len() >= 2, "{suites:?}");
    let n: usize = suites.iter().map(|s| crank_policy::cases::load_dir(&s.cases_dir).unwrap().len()).sum();
    assert!(out.contains(&format!("PASS: {n}/{n}")), "{out}");
    assert!(out.contains("== policies/default") && out.contains("== policies/examples"), "{out}");
}

#[test]
fn crank_policy_test_runs_an_opa_compiled_module_from_a_policy_directory() {
    // The OPA-ABI stand-in for `opa build -t wasm` output, assembled to a binary module.
    let dir = tempfile::tempdir().unwrap();
    let module = wat::parse_file(policies().join("wasm/opa-default/crank.wat")).unwrap();
    std::fs::write(dir.path().join("policy.wasm"), module).unwrap();
    let run = crank_policy_test(dir.path(), &policies().join("default/cases"));
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{out}{}", String::from_utf8_lossy(&run.stderr));
    let n = crank_policy::cases::load_dir(&policies().join("default/cases")).unwrap().len();
    assert!(out.contains(&format!("PASS: {n}/{n}")), "{out}");
}

#[tokio::test]
async fn a_looping_wasm_policy_denies_and_the_ca_stays_responsive() {
    let wat = r#"(module
        (memory (export "memory") 1)
        (func (export "crank_alloc") (param i32) (result i32) (i32.const 1024))
        (func (export "crank_evaluate") (param i32 i32 i32 i32) (result i64) (loop (br 0)) (i64.const 0)))"#;
    let engine = crank_policy::WasmEngine::from_bytes(Path::new("loop.wat"), wat.as_bytes()).unwrap();
    let ca = TestCa::start_with_policy(Arc::new(engine)).await;
    let roots = vec![ca.dir.root_der().unwrap()];
    let started = std::time::Instant::now();
    let issuing = tokio::spawn({
        let opts = ca.bootstrap_options("looped");
        async move { crank_runtime::bootstrap(&opts, &EventSinks::empty()).await }
    });
    // While the policy spins, the CA answers health checks.
    let client = super::no_client_cert(&roots);
    let r = client.get(format!("{}health", ca.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    match issuing.await.unwrap().unwrap_err() {
        BootstrapError::Refused(ProviderError::PolicyDenied(m)) => assert!(m.contains("fuel"), "{m}"),
        other => panic!("{other}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(ca.events.of(EventKind::CertValidationFailed).len(), 1, "an engine failure is CERT_VALIDATION_FAILED");
}
