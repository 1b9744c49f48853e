use std::fmt::Debug;
use std::path::{Path, PathBuf};

/// Decides where a worker's certificates live.
pub trait CertDirResolver: Debug + Send + Sync {
    /// The directory holding `client.crt`, `client.key` and `ca.crt`.
    fn resolve(&self) -> PathBuf;
}

/// The default: `CERT_DIR` if set, else `/etc/certs` if writable, else `~/.crank/certs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultCertDirResolver;

impl DefaultCertDirResolver {
    /// The container default.
    pub const SYSTEM_DIR: &'static str = "/etc/certs";

    fn resolve_with(cert_dir: Option<String>, home: Option<String>) -> PathBuf {
        if let Some(dir) = cert_dir.filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let system = Path::new(Self::SYSTEM_DIR);
        if is_writable_dir(system) {
            return system.to_path_buf();
        }
        match home {
            Some(home) => Path::new(&home).join(".crank").join("certs"),
            None => system.to_path_buf(),
        }
    }
}

impl CertDirResolver for DefaultCertDirResolver {
    fn resolve(&self) -> PathBuf {
        Self::resolve_with(std::env::var("CERT_DIR").ok(), std::env::var("HOME").ok())
    }
}

/// Always the same directory; for tests and embedding.
#[derive(Debug, Clone)]
pub struct FixedCertDir(pub PathBuf);

impl CertDirResolver for FixedCertDir {
    fn resolve(&self) -> PathBuf {
        self.0.clone()
    }
}

fn is_writable_dir(dir: &Path) -> bool {
    if !dir.is_dir() {
        return false;
    }
    // Probe by creating a file: permission bits alone do not tell (read-only mounts, ACLs).
    // Created exclusively (never through a link someone planted at the probe's name) and
    // removed only if this process made it.
    let probe = dir.join(format!(".crank-write-probe-{}", std::process::id()));
    let made = std::fs::OpenOptions::new().write(true).create_new(true).open(&probe).is_ok();
    if made {
        let _ = std::fs::remove_file(&probe);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_dir_env_wins() {
        let p = DefaultCertDirResolver::resolve_with(Some("/x/y".into()), Some("/home/u".into()));
        assert_eq!(p, PathBuf::from("/x/y"));
    }

    #[test]
    fn falls_back_to_home_when_system_dir_is_not_writable() {
        let p = DefaultCertDirResolver::resolve_with(None, Some("/home/u".into()));
        if !is_writable_dir(Path::new(DefaultCertDirResolver::SYSTEM_DIR)) {
            assert_eq!(p, PathBuf::from("/home/u/.crank/certs"));
        } else {
            assert_eq!(p, PathBuf::from("/etc/certs"));
        }
    }
}
