//! Compile a validated Traefik dynamic configuration into a [`RouteTable`].
//!
//! Pure and non-blocking: host names in server URLs are looked up in an [`AddressMap`]
//! the caller resolved beforehand. The result is an immutable snapshot the proxy swaps
//! in whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::address::AddressMap;
use crate::breaker::BreakerConfig;
use crate::dynamic::{self, DynamicConfig, HttpService, TraefikDuration};
use crate::rule::Rule;
use crate::settings::ProxySettings;
use crate::table::{weighted_order, HealthSpec, Middleware, Pool, Route, RouteTable, StickySpec, Strategy, Target};
use crate::transport::{TransportFiles, UpstreamTransport};
use crate::upstream::{parse_server_url, UpstreamKey, UpstreamRegistry};

/// Traefik's default health check interval.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// Traefik's default health check timeout.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest server weight honoured (weights expand into a visiting order).
const MAX_WEIGHT: u32 = 100;

/// Why a configuration could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{object}: field \"{field}\": {message}", where_(origin, position))]
pub struct CompileError {
    /// File that defined the object (empty when unknown).
    pub origin: String,
    /// Object path, e.g. `http.routers.api`.
    pub object: String,
    /// Field, e.g. `rule`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Where the field is written in `origin`, when it can be found.
    pub position: Option<dynamic::Position>,
}

/// `file:line:column: `, `file: ` or nothing.
fn where_(origin: &str, position: &Option<dynamic::Position>) -> String {
    match (origin.is_empty(), position) {
        (true, _) => String::new(),
        (false, Some(p)) => format!("{origin}:{}:{}: ", p.line, p.column),
        (false, None) => format!("{origin}: "),
    }
}

fn bare(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

fn duration(d: &Option<TraefikDuration>, default: Duration) -> Duration {
    d.as_ref().and_then(|d| d.to_std().ok()).unwrap_or(default)
}

struct Compiler<'a> {
    cfg: &'a DynamicConfig,
    settings: &'a ProxySettings,
    registry: &'a UpstreamRegistry,
    addresses: &'a AddressMap,
    files: &'a TransportFiles,
    /// Compiled servers transports by name (`None`: it failed, the error is recorded).
    transports: HashMap<String, Option<Arc<UpstreamTransport>>>,
    pools: HashMap<String, Arc<Pool>>,
    breaker_overrides: HashMap<String, Arc<BreakerConfig>>,
    default_breaker: Arc<BreakerConfig>,
    live: Vec<UpstreamKey>,
    warnings: Vec<String>,
    errors: Vec<CompileError>,
    /// Object → features it sets that are not applied.
    unapplied: BTreeMap<String, BTreeSet<String>>,
}

impl Compiler<'_> {
    /// Record that `object` sets `feature`, which is not applied.
    fn not_applied(&mut self, object: &str, feature: &str) {
        if self.unapplied.entry(object.to_string()).or_default().insert(feature.to_string()) {
            self.warnings.push(format!("{object}: {feature} is not supported (parsed, not applied)"));
        }
    }

    fn target(&mut self, service: &str, depth: usize) -> Option<Target> {
        let name = bare(service);
        let object = format!("http.services.{name}");
        if depth > 16 {
            self.errors.push(CompileError {
                origin: String::new(),
                object,
                field: "service".into(),
                message: "services nest too deep (cycle?)".into(),
                position: None,
            });
            return None;
        }
        let Some(svc) = self.cfg.http.services.get(name) else {
            self.errors.push(CompileError {
                origin: String::new(),
                object,
                field: "service".into(),
                message: "is not defined".into(),
                position: None,
            });
            return None;
        };
        match svc {
            HttpService::LoadBalancer(lb) => {
                if let Some(p) = self.pools.get(name) {
                    return Some(Target::Pool(p.clone()));
                }
                let pool = self.pool(name, lb)?;
                self.pools.insert(name.to_string(), pool.clone());
                Some(Target::Pool(pool))
            }
            HttpService::Weighted(w) => {
                if w.sticky.is_some() {
                    self.not_applied(&object, "weighted.sticky");
                }
                let mut children = Vec::new();
                for ws in &w.services {
                    let weight = ws.weight.unwrap_or(1).min(MAX_WEIGHT);
                    children.push((self.target(&ws.name, depth + 1)?, weight));
                }
                let order = weighted_order(&children.iter().map(|(_, w)| *w).collect::<Vec<_>>());
                Some(Target::Weighted { name: name.to_string(), children, order, cursor: AtomicUsize::new(0) })
            }
            HttpService::Failover(f) => {
                let (Some(p), Some(fb)) = (&f.service, &f.fallback) else {
                    self.errors.push(CompileError {
                        origin: String::new(),
                        object,
                        field: "failover".into(),
                        message: "needs both service and fallback".into(),
                        position: None,
                    });
                    return None;
                };
                let primary = Box::new(self.target(p, depth + 1)?);
                let fallback = Box::new(self.target(fb, depth + 1)?);
                Some(Target::Failover { name: name.to_string(), primary, fallback })
            }
            HttpService::Mirroring(m) => {
                // Listed by `DynamicConfig::unsupported`; compiled to its main service so
                // that `allow_unsupported` can serve it.
                let main = m.service.clone().unwrap_or_default();
                self.target(&main, depth + 1)
            }
            HttpService::Other { kind, .. } => {
                self.errors.push(CompileError {
                    origin: String::new(),
                    object,
                    field: kind.clone(),
                    message: format!("service kind {kind} is not supported; routers cannot use it"),
                    position: None,
                });
                None
            }
        }
    }

    fn pool(&mut self, name: &str, lb: &dynamic::LoadBalancer) -> Option<Arc<Pool>> {
        let object = format!("http.services.{name}");
        let strategy = match lb.strategy.as_deref() {
            None => Strategy::Wrr,
            Some(s) => match Strategy::parse(s) {
                Some(st) => st,
                None => {
                    self.errors.push(CompileError {
                        origin: String::new(),
                        object: object.clone(),
                        field: "loadBalancer.strategy".into(),
                        message: format!("{s:?} is not a strategy (wrr, p2c, hrw, leasttime)"),
                        position: None,
                    });
                    return None;
                }
            },
        };
        let transport = self.transport(&object, lb.servers_transport.as_deref())?;
        for feature in &transport.unapplied {
            self.not_applied(&object, &format!("serversTransport {}: {feature}", transport.name));
        }
        let breaker = self.breaker_overrides.get(name).cloned().unwrap_or_else(|| self.default_breaker.clone());
        let budget = self.registry.budget(name, lb.servers.len(), self.settings.max_ejection_percent);
        let mut upstreams = Vec::new();
        let mut weights = Vec::new();
        for (i, server) in lb.servers.iter().enumerate() {
            let url = match parse_server_url(&server.url) {
                Ok(u) => u,
                Err(message) => {
                    self.errors.push(CompileError {
                        origin: String::new(),
                        object: object.clone(),
                        field: format!("loadBalancer.servers[{i}].url"),
                        message,
                        position: None,
                    });
                    continue;
                }
            };
            // A name without an address stays in the pool, unavailable, so the pool's
            // size, budget and status tell the truth; the resolver logs why.
            let addr = self.addresses.address_of(&url.host, url.port);
            let mut url = url;
            if server.preserve_path == Some(false) {
                url.path.clear();
            }
            let key = UpstreamKey { service: name.to_string(), url: server.url.clone() };
            upstreams.push(self.registry.upstream(key, &url, addr, &transport, &breaker, &budget, &mut self.live));
            weights.push(server.weight.unwrap_or(1).min(MAX_WEIGHT));
        }
        if let Some(mode) = lb.health_check.as_ref().and_then(|h| h.mode.as_deref()) {
            if !mode.eq_ignore_ascii_case("http") {
                // gRPC health checks (grpc.health.v1) are not implemented: a router must
                // not be served on an HTTP check that proves nothing about the service.
                self.not_applied(&object, &format!("healthCheck.mode {mode}"));
            }
        }
        let health = lb.health_check.as_ref().map(|h| {
            let interval = duration(&h.interval, DEFAULT_HEALTH_INTERVAL);
            HealthSpec {
                scheme: h.scheme.clone(),
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                method: h.method.clone().unwrap_or_else(|| "GET".into()).to_ascii_uppercase(),
                port: h.port,
                hostname: h.hostname.clone(),
                status: h.status,
                interval,
                unhealthy_interval: duration(&h.unhealthy_interval, interval),
                timeout: duration(&h.timeout, DEFAULT_HEALTH_TIMEOUT),
                headers: h.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                rise: h.rise.unwrap_or(self.settings.health_rise),
                fall: h.fall.unwrap_or(self.settings.health_fall),
            }
        });
        let resolved = upstreams.iter().filter(|u| u.addr.is_some()).count();
        let sticky = lb.sticky.as_ref().and_then(|s| s.cookie.as_ref()).map(|c| StickySpec {
            // Traefik derives the default name from the service; so do we (stable on
            // every node), with our own hash.
            name: c.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| {
                let h = crate::table::sticky_value(name);
                format!("_{}", &h[..h.len().min(6)])
            }),
            secure: c.secure.unwrap_or(false),
            http_only: c.http_only.unwrap_or(false),
            same_site: c.same_site.clone().filter(|v| !v.is_empty()).map(|v| {
                let mut chars = v.chars();
                chars
                    .next()
                    .map(|f| f.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase())
                    .unwrap_or_default()
            }),
            max_age: c.max_age.unwrap_or(0),
            path: c.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into()),
            domain: c.domain.clone().filter(|d| !d.is_empty()),
            values: upstreams
                .iter()
                .map(|u: &Arc<crate::upstream::Upstream>| crate::table::sticky_value(&u.key.url))
                .collect(),
        });
        if lb.sticky.as_ref().is_some_and(|s| s.cookie.is_none()) {
            self.not_applied(&object, "loadBalancer.sticky (without cookie)");
        }
        Some(Arc::new(Pool {
            strategy,
            weights: weights.clone(),
            sticky,
            resolved,
            name: name.to_string(),
            order: weighted_order(&weights),
            upstreams,
            cursor: AtomicUsize::new(0),
            pass_host_header: lb.pass_host_header.unwrap_or(true),
            retry_on_403: lb.retry_on_403,
            health,
            active: AtomicI64::new(0),
            active_retries: AtomicI64::new(0),
            panic_threshold_percent: self.settings.panic_threshold_percent,
        }))
    }

    /// The transport `reference` names (the default one when `None`), compiled once per
    /// table; an error is recorded against the transport and `None` returned.
    fn transport(&mut self, object: &str, reference: Option<&str>) -> Option<Arc<UpstreamTransport>> {
        // Validation resolved the reference; `name@internal` (Traefik's default) is ours.
        let name = match reference.map(|r| (bare(r), r.ends_with("@internal"))) {
            None | Some((_, true)) => "default",
            Some((name, false)) => name,
        };
        if let Some(t) = self.transports.get(name) {
            return t.clone();
        }
        let compiled = match (name, self.cfg.http.servers_transports.get(name)) {
            (_, Some(def)) => UpstreamTransport::compile(name, def, self.files),
            ("default", None) => UpstreamTransport::system_default(),
            (_, None) => {
                self.errors.push(CompileError {
                    origin: String::new(),
                    object: object.to_string(),
                    field: "serversTransport".into(),
                    message: format!("serversTransport {name:?} is not defined"),
                    position: None,
                });
                self.transports.insert(name.to_string(), None);
                return None;
            }
        };
        let out = match compiled {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                self.errors.push(CompileError {
                    origin: String::new(),
                    object: format!("http.serversTransports.{name}"),
                    field: e.field,
                    message: e.message,
                    position: None,
                });
                None
            }
        };
        self.transports.insert(name.to_string(), out.clone());
        out
    }

    /// Every service reachable from `service` (itself included), in visiting order;
    /// a mirroring service's mirrors only when `mirrors` is set (they get copies of the
    /// traffic, never the answer).
    fn services_under(&self, service: &str, mirrors: bool, out: &mut Vec<String>, depth: usize) {
        let name = bare(service);
        if depth > 16 || out.iter().any(|s| s == name) {
            return;
        }
        out.push(name.to_string());
        let mut next = |s: &str| self.services_under(s, mirrors, out, depth + 1);
        match self.cfg.http.services.get(name) {
            Some(HttpService::Weighted(w)) => w.services.iter().for_each(|ws| next(&ws.name)),
            Some(HttpService::Failover(f)) => f.service.iter().chain(&f.fallback).for_each(|s| next(s)),
            Some(HttpService::Mirroring(m)) => {
                m.service.iter().for_each(|s| next(s));
                if mirrors {
                    m.mirrors.iter().for_each(|x| next(&x.name));
                }
            }
            _ => {}
        }
    }

    /// What `router` needs that is not applied, as `middleware auth: basicAuth`.
    /// A router's middleware names in the order they run: each `chain` replaced by its
    /// members (recursively), as Traefik does. A chain nesting deeper than 10 (a cycle)
    /// is an error and stops there.
    fn flatten(&mut self, names: &[String], out: &mut Vec<String>, depth: usize) {
        for m in names {
            let name = bare(m);
            match self.cfg.http.middlewares.get(name) {
                Some(dynamic::Middleware::Other { kind, config }) if kind == "chain" => {
                    if depth >= 10 {
                        self.errors.push(CompileError {
                            origin: String::new(),
                            object: format!("http.middlewares.{name}"),
                            field: "chain.middlewares".into(),
                            message: "chains nest too deep (a chain that contains itself?)".into(),
                            position: None,
                        });
                        continue;
                    }
                    let members: Vec<String> = match config.get("middlewares").and_then(|v| v.as_array()) {
                        Some(list) => list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                        None => {
                            self.errors.push(CompileError {
                                origin: String::new(),
                                object: format!("http.middlewares.{name}"),
                                field: "chain.middlewares".into(),
                                message: "a chain needs a list of middleware names".into(),
                                position: None,
                            });
                            continue;
                        }
                    };
                    self.flatten(&members, out, depth + 1);
                }
                _ => out.push(m.clone()),
            }
        }
    }

    fn router_needs(&self, rname: &str, router: &dynamic::HttpRouter, flat: &[String]) -> Vec<String> {
        let mut objects = vec![format!("http.routers.{rname}")];
        objects.extend(flat.iter().map(|m| format!("http.middlewares.{}", bare(m))));
        let mut services = Vec::new();
        if let Some(s) = router.service.as_deref() {
            self.services_under(s, true, &mut services, 0);
        }
        objects.extend(services.iter().map(|s| format!("http.services.{s}")));
        let mut needs = Vec::new();
        for object in &objects {
            for feature in self.unapplied.get(object).into_iter().flatten() {
                needs.push(format!("{} {feature}", describe(object)));
            }
        }
        needs
    }

    /// Load-balancer services that answer requests sent to `service`.
    fn leaf_services(&self, service: &str) -> Vec<String> {
        let mut all = Vec::new();
        self.services_under(service, false, &mut all, 0);
        all.retain(|s| matches!(self.cfg.http.services.get(s), Some(HttpService::LoadBalancer(_))));
        all
    }
}

/// `http.middlewares.auth` → `middleware auth:`, for messages people read.
fn describe(object: &str) -> String {
    let mut parts = object.splitn(3, '.');
    let (_, kind, name) = (parts.next(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let kind = kind.strip_suffix('s').unwrap_or(kind);
    format!("{kind} {name}:")
}

/// Map a Traefik `circuitBreaker` middleware onto our breaker settings. Traefik trips a
/// whole service on an expression; we keep per-upstream breakers and take the ratio as
/// the failure-rate threshold and `fallbackDuration` as the base ejection time.
fn breaker_from_middleware(
    object: &str,
    cb: &dynamic::CircuitBreaker,
    base: &BreakerConfig,
    unapplied: &mut Vec<String>,
) -> Result<BreakerConfig, CompileError> {
    let err = |message: String| CompileError {
        origin: String::new(),
        object: object.to_string(),
        field: "circuitBreaker.expression".into(),
        message,
        position: None,
    };
    let expr = cb.expression.clone().unwrap_or_default();
    let mut out = base.clone();
    for term in expr.split("||") {
        let term = term.trim();
        let (lhs, rhs) =
            term.split_once('>').ok_or_else(|| err(format!("cannot read {term:?}: expected `Metric(...) > value`")))?;
        let threshold: f64 = rhs
            .trim()
            .trim_start_matches('=')
            .trim()
            .parse()
            .map_err(|_| err(format!("{:?} is not a number", rhs.trim())))?;
        let lhs = lhs.trim();
        if lhs.starts_with("NetworkErrorRatio(") || lhs.starts_with("ResponseCodeRatio(") {
            if !(0.0..=1.0).contains(&threshold) {
                return Err(err(format!("ratio {threshold} is outside 0..1")));
            }
            out.failure_rate_threshold = threshold;
        } else if lhs.starts_with("LatencyAtQuantileMS(") {
            unapplied.push(format!("circuitBreaker.expression term {term:?} (latency-based tripping)"));
        } else {
            return Err(err(format!(
                "unknown metric in {term:?} (expected NetworkErrorRatio, ResponseCodeRatio or LatencyAtQuantileMS)"
            )));
        }
    }
    if let Some(d) = cb.fallback_duration.as_ref().and_then(|d| d.to_std().ok()) {
        out.base_ejection_ms = d.as_millis() as u64;
        out.max_ejection_ms = out.max_ejection_ms.max(out.base_ejection_ms);
    }
    for (set, field) in [
        (cb.check_period.is_some(), "checkPeriod"),
        (cb.recovery_duration.is_some(), "recoveryDuration"),
        (cb.response_code.is_some(), "responseCode"),
    ] {
        if set {
            unapplied.push(format!("circuitBreaker.{field}"));
        }
    }
    Ok(out)
}

fn header_list(
    object: &str,
    field: &str,
    map: &BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, Option<HeaderValue>)>, CompileError> {
    map.iter()
        .map(|(k, v)| {
            let err = |m: String| CompileError {
                origin: String::new(),
                object: object.to_string(),
                field: format!("headers.{field}.{k}"),
                message: m,
                position: None,
            };
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| err(format!("invalid header name: {e}")))?;
            // Traefik: an empty value removes the header.
            let value = if v.is_empty() {
                None
            } else {
                Some(HeaderValue::from_str(v).map_err(|e| err(format!("invalid header value: {e}")))?)
            };
            Ok((name, value))
        })
        .collect()
}

/// Compile `cfg` (already validated) into a route table numbered `generation`, taking
/// the addresses of host names from `addresses` (see [`crate::address::host_names`]).
/// Returns the table and warnings about parts that are not applied. Servers transports
/// that name files need [`compile_with_files`].
pub fn compile(
    cfg: &DynamicConfig,
    settings: &ProxySettings,
    entrypoints: &[(String, SocketAddr)],
    registry: &UpstreamRegistry,
    addresses: &AddressMap,
    generation: u64,
) -> Result<(RouteTable, Vec<String>), Vec<CompileError>> {
    compile_with_files(cfg, settings, entrypoints, registry, addresses, &TransportFiles::default(), generation)
}

/// [`compile`], with the contents of the files servers transports name (`rootCAs`,
/// client certificates and keys), loaded by the caller.
pub fn compile_with_files(
    cfg: &DynamicConfig,
    settings: &ProxySettings,
    entrypoints: &[(String, SocketAddr)],
    registry: &UpstreamRegistry,
    addresses: &AddressMap,
    files: &TransportFiles,
    generation: u64,
) -> Result<(RouteTable, Vec<String>), Vec<CompileError>> {
    let mut c = Compiler {
        cfg,
        settings,
        registry,
        addresses,
        files,
        transports: HashMap::new(),
        pools: HashMap::new(),
        breaker_overrides: HashMap::new(),
        default_breaker: Arc::new(settings.breaker.clone()),
        live: Vec::new(),
        warnings: Vec::new(),
        errors: Vec::new(),
        unapplied: BTreeMap::new(),
    };
    for item in cfg.unsupported_items() {
        c.unapplied.entry(item.object).or_default().insert(item.feature);
    }
    // Each router's middlewares with chains expanded, in the order they run.
    let mut flat_middlewares: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (rname, router) in &cfg.http.routers {
        let mut flat = Vec::new();
        c.flatten(&router.middlewares, &mut flat, 0);
        flat_middlewares.insert(rname.as_str(), flat);
    }
    // Breaker overrides from circuitBreaker middlewares, per reachable service.
    for (rname, router) in &cfg.http.routers {
        for m in &flat_middlewares[rname.as_str()] {
            let mname = bare(m);
            if let Some(dynamic::Middleware::CircuitBreaker(cb)) = cfg.http.middlewares.get(mname) {
                let object = format!("http.middlewares.{mname}");
                let mut notes = Vec::new();
                let breaker = breaker_from_middleware(&object, cb, &settings.breaker, &mut notes);
                for note in notes {
                    c.not_applied(&object, &note);
                }
                match breaker {
                    Ok(b) => {
                        for leaf in c.leaf_services(router.service.as_deref().unwrap_or("")) {
                            if let Some(prev) = c.breaker_overrides.get(&leaf) {
                                if **prev != b {
                                    c.warnings.push(format!("http.routers.{rname}: service {leaf} already has a different circuitBreaker from another router; the first one applies"));
                                }
                                continue;
                            }
                            c.breaker_overrides.insert(leaf, Arc::new(b.clone()));
                        }
                    }
                    Err(e) => c.errors.push(e),
                }
            }
        }
    }
    let known_eps: Vec<&str> = entrypoints.iter().map(|(n, _)| n.as_str()).collect();
    let mut routes = Vec::new();
    for (rname, router) in &cfg.http.routers {
        let object = format!("http.routers.{rname}");
        let rule_text = router.rule.clone().unwrap_or_default();
        let rule = match Rule::parse(&rule_text) {
            Ok(r) => r,
            Err(e) => {
                c.errors.push(CompileError {
                    origin: String::new(),
                    object: object.clone(),
                    field: "rule".into(),
                    message: format!("{e} in {rule_text:?}"),
                    position: None,
                });
                continue;
            }
        };
        let unknown: Vec<&String> = router.entry_points.iter().filter(|e| !known_eps.contains(&e.as_str())).collect();
        if !router.entry_points.is_empty() && unknown.len() == router.entry_points.len() {
            c.warnings.push(format!(
                "{object}: entryPoints {:?} are not configured here (configured: {}); the router receives no traffic",
                router.entry_points,
                known_eps.join(", ")
            ));
        }
        let mut middlewares = Vec::new();
        let mut max_attempts = settings.max_attempts;
        let mut retry_interval = Duration::ZERO;
        let flat = &flat_middlewares[rname.as_str()];
        for m in flat {
            let mname = bare(m);
            let mobject = format!("http.middlewares.{mname}");
            let Some(mw) = cfg.http.middlewares.get(mname) else {
                if !m.ends_with("@internal") {
                    c.errors.push(CompileError {
                        origin: String::new(),
                        object: object.clone(),
                        field: "middlewares".into(),
                        message: format!("middleware {m:?} is not defined"),
                        position: None,
                    });
                }
                continue;
            };
            match mw {
                dynamic::Middleware::StripPrefix(s) => middlewares.push(Arc::new(Middleware::StripPrefix {
                    prefixes: s.prefixes.clone(),
                    force_slash: s.force_slash.unwrap_or(false),
                })),
                dynamic::Middleware::AddPrefix(a) => {
                    middlewares.push(Arc::new(Middleware::AddPrefix(a.prefix.clone().unwrap_or_default())))
                }
                dynamic::Middleware::Headers(h) => {
                    match (
                        header_list(&mobject, "customRequestHeaders", &h.custom_request_headers),
                        header_list(&mobject, "customResponseHeaders", &h.custom_response_headers),
                    ) {
                        (Ok(request), Ok(response)) if crate::middleware::headers::is_plain(h) => {
                            middlewares.push(Arc::new(Middleware::Headers { request, response }))
                        }
                        // Security or CORS options: the full middleware.
                        (Ok(request), Ok(response)) => match crate::middleware::headers::build(h, request, response) {
                            Ok(applied) => middlewares.push(Arc::new(Middleware::Custom(Box::new(applied)))),
                            Err(e) => c.errors.push(CompileError {
                                origin: String::new(),
                                object: mobject.clone(),
                                field: e.field,
                                message: e.message,
                                position: None,
                            }),
                        },
                        (Err(e), _) | (_, Err(e)) => c.errors.push(e),
                    }
                }
                dynamic::Middleware::RedirectScheme(r) => middlewares.push(Arc::new(Middleware::RedirectScheme {
                    scheme: r.scheme.clone().unwrap_or_else(|| "https".into()),
                    port: r.port.clone(),
                    permanent: r.permanent.unwrap_or(false),
                })),
                dynamic::Middleware::Retry(r) => {
                    max_attempts = r.attempts.clamp(1, 10);
                    retry_interval = duration(&r.initial_interval, Duration::ZERO);
                }
                // Applied to the services' breakers above.
                dynamic::Middleware::CircuitBreaker(_) => {}
                dynamic::Middleware::Other { kind, config } => {
                    let cx = crate::middleware::BuildCx {
                        name: mname,
                        settings,
                        files: c.files,
                        cfg,
                        addresses: c.addresses,
                    };
                    match crate::middleware::build(kind, config, &cx) {
                        Some(Ok(applied)) => middlewares.push(Arc::new(Middleware::Custom(applied))),
                        Some(Err(e)) => c.errors.push(CompileError {
                            origin: String::new(),
                            object: mobject.clone(),
                            field: e.field,
                            message: e.message,
                            position: None,
                        }),
                        // Not applied: listed by `DynamicConfig::unsupported`, so the
                        // router is refused (or served without it when allowed).
                        None => {}
                    }
                }
            }
        }
        let body_middlewares = middlewares.iter().any(|m| matches!(&**m, Middleware::Custom(a) if a.wants_body()));
        let request_body_middlewares =
            middlewares.iter().any(|m| matches!(&**m, Middleware::Custom(a) if a.wants_request_body()));
        let Some(service) = router.service.as_deref() else {
            c.errors.push(CompileError {
                origin: String::new(),
                object,
                field: "service".into(),
                message: "is missing".into(),
                position: None,
            });
            continue;
        };
        let Some(target) = c.target(service, 0) else { continue };
        let unapplied = c.router_needs(rname, router, flat);
        let priority = match router.priority {
            Some(p) if p != 0 => p,
            _ => rule.default_priority() as i64,
        };
        routes.push(Route {
            name: rname.clone(),
            rule,
            priority,
            entry_points: router.entry_points.clone(),
            sticky: target.pools().iter().any(|p| p.sticky.is_some()),
            keyed: target.pools().iter().any(|p| p.strategy == Strategy::Hrw),
            middlewares,
            body_middlewares,
            request_body_middlewares,
            target,
            max_attempts,
            retry_interval,
            refused: !unapplied.is_empty() && !settings.allow_unsupported,
            unapplied,
            tls: router.tls.is_some(),
        });
    }
    let tcp_entrypoints: Vec<String> = entrypoints.iter().map(|(n, _)| n.clone()).collect();
    let tcp = match crate::tcp::compile(
        cfg,
        &tcp_entrypoints,
        &registry.tcp,
        addresses,
        &c.default_breaker,
        settings.max_ejection_percent,
    ) {
        Ok((t, w)) => {
            c.warnings.extend(w);
            Some(t)
        }
        Err(errs) => {
            for (object, field, message) in errs {
                c.errors.push(CompileError { origin: String::new(), object, field, message, position: None });
            }
            None
        }
    };
    // TLS options, stores and certificate entries (file contents are checked when the
    // control plane builds the TLS snapshot).
    for e in crate::tls::check(cfg) {
        c.errors.push(CompileError {
            origin: String::new(),
            object: e.object,
            field: e.field,
            message: e.message,
            position: None,
        });
    }
    if !c.errors.is_empty() {
        let mut errors = c.errors;
        for e in &mut errors {
            e.origin = cfg.origin_of(&e.object).unwrap_or_default().to_string();
            e.position = cfg.position(&e.object, &e.field).map(|(_, p)| p);
        }
        return Err(errors);
    }
    // Highest priority first; ties by name for a stable order.
    routes.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
    let mut pools: Vec<Arc<Pool>> = c.pools.into_values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let table = RouteTable {
        generation,
        routes,
        pools,
        entrypoints: entrypoints.to_vec(),
        settings: settings.clone(),
        tcp: tcp.unwrap_or_default(),
    };
    let _ = c.live;
    Ok((table, c.warnings))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::breaker::{Admission, Outcome};
    use crate::dynamic::{parse_str, Format};
    use std::time::Instant;

    fn cfg(yaml: &str) -> DynamicConfig {
        parse_str(yaml, Format::Yaml, "t.yaml").unwrap()
    }

    const TWO: &str = "http:\n  routers:\n    short:\n      rule: \"PathPrefix(`/`)\"\n      service: s\n    long:\n      rule: \"PathPrefix(`/api`) && Method(`GET`)\"\n      service: s\n      middlewares: [retry3, cb]\n  middlewares:\n    retry3:\n      retry:\n        attempts: 5\n        initialInterval: 10ms\n    cb:\n      circuitBreaker:\n        expression: \"NetworkErrorRatio() > 0.25\"\n        fallbackDuration: 2s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"http://127.0.0.1:9001\"\n          - url: \"http://127.0.0.1:9002/base\"\n            weight: 3\n";

    #[test]
    fn routes_sorted_by_priority_and_middlewares_mapped() {
        let reg = UpstreamRegistry::default();
        let (t, warnings) = compile(&cfg(TWO), &ProxySettings::default(), &[], &reg, &AddressMap::new(), 7).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(t.generation, 7);
        assert_eq!(t.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["long", "short"]);
        assert_eq!(t.routes[0].priority, "PathPrefix(`/api`) && Method(`GET`)".len() as i64);
        assert_eq!((t.routes[0].max_attempts, t.routes[0].retry_interval), (5, Duration::from_millis(10)));
        assert_eq!(t.routes[1].max_attempts, ProxySettings::default().max_attempts);
        let pool = &t.pools[0];
        assert_eq!(pool.order.len(), 4, "weights 1 and 3");
        assert_eq!(pool.upstreams[1].path_prefix, "/base");
        let b = pool.upstreams[0].breaker.config();
        assert_eq!((b.failure_rate_threshold, b.base_ejection_ms), (0.25, 2000));
    }

    #[test]
    fn breaker_state_survives_recompile_for_unchanged_upstreams() {
        let reg = UpstreamRegistry::default();
        let mut settings = ProxySettings::default();
        settings.breaker.consecutive_failures = 2;
        let yaml = "http:\n  routers:\n    r:\n      rule: \"Host(`a`)\"\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"http://127.0.0.1:9001\"\n          - url: \"http://127.0.0.1:9002\"\n          - url: \"http://127.0.0.1:9003\"\n          - url: \"http://127.0.0.1:9004\"\n";
        let (t1, _) = compile(&cfg(yaml), &settings, &[], &reg, &AddressMap::new(), 1).unwrap();
        let now = Instant::now();
        let up = &t1.pools[0].upstreams[0];
        for _ in 0..2 {
            let a = up.breaker.admit(now);
            let _ = up.breaker.record(a, Outcome::Failure, now);
        }
        assert_eq!(up.breaker.state(now), crate::BreakerState::Open);
        // Same upstream plus an unrelated router: the state is kept.
        let yaml2 = format!(
            "{yaml}    other:\n      loadBalancer:\n        servers:\n          - url: \"http://127.0.0.1:9009\"\n"
        );
        let yaml2 =
            yaml2.replace("  services:", "    o:\n      rule: \"Host(`o`)\"\n      service: other\n  services:");
        let (t2, _) = compile(&cfg(&yaml2), &settings, &[], &reg, &AddressMap::new(), 2).unwrap();
        let s = t2.pools.iter().find(|p| p.name == "s").unwrap();
        assert!(Arc::ptr_eq(&s.upstreams[0], up));
        assert_eq!(s.upstreams[0].breaker.state(now), crate::BreakerState::Open);
        assert!(matches!(s.upstreams[0].breaker.admit(now), Admission::Rejected));
        // A changed breaker setting gives fresh state.
        settings.breaker.consecutive_failures = 9;
        let (t3, _) = compile(&cfg(yaml), &settings, &[], &reg, &AddressMap::new(), 3).unwrap();
        assert!(!Arc::ptr_eq(&t3.pools[0].upstreams[0], up));
        assert_eq!(t3.pools[0].upstreams[0].breaker.state(now), crate::BreakerState::Closed);
    }

    #[test]
    fn bad_rule_and_bad_circuit_breaker_are_errors_naming_the_object() {
        let reg = UpstreamRegistry::default();
        let bad = TWO.replace("PathPrefix(`/api`) && Method(`GET`)", "PathPrefix(`/api`) && Methd(`GET`)");
        let errs = compile(&cfg(&bad), &ProxySettings::default(), &[], &reg, &AddressMap::new(), 1).unwrap_err();
        assert_eq!(errs[0].object, "http.routers.long");
        assert_eq!(errs[0].field, "rule");
        assert!(errs[0].message.starts_with("column 23: "), "{}", errs[0].message);
        let bad = TWO.replace("NetworkErrorRatio() > 0.25", "Bogus() > 1");
        let errs = compile(&cfg(&bad), &ProxySettings::default(), &[], &reg, &AddressMap::new(), 1).unwrap_err();
        assert_eq!(
            (errs[0].object.as_str(), errs[0].field.as_str()),
            ("http.middlewares.cb", "circuitBreaker.expression")
        );
    }

    #[test]
    fn unknown_entrypoint_and_unsupported_parts_warn() {
        let reg = UpstreamRegistry::default();
        let yaml = "http:\n  routers:\n    r:\n      rule: \"Host(`a`)\"\n      entryPoints: [websecure]\n      service: s\n      tls: {}\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"https://127.0.0.1:9001\"\n";
        let eps = vec![("web".to_string(), "127.0.0.1:80".parse().unwrap())];
        let (_, w) = compile(&cfg(yaml), &ProxySettings::default(), &eps, &reg, &AddressMap::new(), 1).unwrap();
        assert!(w.iter().any(|w| w.contains("entryPoints [\"websecure\"] are not configured")), "{w:?}");
        assert!(
            !w.iter().any(|w| w.contains("tls") || w.contains("TLS")),
            "routers with tls and https upstreams are served: {w:?}"
        );
    }

    #[test]
    fn routers_needing_unapplied_features_are_refused_unless_allowed() {
        let reg = UpstreamRegistry::default();
        // `guarded` uses a grpcWeb middleware; `sticky` reaches a load balancer with a
        // passive health check through a weighted service; `plain` needs nothing missing.
        let yaml = "http:\n  routers:\n    guarded:\n      rule: \"Path(`/g`)\"\n      service: s\n      middlewares: [auth, strip]\n    sticky:\n      rule: \"Path(`/w`)\"\n      service: w\n    plain:\n      rule: \"Path(`/p`)\"\n      service: s\n  middlewares:\n    auth:\n      grpcWeb:\n        allowOrigins: [\"*\"]\n    strip:\n      stripPrefix:\n        prefixes: [\"/g\"]\n  services:\n    w:\n      weighted:\n        services:\n          - name: s\n          - name: t\n    s:\n      loadBalancer:\n        servers:\n          - url: \"http://127.0.0.1:9001\"\n    t:\n      loadBalancer:\n        passiveHealthCheck:\n          failureWindow: 10s\n        servers:\n          - url: \"http://127.0.0.1:9002\"\n";
        let (t, _) = compile(&cfg(yaml), &ProxySettings::default(), &[], &reg, &AddressMap::new(), 1).unwrap();
        let route = |name: &str| t.routes.iter().find(|r| r.name == name).unwrap();
        assert_eq!(route("guarded").unapplied, ["middleware auth: grpcWeb"]);
        assert!(route("guarded").refused);
        assert_eq!(route("sticky").unapplied, ["service t: loadBalancer.passiveHealthCheck"]);
        assert!(route("sticky").refused);
        assert!(route("plain").unapplied.is_empty() && !route("plain").refused);

        let allow = ProxySettings { allow_unsupported: true, ..ProxySettings::default() };
        let (t, _) = compile(&cfg(yaml), &allow, &[], &reg, &AddressMap::new(), 2).unwrap();
        let guarded = t.routes.iter().find(|r| r.name == "guarded").unwrap();
        assert_eq!((guarded.refused, guarded.unapplied.len()), (false, 1));
    }

    #[test]
    fn host_names_take_the_given_address_and_fail_closed_without_one() {
        use crate::address::HostPort;
        let reg = UpstreamRegistry::default();
        let yaml = "http:\n  routers:\n    r:\n      rule: \"Host(`a`)\"\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"http://app.test:8080\"\n          - url: \"http://gone.test\"\n";
        let mut addrs = AddressMap::new();
        addrs.insert(HostPort::new("app.test", 8080), Ok("127.0.0.2:8080".parse().unwrap()));
        let (t1, _) = compile(&cfg(yaml), &ProxySettings::default(), &[], &reg, &addrs, 1).unwrap();
        let now = Instant::now();
        let [app, gone] = &t1.pools[0].upstreams[..] else { panic!("two upstreams expected") };
        assert_eq!(app.addr, Some("127.0.0.2:8080".parse().unwrap()));
        assert!(app.is_available(now));
        // Never resolved: kept, unavailable, with the reason.
        assert_eq!((gone.addr, gone.address_error.as_deref()), (None, Some("gone.test:80: not resolved yet")));
        assert!(!gone.is_available(now));
        assert_eq!(t1.pools[0].available(now), 1);

        // Same address: the same upstream object (state kept); a new one: fresh state.
        let (t2, _) = compile(&cfg(yaml), &ProxySettings::default(), &[], &reg, &addrs, 2).unwrap();
        assert!(Arc::ptr_eq(&t2.pools[0].upstreams[0], app));
        addrs.insert(HostPort::new("app.test", 8080), Ok("127.0.0.3:8080".parse().unwrap()));
        addrs.insert(HostPort::new("gone.test", 80), Err("gone.test:80: no such host".into()));
        let (t3, _) = compile(&cfg(yaml), &ProxySettings::default(), &[], &reg, &addrs, 3).unwrap();
        assert!(!Arc::ptr_eq(&t3.pools[0].upstreams[0], app));
        assert_eq!(t3.pools[0].upstreams[0].addr, Some("127.0.0.3:8080".parse().unwrap()));
        assert_eq!(t3.pools[0].upstreams[1].address_error.as_deref(), Some("gone.test:80: no such host"));
    }

    #[test]
    fn unresolved_upstreams_do_not_push_a_pool_into_panic() {
        use crate::address::HostPort;
        let reg = UpstreamRegistry::default();
        let yaml = "http:\n  routers:\n    r:\n      rule: \"Host(`a`)\"\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"http://app.test:8080\"\n          - url: \"http://gone.test\"\n          - url: \"http://gone2.test\"\n";
        let mut addrs = AddressMap::new();
        addrs.insert(HostPort::new("app.test", 8080), Ok("127.0.0.2:8080".parse().unwrap()));
        let (t, _) = compile(&cfg(yaml), &ProxySettings::default(), &[], &reg, &addrs, 1).unwrap();
        let now = Instant::now();
        // 1 of 3 available is under the 50 % threshold, but only resolved upstreams count:
        // 1 of 1, so no panic (panic would spread load over members that cannot take it).
        assert_eq!(t.pools[0].available(now), 1);
        assert!(!t.pools[0].in_panic(now));
    }

    #[test]
    fn strategy_and_sticky_reach_the_pool() {
        let yaml = "http:\n  routers:\n    r:\n      rule: \"PathPrefix(`/`)\"\n      service: s\n  services:\n    s:\n      loadBalancer:\n        strategy: p2c\n        sticky:\n          cookie: {}\n        servers:\n          - url: \"http://127.0.0.1:9001\"\n";
        let reg = UpstreamRegistry::default();
        let (t, _) = compile(&cfg(yaml), &ProxySettings::default(), &[], &reg, &AddressMap::new(), 1).unwrap();
        let pool = t.pools.iter().find(|p| p.name == "s").unwrap();
        assert_eq!(pool.strategy, Strategy::P2c);
        let sticky = pool.sticky.as_ref().unwrap();
        assert!(sticky.name.starts_with('_') && sticky.path == "/", "{sticky:?}");
        assert!(t.routes[0].sticky && !t.routes[0].refused);
    }

    /// A router's middlewares as a tree: leaves are `addPrefix` middlewares, inner nodes
    /// are `chain`s of their children.
    #[derive(Debug, Clone)]
    enum MwTree {
        Leaf,
        Chain(Vec<MwTree>),
    }

    fn mw_tree() -> impl proptest::strategy::Strategy<Value = MwTree> {
        use proptest::prelude::*;
        let leaf = Just(MwTree::Leaf);
        leaf.prop_recursive(3, 24, 4, |inner| prop::collection::vec(inner, 1..4).prop_map(MwTree::Chain))
    }

    /// Name the tree's middlewares into `yaml` (leaves `m<n>` with prefix `/p<n>`, chains
    /// `c<n>`), returning the node's name; leaves are pushed to `order` depth first.
    fn emit(t: &MwTree, yaml: &mut String, n: &mut usize, order: &mut Vec<String>) -> String {
        *n += 1;
        match t {
            MwTree::Leaf => {
                let name = format!("m{n}");
                yaml.push_str(&format!("    {name}:\n      addPrefix:\n        prefix: /p{n}\n"));
                order.push(format!("/p{n}"));
                name
            }
            MwTree::Chain(children) => {
                let name = format!("c{n}");
                let names: Vec<String> = children.iter().map(|c| emit(c, yaml, n, order)).collect();
                yaml.push_str(&format!("    {name}:\n      chain:\n        middlewares: [{}]\n", names.join(", ")));
                name
            }
        }
    }

    proptest::proptest! {
        /// Traefik's documented order: a router's middlewares run in the order listed,
        /// and a chain's members run in its order, where the chain is named.
        #[test]
        fn chains_expand_in_traefiks_order(top in proptest::collection::vec(mw_tree(), 1..4)) {
            let (mut mws, mut n, mut order) = (String::new(), 0, Vec::new());
            let names: Vec<String> = top.iter().map(|t| emit(t, &mut mws, &mut n, &mut order)).collect();
            let yaml = format!(
                "http:\n  routers:\n    r:\n      rule: \"PathPrefix(`/`)\"\n      service: s\n      middlewares: [{}]\n  middlewares:\n{mws}  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"http://127.0.0.1:9001\"\n",
                names.join(", ")
            );
            let reg = UpstreamRegistry::default();
            let (t, _) = compile(&cfg(&yaml), &ProxySettings::default(), &[], &reg, &AddressMap::new(), 1).unwrap();
            let got: Vec<String> = t.routes[0]
                .middlewares
                .iter()
                .map(|m| match &**m {
                    Middleware::AddPrefix(p) => p.clone(),
                    other => format!("{other:?}"),
                })
                .collect();
            proptest::prop_assert_eq!(got, order);
        }
    }
}
