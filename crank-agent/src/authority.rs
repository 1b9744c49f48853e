//! Makes requests of gRPC C-core clients (py-spiffe, grpc-java, grpc-c++) acceptable to
//! the HTTP/2 server over a Unix socket.
//!
//! Those clients send the socket's path, percent-encoded, as the request's `:authority`
//! (`tmp%2Fagent.sock`). That is not a URI authority, and the HTTP/2 server under tonic
//! (`h2`) resets every such stream with `PROTOCOL_ERROR` (h2 issue 442, pull request
//! 487, open upstream). On a Unix socket the authority means nothing: the peer is
//! whoever the kernel says it is. So the client's side of each connection passes
//! through [`AuthorityFix`], which replaces an `:authority` that is not a valid URI
//! authority with `localhost`, the value gRPC uses for Unix sockets elsewhere.
//!
//! The header blocks are decoded and encoded again by an HPACK library (`loona-hpack`);
//! only the nine-byte frame header is read here. Every header block is encoded again
//! (not only the ones changed): the server's HPACK table follows this encoder, not the
//! client's. Every other frame passes through untouched, and nothing is changed on the
//! server's side of the connection.

use std::io;

/// The client's connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HTTP/2 frame types and flags used here (RFC 9113, section 6).
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload a peer may send before SETTINGS_MAX_FRAME_SIZE raises it;
/// the server here never raises it.
const MAX_FRAME: usize = 16_384;
/// The largest header block accepted, across CONTINUATION frames.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The value put in place of an `:authority` that is not a URI authority.
pub const UNIX_AUTHORITY: &[u8] = b"localhost";

/// Rewrites the client-to-server bytes of one HTTP/2 connection.
pub struct AuthorityFix {
    preface_left: usize,
    input: Vec<u8>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// A header block waiting for its CONTINUATION frames: stream id, END_STREAM, block.
    pending: Option<(u32, bool, Vec<u8>)>,
    /// How many `:authority` values were replaced.
    pub replaced: u64,
}

impl std::fmt::Debug for AuthorityFix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix").field("buffered", &self.input.len()).field("replaced", &self.replaced).finish()
    }
}

impl Default for AuthorityFix {
    fn default() -> Self {
        Self {
            preface_left: PREFACE.len(),
            input: Vec::new(),
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
            pending: None,
            replaced: 0,
        }
    }
}

fn invalid(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

impl AuthorityFix {
    /// Takes bytes read from the client; appends to `out` what the server should read.
    /// An error means the connection must be closed (not HTTP/2, or a header block
    /// that does not decode or is too large).
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut bytes = bytes;
        if self.preface_left > 0 {
            let n = self.preface_left.min(bytes.len());
            let at = PREFACE.len() - self.preface_left;
            if bytes[..n] != PREFACE[at..at + n] {
                return Err(invalid("not an HTTP/2 connection preface"));
            }
            out.extend_from_slice(&bytes[..n]);
            self.preface_left -= n;
            bytes = &bytes[n..];
        }
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        while self.input.len() - at >= 9 {
            let h = &self.input[at..at + 9];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if len > MAX_FRAME {
                return Err(invalid(format!("a frame of {len} bytes is over the maximum frame size")));
            }
            if self.input.len() - at < 9 + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let payload = &self.input[at + 9..at + 9 + len];
            match (kind, self.pending.take()) {
                (HEADERS, None) => {
                    let fragment = headers_fragment(flags, payload)?.to_vec();
                    self.block(stream, flags & END_STREAM != 0, fragment, flags & END_HEADERS != 0, out)?;
                }
                (CONTINUATION, Some((s, end_stream, mut block))) if s == stream => {
                    block.extend_from_slice(payload);
                    self.block(stream, end_stream, block, flags & END_HEADERS != 0, out)?;
                }
                (_, Some(_)) | (CONTINUATION, None) => {
                    return Err(invalid("a header block was interrupted (RFC 9113, section 6.10)"));
                }
                _ => out.extend_from_slice(&self.input[at..at + 9 + len]),
            }
            at += 9 + len;
        }
        self.input.drain(..at);
        Ok(())
    }

    /// A header block, whole or not yet: when whole, decoded, its `:authority` fixed,
    /// encoded again and written out as HEADERS and CONTINUATION frames.
    fn block(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: Vec<u8>,
        whole: bool,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        if block.len() > MAX_HEADER_BLOCK {
            return Err(invalid(format!("a header block is over {MAX_HEADER_BLOCK} bytes")));
        }
        if !whole {
            self.pending = Some((stream, end_stream, block));
            return Ok(());
        }
        let mut headers =
            self.decoder.decode(&block).map_err(|e| invalid(format!("a header block does not decode: {e:?}")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                *value = UNIX_AUTHORITY.to_vec();
                self.replaced += 1;
            }
        }
        let encoded = self.encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        if encoded.is_empty() {
            frame(out, HEADERS, END_HEADERS | if end_stream { END_STREAM } else { 0 }, stream, &[]);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let (kind, mut flags) =
                if first { (HEADERS, if end_stream { END_STREAM } else { 0 }) } else { (CONTINUATION, 0) };
            if last {
                flags |= END_HEADERS;
            }
            frame(out, kind, flags, stream, chunk);
            first = false;
        }
        Ok(())
    }
}

/// The header block fragment of a HEADERS frame, without padding and priority.
fn headers_fragment(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first().ok_or_else(|| invalid("a padded HEADERS frame without its pad length"))?;
        pad = usize::from(n);
        p = rest;
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..).ok_or_else(|| invalid("a HEADERS frame too short for its priority"))?;
    }
    let end = p.len().checked_sub(pad).ok_or_else(|| invalid("a HEADERS frame's padding is longer than the frame"))?;
    Ok(&p[..end])
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authority: &[u8], end_stream: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let _ = end_stream;
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()),
            (b":authority".to_vec(), authority.to_vec()),
            (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
        ]
    }

    /// What a client sends: the preface, SETTINGS, HEADERS (padded, with priority) for
    /// stream 1, DATA, then HEADERS split over a CONTINUATION for stream 3.
    fn client_bytes(enc: &mut loona_hpack::Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        frame(&mut out, 0x4, 0, 0, &[]);
        let h = headers(authority, false);
        let block = enc.encode(h.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut padded = vec![3u8, 0, 0, 0, 0, 16];
        padded.extend_from_slice(&block);
        padded.extend_from_slice(&[0, 0, 0]);
        frame(&mut out, HEADERS, END_HEADERS | PADDED | PRIORITY, 1, &padded);
        frame(&mut out, 0x0, END_STREAM, 1, b"\0\0\0\0\0");
        let block = enc.encode(h.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let (a, b) = block.split_at(block.len() / 2);
        frame(&mut out, HEADERS, END_STREAM, 3, a);
        frame(&mut out, CONTINUATION, END_HEADERS, 3, b);
        out
    }

    /// Reads the frames of `bytes` (after the preface) as (type, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut at = PREFACE.len();
        let mut out = Vec::new();
        while at < bytes.len() {
            let h = &bytes[at..at + 9];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            out.push((h[3], h[4], u32::from_be_bytes([h[5], h[6], h[7], h[8]]), bytes[at + 9..at + 9 + len].to_vec()));
            at += 9 + len;
        }
        out
    }

    fn run(authority: &[u8], step: usize) -> (Vec<u8>, u64) {
        let mut enc = loona_hpack::Encoder::new();
        let input = client_bytes(&mut enc, authority);
        let mut fix = AuthorityFix::default();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            fix.push(chunk, &mut out).unwrap();
        }
        (out, fix.replaced)
    }

    #[test]
    fn a_percent_encoded_socket_path_becomes_localhost_and_everything_else_stays() {
        for step in [1, 7, 4096] {
            let (out, replaced) = run(b"tmp%2Fagent.sock", step);
            assert_eq!(replaced, 2, "step {step}");
            assert!(out.starts_with(PREFACE));
            let frames = frames(&out);
            let kinds: Vec<(u8, u8, u32)> = frames.iter().map(|f| (f.0, f.1, f.2)).collect();
            assert_eq!(
                kinds,
                vec![
                    (0x4, 0, 0),
                    (HEADERS, END_HEADERS, 1),
                    (0x0, END_STREAM, 1),
                    (HEADERS, END_HEADERS | END_STREAM, 3)
                ],
                "step {step}"
            );
            // The server's decoder follows the re-encoding across both blocks.
            let mut dec = loona_hpack::Decoder::new();
            for f in frames.iter().filter(|f| f.0 == HEADERS) {
                let got = dec.decode(&f.3).unwrap();
                let mut want = headers(b"localhost", false);
                want.sort();
                let mut got = got;
                got.sort();
                assert_eq!(got, want);
            }
            assert_eq!(frames[2].3, b"\0\0\0\0\0", "DATA passes untouched");
        }
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let (out, replaced) = run(b"localhost:8081", 13);
        assert_eq!(replaced, 0);
        let mut dec = loona_hpack::Decoder::new();
        let block = &frames(&out)[1].3;
        let got = dec.decode(block).unwrap();
        assert!(got.contains(&(b":authority".to_vec(), b"localhost:8081".to_vec())));
    }

    #[test]
    fn what_is_not_http2_or_too_large_or_interrupted_is_refused() {
        let mut fix = AuthorityFix::default();
        assert!(fix.push(b"GET / HTTP/1.1\r\n", &mut Vec::new()).is_err());

        let mut fix = AuthorityFix::default();
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0x01, 0x00, 0x00, 0x0, 0, 0, 0, 0, 1]);
        assert!(fix.push(&bytes, &mut Vec::new()).unwrap_err().to_string().contains("maximum frame size"));

        let mut fix = AuthorityFix::default();
        let mut bytes = PREFACE.to_vec();
        frame(&mut bytes, HEADERS, 0, 1, &[0x82]);
        frame(&mut bytes, 0x0, 0, 1, b"x");
        assert!(fix.push(&bytes, &mut Vec::new()).unwrap_err().to_string().contains("interrupted"));

        let mut fix = AuthorityFix::default();
        let mut bytes = PREFACE.to_vec();
        frame(&mut bytes, HEADERS, 0, 1, &[0x82; MAX_FRAME]);
        for _ in 0..4 {
            frame(&mut bytes, CONTINUATION, 0, 1, &[0x82; MAX_FRAME]);
        }
        assert!(fix.push(&bytes, &mut Vec::new()).unwrap_err().to_string().contains("header block is over"));

        let mut fix = AuthorityFix::default();
        let mut bytes = PREFACE.to_vec();
        frame(&mut bytes, HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(fix.push(&bytes, &mut Vec::new()).unwrap_err().to_string().contains("does not decode"));
    }
}
