//! File mode: the agent keeps `client.crt`, `client.key` (0600), `ca.crt` and `crl.pem`
//! fresh in a certificate directory, written as one journaled atomic change, and then
//! runs a reload command or signals a process. The files can be given to the workload's
//! user ([`FileTarget::owned_by`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crank_security_core::{CertFiles, FileChange, WorkerId, cert_pem, crl_pem};

use crate::state::{HeldEntry, WorkloadState};

/// What to do after the files changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Run this through `sh -c`, with `CRANK_CERT_DIR` set to the directory.
    Command(String),
    /// Send this signal (e.g. `HUP`) to the process whose id is in the file.
    Signal {
        /// The signal's name without `SIG`.
        signal: String,
        /// A file holding the process id.
        pid_file: PathBuf,
    },
}

/// Who the files of a certificate directory belong to, when not to the agent's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The user id.
    pub uid: u32,
    /// The group id; `None` leaves the group the agent creates files with.
    pub gid: Option<u32>,
}

/// What a certificate directory holds: the leaf's serial, the roots and the CRLs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    serial: String,
    roots: Vec<Vec<u8>>,
    crls: Vec<Vec<u8>>,
}

/// A certificate directory the agent keeps fresh for one worker id.
#[derive(Debug, Clone)]
pub struct FileTarget {
    /// The directory.
    pub dir: PathBuf,
    /// The worker id of its certificate (a registration entry must assign it to this
    /// agent).
    pub worker_id: WorkerId,
    /// What to do after each change.
    pub reload: Vec<Reload>,
    /// Who the files are given to (before they are renamed into place); `None` leaves
    /// them the agent's user's.
    pub owner: Option<Owner>,
    /// What was written last.
    written: Option<Written>,
    warned_missing: bool,
}

impl FileTarget {
    /// A target for `worker_id` in `dir`.
    pub fn new(dir: impl Into<PathBuf>, worker_id: WorkerId) -> Self {
        Self { dir: dir.into(), worker_id, reload: Vec::new(), owner: None, written: None, warned_missing: false }
    }

    /// Gives the files to user `uid` and, if given, group `gid` (for a workload of
    /// another user than the agent's; it takes an agent running as root). The key stays
    /// 0600, the certificates 0644.
    pub fn owned_by(mut self, uid: u32, gid: Option<u32>) -> Self {
        self.owner = Some(Owner { uid, gid });
        self
    }

    /// Adds a reload step.
    pub fn on_change(mut self, reload: Reload) -> Self {
        self.reload.push(reload);
        self
    }

    /// Writes the files if `entry`'s SVID, the roots or the CRLs changed since the last
    /// write, then reloads.
    pub fn refresh(&mut self, entry: &HeldEntry, state: &WorkloadState) -> Result<(), String> {
        let Some(svid) = &entry.svid else { return Ok(()) };
        let now = Written { serial: svid.serial.clone(), roots: state.bundle_der.clone(), crls: state.crl_der.clone() };
        if self.written.as_ref() == Some(&now) {
            return Ok(());
        }
        let files = CertFiles::in_dir(&self.dir);
        let chain: String = svid.chain_der.iter().map(|c| cert_pem(c)).collect();
        let key = zeroize::Zeroizing::new(
            pem::encode(&pem::Pem::new("PRIVATE KEY", svid.key_pkcs8_der.to_vec())).into_bytes(),
        );
        let roots: String = state.bundle_der.iter().map(|c| cert_pem(c)).collect();
        let mut change = FileChange::in_dir(&self.dir)
            .write(&files.cert, chain, 0o644)
            .write(&files.key, key.to_vec(), 0o600)
            .write(&files.ca, roots, 0o644);
        change = match state.crl_der.first() {
            Some(crl) => change.write(&files.crl, crl_pem(crl), 0o644),
            None => change,
        };
        if let Some(owner) = self.owner {
            change = change.owned_by(owner.uid, owner.gid);
        }
        change.commit().map_err(|e| e.to_string())?;
        tracing::info!(cert_dir = %self.dir.display(), worker_id = %self.worker_id, serial = %svid.serial, "certificate directory written");
        if let (None, Some(owner)) = (&self.written, self.owner) {
            self.check_reachable(owner);
        }
        self.written = Some(now);
        self.warned_missing = false;
        for step in &self.reload {
            if let Err(e) = run_reload(step, &self.dir) {
                tracing::error!(cert_dir = %self.dir.display(), error = %e, "the reload after writing the certificate directory failed");
            }
        }
        Ok(())
    }

    /// Warns (after the first write) when the directory's mode clearly keeps the owner
    /// out, so that the workload could not read its files.
    fn check_reachable(&self, owner: Owner) {
        let Ok(meta) = std::fs::metadata(&self.dir) else { return };
        let mode = meta.mode() & 0o7777;
        let by_group = mode & 0o010 != 0 && owner.gid.is_none_or(|gid| gid == meta.gid());
        if mode & 0o001 == 0 && !by_group && !(meta.uid() == owner.uid && mode & 0o100 != 0) {
            tracing::warn!(
                cert_dir = %self.dir.display(), uid = owner.uid,
                "the directory (mode {mode:04o}) keeps uid {} out: it cannot read its files; run `chmod 755 {}`",
                owner.uid, self.dir.display()
            );
        }
    }

    /// Says once that no entry gives this target a certificate.
    pub fn missing(&mut self, agent: &WorkerId) {
        if !self.warned_missing {
            tracing::warn!(
                cert_dir = %self.dir.display(), worker_id = %self.worker_id,
                "no certificate for this directory yet: a registration entry must assign worker id {} to agent {agent} (`crank entry create --worker-id {} --agent {agent} --selector ...`)",
                self.worker_id, self.worker_id
            );
            self.warned_missing = true;
        }
    }
}

fn run_reload(step: &Reload, dir: &Path) -> Result<(), String> {
    match step {
        Reload::Command(cmd) => {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .env("CRANK_CERT_DIR", dir)
                .status()
                .map_err(|e| format!("running {cmd:?}: {e}"))?;
            if !status.success() {
                return Err(format!("{cmd:?} exited with {status}"));
            }
            Ok(())
        }
        Reload::Signal { signal, pid_file } => {
            let text = std::fs::read_to_string(pid_file).map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
            let pid: i32 = text
                .trim()
                .parse()
                .map_err(|_| format!("{} does not hold a process id: {:?}", pid_file.display(), text.trim()))?;
            let sig = parse_signal(signal)?;
            let pid = rustix::process::Pid::from_raw(pid)
                .ok_or_else(|| format!("process id {pid} in {} is not valid", pid_file.display()))?;
            rustix::process::kill_process(pid, sig).map_err(|e| format!("sending SIG{signal} to {pid:?}: {e}"))
        }
    }
}

/// A signal by name (`HUP`, `SIGHUP`, `USR1`, ...).
pub fn parse_signal(name: &str) -> Result<rustix::process::Signal, String> {
    use rustix::process::Signal;
    let name = name.trim().trim_start_matches("SIG");
    Ok(match name {
        "HUP" => Signal::HUP,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "TERM" => Signal::TERM,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        other => return Err(format!("signal {other:?} is not one the agent sends (HUP, USR1, USR2, TERM, INT, QUIT)")),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;
    use crate::state::Svid;

    fn entry(serial: &str) -> HeldEntry {
        HeldEntry {
            id: "entry-1".into(),
            worker_id: "api".into(),
            selectors: Vec::new(),
            svid: Some(Arc::new(Svid {
                entry_id: "entry-1".into(),
                spiffe_id: "spiffe://crank.local/worker/api".into(),
                chain_der: vec![b"leaf".to_vec()],
                key_pkcs8_der: zeroize::Zeroizing::new(b"key".to_vec()),
                serial: serial.into(),
                not_after: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            })),
        }
    }

    fn state() -> WorkloadState {
        WorkloadState { bundle_der: vec![b"root".to_vec()], crl_der: vec![b"crl".to_vec()], ..WorkloadState::default() }
    }

    /// Owner uid, gid and mode of each file of the directory.
    fn owners(dir: &Path) -> Vec<(&'static str, u32, u32, u32)> {
        ["client.key", "client.crt", "ca.crt", "ca.crl"]
            .into_iter()
            .map(|name| {
                let m = std::fs::symlink_metadata(dir.join(name)).unwrap();
                (name, m.uid(), m.gid(), m.mode() & 0o7777)
            })
            .collect()
    }

    #[test]
    fn an_owned_target_gives_its_files_to_the_workload_user() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("skipped: giving files to another user takes root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let worker = WorkerId::new("api").unwrap();
        let mut target = FileTarget::new(&dir, worker.clone()).owned_by(1000, Some(1000));
        target.refresh(&entry("01"), &state()).unwrap();
        let owned = |uid, gid| {
            vec![
                ("client.key", uid, gid, 0o600),
                ("client.crt", uid, gid, 0o644),
                ("ca.crt", uid, gid, 0o644),
                ("ca.crl", uid, gid, 0o644),
            ]
        };
        assert_eq!(owners(&dir), owned(1000, 1000));
        // The directory the agent made is its own, and lets the workload in.
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755));
        assert!(std::fs::read_to_string(dir.join("client.key")).unwrap().contains("PRIVATE KEY"));

        // A renewal replaces them, owned again.
        target.refresh(&entry("02"), &state()).unwrap();
        assert_eq!(owners(&dir), owned(1000, 1000));

        // Without a gid the group stays the agent's; without an owner, so does the user.
        let mut target = FileTarget::new(&dir, worker.clone()).owned_by(1000, None);
        target.refresh(&entry("03"), &state()).unwrap();
        assert_eq!(owners(&dir), owned(1000, 0));
        let mut target = FileTarget::new(&dir, worker);
        target.refresh(&entry("04"), &state()).unwrap();
        assert_eq!(owners(&dir), owned(0, 0));
        // A directory the agent did not make keeps its mode.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut target = FileTarget::new(&dir, WorkerId::new("api").unwrap()).owned_by(1000, Some(1000));
        target.refresh(&entry("05"), &state()).unwrap();
        assert_eq!(owners(&dir), owned(1000, 1000));
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn an_owner_that_cannot_be_set_fails_the_write_naming_directory_and_uid() {
        // Uid 4294967295 is no user's (chown reads it as "unchanged"), as root too.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let mut target = FileTarget::new(&dir, WorkerId::new("api").unwrap());
        target.refresh(&entry("01"), &state()).unwrap();
        let before: Vec<_> = ["client.key", "client.crt"].map(|n| std::fs::read(dir.join(n)).unwrap()).into();
        let mut target = FileTarget::new(&dir, WorkerId::new("api").unwrap()).owned_by(u32::MAX, None);
        let e = target.refresh(&entry("02"), &state()).unwrap_err();
        assert!(e.contains(&dir.display().to_string()) && e.contains("uid 4294967295"), "{e}");
        let after: Vec<_> = ["client.key", "client.crt"].map(|n| std::fs::read(dir.join(n)).unwrap()).into();
        assert_eq!(before, after);
        let mut left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(
            left,
            [".lock", "ca.crl", "ca.crt", "client.crt", "client.key"],
            "something half-written was left behind"
        );
    }
}
