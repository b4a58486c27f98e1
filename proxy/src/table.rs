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
    /// Whether a pool behind the route is sticky (the request's cookies are read).
    pub sticky: bool,
    /// Whether a pool behind the route chooses by the client (`hrw`).
    pub keyed: bool,
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
    /// How the next server is chosen.
    pub strategy: Strategy,
    /// Each server's weight, by upstream index.
    pub weights: Vec<u32>,
    /// Cookie stickiness, when configured.
    pub sticky: Option<StickySpec>,
}

/// `loadBalancer.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Weighted round robin (Traefik's default).
    #[default]
    Wrr,
    /// Power of two choices: of two servers drawn at random, the one with fewer
    /// requests in flight.
    P2c,
    /// Highest random weight on the client IP: a client keeps its server while the set
    /// of servers is the same, on every node.
    Hrw,
    /// The server with the lowest recent time to response headers, scaled by its
    /// requests in flight and weight.
    LeastTime,
}

impl Strategy {
    /// Parse Traefik's name (`wrr`, `p2c`, `hrw`, `leasttime`).
    pub fn parse(s: &str) -> Option<Strategy> {
        match s.to_ascii_lowercase().as_str() {
            "wrr" => Some(Strategy::Wrr),
            "p2c" => Some(Strategy::P2c),
            "hrw" => Some(Strategy::Hrw),
            "leasttime" => Some(Strategy::LeastTime),
            _ => None,
        }
    }
}

/// `loadBalancer.sticky.cookie`, compiled. The cookie's value is the FNV-1a hash of the
/// server's URL in hex (as Traefik writes it), so it names the same server on every
/// node: stickiness survives the front door moving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickySpec {
    /// Cookie name.
    pub name: String,
    /// `Secure`.
    pub secure: bool,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `SameSite` value (`Lax`, `Strict`, `None`), when set.
    pub same_site: Option<String>,
    /// `Max-Age` in seconds (0: a session cookie; negative: expire at once).
    pub max_age: i64,
    /// `Path`.
    pub path: String,
    /// `Domain`, when set.
    pub domain: Option<String>,
    /// Each upstream's cookie value, by upstream index.
    pub values: Vec<String>,
}

/// FNV-1a, 64 bits: stable across processes, builds and nodes.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The sticky cookie value of a server URL.
pub fn sticky_value(url: &str) -> String {
    format!("{:x}", fnv1a(url.as_bytes()))
}

impl StickySpec {
    /// The `Set-Cookie` value naming upstream `index`.
    pub fn set_cookie(&self, index: usize) -> Option<String> {
        let value = self.values.get(index)?;
        let mut c = format!("{}={}; Path={}", self.name, value, self.path);
        if let Some(d) = &self.domain {
            c.push_str("; Domain=");
            c.push_str(d);
        }
        if self.max_age != 0 {
            c.push_str(&format!("; Max-Age={}", self.max_age.max(0)));
        }
        if self.http_only {
            c.push_str("; HttpOnly");
        }
        if self.secure {
            c.push_str("; Secure");
        }
        if let Some(s) = &self.same_site {
            c.push_str("; SameSite=");
            c.push_str(s);
        }
        Some(c)
    }

    /// The upstream index the request's `Cookie` header values name, if any (the hashed
    /// value, or the server URL itself as older Traefik versions wrote it).
    pub fn chosen(&self, cookies: &[&str]) -> Option<usize> {
        for header in cookies {
            for pair in header.split(';') {
                let Some((k, v)) = pair.trim().split_once('=') else { continue };
                if k != self.name {
                    continue;
                }
                let v = v.trim_matches('"');
                if let Some(i) = self.values.iter().position(|x| x == v) {
                    return Some(i);
                }
                let hashed = sticky_value(v);
                if let Some(i) = self.values.iter().position(|x| *x == hashed) {
                    return Some(i);
                }
            }
        }
        None
    }
}

/// What a request offers for choosing its server: its `Cookie` headers (stickiness) and
/// client IP (`hrw`).
#[derive(Debug, Default, Clone, Copy)]
pub struct PickKey<'a> {
    /// The request's `Cookie` header values.
    pub cookies: &'a [&'a str],
    /// The client's IP.
    pub client_ip: Option<std::net::IpAddr>,
}

fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
        self.pick_keyed(tried, now, &PickKey::default())
    }

    /// The position in `order` of upstream `index`.
    fn position_of(&self, index: usize) -> usize {
        self.order.iter().position(|i| *i == index).unwrap_or(0)
    }

    /// Where in `order` the strategy starts looking (the loop in
    /// [`Pool::pick_keyed`] walks on from there past unusable servers).
    fn start(&self, tried: &[Arc<Upstream>], key: &PickKey<'_>) -> usize {
        let n = self.order.len();
        let untried = |i: usize| !tried.iter().any(|t| Arc::ptr_eq(t, &self.upstreams[i]));
        match self.strategy {
            Strategy::Wrr => {
                // A retry continues from where the shared cursor stands instead of
                // advancing it, so failing upstreams do not shift the rotation for
                // everyone else.
                if tried.is_empty() {
                    self.cursor.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.cursor.load(Ordering::Relaxed)
                }
            }
            Strategy::P2c => {
                let r = mix64(self.cursor.fetch_add(1, Ordering::Relaxed) as u64);
                let (a, b) = ((r as usize) % n, ((r >> 32) as usize) % n);
                let load = |p: usize| {
                    let up = &self.upstreams[self.order[p]];
                    (!untried(self.order[p]), up.in_flight.load(Ordering::Relaxed))
                };
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
            Strategy::Hrw => {
                let seed = match key.client_ip {
                    Some(std::net::IpAddr::V4(v4)) => fnv1a(&v4.octets()),
                    Some(std::net::IpAddr::V6(v6)) => fnv1a(&v6.octets()),
                    None => 0,
                };
                let best = (0..self.upstreams.len()).filter(|i| untried(*i)).max_by(|x, y| {
                    let score = |i: usize| {
                        let h = mix64(seed ^ fnv1a(self.upstreams[i].key.url.as_bytes()));
                        // Weighted rendezvous: -w / ln(u), u in (0, 1).
                        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                        -f64::from(self.weights.get(i).copied().unwrap_or(1).max(1)) / u.ln()
                    };
                    score(*x).total_cmp(&score(*y))
                });
                best.map(|i| self.position_of(i)).unwrap_or(0)
            }
            Strategy::LeastTime => {
                let best = (0..self.upstreams.len()).filter(|i| untried(*i)).min_by_key(|i| {
                    let up = &self.upstreams[*i];
                    let t = up.latency_ewma_us.load(Ordering::Relaxed).max(1);
                    let in_flight = up.in_flight.load(Ordering::Relaxed).max(0) as u64 + 1;
                    t.saturating_mul(in_flight) / u64::from(self.weights.get(*i).copied().unwrap_or(1).max(1))
                });
                best.map(|i| self.position_of(i)).unwrap_or(0)
            }
        }
    }

    /// Pick a server not in `tried`: the sticky cookie's server when it is usable, else
    /// by the pool's strategy; unusable servers (unhealthy, breaker open, unresolved)
    /// are passed over in order, hinted ones used only when nothing else is.
    pub fn pick_keyed(self: &Arc<Self>, tried: &[Arc<Upstream>], now: Instant, key: &PickKey<'_>) -> Pick {
        let n = self.order.len();
        if n == 0 {
            return Pick::Unavailable { breaker_rejected: 0 };
        }
        let panic = self.in_panic(now);
        if let Some(sticky) = &self.sticky {
            if let Some(i) = sticky.chosen(key.cookies) {
                let up = &self.upstreams[i];
                let untried = !tried.iter().any(|t| Arc::ptr_eq(t, up));
                if untried && up.addr.is_some() && (panic || up.healthy.load(Ordering::Relaxed)) {
                    match up.breaker.admit_observed(now) {
                        (Admission::Rejected, _) => {}
                        (admission, transition) => {
                            return Pick::Upstream { upstream: up.clone(), admission, pool: self.clone(), transition };
                        }
                    }
                }
            }
        }
        let start = self.start(tried, key);
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
        self.pick_keyed(tried, now, &PickKey::default())
    }

    /// [`Target::pick`] with what the request offers for stickiness and `hrw`.
    pub fn pick_keyed(&self, tried: &[Arc<Upstream>], now: Instant, key: &PickKey<'_>) -> Pick {
        match self {
            Target::Pool(p) => p.pick_keyed(tried, now, key),
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
                    match children[c].0.pick_keyed(tried, now, key) {
                        Pick::Unavailable { breaker_rejected } => rejected += breaker_rejected,
                        p => return p,
                    }
                }
                Pick::Unavailable { breaker_rejected: rejected }
            }
            Target::Failover { primary, fallback, .. } => match primary.pick_keyed(tried, now, key) {
                Pick::Unavailable { breaker_rejected } => match fallback.pick_keyed(tried, now, key) {
                    Pick::Unavailable { breaker_rejected: r2 } => {
                        Pick::Unavailable { breaker_rejected: breaker_rejected + r2 }
                    }
                    p => p,
                },
                p => p,
            },
        }
    }

    /// Every pool under this target.
    pub fn pools(&self) -> Vec<&Arc<Pool>> {
        match self {
            Target::Pool(p) => vec![p],
            Target::Weighted { children, .. } => children.iter().flat_map(|(c, _)| c.pools()).collect(),
            Target::Failover { primary, fallback, .. } => {
                let mut v = primary.pools();
                v.extend(fallback.pools());
                v
            }
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
        pool_with(n, Strategy::Wrr)
    }

    pub(super) fn pool_with(n: usize, strategy: Strategy) -> Arc<Pool> {
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
            strategy,
            weights: vec![1; n],
            sticky: None,
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

#[cfg(test)]
mod strategy_tests {
    #![allow(clippy::unwrap_used)]
    use super::tests::pool_with;
    use super::*;

    fn chosen(p: &Arc<Pool>, key: &PickKey<'_>) -> usize {
        match p.pick_keyed(&[], Instant::now(), key) {
            Pick::Upstream { upstream, admission, .. } => {
                upstream.breaker.release(admission);
                p.upstreams.iter().position(|u| Arc::ptr_eq(u, &upstream)).unwrap()
            }
            Pick::Unavailable { .. } => panic!("nothing picked"),
        }
    }

    #[test]
    fn p2c_prefers_fewer_in_flight() {
        let p = pool_with(2, Strategy::P2c);
        p.upstreams[0].in_flight.store(5, Ordering::Relaxed);
        let picks: Vec<usize> = (0..400).map(|_| chosen(&p, &PickKey::default())).collect();
        let slow = picks.iter().filter(|i| **i == 0).count();
        // Only when both draws land on the busy one (a quarter of the time).
        assert!(slow > 50 && slow < 150, "{slow} of 400");
    }

    #[test]
    fn hrw_is_stable_per_client_and_spreads_clients() {
        let p = pool_with(4, Strategy::Hrw);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..64u8 {
            let ip = Some(std::net::IpAddr::from([10, 0, 0, i]));
            let key = PickKey { cookies: &[], client_ip: ip };
            let first = chosen(&p, &key);
            assert!((0..5).all(|_| chosen(&p, &key) == first));
            seen.insert(first);
        }
        assert_eq!(seen.len(), 4, "64 clients reach all 4 servers");
    }

    #[test]
    fn leasttime_prefers_the_fast_server() {
        let p = pool_with(3, Strategy::LeastTime);
        p.upstreams[0].record_latency(Duration::from_millis(300));
        p.upstreams[1].record_latency(Duration::from_millis(2));
        p.upstreams[2].record_latency(Duration::from_millis(50));
        assert_eq!(chosen(&p, &PickKey::default()), 1);
        p.upstreams[1].in_flight.store(100, Ordering::Relaxed);
        assert_eq!(chosen(&p, &PickKey::default()), 2, "in flight counts");
    }

    #[test]
    fn sticky_values_are_fnv1a_of_the_url() {
        // The FNV-1a test vector: "a" → af63dc4c8601ec8c.
        assert_eq!(sticky_value("a"), "af63dc4c8601ec8c");
        let spec = StickySpec {
            name: "srv".into(),
            secure: false,
            http_only: false,
            same_site: None,
            max_age: 0,
            path: "/".into(),
            domain: None,
            values: vec![sticky_value("http://a:1"), sticky_value("http://b:1")],
        };
        let v = format!("x=1; srv={}", sticky_value("http://b:1"));
        assert_eq!(spec.chosen(&[v.as_str()]), Some(1));
        assert_eq!(spec.chosen(&["srv=http://a:1"]), Some(0), "the raw URL, as older Traefik wrote it");
        assert_eq!(spec.chosen(&["srv=nothing"]), None);
        assert_eq!(spec.set_cookie(0).unwrap(), format!("srv={}; Path=/", sticky_value("http://a:1")));
    }
}
