//! Fault drills on the real binaries (`crank ca serve`, `hello-world`): damaged files,
//! and what the worker does about them. Each fault gets a clear error naming what was
//! wrong and an event, and loses nothing. docs/security.md ("The fault model") lists the
//! drills and the command that runs each alone.

use std::path::Path;
use std::time::Duration;

use crank_security_core::{CertFiles, CertificateBundle};
use crank_tests::{Platform, example_command, wait_until};

/// Leaves of two minutes: the worker looks at its directory every 3 s (a fortieth of
/// the lifetime) and renews only after 80 s, past the end of each drill.
const CA_ARGS: &[&str] = &["--leaf-validity", "2m"];

/// What `hello-world` is started with, as `Platform::worker` starts it, for runs whose
/// exit is expected (`Platform::worker` waits for the port).
fn hello_world_at(p: &Platform, extra: &[(&str, &str)]) -> std::process::Command {
    let certs = p.tmp.path().join("hello-world");
    let url = p.ca_url();
    let base = [
        ("CRANK_LOG_FORMAT", "json"),
        ("CA_SERVICE_URL", url.as_str()),
        ("CERT_DIR", certs.to_str().unwrap()),
        ("HELLO_WORLD_HTTPS_PORT", "0"),
        ("CRANK_LISTEN_HOST", "127.0.0.1"),
    ];
    example_command("hello-world", &[&base[..], extra].concat())
}

/// Runs `hello-world` expecting it to refuse to start: its output.
fn refused_start(p: &Platform) -> String {
    let mut c = hello_world_at(p, &[]);
    let child = c.spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "hello-world started with damaged files");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
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
    let mut c = hello_world_at(&p, &[]);
    let token = p.token("hello-world");
    c.env("CRANK_JOIN_TOKEN", &token);
    let mut child = crank_tests::KillOnDrop(c.spawn().unwrap());
    wait_until("a good bundle after recovery", Duration::from_secs(20), || {
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
