//! The cost of a certificate rotation on a loaded worker, and an idle worker's memory.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/rotation-cost --seconds 60
//! ```
//!
//! Starts `crank ca serve --leaf-validity 20s` and the `hello-world` binary (real
//! processes), then loads `/health` from an in-process worker (itself rotating) with
//! keep-alive connections, counting requests per 250 ms window and recording latencies.
//! A prober opens a new handshake every 100 ms to see when the served serial changes.
//! Windows within ±1 s of a rotation are compared with the others. Before the load, the
//! idle worker's RSS is read from /proc.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use crank_runtime::WorkerApplication;
use crank_security_core::{CertMetadata, SecurityConfig};
use crank_tests::{KillOnDrop, bin, crank, free_addr, serve_ca_process};

const WINDOW: Duration = Duration::from_millis(250);
const CONCURRENCY: usize = 8;

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 =
        std::env::args().skip_while(|a| a != "--seconds").nth(1).map(|v| v.parse()).transpose()?.unwrap_or(60);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(Duration::from_secs(seconds)))
}

async fn run(duration: Duration) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca = tmp.path().join("ca");
    let ca_s = ca.to_str().context("path")?;
    crank(&["ca", "init", "--dir", ca_s])?;
    let (_ca, ca_addr) = serve_ca_process(&ca, &["--leaf-validity", "20s"]).await?;
    let ca_url = format!("https://{ca_addr}");
    let hw_addr = free_addr();
    let token = crank(&["token", "create", "--dir", ca_s, "--worker-id", "hello-world"])?;
    let hw = KillOnDrop(
        Command::new(bin("hello-world"))
            .env_clear()
            .env("CRANK_JOIN_TOKEN", &token)
            .env("CA_SERVICE_URL", &ca_url)
            .env("CERT_DIR", tmp.path().join("hw"))
            .env("HELLO_WORLD_HTTPS_PORT", hw_addr.port().to_string())
            .env("CRANK_LISTEN_HOST", "127.0.0.1")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()?,
    );
    while tokio::net::TcpStream::connect(hw_addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_kib(hw.0.id())?;

    let config = SecurityConfig {
        cert_dir: tmp.path().join("loader"),
        ca_urls: vec![ca_url.parse()?],
        environment: "bench".into(),
    };
    let loader = WorkerApplication::new("loader")
        .port(0)
        .host("127.0.0.1".parse()?)
        .security_config(config)
        .join_token(crank(&["token", "create", "--dir", ca_s, "--worker-id", "loader"])?)
        .start()
        .await?;
    let url = format!("https://127.0.0.1:{}/health", hw_addr.port());
    let start = Instant::now();
    let windows = (duration.as_millis() / WINDOW.as_millis()) as usize + 1;
    let counts = Arc::new(Mutex::new(vec![0u64; windows]));
    let latencies = Arc::new(Mutex::new(vec![Vec::<f64>::new(); windows]));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, counts, latencies) =
            (loader.context.client.current(), url.clone(), counts.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            while start.elapsed() < duration {
                let t = Instant::now();
                let res = client.get(&url).send().await;
                let ok = matches!(&res, Ok(r) if r.status() == 200);
                if !ok && failed < 3 {
                    eprintln!(
                        "at {:?}: {:?}",
                        start.elapsed(),
                        res.map(|r| r.status()).map_err(|e| crank_runtime::worker::error_chain(&e))
                    );
                }
                let w = (t.duration_since(start).as_millis() / WINDOW.as_millis()) as usize;
                if ok {
                    counts.lock().unwrap()[w.min(windows - 1)] += 1;
                    latencies.lock().unwrap()[w.min(windows - 1)].push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed += 1;
                }
            }
            failed
        }));
    }
    // Probe the served serial.
    let mut rotations = Vec::new();
    let mut last = String::new();
    let cfg = Arc::new(crank_runtime::tls::client_config(&loader.trust, loader.credentials.clone())?);
    while start.elapsed() < duration {
        let tcp = tokio::net::TcpStream::connect(hw_addr).await?;
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
            .await?;
        let serial = CertMetadata::from_der(&tls.get_ref().1.peer_certificates().context("no cert")?[0])?.serial;
        if !last.is_empty() && serial != last {
            rotations.push(start.elapsed());
        }
        last = serial;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    let loaded_rss = rss_kib(hw.0.id())?;
    loader.shutdown().await?;

    let counts = counts.lock().unwrap().clone();
    let latencies = latencies.lock().unwrap().clone();
    let near = |w: usize| {
        let mid = WINDOW * w as u32 + WINDOW / 2;
        rotations.iter().any(|r| mid.abs_diff(*r) <= Duration::from_secs(1))
    };
    // Skip the first and last second (warm-up, tail).
    let usable = 4..windows.saturating_sub(4);
    let (mut during, mut steady, mut lat_during, mut lat_steady) = (vec![], vec![], vec![], vec![]);
    for w in usable {
        let rps = counts[w] as f64 / WINDOW.as_secs_f64();
        if near(w) {
            during.push(rps);
            lat_during.extend(latencies[w].iter().copied());
        } else {
            steady.push(rps);
            lat_steady.extend(latencies[w].iter().copied());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let p99 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64) * 0.99) as usize).copied().unwrap_or(f64::NAN)
    };
    let (rps_steady, rps_during) = (median(&mut steady), median(&mut during));
    println!(
        "rotations seen: {} at {:?}",
        rotations.len(),
        rotations.iter().map(|d| d.as_secs_f32()).collect::<Vec<_>>()
    );
    println!("failed requests: {failed}");
    println!(
        "throughput: steady median {rps_steady:.0} req/s, during rotation median {rps_during:.0} req/s, ratio {:.3}",
        rps_during / rps_steady
    );
    println!("p99 latency: steady {:.2} ms, during rotation {:.2} ms", p99(&mut lat_steady), p99(&mut lat_during));
    println!(
        "hello-world RSS: idle {:.1} MiB, after load {:.1} MiB",
        idle_rss as f64 / 1024.0,
        loaded_rss as f64 / 1024.0
    );
    Ok(())
}
