//! `rateLimit`: a token bucket per source (`sourceCriterion`, the client IP by default)
//! with golang.org/x/time/rate's arithmetic, as Traefik uses it. The bucket holds
//! `burst` tokens and refills at `average / period` per second; a request takes one.
//! When the bucket is empty the request waits for its token if that wait is short
//! (at most `1 / (2 × rate)` s, rate rounded down, or 500 ms below one request a
//! second); otherwise it is answered 429 `Too Many Requests` with `Retry-After` (whole
//! seconds, rounded up) and `X-Retry-In` (Go's duration text) and takes nothing.
//! `average = 0` means no limit. At most 65,536 sources are remembered (the least
//! recently seen is forgotten first), and a source idle longer than Traefik's TTL
//! starts again with a full bucket.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use pingora_proxy::Session;
use serde::Deserialize;
use serde_json::Value;

use super::ip_strategy::{IpStrategy, SourceCriterion, SourceCriterionOptions, SourceKey};
use super::{options, Apply, BuildCx, BuildError, MwState, Reply, Verdict};
use crate::dynamic::TraefikDuration;

/// Sources remembered at most (Traefik's `maxSources`).
pub const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    average: i64,
    #[serde(default)]
    period: Option<TraefikDuration>,
    #[serde(default)]
    burst: i64,
    #[serde(default, rename = "sourceCriterion")]
    source_criterion: Option<SourceCriterionOptions>,
    #[serde(default)]
    redis: Option<Value>,
}

/// The limiter's parameters, shared by every source's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Tokens per second (`None`: no limit).
    pub rate: Option<f64>,
    /// Bucket size.
    pub burst: f64,
    /// Longest wait a request may be held for its token.
    pub max_delay: Duration,
    /// A source unseen this long starts afresh.
    pub ttl: Duration,
}

impl Limit {
    /// Traefik's derivation from `average`, `period` and `burst`.
    pub fn new(average: u64, period: Duration, burst: u64) -> Limit {
        let burst = burst.max(1) as f64;
        let period = if period.is_zero() { Duration::from_secs(1) } else { period };
        if average == 0 {
            return Limit { rate: None, burst, max_delay: Duration::ZERO, ttl: Duration::from_secs(1) };
        }
        let rate = average as f64 / period.as_secs_f64();
        let max_delay = if rate < 1.0 {
            Duration::from_millis(500)
        } else {
            // Traefik divides a second by twice the rate rounded down to an integer.
            Duration::from_secs(1) / (2 * (rate as u32).max(1))
        };
        let ttl_secs = if rate >= 1.0 { 2 } else { 1 + (1.0 / rate) as u64 };
        Limit { rate: Some(rate), burst, max_delay, ttl: Duration::from_secs(ttl_secs) }
    }
}

/// One source's bucket (x/time/rate's `Limiter` state).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    seen: Instant,
}

/// What a bucket decided for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Go on after waiting this long (zero: at once).
    Pass(Duration),
    /// Refused: a token would be there in this long.
    Refuse(Duration),
}

impl Bucket {
    /// A full bucket.
    pub fn full(limit: &Limit, now: Instant) -> Bucket {
        Bucket { tokens: limit.burst, last: now, seen: now }
    }

    /// Take a token at `now` (reserve, and cancel when the wait is too long).
    pub fn take(&mut self, limit: &Limit, now: Instant) -> Decision {
        let Some(rate) = limit.rate else { return Decision::Pass(Duration::ZERO) };
        if now.saturating_duration_since(self.seen) > limit.ttl {
            *self = Bucket::full(limit, now);
        }
        self.seen = now;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + elapsed * rate).min(limit.burst);
        self.last = now.max(self.last);
        let left = tokens - 1.0;
        if left >= 0.0 {
            self.tokens = left;
            return Decision::Pass(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64(-left / rate);
        if wait > limit.max_delay {
            // Not reserved: the bucket keeps what it had (refilled up to now).
            self.tokens = tokens;
            return Decision::Refuse(wait);
        }
        self.tokens = left;
        Decision::Pass(wait)
    }
}

/// A compiled `rateLimit`.
#[derive(Debug)]
pub struct RateLimit {
    limit: Limit,
    source: SourceCriterion,
    // One bucket per source, bounded at MAX_SOURCES: a map keyed by source needs a lock
    // (held for one lookup and a little arithmetic, never across an await).
    buckets: Mutex<LruCache<SourceKey, Bucket>>,
}

/// Build `rateLimit`.
pub fn build(config: &Value, _cx: &BuildCx<'_>) -> Result<Box<dyn Apply>, BuildError> {
    Ok(Box::new(RateLimit::new(config)?))
}

impl RateLimit {
    fn new(config: &Value) -> Result<RateLimit, BuildError> {
        let o: Options = options("rateLimit", config)?;
        if o.redis.is_some() {
            return Err(BuildError::new(
                "rateLimit.redis",
                "a Redis-backed rate limit (shared between instances) is not supported; remove `redis` to limit per instance",
            ));
        }
        let average = u64::try_from(o.average).map_err(|_| {
            BuildError::new("rateLimit.average", format!("{} is negative: write 0 (no limit) or more", o.average))
        })?;
        let period = match &o.period {
            None => Duration::ZERO,
            Some(p) => p.to_std().map_err(|e| BuildError::new("rateLimit.period", e))?,
        };
        let burst = u64::try_from(o.burst).unwrap_or(0);
        let source = SourceCriterion::build(
            o.source_criterion.as_ref(),
            "rateLimit.sourceCriterion",
            SourceCriterion::Ip(IpStrategy::default()),
        )?;
        let cap = NonZeroUsize::new(MAX_SOURCES).unwrap_or(NonZeroUsize::MIN);
        Ok(RateLimit { limit: Limit::new(average, period, burst), source, buckets: Mutex::new(LruCache::new(cap)) })
    }

    fn decide(&self, key: SourceKey, now: Instant) -> Decision {
        if self.limit.rate.is_none() {
            return Decision::Pass(Duration::ZERO);
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.get_or_insert_mut(key, || Bucket::full(&self.limit, now));
        bucket.take(&self.limit, now)
    }
}

/// The 429 Traefik sends when a token is `wait` away.
pub fn too_many(wait: Duration) -> Reply {
    Reply::text(429, "Too Many Requests")
        .with(http::header::RETRY_AFTER, &format!("{}", wait.as_secs_f64().ceil() as u64))
        .with(http::header::HeaderName::from_static("x-retry-in"), &go_duration(wait))
}

/// A duration as Go's `time.Duration.String` writes it (`1.5s`, `833.333333ms`, `1m0s`).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    fn frac(v: u128, unit: u128, digits: usize) -> String {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", frac(ns, 1_000, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", frac(ns, 1_000_000, 6));
    }
    let hours = ns / 3_600_000_000_000;
    let minutes = (ns / 60_000_000_000) % 60;
    let secs = ns % 60_000_000_000;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{}s", frac(secs, 1_000_000_000, 9)));
    out
}

#[async_trait::async_trait]
impl Apply for RateLimit {
    async fn request(
        &self,
        session: &mut Session,
        state: &mut MwState,
        _index: usize,
    ) -> pingora_core::Result<Verdict> {
        if self.limit.rate.is_none() {
            return Ok(Verdict::Next);
        }
        let key = self.source.key(session.req_header(), state);
        match self.decide(key, Instant::now()) {
            Decision::Pass(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(Verdict::Next)
            }
            Decision::Refuse(wait) => {
                tracing::debug!(retry_in = %go_duration(wait), "rateLimit: too many requests");
                Ok(Verdict::Respond(too_many(wait)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn traefik_derives_rate_delay_and_ttl() {
        let l = Limit::new(100, Duration::ZERO, 0);
        assert_eq!((l.rate, l.burst, l.max_delay, l.ttl), (Some(100.0), 1.0, ms(5), Duration::from_secs(2)));
        let slow = Limit::new(1, Duration::from_secs(10), 5);
        assert_eq!(
            (slow.rate, slow.burst, slow.max_delay, slow.ttl),
            (Some(0.1), 5.0, ms(500), Duration::from_secs(11))
        );
        // 1.5/s: the rate is rounded down to 1 for the delay.
        assert_eq!(Limit::new(3, Duration::from_secs(2), 1).max_delay, ms(500));
        assert_eq!(Limit::new(0, Duration::from_secs(1), 1).rate, None);
    }

    /// `d` is `want` within a microsecond (float arithmetic).
    fn near(d: Decision, want: Decision) -> bool {
        let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_micros(1);
        match (d, want) {
            (Decision::Pass(a), Decision::Pass(b)) | (Decision::Refuse(a), Decision::Refuse(b)) => close(a, b),
            _ => false,
        }
    }

    #[test]
    fn the_burst_passes_then_the_bucket_refuses_then_refills() {
        // 2 per second, burst 3: max delay 250 ms.
        let l = Limit::new(2, Duration::from_secs(1), 3);
        let t0 = Instant::now();
        let mut b = Bucket::full(&l, t0);
        for _ in 0..3 {
            assert_eq!(b.take(&l, t0), Decision::Pass(Duration::ZERO));
        }
        // Empty: a token is 500 ms away, more than 250 ms: refused, nothing taken.
        assert!(near(b.take(&l, t0), Decision::Refuse(ms(500))));
        assert!(near(b.take(&l, t0 + ms(100)), Decision::Refuse(ms(400))));
        // 300 ms in: 0.6 token; the next is 200 ms away: the request waits for it.
        assert!(near(b.take(&l, t0 + ms(300)), Decision::Pass(ms(200))));
        // That wait was reserved: the following one is 700 ms away.
        assert!(near(b.take(&l, t0 + ms(300)), Decision::Refuse(ms(700))));
        // A second after the refusals began, one token is back (within float error).
        assert!(matches!(b.take(&l, t0 + ms(1001)), Decision::Pass(d) if d.is_zero()));
    }

    #[test]
    fn refill_never_exceeds_the_burst_and_idle_sources_start_full() {
        let l = Limit::new(10, Duration::from_secs(1), 2);
        let t0 = Instant::now();
        let mut b = Bucket::full(&l, t0);
        assert_eq!(b.take(&l, t0 + Duration::from_secs(1)), Decision::Pass(Duration::ZERO));
        assert_eq!(b.take(&l, t0 + Duration::from_secs(1)), Decision::Pass(Duration::ZERO));
        assert!(matches!(b.take(&l, t0 + Duration::from_secs(1)), Decision::Refuse(_)));
        assert_eq!(b.take(&l, t0 + Duration::from_secs(5)), Decision::Pass(Duration::ZERO));
    }

    #[test]
    fn sources_are_separate_and_bounded() {
        let r = RateLimit::new(&serde_json::json!({"average": 1, "period": "1m"})).unwrap();
        let now = Instant::now();
        let a = SourceKey::Text("a".into());
        let b = SourceKey::Text("b".into());
        assert_eq!(r.decide(a.clone(), now), Decision::Pass(Duration::ZERO));
        assert!(matches!(r.decide(a, now), Decision::Refuse(_)));
        assert_eq!(r.decide(b, now), Decision::Pass(Duration::ZERO));
        assert_eq!(r.buckets.lock().unwrap().cap().get(), MAX_SOURCES);
    }

    #[test]
    fn options_are_checked() {
        let e = |v: Value| RateLimit::new(&v).unwrap_err().field;
        assert_eq!(e(serde_json::json!({"average": 1, "redis": {"endpoints": ["x:6379"]}})), "rateLimit.redis");
        assert_eq!(e(serde_json::json!({"average": -1})), "rateLimit.average");
        assert_eq!(e(serde_json::json!({"average": 1, "period": "-1s"})), "rateLimit.period");
        assert_eq!(e(serde_json::json!({"average": 1, "perod": "1s"})), "rateLimit.perod");
        let r = RateLimit::new(&serde_json::json!({"average": 6, "period": "1m", "burst": 12})).unwrap();
        assert_eq!((r.limit.rate, r.limit.burst), (Some(0.1), 12.0));
        assert_eq!(RateLimit::new(&serde_json::json!({"period": 10})).unwrap().limit.rate, None);
    }

    #[test]
    fn go_duration_text() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_nanos(999)), "999ns");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(go_duration(Duration::from_nanos(833_333_333)), "833.333333ms");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(3661)), "1h1m1s");
        let r = too_many(ms(1200));
        let h = |n: &str| r.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.to_str().unwrap().to_string());
        assert_eq!((r.status, &r.body[..]), (429, &b"Too Many Requests"[..]));
        assert_eq!((h("retry-after"), h("x-retry-in")), (Some("2".into()), Some("1.2s".into())));
    }
}
