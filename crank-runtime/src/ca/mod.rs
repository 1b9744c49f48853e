//! The certificate authority: files, store, tokens, signing and the HTTPS service.

pub mod authority;
pub mod crl;
pub mod files;
pub mod rollover;
pub mod server;
pub mod store;
pub mod token;
