//! Upstreams, their runtime state, and the registry that keeps that state across
//! route-table swaps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::breaker::{Breaker, BreakerConfig, BreakerState, EjectionBudget};
use crate::transport::UpstreamTransport;

/// Identity of an upstream: the service it serves and its server URL. Runtime state is
/// kept for an identity as long as some route table still names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct UpstreamKey {
    /// Service name (without provider suffix).
    pub service: String,
    /// Server URL as configured.
    pub url: String,
}

/// One server of a load-balanced service, with the state that must survive swaps.
pub struct Upstream {
    /// Identity.
    pub key: UpstreamKey,
    /// The URL with its user info hidden ([`crate::redact::redact_url`]): what metrics,
    /// logs and status show.
    pub label: String,
    /// Resolved socket address; `None` when the host name has no address (the
    /// upstream is then unavailable, never silently dropped).
    pub addr: Option<SocketAddr>,
    /// Why `addr` is `None` (e.g. `app.test:80: no such host`), for status and logs.
    pub address_error: Option<String>,
    /// `host[:port]` of the URL, sent as `Host` when the service does not pass the
    /// client's host through.
    pub authority: String,
    /// Whether the URL scheme is https.
    pub tls: bool,
    /// Whether the URL scheme is h2c (cleartext HTTP/2 with prior knowledge).
    pub h2c: bool,
    /// The URL's host (name or IP literal): SNI and the verified name when `tls`,
    /// unless the transport names another.
    pub sni: String,
    /// How connections are made (TLS trust, client certificate, HTTP/2, timeouts).
    pub transport: Arc<UpstreamTransport>,
    /// Path prefix from the URL (Traefik prepends it unless `preservePath` is off).
    pub path_prefix: String,
    /// Circuit breaker.
    pub breaker: Breaker,
    /// Active health check verdict (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Consecutive health check results in the current direction (for rise/fall).
    pub health_streak: AtomicU32,
    /// Requests currently using this upstream.
    pub in_flight: AtomicI64,
    /// Requests sent to this upstream since it was created.
    pub requests: AtomicUsize,
    /// Failures recorded against this upstream since it was created.
    pub failures: AtomicUsize,
    /// Another node's breaker tripped for this upstream: prefer others until this
    /// instant (nanoseconds on [`epoch_nanos`]'s clock; 0 = no hint).
    pub hint_until: AtomicU64,
    /// Moving average of successful attempts' time to response headers, in
    /// microseconds (0 until the first), for the `leasttime` strategy.
    pub latency_ewma_us: AtomicU64,
}

impl Upstream {
    /// Fold one attempt's time to response headers into [`Upstream::latency_ewma_us`]
    /// (weight 1/8 for the new sample; a lost update under a race only delays it).
    pub fn record_latency(&self, took: std::time::Duration) {
        let sample = (took.as_micros() as u64).max(1);
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.latency_ewma_us.store(new, Ordering::Relaxed);
    }
}

/// Nanoseconds from a process-wide epoch to `t` (monotonic; for atomics).
pub fn epoch_nanos(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| t);
    t.saturating_duration_since(epoch).as_nanos() as u64
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("key", &self.key).field("addr", &self.addr).finish()
    }
}

impl Upstream {
    /// Whether the load balancer may pick it outside panic mode.
    pub fn is_available(&self, now: Instant) -> bool {
        self.addr.is_some() && self.healthy.load(Ordering::Relaxed) && self.breaker.is_available(now)
    }

    /// Whether a cluster outlier hint deprioritises it now.
    pub fn is_hinted(&self, now: Instant) -> bool {
        let until = self.hint_until.load(Ordering::Relaxed);
        until != 0 && epoch_nanos(now) < until
    }

    /// Deprioritise until `until` (a hint from another node); never ejects.
    pub fn hint(&self, until: Instant) {
        self.hint_until.store(epoch_nanos(until).max(1), Ordering::Relaxed);
    }

    /// A short label for metrics and logs: the URL, user info hidden.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Breaker state as a gauge value: 0 closed, 1 open, 2 half-open.
    pub fn breaker_gauge(&self, now: Instant) -> i64 {
        match self.breaker.state(now) {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `https`.
    pub tls: bool,
    /// `h2c`: HTTP/2 without TLS, with prior knowledge (Traefik's scheme for gRPC backends).
    pub h2c: bool,
    /// Host name or IP literal (brackets removed).
    pub host: String,
    /// Port, defaulted from the scheme.
    pub port: u16,
    /// Path part without trailing slash (may be empty).
    pub path: String,
    /// `host[:port]` as written.
    pub authority: String,
}

/// Parse an upstream URL such as `http://10.0.0.2:8080/base`.
pub fn parse_server_url(url: &str) -> Result<ServerUrl, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    let (tls, h2c) = match scheme.as_deref() {
        Some("http") => (false, false),
        Some("https") => (true, false),
        Some("h2c") => (false, true),
        Some(other) => return Err(format!("unsupported scheme {other:?} in {url:?} (use http, https or h2c)")),
        None => return Err(format!("URL {url:?} has no scheme (expected http://, https:// or h2c://)")),
    };
    let authority = uri.authority().ok_or_else(|| format!("URL {url:?} has no host"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    if host.is_empty() {
        return Err(format!("URL {url:?} has no host"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri.path().trim_end_matches('/').to_string();
    Ok(ServerUrl { tls, h2c, host, port, path, authority: authority.as_str().to_string() })
}

/// Keeps upstream runtime state (breakers, health, counters) keyed by identity so that a
/// new route table reuses the state of upstreams that did not change.
///
/// Only the control plane touches the registry, when it compiles a table; the request
/// path holds `Arc<Upstream>` from the snapshot and never locks.
#[derive(Default)]
pub struct UpstreamRegistry {
    inner: Mutex<RegistryInner>,
    /// The same for TCP servers.
    pub tcp: crate::tcp::TcpRegistry,
}

#[derive(Default)]
struct RegistryInner {
    upstreams: HashMap<UpstreamKey, Arc<Upstream>>,
    budgets: HashMap<String, Arc<EjectionBudget>>,
}

impl UpstreamRegistry {
    /// Get or create the upstream for `key` at `addr` (or without an address, for the
    /// reason given). State is reused when the identity, the address (or the reason it
    /// has none), the breaker settings and the transport match; a changed address or
    /// transport starts fresh.
    #[allow(clippy::too_many_arguments)]
    pub fn upstream(
        &self,
        key: UpstreamKey,
        url: &ServerUrl,
        addr: Result<SocketAddr, String>,
        transport: &Arc<UpstreamTransport>,
        breaker: &Arc<BreakerConfig>,
        budget: &Arc<EjectionBudget>,
        live: &mut Vec<UpstreamKey>,
    ) -> Arc<Upstream> {
        live.push(key.clone());
        let (addr, address_error) = match addr {
            Ok(a) => (Some(a), None),
            Err(e) => (None, Some(e)),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = inner.upstreams.get(&key) {
            if existing.addr == addr
                && existing.address_error == address_error
                && existing.breaker.config() == &**breaker
                && existing.transport.fingerprint == transport.fingerprint
            {
                return existing.clone();
            }
        }
        let up = Arc::new(Upstream {
            label: crate::redact::redact_url(&key.url),
            key: key.clone(),
            addr,
            address_error,
            authority: url.authority.clone(),
            tls: url.tls,
            h2c: url.h2c,
            sni: url.host.clone(),
            transport: transport.clone(),
            path_prefix: url.path.clone(),
            breaker: Breaker::new(breaker.clone(), budget.clone()),
            healthy: AtomicBool::new(true),
            health_streak: AtomicU32::new(0),
            in_flight: AtomicI64::new(0),
            requests: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            hint_until: AtomicU64::new(0),
            latency_ewma_us: AtomicU64::new(0),
        });
        inner.upstreams.insert(key, up.clone());
        up
    }

    /// The ejection budget shared by the upstreams of `service`, sized to `total`.
    pub fn budget(&self, service: &str, total: usize, max_ejection_percent: u8) -> Arc<EjectionBudget> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let b = inner
            .budgets
            .entry(service.to_string())
            .or_insert_with(|| Arc::new(EjectionBudget::new(total, max_ejection_percent)))
            .clone();
        b.set_total(total);
        b.set_max_percent(max_ejection_percent);
        b
    }

    /// Forget upstreams (and budgets) not in `live`; returns the removed keys so the
    /// caller can drop their metric series.
    pub fn retain(&self, live: &[UpstreamKey]) -> Vec<UpstreamKey> {
        let keep: std::collections::HashSet<&UpstreamKey> = live.iter().collect();
        let services: std::collections::HashSet<&str> = live.iter().map(|k| k.service.as_str()).collect();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<UpstreamKey> = inner.upstreams.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for k in &gone {
            inner.upstreams.remove(k);
        }
        inner.budgets.retain(|s, _| services.contains(s.as_str()));
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let u = parse_server_url("http://127.0.0.1:8080/base/").map_err(|e| e.to_string());
        assert_eq!(
            u,
            Ok(ServerUrl {
                tls: false,
                h2c: false,
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/base".into(),
                authority: "127.0.0.1:8080".into()
            })
        );
        let u = parse_server_url("https://[::1]/").map_err(|e| e.to_string());
        assert!(matches!(u, Ok(ServerUrl { tls: true, port: 443, ref host, .. }) if host == "::1"));
        let u = parse_server_url("h2c://grpc.test").map_err(|e| e.to_string());
        assert!(matches!(u, Ok(ServerUrl { tls: false, h2c: true, port: 80, .. })), "{u:?}");
        assert!(parse_server_url("ftp://x").is_err());
        assert!(parse_server_url("127.0.0.1:80").is_err());
        assert!(parse_server_url("http://").is_err());
    }
}
