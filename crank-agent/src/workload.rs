//! The SPIFFE Workload API of `crank agent`: gRPC over a Unix socket, as the SPIFFE
//! Workload Endpoint and Workload API specifications describe it, for py-spiffe,
//! go-spiffe, the `spiffe` crate and any other conforming client.
//!
//! ```text
//!   workload ──connect──► socket (0777) ──► SO_PEERCRED uid/gid/pid, /proc/<pid>/exe
//!                                             │ (path and SHA-256, only when an entry needs them)
//!                                             ▼
//!                     entries whose selectors all match ──► their SVIDs, bundles, JWTs
//! ```
//!
//! Use: [`WorkloadListener::bind`] the socket (errors here are configuration errors to
//! report at start-up), then [`WorkloadListener::serve`] a [`WorkloadApi`] until the
//! shutdown future completes; [`serve`] does both.
//!
//! ## Who gets what
//!
//! Anyone on the host may connect: the socket is world-reachable on purpose, and the
//! answer depends only on what the kernel says about the caller (its uid and gid, and
//! the executable of its pid when an entry asks for `unix:path:` or `unix:sha256:`).
//! The caller is attested on every call. An entry is the caller's when every one of its
//! selectors matches.
//!
//! | RPC | answers | refused with |
//! |---|---|---|
//! | `FetchX509SVID` (stream) | one `X509SVID` per matching entry that has an SVID (hint = entry id), the CRLs; again whenever that changes | `PermissionDenied` when there is none |
//! | `FetchX509Bundles` (stream) | `spiffe://<td>` → the roots, the CRLs | `PermissionDenied` to a caller with no X.509-SVID (as SPIRE does: bundles go to workloads with an identity) |
//! | `FetchJWTSVID` | a token per matching entry (or for the one asked for), minted by the [`JwtMinter`] | `InvalidArgument` without an audience, `PermissionDenied` when no entry matches |
//! | `FetchJWTBundles` (stream) | `spiffe://<td>` → the JWKS, once known | `PermissionDenied` when no entry matches |
//! | `ValidateJWTSVID` | the token's SPIFFE ID and claims | `InvalidArgument` for a bad token; open to any caller |
//!
//! Every call must carry the metadata `workload.spiffe.io: true` (else
//! `InvalidArgument`), and while [`WorkloadState::refusal`] is set every call is
//! answered `Unavailable` with its reason. Open streams end with that status when the
//! state changes so that the caller loses its identity or the agent starts refusing.
//!
//! ## Bounds
//!
//! The callers are not authenticated, so everything they can make the agent hold is
//! bounded ([`WorkloadLimits`]): connections (in all and per uid), open calls (in all
//! and per uid; beyond, `Unavailable`, the specification's code for load shedding),
//! HTTP/2 streams per connection, request and header sizes, and executables hashed at
//! once (and their size). Hashes are cached by file identity and modification.
//!
//! ## What the executable selectors are worth
//!
//! `unix:path:` and `unix:sha256:` describe the process's executable when it is
//! attested. A process of the same uid can hand its connection to another program or
//! `exec` after connecting, so these selectors narrow down which of a user's programs
//! get an identity; they are not a boundary between programs of one user. The uid and
//! gid are the boundary.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{File, Permissions};
use std::future::Future;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use crank_security_core::{Selector, SpiffeId, TrustDomain, WorkerId, WorkloadFacts, selectors_match};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OnceCell, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, UdsConnectInfo};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::proto::{
    JWTBundlesRequest, JWTBundlesResponse, JWTSVID, JWTSVIDRequest, JWTSVIDResponse, SpiffeWorkloadAPI,
    SpiffeWorkloadAPIServer, ValidateJWTSVIDRequest, ValidateJWTSVIDResponse, X509BundlesRequest, X509BundlesResponse,
    X509SVID, X509SVIDRequest, X509SVIDResponse,
};
use crate::state::{HeldEntry, JwtMinter, MintError, WorkloadState};

/// The metadata key every call must carry, with the value `true` (SPIFFE Workload
/// Endpoint, "Transport": a guard against server-side request forgery).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Hints longer than this are not sent (the specification's advice).
const MAX_HINT_LEN: usize = 1024;
/// How far in the future a JWT-SVID's `nbf` may be (clocks differ between hosts).
const NBF_LEEWAY_SECS: u64 = 60;
/// How long a shutdown waits for connections to close before it stops waiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The largest HTTP/2 header list a caller may send.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Executables larger than this are not hashed (their `unix:sha256:` never matches).
const MAX_HASHED_EXECUTABLE: u64 = 1 << 30;
/// Executables hashed at once.
const CONCURRENT_HASHES: usize = 2;
/// Executable hashes remembered.
const HASH_CACHE_ENTRIES: usize = 256;

/// How much a caller can make the Workload API hold. Defaults suit a host with a few
/// thousand workloads.
#[derive(Debug, Clone)]
pub struct WorkloadLimits {
    /// Connections open at once, in all. Beyond, new connections are closed at once.
    pub max_connections: usize,
    /// Connections open at once by processes of one uid.
    pub max_connections_per_uid: usize,
    /// Calls (streams and unary calls) open at once, in all. Beyond, `Unavailable`.
    pub max_calls: usize,
    /// Calls open at once by processes of one uid.
    pub max_calls_per_uid: usize,
    /// HTTP/2 streams one connection may open at once.
    pub max_streams_per_connection: u32,
    /// The largest request message, in bytes.
    pub max_message_size: usize,
    /// How long `FetchJWTSVID` waits for the [`JwtMinter`].
    pub mint_timeout: Duration,
}

impl Default for WorkloadLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_uid: 1024,
            max_calls: 4096,
            max_calls_per_uid: 1024,
            max_streams_per_connection: 256,
            max_message_size: 64 * 1024,
            mint_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the Workload API socket could not be bound or served.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Something that is not a socket is in the way.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// Another process answers on the socket.
    #[error("{} is a socket that another process is serving; refusing to replace it", .0.display())]
    InUse(PathBuf),
    /// A stale socket of another user is in the way.
    #[error(
        "{} is a stale socket owned by uid {owner}, not by this process's uid {ours}; refusing to replace it",
        path.display()
    )]
    ForeignSocket {
        /// The socket path.
        path: PathBuf,
        /// The owner of the stale socket.
        owner: u32,
        /// This process's effective uid.
        ours: u32,
    },
    /// A file system operation on the socket or its directory failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("the Workload API server on {}: {source}", path.display())]
    Serve {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// The Workload API service: answers from the latest [`WorkloadState`] published on
/// the watch channel, mints JWT-SVIDs through the [`JwtMinter`].
pub struct WorkloadApi {
    state: watch::Receiver<Arc<WorkloadState>>,
    jwt: Arc<dyn JwtMinter>,
    limits: WorkloadLimits,
    calls: Arc<Quota>,
    exe: Arc<ExeInspector>,
    /// Set when the server shuts down: open streams end.
    stop: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadApi").field("jwt", &self.jwt).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl WorkloadApi {
    /// A service over the state published on `state`, with the default limits.
    pub fn new(state: watch::Receiver<Arc<WorkloadState>>, jwt: Arc<dyn JwtMinter>) -> Self {
        let limits = WorkloadLimits::default();
        Self {
            state,
            jwt,
            calls: Arc::new(Quota::new("open calls", limits.max_calls, limits.max_calls_per_uid)),
            limits,
            exe: Arc::new(ExeInspector::default()),
            stop: Arc::new(watch::channel(false).0),
        }
    }

    /// The same service with other limits.
    pub fn with_limits(mut self, limits: WorkloadLimits) -> Self {
        self.calls = Arc::new(Quota::new("open calls", limits.max_calls, limits.max_calls_per_uid));
        self.limits = limits;
        self
    }

    /// Everything a call starts with: the caller's credentials, the security header,
    /// a place among the open calls.
    fn begin<T>(&self, request: &Request<T>, method: &'static str) -> Result<(Caller, QuotaGuard), Status> {
        let cred = request.extensions().get::<UdsConnectInfo>().and_then(|info| info.peer_cred);
        let Some(cred) = cred else {
            warn!(method, "Workload API call refused: the caller's credentials (SO_PEERCRED) are unknown");
            return Err(Status::permission_denied("the caller could not be identified"));
        };
        let caller = Caller::new(cred, method, self.exe.clone());
        let header_ok = request.metadata().get(SECURITY_HEADER).is_some_and(|v| v.as_bytes() == b"true");
        if !header_ok {
            return Err(caller.refuse(Status::invalid_argument(format!(
                "the security header is missing: every call must carry the metadata {SECURITY_HEADER}: true"
            ))));
        }
        let guard = self.calls.try_acquire(cred.uid()).map_err(|why| caller.refuse(Status::unavailable(why)))?;
        Ok((caller, guard))
    }

    /// Runs a server stream: the first answer now (an error is the call's status),
    /// then a new one whenever `render` gives something new, until the caller goes
    /// away, an error ends the stream, or the server shuts down.
    async fn stream<T, F>(
        &self,
        caller: Caller,
        guard: QuotaGuard,
        render: F,
    ) -> Result<Response<ReceiverStream<Result<T, Status>>>, Status>
    where
        T: Send + 'static,
        F: Fn(&WorkloadState, &WorkloadFacts) -> Outcome<T> + Send + 'static,
    {
        let mut states = self.state.clone();
        let state = states.borrow_and_update().clone();
        let facts = caller.facts(&state).await;
        let first = match render(&state, &facts) {
            Outcome::Fail(status) => return Err(caller.refuse(status)),
            outcome => outcome,
        };
        let mut stop = self.stop.subscribe();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let _guard = guard;
            let mut last: Option<[u8; 32]> = None;
            let mut outcome = first;
            loop {
                match outcome {
                    Outcome::Fail(status) => {
                        let _ = tx.send(Err(caller.refuse(status))).await;
                        return;
                    }
                    Outcome::Wait => {}
                    Outcome::Send(fingerprint, message) => {
                        if last != Some(fingerprint) {
                            last = Some(fingerprint);
                            tokio::select! {
                                sent = tx.send(Ok(message)) => if sent.is_err() { return },
                                () = stopped(&mut stop) => return,
                            }
                            debug!(
                                uid = caller.uid,
                                pid = caller.pid,
                                method = caller.method,
                                "Workload API update sent"
                            );
                        }
                    }
                }
                tokio::select! {
                    changed = states.changed() => {
                        if changed.is_err() {
                            let _ = tx.send(Err(Status::unavailable("the agent is shutting down"))).await;
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                    () = stopped(&mut stop) => {
                        let _ = tx.try_send(Err(Status::unavailable("the agent is shutting down")));
                        return;
                    }
                }
                let state = states.borrow_and_update().clone();
                let facts = caller.facts(&state).await;
                outcome = render(&state, &facts);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadAPI for WorkloadApi {
    type FetchX509SVIDStream = ReceiverStream<Result<X509SVIDResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = ReceiverStream<Result<JWTBundlesResponse, Status>>;

    async fn fetch_x509_svid(
        &self,
        request: Request<X509SVIDRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (caller, guard) = self.begin(&request, "FetchX509SVID")?;
        self.stream(caller, guard, x509_svid_outcome).await
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let (caller, guard) = self.begin(&request, "FetchX509Bundles")?;
        self.stream(caller, guard, x509_bundles_outcome).await
    }

    async fn fetch_jwt_svid(&self, request: Request<JWTSVIDRequest>) -> Result<Response<JWTSVIDResponse>, Status> {
        let (caller, _guard) = self.begin(&request, "FetchJWTSVID")?;
        let request = request.into_inner();
        self.jwt_svids(&caller, request).await.map(Response::new).map_err(|status| caller.refuse(status))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JWTBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let (caller, guard) = self.begin(&request, "FetchJWTBundles")?;
        self.stream(caller, guard, jwt_bundles_outcome).await
    }

    async fn validate_jwt_svid(
        &self,
        request: Request<ValidateJWTSVIDRequest>,
    ) -> Result<Response<ValidateJWTSVIDResponse>, Status> {
        let (caller, _guard) = self.begin(&request, "ValidateJWTSVID")?;
        let request = request.into_inner();
        let state = self.state.borrow().clone();
        validate_request(&state, &request).map(Response::new).map_err(|status| caller.refuse(status))
    }
}

impl WorkloadApi {
    async fn jwt_svids(&self, caller: &Caller, request: JWTSVIDRequest) -> Result<JWTSVIDResponse, Status> {
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified (one or more non-empty values)"));
        }
        if !request.spiffe_id.is_empty() && !request.spiffe_id.starts_with("spiffe://") {
            return Err(Status::invalid_argument(format!("{:?} is not a SPIFFE ID", request.spiffe_id)));
        }
        let state = self.state.borrow().clone();
        if let Some(reason) = &state.refusal {
            return Err(Status::unavailable(reason.clone()));
        }
        let facts = caller.facts(&state).await;
        let mine: Vec<(&HeldEntry, String)> = matching(&state, &facts)
            .filter_map(|entry| Some((entry, entry_spiffe_id(entry, &state.trust_domain)?)))
            .filter(|(_, id)| request.spiffe_id.is_empty() || *id == request.spiffe_id)
            .collect();
        if mine.is_empty() {
            return Err(Status::permission_denied(if request.spiffe_id.is_empty() {
                "no identity issued: no registration entry of this agent matches the calling process".to_owned()
            } else {
                format!("no identity issued: the calling process is not entitled to {}", request.spiffe_id)
            }));
        }
        let mut svids = Vec::with_capacity(mine.len());
        for (entry, spiffe_id) in mine {
            let minted = tokio::time::timeout(self.limits.mint_timeout, self.jwt.mint(entry, &request.audience)).await;
            let token = match minted {
                Ok(Ok(token)) if !token.is_empty() => token,
                Ok(Ok(_)) => {
                    return Err(Status::unavailable(format!("minting a JWT-SVID for {spiffe_id} gave nothing")));
                }
                Ok(Err(MintError::Refused(why))) => {
                    return Err(Status::permission_denied(format!("JWT-SVID for {spiffe_id} refused: {why}")));
                }
                Ok(Err(MintError::Unavailable(why))) => {
                    return Err(Status::unavailable(format!("could not mint a JWT-SVID for {spiffe_id}: {why}")));
                }
                Err(_) => {
                    return Err(Status::unavailable(format!(
                        "could not mint a JWT-SVID for {spiffe_id}: no answer within {:?}",
                        self.limits.mint_timeout
                    )));
                }
            };
            // The token's own subject, so that the two cannot disagree.
            let spiffe_id = unverified_subject(&token).unwrap_or(spiffe_id);
            debug!(uid = caller.uid, pid = caller.pid, %spiffe_id, "JWT-SVID handed out");
            svids.push(JWTSVID { spiffe_id, svid: token, hint: hint(entry) });
        }
        Ok(JWTSVIDResponse { svids })
    }
}

/// Completes once the server is shutting down.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: shutting down too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// What a stream sends next.
enum Outcome<T> {
    /// This message, unless the last one sent had the same fingerprint.
    Send([u8; 32], T),
    /// Nothing yet.
    Wait,
    /// End the stream (or refuse the call) with this status.
    Fail(Status),
}

/// The entries whose selectors all match the caller.
fn matching<'a>(state: &'a WorkloadState, facts: &'a WorkloadFacts) -> impl Iterator<Item = &'a HeldEntry> + 'a {
    state.entries.iter().filter(move |entry| selectors_match(&entry.selectors, facts))
}

fn trust_domain_id(state: &WorkloadState) -> String {
    format!("spiffe://{}", state.trust_domain)
}

fn hint(entry: &HeldEntry) -> String {
    if entry.id.len() <= MAX_HINT_LEN { entry.id.clone() } else { String::new() }
}

/// The SPIFFE ID of an entry: its SVID's, or the one the CA gives its worker id.
fn entry_spiffe_id(entry: &HeldEntry, trust_domain: &str) -> Option<String> {
    if let Some(svid) = &entry.svid {
        return Some(svid.spiffe_id.clone());
    }
    let id = SpiffeId::new(TrustDomain::new(trust_domain).ok()?, WorkerId::new(entry.worker_id.as_str()).ok()?);
    Some(id.to_string())
}

fn no_identity(state: &WorkloadState, facts: &WorkloadFacts) -> Status {
    if matching(state, facts).next().is_some() {
        Status::permission_denied("no identity issued yet: the entries matching the calling process have no SVID yet")
    } else {
        Status::permission_denied("no identity issued: no registration entry of this agent matches the calling process")
    }
}

fn concat(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.concat()
}

/// A fingerprint of length-prefixed parts.
fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn x509_svid_outcome(state: &WorkloadState, facts: &WorkloadFacts) -> Outcome<X509SVIDResponse> {
    if let Some(reason) = &state.refusal {
        return Outcome::Fail(Status::unavailable(reason.clone()));
    }
    let held: Vec<(&HeldEntry, &crate::state::Svid)> =
        matching(state, facts).filter_map(|entry| Some((entry, entry.svid.as_deref()?))).collect();
    if held.is_empty() {
        return Outcome::Fail(no_identity(state, facts));
    }
    if state.bundle_der.is_empty() {
        return Outcome::Fail(Status::unavailable("the trust bundle is not known yet"));
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for (entry, svid) in &held {
        parts.extend([entry.id.as_bytes(), svid.serial.as_bytes(), svid.spiffe_id.as_bytes()]);
    }
    parts.push(b"bundle");
    parts.extend(state.bundle_der.iter().map(Vec::as_slice));
    parts.push(b"crl");
    parts.extend(state.crl_der.iter().map(Vec::as_slice));
    let fp = fingerprint(parts);
    let bundle = concat(&state.bundle_der);
    let svids = held
        .iter()
        .map(|(entry, svid)| X509SVID {
            spiffe_id: svid.spiffe_id.clone(),
            x509_svid: concat(&svid.chain_der),
            x509_svid_key: svid.key_pkcs8_der.to_vec(),
            bundle: bundle.clone(),
            hint: hint(entry),
        })
        .collect();
    Outcome::Send(fp, X509SVIDResponse { svids, crl: state.crl_der.clone(), federated_bundles: HashMap::new() })
}

fn x509_bundles_outcome(state: &WorkloadState, facts: &WorkloadFacts) -> Outcome<X509BundlesResponse> {
    if let Some(reason) = &state.refusal {
        return Outcome::Fail(Status::unavailable(reason.clone()));
    }
    if !matching(state, facts).any(|entry| entry.svid.is_some()) {
        return Outcome::Fail(no_identity(state, facts));
    }
    if state.bundle_der.is_empty() {
        return Outcome::Fail(Status::unavailable("the trust bundle is not known yet"));
    }
    let td = trust_domain_id(state);
    let mut parts: Vec<&[u8]> = vec![td.as_bytes(), b"bundle"];
    parts.extend(state.bundle_der.iter().map(Vec::as_slice));
    parts.push(b"crl");
    parts.extend(state.crl_der.iter().map(Vec::as_slice));
    let fp = fingerprint(parts);
    Outcome::Send(
        fp,
        X509BundlesResponse { crl: state.crl_der.clone(), bundles: HashMap::from([(td, concat(&state.bundle_der))]) },
    )
}

fn jwt_bundles_outcome(state: &WorkloadState, facts: &WorkloadFacts) -> Outcome<JWTBundlesResponse> {
    if let Some(reason) = &state.refusal {
        return Outcome::Fail(Status::unavailable(reason.clone()));
    }
    if matching(state, facts).next().is_none() {
        return Outcome::Fail(no_identity(state, facts));
    }
    let Some(jwks) = &state.jwt_bundle else {
        return Outcome::Wait;
    };
    let td = trust_domain_id(state);
    let fp = fingerprint([td.as_bytes(), jwks.as_slice()]);
    Outcome::Send(fp, JWTBundlesResponse { bundles: HashMap::from([(td, jwks.clone())]) })
}

fn validate_request(
    state: &WorkloadState,
    request: &ValidateJWTSVIDRequest,
) -> Result<ValidateJWTSVIDResponse, Status> {
    if let Some(reason) = &state.refusal {
        return Err(Status::unavailable(reason.clone()));
    }
    if request.audience.is_empty() {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    if request.svid.is_empty() {
        return Err(Status::invalid_argument("svid must be specified"));
    }
    let Some(jwks) = &state.jwt_bundle else {
        return Err(Status::unavailable("the trust domain's JWT bundle is not known yet"));
    };
    match validate_jwt_svid(&request.svid, &request.audience, jwks, &state.trust_domain) {
        Ok((spiffe_id, claims)) => Ok(ValidateJWTSVIDResponse { spiffe_id, claims: Some(to_struct(claims)) }),
        Err(JwtRejection::Token(why)) => Err(Status::invalid_argument(format!("the JWT-SVID is not valid: {why}"))),
        Err(JwtRejection::Bundle(why)) => Err(Status::unavailable(format!("the trust domain's JWT bundle: {why}"))),
    }
}

/// Validates a JWT-SVID as `ValidateJWTSVID` does, against `jwks` (a JWT bundle, JSON)
/// of `trust_domain` (`example.org`): its SPIFFE ID, or why it is not accepted.
pub fn validate_jwt(token: &str, audience: &str, jwks: &[u8], trust_domain: &str) -> Result<String, String> {
    validate_jwt_svid(token, audience, jwks, trust_domain).map(|(subject, _)| subject).map_err(|e| match e {
        JwtRejection::Token(m) | JwtRejection::Bundle(m) => m,
    })
}

/// Why a JWT-SVID was not accepted.
enum JwtRejection {
    /// The token is bad.
    Token(String),
    /// The agent's JWT bundle is unusable.
    Bundle(String),
}

/// The `alg` values of the JWT-SVID specification that can be verified here (ES512
/// is in the specification, but the JWT library cannot verify it).
fn jwt_svid_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        _ => return None,
    })
}

/// Validates a JWT-SVID as the JWT-SVID specification says: a supported `alg`, no
/// header but `alg`, `kid` and `typ` (`JWT` or `JOSE`), a signature by a key of the
/// trust domain's JWT bundle fit for that `alg` (the one named by `kid` when there is
/// one), `aud` containing `audience`, `exp` present and not past, `nbf` (if any) not
/// more than a minute ahead, and `sub` a SPIFFE ID of `trust_domain`. Returns the
/// subject and the claims.
fn validate_jwt_svid(
    token: &str,
    audience: &str,
    jwks: &[u8],
    trust_domain: &str,
) -> Result<(String, serde_json::Map<String, Value>), JwtRejection> {
    let bad = |why: String| JwtRejection::Token(why);
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(bad("not a JWS in compact serialization (three dot-separated parts)".into()));
    }
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Map<String, Value>>(&json).ok())
        .ok_or_else(|| bad("the JOSE header is not base64url-encoded JSON".into()))?;
    if let Some(other) = header.keys().find(|k| !matches!(k.as_str(), "alg" | "kid" | "typ")) {
        return Err(bad(format!("the header parameter {other:?} is not allowed in a JWT-SVID")));
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(t) => return Err(bad(format!("typ {t} is not JWT or JOSE"))),
    }
    let alg_name = header.get("alg").and_then(Value::as_str).ok_or_else(|| bad("the header has no alg".into()))?;
    let alg = jwt_svid_algorithm(alg_name)
        .ok_or_else(|| bad(format!("alg {alg_name:?} is not a JWT-SVID algorithm supported here")))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(bad("kid is not a string".into())),
    };

    let keys = verification_keys(jwks, alg, kid)?;
    if keys.is_empty() {
        return Err(bad(match kid {
            Some(kid) => format!("no key with kid {kid:?} for {alg_name} in the trust domain's JWT bundle"),
            None => format!("no key for {alg_name} in the trust domain's JWT bundle"),
        }));
    }
    let mut validation = Validation::new(alg);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.validate_exp = true;
    // `exp` strictly; `nbf` (checked below) with some leeway for the issuer's clock.
    validation.validate_nbf = false;
    validation.leeway = 0;

    let mut failure: Option<jsonwebtoken::errors::Error> = None;
    let mut claims = None;
    for key in &keys {
        match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            // Keep the most telling error: any other than a bad signature means the
            // signature was good.
            Err(e) => {
                let keep = failure
                    .as_ref()
                    .is_none_or(|f| matches!(f.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature));
                if keep {
                    failure = Some(e);
                }
            }
        }
    }
    let Some(claims) = claims else {
        use jsonwebtoken::errors::ErrorKind;
        let why = match failure.as_ref().map(|e| e.kind()) {
            Some(ErrorKind::InvalidSignature) => "the signature does not verify".to_owned(),
            Some(ErrorKind::ExpiredSignature) => "it has expired (exp)".to_owned(),
            Some(ErrorKind::InvalidAudience) => format!("its aud does not contain {audience:?}"),
            Some(ErrorKind::MissingRequiredClaim(claim)) => format!("it has no {claim} claim"),
            Some(_) => failure.map(|e| e.to_string()).unwrap_or_default(),
            None => "it could not be verified".to_owned(),
        };
        return Err(bad(why));
    };
    if let Some(nbf) = claims.get("nbf") {
        let now = jsonwebtoken::get_current_timestamp() as f64;
        match nbf.as_f64() {
            Some(nbf) if nbf <= now + NBF_LEEWAY_SECS as f64 => {}
            Some(_) => return Err(bad("it is not valid yet (nbf)".into())),
            None => return Err(bad("its nbf is not a number".into())),
        }
    }
    let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    if !is_spiffe_id_of(subject, trust_domain) {
        return Err(bad(format!("its sub {subject:?} is not a SPIFFE ID of trust domain {trust_domain}")));
    }
    Ok((subject.to_owned(), claims))
}

/// The keys of the JWKS that may have signed a token with `alg` (and `kid`, if given).
/// Keys published for another use than JWT-SVIDs, and keys this library cannot read,
/// are passed over.
fn verification_keys(jwks: &[u8], alg: Algorithm, kid: Option<&str>) -> Result<Vec<DecodingKey>, JwtRejection> {
    let doc: Value = serde_json::from_slice(jwks).map_err(|e| JwtRejection::Bundle(format!("it is not JSON: {e}")))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| JwtRejection::Bundle("it has no \"keys\" array".into()))?;
    let mut out = Vec::new();
    for key in keys {
        if let Some(usage) = key.get("use").and_then(Value::as_str)
            && usage != "jwt-svid"
            && usage != "sig"
        {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(key.clone()) else {
            continue;
        };
        if kid.is_some() && jwk.common.key_id.as_deref() != kid {
            continue;
        }
        if let Some(key_alg) = &jwk.common.key_algorithm
            && key_alg.to_string() != format!("{alg:?}")
        {
            continue;
        }
        let fits = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(ec) => {
                matches!(
                    (&ec.curve, alg),
                    (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
                )
            }
            AlgorithmParameters::RSA(_) => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            _ => false,
        };
        if !fits {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.push(key);
        }
    }
    Ok(out)
}

/// Whether `id` is `spiffe://<trust_domain>/<path>` with a valid, non-empty path.
fn is_spiffe_id_of(id: &str, trust_domain: &str) -> bool {
    let Some((domain, path)) = id.strip_prefix("spiffe://").and_then(|rest| rest.split_once('/')) else {
        return false;
    };
    domain == trust_domain
        && !path.is_empty()
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        })
}

/// The `sub` of a token, read without verifying it (for a token this agent just got
/// from its CA).
fn unverified_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Map<String, Value> = serde_json::from_slice(&json).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

fn to_struct(map: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

fn to_value(value: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(to_value).collect() })
        }
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The process on the other end of a call, as the kernel describes it.
struct Caller {
    uid: u32,
    gid: u32,
    pid: i32,
    method: &'static str,
    inspector: Arc<ExeInspector>,
    /// Its executable, read the first time an entry needs it.
    exe: OnceCell<ExeFacts>,
}

impl Caller {
    fn new(cred: UCred, method: &'static str, inspector: Arc<ExeInspector>) -> Self {
        Self { uid: cred.uid(), gid: cred.gid(), pid: cred.pid().unwrap_or(0), method, inspector, exe: OnceCell::new() }
    }

    /// What the selectors of `state`'s entries are matched against. The executable is
    /// read only when one of them needs it.
    async fn facts(&self, state: &WorkloadState) -> WorkloadFacts {
        let needs_exe = state.entries.iter().flat_map(|e| &e.selectors).any(Selector::needs_executable);
        let (path, sha256) = if needs_exe && self.pid > 0 {
            let exe = self.exe.get_or_init(|| self.inspector.inspect(self.pid)).await;
            (exe.path.clone(), exe.sha256.clone())
        } else {
            (None, None)
        };
        WorkloadFacts { uid: self.uid, gid: self.gid, pid: self.pid, path, sha256 }
    }

    /// Logs a refusal and hands the status back.
    fn refuse(&self, status: Status) -> Status {
        warn!(
            uid = self.uid,
            pid = self.pid,
            method = self.method,
            code = ?status.code(),
            reason = status.message(),
            "Workload API call refused"
        );
        status
    }
}

/// What `/proc/<pid>/exe` says.
#[derive(Debug, Clone, Default)]
struct ExeFacts {
    path: Option<PathBuf>,
    sha256: Option<String>,
}

/// Which version of which file was hashed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileVersion {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Reads callers' executables, hashing each version of a file once.
#[derive(Debug)]
struct ExeInspector {
    hashes: Mutex<HashCache>,
    hashing: Arc<Semaphore>,
}

impl Default for ExeInspector {
    fn default() -> Self {
        Self { hashes: Mutex::new(HashCache::default()), hashing: Arc::new(Semaphore::new(CONCURRENT_HASHES)) }
    }
}

#[derive(Debug, Default)]
struct HashCache {
    map: HashMap<FileVersion, String>,
    order: VecDeque<FileVersion>,
}

impl HashCache {
    fn insert(&mut self, version: FileVersion, hash: String) {
        if self.map.insert(version.clone(), hash).is_none() {
            self.order.push_back(version);
            while self.order.len() > HASH_CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

impl ExeInspector {
    async fn inspect(self: &Arc<Self>, pid: i32) -> ExeFacts {
        let Ok(permit) = self.hashing.clone().acquire_owned().await else {
            return ExeFacts::default();
        };
        let this = self.clone();
        let facts = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.inspect_blocking(pid)
        })
        .await;
        facts.unwrap_or_default()
    }

    fn inspect_blocking(&self, pid: i32) -> ExeFacts {
        let link = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(mut path) = std::fs::read_link(&link).map(Some) else {
            debug!(pid, "the caller's executable cannot be read");
            return ExeFacts::default();
        };
        let Ok(mut file) = File::open(&link) else {
            return ExeFacts { path, sha256: None };
        };
        let Ok(before) = file.metadata() else {
            return ExeFacts { path, sha256: None };
        };
        let version = FileVersion::of(&before);
        // The path must still name the file the process runs (not a replaced or
        // deleted one, nor one the process exec'd away from).
        let same_file = path
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.dev() == version.dev && m.ino() == version.ino);
        if !same_file {
            path = None;
        }
        if let Some(hash) = self.hashes.lock().unwrap_or_else(|e| e.into_inner()).map.get(&version) {
            return ExeFacts { path, sha256: Some(hash.clone()) };
        }
        if version.size > MAX_HASHED_EXECUTABLE {
            warn!(pid, size = version.size, "the caller's executable is too large to hash");
            return ExeFacts { path, sha256: None };
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0u64;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    read += n as u64;
                    if read > MAX_HASHED_EXECUTABLE {
                        return ExeFacts { path, sha256: None };
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ExeFacts { path, sha256: None },
            }
        }
        let hash = hex::encode(hasher.finalize());
        // Remember it only if the file did not change while it was read.
        if file.metadata().is_ok_and(|after| FileVersion::of(&after) == version) {
            self.hashes.lock().unwrap_or_else(|e| e.into_inner()).insert(version, hash.clone());
        }
        ExeFacts { path, sha256: Some(hash) }
    }
}

/// Counts what is open, in all and per uid.
#[derive(Debug)]
struct Quota {
    what: &'static str,
    max_total: usize,
    max_per_uid: usize,
    open: Mutex<(usize, HashMap<u32, usize>)>,
}

impl Quota {
    fn new(what: &'static str, max_total: usize, max_per_uid: usize) -> Self {
        Self { what, max_total, max_per_uid, open: Mutex::new((0, HashMap::new())) }
    }

    fn try_acquire(self: &Arc<Self>, uid: u32) -> Result<QuotaGuard, String> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_uid) = &mut *open;
        if *total >= self.max_total {
            return Err(format!("too many {} ({}); try again later", self.what, self.max_total));
        }
        let mine = per_uid.entry(uid).or_insert(0);
        if *mine >= self.max_per_uid {
            return Err(format!("too many {} for uid {uid} ({}); try again later", self.what, self.max_per_uid));
        }
        *mine += 1;
        *total += 1;
        Ok(QuotaGuard { quota: self.clone(), uid })
    }
}

/// One place in a [`Quota`], given back when dropped.
#[derive(Debug)]
struct QuotaGuard {
    quota: Arc<Quota>,
    uid: u32,
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let mut open = self.quota.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_uid) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_uid.get_mut(&self.uid) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                per_uid.remove(&self.uid);
            }
        }
    }
}

/// An accepted connection, with its peer's credentials and its place in the
/// connection quota.
#[derive(Debug)]
struct Conn {
    io: UnixStream,
    cred: UCred,
    _place: QuotaGuard,
    /// The client's bytes, with the `:authority` of gRPC C-core clients made acceptable
    /// (see [`crate::authority`]).
    fix: crate::authority::AuthorityFix,
    /// Fixed bytes not read yet, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    eof: bool,
}

impl Connected for Conn {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        UdsConnectInfo { peer_addr: self.io.peer_addr().ok().map(Arc::new), peer_cred: Some(self.cred) }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 8192];
            let mut read = ReadBuf::new(&mut raw);
            std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.fix.push(read.filled(), &mut this.out)?;
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connections accepted on `listener`, within the quota. Never yields an error
/// (tonic would stop serving): failed accepts are logged and retried after a pause.
fn incoming(
    listener: UnixListener,
    quota: Arc<Quota>,
) -> impl tokio_stream::Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    futures_util::stream::unfold((listener, quota), |(listener, quota)| async move {
        loop {
            match listener.accept().await {
                Ok((io, _)) => {
                    let cred = match io.peer_cred() {
                        Ok(cred) => cred,
                        Err(e) => {
                            warn!(error = %e, "Workload API connection closed: its credentials (SO_PEERCRED) cannot be read");
                            continue;
                        }
                    };
                    match quota.try_acquire(cred.uid()) {
                        Ok(place) => {
                            return Some((
                                Ok(Conn {
                                    io,
                                    cred,
                                    _place: place,
                                    fix: Default::default(),
                                    out: Vec::new(),
                                    out_at: 0,
                                    eof: false,
                                }),
                                (listener, quota),
                            ));
                        }
                        Err(why) => {
                            warn!(uid = cred.uid(), pid = cred.pid(), reason = %why, "Workload API connection refused");
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "accepting a Workload API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// The Workload API socket, bound and ready to serve.
#[derive(Debug)]
pub struct WorkloadListener {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's (device, inode), to remove only our own socket when done.
    file: (u64, u64),
}

impl WorkloadListener {
    /// Binds the socket at `socket`.
    ///
    /// The parent directory is created (0755) if missing. The socket is made 0777: any
    /// local process may call, and attestation decides what it gets. A path that is in
    /// the way is replaced only when it is a stale socket (nothing answers on it) owned
    /// by this process's uid; anything else (not a socket, a socket something serves,
    /// a stale socket of another user) is an error naming it.
    pub async fn bind(socket: &Path) -> Result<Self, WorkloadError> {
        let io_error = |what: &'static str| move |source| WorkloadError::Io { path: socket.to_owned(), what, source };
        if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.exists()
        {
            let dir_error =
                |what: &'static str| move |source| WorkloadError::Io { path: parent.to_owned(), what, source };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(dir_error("creating the socket's directory"))?;
            std::fs::set_permissions(parent, Permissions::from_mode(0o755))
                .map_err(dir_error("setting the socket directory's mode"))?;
        }
        match std::fs::symlink_metadata(socket) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("inspecting the socket path")(e)),
            Ok(meta) if !meta.file_type().is_socket() => return Err(WorkloadError::NotASocket(socket.to_owned())),
            Ok(meta) => {
                match tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(socket)).await {
                    // Something accepts connections on it (or is too busy to say no).
                    Ok(Ok(_)) | Err(_) => return Err(WorkloadError::InUse(socket.to_owned())),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Ok(Err(e)) => return Err(io_error("connecting to the socket in the way")(e)),
                }
                let ours = rustix::process::geteuid().as_raw();
                if meta.uid() != ours {
                    return Err(WorkloadError::ForeignSocket { path: socket.to_owned(), owner: meta.uid(), ours });
                }
                std::fs::remove_file(socket).map_err(io_error("removing the stale socket"))?;
                info!(path = %socket.display(), "removed a stale Workload API socket");
            }
        }
        let listener = UnixListener::bind(socket).map_err(io_error("binding the socket"))?;
        std::fs::set_permissions(socket, Permissions::from_mode(0o777))
            .map_err(io_error("making the socket reachable by every local process (0777)"))?;
        let meta = std::fs::symlink_metadata(socket).map_err(io_error("inspecting the new socket"))?;
        Ok(Self { listener, path: socket.to_owned(), file: (meta.dev(), meta.ino()) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves `api` until `shutdown` completes. Then open streams end (`Unavailable`),
    /// connections get a few seconds to close, and the socket file is removed (if it is
    /// still ours).
    pub async fn serve(self, api: WorkloadApi, shutdown: impl Future<Output = ()>) -> Result<(), WorkloadError> {
        let Self { listener, path, file } = self;
        let limits = api.limits.clone();
        let stop = api.stop.clone();
        let connections = Arc::new(Quota::new("connections", limits.max_connections, limits.max_connections_per_uid));
        let service = SpiffeWorkloadAPIServer::new(api).max_decoding_message_size(limits.max_message_size);
        let mut stop_rx = stop.subscribe();
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(limits.max_streams_per_connection))
            .http2_max_header_list_size(Some(MAX_HEADER_LIST))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming(listener, connections), async move { stopped(&mut stop_rx).await });
        tokio::pin!(server);
        info!(path = %path.display(), "serving the SPIFFE Workload API");
        let result = tokio::select! {
            result = &mut server => result,
            () = shutdown => {
                stop.send_replace(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                    Ok(result) => result,
                    Err(_) => {
                        warn!(path = %path.display(), "Workload API connections still open after {SHUTDOWN_GRACE:?}; stopping anyway");
                        Ok(())
                    }
                }
            }
        };
        stop.send_replace(true);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == file) {
            let _ = std::fs::remove_file(&path);
        }
        result.map_err(|source| WorkloadError::Serve { path, source })
    }
}

/// Binds `socket` ([`WorkloadListener::bind`]) and serves `api` on it until `shutdown`
/// completes ([`WorkloadListener::serve`]).
pub async fn serve(socket: &Path, api: WorkloadApi, shutdown: impl Future<Output = ()>) -> Result<(), WorkloadError> {
    WorkloadListener::bind(socket).await?.serve(api, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_of_the_trust_domain() {
        assert!(is_spiffe_id_of("spiffe://example.org/api", "example.org"));
        assert!(is_spiffe_id_of("spiffe://example.org/worker/a-b_c.d", "example.org"));
        for bad in [
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://other.org/api",
            "spiffe://example.org/a//b",
            "spiffe://example.org/../x",
            "spiffe://example.org/a?b",
            "https://example.org/api",
        ] {
            assert!(!is_spiffe_id_of(bad, "example.org"), "{bad}");
        }
    }

    #[test]
    fn quotas_count_in_all_and_per_uid() {
        let q = Arc::new(Quota::new("calls", 3, 2));
        let a = q.try_acquire(1).unwrap();
        let _b = q.try_acquire(1).unwrap();
        assert!(q.try_acquire(1).unwrap_err().contains("uid 1"));
        let _c = q.try_acquire(2).unwrap();
        assert!(q.try_acquire(3).unwrap_err().contains("too many calls (3)"));
        drop(a);
        let _d = q.try_acquire(1).unwrap();
    }

    #[test]
    fn claims_become_a_struct() {
        let claims: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"sub":"spiffe://e/x","aud":["a","b"],"exp":17,"n":null,"o":{"t":true}}"#).unwrap();
        let s = to_struct(claims);
        use prost_types::value::Kind;
        assert!(matches!(s.fields["exp"].kind, Some(Kind::NumberValue(n)) if n == 17.0));
        assert!(matches!(&s.fields["aud"].kind, Some(Kind::ListValue(l)) if l.values.len() == 2));
        assert!(matches!(&s.fields["o"].kind, Some(Kind::StructValue(o)) if o.fields.contains_key("t")));
    }
}
