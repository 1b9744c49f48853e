//! Issuance at the CA: CSR verification, token check, policy, signing and the durable
//! ledger write.
//!
//! `cargo bench -p crank-runtime --bench issuance`
//!
//! - `baseline_rcgen_sign`: the peer in the same run: rcgen signing one leaf with the
//!   same root key and nothing else (no CSR check, token, policy or ledger).
//! - `one_issuance`: one issuance at a time, in process (each pays its own fsync).
//! - `in_process_x64`: 64 concurrent issuances, in process (group commit shares fsyncs).
//! - `in_process_x64_{builtin,rego,wasm,wasm-opa}`: the same on a fresh CA each, with the
//!   default policy deciding in the built-in engine (the peer), the Rego engine, the WASM
//!   engine (crank ABI, the Rust policy) and the WASM engine through the OPA Wasm ABI
//!   (the hand-written OPA-shaped module).
//! - `https_keepalive_x64`: 64 concurrent issuances over HTTPS to the CA service on
//!   loopback through one keep-alive client; client and server share the machine.
//!
//! Tokens and CSRs are made before the timed section; every timed issuance uses a fresh
//! token, so nothing is skipped as a replay.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crank_ca::LocalCa;
use crank_ca::{CaDir, InitOptions, init_ca};
use crank_security_core::{
    CertificateProvider, CorrelationId, EventSinks, IssueRequest, KeyType, TrustDomain, WorkerId, build_csr,
    generate_key,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

#[path = "../../crank-policy/tests/support/wasm_module.rs"]
mod wasm_module;

const CONCURRENCY: usize = 64;

fn setup() -> (tempfile::TempDir, CaDir, Arc<LocalCa>) {
    setup_with(crank_policy::builtin())
}

fn setup_with(policy: Arc<dyn crank_security_core::PolicyEngine>) -> (tempfile::TempDir, CaDir, Arc<LocalCa>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CaDir::new(tmp.path().join("ca"));
    let opts = InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false };
    init_ca(&dir, &opts).expect("init");
    let builder = LocalCa::builder(dir.clone()).events(Arc::new(EventSinks::empty())).policy(policy);
    let ca = tokio::runtime::Runtime::new().expect("runtime").block_on(builder.build()).expect("load");
    (tmp, dir, ca)
}

fn requests(ca: &LocalCa, csr: &str, n: usize) -> Vec<IssueRequest> {
    let w = WorkerId::new("bench-worker").expect("id");
    (0..n)
        .map(|_| IssueRequest {
            csr_pem: csr.to_owned(),
            token: ca.tokens().create(&w, Duration::from_secs(600), vec![]).expect("token"),
            correlation_id: CorrelationId::new(),
        })
        .collect()
}

/// Times `iters` rounds of `CONCURRENCY` issuances run by `issue`; tokens are made
/// before the clock starts.
async fn time_concurrent<F, Fut>(ca: Arc<LocalCa>, csr: String, iters: u64, issue: F) -> Duration
where
    F: Fn(IssueRequest) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let reqs = requests(&ca, &csr, CONCURRENCY);
        let start = Instant::now();
        let tasks: Vec<_> = reqs.into_iter().map(|r| tokio::spawn(issue(r))).collect();
        for t in tasks {
            t.await.expect("join");
        }
        total += start.elapsed();
    }
    total
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (_tmp, dir, ca) = setup();
    let key = generate_key(KeyType::EcdsaP256).expect("key");
    let worker = WorkerId::new("bench-worker").expect("id");
    let csr = build_csr(&key, &worker, &["bench-worker".into()]).expect("csr");

    let mut g = c.benchmark_group("issuance");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1));
    let root_key = CaDir::read_key(&dir.root_key()).expect("root key");
    let root = dir.root_der().expect("root");
    let issuer = rcgen::Issuer::from_ca_cert_der(&root, root_key).expect("issuer");
    g.bench_function("baseline_rcgen_sign", |b| {
        b.iter(|| {
            let mut p = rcgen::CertificateParams::new(vec!["bench-worker".to_owned()]).expect("p");
            p.serial_number = Some(crank_ca::random_serial());
            p.signed_by(&key, &issuer).expect("sign")
        });
    });

    g.bench_function("one_issuance", |b| {
        b.to_async(&rt).iter_batched(
            || requests(&ca, &csr, 1).remove(0),
            |req| {
                let ca = ca.clone();
                async move { ca.issue(req).await.expect("issue") }
            },
            BatchSize::SmallInput,
        );
    });

    g.throughput(Throughput::Elements(CONCURRENCY as u64));
    g.bench_function("in_process_x64", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let ca2 = ca.clone();
            time_concurrent(ca.clone(), csr.clone(), iters, move |r| {
                let ca = ca2.clone();
                async move {
                    ca.issue(r).await.expect("issue");
                }
            })
        });
    });

    // The same concurrent issuance with each policy engine deciding.
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let rego = crank_policy::RegoEngine::from_dir(&policies.join("default")).expect("rego");
    let wasm = crank_policy::WasmEngine::from_file(&wasm_module::default_wasm_policy())
        .unwrap_or_else(|e| panic!("the Rust WASM policy: {e}"));
    let opa =
        crank_policy::WasmEngine::from_file(&policies.join("wasm/opa-default/crank.wat")).expect("OPA-ABI module");
    // The built-in engine again, set up exactly like the others: the peer for their ratios.
    let engines: [(&str, Arc<dyn crank_security_core::PolicyEngine>); 4] = [
        ("builtin", crank_policy::builtin()),
        ("rego", Arc::new(rego)),
        ("wasm", Arc::new(wasm)),
        ("wasm-opa", Arc::new(opa)),
    ];
    for (name, engine) in engines {
        let (_t, _d, ca_e) = setup_with(engine);
        g.bench_function(format!("in_process_x64_{name}"), |b| {
            b.iter_custom(|iters| {
                let ca2 = ca_e.clone();
                rt.block_on(time_concurrent(ca_e.clone(), csr.clone(), iters, move |r| {
                    let ca = ca2.clone();
                    async move {
                        ca.issue(r).await.expect("issue");
                    }
                }))
            });
        });
    }

    let listen = "127.0.0.1:0".parse().expect("addr");
    let server = rt.block_on(crank_ca::server::bind_and_spawn(&dir, listen, ca.clone())).expect("serve");
    let url = format!("https://{}/v1/certificates", server.addr());
    let tls = rustls::ClientConfig::builder_with_provider(crank_runtime::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(crank_runtime::tls::root_store(std::slice::from_ref(&root)).expect("roots"))
        .with_no_client_auth();
    let client = reqwest::Client::builder().use_preconfigured_tls(tls).build().expect("client");
    g.bench_function("https_keepalive_x64", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let client = client.clone();
            let url = url.clone();
            time_concurrent(ca.clone(), csr.clone(), iters, move |r| {
                let client = client.clone();
                let url = url.clone();
                async move {
                    let body = serde_json::json!({"csr": r.csr_pem, "token": r.token});
                    let resp = client.post(&url).json(&body).send().await.expect("send");
                    assert!(resp.status().is_success(), "{}", resp.status());
                    resp.bytes().await.expect("body");
                }
            })
        });
    });
    g.finish();
    rt.block_on(server.shutdown()).expect("shutdown");
}

criterion_group!(benches, bench);
criterion_main!(benches);
