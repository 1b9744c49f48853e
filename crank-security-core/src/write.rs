//! Atomic writing of a certificate directory.
//!
//! A bundle is three files that must change together. Each new file is first written
//! and synced under a hidden `.NAME.next` name (staging). A `.commit` marker then makes
//! the change durable in one rename; the `.next` files are renamed over the live ones and
//! the marker is removed. A crash before the marker leaves the old files intact (the
//! stale `.next` files are discarded on the next load); a crash after it is rolled
//! forward on the next load. Readers never see a half-written file.
//!
//! Before every write (and every load) the directory is checked: it must belong to the
//! running user and be writable by nobody else. Staging files are created exclusively and
//! never through a link: a stale one from a crash (a regular file of this user) is
//! removed first, and anything else found at a staging path is refused, not followed.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::ownership::{check_private_dir, create_exclusive, is_own_file};

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

    /// Checks that the directory, if it exists, belongs to the running user and is not
    /// writable by group or others; the error names the command that fixes it. Every
    /// write and load checks this too; call it where a directory is first used, before
    /// anything is spent on it (a join token).
    pub fn check_dir(&self) -> Result<(), Error> {
        check_private_dir(&self.dir)
    }

    fn entries(&self) -> [(&Path, u32); 3] {
        // The key goes first so that a roll-forward never pairs a new certificate with an
        // old key for longer than one rename.
        [(&self.key, KEY_MODE), (&self.cert, CERT_MODE), (&self.ca, CERT_MODE)]
    }

    /// Finishes a committed but interrupted write, or discards an uncommitted one, after
    /// [checking the directory](Self::check_dir). A link or another user's file at a
    /// staging path is refused, never renamed into place or followed.
    pub fn recover(&self) -> Result<(), Error> {
        self.check_dir()?;
        if !self.dir.is_dir() {
            return Ok(());
        }
        let marker = self.dir.join(MARKER);
        let committed = is_own_file(&marker)?;
        for (path, _) in self.entries() {
            let next = next_path(path);
            if is_own_file(&next)? {
                if committed {
                    rename(&next, path)?;
                } else {
                    remove(&next)?;
                }
            }
        }
        if committed {
            remove(&marker)?;
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
/// The directory must belong to the running user and not be writable by group or others
/// (it holds keys: a CA's, an administrator's), as a cert directory must.
pub fn write_file_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    create_dir(dir)?;
    check_private_dir(dir)?;
    let tmp = next_path(path);
    write_synced(&tmp, content, mode)?;
    rename(&tmp, path)?;
    sync_dir(dir)
}

/// Journal of a [`FileChange`] being applied.
const CHANGE_JOURNAL: &str = ".change.commit";

/// Several files of one directory changed as one: some written, some removed (a CA's
/// root rollover step). The same protocol as a bundle: every new file is staged and
/// synced as `.NAME.next`, then one durable journal listing the change commits it, then
/// it is applied. A crash before the journal changes nothing; a crash after it is rolled
/// forward by [`FileChange::recover`], which every user of the directory calls first.
#[derive(Debug)]
#[must_use = "a file change does nothing until committed"]
pub struct FileChange {
    dir: PathBuf,
    writes: Vec<(String, Vec<u8>, u32)>,
    removes: Vec<String>,
}

impl FileChange {
    /// A change of files in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), writes: Vec::new(), removes: Vec::new() }
    }

    /// Writes `content` to `path` (a file of this directory) with `mode`.
    pub fn write(mut self, path: &Path, content: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.writes.push((self.name(path), content.into(), mode));
        self
    }

    /// Removes `path` (a file of this directory) if it is there.
    pub fn remove(mut self, path: &Path) -> Self {
        let name = self.name(path);
        self.removes.push(name);
        self
    }

    fn name(&self, path: &Path) -> String {
        debug_assert_eq!(path.parent(), Some(self.dir.as_path()), "a file change stays in its directory");
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Stages, commits and applies the change.
    pub fn commit(self) -> Result<(), Error> {
        create_dir(&self.dir)?;
        Self::recover(&self.dir)?;
        let mut journal = String::new();
        for (name, content, mode) in &self.writes {
            write_synced(&next_path(&self.dir.join(name)), content, *mode)?;
            journal.push_str(&format!("put {name}\n"));
        }
        for name in &self.removes {
            journal.push_str(&format!("del {name}\n"));
        }
        sync_dir(&self.dir)?;
        write_synced(&self.dir.join(CHANGE_JOURNAL), journal.as_bytes(), CERT_MODE)?;
        sync_dir(&self.dir)?;
        Self::recover(&self.dir)
    }

    /// Finishes a committed change of `dir` that was interrupted (after checking the
    /// directory as every write does). Without a journal there is nothing to do: staged
    /// files of a change that never committed are replaced by the next write.
    pub fn recover(dir: &Path) -> Result<(), Error> {
        check_private_dir(dir)?;
        let journal_path = dir.join(CHANGE_JOURNAL);
        if !is_own_file(&journal_path)? {
            return Ok(());
        }
        let journal = fs::read_to_string(&journal_path).map_err(|e| Error::io("reading", &journal_path, e))?;
        for line in journal.lines() {
            let bad = || Error::InFile {
                path: journal_path.clone(),
                source: Box::new(Error::parse("change journal", format!("line {line:?}"))),
            };
            let (op, name) = line.split_once(' ').ok_or_else(bad)?;
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(bad());
            }
            let path = dir.join(name);
            match op {
                "put" => {
                    let next = next_path(&path);
                    if is_own_file(&next)? {
                        rename(&next, &path)?;
                    }
                }
                "del" => remove(&path)?,
                _ => return Err(bad()),
            }
        }
        sync_dir(dir)?;
        remove(&journal_path)?;
        sync_dir(dir)
    }
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

/// Writes a new file at `path` and syncs it. A stale file of this user there (a crash)
/// is removed first; the file is then created exclusively, without following links, so
/// anything that appears there meanwhile makes the write fail instead of being written.
fn write_synced(path: &Path, content: &[u8], mode: u32) -> Result<(), Error> {
    if is_own_file(path)? {
        remove(path)?;
    }
    let mut f = create_exclusive(path, mode)?;
    // The mode given at creation is reduced by the umask; set it explicitly so a key is
    // exactly 0600 and a certificate 0644.
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
    use crate::ownership::create_exclusive;

    fn files() -> (tempfile::TempDir, CertFiles) {
        let tmp = tempfile::tempdir().unwrap();
        let files = CertFiles::in_dir(tmp.path().join("certs"));
        (tmp, files)
    }

    fn read(p: &Path) -> Vec<u8> {
        fs::read(p).unwrap()
    }

    #[test]
    fn a_file_change_is_all_or_nothing_and_rolls_forward() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        FileChange::in_dir(&dir).write(&a, "a1", 0o600).write(&c, "c1", 0o644).commit().unwrap();
        assert_eq!(read(&a), b"a1");
        assert_eq!(fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);

        // Crash after staging, before the journal: nothing changed; the next change
        // replaces the stale staged file.
        write_synced(&next_path(&a), b"a-stale", 0o600).unwrap();
        FileChange::recover(&dir).unwrap();
        assert_eq!(read(&a), b"a1");

        // Crash after the journal, one rename done: recovery finishes it.
        write_synced(&next_path(&b), b"b2", 0o644).unwrap();
        write_synced(&dir.join(CHANGE_JOURNAL), b"put a\nput b\ndel c\n", 0o644).unwrap();
        fs::rename(next_path(&a), &a).unwrap();
        FileChange::recover(&dir).unwrap();
        assert_eq!(read(&a), b"a-stale");
        assert_eq!(read(&b), b"b2");
        assert!(!c.exists());
        assert!(!dir.join(CHANGE_JOURNAL).exists());

        // A journal naming a file outside the directory is refused.
        write_synced(&dir.join(CHANGE_JOURNAL), b"del ../x\n", 0o644).unwrap();
        let e = FileChange::recover(&dir).unwrap_err().to_string();
        assert!(e.contains(".change.commit") && e.contains("../x"), "{e}");
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

    fn set_mode(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_link_planted_at_a_staging_path_is_refused_not_followed() {
        let (t, f) = files();
        BundleWriter::write(&f, b"cert", b"key", b"ca").unwrap();
        let target = t.path().join("attacker-owned");
        fs::write(&target, b"untouched").unwrap();
        std::os::unix::fs::symlink(&target, next_path(&f.key)).unwrap();

        let e = BundleWriter::write(&f, b"new-cert", b"new-key", b"new-ca").unwrap_err();
        assert!(matches!(e, Error::Insecure { .. }), "{e}");
        assert!(e.to_string().contains(".client.key.next is a symbolic link"), "{e}");
        assert_eq!(read(&target), b"untouched", "the link was followed");
        assert_eq!(read(&f.key), b"key");
        // A load refuses it too, rather than discarding the evidence.
        assert!(f.recover().unwrap_err().to_string().contains("symbolic link"));
        // With a commit marker (a crash mid-commit, or planted), the link is not renamed
        // into place either.
        write_synced(&f.dir.join(MARKER), b"", CERT_MODE).unwrap();
        assert!(f.recover().is_err());
        assert!(!f.key.is_symlink() && read(&f.key) == b"key");
    }

    #[test]
    fn a_file_that_appears_at_a_staging_path_after_cleanup_is_not_opened() {
        // What the exclusive create does when something reappears between removing a
        // stale staging file and creating the new one.
        let (t, f) = files();
        create_dir(&f.dir).unwrap();
        let target = t.path().join("attacker-owned");
        fs::write(&target, b"untouched").unwrap();
        let next = next_path(&f.key);
        std::os::unix::fs::symlink(&target, &next).unwrap();
        let e = create_exclusive(&next, KEY_MODE).unwrap_err().to_string();
        assert!(e.contains("appeared while crank was creating it") && e.contains("it was not opened"), "{e}");
        assert_eq!(read(&target), b"untouched");
        // A dangling link is not created through either.
        fs::remove_file(&target).unwrap();
        assert!(create_exclusive(&next, KEY_MODE).is_err());
        assert!(!target.exists(), "a file was created through the link");
        // Nor a regular file opened and truncated.
        fs::remove_file(&next).unwrap();
        fs::write(&next, b"someone's").unwrap();
        assert!(create_exclusive(&next, KEY_MODE).is_err());
        assert_eq!(read(&next), b"someone's");
    }

    #[test]
    fn a_stale_staging_file_from_a_crash_is_removed_and_replaced() {
        let (_t, f) = files();
        BundleWriter::write(&f, b"cert", b"key", b"ca").unwrap();
        // A crash in write_file_atomic left its temp file, readable by all.
        let next = next_path(&f.key);
        fs::write(&next, b"stale").unwrap();
        set_mode(&next, 0o644);
        write_file_atomic(&f.key, b"fresh", KEY_MODE).unwrap();
        assert_eq!(read(&f.key), b"fresh");
        assert_eq!(fs::metadata(&f.key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!next.exists());
    }

    #[test]
    fn a_directory_group_or_others_may_write_is_refused_before_any_write() {
        let (_t, f) = files();
        BundleWriter::write(&f, b"cert", b"key", b"ca").unwrap();
        for mode in [0o770, 0o703, 0o1777] {
            set_mode(&f.dir, mode);
            let fix = format!("run `chmod go-w {}`", f.dir.display());
            let e = BundleWriter::write(&f, b"new-cert", b"new-key", b"new-ca").unwrap_err().to_string();
            assert!(e.contains(&format!("(mode {mode:04o})")) && e.contains(&fix), "{e}");
            let e = write_file_atomic(&f.dir.join("root.key"), b"k", KEY_MODE).unwrap_err().to_string();
            assert!(e.contains(&fix), "{e}");
            assert_eq!(read(&f.key), b"key");
            assert!(!next_path(&f.key).exists() && !f.dir.join("root.key").exists());
        }
        // Readable by others is fine for the directory (the key itself is 0600).
        set_mode(&f.dir, 0o755);
        BundleWriter::write(&f, b"new-cert", b"new-key", b"new-ca").unwrap();
        assert_eq!(read(&f.key), b"new-key");
    }
}
