//! Capability access: who may call what. The input and answer of the fifth policy hook,
//! `can_access_capability`, its built-in default, and the certificate extension that
//! carries the capabilities the CA granted a worker, so that every request is decided
//! from the caller's certificate alone, without asking the CA.
//!
//! ```text
//!  caller's certificate ──► Caller { spiffe_id, worker_id, trust_domain, serial,
//!                                    not_after, capabilities (from the extension) }
//!  the route            ──► AccessTarget { worker_id, capability }     ─► can_access_capability
//!  the request          ──► AccessRequest { method, path, route }          ─► allow / deny + reason
//!                                                                             (+ rate limit)
//! ```

use serde::{Deserialize, Serialize};

use crate::{CertMetadata, Error, SpiffeId, TrustDomain, WorkerId};

/// The OID of crank's capabilities extension (non-critical): a `SEQUENCE OF UTF8String`
/// with the capabilities granted at issuance, set by the CA only. An object identifier
/// under the `2.25` arc, which needs no registration.
pub const CAPABILITIES_OID: [u64; 3] = [2, 25, 2_392_588_353_997_214_659];

/// The capability an administrator certificate holds (`crank ca admin-cert`), and
/// which the built-in default treats as holding every capability.
pub const ADMIN_CAPABILITY: &str = "admin";

/// Capabilities every worker of the trust domain may use under the built-in default
/// policy, without holding them: what every worker does (registering with the platform,
/// its heartbeats).
pub const OPEN_CAPABILITIES: [&str; 2] = ["platform.register", "platform.heartbeat"];

/// The contents (DER) of the capabilities extension for `capabilities`.
pub fn capabilities_extension(capabilities: &[String]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence_of(|w| {
            for c in capabilities {
                w.next().write_utf8_string(c);
            }
        });
    })
}

/// Reads the contents of a capabilities extension.
pub fn parse_capabilities_extension(der: &[u8]) -> Result<Vec<String>, Error> {
    yasna::parse_der(der, |r| r.collect_sequence_of(|r| r.read_utf8string()))
        .map_err(|e| Error::parse("capabilities extension", e))
}

/// Checks a capability name: dot-separated segments of `a-z`, `0-9`, `_` and `-`
/// (`email.classify`, `metrics.read`), at most 128 bytes; a last segment `*` names every
/// capability under a prefix (`email.*`), for grants. `san:` capabilities (names a worker
/// may put in its certificate) are not access capabilities.
pub fn validate_capability(name: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::Config(format!("capability {name:?} is not valid: {why}")));
    if name.is_empty() || name.len() > 128 {
        return bad("it must be 1 to 128 bytes");
    }
    let segments: Vec<&str> = name.split('.').collect();
    for (i, s) in segments.iter().enumerate() {
        if *s == "*" && i == segments.len() - 1 && i > 0 {
            continue;
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
            return bad("use dot-separated segments of a-z, 0-9, '_' and '-' (a last segment '*' grants a prefix)");
        }
    }
    Ok(())
}

/// Whether the grant `granted` covers capability `wanted`: the same name, `prefix.*`
/// for any name under `prefix.`, or the administrator capability.
pub fn capability_granted(granted: &str, wanted: &str) -> bool {
    granted == wanted
        || granted == ADMIN_CAPABILITY
        || granted.strip_suffix(".*").is_some_and(|p| wanted.strip_prefix(p).is_some_and(|rest| rest.starts_with('.')))
}

/// Who calls: facts from the verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Caller {
    /// The SPIFFE ID (`spiffe://<td>/<worker-id>`, or `spiffe://<td>/admin/<name>`).
    pub spiffe_id: String,
    /// The worker id, or the administrator's name.
    pub worker_id: String,
    /// Whether the certificate is an administrator's (`spiffe://<td>/admin/<name>`).
    pub administrator: bool,
    /// The caller's trust domain.
    pub trust_domain: String,
    /// The certificate's serial (hex, `:`-separated).
    pub serial: String,
    /// The certificate's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The capabilities the CA granted at issuance (the certificate's extension).
    pub capabilities: Vec<String>,
}

impl Caller {
    /// The caller a verified client certificate shows: its SPIFFE ID (a worker's, or an
    /// administrator's `spiffe://<td>/admin/<name>`) and the capabilities in it. `None`
    /// when the certificate carries no SPIFFE ID of either kind.
    pub fn from_certificate(meta: &CertMetadata) -> Option<Self> {
        let (spiffe_id, trust_domain, worker_id, administrator) = meta.uri_sans.iter().find_map(|uri| {
            if let Ok(id) = SpiffeId::parse(uri) {
                return Some((uri.clone(), id.trust_domain.to_string(), id.worker_id.to_string(), false));
            }
            let (td, name) = uri.strip_prefix("spiffe://")?.split_once("/admin/")?;
            let td = TrustDomain::new(td).ok()?;
            let name = WorkerId::new(name).ok()?;
            Some((uri.clone(), td.to_string(), name.to_string(), true))
        })?;
        Some(Self {
            spiffe_id,
            worker_id,
            administrator,
            trust_domain,
            serial: meta.serial.clone(),
            not_after: meta.not_after.unix_timestamp(),
            capabilities: meta.capabilities.clone(),
        })
    }
}

/// What is called.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccessTarget {
    /// The worker (or service: `ca`, `platform`) that serves it.
    pub worker_id: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// The capability the route names; `None` for a route that names none.
    pub capability: Option<String>,
}

/// The request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccessRequest {
    /// HTTP method.
    pub method: String,
    /// Request path (without the query).
    pub path: String,
    /// The route pattern that matched (`/users/{id}`), if any.
    pub route: Option<String>,
}

/// The input of `can_access_capability`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccessInput {
    /// Who calls.
    pub caller: Caller,
    /// What is called.
    pub target: AccessTarget,
    /// How.
    pub request: AccessRequest,
    /// The deployment environment of the callee.
    pub environment: String,
}

/// A rate limit a policy attaches to an allowed call: a token bucket per (caller,
/// capability).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub requests_per_second: f64,
    /// Requests allowed at once above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

/// The answer of `can_access_capability`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessDecision {
    /// Whether the call may go ahead.
    pub allow: bool,
    /// Why not, when denied (sent to the caller in the 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A rate limit for this (caller, capability), when allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl AccessDecision {
    /// Allow, without a rate limit.
    pub fn allow() -> Self {
        Self { allow: true, reason: None, rate_limit: None }
    }

    /// Deny, saying why.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self { allow: false, reason: Some(reason.into()), rate_limit: None }
    }
}

/// The built-in default of `can_access_capability`:
///
/// - a caller of another trust domain: denied;
/// - a route that names no capability: any caller of the trust domain (what every
///   worker allowed before capabilities existed);
/// - an administrator certificate (`spiffe://<td>/admin/<name>`, or one holding
///   [`ADMIN_CAPABILITY`]): every capability;
/// - [`OPEN_CAPABILITIES`]: any caller of the trust domain;
/// - any other capability: callers the CA granted it ([`capability_granted`]).
pub fn default_access(input: &AccessInput) -> AccessDecision {
    let (caller, target) = (&input.caller, &input.target);
    if caller.trust_domain != target.trust_domain {
        return AccessDecision::deny(format!(
            "caller {} is of trust domain {:?}, not {:?}",
            caller.spiffe_id, caller.trust_domain, target.trust_domain
        ));
    }
    let Some(capability) = &target.capability else { return AccessDecision::allow() };
    if caller.administrator
        || OPEN_CAPABILITIES.contains(&capability.as_str())
        || caller.capabilities.iter().any(|g| capability_granted(g, capability))
    {
        return AccessDecision::allow();
    }
    AccessDecision::deny(format!(
        "caller {} does not hold capability {capability}; grant it at issuance (`crank token create --capability {capability}`) or allow it in can_access_capability",
        caller.spiffe_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(caps: &[&str], capability: Option<&str>) -> AccessInput {
        AccessInput {
            caller: Caller {
                spiffe_id: "spiffe://crank.local/caller".into(),
                worker_id: "caller".into(),
                administrator: false,
                trust_domain: "crank.local".into(),
                serial: "01".into(),
                not_after: 0,
                capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            },
            target: AccessTarget {
                worker_id: "email".into(),
                trust_domain: "crank.local".into(),
                capability: capability.map(str::to_owned),
            },
            request: AccessRequest { method: "POST".into(), path: "/classify".into(), route: Some("/classify".into()) },
            environment: "development".into(),
        }
    }

    #[test]
    fn the_extension_round_trips() {
        let caps = vec!["email.classify".to_owned(), "metrics.read".to_owned()];
        assert_eq!(parse_capabilities_extension(&capabilities_extension(&caps)).unwrap(), caps);
        assert_eq!(parse_capabilities_extension(&capabilities_extension(&[])).unwrap(), Vec::<String>::new());
        assert!(parse_capabilities_extension(b"\x30\x03\x02\x01\x01").is_err(), "an INTEGER is not a capability");
    }

    #[test]
    fn capability_names() {
        for ok in ["email.classify", "metrics.read", "a", "email.*", "x-y_z.0"] {
            validate_capability(ok).unwrap();
        }
        for bad in ["", "Email", "email.", ".email", "*", "email.*.x", "san:x", "a b", &"a".repeat(129)] {
            assert!(validate_capability(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_decides_by_grant_domain_and_administrator() {
        assert!(default_access(&input(&[], None)).allow, "undeclared routes: any caller of the domain");
        assert!(default_access(&input(&["email.classify"], Some("email.classify"))).allow);
        assert!(default_access(&input(&["email.*"], Some("email.classify"))).allow);
        assert!(!default_access(&input(&["email.*"], Some("emailx.classify"))).allow);
        let d = default_access(&input(&["metrics.read"], Some("email.classify")));
        assert!(!d.allow && d.reason.unwrap().contains("does not hold capability email.classify"));
        assert!(default_access(&input(&[], Some("platform.heartbeat"))).allow);
        assert!(default_access(&input(&["admin"], Some("ca.revoke"))).allow);
        let mut admin = input(&[], Some("ca.revoke"));
        admin.caller.administrator = true;
        assert!(default_access(&admin).allow);
        let mut foreign = input(&["email.classify"], Some("email.classify"));
        foreign.caller.trust_domain = "other.example".into();
        assert!(!default_access(&foreign).allow);
        let mut foreign_route = input(&[], None);
        foreign_route.caller.trust_domain = "other.example".into();
        assert!(!default_access(&foreign_route).allow);
    }
}
