//! The crank-security default policy as a WebAssembly module, crank ABI v1:
//!
//! - `crank_alloc(len: i32) -> i32`: memory for the host to write `len` bytes into.
//! - `crank_evaluate(hook_ptr, hook_len, input_ptr, input_len: i32) -> i64`: evaluates
//!   hook (UTF-8 name) on input (UTF-8 JSON); returns `(ptr << 32) | len` of the
//!   UTF-8 JSON answer, whose shape depends on the hook (see policies/README.md).
//!
//! The module imports nothing. The host gives every evaluation a fresh instance, a
//! fuel budget and a memory cap; a trap or a malformed answer denies.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::json;

#[unsafe(no_mangle)]
pub extern "C" fn crank_alloc(len: i32) -> i32 {
    let mut buf = Vec::<u8>::with_capacity(len.max(0) as usize);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr as i32
}

#[unsafe(no_mangle)]
pub extern "C" fn crank_evaluate(hook_ptr: i32, hook_len: i32, input_ptr: i32, input_len: i32) -> i64 {
    // SAFETY: the host wrote exactly these bytes into memory it got from crank_alloc.
    let (hook, input) = unsafe {
        (
            std::slice::from_raw_parts(hook_ptr as *const u8, hook_len as usize),
            std::slice::from_raw_parts(input_ptr as *const u8, input_len as usize),
        )
    };
    let answer = match std::str::from_utf8(hook) {
        Ok(hook) => evaluate(hook, input).unwrap_or_else(|e| json!({ "error": e }).to_string()),
        Err(_) => json!({"error": "the hook name is not UTF-8"}).to_string(),
    };
    let out = answer.into_bytes().into_boxed_slice();
    let len = out.len() as i64;
    let ptr = Box::into_raw(out) as *mut u8 as i64;
    (ptr << 32) | len
}

#[derive(Deserialize)]
struct Issuance {
    worker_id: String,
    capabilities: Vec<String>,
    requested_dns_sans: Vec<String>,
    requested_ip_sans: Vec<IpAddr>,
    key_type: String,
    trust_domain: String,
}

#[derive(Deserialize)]
struct Renewal {
    issued_at: i64,
    not_after: i64,
    now: i64,
    jitter: f64,
}

#[derive(Deserialize)]
struct Access {
    caller: AccessCaller,
    target: AccessTarget,
}

#[derive(Deserialize)]
struct AccessCaller {
    spiffe_id: String,
    administrator: bool,
    trust_domain: String,
    capabilities: Vec<String>,
}

#[derive(Deserialize)]
struct AccessTarget {
    trust_domain: String,
    capability: Option<String>,
}

/// Capabilities every worker of the trust domain may use.
const OPEN_CAPABILITIES: [&str; 2] = ["platform.register", "platform.heartbeat"];

/// Whether the grant `granted` covers `wanted`: the same, `prefix.*`, or `admin`.
fn grants(granted: &str, wanted: &str) -> bool {
    granted == wanted
        || granted == "admin"
        || granted.strip_suffix('*').is_some_and(|p| p.ends_with('.') && wanted.starts_with(p))
}

const KEY_TYPES: [&str; 5] = ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072"];

#[derive(Serialize)]
struct IssuanceAnswer {
    allow: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
struct RenewalAnswer {
    renew: bool,
    expiring_soon: bool,
}

/// `answer` as JSON text (these answers always serialize).
fn text(answer: &impl Serialize) -> String {
    serde_json::to_string(answer).unwrap_or_default()
}

/// The answer to `hook` on `input` (JSON), as JSON text.
fn evaluate(hook: &str, input: &[u8]) -> Result<String, String> {
    let bad = |e: serde_json::Error| format!("input for {hook}: {e}");
    match hook {
        "can_issue_certificate" => {
            let i: Issuance = serde_json::from_slice(input).map_err(bad)?;
            let granted = |n: &str| i.capabilities.iter().any(|c| c.strip_prefix("san:") == Some(n));
            let fqdn = format!("{}.{}", i.worker_id, i.trust_domain);
            let mut deny = Vec::new();
            if !KEY_TYPES.contains(&i.key_type.as_str()) {
                deny.push(format!("key type {} is not allowed", i.key_type));
            }
            for d in &i.requested_dns_sans {
                if !(*d == i.worker_id || *d == fqdn || d == "localhost" || granted(d)) {
                    deny.push(format!("DNS name {d:?} is not allowed for worker {:?}", i.worker_id));
                }
            }
            for ip in &i.requested_ip_sans {
                if !(ip.is_loopback() || granted(&ip.to_string())) {
                    deny.push(format!("IP address {ip} is not allowed for worker {:?}", i.worker_id));
                }
            }
            deny.sort();
            deny.dedup();
            let reason = (!deny.is_empty()).then(|| deny.join("; "));
            Ok(text(&IssuanceAnswer { allow: reason.is_none(), reason }))
        }
        "certificate_validity_period" => Ok("86400".into()),
        "should_renew_certificate" => {
            let r: Renewal = serde_json::from_slice(input).map_err(bad)?;
            let lifetime = (r.not_after - r.issued_at) as f64;
            if lifetime <= 0.0 {
                return Ok(text(&RenewalAnswer { renew: true, expiring_soon: true }));
            }
            let threshold = lifetime * 2.0 / 3.0 + lifetime * r.jitter / 20.0;
            Ok(text(&RenewalAnswer {
                renew: (r.now - r.issued_at) as f64 >= threshold,
                expiring_soon: ((r.not_after - r.now) as f64) < lifetime / 4.0,
            }))
        }
        "revoke_certificate" => Ok("true".into()),
        "can_access_capability" => {
            let a: Access = serde_json::from_slice(input).map_err(bad)?;
            let (caller, target) = (&a.caller, &a.target);
            let reason = if caller.trust_domain != target.trust_domain {
                Some(format!(
                    "caller {} is of trust domain {:?}, not {:?}",
                    caller.spiffe_id, caller.trust_domain, target.trust_domain
                ))
            } else {
                match &target.capability {
                    None => None,
                    Some(c)
                        if caller.administrator
                            || OPEN_CAPABILITIES.contains(&c.as_str())
                            || caller.capabilities.iter().any(|g| grants(g, c)) =>
                    {
                        None
                    }
                    Some(c) => Some(format!(
                        "caller {} does not hold capability {c}; grant it at issuance (`crank token create --capability {c}`) or allow it in can_access_capability",
                        caller.spiffe_id
                    )),
                }
            };
            Ok(text(&IssuanceAnswer { allow: reason.is_none(), reason }))
        }
        other => Err(format!("unknown hook {other}")),
    }
}
