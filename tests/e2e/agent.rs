//! `crank agent` on the real binaries, with clients nobody here wrote: py-spiffe (PyPI
//! `spiffe`) and the Rust `spiffe` crate over the SPIFFE Workload API, and a plain Python
//! TLS server fed by the file mode.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crank_tests::{KillOnDrop, Platform, PlatformOptions, crank, crank_command, eventually, free_addr};
use serde_json::Value;

/// The Python of the py-spiffe environment that `scripts/install-py-spiffe.sh` makes
/// beside the build.
fn python() -> PathBuf {
    let p = crank_tests::bin_dir().parent().unwrap().join("py-spiffe/bin/python3");
    assert!(p.exists(), "{} is missing: run scripts/install-py-spiffe.sh (scripts/test.sh does)", p.display());
    p
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agent").join(name)
}

/// A running `crank agent`, its socket and its log.
struct AgentProc {
    process: KillOnDrop,
    socket: PathBuf,
    log: PathBuf,
}

impl AgentProc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `crank agent` with its identity in `<tmp>/<name>` (a join token with `ca.agent` when
/// it has none yet), its socket at `<tmp>/<name>.sock`, plus `args`.
fn agent_command(p: &Platform, name: &str, args: &[&str]) -> (std::process::Command, PathBuf, PathBuf) {
    let certs = p.tmp.path().join(name);
    let socket = p.tmp.path().join(format!("{name}.sock"));
    let log_path = p.tmp.path().join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
    let port = free_addr().port().to_string();
    let default_socket = format!("unix://{}", socket.display());
    let socket_args: &[&str] = if args.contains(&"--socket") { &[] } else { &["--socket", &default_socket] };
    let mut c = crank_command(&[&["agent"][..], socket_args, args].concat());
    c.env("RUST_LOG", "info")
        .env("CRANK_LOG_FORMAT", "json")
        .env("CA_SERVICE_URL", p.ca_url())
        .env("CERT_DIR", &certs)
        .env("CRANK_AGENT_PORT", &port)
        .env("CRANK_LISTEN_HOST", "127.0.0.1")
        .env("CRANK_AGENT_SYNC", "1s")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if !certs.join("client.crt").exists() {
        c.env("CRANK_JOIN_TOKEN", p.token_with(name, &["ca.agent"]));
    }
    (c, socket, log_path)
}

async fn start_agent(p: &Platform, name: &str, args: &[&str]) -> AgentProc {
    let (mut c, socket, log) = agent_command(p, name, args);
    let mut agent = AgentProc { process: KillOnDrop(c.spawn().unwrap()), socket, log };
    let sock = agent.socket.clone();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while !sock.exists() {
            if let Ok(Some(status)) = agent.process.0.try_wait() {
                return Err(format!("exited with {status}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    })
    .await;
    if !matches!(ready, Ok(Ok(()))) {
        panic!("crank agent did not open its socket ({ready:?}); its log:\n{}", agent.log());
    }
    agent.process.0.try_wait().unwrap();
    agent
}

/// `crank entry create` as administrator `admin`: the entry's id.
fn create_entry(p: &Platform, admin: &Path, worker: &str, agent: &str, selectors: &[&str]) -> anyhow::Result<String> {
    let url = p.ca_url();
    let mut args = vec![
        "entry",
        "create",
        "--admin-dir",
        admin.to_str().unwrap(),
        "--ca-url",
        &url,
        "--worker-id",
        worker,
        "--agent",
        agent,
    ];
    for s in selectors {
        args.extend(["--selector", s]);
    }
    let out: Value = serde_json::from_str(&crank(&args)?)?;
    Ok(out["id"].as_str().unwrap().to_owned())
}

fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Runs `workload.py MODE ARGS` against `socket`: exit success and its JSON lines.
fn workload(socket: &Path, args: &[&str], timeout: Duration) -> (bool, Vec<Value>, String) {
    let mut child = std::process::Command::new(python())
        .arg(script("workload.py"))
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", socket.display()))
        .env("WATCH_TIMEOUT", timeout.as_secs().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + timeout + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out.status.success(), lines, format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

async fn workload_async(socket: PathBuf, args: Vec<String>, timeout: Duration) -> (bool, Vec<Value>, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        workload(&socket, &args, timeout)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_gets_an_svid_calls_hello_world_over_mtls_sees_rotations_and_validates_a_jwt_svid() {
    // Workload certificates for 16 s: the agent renews them at half their lifetime.
    let p =
        Platform::start_with(PlatformOptions { ca_log: true, ..PlatformOptions::serve(&["--leaf-validity", "16s"]) })
            .await;
    let admin = p.admin("ops");
    let (_hello, hello) = p.worker("hello-world", &[]).await;
    create_entry(&p, &admin, "py-api", "agent-1", &[&format!("unix:uid:{}", uid())]).unwrap();
    let agent = start_agent(&p, "agent-1", &[]).await;

    // py-spiffe fetches its X509-SVID and bundle, and calls hello-world over mTLS with them.
    let url = format!("https://localhost:{}/whoami", hello.port());
    let socket = agent.socket.clone();
    let mut fetched = None;
    for _ in 0..50 {
        let (ok, lines, said) = workload(&socket, &["fetch", &url], Duration::from_secs(20));
        if ok {
            fetched = Some(lines);
            break;
        }
        // The first SVID may not be issued yet: PermissionDenied until then.
        assert!(said.contains("PERMISSION_DENIED") || said.contains("no identity"), "{said}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lines = fetched.unwrap_or_else(|| panic!("py-spiffe never got an SVID; agent log:\n{}", agent.log()));
    let got = &lines[0];
    assert_eq!(got["spiffe_id"], "spiffe://crank.local/worker/py-api", "{got}");
    assert_eq!(got["status"], 200, "{got}");
    let saw: Value = serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
    assert_eq!(saw["caller_spiffe_id"], "spiffe://crank.local/worker/py-api", "hello-world saw {saw}");
    assert!(got["roots"].as_u64().unwrap() >= 1);

    // Its stream receives the rotated SVID: two more serials within two rotations.
    let (ok, lines, said) =
        workload_async(socket.clone(), vec!["watch".into(), "3".into()], Duration::from_secs(40)).await;
    assert!(ok, "the stream did not push two rotations: {said}\nagent log:\n{}", agent.log());
    let serials: Vec<&str> = lines.iter().filter_map(|l| l["serial"].as_str()).collect();
    assert_eq!(serials.len(), 3, "{said}");
    assert!(serials[0] != serials[1] && serials[1] != serials[2], "{serials:?}");

    // A JWT-SVID, validated by the agent and locally against the JWT bundle.
    let (ok, lines, said) = workload(&socket, &["jwt", "orders-db"], Duration::from_secs(20));
    assert!(ok, "{said}\nagent log:\n{}", agent.log());
    let jwt = &lines[0];
    for field in ["spiffe_id", "validated", "local"] {
        assert_eq!(jwt[field], "spiffe://crank.local/worker/py-api", "{jwt}");
    }
    assert_eq!(jwt["audience"], serde_json::json!(["orders-db"]));
    assert!(jwt["wrong_audience"].as_str().is_some_and(|e| e.contains("INVALID_ARGUMENT")), "{jwt}");

    // The Rust `spiffe` crate's client fetches the same identity.
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display())).await.unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://crank.local/worker/py-api");
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("crank.local").unwrap();
    assert!(bundles.get(&td).is_some_and(|b| !b.authorities().is_empty()));

    // The workload keys were made in the agent: the CA's ledger has no key, and the agent
    // logged none.
    assert!(!agent.log().contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_what_the_spec_says_and_the_ca_signs_only_assigned_worker_ids() {
    let mut p = Platform::start(&[]).await;
    let admin = p.admin("ops");
    // An entry no process here matches: the executable must be one that is not Python.
    create_entry(&p, &admin, "batch", "agent-1", &[&format!("unix:uid:{}", uid()), "unix:path:/usr/sbin/nothing-here"])
        .unwrap();
    let agent = start_agent(&p, "agent-1", &[]).await;
    let socket = agent.socket.clone();
    let (ok, lines, said) = workload(&socket, &["refused"], Duration::from_secs(20));
    assert!(ok, "{said}");
    assert!(lines[0]["error"].as_str().is_some_and(|e| e.contains("PERMISSION_DENIED")), "{said}");
    let (ok, lines, said) = workload(&socket, &["nometa"], Duration::from_secs(20));
    assert!(ok, "{said}");
    let e = lines[0]["error"].as_str().unwrap_or_default();
    assert!(e.contains("INVALID_ARGUMENT") && e.contains("workload.spiffe.io"), "{said}");

    // At the CA: the agent's own certificate may ask only for worker ids assigned to it.
    let agent_bundle = crank_security_core::CertificateBundle::load(&crank_security_core::CertFiles::in_dir(
        p.tmp.path().join("agent-1"),
    ))
    .unwrap();
    let ca = crank_tests::ca_client(vec![p.ca_url().parse().unwrap()], &agent_bundle);
    let key = crank_security_core::generate_key(crank_security_core::KeyType::EcdsaP256).unwrap();
    let other = crank_security_core::WorkerId::new("payments").unwrap();
    let csr = crank_security_core::build_csr(&key, &other, &[]).unwrap();
    let body = crank_runtime::api::AgentIssueBody { worker_id: "payments".into(), csr };
    let refused = ca.agent_issue(&body, &crank_security_core::CorrelationId::new()).await.unwrap_err().to_string();
    assert!(refused.contains("no registration entry assigns worker id payments to agent agent-1"), "{refused}");
    // A worker whose token did not grant `ca.agent` is no agent at all.
    let plain = p.identity("plain");
    let ca_plain = crank_tests::ca_client(vec![p.ca_url().parse().unwrap()], &plain);
    let refused = ca_plain.agent_entries().await.unwrap_err().to_string();
    assert!(refused.contains("ca.agent"), "{refused}");
    // An administrator cannot create an entry that makes an agent its own workload, nor
    // one with a selector the agent could not check.
    let err = create_entry(&p, &admin, "agent-1", "agent-1", &["unix:uid:0"]).unwrap_err().to_string();
    assert!(err.contains("bad_entry") || err.contains("own identity"), "{err}");
    let err = create_entry(&p, &admin, "x", "agent-1", &["k8s:ns:default"]).unwrap_err().to_string();
    assert!(err.contains("only unix selectors"), "{err}");

    // A socket path that exists and is not ours is refused, naming it.
    let squatted = p.tmp.path().join("squatted.sock");
    std::fs::write(&squatted, "not a socket").unwrap();
    let (mut c, _, _) = agent_command(&p, "agent-2", &["--socket", squatted.to_str().unwrap()]);
    let out = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{said}");
    assert!(said.contains(squatted.to_str().unwrap()), "the refusal names the path: {said}");
    assert_eq!(std::fs::read_to_string(&squatted).unwrap(), "not a socket", "the file was left alone");

    // An agent whose own certificate is revoked stops handing out, and says so.
    create_entry(&p, &admin, "py-api", "agent-1", &[&format!("unix:uid:{}", uid())]).unwrap();
    eventually("the agent to hand out py-api", Duration::from_secs(30), || {
        let socket = socket.clone();
        async move { workload_async(socket, vec!["svid".into()], Duration::from_secs(10)).await.2.contains("py-api") }
    })
    .await;
    p.revoke(&admin, &["--worker-id", "agent-1"]).unwrap();
    eventually("the revoked agent to stop handing out", Duration::from_secs(30), || {
        let socket = socket.clone();
        async move {
            let (_, lines, _) = workload_async(socket, vec!["refused".into()], Duration::from_secs(10)).await;
            lines
                .first()
                .and_then(|l| l["error"].as_str())
                .is_some_and(|e| e.contains("UNAVAILABLE") && e.contains("revoked"))
        }
    })
    .await;
    assert!(agent.log().contains("the agent stops handing out certificates"), "{}", agent.log());
    p.stop_ca();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_tls_server_fed_by_file_mode_serves_a_rust_caller_across_two_rotations_without_a_failed_call() {
    let p = Platform::start(&["--leaf-validity", "12s"]).await;
    let admin = p.admin("ops");
    create_entry(&p, &admin, "py-server", "agent-1", &[&format!("unix:uid:{}", uid())]).unwrap();
    let dir = p.tmp.path().join("py-server");
    let pid_file = p.tmp.path().join("py-server.pid");
    let files = format!("{}=py-server", dir.display());
    let signal = format!("{}=HUP:{}", dir.display(), pid_file.display());
    let agent = start_agent(&p, "agent-1", &["--files", &files, "--signal", &signal]).await;
    crank_tests::wait_until("the agent to write the directory", Duration::from_secs(30), || {
        dir.join("ca.crl").exists()
    })
    .await;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("client.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "client.key is 0600");

    let port = free_addr().port();
    let server_log = p.tmp.path().join("py-server.log");
    let log = std::fs::File::create(&server_log).unwrap();
    let _server = KillOnDrop(
        std::process::Command::new(python())
            .arg(script("tls_server.py"))
            .args([&port.to_string(), dir.to_str().unwrap(), pid_file.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    crank_tests::wait_for_port(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
    let server_url = format!("https://127.0.0.1:{port}");
    let (_caller, caller) = p.worker("caller", &[("HELLO_WORLD_URL", server_url.as_str())]).await;
    let user = Platform::client(&p.identity("user"));
    let call = format!("https://127.0.0.1:{}/call", caller.port());

    // The certificates the server has loaded, in order (at start, and at each reload
    // after the agent signalled it).
    let loaded = || -> Vec<String> {
        let log = std::fs::read_to_string(&server_log).unwrap_or_default();
        let mut serials: Vec<String> = Vec::new();
        for line in log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            if let Some(s) = line["serial"].as_str()
                && serials.last().is_none_or(|last| last != s)
            {
                serials.push(s.to_owned());
            }
        }
        serials
    };
    let at_start = loaded().len();
    assert!(at_start >= 1, "{}", std::fs::read_to_string(&server_log).unwrap());
    let mut calls = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Two rotations after the calls began, each reloaded by the server.
    while loaded().len() < at_start + 2 {
        assert!(std::time::Instant::now() < deadline, "two reloads did not come; agent log:\n{}", agent.log());
        let r = user.get(&call).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        assert_eq!(status, 200, "call {calls} failed: {body}");
        assert_eq!(body["hello_world_saw"]["caller_spiffe_id"], "spiffe://crank.local/worker/caller", "{body}");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And after the second reload, still.
    for _ in 0..5 {
        assert_eq!(user.get(&call).send().await.unwrap().status(), 200);
    }
    assert!(calls > 20, "only {calls} calls were made; the server loaded {:?}; agent log:\n{}", loaded(), agent.log());
    let said = std::fs::read_to_string(&server_log).unwrap();
    assert!(!said.contains("reload_failed"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_while_the_ca_is_down_and_workloads_reconnect_after_an_agent_restart() {
    let mut p = Platform::start(&["--leaf-validity", "1h"]).await;
    let admin = p.admin("ops");
    create_entry(&p, &admin, "py-api", "agent-1", &[&format!("unix:uid:{}", uid())]).unwrap();
    let agent = start_agent(&p, "agent-1", &[]).await;
    let socket = agent.socket.clone();
    eventually("an SVID", Duration::from_secs(30), || {
        let socket = socket.clone();
        async move { workload_async(socket, vec!["watch".into(), "1".into()], Duration::from_secs(5)).await.0 }
    })
    .await;

    // The CA goes away: the agent keeps handing out the SVID it holds.
    p.stop_ca();
    let (ok, lines, said) = workload(&socket, &["watch", "1"], Duration::from_secs(10));
    assert!(ok, "{said}");
    let before = lines[0]["serial"].as_str().unwrap().to_owned();

    // A workload watching its stream while the agent restarts gets an SVID again
    // without anyone doing anything: py-spiffe reconnects.
    p.start_ca().await;
    let watcher =
        tokio::spawn(workload_async(socket.clone(), vec!["watch".into(), "2".into()], Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(agent);
    let _again = start_agent(&p, "agent-1", &[]).await;
    let (ok, lines, said) = watcher.await.unwrap();
    assert!(ok, "the workload did not get an SVID after the restart: {said}");
    let serials: Vec<&str> = lines.iter().filter_map(|l| l["serial"].as_str()).collect();
    assert_eq!(serials[0], before);
    assert_ne!(serials[1], before, "the restarted agent issued a new SVID (keys never leave it, not even to disk)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_key_rotates_and_each_new_key_reaches_workloads_before_it_signs() {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    use tokio_stream::StreamExt as _;

    // The JWT-SVID key is replaced every 12 s; each new one is in the bundle for 3 s
    // before it signs. The agent syncs every second.
    let p =
        Platform::start_with(PlatformOptions { ca_log: true, ..PlatformOptions::serve(&["--jwt-key-max-age", "12s"]) })
            .await;
    let admin = p.admin("ops");
    create_entry(&p, &admin, "jwt-api", "agent-j", &[&format!("unix:uid:{}", uid())]).unwrap();
    let agent = start_agent(&p, "agent-j", &[]).await;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", agent.socket.display())).await.unwrap();
    let td = spiffe::TrustDomain::new("crank.local").unwrap();

    // Every JWT bundle the agent pushes, as the set of its key ids.
    let pushed: Arc<Mutex<Vec<BTreeSet<String>>>> = Arc::default();
    // Until the agent holds the entry, the workload has no identity (PermissionDenied).
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = client.stream_jwt_bundles().await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut stream = stream.unwrap_or_else(|| panic!("no JWT bundle stream; agent log:\n{}", agent.log()));
    let (seen, td2) = (pushed.clone(), td.clone());
    let watcher = tokio::spawn(async move {
        while let Some(Ok(set)) = stream.next().await {
            let kids =
                set.get(&td2).map(|b| b.jwt_authorities().map(|a| a.key_id().to_owned()).collect()).unwrap_or_default();
            seen.lock().unwrap().push(kids);
        }
    });

    // JWT-SVIDs, four a second, until three keys have signed (two rotations).
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    let mut tokens: Vec<String> = Vec::new();
    let mut signers: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while signers.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "three keys never signed: {signers:?}\nagent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let token = client.fetch_jwt_token(["orders"], None).await.unwrap();
        let k = kid(&token);
        // The key that signed it was in the last bundle the workload was pushed before
        // it asked: prepublished, not learnt after the fact.
        let last = pushed.lock().unwrap().last().cloned().unwrap_or_default();
        assert!(
            last.contains(&k),
            "a JWT-SVID of key {k} came before any bundle holding it (last bundle {last:?})\nCA log:\n{}",
            p.ca_log()
        );
        if signers.last() != Some(&k) {
            signers.push(k);
            tokens.push(token);
        }
    }
    assert_eq!(signers.iter().collect::<BTreeSet<_>>().len(), 3, "{signers:?}");

    // The retired keys stay in the bundle while their JWT-SVIDs live: the first token,
    // two rotations old, still validates through the agent and against the bundle.
    for token in &tokens {
        let svid = client.validate_jwt_token("orders", token).await.unwrap_or_else(|e| {
            panic!("a JWT-SVID of key {} no longer validates: {e}\nagent log:\n{}", kid(token), agent.log())
        });
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://crank.local/worker/jwt-api");
    }
    let bundle = client.fetch_jwt_bundles().await.unwrap();
    let bundle = bundle.get(&td).unwrap();
    for k in &signers {
        assert!(bundle.find_jwt_authority(k).is_some(), "key {k} left the bundle early");
    }
    // The CA said so.
    let log = p.ca_log();
    assert!(log.matches("the JWT-SVID key was rotated").count() >= 2, "{log}");
    watcher.abort();
}
