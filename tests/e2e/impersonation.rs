//! Attacks on trust in the CA, on the real binaries: a worker's certificate posing as the
//! CA to steal a join token or to plant a root, and another CA under the same enterprise
//! root minting this trust domain's identities.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use crank_runtime::ServerHandle;
use crank_security_core::{CertFiles, CertificateBundle};
use crank_tests::{KillOnDrop, cert_init, crank, free_addr, openssl, serve_ca_process, wait_for_port, wait_until};

const VICTIM: &str = "victim";

/// A "CA" run by an attacker who holds an ordinary worker certificate of the trust domain
/// (which chains to the pinned root and names 127.0.0.1). It records every request body
/// and answers renewals with a leaf its own root signs, offering that root in the bundle.
struct FakeCa {
    server: ServerHandle,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeCa {
    async fn start(identity: &CertificateBundle, evil_root: Arc<EvilRoot>, real_root_pem: String) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = |seen: Arc<Mutex<Vec<String>>>| {
            move |body: String| {
                seen.lock().unwrap().push(body);
            }
        };
        let on_issue = record(seen.clone());
        let on_renew = record(seen.clone());
        let router = axum::Router::new()
            .route(
                "/v1/certificates",
                post(move |body: String| async move {
                    on_issue(body);
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }),
            )
            .route(
                "/v1/certificates/renew",
                post(move |body: String| async move {
                    on_renew(body.clone());
                    let csr: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let leaf = evil_root.sign_for(VICTIM, csr["csr"].as_str().unwrap());
                    Json(serde_json::json!({
                        "certificate_chain": leaf,
                        "ca_bundle": format!("{real_root_pem}{}", evil_root.pem()),
                        "serial": "01",
                        "spiffe_id": format!("spiffe://crank.local/worker/{VICTIM}"),
                        "not_after": "2099-01-01T00:00:00Z",
                    }))
                }),
            );
        let tls = rustls::ServerConfig::builder_with_provider(crank_runtime::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            // The roots are public: the attacker presents them after its own chain, as
            // the real CA presents its root.
            .with_single_cert([identity.chain(), identity.ca()].concat(), identity.key().clone_key())
            .unwrap();
        let mut tls = tls;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind(free_addr()).await.unwrap();
        let server =
            ServerHandle::spawn(listener, Arc::new(tls), router, Default::default(), Default::default(), None).unwrap();
        Self { server, seen }
    }

    fn url(&self) -> String {
        format!("https://{}", self.server.addr())
    }

    fn bodies(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The attacker's own root.
struct EvilRoot {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl EvilRoot {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, "Crank Platform CA");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "crank.local");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(cert.der(), key).unwrap();
        Self { cert, issuer }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A worker leaf for `worker`'s SPIFFE ID and the key `public`.
    fn leaf(&self, worker: &str, public: &impl rcgen::PublicKeyData) -> String {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, worker);
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "crank.local");
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let uri = format!("spiffe://crank.local/worker/{worker}");
        p.subject_alt_names = vec![rcgen::SanType::URI(uri.as_str().try_into().unwrap())];
        p.signed_by(public, &self.issuer).unwrap().pem()
    }

    fn sign_for(&self, worker: &str, csr_pem: &str) -> String {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        self.leaf(worker, &csr.public_key)
    }
}

/// `crank ca init` + `crank ca serve` (certificates valid `validity`), and a worker
/// identity for the attacker (`mallory`), as any worker of the platform has one.
async fn ca_and_attacker(tmp: &Path, validity: &str) -> (KillOnDrop, String, CertificateBundle) {
    let ca_dir = tmp.join("ca");
    crank(&["ca", "init", "--dir", ca_dir.to_str().unwrap()]).unwrap();
    let (ca, addr) = serve_ca_process(&ca_dir, &["--leaf-validity", validity]).await.unwrap();
    let url = format!("https://{addr}");
    let token = crank(&["token", "create", "--dir", ca_dir.to_str().unwrap(), "--worker-id", "mallory"]).unwrap();
    let mallory = tmp.join("mallory");
    cert_init("mallory", &token, &url, &mallory).unwrap();
    (ca, url, CertificateBundle::load(&CertFiles::in_dir(&mallory)).unwrap())
}

/// `crank cert init` with one attempt, which must fail: its error.
fn cert_init_once(worker: &str, token: &str, ca_url: &str, dir: &Path) -> String {
    let dir = dir.to_str().unwrap();
    let args = ["cert", "init", "--worker-id", worker, "--token", token, "--ca-url", ca_url, "--cert-dir", dir];
    crank(&[&args[..], &["--attempts", "1"]].concat()).unwrap_err().to_string()
}

fn token_for(tmp: &Path, worker: &str) -> String {
    crank(&["token", "create", "--dir", tmp.join("ca").to_str().unwrap(), "--worker-id", worker]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_posing_as_the_ca_gets_no_join_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ca, real_url, mallory) = ca_and_attacker(tmp.path(), "24h").await;
    let real_root = std::fs::read_to_string(tmp.path().join("ca/root.crt")).unwrap();
    let fake = FakeCa::start(&mallory, Arc::new(EvilRoot::new()), real_root).await;

    // The victim runs `crank cert init` against the address the attacker holds.
    let token = token_for(tmp.path(), VICTIM);
    let err = cert_init_once(VICTIM, &token, &fake.url(), &tmp.path().join("victim"));
    assert!(err.contains("not this trust domain's CA"), "{err}");
    assert!(err.contains("spiffe://crank.local/ca"), "{err}");
    assert!(fake.bodies().is_empty(), "the fake CA received {:?}", fake.bodies());

    // The token is still the victim's: the real CA issues with it.
    cert_init(VICTIM, &token, &real_url, &tmp.path().join("victim")).unwrap();

    // And no worker can be named after the CA, nor be issued the CA's names.
    let err =
        crank(&["token", "create", "--dir", tmp.path().join("ca").to_str().unwrap(), "--worker-id", "cert-authority"])
            .unwrap_err()
            .to_string();
    assert!(err.contains("name of the CA service"), "{err}");
}

/// Starts the hello-world binary on `port` with `env`, logging (JSON) into `log`.
fn hello_world(env: &[(&str, &str)], port: u16, log: &Path) -> KillOnDrop {
    let out = File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let port = port.to_string();
    let base = [("CRANK_LOG_FORMAT", "json"), ("HELLO_WORLD_HTTPS_PORT", &port), ("CRANK_LISTEN_HOST", "127.0.0.1")];
    let mut c = crank_tests::example_command("hello-world", &[&base[..], env].concat());
    KillOnDrop(c.stdout(Stdio::from(out)).stderr(Stdio::from(err)).spawn().unwrap())
}

/// `curl` with a client certificate: whether the request got an HTTP 200.
fn curl_ok(cert: &Path, key: &Path, cacert: &Path, url: &str) -> bool {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--cert"])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--cacert")
        .arg(cacert)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout) == "200"
}

/// A forged client of the attacker's root for `worker`: (cert, key) files in `dir`.
fn forged_client(evil: &EvilRoot, worker: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = dir.join(format!("{worker}-forged.crt"));
    let key_path = dir.join(format!("{worker}-forged.key"));
    std::fs::write(&cert, format!("{}{}", evil.leaf(worker, &key), evil.pem())).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_posing_as_the_ca_cannot_plant_a_root_at_renewal() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ca, real_url, mallory) = ca_and_attacker(tmp.path(), "10s").await;
    let evil = Arc::new(EvilRoot::new());
    let real_root = std::fs::read_to_string(tmp.path().join("ca/root.crt")).unwrap();
    let fake = FakeCa::start(&mallory, evil.clone(), real_root.clone()).await;

    // The victim got its certificate from the real CA; its renewals reach the attacker
    // (a DNS or routing attack on CA_SERVICE_URL).
    let certs = tmp.path().join("victim");
    cert_init(VICTIM, &token_for(tmp.path(), VICTIM), &real_url, &certs).unwrap();
    let addr = free_addr();
    let log = tmp.path().join("victim.log");
    let _victim = hello_world(
        &[("CERT_DIR", certs.to_str().unwrap()), ("CA_SERVICE_URL", &fake.url()), ("CRANK_WORKER_ID", VICTIM)],
        addr.port(),
        &log,
    );
    wait_for_port(addr).await.unwrap();
    // A 10 s certificate renews after about 7 s.
    wait_until("a refused renewal in the victim's log", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| {
            l.contains("CA_UNAVAILABLE")
                && l.contains("/v1/certificates/renew")
                && l.contains("not this trust domain's CA")
        })
    })
    .await;

    assert!(fake.bodies().is_empty(), "the fake CA received {:?}", fake.bodies());
    assert_eq!(std::fs::read_to_string(certs.join("ca.crt")).unwrap(), real_root, "ca.crt changed");

    // The attacker's client, signed by its own root, is not a peer of the victim.
    let (cert, key) = forged_client(&evil, "mallory", tmp.path());
    let url = format!("https://127.0.0.1:{}/health", addr.port());
    assert!(!curl_ok(&cert, &key, &certs.join("ca.crt"), &url), "the forged client was served");
    // A genuine client is (the check above can tell them apart).
    let mallory_dir = tmp.path().join("mallory");
    assert!(curl_ok(&mallory_dir.join("client.crt"), &mallory_dir.join("client.key"), &certs.join("ca.crt"), &url));
}

#[test]
fn a_renewal_answer_that_adds_an_unvouched_root_is_refused() {
    use crank_runtime::trust::accept_trust_update;
    use rustls_pki_types::UnixTime;
    // The real root, a leaf it issued, and an answer offering an extra root beside it.
    let real = EvilRoot::new();
    let evil = EvilRoot::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = |p: &str| crank_security_core::parse_pem_certs("cert", p.as_bytes()).unwrap();
    let real_root = pem(&real.pem());
    let leaf = pem(&real.leaf(VICTIM, &key));
    let offered: Vec<_> = real_root.iter().chain(pem(&evil.pem()).iter()).cloned().collect();
    let err = accept_trust_update(&real_root, &offered, &leaf, UnixTime::now()).unwrap_err();
    assert!(err.contains("no root this worker trusts vouches for"), "{err}");
    // The same answer without the extra root is fine.
    assert_eq!(accept_trust_update(&real_root, &real_root, &leaf, UnixTime::now()).unwrap(), real_root);
    // A leaf of the extra root is refused even if the bundle vouched for nothing else.
    let evil_leaf = pem(&evil.leaf(VICTIM, &key));
    assert!(accept_trust_update(&real_root, &real_root, &evil_leaf, UnixTime::now()).is_err());
}

/// An enterprise root (openssl), the CA as an intermediate under it (`crank ca init
/// --csr`, `crank ca import`), served; and a rogue CA under the same root.
async fn intermediate_ca(d: &Path) -> (KillOnDrop, String) {
    let root = crank_tests::openssl_root(d, "enterprise", None);
    let ca_dir = d.join("ca");
    crank(&["ca", "init", "--dir", ca_dir.to_str().unwrap(), "--csr"]).unwrap();
    let ext = "basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign";
    let cert =
        crank_tests::openssl_sign(d, &ca_dir.join("intermediate.csr"), "enterprise", ext, "intermediate.pem").unwrap();
    crank(&[
        "ca",
        "import",
        "--dir",
        ca_dir.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--chain",
        root.to_str().unwrap(),
    ])
    .unwrap();
    let rogue_csr = crank_tests::openssl_csr(d, "rogue-ca", "/CN=Rogue CA/O=Example Enterprise");
    crank_tests::openssl_sign(d, &rogue_csr, "enterprise", ext, "rogue-ca.pem").unwrap();
    let (ca, addr) = serve_ca_process(&ca_dir, &[]).await.unwrap();
    (ca, format!("https://{addr}"))
}

/// A certificate the rogue CA issues for `uri` (and 127.0.0.1): `NAME.pem` (with the
/// rogue CA's certificate) and `NAME.key` in `d`.
fn rogue_leaf(d: &Path, name: &str, uri: &str) -> (PathBuf, PathBuf) {
    let csr = crank_tests::openssl_csr(d, name, &format!("/CN={name}/O=crank.local"));
    let ext = format!(
        "basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth,serverAuth\nsubjectAltName=URI:{uri},IP:127.0.0.1"
    );
    let leaf = crank_tests::openssl_sign(d, &csr, "rogue-ca", &ext, &format!("{name}-leaf.pem")).unwrap();
    let chain = d.join(format!("{name}.pem"));
    let text = format!(
        "{}{}",
        std::fs::read_to_string(leaf).unwrap(),
        std::fs::read_to_string(d.join("rogue-ca.pem")).unwrap()
    );
    std::fs::write(&chain, text).unwrap();
    (chain, d.join(format!("{name}.key")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ca_under_the_enterprise_root_mints_no_identity_of_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_ca, ca_url) = intermediate_ca(d).await;

    let certs = d.join("hello");
    let addr = free_addr();
    let _hello = hello_world(
        &[
            ("CERT_DIR", certs.to_str().unwrap()),
            ("CA_SERVICE_URL", &ca_url),
            ("CRANK_JOIN_TOKEN", &token_for(d, "hello-world")),
        ],
        addr.port(),
        &d.join("hello.log"),
    );
    wait_for_port(addr).await.unwrap();
    let url = format!("https://127.0.0.1:{}/health", addr.port());

    // A client of ours is served; the same identity from the rogue CA is refused in the
    // handshake, though its chain verifies to the enterprise root (openssl says so).
    let caller = d.join("caller");
    cert_init("caller", &token_for(d, "caller"), &ca_url, &caller).unwrap();
    assert!(curl_ok(&caller.join("client.crt"), &caller.join("client.key"), &certs.join("ca.crt"), &url));
    let (forged, forged_key) = rogue_leaf(d, "forged", "spiffe://crank.local/worker/caller");
    let verified =
        openssl(d, &["verify", "-CAfile", "enterprise.pem", "-untrusted", "rogue-ca.pem", "forged-leaf.pem"]);
    assert!(verified.unwrap().contains("OK"));
    assert!(!curl_ok(&forged, &forged_key, &certs.join("ca.crt"), &url), "the rogue CA's client was served");

    // A server with the CA's identity from the rogue CA gets no join token.
    let (fake_cert, fake_key) = rogue_leaf(d, "fake-ca", "spiffe://crank.local/ca");
    let fake_identity = CertificateBundle::from_pem(
        &std::fs::read(&fake_cert).unwrap(),
        &std::fs::read(&fake_key).unwrap(),
        &std::fs::read(d.join("enterprise.pem")).unwrap(),
    )
    .unwrap();
    let fake = FakeCa::start(&fake_identity, Arc::new(EvilRoot::new()), String::new()).await;
    let err = cert_init_once("victim", &token_for(d, "victim"), &fake.url(), &d.join("victim"));
    assert!(err.contains("pinned by the join token"), "{err}");
    assert!(fake.bodies().is_empty(), "the fake CA received {:?}", fake.bodies());
}
