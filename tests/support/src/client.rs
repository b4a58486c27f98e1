//! The test client: HTTP/1.1 over hyper's connection API, one kept-alive connection at a
//! time, and never a silent resend.
//!
//! A request that was written on a connection which then closed before the response
//! arrived is an error the test sees. The client opens a fresh connection only when
//! nothing is lost by it: before the first request, after a response that announced
//! `Connection: close`, or when the kept connection is already known to be closed
//! before anything is written on it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Channel, Full};
use hyper::body::Frame;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, io::Error>;

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub fn chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

struct Conn {
    sender: SendRequest<Body>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A keep-alive client for one server address.
pub struct Client {
    addr: SocketAddr,
    /// Local address connections leave from (`None`: the kernel's choice).
    source: Option<IpAddr>,
    conn: Option<Conn>,
    /// Time limit of one whole request (connect, send, read the body).
    pub timeout: Duration,
    /// Connections opened so far.
    pub connections: u64,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

fn broken(e: hyper::Error) -> io::Error {
    let kind = if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        io::ErrorKind::UnexpectedEof
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, format!("connection failed before a whole response: {e}"))
}

impl Client {
    /// A client for `addr`; connects on the first request.
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, source: None, conn: None, timeout: Duration::from_secs(30), connections: 0 }
    }

    /// A client for `addr` whose connections leave from the local address `source` (e.g.
    /// a non-loopback address of this machine, to reach a loopback listener from it).
    pub fn from_source(addr: SocketAddr, source: IpAddr) -> Client {
        Client { source: Some(source), ..Client::new(addr) }
    }

    /// `GET path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> io::Result<Reply> {
        self.request("GET", host, path, &[], &[]).await
    }

    /// Sends a request with a `Content-Length` body (none for an empty GET or HEAD) and
    /// reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Reply> {
        let sized = !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS");
        let length = body.len().to_string();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if sized {
            all.push(("content-length", &length));
        }
        let full: Body = Full::new(Bytes::copy_from_slice(body)).map_err(|never| match never {}).boxed();
        self.send(method, host, path, &all, full).await
    }

    /// Sends a request whose body goes out as the given chunks (`Transfer-Encoding:
    /// chunked`, one chunk each, `gap` apart) and reads the whole response.
    pub async fn request_chunked(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        chunks: &[&[u8]],
        gap: Duration,
    ) -> io::Result<Reply> {
        let (mut tx, rx) = Channel::<Bytes, io::Error>::new(1);
        let chunks: Vec<Bytes> = chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect();
        let feeder = tokio::spawn(async move {
            for (i, c) in chunks.into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                if tx.send(Frame::data(c)).await.is_err() {
                    return;
                }
            }
        });
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("transfer-encoding", "chunked"));
        let r = self.send(method, host, path, &all, rx.boxed()).await;
        feeder.abort();
        r
    }

    async fn connect(&mut self) -> io::Result<()> {
        let stream = match self.source {
            None => TcpStream::connect(self.addr).await?,
            Some(ip) => {
                let socket =
                    if ip.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(self.addr).await?
            }
        };
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(broken)?;
        let task = tokio::spawn(async move {
            let _ended = conn.await;
        });
        self.connections += 1;
        self.conn = Some(Conn { sender, task });
        Ok(())
    }

    async fn send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> io::Result<Reply> {
        let mut req = http::Request::builder().method(method).uri(path).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).map_err(invalid)?;
        let limit = self.timeout;
        match tokio::time::timeout(limit, self.exchange(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("no whole response within {limit:?}")))
            }
        }
    }

    async fn exchange(&mut self, req: http::Request<Body>) -> io::Result<Reply> {
        // A connection already known to be closed has nothing of ours on it: replacing it
        // loses nothing. Once the request is handed to hyper there is no second try.
        if self.conn.as_ref().is_some_and(|c| c.sender.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.connect().await?;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no connection"));
        };
        if conn.sender.ready().await.is_err() {
            // Closed while idle, before anything was written: a fresh connection.
            self.connect().await?;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no connection"));
        };
        let resp = conn.sender.send_request(req).await.map_err(broken)?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).to_string()))
            .collect();
        let body = resp.into_body().collect().await.map_err(broken)?.to_bytes().to_vec();
        let close = headers.iter().any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        if close {
            self.conn = None;
        }
        Ok(Reply { status, headers, body })
    }
}

/// One request on a fresh connection.
pub async fn fetch(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Reply> {
    Client::new(addr).request(method, host, path, headers, body).await
}

/// One request on a fresh connection from the local address `source`.
pub async fn fetch_from(
    source: IpAddr,
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Reply> {
    Client::from_source(addr, source).request(method, host, path, headers, body).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::{Backend, Behaviour};

    async fn backend() -> Backend {
        Backend::start("b", SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap()
    }

    #[tokio::test]
    async fn a_request_lost_on_a_kept_alive_connection_is_an_error_not_a_resend() {
        let b = backend().await;
        let mut c = Client::new(b.addr);
        assert_eq!(c.get("b", "/").await.unwrap().status, 200);
        b.set(Behaviour::Close);
        let err = c.get("b", "/").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        assert_eq!(b.count(), 2, "the lost request was sent once, not again");
        assert_eq!(c.connections, 1);
        // The next request is a new one, on a new connection.
        b.set(Behaviour::Ok);
        assert_eq!(c.get("b", "/").await.unwrap().status, 200);
        assert_eq!(c.connections, 2);
    }

    #[tokio::test]
    async fn an_announced_close_is_followed_by_a_fresh_connection() {
        let b = backend().await;
        let mut c = Client::new(b.addr);
        let r = c.request("GET", "b", "/", &[("connection", "close")], &[]).await.unwrap();
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(c.get("b", "/").await.unwrap().status, 200);
        assert_eq!(c.get("b", "/").await.unwrap().status, 200);
        assert_eq!(c.connections, 2, "one after the announced close, then kept alive");
        assert_eq!(b.count(), 3);
    }
}
