//! The messages of the SPIFFE Workload API (`workload.proto` of the SPIFFE
//! specifications, X509-SVID and JWT-SVID profiles), written out by hand for `prost`
//! with the specification's field numbers, and the gRPC service generated from them by
//! `build.rs`.
//!
//! The proto declares no package: the service is `SpiffeWorkloadAPI` and its routes are
//! `/SpiffeWorkloadAPI/FetchX509SVID` and so on. The WIT-SVID profile's methods
//! (`FetchWITSVID`, `FetchWITBundles`) are not served; the generated router answers
//! them `Unimplemented`, as the specification asks of a server without that profile.

// The message names are the proto's (`JWTSVID`, `X509SVID`), so that they read as in
// the specification.
#![allow(clippy::upper_case_acronyms)]

use std::collections::HashMap;
use std::fmt;

use zeroize::Zeroize;

/// Asks for X.509-SVIDs. Has no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SVIDRequest {}

/// X.509-SVIDs and related information: CRLs and federated bundles.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SVIDResponse {
    /// One per identity granted to the workload; the first is the default.
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509SVID>,
    /// ASN.1 DER certificate revocation lists.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    /// CA certificates of foreign trust domains, keyed by the trust domain's SPIFFE ID
    /// (`spiffe://<td>`), concatenated DER.
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

/// One X.509-SVID with its private key and its trust domain's bundle.
///
/// Its `Debug` leaves the key out, and the key is zeroed when the message is dropped.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct X509SVID {
    /// The SPIFFE ID of the SVID.
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// The certificate chain, leaf first, concatenated ASN.1 DER.
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    /// The private key, unencrypted PKCS#8 ASN.1 DER.
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    /// The trust domain's CA certificates, concatenated ASN.1 DER.
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    /// Operator guidance on which SVID to use for what; unique within a response.
    #[prost(string, tag = "5")]
    pub hint: String,
}

impl fmt::Debug for X509SVID {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509SVID")
            .field("spiffe_id", &self.spiffe_id)
            .field("x509_svid", &format_args!("<{} bytes>", self.x509_svid.len()))
            .field("x509_svid_key", &"<redacted>")
            .field("bundle", &format_args!("<{} bytes>", self.bundle.len()))
            .field("hint", &self.hint)
            .finish()
    }
}

impl Drop for X509SVID {
    fn drop(&mut self) {
        self.x509_svid_key.zeroize();
    }
}

/// Asks for X.509 bundles. Has no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509BundlesRequest {}

/// CRLs and the X.509 bundles the workload should trust.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509BundlesResponse {
    /// ASN.1 DER certificate revocation lists.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub crl: Vec<Vec<u8>>,
    /// CA certificates keyed by the trust domain's SPIFFE ID (`spiffe://<td>`),
    /// concatenated DER; at least the server's own trust domain.
    #[prost(map = "string, bytes", tag = "2")]
    pub bundles: HashMap<String, Vec<u8>>,
}

/// Asks for JWT-SVIDs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JWTSVIDRequest {
    /// The audience(s) to put in the tokens. Required.
    #[prost(string, repeated, tag = "1")]
    pub audience: Vec<String>,
    /// Only the JWT-SVID of this SPIFFE ID, if set.
    #[prost(string, tag = "2")]
    pub spiffe_id: String,
}

/// JWT-SVIDs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JWTSVIDResponse {
    /// One per identity asked for.
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<JWTSVID>,
}

/// One JWT-SVID.
///
/// Its `Debug` leaves the token out (a bearer credential).
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct JWTSVID {
    /// The SPIFFE ID of the JWT-SVID.
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// The token, JWS compact serialization.
    #[prost(string, tag = "2")]
    pub svid: String,
    /// Operator guidance on which SVID to use for what; unique within a response.
    #[prost(string, tag = "3")]
    pub hint: String,
}

impl fmt::Debug for JWTSVID {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JWTSVID")
            .field("spiffe_id", &self.spiffe_id)
            .field("svid", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// Asks for JWT bundles. Has no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JWTBundlesRequest {}

/// JWT bundles.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JWTBundlesResponse {
    /// JWK sets (RFC 7517, JSON) keyed by the trust domain's SPIFFE ID
    /// (`spiffe://<td>`); at least the server's own trust domain.
    #[prost(map = "string, bytes", tag = "1")]
    pub bundles: HashMap<String, Vec<u8>>,
}

/// Asks the server to validate a JWT-SVID.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct ValidateJWTSVIDRequest {
    /// The audience of the validating party: the token's `aud` must contain it.
    #[prost(string, tag = "1")]
    pub audience: String,
    /// The token, JWS compact serialization.
    #[prost(string, tag = "2")]
    pub svid: String,
}

impl fmt::Debug for ValidateJWTSVIDRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateJWTSVIDRequest").field("audience", &self.audience).field("svid", &"<redacted>").finish()
    }
}

/// The result of a successful validation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValidateJWTSVIDResponse {
    /// The token's SPIFFE ID (its `sub`).
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// The token's claims, as a `google.protobuf.Struct`.
    #[prost(message, optional, tag = "2")]
    pub claims: Option<prost_types::Struct>,
}

include!(concat!(env!("OUT_DIR"), "/spiffe_workload_api_server.rs"));

pub use spiffe_workload_a_p_i_server::{SpiffeWorkloadAPI, SpiffeWorkloadAPIServer};
