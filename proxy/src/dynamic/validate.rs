//! Semantic checks of a (merged) dynamic configuration: references, servers, durations,
//! cycles, rule syntax (parsed by `crate::rule`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{
    parse_duration, DynamicConfig, HttpService, Middleware, Position, TcpService, TraefikDuration, UdpService,
};

/// One problem found by [`DynamicConfig::validate`].
///
/// Displays as `routes.yaml: http.routers.api: field "service": service "missing" is not
/// defined (defined: a, b)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The file that defined the object (or the origin given to `validate`).
    pub origin: String,
    /// The object, e.g. `http.routers.api`.
    pub object: String,
    /// The field within the object, e.g. `service` or `servers[0].url`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Where the field is written in the origin, when it can be found.
    pub position: Option<Position>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        write!(f, ": {}: field {:?}: {}", self.object, self.field, self.message)
    }
}

impl std::error::Error for ValidationError {}

impl DynamicConfig {
    /// Check references (router → service/middlewares, weighted/failover/mirroring →
    /// services, load balancer → serversTransport; `name@provider` is resolved as
    /// `name`, `name@internal` is accepted unchecked), that every load balancer has
    /// servers with absolute `http`/`https` URLs (TCP/UDP: `host:port` addresses), that
    /// there is no service reference cycle, that durations parse, that every HTTP/TCP
    /// router has a rule and a service, and the required settings of the supported
    /// middlewares, and that every rule parses.
    ///
    /// Each error names the file that defined the object, or `origin` when none was
    /// recorded. All problems are returned, in a deterministic order.
    pub fn validate(&self, origin: &str) -> Result<(), Vec<ValidationError>> {
        let mut c = Checker { config: self, origin, errors: Vec::new() };
        c.http_routers();
        c.http_services();
        c.http_middlewares();
        c.tcp();
        c.udp();
        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(c.errors)
        }
    }
}

/// A reference to a named object, with Traefik's `@provider` suffix handled.
enum Ref<'a> {
    /// Resolved in this configuration under this name.
    Local(&'a str),
    /// `@internal`: Traefik built-ins (`api`, `noop`, `default`…), not checked.
    Internal,
}

fn resolve(reference: &str) -> Ref<'_> {
    match reference.rsplit_once('@') {
        Some((_, "internal")) => Ref::Internal,
        Some((name, _provider)) => Ref::Local(name),
        None => Ref::Local(reference),
    }
}

/// `a, b, c` (at most 10 names), or `none`.
fn defined_list<V>(map: &BTreeMap<String, V>) -> String {
    const SHOWN: usize = 10;
    if map.is_empty() {
        return "none".to_string();
    }
    let mut names: Vec<&str> = map.keys().map(String::as_str).take(SHOWN).collect();
    if map.len() > SHOWN {
        names.push("…");
        return format!("{} ({} in all)", names.join(", "), map.len());
    }
    names.join(", ")
}

/// Why `url` is not an absolute `http`/`https`/`h2c` URL with a host, if it is not.
pub(super) fn check_server_url(url: &str) -> Result<(), String> {
    let not_absolute = || format!("{url:?} is not an absolute http://, https:// or h2c:// URL with a host");
    let uri: http::Uri = url.parse().map_err(|_| not_absolute())?;
    let scheme = uri.scheme_str().ok_or_else(not_absolute)?;
    if !["http", "https", "h2c"].iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
        return Err(format!("{url:?} has scheme {scheme:?}; only http, https and h2c are supported"));
    }
    let authority = uri.authority().ok_or_else(not_absolute)?;
    let host = authority.host();
    if host.is_empty() {
        return Err(not_absolute());
    }
    // `http::Uri` does not check the port: it must be empty or a number up to 65535.
    let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    if let Some(port) = host_port.strip_prefix(host).and_then(|p| p.strip_prefix(':')) {
        if port.parse::<u16>().is_err() {
            return Err(format!("{url:?} has an invalid port {port:?}"));
        }
    }
    Ok(())
}

/// Why `address` is not a `host:port` address, if it is not.
pub(super) fn check_address(address: &str) -> Result<(), String> {
    let bad = || format!("{address:?} is not a host:port address");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// Reference cycles in a graph of name → (field, target) edges, each as the list of
/// its names starting from the smallest, reported once.
fn find_cycles<'a>(graph: &BTreeMap<&'a str, Vec<(String, &'a str)>>) -> Vec<Vec<&'a str>> {
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<(String, &'a str)>>,
        state: &mut BTreeMap<&'a str, bool>, // false: on the stack, true: done
        stack: &mut Vec<&'a str>,
        found: &mut BTreeSet<Vec<&'a str>>,
    ) {
        state.insert(node, false);
        stack.push(node);
        for (_, target) in graph.get(node).into_iter().flatten() {
            match state.get(target) {
                None => visit(target, graph, state, stack, found),
                Some(false) => {
                    if let Some(start) = stack.iter().position(|n| n == target) {
                        let mut cycle = stack[start..].to_vec();
                        if let Some(min) = (0..cycle.len()).min_by_key(|&i| cycle[i]) {
                            cycle.rotate_left(min);
                        }
                        found.insert(cycle);
                    }
                }
                Some(true) => {}
            }
        }
        stack.pop();
        state.insert(node, true);
    }
    let mut state = BTreeMap::new();
    let mut found = BTreeSet::new();
    for node in graph.keys() {
        if !state.contains_key(node) {
            visit(node, graph, &mut state, &mut Vec::new(), &mut found);
        }
    }
    found.into_iter().collect()
}

struct Checker<'a> {
    config: &'a DynamicConfig,
    origin: &'a str,
    errors: Vec<ValidationError>,
}

impl Checker<'_> {
    fn push(&mut self, object: &str, field: &str, message: impl Into<String>) {
        let origin = self.config.origin_of(object).unwrap_or(self.origin);
        self.errors.push(ValidationError {
            origin: origin.to_string(),
            object: object.to_string(),
            field: field.to_string(),
            message: message.into(),
            position: self.config.position(object, field).map(|(_, p)| p),
        });
    }

    /// Check that `reference` names an entry of `map`; returns the local name if so.
    fn reference<'r, V>(
        &mut self,
        object: &str,
        field: &str,
        what: &str,
        reference: &'r str,
        map: &BTreeMap<String, V>,
    ) -> Option<&'r str> {
        match resolve(reference) {
            Ref::Internal => None,
            Ref::Local(name) if map.contains_key(name) => Some(name),
            Ref::Local(_) => {
                self.push(
                    object,
                    field,
                    format!("{what} {reference:?} is not defined (defined: {})", defined_list(map)),
                );
                None
            }
        }
    }

    /// A required reference: missing or empty is an error too.
    fn required_reference<'r, V>(
        &mut self,
        object: &str,
        field: &str,
        what: &str,
        reference: Option<&'r str>,
        missing: &str,
        map: &BTreeMap<String, V>,
    ) -> Option<&'r str> {
        match reference.filter(|r| !r.trim().is_empty()) {
            None => {
                self.push(object, field, missing);
                None
            }
            Some(r) => self.reference(object, field, what, r, map),
        }
    }

    fn duration(&mut self, object: &str, field: &str, value: Option<&TraefikDuration>) {
        if let Some(Err(message)) = value.map(TraefikDuration::to_std) {
            self.push(object, field, message);
        }
    }

    fn not_empty(&mut self, object: &str, field: &str, value: Option<&str>) {
        if value.is_none_or(|v| v.trim().is_empty()) {
            self.push(object, field, "must be set and not empty");
        }
    }

    fn http_routers(&mut self) {
        let config = self.config;
        let http = &config.http;
        for (name, router) in &http.routers {
            let object = format!("http.routers.{name}");
            match router.rule.as_deref() {
                Some(rule) if !rule.trim().is_empty() => {
                    if let Err(e) = crate::rule::Rule::parse(rule) {
                        self.push(&object, "rule", format!("{e} in {rule:?}"));
                        // Point into the rule, when it is written on one line.
                        if let Some(p) = self.errors.last_mut().and_then(|e| e.position.as_mut()) {
                            p.column += e.column.saturating_sub(1);
                        }
                    }
                }
                _ => self.push(&object, "rule", "router has no rule"),
            }
            self.required_reference(
                &object,
                "service",
                "service",
                router.service.as_deref(),
                "router has no service",
                &http.services,
            );
            for (i, m) in router.middlewares.iter().enumerate() {
                self.reference(&object, &format!("middlewares[{i}]"), "middleware", m, &http.middlewares);
            }
            if router.priority.is_some_and(|p| p < 0) {
                self.push(&object, "priority", "must not be negative");
            }
        }
    }

    fn http_services(&mut self) {
        let config = self.config;
        let http = &config.http;
        let mut graph: BTreeMap<&str, Vec<(String, &str)>> = BTreeMap::new();
        for (name, service) in &http.services {
            let object = format!("http.services.{name}");
            let mut edges_found = Vec::new();
            match service {
                HttpService::LoadBalancer(lb) => {
                    if lb.servers.is_empty() && !lb.provided {
                        self.push(&object, "servers", "loadBalancer has no servers");
                    }
                    for (i, server) in lb.servers.iter().enumerate() {
                        if let Err(message) = check_server_url(&server.url) {
                            self.push(&object, &format!("servers[{i}].url"), message);
                        }
                    }
                    if let Some(hc) = &lb.health_check {
                        self.duration(&object, "healthCheck.interval", hc.interval.as_ref());
                        self.duration(&object, "healthCheck.timeout", hc.timeout.as_ref());
                        self.duration(&object, "healthCheck.unhealthyInterval", hc.unhealthy_interval.as_ref());
                        if hc.rise == Some(0) {
                            self.push(&object, "healthCheck.rise", "must be at least 1");
                        }
                        if hc.fall == Some(0) {
                            self.push(&object, "healthCheck.fall", "must be at least 1");
                        }
                    }
                    if let Some(flush) = lb.response_forwarding.as_ref().and_then(|r| r.flush_interval.as_ref()) {
                        // A negative flush interval is meaningful (flush after each write).
                        let text = flush.as_str();
                        if let Err(message) = parse_duration(text.strip_prefix('-').unwrap_or(text)) {
                            self.push(&object, "responseForwarding.flushInterval", message);
                        }
                    }
                    if let Some(transport) = &lb.servers_transport {
                        self.reference(
                            &object,
                            "serversTransport",
                            "serversTransport",
                            transport,
                            &http.servers_transports,
                        );
                    }
                }
                HttpService::Weighted(w) => {
                    if w.services.is_empty() {
                        self.push(&object, "services", "weighted service has no services");
                    }
                    for (i, child) in w.services.iter().enumerate() {
                        let field = format!("services[{i}].name");
                        if let Some(target) = self.reference(&object, &field, "service", &child.name, &http.services) {
                            edges_found.push((field, target));
                        }
                    }
                }
                HttpService::Failover(f) => {
                    for (field, reference, missing) in [
                        ("service", f.service.as_deref(), "failover has no service"),
                        ("fallback", f.fallback.as_deref(), "failover has no fallback"),
                    ] {
                        if let Some(target) =
                            self.required_reference(&object, field, "service", reference, missing, &http.services)
                        {
                            edges_found.push((field.to_string(), target));
                        }
                    }
                }
                HttpService::Mirroring(m) => {
                    if let Some(target) = self.required_reference(
                        &object,
                        "service",
                        "service",
                        m.service.as_deref(),
                        "mirroring has no service",
                        &http.services,
                    ) {
                        edges_found.push(("service".to_string(), target));
                    }
                    for (i, mirror) in m.mirrors.iter().enumerate() {
                        let field = format!("mirrors[{i}].name");
                        if let Some(target) = self.reference(&object, &field, "service", &mirror.name, &http.services) {
                            edges_found.push((field, target));
                        }
                        if mirror.percent.is_some_and(|p| p > 100) {
                            self.push(&object, &format!("mirrors[{i}].percent"), "must be between 0 and 100");
                        }
                    }
                }
                HttpService::Other { .. } => {}
            }
            graph.insert(name.as_str(), edges_found);
        }
        self.cycles("http.services", &graph);
    }

    fn cycles(&mut self, prefix: &str, graph: &BTreeMap<&str, Vec<(String, &str)>>) {
        for cycle in find_cycles(graph) {
            let (Some(first), Some(second)) = (cycle.first(), cycle.get(1).or(cycle.first())) else {
                continue;
            };
            let field = graph
                .get(first)
                .and_then(|edges| edges.iter().find(|(_, t)| t == second))
                .map_or_else(|| "services".to_string(), |(f, _)| f.clone());
            let mut path: Vec<&str> = cycle.clone();
            path.push(first);
            self.push(&format!("{prefix}.{first}"), &field, format!("service reference cycle: {}", path.join(" -> ")));
        }
    }

    fn http_middlewares(&mut self) {
        let config = self.config;
        for (name, middleware) in &config.http.middlewares {
            let object = format!("http.middlewares.{name}");
            match middleware {
                Middleware::AddPrefix(a) => {
                    self.not_empty(&object, "addPrefix.prefix", a.prefix.as_deref());
                }
                Middleware::RedirectScheme(r) => {
                    self.not_empty(&object, "redirectScheme.scheme", r.scheme.as_deref());
                    if let Some(port) = &r.port {
                        if port.parse::<u16>().map_or(true, |p| p == 0) {
                            self.push(&object, "redirectScheme.port", format!("{port:?} is not a port number"));
                        }
                    }
                }
                Middleware::Retry(r) => {
                    if r.attempts == 0 {
                        self.push(&object, "retry.attempts", "must be at least 1");
                    }
                    self.duration(&object, "retry.initialInterval", r.initial_interval.as_ref());
                    self.duration(&object, "retry.timeout", r.timeout.as_ref());
                }
                Middleware::CircuitBreaker(cb) => {
                    self.not_empty(&object, "circuitBreaker.expression", cb.expression.as_deref());
                    self.duration(&object, "circuitBreaker.checkPeriod", cb.check_period.as_ref());
                    self.duration(&object, "circuitBreaker.fallbackDuration", cb.fallback_duration.as_ref());
                    self.duration(&object, "circuitBreaker.recoveryDuration", cb.recovery_duration.as_ref());
                    if cb.response_code.is_some_and(|c| !(100..=599).contains(&c)) {
                        self.push(&object, "circuitBreaker.responseCode", "must be an HTTP status code (100-599)");
                    }
                }
                Middleware::StripPrefix(_) | Middleware::Headers(_) | Middleware::Other { .. } => {}
            }
        }
    }

    fn tcp(&mut self) {
        let config = self.config;
        let tcp = &config.tcp;
        for (name, router) in &tcp.routers {
            let object = format!("tcp.routers.{name}");
            if router.rule.as_deref().is_none_or(|r| r.trim().is_empty()) {
                self.push(&object, "rule", "router has no rule");
            }
            self.required_reference(
                &object,
                "service",
                "service",
                router.service.as_deref(),
                "router has no service",
                &tcp.services,
            );
            for (i, m) in router.middlewares.iter().enumerate() {
                self.reference(&object, &format!("middlewares[{i}]"), "middleware", m, &tcp.middlewares);
            }
            if router.priority.is_some_and(|p| p < 0) {
                self.push(&object, "priority", "must not be negative");
            }
        }
        let mut graph: BTreeMap<&str, Vec<(String, &str)>> = BTreeMap::new();
        for (name, service) in &tcp.services {
            let object = format!("tcp.services.{name}");
            let mut edges = Vec::new();
            match service {
                TcpService::LoadBalancer(lb) => {
                    let addresses: Vec<&str> = lb.servers.iter().map(|s| s.address.as_str()).collect();
                    if !(addresses.is_empty() && lb.provided) {
                        self.addresses(&object, &addresses);
                    }
                    if let Some(transport) = &lb.servers_transport {
                        self.reference(
                            &object,
                            "serversTransport",
                            "serversTransport",
                            transport,
                            &tcp.servers_transports,
                        );
                    }
                }
                TcpService::Weighted(w) => {
                    let names: Vec<&str> = w.services.iter().map(|s| s.name.as_str()).collect();
                    edges = self.weighted_children(&object, &names, &tcp.services);
                }
            }
            graph.insert(name.as_str(), edges);
        }
        self.cycles("tcp.services", &graph);
    }

    fn udp(&mut self) {
        let config = self.config;
        let udp = &config.udp;
        for (name, router) in &udp.routers {
            let object = format!("udp.routers.{name}");
            self.required_reference(
                &object,
                "service",
                "service",
                router.service.as_deref(),
                "router has no service",
                &udp.services,
            );
        }
        let mut graph: BTreeMap<&str, Vec<(String, &str)>> = BTreeMap::new();
        for (name, service) in &udp.services {
            let object = format!("udp.services.{name}");
            let mut edges = Vec::new();
            match service {
                UdpService::LoadBalancer(lb) => {
                    let addresses: Vec<&str> = lb.servers.iter().map(|s| s.address.as_str()).collect();
                    self.addresses(&object, &addresses);
                }
                UdpService::Weighted(w) => {
                    let names: Vec<&str> = w.services.iter().map(|s| s.name.as_str()).collect();
                    edges = self.weighted_children(&object, &names, &udp.services);
                }
            }
            graph.insert(name.as_str(), edges);
        }
        self.cycles("udp.services", &graph);
    }

    fn addresses(&mut self, object: &str, addresses: &[&str]) {
        if addresses.is_empty() {
            self.push(object, "servers", "loadBalancer has no servers");
        }
        for (i, address) in addresses.iter().enumerate() {
            if let Err(message) = check_address(address) {
                self.push(object, &format!("servers[{i}].address"), message);
            }
        }
    }

    fn weighted_children<'n, V>(
        &mut self,
        object: &str,
        names: &[&'n str],
        services: &BTreeMap<String, V>,
    ) -> Vec<(String, &'n str)> {
        if names.is_empty() {
            self.push(object, "services", "weighted service has no services");
        }
        let mut edges = Vec::new();
        for (i, child) in names.iter().enumerate() {
            let field = format!("services[{i}].name");
            if let Some(target) = self.reference(object, &field, "service", child, services) {
                edges.push((field, target));
            }
        }
        edges
    }
}
