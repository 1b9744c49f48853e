//! The CA's HTTP API as a client reaches it: the real router (`crank_ca::server::router`)
//! with its body limit, JSON extraction and handlers, over a CA made from the fixture CA
//! (its own SQLite ledger in a temporary directory). The handshake is not fuzzed here;
//! the connection's verified identity is set the way the server sets it.
//!
//! Input: byte 0 chooses the route, byte 1 the caller, the rest is the body.
//!
//! | byte 0 % 5 | route | byte 1 % 3 | caller |
//! |---|---|---|---|
//! | 0 | `POST /v1/certificates` (issue) | 0 | no client certificate |
//! | 1 | `POST /v1/certificates/renew` | 1 | the worker `fuzz-worker` |
//! | 2 | `POST /v1/revocations` | 2 | the administrator `fuzz-admin` |
//! | 3 | `GET /v1/crl` | | |
//! | 4 | `GET /v1/trust-bundle` | | |
//!
//! Any status is fine; a panic, a 500 or a hang is a finding.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use crank_ca::{CaDir, LocalCa};
use crank_fuzz::{fixtures, runtime};
use crank_runtime::api::{CRL_PATH, ISSUE_PATH, RENEW_PATH, REVOKE_PATH, TRUST_BUNDLE_PATH};
use crank_runtime::tls::Connection;
use crank_security_core::{
    CertificateProvider, CorrelationId, IssueRequest, KeyType, WorkerId, build_csr, generate_key, parse_pem_certs,
};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Api {
    router: Router,
    callers: [Option<Arc<Connection>>; 3],
    _dir: tempfile::TempDir,
}

fn connection(chain_pem: &str) -> Arc<Connection> {
    let der = parse_pem_certs("caller", chain_pem.as_bytes()).expect("caller certificate").remove(0);
    Arc::new(Connection::from_verified(Some(der), "127.0.0.1:40000".parse().unwrap()))
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        runtime().block_on(async {
            let tmp = tempfile::tempdir().expect("temporary directory");
            let ca_dir = tmp.path().join("ca");
            crank_fuzz::copy_ca_dir(&fixtures().join("ca"), &ca_dir).expect("fixture CA");
            let dir = CaDir::new(&ca_dir);
            let ca = LocalCa::builder(dir.clone()).build().await.expect("fixture CA loads");
            let worker = WorkerId::new("fuzz-worker").unwrap();
            let token = crank_ca::create_token(&dir, &worker, std::time::Duration::from_secs(3600), vec![]).unwrap();
            let key = generate_key(KeyType::default()).unwrap();
            let csr = build_csr(&key, &worker, &["fuzz-worker".to_owned()]).unwrap();
            let issued = ca
                .issue(IssueRequest { csr_pem: csr, token, correlation_id: CorrelationId::new() })
                .await
                .expect("the fixture CA issues");
            let (admin, _key) =
                ca.issue_admin(&WorkerId::new("fuzz-admin").unwrap(), time::Duration::hours(1)).await.unwrap();
            Api {
                router: crank_ca::server::router(ca),
                callers: [None, Some(connection(&issued.certificate_chain)), Some(connection(&admin))],
                _dir: tmp,
            }
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let [route, caller, body @ ..] = data else { return };
    let (method, path) = match route % 5 {
        0 => (Method::POST, ISSUE_PATH),
        1 => (Method::POST, RENEW_PATH),
        2 => (Method::POST, REVOKE_PATH),
        3 => (Method::GET, CRL_PATH),
        _ => (Method::GET, TRUST_BUNDLE_PATH),
    };
    let api = api();
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    if let Some(connection) = &api.callers[usize::from(*caller % 3)] {
        request.extensions_mut().insert(connection.clone());
    }
    let response = runtime().block_on(api.router.clone().oneshot(request)).unwrap();
    assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}: a 500 for a client's input");
});
