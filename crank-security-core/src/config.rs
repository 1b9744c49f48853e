use std::path::PathBuf;

use url::Url;

use crate::{CertDirResolver, DefaultCertDirResolver, Error};

/// The CA service URL used when `CA_SERVICE_URL` is not set.
pub const DEFAULT_CA_SERVICE_URL: &str = "https://cert-authority:9090";

/// Security settings read from the environment. HTTPS and client-certificate
/// verification are not settings: they are always on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    /// Certificate directory (`CERT_DIR`, else the [`DefaultCertDirResolver`] rules).
    pub cert_dir: PathBuf,
    /// CA service URLs (`CA_SERVICE_URL`, comma-separated; default
    /// [`DEFAULT_CA_SERVICE_URL`]). Every one must be `https://`.
    pub ca_urls: Vec<Url>,
    /// Deployment environment (`CRANK_ENVIRONMENT`, default `development`).
    pub environment: String,
}

impl SecurityConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|k| std::env::var(k).ok(), &DefaultCertDirResolver)
    }

    /// Reads settings through `lookup` (for tests and embedding), resolving the cert
    /// directory with `resolver` when `CERT_DIR` is unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>, resolver: &dyn CertDirResolver) -> Result<Self, Error> {
        if let Some(v) = lookup("HTTPS_ONLY") {
            match v.trim().to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => {}
                "0" | "false" | "no" | "off" => {
                    return Err(Error::Config(
                        "HTTPS_ONLY=false is refused: crank-security serves and calls HTTPS with \
                         mutual TLS only; unset HTTPS_ONLY or set it to true"
                            .into(),
                    ));
                }
                other => {
                    return Err(Error::Config(format!(
                        "HTTPS_ONLY={other:?} is not a boolean; unset it or set it to true"
                    )));
                }
            }
        }
        let cert_dir = match lookup("CERT_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => resolver.resolve(),
        };
        let urls = lookup("CA_SERVICE_URL").unwrap_or_else(|| DEFAULT_CA_SERVICE_URL.to_owned());
        let ca_urls = parse_ca_urls(&urls)?;
        let environment =
            lookup("CRANK_ENVIRONMENT").filter(|e| !e.is_empty()).unwrap_or_else(|| "development".to_owned());
        Ok(Self { cert_dir, ca_urls, environment })
    }
}

/// Parses a comma-separated list of CA URLs; each must be an absolute `https://` URL.
pub fn parse_ca_urls(list: &str) -> Result<Vec<Url>, Error> {
    let urls = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let url = Url::parse(s).map_err(|e| Error::Config(format!("CA_SERVICE_URL {s:?} is not a URL: {e}")))?;
            if url.scheme() != "https" {
                return Err(Error::Config(format!(
                    "CA_SERVICE_URL {s:?} must use https://; plaintext HTTP is not supported"
                )));
            }
            Ok(url)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(Error::Config("CA_SERVICE_URL is empty".into()));
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::FixedCertDir;

    fn cfg(vars: &[(&str, &str)]) -> Result<SecurityConfig, Error> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        SecurityConfig::from_lookup(|k| map.get(k).cloned(), &FixedCertDir("/fallback".into()))
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.cert_dir, PathBuf::from("/fallback"));
        assert_eq!(c.ca_urls[0].as_str(), "https://cert-authority:9090/");
        assert_eq!(c.environment, "development");
    }

    #[test]
    fn https_only_false_is_refused_with_a_clear_error() {
        for v in ["false", "0", "FALSE", "no"] {
            let err = cfg(&[("HTTPS_ONLY", v)]).unwrap_err().to_string();
            assert!(err.contains("HTTPS_ONLY=false is refused"), "{err}");
        }
        assert!(cfg(&[("HTTPS_ONLY", "maybe")]).is_err());
        assert!(cfg(&[("HTTPS_ONLY", "true")]).is_ok());
    }

    #[test]
    fn plaintext_ca_url_is_refused() {
        let err = cfg(&[("CA_SERVICE_URL", "http://ca:9090")]).unwrap_err().to_string();
        assert!(err.contains("must use https://"), "{err}");
        let c = cfg(&[("CA_SERVICE_URL", "https://a:1, https://b:2"), ("CERT_DIR", "/c")]).unwrap();
        assert_eq!(c.ca_urls.len(), 2);
        assert_eq!(c.cert_dir, PathBuf::from("/c"));
    }
}
