//! Intermediate-CA mode under a root made by `openssl` (an outside tool standing in for
//! the organisation's PKI): import checks, chains that verify to that root alone, and
//! workers that trust nothing else.

use std::path::Path;
use std::sync::Arc;

use crank_ca::CaDir;
use crank_runtime::demo::hello_routes;
use crank_security_core::{DefaultPolicy, parse_pem_certs};
use crank_tests::upstream::first_cert;
use crank_tests::{TestCa, crank, openssl, openssl_csr, openssl_root, openssl_sign, renew_over_mtls};

use super::{mtls, whoami};

/// Extensions of a proper intermediate CA certificate.
const CA_EXT: &str =
    "basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature";

fn init_csr(ca_dir: &Path) {
    let out = crank(&["ca", "init", "--dir", &ca_dir.display().to_string(), "--csr"]).unwrap();
    assert!(out.contains("intermediate.csr"), "{out}");
}

fn import(ca_dir: &Path, cert: &Path, chain: &Path) -> anyhow::Result<String> {
    crank(&[
        "ca",
        "import",
        "--dir",
        &ca_dir.display().to_string(),
        "--cert",
        &cert.display().to_string(),
        "--chain",
        &chain.display().to_string(),
    ])
}

#[tokio::test]
async fn leaves_under_an_openssl_root_verify_to_it_alone_and_workers_talk_mtls() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let root_pem = openssl_root(d, "enterprise", None);
    let ca_dir = d.join("ca");
    init_csr(&ca_dir);
    let csr = ca_dir.join("intermediate.csr");
    let cert = openssl_sign(d, &csr, "enterprise", CA_EXT, "intermediate.pem").unwrap();
    let out = import(&ca_dir, &cert, &root_pem).unwrap();
    assert!(out.contains("installed"), "{out}");
    // The trust anchor and rollover see the enterprise root.
    let dir = CaDir::new(&ca_dir);
    let root = first_cert(&root_pem);
    assert_eq!(dir.root_der().unwrap(), root);
    let err = crank(&["ca", "rollover", "prepare", "--dir", &ca_dir.display().to_string()]).unwrap_err();
    assert!(err.to_string().contains("intermediate under an external root"), "{err}");

    let ca = TestCa::serve_dir(tmp, dir, Arc::new(DefaultPolicy::default()), None).await;
    // The published bundle: the enterprise root, and the intermediate through which alone
    // this trust domain's peers are accepted.
    let intermediate = first_cert(&cert);
    let published = vec![root.clone(), intermediate.clone()];
    assert_eq!(parse_pem_certs("bundle", ca.ca.trust_bundle_pem().as_bytes()).unwrap(), published);
    let hello = ca.worker("hello-world", hello_routes()).await;
    let caller = ca.bootstrap("caller").await;
    // What a worker keeps: the leaf and the intermediate, and the enterprise root with the
    // intermediate it must come through.
    assert_eq!(caller.chain().len(), 2);
    assert_eq!(caller.ca(), published.as_slice());
    assert_eq!(caller.chain()[1], intermediate);

    // openssl, trusting only the enterprise root, with the intermediate as untrusted.
    let wdir = ca.tmp.path().join("workers/caller");
    let leaf_pem = wdir.join("leaf.pem");
    std::fs::write(&leaf_pem, crank_security_core::cert_pem(&caller.chain()[0])).unwrap();
    let verified = openssl(
        &wdir,
        &[
            "verify",
            "-CAfile",
            &root_pem.display().to_string(),
            "-untrusted",
            &ca_dir.join("intermediate.crt").display().to_string(),
            "-purpose",
            "sslclient",
            "leaf.pem",
        ],
    )
    .unwrap();
    assert!(verified.contains("leaf.pem: OK"), "{verified}");

    // Two workers over mTLS, the client trusting only the openssl root: both sides
    // present leaf + intermediate.
    let client = mtls(&caller, std::slice::from_ref(&root));
    let who = whoami(&client, &hello).await;
    assert_eq!(who["caller_spiffe_id"], "spiffe://crank.local/worker/caller");

    // Renewal over mTLS: the CA verifies the presented chain to the enterprise root.
    let renewed = renew_over_mtls(&ca, &caller).await;
    assert_ne!(renewed.metadata().serial, caller.metadata().serial);
    assert_eq!(renewed.chain().len(), 2);

    // The CRL is signed by the intermediate and verifies through the worker's chain.
    let crl = crank_tests::ca_client(vec![ca.url()], &caller).crl().await.unwrap();
    crank_runtime::worker::verify_crl(&crl, std::slice::from_ref(&root), &caller.chain()[1..]).unwrap();
    crank_runtime::worker::verify_crl(&crl, caller.ca(), &[]).unwrap();
    let err = crank_runtime::worker::verify_crl(&crl, std::slice::from_ref(&root), &[]).unwrap_err();
    assert!(err.contains("neither a trusted root"), "{err}");

    // Another CA under the same enterprise root mints the caller's identity with the
    // caller's serial: its chain verifies to the enterprise root, but it does not come
    // through the intermediate this trust domain publishes, so the handshake refuses it:
    // at a worker, and at the CA.
    let rogue_csr = openssl_csr(ca.tmp.path(), "rogue", "/CN=Rogue CA/O=Example Enterprise");
    let rogue = openssl_sign(ca.tmp.path(), &rogue_csr, "enterprise", CA_EXT, "rogue.pem").unwrap();
    let rogue_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca.tmp.path().join("rogue.key")).unwrap()).unwrap();
    let rogue_issuer = rcgen::Issuer::from_ca_cert_der(&first_cert(&rogue), rogue_key).unwrap();
    let mut forged = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    forged.serial_number =
        Some(rcgen::SerialNumber::from_slice(&hex::decode(caller.metadata().serial.replace(':', "")).unwrap()));
    forged.distinguished_name.push(rcgen::DnType::CommonName, "caller");
    forged.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    forged.subject_alt_names = vec![rcgen::SanType::URI("spiffe://crank.local/worker/caller".try_into().unwrap())];
    let forged_key = rcgen::KeyPair::generate().unwrap();
    let forged = forged.signed_by(&forged_key, &rogue_issuer).unwrap();
    let chain = format!("{}{}", forged.pem(), std::fs::read_to_string(&rogue).unwrap());
    let bundle = crank_security_core::CertificateBundle::from_pem(
        chain.as_bytes(),
        forged_key.serialize_pem().as_bytes(),
        &std::fs::read(&root_pem).unwrap(),
    )
    .unwrap();
    bundle.validate(std::time::SystemTime::now()).unwrap();
    let err = mtls(&bundle, std::slice::from_ref(&root))
        .get(format!("https://127.0.0.1:{}/whoami", hello.addr().port()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "the forged client was served: {err}");
    let client = crank_tests::ca_client(vec![ca.url()], &bundle);
    let key = crank_security_core::generate_key(crank_security_core::KeyType::EcdsaP256).unwrap();
    let worker = crank_security_core::WorkerId::new("caller").unwrap();
    let err = crank_security_core::CertificateProvider::renew(
        &client,
        crank_security_core::RenewRequest {
            csr_pem: crank_security_core::build_csr(&key, &worker, &["caller".into()]).unwrap(),
            worker_id: "caller".into(),
            current_serial: caller.metadata().serial.clone(),
            current_fingerprint: None,
            correlation_id: crank_security_core::CorrelationId::new(),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, crank_security_core::ProviderError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains("ledger"), "the CA got past the handshake: {err}");
    hello.shutdown().await.unwrap();
}

#[tokio::test]
async fn import_refuses_what_cannot_issue_and_accepts_a_deeper_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let root = openssl_root(d, "enterprise", None);
    let strict = openssl_root(d, "strict", Some(0));
    let stranger = openssl_root(d, "stranger", None);
    let ca_dir = d.join("ca");

    let no_csr = import(&ca_dir, &root, &root).unwrap_err();
    assert!(no_csr.to_string().contains("crank ca init --dir"), "{no_csr}");
    init_csr(&ca_dir);
    let csr = ca_dir.join("intermediate.csr");
    let other_dir = d.join("other");
    init_csr(&other_dir);

    let not_ca = "basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature";
    let no_cert_sign = "basicConstraints=critical,CA:true\nkeyUsage=critical,cRLSign,digitalSignature";
    let cases = [
        ("not a CA", openssl_sign(d, &csr, "enterprise", not_ca, "not-ca.pem").unwrap(), &root, "not a CA certificate"),
        (
            "key mismatch",
            openssl_sign(d, &other_dir.join("intermediate.csr"), "enterprise", CA_EXT, "other.pem").unwrap(),
            &root,
            "is for another key",
        ),
        (
            "root path length 0",
            openssl_sign(d, &csr, "strict", CA_EXT, "under-strict.pem").unwrap(),
            &strict,
            "pathLenConstraint 0",
        ),
        (
            "no keyCertSign",
            openssl_sign(d, &csr, "enterprise", no_cert_sign, "no-sign.pem").unwrap(),
            &root,
            "lacks keyCertSign",
        ),
        (
            "wrong root",
            openssl_sign(d, &csr, "enterprise", CA_EXT, "good.pem").unwrap(),
            &stranger,
            "does not reach a root",
        ),
    ];
    for (name, cert, chain, expected) in cases {
        let err = import(&ca_dir, &cert, chain).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
        assert!(
            !ca_dir.join("intermediate.crt").exists() && !ca_dir.join("server.crt").exists(),
            "{name}: wrote files"
        );
    }
    let no_token = crank(&["token", "create", "--dir", &ca_dir.display().to_string(), "--worker-id", "w"]).unwrap_err();
    assert!(no_token.to_string().contains("crank ca import"), "{no_token}");

    // root -> policy CA (pathlen 1) -> this CA: the chain file holds both.
    let policy_csr = openssl_csr(d, "policy", "/CN=Policy CA/O=Example Enterprise");
    let policy_ext = "basicConstraints=critical,CA:true,pathlen:1\nkeyUsage=critical,keyCertSign,cRLSign";
    let policy = openssl_sign(d, &policy_csr, "enterprise", policy_ext, "policy.pem").unwrap();
    let ours = openssl_sign(d, &csr, "policy", CA_EXT, "deep.pem").unwrap();
    let chain = d.join("chain.pem");
    std::fs::write(&chain, [std::fs::read(&policy).unwrap(), std::fs::read(&root).unwrap()].concat()).unwrap();
    let out = import(&ca_dir, &ours, &chain).unwrap();
    assert!(out.contains("1 intermediate(s) above it"), "{out}");
    let server_chain = parse_pem_certs("server", &std::fs::read(ca_dir.join("server.crt")).unwrap()).unwrap();
    assert_eq!(server_chain.len(), 4, "server, this CA, policy CA, root");
    // Another root needs --switch-root.
    let err = import(&ca_dir, &openssl_sign(d, &csr, "stranger", CA_EXT, "s.pem").unwrap(), &stranger).unwrap_err();
    assert!(err.to_string().contains("--switch-root"), "{err}");
}
