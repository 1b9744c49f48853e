//! File mode: the agent keeps `client.crt`, `client.key` (0600), `ca.crt` and `crl.pem`
//! fresh in a certificate directory, written as one journaled atomic change, and then
//! runs a reload command or signals a process.

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
    /// What was written last.
    written: Option<Written>,
    warned_missing: bool,
}

impl FileTarget {
    /// A target for `worker_id` in `dir`.
    pub fn new(dir: impl Into<PathBuf>, worker_id: WorkerId) -> Self {
        Self { dir: dir.into(), worker_id, reload: Vec::new(), written: None, warned_missing: false }
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
        change.commit().map_err(|e| e.to_string())?;
        tracing::info!(cert_dir = %self.dir.display(), worker_id = %self.worker_id, serial = %svid.serial, "certificate directory written");
        self.written = Some(now);
        self.warned_missing = false;
        for step in &self.reload {
            if let Err(e) = run_reload(step, &self.dir) {
                tracing::error!(cert_dir = %self.dir.display(), error = %e, "the reload after writing the certificate directory failed");
            }
        }
        Ok(())
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
