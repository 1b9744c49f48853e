//! The certificate authority: files, store, tokens, signing and the HTTPS service.

pub mod authority;
pub mod cfssl;
pub mod check;
pub mod crl;
mod cross;
pub mod csr;
pub mod files;
pub mod intermediate;
pub mod rollover;
pub mod server;
pub mod signer;
pub mod store;
pub mod token;
