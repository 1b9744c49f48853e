//! What goes wrong in the CA's own logic, with a stable code and a message that says
//! what was wrong and what to do. The HTTP edge ([`server`](crate::server)) maps each
//! kind to a status code, in one place.

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
