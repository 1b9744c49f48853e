//! `/metrics` on the CA and on workers: mTLS only, Prometheus text format.

use std::collections::HashMap;

use crank_runtime::demo::hello_routes;
use crank_tests::TestCa;

use super::{mtls, no_client_cert};

/// Parses a scrape with a Prometheus text-format parser; metric name -> summed value.
fn parse(body: &str) -> HashMap<String, f64> {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("not Prometheus text format");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let (prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v)) = s.value
        else {
            continue;
        };
        *out.entry(s.metric).or_insert(0.0) += v;
    }
    out
}

#[tokio::test]
async fn metrics_need_a_client_certificate_and_parse_as_prometheus_text() {
    let ca = TestCa::start().await;
    let hello = ca.worker("hello-world", hello_routes()).await;
    let me = ca.bootstrap_with("scraper", &["metrics.read"]).await;
    let roots = me.ca().to_vec();

    // Without a client certificate: the worker refuses the handshake, the CA answers 401.
    let anon = no_client_cert(&roots);
    assert!(anon.get(format!("https://{}/metrics", hello.addr())).send().await.is_err());
    let r = anon.get(format!("{}metrics", ca.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let client = mtls(&me, &roots);
    for _ in 0..3 {
        assert_eq!(client.get(format!("https://{}/health", hello.addr())).send().await.unwrap().status(), 200);
    }
    let body = client.get(format!("https://{}/metrics", hello.addr())).send().await.unwrap().text().await.unwrap();
    let m = parse(&body);
    let expiry = m["crank_cert_expiration_seconds"];
    assert!(expiry > 23.0 * 3600.0 && expiry <= 24.0 * 3600.0, "{expiry}");
    assert_eq!(m["crank_cert_issuance_total"], 1.0, "the worker obtained one certificate");
    assert_eq!(m["crank_cert_renewal_total"], 0.0);
    assert_eq!(m["crank_ca_unavailable_total"], 0.0);
    assert!(m["crank_http_requests_total"] >= 3.0, "{body}");
    assert!(body.contains("crank_http_request_duration_seconds_bucket"), "{body}");

    let body = client.get(format!("{}metrics", ca.url())).send().await.unwrap().text().await.unwrap();
    let m = parse(&body);
    // The CA issued to hello-world and to the scraper.
    assert_eq!(m["crank_cert_issuance_total"], 2.0, "{body}");
    assert!(m["crank_cert_expiration_seconds"] > 300.0 * 24.0 * 3600.0, "the CA's serving certificate lasts a year");
    hello.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_are_counted_by_type() {
    let mut ca = TestCa::start().await;
    let me = ca.bootstrap_with("counter", &["metrics.read"]).await;
    // A reused token: CSR_FAILED at the CA.
    let mut opts = ca.bootstrap_options("twice");
    crank_runtime::bootstrap(&opts, &crank_security_core::EventSinks::empty()).await.unwrap();
    opts.cert_dir = ca.tmp.path().join("twice-again");
    assert!(crank_runtime::bootstrap(&opts, &crank_security_core::EventSinks::empty()).await.is_err());
    let body = mtls(&me, me.ca()).get(format!("{}metrics", ca.url())).send().await.unwrap().text().await.unwrap();
    assert!(body.contains(r#"crank_cert_errors_total{type="csr_failed"} 1"#), "{body}");
    ca.stop().await;
}
