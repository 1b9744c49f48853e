//! The operator console on the real binaries: what an administrator sees (the ledger
//! searched and paged, a certificate's life, replicas, the CRL, refusals, the workers of
//! the platform registry), `crank status`, and who is refused.

use std::net::SocketAddr;
use std::time::Duration;

use crank_tests::{KillOnDrop, Platform, PlatformOptions, bin, eventually, free_addr, wait_for_port};

/// An HTTPS client presenting the administrator certificate in `dir` (`crank ca
/// admin-cert`).
fn admin_client(dir: &std::path::Path) -> reqwest::Client {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let bundle =
        crank_security_core::CertificateBundle::from_pem(&read("admin.crt"), &read("admin.key"), &read("ca.crt"))
            .unwrap();
    Platform::client(&bundle)
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The table rows of `html` carrying `data-serial`, as (serial, row class).
fn rows(html: &str) -> Vec<(String, String)> {
    html.split("<tr class=\"")
        .skip(1)
        .filter_map(|row| {
            let (class, rest) = row.split_once('"')?;
            let serial = rest.split_once("data-serial=\"")?.1.split_once('"')?.0;
            Some((serial.to_owned(), class.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_sees_the_ledger_a_certificates_life_and_refusals_and_others_are_refused() {
    // Worker certificates for 12 s, so that hello-world renews while the test runs.
    let opts = PlatformOptions { ca_log: true, ..PlatformOptions::serve(&["--leaf-validity", "12s"]) };
    let p = Platform::start_with(opts).await;
    let base = p.ca_url();
    let admin = admin_client(&p.admin("alice"));
    let (_hello, _) = p.worker("hello-world", &[]).await;
    let mallory = p.identity("mallory");
    // 55 more workers: more than a page.
    for i in 0..55 {
        p.identity(&format!("batch-{i:02}"));
    }
    let revoked_serial = mallory.metadata().serial.clone();
    p.revoke(&p.tmp.path().join("admin-alice"), &["--serial", &revoked_serial]).unwrap();
    // hello-world renews its 12 s certificate.
    eventually("hello-world to renew", Duration::from_secs(30), || async {
        p.events("hello-world").iter().any(|e| e["event"] == "CERT_RENEWED")
    })
    .await;

    // The overview: counts, the CRL, this replica healthy.
    let (status, html) = get(&admin, &format!("{base}/console")).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("CA crank.local"), "{html}");
    assert!(html.contains("id=\"count-revoked\">1<"), "{html}");
    assert!(html.contains("id=\"crl-number\">"), "{html}");
    let replicas =
        html.split("id=\"replicas\"").nth(1).unwrap_or_default().split("</table>").next().unwrap_or_default();
    assert!(replicas.contains("badge healthy"), "no healthy replica: {replicas}\n{}", p.ca_log());

    // The ledger, newest first, 50 to a page, with a cursor to the next.
    let (_, first) = get(&admin, &format!("{base}/console/certificates")).await;
    let page1 = rows(&first);
    assert_eq!(page1.len(), 50, "{first}");
    let next = first
        .split("id=\"next-page\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    let (_, second) = get(&admin, &format!("{base}{next}")).await;
    let page2 = rows(&second);
    assert!(!page2.is_empty() && page2.len() < 50, "{second}");
    assert!(page2.iter().all(|r| !page1.contains(r)), "a row on both pages");
    let total: usize = 2 + 1 + 55 + 1; // hello-world (issued and renewed at least once), mallory, batch, alice
    assert!(page1.len() + page2.len() >= total, "{} rows", page1.len() + page2.len());

    // Search by worker id, and by serial however it is typed; the revoked one is marked.
    let (_, found) = get(&admin, &format!("{base}/console/certificates?q=mallory")).await;
    assert_eq!(rows(&found), vec![(revoked_serial.clone(), "revoked".to_owned())], "{found}");
    let typed = revoked_serial.replace(':', "").to_ascii_uppercase();
    let (_, by_serial) = get(&admin, &format!("{base}/console/certificates?q={}", &typed[..12])).await;
    assert!(rows(&by_serial).iter().any(|(s, c)| s == &revoked_serial && c == "revoked"), "{by_serial}");
    let (_, only_revoked) = get(&admin, &format!("{base}/console/certificates?status=revoked")).await;
    assert_eq!(rows(&only_revoked).len(), 1, "{only_revoked}");
    let (_, batch) = get(&admin, &format!("{base}/console/certificates?q=batch-1")).await;
    assert_eq!(rows(&batch).len(), 10, "{batch}");

    // A certificate's life: hello-world's first certificate was superseded by its renewal.
    let (_, hello_rows) = get(&admin, &format!("{base}/console/certificates?q=hello-world")).await;
    let hello_rows = rows(&hello_rows);
    let (first_serial, _) = hello_rows.last().unwrap().clone();
    let (status, detail) = get(&admin, &format!("{base}/console/certificates/{first_serial}")).await;
    assert_eq!(status, 200);
    assert!(detail.contains("issued with a join token"), "{detail}");
    assert!(detail.contains("superseded at renewal by"), "{detail}");
    assert!(detail.contains("spiffe://crank.local/worker/hello-world"), "{detail}");
    let (_, detail) = get(&admin, &format!("{base}/console/certificates/{revoked_serial}")).await;
    assert!(detail.contains("revoked (keyCompromise) by"), "{detail}");
    assert!(detail.contains("id=\"state\">revoked<"), "{detail}");
    let (status, _) = get(&admin, &format!("{base}/console/certificates/00:11:22")).await;
    assert_eq!(status, 404);

    // A plain worker is refused by policy, naming the capability; a client without a
    // certificate gets 401.
    let ops = p.identity("ops");
    let (status, body) = get(&Platform::client(&ops), &format!("{base}/console")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("ca.console"), "{body}");
    let (status, _) = get(&Platform::client(&ops), &format!("{base}/console/api/status")).await;
    assert_eq!(status, 403);
    let anonymous = reqwest::Client::builder()
        .use_preconfigured_tls(std::sync::Arc::unwrap_or_clone(crank_tests::tls_client_config(ops.ca(), None, &[])))
        .build()
        .unwrap();
    let (status, _) = get(&anonymous, &format!("{base}/console")).await;
    assert_eq!(status, 401);

    // The refusal shows on the overview, with its reason.
    let (_, html) = get(&admin, &format!("{base}/console")).await;
    let refusals = html.split("id=\"denials\"").nth(1).unwrap_or_else(|| panic!("no refusals table: {html}"));
    assert!(refusals.contains("ACCESS_DENIED") && refusals.contains("ca.console"), "{refusals}");
    assert!(refusals.contains("spiffe://crank.local/worker/ops"), "{refusals}");

    // `crank status`, as text and as JSON.
    let admin_dir = p.tmp.path().join("admin-alice");
    let text = crank_tests::crank(&["status", "--admin-dir", admin_dir.to_str().unwrap(), "--ca-url", &base]).unwrap();
    assert!(text.contains("Certificates:") && text.contains("1 revoked"), "{text}");
    assert!(text.contains("healthy"), "{text}");
    let json = crank_tests::crank(&["status", "--admin-dir", admin_dir.to_str().unwrap(), "--ca-url", &base, "--json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["certificates"]["revoked"], 1, "{v}");
    assert!(v["certificates"]["total"].as_u64().unwrap() >= total as u64, "{v}");
    assert!(v["recent_denials"].as_array().unwrap().iter().any(|d| d["capability"] == "ca.console"), "{v}");
    let refused = crank_tests::crank_output(&["status", "--admin-dir", p.tmp.path().join("ops").to_str().unwrap()]);
    assert!(!refused.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_the_workers_the_platform_registry_sees() {
    // The registry, a worker itself, and the console's identity at it.
    let mut p = Platform::start(&[]).await;
    let registry_addr: SocketAddr = free_addr();
    let registry_dir = p.tmp.path().join("platform");
    let mut registry = std::process::Command::new(bin("crank"));
    registry
        .args(["platform", "serve", "--port", &registry_addr.port().to_string()])
        .env("CERT_DIR", &registry_dir)
        .env("CA_SERVICE_URL", p.ca_url())
        .env("CRANK_JOIN_TOKEN", p.token("platform"))
        .env("CRANK_LISTEN_HOST", "127.0.0.1")
        .env("RUST_LOG", "error");
    let _registry = KillOnDrop(registry.spawn().unwrap());
    wait_for_port(registry_addr).await.unwrap();
    let platform_url = format!("https://127.0.0.1:{}", registry_addr.port());
    p.identity_with("console", &["platform.workers.read"]);
    let (_hello, _) =
        p.worker("hello-world", &[("PLATFORM_URL", &platform_url), ("CRANK_HEARTBEAT_INTERVAL", "1s")]).await;

    // Without a registry configured, the page says how to configure one.
    let admin = admin_client(&p.admin("alice"));
    let (status, html) = get(&admin, &format!("{}/console/workers", p.ca_url())).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"no-registry\""), "{html}");

    // With it: hello-world, as the registry saw it.
    p.stop_ca();
    let console_dir = p.tmp.path().join("console");
    p.set_serve_args(&["--platform-url", &platform_url, "--platform-client-dir", console_dir.to_str().unwrap()]);
    p.start_ca().await;
    eventually("the console to list hello-world", Duration::from_secs(15), || async {
        get(&admin, &format!("{}/console/workers", p.ca_url())).await.1.contains("data-worker=\"hello-world\"")
    })
    .await;

    // An identity the registry refuses: the page names the refusal instead.
    p.identity("plain");
    p.stop_ca();
    let plain_dir = p.tmp.path().join("plain");
    p.set_serve_args(&["--platform-url", &platform_url, "--platform-client-dir", plain_dir.to_str().unwrap()]);
    p.start_ca().await;
    let (status, html) = get(&admin, &format!("{}/console/workers", p.ca_url())).await;
    assert_eq!(status, 502, "{html}");
    assert!(html.contains("403") && html.contains("platform.workers.read"), "{html}");
}
