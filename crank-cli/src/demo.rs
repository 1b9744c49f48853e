//! `crank demo`: a local CA plus the hello-world worker over mTLS, in one process.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use crank_ca::{CaDir, InitOptions, LocalCa, create_token, init_ca};
use crank_runtime::demo::hello_routes;
use crank_runtime::{BootstrapOptions, RetryPolicy, WorkerApplication, bootstrap};
use crank_security_core::{CertFiles, EventSinks, KeyType, SecurityConfig, TrustDomain, WorkerId};

/// `crank demo`
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Folder for the demo's CA and certificates.
    #[arg(long, default_value = "crank-demo")]
    pub(crate) dir: PathBuf,
    /// Where the CA listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub(crate) ca_listen: SocketAddr,
    /// The hello-world worker's port.
    #[arg(long, env = "HELLO_WORLD_HTTPS_PORT", default_value_t = 8500)]
    pub(crate) port: u16,
}

/// Runs the demo until Ctrl-C.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let ca_dir = CaDir::new(args.dir.join("ca"));
    if ca_dir.exists() {
        tracing::info!(dir = %ca_dir.dir.display(), "reusing the demo CA");
    } else {
        init_ca(&ca_dir, &InitOptions { trust_domain: TrustDomain::default(), extra_sans: vec![], force: false })?;
        tracing::info!(dir = %ca_dir.dir.display(), "created the demo CA");
    }
    let ca = LocalCa::builder(ca_dir.clone()).build().await?;
    let ca_server = crank_ca::server::bind_and_spawn(&ca_dir, args.ca_listen, ca)
        .await
        .with_context(|| format!("starting the CA on {} (is another demo running? use --ca-listen)", args.ca_listen))?;
    let ca_url: url::Url = format!("https://{}", args.ca_server_url_host(ca_server.addr())).parse()?;
    tracing::info!(url = %ca_url, "CA service listening");

    // A client identity for curl, bootstrapped exactly like a worker.
    let client_dir = args.dir.join("client");
    let client_files = CertFiles::in_dir(&client_dir);
    let client_ok = client_files.exist()
        && crank_security_core::CertificateBundle::load(&client_files)
            .is_ok_and(|b| b.validate(std::time::SystemTime::now()).is_ok());
    if !client_ok {
        let token = create_token(&ca_dir, &WorkerId::new("demo-client")?, Duration::from_secs(300), vec![])?;
        let opts = BootstrapOptions {
            worker_id: Some(WorkerId::new("demo-client")?),
            token,
            ca_urls: vec![ca_url.clone()],
            cert_dir: client_dir.clone(),
            sans: vec!["demo-client".into()],
            key_type: KeyType::default(),
            retry: RetryPolicy { attempts: 3, ..RetryPolicy::default() },
        };
        bootstrap(&opts, &EventSinks::default()).await?;
    }

    let worker_dir = args.dir.join("hello-world");
    let config =
        SecurityConfig { cert_dir: worker_dir.clone(), ca_urls: vec![ca_url], environment: "development".into() };
    let mut app = WorkerApplication::new("hello-world")
        .port(args.port)
        .host(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .routes(hello_routes())
        .security_config(config)
        .worker_id("hello-world");
    let worker_files = CertFiles::in_dir(&worker_dir);
    let worker_ok = worker_files.exist()
        && crank_security_core::CertificateBundle::load(&worker_files)
            .is_ok_and(|b| b.validate(std::time::SystemTime::now()).is_ok());
    if !worker_ok {
        app = app.join_token(create_token(&ca_dir, &WorkerId::new("hello-world")?, Duration::from_secs(300), vec![])?);
    }
    let worker = app.start().await.with_context(|| format!("starting the hello-world worker on port {}", args.port))?;

    let d = args.dir.display();
    say!();
    say!("crank demo is running: CA on https://{}, hello-world worker on https://{}", ca_server.addr(), worker.addr());
    say!("Try it (client certificate required):");
    say!();
    say!(
        "  curl --cert {d}/client/client.crt --key {d}/client/client.key --cacert {d}/client/ca.crt https://127.0.0.1:{}/health",
        worker.addr().port()
    );
    say!();
    say!("Without --cert/--key the TLS handshake is refused. Press Ctrl-C to stop.");

    crank_runtime::shutdown_signal().await;
    worker.shutdown().await?;
    ca_server.shutdown().await?;
    say!("crank demo stopped");
    Ok(())
}

impl DemoArgs {
    fn ca_server_url_host(&self, addr: std::net::SocketAddr) -> String {
        if addr.ip().is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() }
    }
}
