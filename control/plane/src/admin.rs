//! Admin HTTP API: metrics, health, status and the Traefik provider endpoint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use constellation_proxy::TableHandle;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{json, Value};

use constellation_lease::{LeaseNode, MembershipError};

pub use crate::status::ReloadReport;
use crate::status::{
    routes_of, services_of, ConfigStatus, DnsStatus, HintStatus, LeaseStatus, MemberStatus, NodeInfo, RaftStatus,
    Status,
};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

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
}

impl AdminState {
    /// Empty state for node `node`: no routes applied yet, not ready, not joined.
    pub fn new(node: &str, table: TableHandle, registry: Registry, token: Option<String>) -> AdminState {
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
            routes: routes_of(&table),
            services: services_of(&table),
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
        let raft_write = (method == http::Method::POST && path == "/api/v1/raft/voters")
            || (method == http::Method::DELETE && path.starts_with("/api/v1/raft/voters/"));
        if method != http::Method::GET && method != http::Method::HEAD && !raft_write {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", b"only GET\n".to_vec());
        }
        if path != "/healthz" {
            if let Some(token) = &self.state.token {
                let given = req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !token_matches(given.as_bytes(), token.as_bytes()) {
                    let mut r = reply(StatusCode::UNAUTHORIZED, "text/plain", b"bearer token required\n".to_vec());
                    r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                    return r;
                }
            }
        }
        if raft_write {
            return self.raft_write(session, &method, &path).await;
        }
        match path.as_str() {
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.state.is_ready() {
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
            "/api/v1/status" => json_reply(StatusCode::OK, &self.state.status()),
            "/api/v1/traefik" => json_reply(StatusCode::OK, &**self.state.traefik.load()),
            "/api/v1/raft" => match self.state.lease_node.load_full() {
                Some(node) => json_reply(StatusCode::OK, &node.status()),
                None => not_a_voter(),
            },
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
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
