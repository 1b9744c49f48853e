//! The worker runtime: bootstrap, the mTLS server and the mTLS client.

pub mod app;
pub mod bootstrap;
pub mod ca_client;
pub mod crl;
pub mod crl_watch;
pub mod mtls;
pub mod rotation;
mod settings;
