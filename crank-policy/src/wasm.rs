//! The WebAssembly engine, on wasmtime. crank ABI v1 (JSON in, JSON out):
//!
//! | export | signature | |
//! |---|---|---|
//! | `memory` | memory | the module's linear memory |
//! | `crank_alloc` | `(len: i32) -> i32` | room for the host to write `len` bytes |
//! | `crank_evaluate` | `(hook_ptr, hook_len, input_ptr, input_len: i32) -> i64` | `(ptr << 32) \| len` of the UTF-8 JSON answer |
//!
//! The hook names, inputs and answers are those of the Rego rules (see
//! `policies/README.md`). The module may import nothing. It is compiled once; every
//! evaluation gets a fresh instance (no state leaks between decisions, evaluations run
//! concurrently), a fuel budget ([`FUEL_PER_DECISION`]) and a memory cap
//! ([`MEMORY_LIMIT`]). A trap (including running out of fuel or memory), a missing
//! export, an answer out of bounds or of the wrong shape is a [`PolicyError`]: a denial.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crank_security_core::{IssuanceDecision, IssuanceInput, PolicyEngine, PolicyError, RenewalDecision, RenewalInput};
use serde::de::DeserializeOwned;
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};

use crate::documents::{RevokeInput, ValidityInput};
use crate::rego::LoadError;

/// Fuel (roughly, wasm instructions) one decision may use.
pub const FUEL_PER_DECISION: u64 = 50_000_000;
/// Largest linear memory a policy instance may have.
pub const MEMORY_LIMIT: usize = 32 * 1024 * 1024;
/// Largest answer accepted.
const MAX_ANSWER: usize = 1024 * 1024;

struct State {
    limits: StoreLimits,
}

/// A compiled WebAssembly policy.
pub struct WasmEngine {
    engine: Engine,
    pre: InstancePre<State>,
    path: PathBuf,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine").field("path", &self.path).finish_non_exhaustive()
    }
}

impl WasmEngine {
    /// Compiles the module at `path` and checks that it exports the crank ABI.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Io { path: path.to_path_buf(), source: e })?;
        Self::from_bytes(path, &bytes)
    }

    /// Compiles a module from bytes (binary or text format); `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, LoadError> {
        let invalid = |what: String| LoadError::Invalid(format!("{}: {what}", path.display()));
        let mut config = Config::new();
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(|e| invalid(format!("wasm engine: {e}")))?;
        let module =
            Module::new(&engine, bytes).map_err(|e| invalid(format!("not a valid WebAssembly module: {e:#}")))?;
        if let Some(import) = module.imports().next() {
            return Err(invalid(format!(
                "imports {}::{}; a crank policy module may import nothing (for OPA modules, see policies/README.md)",
                import.module(),
                import.name()
            )));
        }
        for export in ["memory", "crank_alloc", "crank_evaluate"] {
            if module.get_export(export).is_none() {
                return Err(invalid(format!("does not export `{export}` (crank ABI v1)")));
            }
        }
        let linker = Linker::<State>::new(&engine);
        let pre = linker.instantiate_pre(&module).map_err(|e| invalid(format!("{e:#}")))?;
        Ok(Self { engine, pre, path: path.to_path_buf() })
    }

    fn call(&self, hook: &str, input: &[u8]) -> Result<Vec<u8>, String> {
        let limits = StoreLimitsBuilder::new().memory_size(MEMORY_LIMIT).instances(1).build();
        let mut store = Store::new(&self.engine, State { limits });
        store.limiter(|s| &mut s.limits);
        store.set_fuel(FUEL_PER_DECISION).map_err(|e| e.to_string())?;
        let instance = self.pre.instantiate(&mut store).map_err(|e| format!("instantiate: {e:#}"))?;
        let memory = instance.get_memory(&mut store, "memory").ok_or("no memory export")?;
        let alloc = instance.get_typed_func::<i32, i32>(&mut store, "crank_alloc").map_err(|e| e.to_string())?;
        let evaluate = instance
            .get_typed_func::<(i32, i32, i32, i32), i64>(&mut store, "crank_evaluate")
            .map_err(|e| e.to_string())?;
        let put = |store: &mut Store<State>, bytes: &[u8]| -> Result<(i32, i32), String> {
            let len = i32::try_from(bytes.len()).map_err(|_| "input too large")?;
            let ptr = alloc.call(&mut *store, len).map_err(|e| format!("crank_alloc trapped: {e:#}"))?;
            memory
                .write(&mut *store, usize::try_from(ptr).map_err(|_| "negative pointer")?, bytes)
                .map_err(|e| format!("crank_alloc returned memory out of bounds: {e}"))?;
            Ok((ptr, len))
        };
        let (hp, hl) = put(&mut store, hook.as_bytes())?;
        let (ip, il) = put(&mut store, input)?;
        let packed = evaluate.call(&mut store, (hp, hl, ip, il)).map_err(|e| {
            if store.get_fuel().is_ok_and(|f| f == 0) {
                format!("crank_evaluate ran out of fuel ({FUEL_PER_DECISION} units)")
            } else {
                format!("crank_evaluate trapped: {e:#}")
            }
        })?;
        let ptr = usize::try_from((packed >> 32) & 0xffff_ffff).unwrap_or(usize::MAX);
        let len = usize::try_from(packed & 0xffff_ffff).unwrap_or(usize::MAX);
        if len > MAX_ANSWER {
            return Err(format!("answer of {len} bytes is larger than {MAX_ANSWER}"));
        }
        let mut out = vec![0; len];
        memory.read(&store, ptr, &mut out).map_err(|e| format!("answer out of bounds: {e}"))?;
        Ok(out)
    }

    fn eval<T: DeserializeOwned>(&self, hook: &str, input: &impl serde::Serialize) -> Result<T, PolicyError> {
        let json = serde_json::to_vec(input).map_err(|e| PolicyError::Other(e.to_string()))?;
        let out = self
            .call(hook, &json)
            .map_err(|e| PolicyError::Evaluation(format!("{}: {hook}: {e}", self.path.display())))?;
        serde_json::from_slice(&out).map_err(|e| {
            PolicyError::MalformedOutput(format!("{hook} answered {}: {e}", String::from_utf8_lossy(&out)))
        })
    }
}

impl PolicyEngine for WasmEngine {
    fn can_issue_certificate(&self, input: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
        self.eval("can_issue_certificate", input)
    }

    fn certificate_validity_period(&self, worker_id: &str, environment: &str) -> Result<Duration, PolicyError> {
        let secs: f64 = self.eval("certificate_validity_period", &ValidityInput { worker_id, environment })?;
        crate::documents::validity(secs, "certificate_validity_period")
    }

    fn should_renew_certificate(&self, input: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
        self.eval("should_renew_certificate", input)
    }

    fn revoke_certificate(&self, worker_id: &str, reason: &str) -> Result<bool, PolicyError> {
        self.eval("revoke_certificate", &RevokeInput { worker_id, reason })
    }

    fn name(&self) -> &str {
        "wasm"
    }
}
