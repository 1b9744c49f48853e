//! Capability access (the security model's fourth layer): every request is authorised by
//! policy before its handler runs.
//!
//! ```text
//!  request ─► mTLS (the caller's certificate, verified at the handshake)
//!          ─► routing ─► AccessControl (route_layer): Caller from the certificate,
//!                        the route's capability, method, path, matched route
//!                        ─► the same request as the last one allowed on this
//!                           connection? allowed again (no input built, no lookup)
//!                        ─► can_access_capability (cached per input; the cache, and
//!                           what connections remember, are dropped when the policy
//!                           reloads or the CRL or roots change)
//!                        ─► deny: 403 {"error": {"code": "access_denied", ...}} + ACCESS_DENIED
//!                        ─► allow with a rate limit: token bucket per (caller, capability),
//!                           over it 429 + Retry-After
//!                        ─► the handler
//! ```
//!
//! A worker declares the capabilities it serves with
//! [`WorkerApplication::capability`](crate::WorkerApplication::capability); routes given
//! to [`WorkerApplication::routes`](crate::WorkerApplication::routes) name none and get
//! the policy's rule for undeclared routes (by default: any caller of the trust domain).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use crank_policy::PolicyGuard;
use crank_security_core::{
    AccessDecision, AccessInput, AccessRequest, AccessTarget, CertificateEvent, CorrelationId, EventKind, EventSink,
    RateLimit,
};
use futures_util::future::Either;
use tokio::sync::watch;

use crate::api::{ErrorBody, ErrorDetail};
use crate::metrics::Metrics;
use crate::tls::{Allowed, Connection};

/// Decisions kept per process; past it the cache starts over.
const CACHE_ENTRIES: usize = 4096;
/// Rate-limit buckets kept; past it full (idle) buckets are dropped.
const MAX_BUCKETS: usize = 65_536;

/// Authorises requests with `can_access_capability`. One per server; shared by every
/// route group through [`AccessControl::protect`].
pub struct AccessControl {
    guard: PolicyGuard,
    /// The callee: this worker's id (or `ca`, `platform`) and trust domain.
    service: String,
    trust_domain: String,
    environment: String,
    events: Arc<dyn EventSink>,
    metrics: Option<Arc<Metrics>>,
    trust_changes: Option<watch::Receiver<u64>>,
    /// Whether decisions are cached: not for the built-in engine, which decides faster
    /// than a cache lookup.
    cached: bool,
    /// Rate limits by capability from configuration, for allowed calls whose decision
    /// sets none.
    limits: HashMap<String, RateLimit>,
    cache: Mutex<Cache>,
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl")
            .field("service", &self.service)
            .field("trust_domain", &self.trust_domain)
            .field("engine", &self.guard.engine_name())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cache {
    /// (policy generation, trust generation) the entries were decided under.
    stamp: (u64, u64),
    entries: HashMap<AccessInput, AccessDecision>,
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The outcome for one request.
enum Outcome {
    Allow,
    Deny(String),
    Limited(Duration),
}

impl AccessControl {
    /// Access control for `service` of `trust_domain` in `environment`, deciding with
    /// `guard` and reporting denials to `events`.
    pub fn new(
        guard: PolicyGuard,
        service: impl Into<String>,
        trust_domain: impl Into<String>,
        environment: impl Into<String>,
        events: Arc<dyn EventSink>,
    ) -> Self {
        Self {
            cached: guard.engine_name() != "builtin",
            guard,
            service: service.into(),
            trust_domain: trust_domain.into(),
            environment: environment.into(),
            events,
            metrics: None,
            trust_changes: None,
            limits: HashMap::new(),
            cache: Mutex::default(),
            buckets: Mutex::default(),
        }
    }

    /// Counts decisions into `metrics` (`crank_access_decisions_total`).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Rate limits by capability (`CRANK_RATE_LIMITS`), applied to allowed calls whose
    /// decision sets none; a limit the policy sets wins.
    #[must_use]
    pub fn with_rate_limits(mut self, limits: HashMap<String, RateLimit>) -> Self {
        self.limits = limits;
        self
    }

    /// Drops cached decisions whenever `changes` moves (the trust store's CRL and root
    /// changes).
    #[must_use]
    pub fn with_trust_changes(mut self, changes: watch::Receiver<u64>) -> Self {
        self.trust_changes = Some(changes);
        self
    }

    /// `routes` with every request checked for `capability` (`None`: a route group
    /// that names none) after routing, before the handler.
    pub fn protect(self: &Arc<Self>, capability: Option<&str>, routes: Router) -> Router {
        // With its handlers made services first, the layer wraps them once, not per request.
        routes.with_state(()).route_layer(self.check_layer(capability))
    }

    /// [`Self::protect`] inside `outer`, layers every route of the group has anyway: axum
    /// boxes each route once per layer call, so the check shares that one level with
    /// them instead of adding its own. Unlike [`Self::protect`], the group's fallbacks
    /// (a path it does not serve, a method a path does not allow, a fallback handler set
    /// on it) are behind `outer` and the check too.
    pub(crate) fn protect_within<L>(self: &Arc<Self>, capability: Option<&str>, routes: Router, outer: L) -> Router
    where
        L: tower::Layer<Checked<axum::routing::Route>> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<Request>>::Future: Send + 'static,
    {
        routes.with_state(()).layer(tower::layer::util::Stack::new(self.check_layer(capability), outer))
    }

    fn check_layer(self: &Arc<Self>, capability: Option<&str>) -> CheckLayer {
        let allowed = self.metrics.as_ref().map(|m| m.access_counter(capability.unwrap_or("none"), "allow"));
        CheckLayer(Arc::new(Check { access: self.clone(), capability: capability.map(Arc::<str>::from), allowed }))
    }

    /// (policy generation, trust generation): decisions hold while it stays the same.
    fn stamp(&self) -> (u64, u64) {
        (self.guard.generation(), self.trust_changes.as_ref().map_or(0, |c| *c.borrow()))
    }

    /// The limit for an allowed call: the decision's, else the configured one.
    fn limit_for(&self, decided: Option<RateLimit>, label: &str) -> Option<RateLimit> {
        decided.or_else(|| self.limits.get(label).copied())
    }

    /// The decision for `input`: from the cache when the same input was decided under
    /// the same policy and trust, else from the policy (engine failures deny).
    pub fn decide(&self, input: &AccessInput) -> Result<AccessDecision, crank_policy::Denied> {
        if !self.cached {
            return self.guard.may_access(input);
        }
        let stamp = self.stamp();
        {
            let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.stamp != stamp {
                cache.entries.clear();
                cache.stamp = stamp;
            }
            if let Some(d) = cache.entries.get(input) {
                return if d.allow { Ok(d.clone()) } else { Err(denied(d)) };
            }
        }
        let decided = self.guard.may_access(input);
        let keep = match &decided {
            Ok(d) => Some(d.clone()),
            // A decided denial is kept; an engine failure is asked again next time.
            Err(e) if !e.engine_failure => Some(AccessDecision::deny(e.reason.clone())),
            Err(_) => None,
        };
        if let Some(d) = keep {
            let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.stamp == stamp {
                if cache.entries.len() >= CACHE_ENTRIES {
                    cache.entries.clear();
                }
                cache.entries.insert(input.clone(), d);
            }
        }
        decided
    }

    /// Takes one token from the bucket of (`caller`, `capability`) under `limit`;
    /// `Err(wait)` when it is empty.
    fn take(&self, caller: &str, capability: &str, limit: RateLimit) -> Result<(), Duration> {
        let rate = limit.requests_per_second.max(f64::MIN_POSITIVE);
        let burst = f64::from(limit.burst.max(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket =
            buckets.entry((caller.to_owned(), capability.to_owned())).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    fn count(&self, capability: &str, decision: &'static str) {
        if let Some(m) = &self.metrics {
            m.access_decision(capability, decision);
        }
    }
}

fn denied(d: &AccessDecision) -> crank_policy::Denied {
    crank_policy::Denied { reason: d.reason.clone().unwrap_or_else(|| "no reason given".into()), engine_failure: false }
}

/// The check as a tower layer on a route group: decide, then answer the refusal or call
/// the handler (no boxing or cloning per request, unlike a `from_fn` middleware).
struct Check {
    access: Arc<AccessControl>,
    capability: Option<Arc<str>>,
    /// `crank_access_decisions_total{capability, decision="allow"}`, looked up once.
    allowed: Option<prometheus_client::metrics::counter::Counter>,
}

/// [`Check`] as a layer; one `Arc`, since axum clones the layered service per request.
#[derive(Clone)]
pub(crate) struct CheckLayer(Arc<Check>);

impl<S> tower::Layer<S> for CheckLayer {
    type Service = Checked<S>;

    fn layer(&self, inner: S) -> Checked<S> {
        Checked { check: self.0.clone(), inner }
    }
}

/// A route group behind [`Check`].
#[derive(Clone)]
pub(crate) struct Checked<S> {
    check: Arc<Check>,
    inner: S,
}

impl<S> tower::Service<Request> for Checked<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Either<std::future::Ready<Result<Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match refusal_of(&self.check, &req) {
            Some(refused) => Either::Left(std::future::ready(Ok(refused))),
            None => Either::Right(self.inner.call(req)),
        }
    }
}

/// `None` when `req` may reach its handler; else the refusal (401, 403, 429).
fn refusal_of(check: &Check, req: &Request) -> Option<Response> {
    let (access, capability) = (&check.access, check.capability.as_ref());
    let label = capability.map_or("none", |c| &**c);
    // Only refusals need it: a new one costs the random generator, so not per request.
    let cid = || {
        req.headers()
            .get(CorrelationId::HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(CorrelationId::new, CorrelationId::from_peer)
    };
    let Some(connection) = req.extensions().get::<Arc<Connection>>().filter(|c| c.certificate.is_some()) else {
        access.count(label, "deny");
        return Some(refusal(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "this endpoint requires a client certificate issued by this CA".into(),
            capability.map(|c| &**c),
        ));
    };
    let Some(caller) = connection.caller.as_ref() else {
        access.count(label, "deny");
        return Some(refusal(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the client certificate carries no SPIFFE ID of this platform".into(),
            capability.map(|c| &**c),
        ));
    };
    let control = Arc::as_ptr(access) as usize;
    let stamp = access.stamp();
    // The same request as the last one allowed on this connection: allowed again without
    // building the policy's input.
    let repeated = connection
        .allowed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .filter(|a| a.matches(control, stamp, capability, req))
        .map(|a| a.rate_limit);
    let input = || AccessInput {
        target: AccessTarget {
            worker_id: access.service.clone(),
            trust_domain: access.trust_domain.clone(),
            capability: capability.map(|c| c.to_string()),
        },
        request: AccessRequest {
            method: req.method().as_str().to_owned(),
            path: req.uri().path().to_owned(),
            route: req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()),
        },
        environment: access.environment.clone(),
        caller: caller.clone(),
    };
    let limited = |decided: Option<RateLimit>| match access.limit_for(decided, label) {
        Some(limit) => match access.take(&caller.spiffe_id, label, limit) {
            Ok(()) => Outcome::Allow,
            Err(wait) => Outcome::Limited(wait),
        },
        None => Outcome::Allow,
    };
    // The input the policy was asked with, kept for a refusal's event.
    let mut asked = None;
    let outcome = match repeated {
        Some(rate_limit) => limited(rate_limit),
        None => {
            let built = asked.insert(input());
            match access.decide(built) {
                Ok(d) => {
                    *connection.allowed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Allowed {
                        control,
                        stamp,
                        capability: capability.cloned(),
                        method: req.method().clone(),
                        path: built.request.path.clone(),
                        route: built.request.route.clone(),
                        rate_limit: d.rate_limit,
                    });
                    limited(d.rate_limit)
                }
                Err(e) => {
                    access.count(label, if e.engine_failure { "error" } else { "deny" });
                    Outcome::Deny(e.reason)
                }
            }
        }
    };
    match outcome {
        Outcome::Allow => {
            if let Some(allowed) = &check.allowed {
                allowed.inc();
            }
            None
        }
        Outcome::Deny(reason) => {
            emit(access, &cid(), &asked.unwrap_or_else(input), "denied", &reason);
            Some(refusal(StatusCode::FORBIDDEN, "access_denied", reason, capability.map(|c| &**c)))
        }
        Outcome::Limited(wait) => {
            access.count(label, "limited");
            let reason = format!("{} is over its rate limit for capability {label}", caller.spiffe_id);
            emit(access, &cid(), &asked.unwrap_or_else(input), "rate_limited", &reason);
            let mut r = refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limited", reason, capability.map(|c| &**c));
            r.headers_mut().insert(header::RETRY_AFTER, retry_after(wait));
            Some(r)
        }
    }
}

/// Parses rate limits by capability: `CAPABILITY=RATE/s[:BURST]`, comma-separated (e.g.
/// `email.classify=10/s:20,metrics.read=1/s`; the burst defaults to 1).
pub fn parse_rate_limits(value: &str) -> Result<HashMap<String, RateLimit>, String> {
    let mut limits = HashMap::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad =
            |why: &str| format!("{item:?}: {why}; expected CAPABILITY=RATE/s[:BURST], e.g. email.classify=10/s:20");
        let (capability, limit) = item.split_once('=').ok_or_else(|| bad("no '='"))?;
        crank_security_core::validate_capability(capability.trim()).map_err(|e| bad(&e.to_string()))?;
        let (rate, burst) = limit.split_once(':').map_or((limit, None), |(r, b)| (r, Some(b)));
        let rate: f64 = rate
            .trim()
            .strip_suffix("/s")
            .and_then(|r| r.trim().parse().ok())
            .filter(|r: &f64| r.is_finite() && *r > 0.0)
            .ok_or_else(|| bad("the rate must be a positive number of requests per second, such as 10/s"))?;
        let burst = match burst {
            Some(b) => b
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| bad("the burst must be a whole number above 0"))?,
            None => 1,
        };
        limits.insert(capability.trim().to_owned(), RateLimit { requests_per_second: rate, burst });
    }
    Ok(limits)
}

/// `Retry-After` in whole seconds, at least 1.
pub(crate) fn retry_after(wait: Duration) -> HeaderValue {
    HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64)
}

fn emit(access: &AccessControl, cid: &CorrelationId, input: &AccessInput, what: &str, reason: &str) {
    let ev = CertificateEvent::new(EventKind::AccessDenied, cid)
        .worker(input.caller.worker_id.as_str())
        .error(what, reason)
        .detail("caller", input.caller.spiffe_id.clone())
        .detail("serial", input.caller.serial.clone())
        .detail("capability", input.target.capability.clone())
        .detail("method", input.request.method.clone())
        .detail("path", input.request.path.clone())
        .detail("service", access.service.clone());
    access.events.emit(&ev);
}

fn refusal(status: StatusCode, code: &str, message: String, capability: Option<&str>) -> Response {
    let body =
        ErrorBody { error: ErrorDetail { code: code.to_owned(), message, capability: capability.map(str::to_owned) } };
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use crank_security_core::{
        Caller, DefaultPolicy, IssuanceDecision, IssuanceInput, NoEvents, PolicyEngine, PolicyError, RenewalDecision,
        RenewalInput, default_access,
    };

    use super::*;

    /// The default policy, counting the access decisions it is asked for, with a
    /// generation the test moves (a reload).
    #[derive(Debug, Default)]
    struct Counting {
        asked: AtomicU64,
        generation: AtomicU64,
    }

    impl PolicyEngine for Counting {
        fn can_issue_certificate(&self, i: &IssuanceInput) -> Result<IssuanceDecision, PolicyError> {
            DefaultPolicy::default().can_issue_certificate(i)
        }
        fn certificate_validity_period(&self, w: &str, e: &str) -> Result<Duration, PolicyError> {
            DefaultPolicy::default().certificate_validity_period(w, e)
        }
        fn should_renew_certificate(&self, i: &RenewalInput) -> Result<RenewalDecision, PolicyError> {
            DefaultPolicy::default().should_renew_certificate(i)
        }
        fn revoke_certificate(&self, w: &str, r: &str) -> Result<bool, PolicyError> {
            DefaultPolicy::default().revoke_certificate(w, r)
        }
        fn can_access_capability(&self, input: &AccessInput) -> Result<AccessDecision, PolicyError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Ok(default_access(input))
        }
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
    }

    fn input(capabilities: &[&str]) -> AccessInput {
        AccessInput {
            caller: Caller {
                spiffe_id: "spiffe://crank.local/billing".into(),
                worker_id: "billing".into(),
                administrator: false,
                trust_domain: "crank.local".into(),
                serial: "01".into(),
                not_after: 2_000_000_000,
                capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            },
            target: AccessTarget {
                worker_id: "email".into(),
                trust_domain: "crank.local".into(),
                capability: Some("email.classify".into()),
            },
            request: AccessRequest { method: "POST".into(), path: "/classify".into(), route: Some("/classify".into()) },
            environment: "test".into(),
        }
    }

    #[test]
    fn decisions_are_cached_until_the_policy_reloads_or_the_trust_changes() {
        let engine = Arc::new(Counting::default());
        let (trust, changes) = watch::channel(0u64);
        let access =
            AccessControl::new(PolicyGuard::new(engine.clone()), "email", "crank.local", "test", Arc::new(NoEvents))
                .with_trust_changes(changes);
        let holder = input(&["email.classify"]);
        let stranger = input(&[]);
        let asked = || engine.asked.load(Ordering::SeqCst);

        assert!(access.decide(&holder).is_ok());
        assert!(access.decide(&holder).is_ok());
        assert_eq!(asked(), 1, "the same input is answered from the cache");
        // A denial is kept too, and a different input is a different entry.
        let reason = access.decide(&stranger).unwrap_err().reason;
        assert!(reason.contains("does not hold capability email.classify"), "{reason}");
        assert!(access.decide(&stranger).is_err());
        assert_eq!(asked(), 2);

        // A new CRL or root: decided again.
        trust.send_modify(|n| *n += 1);
        assert!(access.decide(&holder).is_ok());
        assert_eq!(asked(), 3);
        assert!(access.decide(&holder).is_ok());
        assert_eq!(asked(), 3);

        // A reloaded policy: decided again.
        engine.generation.fetch_add(1, Ordering::SeqCst);
        assert!(access.decide(&holder).is_ok());
        assert!(access.decide(&stranger).is_err());
        assert_eq!(asked(), 5);
    }

    #[test]
    fn rate_limits_parse_and_bad_ones_are_named() {
        let l = parse_rate_limits("email.classify=10/s:20, metrics.read=0.5/s").unwrap();
        assert_eq!(l["email.classify"], RateLimit { requests_per_second: 10.0, burst: 20 });
        assert_eq!(l["metrics.read"], RateLimit { requests_per_second: 0.5, burst: 1 });
        assert!(parse_rate_limits("").unwrap().is_empty());
        for bad in ["email.classify", "email.classify=10", "Email=1/s", "x=0/s", "x=1/s:0", "x=1/s:many"] {
            let e = parse_rate_limits(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("CAPABILITY=RATE/s"), "{bad}: {e}");
        }
    }
}
