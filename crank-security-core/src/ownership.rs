//! Who may change a certificate directory and the files crank keeps in it.
//!
//! Whoever can create entries in a directory can plant a link where a key is about to be
//! written, or swap a file between two reads. So a directory crank writes keys into must
//! belong to the user crank runs as and be writable by nobody else; files are created
//! exclusively and without following links; and files are read without following links,
//! from owners crank trusts.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::Error;

/// `O_NOFOLLOW`, which std does not name. The flag's value (0o400000 on Linux, 0x100 on
/// the BSDs) fits an `i32` everywhere.
const O_NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// The effective uid of this process: the owner of every file it creates.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn insecure(what: &'static str, path: &Path, problem: String, fix: String) -> Error {
    Error::Insecure { what, path: path.to_path_buf(), problem, fix }
}

/// Refuses a directory that the running user does not own, or that group or others may
/// write to. A directory that does not exist yet passes (crank creates it 0700).
pub(crate) fn check_private_dir(dir: &Path) -> Result<(), Error> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspecting directory", dir, e)),
    };
    if !meta.is_dir() {
        return Err(Error::io("using as a directory", dir, ErrorKind::NotADirectory.into()));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(insecure(
            "directory",
            dir,
            format!(
                "is owned by uid {}, not by uid {me} that runs this process, so its owner could replace the files in it",
                meta.uid()
            ),
            format!(
                "run `chown {me} {}` if it should be this user's; if it is another user's (a worker running as uid {}), run this as that user",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(insecure(
            "directory",
            dir,
            format!("is writable by group or others (mode {mode:04o}), so another user could replace the files in it"),
            format!("run `chmod go-w {}`", dir.display()),
        ));
    }
    Ok(())
}

/// Whether `path` holds a file this process may remove or rename: a regular file of the
/// running user (a staging file left by a crash). Anything else there (a link, another
/// user's file) was put there by someone else, and is an error.
pub(crate) fn is_own_file(path: &Path) -> Result<bool, Error> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("inspecting", path, e)),
        Ok(m) if m.file_type().is_symlink() => Err(tampered(path, "is a symbolic link")),
        Ok(m) if !m.is_file() => Err(tampered(path, "is not a regular file")),
        Ok(m) if m.uid() != euid() => Err(tampered(path, &format!("is owned by uid {}", m.uid()))),
        Ok(_) => Ok(true),
    }
}

/// Something at `path` that crank never leaves there: someone else wrote it.
fn tampered(path: &Path, problem: &str) -> Error {
    insecure(
        "file",
        path,
        format!("{problem}, which crank never leaves there: someone else has written into this directory"),
        "find out who could write to the directory, make it writable by this user only, remove the file, and try again"
            .into(),
    )
}

/// Creates `path` (mode `mode`, less the umask) for writing, only if nothing is there,
/// and never through a link.
pub(crate) fn create_exclusive(path: &Path, mode: u32) -> Result<File, Error> {
    OpenOptions::new().write(true).create_new(true).custom_flags(O_NOFOLLOW).mode(mode).open(path).map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            insecure(
                "file",
                path,
                "appeared while crank was creating it, so something else writes into this directory; it was not opened"
                    .into(),
                "make the directory writable by this user only, remove the file, and try again".into(),
            )
        } else {
            Error::io("creating", path, e)
        }
    })
}

/// Opens (creating it, mode 0600, if missing) the lock file at `path`, never through a
/// link. It must be a regular file of the running user that group and others cannot open:
/// a lock another user could open, they could hold, and stop every write. `None` where
/// it cannot be created because the file system is read-only (nothing writes there).
pub(crate) fn open_lock_file(path: &Path) -> Result<Option<File>, Error> {
    let file =
        match OpenOptions::new().read(true).write(true).create(true).custom_flags(O_NOFOLLOW).mode(0o600).open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(tampered(path, "is a symbolic link"));
            }
            Err(e) => return Err(Error::io("opening", path, e)),
        };
    let meta = file.metadata().map_err(|e| Error::io("inspecting", path, e))?;
    let mode = meta.mode() & 0o7777;
    if !meta.is_file() || meta.uid() != euid() || mode & 0o077 != 0 {
        return Err(insecure(
            "file",
            path,
            format!(
                "is not a regular file of uid {} closed to group and others (uid {}, mode {mode:04o}), so another user could hold the lock",
                euid(),
                meta.uid()
            ),
            "remove it; crank makes it again".into(),
        ));
    }
    Ok(Some(file))
}

/// What a file read by [`read_checked`] holds, which decides who may own it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contents {
    /// A private key: owned by the running user, no access for group or others.
    PrivateKey,
    /// A certificate: owned by the running user or root, writable by its owner only.
    Certificate,
}

/// Reads a file crank wrote, without following a link, refusing one that someone other
/// than its rightful owner could have changed (or, for a key, read).
pub(crate) fn read_checked(path: &Path, contents: Contents) -> Result<Vec<u8>, Error> {
    let mut file = OpenOptions::new().read(true).custom_flags(O_NOFOLLOW).open(path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            insecure(
                "file",
                path,
                "is a symbolic link; crank writes its files itself and never as links, so someone else put it there"
                    .into(),
                "remove it and give the worker a new join token to get a fresh key and certificate".into(),
            )
        } else {
            Error::io("reading", path, e)
        }
    })?;
    let meta = file.metadata().map_err(|e| Error::io("inspecting", path, e))?;
    let me = euid();
    let owner_ok = meta.uid() == me || (contents == Contents::Certificate && meta.uid() == 0);
    if !owner_ok {
        return Err(insecure(
            "file",
            path,
            format!("is owned by uid {}, not by uid {me} that runs this process", meta.uid()),
            format!("run `chown {me} {}` if it is yours, or remove it", path.display()),
        ));
    }
    let mode = meta.mode() & 0o7777;
    match contents {
        Contents::PrivateKey if mode & 0o077 != 0 => {
            return Err(insecure(
                "private key",
                path,
                format!("is open to group or others (mode {mode:04o})"),
                format!("run `chmod 600 {}`, and replace the key if others may have read it", path.display()),
            ));
        }
        Contents::Certificate if mode & 0o022 != 0 => {
            return Err(insecure(
                "file",
                path,
                format!("is writable by group or others (mode {mode:04o})"),
                format!("run `chmod go-w {}`", path.display()),
            ));
        }
        _ => {}
    }
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(|e| Error::io("reading", path, e))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::{CertFiles, CertificateBundle};

    fn write(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_key_is_not_read_through_a_link_nor_when_others_may_read_it() {
        let t = tempfile::tempdir().unwrap();
        let files = CertFiles::in_dir(t.path().join("certs"));
        fs::create_dir(&files.dir).unwrap();
        write(&files.cert, b"cert", 0o644);
        write(&files.ca, b"ca", 0o644);
        let elsewhere = t.path().join("elsewhere.key");
        write(&elsewhere, b"key", 0o600);
        std::os::unix::fs::symlink(&elsewhere, &files.key).unwrap();
        let e = CertificateBundle::load(&files).unwrap_err();
        assert!(matches!(e, Error::Insecure { .. }), "{e}");
        assert!(e.to_string().contains("client.key is a symbolic link"), "{e}");

        fs::remove_file(&files.key).unwrap();
        write(&files.key, b"key", 0o640);
        let e = read_checked(&files.key, Contents::PrivateKey).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains(&format!("chmod 600 {}", files.key.display())), "{e}");
        write(&files.key, b"key", 0o600);
        assert_eq!(read_checked(&files.key, Contents::PrivateKey).unwrap(), b"key");

        // Certificates may be read by all, but written by their owner only.
        write(&files.ca, b"ca", 0o664);
        let e = read_checked(&files.ca, Contents::Certificate).unwrap_err().to_string();
        assert!(e.contains(&format!("chmod go-w {}", files.ca.display())), "{e}");
        std::os::unix::fs::symlink(&elsewhere, t.path().join("ca-link")).unwrap();
        assert!(read_checked(&t.path().join("ca-link"), Contents::Certificate).is_err());
    }

    #[test]
    fn a_missing_directory_passes_and_a_file_in_its_place_does_not() {
        let t = tempfile::tempdir().unwrap();
        assert!(check_private_dir(&t.path().join("not-yet")).is_ok());
        assert!(check_private_dir(t.path()).is_ok());
        write(&t.path().join("file"), b"", 0o600);
        assert!(check_private_dir(&t.path().join("file")).is_err());
    }
}
