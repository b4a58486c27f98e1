//! Compiled route table: the immutable snapshot the proxy reads once per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};

use crate::breaker::{panic_mode, Admission, Transition};
use crate::rule::{RequestInfo, Rule};
use crate::settings::ProxySettings;
use crate::upstream::Upstream;

/// Shared handle the control plane swaps whole tables into.
pub type TableHandle = Arc<ArcSwap<RouteTable>>;

/// One compiled route table.
#[derive(Debug)]
pub struct RouteTable {
    /// Monotonic generation number, for metrics and status.
    pub generation: u64,
    /// Routers, highest priority first.
    pub routes: Vec<Route>,
    /// Every load-balanced pool, by name (for status and health checks).
    pub pools: Vec<Arc<Pool>>,
    /// Entrypoint listen addresses by name, to apply routers' `entryPoints`.
    pub entrypoints: Vec<(String, SocketAddr)>,
    /// Proxy-wide settings in force.
    pub settings: ProxySettings,
    /// TCP routers and services.
    pub tcp: crate::tcp::TcpTable,
}

/// A compiled router.
#[derive(Debug)]
pub struct Route {
    /// Router name (metrics label).
    pub name: String,
    /// Compiled rule.
    pub rule: Rule,
    /// Priority; higher wins.
    pub priority: i64,
    /// Entrypoints it listens on; empty means all.
    pub entry_points: Vec<String>,
    /// Middlewares in order (a `chain` expanded in place).
    pub middlewares: Vec<Arc<Middleware>>,
    /// Whether a middleware of the route must see the response body.
    pub body_middlewares: bool,
    /// Whether a middleware of the route must see the request body.
    pub request_body_middlewares: bool,
    /// Where requests go.
    pub target: Target,
    /// Attempt cap (from a `retry` middleware or the proxy default).
    pub max_attempts: u32,
    /// Backoff before a retry (from a `retry` middleware's `initialInterval`).
    pub retry_interval: Duration,
    /// Features this router needs that are not applied, as `middleware auth: basicAuth`
    /// (its own options, its middlewares', and those of every service it reaches).
    pub unapplied: Vec<String>,
    /// Whether requests matching it are refused (503 naming the router and the
    /// features) because of `unapplied`, rather than served without them.
    pub refused: bool,
    /// Whether the router has `tls`: served only on TLS entry points (and one without
    /// it only on plain ones), Traefik's rule.
    pub tls: bool,
}

/// A compiled middleware.
#[derive(Debug)]
pub enum Middleware {
    /// Remove the first matching prefix from the path.
    StripPrefix {
        /// Prefixes to try, in order.
        prefixes: Vec<String>,
        /// Ensure the resulting path starts with `/`.
        force_slash: bool,
    },
    /// Prepend a prefix to the path.
    AddPrefix(String),
    /// Set or remove headers.
    Headers {
        /// Request headers to set (`None` removes).
        request: Vec<(HeaderName, Option<HeaderValue>)>,
        /// Response headers to set (`None` removes).
        response: Vec<(HeaderName, Option<HeaderValue>)>,
    },
    /// Redirect to another scheme.
    RedirectScheme {
        /// Target scheme.
        scheme: String,
        /// Target port, if not the scheme's default.
        port: Option<String>,
        /// Permanent (301/308) or temporary (302/307).
        permanent: bool,
    },
    /// A kind implemented in [`crate::middleware`].
    Custom(Box<dyn crate::middleware::Apply>),
}

/// A routing target: a pool, or a composition of targets.
#[derive(Debug)]
pub enum Target {
    /// A load-balanced set of servers.
    Pool(Arc<Pool>),
    /// Weighted round robin over child targets.
    Weighted {
        /// Service name.
        name: String,
        /// Children with weights.
        children: Vec<(Target, u32)>,
        /// Child order expanded by weight.
        order: Vec<usize>,
        /// Round-robin cursor.
        cursor: AtomicUsize,
    },
    /// Primary while it has an available upstream, else fallback.
    Failover {
        /// Service name.
        name: String,
        /// Preferred target.
        primary: Box<Target>,
        /// Used when the primary has nothing available.
        fallback: Box<Target>,
    },
}

/// Health check parameters of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Request path (with query).
    pub path: String,
    /// Method.
    pub method: String,
    /// Port override.
    pub port: Option<u16>,
    /// Host header.
    pub hostname: Option<String>,
    /// Expected status; any 2xx/3xx when `None`.
    pub status: Option<u16>,
    /// Interval between checks while healthy.
    pub interval: Duration,
    /// Interval between checks while unhealthy.
    pub unhealthy_interval: Duration,
    /// Per-check timeout.
    pub timeout: Duration,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Passes to become healthy.
    pub rise: u32,
    /// Failures to become unhealthy.
    pub fall: u32,
}

/// A load-balanced pool of upstreams (a Traefik `loadBalancer` service).
#[derive(Debug)]
pub struct Pool {
    /// Service name.
    pub name: String,
    /// Servers.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Server indices expanded by weight, interleaved.
    pub order: Vec<usize>,
    /// Round-robin cursor.
    pub cursor: AtomicUsize,
    /// Forward the client's Host header (Traefik default: true).
    pub pass_host_header: bool,
    /// Treat 403 as a gateway failure (opt-in, e.g. WARP egress).
    pub retry_on_403: bool,
    /// Active health check, if configured.
    pub health: Option<HealthSpec>,
    /// Requests in flight through this pool (retry budget denominator).
    pub active: AtomicI64,
    /// Requests in flight that are on a retry (retry budget numerator).
    pub active_retries: AtomicI64,
    /// Panic threshold, percent.
    pub panic_threshold_percent: u8,
    /// Upstreams with an address (fixed per compile: an address change is a new
    /// upstream); the panic-mode denominator.
    pub resolved: usize,
}

/// Result of asking a target for an upstream.
pub enum Pick {
    /// Use this upstream under this admission.
    Upstream {
        /// Chosen server.
        upstream: Arc<Upstream>,
        /// Breaker admission to complete with an outcome.
        admission: Admission,
        /// Pool it belongs to.
        pool: Arc<Pool>,
        /// A breaker transition the pick caused (open → half-open).
        transition: Option<Transition>,
    },
    /// Nothing usable: every candidate was tried, down, or rejected by its breaker.
    Unavailable {
        /// How many candidates a breaker rejected.
        breaker_rejected: usize,
    },
}

// === impl Pool ===

impl Pool {
    /// Upstreams available now (healthy, breaker admits).
    pub fn available(&self, now: Instant) -> usize {
        self.upstreams.iter().filter(|u| u.is_available(now)).count()
    }

    /// Whether the pool is in panic mode now. Only upstreams with an address count: one
    /// whose name does not resolve can take no traffic, in panic or not, and must not
    /// push the others into spreading load over unhealthy members.
    pub fn in_panic(&self, now: Instant) -> bool {
        panic_mode(self.available(now), self.resolved, self.panic_threshold_percent)
    }

    /// Pick a server not in `tried`, round robin by weight.
    pub fn pick(self: &Arc<Self>, tried: &[Arc<Upstream>], now: Instant) -> Pick {
        let n = self.order.len();
        if n == 0 {
            return Pick::Unavailable { breaker_rejected: 0 };
        }
        let panic = self.in_panic(now);
        // A retry continues from where the shared cursor stands instead of advancing
        // it, so failing upstreams do not shift the rotation for everyone else.
        let start = if tried.is_empty() {
            self.cursor.fetch_add(1, Ordering::Relaxed)
        } else {
            self.cursor.load(Ordering::Relaxed)
        };
        let mut rejected = 0;
        // Upstreams another node reported as tripped are used only when nothing else
        // is: a second pass admits them. One node's view never ejects them for all.
        let mut skipped_hinted = false;
        for pass in 0..2 {
            if pass == 1 && !skipped_hinted {
                break;
            }
            for i in 0..n {
                let up = &self.upstreams[self.order[(start + i) % n]];
                if tried.iter().any(|t| Arc::ptr_eq(t, up)) || up.addr.is_none() {
                    continue;
                }
                let hinted = up.is_hinted(now);
                if pass == 0 && hinted {
                    skipped_hinted = true;
                    continue;
                }
                if pass == 1 && !hinted {
                    continue;
                }
                if panic {
                    // Too few upstreams are left: spread over all of them rather than
                    // pile everything onto the survivors or refuse service.
                    return Pick::Upstream {
                        upstream: up.clone(),
                        admission: Admission::Allowed,
                        pool: self.clone(),
                        transition: None,
                    };
                }
                if !up.healthy.load(Ordering::Relaxed) {
                    continue;
                }
                match up.breaker.admit_observed(now) {
                    (Admission::Rejected, _) => rejected += 1,
                    (admission, transition) => {
                        return Pick::Upstream { upstream: up.clone(), admission, pool: self.clone(), transition };
                    }
                }
            }
        }
        Pick::Unavailable { breaker_rejected: rejected }
    }

    /// Whether an untried server could still be picked (without taking a probe slot).
    pub fn has_candidate(&self, tried: &[Arc<Upstream>], now: Instant) -> bool {
        let panic = self.in_panic(now);
        self.upstreams.iter().any(|u| {
            !tried.iter().any(|t| Arc::ptr_eq(t, u)) && (if panic { u.addr.is_some() } else { u.is_available(now) })
        })
    }
}

// === impl Target ===

impl Target {
    /// Pick an upstream, walking weighted and failover compositions.
    pub fn pick(&self, tried: &[Arc<Upstream>], now: Instant) -> Pick {
        match self {
            Target::Pool(p) => p.pick(tried, now),
            Target::Weighted { children, order, cursor, .. } => {
                if order.is_empty() {
                    return Pick::Unavailable { breaker_rejected: 0 };
                }
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                let mut rejected = 0;
                let mut seen = vec![false; children.len()];
                for i in 0..order.len() {
                    let c = order[(start + i) % order.len()];
                    if std::mem::replace(&mut seen[c], true) {
                        continue;
                    }
                    match children[c].0.pick(tried, now) {
                        Pick::Unavailable { breaker_rejected } => rejected += breaker_rejected,
                        p => return p,
                    }
                }
                Pick::Unavailable { breaker_rejected: rejected }
            }
            Target::Failover { primary, fallback, .. } => match primary.pick(tried, now) {
                Pick::Unavailable { breaker_rejected } => match fallback.pick(tried, now) {
                    Pick::Unavailable { breaker_rejected: r2 } => {
                        Pick::Unavailable { breaker_rejected: breaker_rejected + r2 }
                    }
                    p => p,
                },
                p => p,
            },
        }
    }

    /// Whether some untried upstream is available.
    pub fn has_candidate(&self, tried: &[Arc<Upstream>], now: Instant) -> bool {
        match self {
            Target::Pool(p) => p.has_candidate(tried, now),
            Target::Weighted { children, .. } => children.iter().any(|(c, _)| c.has_candidate(tried, now)),
            Target::Failover { primary, fallback, .. } => {
                primary.has_candidate(tried, now) || fallback.has_candidate(tried, now)
            }
        }
    }

    /// Name of the service this target was compiled from.
    pub fn name(&self) -> &str {
        match self {
            Target::Pool(p) => &p.name,
            Target::Weighted { name, .. } | Target::Failover { name, .. } => name,
        }
    }
}

// === impl RouteTable ===

impl RouteTable {
    /// An empty table (every request gets 404).
    pub fn empty(settings: ProxySettings) -> Self {
        Self {
            generation: 0,
            routes: Vec::new(),
            pools: Vec::new(),
            entrypoints: Vec::new(),
            settings,
            tcp: crate::tcp::TcpTable::default(),
        }
    }

    /// The highest-priority route matching the request on entrypoint `local`, among
    /// the routers with `tls` when the connection is TLS (`tls`), else those without.
    pub fn route(&self, req: &RequestInfo<'_>, local: Option<SocketAddr>, tls: bool) -> Option<(usize, &Route)> {
        let entrypoint = local.and_then(|l| {
            self.entrypoints
                .iter()
                .find(|(_, a)| a.port() == l.port() && (a.ip().is_unspecified() || a.ip() == l.ip()))
                .map(|(n, _)| n.as_str())
        });
        self.routes.iter().enumerate().find(|(_, r)| {
            let on_entrypoint =
                r.entry_points.is_empty() || entrypoint.is_none_or(|ep| r.entry_points.iter().any(|e| e == ep));
            on_entrypoint && r.tls == tls && r.rule.matches(req)
        })
    }
}

/// Expand weights into an interleaved visiting order (smooth weighted round robin),
/// so weight 3:1 gives `a a b a`, not `a a a b`.
pub fn weighted_order(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best);
    }
    order
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pool(n: usize) -> Arc<Pool> {
        let reg = crate::upstream::UpstreamRegistry::default();
        let cfg = Arc::new(crate::breaker::BreakerConfig::default());
        let budget = reg.budget("s", n, 50);
        let mut live = Vec::new();
        let transport = Arc::new(crate::transport::UpstreamTransport::system_default().unwrap());
        let upstreams: Vec<_> = (0..n)
            .map(|i| {
                let url = format!("http://127.0.0.1:{}", 9000 + i);
                let parsed = crate::upstream::parse_server_url(&url).unwrap();
                let key = crate::upstream::UpstreamKey { service: "s".into(), url };
                reg.upstream(
                    key,
                    &parsed,
                    Ok(format!("127.0.0.1:{}", 9000 + i).parse().unwrap()),
                    &transport,
                    &cfg,
                    &budget,
                    &mut live,
                )
            })
            .collect();
        Arc::new(Pool {
            name: "s".into(),
            order: weighted_order(&vec![1; n]),
            upstreams,
            cursor: AtomicUsize::new(0),
            pass_host_header: true,
            retry_on_403: false,
            health: None,
            active: AtomicI64::new(0),
            active_retries: AtomicI64::new(0),
            panic_threshold_percent: 50,
            resolved: n,
        })
    }

    fn picked(p: &Arc<Pool>, tried: &[Arc<Upstream>], now: Instant) -> Option<usize> {
        match p.pick(tried, now) {
            Pick::Upstream { upstream, admission, .. } => {
                upstream.breaker.release(admission);
                p.upstreams.iter().position(|u| Arc::ptr_eq(u, &upstream))
            }
            Pick::Unavailable { .. } => None,
        }
    }

    #[test]
    fn hinted_upstreams_are_used_only_when_nothing_else_is() {
        let p = pool(3);
        let now = Instant::now();
        p.upstreams[1].hint(now + Duration::from_secs(30));
        for _ in 0..9 {
            assert_ne!(picked(&p, &[], now), Some(1), "deprioritised while others are available");
        }
        // The others tried: the hinted one still serves (a hint never ejects).
        let tried = vec![p.upstreams[0].clone(), p.upstreams[2].clone()];
        assert_eq!(picked(&p, &tried, now), Some(1));
        // Expired hint: back in rotation.
        let later = now + Duration::from_secs(31);
        assert!((0..6).any(|_| picked(&p, &[], later) == Some(1)));
    }

    #[test]
    fn retries_skip_tried_upstreams() {
        let p = pool(2);
        let now = Instant::now();
        let first = picked(&p, &[], now).unwrap();
        let tried = vec![p.upstreams[first].clone()];
        assert_eq!(picked(&p, &tried, now), Some(1 - first));
        let all = p.upstreams.clone();
        assert_eq!(picked(&p, &all, now), None);
    }

    #[test]
    fn weighted_order_interleaves() {
        assert_eq!(weighted_order(&[1, 1, 1]), vec![0, 1, 2]);
        let o = weighted_order(&[3, 1]);
        assert_eq!(o.len(), 4);
        assert_eq!(o.iter().filter(|&&i| i == 0).count(), 3);
        assert_ne!(o, vec![0, 0, 0, 1], "heavy server should not get a burst");
        assert!(weighted_order(&[0, 0]).is_empty());
    }
}
