//! # crank-ca
//!
//! The certificate authority of crank-security: its directory and keys, join tokens,
//! policy, signing (its own key or an upstream CA), the ledger (SQLite or PostgreSQL),
//! CRLs, and its HTTPS service.

// What an operator or an embedding program uses as modules: the upstream signer (cfssl),
// the intermediate and rollover steps, the HTTPS service and the store (an extension
// point of its own).
pub mod cfssl;
pub mod console;
pub mod intermediate;
pub mod jwt_svid;
pub mod key_rotation;
pub mod rollover;
pub mod server;
pub mod store;

mod agent_api;
mod answers;
mod authority;
mod builder;
mod check;
mod crl;
mod cross;
mod csr;
mod denials;
mod error;
mod files;
mod key_cert;
mod serial;
mod service_tls;
mod signer;
mod token;

pub mod token_key;

pub use agent_api::{AGENT_CAPABILITY, ENTRIES_CAPABILITY};
pub use authority::{AgentCaller, BACKDATE, LocalCa, LocalCaConfig};
pub use builder::{LocalCaBuilder, open_store};
pub use check::check_signed;
pub use crl::{CRL_REFRESH_AFTER, CRL_VALIDITY, SignedCrl};
pub use csr::{MAX_CSR_BYTES, MIN_RSA_BITS, ParsedCsr, parse_csr, parse_verified_csr};
pub use error::{CaError, SetupError};
pub use files::{CaDir, DEFAULT_CA_SANS, InitOptions, SERVER_VALIDITY, init_ca};
pub use serial::random_serial;
pub use signer::{LocalSigner, leaf_params};
pub use token::{
    DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, TOKEN_AUDIENCE, TOKEN_KEY_PURPOSE_OID, TokenAuthority, TokenError, key_id,
};
pub use token_key::create_token;
