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
    tasks: HashMap<UpstreamKey, (Arc<Upstream>, JoinHandle<()>)>,
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
            if let Some(spec) = &pool.health {
                for up in &pool.upstreams {
                    wanted.insert(up.key.clone(), (up.clone(), spec.clone()));
                }
            }
        }
        self.tasks.retain(|k, (up, task)| {
            let keep = wanted.get(k).is_some_and(|(w, _)| Arc::ptr_eq(w, up));
            if !keep {
                task.abort();
            }
            keep
        });
        for (k, (up, spec)) in wanted {
            if !self.tasks.contains_key(&k) {
                let task = tokio::spawn(check_loop(up.clone(), spec, self.metrics.clone()));
                self.tasks.insert(k, (up, task));
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
        for (_, (_, t)) in self.tasks.drain() {
            t.abort();
        }
    }
}
