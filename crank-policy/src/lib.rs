//! # crank-policy
//!
//! Policy engines for crank-security, chosen by configuration, and the fail-closed
//! guard every call site uses.
//!
//! ```text
//!  CA / worker ──► PolicyGuard ──► Arc<dyn PolicyEngine>
//!                     │              ├─ built-in defaults (no files)
//!                     │              └─ Rego files in a policy directory (regorus),
//!                     │                 hot-reloaded, a broken file never replaces a good one
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
mod guard;
pub mod rego;
mod reload;

use std::path::Path;
use std::sync::Arc;

pub use crank_security_core::{DefaultPolicy, PolicyEngine};
pub use guard::{Denied, PolicyGuard};
pub use rego::{LoadError, RegoEngine};
pub use reload::ReloadingEngine;

/// The built-in default engine (no files needed), see [`DefaultPolicy`].
pub fn builtin() -> Arc<dyn PolicyEngine> {
    Arc::new(DefaultPolicy::default())
}

/// The engine configured by a policy directory: `.rego` files mean the Rego engine,
/// reloaded when the files change. Fails with a clear error when the directory is
/// missing, empty, or holds a policy that does not compile.
pub fn from_dir(dir: &Path) -> Result<Arc<ReloadingEngine>, LoadError> {
    let has = |ext: &str| {
        std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == ext)))
            .unwrap_or(false)
    };
    if !dir.is_dir() {
        return Err(LoadError::Empty(format!("policy directory {} does not exist", dir.display())));
    }
    if has("rego") {
        return ReloadingEngine::start(dir);
    }
    if has("wasm") {
        return Err(LoadError::Empty(format!(
            "{} holds a .wasm module, but this build has no WebAssembly policy engine yet; use .rego files",
            dir.display()
        )));
    }
    Err(LoadError::Empty(format!("no .rego files in policy directory {}", dir.display())))
}
