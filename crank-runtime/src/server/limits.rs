//! [`ConnectionLimits`]: how long a connection may take and how many may be open.

use std::time::Duration;

use crate::RuntimeError;

/// Connections open at most, when the open-files limit allows it.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections open from one address at most, when the default `max_connections` is at
/// least four times as many.
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 128;

/// What one client can make a server hold: how long a connection may take to finish its
/// TLS handshake, to send a request header, to stay without a request and to stay open at
/// all, and how many connections may be open, overall and from one client address.
///
/// [`Default`] gives the platform defaults below. Workers take overrides from the
/// environment ([`ConnectionLimits::from_env`]) or
/// [`WorkerApplication::connection_limits`](crate::WorkerApplication::connection_limits);
/// `crank ca serve` and `crank platform serve` from flags that read the same variables.
/// Every duration must be above zero and every count at least 1.
///
/// | field | default | variable |
/// |---|---|---|
/// | `handshake_timeout` | 10 s | `CRANK_HANDSHAKE_TIMEOUT` |
/// | `header_read_timeout` | 10 s | `CRANK_HEADER_READ_TIMEOUT` |
/// | `idle_timeout` | 60 s | `CRANK_IDLE_TIMEOUT` |
/// | `max_connection_age` | 1 h | `CRANK_MAX_CONNECTION_AGE` |
/// | `max_connections` | 1024, or 3/4 of the open-files limit if that is lower | `CRANK_MAX_CONNECTIONS` |
/// | `max_connections_per_ip` | 128, or a quarter of the default `max_connections` if that is lower | `CRANK_MAX_CONNECTIONS_PER_IP` |
/// | `max_in_flight_requests` | 1024 | `CRANK_MAX_IN_FLIGHT` |
/// | `http2_keep_alive_interval` | 30 s | |
/// | `http2_keep_alive_timeout` | 20 s | |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest TLS handshake, from the accepted TCP connection to the handshake's end.
    pub handshake_timeout: Duration,
    /// HTTP/1.1: longest time to receive a whole request header, from the first byte of
    /// a connection and, between keep-alive requests, from the end of the previous
    /// response (hyper restarts its timer when a connection goes idle), so it also closes
    /// idle HTTP/1.1 keep-alive connections.
    pub header_read_timeout: Duration,
    /// Longest time a connection may go without a request being handled, from the end of
    /// its handshake: closes connections that send nothing (or an incomplete HTTP/2
    /// request) and idle HTTP/2 connections, gracefully.
    pub idle_timeout: Duration,
    /// Age at which a connection is closed gracefully: requests in progress finish (for
    /// up to 30 s) and the client opens a new connection for the next ones.
    pub max_connection_age: Duration,
    /// Connections open at most. A new connection past it is closed at once, before its
    /// TLS handshake.
    pub max_connections: usize,
    /// Connections open from one client IP address at most. A new one past it is closed
    /// at once, before its TLS handshake.
    pub max_connections_per_ip: usize,
    /// Requests a worker serves at once at most. Past it, a request is shed at once with
    /// 503 and `Retry-After` instead of waiting, and the heartbeat's load score (in
    /// flight / this) reaches 1.
    pub max_in_flight_requests: usize,
    /// HTTP/2: a ping is sent when nothing was received for this long.
    pub http2_keep_alive_interval: Duration,
    /// HTTP/2: a connection whose ping is not answered within this time is closed.
    pub http2_keep_alive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        let max_connections = open_files_budget().map_or(DEFAULT_MAX_CONNECTIONS, |n| n.min(DEFAULT_MAX_CONNECTIONS));
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connection_age: Duration::from_secs(3600),
            max_connections,
            max_connections_per_ip: (max_connections / 4).clamp(1, DEFAULT_MAX_CONNECTIONS_PER_IP),
            max_in_flight_requests: 1024,
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

impl ConnectionLimits {
    /// Parses a timeout such as `10s`, `2m` or `1h 30m` (above zero). Used for the
    /// variables and for the `crank` flags.
    pub fn parse_timeout(value: &str) -> Result<Duration, String> {
        match humantime::parse_duration(value.trim()) {
            Ok(d) if d.is_zero() => Err("must be longer than 0".into()),
            Ok(d) => Ok(d),
            Err(e) => Err(format!("not a duration such as 10s or 2m ({e})")),
        }
    }

    /// Parses a connection count (at least 1). Used for the variables and for the `crank`
    /// flags.
    pub fn parse_count(value: &str) -> Result<usize, String> {
        match value.trim().parse::<usize>() {
            Ok(0) => Err("must be at least 1".into()),
            Ok(n) => Ok(n),
            Err(_) => Err("not a whole number".into()),
        }
    }

    /// The defaults, with what `CRANK_HANDSHAKE_TIMEOUT`, `CRANK_HEADER_READ_TIMEOUT`,
    /// `CRANK_IDLE_TIMEOUT`, `CRANK_MAX_CONNECTION_AGE` (durations such as `10s`, `2m`)
    /// and `CRANK_MAX_CONNECTIONS`, `CRANK_MAX_CONNECTIONS_PER_IP`, `CRANK_MAX_IN_FLIGHT`
    /// (counts) set. An
    /// unusable value is an error naming the variable.
    pub fn from_env() -> Result<Self, RuntimeError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// As [`ConnectionLimits::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, RuntimeError> {
        let mut limits = Self::default();
        let set = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let bad = |var: &str, value: &str, why: String| RuntimeError::Config(format!("{var}={value:?}: {why}"));
        for (var, field) in [
            ("CRANK_HANDSHAKE_TIMEOUT", &mut limits.handshake_timeout),
            ("CRANK_HEADER_READ_TIMEOUT", &mut limits.header_read_timeout),
            ("CRANK_IDLE_TIMEOUT", &mut limits.idle_timeout),
            ("CRANK_MAX_CONNECTION_AGE", &mut limits.max_connection_age),
        ] {
            if let Some(v) = set(var) {
                *field = Self::parse_timeout(&v).map_err(|e| bad(var, &v, e))?;
            }
        }
        for (var, field) in [
            ("CRANK_MAX_CONNECTIONS", &mut limits.max_connections),
            ("CRANK_MAX_CONNECTIONS_PER_IP", &mut limits.max_connections_per_ip),
            ("CRANK_MAX_IN_FLIGHT", &mut limits.max_in_flight_requests),
        ] {
            if let Some(v) = set(var) {
                *field = Self::parse_count(&v).map_err(|e| bad(var, &v, e))?;
            }
        }
        Ok(limits)
    }

    /// Checks that every duration is above zero and every count at least 1.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let durations = [
            ("handshake_timeout", self.handshake_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("max_connection_age", self.max_connection_age),
            ("http2_keep_alive_interval", self.http2_keep_alive_interval),
            ("http2_keep_alive_timeout", self.http2_keep_alive_timeout),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(RuntimeError::Config(format!("connection limit {name} must be longer than 0")));
        }
        let counts = [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_in_flight_requests", self.max_in_flight_requests),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(RuntimeError::Config(format!("connection limit {name} must be at least 1")));
        }
        Ok(())
    }
}

/// Three quarters of this process's open-files limit (`RLIMIT_NOFILE`, soft): as many
/// connections as leave descriptors for the store, logs and outgoing connections.
/// `None` when there is no limit or it cannot be read.
pub(crate) fn open_files_budget() -> Option<usize> {
    #[cfg(unix)]
    {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current?;
        Some(usize::try_from(soft / 4 * 3).unwrap_or(usize::MAX).max(1))
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        |k| vars.iter().find(|(name, _)| *name == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn the_environment_overrides_the_defaults() {
        let limits = ConnectionLimits::from_lookup(lookup(&[
            ("CRANK_HEADER_READ_TIMEOUT", "2s"),
            ("CRANK_IDLE_TIMEOUT", "1m 30s"),
            ("CRANK_MAX_CONNECTIONS_PER_IP", " 16 "),
            ("CRANK_MAX_CONNECTION_AGE", ""),
        ]))
        .unwrap();
        let default = ConnectionLimits::default();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(limits.idle_timeout, Duration::from_secs(90));
        assert_eq!(limits.max_connections_per_ip, 16);
        assert_eq!(limits.max_connection_age, default.max_connection_age, "an empty variable is unset");
        assert_eq!(limits.max_connections, default.max_connections);
        assert_eq!(ConnectionLimits::from_lookup(lookup(&[])).unwrap(), default);
    }

    #[test]
    fn unusable_values_are_refused_naming_the_variable() {
        for (var, value, why) in [
            ("CRANK_IDLE_TIMEOUT", "soon", "not a duration"),
            ("CRANK_HANDSHAKE_TIMEOUT", "0s", "longer than 0"),
            ("CRANK_MAX_CONNECTIONS", "0", "at least 1"),
            ("CRANK_MAX_CONNECTIONS_PER_IP", "-3", "whole number"),
        ] {
            let err = ConnectionLimits::from_lookup(|k| (k == var).then(|| value.to_owned())).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(var) && msg.contains(value) && msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn the_default_leaves_a_quarter_of_the_open_files() {
        let default = ConnectionLimits::default();
        assert!(default.validate().is_ok());
        assert!(default.max_connections <= DEFAULT_MAX_CONNECTIONS);
        if let Some(budget) = open_files_budget() {
            assert!(default.max_connections <= budget);
        }
        assert!(default.max_connections_per_ip <= (default.max_connections / 4).max(1), "{default:?}");
        let zero = ConnectionLimits { idle_timeout: Duration::ZERO, ..default };
        assert!(zero.validate().unwrap_err().to_string().contains("idle_timeout"));
    }
}
