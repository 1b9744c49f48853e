//! rustls configuration shared by the CA service, workers and clients, and what a
//! connection's handshake established ([`Connection`], [`PeerIdentity`]). Serving is in
//! [`serve_tls`](crate::serve_tls).

mod config;
mod credentials;
mod peer;
mod pinned;

pub use self::config::{
    Resumption, ca_client_config, client_config, mtls_client_config, pinned_client_config, server_config,
};
pub use self::credentials::Credentials;
pub(crate) use self::peer::Allowed;
pub use self::peer::{Connection, PeerIdentity};
pub use crate::crypto::{provider, root_store};
