//! Table-driven policy cases: `input -> expected decision`, run against any engine.
//!
//! A case file is a JSON array of `{"name", "hook", "input", "expected"}`, optionally
//! with `"policy": ["file.rego", ...]`: the files of the policy directory the case runs
//! against (layered on the defaults), when not the whole directory. Case files live in a
//! `cases/` directory beside the policy they test ([`find_suites`]). Inputs are the
//! documents each hook receives (see `policies/README.md`); expected values:
//!
//! | hook | expected |
//! |---|---|
//! | `can_issue_certificate` | `{"allow": bool}` (and optionally `"reason_contains": "..."`) |
//! | `certificate_validity_period` | `{"seconds": number}` |
//! | `should_renew_certificate` | `{"renew": bool, "expiring_soon": bool}` |
//! | `revoke_certificate` | `{"allow": bool}` |
//! | `can_access_capability` | `{"allow": bool}` (and optionally `"reason_contains"`, `"rate_limit"`) |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crank_security_core::{AccessInput, IssuanceInput, PolicyEngine, RenewalInput};
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
    /// The files of the policy directory this case runs against (layered on the
    /// defaults); empty: the whole directory.
    #[serde(default)]
    pub policy: Vec<String>,
}

/// A directory of case files and the policy directory they test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    /// The policy directory: the parent of `cases`.
    pub policy_dir: PathBuf,
    /// The directory holding the `*.json` case files.
    pub cases_dir: PathBuf,
}

/// Every `cases/` directory under `root` (hidden directories and `target/` skipped),
/// sorted, each with the policy directory it belongs to, its parent. `root` itself
/// counts when it holds case files directly and no `cases/` is found.
pub fn find_suites(root: &Path) -> Vec<Suite> {
    fn walk(dir: &Path, found: &mut Vec<Suite>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut dirs: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        for d in dirs {
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if name == "cases" {
                found.push(Suite { policy_dir: dir.to_path_buf(), cases_dir: d });
            } else {
                walk(&d, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(root, &mut found);
    let has_json = |d: &Path| {
        std::fs::read_dir(d)
            .map(|rd| rd.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == "json")))
            .unwrap_or(false)
    };
    if found.is_empty() && has_json(root) {
        found.push(Suite { policy_dir: root.to_path_buf(), cases_dir: root.to_path_buf() });
    }
    found
}

/// The engine `case` runs against in `policy_dir`: the files it names (layered on the
/// defaults), else the whole directory; a directory without policy files means the
/// defaults alone.
pub fn engine_for(policy_dir: &Path, case: &Case) -> Result<Arc<dyn PolicyEngine>, String> {
    if !case.policy.is_empty() {
        let sources = case
            .policy
            .iter()
            .map(|f| {
                let path = policy_dir.join(f);
                std::fs::read_to_string(&path)
                    .map(|s| (path.clone(), s))
                    .map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return crate::RegoEngine::from_sources(sources).map(|e| Arc::new(e) as _).map_err(|e| e.to_string());
    }
    let has_policy = !crate::rego::rego_files(policy_dir).map_err(|e| e.to_string())?.is_empty()
        || !crate::wasm_modules(policy_dir).is_empty();
    if has_policy {
        crate::load_dir(policy_dir).map_err(|e| e.to_string())
    } else {
        crate::RegoEngine::defaults().map(|e| Arc::new(e) as _).map_err(|e| e.to_string())
    }
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
        "can_access_capability" => {
            let i: AccessInput = serde_json::from_value(input.clone()).map_err(parse_err)?;
            let d = engine.can_access_capability(&i).map_err(|e| e.to_string())?;
            Ok(json!({"allow": d.allow, "reason": d.reason, "rate_limit": d.rate_limit}))
        }
        other => Err(format!(
            "unknown hook {other:?}; expected can_issue_certificate, certificate_validity_period, should_renew_certificate, revoke_certificate or can_access_capability"
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
