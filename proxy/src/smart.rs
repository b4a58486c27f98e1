//! The SmartFailoverProxy: Pingora `ProxyHttp` hooks applying the failover rules
//! (`docs/failover.md`) to one route-table snapshot per request.
//!
//! Retry decisions are made where the facts are known and recorded in the request
//! context, so Pingora's later hooks never second-guess them:
//! - `fail_to_connect`: nothing reached the upstream, any method may go elsewhere;
//! - `upstream_response_filter`: a gateway status, retried only for idempotent methods
//!   with a replayable body, otherwise passed through untouched;
//! - `error_while_proxy`: a timeout, reset or close, retried only before any response
//!   byte reached the client and under the same idempotency rule; a request whose client
//!   stopped sending its body is the client's fault (408), never the upstream's.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::breaker::{Admission, Outcome, Transition};
use crate::downstream::Connection;
use crate::forwarded::{self, EntryPoint, Origin};
use crate::framing::{self, Refusal};
use crate::metrics::{code_class, method_label, ProxyMetrics};
use crate::rule::RequestInfo;
use crate::settings::ProxySettings;
use crate::table::{Middleware, Pick, Pool, Route, RouteTable};
use crate::transport::MAX_H2_STREAMS;
use crate::upstream::Upstream;

/// The proxy. Cheap to clone state: one `ArcSwap` and the metrics.
pub struct SmartFailoverProxy {
    table: Arc<ArcSwap<RouteTable>>,
    metrics: ProxyMetrics,
    events: Option<tokio::sync::mpsc::UnboundedSender<BreakerEvent>>,
    connect_failures: Option<Arc<ConnectFailures>>,
    entrypoints: Arc<[EntryPoint]>,
    tls: Option<crate::tls::TlsHandle>,
}

/// Failed upstream connects, counted and signalled without blocking, so whoever
/// resolves host names (the control plane) can look again early. The proxy does not
/// know who listens.
#[derive(Debug, Default)]
pub struct ConnectFailures {
    count: AtomicU64,
    notify: tokio::sync::Notify,
}

impl ConnectFailures {
    /// Record one failed connect and wake the waiter (at most one wake-up is stored).
    pub fn record(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Failed connects recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Wait until a connect fails (returns at once if one failed since the last wait).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// Something about an upstream the control plane acts on: a breaker opened (gossiped as
/// an outlier hint), or a `retryOn403` service answered 403 (counted against the egress
/// of the upstream's node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerEvent {
    /// Service name.
    pub service: String,
    /// Upstream URL.
    pub url: String,
    /// What happened.
    pub kind: UpstreamEventKind,
}

/// What a [`BreakerEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamEventKind {
    /// The upstream's breaker opened.
    BreakerOpened,
    /// A `retryOn403` service's upstream answered 403.
    Forbidden,
}

/// Why the last attempt failed, for metrics and the retry reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP connect failed; nothing was sent.
    Connect,
    /// The TLS handshake failed (bad or untrusted certificate, wrong name, no common
    /// protocol); nothing was sent.
    Tls,
    /// No response in time.
    Timeout,
    /// The connection was reset or closed before a complete response.
    Reset,
    /// A gateway status (502/503/504, or 403 where opted in).
    Status,
}

impl FailureKind {
    fn outcome_label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect_error",
            FailureKind::Tls => "tls_error",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Status => "status_gateway",
        }
    }
}

/// Per-request state.
pub struct RequestCtx {
    table: Option<Arc<RouteTable>>,
    route: Option<usize>,
    start: Instant,
    deadline: Instant,
    tried: Vec<Arc<Upstream>>,
    current: Option<(Arc<Upstream>, Admission, Arc<Pool>)>,
    attempts: u32,
    last_failure: Option<FailureKind>,
    /// Set when a hook already decided the fate of the error in flight.
    decided: bool,
    no_upstream: bool,
    gateway_status: Option<u16>,
    retrying: Option<Arc<Pool>>,
    counted_pool: Option<Arc<Pool>>,
    status: u16,
    client_ip: Option<std::net::IpAddr>,
    /// The downstream connection's limits state (set when the head arrived).
    connection: Option<Arc<Connection>>,
    /// The client stopped sending the request body in time: answer 408, blame no one upstream.
    client_stall: bool,
    /// What the forwarding headers going upstream will say.
    origin: Origin,
    /// The route's middlewares' per-request state.
    mw: crate::middleware::MwState,
    /// When the current attempt was picked (for `leasttime`).
    attempt_start: Instant,
    /// `Set-Cookie` for a sticky pool whose server the client did not name yet.
    set_cookie: Option<String>,
}

impl SmartFailoverProxy {
    /// A proxy reading snapshots from `table` and reporting into `metrics`.
    pub fn new(table: Arc<ArcSwap<RouteTable>>, metrics: ProxyMetrics) -> Self {
        Self { table, metrics, events: None, connect_failures: None, entrypoints: Arc::from([]), tls: None }
    }

    /// The entry points the proxy listens on, with their scheme and forwarded-headers
    /// policy. A connection on an address not listed is treated as plain HTTP from an
    /// untrusted peer.
    pub fn with_entrypoints(mut self, entrypoints: Vec<EntryPoint>) -> Self {
        self.entrypoints = entrypoints.into();
        self
    }

    /// Answer ACME http-01 challenges on plain entry points from `tls`'s snapshot.
    pub fn with_tls(mut self, tls: crate::tls::TlsHandle) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Also record every failed upstream connect on `failures`.
    pub fn with_connect_failures(mut self, failures: Arc<ConnectFailures>) -> Self {
        self.connect_failures = Some(failures);
        self
    }

    /// Also report every breaker opening on `events` (never blocks the request path).
    pub fn with_events(mut self, events: tokio::sync::mpsc::UnboundedSender<BreakerEvent>) -> Self {
        self.events = Some(events);
        self
    }

    fn route<'a>(&self, ctx: &'a RequestCtx) -> Option<&'a Route> {
        let t = ctx.table.as_ref()?;
        t.routes.get(ctx.route?)
    }

    fn service_label(&self, ctx: &RequestCtx) -> String {
        self.route(ctx).map(|r| r.target.name().to_string()).unwrap_or_default()
    }

    /// Record the outcome of the current attempt on its breaker and in metrics.
    fn finish_attempt(&self, ctx: &mut RequestCtx, failure: Option<FailureKind>) {
        let Some((up, admission, pool)) = ctx.current.take() else { return };
        up.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let outcome = match failure {
            None => Outcome::Success,
            Some(_) => Outcome::Failure,
        };
        if failure.is_some() {
            up.failures.fetch_add(1, Ordering::Relaxed);
        }
        let label = failure.map(FailureKind::outcome_label).unwrap_or("ok");
        self.metrics.attempts.with_label_values(&[&pool.name, label]).inc();
        if let Some(t) = up.breaker.record(admission, outcome, now) {
            self.on_transition(&pool.name, &up, t, now);
        }
        ctx.last_failure = failure;
    }

    /// End the current attempt without a verdict (the client, not the upstream, failed):
    /// its breaker admission is released, the attempt counted under `label`.
    fn release_attempt(&self, ctx: &mut RequestCtx, label: &str) {
        let Some((up, admission, pool)) = ctx.current.take() else { return };
        up.in_flight.fetch_sub(1, Ordering::Relaxed);
        up.breaker.release(admission);
        self.metrics.attempts.with_label_values(&[&pool.name, label]).inc();
    }

    fn on_transition(&self, service: &str, up: &Upstream, t: Transition, now: Instant) {
        let to = match t {
            Transition::Opened | Transition::Reopened => "open",
            Transition::HalfOpened => "half_open",
            Transition::Closed => "closed",
            Transition::EjectionRefused => "ejection_refused",
        };
        tracing::info!(service, upstream = up.label(), to, "circuit breaker transition");
        if let (Some(tx), Transition::Opened | Transition::Reopened) = (&self.events, t) {
            let _ = tx.send(BreakerEvent {
                service: service.to_string(),
                url: up.key.url.clone(),
                kind: UpstreamEventKind::BreakerOpened,
            });
        }
        self.metrics.breaker_transitions.with_label_values(&[service, up.label(), to]).inc();
        self.metrics.breaker_state.with_label_values(&[service, up.label()]).set(up.breaker_gauge(now));
    }

    /// Whether another attempt is allowed; on `false` the reason is counted.
    fn may_retry(&self, session: &Session, ctx: &RequestCtx, any_method: bool) -> bool {
        let reason = self.retry_veto(session, ctx, any_method);
        if let Some(reason) = reason {
            let service = self.service_label(ctx);
            self.metrics.retries_suppressed.with_label_values(&[&service, reason]).inc();
            tracing::debug!(service, reason, "retry suppressed");
        }
        reason.is_none()
    }

    fn retry_veto(&self, session: &Session, ctx: &RequestCtx, any_method: bool) -> Option<&'static str> {
        let Some(route) = self.route(ctx) else { return Some("no_route") };
        if session.response_written().is_some() {
            return Some("response_started");
        }
        if !any_method {
            // An upgrade (WebSocket) reached the upstream, which may have acted on it:
            // never sent twice.
            if session.is_upgrade_req() {
                return Some("upgrade");
            }
            if !session.req_header().method.is_idempotent() {
                return Some("non_idempotent");
            }
            if session.retry_buffer_truncated() {
                return Some("body_not_replayable");
            }
        }
        if ctx.attempts >= route.max_attempts {
            return Some("attempts_exhausted");
        }
        if Instant::now() + route.retry_interval >= ctx.deadline {
            return Some("deadline");
        }
        if !route.target.has_candidate(&ctx.tried, Instant::now()) {
            return Some("no_other_upstream");
        }
        if let Some(pool) = &ctx.counted_pool {
            let settings = &ctx.table.as_ref()?.settings;
            let active = pool.active.load(Ordering::Relaxed).max(1);
            let retries = pool.active_retries.load(Ordering::Relaxed);
            let allowed = (active * i64::from(settings.retry_budget_percent) / 100)
                .max(i64::from(settings.min_retry_concurrency));
            if ctx.retrying.is_none() && retries >= allowed {
                return Some("budget");
            }
        }
        None
    }

    async fn respond(&self, session: &mut Session, status: u16, extra: &[(&str, String)], body: &str) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(3 + extra.len()))?;
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
        resp.insert_header("content-length", body.len().to_string())?;
        for (k, v) in extra {
            resp.insert_header(k.to_string(), v.as_str())?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true).await?;
        Ok(())
    }

    /// Send a middleware's own response.
    async fn reply(&self, session: &mut Session, reply: crate::middleware::Reply) -> Result<()> {
        let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
        for (k, v) in reply.headers {
            resp.append_header(k, v)?;
        }
        resp.insert_header("content-length", reply.body.len().to_string())?;
        let empty = reply.body.is_empty();
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session.write_response_body(Some(reply.body), true).await?;
        }
        Ok(())
    }

    /// Framing checks before anything routes on the request: a refused request gets
    /// 400 and its connection closed (its body, if any, was never read). Returns
    /// whether a response was sent.
    async fn refuse_bad_framing(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let refusal: Refusal = match framing::check_request(session.req_header_mut()) {
            Ok(()) => return Ok(false),
            Err(r) => r,
        };
        self.metrics.requests_rejected.with_label_values(&[refusal.label()]).inc();
        let client = inet(session.client_addr());
        tracing::debug!(reason = %refusal, client = ?client, "request refused");
        ctx.status = 400;
        session.set_keepalive(None);
        self.respond(session, 400, &[], refusal.body()).await?;
        Ok(true)
    }

    /// On a plain entry point: answer a pending ACME http-01 challenge (before routing,
    /// an unknown token routes normally, as Traefik), then apply the entry point's
    /// redirection to HTTPS. Returns whether a response was sent.
    async fn answer_challenge_or_redirect(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        const PREFIX: &str = "/.well-known/acme-challenge/";
        let path = session.req_header().uri.path();
        if let (Some(tls), Some(token)) = (&self.tls, path.strip_prefix(PREFIX)) {
            let method = &session.req_header().method;
            if matches!(*method, http::Method::GET | http::Method::HEAD) {
                let snapshot = tls.load();
                if let Some(answer) = snapshot.http01(token) {
                    let body = answer.to_string();
                    ctx.status = 200;
                    let mut resp = ResponseHeader::build(200, Some(2))?;
                    resp.insert_header("content-type", "text/plain")?;
                    resp.insert_header("content-length", body.len().to_string())?;
                    session.write_response_header(Box::new(resp), false).await?;
                    session.write_response_body(Some(Bytes::from(body)), true).await?;
                    return Ok(true);
                }
            }
        }
        let local = inet(session.server_addr());
        let Some(redirect) = EntryPoint::find(&self.entrypoints, local).and_then(|e| e.redirect) else {
            return Ok(false);
        };
        let port = (redirect.port != 443).then(|| redirect.port.to_string());
        let (status, location) = redirect_to(session.req_header(), "https", port.as_deref(), redirect.permanent);
        ctx.status = status;
        self.respond(session, status, &[("location", location)], "").await?;
        Ok(true)
    }

    /// Find the entry point the request came in on, note what the forwarding headers
    /// will say, and drop those an untrusted peer sent, before routing sees them.
    fn forwarded_origin(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let peer = inet(session.client_addr()).map(|a| a.ip());
        let local = inet(session.server_addr());
        let entrypoint = EntryPoint::find(&self.entrypoints, local);
        ctx.origin = Origin {
            peer,
            scheme: entrypoint.map(|e| e.scheme).unwrap_or_default(),
            port: local.map(|l| l.port()),
            websocket: forwarded::is_websocket(session.req_header()),
        };
        let trusted = entrypoint.is_some_and(|e| e.forwarded.trusts(peer));
        if !trusted {
            forwarded::strip(session.req_header_mut());
        }
    }

    /// Count a client that went away mid-request (the head stage is counted where
    /// Pingora logs it, see the binary's log filter).
    fn count_disconnect(&self, session: &Session, e: Option<&Error>) {
        let Some(e) = e else { return };
        if *e.esource() != ErrorSource::Downstream {
            return;
        }
        let stage = match e.etype() {
            ErrorType::ConnectionClosed | ErrorType::ReadError if session.response_written().is_none() => "body",
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => "response",
            _ => return,
        };
        self.metrics.downstream_disconnects.with_label_values(&[stage]).inc();
    }
}

/// A redirect of `req` to `scheme` (and `port`, when given): the status (301/308 when
/// `permanent`, else 302/307; the 30x that keeps the method for anything but GET and
/// HEAD) and the Location, with an IPv6 literal kept in brackets.
fn redirect_to(req: &RequestHeader, scheme: &str, port: Option<&str>, permanent: bool) -> (u16, String) {
    let host = split_host(request_host(req));
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = if host.contains(':') {
        format!("{scheme}://[{host}]{port}{path}")
    } else {
        format!("{scheme}://{host}{port}{path}")
    };
    let safe = matches!(req.method, http::Method::GET | http::Method::HEAD);
    let status = match (permanent, safe) {
        (true, true) => 301,
        (true, false) => 308,
        (false, true) => 302,
        (false, false) => 307,
    };
    (status, location)
}

/// The request's `Cookie` header values (for sticky pools).
fn request_cookies(req: &RequestHeader) -> Vec<&str> {
    req.headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect()
}

fn split_host(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

fn inet(addr: Option<&pingora_core::protocols::l4::socket::SocketAddr>) -> Option<SocketAddr> {
    addr.and_then(|a| a.as_inet()).copied()
}

/// The Pingora peer for one attempt at `up`: its transport's TLS trust, SNI, client
/// certificate and HTTP version, and timeouts bounded by what is left of the deadline.
fn peer_for(up: &Upstream, addr: SocketAddr, settings: &ProxySettings, remaining: Duration, upgrade: bool) -> HttpPeer {
    let t = &up.transport;
    // An IP host is kept as the name: rustls then sends no SNI but still verifies the
    // certificate against the IP (an empty name would make Pingora skip verification).
    let sni = if up.tls { t.server_name.clone().unwrap_or_else(|| up.sni.clone()) } else { String::new() };
    let mut peer = HttpPeer::new(addr, up.tls, sni);
    let connect = t.connect_timeout.unwrap_or(settings.connect_timeout()).min(remaining);
    peer.options.connection_timeout = Some(connect);
    peer.options.total_connection_timeout = Some(connect);
    peer.options.read_timeout = Some(if upgrade {
        // An upgraded connection outlives the request: its silence limit is the tunnel's.
        settings.tunnel_timeout()
    } else {
        t.read_timeout.unwrap_or(settings.read_timeout()).min(remaining)
    });
    peer.options.write_timeout = Some(settings.write_timeout().min(remaining));
    peer.options.idle_timeout =
        Some(if t.keepalive { t.idle_timeout.unwrap_or(settings.idle_timeout()) } else { Duration::ZERO });
    peer.options.verify_cert = t.verify;
    peer.options.verify_hostname = t.verify;
    peer.options.ca = t.ca.clone();
    peer.client_cert_key = t.client_cert.clone();
    // Pingora's pool key leaves out the CA list: keep connections made under one
    // transport apart from those of another.
    peer.group_key = t.fingerprint;
    peer.options.max_h2_streams = MAX_H2_STREAMS;
    peer.options.h2_ping_interval = t.h2_ping_interval;
    // An upgrade (WebSocket) needs HTTP/1.1's Upgrade mechanism whatever the scheme.
    if !upgrade {
        if up.h2c {
            peer.options.set_http_version(2, 2);
        } else if up.tls && t.http2 {
            peer.options.set_http_version(2, 1);
        }
    }
    peer
}

fn classify(e: &Error) -> FailureKind {
    match e.etype() {
        ErrorType::TLSHandshakeFailure | ErrorType::TLSHandshakeTimedout | ErrorType::InvalidCert => FailureKind::Tls,
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::HandshakeError
        | ErrorType::SocketError
        | ErrorType::BindError => FailureKind::Connect,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => FailureKind::Timeout,
        ErrorType::HTTPStatus(_) => FailureKind::Status,
        _ => FailureKind::Reset,
    }
}

/// Whether `e` means the client stopped sending its request body in time: a downstream
/// read timed out, or the upstream timed out while the body was still incomplete (it
/// cannot answer a request it has not received).
fn client_stalled(session: &mut Session, e: &Error) -> bool {
    match (e.etype(), e.esource()) {
        (ErrorType::ReadTimedout, ErrorSource::Downstream) => true,
        (ErrorType::ReadTimedout, ErrorSource::Upstream) => !session.is_body_done(),
        _ => false,
    }
}

#[async_trait]
impl ProxyHttp for SmartFailoverProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // Paired with the decrement in `logging`, which Pingora calls for every request.
        self.metrics.in_flight.inc();
        let now = Instant::now();
        RequestCtx {
            table: None,
            route: None,
            start: now,
            deadline: now,
            tried: Vec::new(),
            current: None,
            attempts: 0,
            last_failure: None,
            decided: false,
            no_upstream: false,
            gateway_status: None,
            retrying: None,
            counted_pool: None,
            status: 0,
            client_ip: None,
            connection: None,
            client_stall: false,
            origin: Origin::default(),
            mw: crate::middleware::MwState::default(),
            attempt_start: now,
            set_cookie: None,
        }
    }

    fn on_connection_reuse(&self, _session: &mut Session, ctx: &mut RequestCtx, prev_ctx: Box<dyn Any + Send + Sync>) {
        // The request head is complete: stop the connection's head deadline.
        ctx.connection = crate::downstream::head_received(prev_ctx);
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.refuse_bad_framing(session, ctx).await? {
            return Ok(true);
        }
        self.forwarded_origin(session, ctx);
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if !tls && self.answer_challenge_or_redirect(session, ctx).await? {
            return Ok(true);
        }
        let table = self.table.load_full();
        ctx.deadline = ctx.start + table.settings.request_timeout();
        ctx.client_ip = inet(session.client_addr()).map(|a| a.ip());
        let local = inet(session.server_addr());
        let found = {
            let req = session.req_header();
            let info = RequestInfo {
                host: split_host(request_host(req)),
                path: req.uri.path(),
                query: req.uri.query(),
                method: req.method.as_str(),
                headers: &req.headers,
                client_ip: ctx.client_ip,
            };
            table.route(&info, local, tls).map(|(i, _)| i)
        };
        ctx.table = Some(table);
        let Some(idx) = found else {
            ctx.status = 404;
            self.respond(session, 404, &[], "404 no route matches this request\n").await?;
            return Ok(true);
        };
        ctx.route = Some(idx);
        let route = match self.route(ctx) {
            Some(r) => r,
            None => return Ok(false),
        };
        if route.refused {
            // Fail closed: never serve a router without a feature it asks for (an
            // authentication middleware, say), and never fall through to another one.
            let body = format!(
                "503 router {:?} refused: it needs what Constellation does not apply: {}\n",
                route.name,
                route.unapplied.join("; ")
            );
            ctx.status = 503;
            self.respond(session, 503, &[], &body).await?;
            return Ok(true);
        }
        // Middlewares in router order; the first that answers ends the request.
        let Some(table) = ctx.table.clone() else { return Ok(false) };
        let Some(route) = table.routes.get(idx) else { return Ok(false) };
        ctx.mw.client_ip = ctx.client_ip;
        for (i, mw) in route.middlewares.iter().enumerate() {
            match &**mw {
                Middleware::RedirectScheme { scheme, port, permanent } => {
                    let (status, location) = redirect_to(session.req_header(), scheme, port.as_deref(), *permanent);
                    ctx.status = status;
                    self.respond(session, status, &[("location", location)], "").await?;
                    return Ok(true);
                }
                // Path rewrites happen here, in order, so later middlewares (and every
                // attempt) see the rewritten path, as in Traefik.
                Middleware::StripPrefix { prefixes, force_slash } => {
                    let path = session.req_header().uri.path();
                    if let Some(p) = prefixes.iter().find(|p| path.starts_with(p.as_str())) {
                        let mut rest = path[p.len()..].to_string();
                        if *force_slash || !rest.starts_with('/') {
                            rest.insert(0, '/');
                        }
                        let prefix = p.clone();
                        crate::middleware::replace_path::set_path(session, &rest, None)?;
                        session.req_header_mut().append_header("x-forwarded-prefix", prefix)?;
                    }
                }
                Middleware::AddPrefix(prefix) => {
                    let path = format!("{prefix}{}", session.req_header().uri.path());
                    crate::middleware::replace_path::set_path(session, &path, None)?;
                }
                Middleware::Custom(applied) => {
                    if let crate::middleware::Verdict::Respond(reply) = applied.request(session, &mut ctx.mw, i).await?
                    {
                        ctx.status = reply.status;
                        self.reply(session, reply).await?;
                        return Ok(true);
                    }
                }
                _ => {}
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let now = Instant::now();
        let Some(route) = self.route(ctx) else {
            return Err(Error::explain(ErrorType::InternalError, "no route in context"));
        };
        let (retry_interval, service) = (route.retry_interval, route.target.name().to_string());
        let pick = if route.sticky || route.keyed {
            let cookies = request_cookies(session.req_header());
            let key = crate::table::PickKey { cookies: &cookies, client_ip: ctx.client_ip };
            route.target.pick_keyed(&ctx.tried, now, &key)
        } else {
            route.target.pick(&ctx.tried, now)
        };
        let (up, admission, pool) = match pick {
            Pick::Upstream { upstream, admission, pool, transition } => {
                if let Some(t) = transition {
                    self.on_transition(&pool.name, &upstream, t, now);
                }
                (upstream, admission, pool)
            }
            Pick::Unavailable { breaker_rejected } => {
                if breaker_rejected > 0 {
                    self.metrics
                        .attempts
                        .with_label_values(&[&service, "breaker_rejected"])
                        .inc_by(breaker_rejected as u64);
                }
                // With nothing tried yet this is a 503; after a failed attempt the client
                // gets what that failure deserves (the upstream's response was consumed).
                let etype = match (ctx.attempts, ctx.last_failure, ctx.gateway_status) {
                    (0, _, _) => {
                        ctx.no_upstream = true;
                        ErrorType::HTTPStatus(503)
                    }
                    (_, Some(FailureKind::Status), Some(code)) => ErrorType::HTTPStatus(code),
                    (_, Some(FailureKind::Timeout), _) => ErrorType::ReadTimedout,
                    _ => ErrorType::ConnectError,
                };
                let mut e = Error::explain(etype, "no upstream available for another attempt");
                e.set_retry(false);
                return Err(e.into_up());
            }
        };
        if ctx.attempts > 0 {
            let reason = ctx.last_failure.map(FailureKind::outcome_label).unwrap_or("unknown");
            self.metrics.retries.with_label_values(&[&pool.name, reason]).inc();
            if ctx.retrying.is_none() {
                pool.active_retries.fetch_add(1, Ordering::Relaxed);
                ctx.retrying = Some(pool.clone());
            }
            if !retry_interval.is_zero() {
                tokio::time::sleep(retry_interval).await;
            }
        }
        if ctx.counted_pool.is_none() {
            pool.active.fetch_add(1, Ordering::Relaxed);
            ctx.counted_pool = Some(pool.clone());
        }
        ctx.attempts += 1;
        ctx.gateway_status = None;
        let Some(addr) = up.addr else {
            return Err(Error::explain(ErrorType::ConnectNoRoute, "upstream address unresolved"));
        };
        let settings = match ctx.table.as_ref() {
            Some(t) => &t.settings,
            None => return Err(Error::explain(ErrorType::InternalError, "no table in context")),
        };
        let remaining = ctx.deadline.saturating_duration_since(now).max(Duration::from_millis(1));
        let peer = peer_for(&up, addr, settings, remaining, session.is_upgrade_req());
        up.in_flight.fetch_add(1, Ordering::Relaxed);
        up.requests.fetch_add(1, Ordering::Relaxed);
        ctx.tried.push(up.clone());
        ctx.current = Some((up, admission, pool));
        ctx.attempt_start = now;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = self.route(ctx) else { return Ok(()) };
        let Some((up, _, pool)) = ctx.current.as_ref() else { return Ok(()) };
        // Forwarding headers first, so a `headers` middleware can still override them,
        // as in Traefik (where the entry point sets them before any middleware).
        forwarded::apply(upstream_request, &ctx.origin, request_host(session.req_header()))?;
        // The middlewares rewrote the path in the request phase; the server URL's own
        // path prefix goes in front of it.
        let original = upstream_request.uri.clone();
        let mut path = original.path().to_string();
        for (i, mw) in route.middlewares.iter().enumerate() {
            match &**mw {
                Middleware::Custom(applied) => applied.upstream_request(upstream_request, &ctx.mw, i)?,
                Middleware::StripPrefix { .. } | Middleware::AddPrefix(_) => {}
                Middleware::Headers { request, .. } => {
                    for (name, value) in request {
                        match value {
                            Some(v) => upstream_request.insert_header(name.clone(), v.clone())?,
                            None => {
                                upstream_request.remove_header(name);
                            }
                        }
                    }
                }
                Middleware::RedirectScheme { .. } => {}
            }
        }
        if !up.path_prefix.is_empty() {
            path = format!("{}{}", up.path_prefix, path);
        }
        if path != original.path() {
            let pq = match original.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let uri = http::Uri::builder()
                .path_and_query(pq)
                .build()
                .map_err(|e| Error::because(ErrorType::InternalError, "rewritten path is invalid", e))?;
            upstream_request.set_uri(uri);
        }
        if !pool.pass_host_header {
            upstream_request.insert_header(http::header::HOST, up.authority.as_str())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        let retry_on_403 = ctx.current.as_ref().is_some_and(|(_, _, p)| p.retry_on_403);
        let gateway = matches!(status, 502..=504) || (status == 403 && retry_on_403);
        if status == 403 && retry_on_403 {
            if let (Some(tx), Some((up, _, pool))) = (&self.events, &ctx.current) {
                let _ = tx.send(BreakerEvent {
                    service: pool.name.clone(),
                    url: up.key.url.clone(),
                    kind: UpstreamEventKind::Forbidden,
                });
            }
        }
        if !gateway {
            if let Some((up, _, pool)) = &ctx.current {
                if pool.strategy == crate::table::Strategy::LeastTime {
                    up.record_latency(ctx.attempt_start.elapsed());
                }
                if let Some(sticky) = &pool.sticky {
                    let index = pool.upstreams.iter().position(|u| Arc::ptr_eq(u, up));
                    let cookies = request_cookies(session.req_header());
                    if index.is_some() && sticky.chosen(&cookies) != index {
                        ctx.set_cookie = index.and_then(|i| sticky.set_cookie(i));
                    }
                }
            }
            self.finish_attempt(ctx, None);
            return Ok(());
        }
        self.finish_attempt(ctx, Some(FailureKind::Status));
        ctx.gateway_status = Some(status);
        if self.may_retry(session, ctx, false) {
            ctx.decided = true;
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "gateway status from upstream, retrying");
            e.set_retry(true);
            return Err(e.into_up());
        }
        // Not retryable: the client gets the upstream's own response, unchanged.
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.status = upstream_response.status.as_u16();
        if ctx.status == 101 {
            // Upgraded: the client side's silence limit becomes the tunnel's too.
            if let Some(t) = ctx.table.as_ref() {
                session.set_read_timeout(Some(t.settings.tunnel_timeout()));
            }
        }
        framing::clean_response(upstream_response);
        if let Some(cookie) = ctx.set_cookie.take() {
            upstream_response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        let table = ctx.table.clone();
        if let Some(route) = table.as_ref().zip(ctx.route).and_then(|(t, i)| t.routes.get(i)) {
            // The response goes back out through the onion: last middleware first.
            for (i, mw) in route.middlewares.iter().enumerate().rev() {
                match &**mw {
                    Middleware::Headers { response, .. } => {
                        for (name, value) in response {
                            match value {
                                Some(v) => upstream_response.insert_header(name.clone(), v.clone())?,
                                None => {
                                    upstream_response.remove_header(name);
                                }
                            }
                        }
                    }
                    Middleware::Custom(applied) => applied.response(session, upstream_response, &mut ctx.mw, i).await?,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(table) = ctx.table.clone() else { return Ok(()) };
        let Some(route) = ctx.route.and_then(|i| table.routes.get(i)) else { return Ok(()) };
        if !route.request_body_middlewares {
            return Ok(());
        }
        for (i, mw) in route.middlewares.iter().enumerate() {
            if let Middleware::Custom(applied) = &**mw {
                if applied.wants_request_body() {
                    applied.request_body(session, body, end_of_stream, &mut ctx.mw, i).await?;
                }
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let table = match ctx.table.as_ref() {
            Some(t) => t.clone(),
            None => return Ok(None),
        };
        let Some(route) = ctx.route.and_then(|i| table.routes.get(i)) else { return Ok(None) };
        if !route.body_middlewares {
            return Ok(None);
        }
        for (i, mw) in route.middlewares.iter().enumerate().rev() {
            if let Middleware::Custom(applied) = &**mw {
                if applied.wants_body() {
                    applied.response_body(body, end_of_stream, &mut ctx.mw, i)?;
                }
            }
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = match classify(&e) {
            FailureKind::Tls => FailureKind::Tls,
            _ => FailureKind::Connect,
        };
        self.finish_attempt(ctx, Some(kind));
        if let Some(f) = &self.connect_failures {
            f.record();
        }
        // Nothing reached the upstream, so any method may go elsewhere.
        let retry = self.may_retry(session, ctx, true);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        if std::mem::take(&mut ctx.decided) {
            return e;
        }
        if client_stalled(session, &e) {
            // The client stopped sending its body: the upstream was only waiting for it.
            self.release_attempt(ctx, "client_timeout");
            ctx.client_stall = true;
            if let Some(c) = &ctx.connection {
                c.count_body_timeout();
            }
            tracing::debug!(error = %e, "request body not received in time");
            e.set_retry(false);
            return e;
        }
        let upstream_fault = *e.esource() == ErrorSource::Upstream;
        if !upstream_fault {
            // The client went away or sent garbage: nothing to fail over.
            self.finish_attempt(ctx, None);
            e.set_retry(false);
            return e;
        }
        let kind = classify(&e);
        self.finish_attempt(ctx, Some(kind));
        let retry = self.may_retry(session, ctx, false);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        ctx.decided = false;
        tracing::debug!(error = %e, source = ?e.esource(), written = session.response_written().is_some(), "request failed");
        let retry_after = ctx.table.as_ref().map(|t| t.settings.retry_after_secs).unwrap_or(5);
        let code = if ctx.client_stall {
            408
        } else if ctx.no_upstream {
            503
        } else {
            match e.etype() {
                ErrorType::HTTPStatus(code) => *code,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    if *e.esource() == ErrorSource::Downstream {
                        0
                    } else {
                        504
                    }
                }
                _ => match e.esource() {
                    ErrorSource::Upstream => 502,
                    ErrorSource::Downstream => match e.etype() {
                        ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                        _ => 400,
                    },
                    _ => 500,
                },
            }
        };
        // Never write a second header after part of a response went out.
        if code > 0 && session.response_written().is_none() {
            ctx.status = code;
            // Pingora does not reuse a client connection after a proxy failure; say so,
            // or a keep-alive client would send its next request into a closing socket.
            session.set_keepalive(None);
            let mut extra: Vec<(&str, String)> = Vec::new();
            let body = match code {
                503 => {
                    extra.push(("retry-after", retry_after.to_string()));
                    "503 no upstream available\n"
                }
                504 => "504 upstream timed out\n",
                408 => "408 request body not received in time\n",
                502 => "502 upstream failed\n",
                _ => "",
            };
            if let Err(err) = self.respond(session, code, &extra, body).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // Failures are counted in metrics; per-request error lines at this volume would
        // drown the log during an outage.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.count_disconnect(session, e);
        if let Some(table) = ctx.table.clone() {
            if let Some(route) = ctx.route.and_then(|i| table.routes.get(i)) {
                for (i, mw) in route.middlewares.iter().enumerate() {
                    if let Middleware::Custom(applied) = &**mw {
                        applied.finish(&mut ctx.mw, i);
                    }
                }
            }
        }
        // An attempt still open here ended without a verdict (e.g. the client left):
        // release its breaker probe slot without blaming the upstream.
        if let Some((up, admission, _)) = ctx.current.take() {
            up.in_flight.fetch_sub(1, Ordering::Relaxed);
            up.breaker.release(admission);
        }
        if let Some(pool) = ctx.counted_pool.take() {
            pool.active.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(pool) = ctx.retrying.take() {
            pool.active_retries.fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics.in_flight.dec();
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(ctx.status);
        let route = self.route(ctx).map(|r| r.name.as_str()).unwrap_or("none");
        let method = method_label(&session.req_header().method);
        self.metrics.requests.with_label_values(&[route, method, code_class(status)]).inc();
        self.metrics.request_duration.with_label_values(&[route]).observe(ctx.start.elapsed().as_secs_f64());
    }
}
