//! Admin HTTP API: metrics, health, status and the Traefik provider endpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use constellation_proxy::{RouteTable, TableHandle, Target};
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{json, Value};

use crate::raft::{LeaseNode, MembershipError};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// The outcome of the most recent route reload, for status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// `ok` or `invalid`.
    pub result: String,
    /// Errors of a rejected reload (the previous table stays in force).
    pub errors: Vec<String>,
    /// Features parsed but not applied.
    pub unsupported: Vec<String>,
    /// Unix time of the reload, seconds.
    pub at_unix: u64,
}

/// State the admin API reads. Everything is a snapshot or an atomic: handlers never
/// block the control plane.
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
    /// Cluster members as JSON (kept current by the control plane).
    pub members: ArcSwap<Value>,
    /// Outlier hints known cluster-wide, as JSON.
    pub hints: ArcSwap<Value>,
    /// Set once the node has joined its cluster (or runs alone).
    pub cluster_joined: AtomicBool,
    /// Leases as JSON: name → holder, token.
    pub leases: ArcSwap<Value>,
    /// Raft group as JSON: leader, term (null when this node is not a voter).
    pub raft: ArcSwap<Value>,
    /// This node's lease-group member, once started (none on non-voters): serves
    /// `/api/v1/raft` and its membership changes.
    pub lease_node: ArcSwapOption<LeaseNode>,
    /// DNS controller status as JSON (null when DNS is not configured).
    pub dns: Arc<ArcSwap<Value>>,
}

impl AdminState {
    /// Route table published and cluster joined.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.cluster_joined.load(Ordering::Relaxed)
    }

    /// The `/api/v1/status` document.
    pub fn status(&self) -> Value {
        let table = self.table.load_full();
        json!({
            "node": {
                "name": self.node,
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_seconds": self.started.elapsed().as_secs(),
            },
            "ready": self.is_ready(),
            "config": {
                "generation": table.generation,
                "last_reload": &**self.reload.load(),
            },
            "members": &**self.members.load(),
            "hints": &**self.hints.load(),
            "leases": &**self.leases.load(),
            "raft": &**self.raft.load(),
            "dns": &**self.dns.load(),
            "routes": routes_json(&table),
            "services": services_json(&table),
        })
    }
}

fn target_json(t: &Target) -> Value {
    match t {
        Target::Pool(p) => json!({"name": p.name, "kind": "loadBalancer"}),
        Target::Weighted { name, children, .. } => json!({
            "name": name, "kind": "weighted",
            "children": children.iter().map(|(c, w)| json!({"service": c.name(), "weight": w})).collect::<Vec<_>>(),
        }),
        Target::Failover { name, primary, fallback } => json!({
            "name": name, "kind": "failover", "service": primary.name(), "fallback": fallback.name(),
        }),
    }
}

/// Routes of a table as JSON.
pub fn routes_json(table: &RouteTable) -> Value {
    Value::Array(
        table
            .routes
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "rule": r.rule.source(),
                    "priority": r.priority,
                    "entry_points": r.entry_points,
                    "service": target_json(&r.target),
                    "max_attempts": r.max_attempts,
                })
            })
            .collect(),
    )
}

/// Services with upstream health and breaker state, as JSON.
pub fn services_json(table: &RouteTable) -> Value {
    let now = Instant::now();
    Value::Array(
        table
            .pools
            .iter()
            .map(|p| {
                let ups: Vec<Value> = p
                    .upstreams
                    .iter()
                    .map(|u| {
                        let open_for_ms = u
                            .breaker
                            .open_until()
                            .map(|t| t.saturating_duration_since(now).as_millis() as u64)
                            .unwrap_or(0);
                        json!({
                            "url": u.key.url,
                            "address": u.addr.map(|a| a.to_string()),
                            "address_error": u.address_error,
                            "healthy": u.healthy.load(Ordering::Relaxed),
                            "available": u.is_available(now),
                            "deprioritised": u.is_hinted(now),
                            "breaker": {
                                "state": u.breaker.state(now),
                                "ejections": u.breaker.ejections(),
                                "open_for_ms": open_for_ms,
                            },
                            "in_flight": u.in_flight.load(Ordering::Relaxed),
                            "requests": u.requests.load(Ordering::Relaxed),
                            "failures": u.failures.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                json!({
                    "name": p.name,
                    "panic": p.in_panic(now),
                    "available": p.available(now),
                    "total": p.upstreams.len(),
                    "health_check": p.health.as_ref().map(|h| json!({"path": h.path, "interval_ms": h.interval.as_millis() as u64})),
                    "upstreams": ups,
                })
            })
            .collect(),
    )
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

fn json_reply(status: StatusCode, v: &Value) -> Response<Vec<u8>> {
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
            "/api/v1/traefik" => json_reply(StatusCode::OK, &self.state.traefik.load()),
            "/api/v1/raft" => match self.state.lease_node.load_full() {
                Some(node) => json_reply(StatusCode::OK, &json!(node.status())),
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
