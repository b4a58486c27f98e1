//! Admin HTTP API: metrics, health, status and the Traefik provider endpoint.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use constellation_proxy::TableHandle;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use serde_json::{json, Value};

use constellation_lease::{LeaseNode, MembershipError};
use constellation_proxy::redact;

pub use crate::status::ReloadReport;
use crate::status::{
    routes_of, services_of, ConfigStatus, DnsStatus, EntrypointStatus, HintStatus, LeaseStatus, MemberStatus, NodeInfo,
    RaftStatus, Status,
};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;
/// At most one log line about refused admin requests per this interval.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// State the admin API reads. Everything is a snapshot or an atomic: handlers never
/// block the control plane. Built by [`AdminState::new`]; the subsystems keep their
/// parts current.
pub struct AdminState {
    /// Node name.
    pub node: String,
    /// Route table the proxy uses.
    pub table: TableHandle,
    /// Prometheus registry with every metric of the process.
    pub registry: Registry,
    /// The Traefik dynamic configuration behind the current table, as JSON.
    pub traefik: ArcSwap<Value>,
    /// Last reload outcome.
    pub reload: ArcSwap<ReloadReport>,
    /// Set once the first route table is published.
    pub ready: AtomicBool,
    /// Bearer token required on everything but `/healthz`.
    pub token: Option<String>,
    /// Process start.
    pub started: Instant,
    /// Cluster members (kept current by the control plane).
    pub members: ArcSwap<Vec<MemberStatus>>,
    /// Outlier hints known cluster-wide.
    pub hints: ArcSwap<Vec<HintStatus>>,
    /// Set once the node has joined its cluster (or runs alone).
    pub cluster_joined: AtomicBool,
    /// Leases by name.
    pub leases: ArcSwap<BTreeMap<String, LeaseStatus>>,
    /// The Raft group (none when this node is not a voter).
    pub raft: ArcSwapOption<RaftStatus>,
    /// This node's lease-group member, once started (none on non-voters): serves
    /// `/api/v1/raft` and its membership changes.
    pub lease_node: ArcSwapOption<LeaseNode>,
    /// DNS controller status (none when DNS is not configured).
    pub dns: Arc<ArcSwapOption<DnsStatus>>,
    /// Set on SIGTERM: `/readyz` answers 503 while the node drains.
    pub draining: AtomicBool,
    /// The proxy's entry points with their limits and open connections (set once the
    /// listeners are built).
    pub entrypoints: ArcSwap<Vec<Arc<constellation_proxy::downstream::Entrypoint>>>,
    /// The Docker provider's status (none when it is off).
    pub docker: ArcSwapOption<crate::status::DockerStatus>,
    /// Certificates served (set with each TLS snapshot).
    pub certificates: ArcSwap<Vec<constellation_proxy::tls::CertInfo>>,
    /// The ACME resolver, when `[acme]` is configured.
    pub acme: ArcSwapOption<crate::status::AcmeStatus>,
    /// The UDP table in force (the reloader swaps it; UDP entry points read it).
    pub udp: constellation_proxy::udp::UdpHandle,
    /// Stateful groups' status (set by the plane).
    pub stateful: ArcSwap<Vec<crate::status::StatefulStatus>>,
    /// This node's WARP gateways (set by the monitor's task; none when `[warp]` is empty).
    pub warp_gateways: ArcSwapOption<Vec<constellation_warp::GatewayStatus>>,
    /// Egress routing as the plane last applied it (nodes, services, hints).
    pub warp_routing: ArcSwap<crate::status::WarpStatus>,
    /// Refused admin requests, counted and logged once per [`REFUSAL_LOG_EVERY`].
    refusals: Refusals,
}

impl AdminState {
    /// Empty state for node `node`: no routes applied yet, not ready, not joined.
    /// Registers `constellation_admin_refused_total` in `registry`.
    pub fn new(node: &str, table: TableHandle, registry: Registry, token: Option<String>) -> AdminState {
        let refusals = Refusals::register(&registry);
        AdminState {
            node: node.to_string(),
            table,
            registry,
            traefik: ArcSwap::from_pointee(Value::Object(Default::default())),
            reload: ArcSwap::from_pointee(ReloadReport::default()),
            ready: AtomicBool::new(false),
            token,
            started: Instant::now(),
            members: ArcSwap::from_pointee(Vec::new()),
            hints: ArcSwap::from_pointee(Vec::new()),
            cluster_joined: AtomicBool::new(false),
            leases: ArcSwap::from_pointee(BTreeMap::new()),
            raft: ArcSwapOption::empty(),
            lease_node: ArcSwapOption::empty(),
            dns: Arc::new(ArcSwapOption::empty()),
            draining: AtomicBool::new(false),
            entrypoints: ArcSwap::from_pointee(Vec::new()),
            docker: ArcSwapOption::empty(),
            certificates: ArcSwap::from_pointee(Vec::new()),
            acme: ArcSwapOption::empty(),
            udp: Arc::default(),
            stateful: ArcSwap::from_pointee(Vec::new()),
            warp_gateways: ArcSwapOption::empty(),
            warp_routing: ArcSwap::from_pointee(crate::status::WarpStatus::default()),
            refusals,
        }
    }

    /// Route table published and cluster joined.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.cluster_joined.load(Ordering::Relaxed)
    }

    /// The `/api/v1/status` document.
    pub fn status(&self) -> Status {
        let table = self.table.load_full();
        Status {
            node: NodeInfo {
                name: self.node.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_seconds: self.started.elapsed().as_secs(),
            },
            ready: self.is_ready(),
            config: ConfigStatus { generation: table.generation, last_reload: (**self.reload.load()).clone() },
            members: (**self.members.load()).clone(),
            hints: (**self.hints.load()).clone(),
            leases: (**self.leases.load()).clone(),
            raft: self.raft.load_full().map(|r| (*r).clone()),
            dns: self.dns.load_full().map(|d| (*d).clone()),
            entrypoints: self.entrypoints.load().iter().map(|e| EntrypointStatus::of(e)).collect(),
            routes: routes_of(&table),
            services: services_of(&table),
            docker: self.docker.load_full().map(|d| (*d).clone()),
            certificates: {
                let now = (unix_now_ms() / 1000) as i64;
                self.certificates
                    .load()
                    .iter()
                    .map(|c| crate::status::CertificateStatus {
                        names: c.names.clone(),
                        source: c.source.clone(),
                        file: c.file.clone(),
                        not_after_unix: c.not_after_unix,
                        days_left: (c.not_after_unix - now).div_euclid(86_400),
                        issuer: c.issuer.clone(),
                    })
                    .collect()
            },
            acme: self.acme.load_full().map(|a| (*a).clone()),
            tcp_routes: crate::status::tcp_routes_of(&table),
            tcp_services: crate::status::tcp_services_of(&table),
            udp_routes: crate::status::udp_routes_of(&self.udp.load()),
            stateful: (**self.stateful.load()).clone(),
            warp: {
                let gateways = self.warp_gateways.load_full();
                let routing = self.warp_routing.load();
                (gateways.is_some() || !routing.nodes.is_empty() || !routing.services.is_empty()).then(|| {
                    crate::status::WarpStatus {
                        gateways: gateways.map(|g| (*g).clone()).unwrap_or_default(),
                        ..(**routing).clone()
                    }
                })
            },
        }
    }
}

/// The admin HTTP application.
pub struct AdminApp {
    state: Arc<AdminState>,
}

impl AdminApp {
    /// An app serving `state`.
    pub fn new(state: Arc<AdminState>) -> Self {
        Self { state }
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

fn json_reply(status: StatusCode, v: &impl serde::Serialize) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

/// Anything but GET and HEAD changes state (voter changes today, more later): every such
/// request goes through the write rule of [`AdminApp::refusal`].
fn is_write(method: &http::Method) -> bool {
    method != http::Method::GET && method != http::Method::HEAD
}

/// Whether `peer` is a loopback address (IPv4-mapped IPv6 included). Unknown peers are not.
fn is_loopback(peer: Option<IpAddr>) -> bool {
    peer.is_some_and(|ip| ip.to_canonical().is_loopback())
}

/// Constant-time comparison so the token cannot be guessed byte by byte from timing.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if let Some(refused) = self.refusal(&req.headers, &method, &path, peer) {
            return refused;
        }
        let raft_write = (method == http::Method::POST && path == "/api/v1/raft/voters")
            || (method == http::Method::DELETE && path.starts_with("/api/v1/raft/voters/"));
        if is_write(&method) && !raft_write {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", b"only GET\n".to_vec());
        }
        if raft_write {
            return self.raft_write(session, &method, &path).await;
        }
        match path.as_str() {
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.state.draining.load(Ordering::Relaxed) {
                    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"shutting down\n".to_vec())
                } else if self.state.is_ready() {
                    reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else if !self.state.ready.load(Ordering::Relaxed) {
                    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"route table not published yet\n".to_vec())
                } else {
                    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"not joined to the cluster yet\n".to_vec())
                }
            }
            "/metrics" => {
                let mut buf = Vec::new();
                let enc = TextEncoder::new();
                if let Err(e) = enc.encode(&self.state.registry.gather(), &mut buf) {
                    return reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n").into_bytes());
                }
                reply(StatusCode::OK, enc.format_type(), buf)
            }
            "/api/v1/status" => {
                // Credentials (URL user info, header values in rules) never leave in it.
                let mut doc = serde_json::to_value(self.state.status()).unwrap_or_default();
                redact::redact_value(&mut doc);
                json_reply(StatusCode::OK, &doc)
            }
            // The provider endpoint serves the real values: Traefik needs them. It takes
            // the token whenever one is set (see `refusal`).
            "/api/v1/traefik" => json_reply(StatusCode::OK, &**self.state.traefik.load()),
            "/api/v1/raft" => match self.state.lease_node.load_full() {
                Some(node) => json_reply(StatusCode::OK, &node.status()),
                None => not_a_voter(),
            },
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}

impl AdminApp {
    /// The one access rule of the admin API, applied to every request before it is
    /// routed:
    /// - with a token configured, everything but a `GET`/`HEAD` of `/healthz` needs
    ///   `Authorization: Bearer <token>` (401 otherwise);
    /// - without one, reads are open (the admin address is then loopback, see
    ///   `config::validate`) and writes (any method but `GET`/`HEAD`) are accepted only
    ///   from a loopback peer (403 otherwise).
    ///
    /// Returns the refusal to send, `None` when the request may proceed. Refusals are
    /// counted in `constellation_admin_refused_total{request, reason}` and logged at most
    /// once per [`REFUSAL_LOG_EVERY`].
    fn refusal(
        &self,
        headers: &http::HeaderMap,
        method: &http::Method,
        path: &str,
        peer: Option<IpAddr>,
    ) -> Option<Response<Vec<u8>>> {
        let write = is_write(method);
        let refused = |status: StatusCode, reason: &'static str, message: &str| {
            self.state.refusals.refused(write, reason, peer, method, path);
            let mut r = json_reply(status, &json!({"error": message}));
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            }
            r
        };
        match &self.state.token {
            Some(token) => {
                if path == "/healthz" && !write {
                    return None;
                }
                let given = headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if token_matches(given.as_bytes(), token.as_bytes()) {
                    None
                } else {
                    Some(refused(
                        StatusCode::UNAUTHORIZED,
                        "token",
                        "bearer token required: send Authorization: Bearer <the admin token>",
                    ))
                }
            }
            None if !write || is_loopback(peer) => None,
            None => Some(refused(
                StatusCode::FORBIDDEN,
                "not_loopback",
                "no admin token is configured, so changes are accepted only from loopback; set [admin] \
                 token_file (or CONSTELLATION_ADMIN__TOKEN) and send the token to make them from elsewhere",
            )),
        }
    }
}

/// Refused admin requests: a counter, and a log line at most once per interval.
struct Refusals {
    /// `None` only if the metric could not be made (never with these constant options).
    counter: Option<IntCounterVec>,
    last_log: Mutex<Option<Instant>>,
    since_log: AtomicU64,
}

impl Refusals {
    fn register(registry: &Registry) -> Refusals {
        let opts = Opts::new(
            "constellation_admin_refused_total",
            "Admin API requests refused, by request kind (read, write) and reason (token, not_loopback)",
        );
        let counter = IntCounterVec::new(opts, &["request", "reason"]).and_then(|c| {
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        });
        let counter = match counter {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "constellation_admin_refused_total is not exported");
                None
            }
        };
        Refusals { counter, last_log: Mutex::new(None), since_log: AtomicU64::new(0) }
    }

    fn refused(&self, write: bool, reason: &'static str, peer: Option<IpAddr>, method: &http::Method, path: &str) {
        let request = if write { "write" } else { "read" };
        if let Some(c) = &self.counter {
            c.with_label_values(&[request, reason]).inc();
        }
        self.since_log.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY) {
            return;
        }
        *last = Some(now);
        let count = self.since_log.swap(0, Ordering::Relaxed);
        // The path is the client's: cut it short, it is only a hint.
        let path: String = path.chars().take(80).collect();
        tracing::warn!(
            peer = ?peer,
            %method,
            %path,
            request,
            reason,
            refused = count,
            "admin API request refused; further refusals are counted in constellation_admin_refused_total and \
             logged at most once a minute"
        );
    }
}

fn error_reply(status: StatusCode, message: impl std::fmt::Display) -> Response<Vec<u8>> {
    json_reply(status, &json!({"error": message.to_string()}))
}

fn not_a_voter() -> Response<Vec<u8>> {
    error_reply(StatusCode::SERVICE_UNAVAILABLE, "this node runs no raft lease group (it is not among [raft] voters)")
}

/// `{"name": …, "address": …}` of `POST /api/v1/raft/voters`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddVoter {
    name: String,
    /// Cluster address; Raft listens on its port + 1.
    address: String,
}

/// Reads the whole request body, refusing more than `MAX_BODY` bytes.
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error_reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body exceeds {MAX_BODY} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(error_reply(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))),
        }
    }
}

fn membership_reply(node: &LeaseNode, result: Result<(), MembershipError>) -> Response<Vec<u8>> {
    match result {
        Ok(()) => {
            let members = node.membership();
            let names = |voter: bool| -> Vec<Value> {
                members
                    .iter()
                    .filter(|(_, _, v)| *v == voter)
                    .map(|(name, addr, _)| json!({"name": name, "raft_address": addr.to_string()}))
                    .collect()
            };
            json_reply(StatusCode::OK, &json!({"ok": true, "voters": names(true), "learners": names(false)}))
        }
        Err(e) if e.is_refusal() => error_reply(StatusCode::CONFLICT, e),
        Err(e) => error_reply(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

impl AdminApp {
    /// `POST /api/v1/raft/voters` and `DELETE /api/v1/raft/voters/<name>`.
    async fn raft_write(&self, session: &mut ServerSession, method: &http::Method, path: &str) -> Response<Vec<u8>> {
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let Some(node) = self.state.lease_node.load_full() else {
            return not_a_voter();
        };
        if method == http::Method::DELETE {
            let name = path.trim_start_matches("/api/v1/raft/voters/");
            if name.is_empty() || name.contains('/') {
                return error_reply(StatusCode::BAD_REQUEST, "expected DELETE /api/v1/raft/voters/<name>");
            }
            tracing::info!(node = %name, "admin API: remove raft voter");
            return membership_reply(&node, node.remove_voter(name).await);
        }
        let req: AddVoter = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    format!("expected JSON {{\"name\": \"n4\", \"address\": \"host:port\"}}: {e}"),
                )
            }
        };
        let cluster: std::net::SocketAddr = match req.address.parse() {
            Ok(a) => a,
            Err(e) => {
                return error_reply(StatusCode::BAD_REQUEST, format!("address {:?} is not ip:port: {e}", req.address))
            }
        };
        let Some(port) = cluster.port().checked_add(1) else {
            return error_reply(StatusCode::BAD_REQUEST, "the cluster port must be below 65535 (raft uses port + 1)");
        };
        let raft_addr = std::net::SocketAddr::new(cluster.ip(), port);
        tracing::info!(node = %req.name, cluster = %cluster, raft = %raft_addr, "admin API: add raft voter");
        membership_reply(&node, node.add_voter(&req.name, raft_addr).await)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
