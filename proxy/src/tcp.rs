//! TCP routing: Traefik's `tcp` routers and services compiled into a table, and the
//! connection path — peek (a TLS ClientHello or nothing), route, connect with failover,
//! an optional PROXY protocol header, copy both ways, drain when the upstream leaves.
//!
//! Rules (Traefik v3, `pkg/server/router/tcp`): a TLS router (one with `tls`) matches
//! only connections that start with a ClientHello, by `HostSNI`/`HostSNIRegexp`/`ALPN`/
//! `ClientIP`; a non-TLS router uses ``HostSNI(`*`)`` and `ClientIP`. On an entry point
//! that also has HTTP routers, TCP routers are asked first and HTTP takes what none of
//! them claims. A non-TLS catch-all router takes a connection that sends nothing for
//! [`PEEK_TIMEOUT`] (server-first protocols) and, last, anything no one else claimed.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::address::AddressMap;
use crate::breaker::{Breaker, BreakerConfig, BreakerState, EjectionBudget, Outcome};
use crate::dynamic::{parse_duration, DynamicConfig, TcpService};
use crate::rule::{ConnInfo, TcpRule};
use crate::table::weighted_order;

/// How long a connection on an entry point shared with HTTP (or TLS) routers may stay
/// silent before a non-TLS catch-all TCP router takes it.
pub const PEEK_TIMEOUT: Duration = Duration::from_millis(1000);
/// Traefik's default `terminationDelay`: once one side closed its writing half, the
/// other gets this long to finish before the connection is closed.
pub const DEFAULT_TERMINATION_DELAY: Duration = Duration::from_millis(100);
/// Copy buffer per direction.
const BUF: usize = 16 * 1024;
/// Traefik 3.6's TCP health check defaults.
const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_HC_TIMEOUT: Duration = Duration::from_secs(5);

/// What is compiled from the `tcp` section.
#[derive(Debug, Default)]
pub struct TcpTable {
    /// Routers, highest priority first.
    pub routes: Vec<TcpRoute>,
    /// Every load-balanced service, by name (status, health checks).
    pub pools: Vec<Arc<TcpPool>>,
}

/// A compile error of the `tcp` or `udp` section: (object, field, message).
pub type SectionError = (String, String, String);

/// How a TCP router treats TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpTls {
    /// Not a TLS router: bytes are forwarded as they come.
    None,
    /// TLS router passing the encrypted stream through (routed by the ClientHello).
    Passthrough,
    /// TLS router terminating TLS with the proxy's certificates, then forwarding the
    /// plaintext; `options` names the `tls.options` set.
    Terminate {
        /// `tls.options` name.
        options: Option<String>,
    },
}

/// A compiled TCP router.
#[derive(Debug)]
pub struct TcpRoute {
    /// Router name.
    pub name: String,
    /// Rule.
    pub rule: TcpRule,
    /// Priority; higher wins.
    pub priority: i64,
    /// Entry points; empty means every TCP entry point.
    pub entry_points: Vec<String>,
    /// TLS handling.
    pub tls: TcpTls,
    /// Where connections go; `None` when refused.
    pub target: Option<Arc<TcpTarget>>,
    /// Why connections are refused (closed at once), e.g. an unapplied feature.
    pub refused: Option<String>,
    /// Client networks admitted by an `ipAllowList` middleware (empty: all).
    pub allow: Vec<crate::forwarded::IpNet>,
    /// Connections allowed at once by an `inFlightConn` middleware (0: no cap).
    pub max_conns: i64,
    /// Connections open now through this router.
    pub open: AtomicI64,
}

impl TcpRoute {
    fn on(&self, entry: &str) -> bool {
        self.entry_points.is_empty() || self.entry_points.iter().any(|e| e == entry)
    }
}

/// A TCP service target.
#[derive(Debug)]
pub enum TcpTarget {
    /// A `loadBalancer`.
    Pool(Arc<TcpPool>),
    /// A `weighted` service.
    Weighted {
        /// Service name.
        name: String,
        /// Children.
        children: Vec<Arc<TcpTarget>>,
        /// Smooth weighted round-robin order of child indexes.
        order: Vec<usize>,
        /// Next position in `order`.
        next: AtomicUsize,
    },
}

impl TcpTarget {
    /// The pool the next connection goes to (a weighted service picks a child).
    fn pool(&self) -> Option<&Arc<TcpPool>> {
        match self {
            TcpTarget::Pool(p) => Some(p),
            TcpTarget::Weighted { children, order, next, .. } => {
                if order.is_empty() {
                    return None;
                }
                // A child with nothing available is skipped, so a weighted service fails
                // over between its children too.
                let start = next.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let mut first = None;
                for i in 0..order.len() {
                    let child = children.get(order[(start + i) % order.len()])?.pool()?;
                    if child.available(now) > 0 {
                        return Some(child);
                    }
                    first.get_or_insert(child);
                }
                first
            }
        }
    }
}

/// A TCP `loadBalancer`: servers tried round-robin, skipping ejected or unhealthy ones.
#[derive(Debug)]
pub struct TcpPool {
    /// Service name.
    pub name: String,
    /// Servers.
    pub servers: Vec<Arc<TcpUpstream>>,
    /// PROXY protocol version sent to the servers (1 or 2).
    pub proxy_protocol: Option<u8>,
    /// Half-close deadline; `None` waits forever (a negative `terminationDelay`).
    pub termination_delay: Option<Duration>,
    /// Active health check.
    pub health: Option<TcpHealthSpec>,
    next: AtomicUsize,
}

impl TcpPool {
    /// Servers that may be picked now.
    pub fn available(&self, now: Instant) -> usize {
        self.servers.iter().filter(|s| s.is_available(now)).count()
    }

    /// Candidates in the order to try them: round-robin start, available first. When
    /// none is available, every server with an address (a breaker may be wrong, and
    /// refusing all connections is worse).
    fn candidates(&self, now: Instant) -> Vec<Arc<TcpUpstream>> {
        let n = self.servers.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let ordered = (0..n).map(|i| &self.servers[(start + i) % n]);
        let mut out: Vec<_> = ordered.clone().filter(|s| s.is_available(now)).cloned().collect();
        if out.is_empty() {
            out = ordered.filter(|s| s.addr.is_some() && s.healthy.load(Ordering::Relaxed)).cloned().collect();
        }
        out
    }
}

/// Traefik 3.6's TCP `healthCheck`: connect (to `port` when set), optionally send
/// `send` and expect a reply starting with `expect`.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpHealthSpec {
    /// Port to check instead of the server's.
    pub port: Option<u16>,
    /// Bytes to send once connected.
    pub send: Option<String>,
    /// What the reply must start with.
    pub expect: Option<String>,
    /// Time between checks of a healthy server.
    pub interval: Duration,
    /// Time between checks of an unhealthy server.
    pub unhealthy_interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
}

/// Identity of a TCP upstream: service and address as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    /// Service name.
    pub service: String,
    /// `host:port` as configured.
    pub address: String,
}

/// A TCP server with the state that survives table swaps.
#[derive(Debug)]
pub struct TcpUpstream {
    /// Identity.
    pub key: TcpKey,
    /// Resolved address; `None` when the name has none (then never picked).
    pub addr: Option<SocketAddr>,
    /// Why `addr` is `None`.
    pub address_error: Option<String>,
    /// Circuit breaker (connect failures).
    pub breaker: Breaker,
    /// Active health check verdict.
    pub healthy: AtomicBool,
    /// Consecutive results in the current direction.
    pub health_streak: AtomicU32,
    /// Connections open to it now.
    pub active: AtomicI64,
    /// Connections made to it since it was created.
    pub connections: AtomicU64,
    /// Set when it left the table: its connections close at this instant.
    retired: watch::Sender<Option<Instant>>,
}

impl TcpUpstream {
    /// Whether it may be picked outside the last-resort pass.
    pub fn is_available(&self, now: Instant) -> bool {
        self.addr.is_some() && self.healthy.load(Ordering::Relaxed) && self.breaker.is_available(now)
    }

    /// Breaker state now.
    pub fn breaker_state(&self, now: Instant) -> BreakerState {
        self.breaker.state(now)
    }

    /// Close its connections at `at` (a drain deadline; now for at once).
    pub fn retire(&self, at: Instant) {
        self.retired.send_replace(Some(at));
    }

    /// Whether it was retired.
    pub fn is_retired(&self) -> bool {
        self.retired.borrow().is_some()
    }
}

/// Keeps TCP upstream state across compiles and retires what a new table dropped.
#[derive(Default)]
pub struct TcpRegistry {
    inner: Mutex<TcpRegistryInner>,
}

#[derive(Default)]
struct TcpRegistryInner {
    upstreams: HashMap<TcpKey, Arc<TcpUpstream>>,
    budgets: HashMap<String, Arc<EjectionBudget>>,
    /// Drain grace per service where it differs from the default.
    drain: HashMap<String, Duration>,
    /// Replaced by a compile (same identity, new address); retired when a table is
    /// put in use.
    replaced: Vec<Arc<TcpUpstream>>,
}

impl std::fmt::Debug for TcpRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpRegistry")
    }
}

impl TcpRegistry {
    /// Services whose removed servers close their connections after `grace` instead
    /// of the default (the plane sets zero for stateful primaries: a client of a
    /// demoted primary must not keep writing to it). Replaces the previous set.
    pub fn set_drain_overrides(&self, overrides: HashMap<String, Duration>) {
        self.lock().drain = overrides;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TcpRegistryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn upstream(
        &self,
        key: TcpKey,
        addr: Result<SocketAddr, String>,
        breaker: &Arc<BreakerConfig>,
        budget: &Arc<EjectionBudget>,
    ) -> Arc<TcpUpstream> {
        let (addr, address_error) = match addr {
            Ok(a) => (Some(a), None),
            Err(e) => (None, Some(e)),
        };
        let mut inner = self.lock();
        if let Some(u) = inner.upstreams.get(&key) {
            if u.addr == addr && u.address_error == address_error && u.breaker.config() == &**breaker {
                return u.clone();
            }
        }
        let up = Arc::new(TcpUpstream {
            key: key.clone(),
            addr,
            address_error,
            breaker: Breaker::new(breaker.clone(), budget.clone()),
            healthy: AtomicBool::new(true),
            health_streak: AtomicU32::new(0),
            active: AtomicI64::new(0),
            connections: AtomicU64::new(0),
            retired: watch::channel(None).0,
        });
        if let Some(old) = inner.upstreams.insert(key, up.clone()) {
            // Same identity, new address: the old address's connections drain once
            // this table is in use.
            inner.replaced.push(old);
        }
        up
    }

    fn budget(&self, service: &str, total: usize, max_percent: u8) -> Arc<EjectionBudget> {
        let mut inner = self.lock();
        let b = inner
            .budgets
            .entry(service.to_string())
            .or_insert_with(|| Arc::new(EjectionBudget::new(total, max_percent)))
            .clone();
        b.set_total(total);
        b.set_max_percent(max_percent);
        b
    }

    /// `table` is going into use: retire every upstream it no longer has (its
    /// connections close after the drain grace) and forget it. Returns the retired keys.
    pub fn retain_table(&self, table: &TcpTable, default_grace: Duration) -> Vec<TcpKey> {
        let live: Vec<TcpKey> = table.pools.iter().flat_map(|p| p.servers.iter().map(|s| s.key.clone())).collect();
        let keep: std::collections::HashSet<&TcpKey> = live.iter().collect();
        let mut inner = self.lock();
        for old in std::mem::take(&mut inner.replaced) {
            let grace = inner.drain.get(&old.key.service).copied();
            retire_later(&old, grace, default_grace);
        }
        let gone: Vec<TcpKey> = inner.upstreams.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for k in &gone {
            if let Some(up) = inner.upstreams.remove(k) {
                let grace = inner.drain.get(&k.service).copied();
                retire_later(&up, grace, default_grace);
            }
        }
        let services: std::collections::HashSet<&str> = live.iter().map(|k| k.service.as_str()).collect();
        inner.budgets.retain(|s, _| services.contains(s.as_str()));
        gone
    }
}

fn retire_later(up: &TcpUpstream, grace: Option<Duration>, default_grace: Duration) {
    let grace = grace.unwrap_or(default_grace);
    if up.active.load(Ordering::Relaxed) > 0 {
        tracing::info!(service = %up.key.service, server = %up.key.address, open = up.active.load(Ordering::Relaxed), grace_ms = grace.as_millis() as u64, "TCP server left the routes; its connections drain");
    }
    up.retire(Instant::now() + grace);
}

/// Compile the `tcp` section of `cfg` (validated): a router needing something not
/// applied is refused (its connections closed, the reason in status). Errors are
/// `(object, field, message)`. Put the table in use with [`TcpRegistry::retain_table`].
pub fn compile(
    cfg: &DynamicConfig,
    tcp_entrypoints: &[String],
    registry: &TcpRegistry,
    addresses: &AddressMap,
    breaker: &Arc<BreakerConfig>,
    max_ejection_percent: u8,
) -> Result<(TcpTable, Vec<String>), Vec<SectionError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut pools: BTreeMap<String, Arc<TcpPool>> = BTreeMap::new();
    let mut service_issue: BTreeMap<String, String> = BTreeMap::new();
    // Pools first.
    for (name, svc) in &cfg.tcp.services {
        let TcpService::LoadBalancer(lb) = svc else { continue };
        let object = format!("tcp.services.{name}");
        let mut issues = Vec::new();
        if lb.servers_transport.is_some() {
            issues.push("serversTransport");
        }
        if lb.servers.iter().any(|s| s.tls == Some(true)) {
            issues.push("servers[].tls");
        }
        if !issues.is_empty() {
            service_issue.insert(name.clone(), format!("{object}: {} is not applied", issues.join(", ")));
        }
        let proxy_protocol = match &lb.proxy_protocol {
            None => None,
            Some(v) => match v.get("version").and_then(|v| v.as_u64()).unwrap_or(2) {
                1 => Some(1),
                2 => Some(2),
                other => {
                    errors.push((object.clone(), "proxyProtocol.version".into(), format!("{other} is not 1 or 2")));
                    None
                }
            },
        };
        let termination_delay = match lb.termination_delay {
            None => Some(DEFAULT_TERMINATION_DELAY),
            Some(ms) if ms < 0 => None,
            Some(ms) => Some(Duration::from_millis(ms as u64)),
        };
        let health = match &lb.health_check {
            None => None,
            Some(v) => match health_spec(v) {
                Ok(h) => Some(h),
                Err((field, msg)) => {
                    errors.push((object.clone(), format!("healthCheck.{field}"), msg));
                    None
                }
            },
        };
        let budget = registry.budget(name, lb.servers.len(), max_ejection_percent);
        let mut servers = Vec::with_capacity(lb.servers.len());
        for (i, s) in lb.servers.iter().enumerate() {
            let Some((host, port)) = split_host_port(&s.address) else {
                errors.push((
                    object.clone(),
                    format!("servers[{i}].address"),
                    format!("{:?} is not host:port", s.address),
                ));
                continue;
            };
            let key = TcpKey { service: name.clone(), address: s.address.clone() };
            servers.push(registry.upstream(key, addresses.address_of(host, port), breaker, &budget));
        }
        pools.insert(
            name.clone(),
            Arc::new(TcpPool {
                name: name.clone(),
                servers,
                proxy_protocol,
                termination_delay,
                health,
                next: AtomicUsize::new(0),
            }),
        );
    }
    let mut targets: HashMap<String, Arc<TcpTarget>> = HashMap::new();
    let mut routes = Vec::new();
    for (name, router) in &cfg.tcp.routers {
        let object = format!("tcp.routers.{name}");
        let Some(rule_text) = router.rule.as_deref() else {
            errors.push((object.clone(), "rule".into(), "a TCP router needs a rule, e.g. HostSNI(`*`)".into()));
            continue;
        };
        let rule = match TcpRule::parse(rule_text) {
            Ok(r) => r,
            Err(e) => {
                errors.push((object.clone(), "rule".into(), e.to_string()));
                continue;
            }
        };
        let tls = match &router.tls {
            None => TcpTls::None,
            Some(t) if t.passthrough == Some(true) => TcpTls::Passthrough,
            Some(t) => TcpTls::Terminate { options: t.options.clone() },
        };
        if tls == TcpTls::None && rule.needs_hello() {
            errors.push((
                object.clone(),
                "rule".into(),
                "HostSNI with a name, HostSNIRegexp and ALPN need a TLS router (add tls); a non-TLS router uses HostSNI(`*`)".into(),
            ));
            continue;
        }
        for ep in &router.entry_points {
            if !tcp_entrypoints.contains(ep) {
                warnings.push(format!("{object}: entry point {ep:?} is not a TCP entry point of this node"));
            }
        }
        let mut refused = Vec::new();
        let mut allow = Vec::new();
        let mut max_conns = 0;
        for m in &router.middlewares {
            let bare = m.split('@').next().unwrap_or(m);
            match cfg.tcp.middlewares.get(bare) {
                Some(v) => match tcp_middleware(v) {
                    Ok(TcpMiddleware::Allow(nets)) => allow.extend(nets),
                    Ok(TcpMiddleware::InFlight(n)) => max_conns = n,
                    Err(why) => refused.push(format!("middleware {bare}: {why}")),
                },
                None => refused.push(format!("middleware {bare}: not defined")),
            }
        }
        let target = match router.service.as_deref() {
            Some(s) => {
                let s = s.split('@').next().unwrap_or(s);
                let mut issues = Vec::new();
                let t = tcp_target(s, cfg, &pools, &mut targets, &service_issue, &mut issues, 0);
                refused.extend(issues);
                t
            }
            None => {
                errors.push((object.clone(), "service".into(), "a TCP router needs a service".into()));
                continue;
            }
        };
        let priority = router.priority.unwrap_or(rule.default_priority() as i64);
        routes.push(TcpRoute {
            name: name.clone(),
            rule,
            priority,
            entry_points: router.entry_points.clone(),
            tls,
            target,
            refused: (!refused.is_empty()).then(|| refused.join("; ")),
            allow,
            max_conns,
            open: AtomicI64::new(0),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    routes.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
    Ok((TcpTable { routes, pools: pools.into_values().collect() }, warnings))
}

fn tcp_target(
    name: &str,
    cfg: &DynamicConfig,
    pools: &BTreeMap<String, Arc<TcpPool>>,
    targets: &mut HashMap<String, Arc<TcpTarget>>,
    service_issue: &BTreeMap<String, String>,
    issues: &mut Vec<String>,
    depth: usize,
) -> Option<Arc<TcpTarget>> {
    if let Some(issue) = service_issue.get(name) {
        issues.push(issue.clone());
    }
    if let Some(t) = targets.get(name) {
        return Some(t.clone());
    }
    let t = match cfg.tcp.services.get(name)? {
        TcpService::LoadBalancer(_) => Arc::new(TcpTarget::Pool(pools.get(name)?.clone())),
        TcpService::Weighted(w) => {
            if depth > 16 {
                return None;
            }
            let mut children = Vec::new();
            let mut weights = Vec::new();
            for child in &w.services {
                let cname = child.name.split('@').next().unwrap_or(&child.name);
                let weight = child.weight.unwrap_or(1);
                if let Some(t) = tcp_target(cname, cfg, pools, targets, service_issue, issues, depth + 1) {
                    if weight > 0 {
                        children.push(t);
                        weights.push(weight);
                    }
                }
            }
            let order = weighted_order(&weights);
            Arc::new(TcpTarget::Weighted { name: name.to_string(), children, order, next: AtomicUsize::new(0) })
        }
    };
    targets.insert(name.to_string(), t.clone());
    Some(t)
}

enum TcpMiddleware {
    Allow(Vec<crate::forwarded::IpNet>),
    InFlight(i64),
}

/// The TCP middlewares Traefik has: `ipAllowList` (`sourceRange`) and `inFlightConn`
/// (`amount`). Anything else refuses the router.
fn tcp_middleware(v: &serde_json::Value) -> Result<TcpMiddleware, String> {
    let obj = v.as_object().ok_or("not an object")?;
    let (kind, opts) = obj.iter().next().ok_or("empty middleware")?;
    match kind.as_str() {
        "ipAllowList" | "ipWhiteList" => {
            let mut nets = Vec::new();
            for (k, val) in opts.as_object().into_iter().flatten() {
                if k != "sourceRange" {
                    return Err(format!("ipAllowList.{k} is not applied"));
                }
                for r in val.as_array().into_iter().flatten() {
                    let r = r.as_str().ok_or("sourceRange entries must be strings")?;
                    nets.push(r.parse::<crate::forwarded::IpNet>().map_err(|e| format!("sourceRange {r:?}: {e}"))?);
                }
            }
            if nets.is_empty() {
                return Err("ipAllowList needs a sourceRange".into());
            }
            Ok(TcpMiddleware::Allow(nets))
        }
        "inFlightConn" => {
            let amount = opts.get("amount").and_then(|a| a.as_i64()).ok_or("inFlightConn needs an amount")?;
            if amount <= 0 {
                return Err("inFlightConn.amount must be positive".into());
            }
            Ok(TcpMiddleware::InFlight(amount))
        }
        other => Err(format!("{other} is not a TCP middleware Constellation applies")),
    }
}

fn health_spec(v: &serde_json::Value) -> Result<TcpHealthSpec, (String, String)> {
    let obj = v.as_object().ok_or_else(|| (String::new(), "healthCheck must be a map".to_string()))?;
    let mut spec = TcpHealthSpec {
        port: None,
        send: None,
        expect: None,
        interval: DEFAULT_HC_INTERVAL,
        unhealthy_interval: DEFAULT_HC_INTERVAL,
        timeout: DEFAULT_HC_TIMEOUT,
    };
    let mut unhealthy = None;
    let dur = |k: &str, v: &serde_json::Value| -> Result<Duration, (String, String)> {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => format!("{n}s"),
            _ => return Err((k.to_string(), "must be a duration such as 10s".into())),
        };
        parse_duration(&text).map_err(|e| (k.to_string(), e))
    };
    for (k, val) in obj {
        match k.as_str() {
            "port" => {
                spec.port = Some(
                    val.as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(|| (k.clone(), "must be a port number".to_string()))?,
                )
            }
            "send" => spec.send = val.as_str().map(str::to_string),
            "expect" => spec.expect = val.as_str().map(str::to_string),
            "interval" => spec.interval = dur(k, val)?,
            "unhealthyInterval" => unhealthy = Some(dur(k, val)?),
            "timeout" => spec.timeout = dur(k, val)?,
            other => return Err((other.to_string(), "is not a TCP health check option".into())),
        }
    }
    spec.unhealthy_interval = unhealthy.unwrap_or(spec.interval);
    if spec.interval.is_zero() || spec.timeout.is_zero() {
        return Err(("interval".into(), "interval and timeout must be positive".into()));
    }
    Ok(spec)
}

/// `host:port` (IPv6 in brackets) split, port parsed.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

// === the connection path ===

/// TCP metrics.
#[derive(Clone)]
pub struct TcpMetrics {
    /// Connections by router and outcome (`ok`, `no_upstream`, `refused`, `denied`,
    /// `tls_error`, `drained`).
    pub connections: IntCounterVec,
    /// Bytes by router and direction (`in`: from clients, `out`: to clients).
    pub bytes: IntCounterVec,
    /// Open connections by router.
    pub open: IntGaugeVec,
    /// Connections no router took, by entry point and reason.
    pub rejected: IntCounterVec,
    /// Upstream connect attempts by service and outcome.
    pub attempts: IntCounterVec,
    /// Active health check verdict per TCP server.
    pub healthy: IntGaugeVec,
}

impl TcpMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered();
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.open.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        registry.register(Box::new(m.attempts.clone()))?;
        registry.register(Box::new(m.healthy.clone()))?;
        Ok(m)
    }

    /// Metrics not registered anywhere (tests).
    pub fn unregistered() -> Self {
        #[allow(clippy::expect_used)]
        let c = |n: &str, h: &str, l: &[&str]| IntCounterVec::new(Opts::new(n, h), l).expect("valid metric");
        #[allow(clippy::expect_used)]
        let g = |n: &str, h: &str, l: &[&str]| IntGaugeVec::new(Opts::new(n, h), l).expect("valid metric");
        Self {
            connections: c(
                "constellation_tcp_connections_total",
                "TCP connections by router and outcome.",
                &["router", "outcome"],
            ),
            bytes: c("constellation_tcp_bytes_total", "TCP bytes by router and direction.", &["router", "direction"]),
            open: g("constellation_tcp_connections_open", "Open TCP connections by router.", &["router"]),
            rejected: c(
                "constellation_tcp_rejected_total",
                "TCP connections no router took, by entry point and reason.",
                &["entrypoint", "reason"],
            ),
            attempts: c(
                "constellation_tcp_upstream_attempts_total",
                "TCP upstream connects by service and outcome.",
                &["service", "outcome"],
            ),
            healthy: g(
                "constellation_tcp_upstream_healthy",
                "TCP health check verdict per server (1 healthy).",
                &["service", "server"],
            ),
        }
    }
}

/// What the first bytes of a connection said.
#[derive(Debug, Default)]
pub struct Peeked {
    /// A TLS ClientHello was read.
    pub tls: bool,
    /// Its server name, lower-cased.
    pub sni: Option<String>,
    /// Its ALPN list.
    pub alpn: Vec<Vec<u8>>,
    /// The client sent nothing within the peek time.
    pub silent: bool,
}

/// Which router a connection goes to, given what was peeked. `http` says whether HTTP
/// routers serve this entry point (they take what no TCP router claims, except a
/// silent or non-HTTP-looking connection a catch-all takes).
pub fn pick<'t>(table: &'t TcpTable, entry: &str, peeked: &Peeked, client_ip: Option<IpAddr>) -> Option<&'t TcpRoute> {
    let info = ConnInfo { tls: peeked.tls, sni: peeked.sni.as_deref(), alpn: &peeked.alpn, client_ip };
    let want_tls = peeked.tls;
    table.routes.iter().find(|r| r.on(entry) && (r.tls != TcpTls::None) == want_tls && r.rule.matches(&info))
}

/// The non-TLS catch-all for a connection no one else took.
pub fn fallback<'t>(table: &'t TcpTable, entry: &str, client_ip: Option<IpAddr>) -> Option<&'t TcpRoute> {
    let info = ConnInfo { tls: false, sni: None, alpn: &[], client_ip };
    table.routes.iter().find(|r| r.on(entry) && r.tls == TcpTls::None && r.rule.matches(&info))
}

/// Whether any TCP router serves `entry`.
pub fn serves(table: &TcpTable, entry: &str) -> bool {
    table.routes.iter().any(|r| r.on(entry))
}

/// Whether a connection on `entry` must be peeked before routing: some router needs
/// the ClientHello, or the entry point terminates TLS for HTTP routers (a ClientHello
/// goes there, anything else to the TCP routers). Otherwise the first matching non-TLS
/// router takes it at once (server-first protocols work), as in Traefik.
pub fn needs_peek(table: &TcpTable, entry: &str, entry_tls: bool) -> bool {
    entry_tls || table.routes.iter().any(|r| r.on(entry) && r.tls != TcpTls::None)
}

/// Forward `client` through `route`: connect to a server (trying the next on a connect
/// failure: nothing was sent yet), send the PROXY header, copy both ways until both
/// sides closed, the termination delay after a half-close ran out, or the server was
/// retired and its drain deadline passed.
pub async fn forward<S>(
    route: &TcpRoute,
    mut client: S,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    connect_timeout: Duration,
    metrics: &TcpMetrics,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let name = route.name.as_str();
    if let Some(why) = &route.refused {
        metrics.connections.with_label_values(&[name, "refused"]).inc();
        tracing::debug!(router = name, reason = %why, "TCP router refuses connections");
        let _ = client.shutdown().await;
        return;
    }
    if !route.allow.is_empty() && !peer.is_some_and(|p| route.allow.iter().any(|n| n.contains(p.ip()))) {
        metrics.connections.with_label_values(&[name, "denied"]).inc();
        return;
    }
    let opened = route.open.fetch_add(1, Ordering::AcqRel) + 1;
    let _open = OpenGuard(&route.open);
    if route.max_conns > 0 && opened > route.max_conns {
        metrics.connections.with_label_values(&[name, "denied"]).inc();
        return;
    }
    let Some(pool) = route.target.as_ref().and_then(|t| t.pool()).cloned() else {
        metrics.connections.with_label_values(&[name, "no_upstream"]).inc();
        return;
    };
    let mut connected = None;
    for up in pool.candidates(Instant::now()) {
        let Some(addr) = up.addr else { continue };
        let now = Instant::now();
        // An open breaker admits nothing; the last-resort pass still connects (its
        // outcome is then not recorded).
        let admission = up.breaker.admit(now);
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                up.breaker.record(admission, Outcome::Success, Instant::now());
                metrics.attempts.with_label_values(&[&pool.name, "ok"]).inc();
                connected = Some((up, s));
                break;
            }
            Ok(Err(e)) => {
                up.breaker.record(admission, Outcome::Failure, Instant::now());
                metrics.attempts.with_label_values(&[&pool.name, "connect_error"]).inc();
                tracing::debug!(router = name, server = %addr, error = %e, "TCP connect failed; trying the next server");
            }
            Err(_) => {
                up.breaker.record(admission, Outcome::Failure, Instant::now());
                metrics.attempts.with_label_values(&[&pool.name, "timeout"]).inc();
                tracing::debug!(router = name, server = %addr, "TCP connect timed out; trying the next server");
            }
        }
    }
    let Some((up, mut server)) = connected else {
        metrics.connections.with_label_values(&[name, "no_upstream"]).inc();
        tracing::debug!(router = name, service = %pool.name, "no TCP server reachable; connection closed");
        return;
    };
    let _ = server.set_nodelay(true);
    if let (Some(v), Some(peer), Some(local)) = (pool.proxy_protocol, peer, local) {
        let header = proxy_header(v, peer, local);
        if server.write_all(&header).await.is_err() {
            metrics.connections.with_label_values(&[name, "no_upstream"]).inc();
            return;
        }
    }
    up.active.fetch_add(1, Ordering::AcqRel);
    up.connections.fetch_add(1, Ordering::Relaxed);
    let _active = OpenGuard(&up.active);
    metrics.open.with_label_values(&[name]).inc();
    let mut retired = up.retired.subscribe();
    let (bytes_in, bytes_out) = (AtomicU64::new(0), AtomicU64::new(0));
    let drained = tokio::select! {
        _ = splice(&mut client, &mut server, pool.termination_delay, &bytes_in, &bytes_out) => false,
        _ = drained(&mut retired) => true,
    };
    metrics.open.with_label_values(&[name]).dec();
    metrics.bytes.with_label_values(&[name, "in"]).inc_by(bytes_in.load(Ordering::Relaxed));
    metrics.bytes.with_label_values(&[name, "out"]).inc_by(bytes_out.load(Ordering::Relaxed));
    let outcome = if drained { "drained" } else { "ok" };
    metrics.connections.with_label_values(&[name, outcome]).inc();
    if drained {
        tracing::debug!(router = name, server = %up.key.address, "TCP connection closed: its server left the routes");
    }
}

struct OpenGuard<'a>(&'a AtomicI64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once the upstream was retired and its deadline passed.
async fn drained(rx: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let at = *rx.borrow_and_update();
        match at {
            Some(at) => {
                tokio::time::sleep_until(at.into()).await;
                return;
            }
            None => {
                if rx.changed().await.is_err() {
                    // The upstream is gone without a retirement: never drain.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// Copy both ways. When one direction ends (EOF), the other side's write half is shut
/// down and the other direction gets `delay` to finish. Bytes are counted into
/// `up_count` (client → server) and `down_count` as they are copied, so a cut
/// connection still reports them.
async fn splice<C, S>(
    client: &mut C,
    server: &mut S,
    delay: Option<Duration>,
    up_count: &AtomicU64,
    down_count: &AtomicU64,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    {
        let up = copy_counted(&mut cr, &mut sw, up_count);
        let down = copy_counted(&mut sr, &mut cw, down_count);
        tokio::pin!(up);
        tokio::pin!(down);
        let rest = tokio::select! {
            _ = &mut up => Either::Down,
            _ = &mut down => Either::Up,
        };
        let finish = async {
            match rest {
                Either::Down => (&mut down).await,
                Either::Up => (&mut up).await,
            }
        };
        match delay {
            Some(d) => {
                let _ = tokio::time::timeout(d, finish).await;
            }
            None => finish.await,
        }
    }
}

enum Either {
    Up,
    Down,
}

async fn copy_counted<R, W>(r: &mut R, w: &mut W, count: &AtomicU64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // Pingora's client stream buffers writes: flush each chunk.
                if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = w.shutdown().await;
}

/// A PROXY protocol header (HAProxy's spec, v1 text or v2 binary) for a TCP connection
/// from `src` to `dst`.
pub fn proxy_header(version: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V6(d)) => {
            (SocketAddr::V6(std::net::SocketAddrV6::new(s.ip().to_ipv6_mapped(), s.port(), 0, 0)), SocketAddr::V6(d))
        }
        (SocketAddr::V6(s), SocketAddr::V4(d)) => {
            (SocketAddr::V6(s), SocketAddr::V6(std::net::SocketAddrV6::new(d.ip().to_ipv6_mapped(), d.port(), 0, 0)))
        }
        other => other,
    };
    if version == 1 {
        let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        return format!("PROXY {fam} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes();
    }
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\n");
    out.push(0x21); // version 2, PROXY command
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let ip6 = |a: SocketAddr| match a.ip() {
                IpAddr::V6(v) => v.octets(),
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            };
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&ip6(s));
            out.extend_from_slice(&ip6(d));
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

// === health checks ===

/// One TCP health check of `up`: connect (to `spec.port` if set), send, expect.
pub async fn check(up: &TcpUpstream, spec: &TcpHealthSpec) -> Result<(), String> {
    let Some(mut addr) = up.addr else { return Err("no address".into()) };
    if let Some(p) = spec.port {
        addr.set_port(p);
    }
    let run = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        if let Some(send) = &spec.send {
            s.write_all(send.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        }
        if let Some(expect) = &spec.expect {
            let want = expect.as_bytes();
            let mut got = Vec::with_capacity(want.len());
            let mut buf = [0u8; 512];
            while got.len() < want.len() {
                let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if !got.starts_with(want) {
                return Err(format!("expected {expect:?}, got {:?}", String::from_utf8_lossy(&got)));
            }
        }
        Ok(())
    };
    tokio::time::timeout(spec.timeout, run).await.map_err(|_| format!("no answer within {:?}", spec.timeout))?
}

/// Run the TCP health checks of the table in force, until the task is dropped: each
/// checked server on its own timer (`interval` while healthy, `unhealthyInterval`
/// while not), `rise`/`fall` consecutive results to flip.
pub async fn run_health_checks(table: crate::TableHandle, rise: u32, fall: u32, metrics: TcpMetrics) {
    let mut next: HashMap<TcpKey, Instant> = HashMap::new();
    loop {
        let full = table.load_full();
        let t = &full.tcp;
        let now = Instant::now();
        let mut due = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for pool in &t.pools {
            let Some(spec) = &pool.health else { continue };
            for up in &pool.servers {
                seen.insert(up.key.clone());
                let at = next.entry(up.key.clone()).or_insert(now);
                if *at <= now {
                    let healthy = up.healthy.load(Ordering::Relaxed);
                    *at = now + if healthy { spec.interval } else { spec.unhealthy_interval };
                    due.push((up.clone(), spec.clone()));
                }
            }
        }
        next.retain(|k, _| seen.contains(k));
        for (up, spec) in due {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let result = check(&up, &spec).await;
                apply_health(&up, result.is_ok(), rise, fall, result.err().as_deref());
                metrics
                    .healthy
                    .with_label_values(&[&up.key.service, &up.key.address])
                    .set(i64::from(up.healthy.load(Ordering::Relaxed)));
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn apply_health(up: &TcpUpstream, passed: bool, rise: u32, fall: u32, error: Option<&str>) {
    let healthy = up.healthy.load(Ordering::Relaxed);
    if passed == healthy {
        up.health_streak.store(0, Ordering::Relaxed);
        return;
    }
    let streak = up.health_streak.fetch_add(1, Ordering::Relaxed) + 1;
    let need = if passed { rise } else { fall }.max(1);
    if streak >= need {
        up.healthy.store(passed, Ordering::Relaxed);
        up.health_streak.store(0, Ordering::Relaxed);
        if passed {
            tracing::info!(service = %up.key.service, server = %up.key.address, "TCP server healthy again");
        } else {
            tracing::warn!(service = %up.key.service, server = %up.key.address, error = error.unwrap_or(""), "TCP server failed its health checks; out of the routes");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
