//! The real binaries: `crank` and the `hello-world` example, as an operator runs them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crank_security_core::{CertFiles, CertificateBundle};
use crank_tests::{KillOnDrop, crank_command, crank_output as crank, example_command, free_addr, serve_ca_process};

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

async fn wait_for_port(addr: std::net::SocketAddr) {
    crank_tests::wait_for_port(addr).await.unwrap();
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "process did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The hello-world example binary with a clean environment plus `env`.
pub(crate) fn hello_world(env: &[(&str, &str)]) -> Command {
    example_command("hello-world", env)
}

#[tokio::test]
async fn operator_flow_with_the_real_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let ca_dir_s = ca_dir.to_str().unwrap();

    ok(&crank(&["ca", "init", "--dir", ca_dir_s, "--san", "ca.crank.test"]));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca_dir.join("root.key")), 0o600);
    assert_eq!(mode(&ca_dir.join("token.key")), 0o600);
    let again = crank(&["ca", "init", "--dir", ca_dir_s]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let (_ca, ca_addr) = serve_ca_process(&ca_dir, &[]).await.unwrap();
    let ca_url = format!("https://{ca_addr}");

    // The hello-world worker, bootstrapped by its own runtime from CRANK_JOIN_TOKEN.
    let token = ok(&crank(&["token", "create", "--dir", ca_dir_s, "--worker-id", "hello-world"])).trim().to_owned();
    let worker_addr = free_addr();
    let worker_certs = tmp.path().join("hello-certs");
    let port = worker_addr.port().to_string();
    let mut hw = KillOnDrop(
        hello_world(&[
            ("CRANK_JOIN_TOKEN", &token),
            ("CA_SERVICE_URL", &ca_url),
            ("CERT_DIR", worker_certs.to_str().unwrap()),
            ("HELLO_WORLD_HTTPS_PORT", &port),
            ("CRANK_LISTEN_HOST", "127.0.0.1"),
        ])
        .spawn()
        .unwrap(),
    );
    wait_for_port(worker_addr).await;

    // A client identity with `crank cert init`.
    let client_dir = tmp.path().join("client");
    let client_token = ok(&crank(&["token", "create", "--dir", ca_dir_s, "--worker-id", "ops-client", "--ttl", "2m"]))
        .trim()
        .to_owned();
    crank_tests::cert_init("ops-client", &client_token, &ca_url, &client_dir).unwrap();
    let bundle = CertificateBundle::load(&CertFiles::in_dir(&client_dir)).unwrap();
    assert_eq!(mode(&client_dir.join("client.key")), 0o600);

    let r = super::mtls(&bundle, bundle.ca()).get(format!("https://127.0.0.1:{port}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"status": "healthy"}));

    // The caller example reaches hello-world through the runtime's mTLS client.
    let caller_token = ok(&crank(&["token", "create", "--dir", ca_dir_s, "--worker-id", "caller"])).trim().to_owned();
    let caller_addr = free_addr();
    let caller_port = caller_addr.port().to_string();
    let caller_certs = tmp.path().join("caller-certs");
    let _caller = KillOnDrop(
        example_command(
            "caller",
            &[
                ("CRANK_JOIN_TOKEN", &caller_token),
                ("CA_SERVICE_URL", &ca_url),
                ("CERT_DIR", caller_certs.to_str().unwrap()),
                ("CALLER_HTTPS_PORT", &caller_port),
                ("CRANK_LISTEN_HOST", "127.0.0.1"),
                ("HELLO_WORLD_URL", &format!("https://127.0.0.1:{port}")),
            ],
        )
        .spawn()
        .unwrap(),
    );
    wait_for_port(caller_addr).await;
    let r =
        super::mtls(&bundle, bundle.ca()).get(format!("https://127.0.0.1:{caller_port}/call")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let call: serde_json::Value = r.json().await.unwrap();
    assert_eq!(call["hello_world_saw"]["caller_spiffe_id"], "spiffe://crank.local/worker/caller", "{call}");

    // Inspect, text and JSON.
    let cert_path = client_dir.join("client.crt");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&crank(&["cert", "inspect", cert_path.to_str().unwrap(), "--json"]))).unwrap();
    assert_eq!(json["spiffe_id"], "spiffe://crank.local/worker/ops-client");
    assert_eq!(json["is_ca"], false);
    assert!(json["seconds_remaining"].as_i64().unwrap() > 23 * 3600);
    let text = ok(&crank(&["cert", "inspect", worker_certs.join("client.crt").to_str().unwrap()]));
    assert!(text.contains("spiffe://crank.local/worker/hello-world"), "{text}");
    let bad = crank(&["cert", "inspect", ca_dir.join("trust-domain").to_str().unwrap()]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("no PEM certificate"));

    // The worker's certificate verifies with openssl too.
    crank_tests::openssl(&worker_certs, &["verify", "-CAfile", "ca.crt", "client.crt"]).unwrap();

    // The token was single use: reusing it through the CLI fails with a clear message.
    let reuse = crank_tests::cert_init("ops-client", &client_token, &ca_url, &tmp.path().join("x")).unwrap_err();
    assert!(reuse.to_string().contains("already used"), "{reuse}");

    // SIGTERM stops the worker cleanly.
    sigterm(&hw.0);
    let status = wait_exit(&mut hw.0, Duration::from_secs(15));
    assert!(status.success(), "hello-world exited with {status}");
}

#[test]
fn https_only_false_is_refused_by_a_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let out = hello_world(&[("HTTPS_ONLY", "false"), ("CERT_DIR", tmp.path().to_str().unwrap())]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTPS_ONLY=false is refused"), "{err}");
}

#[test]
fn a_worker_without_certificate_or_token_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = hello_world(&[("CERT_DIR", tmp.path().to_str().unwrap())]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("crank token create") && err.contains("CRANK_JOIN_TOKEN"), "{err}");
}

#[tokio::test]
async fn a_worker_whose_ca_is_down_retries_then_exits_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    ok(&crank(&["ca", "init", "--dir", ca_dir.to_str().unwrap()]));
    let token = ok(&crank(&["token", "create", "--dir", ca_dir.to_str().unwrap(), "--worker-id", "hello-world"]))
        .trim()
        .to_owned();
    let dead = format!("https://{}", free_addr());
    let out = hello_world(&[
        ("CRANK_JOIN_TOKEN", &token),
        ("CA_SERVICE_URL", &dead),
        ("CERT_DIR", tmp.path().join("w").to_str().unwrap()),
        ("CRANK_BOOTSTRAP_ATTEMPTS", "2"),
        ("HELLO_WORLD_HTTPS_PORT", &free_addr().port().to_string()),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unavailable after 2 attempts"), "{err}");
    assert!(err.contains("CA_UNAVAILABLE"), "{err}");
}

#[tokio::test]
async fn the_demo_prints_a_curl_command_that_works_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_addr = free_addr();
    let port = free_addr().port();
    let mut demo = KillOnDrop(
        crank_command(&["demo", "--ca-listen", &ca_addr.to_string(), "--port", &port.to_string()])
            .current_dir(tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let curl_line = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the demo printed no curl command");
        if line.trim_start().starts_with("curl ") {
            break line;
        }
    };
    assert!(
        curl_line.contains("--cert") && curl_line.contains("--key") && curl_line.contains("--cacert"),
        "{curl_line}"
    );
    // Run the printed command as a user would paste it, with the real curl.
    let out =
        Command::new("sh").arg("-c").arg(format!("{} -sS", curl_line.trim())).current_dir(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"status":"healthy"}"#);
    // Without a client certificate curl gets no answer.
    let anon = Command::new("curl")
        .args(["-sS", "--cacert", "crank-demo/client/ca.crt", &format!("https://127.0.0.1:{port}/health")])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!anon.status.success() && !String::from_utf8_lossy(&anon.stdout).contains("healthy"));

    let status = Command::new("kill").args(["-INT", &demo.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut demo.0, Duration::from_secs(15)).success());
    // The last lines may still be on their way from the reader thread.
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        let done = line.contains("crank demo stopped");
        rest.push(line);
        if done {
            break;
        }
    }
    assert!(rest.iter().any(|l| l.contains("crank demo stopped")), "{rest:?}");
}

#[test]
fn a_bad_port_is_reported_not_crashed_on() {
    let tmp = tempfile::tempdir().unwrap();
    let out = hello_world(&[("HELLO_WORLD_HTTPS_PORT", "eighty"), ("CERT_DIR", tmp.path().to_str().unwrap())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HELLO_WORLD_HTTPS_PORT=\"eighty\" is not a port number"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn the_custom_sink_example_writes_every_event_to_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let ca_dir_s = ca_dir.to_str().unwrap();
    ok(&crank(&["ca", "init", "--dir", ca_dir_s]));
    let (_ca, ca_addr) = serve_ca_process(&ca_dir, &[]).await.unwrap();
    let token = ok(&crank(&["token", "create", "--dir", ca_dir_s, "--worker-id", "audited"])).trim().to_owned();
    let addr = free_addr();
    let events = tmp.path().join("events.jsonl");
    let _w = KillOnDrop(
        example_command(
            "custom-sink",
            &[
                ("CRANK_JOIN_TOKEN", &token),
                ("CA_SERVICE_URL", &format!("https://{ca_addr}")),
                ("CERT_DIR", tmp.path().join("w").to_str().unwrap()),
                ("AUDITED_HTTPS_PORT", &addr.port().to_string()),
                ("CRANK_LISTEN_HOST", "127.0.0.1"),
                ("CRANK_EVENTS_FILE", events.to_str().unwrap()),
            ],
        )
        .spawn()
        .unwrap(),
    );
    wait_for_port(addr).await;
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&events).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = lines.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["CSR_GENERATED", "CSR_SUBMITTED", "CERT_ISSUED"], "{lines:?}");
    assert_eq!(lines[2]["worker_id"], "audited");
}
