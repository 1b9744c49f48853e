//! Fault drills of the outside world, on the real binaries: a network that stops
//! carrying the CA's answers (a network namespace, veth and `tc`), and a disk that
//! fills under the CA's ledger (a small tmpfs). Both need root, as CI runs the tests.
//! docs/security.md ("The fault model") lists the drills and how to run each alone.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crank_ca::store::{CaStore, SqliteStore};
use crank_security_core::{CertFiles, CertificateBundle, CertificateProvider};
use crank_tests::{Platform, PlatformOptions, ProcessOptions, RENEW_AT_EVERY_LOOK, root_or_skip, wait_until};
use serde_json::Value;

/// Runs `args`, panicking with its stderr if it fails.
fn run(args: &[&str]) {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace joined to this one by a veth pair: `10.77.N.1` here, `10.77.N.2`
/// inside. Deleted (with its veth) when dropped.
struct NetNs {
    name: String,
    outside: String,
    inside: String,
    net: u8,
    /// Whether the kernel has `tc netem`.
    netem: bool,
}

impl NetNs {
    fn new() -> Self {
        let pid = std::process::id();
        let ns = Self {
            name: format!("crank-drill-{pid}"),
            outside: format!("cko{}", pid % 1_000_000),
            inside: format!("cki{}", pid % 1_000_000),
            net: u8::try_from(pid % 200).unwrap() + 20,
            netem: false,
        };
        let _ = std::process::Command::new("ip").args(["netns", "del", &ns.name]).output();
        run(&["ip", "netns", "add", &ns.name]);
        run(&["ip", "link", "add", &ns.outside, "type", "veth", "peer", "name", &ns.inside]);
        run(&["ip", "link", "set", &ns.inside, "netns", &ns.name]);
        run(&["ip", "addr", "add", &format!("10.77.{}.1/30", ns.net), "dev", &ns.outside]);
        run(&["ip", "link", "set", &ns.outside, "up"]);
        let inside = ns.exec();
        let sh = |args: &[&str]| run(&[&inside.iter().map(String::as_str).collect::<Vec<_>>()[..], args].concat());
        sh(&["ip", "addr", "add", &format!("10.77.{}.2/30", ns.net), "dev", &ns.inside]);
        sh(&["ip", "link", "set", &ns.inside, "up"]);
        sh(&["ip", "link", "set", "lo", "up"]);
        let mut ns = ns;
        ns.netem = std::process::Command::new("tc")
            .args(["qdisc", "add", "dev", &ns.outside, "root", "netem", "delay", "1ms"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ns.netem {
            run(&["tc", "qdisc", "del", "dev", &ns.outside, "root"]);
        }
        eprintln!(
            "tc netem {}",
            if ns.netem { "is available" } else { "is not in this kernel: tbf and pfifo stand in" }
        );
        ns
    }

    /// The address inside.
    fn inside_ip(&self) -> IpAddr {
        format!("10.77.{}.2", self.net).parse().unwrap()
    }

    /// The command prefix that runs a program inside.
    fn exec(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name].iter().map(|s| (*s).to_owned()).collect()
    }

    /// Shapes what leaves towards the namespace (`inbound` true: what enters it, the
    /// requests) or what leaves it (the answers).
    ///
    /// With `tc netem` in the kernel, `Slow` is `netem delay 1s` and `Silent` is `netem
    /// loss 100%`. Kernels built without netem (`CONFIG_NET_SCH_NETEM`) get the same
    /// faults from qdiscs every kernel has: `Slow` is `tbf` at 4 kbit/s (a request of a
    /// few KB takes seconds to cross), `Silent` is `pfifo limit 0` (every packet dropped).
    fn shape(&self, inbound: bool, shape: Shape) {
        let mut args: Vec<String> = if inbound { vec![] } else { self.exec() };
        let dev = if inbound { &self.outside } else { &self.inside };
        args.extend(["tc", "qdisc"].map(String::from));
        let spec: &[&str] = match (shape, self.netem) {
            (Shape::Clear, _) => &["del", "dev", dev, "root"],
            (Shape::Slow, true) => &["replace", "dev", dev, "root", "netem", "delay", "1s"],
            (Shape::Silent, true) => &["replace", "dev", dev, "root", "netem", "loss", "100%"],
            (Shape::Slow, false) => {
                &["replace", "dev", dev, "root", "tbf", "rate", "4kbit", "burst", "1600", "latency", "30s"]
            }
            (Shape::Silent, false) => &["replace", "dev", dev, "root", "pfifo", "limit", "0"],
        };
        args.extend(spec.iter().map(|s| (*s).to_owned()));
        run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

/// What a link is made to do.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Slow: requests take seconds to cross.
    Slow,
    /// Nothing crosses.
    Silent,
    /// Back to normal.
    Clear,
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = std::process::Command::new("ip").args(["link", "del", &self.outside]).output();
    }
}

/// The events named `name` among `events`.
fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

fn serial_in(dir: &Path) -> String {
    CertificateBundle::load(&CertFiles::in_dir(dir)).unwrap().metadata().serial.clone()
}

/// The CA sits in a network namespace; the worker (`hello-world`, renewing at every look,
/// every 3 s) and its peer sit outside. First the link into the CA turns slow (a request
/// takes seconds to cross): renewals still go through. Then, while a renewal request is
/// crossing, the link stops carrying the CA's answers (all lost): the CA has issued and
/// recorded a certificate the worker never receives. The worker times out, backs off
/// (growing `retry_in_ms`) and keeps serving its peer with the certificate it has. When
/// the link comes back it repeats the same renewal and receives exactly the certificate
/// the CA issued during the outage: nothing is issued twice, nothing is raised as a
/// stolen key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_stops_answering_mid_request_issues_nothing_twice_and_the_worker_keeps_serving() {
    if !root_or_skip("a_ca_that_stops_answering_mid_request_issues_nothing_twice_and_the_worker_keeps_serving") {
        return;
    }
    let ns = NetNs::new();
    let ca_ip = ns.inside_ip().to_string();
    let p = Platform::start_with(PlatformOptions {
        init: vec!["--san".into(), ca_ip.clone()],
        serve: vec!["--leaf-validity".into(), "2m".into()],
        ca_process: ProcessOptions { wrapper: ns.exec(), ..Default::default() },
        listen: Some(SocketAddr::new(ns.inside_ip(), 9443)),
        ca_log: true,
    })
    .await;
    let ops = p.identity("ops");
    let policy = p.tmp.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(policy.join("renew.rego"), RENEW_AT_EVERY_LOOK).unwrap();
    let certs = p.tmp.path().join("hello-world");
    let (_hello, addr) = p.worker("hello-world", &[("CRANK_POLICY_DIR", policy.to_str().unwrap())]).await;
    let health = format!("https://127.0.0.1:{}/health", addr.port());
    let served = || async { Platform::client(&ops).get(&health).send().await.is_ok_and(|r| r.status() == 200) };
    assert!(served().await);

    // A slow link into the CA's namespace: a renewal still succeeds. How long from the worker's
    // CSR_SUBMITTED to the CA's CERT_ISSUED is measured, to aim the next fault.
    ns.shape(true, Shape::Slow);
    let submitted = || named(&p.events("hello-world"), "CSR_SUBMITTED").len();
    let issued = || named(&p.ca_events(), "CERT_ISSUED").len();
    let renewed = || named(&p.events("hello-world"), "CERT_RENEWED").len();
    let mut crossing = Duration::ZERO;
    let mut r0 = 0;
    for _ in 0..2 {
        // Counted once the renewal is submitted: the worker renews one at a time, so
        // every earlier renewal is answered by then.
        let s0 = submitted();
        r0 = renewed();
        wait_until("a renewal submitted on the slow link", Duration::from_secs(20), || submitted() > s0).await;
        let (t0, i0) = (Instant::now(), issued());
        wait_until("the CA to issue over the slow link", Duration::from_secs(20), || issued() > i0).await;
        crossing = t0.elapsed();
    }
    assert!(crossing >= Duration::from_secs(1), "the slow link was in force: {crossing:?}");
    wait_until("the renewal answered over the slow link", Duration::from_secs(60), || renewed() > r0).await;

    // The answers stop: everything leaving the CA is lost from half a second before the
    // request is due to reach it (after the TLS handshake, before the answer). If that missed
    // (no issuance followed), the link is mended and the next renewal is tried.
    let retries = |events: &[Value]| -> Vec<u64> {
        named(events, "CA_UNAVAILABLE").iter().filter_map(|e| e["details"]["retry_in_ms"].as_u64()).collect()
    };
    let retries_before = retries(&p.events("hello-world")).len();
    let mut lost = None;
    for attempt in 0..4 {
        let s0 = submitted();
        wait_until("a renewal submitted", Duration::from_secs(60), || submitted() > s0).await;
        let i0 = issued();
        tokio::time::sleep(crossing.saturating_sub(Duration::from_millis(500))).await;
        ns.shape(false, Shape::Silent);
        let held = serial_in(&certs);
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline && issued() == i0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let events = p.ca_events();
        let new = named(&events, "CERT_ISSUED");
        if new.len() > i0 {
            let serial = new[i0]["cert_metadata"]["serial"].as_str().unwrap().to_owned();
            lost = Some((held, serial));
            break;
        }
        eprintln!("attempt {attempt}: the fault came before the request; mending the link and trying again");
        ns.shape(false, Shape::Clear);
    }
    let (held, issued_in_outage) = lost.expect("an answer was lost in one of four attempts");
    eprintln!("crossing {crossing:?}; the CA issued {issued_in_outage} to renew {held} and its answer was lost");

    // The outage: the worker waits out its request (15 s), then backs off, and serves.
    wait_until("two failed renewals", Duration::from_secs(60), || {
        retries(&p.events("hello-world")).len() >= retries_before + 2
    })
    .await;
    let delays = retries(&p.events("hello-world"))[retries_before..].to_vec();
    eprintln!("the worker's retry delays (ms): {delays:?}");
    assert!(delays.len() >= 2 && delays.windows(2).all(|w| w[1] > w[0]), "the worker backs off: {delays:?}");
    assert_eq!(serial_in(&certs), held, "the worker holds its certificate through the outage");
    assert!(served().await, "the worker keeps serving while the CA does not answer");

    // The link comes back: the same renewal, answered with the certificate issued in the
    // outage; nothing issued twice, nothing raised.
    ns.shape(false, Shape::Clear);
    ns.shape(true, Shape::Clear);
    wait_until("the renewal to complete after the outage", Duration::from_secs(90), || serial_in(&certs) != held).await;
    assert_eq!(serial_in(&certs), issued_in_outage, "the worker got the certificate the CA issued in the outage");
    let ledger = SqliteStore::open(&crank_ca::CaDir::new(&p.ca_dir).store()).unwrap();
    let (_, next) = ledger.renewal_of(&held).await.unwrap().expect("the renewal is in the ledger");
    assert_eq!(next.serial, issued_in_outage, "one renewal of {held} in the ledger");
    let log = p.ca_log();
    assert!(log.contains("the same renewal retried"), "the CA answered the retry from its ledger");
    assert!(!log.contains("possible_key_compromise"), "a lost answer is not a stolen key");
    assert!(served().await);
}

/// A tmpfs of `size` mounted on `dir` (made 0700), unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        run(&["mount", "-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "crank-drill", dir.to_str().unwrap()]);
        Self(dir.to_path_buf())
    }

    /// Writes a filler file until the disk is full; its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write_all(&block).and_then(|()| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => return path, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// The CA's directory (keys, ledger) sits on a 4 MiB disk, which then fills up. Workers
/// keep bootstrapping: while the ledger can commit they get certificates; once a commit
/// fails the CA answers 503 naming the full disk, emits `CSR_FAILED` (phase `ledger`),
/// hands out nothing, keeps running, and the ledger stays whole (SQLite's integrity
/// check). When space returns the same request succeeds, without a restart, and every
/// certificate any worker received is in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_ledger_is_a_503_and_the_ca_recovers_when_space_returns() {
    if !root_or_skip("a_full_disk_under_the_ledger_is_a_503_and_the_ca_recovers_when_space_returns") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let disk = SmallDisk::mount(&ca_dir, "4m");
    crank_tests::crank(&["ca", "init", "--dir", ca_dir.to_str().unwrap()]).unwrap();
    let log = tmp.path().join("ca.log");
    let opts = ProcessOptions {
        env: vec![("RUST_LOG".into(), "info".into()), ("CRANK_LOG_FORMAT".into(), "json".into())],
        stderr: Some(log.clone()),
        ..Default::default()
    };
    let (mut ca, addr) = crank_tests::serve_ca_process_with(&ca_dir, &[], &opts).await.unwrap();
    let dir = crank_ca::CaDir::new(&ca_dir);
    let client = crank_runtime::worker::CaClient::pinned(
        vec![format!("https://{addr}").parse().unwrap()],
        &dir.root_fingerprint().unwrap(),
        &crank_security_core::TrustDomain::default(),
    )
    .unwrap();
    let request = |worker: &str| {
        let id = crank_security_core::WorkerId::new(worker).unwrap();
        let token = crank_ca::create_token(&dir, &id, Duration::from_secs(600), vec![]).unwrap();
        let key = crank_security_core::generate_key(crank_security_core::KeyType::default()).unwrap();
        let csr = crank_security_core::build_csr(&key, &id, &[worker.to_owned()]).unwrap();
        crank_security_core::IssueRequest {
            csr_pem: csr,
            token,
            correlation_id: crank_security_core::CorrelationId::new(),
        }
    };
    let mut received = vec![client.issue(request("before")).await.unwrap().serial];

    // The other workers' requests (join tokens, keys, CSRs) are made before the disk fills.
    let requests: Vec<_> = (0..200).map(|i| request(&format!("full-{i}"))).collect();
    let filler = disk.fill();
    let mut refused = None;
    for r in requests {
        match client.issue(r.clone()).await {
            Ok(issued) => received.push(issued.serial),
            Err(crank_security_core::ProviderError::Unavailable(m)) => {
                refused = Some((r, m));
                break;
            }
            Err(e) => panic!("a full disk must be a 503, not {e}"),
        }
    }
    let (refused, message) = refused.expect("a commit failed on the full disk within 200 issuances");
    eprintln!("{} certificates issued with the disk full, then: {message}", received.len() - 1);
    assert!(message.contains("full"), "the 503 names the full disk: {message}");
    assert!(ca.0.try_wait().unwrap().is_none(), "the CA keeps running on a full disk");
    wait_until("CSR_FAILED naming the ledger", Duration::from_secs(5), || {
        crank_tests::logged_events(&std::fs::read_to_string(&log).unwrap_or_default())
            .iter()
            .any(|e| e["event"] == "CSR_FAILED" && e["error"]["phase"] == "ledger")
    })
    .await;
    let check = rusqlite::Connection::open(dir.store()).unwrap();
    let integrity: String = check.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok", "the ledger is whole on the full disk");
    drop(check);

    // Space returns: the same request (same token, same CSR) succeeds, no restart.
    std::fs::remove_file(filler).unwrap();
    let issued = client.issue(refused).await.expect("issuance works again once there is space");
    received.push(issued.serial);
    let ledger = SqliteStore::open(&dir.store()).unwrap();
    for serial in &received {
        assert!(
            ledger.certificate(serial).await.unwrap().is_some(),
            "{serial} was handed out but is not in the ledger"
        );
    }
    assert_eq!(
        ledger.certificate_count().await.unwrap(),
        received.len() as u64,
        "the ledger holds exactly the certificates handed out"
    );
    // And a real worker bootstraps.
    let ops = tmp.path().join("ops");
    let token =
        crank_tests::crank(&["token", "create", "--dir", ca_dir.to_str().unwrap(), "--worker-id", "ops"]).unwrap();
    crank_tests::cert_init("ops", &token, &format!("https://{addr}"), &ops).unwrap();
    drop(ca);
}
