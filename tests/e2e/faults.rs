//! Fault drills on the real binaries (`crank ca serve`, `hello-world`): damaged files,
//! and what the worker does about them. Each fault gets a clear error naming what was
//! wrong and an event, and loses nothing. docs/security.md ("The fault model") lists the
//! drills and the command that runs each alone.

use std::path::Path;
use std::time::Duration;

use crank_security_core::{CertFiles, CertificateBundle};
use crank_tests::{Platform, PlatformOptions, ProcessOptions, wait_until};

/// Leaves of two minutes: the worker looks at its directory every 3 s (a fortieth of
/// the lifetime) and renews only after 80 s, past the end of each drill.
const CA_ARGS: &[&str] = &["--leaf-validity", "2m"];

/// `hello-world` as `Platform::worker` starts it, on any port, for runs whose exit is
/// expected (`Platform::worker` waits for the port).
fn hello_world_at(p: &Platform) -> std::process::Command {
    p.worker_command("hello-world", "127.0.0.1:0".parse().unwrap(), &[])
}

/// Runs `hello-world` expecting it to refuse to start: what it logged.
fn refused_start(p: &Platform) -> String {
    let seen = p.log("hello-world").len();
    let status = hello_world_at(p).status().unwrap();
    assert!(!status.success(), "hello-world started with damaged files");
    p.log("hello-world")[seen..].to_owned()
}

/// Something done to a file.
type Damage = fn(&Path);

fn truncate_half(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

fn load(dir: &Path) -> Result<CertificateBundle, crank_security_core::Error> {
    CertificateBundle::load(&CertFiles::in_dir(dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_certificate_files_at_start_are_named_and_a_new_join_token_recovers() {
    let p = Platform::start(CA_ARGS).await;
    let certs = p.tmp.path().join("hello-world");
    let (first, _) = p.worker("hello-world", &[]).await;
    drop(first);
    let good = load(&certs).unwrap();

    let damages: [(&str, Damage); 3] = [
        ("client.crt", truncate_half),
        ("client.key", |f| std::fs::write(f, b"\x00\x17garbage, not a key\n").unwrap()),
        ("ca.crt", |f| std::fs::write(f, b"").unwrap()),
    ];
    for (file, damage) in damages {
        // Back to the good files, then this one damaged.
        good.write_to(&CertFiles::in_dir(&certs)).unwrap();
        let path = certs.join(file);
        damage(&path);
        let out = refused_start(&p);
        assert!(out.contains(&path.display().to_string()), "the refusal names {file}: {out}");
        assert!(out.contains("no join token was given") && out.contains("crank token create"), "{out}");
        assert!(
            out.lines().any(|l| l.contains("CERT_VALIDATION_FAILED") && l.contains(file)),
            "an event names {file}: {out}"
        );
    }

    // The documented way back: a new join token. The worker bootstraps over the
    // damaged files and serves; the directory holds a good bundle again.
    let mut c = hello_world_at(&p);
    let token = p.token("hello-world");
    c.env("CRANK_JOIN_TOKEN", &token);
    let mut child = crank_tests::KillOnDrop(c.spawn().unwrap());
    p.wait_logged("hello-world", "a good bundle after recovery", Duration::from_secs(20), || {
        load(&certs).is_ok_and(|b| b.metadata().serial != good.metadata().serial)
    })
    .await;
    assert!(child.0.try_wait().unwrap().is_none(), "the recovered worker keeps running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_under_a_running_worker_are_written_again_and_it_keeps_serving() {
    let p = Platform::start(CA_ARGS).await;
    let ops = p.identity("ops");
    let certs = p.tmp.path().join("hello-world");
    let (_hello, addr) = p.worker("hello-world", &[]).await;
    let url = format!("https://127.0.0.1:{}/health", addr.port());
    let serial = load(&certs).unwrap().metadata().serial.clone();

    for (file, garbage) in [("client.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n".as_slice()), ("client.key", b"\xff")]
    {
        let path = certs.join(file);
        std::fs::write(&path, garbage).unwrap();
        wait_until(&format!("CERT_VALIDATION_FAILED naming {file}"), Duration::from_secs(15), || {
            p.log("hello-world").lines().any(|l| {
                l.contains("CERT_VALIDATION_FAILED") && l.contains(&path.display().to_string()) && l.contains("again")
            })
        })
        .await;
        // The files hold the certificate in use again: the same one, not a new one.
        let back = load(&certs).unwrap();
        assert_eq!(back.metadata().serial, serial, "{file} was put back from the certificate in use");
        back.certified_key().unwrap();
        let status = Platform::client(&ops).get(&url).send().await.unwrap().status();
        assert_eq!(status, 200, "the worker kept serving");
    }
    let key_mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(certs.join("client.key")).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600);
}

/// `crank ca rollover STEP --dir DIR` under strace, killed (SIGKILL) when it enters its
/// `nth` call of one of `syscalls` (then it returns 1 if it was killed, 0 if it ended
/// first); or, with `nth` 0, run whole: how many calls it made.
fn step_under_strace(step: &str, dir: &Path, syscalls: &str, nth: usize) -> usize {
    let log = dir.with_extension("strace");
    let mut c = std::process::Command::new("strace");
    c.args(["-f", "-qq", "-o", log.to_str().unwrap(), "-e", &format!("trace={syscalls}")]);
    if nth > 0 {
        c.args(["-e", &format!("inject={syscalls}:signal=SIGKILL:when={nth}")]);
    }
    let out = c
        .arg(crank_tests::bin("crank"))
        .args(["ca", "rollover", step, "--dir", dir.to_str().unwrap()])
        .output()
        .expect("strace runs (the test command installs it)");
    if nth == 0 {
        assert!(out.status.success(), "{step}: {}", String::from_utf8_lossy(&out.stderr));
    } else if out.status.success() {
        // The store's own syncs vary a little from run to run: a run may end before its
        // `nth` call. Killed runs are counted by the caller.
        return 0;
    }
    if nth > 0 {
        return 1;
    }
    let trace = std::fs::read_to_string(&log).unwrap_or_default();
    let names: Vec<&str> = syscalls.split(',').collect();
    trace
        .lines()
        .filter(|l| names.iter().any(|n| l.split_whitespace().nth(1).is_some_and(|c| c.starts_with(&format!("{n}(")))))
        .count()
}

/// The public key of a PEM private key, and of the first certificate of a PEM file.
fn key_matches(key: &Path, cert: &Path) -> bool {
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key).unwrap()).unwrap();
    let cert = crank_security_core::parse_pem_certs("certificate", &std::fs::read(cert).unwrap()).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert[0]).unwrap();
    parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

fn signed_by(cert: &Path, issuer: &Path) -> bool {
    let cert = crank_security_core::parse_pem_certs("certificate", &std::fs::read(cert).unwrap()).unwrap();
    let issuer = crank_security_core::parse_pem_certs("issuer", &std::fs::read(issuer).unwrap()).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&cert[0]).unwrap();
    let (_, i) = x509_parser::parse_x509_certificate(&issuer[0]).unwrap();
    c.verify_signature(Some(i.public_key())).is_ok()
}

/// The CA directory is whole: each key beside its own certificate, the service's
/// certificate from the signing root, the previous root the one before, and either
/// both halves of a prepared next root or neither.
fn assert_whole(dir: &crank_ca::CaDir, original_root: &[u8], what: &str) {
    assert!(key_matches(&dir.root_key(), &dir.root_cert()), "{what}: root.key does not match root.crt");
    assert!(key_matches(&dir.server_key(), &dir.server_cert()), "{what}: server.key does not match server.crt");
    assert!(signed_by(&dir.server_cert(), &dir.root_cert()), "{what}: server.crt is not from root.crt");
    assert_eq!(dir.next_root_key().exists(), dir.next_root_cert().exists(), "{what}: half a next root");
    if dir.next_root_cert().exists() {
        assert!(key_matches(&dir.next_root_key(), &dir.next_root_cert()), "{what}: next root key and certificate");
        let bundle = std::fs::read_to_string(dir.trust_bundle_file()).unwrap();
        let next = std::fs::read_to_string(dir.next_root_cert()).unwrap();
        assert!(bundle.contains(next.trim()), "{what}: the prepared next root is not published");
        assert!(dir.cross_certs_file().exists(), "{what}: no cross-certificates for the next root");
    }
    if dir.previous_root_cert().exists() {
        assert_eq!(std::fs::read(dir.previous_root_cert()).unwrap(), original_root, "{what}: previous-root.crt");
        assert_ne!(std::fs::read(dir.root_cert()).unwrap(), original_root, "{what}: activated, same root");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_killed_at_any_point_of_a_rollover_step_comes_back_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mut base = tmp.path().join("base");
    crank_tests::crank(&["ca", "init", "--dir", base.to_str().unwrap()]).unwrap();
    let original_root = std::fs::read(base.join("root.crt")).unwrap();
    let (mut runs, mut killed) = (0, 0);
    for step in ["prepare", "activate", "finish"] {
        // Writes are synced (fsync) while staged, and renamed into place (or files removed)
        // once committed:
        // a kill at every one of those calls covers both halves.
        for syscalls in ["fsync", "rename,renameat,renameat2,unlink,unlinkat"] {
            let probe = tmp.path().join(format!("{step}-{}-probe", syscalls.len()));
            crank_tests::copy_ca_dir(&base, &probe).unwrap();
            let calls = step_under_strace(step, &probe, syscalls, 0);
            assert!(calls > 0, "{step} makes no {syscalls} call under strace");
            let killed_before = killed;
            for nth in 1..=calls {
                let what = format!("{step} killed at {syscalls} call {nth} of {calls}");
                let dir = tmp.path().join(format!("{step}-{}-{nth}", syscalls.len()));
                crank_tests::copy_ca_dir(&base, &dir).unwrap();
                killed += step_under_strace(step, &dir, syscalls, nth);
                runs += 1;
                // The next command on the directory finds it whole ...
                crank_tests::crank(&["token", "create", "--dir", dir.to_str().unwrap(), "--worker-id", "w"])
                    .unwrap_or_else(|e| panic!("{what}: the CA directory is unusable: {e}"));
                let ca = crank_ca::CaDir::new(&dir);
                assert_whole(&ca, &original_root, &what);
                // ... and the step either happened or can be run again.
                let done = match step {
                    "prepare" => ca.next_root_cert().exists(),
                    "activate" => ca.previous_root_cert().exists(),
                    _ => !ca.activated_at_file().exists(),
                };
                if !done {
                    step_under_strace(step, &dir, syscalls, 0);
                    assert_whole(&ca, &original_root, &format!("{what}, then run again"));
                }
                // The CA serves from it, and a worker gets a certificate from its root.
                let (_ca, addr) = crank_tests::serve_ca_process(&dir, &[]).await.unwrap();
                let token =
                    crank_tests::crank(&["token", "create", "--dir", dir.to_str().unwrap(), "--worker-id", "w"])
                        .unwrap();
                let certs = dir.with_extension("worker");
                crank_tests::cert_init("w", &token, &format!("https://{addr}"), &certs)
                    .unwrap_or_else(|e| panic!("{what}: a worker cannot join the CA served after it: {e}"));
                assert!(signed_by(&certs.join("client.crt"), &ca.root_cert()), "{what}: the leaf is not from root.crt");
            }
            assert!(killed > killed_before, "strace killed no run of {step} at a {syscalls} call");
        }
        // The next step starts from this one done.
        let next = tmp.path().join(format!("base-{step}"));
        crank_tests::copy_ca_dir(&base, &next).unwrap();
        step_under_strace(step, &next, "fsync", 0);
        base = next;
    }
    assert!(runs >= 10, "only {runs} kill points");
    // strace counts each system call apart, so a run of a step that both renames and
    // removes ends before the `nth` call when `nth` passes one kind's count.
    assert!(killed * 5 >= runs * 4, "only {killed} of {runs} runs were killed by strace");
}

/// Waits until `pid` is traced (strace attached).
async fn wait_traced(pid: u32) {
    // Every thread, not just the main one: `strace -f -p` attaches to the threads one by
    // one, and a sync on a thread not yet attached would go uncounted (threads made
    // later are traced from birth).
    let traced = |status: &str| status.lines().any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0");
    wait_until("strace to attach to every thread", Duration::from_secs(10), || {
        std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().all(|t| std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| traced(&s)))
        })
    })
    .await;
}

/// Follows `log`, the output of `strace -f` injecting SIGSTOP as each fsync/fdatasync of
/// `pid` returns: counts the syncs of all its threads, continues the CA after each (it is
/// stopped whole), and kills it with SIGKILL, still stopped, after the `nth`. Returns
/// whether it did; false when `client` ended first having caused fewer syncs (the CA then
/// runs on).
async fn kill_at_sync(
    pid: u32,
    log: &Path,
    nth: usize,
    client: &std::thread::JoinHandle<anyhow::Result<String>>,
) -> bool {
    let signal = |sig: &str| {
        let _ = std::process::Command::new("kill").args([sig, &pid.to_string()]).status();
    };
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines().any(|l| l.starts_with("State:") && (l.contains("stopped") || l.contains("tracing stop")))
        })
    };
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let syncs = std::fs::read_to_string(log).unwrap_or_default().matches("si_code=SI_KERNEL").count();
        if syncs > seen {
            seen = syncs;
            if seen >= nth {
                signal("-KILL");
                return true;
            }
        }
        if client.is_finished() && syncs == seen && !stopped() {
            // The client has its answer and the CA is not held at a sync: give a late
            // sync (the CRL's write after the answer) a moment, then stop looking.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if std::fs::read_to_string(log).unwrap_or_default().matches("si_code=SI_KERNEL").count() == seen {
                return false;
            }
            continue;
        }
        // Stopped after a counted sync: continue it. (A continue sent before the stop
        // lands is repeated on the next turn.)
        if stopped() {
            signal("-CONT");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the CA's syncs under strace did not settle within 60 s ({seen} counted)");
}

/// The CA's CRL fetched without a client certificate, verified against its root: its
/// number and the serials it lists.
async fn fetch_crl(addr: std::net::SocketAddr, root: &Path) -> (u128, std::collections::HashSet<String>) {
    let roots = crank_security_core::parse_pem_certs("root", &std::fs::read(root).unwrap()).unwrap();
    let client = super::no_client_cert(&roots);
    let body = client.get(format!("https://{addr}/v1/crl")).send().await.unwrap().bytes().await.unwrap();
    let der = crank_runtime::worker::crl_der(&body).unwrap();
    let info = crank_runtime::worker::verify_crl(&der, &roots, &[]).expect("the CRL verifies with the root");
    (info.number, info.serials)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_killed_while_it_records_a_revocation_and_signs_its_crl_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    crank_tests::crank(&["ca", "init", "--dir", d]).unwrap();
    let admin = tmp.path().join("admin");
    crank_tests::crank(&["ca", "admin-cert", "--dir", d, "--name", "ops", "--out", admin.to_str().unwrap()]).unwrap();
    let ca_dir = crank_ca::CaDir::new(&dir);
    let mut last_number = 0;
    let mut killed = 0;
    // The CA commits the revocation (one synced transaction), then takes the next CRL
    // number (another) and signs: kill it at the first, then the second sync; the third
    // run finds no third sync and revokes whole.
    for nth in 1..=3 {
        let (mut ca, addr) = crank_tests::serve_ca_process(&dir, &[]).await.unwrap();
        let url = format!("https://{addr}");
        let worker = format!("victim-{nth}");
        let token = crank_tests::crank(&["token", "create", "--dir", d, "--worker-id", &worker]).unwrap();
        let certs = tmp.path().join(&worker);
        crank_tests::cert_init(&worker, &token, &url, &certs).unwrap();
        let serial = load(&certs).unwrap().metadata().serial.clone();
        let (before, _) = fetch_crl(addr, &ca_dir.root_cert()).await;
        assert!(before > last_number, "CRL numbers only go up: {before} after {last_number}");

        let pid = ca.0.id();
        let log = tmp.path().join(format!("strace-{nth}.log"));
        // strace counts injections per thread, and the CA's store writes run on whichever
        // blocking-pool thread is free: it only stops the CA after each sync (SIGSTOP as
        // fsync/fdatasync return), and `kill_at_sync` counts across threads.
        let strace = crank_tests::KillOnDrop(
            std::process::Command::new("strace")
                .args(["-f", "-qq", "-o", log.to_str().unwrap(), "-p", &pid.to_string()])
                .args(["-e", "trace=fsync,fdatasync", "-e", "inject=fsync,fdatasync:signal=SIGSTOP"])
                .spawn()
                .unwrap(),
        );
        wait_traced(pid).await;
        let revoke = ["revoke", "--admin-dir", admin.to_str().unwrap(), "--ca-url", &url, "--reason", "keyCompromise"];
        let revoking = std::thread::spawn({
            let args: Vec<String> =
                [&revoke[..], &["--worker-id", &worker]].concat().iter().map(|a| (*a).to_owned()).collect();
            move || crank_tests::crank(&args.iter().map(String::as_str).collect::<Vec<_>>())
        });
        let was_killed = kill_at_sync(pid, &log, nth, &revoking).await;
        let answered = revoking.join().unwrap();
        // Killed, or (fewer syncs than `nth`) still serving: stopped here.
        let mut status = None;
        for _ in 0..100 {
            status = ca.0.try_wait().unwrap();
            if status.is_some() || !was_killed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(strace);
        drop(ca);
        let was_killed =
            was_killed && status.is_some_and(|s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(9));
        killed += usize::from(was_killed);
        let what = format!("CA killed at sync {nth} of a revocation");
        // The revocation and the CRL number it takes are two synced commits.
        assert!(was_killed || nth > 2, "{what}: the CA made fewer than {nth} syncs ({answered:?})");

        // Restarted, the CA's ledger and CRL agree, and the CRL number went up.
        let (ca, addr) = crank_tests::serve_ca_process(&dir, &[]).await.unwrap();
        let (number, listed) = fetch_crl(addr, &ca_dir.root_cert()).await;
        assert!(number > before, "{what}: CRL number {number} after {before}");
        let store = crank_ca::store::SqliteStore::open(&ca_dir.store()).unwrap();
        let ledger: std::collections::HashSet<String> =
            crank_ca::store::CaStore::revoked_unexpired(&store, time::OffsetDateTime::now_utc())
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.serial)
                .collect();
        assert_eq!(listed, ledger, "{what}: the CRL lists exactly the ledger's revocations");
        if answered.is_ok() {
            assert!(listed.contains(&serial), "{what}: a revocation the CA confirmed is lost");
        }
        // Whatever the kill left, revoking again gets the certificate listed.
        let url = format!("https://{addr}");
        let revoke = ["revoke", "--admin-dir", admin.to_str().unwrap(), "--ca-url", &url, "--reason", "keyCompromise"];
        let again = crank_tests::crank(&[&revoke[..], &["--worker-id", &worker]].concat());
        assert!(again.is_ok() || listed.contains(&serial), "{what}: {again:?}");
        let (after, listed) = fetch_crl(addr, &ca_dir.root_cert()).await;
        assert!(listed.contains(&serial), "{what}: not listed after revoking again");
        last_number = after;
        drop(ca);
    }
    assert!(killed >= 2, "strace killed the CA in only {killed} of 3 runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_minutes_of_clock_skew_either_way_is_ridden_out_and_more_is_named() {
    for skew in ["+10m", "-10m", "+20m"] {
        // The CA's clock is `skew` off this host's (the workers' and `crank`'s); join
        // tokens are made where the CA directory is, so on the CA's clock too.
        let p = Platform::start_with(PlatformOptions { ca_process: ProcessOptions::clock(skew), ..Default::default() })
            .await;
        let url = p.ca_url();
        let ops_dir = p.tmp.path().join("ops");
        let joined = crank_tests::cert_init("ops", &p.token("ops"), &url, &ops_dir);
        if skew == "+20m" {
            // Beyond the bound: the error says what is wrong.
            let e = joined.unwrap_err().to_string();
            assert!(e.contains("clock skew") && e.contains("ahead of this host's"), "{skew}: {e}");
            continue;
        }
        joined.unwrap_or_else(|e| panic!("CA clock {skew}: bootstrap failed: {e}"));
        let ops = load(&ops_dir).unwrap();

        // A worker bootstraps, serves and renews.
        let policy = p.tmp.path().join("policy");
        std::fs::create_dir(&policy).unwrap();
        std::fs::write(policy.join("renew.rego"), crank_tests::RENEW_AT_EVERY_LOOK).unwrap();
        let certs = p.tmp.path().join("hello-world");
        let (_hello, addr) = p.worker("hello-world", &[("CRANK_POLICY_DIR", policy.to_str().unwrap())]).await;
        let first = load(&certs).unwrap().metadata().serial.clone();
        let health = format!("https://127.0.0.1:{}/health", addr.port());
        let status = Platform::client(&ops).get(&health).send().await.unwrap().status();
        assert_eq!(status, 200, "CA clock {skew}: a peer is served");
        p.wait_logged("hello-world", &format!("a renewal with the CA's clock {skew}"), Duration::from_secs(45), || {
            load(&certs).is_ok_and(|b| b.metadata().serial != first)
        })
        .await;
        let status = Platform::client(&ops).get(&health).send().await.unwrap().status();
        assert_eq!(status, 200, "CA clock {skew}: served after the renewal");
    }
}
