//! Durable CA state and highly available replicas: `crank ca serve` processes on
//! PostgreSQL (a server of the test's own) and on the embedded store, killed with
//! SIGKILL mid-stream.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crank_ca::store::{CaStore, PostgresStore, SqliteStore};
use crank_ca::{CaDir, InitOptions, init_ca};
use crank_runtime::worker::CaClient;
use crank_security_core::{
    CertMetadata, CertificateProvider, CorrelationId, IssueRequest, IssuedCertificate, KeyType, ProviderError,
    TrustDomain, WorkerId, build_csr, generate_key, parse_pem_certs,
};
use crank_tests::{PgServer, eventually, serve_ca_process, serve_ca_process_with};
use tokio::sync::Mutex;

fn new_ca() -> (tempfile::TempDir, CaDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CaDir::new(tmp.path().join("ca"));
    init_ca(&dir, &InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false }).unwrap();
    (tmp, dir)
}

/// A copy of the CA directory `dir`, as another replica's, at `<tmp>/<name>`.
fn copy_of(tmp: &tempfile::TempDir, dir: &CaDir, name: &str) -> CaDir {
    let to = tmp.path().join(name);
    let ok = std::process::Command::new("cp").arg("-a").arg(&dir.dir).arg(&to).status().unwrap();
    assert!(ok.success());
    CaDir::new(to)
}

/// What a store writer can list for `key`: a certificate with the key purpose `oid`,
/// issued by a CA of their own (PEM).
fn certified_by_own_ca(key: &rcgen::KeyPair, oid: &[u64]) -> String {
    let mut own_ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    own_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let own_issuer = rcgen::Issuer::new(own_ca, rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap());
    let mut forged = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    forged.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(oid.to_vec())];
    forged.signed_by(key, &own_issuer).unwrap().pem()
}

fn url(addr: SocketAddr) -> url::Url {
    format!("https://{addr}").parse().unwrap()
}

/// One worker's first contact: a join token, a fresh key and CSR.
struct Bootstrap {
    token: String,
    csr: String,
}

fn bootstrap_request(dir: &CaDir, worker: &str) -> Bootstrap {
    let id = WorkerId::new(worker).unwrap();
    let token = crank_ca::create_token(dir, &id, Duration::from_secs(600), vec![]).unwrap();
    let key = generate_key(KeyType::default()).unwrap();
    Bootstrap { token, csr: build_csr(&key, &id, &[worker.to_owned()]).unwrap() }
}

async fn submit(client: &CaClient, b: &Bootstrap) -> Result<IssuedCertificate, ProviderError> {
    client
        .issue(IssueRequest { csr_pem: b.csr.clone(), token: b.token.clone(), correlation_id: CorrelationId::new() })
        .await
}

/// Submits `b` until it succeeds (retrying only what a worker retries: unavailability,
/// with the same token and CSR), for up to 90 s; each refusal is pushed to `refusals`.
async fn submit_until_issued(client: &CaClient, b: &Bootstrap, refusals: &Mutex<Vec<String>>) -> IssuedCertificate {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match submit(client, b).await {
            Ok(issued) => return issued,
            Err(ProviderError::Unavailable(e)) if Instant::now() < deadline => {
                refusals.lock().await.push(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("bootstrap failed for good: {e}"),
        }
    }
}

/// What a stream of bootstraps got: per certificate received its serial, fingerprint and
/// join token id; and the refusals met on the way.
struct Stream {
    received: Vec<(String, String, String)>,
    refusals: Vec<String>,
}

/// Four workers bootstrap `total` times in all through two replicas (half list `a1`
/// first, half `a2`: both carry the stream). `fault` runs once, when a third of the
/// bootstraps have started and the other workers have requests in flight.
async fn bootstrap_stream(
    dir: &CaDir,
    (a1, a2): (SocketAddr, SocketAddr),
    total: usize,
    fault: impl FnOnce() + Send + 'static,
) -> Stream {
    let fp = dir.root_fingerprint().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let fault = Arc::new(std::sync::Mutex::new(Some(fault)));
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let urls = if t % 2 == 0 { vec![url(a1), url(a2)] } else { vec![url(a2), url(a1)] };
        let client = CaClient::pinned(urls, &fp, &TrustDomain::default()).unwrap();
        let (dir, next, received, refusals, fault) =
            (dir.clone(), next.clone(), received.clone(), refusals.clone(), fault.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return;
                }
                if i == total / 3 {
                    let fault = fault.lock().unwrap().take();
                    fault.expect("the fault runs once")();
                    eprintln!("fault at bootstrap {i}");
                }
                let b = bootstrap_request(&dir, &format!("stream-{i}"));
                let issued = submit_until_issued(&client, &b, &refusals).await;
                let (serial, fingerprint) = serial_and_worker(&issued);
                let jti = crank_security_core::peek_token_claims(&b.token).unwrap().jti;
                received.lock().await.push((serial, fingerprint, jti));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let received = std::mem::take(&mut *received.lock().await);
    let refusals = std::mem::take(&mut *refusals.lock().await);
    Stream { received, refusals }
}

fn serial_and_worker(issued: &IssuedCertificate) -> (String, String) {
    let der = parse_pem_certs("certificate", issued.certificate_chain.as_bytes()).unwrap().remove(0);
    let m = CertMetadata::from_der(&der).unwrap();
    assert_eq!(m.serial, issued.serial);
    (m.serial, m.fingerprint_sha256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_lose_nothing_when_one_is_killed_mid_stream() {
    let pg = PgServer::start();
    let db = pg.create_db("ha");
    let (_tmp, dir) = new_ca();
    let (r1, a1) = serve_ca_process(&dir.dir, &["--store", &db, "--replica", "r1"]).await.unwrap();
    let (_r2, a2) = serve_ca_process(&dir.dir, &["--store", &db, "--replica", "r2"]).await.unwrap();
    let total = 120;
    let r1 = Arc::new(std::sync::Mutex::new(Some(r1)));
    let killed = r1.clone();
    // SIGKILL replica r1 while the other workers have requests in flight.
    let Stream { received, .. } =
        bootstrap_stream(&dir, (a1, a2), total, move || drop(killed.lock().unwrap().take())).await;
    assert!(r1.lock().unwrap().is_none(), "r1 was killed during the stream");
    assert_eq!(received.len(), total, "every bootstrap eventually succeeded");
    let unique: HashSet<&String> = received.iter().map(|(s, _, _)| s).collect();
    assert_eq!(unique.len(), total, "no serial was handed out twice");
    let ledger = PostgresStore::connect(&db).await.unwrap();
    let mut replicas = HashSet::new();
    for (serial, fingerprint, _) in &received {
        let row = ledger.certificate(serial).await.unwrap().unwrap_or_else(|| panic!("{serial} not in the ledger"));
        assert_eq!(&row.fingerprint, fingerprint);
        replicas.insert(row.issued_by);
    }
    assert!(replicas.contains("r1") && replicas.contains("r2"), "both replicas issued: {replicas:?}");
    // Rows without a receiver are possible (an answer lost in the kill); never fewer.
    assert!(ledger.certificate_count().await.unwrap() >= total as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_tokens_and_revocations_and_a_retry_gets_the_same_certificate() {
    let pg = PgServer::start();
    let db = pg.create_db("shared");
    let (tmp, dir) = new_ca();
    let (_r1, a1) = serve_ca_process(&dir.dir, &["--store", &db, "--replica", "r1"]).await.unwrap();
    let (_r2, a2) = serve_ca_process(&dir.dir, &["--store", &db, "--replica", "r2"]).await.unwrap();
    let fp = dir.root_fingerprint().unwrap();
    let at1 = CaClient::pinned(vec![url(a1)], &fp, &TrustDomain::default()).unwrap();
    let at2 = CaClient::pinned(vec![url(a2)], &fp, &TrustDomain::default()).unwrap();

    let b = bootstrap_request(&dir, "shared-1");
    let first = submit(&at1, &b).await.unwrap();
    // The same request retried (its answer lost, say) at the other replica: same certificate.
    let again = submit(&at2, &b).await.unwrap();
    assert_eq!(again.serial, first.serial);
    // The token with any other request: refused at both replicas.
    let other = Bootstrap { token: b.token.clone(), csr: bootstrap_request(&dir, "shared-1").csr };
    for client in [&at1, &at2] {
        match submit(client, &other).await {
            Err(ProviderError::Unauthorized(m)) => assert!(m.contains("already used"), "{m}"),
            other => panic!("a used token must be refused: {other:?}"),
        }
    }

    // A revocation made at r1 is in r2's CRL (and r1's).
    let admin_dir = tmp.path().join("admin");
    let (ca_dir, admin) = (dir.dir.to_str().unwrap(), admin_dir.to_str().unwrap());
    crank_tests::crank(&["ca", "admin-cert", "--name", "ops", "--store", &db, "--dir", ca_dir, "--out", admin])
        .unwrap();
    let url1 = url(a1).to_string();
    let revoke =
        ["revoke", "--serial", &first.serial, "--reason", "keyCompromise", "--ca-url", &url1, "--admin-dir", admin];
    let out = crank_tests::crank(&revoke).unwrap();
    assert!(out.contains(&first.serial));
    let roots = parse_pem_certs("root", dir.trust_bundle_pem().unwrap().as_bytes()).unwrap();
    for client in [&at1, &at2] {
        let info = crank_runtime::worker::verify_crl(&client.crl().await.unwrap(), &roots, &[]).unwrap();
        assert!(info.serials.contains(&first.serial), "revocation missing from a replica's CRL");
    }
    // And the revoked certificate's request no longer replays.
    assert!(submit(&at2, &b).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_the_ca_answers_503_reports_degraded_and_recovers_by_itself() {
    let pg = PgServer::start();
    let db = pg.create_db("outage");
    let (_tmp, dir) = new_ca();
    let (_ca, addr) = serve_ca_process(&dir.dir, &["--store", &db]).await.unwrap();
    let fp = dir.root_fingerprint().unwrap();
    let client = CaClient::pinned(vec![url(addr)], &fp, &TrustDomain::default()).unwrap();
    let http = super::no_client_cert(&parse_pem_certs("root", dir.trust_bundle_pem().unwrap().as_bytes()).unwrap());
    let health = |http: reqwest::Client| async move {
        let r = http.get(format!("https://{addr}/health")).send().await.unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    submit(&client, &bootstrap_request(&dir, "before")).await.unwrap();
    assert_eq!(health(http.clone()).await.0, 200);

    pg.stop();
    let b = bootstrap_request(&dir, "during");
    match submit(&client, &b).await {
        Err(ProviderError::Unavailable(m)) => assert!(m.contains("PostgreSQL"), "503 should say why: {m}"),
        other => panic!("issuance without the database must be a 503: {other:?}"),
    }
    let (status, body) = health(http.clone()).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["store"], "postgres");

    pg.start_again();
    eventually("the CA to recover after the database came back", Duration::from_secs(30), || async {
        health(http.clone()).await.0 == 200
    })
    .await;
    let issued = submit(&client, &b).await.expect("the same bootstrap succeeds once the database is back");
    let ledger = PostgresStore::connect(&db).await.unwrap();
    assert!(ledger.certificate(&issued.serial).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_embedded_store_ca_mid_issuance_loses_no_handed_out_certificate() {
    let (_tmp, dir) = new_ca();
    let (ca, addr) = serve_ca_process(&dir.dir, &[]).await.unwrap();
    let fp = dir.root_fingerprint().unwrap();
    let ca = Arc::new(std::sync::Mutex::new(Some(ca)));
    let received = Arc::new(Mutex::new(Vec::<(String, String, Bootstrap)>::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = CaClient::pinned(vec![url(addr)], &fp, &TrustDomain::default()).unwrap();
        let (dir, received, started, ca) = (dir.clone(), received.clone(), started.clone(), ca.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = started.fetch_add(1, Ordering::SeqCst);
                if i == 60 {
                    drop(ca.lock().unwrap().take()); // SIGKILL with requests in flight
                }
                let b = bootstrap_request(&dir, &format!("crash-{i}"));
                match submit(&client, &b).await {
                    Ok(issued) => {
                        let (serial, fp) = serial_and_worker(&issued);
                        received.lock().await.push((serial, fp, b));
                    }
                    Err(ProviderError::Unavailable(_)) => return, // the CA is gone
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let received = std::mem::take(&mut *received.lock().await);
    assert!(received.len() >= 50, "the stream ran before the kill: {}", received.len());

    // After a restart the ledger holds every certificate any client received.
    let (_ca2, addr2) = serve_ca_process(&dir.dir, &[]).await.unwrap();
    let ledger = SqliteStore::open(&dir.store()).unwrap();
    for (serial, fingerprint, _) in &received {
        let row = ledger.certificate(serial).await.unwrap().unwrap_or_else(|| panic!("{serial} lost in the crash"));
        assert_eq!(&row.fingerprint, fingerprint);
    }
    // No used token works again (for any other request).
    let client = CaClient::pinned(vec![url(addr2)], &fp, &TrustDomain::default()).unwrap();
    for (_, _, b) in received.iter().take(20) {
        let other = Bootstrap { token: b.token.clone(), csr: bootstrap_request(&dir, "x").csr };
        match submit(&client, &other).await {
            Err(ProviderError::Unauthorized(m)) => assert!(m.contains("already used"), "{m}"),
            other => panic!("a used token worked again after the crash: {other:?}"),
        }
    }
}

/// Two replicas on PostgreSQL; the database server is restarted (stopped as by a crash,
/// `-m immediate`, then started again) while four workers bootstrap through both. Every
/// bootstrap in flight either completes or is refused with a 503 that names the store and
/// retried (same token, same CSR) until it completes. Afterwards every certificate a
/// worker received is in the ledger with its fingerprint, the ledger holds exactly one
/// certificate per join token (a commit whose answer was lost is answered again, not
/// signed again), no serial appears twice, and the replicas logged the failures as
/// `CSR_FAILED` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_issuance_loses_no_row_and_repeats_no_serial() {
    let pg = Arc::new(PgServer::start());
    let db = pg.create_db("restart");
    let (tmp, dir) = new_ca();
    let logging = |name: &str| crank_tests::ProcessOptions {
        env: vec![("RUST_LOG".into(), "info".into()), ("CRANK_LOG_FORMAT".into(), "json".into())],
        stderr: Some(tmp.path().join(format!("{name}.log"))),
        ..Default::default()
    };
    let serve = |name: &'static str| {
        let (dir, db, opts) = (dir.dir.clone(), db.clone(), logging(name));
        async move { serve_ca_process_with(&dir, &["--store", &db, "--replica", name], &opts).await.unwrap() }
    };
    let (_r1, a1) = serve("r1").await;
    let (_r2, a2) = serve("r2").await;
    let total = 90;
    // Restart the database (a crash, 2 s down) while the workers have requests in flight.
    let restarted = pg.clone();
    let restart = move || {
        tokio::task::spawn_blocking(move || {
            restarted.stop();
            std::thread::sleep(Duration::from_secs(2));
            restarted.start_again();
        });
    };
    let Stream { received, refusals } = bootstrap_stream(&dir, (a1, a2), total, restart).await;
    assert!(!refusals.is_empty(), "the restart hit requests in flight");
    eprintln!("{} refusals while PostgreSQL restarted, e.g. {}", refusals.len(), refusals[0]);
    assert!(
        refusals.iter().all(|m| m.contains("PostgreSQL") || m.contains("postgres") || m.contains("store")),
        "a refusal names the store: {refusals:?}"
    );
    assert_eq!(received.len(), total, "every bootstrap completed");
    let unique: HashSet<&String> = received.iter().map(|(s, _, _)| s).collect();
    assert_eq!(unique.len(), total, "no serial was handed out twice");
    let ledger = PostgresStore::connect(&db).await.unwrap();
    for (serial, fingerprint, jti) in &received {
        let row = ledger.certificate(serial).await.unwrap().unwrap_or_else(|| panic!("{serial} not in the ledger"));
        assert_eq!(&row.fingerprint, fingerprint);
        let (_, by_token) = ledger.issued_with_token(jti).await.unwrap().expect("the token's use is recorded");
        assert_eq!(&by_token.serial, serial, "token {jti} is recorded with the certificate its worker received");
    }
    assert_eq!(ledger.certificate_count().await.unwrap(), total as u64, "one certificate per join token");
    let failures: usize = ["r1", "r2"]
        .iter()
        .map(|r| {
            let log = std::fs::read_to_string(tmp.path().join(format!("{r}.log"))).unwrap_or_default();
            crank_tests::logged_events(&log).iter().filter(|e| e["event"] == "CSR_FAILED").count()
        })
        .sum();
    assert!(failures > 0, "the replicas logged the failed requests as CSR_FAILED events");
}

/// The join-token key rotates by age on the real binaries, each replica with its own
/// copy of the CA directory (as images mount it). r1 rotates every 3 s; r2 keeps its
/// key. A token of r1's new key is accepted at r2, which finds the key's certificate in
/// the store; a token of r1's old key is still accepted at r1 after the rotation. Someone
/// who can write the store cannot mint tokens: a key listed there with a certificate of
/// their own CA is refused, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_key_rotates_by_age_and_every_replica_accepts_the_new_one() {
    let pg = PgServer::start();
    let db = pg.create_db("token_keys");
    let (tmp, dir) = new_ca();
    let (dir1, dir2) = (copy_of(&tmp, &dir, "r1"), copy_of(&tmp, &dir, "r2"));
    let first = crank_ca::token_key::read(&dir1).unwrap();
    let (_r1, a1) =
        serve_ca_process(&dir1.dir, &["--store", &db, "--replica", "r1", "--token-key-max-age", "3s"]).await.unwrap();
    let (_r2, a2) = serve_ca_process(&dir2.dir, &["--store", &db, "--replica", "r2"]).await.unwrap();
    let fp = dir.root_fingerprint().unwrap();
    let at1 = CaClient::pinned(vec![url(a1)], &fp, &TrustDomain::default()).unwrap();
    let at2 = CaClient::pinned(vec![url(a2)], &fp, &TrustDomain::default()).unwrap();

    let old = bootstrap_request(&dir1, "before-rotation");
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    assert_eq!(kid(&old.token), first.kid);
    let mut rotated = first.kid.clone();
    eventually("r1 rotates its token key", Duration::from_secs(30), || {
        rotated = crank_ca::token_key::read(&dir1).map(|k| k.kid).unwrap_or_default();
        let changed = !rotated.is_empty() && rotated != first.kid;
        async move { changed }
    })
    .await;
    let new = bootstrap_request(&dir1, "after-rotation");
    assert_ne!(kid(&new.token), first.kid);
    let issued = submit(&at2, &new).await.expect("r2 accepts a token of r1's new key");
    let der = parse_pem_certs("certificate", issued.certificate_chain.as_bytes()).unwrap().remove(0);
    assert_eq!(CertMetadata::from_der(&der).unwrap().spiffe().unwrap().worker_id.as_str(), "after-rotation");
    submit(&at1, &old).await.expect("r1 still accepts a token of the key it retired");
    // r2's own key was not rotated.
    assert_eq!(crank_ca::token_key::read(&dir2).unwrap().kid, first.kid);

    // A store writer lists a key of their own, certified by a CA of their own.
    let evil = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let evil_kid = crank_ca::key_id(&rcgen::PublicKeyData::subject_public_key_info(&evil));
    let forged = certified_by_own_ca(&evil, &crank_ca::TOKEN_KEY_PURPOSE_OID);
    let store = PostgresStore::connect(&db).await.unwrap();
    store.publish_token_key(&evil_kid, &forged).await.unwrap();
    let minted = crank_ca::TokenAuthority::new(&evil, TrustDomain::default(), fp.clone())
        .unwrap()
        .create(&WorkerId::new("minted").unwrap(), Duration::from_secs(60), vec![])
        .unwrap();
    let key = generate_key(KeyType::default()).unwrap();
    let b = Bootstrap { token: minted, csr: build_csr(&key, &WorkerId::new("minted").unwrap(), &[]).unwrap() };
    for client in [&at1, &at2] {
        match submit(client, &b).await {
            Err(ProviderError::Unauthorized(m)) => {
                assert!(m.contains(&evil_kid) && m.contains("did not certify"), "{m}")
            }
            other => panic!("a token of a key the CA did not certify must be refused: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_the_jwt_keys_any_replica_certified() {
    use crank_ca::key_rotation::{KeyPurpose, read};
    let pg = PgServer::start();
    let db = pg.create_db("jwt_keys");
    let (tmp, dir) = new_ca();
    let (dir1, dir2) = (copy_of(&tmp, &dir, "r1"), copy_of(&tmp, &dir, "r2"));
    let first = read(&dir1, KeyPurpose::JwtSvid).unwrap();
    // r1 replaces its JWT-SVID key every 8 s; r2 every 40 s, so it reads the published
    // keys every 2.5 s.
    let (_r1, a1) =
        serve_ca_process(&dir1.dir, &["--store", &db, "--replica", "r1", "--jwt-key-max-age", "8s"]).await.unwrap();
    let (_r2, a2) =
        serve_ca_process(&dir2.dir, &["--store", &db, "--replica", "r2", "--jwt-key-max-age", "40s"]).await.unwrap();
    let fp = dir.root_fingerprint().unwrap();
    let at1 = CaClient::pinned(vec![url(a1)], &fp, &TrustDomain::default()).unwrap();
    let at2 = CaClient::pinned(vec![url(a2)], &fp, &TrustDomain::default()).unwrap();
    let kids = |jwks: serde_json::Value| -> Vec<String> {
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
    };

    // A store writer lists two keys: one certified by a CA of their own with the JWT-SVID
    // key purpose, and this CA's join-token key certificate (the wrong purpose).
    let evil = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let evil_kid = crank_ca::key_id(&rcgen::PublicKeyData::subject_public_key_info(&evil));
    let forged = certified_by_own_ca(&evil, &crank_ca::jwt_svid::JWT_KEY_PURPOSE_OID);
    let token_key = crank_ca::token_key::read(&dir1).unwrap();
    let store = PostgresStore::connect(&db).await.unwrap();
    store.publish_jwt_key(&evil_kid, &forged).await.unwrap();
    store.publish_jwt_key(&token_key.kid, &token_key.certificate_pem).await.unwrap();

    // r1 rotates; r2 then serves r1's new key beside its own, and r1's first one.
    let mut rotated = String::new();
    eventually("r1 rotates its JWT-SVID key", Duration::from_secs(40), || {
        rotated = read(&dir1, KeyPurpose::JwtSvid).map(|k| k.kid).unwrap_or_default();
        let changed = !rotated.is_empty() && rotated != first.kid;
        async move { changed }
    })
    .await;
    eventually("r2 serves r1's new JWT-SVID key", Duration::from_secs(20), || {
        let (at2, rotated) = (at2.clone(), rotated.clone());
        async move { at2.jwt_bundle().await.is_ok_and(|b| kids(b).contains(&rotated)) }
    })
    .await;
    let at_r2 = kids(at2.jwt_bundle().await.unwrap());
    assert!(at_r2.contains(&first.kid), "r2 dropped the first key: {at_r2:?}");
    assert_eq!(read(&dir2, KeyPurpose::JwtSvid).unwrap().kid, first.kid, "r2 keeps its own key");
    // Both replicas read the store after the forged rows were written (r2 served a key
    // published after them; r1 reads every second), and serve neither.
    for (name, client) in [("r1", &at1), ("r2", &at2)] {
        let served = kids(client.jwt_bundle().await.unwrap());
        assert!(served.contains(&rotated), "{name}: {served:?}");
        for refused in [&evil_kid, &token_key.kid] {
            assert!(!served.contains(refused), "{name} serves the key {refused} it must refuse: {served:?}");
        }
    }
}
