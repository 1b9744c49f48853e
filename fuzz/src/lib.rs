//! What the fuzz targets share: the fixture CA they verify against, the policy-hook
//! input format, and the hostile WebAssembly modules made from fuzz input.
//!
//! The fixtures (`fuzz/fixtures/`) and the seeds (`fuzz/seeds/<target>/`) are made by the
//! project's own code: `cargo run -p crank-tests --bin fuzz-seeds -- fuzz` (scripts/fuzz.sh
//! runs it). Seeds that verify (join tokens, CRLs, certificates) are signed by the
//! fixture CA's keys, so the fixture CA is made once and kept in the repository.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crank_security_core::{AccessInput, IssuanceInput, PolicyEngine, RenewalInput};

#[path = "../../tests/support/ca_copy.rs"]
mod ca_copy;
pub use ca_copy::copy_ca_dir;

/// `fuzz/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A fixture file's bytes; panics (a setup error, not a finding) if it is missing.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; make the fixtures with `cargo run -p crank-tests --bin fuzz-seeds -- fuzz`", path.display())
    })
}

/// The fixture CA's root, DER.
pub fn fixture_root() -> rustls_pki_types::CertificateDer<'static> {
    static ROOT: OnceLock<rustls_pki_types::CertificateDer<'static>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let pem = fixture("ca/root.crt");
        let certs = crank_security_core::parse_pem_certs("fixture root", &pem).expect("fixture root parses");
        certs.into_iter().next().expect("fixture root holds a certificate")
    })
    .clone()
}

/// The fixture CA's JWT bundle (JWKS, JSON), from its `jwt.key`.
pub fn fixture_jwks() -> Vec<u8> {
    static JWKS: OnceLock<Vec<u8>> = OnceLock::new();
    JWKS.get_or_init(|| {
        let pem = String::from_utf8(fixture("ca/jwt.key")).expect("jwt.key is PEM");
        let key = rcgen::KeyPair::from_pem(&pem).expect("jwt.key parses");
        let key = crank_ca::jwt_svid::JwtSvidKey::from_key(&key).expect("jwt.key is a P-256 key");
        serde_json::to_vec(&key.jwks()).expect("JWKS encodes")
    })
    .clone()
}

/// One shared Tokio runtime for the targets that drive async code.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime"))
}

/// Calls one policy hook of `engine` with an input read from `data`: the first byte
/// chooses the hook, the rest is its input as JSON, the way the CA and the runtime
/// serialise it:
///
/// | byte % 5 | hook | JSON |
/// |---|---|---|
/// | 0 | `can_issue_certificate` | an `IssuanceInput` |
/// | 1 | `certificate_validity_period` | `[worker_id, environment]` |
/// | 2 | `should_renew_certificate` | a `RenewalInput` |
/// | 3 | `revoke_certificate` | `[worker_id, reason]` |
/// | 4 | `can_access_capability` | an `AccessInput` |
///
/// Errors are fine (the guard fails closed on them); a panic, a hang or unbounded
/// memory is a finding.
pub fn call_policy_hook(engine: &dyn PolicyEngine, data: &[u8]) {
    let Some((&hook, json)) = data.split_first() else { return };
    match hook % 5 {
        0 => {
            if let Ok(input) = serde_json::from_slice::<IssuanceInput>(json) {
                let _ = engine.can_issue_certificate(&input);
            }
        }
        1 => {
            if let Ok((worker, env)) = serde_json::from_slice::<(String, String)>(json) {
                let _ = engine.certificate_validity_period(&worker, &env);
            }
        }
        2 => {
            if let Ok(input) = serde_json::from_slice::<RenewalInput>(json) {
                let _ = engine.should_renew_certificate(&input);
            }
        }
        3 => {
            if let Ok((worker, reason)) = serde_json::from_slice::<(String, String)>(json) {
                let _ = engine.revoke_certificate(&worker, &reason);
            }
        }
        _ => {
            if let Ok(input) = serde_json::from_slice::<AccessInput>(json) {
                let _ = engine.can_access_capability(&input);
            }
        }
    }
}

/// `bytes` as a WebAssembly text string literal (`"\xx..."`).
fn wat_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3 + 2);
    s.push('"');
    for b in bytes {
        s.push_str(&format!("\\{b:02x}"));
    }
    s.push('"');
    s
}

fn le_u32(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

/// A crank-ABI module that answers whatever `data` says: `crank_alloc` returns the
/// address in bytes 0..4, `crank_evaluate` returns (address << 32 | length) from bytes
/// 4..12, and memory from address 0 holds the rest. It tests what the host does with
/// a module's answer: addresses out of bounds, lengths past the limit, non-JSON, the
/// wrong JSON.
pub fn hostile_crank_module(data: &[u8]) -> String {
    let alloc = le_u32(data, 0) as i32;
    let answer = (u64::from(le_u32(data, 4)) << 32 | u64::from(le_u32(data, 8))) as i64;
    let memory = data.get(12..).unwrap_or_default();
    format!(
        r#"(module
  (memory (export "memory") 1 4)
  (data (i32.const 0) {})
  (func (export "crank_alloc") (param i32) (result i32) (i32.const {alloc}))
  (func (export "crank_evaluate") (param i32 i32 i32 i32) (result i64) (i64.const {answer})))"#,
        wat_string(memory)
    )
}

/// The OPA-ABI module of the repository (`policies/wasm/opa-default/crank.wat`) with
/// its static data overwritten from `data`: bytes 0..2 choose an address in the static
/// area (1024..4096: entrypoints, builtins, the answers with their length prefixes),
/// the rest is written there. The module then hands the host answers whose lengths,
/// addresses and JSON are the fuzzer's.
pub fn hostile_opa_module(data: &[u8]) -> String {
    static WAT: OnceLock<String> = OnceLock::new();
    let wat = WAT.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/wasm/opa-default/crank.wat");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    });
    let at = 1024
        + u32::from(u16::from_le_bytes([data.first().copied().unwrap_or(0), data.get(1).copied().unwrap_or(0)])) % 3072;
    let bytes = data.get(2..).unwrap_or_default();
    let bytes = &bytes[..bytes.len().min(4096)];
    let end = wat.rfind(')').expect("the module's closing parenthesis");
    format!("{}\n  (data (i32.const {at}) {})\n{}", &wat[..end], wat_string(bytes), &wat[end..])
}
