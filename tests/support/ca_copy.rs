//! Copying a CA directory for a test or a fuzz run: one source file, included by the
//! test support (`tests/lib.rs`) and by the fuzz crate (`fuzz/src/lib.rs`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Copies the files (not subdirectories) of CA directory `from` into `to`, made 0700 if
/// new. Every file is made 0600, as the CA's keys must be: a copy (or a clone of the
/// repository) does not keep modes.
pub fn copy_ca_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    if !to.exists() {
        std::fs::create_dir_all(to)?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let target = to.join(entry.file_name());
            std::fs::copy(entry.path(), &target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}
