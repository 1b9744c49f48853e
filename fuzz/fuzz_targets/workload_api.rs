//! The agent's Workload API socket, where any local process may write (`crank agent`):
//!
//! - the client side of an HTTP/2 connection as the agent re-encodes it for gRPC C-core
//!   clients (`AuthorityFix`): frames, HPACK header blocks, CONTINUATION, padding, cut
//!   at arbitrary points;
//! - JWT-SVIDs and audiences given to `ValidateJWTSVID`, against the fixture CA's JWT
//!   bundle;
//! - the request messages (protobuf) and the selectors of registration entries.
//!
//! The first byte picks the part; the rest is its input.
#![no_main]

use crank_agent::authority::AuthorityFix;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The client's connection preface: prepended so the fuzzer starts at the frames.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            // Cut where the second byte says, as reads from a socket would.
            let Some((&cut, frames)) = rest.split_first() else { return };
            let mut fix = AuthorityFix::default();
            let mut out = Vec::new();
            let mut input = PREFACE.to_vec();
            input.extend_from_slice(frames);
            for chunk in input.chunks(usize::from(cut).max(1)) {
                if fix.push(chunk, &mut out).is_err() {
                    return;
                }
            }
            // What the server reads is whole frames of at most 16 KiB after the preface.
            let mut at = PREFACE.len();
            while out.len() - at >= 9 {
                let len = usize::from(out[at]) << 16 | usize::from(out[at + 1]) << 8 | usize::from(out[at + 2]);
                assert!(len <= 16_384, "a frame of {len} bytes was written");
                at += 9 + len;
            }
        }
        1 => {
            // token \xff audience \xff JWKS (the fixture's when empty)
            let mut parts = rest.splitn(3, |b| *b == 0xff);
            let token = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let audience = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let jwks = parts.next().filter(|j| !j.is_empty()).map_or_else(crank_fuzz::fixture_jwks, <[u8]>::to_vec);
            if let Ok(subject) = crank_agent::workload::validate_jwt(&token, &audience, &jwks, "crank.local") {
                assert!(subject.starts_with("spiffe://crank.local/"), "{subject}");
            }
        }
        2 => {
            let _ = crank_agent::proto::JWTSVIDRequest::decode(rest);
            let _ = crank_agent::proto::ValidateJWTSVIDRequest::decode(rest);
            let _ = crank_agent::proto::X509SVIDRequest::decode(rest);
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let items: Vec<&str> = text.split('\n').collect();
            if let Ok(selectors) = crank_security_core::Selector::parse_all(&items) {
                for s in &selectors {
                    // What is stored is what parses back.
                    assert_eq!(s.to_string().parse::<crank_security_core::Selector>().ok().as_ref(), Some(s));
                }
            }
        }
    }
});
