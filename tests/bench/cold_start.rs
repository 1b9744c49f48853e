//! Worker cold start: from process spawn to the first successful mTLS response,
//! including key generation, issuance over loopback and the atomic write.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/cold-start --runs 20
//! ```
//!
//! Starts `crank ca serve` (a real process) on a free port, then spawns the
//! `hello-world` binary `--runs` times with a fresh join token and an empty cert
//! directory, polling `/health` over mTLS every millisecond. Then the same with the
//! certificate already on disk (a restart). Prints min / median / p90 / max.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use crank_runtime::MtlsClient;
use crank_security_core::{CertFiles, CertificateBundle};
use crank_tests::{KillOnDrop, bin, cert_init, crank, free_addr, serve_ca_process};

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map(|v| v.parse())
        .transpose()
        .context("--runs takes a number")?
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(runs))
}

async fn run(runs: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca_dir = tmp.path().join("ca");
    let ca = ca_dir.to_str().context("path")?;
    crank(&["ca", "init", "--dir", ca])?;
    let (_ca, ca_addr) = serve_ca_process(&ca_dir, &[]).await?;
    let ca_url = format!("https://{ca_addr}");
    let probe_dir = tmp.path().join("probe");
    let token = crank(&["token", "create", "--dir", ca, "--worker-id", "probe"])?;
    cert_init("probe", &token, &ca_url, &probe_dir)?;
    let probe = CertificateBundle::load(&CertFiles::in_dir(&probe_dir))?;

    let mut fresh = Vec::new();
    let mut restart = Vec::new();
    for i in 0..runs {
        let cert_dir = tmp.path().join(format!("w{i}"));
        let token = crank(&["token", "create", "--dir", ca, "--worker-id", "hello-world"])?;
        fresh.push(start_once(&probe, &cert_dir, Some(&token), &ca_url).await?);
        restart.push(start_once(&probe, &cert_dir, None, &ca_url).await?);
    }
    report("first start (key + CSR + issuance + write)", &mut fresh);
    report("restart (valid certificate on disk)", &mut restart);
    Ok(())
}

async fn start_once(
    probe: &CertificateBundle,
    cert_dir: &std::path::Path,
    token: Option<&str>,
    ca_url: &str,
) -> anyhow::Result<Duration> {
    let addr = free_addr();
    let mut cmd = Command::new(bin("hello-world"));
    cmd.env_clear()
        .env("CERT_DIR", cert_dir)
        .env("CA_SERVICE_URL", ca_url)
        .env("HELLO_WORLD_HTTPS_PORT", addr.port().to_string())
        .env("CRANK_LISTEN_HOST", "127.0.0.1")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = token {
        cmd.env("CRANK_JOIN_TOKEN", t);
    }
    // A client that opens a new connection per request, so each probe is a real handshake.
    let url = format!("https://127.0.0.1:{}/health", addr.port());
    let start = Instant::now();
    let _child = KillOnDrop(cmd.spawn()?);
    let client = MtlsClient::from_bundle(probe)?;
    loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "hello-world did not answer within 20 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn report(name: &str, v: &mut [Duration]) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name}: runs={} min={:.1} ms median={:.1} ms p90={:.1} ms max={:.1} ms",
        v.len(),
        ms(v[0]),
        ms(p(0.5)),
        ms(p(0.9)),
        ms(v[v.len() - 1])
    );
}
