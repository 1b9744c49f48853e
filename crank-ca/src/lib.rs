//! # crank-ca
//!
//! The certificate authority of crank-security: its directory and keys, join tokens,
//! policy, signing (its own key or an upstream CA), the ledger (SQLite or PostgreSQL),
//! CRLs, and its HTTPS service.

pub mod authority;
mod builder;
pub mod cfssl;
pub mod check;
pub mod crl;
mod cross;
pub mod csr;
mod error;
pub mod files;
pub mod intermediate;
pub mod rollover;
pub mod serial;
pub mod server;
pub mod signer;
pub mod store;
pub mod token;

pub use authority::{LocalCa, LocalCaConfig};
pub use builder::{LocalCaBuilder, open_store};
pub use error::{CaError, SetupError};
pub use files::{CaDir, InitOptions, init_ca};
pub use token::create_token;
