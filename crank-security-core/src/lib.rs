//! # crank-security-core
//!
//! The vocabulary shared by every part of crank-security: worker identities,
//! certificate bundles and their metadata, local key and CSR generation, security
//! configuration from the environment, lifecycle events, and the four extension
//! traits users implement.
//!
//! ```text
//!   worker                                 CA service
//!   ──────                                 ──────────
//!   generate_key ─► build_csr ──(CSR + join token)──► PolicyEngine ─► CertificateProvider
//!        │                                                                 │
//!        ▼                                                                 ▼
//!   BundleWriter (atomic, key 0600) ◄────────── signed leaf + CA root ─────┘
//!        │
//!        └─► CertificateBundle::validate ─► mTLS server + client     EventSink sees it all
//! ```
//!
//! A worker key and CSR, made locally; the private key never leaves this process:
//!
//! ```
//! use crank_security_core::{KeyType, WorkerId, generate_key, build_csr};
//!
//! let worker = WorkerId::new("hello-world")?;
//! let key = generate_key(KeyType::EcdsaP256)?;
//! let csr_pem = build_csr(&key, &worker, &["hello-world".to_owned()])?;
//! assert!(csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
//! # Ok::<(), crank_security_core::Error>(())
//! ```
//!
//! The four extension traits, each held as `Arc<dyn Trait>` with its default beside it:
//! [`CertificateProvider`], [`PolicyEngine`] ([`DefaultPolicy`]), [`EventSink`]
//! ([`JsonLogSink`], [`EventSinks`]) and [`CertDirResolver`] ([`DefaultCertDirResolver`]).

mod access;
mod bundle;
mod config;
mod dirs;
mod error;
mod events;
mod identity;
mod keys;
mod ownership;
mod policy;
mod provider;
mod selector;
mod token;
mod write;

pub use access::{
    ADMIN_CAPABILITY, AccessDecision, AccessInput, AccessRequest, AccessTarget, CAPABILITIES_OID, Caller,
    OPEN_CAPABILITIES, RateLimit, capabilities_extension, capability_granted, default_access,
    parse_capabilities_extension, validate_capability,
};
pub use bundle::{
    CLOCK_SKEW_BACKDATE, CertMetadata, CertificateBundle, cert_pem, crl_pem, fingerprint_sha256, parse_pem_certs,
    rfc3339,
};
pub use config::{DEFAULT_CA_SERVICE_URL, SecurityConfig, parse_ca_urls};
pub use dirs::{CertDirResolver, DefaultCertDirResolver, FixedCertDir};
pub use error::Error;
pub use events::{
    CertSummary, CertificateEvent, CorrelationId, ErrorContext, EventKind, EventSink, EventSinks, JsonLogSink, NoEvents,
};
pub use identity::{CA_PATH, SpiffeId, TrustDomain, WorkerId, validate_host_name};
pub use keys::{KeyType, build_csr, generate_key};
pub use policy::{
    DefaultPolicy, IssuanceDecision, IssuanceInput, PolicyEngine, PolicyError, RenewalDecision, RenewalInput,
    default_renewal,
};
pub use provider::{
    CertificateProvider, CertificateTemplate, IssueRequest, IssuedCertificate, ProviderError, RenewRequest, SignRequest,
};
pub use selector::{MAX_SELECTORS, MAX_SELECTORS_LEN, RegistrationEntry, Selector, WorkloadFacts, selectors_match};
pub use token::{JoinTokenClaims, peek_token_claims};
pub use write::{BundleWriter, CertFiles, FileChange, StagedBundle, write_file_atomic};
