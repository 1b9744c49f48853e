//! A process's certificate and key, swappable at run time.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The current certificate and key of a process, swappable at run time. Until one is
/// stored, handshakes fail rather than fall back to anything.
#[derive(Default)]
pub struct Credentials {
    current: ArcSwapOption<CertifiedKey>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("loaded", &self.current.load().is_some()).finish()
    }
}

impl Credentials {
    /// Credentials holding `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        let c = Self::default();
        c.current.store(Some(key));
        Arc::new(c)
    }

    /// Replaces the certificate used by new handshakes; open connections keep theirs.
    pub fn store(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
    }

    /// The certificate new handshakes use.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}
