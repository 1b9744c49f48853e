//! The Rego engine, on regorus.
//!
//! A policy directory holds `.rego` files (its subdirectories too, except `cases/` and
//! hidden ones). Each hook is a rule:
//!
//! | rule | input | value |
//! |---|---|---|
//! | `can_issue_certificate` | [`IssuanceInput`] | `{"allow": bool, "reason": string}` |
//! | `certificate_validity_period` | `{"worker_id", "environment"}` | seconds (number) |
//! | `should_renew_certificate` | [`RenewalInput`] | `{"renew": bool, "expiring_soon": bool}` |
//! | `revoke_certificate` | `{"worker_id", "reason"}` | bool |
//! | `can_access_capability` | [`AccessInput`] | `{"allow": bool, "reason": string, "rate_limit": {...}}` |
//!
//! The directory layers on the defaults (`policies/default/defaults.rego`, package
//! `crank.defaults`, built in): for each hook, `data.crank.<hook>` decides when the
//! directory's files define it and it is defined for the input; otherwise
//! `data.crank.defaults.<hook>` does. A directory with its own `package crank.defaults`
//! (the copy `crank ca init` writes) uses that one instead of the built-in copy; a hook
//! that neither defines falls back to the built-in engine's rule.
//!
//! The files are parsed and prepared once; every evaluation runs on a clone of the
//! prepared engine (cheap: shared, reference-counted program), so evaluations run
//! concurrently. Each evaluation is bounded by a wall-clock limit checked by regorus's
//! execution timer. Any error, timeout, value of the wrong shape, or a default rule
//! undefined for the input is a [`PolicyError`], which every call site treats as a
//! denial.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crank_security_core::{
    AccessDecision, AccessInput, DefaultPolicy, IssuanceDecision, IssuanceInput, PolicyEngine, PolicyError,
    RenewalDecision, RenewalInput,
};
use regorus::utils::limits::ExecutionTimerConfig;

use crate::documents::{RevokeInput, ValidityInput};
use serde::de::DeserializeOwned;

/// Longest time one decision may take.
pub const EVALUATION_LIMIT: Duration = Duration::from_millis(100);

/// Interpreter steps between two looks at the clock: reading it at every step took a
/// sixth of a decision's time, and a few dozen steps take microseconds.
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::new(64).expect("64 is not zero");

/// The hooks' rule names, in hook order.
pub const RULES: [&str; 5] = [
    "can_issue_certificate",
    "certificate_validity_period",
    "should_renew_certificate",
    "revoke_certificate",
    "can_access_capability",
];

/// The defaults as Rego (package `crank.defaults`), loaded under every directory that
/// has no `package crank.defaults` of its own.
pub const DEFAULTS: &str = include_str!("../../policies/default/defaults.rego");

/// The package of the defaults.
const DEFAULTS_PACKAGE: &str = "data.crank.defaults";

/// Where one hook's decision comes from.
#[derive(Debug, Clone, Default)]
struct Hook {
    /// `data.crank.<hook>`, when the directory's files define it.
    own: Option<String>,
    /// `data.crank.defaults.<hook>`, when the defaults define it.
    default: Option<String>,
}

/// A set of Rego policies, prepared once.
#[derive(Clone)]
pub struct RegoEngine {
    engine: regorus::Engine,
    files: Vec<PathBuf>,
    hooks: [Hook; 5],
}

impl std::fmt::Debug for RegoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoEngine").field("files", &self.files).field("hooks", &self.hooks).finish_non_exhaustive()
    }
}

/// What the program running a policy tells it, as `data.crank_settings`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Settings {
    /// The validity the defaults grant (`crank ca serve --leaf-validity`), seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaf_validity_seconds: Option<u64>,
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
    /// Loads every `.rego` file under `dir` (sorted by path), layered on the defaults.
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        Self::from_dir_with(dir, &Settings::default())
    }

    /// [`RegoEngine::from_dir`], with `settings` given to the policy as
    /// `data.crank_settings`.
    pub fn from_dir_with(dir: &Path, settings: &Settings) -> Result<Self, LoadError> {
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
        Self::from_sources_with(sources, settings)
    }

    /// Loads policies from `(file name, source)` pairs, layered on the defaults.
    pub fn from_sources(sources: Vec<(PathBuf, String)>) -> Result<Self, LoadError> {
        Self::from_sources_with(sources, &Settings::default())
    }

    /// [`RegoEngine::from_sources`] with `settings` as `data.crank_settings`.
    pub fn from_sources_with(sources: Vec<(PathBuf, String)>, settings: &Settings) -> Result<Self, LoadError> {
        let settings = settings.clone();
        std::panic::catch_unwind(move || Self::load(sources, &settings))
            .unwrap_or_else(|_| Err(LoadError::Invalid("the Rego engine panicked while loading the policy".into())))
    }

    /// Only the defaults.
    pub fn defaults() -> Result<Self, LoadError> {
        Self::from_sources(Vec::new())
    }

    fn load(sources: Vec<(PathBuf, String)>, settings: &Settings) -> Result<Self, LoadError> {
        let mut engine = regorus::Engine::new();
        let data = serde_json::json!({ "crank_settings": settings });
        engine
            .add_data(regorus::Value::from_json_str(&data.to_string()).map_err(|e| LoadError::Invalid(e.to_string()))?)
            .map_err(|e| LoadError::Invalid(format!("policy settings: {e}")))?;
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVALUATION_LIMIT,
            check_interval: TIMER_CHECK_INTERVAL,
        });
        let mut files = Vec::new();
        let mut has_defaults = false;
        for (path, source) in sources {
            let package = engine
                .add_policy(path.display().to_string(), source)
                .map_err(|e| LoadError::Invalid(format!("{e}")))?;
            has_defaults |= package == DEFAULTS_PACKAGE;
            files.push(path);
        }
        if !has_defaults {
            engine
                .add_policy("<built-in defaults.rego>".into(), DEFAULTS.into())
                .map_err(|e| LoadError::Invalid(format!("the built-in defaults: {e}")))?;
        }
        // Prepare every rule once (this also type-checks the program; the prepared
        // engine is what evaluations clone) and find where each hook is defined.
        engine.set_input(regorus::Value::new_object());
        let mut hooks: [Hook; 5] = Default::default();
        for (hook, rule) in hooks.iter_mut().zip(RULES) {
            hook.own = defined(&mut engine, format!("data.crank.{rule}"))?;
            hook.default = defined(&mut engine, format!("{DEFAULTS_PACKAGE}.{rule}"))?;
        }
        Ok(Self { engine, files, hooks })
    }

    /// The files the policy came from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Evaluates hook number `hook`: the directory's rule, then the default's. `None`
    /// when neither defines the hook (the built-in engine's rule then decides).
    fn eval<T: DeserializeOwned>(&self, hook: usize, input: &impl serde::Serialize) -> Result<Option<T>, PolicyError> {
        let Hook { own, default } = &self.hooks[hook];
        if own.is_none() && default.is_none() {
            return Ok(None);
        }
        // In as a serde_json value turned into regorus's (no JSON text between); out as a
        // serde_json value read by the answer's type.
        let input = regorus::Value::from(serde_json::to_value(input).map_err(|e| PolicyError::Other(e.to_string()))?);
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let mut undefined = None;
        for rule in [own, default].into_iter().flatten() {
            // A bug in the engine must deny, not take the CA down.
            let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.eval_rule(rule.clone())))
                .map_err(|_| PolicyError::Evaluation(format!("{rule}: the Rego engine panicked")))?
                .map_err(|e| PolicyError::Evaluation(format!("{rule}: {e}")))?;
            if value == regorus::Value::Undefined {
                undefined = Some(rule);
                continue;
            }
            let answer = serde_json::to_value(&value).map_err(|e| PolicyError::MalformedOutput(e.to_string()))?;
            return T::deserialize(&answer)
                .map(Some)
                .map_err(|e| PolicyError::MalformedOutput(format!("{rule} = {answer}: {e}")));
        }
        Err(PolicyError::MalformedOutput(format!(
            "{} is undefined for this input",
            undefined.unwrap_or(&String::new())
        )))
    }
}

/// `Some(rule)` when `rule` is a rule of the program, `None` when it is not; any other
/// error (a policy that does not type-check) is a load error.
fn defined(engine: &mut regorus::Engine, rule: String) -> Result<Option<String>, LoadError> {
    match engine.eval_rule(rule.clone()) {
        Ok(_) => Ok(Some(rule)),
        Err(e) if e.to_string().contains("not a valid rule path") => Ok(None),
        Err(e) => Err(LoadError::Invalid(e.to_string())),
    }
}

/// The `.rego` files under `dir`, outside `cases/` and hidden directories.
pub(crate) fn rego_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::Io { path: dir.to_path_buf(), source: e })?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name();
        let hidden = name.to_string_lossy().starts_with('.');
        if path.is_dir() {
            if !hidden && name != "cases" {
                found.extend(rego_files(&path)?);
            }
        } else if path.extension().is_some_and(|x| x == "rego") && path.is_file() {
            found.push(path);
        }
    }
    Ok(found)
}

impl PolicyEngine for RegoEngine {
    fn can_issue_certificate(&self, input: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
        match self.eval(0, input)? {
            Some(d) => Ok(d),
            None => DefaultPolicy::default().can_issue_certificate(input),
        }
    }

    fn certificate_validity_period(&self, worker_id: &str, environment: &str) -> Result<Duration, PolicyError> {
        match self.eval::<f64>(1, &ValidityInput { worker_id, environment })? {
            Some(secs) => crate::documents::validity(secs, RULES[1]),
            None => DefaultPolicy::default().certificate_validity_period(worker_id, environment),
        }
    }

    fn should_renew_certificate(&self, input: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
        match self.eval(2, input)? {
            Some(d) => Ok(d),
            None => DefaultPolicy::default().should_renew_certificate(input),
        }
    }

    fn revoke_certificate(&self, worker_id: &str, reason: &str) -> Result<bool, PolicyError> {
        match self.eval(3, &RevokeInput { worker_id, reason })? {
            Some(d) => Ok(d),
            None => DefaultPolicy::default().revoke_certificate(worker_id, reason),
        }
    }

    fn can_access_capability(&self, input: &AccessInput) -> Result<AccessDecision, PolicyError> {
        match self.eval(4, input)? {
            Some(d) => Ok(d),
            None => DefaultPolicy::default().can_access_capability(input),
        }
    }

    fn name(&self) -> &str {
        "rego"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_a_directory_does_not_define_go_straight_to_the_defaults() {
        let engine = RegoEngine::defaults().unwrap();
        assert!(engine.hooks.iter().all(|h| h.own.is_none() && h.default.is_some()), "{:?}", engine.hooks);
        let one = RegoEngine::from_sources(vec![(
            PathBuf::from("v.rego"),
            "package crank\nimport rego.v1\ncertificate_validity_period := 60\n".into(),
        )])
        .unwrap();
        assert!(one.hooks[1].own.is_some() && one.hooks[0].own.is_none(), "{:?}", one.hooks);
    }

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
        let input: IssuanceInput = serde_json::from_value(input).unwrap();
        let err = engine.can_issue_certificate(&input).unwrap_err().to_string();
        assert!(err.contains("could not parse string as number"), "{err}");
    }
}
