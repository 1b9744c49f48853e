//! One storage test suite, run against both backends: the embedded SQLite store and
//! PostgreSQL (a server of the test's own on 127.0.0.1).

use std::collections::HashSet;
use std::sync::Arc;

use crank_ca::store::{
    self, CaStore, CertStatus, CertificateRecord, PostgresStore, Revocation, RevocationReason, RevokeTarget,
    SqliteStore, StoreError, TokenUse,
};
use crank_tests::PgServer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn at(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

fn rec(serial: &str, worker: &str, not_after: OffsetDateTime) -> CertificateRecord {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    CertificateRecord {
        serial: serial.into(),
        worker_id: worker.into(),
        spiffe_id: format!("spiffe://crank.local/worker/{worker}"),
        sans: vec![format!("spiffe://crank.local/worker/{worker}"), "svc.example.internal".into()],
        capabilities: vec!["san:svc.example.internal".into()],
        not_before: at(now - time::Duration::minutes(1)),
        not_after: at(not_after.replace_nanosecond(0).unwrap()),
        fingerprint: format!("fp-{serial}"),
        issued_by: "replica-a".into(),
        kind: crank_ca::store::CertKind::Issue,
        correlation_id: format!("req_{serial}"),
        issued_at: at(now),
        status: crank_ca::store::CertStatus::Valid,
        pem: format!("-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n"),
    }
}

fn tok(jti: &str, worker: &str) -> TokenUse {
    TokenUse {
        jti: jti.into(),
        worker_id: worker.into(),
        expires_at: at(OffsetDateTime::now_utc()),
        request_sha256: format!("sha-of-{jti}"),
    }
}

fn revocation(target: RevokeTarget, reason: RevocationReason) -> Revocation {
    Revocation { target, reason, revoked_by: "admin/alice".into(), at: OffsetDateTime::now_utc() }
}

/// The behaviour every backend must have.
async fn suite(s: Arc<dyn CaStore>) {
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);

    // Issuance: the row round-trips field for field; the token is consumed with it.
    let r1 = rec("01:aa", "w1", now + hour);
    s.record_issuance(Some(tok("t1", "w1")), r1.clone()).await.unwrap();
    assert_eq!(s.certificate("01:aa").await.unwrap().unwrap(), r1);
    assert!(s.token_used("t1").await.unwrap());
    assert!(!s.token_used("t2").await.unwrap());
    assert!(s.certificate("ff").await.unwrap().is_none());
    // The token remembers its request and certificate (for answering a retry).
    let (hash, cert) = s.issued_with_token("t1").await.unwrap().unwrap();
    assert_eq!((hash.as_str(), &cert), ("sha-of-t1", &r1));
    assert!(s.issued_with_token("t2").await.unwrap().is_none());

    // A used token is refused and leaves nothing behind; a duplicate serial is refused.
    let e = s.record_issuance(Some(tok("t1", "w1")), rec("02:bb", "w1", now + hour)).await.unwrap_err();
    assert!(matches!(e, StoreError::TokenUsed(ref j) if j == "t1"), "{e}");
    assert!(s.certificate("02:bb").await.unwrap().is_none());
    let e = s.record_issuance(Some(tok("t9", "w1")), rec("01:aa", "w1", now + hour)).await.unwrap_err();
    assert!(matches!(e, StoreError::DuplicateSerial(_)), "{e}");
    assert!(!s.token_used("t9").await.unwrap(), "the refused issuance must not consume its token");

    // More certificates: w1 has a second live one and an expired one; w2 has one.
    s.record_issuance(None, rec("02:bb", "w1", now + hour)).await.unwrap();
    s.record_issuance(None, rec("03:cc", "w1", now - time::Duration::minutes(5))).await.unwrap();
    s.record_issuance(None, rec("04:dd", "w2", now + hour)).await.unwrap();
    assert_eq!(s.certificate_count().await.unwrap(), 4);
    let latest = s.latest_expiry_issued_before(now + hour).await.unwrap().unwrap();
    assert_eq!(latest.unix_timestamp(), (now + hour).unix_timestamp());
    assert!(s.latest_expiry_issued_before(now - hour).await.unwrap().is_none());

    // Revocation of one serial: recorded, status changes, generation moves; idempotent.
    let g0 = s.revocation_generation().await.unwrap();
    let out = s.revoke(&revocation(RevokeTarget::Serial("04:dd".into()), RevocationReason::KeyCompromise)).await;
    let out = out.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].serial.as_str(), out[0].worker_id.as_str()), ("04:dd", "w2"));
    assert_eq!(out[0].reason, RevocationReason::KeyCompromise);
    assert_eq!(out[0].revoked_by, "admin/alice");
    assert_eq!(out[0].not_after, (now + hour).unix_timestamp());
    assert_eq!(s.certificate("04:dd").await.unwrap().unwrap().status, CertStatus::Revoked);
    let g1 = s.revocation_generation().await.unwrap();
    assert!(g1 > g0);
    let again = s.revoke(&revocation(RevokeTarget::Serial("04:dd".into()), RevocationReason::Superseded)).await;
    assert_eq!(again.unwrap(), out, "revoking twice returns the first revocation");

    // Unknown serial / worker without live certificates: NotFound, nothing changes.
    let e = s.revoke(&revocation(RevokeTarget::Serial("77".into()), RevocationReason::Unspecified)).await;
    assert!(matches!(e, Err(StoreError::NotFound(ref m)) if m.contains("77")), "{e:?}");
    let e = s.revoke(&revocation(RevokeTarget::Worker("w2".into()), RevocationReason::Unspecified)).await;
    assert!(matches!(e, Err(StoreError::NotFound(ref m)) if m.contains("w2")), "{e:?}");

    // A renewal retires the certificate it replaces, once, and remembers how.
    let renewal = |prev: &str, hash: &str| store::Renewal { previous_serial: prev.into(), request_sha256: hash.into() };
    let r5 = CertificateRecord { kind: crank_ca::store::CertKind::Renew, ..rec("05:ee", "w1", now + hour) };
    s.record_renewal(renewal("02:bb", "sha-k1"), r5.clone()).await.unwrap();
    assert_eq!(s.certificate("02:bb").await.unwrap().unwrap().status, CertStatus::Superseded);
    assert_eq!(s.renewal_of("02:bb").await.unwrap(), Some(("sha-k1".to_owned(), r5.clone())));
    assert!(s.renewal_of("05:ee").await.unwrap().is_none());
    let e = s.record_renewal(renewal("02:bb", "sha-k2"), rec("06:ff", "w1", now + hour)).await.unwrap_err();
    assert!(matches!(e, StoreError::Superseded(ref x) if x == "02:bb"), "{e}");
    assert!(s.certificate("06:ff").await.unwrap().is_none(), "a refused renewal leaves nothing behind");
    // An administrator that has a worker's name.
    s.record_issuance(
        None,
        CertificateRecord { kind: crank_ca::store::CertKind::Admin, ..rec("07:aa", "w1", now + hour) },
    )
    .await
    .unwrap();

    // Revoking a worker revokes its live certificates (superseded ones too: they still
    // work until they expire), never an administrator's.
    let out = s.revoke(&revocation(RevokeTarget::Worker("w1".into()), RevocationReason::CessationOfOperation)).await;
    let got: HashSet<String> = out.unwrap().into_iter().map(|r| r.serial).collect();
    assert_eq!(got, HashSet::from(["01:aa".to_owned(), "02:bb".to_owned(), "05:ee".to_owned()]));
    assert_eq!(s.certificate("03:cc").await.unwrap().unwrap().status, CertStatus::Valid, "expired ones are left alone");
    assert_eq!(
        s.certificate("07:aa").await.unwrap().unwrap().status,
        CertStatus::Valid,
        "the administrator is not a worker"
    );
    assert!(s.revocation_generation().await.unwrap() > g1);
    let out = s.revoke(&revocation(RevokeTarget::Admin("w1".into()), RevocationReason::AffiliationChanged)).await;
    assert_eq!(out.unwrap().into_iter().map(|r| r.serial).collect::<Vec<_>>(), vec!["07:aa".to_owned()]);
    let e = s.revoke(&revocation(RevokeTarget::Admin("w2".into()), RevocationReason::Unspecified)).await;
    assert!(matches!(e, Err(StoreError::NotFound(ref m)) if m.contains("administrator w2")), "{e:?}");

    // The CRL's view: revoked and unexpired.
    let listed: HashSet<String> = s.revoked_unexpired(now).await.unwrap().into_iter().map(|r| r.serial).collect();
    let expected = ["01:aa", "02:bb", "04:dd", "05:ee", "07:aa"].map(str::to_owned);
    assert_eq!(listed, HashSet::from(expected));
    assert!(s.revoked_unexpired(now + hour + time::Duration::seconds(1)).await.unwrap().is_empty());

    // CRL numbers strictly increase.
    let a = s.next_crl_number().await.unwrap();
    let b = s.next_crl_number().await.unwrap();
    assert!(b > a, "{a} then {b}");
    s.ping().await.unwrap();

    // Concurrency: 200 issuances at once, all recorded; 20 racers for one token, one wins.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.record_issuance(Some(tok(&format!("c{i}"), "wc")), rec(&format!("c0:{i:04x}"), "wc", now + hour)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.certificate_count().await.unwrap(), 206);
    let mut racers = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        racers.push(tokio::spawn(async move {
            s.record_issuance(Some(tok("contended", "wr")), rec(&format!("d0:{i:02x}"), "wr", now + hour)).await
        }));
    }
    let mut wins = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::TokenUsed(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wins, 1, "exactly one issuance may consume a token");
    assert_eq!(s.certificate_count().await.unwrap(), 207);

    // Registration entries: listed oldest first (by time, then as recorded), all or one
    // agent's; unique by worker, agent and selectors (in any order); deleted once.
    let entry = |id: &str, worker: &str, agent: &str, selectors: &[&str], secs: i64| store::RegistrationEntry {
        id: id.into(),
        worker_id: worker.into(),
        selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
        agent_id: agent.into(),
        created_at: at(now.replace_nanosecond(0).unwrap() + time::Duration::seconds(secs)),
        created_by: "alice".into(),
    };
    assert!(s.entries(None).await.unwrap().is_empty());
    let e1 = entry("e-1", "web", "agent-node1", &["unix:gid:10", "unix:uid:1000"], 0);
    let e2 = entry("e-2", "db", "agent-node2", &["unix:uid:999"], 1);
    s.create_entry(&e2).await.unwrap();
    s.create_entry(&e1).await.unwrap();
    assert_eq!(s.entries(None).await.unwrap(), [e1.clone(), e2.clone()], "oldest first");
    assert_eq!(s.entries(Some("agent-node1")).await.unwrap(), std::slice::from_ref(&e1));
    assert_eq!(s.entries(Some("agent-node2")).await.unwrap(), std::slice::from_ref(&e2));
    assert!(s.entries(Some("agent-node3")).await.unwrap().is_empty());
    for dup in [
        entry("e-3", "web", "agent-node1", &["unix:gid:10", "unix:uid:1000"], 2),
        entry("e-4", "web", "agent-node1", &["unix:uid:1000", "unix:gid:10"], 3),
    ] {
        let e = s.create_entry(&dup).await.unwrap_err();
        assert!(matches!(e, StoreError::DuplicateEntry(ref id) if id == "e-1"), "{e}");
        assert!(e.to_string().contains("e-1"), "{e}");
    }
    // The same worker with other selectors, the same worker for another agent: fine.
    let e5 = entry("e-5", "web", "agent-node1", &["unix:uid:1000"], 4);
    let e6 = entry("e-6", "web", "agent-node2", &["unix:gid:10", "unix:uid:1000"], 5);
    s.create_entry(&e5).await.unwrap();
    s.create_entry(&e6).await.unwrap();
    assert_eq!(s.entries(Some("agent-node1")).await.unwrap(), [e1.clone(), e5.clone()]);
    assert_eq!(s.entries(None).await.unwrap(), [e1.clone(), e2.clone(), e5.clone(), e6.clone()]);
    // The lookup the CA makes per request: by agent and worker id, the oldest first.
    assert_eq!(s.entry_for("agent-node1", "web").await.unwrap().as_ref(), Some(&e1));
    assert_eq!(s.entry_for("agent-node2", "web").await.unwrap().as_ref(), Some(&e6));
    assert_eq!(s.entry_for("agent-node2", "db").await.unwrap().as_ref(), Some(&e2));
    assert_eq!(s.entry_for("agent-node1", "db").await.unwrap(), None);
    assert_eq!(s.entry_for("web", "agent-node1").await.unwrap(), None);
    // Racers creating one entry: one is recorded, the others name it.
    let mut racers = Vec::new();
    for i in 0..10 {
        let (s, e) = (s.clone(), entry(&format!("r-{i}"), "cache", "agent-node1", &["unix:uid:7"], 6));
        racers.push(tokio::spawn(async move { s.create_entry(&e).await.map(|()| e.id) }));
    }
    let (mut won, mut named) = (Vec::new(), HashSet::new());
    for r in racers {
        match r.await.unwrap() {
            Ok(id) => won.push(id),
            Err(StoreError::DuplicateEntry(id)) => {
                named.insert(id);
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one of identical entries may be recorded");
    assert!(named.iter().all(|id| *id == won[0]), "{named:?} name the one recorded, {}", won[0]);
    // Deleted once.
    assert!(s.delete_entry(&won[0]).await.unwrap());
    assert!(s.delete_entry("e-5").await.unwrap());
    assert!(!s.delete_entry("e-5").await.unwrap());
    assert!(!s.delete_entry("no-such-entry").await.unwrap());
    assert_eq!(s.entries(None).await.unwrap(), [e1, e2, e6]);
}

#[tokio::test]
async fn sqlite_store_passes_the_suite_and_keeps_state_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.db");
    suite(Arc::new(SqliteStore::open(&path).unwrap())).await;
    let reopened = store::open(Some(&format!("sqlite://{}", path.display())), &path).await.unwrap();
    assert_eq!(reopened.backend(), "sqlite");
    assert_eq!(reopened.certificate_count().await.unwrap(), 207);
    assert!(reopened.token_used("t1").await.unwrap());
    assert_eq!(reopened.revoked_unexpired(OffsetDateTime::now_utc()).await.unwrap().len(), 5);
}

#[tokio::test]
async fn postgres_store_passes_the_suite_and_keeps_state_across_reconnect() {
    let pg = PgServer::start();
    let url = pg.create_db("suite");
    let s = store::open(Some(&url), std::path::Path::new("unused")).await.unwrap();
    assert_eq!(s.backend(), "postgres");
    suite(s).await;
    let again = PostgresStore::connect(&url).await.unwrap();
    assert_eq!(again.certificate_count().await.unwrap(), 207);
    assert!(again.token_used("t1").await.unwrap());
}

#[tokio::test]
async fn postgres_replicas_starting_together_migrate_once_and_share_state() {
    let pg = PgServer::start();
    let url = pg.create_db("replicas");
    let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    let now = OffsetDateTime::now_utc() + time::Duration::hours(1);
    a.record_issuance(Some(tok("shared", "w")), rec("0a", "w", now)).await.unwrap();
    let e = b.record_issuance(Some(tok("shared", "w")), rec("0b", "w", now)).await.unwrap_err();
    assert!(matches!(e, StoreError::TokenUsed(_)), "a token used at one replica is refused at the other: {e}");
    assert!(b.certificate("0a").await.unwrap().is_some());
    let n1 = a.next_crl_number().await.unwrap();
    let n2 = b.next_crl_number().await.unwrap();
    assert!(n2 > n1, "CRL numbers increase across replicas");
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_error_without_the_password() {
    let port = crank_tests::free_addr().port();
    let url = format!("postgres://crank:hunter2@127.0.0.1:{port}/ca");
    let e = store::open(Some(&url), std::path::Path::new("unused")).await.unwrap_err().to_string();
    assert!(e.contains("PostgreSQL"), "{e}");
    assert!(!e.contains("hunter2"), "the password leaked: {e}");
}
