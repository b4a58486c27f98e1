//! The test backend: an HTTP server on hyper whose behaviour a test switches at run
//! time (status, delay, dropped connection, chunked or slowly streamed answers, echo),
//! recording every request with its body. It speaks HTTP/1.1 by default, h2c (HTTP/2
//! with prior knowledge) or TLS with ALPN (h2 or HTTP/1.1) when started with a
//! [`Serve`] mode; [`TestCa`] issues its certificates.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Channel, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

type Body = BoxBody<Bytes, Infallible>;

/// What the backend does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer 200 with its name and a newline.
    Ok,
    /// Answer with this status (body `<name> says <status>`).
    Status(u16),
    /// Wait this long, then answer 200.
    Delay(Duration),
    /// Read the request, then close the connection without answering.
    Close,
    /// Answer 200 with the request body, chunked (no `Content-Length`).
    Echo,
    /// Accept a WebSocket upgrade (101) and echo every message back.
    WebSocketEcho,
    /// Answer 200 `grpc-body` with trailers `grpc-status: 0` and `grpc-message: done`.
    Trailers,
    /// Answer 200 with `chunks` chunks of [`Backend::chunk`] (`size` bytes each), `every`
    /// apart, chunked: a slow stream when `every` is long.
    Stream {
        /// Number of chunks.
        chunks: usize,
        /// Bytes per chunk.
        size: usize,
        /// Pause before each chunk after the first.
        every: Duration,
    },
}

/// A request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body length received.
    pub body_len: usize,
    /// The body received.
    pub body: Vec<u8>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
}

impl Hit {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub fn chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

struct Shared {
    name: String,
    behaviour: Mutex<Behaviour>,
    hits: Mutex<Vec<Hit>>,
    count: AtomicU64,
    connections: AtomicU64,
    handshake_failures: AtomicU64,
}

/// How a [`Backend`] speaks.
#[derive(Clone)]
pub enum Serve {
    /// HTTP/1.1 in clear.
    Http1,
    /// HTTP/2 in clear with prior knowledge (what `h2c://` upstreams speak).
    H2c,
    /// TLS with this configuration; h2 when ALPN picks it, else HTTP/1.1.
    Tls(Arc<tokio_rustls::rustls::ServerConfig>),
}

/// A running backend; dropping it stops it.
pub struct Backend {
    /// The address it listens on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend called `name` on `addr` (port 0 for any free port).
    pub async fn start(name: &str, addr: SocketAddr) -> io::Result<Backend> {
        Self::start_with(name, addr, Serve::Http1).await
    }

    /// Starts a backend called `name` on `addr`, speaking as `serve` says.
    pub async fn start_with(name: &str, addr: SocketAddr, serve: Serve) -> io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            behaviour: Mutex::new(Behaviour::Ok),
            hits: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
        });
        let s = shared.clone();
        // The connections live in this task's set: aborting the task drops them all.
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            conns.spawn(serve_connection(stream, s.clone(), serve.clone()));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Backend { addr, shared, task: Some(task) })
    }

    /// Starts `b1..=bn` on free loopback ports.
    ///
    /// # Panics
    /// When a backend cannot bind.
    pub async fn several(n: usize) -> Vec<Backend> {
        let mut out = Vec::new();
        for i in 1..=n {
            match Backend::start(&format!("b{i}"), SocketAddr::from(([127, 0, 0, 1], 0))).await {
                Ok(b) => out.push(b),
                Err(e) => panic!("cannot start backend b{i}: {e}"),
            }
        }
        out
    }

    /// The backend's URL, `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the behaviour for the following requests.
    pub fn set(&self, b: Behaviour) {
        *self.shared.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = b;
    }

    /// Requests seen so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Number of requests seen so far.
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (TLS ones only once the handshake completed).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed (e.g. the client refused the certificate).
    pub fn handshake_failures(&self) -> u64 {
        self.shared.handshake_failures.load(Ordering::Relaxed)
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.shared.hits.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.shared.count.store(0, Ordering::Relaxed);
    }

    /// Stops listening and drops every open connection, like a killed process.
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Whether it still serves.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Chunk `i` of a [`Behaviour::Stream`] answer of `size`-byte chunks: its index in
    /// decimal, then dots, then a newline (so a test can rebuild the whole body).
    pub fn chunk(i: usize, size: usize) -> Vec<u8> {
        let mut c = format!("{i}:").into_bytes();
        c.resize(size.saturating_sub(1).max(c.len()), b'.');
        c.push(b'\n');
        c
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serve one accepted connection as `serve` says, until it ends.
async fn serve_connection(stream: tokio::net::TcpStream, s: Arc<Shared>, serve: Serve) {
    let svc = {
        let s = s.clone();
        service_fn(move |req| answer(req, s.clone()))
    };
    match serve {
        Serve::Http1 => {
            s.connections.fetch_add(1, Ordering::Relaxed);
            let _ended = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
        }
        Serve::H2c => {
            s.connections.fetch_add(1, Ordering::Relaxed);
            let _ended = http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
        }
        Serve::Tls(config) => {
            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else {
                s.handshake_failures.fetch_add(1, Ordering::Relaxed);
                return;
            };
            s.connections.fetch_add(1, Ordering::Relaxed);
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 {
                let _ended = http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), svc).await;
            } else {
                let _ended = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).with_upgrades().await;
            }
        }
    }
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}

/// A chunked body fed by a task: `chunks` in order, `every` apart.
fn streamed(chunks: Vec<Vec<u8>>, every: Duration) -> Body {
    let (mut tx, rx) = Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        for (i, c) in chunks.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(every).await;
            }
            if tx.send(Frame::data(Bytes::from(c))).await.is_err() {
                return;
            }
        }
    });
    rx.boxed()
}

async fn answer(mut req: hyper::Request<Incoming>, s: Arc<Shared>) -> Result<hyper::Response<Body>, io::Error> {
    let upgrade = hyper::upgrade::on(&mut req);
    let version = format!("{:?}", req.version());
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).to_string()))
        .collect();
    let ws_key = headers.iter().find(|(k, _)| k == "sec-websocket-key").map(|(_, v)| v.clone());
    let body = req.into_body().collect().await.map_err(io::Error::other)?.to_bytes().to_vec();
    s.hits.lock().unwrap_or_else(|e| e.into_inner()).push(Hit {
        method,
        path,
        headers,
        body_len: body.len(),
        body: body.clone(),
        version,
    });
    s.count.fetch_add(1, Ordering::Relaxed);
    let behaviour = *s.behaviour.lock().unwrap_or_else(|e| e.into_inner());
    let (status, out) = match behaviour {
        Behaviour::Ok => (200, full(format!("{}\n", s.name))),
        Behaviour::Status(code) => (code, full(format!("{} says {code}\n", s.name))),
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            (200, full(format!("{}\n", s.name)))
        }
        // An error from the service makes hyper drop the connection unanswered.
        Behaviour::Close => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "told to close")),
        Behaviour::Echo => (200, streamed(vec![body], Duration::ZERO)),
        Behaviour::WebSocketEcho => {
            let Some(key) = ws_key else { return Err(io::Error::other("not a WebSocket handshake")) };
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                let (mut tx, mut rx) = futures_util::StreamExt::split(ws);
                while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut rx).await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && futures_util::SinkExt::send(&mut tx, msg).await.is_err() {
                        break;
                    }
                }
            });
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            return hyper::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .header("x-backend", s.name.as_str())
                .body(full(String::new()))
                .map_err(io::Error::other);
        }
        Behaviour::Trailers => {
            let (mut tx, rx) = Channel::<Bytes, Infallible>::new(2);
            tokio::spawn(async move {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                trailers.insert("grpc-message", http::HeaderValue::from_static("done"));
                if tx.send(Frame::data(Bytes::from_static(b"grpc-body"))).await.is_ok() {
                    let _ = tx.send(Frame::trailers(trailers)).await;
                }
            });
            (200, rx.boxed())
        }
        Behaviour::Stream { chunks, size, every } => {
            (200, streamed((0..chunks).map(|i| Backend::chunk(i, size)).collect(), every))
        }
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("x-backend", s.name.as_str())
        .body(out)
        .map_err(io::Error::other)
}
