//! What goes wrong in the CA. [`CaError`]: the CA's logic on requests, with a stable
//! code and a message that says what was wrong and what to do; the HTTP edge
//! ([`server`](crate::server)) maps each kind to a status code, in one place.
//! [`SetupError`]: the CA's directory, keys and certificates, for the operator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crank_security_core::ProviderError;

use crate::store::StoreError;

/// An error of the CA's logic (revocation, the CRL, administrators).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The request itself is wrong: a bad reason, target or name.
    #[error("{message}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// What was wrong.
        message: String,
    },
    /// Authenticated, but not allowed: not an administrator, or policy said no.
    #[error("{message}")]
    Denied {
        /// Stable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// Nothing matches: an unknown serial, a worker without live certificates.
    #[error("{message}")]
    NotFound {
        /// Stable code.
        code: &'static str,
        /// What was looked for.
        message: String,
    },
    /// The store (or the signer) cannot be reached now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The CA could not do its own part (signing a CRL).
    #[error("{message}")]
    Failed {
        /// Stable code.
        code: &'static str,
        /// What failed.
        message: String,
    },
}

impl CaError {
    /// Not allowed.
    pub(crate) fn denied(code: &'static str, message: impl Into<String>) -> Self {
        Self::Denied { code, message: message.into() }
    }

    /// Nothing matches.
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound { code, message: message.into() }
    }

    /// The store cannot be reached.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }
}

/// A cause kept under a message: the error of a library the CA calls (rcgen, x509-parser,
/// rustls-webpki, jsonwebtoken, time), an I/O error, or another [`SetupError`].
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What goes wrong with the CA's directory, keys and certificates: making a CA
/// (`crank ca init`, `import`, `rollover`), loading and serving it, join tokens and
/// administrator certificates.
///
/// The message says what was wrong and, where the operator can fix it, what to run. The
/// cause, if any, is the [`source`](std::error::Error::source), not part of the message:
/// print the chain of sources to show it (`crank` prints `message: cause: ...`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A file of the CA directory could not be read, written or removed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done (`reading`, `removing`).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A CA exists in the directory already, and replacing it was not asked for.
    #[error(
        "a CA already exists in {}; refusing to overwrite it (pass --force to replace it, which invalidates every certificate it issued)",
        dir.display()
    )]
    AlreadyExists {
        /// The CA directory.
        dir: PathBuf,
    },
    /// The CA directory is not in the state the operation needs: no CA yet, an
    /// intermediate waiting for its certificate, a rollover at another step, a root the
    /// CA does not own. The message names the command to run.
    #[error("{message}")]
    NotReady {
        /// What is missing and what to run.
        message: String,
        /// What failed when the CA looked (a file that could not be read).
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A file of the CA directory does not hold what the CA wrote there.
    #[error("{} {problem}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
        /// Why it could not be read.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A certificate given to the CA cannot serve: an intermediate or its chain at
    /// import, an upstream signer's roots. The message says why and what to ask for.
    #[error("{message}")]
    Refused {
        /// Why, and what to do.
        message: String,
        /// The check that failed.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A value given is not acceptable: a join token's lifetime or capability, a worker
    /// id, a name for the CA service, the CRL validity.
    #[error("{message}")]
    Invalid {
        /// What was wrong.
        message: String,
        /// Why it was refused.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A key or certificate could not be made, signed or read.
    #[error("{message}")]
    Certificate {
        /// What was being done.
        message: String,
        /// Why it failed.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The CA's signer (an upstream CA, a plugin) failed.
    #[error("the signer could not give its {what}")]
    Signer {
        /// What the CA asked of it.
        what: &'static str,
        /// The signer's error.
        source: ProviderError,
    },
    /// The CA store could not be opened.
    #[error("opening the CA store {store}")]
    OpenStore {
        /// The store URL, without its password.
        store: String,
        /// Why.
        source: StoreError,
    },
    /// The CA store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA service cannot listen on its address.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The CA service's TLS configuration cannot be built from its certificate and the
    /// trust bundle.
    #[error("the CA service's TLS configuration cannot be built")]
    Tls(#[from] rustls::Error),
    /// The CA service could not start serving.
    #[error("the CA service could not start")]
    Serve(#[source] std::io::Error),
    /// A file, key, certificate or name the CA handled through crank's core.
    #[error(transparent)]
    Core(#[from] crank_security_core::Error),
}

impl SetupError {
    /// Reading, writing or removing `path` failed.
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { action, path: path.to_owned(), source }
    }

    /// The CA directory is not ready: `message` says what to run.
    pub(crate) fn not_ready(message: impl Into<String>) -> Self {
        Self::NotReady { message: message.into(), source: None }
    }

    /// A certificate given to the CA is refused.
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self::Refused { message: message.into(), source: None }
    }

    /// A value given is not acceptable.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid { message: message.into(), source: None }
    }

    /// Making, signing or reading a key or certificate failed: `message` says what was
    /// being done (for `map_err`).
    pub(crate) fn certificate<E: Into<BoxError>>(message: impl Into<String>) -> impl FnOnce(E) -> Self {
        move |e| Self::Certificate { message: message.into(), source: Some(e.into()) }
    }

    /// `path` holds no certificate.
    pub(crate) fn no_certificate(path: PathBuf) -> Self {
        Self::Damaged { path, problem: "holds no certificate", source: None }
    }

    /// The same error, caused by `source` (for the kinds that carry a message).
    pub(crate) fn because(mut self, cause: impl Into<BoxError>) -> Self {
        if let Self::NotReady { source, .. }
        | Self::Damaged { source, .. }
        | Self::Refused { source, .. }
        | Self::Invalid { source, .. }
        | Self::Certificate { source, .. } = &mut self
        {
            *source = Some(cause.into());
        }
        self
    }
}
