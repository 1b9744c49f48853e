//! Atomic writing of a certificate directory.
//!
//! A bundle is three files that must change together. Each new file is first written
//! and synced under a hidden `.NAME.next` name (staging). A `.commit` marker then makes
//! the change durable in one rename; the `.next` files are renamed over the live ones and
//! the marker is removed. A crash before the marker leaves the old files intact (the
//! stale `.next` files are discarded on the next load); a crash after it is rolled
//! forward on the next load. Readers never see a half-written file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// Mode of private key files.
const KEY_MODE: u32 = 0o600;
/// Mode of certificate files.
const CERT_MODE: u32 = 0o644;
const MARKER: &str = ".commit";

/// The standard file names of a certificate directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `client.crt`: the worker's certificate chain, leaf first.
    pub cert: PathBuf,
    /// `client.key`: the worker's private key, mode 0600.
    pub key: PathBuf,
    /// `ca.crt`: the CA certificates the worker trusts.
    pub ca: PathBuf,
    /// `ca.crl`: the CA's latest revocation list (PEM) this worker accepted. Written on
    /// its own (it changes more often than the bundle), never replaced by an older one.
    pub crl: PathBuf,
}

impl CertFiles {
    /// The standard files inside `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            cert: dir.join("client.crt"),
            key: dir.join("client.key"),
            ca: dir.join("ca.crt"),
            crl: dir.join("ca.crl"),
            dir,
        }
    }

    /// Whether all three files exist.
    pub fn exist(&self) -> bool {
        self.cert.exists() && self.key.exists() && self.ca.exists()
    }

    fn entries(&self) -> [(&Path, u32); 3] {
        // The key goes first so that a roll-forward never pairs a new certificate with an
        // old key for longer than one rename.
        [(&self.key, KEY_MODE), (&self.cert, CERT_MODE), (&self.ca, CERT_MODE)]
    }

    /// Finishes a committed but interrupted write, or discards an uncommitted one.
    pub fn recover(&self) -> Result<(), Error> {
        let marker = self.dir.join(MARKER);
        if marker.exists() {
            for (path, _) in self.entries() {
                let next = next_path(path);
                if next.exists() {
                    rename(&next, path)?;
                }
            }
            remove(&marker)?;
        } else {
            for (path, _) in self.entries() {
                let next = next_path(path);
                if next.exists() {
                    remove(&next)?;
                }
            }
        }
        sync_dir(&self.dir)
    }
}

/// Writes bundles into a cert directory atomically.
#[derive(Debug, Clone, Copy, Default)]
pub struct BundleWriter;

impl BundleWriter {
    /// Writes certificate chain, key and CA PEM texts as one atomic change.
    pub fn write(files: &CertFiles, cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<(), Error> {
        Self::stage(files, cert_pem, key_pem, ca_pem)?.commit()
    }

    /// Writes and syncs the new files beside the live ones without touching them.
    /// Nothing changes for readers until [`StagedBundle::commit`].
    pub fn stage(files: &CertFiles, cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<StagedBundle, Error> {
        create_dir(&files.dir)?;
        files.recover()?;
        for ((path, mode), content) in files.entries().into_iter().zip([key_pem, cert_pem, ca_pem]) {
            write_synced(&next_path(path), content, mode)?;
        }
        sync_dir(&files.dir)?;
        Ok(StagedBundle { files: files.clone() })
    }
}

/// A bundle written beside the live files, not yet visible. Dropping it without
/// committing discards the staged files.
#[derive(Debug)]
#[must_use = "a staged bundle does nothing until committed"]
pub struct StagedBundle {
    files: CertFiles,
}

impl StagedBundle {
    /// Makes the staged files live: one durable marker, then renames.
    pub fn commit(self) -> Result<(), Error> {
        let files = self.files.clone();
        std::mem::forget(self);
        write_synced(&files.dir.join(MARKER), b"", CERT_MODE)?;
        sync_dir(&files.dir)?;
        files.recover()
    }
}

impl Drop for StagedBundle {
    fn drop(&mut self) {
        // Best effort: an uncommitted stage is also discarded by the next load.
        let _ = self.files.recover();
    }
}

/// Writes one file atomically: temp file in the same directory, sync, rename, sync dir.
pub fn write_file_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    create_dir(dir)?;
    let tmp = next_path(path);
    write_synced(&tmp, content, mode)?;
    rename(&tmp, path)?;
    sync_dir(dir)
}

fn next_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.next"))
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| Error::io("creating directory", dir, e))
}

fn write_synced(path: &Path, content: &[u8], mode: u32) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io("creating", path, e))?;
    // The mode given at creation is reduced by the umask and ignored for an existing
    // file; set it explicitly so a key is never more readable than 0600.
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| Error::io("setting mode of", path, e))?;
    f.write_all(content).map_err(|e| Error::io("writing", path, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", path, e))
}

fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    fs::rename(from, to).map_err(|e| Error::io("renaming into place", to, e))
}

fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", path, e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("syncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, CertFiles) {
        let tmp = tempfile::tempdir().unwrap();
        let files = CertFiles::in_dir(tmp.path().join("certs"));
        (tmp, files)
    }

    fn read(p: &Path) -> Vec<u8> {
        fs::read(p).unwrap()
    }

    #[test]
    fn key_is_0600_and_certs_0644() {
        let (_t, f) = files();
        BundleWriter::write(&f, b"cert", b"key", b"ca").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f.key), 0o600);
        assert_eq!(mode(&f.cert), 0o644);
        assert_eq!(read(&f.cert), b"cert");
    }

    #[test]
    fn crash_before_commit_keeps_old_files() {
        let (_t, f) = files();
        BundleWriter::write(&f, b"old-cert", b"old-key", b"old-ca").unwrap();
        let staged = BundleWriter::stage(&f, b"new-cert", b"new-key", b"new-ca").unwrap();
        // A crash: the process dies with the staged files on disk and no cleanup.
        std::mem::forget(staged);
        assert!(next_path(&f.cert).exists());
        f.recover().unwrap();
        assert_eq!(read(&f.cert), b"old-cert");
        assert_eq!(read(&f.key), b"old-key");
        assert!(!next_path(&f.cert).exists(), "stale staged file left behind");
    }

    #[test]
    fn crash_after_marker_rolls_forward() {
        let (_t, f) = files();
        BundleWriter::write(&f, b"old-cert", b"old-key", b"old-ca").unwrap();
        let staged = BundleWriter::stage(&f, b"new-cert", b"new-key", b"new-ca").unwrap();
        std::mem::forget(staged);
        // The marker was written and one rename happened before the crash.
        write_synced(&f.dir.join(MARKER), b"", CERT_MODE).unwrap();
        rename(&next_path(&f.key), &f.key).unwrap();
        f.recover().unwrap();
        assert_eq!(read(&f.key), b"new-key");
        assert_eq!(read(&f.cert), b"new-cert");
        assert_eq!(read(&f.ca), b"new-ca");
        assert!(!f.dir.join(MARKER).exists());
    }
}
