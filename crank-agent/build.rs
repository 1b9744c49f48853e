//! Generates the gRPC service code of the SPIFFE Workload API from a hand-written
//! description (no protoc): `tonic_build::manual` with the messages of `src/proto.rs`.
//!
//! The proto (`workload.proto` of the SPIFFE specifications) declares no package, so
//! the service is plain `SpiffeWorkloadAPI` and the routes are
//! `/SpiffeWorkloadAPI/<Method>`: what go-spiffe, py-spiffe and the `spiffe` crate call.
//! The WIT-SVID methods are left out: the generated router answers `Unimplemented` for
//! them, which is what the specification requires of a server without that profile.

use std::path::{Path, PathBuf};

use tonic_build::manual::{Builder, Method, Service};

/// `(Rust method name, route name, request type, response type, server streaming)`.
const METHODS: &[(&str, &str, &str, &str, bool)] = &[
    ("fetch_x509_svid", "FetchX509SVID", "X509SVIDRequest", "X509SVIDResponse", true),
    ("fetch_x509_bundles", "FetchX509Bundles", "X509BundlesRequest", "X509BundlesResponse", true),
    ("fetch_jwt_svid", "FetchJWTSVID", "JWTSVIDRequest", "JWTSVIDResponse", false),
    ("fetch_jwt_bundles", "FetchJWTBundles", "JWTBundlesRequest", "JWTBundlesResponse", true),
    ("validate_jwt_svid", "ValidateJWTSVID", "ValidateJWTSVIDRequest", "ValidateJWTSVIDResponse", false),
];

fn service() -> Service {
    let mut service = Service::builder()
        .name("SpiffeWorkloadAPI")
        // No package: the routes are `/SpiffeWorkloadAPI/<Method>`.
        .package("")
        .comment("The SPIFFE Workload API (X509-SVID and JWT-SVID profiles).");
    for &(name, route, input, output, streaming) in METHODS {
        let mut method = Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::proto::{input}"))
            .output_type(format!("crate::proto::{output}"))
            .codec_path("tonic_prost::ProstCodec");
        if streaming {
            method = method.server_streaming();
        }
        service = service.method(method.build());
    }
    service.build()
}

/// Runs one generation into its own directory and moves the result to `dest` (the
/// generator names its file `<package>.<service>.rs`, `.SpiffeWorkloadAPI.rs` here).
fn generate(builder: Builder, scratch: &Path, dest: &Path) {
    std::fs::create_dir_all(scratch).expect("create the code generation directory");
    builder.out_dir(scratch).compile(&[service()]);
    std::fs::rename(scratch.join(".SpiffeWorkloadAPI.rs"), dest).expect("move the generated code");
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    // The server, used by src/workload.rs.
    generate(
        Builder::new().build_client(false).build_transport(false),
        &out.join("gen-server"),
        &out.join("spiffe_workload_api_server.rs"),
    );
    // A client, used only by the integration tests (to make calls the `spiffe` crate
    // will not make, such as one without the security header).
    generate(
        Builder::new().build_server(false).build_transport(false),
        &out.join("gen-client"),
        &out.join("spiffe_workload_api_client.rs"),
    );
}
