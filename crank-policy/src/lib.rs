//! # crank-policy
//!
//! Policy engines for crank-security and the fail-closed guard every call site uses.
//!
//! ```text
//!  CA / worker ──► PolicyGuard ──► Arc<dyn PolicyEngine> (built-in today; Rego, WASM)
//!                     │
//!                     └─ engine error, panic-free: deny with the reason
//! ```
//!
//! ```
//! use std::sync::Arc;
//! use crank_policy::{PolicyGuard, builtin};
//!
//! let guard = PolicyGuard::new(builtin());
//! let validity = guard.validity("hello-world", "development")?;
//! assert_eq!(validity.as_secs(), 24 * 3600);
//! # Ok::<(), crank_policy::Denied>(())
//! ```

mod guard;

use std::sync::Arc;

pub use crank_security_core::{DefaultPolicy, PolicyEngine};
pub use guard::{Denied, PolicyGuard};

/// The built-in default engine (no files needed), see [`DefaultPolicy`].
pub fn builtin() -> Arc<dyn PolicyEngine> {
    Arc::new(DefaultPolicy::default())
}
