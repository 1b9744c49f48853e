//! Workload selectors: what an agent learns about the process on the other end of its
//! socket from the kernel, and what a registration entry requires of it.
//!
//! A selector is written `unix:<kind>:<value>`:
//!
//! | selector | matches a process whose |
//! |---|---|
//! | `unix:uid:1000` | effective user id is 1000 |
//! | `unix:gid:1000` | effective group id is 1000 |
//! | `unix:path:/usr/bin/python3.11` | executable is that file |
//! | `unix:sha256:<64 hex>` | executable's SHA-256 is that |
//!
//! An entry matches a process when every one of its selectors does.
//!
//! ```
//! use crank_security_core::{Selector, WorkloadFacts};
//!
//! let s: Selector = "unix:uid:1000".parse()?;
//! let facts = WorkloadFacts { uid: 1000, gid: 1000, pid: 42, path: None, sha256: None };
//! assert!(s.matches(&facts));
//! assert!("unix:uid:root".parse::<Selector>().is_err());
//! # Ok::<(), crank_security_core::Error>(())
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::Error;

/// One requirement of a registration entry on a workload process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// `unix:uid:N`
    Uid(u32),
    /// `unix:gid:N`
    Gid(u32),
    /// `unix:path:/absolute/path` of the executable.
    Path(PathBuf),
    /// `unix:sha256:HEX` of the executable's contents (lowercase).
    Sha256(String),
}

/// What the kernel says about a process connected to the agent's socket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadFacts {
    /// Effective user id (`SO_PEERCRED`).
    pub uid: u32,
    /// Effective group id (`SO_PEERCRED`).
    pub gid: u32,
    /// Process id (`SO_PEERCRED`).
    pub pid: i32,
    /// The executable (`/proc/<pid>/exe`), when it could be read.
    pub path: Option<PathBuf>,
    /// SHA-256 of the executable, lowercase hex, when it could be read.
    pub sha256: Option<String>,
}

/// The most selectors one entry may carry.
pub const MAX_SELECTORS: usize = 16;
/// The longest an entry's selectors may be together, written out: the store keeps them
/// as one unique key.
pub const MAX_SELECTORS_LEN: usize = 2048;

impl Selector {
    /// Whether the process described by `facts` satisfies this selector.
    pub fn matches(&self, facts: &WorkloadFacts) -> bool {
        match self {
            Self::Uid(u) => facts.uid == *u,
            Self::Gid(g) => facts.gid == *g,
            Self::Path(p) => facts.path.as_ref() == Some(p),
            Self::Sha256(h) => facts.sha256.as_deref() == Some(h.as_str()),
        }
    }

    /// Whether this selector needs the executable read (path or hash).
    pub fn needs_executable(&self) -> bool {
        matches!(self, Self::Path(_) | Self::Sha256(_))
    }

    /// Parses a list, refusing an empty one, duplicates, and more than [`MAX_SELECTORS`].
    pub fn parse_all<S: AsRef<str>>(items: &[S]) -> Result<Vec<Self>, Error> {
        if items.is_empty() {
            return Err(Error::Config(
                "an entry needs at least one selector, e.g. unix:uid:1000 (an entry without one would match every process)"
                    .into(),
            ));
        }
        if items.len() > MAX_SELECTORS {
            return Err(Error::Config(format!("an entry has at most {MAX_SELECTORS} selectors, not {}", items.len())));
        }
        let mut out: Vec<Self> = Vec::with_capacity(items.len());
        for s in items {
            let s: Self = s.as_ref().parse()?;
            if out.contains(&s) {
                return Err(Error::Config(format!("selector {s} is given twice")));
            }
            out.push(s);
        }
        out.sort();
        let len: usize = out.iter().map(|s| s.to_string().len()).sum();
        if len > MAX_SELECTORS_LEN {
            return Err(Error::Config(format!(
                "an entry's selectors are at most {MAX_SELECTORS_LEN} characters together, not {len}"
            )));
        }
        Ok(out)
    }
}

/// A registration entry: `agent_id` (an agent's worker id) may obtain certificates for
/// `worker_id`, to hand to the processes that match every one of `selectors`. Kept by
/// the CA in its store, created by administrators (`crank entry create`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistrationEntry {
    /// The entry's id: a UUID (v4).
    pub id: String,
    /// The worker id the agent may obtain certificates for.
    pub worker_id: String,
    /// What a process must match to be handed them: canonical selector strings
    /// ([`Selector`]'s `Display`), sorted.
    pub selectors: Vec<String>,
    /// The agent's own worker id.
    pub agent_id: String,
    /// When the entry was created, RFC 3339.
    pub created_at: String,
    /// Who created it (`admin/<name>`).
    pub created_by: String,
}

/// Whether every selector of an entry matches the process.
pub fn selectors_match(selectors: &[Selector], facts: &WorkloadFacts) -> bool {
    !selectors.is_empty() && selectors.iter().all(|s| s.matches(facts))
}

impl FromStr for Selector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Config(format!("selector {s:?}: {why}"));
        let Some(rest) = s.strip_prefix("unix:") else {
            return Err(bad("only unix selectors are known (unix:uid:N, unix:gid:N, unix:path:/abs, unix:sha256:HEX)"));
        };
        let (kind, value) = rest.split_once(':').ok_or_else(|| bad("expected unix:<kind>:<value>"))?;
        let id = |v: &str| v.parse::<u32>().map_err(|_| bad("the id must be a decimal number"));
        match kind {
            "uid" => Ok(Self::Uid(id(value)?)),
            "gid" => Ok(Self::Gid(id(value)?)),
            "path" => {
                let p = PathBuf::from(value);
                if !p.is_absolute() || value.len() > 4096 || value.contains('\0') {
                    return Err(bad("the path must be absolute"));
                }
                Ok(Self::Path(p))
            }
            "sha256" => {
                if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("the hash must be 64 hex digits"));
                }
                Ok(Self::Sha256(value.to_ascii_lowercase()))
            }
            other => Err(bad(&format!("unknown kind {other:?} (uid, gid, path, sha256)"))),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(u) => write!(f, "unix:uid:{u}"),
            Self::Gid(g) => write!(f, "unix:gid:{g}"),
            Self::Path(p) => write!(f, "unix:path:{}", p.display()),
            Self::Sha256(h) => write!(f, "unix:sha256:{h}"),
        }
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> WorkloadFacts {
        WorkloadFacts {
            uid: 1000,
            gid: 100,
            pid: 7,
            path: Some("/usr/bin/python3".into()),
            sha256: Some("ab".repeat(32)),
        }
    }

    #[test]
    fn selectors_round_trip_and_match() {
        for text in
            ["unix:uid:1000", "unix:gid:100", "unix:path:/usr/bin/python3", &format!("unix:sha256:{}", "ab".repeat(32))]
        {
            let s: Selector = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
            assert!(s.matches(&facts()), "{text}");
        }
        assert!(!Selector::Uid(0).matches(&facts()));
        assert!(!Selector::Path("/usr/bin/python3".into()).matches(&WorkloadFacts { path: None, ..facts() }));
    }

    #[test]
    fn an_entry_matches_only_when_every_selector_does() {
        let both = Selector::parse_all(&["unix:uid:1000", "unix:gid:100"]).unwrap();
        assert!(selectors_match(&both, &facts()));
        let one_off = Selector::parse_all(&["unix:uid:1000", "unix:gid:0"]).unwrap();
        assert!(!selectors_match(&one_off, &facts()));
        assert!(!selectors_match(&[], &facts()), "no selectors must match nothing");
    }

    #[test]
    fn bad_selectors_are_refused_with_what_was_wrong() {
        for (text, says) in [
            ("k8s:ns:default", "only unix selectors"),
            ("unix:uid:-1", "decimal"),
            ("unix:uid", "unix:<kind>:<value>"),
            ("unix:path:relative/bin", "absolute"),
            ("unix:sha256:abc", "64 hex"),
            ("unix:pid:1", "unknown kind"),
        ] {
            let e = text.parse::<Selector>().unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(text), "{text}: {e}");
        }
        assert!(Selector::parse_all::<&str>(&[]).unwrap_err().to_string().contains("at least one"));
        assert!(Selector::parse_all(&["unix:uid:1", "unix:uid:1"]).unwrap_err().to_string().contains("twice"));
        let many: Vec<String> = (0..17).map(|i| format!("unix:gid:{i}")).collect();
        assert!(Selector::parse_all(&many).unwrap_err().to_string().contains("at most"));
        let long: Vec<String> = (0..2).map(|i| format!("unix:path:/{}{i}", "a".repeat(1100))).collect();
        assert!(Selector::parse_all(&long).unwrap_err().to_string().contains("characters together"));
    }
}
