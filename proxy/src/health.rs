//! Active HTTP health checks: one task per checked upstream, feeding the same
//! `healthy` flag the load balancer reads, with rise/fall thresholds.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::metrics::ProxyMetrics;
use crate::probe::{ProbeRequest, Prober};
use crate::table::{HealthSpec, TableHandle};
use crate::upstream::{Upstream, UpstreamKey};

/// `User-Agent` of health checks, unless the check sets its own.
pub const HEALTH_USER_AGENT: &str = "constellation-health";

/// Result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// Expected status.
    Pass(u16),
    /// Unexpected status, connect failure, timeout or garbage.
    Fail(String),
}

/// The URL a health check of `up` requests: the upstream's scheme (or the check's),
/// its host, the check's port when set, and the check's path.
fn check_url(up: &Upstream, spec: &HealthSpec, port: u16) -> String {
    let scheme = match spec.scheme.as_deref() {
        Some(s) => s,
        None if up.tls => "https",
        None => "http",
    };
    // The URL's host is what TLS sends as SNI and verifies: the transport's serverName
    // when set (the connection still goes to the upstream's address).
    let name = match (&up.transport.server_name, up.tls || spec.scheme.as_deref() == Some("https")) {
        (Some(n), true) => n,
        _ => &up.sni,
    };
    let host = if name.contains(':') { format!("[{name}]") } else { name.clone() };
    let path = if spec.path.starts_with('/') { spec.path.clone() } else { format!("/{}", spec.path) };
    format!("{scheme}://{host}:{port}{path}")
}

/// Send one health check request to the upstream's resolved address and judge the
/// answer. The request carries the URL's host (or the check's `hostname`) as `Host`.
pub async fn probe(prober: &Prober, up: &Upstream, spec: &HealthSpec) -> ProbeResult {
    let Some(mut addr) = up.addr else {
        let why = up.address_error.as_deref().unwrap_or("address unresolved");
        return ProbeResult::Fail(why.to_string());
    };
    if let Some(port) = spec.port {
        addr.set_port(port);
    }
    let url = check_url(up, spec, addr.port());
    let host = spec.hostname.clone().unwrap_or_else(|| up.authority.clone());
    let mut headers = spec.headers.clone();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("user-agent")) {
        // Lets upstream logs tell checks from traffic.
        headers.push(("user-agent".into(), HEALTH_USER_AGENT.into()));
    }
    let req = ProbeRequest {
        method: &spec.method,
        url: &url,
        connect_to: Some(addr),
        host_header: Some(&host),
        headers: &headers,
        timeout: spec.timeout,
        max_body: 0,
        // https checks trust what requests trust: the service's servers transport.
        tls: Some(up.transport.probe_tls.clone()),
    };
    match prober.send(&req).await {
        Err(e) => ProbeResult::Fail(e.to_string()),
        Ok(resp) => {
            let code = resp.status;
            let ok = match spec.status {
                Some(s) => code == s,
                None => (200..400).contains(&code),
            };
            if ok {
                ProbeResult::Pass(code)
            } else {
                ProbeResult::Fail(format!("status {code}"))
            }
        }
    }
}

/// Apply one probe result with rise/fall hysteresis; returns the new verdict if it flipped.
pub fn apply(up: &Upstream, spec: &HealthSpec, passed: bool) -> Option<bool> {
    let healthy = up.healthy.load(Ordering::Relaxed);
    if passed == healthy {
        up.health_streak.store(0, Ordering::Relaxed);
        return None;
    }
    let streak = up.health_streak.fetch_add(1, Ordering::Relaxed) + 1;
    let needed = if healthy { spec.fall } else { spec.rise };
    if streak >= needed.max(1) {
        up.health_streak.store(0, Ordering::Relaxed);
        up.healthy.store(passed, Ordering::Relaxed);
        return Some(passed);
    }
    None
}

async fn check_loop(prober: Arc<Prober>, up: Arc<Upstream>, spec: HealthSpec, metrics: ProxyMetrics) {
    let gauge = metrics.upstream_healthy.with_label_values(&[&up.key.service, up.label()]);
    gauge.set(i64::from(up.healthy.load(Ordering::Relaxed)));
    loop {
        let result = probe(&prober, &up, &spec).await;
        let passed = matches!(result, ProbeResult::Pass(_));
        if let Some(now_healthy) = apply(&up, &spec, passed) {
            gauge.set(i64::from(now_healthy));
            if now_healthy {
                tracing::info!(service = %up.key.service, upstream = up.label(), "health check: upstream is healthy again");
            } else {
                // The probe's error may quote the URL, user info included.
                let result = crate::redact::redact_text(&format!("{result:?}"));
                tracing::warn!(service = %up.key.service, upstream = up.label(), %result, "health check: upstream marked unhealthy");
            }
        }
        let wait = if up.healthy.load(Ordering::Relaxed) { spec.interval } else { spec.unhealthy_interval };
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
    }
}

/// Keeps one check task per health-checked upstream of the current table. Call
/// [`HealthSupervisor::sync`] after every table swap.
pub struct HealthSupervisor {
    table: TableHandle,
    metrics: ProxyMetrics,
    prober: Arc<Prober>,
    tasks: HashMap<UpstreamKey, (Arc<Upstream>, HealthSpec, JoinHandle<()>)>,
}

impl HealthSupervisor {
    /// A supervisor for `table`, probing through `prober`. https checks use each
    /// upstream's transport for TLS (verified against the system roots or its
    /// `rootCAs`, unless `insecureSkipVerify`), whatever the prober's own policy.
    pub fn new(table: TableHandle, metrics: ProxyMetrics, prober: Arc<Prober>) -> Self {
        Self { table, metrics, prober, tasks: HashMap::new() }
    }

    /// Start checks for new upstreams and stop those for removed or replaced ones.
    /// Must run inside a tokio runtime.
    pub fn sync(&mut self) {
        let table = self.table.load_full();
        let mut wanted: HashMap<UpstreamKey, (Arc<Upstream>, HealthSpec)> = HashMap::new();
        for pool in &table.pools {
            match &pool.health {
                Some(spec) => {
                    for up in &pool.upstreams {
                        wanted.insert(up.key.clone(), (up.clone(), spec.clone()));
                    }
                }
                // Checks were removed: nothing can mark these healthy again, so an
                // earlier verdict must not linger.
                None => {
                    for up in &pool.upstreams {
                        if !up.healthy.swap(true, Ordering::Relaxed) {
                            self.metrics.upstream_healthy.with_label_values(&[&up.key.service, up.label()]).set(1);
                        }
                    }
                }
            }
        }
        self.tasks.retain(|k, (up, spec, task)| {
            // Same upstream object and same parameters: keep the running check (and
            // its rise/fall streak); anything else restarts it.
            let keep = wanted.get(k).is_some_and(|(w, s)| Arc::ptr_eq(w, up) && s == spec);
            if !keep {
                task.abort();
            }
            keep
        });
        for (k, (up, spec)) in wanted {
            if !self.tasks.contains_key(&k) {
                let task =
                    tokio::spawn(check_loop(self.prober.clone(), up.clone(), spec.clone(), self.metrics.clone()));
                self.tasks.insert(k, (up, spec, task));
            }
        }
    }

    /// Number of running check tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no checks run.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for HealthSupervisor {
    fn drop(&mut self) {
        for (_, (_, _, t)) in self.tasks.drain() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::breaker::{Breaker, BreakerConfig};
    use crate::probe::CertPolicy;
    use crate::upstream::UpstreamKey;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn upstream(url: &str, addr: Option<std::net::SocketAddr>) -> Upstream {
        let parsed = crate::upstream::parse_server_url(url).unwrap();
        Upstream {
            key: UpstreamKey { service: "s".into(), url: url.into() },
            label: url.into(),
            addr,
            address_error: addr.is_none().then(|| "app.test:80: no such host".to_string()),
            authority: parsed.authority,
            tls: parsed.tls,
            h2c: parsed.h2c,
            sni: parsed.host,
            transport: Arc::new(crate::transport::UpstreamTransport::system_default().unwrap()),
            path_prefix: String::new(),
            breaker: Breaker::standalone(Arc::new(BreakerConfig::default())),
            healthy: AtomicBool::new(true),
            health_streak: AtomicU32::new(0),
            in_flight: AtomicI64::new(0),
            requests: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            hint_until: std::sync::atomic::AtomicU64::new(0),
            latency_ewma_us: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn spec(rise: u32, fall: u32) -> HealthSpec {
        HealthSpec {
            scheme: None,
            path: "/healthz".into(),
            method: "GET".into(),
            port: None,
            hostname: Some("check.local".into()),
            status: None,
            interval: Duration::from_millis(100),
            unhealthy_interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            headers: vec![("x-probe".into(), "1".into())],
            rise,
            fall,
        }
    }

    fn prober() -> Prober {
        Prober::new(CertPolicy::Unverified).unwrap()
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let up = upstream("http://127.0.0.1:1", Some("127.0.0.1:1".parse().unwrap()));
        let s = spec(2, 3);
        assert_eq!(apply(&up, &s, false), None);
        assert_eq!(apply(&up, &s, false), None);
        assert_eq!(apply(&up, &s, true), None, "a pass breaks the failure streak");
        assert_eq!(apply(&up, &s, false), None);
        assert_eq!(apply(&up, &s, false), None);
        assert_eq!(apply(&up, &s, false), Some(false));
        assert!(!up.healthy.load(Ordering::Relaxed));
        assert_eq!(apply(&up, &s, true), None);
        assert_eq!(apply(&up, &s, true), Some(true));
    }

    /// A test fixture answering one connection with `reply`, returning what it read.
    async fn one_shot_server(reply: &'static str) -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = vec![0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&req).to_string()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn probe_sends_path_host_and_headers_to_the_resolved_address() {
        let p = prober();
        let (addr, seen) = one_shot_server("HTTP/1.1 204 No Content\r\n\r\n").await;
        // A host name that resolves nowhere: the probe must use the address it is given.
        let up = upstream(&format!("http://app.invalid:{}", addr.port()), Some(addr));
        assert_eq!(probe(&p, &up, &spec(1, 1)).await, ProbeResult::Pass(204));
        let req = seen.await.unwrap().to_ascii_lowercase();
        assert!(req.starts_with("get /healthz http/1.1\r\n"), "{req}");
        assert!(req.contains("host: check.local\r\n") && req.contains("x-probe: 1\r\n"), "{req}");

        let (addr, _) = one_shot_server("HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let up = upstream(&format!("http://{addr}"), Some(addr));
        assert_eq!(probe(&p, &up, &spec(1, 1)).await, ProbeResult::Fail("status 503".into()));
        let (addr, _) = one_shot_server("garbage\r\n\r\n").await;
        let up = upstream(&format!("http://{addr}"), Some(addr));
        assert!(matches!(probe(&p, &up, &spec(1, 1)).await, ProbeResult::Fail(m) if m.starts_with("request")));
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let up = upstream(&format!("http://{dead}"), Some(dead));
        assert!(matches!(probe(&p, &up, &spec(1, 1)).await, ProbeResult::Fail(m) if m.starts_with("connect")));
    }

    #[tokio::test]
    async fn an_unresolved_upstream_fails_with_the_reason() {
        let up = upstream("http://app.test", None);
        assert_eq!(probe(&prober(), &up, &spec(1, 1)).await, ProbeResult::Fail("app.test:80: no such host".into()));
    }
}
