//! Join tokens: the CA's verification (signature, algorithm, issuer, audience, expiry,
//! claims) of a token anyone can send to `POST /v1/certificates`, and the worker's
//! reading of the token it is given (`peek_token_claims`: which CA to pin, which worker
//! id) before it has any trust.
#![no_main]

use std::sync::OnceLock;

use crank_ca::{CaDir, TokenAuthority};
use crank_fuzz::fixtures;
use libfuzzer_sys::fuzz_target;

/// The fixture CA's token authority (the key its seed tokens are signed with).
fn authority() -> &'static TokenAuthority {
    static AUTHORITY: OnceLock<TokenAuthority> = OnceLock::new();
    AUTHORITY.get_or_init(|| {
        let dir = CaDir::new(fixtures().join("ca"));
        let key = CaDir::read_key(&dir.token_key()).expect("fixture token key");
        TokenAuthority::new(&key, dir.trust_domain().expect("fixture trust domain"), dir.pinned_fingerprint().unwrap())
            .expect("token authority")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = authority().verify(&text);
    let _ = crank_security_core::peek_token_claims(&text);
});
