//! A cert directory another user could write to is refused, and a link another user
//! planted in it is never followed: the real `crank cert init`, with the attacker's steps
//! run as the unprivileged user `nobody` (so these tests need root; see
//! `crank_tests::root_or_skip`).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crank_security_core::{CertFiles, CertificateBundle};
use crank_tests::{cert_init, crank, root_or_skip, run_as, serve_ca_process};

/// The unprivileged user the attacker's steps run as.
const ATTACKER: &str = "nobody";

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A temporary directory everyone can reach (0755) holding `shared/`, a world-writable
/// sticky directory like `/tmp`.
fn shared_space() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    set_mode(tmp.path(), 0o755);
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o1777);
    (tmp, shared)
}

/// A CA served by `crank ca serve` in `tmp`: the process, its URL, and a function making
/// join tokens.
async fn ca_process(tmp: &Path) -> (crank_tests::KillOnDrop, String, impl Fn(&str) -> String) {
    let dir = tmp.join("ca");
    crank(&["ca", "init", "--dir", path_str(&dir)]).unwrap();
    let (process, addr) = serve_ca_process(&dir, &[]).await.unwrap();
    let token =
        move |worker: &str| crank(&["token", "create", "--dir", path_str(&dir), "--worker-id", worker]).unwrap();
    (process, format!("https://{addr}"), token)
}

#[tokio::test]
async fn a_cert_dir_another_user_owns_or_may_write_is_refused_by_crank_cert_init_naming_the_fix() {
    if !root_or_skip("a_cert_dir_another_user_owns_or_may_write_is_refused_by_crank_cert_init_naming_the_fix") {
        return;
    }
    let (tmp, shared) = shared_space();
    let (_ca, url, token) = ca_process(tmp.path()).await;

    // The attacker makes the directory a worker will use (a path in a shared place)
    // before the worker does.
    let dir = shared.join("certs");
    run_as(ATTACKER, &["mkdir", "-m", "0700", path_str(&dir)]);
    let attacker_uid = fs::metadata(&dir).unwrap().uid();
    assert_ne!(attacker_uid, 0);
    let victim_token = token("victim");
    let e = cert_init("victim", &victim_token, &url, &dir).unwrap_err().to_string();
    assert!(e.contains(&format!("{} is owned by uid {attacker_uid}, not by uid 0", dir.display())), "{e}");
    assert!(e.contains(&format!("run `chown 0 {}`", dir.display())), "the refusal names the fix: {e}");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing was written into it");
    // The refusal came before the CA was asked: in a directory of the worker's own (not
    // the attacker's, chowned: the docs say to use a fresh one), the same token works.
    let own = shared.join("certs-victim");
    fs::create_dir(&own).unwrap();
    set_mode(&own, 0o700);
    cert_init("victim", &victim_token, &url, &own).unwrap();

    // The worker's own directory, but writable by group or others.
    for mode in [0o777, 0o770, 0o1733] {
        let dir = tmp.path().join(format!("open-{mode:o}"));
        fs::create_dir(&dir).unwrap();
        set_mode(&dir, mode);
        let worker = format!("open-{mode:o}");
        let worker_token = token(&worker);
        let e = cert_init(&worker, &worker_token, &url, &dir).unwrap_err().to_string();
        assert!(e.contains(&format!("is writable by group or others (mode {mode:04o})")), "{e}");
        assert!(e.contains(&format!("run `chmod go-w {}`", dir.display())), "the refusal names the fix: {e}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing was written into it");
        set_mode(&dir, mode & !0o022);
        cert_init(&worker, &worker_token, &url, &dir).unwrap();
    }
}

#[tokio::test]
async fn links_an_attacker_planted_in_a_cert_dir_are_not_followed_by_crank_cert_init() {
    if !root_or_skip("links_an_attacker_planted_in_a_cert_dir_are_not_followed_by_crank_cert_init") {
        return;
    }
    let (tmp, shared) = shared_space();
    let (_ca, url, token) = ca_process(tmp.path()).await;

    // The attacker's own file, which it hopes the worker's key will be written into.
    let trap = shared.join("trap");
    run_as(ATTACKER, &["sh", "-c", &format!("printf attacker > '{}'", trap.display())]);
    let trap_owner = fs::metadata(&trap).unwrap().uid();
    // The worker's directory was open to others for a while (made before crank refused
    // such directories, or before its operator ran the `chmod go-w` crank asked for), and
    // the attacker left links at the key's staging path and at the key's own path.
    let dir = tmp.path().join("victim");
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o777);
    let staging = dir.join(".client.key.next");
    run_as(ATTACKER, &["ln", "-s", path_str(&trap), path_str(&staging)]);
    run_as(ATTACKER, &["ln", "-s", path_str(&trap), path_str(&dir.join("client.key"))]);
    set_mode(&dir, 0o700);

    let victim_token = token("victim");
    let e = cert_init("victim", &victim_token, &url, &dir).unwrap_err().to_string();
    assert!(e.contains(&format!("{} is a symbolic link", staging.display())), "{e}");
    assert!(e.contains("someone else has written into this directory"), "{e}");
    let untouched = |why: &str| {
        assert_eq!(fs::read(&trap).unwrap(), b"attacker", "{why}: the attacker's file was written");
        assert_eq!(fs::metadata(&trap).unwrap().uid(), trap_owner, "{why}");
    };
    untouched("refused");
    assert!(!dir.join("client.crt").exists());

    // With the staging link removed the same token works (nothing was spent on the
    // refusal), and the link at client.key is replaced, not written through.
    fs::remove_file(&staging).unwrap();
    cert_init("victim", &victim_token, &url, &dir).unwrap();
    untouched("issued");
    let key = fs::symlink_metadata(dir.join("client.key")).unwrap();
    assert!(key.file_type().is_file(), "client.key is a regular file again");
    assert_eq!((key.uid(), key.mode() & 0o777), (0, 0o600));
    CertificateBundle::load(&CertFiles::in_dir(&dir)).unwrap();
}

#[tokio::test]
async fn another_user_cannot_hold_a_cert_dirs_lock_to_stop_its_writes() {
    if !root_or_skip("another_user_cannot_hold_a_cert_dirs_lock_to_stop_its_writes") {
        return;
    }
    let (tmp, _shared) = shared_space();
    let (_ca, url, token) = ca_process(tmp.path()).await;
    // A cert directory others may read, as the agent makes one for a workload (0755).
    let dir = tmp.path().join("workload");
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o755);
    cert_init("victim", &token("victim"), &url, &dir).unwrap();
    let first = CertificateBundle::load(&CertFiles::in_dir(&dir)).unwrap().metadata().serial.clone();

    // The attacker holds every lock it can open there: the directory's own...
    let mut hold = std::process::Command::new("runuser");
    hold.args(["-u", ATTACKER, "--", "flock", "--exclusive", path_str(&dir), "sleep", "60"]);
    let _holder = crank_tests::KillOnDrop(hold.spawn().unwrap());
    let held = || {
        let probe = std::process::Command::new("flock").args(["--nonblock", path_str(&dir), "true"]).status();
        !probe.unwrap().success()
    };
    crank_tests::wait_until("the attacker to hold the directory's flock", std::time::Duration::from_secs(5), held)
        .await;
    // ...but not the lock file crank writes under, which it cannot open.
    let lock = dir.join(".lock");
    let out = std::process::Command::new("runuser")
        .args(["-u", ATTACKER, "--", "flock", "--nonblock", path_str(&lock), "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{ATTACKER} opened {}", lock.display());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");

    // So the next certificate is written as if nobody were there.
    let victim_token = token("victim");
    let args = ["cert", "init", "--worker-id", "victim", "--token", &victim_token, "--ca-url", &url];
    let mut write = crank_tests::KillOnDrop(
        crank_tests::crank_command(&[&args[..], &["--cert-dir", path_str(&dir)]].concat()).spawn().unwrap(),
    );
    let done = || !matches!(write.0.try_wait(), Ok(None));
    let what = "crank cert init to write while another user holds the directory's flock";
    crank_tests::wait_until(what, std::time::Duration::from_secs(20), done).await;
    assert!(write.0.wait().unwrap().success());
    let second = CertificateBundle::load(&CertFiles::in_dir(&dir)).unwrap().metadata().serial.clone();
    assert_ne!(first, second, "a new certificate was written");
}
