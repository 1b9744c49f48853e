//! Where the shipped policies and their cases are (`policies/` at the workspace root),
//! for the test binaries of crank-policy.

use std::path::{Path, PathBuf};

/// The `policies/` folder.
pub(crate) fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}
