//! Sends our `EndpointSpec` endpoints to Cloudflare: one shared token bucket, `Retry-After`
//! on 429, exponential backoff with jitter on 5xx and timeouts, clear auth errors.
//!
//! The request is built exactly as the `cloudflare` crate's async client builds it (the
//! endpoint's URL, method, query and JSON body; the crate's `Credentials` headers; its
//! endpoint traits), but sent here: the crate's client drops the response headers and so
//! the 429's `Retry-After`, and its error type holds codes as `u16` while Cloudflare's DNS
//! codes (81058, …) are larger.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudflare::framework::auth::Credentials;
use cloudflare::framework::endpoint::spec::EndpointSpec;
use cloudflare::framework::endpoint::RequestBody;
use cloudflare::framework::response::ApiResult;
use cloudflare::framework::Environment;
use tracing::{debug, warn};

use super::api::{Envelope, Failure as ApiErrors};
use super::bucket::TokenBucket;
use super::metrics::DnsMetrics;
use super::DnsError;

/// Cloudflare error codes that mean "this token is not valid here".
const AUTH_CODES: [u32; 6] = [9109, 10000, 6003, 6111, 9103, 9106];

/// How often and how patiently one call is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// First backoff; doubles each attempt.
    pub base: Duration,
    /// Largest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, base: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `n + 1` (n ≥ 1), with jitter in [half, full].
    fn backoff(&self, n: u32) -> Duration {
        let full = self.base.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(self.max);
        let half = full / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(if jitter_ms == 0 { 0 } else { rand::random_range(0..=jitter_ms) })
    }
}

/// The Cloudflare API as this module uses it.
pub(crate) struct Api {
    http: reqwest::Client,
    env: Environment,
    creds: Credentials,
    bucket: Arc<TokenBucket>,
    retry: RetryPolicy,
    metrics: DnsMetrics,
    zone: String,
}

enum Failure {
    Retry { result: &'static str, detail: String, wait: Option<Duration> },
    Fatal(DnsError),
}

impl Api {
    pub(crate) fn new(
        api_url: &str,
        token: &str,
        timeout: Duration,
        bucket: Arc<TokenBucket>,
        retry: RetryPolicy,
        metrics: DnsMetrics,
        zone: String,
    ) -> Result<Api, DnsError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("constellation/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DnsError::Client { detail: e.to_string() })?;
        Ok(Api {
            http,
            env: Environment::Custom(api_url.to_string()),
            creds: Credentials::UserAuthToken { token: token.to_string() },
            bucket,
            retry,
            metrics,
            zone,
        })
    }

    /// Sends `ep` with rate limiting and retries; `name` labels metrics and errors.
    pub(crate) async fn call<E>(&self, name: &'static str, ep: &E) -> Result<Envelope<E::JsonResponse>, DnsError>
    where
        E: EndpointSpec,
        E::JsonResponse: ApiResult,
    {
        self.call_with(name, ep, self.retry.attempts).await
    }

    /// Sends a write once (rate limited, no retry): a retried write could land after the
    /// writer lost its lease, so a failed write fails the cycle, and the next cycle lists,
    /// plans and checks the fence again.
    pub(crate) async fn call_write<E>(&self, name: &'static str, ep: &E) -> Result<Envelope<E::JsonResponse>, DnsError>
    where
        E: EndpointSpec,
        E::JsonResponse: ApiResult,
    {
        self.call_with(name, ep, 1).await
    }

    async fn call_with<E>(
        &self,
        name: &'static str,
        ep: &E,
        attempts: u32,
    ) -> Result<Envelope<E::JsonResponse>, DnsError>
    where
        E: EndpointSpec,
        E::JsonResponse: ApiResult,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.bucket.acquire().await {
                self.metrics.rate_limit_waits.inc();
            }
            let failure = match self.once(name, ep).await {
                Ok(ok) => {
                    self.metrics.api_requests.with_label_values(&[name, "ok"]).inc();
                    return Ok(ok);
                }
                Err(f) => f,
            };
            match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::Retry { result, detail, wait } => {
                    self.metrics.api_requests.with_label_values(&[name, result]).inc();
                    if let Some(retry_after) = wait {
                        // Every caller waits out a 429, not only this one.
                        self.metrics.rate_limit_waits.inc();
                        self.bucket.pause_until(Instant::now() + retry_after);
                    }
                    if attempt >= attempts {
                        return Err(DnsError::Exhausted { endpoint: name, attempts: attempt, last: detail });
                    }
                    let backoff = self.retry.backoff(attempt);
                    let wait = wait.map(|w| w.max(backoff)).unwrap_or(backoff);
                    warn!(endpoint = name, attempt, wait_ms = wait.as_millis() as u64, error = %detail, "Cloudflare call failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn once<E>(&self, name: &'static str, ep: &E) -> Result<Envelope<E::JsonResponse>, Failure>
    where
        E: EndpointSpec,
        E::JsonResponse: ApiResult,
    {
        let mut req = self.http.request(ep.method(), ep.url(&self.env));
        if let Some(body) = ep.body() {
            req = match body {
                RequestBody::Json(json) => req.header(reqwest::header::CONTENT_TYPE, "application/json").body(json),
                RequestBody::Raw(bytes) => req.body(bytes),
                RequestBody::MultiPart(_) => {
                    return Err(Failure::Fatal(DnsError::Client { detail: "multipart bodies are not used".into() }))
                }
            };
        }
        for (k, v) in self.creds.headers() {
            req = req.header(k, v);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(transport(e)),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(transport(e)),
        };
        debug!(endpoint = name, status = status.as_u16(), "Cloudflare call");
        if status.is_success() {
            return serde_json::from_slice::<Envelope<E::JsonResponse>>(&bytes).map_err(|e| {
                self.metrics.api_requests.with_label_values(&[name, "decode_error"]).inc();
                Failure::Fatal(DnsError::Decode { endpoint: name, detail: e.to_string() })
            });
        }
        let errors: ApiErrors = serde_json::from_slice(&bytes).unwrap_or_default();
        let detail = describe(status.as_u16(), &errors);
        if status.as_u16() == 429 {
            let wait = retry_after.unwrap_or(self.retry.base).max(Duration::from_millis(1));
            return Err(Failure::Retry { result: "rate_limited", detail, wait: Some(wait) });
        }
        if status.is_server_error() {
            return Err(Failure::Retry { result: "server_error", detail, wait: None });
        }
        let auth_code = errors.errors.iter().find(|e| AUTH_CODES.contains(&e.code));
        if status.as_u16() == 401 || status.as_u16() == 403 || auth_code.is_some() {
            self.metrics.api_requests.with_label_values(&[name, "auth_error"]).inc();
            let first = auth_code.or(errors.errors.first());
            return Err(Failure::Fatal(DnsError::Auth {
                status: status.as_u16(),
                code: first.map(|e| e.code),
                message: first.map(|e| e.message.clone()).unwrap_or_default(),
                zone: self.zone.clone(),
            }));
        }
        self.metrics.api_requests.with_label_values(&[name, "client_error"]).inc();
        Err(Failure::Fatal(DnsError::Api { endpoint: name, status: status.as_u16(), detail }))
    }
}

fn transport(e: reqwest::Error) -> Failure {
    let result = if e.is_timeout() { "timeout" } else { "transport_error" };
    // reqwest's Display names the URL but never the headers, so the token stays out.
    Failure::Retry { result, detail: e.to_string(), wait: None }
}

fn describe(status: u16, errors: &ApiErrors) -> String {
    let mut s = format!("HTTP {status}");
    for e in &errors.errors {
        let _ = write!(s, "; code {}: {}", e.code, e.message);
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy { attempts: 5, base: Duration::from_millis(100), max: Duration::from_millis(350) };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b2 = p.backoff(2);
            assert!(b2 >= Duration::from_millis(100) && b2 <= Duration::from_millis(200));
            let b9 = p.backoff(9);
            assert!(b9 >= Duration::from_millis(175) && b9 <= Duration::from_millis(350));
        }
    }
}
