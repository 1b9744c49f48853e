//! Atomic writing of a certificate directory.
//!
//! A bundle is three files that must change together. Each new file is first written
//! and synced under a hidden `.NAME.next` name (staging). A `.commit` marker then makes
//! the change durable in one rename; the `.next` files are renamed over the live ones and
//! the marker is removed. A crash before the marker leaves the old files intact (the
//! stale `.next` files are discarded on the next load); a crash after it is rolled
//! forward on the next load. Readers never see a half-written file.
//!
//! Writers and loaders of one directory take turns: each holds an exclusive `flock` on
//! the directory's `.lock` file (0600: no other user can open it to hold the lock; a
//! crashed process lets go) while it stages, commits, recovers or reads the files.
//! Without it a loader's recovery would discard what another process or thread was
//! staging (the writer then "commits" nothing, or half a bundle), and two writers would
//! pair one's certificate with the other's key.
//!
//! Before every write (and every load) the directory is checked: it must belong to the
//! running user and be writable by nobody else. Staging files are created exclusively and
//! never through a link: a stale one from a crash (a regular file of this user) is
//! removed first, and anything else found at a staging path is refused, not followed.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::ownership::{check_private_dir, create_exclusive, is_own_file, open_lock_file};

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
        self.locked(|| Ok(()))
    }

    /// Runs `read` with the directory locked against writers (see the module
    /// documentation), after checking it and [recovering](Self::recover) an interrupted
    /// write: what `read` reads is one whole bundle. A directory that does not exist is
    /// not created; `read` runs without a lock.
    pub fn locked<T>(&self, read: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        self.check_dir()?;
        let Some(_lock) = DirLock::take(&self.dir)? else { return read() };
        self.recover_locked()?;
        read()
    }

    /// [`Self::recover`] with the lock already held.
    fn recover_locked(&self) -> Result<(), Error> {
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
    /// The directory stays locked against other writers and loaders until the staged
    /// bundle is committed or dropped.
    pub fn stage(files: &CertFiles, cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<StagedBundle, Error> {
        create_dir(&files.dir)?;
        let lock = DirLock::take_for_write(&files.dir)?;
        files.recover_locked()?;
        let staged = StagedBundle { files: files.clone(), committed: false, _lock: lock };
        for ((path, mode), content) in files.entries().into_iter().zip([key_pem, cert_pem, ca_pem]) {
            write_synced(&next_path(path), content, mode)?;
        }
        sync_dir(&files.dir)?;
        Ok(staged)
    }
}

/// A bundle written beside the live files, not yet visible; it holds the directory's
/// lock. Dropping it without committing discards the staged files.
#[derive(Debug)]
#[must_use = "a staged bundle does nothing until committed"]
pub struct StagedBundle {
    files: CertFiles,
    committed: bool,
    // Dropped after `drop` below has cleaned up.
    _lock: DirLock,
}

impl StagedBundle {
    /// Makes the staged files live: one durable marker, then renames.
    pub fn commit(mut self) -> Result<(), Error> {
        self.committed = true;
        write_synced(&self.files.dir.join(MARKER), b"", CERT_MODE)?;
        sync_dir(&self.files.dir)?;
        self.files.recover_locked()
    }

    /// What a crash leaves: the staged files stay, the lock is let go.
    #[cfg(test)]
    fn crash(mut self) {
        self.committed = true;
    }
}

impl Drop for StagedBundle {
    fn drop(&mut self) {
        // Best effort: an uncommitted stage is also discarded by the next load. After a
        // commit that failed half-way, the same call rolls it forward if it can.
        if !self.committed {
            let _ = self.files.recover_locked();
        }
    }
}

/// A directory's lock file.
const LOCK: &str = ".lock";

/// An exclusive `flock` on a directory's `.lock` file (0600, so no other user can open
/// it, and hold the lock to stop every write), let go when dropped or when the process
/// ends.
#[derive(Debug)]
struct DirLock {
    _file: File,
}

impl DirLock {
    /// Waits for and takes the lock of `dir`. `None` if `dir` does not exist, or is on
    /// a read-only file system (where nothing writes).
    fn take(dir: &Path) -> Result<Option<Self>, Error> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let path = dir.join(LOCK);
        let Some(file) = open_lock_file(&path)? else { return Ok(None) };
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io("locking", &path, e.into())),
                Ok(()) => return Ok(Some(Self { _file: file })),
            }
        }
    }

    /// [Checks](check_private_dir) `dir`, which the writer has just created, and takes its
    /// lock: a directory on a read-only file system, or gone again, is an error saying so.
    fn take_for_write(dir: &Path) -> Result<Self, Error> {
        check_private_dir(dir)?;
        Self::take(dir)?.ok_or_else(|| {
            use std::io::ErrorKind;
            let kind = if dir.is_dir() { ErrorKind::ReadOnlyFilesystem } else { ErrorKind::NotFound };
            Error::io("locking", dir, kind.into())
        })
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
///
/// A change [owned by](Self::owned_by) another user gives each staged file to that user
/// before the journal is written, so a file is never live with the wrong owner or mode;
/// the journal records the owner (an `owner UID[:GID]` line) and recovery applies it
/// again before renaming. A journal without that line (an older one) leaves owners as
/// they are.
#[derive(Debug)]
#[must_use = "a file change does nothing until committed"]
pub struct FileChange {
    dir: PathBuf,
    writes: Vec<(String, Vec<u8>, u32)>,
    removes: Vec<String>,
    owner: Option<Owner>,
}

impl FileChange {
    /// A change of files in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), writes: Vec::new(), removes: Vec::new(), owner: None }
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

    /// Gives every file this change writes to user `uid` and, if given, group `gid`
    /// (without one, the group stays the one files are created with). Each file gets its
    /// owner while it is still staged, before it is renamed into place; their modes stay
    /// as given. Giving files to another user takes root (`CAP_CHOWN`): if it fails, the
    /// change fails, naming the directory and the uid, and the live files stay as they
    /// were. A directory this change creates is made 0755, so that the owner can reach
    /// the files. The directory itself must still belong to the running user.
    pub fn owned_by(mut self, uid: u32, gid: Option<u32>) -> Self {
        self.owner = Some(Owner { uid, gid });
        self
    }

    fn name(&self, path: &Path) -> String {
        debug_assert_eq!(path.parent(), Some(self.dir.as_path()), "a file change stays in its directory");
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Stages, commits and applies the change.
    pub fn commit(self) -> Result<(), Error> {
        let (journal, _lock) = self.stage()?;
        write_synced(&self.dir.join(CHANGE_JOURNAL), journal.as_bytes(), CERT_MODE)?;
        sync_dir(&self.dir)?;
        Self::recover_locked(&self.dir)
    }

    /// Writes, syncs (and gives to the owner) every new file under its staging name and
    /// returns the journal that commits them, with the directory's lock, held until the
    /// change is applied. On failure the files staged so far are removed again: nothing
    /// is left half-written, and the live files are untouched.
    fn stage(&self) -> Result<(String, DirLock), Error> {
        if let Some(owner) = self.owner {
            owner.check(&self.dir)?;
            if !self.dir.is_dir() {
                // The files' own modes protect them (the key is 0600); the owner must be
                // able to reach them.
                create_dir_with_mode(&self.dir, 0o755)?;
                fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
                    .map_err(|e| Error::io("setting mode of", &self.dir, e))?;
            }
        } else {
            create_dir(&self.dir)?;
        }
        let lock = DirLock::take_for_write(&self.dir)?;
        Self::recover_locked(&self.dir)?;
        let mut journal = String::new();
        if let Some(owner) = self.owner {
            journal.push_str(&format!("owner {}\n", owner.journal_value()));
        }
        let mut staged = Vec::new();
        let result = (|| {
            for (name, content, mode) in &self.writes {
                let next = next_path(&self.dir.join(name));
                write_synced_owned(&next, content, *mode, self.owner)?;
                staged.push(next);
                journal.push_str(&format!("put {name}\n"));
            }
            sync_dir(&self.dir)
        })();
        if let Err(e) = result {
            for next in &staged {
                let _ = fs::remove_file(next);
            }
            let _ = sync_dir(&self.dir);
            return Err(e);
        }
        for name in &self.removes {
            journal.push_str(&format!("del {name}\n"));
        }
        Ok((journal, lock))
    }

    /// Finishes a committed change of `dir` that was interrupted (after checking the
    /// directory as every write does). Without a journal there is nothing to do: staged
    /// files of a change that never committed are replaced by the next write. A journal
    /// that names an owner gives each staged file to it (again) before renaming it.
    pub fn recover(dir: &Path) -> Result<(), Error> {
        check_private_dir(dir)?;
        match DirLock::take(dir)? {
            Some(_lock) => Self::recover_locked(dir),
            None => Ok(()),
        }
    }

    /// [`Self::recover`] with the directory checked and its lock held.
    fn recover_locked(dir: &Path) -> Result<(), Error> {
        let journal_path = dir.join(CHANGE_JOURNAL);
        if !is_own_file(&journal_path)? {
            return Ok(());
        }
        let journal = fs::read_to_string(&journal_path).map_err(|e| Error::io("reading", &journal_path, e))?;
        // The whole journal is read before anything is applied: a bad line changes nothing.
        let mut owner = None;
        let mut ops = Vec::new();
        for line in journal.lines() {
            let bad = || Error::InFile {
                path: journal_path.clone(),
                source: Box::new(Error::parse("change journal", format!("line {line:?}"))),
            };
            let (op, arg) = line.split_once(' ').ok_or_else(bad)?;
            if op == "owner" {
                if owner.is_some() {
                    return Err(bad());
                }
                owner = Some(Owner::parse(arg).ok_or_else(bad)?);
                continue;
            }
            if arg.is_empty() || arg.contains('/') || arg.starts_with('.') || !matches!(op, "put" | "del") {
                return Err(bad());
            }
            ops.push((op, dir.join(arg)));
        }
        for (op, path) in ops {
            if op == "put" {
                let next = next_path(&path);
                if is_staged_file(&next, owner)? {
                    if let Some(owner) = owner {
                        owner.apply_to_path(&next)?;
                    }
                    rename(&next, &path)?;
                }
            } else {
                remove(&path)?;
            }
        }
        sync_dir(dir)?;
        remove(&journal_path)?;
        sync_dir(dir)
    }
}

/// Who the files of a [`FileChange`] are given to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    uid: u32,
    /// `None` leaves the group as it is.
    gid: Option<u32>,
}

impl Owner {
    /// `UID` or `UID:GID`, as the journal records it.
    fn journal_value(self) -> String {
        match self.gid {
            Some(gid) => format!("{}:{gid}", self.uid),
            None => self.uid.to_string(),
        }
    }

    fn parse(value: &str) -> Option<Self> {
        let id = |s: &str| s.parse::<u32>().ok().filter(|&n| n != u32::MAX && s.bytes().all(|b| b.is_ascii_digit()));
        let owner = match value.split_once(':') {
            Some((uid, gid)) => Self { uid: id(uid)?, gid: Some(id(gid)?) },
            None => Self { uid: id(value)?, gid: None },
        };
        Some(owner)
    }

    fn describe(self) -> String {
        match self.gid {
            Some(gid) => format!("uid {} and gid {gid}", self.uid),
            None => format!("uid {}", self.uid),
        }
    }

    fn ids(self) -> (rustix::fs::Uid, Option<rustix::fs::Gid>) {
        (rustix::fs::Uid::from_raw(self.uid), self.gid.map(rustix::fs::Gid::from_raw))
    }

    /// Refuses ids that are no user's or group's (`-1` means "unchanged" to chown).
    fn check(self, dir: &Path) -> Result<(), Error> {
        if self.uid == u32::MAX || self.gid == Some(u32::MAX) {
            return Err(self.error(dir, "the files", std::io::ErrorKind::InvalidInput.into()));
        }
        Ok(())
    }

    /// Gives a file just created (open as `file`, at `path`) to this owner.
    fn apply(self, file: &File, path: &Path) -> Result<(), Error> {
        let (uid, gid) = self.ids();
        rustix::fs::fchown(file, Some(uid), gid).map_err(|e| self.chown_error(path, e))
    }

    /// Gives the regular file at `path` to this owner, without following a link.
    fn apply_to_path(self, path: &Path) -> Result<(), Error> {
        let (uid, gid) = self.ids();
        rustix::fs::chownat(rustix::fs::CWD, path, Some(uid), gid, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.chown_error(path, e))
    }

    fn chown_error(self, path: &Path, e: rustix::io::Errno) -> Error {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A staging file is named after the file it becomes.
        let name = name.strip_prefix('.').and_then(|n| n.strip_suffix(".next")).unwrap_or(&name);
        self.error(dir, name, e.into())
    }

    fn error(self, dir: &Path, what: &str, e: std::io::Error) -> Error {
        let denied = e.kind() == std::io::ErrorKind::PermissionDenied;
        let hint = if denied { "; giving files to another user takes root (CAP_CHOWN)" } else { "" };
        let reason = format!("cannot give {what} to {}: {e}{hint}", self.describe());
        Error::io("setting the owner of the files in", dir, std::io::Error::new(e.kind(), reason))
    }
}

fn next_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.next"))
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    create_dir_with_mode(dir, 0o700)
}

fn create_dir_with_mode(dir: &Path, mode: u32) -> Result<(), Error> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(|e| Error::io("creating directory", dir, e))
}

/// Writes a new file at `path` and syncs it. A stale file of this user there (a crash)
/// is removed first; the file is then created exclusively, without following links, so
/// anything that appears there meanwhile makes the write fail instead of being written.
fn write_synced(path: &Path, content: &[u8], mode: u32) -> Result<(), Error> {
    write_synced_owned(path, content, mode, None)
}

/// [`write_synced`], giving the file to `owner` (if any) before anything is written into
/// it. A stale staging file already given to that owner (a crash) is removed first too.
/// If the file cannot be written, it is removed again.
fn write_synced_owned(path: &Path, content: &[u8], mode: u32, owner: Option<Owner>) -> Result<(), Error> {
    if is_staged_file(path, owner)? {
        remove(path)?;
    }
    let mut f = create_exclusive(path, mode)?;
    let written = (|| {
        // The mode given at creation is reduced by the umask; set it explicitly so a key
        // is exactly 0600 and a certificate 0644.
        f.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| Error::io("setting mode of", path, e))?;
        if let Some(owner) = owner {
            owner.apply(&f, path)?;
        }
        f.write_all(content).map_err(|e| Error::io("writing", path, e))?;
        f.sync_all().map_err(|e| Error::io("syncing", path, e))
    })();
    if written.is_err() {
        drop(f);
        let _ = fs::remove_file(path);
    }
    written
}

/// Whether `path` holds a staging file this process may replace or rename: one of its
/// own ([`is_own_file`]) or, for a change owned by another user, a regular file already
/// given to that user. Only this process can create files in the (private) directory, so
/// such a file is one it staged. Anything else is an error, as for [`is_own_file`].
fn is_staged_file(path: &Path, owner: Option<Owner>) -> Result<bool, Error> {
    if let (Some(owner), Ok(meta)) = (owner, fs::symlink_metadata(path))
        && meta.file_type().is_file()
        && meta.uid() == owner.uid
    {
        return Ok(true);
    }
    is_own_file(path)
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

    /// The uid and gid the owner tests give files to: another user's, which only root may
    /// give files to.
    const WORKLOAD: u32 = 1000;

    fn running_as_root() -> bool {
        if crate::ownership::euid() != 0 {
            eprintln!("skipped: giving files to another user takes root");
            return false;
        }
        true
    }

    fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
        let m = fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    }

    #[test]
    fn an_owned_change_gives_its_files_to_the_owner_before_they_are_live() {
        if !running_as_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let (key, cert) = (dir.join("client.key"), dir.join("client.crt"));
        let change = || {
            FileChange::in_dir(&dir)
                .write(&key, "key", 0o600)
                .write(&cert, "cert", 0o644)
                .owned_by(WORKLOAD, Some(WORKLOAD))
        };

        // Staged, not yet committed: the staging files already have owner and mode.
        // (The lock is let go at the end of the statement, as after a crash.)
        let journal = change().stage().unwrap().0;
        assert_eq!(journal, "owner 1000:1000\nput client.key\nput client.crt\n");
        assert_eq!(owner_and_mode(&next_path(&key)), (WORKLOAD, WORKLOAD, 0o600));
        assert_eq!(owner_and_mode(&next_path(&cert)), (WORKLOAD, WORKLOAD, 0o644));
        assert!(!key.exists() && !cert.exists());
        // The directory it created lets the owner in; it still belongs to the agent.
        assert_eq!(owner_and_mode(&dir), (0, 0, 0o755));

        // The next change replaces those stale staging files (the other user's now) and
        // commits.
        change().commit().unwrap();
        assert_eq!(owner_and_mode(&key), (WORKLOAD, WORKLOAD, 0o600));
        assert_eq!(owner_and_mode(&cert), (WORKLOAD, WORKLOAD, 0o644));
        assert_eq!(read(&key), b"key");
        assert!(!next_path(&key).exists() && !dir.join(CHANGE_JOURNAL).exists());

        // Without a gid the group stays the creator's.
        FileChange::in_dir(&dir).write(&key, "key2", 0o600).owned_by(WORKLOAD, None).commit().unwrap();
        assert_eq!(owner_and_mode(&key), (WORKLOAD, 0, 0o600));
        // Without an owner, files are the running user's, as always.
        FileChange::in_dir(&dir).write(&key, "key3", 0o600).commit().unwrap();
        assert_eq!(owner_and_mode(&key), (0, 0, 0o600));
        assert_eq!(read(&key), b"key3");
    }

    #[test]
    fn recovery_gives_the_files_of_an_owned_change_to_their_owner() {
        if !running_as_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        FileChange::in_dir(&dir).write(&a, "a1", 0o600).write(&b, "b1", 0o644).write(&c, "c1", 0o644).commit().unwrap();

        // A crash after the journal of an owned change: one staged file was given to the
        // owner, one still is the agent's (recovery gives it too), one rename was done.
        write_synced_owned(&next_path(&a), b"a2", 0o600, Some(Owner { uid: WORKLOAD, gid: Some(WORKLOAD) })).unwrap();
        write_synced(&next_path(&b), b"b2", 0o644).unwrap();
        write_synced(&next_path(&c), b"c2", 0o644).unwrap();
        write_synced(&dir.join(CHANGE_JOURNAL), b"owner 1000:1000\nput a\nput b\nput c\n", 0o644).unwrap();
        fs::rename(next_path(&c), &c).unwrap();
        FileChange::recover(&dir).unwrap();
        assert_eq!((read(&a), read(&b), read(&c)), (b"a2".to_vec(), b"b2".to_vec(), b"c2".to_vec()));
        assert_eq!(owner_and_mode(&a), (WORKLOAD, WORKLOAD, 0o600));
        assert_eq!(owner_and_mode(&b), (WORKLOAD, WORKLOAD, 0o644));
        assert!(!dir.join(CHANGE_JOURNAL).exists() && !next_path(&a).exists());

        // A journal without an owner (an older one) recovers as before, owners unchanged.
        write_synced(&next_path(&b), b"b3", 0o644).unwrap();
        write_synced(&dir.join(CHANGE_JOURNAL), b"put b\ndel c\n", 0o644).unwrap();
        FileChange::recover(&dir).unwrap();
        assert_eq!(read(&b), b"b3");
        assert_eq!(owner_and_mode(&b), (0, 0, 0o644));
        assert!(!c.exists());

        // Without that owner in the journal, a staged file of another user is refused,
        // not renamed into place.
        write_synced_owned(&next_path(&b), b"b4", 0o644, Some(Owner { uid: WORKLOAD, gid: None })).unwrap();
        write_synced(&dir.join(CHANGE_JOURNAL), b"put b\n", 0o644).unwrap();
        let e = FileChange::recover(&dir).unwrap_err().to_string();
        assert!(e.contains("is owned by uid 1000"), "{e}");
        assert_eq!(read(&b), b"b3");

        // A malformed owner line is refused before anything is applied.
        for bad in ["owner x\nput b\n", "owner 1000:\nput b\n", "owner 4294967295\nput b\n", "owner 1\nowner 2\n"] {
            write_synced(&dir.join(CHANGE_JOURNAL), bad.as_bytes(), 0o644).unwrap();
            let e = FileChange::recover(&dir).unwrap_err().to_string();
            assert!(e.contains(".change.commit") && e.contains("change journal"), "{bad:?}: {e}");
            assert_eq!(read(&b), b"b3");
        }
    }

    /// Set to a directory, the failure test below runs its scenario there: in a child
    /// process of the test binary that runs as another user.
    const CHOWN_CHILD_DIR: &str = "CRANK_TEST_CHOWN_FAILURE_DIR";

    /// A change that cannot give its files to their owner fails, naming the directory and
    /// the uid, and leaves the live files and no staging files behind.
    fn an_unpermitted_owner_fails_cleanly(base: &Path) {
        let me = crate::ownership::euid();
        assert_ne!(me, 0, "root may give files to anyone");
        let other = me + 1;
        let dir = base.join("certs");
        let (key, cert) = (dir.join("client.key"), dir.join("client.crt"));
        FileChange::in_dir(&dir).write(&key, "old-key", 0o600).write(&cert, "old-cert", 0o644).commit().unwrap();

        let e = FileChange::in_dir(&dir)
            .write(&key, "new-key", 0o600)
            .write(&cert, "new-cert", 0o644)
            .owned_by(other, Some(other))
            .commit()
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!("setting the owner of the files in {}", dir.display()))
                && text.contains(&format!("cannot give client.key to uid {other} and gid {other}"))
                && text.contains("takes root"),
            "{text}"
        );
        assert!(matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied));
        assert_eq!((read(&key), read(&cert)), (b"old-key".to_vec(), b"old-cert".to_vec()));
        let mut left: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, [".lock", "client.crt", "client.key"], "something half-written was left behind");
        let (uid, _, mode) = owner_and_mode(&key);
        assert_eq!((uid, mode), (me, 0o600));
    }

    #[test]
    fn a_change_whose_owner_cannot_be_set_fails_and_keeps_the_old_files() {
        if let Some(dir) = std::env::var_os(CHOWN_CHILD_DIR) {
            an_unpermitted_owner_fails_cleanly(Path::new(&dir));
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        if crate::ownership::euid() != 0 {
            an_unpermitted_owner_fails_cleanly(tmp.path());
            return;
        }
        // Root may give files to anyone: run the scenario as another user, in a child
        // process of this test binary running only this test.
        use std::os::unix::process::CommandExt;
        std::os::unix::fs::chown(tmp.path(), Some(WORKLOAD), Some(WORKLOAD)).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["write::tests::a_change_whose_owner_cannot_be_set_fails_and_keeps_the_old_files", "--exact"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHOWN_CHILD_DIR, tmp.path())
            .uid(WORKLOAD)
            .gid(WORKLOAD)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
        assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}");
    }

    #[test]
    fn a_change_that_fails_while_staging_removes_what_it_staged() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let (key, cert) = (dir.join("client.key"), dir.join("client.crt"));
        FileChange::in_dir(&dir).write(&key, "old-key", 0o600).write(&cert, "old-cert", 0o644).commit().unwrap();
        // The key stages; the certificate's staging path holds a link.
        let target = tmp.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, next_path(&cert)).unwrap();
        let e = FileChange::in_dir(&dir)
            .write(&key, "new-key", 0o600)
            .write(&cert, "new-cert", 0o644)
            .commit()
            .unwrap_err();
        assert!(matches!(e, Error::Insecure { .. }), "{e}");
        assert!(!next_path(&key).exists(), "the staged key was left behind");
        assert!(next_path(&cert).is_symlink() && !target.exists(), "the link was touched");
        assert_eq!((read(&key), read(&cert)), (b"old-key".to_vec(), b"old-cert".to_vec()));
    }

    #[test]
    fn an_owner_that_is_no_user_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let key = dir.join("client.key");
        for (uid, gid) in [(u32::MAX, None), (1000, Some(u32::MAX))] {
            let e =
                FileChange::in_dir(&dir).write(&key, "k", 0o600).owned_by(uid, gid).commit().unwrap_err().to_string();
            assert!(e.contains(&dir.display().to_string()) && e.contains(&format!("uid {uid}")), "{e}");
            assert!(!dir.exists());
        }
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
        staged.crash();
        assert!(next_path(&f.cert).exists());
        f.recover().unwrap();
        assert_eq!(read(&f.cert), b"old-cert");
        assert_eq!(read(&f.key), b"old-key");
        assert!(!next_path(&f.cert).exists(), "stale staged file left behind");
    }

    #[test]
    fn a_load_while_a_write_is_staged_neither_discards_nor_splits_it() {
        // Another process or thread loading the directory (a worker's rotator, `crank
        // cert inspect`) while a bundle is written: the write lands whole, every time.
        let (_t, f) = files();
        BundleWriter::write(&f, b"cert-0", b"key-0", b"ca-0").unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let loader = s.spawn(|| {
                let mut loads = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    f.recover().unwrap();
                    let (cert, key, ca) = f.locked(|| Ok((read(&f.cert), read(&f.key), read(&f.ca)))).unwrap();
                    let n = |b: &[u8], prefix: &str| String::from_utf8_lossy(b).strip_prefix(prefix).map(str::to_owned);
                    assert_eq!(n(&cert, "cert-"), n(&key, "key-"), "a load saw one write's certificate, another's key");
                    assert_eq!(n(&cert, "cert-"), n(&ca, "ca-"));
                    loads += 1;
                }
                loads
            });
            let writer = s.spawn(|| {
                for n in 1..=60 {
                    let (c, k, a) = (format!("cert-{n}"), format!("key-{n}"), format!("ca-{n}"));
                    BundleWriter::write(&f, c.as_bytes(), k.as_bytes(), a.as_bytes()).unwrap();
                    assert_eq!((read(&f.cert), read(&f.key)), (c.into_bytes(), k.into_bytes()), "write {n} was lost");
                }
            });
            let written = writer.join();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let loaded = loader.join();
            written.unwrap();
            assert!(loaded.unwrap() > 0);
        });
    }

    #[test]
    fn the_lock_file_is_private_and_one_others_could_open_is_refused() {
        let (t, f) = files();
        BundleWriter::write(&f, b"cert", b"key", b"ca").unwrap();
        let lock = f.dir.join(LOCK);
        assert_eq!(fs::metadata(&lock).unwrap().permissions().mode() & 0o777, 0o600);
        // Opened by group or others, it could be held by them: every write would wait.
        set_mode(&lock, 0o644);
        let e = f.recover().unwrap_err().to_string();
        assert!(e.contains(".lock") && e.contains("another user could hold the lock"), "{e}");
        assert!(BundleWriter::write(&f, b"c", b"k", b"a").is_err());
        // A link is not followed.
        fs::remove_file(&lock).unwrap();
        let target = t.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        let e = f.recover().unwrap_err().to_string();
        assert!(e.contains(".lock is a symbolic link"), "{e}");
        assert!(!target.exists());
        // Removed, it is made again.
        fs::remove_file(&lock).unwrap();
        BundleWriter::write(&f, b"cert-2", b"key-2", b"ca-2").unwrap();
        assert_eq!(read(&f.cert), b"cert-2");
    }

    #[test]
    fn two_writers_at_once_each_land_whole() {
        let (_t, f) = files();
        std::thread::scope(|s| {
            for w in ["a", "b"] {
                let f = &f;
                s.spawn(move || {
                    for i in 0..30 {
                        let n = format!("{w}{i}");
                        let (c, k, a) = (format!("cert-{n}"), format!("key-{n}"), format!("ca-{n}"));
                        BundleWriter::write(f, c.as_bytes(), k.as_bytes(), a.as_bytes()).unwrap();
                        let (cert, key, ca) = f.locked(|| Ok((read(&f.cert), read(&f.key), read(&f.ca)))).unwrap();
                        let tail = |b: Vec<u8>| String::from_utf8(b).unwrap().split_once('-').unwrap().1.to_owned();
                        let (nc, nk, na) = (tail(cert), tail(key), tail(ca));
                        assert!(nc == nk && nk == na, "a bundle mixed from two writes: {nc} {nk} {na}");
                    }
                });
            }
        });
        let left: Vec<_> = fs::read_dir(&f.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 4, "something staged was left behind: {left:?}");
    }

    #[test]
    fn crash_after_marker_rolls_forward() {
        let (_t, f) = files();
        BundleWriter::write(&f, b"old-cert", b"old-key", b"old-ca").unwrap();
        let staged = BundleWriter::stage(&f, b"new-cert", b"new-key", b"new-ca").unwrap();
        staged.crash();
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
