//! The Rego engine, on regorus.
//!
//! Policies are `.rego` files in one directory, `package crank`, one rule per hook:
//!
//! | rule | input | value |
//! |---|---|---|
//! | `data.crank.can_issue_certificate` | [`IssuanceInput`] | `{"allow": bool, "reason": string}` |
//! | `data.crank.certificate_validity_period` | `{"worker_id", "environment"}` | seconds (number) |
//! | `data.crank.should_renew_certificate` | [`RenewalInput`] | `{"renew": bool, "expiring_soon": bool}` |
//! | `data.crank.revoke_certificate` | `{"worker_id", "reason"}` | bool |
//!
//! The files are parsed and prepared once; every evaluation runs on a clone of the
//! prepared engine (cheap: shared, reference-counted program), so evaluations run
//! concurrently. Each evaluation is bounded by a wall-clock limit checked by regorus's
//! execution timer. Any error, timeout, undefined rule or value of the wrong shape is a
//! [`PolicyError`], which every call site treats as a denial.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crank_security_core::{IssuanceDecision, IssuanceInput, PolicyEngine, PolicyError, RenewalDecision, RenewalInput};
use regorus::utils::limits::ExecutionTimerConfig;

use crate::documents::{RevokeInput, ValidityInput};
use serde::de::DeserializeOwned;

/// Longest time one decision may take.
pub const EVALUATION_LIMIT: Duration = Duration::from_millis(100);

/// Interpreter steps between two looks at the clock: reading it at every step took a
/// sixth of a decision's time, and a few dozen steps take microseconds.
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::new(64).expect("64 is not zero");

/// The rule paths, in hook order.
pub const RULES: [&str; 4] = [
    "data.crank.can_issue_certificate",
    "data.crank.certificate_validity_period",
    "data.crank.should_renew_certificate",
    "data.crank.revoke_certificate",
];

/// A set of Rego policies, prepared once.
#[derive(Debug, Clone)]
pub struct RegoEngine {
    engine: regorus::Engine,
    files: Vec<PathBuf>,
}

/// Why a policy directory could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file does not parse or compile; the message names file, line and column.
    #[error("policy rejected: {0}")]
    Invalid(String),
    /// The directory holds no policy.
    #[error("{0}")]
    Empty(String),
}

impl RegoEngine {
    /// Loads every `.rego` file in `dir` (sorted by name).
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let mut files = rego_files(dir)?;
        files.sort();
        if files.is_empty() {
            return Err(LoadError::Empty(format!("no .rego files in {}", dir.display())));
        }
        let sources = files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|s| (f.clone(), s))
                    .map_err(|e| LoadError::Io { path: f.clone(), source: e })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_sources(sources)
    }

    /// Loads policies from `(file name, source)` pairs.
    pub fn from_sources(sources: Vec<(PathBuf, String)>) -> Result<Self, LoadError> {
        std::panic::catch_unwind(move || Self::load(sources))
            .unwrap_or_else(|_| Err(LoadError::Invalid("the Rego engine panicked while loading the policy".into())))
    }

    fn load(sources: Vec<(PathBuf, String)>) -> Result<Self, LoadError> {
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVALUATION_LIMIT,
            check_interval: TIMER_CHECK_INTERVAL,
        });
        let mut files = Vec::new();
        for (path, source) in sources {
            engine.add_policy(path.display().to_string(), source).map_err(|e| LoadError::Invalid(format!("{e}")))?;
            files.push(path);
        }
        let mut this = Self { engine, files };
        // Prepare every rule once (this also type-checks the program); the prepared
        // engine is what evaluations clone.
        this.engine.set_input(regorus::Value::new_object());
        for rule in RULES {
            this.engine.eval_rule(rule.to_owned()).map_err(|e| {
                let msg = e.to_string();
                if msg.contains("not a valid rule path") {
                    LoadError::Invalid(format!(
                        "the policy defines no rule {rule}; every hook needs one (e.g. `default {} := ...`)",
                        rule.trim_start_matches("data.crank.")
                    ))
                } else {
                    LoadError::Invalid(msg)
                }
            })?;
        }
        Ok(this)
    }

    /// The files the policy came from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn eval<T: DeserializeOwned>(&self, rule: &str, input: &impl serde::Serialize) -> Result<T, PolicyError> {
        // JSON text in, parsed straight into regorus's values; its value out as a
        // serde_json value read by the answer's type (no pretty-printed text between).
        let json = serde_json::to_string(input).map_err(|e| PolicyError::Other(e.to_string()))?;
        let input = regorus::Value::from_json_str(&json).map_err(|e| PolicyError::Other(e.to_string()))?;
        let mut engine = self.engine.clone();
        engine.set_input(input);
        // A bug in the engine must deny, not take the CA down.
        let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.eval_rule(rule.to_owned())))
            .map_err(|_| PolicyError::Evaluation(format!("{rule}: the Rego engine panicked")))?
            .map_err(|e| PolicyError::Evaluation(format!("{rule}: {e}")))?;
        if value == regorus::Value::Undefined {
            return Err(PolicyError::MalformedOutput(format!("{rule} is undefined for this input")));
        }
        let answer = serde_json::to_value(&value).map_err(|e| PolicyError::MalformedOutput(e.to_string()))?;
        T::deserialize(&answer).map_err(|e| PolicyError::MalformedOutput(format!("{rule} = {answer}: {e}")))
    }
}

fn rego_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::Io { path: dir.to_path_buf(), source: e })?;
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rego") && p.is_file())
        .collect())
}

impl PolicyEngine for RegoEngine {
    fn can_issue_certificate(&self, input: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
        self.eval(RULES[0], input)
    }

    fn certificate_validity_period(&self, worker_id: &str, environment: &str) -> Result<Duration, PolicyError> {
        let secs: f64 = self.eval(RULES[1], &ValidityInput { worker_id, environment })?;
        crate::documents::validity(secs, RULES[1])
    }

    fn should_renew_certificate(&self, input: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
        self.eval(RULES[2], input)
    }

    fn revoke_certificate(&self, worker_id: &str, reason: &str) -> Result<bool, PolicyError> {
        self.eval(RULES[3], &RevokeInput { worker_id, reason })
    }

    fn name(&self) -> &str {
        "rego"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builtin_error_in_a_deny_rule_denies_instead_of_dropping_the_denial() {
        // OPA's default (non-strict) mode would make the body undefined and allow.
        let policy = "package crank\nimport rego.v1\n\
            deny contains \"numeric worker ids only\" if to_number(input.worker_id) < 0\n\
            can_issue_certificate := {\"allow\": true} if count(deny) == 0\n\
            can_issue_certificate := {\"allow\": false, \"reason\": concat(\"; \", deny)} if count(deny) > 0\n\
            default certificate_validity_period := 86400\n\
            default should_renew_certificate := {\"renew\": false, \"expiring_soon\": false}\n\
            default revoke_certificate := true\n";
        let engine = RegoEngine::from_sources(vec![(PathBuf::from("p.rego"), policy.into())]).unwrap();
        let input = serde_json::json!({"worker_id": "not-a-number", "capabilities": [], "requested_dns_sans": [],
            "requested_ip_sans": [], "key_type": "ecdsa-p256", "environment": "e", "trust_domain": "td", "renewal": false});
        let err = crate::cases::evaluate(&engine, "can_issue_certificate", &input).unwrap_err();
        assert!(err.contains("could not parse string as number"), "{err}");
    }
}
