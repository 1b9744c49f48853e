//! A worker's settings: what its builder was told, completed from the environment in one
//! place ([`WorkerSettings::resolve`], testable through a lookup function the way
//! [`SecurityConfig::from_lookup`] is). An explicit builder call wins over a variable; a
//! variable is read only for what the builder left open, and an unusable value is
//! refused naming the variable.
//!
//! | variable | default |
//! |---|---|
//! | `CERT_DIR`, `CA_SERVICE_URL`, `CRANK_ENVIRONMENT`, `HTTPS_ONLY` | see [`SecurityConfig`] |
//! | `CRANK_JOIN_TOKEN` | none (a valid certificate must be in `CERT_DIR`) |
//! | `CRANK_JOIN_TOKEN_FILE` | `<CERT_DIR>/join-token` |
//! | `CRANK_WORKER_ID` | the token's worker id |
//! | `CRANK_SANS` (comma-separated) | the worker id (if a host name), `localhost`, `127.0.0.1`, `::1` |
//! | `CRANK_KEY_TYPE` | `ecdsa-p256` |
//! | `CRANK_BOOTSTRAP_ATTEMPTS` | 5 |
//! | `CRANK_LISTEN_HOST` | `0.0.0.0` |
//! | `CRANK_POLICY_DIR` | the built-in policy |
//! | `CRANK_CRL_REFRESH` | `30s` (at least 1 s) |
//! | `CRANK_CRL_MODE` | `warn` |
//! | `CRANK_TLS_RESUMPTION` | `on` |
//! | `PLATFORM_URL`, `CRANK_HEARTBEAT_INTERVAL` | no registry; `10s` |
//! | `CRANK_MAX_CONNECTIONS`, ... | see [`ConnectionLimits::from_lookup`] |
//! | `CRANK_RATE_LIMITS` (`CAPABILITY=RATE/s[:BURST]`, comma-separated) | none (only what policy sets) |
//! | `CRANK_PROBE_PORT` | no probe listener ([`crate::probe`]: `/livez`, `/readyz`, no client certificate) |

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crank_security_core::{DefaultCertDirResolver, KeyType, PolicyEngine, SecurityConfig};
use url::Url;

use super::bootstrap::RetryPolicy;
use crate::tls::Resumption;
use crate::trust::CrlMode;
use crate::{ConnectionLimits, RuntimeError};

/// What a worker's builder was told; `None` (or empty) means "from the environment, else
/// the default".
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerSettings {
    pub(crate) security: Option<SecurityConfig>,
    pub(crate) join_token: Option<String>,
    pub(crate) worker_id: Option<String>,
    pub(crate) sans: Vec<String>,
    pub(crate) key_type: Option<KeyType>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) host: Option<IpAddr>,
    pub(crate) policy: Option<Arc<dyn PolicyEngine>>,
    pub(crate) platform_url: Option<String>,
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) crl_refresh: Option<Duration>,
    pub(crate) crl_mode: Option<CrlMode>,
    pub(crate) resumption: Option<Resumption>,
    pub(crate) limits: Option<ConnectionLimits>,
    pub(crate) rate_limits: std::collections::HashMap<String, crank_security_core::RateLimit>,
    pub(crate) probe_port: Option<u16>,
}

/// Every setting decided.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) security: SecurityConfig,
    pub(crate) join_token: Option<String>,
    pub(crate) token_file: PathBuf,
    pub(crate) worker_id: Option<String>,
    pub(crate) sans: Vec<String>,
    pub(crate) key_type: KeyType,
    pub(crate) retry: RetryPolicy,
    pub(crate) host: IpAddr,
    pub(crate) policy: Arc<dyn PolicyEngine>,
    /// The platform registry and the heartbeat interval, if one is configured.
    pub(crate) platform: Option<(Url, Duration)>,
    pub(crate) crl_refresh: Duration,
    pub(crate) crl_mode: CrlMode,
    pub(crate) resumption: Resumption,
    pub(crate) limits: ConnectionLimits,
    /// Rate limits by capability, for allowed calls whose decision sets none.
    pub(crate) rate_limits: std::collections::HashMap<String, crank_security_core::RateLimit>,
    /// The port of the probe listener, if one is opened.
    pub(crate) probe_port: Option<u16>,
}

/// Parses `var`'s value with `parse`, naming the variable when it fails.
fn parsed<T, E: std::fmt::Display>(
    lookup: &dyn Fn(&str) -> Option<String>,
    var: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, RuntimeError> {
    lookup(var).map(|v| parse(v.trim()).map_err(|e| RuntimeError::Config(format!("{var}={v:?}: {e}")))).transpose()
}

fn duration(v: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(v)
}

impl WorkerSettings {
    /// Completes the settings from the process environment.
    pub(crate) fn resolve_from_env(self) -> Result<Resolved, RuntimeError> {
        self.resolve(|k| std::env::var(k).ok())
    }

    /// Completes the settings from `lookup` (empty values count as unset).
    pub(crate) fn resolve(self, lookup: impl Fn(&str) -> Option<String>) -> Result<Resolved, RuntimeError> {
        let lookup = move |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let lookup: &dyn Fn(&str) -> Option<String> = &lookup;
        let security = match self.security {
            Some(s) => s,
            None => SecurityConfig::from_lookup(lookup, &DefaultCertDirResolver)?,
        };
        let key_type = match self.key_type {
            Some(k) => k,
            None => parsed(lookup, "CRANK_KEY_TYPE", KeyType::from_str)?.unwrap_or_default(),
        };
        let sans = if self.sans.is_empty() {
            lookup("CRANK_SANS")
                .map(|list| list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        } else {
            self.sans
        };
        let retry = match self.retry {
            Some(r) => r,
            None => {
                let attempts = parsed(lookup, "CRANK_BOOTSTRAP_ATTEMPTS", usize::from_str)?;
                RetryPolicy { attempts: attempts.unwrap_or(RetryPolicy::default().attempts), ..RetryPolicy::default() }
            }
        };
        let host = match self.host {
            Some(h) => h,
            None => parsed(lookup, "CRANK_LISTEN_HOST", IpAddr::from_str)?.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        };
        let policy = match (self.policy, lookup("CRANK_POLICY_DIR")) {
            (Some(p), _) => p,
            (None, Some(dir)) => {
                let engine = crank_policy::from_dir(std::path::Path::new(&dir))
                    .map_err(|e| RuntimeError::Config(format!("CRANK_POLICY_DIR={dir}: {e}")))?;
                tracing::info!(dir = %dir, engine = engine.current().name(), "policy loaded (hot-reloaded)");
                engine
            }
            (None, None) => crank_policy::builtin(),
        };
        let platform = match self.platform_url.or_else(|| lookup("PLATFORM_URL")) {
            None => None,
            Some(url) => {
                let url = url
                    .parse::<Url>()
                    .ok()
                    .filter(|u| u.scheme() == "https")
                    .ok_or_else(|| RuntimeError::Config(format!("PLATFORM_URL {url:?} must be an https:// URL")))?;
                let interval = match self.heartbeat_interval {
                    Some(i) => i,
                    None => parsed(lookup, "CRANK_HEARTBEAT_INTERVAL", duration)?
                        .unwrap_or(crate::platform::DEFAULT_HEARTBEAT_INTERVAL),
                };
                Some((url, interval))
            }
        };
        let crl_refresh = match self.crl_refresh {
            Some(i) => i,
            None => parsed(lookup, "CRANK_CRL_REFRESH", duration)?.unwrap_or(super::crl::DEFAULT_CRL_REFRESH),
        };
        if crl_refresh < Duration::from_secs(1) {
            return Err(RuntimeError::Config(format!("the CRL refresh interval {crl_refresh:?} is below 1 s")));
        }
        let crl_mode = match self.crl_mode {
            Some(m) => m,
            None => parsed(lookup, "CRANK_CRL_MODE", CrlMode::from_str)?.unwrap_or_default(),
        };
        let resumption = match self.resumption {
            Some(r) => r,
            None => parsed(lookup, "CRANK_TLS_RESUMPTION", Resumption::from_str)?.unwrap_or_default(),
        };
        let limits = match self.limits {
            Some(l) => l,
            None => ConnectionLimits::from_lookup(lookup)?,
        };
        let rate_limits = if self.rate_limits.is_empty() {
            match lookup("CRANK_RATE_LIMITS") {
                Some(v) => crate::access::parse_rate_limits(&v)
                    .map_err(|e| RuntimeError::Config(format!("CRANK_RATE_LIMITS: {e}")))?,
                None => Default::default(),
            }
        } else {
            self.rate_limits
        };
        let probe_port = match self.probe_port {
            Some(p) => Some(p),
            None => parsed(lookup, crate::probe::PROBE_PORT_VAR, u16::from_str)?,
        };
        let token_file =
            lookup("CRANK_JOIN_TOKEN_FILE").map_or_else(|| security.cert_dir.join("join-token"), PathBuf::from);
        Ok(Resolved {
            join_token: self.join_token.or_else(|| lookup("CRANK_JOIN_TOKEN")),
            worker_id: self.worker_id.or_else(|| lookup("CRANK_WORKER_ID")),
            token_file,
            security,
            sans,
            key_type,
            retry,
            host,
            policy,
            platform,
            crl_refresh,
            crl_mode,
            resumption,
            limits,
            rate_limits,
            probe_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(settings: WorkerSettings, vars: &[(&str, &str)]) -> Result<Resolved, RuntimeError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        settings.resolve(move |k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_variables_and_explicit_settings() {
        let r = resolve(WorkerSettings::default(), &[("CERT_DIR", "/certs")]).unwrap();
        assert_eq!(r.security.cert_dir, PathBuf::from("/certs"));
        assert_eq!(r.token_file, PathBuf::from("/certs/join-token"));
        assert_eq!(
            (r.key_type, r.host, r.crl_refresh),
            (KeyType::EcdsaP256, IpAddr::V4(Ipv4Addr::UNSPECIFIED), super::super::crl::DEFAULT_CRL_REFRESH)
        );
        assert!(r.platform.is_none() && r.join_token.is_none() && r.sans.is_empty());

        let vars = [
            ("CERT_DIR", "/certs"),
            ("CRANK_JOIN_TOKEN", "tok"),
            ("CRANK_SANS", " a.example , ,b.example"),
            ("CRANK_KEY_TYPE", "ed25519"),
            ("CRANK_BOOTSTRAP_ATTEMPTS", "9"),
            ("CRANK_LISTEN_HOST", "127.0.0.1"),
            ("CRANK_CRL_REFRESH", "5s"),
            ("CRANK_CRL_MODE", "fail-closed"),
            ("CRANK_TLS_RESUMPTION", "off"),
            ("PLATFORM_URL", "https://platform:8443"),
            ("CRANK_HEARTBEAT_INTERVAL", "3s"),
            ("CRANK_IDLE_TIMEOUT", "7s"),
            ("CRANK_PROBE_PORT", "8501"),
        ];
        let r = resolve(WorkerSettings::default(), &vars).unwrap();
        assert_eq!(r.join_token.as_deref(), Some("tok"));
        assert_eq!(r.sans, ["a.example", "b.example"]);
        assert_eq!((r.key_type, r.retry.attempts), (KeyType::Ed25519, 9));
        assert_eq!(
            (r.crl_refresh, r.crl_mode, r.resumption),
            (Duration::from_secs(5), CrlMode::FailClosed, Resumption::Off)
        );
        assert_eq!(
            r.platform.map(|(u, i)| (u.to_string(), i)),
            Some(("https://platform:8443/".into(), Duration::from_secs(3)))
        );
        assert_eq!(r.limits.idle_timeout, Duration::from_secs(7));
        assert_eq!(r.probe_port, Some(8501));

        // An explicit setting wins, and its variable is not even read.
        let explicit = WorkerSettings { key_type: Some(KeyType::EcdsaP384), ..WorkerSettings::default() };
        let r = resolve(explicit, &[("CERT_DIR", "/c"), ("CRANK_KEY_TYPE", "not-a-key")]).unwrap();
        assert_eq!(r.key_type, KeyType::EcdsaP384);
    }

    #[test]
    fn bad_values_are_refused_naming_the_variable() {
        for (var, value, says) in [
            ("CRANK_BOOTSTRAP_ATTEMPTS", "many", "CRANK_BOOTSTRAP_ATTEMPTS"),
            ("CRANK_LISTEN_HOST", "localhost", "CRANK_LISTEN_HOST"),
            ("CRANK_CRL_REFRESH", "soon", "CRANK_CRL_REFRESH"),
            ("CRANK_CRL_REFRESH", "100ms", "below 1 s"),
            ("CRANK_CRL_MODE", "strict", "CRANK_CRL_MODE"),
            ("CRANK_TLS_RESUMPTION", "maybe", "CRANK_TLS_RESUMPTION"),
            ("PLATFORM_URL", "http://platform:8443", "https://"),
            ("CRANK_KEY_TYPE", "dsa", "CRANK_KEY_TYPE"),
            ("CRANK_PROBE_PORT", "70000", "CRANK_PROBE_PORT"),
        ] {
            let err = resolve(WorkerSettings::default(), &[("CERT_DIR", "/c"), (var, value)]).unwrap_err().to_string();
            assert!(err.contains(says), "{var}={value}: {err}");
        }
    }
}
