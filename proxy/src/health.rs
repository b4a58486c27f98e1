//! Active HTTP health checks: one task per checked upstream, feeding the same
//! `healthy` flag the load balancer reads, with rise/fall thresholds.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::metrics::ProxyMetrics;
use crate::table::{HealthSpec, TableHandle};
use crate::upstream::{Upstream, UpstreamKey};

/// Result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// Expected status.
    Pass(u16),
    /// Unexpected status, connect failure, timeout or garbage.
    Fail(String),
}

/// Send one health check request and judge the answer.
pub async fn probe(up: &Upstream, spec: &HealthSpec) -> ProbeResult {
    let Some(mut addr) = up.addr else { return ProbeResult::Fail("address unresolved".into()) };
    if let Some(port) = spec.port {
        addr.set_port(port);
    }
    if up.tls || spec.scheme.as_deref() == Some("https") {
        return ProbeResult::Fail("https health checks are not supported in this build".into());
    }
    let host = spec.hostname.clone().unwrap_or_else(|| up.authority.clone());
    let path = if spec.path.is_empty() { "/" } else { spec.path.as_str() };
    let mut req = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: constellation-health\r\nConnection: close\r\n",
        spec.method, path, host
    );
    for (k, v) in &spec.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        // Only the status line matters; read until we have it.
        while got < buf.len() {
            let n = s.read(&mut buf[got..]).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            got += n;
            if buf[..got].contains(&b'\n') {
                break;
            }
        }
        let line = String::from_utf8_lossy(&buf[..got]).to_string();
        let code = line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next().unwrap_or("")))?;
        Ok::<u16, String>(code)
    };
    match tokio::time::timeout(spec.timeout, attempt).await {
        Err(_) => ProbeResult::Fail(format!("timed out after {:?}", spec.timeout)),
        Ok(Err(e)) => ProbeResult::Fail(e),
        Ok(Ok(code)) => {
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

async fn check_loop(up: Arc<Upstream>, spec: HealthSpec, metrics: ProxyMetrics) {
    let gauge = metrics.upstream_healthy.with_label_values(&[&up.key.service, up.label()]);
    gauge.set(i64::from(up.healthy.load(Ordering::Relaxed)));
    loop {
        let result = probe(&up, &spec).await;
        let passed = matches!(result, ProbeResult::Pass(_));
        if let Some(now_healthy) = apply(&up, &spec, passed) {
            gauge.set(i64::from(now_healthy));
            if now_healthy {
                tracing::info!(service = %up.key.service, upstream = up.label(), "health check: upstream is healthy again");
            } else {
                tracing::warn!(service = %up.key.service, upstream = up.label(), result = ?result, "health check: upstream marked unhealthy");
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
    tasks: HashMap<UpstreamKey, (Arc<Upstream>, HealthSpec, JoinHandle<()>)>,
}

impl HealthSupervisor {
    /// A supervisor for `table`.
    pub fn new(table: TableHandle, metrics: ProxyMetrics) -> Self {
        Self { table, metrics, tasks: HashMap::new() }
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
                let task = tokio::spawn(check_loop(up.clone(), spec.clone(), self.metrics.clone()));
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
    use crate::upstream::UpstreamKey;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize};

    fn upstream(addr: std::net::SocketAddr) -> Upstream {
        Upstream {
            key: UpstreamKey { service: "s".into(), url: format!("http://{addr}") },
            addr: Some(addr),
            authority: addr.to_string(),
            tls: false,
            sni: String::new(),
            path_prefix: String::new(),
            breaker: Breaker::standalone(Arc::new(BreakerConfig::default())),
            healthy: AtomicBool::new(true),
            health_streak: AtomicU32::new(0),
            in_flight: AtomicI64::new(0),
            requests: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            hint_until: std::sync::atomic::AtomicU64::new(0),
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
            timeout: Duration::from_millis(300),
            headers: vec![("x-probe".into(), "1".into())],
            rise,
            fall,
        }
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let up = upstream("127.0.0.1:1".parse().unwrap());
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

    async fn one_shot_server(reply: &'static str) -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn probe_sends_path_host_and_headers_and_judges_status() {
        let (addr, seen) = one_shot_server("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(probe(&upstream(addr), &spec(1, 1)).await, ProbeResult::Pass(204));
        let req = seen.await.unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Host: check.local\r\n") && req.contains("x-probe: 1\r\n"), "{req}");

        let (addr, _) = one_shot_server("HTTP/1.1 503 Unavailable\r\n\r\n").await;
        assert_eq!(probe(&upstream(addr), &spec(1, 1)).await, ProbeResult::Fail("status 503".into()));
        let (addr, _) = one_shot_server("garbage\r\n").await;
        assert!(
            matches!(probe(&upstream(addr), &spec(1, 1)).await, ProbeResult::Fail(m) if m.contains("not an HTTP response"))
        );
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(matches!(probe(&upstream(dead), &spec(1, 1)).await, ProbeResult::Fail(m) if m.starts_with("connect")));
    }
}
