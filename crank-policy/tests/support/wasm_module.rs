//! Where the test command's build of the Rust WebAssembly policy lands.
//!
//! `cargo build --release --target wasm32-unknown-unknown --manifest-path
//! policies/wasm/default-policy/Cargo.toml` (as scripts/test.sh runs it) writes into
//! `$CARGO_TARGET_DIR` when that is set, and into the policy crate's own `target/`
//! otherwise (the crate is not a workspace member). Shared by the WASM engine's tests, the
//! end-to-end tests and the benchmarks of crank-policy, crank-runtime and crank-ca
//! (`#[path]`), which all sit one directory below the workspace root.

use std::path::{Path, PathBuf};

/// The build command, for the message when the module is missing.
const BUILD_WASM_POLICY: &str =
    "cargo build --release --target wasm32-unknown-unknown --manifest-path policies/wasm/default-policy/Cargo.toml";

/// The built module: under `CARGO_TARGET_DIR` if set (a relative one counts from the
/// workspace root, where the test command runs cargo), else under
/// `policies/wasm/default-policy/target`. Panics, naming the build command, when it is
/// not there.
pub(crate) fn default_wasm_policy() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace.join(dir),
        None => workspace.join("policies/wasm/default-policy/target"),
    };
    let module = target.join("wasm32-unknown-unknown/release/crank_default_wasm_policy.wasm");
    assert!(
        module.is_file(),
        "{} is missing: build it with `{BUILD_WASM_POLICY}` (scripts/test.sh does), with the same CARGO_TARGET_DIR as the tests",
        module.display()
    );
    module
}
