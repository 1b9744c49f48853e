//! A real `cfssl serve` on 127.0.0.1 for the cfssl signer's tests: cfssl 1.6 or newer
//! (the test command installs Debian's 1.6.5 package), configured with the profile
//! docs/providers.md recommends and with the misconfigurations the CA must refuse.
//!
//! Every key and certificate of the setup is made by `openssl`: `up` (the CA cfssl
//! signs with), `ops` (the CA of cfssl's TLS certificate and of the CA's client
//! certificate), `srv` (cfssl's TLS certificate), `client` (the CA's client certificate).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crank_ca::cfssl::{AuthKey, CfsslConfig, CfsslProvider, ClientIdentity};
use crank_security_core::{CertificateProvider, parse_pem_certs};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{KillOnDrop, free_addr, openssl_csr, openssl_root, openssl_sign, wait_for_port};

/// The `auth_key` of the `crank-auth` profile, hex.
pub const AUTH_KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// cfssl's configuration. `crank` (also the default) signs exactly what the CA asks
/// for, `crank-auth` is the same behind an authsign key; every other profile is a
/// misconfiguration, named for what it does.
fn cfssl_config() -> Value {
    let crank = json!({
        "expiry": "24h",
        "usages": ["digital signature", "server auth", "client auth"],
        // Only the CSR's key: no subject fields, names or extensions from the CSR.
        "CSRWhitelist": {"PublicKey": true, "PublicKeyAlgorithm": true, "SignatureAlgorithm": true},
    });
    let changed = |changes: Value| {
        let mut p = crank.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                p.as_object_mut().unwrap().remove(k);
            } else {
                p[k] = v.clone();
            }
        }
        p
    };
    json!({
        "signing": {
            "default": crank,
            "profiles": {
                "crank": crank,
                "crank-auth": changed(json!({"auth_key": "crank"})),
                // These two leave out the CSRWhitelist: with it, cfssl 1.6.5 ignores both
                // ca_constraint and copy_extensions.
                "ca": changed(json!({
                    "CSRWhitelist": null,
                    "ca_constraint": {"is_ca": true},
                    "usages": ["digital signature", "cert sign", "server auth", "client auth"],
                })),
                "long": changed(json!({"expiry": "8760h"})),
                "server-only": changed(json!({"usages": ["digital signature", "server auth"]})),
                "copy-extensions": changed(json!({"CSRWhitelist": null, "copy_extensions": true})),
                "csr-subject": changed(json!({"CSRWhitelist": null})),
                "example-com-only": changed(json!({"name_whitelist": "\\.example\\.com$"})),
            },
        },
        "auth_keys": {"crank": {"type": "standard", "key": AUTH_KEY_HEX}},
    })
}

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
        let config = serde_json::to_vec_pretty(&cfssl_config()).unwrap();
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

/// `cfssl serve` on 127.0.0.1 and a free port, over TLS (`srv`), signing with `up`;
/// killed when dropped.
#[derive(Debug)]
pub struct Cfssl {
    /// Its files.
    pub files: UpstreamFiles,
    /// Where it listens.
    pub addr: SocketAddr,
    process: Option<KillOnDrop>,
}

impl Cfssl {
    /// Starts it with client certificates required (`-mutual-tls-ca ops.pem`) and waits
    /// until it listens.
    pub async fn start() -> Self {
        Self::spawn(true).await
    }

    /// Starts it without asking for client certificates: only profiles with an
    /// `auth_key` are then closed to strangers.
    pub async fn start_without_client_certificates() -> Self {
        Self::spawn(false).await
    }

    async fn spawn(mutual_tls: bool) -> Self {
        let files = UpstreamFiles::new();
        let addr = free_addr();
        let p = |n: &str| files.path(n);
        let mut command = std::process::Command::new("cfssl");
        command
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
            .arg(p("srv.key"));
        if mutual_tls {
            command.arg("-mutual-tls-ca").arg(p("ops.pem"));
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(p("cfssl.log")).unwrap())
            .spawn()
            .expect("cfssl not found: install cfssl 1.6 or newer, as scripts/test.sh does");
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

    /// How many certificates it has signed, from its log.
    pub fn signed(&self) -> usize {
        self.log().matches("signed certificate with serial number").count()
    }
}

/// The first certificate of a PEM file.
pub fn first_cert(path: &Path) -> rustls_pki_types::CertificateDer<'static> {
    parse_pem_certs("certificate", &std::fs::read(path).unwrap()).unwrap().remove(0)
}
