//! # crank-policy
//!
//! Policy engines for crank-security, chosen by configuration, and the fail-closed
//! guard every call site uses.
//!
//! ```text
//!  CA / worker ──► PolicyGuard ──► Arc<dyn PolicyEngine>
//!                     │              ├─ built-in defaults (no files)
//!                     │              ├─ Rego files in a policy directory (regorus)
//!                     │              └─ one WebAssembly module (wasmtime): crank ABI v1, or
//!                     │                 the OPA Wasm ABI of `opa build -t wasm`; a policy
//!                     │                 directory is hot-reloaded, a broken file never
//!                     │                 replaces a good one
//!                     └─ engine error, timeout, malformed output: deny with the reason
//! ```
//!
//! ```
//! use crank_policy::{PolicyGuard, builtin};
//!
//! let guard = PolicyGuard::new(builtin());
//! let validity = guard.validity("hello-world", "development")?;
//! assert_eq!(validity.as_secs(), 24 * 3600);
//! # Ok::<(), crank_policy::Denied>(())
//! ```

pub mod cases;
mod documents;
mod guard;
pub mod rego;
mod reload;
pub mod wasm;

use std::path::Path;
use std::sync::Arc;

pub use crank_security_core::{DefaultPolicy, PolicyEngine};
pub use guard::{Denied, PolicyGuard};
pub use rego::{LoadError, RegoEngine, Settings};
pub use reload::ReloadingEngine;
pub use wasm::WasmEngine;

/// The built-in default engine (no files needed), see [`DefaultPolicy`].
pub fn builtin() -> Arc<dyn PolicyEngine> {
    Arc::new(DefaultPolicy::default())
}

/// The `.wasm` files directly in `dir`.
pub(crate) fn wasm_modules(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// The engine configured by a policy directory, hot-reloaded: `.rego` files mean the
/// Rego engine, one `.wasm` module means the WebAssembly engine. Fails with a clear
/// error when the directory is missing, empty, ambiguous, or holds a policy that does
/// not compile.
pub fn from_dir(dir: &Path) -> Result<Arc<ReloadingEngine>, LoadError> {
    ReloadingEngine::start(dir)
}

/// [`from_dir`], with `settings` given to Rego policies as `data.crank_settings`.
pub fn from_dir_with(dir: &Path, settings: Settings) -> Result<Arc<ReloadingEngine>, LoadError> {
    ReloadingEngine::start_with(dir, settings)
}

/// Loads a policy directory once (no reloading); see [`from_dir`]. `.rego` files are
/// found in subdirectories too (not in `cases/` or hidden ones); a `.wasm` module only at
/// the top.
pub fn load_dir(dir: &Path) -> Result<Arc<dyn PolicyEngine>, LoadError> {
    load_dir_with(dir, &Settings::default())
}

/// [`load_dir`], with `settings` given to Rego policies as `data.crank_settings`.
pub fn load_dir_with(dir: &Path, settings: &Settings) -> Result<Arc<dyn PolicyEngine>, LoadError> {
    if !dir.is_dir() {
        return Err(LoadError::Empty(format!("policy directory {} does not exist", dir.display())));
    }
    let rego = rego::rego_files(dir)?;
    let wasm = wasm_modules(dir);
    match (rego.is_empty(), wasm.as_slice()) {
        (false, []) => Ok(Arc::new(RegoEngine::from_dir_with(dir, settings)?)),
        (true, [module]) => Ok(Arc::new(WasmEngine::from_file(module)?)),
        (true, []) => {
            Err(LoadError::Empty(format!("no .rego files or .wasm module in policy directory {}", dir.display())))
        }
        _ => Err(LoadError::Empty(format!(
            "policy directory {} must hold either .rego files or one .wasm module, not both or several modules",
            dir.display()
        ))),
    }
}
