//! UDP forwarding: Traefik's `udp` routers and services. Each client address gets a
//! session (its own socket to one server) that ends after an idle timeout; replies come
//! back from the entry point's address. A UDP router has no rule: it takes every
//! datagram of its entry points (one router per entry point, as in Traefik).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::net::UdpSocket;

use crate::address::AddressMap;
use crate::dynamic::{DynamicConfig, UdpService};
use crate::table::weighted_order;
use crate::tcp::split_host_port;

/// Traefik's default UDP session timeout (`entryPoints.<name>.udp.timeout`).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// Sessions one entry point keeps at once; datagrams from further clients are dropped
/// (counted) until some expire.
pub const MAX_SESSIONS: usize = 10_000;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_535;

/// Shared handle the plane swaps UDP tables into.
pub type UdpHandle = Arc<ArcSwap<UdpTable>>;

/// What is compiled from the `udp` section.
#[derive(Debug, Default)]
pub struct UdpTable {
    /// Routers by name order.
    pub routes: Vec<UdpRoute>,
}

/// A UDP router.
#[derive(Debug)]
pub struct UdpRoute {
    /// Name.
    pub name: String,
    /// Entry points; empty means every UDP entry point.
    pub entry_points: Vec<String>,
    /// Service.
    pub target: Arc<UdpTarget>,
}

/// A UDP service.
#[derive(Debug)]
pub enum UdpTarget {
    /// `loadBalancer`: servers round-robin per new session.
    Pool {
        /// Service name.
        name: String,
        /// Servers (`Err`: why it has no address; skipped).
        servers: Vec<(String, Result<SocketAddr, String>)>,
        /// Next server.
        next: AtomicUsize,
    },
    /// `weighted`.
    Weighted {
        /// Service name.
        name: String,
        /// Children.
        children: Vec<Arc<UdpTarget>>,
        /// Smooth weighted order of child indexes.
        order: Vec<usize>,
        /// Next position.
        next: AtomicUsize,
    },
}

impl UdpTarget {
    /// The server a new session goes to.
    pub fn pick(&self) -> Option<SocketAddr> {
        match self {
            UdpTarget::Pool { servers, next, .. } => {
                let n = servers.len();
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..n).find_map(|i| servers[(start + i) % n].1.as_ref().ok().copied())
            }
            UdpTarget::Weighted { children, order, next, .. } => {
                let n = order.len();
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..n).find_map(|i| children.get(order[(start + i) % n]).and_then(|c| c.pick()))
            }
        }
    }

    /// Service name.
    pub fn name(&self) -> &str {
        match self {
            UdpTarget::Pool { name, .. } | UdpTarget::Weighted { name, .. } => name,
        }
    }
}

/// Compile the `udp` section (validated) for the UDP entry points `entrypoints`.
/// Errors are `(object, field, message)`.
pub fn compile(
    cfg: &DynamicConfig,
    entrypoints: &[String],
    addresses: &AddressMap,
) -> Result<(UdpTable, Vec<String>), Vec<crate::tcp::SectionError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut targets: HashMap<String, Arc<UdpTarget>> = HashMap::new();
    let mut routes = Vec::new();
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    for (name, router) in &cfg.udp.routers {
        let object = format!("udp.routers.{name}");
        let Some(service) = router.service.as_deref() else {
            errors.push((object, "service".into(), "a UDP router needs a service".into()));
            continue;
        };
        let eps: Vec<&String> = if router.entry_points.is_empty() {
            entrypoints.iter().collect()
        } else {
            router.entry_points.iter().collect()
        };
        for ep in eps {
            if !entrypoints.contains(ep) {
                warnings.push(format!("{object}: entry point {ep:?} is not a UDP entry point of this node"));
                continue;
            }
            if let Some(other) = claimed.insert(ep.clone(), name.clone()) {
                errors.push((
                    object.clone(),
                    "entryPoints".into(),
                    format!("UDP entry point {ep:?} already has router {other:?} (a UDP router takes every datagram; one per entry point)"),
                ));
            }
        }
        let service = service.split('@').next().unwrap_or(service);
        match udp_target(service, cfg, addresses, &mut targets, &mut errors, 0) {
            Some(target) => {
                routes.push(UdpRoute { name: name.clone(), entry_points: router.entry_points.clone(), target })
            }
            None => errors.push((object, "service".into(), format!("UDP service {service:?} is not defined"))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((UdpTable { routes }, warnings))
}

fn udp_target(
    name: &str,
    cfg: &DynamicConfig,
    addresses: &AddressMap,
    targets: &mut HashMap<String, Arc<UdpTarget>>,
    errors: &mut Vec<(String, String, String)>,
    depth: usize,
) -> Option<Arc<UdpTarget>> {
    if let Some(t) = targets.get(name) {
        return Some(t.clone());
    }
    let object = format!("udp.services.{name}");
    let t = match cfg.udp.services.get(name)? {
        UdpService::LoadBalancer(lb) => {
            let mut servers = Vec::new();
            for (i, s) in lb.servers.iter().enumerate() {
                match split_host_port(&s.address) {
                    Some((h, p)) => servers.push((s.address.clone(), addresses.address_of(h, p))),
                    None => errors.push((
                        object.clone(),
                        format!("servers[{i}].address"),
                        format!("{:?} is not host:port", s.address),
                    )),
                }
            }
            Arc::new(UdpTarget::Pool { name: name.to_string(), servers, next: AtomicUsize::new(0) })
        }
        UdpService::Weighted(w) => {
            if depth > 16 {
                return None;
            }
            let mut children = Vec::new();
            let mut weights = Vec::new();
            for child in &w.services {
                let cname = child.name.split('@').next().unwrap_or(&child.name);
                if let Some(t) = udp_target(cname, cfg, addresses, targets, errors, depth + 1) {
                    let weight = child.weight.unwrap_or(1);
                    if weight > 0 {
                        children.push(t);
                        weights.push(weight);
                    }
                }
            }
            let order = weighted_order(&weights);
            Arc::new(UdpTarget::Weighted { name: name.to_string(), children, order, next: AtomicUsize::new(0) })
        }
    };
    targets.insert(name.to_string(), t.clone());
    Some(t)
}

/// UDP metrics.
#[derive(Clone)]
pub struct UdpMetrics {
    /// Open sessions by router.
    pub sessions: IntGaugeVec,
    /// Sessions started by router.
    pub sessions_started: IntCounterVec,
    /// Datagrams by router and direction (`in` from clients, `out` to clients).
    pub datagrams: IntCounterVec,
    /// Bytes by router and direction.
    pub bytes: IntCounterVec,
    /// Datagrams dropped, by entry point and reason (`no_route`, `no_upstream`,
    /// `sessions_full`).
    pub dropped: IntCounterVec,
}

impl UdpMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered();
        registry.register(Box::new(m.sessions.clone()))?;
        registry.register(Box::new(m.sessions_started.clone()))?;
        registry.register(Box::new(m.datagrams.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        Ok(m)
    }

    /// Not registered (tests).
    pub fn unregistered() -> Self {
        #[allow(clippy::expect_used)]
        let c = |n: &str, h: &str, l: &[&str]| IntCounterVec::new(Opts::new(n, h), l).expect("valid metric");
        #[allow(clippy::expect_used)]
        let g = |n: &str, h: &str, l: &[&str]| IntGaugeVec::new(Opts::new(n, h), l).expect("valid metric");
        Self {
            sessions: g("constellation_udp_sessions", "Open UDP sessions by router.", &["router"]),
            sessions_started: c("constellation_udp_sessions_total", "UDP sessions started by router.", &["router"]),
            datagrams: c(
                "constellation_udp_datagrams_total",
                "UDP datagrams by router and direction.",
                &["router", "direction"],
            ),
            bytes: c("constellation_udp_bytes_total", "UDP bytes by router and direction.", &["router", "direction"]),
            dropped: c(
                "constellation_udp_dropped_total",
                "UDP datagrams dropped by entry point and reason.",
                &["entrypoint", "reason"],
            ),
        }
    }
}

struct Session {
    socket: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
}

fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Serve the UDP entry point `entry` on `socket` until the task is dropped.
pub async fn serve(socket: UdpSocket, entry: String, table: UdpHandle, idle: Duration, metrics: UdpMetrics) {
    let socket = Arc::new(socket);
    let sessions: Arc<Mutex<HashMap<SocketAddr, Session>>> = Arc::default();
    let epoch = Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on some systems; the socket stays usable.
                tracing::debug!(entrypoint = %entry, error = %e, "UDP receive failed");
                continue;
            }
        };
        let existing = {
            let map = sessions.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&client).map(|s| (s.socket.clone(), s.last.clone()))
        };
        let t = table.load();
        let Some(route) = t.routes.iter().find(|r| r.entry_points.is_empty() || r.entry_points.contains(&entry)) else {
            metrics.dropped.with_label_values(&[&entry, "no_route"]).inc();
            continue;
        };
        let router = route.name.clone();
        let (upstream, last) = match existing {
            Some(s) => s,
            None => {
                if sessions.lock().unwrap_or_else(|p| p.into_inner()).len() >= MAX_SESSIONS {
                    metrics.dropped.with_label_values(&[&entry, "sessions_full"]).inc();
                    continue;
                }
                let Some(server) = route.target.pick() else {
                    metrics.dropped.with_label_values(&[&entry, "no_upstream"]).inc();
                    continue;
                };
                let bind: SocketAddr = if server.is_ipv4() {
                    SocketAddr::from(([0, 0, 0, 0], 0))
                } else {
                    SocketAddr::from(([0u16; 8], 0))
                };
                let up = match UdpSocket::bind(bind).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(entrypoint = %entry, error = %e, "cannot open a UDP socket for a session");
                        metrics.dropped.with_label_values(&[&entry, "no_upstream"]).inc();
                        continue;
                    }
                };
                if up.connect(server).await.is_err() {
                    metrics.dropped.with_label_values(&[&entry, "no_upstream"]).inc();
                    continue;
                }
                let up = Arc::new(up);
                let last = Arc::new(AtomicU64::new(millis_since(epoch)));
                sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(client, Session { socket: up.clone(), last: last.clone() });
                metrics.sessions.with_label_values(&[&router]).inc();
                metrics.sessions_started.with_label_values(&[&router]).inc();
                tokio::spawn(replies(
                    up.clone(),
                    socket.clone(),
                    client,
                    last.clone(),
                    epoch,
                    idle,
                    sessions.clone(),
                    router.clone(),
                    metrics.clone(),
                ));
                (up, last)
            }
        };
        last.store(millis_since(epoch), Ordering::Relaxed);
        if upstream.send(&buf[..n]).await.is_ok() {
            metrics.datagrams.with_label_values(&[&router, "in"]).inc();
            metrics.bytes.with_label_values(&[&router, "in"]).inc_by(n as u64);
        }
    }
}

/// Relay a session's replies to its client until it has been idle for `idle`.
#[allow(clippy::too_many_arguments)]
async fn replies(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    epoch: Instant,
    idle: Duration,
    sessions: Arc<Mutex<HashMap<SocketAddr, Session>>>,
    router: String,
    metrics: UdpMetrics,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let quiet = Duration::from_millis(millis_since(epoch).saturating_sub(last.load(Ordering::Relaxed)));
        if quiet >= idle {
            break;
        }
        // A refused datagram (ICMP) or a timeout: look at the clock again.
        if let Ok(Ok(n)) = tokio::time::timeout(idle - quiet, upstream.recv(&mut buf)).await {
            last.store(millis_since(epoch), Ordering::Relaxed);
            if listener.send_to(&buf[..n], client).await.is_ok() {
                metrics.datagrams.with_label_values(&[&router, "out"]).inc();
                metrics.bytes.with_label_values(&[&router, "out"]).inc_by(n as u64);
            }
        }
    }
    let mut map = sessions.lock().unwrap_or_else(|p| p.into_inner());
    if map.get(&client).is_some_and(|s| Arc::ptr_eq(&s.socket, &upstream)) {
        map.remove(&client);
    }
    drop(map);
    metrics.sessions.with_label_values(&[&router]).dec();
    tracing::debug!(router = %router, client = %client, "UDP session expired");
}
