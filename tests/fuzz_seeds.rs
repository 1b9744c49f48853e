//! Makes the fuzz targets' fixture CA and seeds with the project's own code.
//!
//!     cargo run -p crank-tests --bin fuzz-seeds -- fuzz
//!
//! * `fuzz/fixtures/` (kept in the repository, made once when missing): a CA directory
//!   as `crank ca init` makes it (test keys, for fuzzing only), and a leaf it issued
//!   (`leaf.csr`, `leaf.pem`). The targets verify against it.
//! * `fuzz/seeds/<target>/` (made again on every run, not kept): valid inputs of each
//!   target made with the fixture CA: CSRs of every key type, join tokens (they expire,
//!   hence made again), CRLs, the CA API's request bodies, policy inputs, the policy
//!   modules. scripts/fuzz.sh passes them to libFuzzer beside `fuzz/corpus/<target>/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crank_ca::store::{RevocationReason, RevokeTarget};
use crank_ca::{CaDir, InitOptions, LocalCa, create_token, init_ca};
use crank_runtime::api::{IssueBody, RenewBody, RevokeBody};
use crank_security_core::{
    AccessInput, AccessRequest, AccessTarget, Caller, CertMetadata, CertificateProvider, CorrelationId, IssuanceInput,
    IssueRequest, KeyType, RenewalInput, TrustDomain, WorkerId, build_csr, crl_pem, generate_key, parse_pem_certs,
};
use time::OffsetDateTime;

const FUZZ_WORKER: &str = "fuzz";

struct Seeds {
    dir: PathBuf,
    count: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: impl AsRef<[u8]>) -> Result<()> {
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        self.count += 1;
        Ok(())
    }

    /// `prefix` bytes, then `body`.
    fn put_with(&mut self, target: &str, name: &str, prefix: &[u8], body: impl AsRef<[u8]>) -> Result<()> {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(body.as_ref());
        self.put(target, name, bytes)
    }
}

/// A copy of the fixture CA in a temporary directory, served by a `LocalCa` with its
/// own ledger there (the fixture keeps no ledger).
async fn scratch_ca(fixture: &Path) -> Result<(tempfile::TempDir, CaDir, Arc<LocalCa>)> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ca");
    crank_tests::copy_ca_dir(fixture, &dir)?;
    let dir = CaDir::new(dir);
    let ca = LocalCa::builder(dir.clone()).build().await?;
    Ok((tmp, dir, ca))
}

async fn issue(ca: &LocalCa, dir: &CaDir, worker: &str, csr: String) -> Result<String> {
    let token = create_token(dir, &WorkerId::new(worker)?, Duration::from_secs(600), vec![])?;
    let issued = ca.issue(IssueRequest { csr_pem: csr, token, correlation_id: CorrelationId::new() }).await?;
    Ok(issued.certificate_chain)
}

/// The fixture CA and its leaf, made when missing.
async fn fixtures(fuzz: &Path) -> Result<()> {
    let fixtures = fuzz.join("fixtures");
    let ca_dir = CaDir::new(fixtures.join("ca"));
    if !ca_dir.exists() {
        init_ca(&ca_dir, &InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false })?;
        println!("made the fixture CA in {}", fixtures.join("ca").display());
    }
    if !ca_dir.jwt_key().exists() {
        crank_ca::jwt_svid::JwtSvidKey::load_or_create(&ca_dir)?;
        println!("made the fixture CA's JWT-SVID key");
    }
    if !fixtures.join("leaf.pem").exists() {
        let (_tmp, dir, ca) = scratch_ca(&fixtures.join("ca")).await?;
        let key = generate_key(KeyType::default())?;
        let csr = build_csr(&key, &WorkerId::new(FUZZ_WORKER)?, &[FUZZ_WORKER.to_owned()])?;
        let chain = issue(&ca, &dir, FUZZ_WORKER, csr.clone()).await?;
        std::fs::write(fixtures.join("leaf.csr"), csr)?;
        std::fs::write(fixtures.join("leaf.pem"), chain)?;
        println!("made the fixture leaf");
    }
    Ok(())
}

async fn seeds(fuzz: &Path, seeds: &mut Seeds) -> Result<()> {
    let fixtures = fuzz.join("fixtures");
    let (_tmp, dir, ca) = scratch_ca(&fixtures.join("ca")).await?;
    let leaf_pem = std::fs::read(fixtures.join("leaf.pem"))?;

    // csr: CSRs of every key type (one with the names a worker asks by default), and the
    // fixture leaf's chain (for the check of what a signer returned).
    let worker = WorkerId::new(FUZZ_WORKER)?;
    for (i, key_type) in
        [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519, KeyType::Rsa2048].into_iter().enumerate()
    {
        let key = generate_key(key_type)?;
        seeds.put("csr", &format!("{key_type}"), build_csr(&key, &worker, &[FUZZ_WORKER.to_owned()])?)?;
        if i == 0 {
            let sans = ["fuzz", "localhost", "127.0.0.1", "::1", "api.internal"].map(String::from);
            seeds.put("csr", "default-sans", build_csr(&key, &worker, &sans)?)?;
        }
    }
    seeds.put("csr", "leaf-chain", &leaf_pem)?;
    std::fs::copy(fixtures.join("leaf.csr"), seeds.dir.join("csr/seed-leaf-csr"))?;

    // join_token: the tokens `crank token create` makes, with and without capabilities.
    let day = Duration::from_secs(24 * 3600);
    seeds.put("join_token", "plain", create_token(&dir, &worker, day, vec![])?)?;
    seeds.put("join_token", "capabilities", create_token(&dir, &worker, day, vec!["san:api.internal".into()])?)?;
    seeds.put("join_token", "week", create_token(&dir, &WorkerId::new("w-7")?, 7 * day, vec!["x".into()])?)?;

    // crl: the CA's CRL before and after a revocation, DER and PEM.
    let empty = ca.crl().await?;
    seeds.put("crl", "empty.der", &empty.der)?;
    let key = generate_key(KeyType::default())?;
    let victim = WorkerId::new("revoked")?;
    issue(&ca, &dir, "revoked", build_csr(&key, &victim, &["revoked".to_owned()])?).await?;
    let cid = CorrelationId::new();
    ca.revoke(RevokeTarget::Worker("revoked".into()), RevocationReason::KeyCompromise, "admin/seeds", &cid).await?;
    let crl = ca.crl().await?;
    if crl.entries == 0 {
        bail!("the CRL after a revocation lists nothing");
    }
    seeds.put("crl", "one.der", &crl.der)?;
    seeds.put("crl", "one.pem", crl_pem(&crl.der))?;

    // ca_api: route byte, caller byte, body (see fuzz_targets/ca_api.rs).
    let key = generate_key(KeyType::default())?;
    let csr = build_csr(&key, &WorkerId::new("fuzz-worker")?, &["fuzz-worker".to_owned()])?;
    let token = create_token(&dir, &WorkerId::new("fuzz-worker")?, day, vec![])?;
    seeds.put_with("ca_api", "issue", &[0, 0], serde_json::to_vec(&IssueBody { csr: csr.clone(), token })?)?;
    seeds.put_with("ca_api", "renew", &[1, 1], serde_json::to_vec(&RenewBody { csr })?)?;
    let revoke = |serial: Option<&str>, worker: Option<&str>, admin: Option<&str>| RevokeBody {
        serial: serial.map(String::from),
        worker_id: worker.map(String::from),
        admin: admin.map(String::from),
        reason: "keyCompromise".into(),
    };
    seeds.put_with(
        "ca_api",
        "revoke-worker",
        &[2, 2],
        serde_json::to_vec(&revoke(None, Some("fuzz-worker"), None))?,
    )?;
    seeds.put_with("ca_api", "revoke-serial", &[2, 2], serde_json::to_vec(&revoke(Some("01:02:03"), None, None))?)?;
    seeds.put_with("ca_api", "revoke-admin", &[2, 2], serde_json::to_vec(&revoke(None, None, Some("fuzz-admin")))?)?;
    seeds.put_with("ca_api", "crl", &[3, 1], b"")?;
    seeds.put_with("ca_api", "trust-bundle", &[4, 0], b"")?;

    // rego_policy and wasm_policy (modes 2 and 3): hook byte, input JSON, as the CA and
    // the runtime make them.
    let leaf = parse_pem_certs("fixture leaf", &leaf_pem)?;
    let meta = CertMetadata::from_der(&leaf[0])?;
    let inputs: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "issue",
            0,
            serde_json::to_vec(&IssuanceInput {
                worker_id: FUZZ_WORKER.into(),
                capabilities: vec![],
                requested_dns_sans: vec![FUZZ_WORKER.into(), "localhost".into()],
                requested_ip_sans: vec!["127.0.0.1".parse()?, "::1".parse()?],
                key_type: "ecdsa-p256".into(),
                environment: "development".into(),
                trust_domain: "crank.local".into(),
                renewal: false,
                agent: None,
            })?,
        ),
        (
            "issue-capability",
            0,
            serde_json::to_vec(&IssuanceInput {
                worker_id: "api".into(),
                capabilities: vec!["san:api.internal".into()],
                requested_dns_sans: vec!["api".into(), "api.internal".into(), "other.internal".into()],
                requested_ip_sans: vec![],
                key_type: "rsa-2048".into(),
                environment: "production".into(),
                trust_domain: "crank.local".into(),
                renewal: true,
                agent: None,
            })?,
        ),
        ("validity", 1, serde_json::to_vec(&(FUZZ_WORKER, "production"))?),
        ("renew", 2, serde_json::to_vec(&RenewalInput::new(&meta, OffsetDateTime::now_utc()))?),
        ("revoke", 3, serde_json::to_vec(&(FUZZ_WORKER, "keyCompromise"))?),
        (
            "access",
            4,
            serde_json::to_vec(&AccessInput {
                caller: Caller::from_certificate(&meta).context("the fixture leaf has a SPIFFE ID")?,
                target: AccessTarget {
                    worker_id: "email".into(),
                    trust_domain: "crank.local".into(),
                    capability: Some("email.classify".into()),
                },
                request: AccessRequest {
                    method: "POST".into(),
                    path: "/classify".into(),
                    route: Some("/classify".into()),
                },
                environment: "production".into(),
            })?,
        ),
    ];
    for (name, hook, json) in &inputs {
        seeds.put_with("rego_policy", name, &[*hook], json)?;
        seeds.put_with("wasm_policy", &format!("rust-{name}"), &[2, *hook], json)?;
        seeds.put_with("wasm_policy", &format!("opa-{name}"), &[3, *hook], json)?;
    }

    // wasm_policy modules (mode 0): small ones, so that the fuzzer's mutations of them
    // compile in milliseconds (the repository's own modules are evaluated by modes 2 and
    // 3 and rewritten by modes 1 and 4). A crank-ABI module answering `{"allow":true}`
    // from address 16, as text and as binary, and the smallest module that claims the
    // OPA ABI (its imports and exports are then checked, and found missing).
    let crank_module = format!(
        r#"(module
  (memory (export "memory") 1 1)
  (data (i32.const 16) "{{\"allow\":true}}")
  (func (export "crank_alloc") (param i32) (result i32) (i32.const 256))
  (func (export "crank_evaluate") (param i32 i32 i32 i32) (result i64) (i64.const {})))"#,
        16u64 << 32 | 14
    );
    seeds.put_with("wasm_policy", "crank-module-text", &[0], crank_module.as_bytes())?;
    seeds.put_with("wasm_policy", "crank-module", &[0], wat::parse_str(&crank_module)?)?;
    let opa_claim = r#"(module (global (export "opa_wasm_abi_version") i32 (i32.const 1)))"#;
    seeds.put_with("wasm_policy", "opa-claim", &[0], wat::parse_str(opa_claim)?)?;
    // mode 1: a crank-ABI module that allocates at 256 and answers the JSON at 16.
    let answer = br#"{"allow":true}"#;
    let mut hostile = Vec::new();
    hostile.extend_from_slice(&256u32.to_le_bytes());
    hostile.extend_from_slice(&16u32.to_le_bytes());
    hostile.extend_from_slice(&(answer.len() as u32).to_le_bytes());
    hostile.extend_from_slice(&[0; 16]);
    hostile.extend_from_slice(answer);
    seeds.put_with("wasm_policy", "crank-answer", &[1], hostile)?;
    // mode 4: the OPA module's "allow" answer written again at its own address (1248).
    let mut opa = Vec::new();
    opa.extend_from_slice(&(1248u16 - 1024).to_le_bytes());
    opa.extend_from_slice(b"\x1b\x00\x00\x00[{\"result\":{\"allow\":true}}]\x00");
    seeds.put_with("wasm_policy", "opa-answer", &[4], opa)?;
    workload_api_seeds(&CaDir::new(fixtures.join("ca")), seeds)
}

/// workload_api: part byte, then its input (see fuzz_targets/workload_api.rs).
fn workload_api_seeds(fixture: &CaDir, seeds: &mut Seeds) -> Result<()> {
    // 0: what a gRPC C-core client (py-spiffe) sends after the preface: SETTINGS, then a
    // FetchX509SVID call with the socket path as :authority, cut every 7 bytes; and the
    // same header block padded and split over a CONTINUATION.
    let headers: [(&[u8], &[u8]); 6] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
        (b":authority", b"tmp%2Fagent.sock"),
        (b"content-type", b"application/grpc"),
        (b"workload.spiffe.io", b"true"),
    ];
    let block = loona_hpack::Encoder::new().encode(headers);
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut call = frame(0x4, 0, 0, &[]);
    call.extend(frame(0x1, 0x4, 1, &block));
    call.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    seeds.put_with("workload_api", "grpc-call", &[0, 7], &call)?;
    let (a, b) = block.split_at(block.len() / 2);
    let mut padded = vec![2u8];
    padded.extend_from_slice(a);
    padded.extend_from_slice(&[0, 0]);
    let mut split = frame(0x1, 0x8, 3, &padded);
    split.extend(frame(0x9, 0x4, 3, b));
    seeds.put_with("workload_api", "continuation", &[0, 255], &split)?;
    // 1: a JWT-SVID of the fixture CA's key, its audience, against the fixture's bundle.
    let key = crank_ca::jwt_svid::JwtSvidKey::load_or_create(fixture)?;
    let far = OffsetDateTime::now_utc() + time::Duration::days(3650);
    let (token, _) = key
        .sign("spiffe://crank.local/worker/fuzz", &["fuzz".into()], far - crank_ca::jwt_svid::JWT_SVID_TTL)
        .map_err(anyhow::Error::msg)?;
    seeds.put_with("workload_api", "jwt", &[1], [token.as_bytes(), b"\xfffuzz"].concat())?;
    // 2: the request messages.
    let request = crank_agent::proto::JWTSVIDRequest { audience: vec!["fuzz".into()], spiffe_id: String::new() };
    seeds.put_with("workload_api", "jwt-request", &[2], prost::Message::encode_to_vec(&request))?;
    // 3: selectors, one per line.
    seeds.put_with("workload_api", "selectors", &[3], "unix:uid:1000\nunix:path:/usr/bin/python3")?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let fuzz = std::env::args_os().nth(1).map(PathBuf::from).context("usage: fuzz-seeds <fuzz directory>")?;
    fixtures(&fuzz).await?;
    let dir = fuzz.join("seeds");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let mut s = Seeds { dir, count: 0 };
    seeds(&fuzz, &mut s).await?;
    println!("wrote {} seeds under {}", s.count, s.dir.display());
    Ok(())
}
