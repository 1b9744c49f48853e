//! Hot reload of a policy directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use crank_security_core::{
    AccessDecision, AccessInput, IssuanceDecision, IssuanceInput, PolicyEngine, PolicyError, RenewalDecision,
    RenewalInput,
};

use crate::rego::LoadError;

/// How often the directory is checked for changes.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A policy that follows its directory: when the `.rego` files (or the `.wasm` module)
/// change, the new policy is compiled and swapped in atomically; one that fails to
/// compile is rejected (the error, naming the file and line, is logged) and the
/// previous policy stays active.
#[derive(Debug)]
pub struct ReloadingEngine {
    dir: PathBuf,
    settings: crate::Settings,
    current: ArcSwap<Arc<dyn PolicyEngine>>,
    stamp: std::sync::Mutex<Vec<(PathBuf, SystemTime, u64)>>,
    /// Counts the policies that went live (decision caches compare it).
    generation: std::sync::atomic::AtomicU64,
}

impl ReloadingEngine {
    /// Loads `dir` and starts a background thread that reloads it on change. The thread
    /// ends when the engine is dropped.
    pub fn start(dir: &Path) -> Result<Arc<Self>, LoadError> {
        Self::start_with(dir, crate::Settings::default())
    }

    /// [`ReloadingEngine::start`], with `settings` given to Rego policies as
    /// `data.crank_settings`.
    pub fn start_with(dir: &Path, settings: crate::Settings) -> Result<Arc<Self>, LoadError> {
        let engine = crate::load_dir_with(dir, &settings)?;
        let this = Arc::new(Self {
            dir: dir.to_path_buf(),
            settings,
            current: ArcSwap::from_pointee(engine),
            stamp: std::sync::Mutex::new(stamp(dir)),
            generation: std::sync::atomic::AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new()
            .name("crank-policy-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(POLL_INTERVAL);
                    match weak.upgrade() {
                        Some(engine) => {
                            let _ = engine.reload_if_changed();
                        }
                        None => return,
                    }
                }
            })
            .map_err(|e| LoadError::Io { path: dir.to_path_buf(), source: e })?;
        Ok(this)
    }

    /// Checks the directory now; reloads if anything changed. `Ok(true)` when a new
    /// policy went live, `Err` when the new files were rejected (the old stay active).
    pub fn reload_if_changed(&self) -> Result<bool, LoadError> {
        let now = stamp(&self.dir);
        {
            let Ok(mut last) = self.stamp.lock() else { return Ok(false) };
            if *last == now {
                return Ok(false);
            }
            *last = now;
        }
        match crate::load_dir_with(&self.dir, &self.settings) {
            Ok(engine) => {
                tracing::info!(dir = %self.dir.display(), engine = engine.name(), "policy reloaded");
                self.current.store(Arc::new(engine));
                self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
                Ok(true)
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "new policy rejected; the previous policy stays active");
                Err(e)
            }
        }
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<dyn PolicyEngine> {
        self.current.load().as_ref().clone()
    }
}

/// Names, modification times and sizes of the policy files: what a change looks like.
fn stamp(dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut files = crate::rego::rego_files(dir).unwrap_or_default();
    files.extend(crate::wasm_modules(dir));
    let mut v: Vec<_> = files
        .into_iter()
        .filter_map(|p| {
            let m = p.metadata().ok()?;
            Some((p, m.modified().ok()?, m.len()))
        })
        .collect();
    v.sort();
    v
}

impl PolicyEngine for ReloadingEngine {
    fn can_issue_certificate(&self, input: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
        self.current.load().can_issue_certificate(input)
    }

    fn certificate_validity_period(&self, worker_id: &str, environment: &str) -> Result<Duration, PolicyError> {
        self.current.load().certificate_validity_period(worker_id, environment)
    }

    fn should_renew_certificate(&self, input: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
        self.current.load().should_renew_certificate(input)
    }

    fn revoke_certificate(&self, worker_id: &str, reason: &str) -> Result<bool, PolicyError> {
        self.current.load().revoke_certificate(worker_id, reason)
    }

    fn can_access_capability(&self, input: &AccessInput) -> Result<AccessDecision, PolicyError> {
        self.current.load().can_access_capability(input)
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn name(&self) -> &str {
        // The engine kind does not change across reloads of one directory in practice;
        // report the generic name.
        "reloading"
    }
}
