//! # crank-agent
//!
//! `crank agent`: one long-running process per host or pod that holds its own identity
//! (bootstrapped with a join token like any worker) and obtains and renews certificates
//! for workloads that do not link crank-runtime. It hands them out two ways: as files
//! in certificate directories, and over the SPIFFE Workload API on a Unix socket.
//!
//! ```text
//!   CA ──(registration entries for this agent)──► agent ──► cert dirs (files + reload)
//!    ▲                                              │
//!    └──── CSRs made here (keys never leave) ───────┴──► Workload API socket ◄── py-spiffe, go-spiffe, ...
//! ```

pub mod agent;
pub mod authority;
pub mod files;
pub mod proto;
pub mod state;
pub mod workload;

pub use state::{HeldEntry, JwtMinter, MintError, Svid, WorkloadState};
