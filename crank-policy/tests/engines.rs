//! The shipped policies and cases, run against every engine that can run them.

#[path = "support/policies.rs"]
mod policies;

use std::time::Duration;

use crank_policy::{PolicyEngine, RegoEngine, ReloadingEngine, builtin, cases};
use policies::policies;

#[test]
fn builtin_and_rego_agree_on_every_default_case() {
    let all = cases::load_dir(&policies().join("default/cases")).unwrap();
    assert!(all.len() >= 10, "only {} cases", all.len());
    let rego = RegoEngine::from_dir(&policies().join("default")).unwrap();
    let builtin = builtin();
    let engines: [(&str, &dyn PolicyEngine); 2] = [("builtin", builtin.as_ref()), ("rego", &rego)];
    let mut failures = Vec::new();
    for (name, engine) in engines {
        for case in &all {
            if let Err(e) = cases::run(engine, case) {
                failures.push(format!("{name}: {}: {e}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_broken_policy_is_rejected_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.rego"), "package crank\nimport rego.v1\n\nallow if {\n  input.x ==\n}\n")
        .unwrap();
    let err = RegoEngine::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("bad.rego") && err.contains(":5") || err.contains("bad.rego:6"), "{err}");
}

#[test]
fn hot_reload_swaps_good_policies_and_keeps_the_old_one_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crank.rego");
    let policy = |secs: u32| {
        format!(
            "package crank\nimport rego.v1\ndefault can_issue_certificate := {{\"allow\": true}}\n\
             default certificate_validity_period := {secs}\n\
             default should_renew_certificate := {{\"renew\": false, \"expiring_soon\": false}}\n\
             default revoke_certificate := true\n"
        )
    };
    std::fs::write(&file, policy(3600)).unwrap();
    let engine = ReloadingEngine::start(dir.path()).unwrap();
    assert_eq!(engine.certificate_validity_period("w", "e").unwrap(), Duration::from_secs(3600));

    // A new policy goes live.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&file, policy(7200)).unwrap();
    assert!(engine.reload_if_changed().unwrap());
    assert_eq!(engine.certificate_validity_period("w", "e").unwrap(), Duration::from_secs(7200));

    // A broken one is rejected; the previous policy keeps deciding.
    std::fs::write(&file, "package crank\nthis is not rego\n").unwrap();
    let err = engine.reload_if_changed().unwrap_err().to_string();
    assert!(err.contains("crank.rego"), "{err}");
    assert_eq!(engine.certificate_validity_period("w", "e").unwrap(), Duration::from_secs(7200));
}

#[test]
fn malformed_rules_and_undefined_defaults_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package crank\nimport rego.v1\ncan_issue_certificate := \"yes\"\ncertificate_validity_period := -5\n\
         should_renew_certificate := {\"renew\": \"maybe\"}\n",
    )
    .unwrap();
    // A directory with defaults of its own, one of them undefined for some input.
    std::fs::write(
        dir.path().join("defaults.rego"),
        "package crank.defaults\nimport rego.v1\nrevoke_certificate if input.reason == \"never\"\n",
    )
    .unwrap();
    let e = RegoEngine::from_dir(dir.path()).unwrap();
    let input = serde_json::json!({"worker_id": "w", "capabilities": [], "requested_dns_sans": [], "requested_ip_sans": [],
        "key_type": "ecdsa-p256", "environment": "e", "trust_domain": "td", "renewal": false});
    assert!(cases::evaluate(&e, "can_issue_certificate", &input).is_err());
    assert!(e.certificate_validity_period("w", "e").is_err());
    assert!(e.revoke_certificate("w", "r").is_err(), "a default rule undefined for the input must be an error");
    let guard = crank_policy::PolicyGuard::new(std::sync::Arc::new(e));
    assert!(guard.may_revoke("w", "keyCompromise").is_err());
}

#[test]
fn a_file_may_define_one_hook_and_the_others_keep_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("validity.rego"),
        "package crank\nimport rego.v1\ncertificate_validity_period := 600 if input.environment == \"production\"\n",
    )
    .unwrap();
    let rego = RegoEngine::from_dir(dir.path()).unwrap();
    assert_eq!(rego.certificate_validity_period("w", "production").unwrap(), Duration::from_secs(600));
    // Undefined for this input: the default decides.
    assert_eq!(rego.certificate_validity_period("w", "staging").unwrap(), Duration::from_secs(86400));
    // Every other hook is the default's, and gives the built-in engine's answers.
    let all = cases::load_dir(&policies().join("default/cases")).unwrap();
    let failures: Vec<String> = all
        .iter()
        .filter(|c| c.hook != "certificate_validity_period")
        .filter_map(|c| cases::run(&rego, c).err().map(|e| format!("{}: {e}", c.name)))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_example_policies_pass_their_cases_on_top_of_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    for src in [policies().join("default"), policies().join("examples")] {
        for entry in std::fs::read_dir(src).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|x| x == "rego") {
                std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let rego = RegoEngine::from_dir(dir.path()).unwrap();
    let all = cases::load_dir(&policies().join("examples/cases")).unwrap();
    assert!(all.len() >= 10);
    let failures: Vec<String> =
        all.iter().filter_map(|c| cases::run(&rego, c).err().map(|e| format!("{}: {e}", c.name))).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}
