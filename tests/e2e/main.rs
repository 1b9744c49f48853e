//! End-to-end tests of crank-security on 127.0.0.1: in-process CA and workers on free
//! ports, and the real `crank` and `hello-world` binaries.

mod access;
mod agent;
mod bootstrap;
mod cert_dir;
mod cli;
mod connections;
mod console;
mod faults;
mod ha;
mod impersonation;
mod intermediate;
mod issuance;
mod metrics;
mod outages;
mod platform;
mod policy;
mod probes;
mod refusals;
mod revocation;
mod revocation_gaps;
mod rotation;
mod store;
mod transport;
mod upstream;

use std::sync::Arc;

use crank_runtime::tls::{Credentials, mtls_client_config};
use crank_security_core::CertificateBundle;
use rustls_pki_types::CertificateDer;

/// A reqwest client with an explicit rustls config (for clients the runtime would never build).
fn client_with(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap()
}

/// An mTLS client presenting `bundle`, trusting `roots`.
fn mtls(bundle: &CertificateBundle, roots: &[CertificateDer<'static>]) -> reqwest::Client {
    let creds = Credentials::new(bundle.certified_key().unwrap());
    client_with(mtls_client_config(roots, creds).unwrap())
}

/// A client that verifies the server but presents no certificate.
fn no_client_cert(roots: &[CertificateDer<'static>]) -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(crank_runtime::tls::root_store(roots).unwrap())
        .with_no_client_auth();
    client_with(tls)
}

/// `GET /whoami` of a worker serving `hello_routes()`, as JSON.
async fn whoami(client: &reqwest::Client, worker: &crank_runtime::RunningWorker) -> serde_json::Value {
    let url = format!("https://127.0.0.1:{}/whoami", worker.addr().port());
    client.get(url).send().await.unwrap().json().await.unwrap()
}
