//! `crank-probe URL [--cacert FILE]`: the probe call of `crank probe` as a small binary of
//! its own, for container images whose only other binary is a worker (their
//! `HEALTHCHECK`). Exits 0 when the probe answers 200, else 1 with the reason.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, cacert) = match args.as_slice() {
        [url] => (url, None),
        [url, flag, file] if flag == "--cacert" => (url, Some(file)),
        _ => {
            eprintln!("usage: crank-probe https://HOST:PORT/readyz [--cacert CA.pem]");
            return ExitCode::from(2);
        }
    };
    let roots = match cacert.map(|f| {
        std::fs::read(f)
            .map_err(|e| format!("reading {f}: {e}"))
            .and_then(|pem| crank_security_core::parse_pem_certs("CA certificate", &pem).map_err(|e| e.to_string()))
    }) {
        None => None,
        Some(Ok(roots)) => Some(roots),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(crank_runtime::probe::probe(url, roots.as_deref())));
    match outcome {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
