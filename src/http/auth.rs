//! Who may do what: API keys, tenant scoping and per-key rate limits, checked
//! on every `/v1` request before its handler runs.
//!
//! A key is configured as `KEY:TENANT:RIGHT` (`STOCKFLOW_API_KEYS`, comma
//! separated, or `api_keys` in the config file), parsed and matched by
//! [`crate::api_keys`].
//!
//! A tenant key only ever names its own tenant: the request's `tenant`
//! parameter is checked (another tenant is 403) and, when absent, set to the
//! key's tenant, so every handler reads and writes that tenant and no other.
//! An admin key (`*` as its tenant) names any tenant.

use super::error::ApiError;
use crate::api_keys::{ApiKeys, Grant, Right};
use crate::metrics::Metrics;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Per-key request limits (governor's GCRA, which admits exactly what a
/// token bucket does): `rate` requests a second, bursts of up to `rate`.
pub struct RateLimit<C: Clock = DefaultClock> {
    rate: NonZeroU32,
    limiter: RateLimiter<String, HashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    checks: AtomicU64,
}

/// Every this many checks, the state of keys whose bucket is full again is
/// dropped: only configured keys reach the limiter, and this bounds it too.
const FORGET_IDLE_EVERY: u64 = 4096;

impl RateLimit {
    /// `rate` requests a second per key.
    pub fn new(rate: NonZeroU32) -> RateLimit {
        RateLimit::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> RateLimit<C> {
    fn with_clock(rate: NonZeroU32, clock: C) -> RateLimit<C> {
        RateLimit {
            rate,
            limiter: RateLimiter::hashmap_with_clock(Quota::per_second(rate), clock),
            checks: AtomicU64::new(0),
        }
    }

    /// Admits one request of `key`; `Err(wait)` when over the limit, with
    /// how long until the next would be admitted.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_IDLE_EVERY == FORGET_IDLE_EVERY - 1
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }
}

/// The auth layer of a server with keys.
pub struct Auth {
    /// The keys.
    pub keys: Arc<ApiKeys>,
    /// Per-key request rate; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
}

/// The right a request needs: webhooks are admin, other changes write, the rest read.
fn needed(method: &Method, route: &str) -> Right {
    if route.starts_with("/v1/webhooks") {
        Right::Admin
    } else if matches!(*method, Method::GET | Method::HEAD) {
        Right::Read
    } else {
        Right::Write
    }
}

/// Middleware of the `/v1` routes, installed only when keys are configured:
/// authenticates, rate-limits, checks the right and the tenant, and pins a
/// tenant key's requests to its tenant.
pub(super) async fn authorize(
    State((auth, metrics)): State<(Arc<Auth>, Metrics)>,
    mut request: Request,
    next: Next,
) -> Response {
    let grant = match check(&auth, &mut request) {
        Ok(grant) => grant,
        Err((reason, error)) => {
            metrics.auth_denied.with_label_values(&[reason]).inc();
            tracing::info!(reason, detail = %error.detail(), "request refused");
            return error.into_response();
        }
    };
    request.extensions_mut().insert(grant);
    next.run(request).await
}

/// The checks, in order; a refusal says which (the metric's `reason`).
fn check(auth: &Auth, request: &mut Request) -> Result<Grant, (&'static str, ApiError)> {
    let presented = match request.headers().get(header::AUTHORIZATION) {
        None => {
            return Err((
                "missing",
                ApiError::unauthorized(
                    "this server requires an API key: send `Authorization: Bearer <key>`",
                ),
            ))
        }
        // The scheme is case-insensitive (RFC 7235); the key is not.
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty()),
    };
    let Some(presented) = presented else {
        return Err((
            "malformed",
            ApiError::unauthorized("header Authorization: expected `Bearer <key>`"),
        ));
    };
    let Some(grant) = auth.keys.find(presented).cloned() else {
        return Err((
            "unknown",
            ApiError::unauthorized("this API key is not one this server knows"),
        ));
    };
    if let Some(limit) = &auth.rate_limit {
        if let Err(wait) = limit.take(&grant.key_id) {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err((
                "rate_limited",
                ApiError::too_many_requests(
                    format!("API key {} is over its limit of {} requests a second; retry in {seconds} s", grant.key_id, limit.rate),
                    seconds,
                ),
            ));
        }
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let needs = needed(request.method(), route);
    if grant.right < needs {
        return Err((
            "right",
            ApiError::forbidden(format!(
                "this API key has the `{}` right; {} {route} needs `{}`",
                grant.right.name(),
                request.method(),
                needs.name()
            )),
        ));
    }
    if let Some(own) = &grant.tenant {
        let query = request.uri().query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
        let named: Vec<&str> = pairs
            .iter()
            .filter(|(name, _)| name == "tenant")
            .map(|(_, value)| value.as_str())
            .collect();
        for tenant in &named {
            grant
                .allows_tenant(tenant)
                .map_err(|reason| ("tenant", ApiError::forbidden(reason)))?;
        }
        if named.is_empty() {
            // The handlers default to `default`: the key's own tenant instead.
            let extra = serde_urlencoded::to_string([("tenant", own.as_str())]).expect("encodable");
            let query = if query.is_empty() {
                extra
            } else {
                format!("{query}&{extra}")
            };
            let path_and_query = format!("{}?{query}", request.uri().path());
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = Some(path_and_query.parse().expect("a valid path and query"));
            *request.uri_mut() = axum::http::Uri::from_parts(parts).expect("a valid URI");
        }
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate_and_say_how_long_to_wait() {
        let clock = governor::clock::FakeRelativeClock::default();
        let limit = RateLimit::with_clock(NonZeroU32::new(2).unwrap(), clock.clone());
        assert!(limit.take("a").is_ok());
        assert!(limit.take("a").is_ok());
        let wait = limit.take("a").unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another key has a bucket of its own.
        assert!(limit.take("b").is_ok());
        clock.advance(Duration::from_millis(500));
        assert!(limit.take("a").is_ok());
        assert!(limit.take("a").is_err());
        // Refills to the burst, no further.
        clock.advance(Duration::from_secs(60));
        assert!(limit.take("a").is_ok() && limit.take("a").is_ok() && limit.take("a").is_err());
    }

    #[test]
    fn the_state_of_idle_keys_is_dropped() {
        let clock = governor::clock::FakeRelativeClock::default();
        let limit = RateLimit::with_clock(NonZeroU32::new(1000).unwrap(), clock.clone());
        for key in 0..100 {
            let _ = limit.take(&key.to_string());
        }
        assert_eq!(limit.limiter.len(), 100);
        clock.advance(Duration::from_secs(1));
        for _ in 100..FORGET_IDLE_EVERY {
            let _ = limit.take("busy");
        }
        assert!(limit.limiter.len() <= 1, "{}", limit.limiter.len());
    }

    #[test]
    fn rights_needed_by_route() {
        assert_eq!(needed(&Method::GET, "/v1/stock"), Right::Read);
        assert_eq!(
            needed(&Method::POST, "/v1/stock/{sku}/{command}"),
            Right::Write
        );
        assert_eq!(needed(&Method::DELETE, "/v1/items/{sku}"), Right::Write);
        assert_eq!(needed(&Method::GET, "/v1/webhooks"), Right::Admin);
        assert_eq!(
            needed(&Method::GET, "/v1/webhooks/{id}/deliveries"),
            Right::Admin
        );
    }
}
