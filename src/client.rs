//! A minimal HTTP/1.1 client for the demo, the tests and the `status` command: one
//! keep-alive connection, reopened when the server closes it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// A keep-alive client for one server address.
pub struct Client {
    addr: SocketAddr,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Client {
    /// A client for `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None, buf: Vec::new(), timeout: Duration::from_secs(30) }
    }

    /// `GET path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> std::io::Result<Reply> {
        self.request("GET", host, path, &[], &[]).await
    }

    /// Send a request and read the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        match tokio::time::timeout(self.timeout, self.request_inner(method, host, path, headers, body)).await {
            Ok(r) => {
                if r.is_err() {
                    self.conn = None;
                }
                r
            }
            Err(_) => {
                self.conn = None;
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        let reused = self.conn.is_some();
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.conn = Some(s);
            self.buf.clear();
        }
        match self.exchange(&msg, method == "HEAD").await {
            Ok(r) => Ok(r),
            // A pooled connection the server closed meanwhile: one fresh try, as
            // browsers do; only for a connection that was idle, never for a new one.
            Err(e)
                if reused
                    && matches!(method, "GET" | "HEAD")
                    && self.buf.is_empty()
                    && e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                let s = TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                self.conn = Some(s);
                self.buf.clear();
                self.exchange(&msg, method == "HEAD").await
            }
            Err(e) => Err(e),
        }
    }

    async fn exchange(&mut self, msg: &[u8], head_only: bool) -> std::io::Result<Reply> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
        let conn = self.conn.as_mut().ok_or_else(eof)?;
        conn.write_all(msg).await?;
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 16384];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Err(eof());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut body = Vec::new();
        if head_only || status == 204 || status == 304 {
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                let mut chunk = [0u8; 65536];
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    return Err(eof());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            body = self.buf.drain(..len).collect();
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(p) = find(&self.buf, b"\r\n") {
                        break p;
                    }
                    let mut chunk = [0u8; 65536];
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(eof());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end]).split(';').next().unwrap_or("").trim(),
                    16,
                )
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    let mut chunk = [0u8; 65536];
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(eof());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        } else {
            // Delimited by close.
            body.append(&mut self.buf);
            let mut chunk = [0u8; 65536];
            loop {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            self.conn = None;
        }
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
) -> std::io::Result<Reply> {
    let mut c = Client::new(addr);
    c.request(method, host, path, headers, body).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
