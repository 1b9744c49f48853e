//! The WebAssembly engine, on wasmtime. It speaks two interfaces and tells them apart by
//! what the module exports:
//!
//! ```text
//!  module exports `crank_evaluate`          ─► crank ABI v1 (JSON in, JSON out, no imports)
//!  module exports `opa_wasm_abi_version`    ─► OPA Wasm ABI 1.x (`opa build -t wasm`):
//!    or `opa_eval_ctx_new`                      entrypoints crank/<hook>, env.memory and the
//!                                               opa_* imports provided by the host
//!  neither                                  ─► rejected at load
//! ```
//!
//! crank ABI v1:
//!
//! | export | signature | |
//! |---|---|---|
//! | `memory` | memory | the module's linear memory |
//! | `crank_alloc` | `(len: i32) -> i32` | room for the host to write `len` bytes |
//! | `crank_evaluate` | `(hook_ptr, hook_len, input_ptr, input_len: i32) -> i64` | `(ptr << 32) \| len` of the UTF-8 JSON answer |
//!
//! The OPA Wasm ABI is described in `policies/README.md` and in [`opa`]'s module docs.
//!
//! Hook names, inputs and answers are those of the Rego rules (see `policies/README.md`).
//! Whatever the interface, a module is compiled once and **every decision runs in a
//! fresh instance** (fresh linear memory, globals and tables: no state leaks between
//! decisions, evaluations run concurrently), with a fuel budget
//! ([`FUEL_PER_DECISION`]) and a memory cap ([`MEMORY_LIMIT`]). A trap (including
//! running out of fuel or memory, or an `opa_abort`), a missing export, an undefined
//! result, an answer out of bounds or of the wrong shape is a [`PolicyError`]: a denial.

mod crank_abi;
pub mod opa;
mod opa_builtins;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crank_security_core::{
    AccessDecision, AccessInput, IssuanceDecision, IssuanceInput, PolicyEngine, PolicyError, RenewalDecision,
    RenewalInput,
};
use serde::de::DeserializeOwned;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig, Store, StoreLimits};

use crate::documents::{RevokeInput, ValidityInput};
use crate::rego::LoadError;

/// Fuel (roughly, wasm instructions) one decision may use.
pub const FUEL_PER_DECISION: u64 = 50_000_000;
/// Largest linear memory a policy instance may have.
pub const MEMORY_LIMIT: usize = 32 * 1024 * 1024;
/// Largest answer accepted.
const MAX_ANSWER: usize = 1024 * 1024;
/// Instances that may be alive at once (one per decision in flight); the pooling
/// allocator reserves address space for this many.
const POOL_SLOTS: u32 = 128;
/// Bytes of a slot's memory reset in place (only the dirtied pages, found by
/// `PAGEMAP_SCAN`) rather than handed back to the kernel; the rest is unmapped.
const KEEP_RESIDENT: usize = 4 * 1024 * 1024;

/// The hooks, in [`PolicyEngine`] order; their names are the rule names of every engine.
pub const HOOKS: [&str; 5] = crate::rego::RULES;

/// The interface a module speaks, found from its exports at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Abi {
    /// crank ABI v1: `crank_alloc` and `crank_evaluate`.
    Crank,
    /// OPA Wasm ABI 1.x, as built by `opa build -t wasm`.
    Opa {
        /// `opa_wasm_abi_minor_version`; from 2 on, decisions use the one-shot `opa_eval`.
        minor: i32,
    },
}

/// What every store carries: the limits, and the interface's own state.
pub(crate) struct State<T> {
    limits: StoreLimits,
    host: T,
}

enum Host {
    Crank(crank_abi::Host),
    Opa(Box<opa::Host>),
}

/// A compiled WebAssembly policy.
pub struct WasmEngine {
    engine: Engine,
    host: Host,
    slots: Slots,
    path: PathBuf,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine").field("path", &self.path).field("abi", &self.abi()).finish_non_exhaustive()
    }
}

impl WasmEngine {
    /// Compiles the module at `path` and checks that it speaks one of the interfaces.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Io { path: path.to_path_buf(), source: e })?;
        Self::from_bytes(path, &bytes)
    }

    /// Compiles a module from bytes (binary or text format); `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, LoadError> {
        let invalid = |what: String| LoadError::Invalid(format!("{}: {what}", path.display()));
        let engine = Engine::new(&config()).map_err(|e| invalid(format!("wasm engine: {e}")))?;
        let module =
            Module::new(&engine, bytes).map_err(|e| invalid(format!("not a valid WebAssembly module: {e:#}")))?;
        let exports = |name: &str| module.get_export(name).is_some();
        let host = if exports("crank_evaluate") {
            Host::Crank(crank_abi::Host::new(&engine, &module).map_err(invalid)?)
        } else if exports("opa_wasm_abi_version") || exports("opa_eval_ctx_new") {
            Host::Opa(Box::new(opa::Host::new(&engine, module).map_err(invalid)?))
        } else {
            return Err(invalid(
                "not a policy module: it exports neither `crank_evaluate` (crank ABI v1) nor \
                 `opa_wasm_abi_version` (OPA Wasm ABI, `opa build -t wasm`); see policies/README.md"
                    .into(),
            ));
        };
        Ok(Self { engine, host, slots: Slots::default(), path: path.to_path_buf() })
    }

    /// The interface the module speaks.
    pub fn abi(&self) -> Abi {
        match &self.host {
            Host::Crank(_) => Abi::Crank,
            Host::Opa(h) => Abi::Opa { minor: h.minor() },
        }
    }

    /// Evaluates hook number `hook`. `None` when the module leaves the hook to the
    /// built-in rule: an OPA-ABI module without its entrypoint, or a crank-ABI answer of
    /// `null` (only for `can_access_capability`, which modules written before it lack).
    fn eval<T: DeserializeOwned>(&self, hook: usize, input: &impl serde::Serialize) -> Result<Option<T>, PolicyError> {
        let name = HOOKS.get(hook).copied().unwrap_or("?");
        let optional = name == "can_access_capability";
        if let Host::Opa(h) = &self.host
            && !h.has_entrypoint(hook)
        {
            return Ok(None);
        }
        let json = serde_json::to_vec(input).map_err(|e| PolicyError::Other(e.to_string()))?;
        let _slot = self.slots.take();
        let out = match &self.host {
            Host::Crank(h) => h.call(&self.engine, name, &json),
            Host::Opa(h) => h.call(&self.engine, hook, &json),
        }
        .map_err(|e| PolicyError::Evaluation(format!("{}: {name}: {e}", self.path.display())))?;
        match &self.host {
            Host::Crank(_) if optional && out.trim_ascii() == b"null" => Ok(None),
            Host::Crank(_) => serde_json::from_slice(&out).map(Some).map_err(|e| {
                PolicyError::MalformedOutput(format!("{name} answered {}: {e}", String::from_utf8_lossy(&out)))
            }),
            Host::Opa(_) => opa::result(name, &out).map(Some),
        }
    }
}

/// The wasmtime configuration shared by both interfaces: fuel metering, and a pooling
/// allocator so that a fresh instance per decision costs microseconds. An instance's
/// linear memory comes from a pre-reserved slot, initialised copy-on-write from the
/// module's data segments; when the decision's store is dropped the slot is reset to
/// exactly that initial image before anyone else gets it. Where Linux offers the
/// `PAGEMAP_SCAN` ioctl (6.7 and later) only the pages the decision dirtied are
/// restored, in place; elsewhere the slot is returned to the kernel (`madvise`) and
/// faulted in again by the next decision.
fn config() -> Config {
    let mut pool = PoolingAllocationConfig::default();
    // An OPA decision takes two instances: the policy, and the provider of its memory.
    pool.total_core_instances(2 * POOL_SLOTS)
        .total_memories(POOL_SLOTS)
        .total_tables(POOL_SLOTS)
        .max_memory_size(MEMORY_LIMIT)
        .table_keep_resident(64 * 1024);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes).linear_memory_keep_resident(KEEP_RESIDENT);
    }
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_reservation(MEMORY_LIMIT as u64)
        // Explicit bounds checks instead of guard pages and signal handlers: a slot's
        // read/write window then never has to be shrunk with `mprotect` (and the TLB
        // flushed) between decisions, which costs more than the checks save.
        .memory_guard_size(0)
        .signals_based_traps(false)
        .memory_may_move(false);
    config
}

/// A store for one decision: memory capped, fuel filled.
fn store<T>(engine: &Engine, host: T) -> Result<Store<State<T>>, String> {
    let limits = wasmtime::StoreLimitsBuilder::new().memory_size(MEMORY_LIMIT).build();
    let mut store = Store::new(engine, State { limits, host });
    store.limiter(|s| &mut s.limits);
    store.set_fuel(FUEL_PER_DECISION).map_err(|e| e.to_string())?;
    Ok(store)
}

/// Describes a failed call into the module, naming fuel exhaustion as such.
fn trapped<T>(store: &Store<T>, what: &str, e: &wasmtime::Error) -> String {
    if store.get_fuel().is_ok_and(|f| f == 0) {
        format!("{what} ran out of fuel ({FUEL_PER_DECISION} units)")
    } else {
        format!("{what} trapped: {e:#}")
    }
}

/// The export `name`, checked to be a function of exactly this signature.
fn func_export(
    module: &Module,
    name: &str,
    params: &[wasmtime::ValType],
    results: &[wasmtime::ValType],
) -> Result<wasmtime::ModuleExport, String> {
    let index = module.get_export_index(name).ok_or_else(|| format!("does not export `{name}`"))?;
    let same = |have: &mut dyn ExactSizeIterator<Item = wasmtime::ValType>, want: &[wasmtime::ValType]| {
        have.len() == want.len() && have.zip(want).all(|(a, b)| wasmtime::ValType::eq(&a, b))
    };
    match module.get_export(name) {
        Some(wasmtime::ExternType::Func(f)) if same(&mut f.params(), params) && same(&mut f.results(), results) => {
            Ok(index)
        }
        _ => Err(format!("`{name}` must be a function {params:?} -> {results:?}")),
    }
}

/// Counts decisions in flight so that no more run at once than the pool has slots;
/// further callers wait for a slot (a decision takes microseconds) instead of failing.
#[derive(Default)]
struct Slots {
    busy: std::sync::Mutex<u32>,
    freed: std::sync::Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn take(&self) -> Slot<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *busy >= POOL_SLOTS {
            busy = self.freed.wait(busy).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *busy += 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.0.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *busy = busy.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

/// A required hook's answer.
fn required<T>(name: &str, answer: Option<T>) -> Result<T, PolicyError> {
    answer.ok_or_else(|| PolicyError::MalformedOutput(format!("{name}: the module gave no answer")))
}

impl PolicyEngine for WasmEngine {
    fn can_issue_certificate(&self, input: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
        required(HOOKS[0], self.eval(0, input)?)
    }

    fn certificate_validity_period(&self, worker_id: &str, environment: &str) -> Result<Duration, PolicyError> {
        let secs: f64 = required(HOOKS[1], self.eval(1, &ValidityInput { worker_id, environment })?)?;
        crate::documents::validity(secs, HOOKS[1])
    }

    fn should_renew_certificate(&self, input: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
        required(HOOKS[2], self.eval(2, input)?)
    }

    fn revoke_certificate(&self, worker_id: &str, reason: &str) -> Result<bool, PolicyError> {
        required(HOOKS[3], self.eval(3, &RevokeInput { worker_id, reason })?)
    }

    fn can_access_capability(&self, input: &AccessInput) -> Result<AccessDecision, PolicyError> {
        match self.eval(4, input)? {
            Some(d) => Ok(d),
            None => Ok(crank_security_core::default_access(input)),
        }
    }

    fn name(&self) -> &str {
        "wasm"
    }
}
