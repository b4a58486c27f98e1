//! Downstream connection limits per entry point: a cap on connections (in total and per
//! client IP), one deadline for the whole request head, a keep-alive idle timeout, and
//! stall timeouts for request-body reads and response writes.
//!
//! Pingora times each read on its own (a byte now and then keeps a request head open
//! forever) and counts no connections, so [`LimitedApp`] wraps the HTTP proxy app: it
//! admits or refuses each accepted connection (an RAII [`Admission`] held for its
//! lifetime), then runs the HTTP/1.x keep-alive loop itself, racing each request head
//! against its deadline. The proxy's `on_connection_reuse` hook, which Pingora calls as
//! soon as a head is parsed, stops the clock through [`head_received`].

use std::any::Any;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Peek, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::tcp::{self, TcpMetrics};
use crate::tls::{hello, TlsHandle, TlsMetrics, ALPN_ACME};
use serde::{Deserialize, Serialize};

/// Default deadline for a whole request head (ms), as Traefik's
/// `respondingTimeouts.readTimeout` (60 s).
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 60_000;
/// Default keep-alive idle timeout (ms), as Traefik's `respondingTimeouts.idleTimeout` (180 s).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 180_000;
/// Default stall timeout of each request-body read (ms).
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 60_000;
/// Default stall timeout of each response write to the client (ms).
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 60_000;
/// Default cap on connections from one client IP.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 1_000;
/// File descriptors kept out of the automatic connection budget: the admin port, route
/// and data files, the cluster ports, logs.
pub const RESERVED_FDS: u64 = 1_024;
/// The automatic cap never goes below this many connections per entry point.
pub const MIN_AUTO_MAX_CONNECTIONS: u32 = 32;

/// `[entrypoints.<name>.transport]`: limits on the connections of one entry point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Deadline for the whole request head, in milliseconds: from the accept for a
    /// connection's first request, from the first byte of each later one. Bytes that
    /// trickle in do not extend it; past it the connection is closed. Mirrors Traefik's
    /// `respondingTimeouts.readTimeout` (which also covers the body; here the body has
    /// `body_read_timeout_ms`). Default 60000.
    pub read_timeout_ms: u64,
    /// A keep-alive connection waiting for its next request is closed after this many
    /// milliseconds. Mirrors Traefik's `respondingTimeouts.idleTimeout`. Default 180000.
    pub idle_timeout_ms: u64,
    /// A request body read that gets no byte for this many milliseconds ends the request
    /// with 408 (a client error, never charged to the upstream). It also bounds the
    /// silence of an upgraded connection (WebSocket), as Pingora's own 60 s did.
    /// Default 60000.
    pub body_read_timeout_ms: u64,
    /// A response write the client does not take for this many milliseconds closes the
    /// connection; 0 = no limit. Traefik's `respondingTimeouts.writeTimeout` is a deadline
    /// for the whole response (hence its default 0); this is a stall timeout per write,
    /// which a client that reads never hits. Default 60000.
    pub write_timeout_ms: u64,
    /// Connections this entry point holds at once; more are closed at accept. Default:
    /// sized from the file limit (half of it less 1024 reserved, shared by the entry
    /// points that leave it unset), as the agent raises its soft limit to the hard one.
    pub max_connections: Option<u32>,
    /// Connections one client IP may hold on this entry point at once. Default 1000.
    pub max_connections_per_ip: u32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            max_connections: None,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

impl TransportConfig {
    /// Check ranges; returns `(key, message)` for the first bad value.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [
            ("read_timeout_ms", self.read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
        ] {
            if v == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        if self.max_connections == Some(0) {
            return Err(("max_connections", "must be greater than 0 (leave it unset for the automatic size)".into()));
        }
        if self.max_connections_per_ip == 0 {
            return Err(("max_connections_per_ip", "must be greater than 0".into()));
        }
        Ok(())
    }

    /// The limits in force, with `auto_max_connections` where `max_connections` is unset.
    pub fn limits(&self, auto_max_connections: u32) -> Limits {
        let ms = Duration::from_millis;
        Limits {
            read_timeout: ms(self.read_timeout_ms),
            idle_timeout: ms(self.idle_timeout_ms),
            body_read_timeout: ms(self.body_read_timeout_ms),
            write_timeout: (self.write_timeout_ms > 0).then(|| ms(self.write_timeout_ms)),
            max_connections: self.max_connections.unwrap_or(auto_max_connections) as usize,
            max_connections_per_ip: self.max_connections_per_ip as usize,
        }
    }
}

/// The automatic `max_connections` of each of `unset` entry points when the process may
/// hold `nofile` descriptors: every proxied connection may need an upstream one too, so
/// half of what is left after [`RESERVED_FDS`], shared equally.
pub fn auto_max_connections(nofile: u64, unset: usize) -> u32 {
    let budget = nofile.saturating_sub(RESERVED_FDS) / 2 / (unset.max(1) as u64);
    u32::try_from(budget).unwrap_or(u32::MAX).max(MIN_AUTO_MAX_CONNECTIONS)
}

/// Read buffer of each client connection, in bytes. Pingora's default (64 KiB, zeroed
/// at accept) made every idle connection cost ~90 kB of resident memory (~27 kB now). A small one
/// still holds a whole ordinary request head, so the 1-byte peek that ends a keep-alive
/// wait costs no extra read; larger body reads bypass it.
pub const CLIENT_READ_BUFFER: usize = 4 * 1024;

/// The listener of an entry point on `addr`, with the client buffer sizes above.
pub fn listener(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::new(CLIENT_READ_BUFFER, DEFAULT_L4_WRITE_BUFFER_SIZE))
}

/// Resolved limits of one entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deadline of a whole request head.
    pub read_timeout: Duration,
    /// Keep-alive idle timeout.
    pub idle_timeout: Duration,
    /// Stall timeout of each request-body read.
    pub body_read_timeout: Duration,
    /// Stall timeout of each response write; `None` = no limit.
    pub write_timeout: Option<Duration>,
    /// Connections held at once.
    pub max_connections: usize,
    /// Connections held at once per client IP.
    pub max_connections_per_ip: usize,
}

/// Downstream connection metrics, labelled by entry point.
#[derive(Clone)]
pub struct DownstreamMetrics {
    /// Connections open now.
    pub connections: IntGaugeVec,
    /// Connections closed at accept, by reason.
    pub refused: IntCounterVec,
    /// Connections or requests cut by a timeout, by kind.
    pub timeouts: IntCounterVec,
}

impl DownstreamMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            connections: IntGaugeVec::new(
                Opts::new("constellation_downstream_connections", "Client connections open now, per entry point."),
                &["entrypoint"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "constellation_downstream_refused_total",
                    "Client connections closed at accept, by reason: max_connections, max_connections_per_ip.",
                ),
                &["entrypoint", "reason"],
            )?,
            timeouts: IntCounterVec::new(
                Opts::new(
                    "constellation_downstream_timeouts_total",
                    "Client connections or requests cut by a timeout, by kind: head (request head not complete \
                     in time), idle (keep-alive), body (request body stalled; answered 408).",
                ),
                &["entrypoint", "kind"],
            )?,
        };
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.timeouts.clone()))?;
        Ok(m)
    }
}

/// One entry point: where it listens, its limits, its counts.
pub struct Entrypoint {
    name: String,
    listen: SocketAddr,
    limits: Limits,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    gauge: IntGauge,
    refused_total: IntCounter,
    refused_per_ip: IntCounter,
    head_timeouts: IntCounter,
    idle_timeouts: IntCounter,
    body_timeouts: IntCounter,
    protocols: Protocols,
    /// Unix second of the last handshake-failure log line (one per 10 s).
    tls_logged_at: AtomicU64,
}

/// What an entry point speaks, from `[entrypoints.<name>]` `tls`, `http2`, `h2c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Protocols {
    /// TLS termination (routers with `tls` are served here).
    pub tls: bool,
    /// On a TLS entry point, offer HTTP/2 over ALPN.
    pub http2: bool,
    /// On a plain entry point, accept cleartext HTTP/2 (prior knowledge).
    pub h2c: bool,
}

impl std::fmt::Debug for Entrypoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entrypoint")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("limits", &self.limits)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Entrypoint {
    /// The entry point `name` listening on `listen` with `limits`, counting into `metrics`.
    pub fn new(name: &str, listen: SocketAddr, limits: Limits, metrics: &DownstreamMetrics) -> Self {
        Self {
            name: name.to_string(),
            listen,
            limits,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            gauge: metrics.connections.with_label_values(&[name]),
            refused_total: metrics.refused.with_label_values(&[name, "max_connections"]),
            refused_per_ip: metrics.refused.with_label_values(&[name, "max_connections_per_ip"]),
            head_timeouts: metrics.timeouts.with_label_values(&[name, "head"]),
            idle_timeouts: metrics.timeouts.with_label_values(&[name, "idle"]),
            body_timeouts: metrics.timeouts.with_label_values(&[name, "body"]),
            protocols: Protocols::default(),
            tls_logged_at: AtomicU64::new(0),
        }
    }

    /// The same entry point speaking `protocols`.
    pub fn with_protocols(mut self, protocols: Protocols) -> Self {
        self.protocols = protocols;
        self
    }

    /// What it speaks.
    pub fn protocols(&self) -> Protocols {
        self.protocols
    }

    /// The entry point's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where it listens.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admit one connection from `ip`, or refuse it (counted) when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Admission> {
        let total = self.open.fetch_add(1, Ordering::AcqRel);
        if total >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused_total.inc();
            return None;
        }
        let ip = ip.map(|ip| ip.to_canonical());
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.limits.max_connections_per_ip {
                drop(map);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.refused_per_ip.inc();
                return None;
            }
            *n += 1;
        }
        self.gauge.inc();
        Some(Admission { entry: self.clone(), ip })
    }

    fn matches(&self, local: SocketAddr) -> bool {
        self.listen.port() == local.port()
            && (self.listen.ip().is_unspecified() || self.listen.ip().to_canonical() == local.ip().to_canonical())
    }
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct Admission {
    entry: Arc<Entrypoint>,
    ip: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.entry.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.entry.open.fetch_sub(1, Ordering::AcqRel);
        self.entry.gauge.dec();
    }
}

/// The per-connection state the proxy sees: whether the current head is complete, and
/// the entry point to count a body stall on.
#[derive(Debug)]
pub struct Connection {
    entry: Arc<Entrypoint>,
    head_done: AtomicBool,
}

impl Connection {
    /// Count a request ended because its body stalled (answered 408).
    pub fn count_body_timeout(&self) {
        self.entry.body_timeouts.inc();
    }

    /// The entry point this connection came in on.
    pub fn entrypoint(&self) -> &str {
        &self.entry.name
    }
}

/// Handed to Pingora as the connection's user context before each request; it comes
/// back through `ProxyHttp::on_connection_reuse` once the head is parsed.
struct HeadSignal(Arc<Connection>);

/// Call from `ProxyHttp::on_connection_reuse` with its `prev_ctx`: stops the head clock
/// of the connection, and returns its state when the context came from [`LimitedApp`].
pub fn head_received(prev_ctx: Box<dyn Any + Send + Sync>) -> Option<Arc<Connection>> {
    let signal = prev_ctx.downcast::<HeadSignal>().ok()?;
    signal.0.head_done.store(true, Ordering::Release);
    Some(signal.0)
}

/// Resolves when `deadline` passes while the head is still incomplete; never otherwise.
async fn head_expired(conn: &Connection, deadline: Instant) {
    tokio::time::sleep_until(deadline.into()).await;
    if conn.head_done.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}

/// Pingora's keep-alive setting is in whole seconds and times each read of a head; the
/// head deadline and idle wait here are the real limits, so it is set a second longer
/// than either (a tie would close the connection quietly, uncounted).
fn keepalive_secs(limits: &Limits) -> u64 {
    limits.idle_timeout.max(limits.read_timeout).as_millis().div_ceil(1000) as u64 + 1
}

/// The HTTP app `A` (the proxy) behind the limits of its entry points.
pub struct LimitedApp<A> {
    app: Arc<A>,
    entrypoints: Vec<Arc<Entrypoint>>,
    tls: Option<(TlsHandle, TlsMetrics)>,
    tcp: Option<TcpRouting>,
}

/// What TCP routing needs: the route table (its `tcp` part), metrics, connect timeout.
struct TcpRouting {
    table: crate::TableHandle,
    metrics: TcpMetrics,
}

/// The client preface of cleartext HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a TLS connection ended before its first request.
fn hello_failure(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "truncated"
    } else {
        "closed"
    }
}

impl<A> LimitedApp<A> {
    /// `app` behind `entrypoints`; a connection is matched to the entry point by its
    /// local address (the first one when none matches).
    pub fn new(app: A, entrypoints: Vec<Arc<Entrypoint>>) -> Self {
        Self { app: Arc::new(app), entrypoints, tls: None, tcp: None }
    }

    /// Route connections by the TCP routers of the tables swapped into `table`
    /// (before HTTP routing; see [`crate::tcp`]).
    pub fn with_tcp(mut self, table: crate::TableHandle, metrics: TcpMetrics) -> Self {
        self.tcp = Some(TcpRouting { table, metrics });
        self
    }

    /// TCP routing of one connection. `Some(stream)`: no TCP router claimed it and HTTP
    /// routing goes on; `None`: it was forwarded (or refused) and is done.
    async fn tcp_route(
        &self,
        routing: &TcpRouting,
        entry: &Entrypoint,
        mut stream: Stream,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> Option<Stream> {
        let table = routing.table.load_full();
        let t = &table.tcp;
        let ip = peer.map(|p| p.ip());
        let connect = table.settings.connect_timeout();
        let m = &routing.metrics;
        let http_here =
            table.routes.iter().any(|r| r.entry_points.is_empty() || r.entry_points.iter().any(|e| e == &entry.name));
        if !tcp::needs_peek(t, &entry.name, entry.protocols.tls) {
            // Only non-TLS routers here and no TLS to tell apart: route at once, so
            // protocols where the server speaks first work.
            return match tcp::pick(t, &entry.name, &tcp::Peeked::default(), ip) {
                Some(route) => {
                    tcp::forward(route, stream, peer, local, connect, m).await;
                    None
                }
                None => self.unclaimed(entry, stream, http_here, "no_route"),
            };
        }
        let mut first = [0u8; 1];
        let peeked = match tokio::time::timeout(tcp::PEEK_TIMEOUT, stream.try_peek(&mut first)).await {
            Err(_) => tcp::Peeked { silent: true, ..tcp::Peeked::default() },
            Ok(Err(_)) => return None,
            Ok(Ok(_)) if first[0] != 0x16 => tcp::Peeked::default(),
            Ok(Ok(_)) => match tokio::time::timeout(entry.limits.read_timeout, read_hello(&mut stream)).await {
                Ok(Ok(h)) => tcp::Peeked {
                    tls: true,
                    sni: h.server_name.map(|n| n.to_ascii_lowercase()),
                    alpn: h.alpn,
                    silent: false,
                },
                Ok(Err(reason)) => {
                    if entry.protocols.tls {
                        // The TLS path reads it again and counts the failure.
                        return Some(stream);
                    }
                    m.rejected.with_label_values(&[entry.name.as_str(), reason]).inc();
                    return None;
                }
                Err(_) => {
                    m.rejected.with_label_values(&[entry.name.as_str(), "timeout"]).inc();
                    return None;
                }
            },
        };
        if let Some(route) = tcp::pick(t, &entry.name, &peeked, ip) {
            match &route.tls {
                tcp::TcpTls::Terminate { .. } => {
                    let Some(tls) = self.terminate(entry, stream, peeked.sni.as_deref(), peer).await else {
                        m.connections.with_label_values(&[route.name.as_str(), "tls_error"]).inc();
                        return None;
                    };
                    tcp::forward(route, tls, peer, local, connect, m).await;
                }
                _ => tcp::forward(route, stream, peer, local, connect, m).await,
            }
            return None;
        }
        if peeked.tls && entry.protocols.tls {
            return Some(stream);
        }
        // A TLS connection no TLS router took: a non-TLS catch-all forwards it as bytes.
        if peeked.tls {
            if let Some(route) = tcp::pick(t, &entry.name, &tcp::Peeked::default(), ip) {
                tcp::forward(route, stream, peer, local, connect, m).await;
                return None;
            }
        }
        let reason = if peeked.tls { "no_sni_route" } else { "no_route" };
        self.unclaimed(entry, stream, http_here, reason)
    }

    /// No TCP router took the connection: HTTP routing if this entry point has HTTP
    /// routers, else it is closed and counted.
    fn unclaimed(&self, entry: &Entrypoint, stream: Stream, http_here: bool, reason: &str) -> Option<Stream> {
        if http_here {
            return Some(stream);
        }
        if let Some(r) = &self.tcp {
            r.metrics.rejected.with_label_values(&[entry.name.as_str(), reason]).inc();
        }
        tracing::debug!(entrypoint = %entry.name, reason, "no TCP router takes this connection; closed");
        None
    }

    /// The TLS snapshot handle and the concrete TCP stream the listener boxed (what an
    /// acceptor needs); `None` (counted) without a snapshot or for another stream kind.
    fn tls_parts(
        &self,
        entry: &Entrypoint,
        stream: Stream,
        peer: Option<SocketAddr>,
    ) -> Option<(&TlsHandle, L4Stream)> {
        let Some((handle, _)) = &self.tls else {
            self.tls_failed(entry, "no_tls", peer, &"no TLS snapshot");
            return None;
        };
        let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
            self.tls_failed(entry, "not_tcp", peer, &"not a TCP stream");
            return None;
        };
        Some((handle, *l4))
    }

    /// Terminate TLS for a TCP router with the proxy's certificates.
    async fn terminate(
        &self,
        entry: &Entrypoint,
        stream: Stream,
        sni: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Option<Box<dyn pingora_core::protocols::IO>> {
        let (handle, l4) = self.tls_parts(entry, stream, peer)?;
        let acceptor = handle.load().acceptor(sni, false).clone();
        match tokio::time::timeout(entry.limits.read_timeout, acceptor.tls_handshake(l4)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                self.tls_failed(entry, "handshake", peer, &e);
                None
            }
            Err(_) => {
                self.tls_failed(entry, "timeout", peer, &"no complete handshake within read_timeout_ms");
                None
            }
        }
    }

    /// Terminate TLS on the entry points with `tls` using the snapshot in `handle`,
    /// counting failures into `metrics`. Without it, those entry points close every
    /// connection (counted, reason `no_tls`).
    pub fn with_tls(mut self, handle: TlsHandle, metrics: TlsMetrics) -> Self {
        self.tls = Some((handle, metrics));
        self
    }

    fn tls_failed(&self, entry: &Entrypoint, reason: &str, peer: Option<SocketAddr>, detail: &dyn std::fmt::Display) {
        if let Some((_, m)) = &self.tls {
            m.handshake_failures.with_label_values(&[entry.name.as_str(), reason]).inc();
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = entry.tls_logged_at.load(Ordering::Relaxed);
        if now >= last + 10
            && entry.tls_logged_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::info!(entrypoint = %entry.name, peer = ?peer, reason, detail = %detail, "TLS handshake failed (one line per 10 s per entry point)");
        } else {
            tracing::debug!(entrypoint = %entry.name, peer = ?peer, reason, detail = %detail, "TLS handshake failed");
        }
    }

    /// Read the ClientHello (peeked, so rustls reads it again), pick the acceptor for its
    /// server name and handshake. `None`: the connection is done (failed, counted, or
    /// an ACME tls-alpn-01 validation answered).
    async fn handshake(&self, entry: &Entrypoint, stream: Stream, peer: Option<SocketAddr>) -> Option<Stream> {
        let (handle, mut stream) = self.tls_parts(entry, stream, peer)?;
        let mut header = [0u8; hello::RECORD_HEADER_LEN];
        if let Err(e) = stream.try_peek(&mut header).await {
            self.tls_failed(entry, hello_failure(&e), peer, &e);
            return None;
        }
        let len = match hello::record_len(&header) {
            Ok(n) => n,
            Err(e) => {
                self.tls_failed(entry, e.label(), peer, &e);
                return None;
            }
        };
        // At most 5 + 16384 bytes, allocated only for a well-formed record header.
        let mut record = vec![0u8; hello::RECORD_HEADER_LEN + len];
        if let Err(e) = stream.try_peek(&mut record).await {
            self.tls_failed(entry, hello_failure(&e), peer, &e);
            return None;
        }
        let hello = match hello::parse(&record) {
            Ok(h) => h,
            Err(e) => {
                self.tls_failed(entry, e.label(), peer, &e);
                return None;
            }
        };
        drop(record);
        let snapshot = handle.load_full();
        let sni = hello.server_name.as_deref();
        if hello.offers(ALPN_ACME) {
            if let Some(acceptor) = sni.and_then(|n| snapshot.acme_alpn(n)) {
                // RFC 8737: the challenge certificate, ALPN acme-tls/1, then close.
                match acceptor.tls_handshake(stream).await {
                    Ok(mut tls) => {
                        use pingora_core::protocols::Shutdown;
                        tracing::info!(entrypoint = %entry.name, domain = ?sni, "answered an ACME tls-alpn-01 validation");
                        tls.shutdown().await;
                    }
                    Err(e) => self.tls_failed(entry, "handshake", peer, &e),
                }
                return None;
            }
        }
        let acceptor = snapshot.acceptor(sni, entry.protocols.http2).clone();
        drop(snapshot);
        match acceptor.tls_handshake(stream).await {
            Ok(tls) => Some(Box::new(tls)),
            Err(e) => {
                self.tls_failed(entry, "handshake", peer, &e);
                None
            }
        }
    }

    /// The entry points, for status.
    pub fn entrypoints(&self) -> &[Arc<Entrypoint>] {
        &self.entrypoints
    }

    fn entrypoint_for(&self, local: Option<SocketAddr>) -> Option<&Arc<Entrypoint>> {
        local
            .and_then(|l| {
                // An exact address wins over a wildcard listener on the same port.
                self.entrypoints
                    .iter()
                    .find(|e| e.listen.ip() == l.ip() && e.listen.port() == l.port())
                    .or_else(|| self.entrypoints.iter().find(|e| e.matches(l)))
            })
            .or_else(|| self.entrypoints.first())
    }

    fn prepare(session: &mut ServerSession, limits: &Limits, conn: &Arc<Connection>) {
        conn.head_done.store(false, Ordering::Release);
        session.set_keepalive(Some(keepalive_secs(limits)));
        session.set_read_timeout(Some(limits.body_read_timeout));
        session.set_write_timeout(limits.write_timeout);
        session.set_connection_user_context(Some(Box::new(HeadSignal(conn.clone()))));
    }
}

/// Peek a whole ClientHello record (the stream replays it to whoever reads next).
/// `Err` is the failure's metric label.
async fn read_hello(stream: &mut Stream) -> Result<hello::ClientHello, &'static str> {
    let mut header = [0u8; hello::RECORD_HEADER_LEN];
    stream.try_peek(&mut header).await.map_err(|e| hello_failure(&e))?;
    let len = hello::record_len(&header).map_err(|e| e.label())?;
    // At most 5 + 16384 bytes, allocated only for a well-formed record header.
    let mut record = vec![0u8; hello::RECORD_HEADER_LEN + len];
    stream.try_peek(&mut record).await.map_err(|e| hello_failure(&e))?;
    hello::parse(&record).map_err(|e| e.label())
}

fn inet(addr: Option<&pingora_core::protocols::l4::socket::SocketAddr>) -> Option<SocketAddr> {
    addr.and_then(|a| a.as_inet()).copied()
}

#[async_trait]
impl<A> ServerApp for LimitedApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let accepted = Instant::now();
        let digest = stream.get_socket_digest();
        let local = inet(digest.as_ref().and_then(|d| d.local_addr()));
        let peer = inet(digest.as_ref().and_then(|d| d.peer_addr()));
        let entry = self.entrypoint_for(local)?.clone();
        // Dropping the stream closes the connection: nothing is read or written.
        let _admission = entry.admit(peer.map(|p| p.ip()))?;
        let limits = entry.limits.clone();
        let mut stream = stream;
        if let Some(routing) = &self.tcp {
            if tcp::serves(&routing.table.load().tcp, &entry.name) {
                match Box::pin(self.tcp_route(routing, &entry, stream, peer, local)).await {
                    Some(s) => stream = s,
                    None => return None,
                }
            }
        }
        let first_deadline = accepted + limits.read_timeout;
        if entry.protocols.tls {
            // Boxed: the handshake's state (rustls' and the hello reader's) would
            // otherwise sit inline in every connection's task, plain ones included.
            let handshake = Box::pin(self.handshake(&entry, stream, peer));
            match tokio::time::timeout_at(first_deadline.into(), handshake).await {
                Ok(Some(s)) => stream = s,
                Ok(None) => return None,
                Err(_) => {
                    self.tls_failed(&entry, "timeout", peer, &"no complete handshake within read_timeout_ms");
                    return None;
                }
            }
        } else if entry.protocols.h2c {
            // Only the preface starts with "PRI ": peek 4 bytes first, so a short HTTP/1
            // request is never waited on for 24.
            let mut four = [0u8; 4];
            let mut preface = [0u8; 24];
            let peeked = tokio::time::timeout_at(first_deadline.into(), async {
                stream.try_peek(&mut four).await?;
                if four == H2_PREFACE[..4] {
                    stream.try_peek(&mut preface).await?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            match peeked {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) => {
                    entry.head_timeouts.inc();
                    return None;
                }
            }
            if &preface == H2_PREFACE {
                return Box::pin(ServerApp::process_new(&self.app, stream, shutdown)).await;
            }
        }
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
            || self.app.server_options().is_some_and(|o| o.force_custom);
        if h2 {
            // HTTP/2 and custom protocols keep Pingora's own loop; only the caps apply.
            return Box::pin(ServerApp::process_new(&self.app, stream, shutdown)).await;
        }
        // Wait for the first byte before building a session. Every state of this future
        // lives in the connection's task for as long as the connection does, so the
        // request's (large) state is boxed below and only allocated once a request
        // starts: a connection that sends nothing costs this small future, not a request.
        let mut first = [0u8; 1];
        let mut stopping = shutdown.clone();
        tokio::select! {
            peeked = tokio::time::timeout_at(first_deadline.into(), stream.try_peek(&mut first)) => match peeked {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return None,
                Err(_) => {
                    entry.head_timeouts.inc();
                    tracing::debug!(entrypoint = %entry.name, peer = ?peer, "no request within the head deadline; connection closed");
                    return None;
                }
            },
            _ = stopping.wait_for(|s| *s) => return None,
        }
        let conn = Arc::new(Connection { entry: entry.clone(), head_done: AtomicBool::new(false) });
        let mut session = ServerSession::new_http1(stream);
        Self::prepare(&mut session, &limits, &conn);
        if *shutdown.borrow() {
            // Shutting down: answer this request, then close.
            session.set_keepalive(None);
        }
        let mut deadline = accepted + limits.read_timeout;
        loop {
            let served = tokio::select! {
                biased;
                served = Box::pin(self.app.process_new_http(session, shutdown)) => served,
                _ = head_expired(&conn, deadline) => {
                    entry.head_timeouts.inc();
                    tracing::debug!(entrypoint = %entry.name, peer = ?peer, "request head not complete in time; connection closed");
                    return None;
                }
            };
            let (mut stream, persistent) = served?.consume();
            // Idle until the next request's first byte (or the client closes).
            let mut first = [0u8; 1];
            let mut stopping = shutdown.clone();
            let peekable = tokio::select! {
                peeked = tokio::time::timeout(limits.idle_timeout, stream.try_peek(&mut first)) => match peeked {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        entry.idle_timeouts.inc();
                        return None;
                    }
                },
                _ = stopping.wait_for(|s| *s) => return None,
            };
            // A TLS stream cannot be peeked: the idle wait and the next head then share
            // one deadline.
            let wait = if peekable { Duration::ZERO } else { limits.idle_timeout };
            deadline = Instant::now() + wait + limits.read_timeout;
            session = ServerSession::new_http1(stream);
            if let Some(p) = persistent {
                p.apply_to_session(&mut session);
            }
            Self::prepare(&mut session, &limits, &conn);
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.app).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_mirror_traefik_and_validate() {
        let t = TransportConfig::default();
        assert_eq!(t.read_timeout_ms, 60_000, "Traefik's readTimeout");
        assert_eq!(t.idle_timeout_ms, 180_000, "Traefik's idleTimeout");
        assert_eq!(t.body_read_timeout_ms, 60_000);
        assert_eq!(t.write_timeout_ms, 60_000);
        assert_eq!(t.max_connections, None);
        assert!(t.max_connections_per_ip >= 1_000, "a load test from one address must work");
        assert_eq!(t.validate(), Ok(()));
        let l = t.limits(5_000);
        assert_eq!(l.max_connections, 5_000);
        assert_eq!(l.read_timeout, Duration::from_secs(60));
        assert_eq!(l.write_timeout, Some(Duration::from_secs(60)));
        let none = TransportConfig { write_timeout_ms: 0, max_connections: Some(7), ..t.clone() }.limits(5_000);
        assert_eq!((none.write_timeout, none.max_connections), (None, 7));
        for bad in [
            TransportConfig { read_timeout_ms: 0, ..t.clone() },
            TransportConfig { idle_timeout_ms: 0, ..t.clone() },
            TransportConfig { body_read_timeout_ms: 0, ..t.clone() },
            TransportConfig { max_connections: Some(0), ..t.clone() },
            TransportConfig { max_connections_per_ip: 0, ..t.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn automatic_cap_leaves_room_for_upstreams_and_files() {
        assert_eq!(auto_max_connections(20_000, 1), (20_000 - 1_024) / 2);
        assert_eq!(auto_max_connections(1_048_576, 2), (1_048_576 - 1_024) / 4);
        assert_eq!(auto_max_connections(1_024, 1), MIN_AUTO_MAX_CONNECTIONS);
        assert_eq!(auto_max_connections(20_000, 0), auto_max_connections(20_000, 1));
    }

    fn entry(max: u32, per_ip: u32) -> Arc<Entrypoint> {
        let metrics = DownstreamMetrics::register(&Registry::new()).unwrap();
        let cfg = TransportConfig { max_connections: Some(max), max_connections_per_ip: per_ip, ..Default::default() };
        Arc::new(Entrypoint::new("web", "127.0.0.1:80".parse().unwrap(), cfg.limits(0), &metrics))
    }

    #[test]
    fn caps_refuse_and_slots_come_back() {
        let e = entry(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = e.admit(Some(a)).unwrap();
        let _a2 = e.admit(Some(a)).unwrap();
        assert!(e.admit(Some(a)).is_none(), "third from one IP");
        assert_eq!(e.refused_per_ip.get(), 1);
        let _b1 = e.admit(Some(b)).unwrap();
        assert!(e.admit(Some(b)).is_none(), "fourth in total");
        assert_eq!(e.refused_total.get(), 1);
        assert_eq!((e.open(), e.gauge.get()), (3, 3));
        drop(a1);
        assert_eq!((e.open(), e.gauge.get()), (2, 2));
        let _a3 = e.admit(Some("::ffff:10.0.0.1".parse().unwrap())).unwrap();
        assert!(e.admit(Some(a)).is_none(), "a mapped address is the same IP");
    }

    #[test]
    fn entrypoint_by_local_address() {
        let metrics = DownstreamMetrics::register(&Registry::new()).unwrap();
        let l = TransportConfig::default().limits(10);
        let app = LimitedApp::new(
            (),
            vec![
                Arc::new(Entrypoint::new("any", "0.0.0.0:80".parse().unwrap(), l.clone(), &metrics)),
                Arc::new(Entrypoint::new("mesh", "10.0.0.1:80".parse().unwrap(), l.clone(), &metrics)),
                Arc::new(Entrypoint::new("alt", "127.0.0.1:81".parse().unwrap(), l, &metrics)),
            ],
        );
        let name = |a: &str| app.entrypoint_for(Some(a.parse().unwrap())).unwrap().name().to_string();
        assert_eq!(name("10.0.0.1:80"), "mesh");
        assert_eq!(name("192.168.1.1:80"), "any");
        assert_eq!(name("127.0.0.1:81"), "alt");
        assert_eq!(name("127.0.0.1:82"), "any", "unknown: the first");
    }

    #[test]
    fn keepalive_setting_outlasts_the_limits() {
        let l = TransportConfig { read_timeout_ms: 2_500, idle_timeout_ms: 900, ..Default::default() }.limits(1);
        assert_eq!(keepalive_secs(&l), 4);
        let l = TransportConfig { read_timeout_ms: 100, idle_timeout_ms: 100, ..Default::default() }.limits(1);
        assert_eq!(keepalive_secs(&l), 2);
    }
}
