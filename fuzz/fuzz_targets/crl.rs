//! Revocation lists on the worker: the bytes a CA (or whoever answers on its address)
//! returns from `GET /v1/crl`, or what sits in `ca.crl` at start. PEM or DER is told
//! apart (`crl_der`), then the CRL is parsed and its signature verified against the
//! fixture CA's root (`verify_crl`), and finally handed to rustls's own CRL parsing as
//! the trust store does.
#![no_main]

use crank_fuzz::fixture_root;
use crank_runtime::worker::{crl_der, verify_crl};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateRevocationListDer;

fuzz_target!(|data: &[u8]| {
    let Ok(der) = crl_der(data) else { return };
    let roots = [fixture_root()];
    if verify_crl(&der, &roots, &[]).is_ok() {
        // A CRL that verified is what the trust store gets.
        let store = crank_runtime::trust::TrustStore::new(&roots).expect("trust store");
        let _ = store.set_crls(vec![CertificateRevocationListDer::from(der)]);
    }
});
