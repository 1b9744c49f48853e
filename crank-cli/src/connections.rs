//! The connection limits and timeouts every server of `crank` takes as flags.

use std::time::Duration;

use clap::Args;
use crank_runtime::ConnectionLimits;

/// Timeouts and connection limits of a server (see docs/operations.md, "Connection
/// limits and timeouts"); what is not given keeps its [`ConnectionLimits`] default.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ConnectionArgs {
    /// Connections open at most; past it new connections are closed at once [default:
    /// 1024, or 3/4 of the open-files limit if lower].
    #[arg(long, env = "CRANK_MAX_CONNECTIONS", value_name = "N", value_parser = ConnectionLimits::parse_count)]
    pub(crate) max_connections: Option<usize>,
    /// Connections open from one client IP address at most [default: 128, or a quarter
    /// of the default --max-connections if lower].
    #[arg(long, env = "CRANK_MAX_CONNECTIONS_PER_IP", value_name = "N", value_parser = ConnectionLimits::parse_count)]
    pub(crate) max_connections_per_ip: Option<usize>,
    /// Longest TLS handshake [default: 10s].
    #[arg(long, env = "CRANK_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = ConnectionLimits::parse_timeout)]
    pub(crate) handshake_timeout: Option<Duration>,
    /// Longest time to receive an HTTP/1.1 request header, also between keep-alive
    /// requests [default: 10s].
    #[arg(long, env = "CRANK_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = ConnectionLimits::parse_timeout)]
    pub(crate) header_read_timeout: Option<Duration>,
    /// Close a connection after this long without a request [default: 60s].
    #[arg(long, env = "CRANK_IDLE_TIMEOUT", value_name = "DURATION", value_parser = ConnectionLimits::parse_timeout)]
    pub(crate) idle_timeout: Option<Duration>,
    /// Close a connection gracefully once it is this old [default: 1h].
    #[arg(long, env = "CRANK_MAX_CONNECTION_AGE", value_name = "DURATION", value_parser = ConnectionLimits::parse_timeout)]
    pub(crate) max_connection_age: Option<Duration>,
}

impl ConnectionArgs {
    /// The defaults with what these options set.
    pub(crate) fn limits(&self) -> ConnectionLimits {
        let d = ConnectionLimits::default();
        ConnectionLimits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
            handshake_timeout: self.handshake_timeout.unwrap_or(d.handshake_timeout),
            header_read_timeout: self.header_read_timeout.unwrap_or(d.header_read_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
            max_connection_age: self.max_connection_age.unwrap_or(d.max_connection_age),
            ..d
        }
    }
}
