//! The CA service client: the worker-side `CertificateProvider`, over HTTPS.

use std::time::Duration;

use async_trait::async_trait;
use crank_security_core::{
    CertificateProvider, CorrelationId, IssueRequest, IssuedCertificate, ProviderError, RenewRequest, TrustDomain,
};
use serde::Serialize;
use url::Url;

use crate::api::{
    AGENT_ENTRIES_PATH, AGENT_ISSUE_PATH, AGENT_JWT_PATH, AgentIssueBody, CRL_PATH, ENTRIES_PATH, Entry, EntryBody,
    ErrorBody, ISSUE_PATH, IssueBody, JWT_BUNDLE_PATH, JwtSvidAnswer, JwtSvidBody, RENEW_PATH, REVOKE_PATH, RenewBody,
    RevokeAnswer, RevokeBody, TRUST_BUNDLE_PATH,
};

/// Talks to one or more CA service URLs, failing over in order.
#[derive(Debug, Clone)]
pub struct CaClient {
    urls: Vec<Url>,
    http: reqwest::Client,
}

/// Timeout of one CA request.
const CA_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

impl CaClient {
    /// A client that trusts a CA only if it presents the certificate whose SHA-256
    /// fingerprint is `fingerprint` and the CA identity of `trust_domain` (both from a
    /// join token). Used for first contact, without a client certificate.
    pub fn pinned(urls: Vec<Url>, fingerprint: &str, trust_domain: &TrustDomain) -> Result<Self, ProviderError> {
        let tls = crate::tls::pinned_client_config(fingerprint, trust_domain)
            .map_err(|e| ProviderError::Other(e.to_string()))?;
        Self::with_tls(urls, tls)
    }

    /// A client that verifies the CA against `trust`, requires the CA identity of
    /// `trust_domain` (`spiffe://<td>/ca`), and presents `creds` (renewal, CRL fetches,
    /// revocation).
    pub fn mtls(
        urls: Vec<Url>,
        trust: &std::sync::Arc<crate::trust::TrustStore>,
        creds: std::sync::Arc<crate::tls::Credentials>,
        trust_domain: &TrustDomain,
    ) -> Result<Self, ProviderError> {
        let tls = crate::tls::ca_client_config(trust, creds, trust_domain)
            .map_err(|e| ProviderError::Other(e.to_string()))?;
        Self::with_tls(urls, tls)
    }

    /// A client that verifies the CA like [`CaClient::mtls`] but presents no
    /// certificate: for what the CA publishes to anyone (the CRL, the trust bundle), so
    /// that a worker whose own certificate was revoked still learns it.
    pub fn anonymous(
        urls: Vec<Url>,
        trust: &std::sync::Arc<crate::trust::TrustStore>,
        trust_domain: &TrustDomain,
    ) -> Result<Self, ProviderError> {
        let tls = rustls::ClientConfig::builder_with_provider(crate::crypto::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProviderError::Other(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(trust.ca_verifier(trust_domain))
            .with_no_client_auth();
        Self::with_tls(urls, tls)
    }

    fn with_tls(urls: Vec<Url>, mut tls: rustls::ClientConfig) -> Result<Self, ProviderError> {
        if urls.is_empty() {
            return Err(ProviderError::Other("no CA URL configured".into()));
        }
        if let Some(u) = urls.iter().find(|u| u.scheme() != "https") {
            return Err(ProviderError::Other(format!("CA URL {u} must use https://")));
        }
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(CA_REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| ProviderError::Other(format!("building the CA client: {e}")))?;
        Ok(Self { urls, http })
    }

    /// The CA URLs, in failover order.
    pub fn urls(&self) -> &[Url] {
        &self.urls
    }

    /// Asks the CA to revoke (the client certificate must be an administrator's).
    pub async fn revoke(&self, body: &RevokeBody) -> Result<RevokeAnswer, ProviderError> {
        self.post(REVOKE_PATH, body, &CorrelationId::new()).await
    }

    /// Creates a registration entry (the client certificate must be an administrator's).
    pub async fn create_entry(&self, body: &EntryBody) -> Result<Entry, ProviderError> {
        self.post(ENTRIES_PATH, body, &CorrelationId::new()).await
    }

    /// Lists registration entries, only `agent_id`'s when given (administrator).
    pub async fn entries(&self, agent_id: Option<&str>) -> Result<Vec<Entry>, ProviderError> {
        match agent_id {
            Some(a) => {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                q.append_pair("agent_id", a);
                self.get_json(&format!("{ENTRIES_PATH}?{}", q.finish())).await
            }
            None => self.get_json(ENTRIES_PATH).await,
        }
    }

    /// Deletes registration entry `id` (administrator).
    pub async fn delete_entry(&self, id: &str) -> Result<serde_json::Value, ProviderError> {
        let cid = CorrelationId::new();
        let path =
            format!("{ENTRIES_PATH}/{}", url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>());
        self.call(&path, |url| self.http.delete(url).header(CorrelationId::HEADER, cid.as_str())).await
    }

    /// The registration entries assigned to this client, an agent.
    pub async fn agent_entries(&self) -> Result<Vec<Entry>, ProviderError> {
        self.get_json(AGENT_ENTRIES_PATH).await
    }

    /// Asks for a workload's certificate as its agent.
    pub async fn agent_issue(
        &self,
        body: &AgentIssueBody,
        cid: &CorrelationId,
    ) -> Result<IssuedCertificate, ProviderError> {
        self.post(AGENT_ISSUE_PATH, body, cid).await
    }

    /// Asks for a workload's JWT-SVID as its agent.
    pub async fn agent_jwt(&self, body: &JwtSvidBody) -> Result<JwtSvidAnswer, ProviderError> {
        self.post(AGENT_JWT_PATH, body, &CorrelationId::new()).await
    }

    /// The CA's JWT bundle (a JWKS document).
    pub async fn jwt_bundle(&self) -> Result<serde_json::Value, ProviderError> {
        self.get_json(JWT_BUNDLE_PATH).await
    }

    /// Fetches the CA's CRL (DER) from the first CA URL that answers. The caller
    /// verifies it before use.
    pub async fn crl(&self) -> Result<Vec<u8>, ProviderError> {
        let mut last = None;
        for base in &self.urls {
            let url = base.join(CRL_PATH).map_err(|e| ProviderError::Other(e.to_string()))?;
            match self.http.get(url.clone()).send().await {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) => return Ok(b.to_vec()),
                    Err(e) => last = Some(ProviderError::Unavailable(format!("{url}: {}", error_chain(&e)))),
                },
                Ok(r) => last = Some(classify(r.status(), format!("{url}: HTTP {}", r.status()))),
                Err(e) => last = Some(ProviderError::Unavailable(format!("{url}: {}", error_chain(&e)))),
            }
        }
        Err(last.unwrap_or_else(|| ProviderError::Unavailable("no CA URL answered".into())))
    }

    /// `GET path` as JSON from the first CA URL that answers (for example the console's
    /// `/console/api/status`); a refusal (403, 404) is not retried at the next URL.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ProviderError> {
        let cid = CorrelationId::new();
        self.call(path, |url| self.http.get(url).header(CorrelationId::HEADER, cid.as_str())).await
    }

    async fn post<B: Serialize + Sync, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        cid: &CorrelationId,
    ) -> Result<T, ProviderError> {
        self.call(path, |url| self.http.post(url).header(CorrelationId::HEADER, cid.as_str()).json(body)).await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        request: impl Fn(Url) -> reqwest::RequestBuilder,
    ) -> Result<T, ProviderError> {
        let mut last = None;
        for base in &self.urls {
            let url = base.join(path).map_err(|e| ProviderError::Other(e.to_string()))?;
            let res = request(url.clone()).send().await;
            match res {
                Ok(resp) if resp.status().is_success() => {
                    return resp
                        .json::<T>()
                        .await
                        .map_err(|e| ProviderError::Other(format!("{url} answered with an unreadable body: {e}")));
                }
                Ok(resp) => {
                    let status = resp.status();
                    let (code, msg) = match resp.json::<ErrorBody>().await {
                        Ok(b) => (b.error.code, b.error.message),
                        Err(_) => (String::new(), format!("HTTP {status}")),
                    };
                    let err = if code == "certificate_revoked" {
                        ProviderError::Revoked(format!("{url}: {msg}"))
                    } else {
                        classify(status, format!("{url}: {msg}"))
                    };
                    if !matches!(err, ProviderError::Unavailable(_)) {
                        return Err(err);
                    }
                    last = Some(err);
                }
                Err(e) if refused_as_revoked(&e) => {
                    return Err(ProviderError::Revoked(format!(
                        "{url}: the CA refused this client certificate in the handshake as revoked"
                    )));
                }
                Err(e) => last = Some(ProviderError::Unavailable(format!("{url}: {}", error_chain(&e)))),
            }
        }
        Err(last.unwrap_or_else(|| ProviderError::Unavailable("no CA URL answered".into())))
    }
}

/// Whether the CA ended the handshake with a `certificate_revoked` alert: it found this
/// client's certificate in its CRL.
fn refused_as_revoked(e: &(dyn std::error::Error + 'static)) -> bool {
    let revoked = |err: &(dyn std::error::Error + 'static)| {
        matches!(
            err.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked))
        )
    };
    let mut cur = Some(e);
    while let Some(err) = cur {
        let inner_io = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if revoked(err) || inner_io.is_some_and(|i| revoked(i)) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Maps an HTTP error status to a provider error; only `Unavailable` is worth retrying.
fn classify(status: reqwest::StatusCode, msg: String) -> ProviderError {
    match status.as_u16() {
        400 | 413 | 415 | 422 => ProviderError::BadRequest(msg),
        401 => ProviderError::Unauthorized(msg),
        403 => ProviderError::PolicyDenied(msg),
        408 | 429 | 500..=599 => ProviderError::Unavailable(msg),
        _ => ProviderError::Other(msg),
    }
}

/// An error with its sources, e.g. "error sending request: connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[async_trait]
impl CertificateProvider for CaClient {
    async fn issue(&self, req: IssueRequest) -> Result<IssuedCertificate, ProviderError> {
        let body = IssueBody { csr: req.csr_pem, token: req.token };
        self.post(ISSUE_PATH, &body, &req.correlation_id).await
    }

    async fn renew(&self, req: RenewRequest) -> Result<IssuedCertificate, ProviderError> {
        self.post(RENEW_PATH, &RenewBody { csr: req.csr_pem }, &req.correlation_id).await
    }

    async fn trust_bundle(&self) -> Result<String, ProviderError> {
        let mut last = None;
        for base in &self.urls {
            let url = base.join(TRUST_BUNDLE_PATH).map_err(|e| ProviderError::Other(e.to_string()))?;
            match self.http.get(url.clone()).send().await {
                Ok(r) if r.status().is_success() => {
                    return r.text().await.map_err(|e| ProviderError::Unavailable(e.to_string()));
                }
                Ok(r) => last = Some(classify(r.status(), format!("{url}: HTTP {}", r.status()))),
                Err(e) => last = Some(ProviderError::Unavailable(format!("{url}: {}", error_chain(&e)))),
            }
        }
        Err(last.unwrap_or_else(|| ProviderError::Unavailable("no CA URL answered".into())))
    }
}
