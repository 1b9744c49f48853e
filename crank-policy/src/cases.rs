//! Table-driven policy cases: `input -> expected decision`, run against any engine.
//!
//! A case file is a JSON array of `{"name", "hook", "input", "expected"}`. Inputs are the
//! documents each hook receives (see `policies/README.md`); expected values:
//!
//! | hook | expected |
//! |---|---|
//! | `can_issue_certificate` | `{"allow": bool}` (and optionally `"reason_contains": "..."`) |
//! | `certificate_validity_period` | `{"seconds": number}` |
//! | `should_renew_certificate` | `{"renew": bool, "expiring_soon": bool}` |
//! | `revoke_certificate` | `{"allow": bool}` |

use std::path::Path;

use crank_security_core::{IssuanceInput, PolicyEngine, RenewalInput};
use serde::Deserialize;
use serde_json::{Value, json};

/// One case.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// What the case shows.
    pub name: String,
    /// The hook to call.
    pub hook: String,
    /// The hook's input document.
    pub input: Value,
    /// The expected decision.
    pub expected: Value,
}

#[derive(Deserialize)]
struct ValidityIn {
    worker_id: String,
    environment: String,
}

#[derive(Deserialize)]
struct RevokeIn {
    worker_id: String,
    reason: String,
}

/// Evaluates `hook` on `input` with `engine`; the decision as JSON (the shape of the
/// `expected` column). An engine error is returned as `Err` (a denial at call sites).
pub fn evaluate(engine: &dyn PolicyEngine, hook: &str, input: &Value) -> Result<Value, String> {
    let parse_err = |e: serde_json::Error| format!("input for {hook} is malformed: {e}");
    match hook {
        "can_issue_certificate" => {
            let i: IssuanceInput = serde_json::from_value(input.clone()).map_err(parse_err)?;
            let d = engine.can_issue_certificate(&i).map_err(|e| e.to_string())?;
            Ok(json!({"allow": d.allow, "reason": d.reason}))
        }
        "certificate_validity_period" => {
            let i: ValidityIn = serde_json::from_value(input.clone()).map_err(parse_err)?;
            let d = engine.certificate_validity_period(&i.worker_id, &i.environment).map_err(|e| e.to_string())?;
            Ok(json!({"seconds": d.as_secs_f64()}))
        }
        "should_renew_certificate" => {
            let i: RenewalInput = serde_json::from_value(input.clone()).map_err(parse_err)?;
            let d = engine.should_renew_certificate(&i).map_err(|e| e.to_string())?;
            Ok(json!({"renew": d.renew, "expiring_soon": d.expiring_soon}))
        }
        "revoke_certificate" => {
            let i: RevokeIn = serde_json::from_value(input.clone()).map_err(parse_err)?;
            let d = engine.revoke_certificate(&i.worker_id, &i.reason).map_err(|e| e.to_string())?;
            Ok(json!({"allow": d}))
        }
        other => Err(format!(
            "unknown hook {other:?}; expected can_issue_certificate, certificate_validity_period, should_renew_certificate or revoke_certificate"
        )),
    }
}

/// Runs one case; `Err` says how the decision differed.
pub fn run(engine: &dyn PolicyEngine, case: &Case) -> Result<(), String> {
    let got = evaluate(engine, &case.hook, &case.input)?;
    let Some(expected) = case.expected.as_object() else {
        return Err("expected must be a JSON object".into());
    };
    for (key, want) in expected {
        if key == "reason_contains" {
            let reason = got.get("reason").and_then(Value::as_str).unwrap_or_default();
            if !want.as_str().is_some_and(|w| reason.contains(w)) {
                return Err(format!("reason {reason:?} does not contain {want}"));
            }
            continue;
        }
        let have = got.get(key).unwrap_or(&Value::Null);
        let same = match (have.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
            _ => have == want,
        };
        if !same {
            return Err(format!("{key}: expected {want}, got {have}"));
        }
    }
    Ok(())
}

/// Loads every `*.json` case file in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Case>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        let mut more: Vec<Case> = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        cases.append(&mut more);
    }
    Ok(cases)
}
