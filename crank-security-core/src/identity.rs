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

    /// The identity of the administrator `name`, `spiffe://<td>/admin/<name>`: what
    /// `crank ca admin-cert` issues and the CA's revocation API requires.
    pub fn admin_spiffe_id(&self, name: &str) -> String {
        format!("spiffe://{}/admin/{name}", self.0)
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

/// Checks that `name` is a host name the CA may put in a DNS SAN: LDH labels (ASCII
/// letters, digits and `-`, neither first nor last in a label) of 1 to 63 octets each,
/// separated by single dots, at most 253 octets in all, with a last label that is not
/// all digits (that would be an IP address written as a name). No wildcard (`*`), no
/// trailing dot, no `_`, no spaces or control characters; internationalised names are
/// given in their `xn--` form. Letters of either case are accepted (DNS ignores case).
///
/// Wildcards are refused on purpose: a worker's certificate names that worker, and a
/// wildcard would let one worker's key answer for every sibling name under a domain.
///
/// ```
/// use crank_security_core::validate_host_name;
///
/// assert!(validate_host_name("api.example.internal").is_ok());
/// assert!(validate_host_name("*.example.internal").is_err());
/// assert!(validate_host_name("a\nb.example").is_err());
/// ```
pub fn validate_host_name(name: &str) -> Result<(), Error> {
    let bad = |reason| Err(Error::InvalidName { what: "DNS name", value: name.to_owned(), reason });
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > 253 {
        return bad("is longer than 253 octets");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("contains a space or a control character");
    }
    if !name.is_ascii() {
        return bad("is not ASCII (give an internationalised name in its xn-- form)");
    }
    if name.contains('*') {
        return bad("is a wildcard; the CA issues no wildcard names, ask for each name");
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return bad("has an empty label (a leading, trailing or doubled '.')");
        }
        if label.len() > 63 {
            return bad("has a label longer than 63 octets");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return bad("may contain only letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label that starts or ends with '-'");
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return bad("ends in an all-numeric label; ask for an IP address as an IP SAN instead");
    }
    Ok(())
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

    #[test]
    fn host_names() {
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
        assert_eq!(long_name.len(), 253);
        for good in
            ["localhost", "w1", "api.example.internal", "API.Example", "xn--bcher-kva.example", "a-b.c1", &long_name]
        {
            assert!(validate_host_name(good).is_ok(), "{good:?} refused");
        }
        let too_long = format!("{long_name}e");
        for (bad, why) in [
            ("", "empty"),
            ("a\nb.example", "control"),
            ("a b.example", "space"),
            ("a\u{0}b", "control"),
            ("b\u{fc}cher.example", "xn--"),
            ("*.example.internal", "wildcard"),
            ("a.*.example", "wildcard"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a.example.", "empty label"),
            (&long_label, "63"),
            (&too_long, "253"),
            ("a_b.example", "letters, digits"),
            ("a/b", "letters, digits"),
            ("-a.example", "'-'"),
            ("a-.example", "'-'"),
            ("10.0.0.1", "IP"),
            ("1", "IP"),
        ] {
            let e = validate_host_name(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "the message must name the name, escaped: {e}");
        }
    }
}
