use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A worker identifier: 1 to 128 characters of lowercase ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkerId(String);

impl WorkerId {
    /// Validates and wraps a worker id.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        validate_label("worker id", &id, 128)?;
        Ok(Self(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WorkerId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        Self::new(value)
    }
}

impl From<WorkerId> for String {
    fn from(value: WorkerId) -> Self {
        value.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE trust domain such as `crank.local`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain used when none is configured.
    pub const DEFAULT: &'static str = "crank.local";

    /// Validates and wraps a trust domain.
    pub fn new(td: impl Into<String>) -> Result<Self, Error> {
        let td = td.into();
        validate_label("trust domain", &td, 255)?;
        Ok(Self(td))
    }

    /// The trust domain as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identity of this trust domain's CA service, `spiffe://<td>/ca`. Only the CA's
    /// own TLS certificate carries it: every worker certificate has exactly one URI SAN,
    /// `spiffe://<td>/worker/<id>`, so no worker can present it, and every CA client
    /// (bootstrap, renewal, CRL fetch, revocation) requires it of the server.
    pub fn ca_spiffe_id(&self) -> String {
        format!("spiffe://{}/{CA_PATH}", self.0)
    }
}

/// The path of the CA service's SPIFFE ID ([`TrustDomain::ca_spiffe_id`]).
pub const CA_PATH: &str = "ca";

impl Default for TrustDomain {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        Self::new(value)
    }
}

impl From<TrustDomain> for String {
    fn from(value: TrustDomain) -> Self {
        value.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker's SPIFFE ID: `spiffe://<trust-domain>/worker/<worker-id>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpiffeId {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// The worker id.
    pub worker_id: WorkerId,
}

impl SpiffeId {
    /// Builds the SPIFFE ID of a worker.
    pub fn new(trust_domain: TrustDomain, worker_id: WorkerId) -> Self {
        Self { trust_domain, worker_id }
    }

    /// Parses `spiffe://<td>/worker/<id>`; any other shape is an error.
    pub fn parse(uri: &str) -> Result<Self, Error> {
        let bad = |reason| Error::InvalidName { what: "SPIFFE ID", value: uri.to_owned(), reason };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| bad("must start with spiffe://"))?;
        let (td, path) = rest.split_once('/').ok_or_else(|| bad("has no path"))?;
        let id = path.strip_prefix("worker/").ok_or_else(|| bad("path must be /worker/<id>"))?;
        Ok(Self { trust_domain: TrustDomain::new(td)?, worker_id: WorkerId::new(id)? })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/worker/{}", self.trust_domain, self.worker_id)
    }
}

fn validate_label(what: &'static str, value: &str, max: usize) -> Result<(), Error> {
    let bad = |reason| Err(Error::InvalidName { what, value: value.to_owned(), reason });
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > max {
        return bad("is too long");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    if !value.chars().all(allowed) {
        return bad("may contain only lowercase letters, digits, '-', '_' and '.'");
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_round_trip() {
        let id = SpiffeId::new(TrustDomain::default(), WorkerId::new("w-1").unwrap());
        let s = id.to_string();
        assert_eq!(s, "spiffe://crank.local/worker/w-1");
        assert_eq!(SpiffeId::parse(&s).unwrap(), id);
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "UPPER", "a/b", "-lead", "a b", &"x".repeat(129)] {
            assert!(WorkerId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SpiffeId::parse("spiffe://td/admin/x").is_err());
        assert!(SpiffeId::parse("https://td/worker/x").is_err());
    }
}
