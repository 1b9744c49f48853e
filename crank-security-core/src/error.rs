use std::path::PathBuf;

/// Errors from the core vocabulary: bundles, keys, CSRs, configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// PEM or DER input could not be parsed.
    #[error("invalid {what}: {reason}")]
    Parse {
        /// What was being parsed ("certificate", "private key", ...).
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A file of a cert directory does not hold what it should (truncated, garbage, the
    /// wrong kind of PEM block).
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its contents.
        source: Box<Self>,
    },
    /// A certificate bundle failed validation.
    #[error("certificate bundle is not valid: {0}")]
    InvalidBundle(String),
    /// The certificate has expired or is not yet valid.
    #[error("certificate is outside its validity window ({0})")]
    OutsideValidity(String),
    /// A worker id, trust domain or SAN is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// The kind of name ("worker id", "trust domain", ...).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A directory or file that another user could change (or, for a key, read): crank
    /// neither writes into it nor loads it.
    #[error("{what} {} {problem}: {fix}", path.display())]
    Insecure {
        /// What it is ("directory", "file", "private key").
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// Configuration from the environment is not acceptable.
    #[error("configuration error: {0}")]
    Config(String),
    /// Key generation or CSR construction failed.
    #[error("key or CSR generation failed: {0}")]
    Crypto(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { action, path: path.into(), source }
    }

    pub(crate) fn parse(what: &'static str, reason: impl ToString) -> Self {
        Self::Parse { what, reason: reason.to_string() }
    }
}
