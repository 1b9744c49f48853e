//! Upstream signers for the cfssl provider's tests: a real `cfssl serve` (Debian's
//! golang-cfssl, installed by the test command) on 127.0.0.1, and a stand-in that
//! speaks the same sign API the way newer cfssl releases answer (URI SANs from `hosts`),
//! which Debian 12's cfssl 1.2 cannot do.
//!
//! Every key and certificate of the setup is made by `openssl`: `up` (the CA cfssl
//! signs with), `ops` (the CA of cfssl's TLS certificate and of the CA's client
//! certificate), `srv` (cfssl's TLS certificate), `client` (the CA's client certificate).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use base64::Engine;
use crank_runtime::ServerHandle;
use crank_runtime::ca::cfssl::{AuthKey, CfsslConfig, CfsslProvider, ClientIdentity};
use crank_security_core::{CertificateBundle, CertificateProvider, parse_pem_certs};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{KillOnDrop, free_addr, openssl_csr, openssl_root, openssl_sign, wait_for_port};

/// The `auth_key` of the `crank-auth` profile, hex.
pub const AUTH_KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

const GOOD_USAGES: &str = r#"["digital signature", "server auth", "client auth"]"#;

/// Keys, certificates and the cfssl configuration, made with openssl.
#[derive(Debug)]
pub struct UpstreamFiles {
    /// Keeps the files.
    pub dir: TempDir,
}

impl UpstreamFiles {
    /// Makes everything.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("crank-cfssl-").tempdir().unwrap();
        let d = dir.path();
        openssl_root(d, "up", Some(0));
        openssl_root(d, "ops", None);
        for (name, ext) in [
            ("srv", "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost"),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            let csr = openssl_csr(d, name, &format!("/CN=crank-{name}"));
            let ext = format!("basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n{ext}");
            openssl_sign(d, &csr, "ops", &ext, &format!("{name}.pem")).unwrap();
        }
        let profile = |expiry: &str, usages: &str, auth: bool| {
            let auth = if auth { r#", "auth_key": "crank""# } else { "" };
            format!(r#"{{"expiry": "{expiry}", "usages": {usages}{auth}}}"#)
        };
        let config = format!(
            r#"{{"signing": {{"default": {default}, "profiles": {{"crank": {crank}, "crank-auth": {auth}, "long": {long}, "server-only": {server}}}}},
               "auth_keys": {{"crank": {{"type": "standard", "key": "{AUTH_KEY_HEX}"}}}}}}"#,
            default = profile("24h", GOOD_USAGES, false),
            crank = profile("24h", GOOD_USAGES, false),
            auth = profile("24h", GOOD_USAGES, true),
            long = profile("8760h", GOOD_USAGES, false),
            server = profile("24h", r#"["digital signature", "server auth"]"#, false),
        );
        std::fs::write(d.join("config.json"), config).unwrap();
        Self { dir }
    }

    /// A file of the setup.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// Provider settings for the upstream at `addr`: mutual TLS when `mtls`, authsign
    /// with `auth_key_hex` when given.
    pub fn config(
        &self,
        addr: SocketAddr,
        profile: Option<&str>,
        mtls: bool,
        auth_key_hex: Option<&str>,
    ) -> CfsslConfig {
        CfsslConfig {
            url: format!("https://{addr}").parse().unwrap(),
            server_roots: parse_pem_certs("ops", &self.read("ops.pem")).unwrap(),
            client_identity: mtls
                .then(|| ClientIdentity::from_pem(&self.read("client.pem"), &self.read("client.key")).unwrap()),
            auth_key: auth_key_hex.map(|k| AuthKey::from_hex(k).unwrap()),
            profile: profile.map(str::to_owned),
            trust_bundle_pem: String::from_utf8(self.read("up.pem")).unwrap(),
            chain_pem: String::new(),
            timeout: Duration::from_secs(5),
        }
    }

    /// The provider for [`config`](Self::config).
    pub fn provider(
        &self,
        addr: SocketAddr,
        profile: Option<&str>,
        mtls: bool,
        auth_key_hex: Option<&str>,
    ) -> Arc<dyn CertificateProvider> {
        Arc::new(CfsslProvider::new(self.config(addr, profile, mtls, auth_key_hex)).unwrap())
    }

    /// `crank ca serve` options for the upstream at `addr` with mutual TLS.
    pub fn serve_args(&self, addr: SocketAddr, profile: &str) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            "--signer".into(),
            "cfssl".into(),
            "--cfssl-url".into(),
            format!("https://{addr}"),
            "--cfssl-ca".into(),
            p("ops.pem"),
            "--cfssl-client-cert".into(),
            p("client.pem"),
            "--cfssl-client-key".into(),
            p("client.key"),
            "--cfssl-trust-bundle".into(),
            p("up.pem"),
            "--cfssl-profile".into(),
            profile.into(),
        ]
    }
}

impl Default for UpstreamFiles {
    fn default() -> Self {
        Self::new()
    }
}

/// `cfssl serve` on 127.0.0.1 and a free port, TLS with client certificates required
/// (`-mutual-tls-ca ops.pem`), signing with `up`; killed when dropped.
#[derive(Debug)]
pub struct Cfssl {
    /// Its files.
    pub files: UpstreamFiles,
    /// Where it listens.
    pub addr: SocketAddr,
    process: Option<KillOnDrop>,
}

impl Cfssl {
    /// Starts it and waits until it listens. Panics with what to install when `cfssl`
    /// is missing.
    pub async fn start() -> Self {
        let files = UpstreamFiles::new();
        let addr = free_addr();
        let p = |n: &str| files.path(n);
        let child = std::process::Command::new("cfssl")
            .arg("serve")
            .args(["-address", "127.0.0.1", "-port", &addr.port().to_string()])
            .arg("-ca")
            .arg(p("up.pem"))
            .arg("-ca-key")
            .arg(p("up.key"))
            .arg("-config")
            .arg(p("config.json"))
            .arg("-tls-cert")
            .arg(p("srv.pem"))
            .arg("-tls-key")
            .arg(p("srv.key"))
            .arg("-mutual-tls-ca")
            .arg(p("ops.pem"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(p("cfssl.log")).unwrap())
            .spawn()
            .expect("cfssl not found: install it (`apt-get install golang-cfssl`, as scripts/test.sh does)");
        let process = Some(KillOnDrop(child));
        wait_for_port(addr).await.unwrap();
        Self { files, addr, process }
    }

    /// Stops it (as if it crashed).
    pub fn stop(&mut self) {
        self.process.take();
    }

    /// cfssl's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.files.path("cfssl.log")).unwrap_or_default()
    }
}

/// How the stand-in misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Signs what the request says, as cfssl 1.4+ does with a correct profile.
    Honest,
    /// Adds a DNS name nobody asked for.
    ExtraName,
    /// Issues a CA certificate.
    CaCertificate,
    /// Certifies a key of its own instead of the CSR's.
    OtherKey,
}

struct StandInState {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    behaviour: Behaviour,
    requests: std::sync::Mutex<Vec<Value>>,
}

/// A stand-in for a newer cfssl: `POST /api/v1/cfssl/sign` and `/authsign` (HMAC with
/// [`AUTH_KEY_HEX`]) over mutual TLS, signing with `up`, answering in cfssl's envelope.
pub struct SignApiStandIn {
    /// Its files (shared layout with [`Cfssl`]).
    pub files: UpstreamFiles,
    server: Option<ServerHandle>,
    state: Arc<StandInState>,
}

impl std::fmt::Debug for SignApiStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignApiStandIn").field("behaviour", &self.state.behaviour).finish()
    }
}

impl SignApiStandIn {
    /// Starts it on a free port.
    pub async fn start(behaviour: Behaviour) -> Self {
        let files = UpstreamFiles::new();
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(files.path("up.key")).unwrap()).unwrap();
        let up = parse_pem_certs("up", &std::fs::read(files.path("up.pem")).unwrap()).unwrap().remove(0);
        let issuer = rcgen::Issuer::from_ca_cert_der(&up, key).unwrap();
        let state = Arc::new(StandInState { issuer, behaviour, requests: Default::default() });
        let ops = std::fs::read(files.path("ops.pem")).unwrap();
        let bundle = CertificateBundle::from_pem(
            &std::fs::read(files.path("srv.pem")).unwrap(),
            &std::fs::read(files.path("srv.key")).unwrap(),
            &ops,
        )
        .unwrap();
        let creds = crank_runtime::tls::Credentials::new(bundle.certified_key().unwrap());
        let config = crank_runtime::tls::mtls_server_config(bundle.ca(), creds).unwrap();
        let router = Router::new()
            .route("/api/v1/cfssl/sign", post(sign))
            .route("/api/v1/cfssl/authsign", post(authsign))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(free_addr()).await.unwrap();
        let server = Some(ServerHandle::spawn(listener, config, router).unwrap());
        Self { files, server, state }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().addr()
    }

    /// The sign requests it received (the inner request for authsign).
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Stops it.
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

fn envelope_error(message: &str) -> Json<Value> {
    Json(json!({"success": false, "result": null, "errors": [{"code": 400, "message": message}], "messages": []}))
}

async fn authsign(
    State(state): State<Arc<StandInState>>,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let field = |k: &str| body.get(k).and_then(Value::as_str).and_then(|s| b64.decode(s).ok()).unwrap_or_default();
    let (token, request) = (field("token"), field("request"));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(AUTH_KEY_HEX).unwrap()).unwrap();
    mac.update(&request);
    if mac.verify_slice(&token).is_err() {
        return (axum::http::StatusCode::BAD_REQUEST, envelope_error("invalid token"));
    }
    match serde_json::from_slice(&request) {
        Ok(inner) => sign(State(state), Json(inner)).await,
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, envelope_error("Unable to parse authenticated sign request")),
    }
}

async fn sign(State(state): State<Arc<StandInState>>, Json(req): Json<Value>) -> (axum::http::StatusCode, Json<Value>) {
    state.requests.lock().unwrap().push(req.clone());
    match sign_request(&state, &req) {
        Ok(pem) => (
            axum::http::StatusCode::OK,
            Json(json!({"success": true, "result": {"certificate": pem}, "errors": [], "messages": []})),
        ),
        Err(e) => (axum::http::StatusCode::BAD_REQUEST, envelope_error(&e)),
    }
}

fn sign_request(state: &StandInState, req: &Value) -> Result<String, String> {
    use rcgen::{DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
    let csr =
        req.get("certificate_request").and_then(Value::as_str).ok_or("missing parameter 'certificate_request'")?;
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr).map_err(|e| e.to_string())?;
    let time = |k: &str| {
        req.get(k)
            .and_then(Value::as_str)
            .and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
    };
    let now = time::OffsetDateTime::now_utc();
    let mut p = rcgen::CertificateParams::default();
    if let Some(cn) = req.pointer("/subject/CN").and_then(Value::as_str) {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    if let Some(o) = req.pointer("/subject/names/0/O").and_then(Value::as_str) {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.not_before = time("NotBefore").unwrap_or(now - time::Duration::minutes(5));
    p.not_after = time("NotAfter").unwrap_or(now + time::Duration::hours(24));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    for host in req.get("hosts").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        p.subject_alt_names.push(if let Ok(ip) = host.parse() {
            SanType::IpAddress(ip)
        } else if host.contains("://") {
            SanType::URI(host.try_into().map_err(|_| "bad URI")?)
        } else {
            SanType::DnsName(host.try_into().map_err(|_| "bad DNS name")?)
        });
    }
    match state.behaviour {
        Behaviour::Honest | Behaviour::OtherKey => {}
        Behaviour::ExtraName => p.subject_alt_names.push(SanType::DnsName("payments.example".try_into().unwrap())),
        Behaviour::CaCertificate => p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
    }
    let cert = if state.behaviour == Behaviour::OtherKey {
        p.signed_by(&rcgen::KeyPair::generate().unwrap(), &state.issuer)
    } else {
        p.signed_by(&csr.public_key, &state.issuer)
    };
    Ok(cert.map_err(|e| e.to_string())?.pem())
}

/// The first certificate of a PEM file.
pub fn first_cert(path: &Path) -> rustls_pki_types::CertificateDer<'static> {
    parse_pem_certs("certificate", &std::fs::read(path).unwrap()).unwrap().remove(0)
}
