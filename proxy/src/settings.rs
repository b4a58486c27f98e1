//! Proxy-wide settings: timeouts, retry bounds, breaker and panic thresholds, and the
//! Pingora runtime knobs. Embedded in the agent's `[proxy]` config section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;

/// Default TCP connect timeout per attempt (ms).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Default time to wait for response headers, and between body reads (ms).
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
/// Default time allowed for each write to an upstream (ms).
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Default lifetime of an idle pooled upstream connection (ms).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default deadline for all attempts of one request together (ms).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Default silence allowed on an upgraded connection (ms): HAProxy's usual `timeout tunnel`.
pub const DEFAULT_TUNNEL_TIMEOUT_MS: u64 = 3_600_000;
/// Default cap on attempts per request (first try included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default retry budget: retries in flight as a share of requests in flight (%).
pub const DEFAULT_RETRY_BUDGET_PERCENT: u8 = 20;
/// Default number of concurrent retries always allowed, whatever the budget says.
pub const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 10;
/// Default share of a service's upstreams that may be ejected at once (%).
pub const DEFAULT_MAX_EJECTION_PERCENT: u8 = 50;
/// Default panic threshold: below this share of available upstreams, route to all (%).
pub const DEFAULT_PANIC_THRESHOLD_PERCENT: u8 = 50;
/// Default `Retry-After` on proxy-made 503s (s).
pub const DEFAULT_RETRY_AFTER_SECS: u32 = 5;
/// Default health check rise threshold (consecutive passes to become healthy).
pub const DEFAULT_HEALTH_RISE: u32 = 2;
/// Default health check fall threshold (consecutive failures to become unhealthy).
pub const DEFAULT_HEALTH_FALL: u32 = 3;
/// Default worker threads of the proxy service.
pub const DEFAULT_THREADS: usize = 2;
/// Default seconds between a shutdown signal and the listeners closing.
pub const DEFAULT_GRACE_PERIOD_SECS: u64 = 5;
/// Default seconds allowed for in-flight requests after the listeners closed.
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// Default drain grace of a removed TCP server's connections (ms).
pub const DEFAULT_TCP_DRAIN_GRACE_MS: u64 = 30_000;
/// Default UDP session idle timeout (ms), Traefik's.
pub const DEFAULT_UDP_SESSION_TIMEOUT_MS: u64 = 3_000;

/// Settings of the SmartFailoverProxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// TCP connect timeout per attempt, in milliseconds. Default 2000.
    pub connect_timeout_ms: u64,
    /// Timeout for response headers and for each body read, in milliseconds. Default 30000.
    pub read_timeout_ms: u64,
    /// Timeout for each write to the upstream, in milliseconds. Default 30000.
    pub write_timeout_ms: u64,
    /// Idle pooled upstream connections are closed after this many milliseconds. Default 60000.
    pub idle_timeout_ms: u64,
    /// One deadline for all attempts of a request, in milliseconds. Default 60000.
    pub request_timeout_ms: u64,
    /// Once a connection is upgraded (WebSocket, a 101), it is closed after this many
    /// milliseconds without a byte from one side (HAProxy's `timeout tunnel`); the
    /// request deadline and read timeouts no longer apply. The upstream's 101 itself is
    /// waited for this long too. Default 3600000 (1 h).
    pub tunnel_timeout_ms: u64,
    /// Maximum attempts per request, first try included. A router's `retry`
    /// middleware overrides it. Default 3.
    pub max_attempts: u32,
    /// Retries in flight may not exceed this share of requests in flight, in percent.
    /// Default 20.
    pub retry_budget_percent: u8,
    /// Concurrent retries always allowed regardless of the budget. Default 10.
    pub min_retry_concurrency: u32,
    /// Largest share of one service's upstreams the breakers may eject at once,
    /// in percent (at least one is always allowed). Default 50.
    pub max_ejection_percent: u8,
    /// When fewer than this share of a service's upstreams are available, ignore
    /// breakers and health and spread over all of them (panic mode), in percent. Default 50.
    pub panic_threshold_percent: u8,
    /// `Retry-After` seconds on a 503 made because no upstream is available. Default 5.
    pub retry_after_secs: u32,
    /// Health check passes needed to mark an upstream healthy, unless the service's
    /// `healthCheck.rise` says otherwise. Default 2.
    pub health_rise: u32,
    /// Health check failures needed to mark an upstream unhealthy, unless the
    /// service's `healthCheck.fall` says otherwise. Default 3.
    pub health_fall: u32,
    /// Worker threads of the proxy service. Default 2.
    pub threads: usize,
    /// Seconds the listeners stay open after SIGTERM, once the node released its leases
    /// (Traefik's `lifeCycle.requestAcceptGraceTimeout`). Default 5.
    pub grace_period_secs: u64,
    /// Seconds requests in flight get after the listeners closed; the process exits as
    /// soon as none is left (Traefik's `lifeCycle.graceTimeOut`). Default 10.
    pub graceful_shutdown_timeout_secs: u64,
    /// Serve routers that need a feature Constellation does not apply (a `basicAuth`
    /// middleware, a `sticky` load balancer…) as if the feature were absent, instead of
    /// refusing their requests with 503. Unsafe: a protected page is then served
    /// unprotected. `--allow-unsupported` on the command line sets it. Default false.
    pub allow_unsupported: bool,
    /// When a TCP server leaves the routes (removed, or its address changed), its open
    /// connections are closed after this many milliseconds; new connections go to the
    /// remaining servers at once. Stateful routes (Redis, MongoDB primaries) close them
    /// at once whatever this says. Default 30000.
    pub tcp_drain_grace_ms: u64,
    /// A UDP session (one client address) ends after this many milliseconds without a
    /// datagram either way (Traefik's `udp.timeout`). Default 3000.
    pub udp_session_timeout_ms: u64,
    /// Circuit breaker settings, per upstream.
    pub breaker: BreakerConfig,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            tunnel_timeout_ms: DEFAULT_TUNNEL_TIMEOUT_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            min_retry_concurrency: DEFAULT_MIN_RETRY_CONCURRENCY,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            panic_threshold_percent: DEFAULT_PANIC_THRESHOLD_PERCENT,
            retry_after_secs: DEFAULT_RETRY_AFTER_SECS,
            health_rise: DEFAULT_HEALTH_RISE,
            health_fall: DEFAULT_HEALTH_FALL,
            threads: DEFAULT_THREADS,
            grace_period_secs: DEFAULT_GRACE_PERIOD_SECS,
            graceful_shutdown_timeout_secs: DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECS,
            allow_unsupported: false,
            tcp_drain_grace_ms: DEFAULT_TCP_DRAIN_GRACE_MS,
            udp_session_timeout_ms: DEFAULT_UDP_SESSION_TIMEOUT_MS,
            breaker: BreakerConfig::default(),
        }
    }
}

impl ProxySettings {
    /// Check ranges; returns `(key, message)` for the first bad value.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("tunnel_timeout_ms", self.tunnel_timeout_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("threads", self.threads as u64),
            ("health_rise", u64::from(self.health_rise)),
            ("health_fall", u64::from(self.health_fall)),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        for (key, v) in [
            ("retry_budget_percent", self.retry_budget_percent),
            ("max_ejection_percent", self.max_ejection_percent),
            ("panic_threshold_percent", self.panic_threshold_percent),
        ] {
            if v > 100 {
                return Err((key, format!("{v} is not a percentage (0-100)")));
            }
        }
        if self.max_attempts > 10 {
            return Err(("max_attempts", "more than 10 attempts only multiplies load on a failing service".into()));
        }
        Ok(())
    }

    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Read timeout.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }
    /// Write timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    /// Idle timeout of pooled connections.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// Overall request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    /// Silence allowed on an upgraded connection.
    pub fn tunnel_timeout(&self) -> Duration {
        Duration::from_millis(self.tunnel_timeout_ms)
    }
}
