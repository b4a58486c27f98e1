//! Raw-socket HTTP/1.1 test peers, for tests where the exact bytes matter: a backend that
//! records every byte it receives and answers with canned bytes, and a client that
//! writes bytes once (never resends) and reads one response.
//!
//! The backend frames requests the way a careless server does, on purpose: a
//! `Content-Length` that is not a plain number (`42, 42`) counts as no body, so what a
//! proxy forwards unnormalised shows up here as a second, smuggled request.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// One request as the raw backend framed it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The head as received, request line and header lines, without the blank line.
    pub head: String,
    /// The body as framed by the lenient rules above.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line (`POST / HTTP/1.1`).
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Every value of header `name` (any case), in order, one per header line.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        header_values(&self.head, name)
    }
}

/// A response read by [`raw_exchange`].
#[derive(Debug, Clone)]
pub struct RawReply {
    /// Status code (0 when no complete status line arrived).
    pub status: u16,
    /// The head as received, without the blank line.
    pub head: String,
    /// The body bytes that followed the head.
    pub body: Vec<u8>,
}

impl RawReply {
    /// Every value of header `name` (any case), in order.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        header_values(&self.head, name)
    }
}

fn header_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Length of a chunked body at the start of `buf`, if it is complete (no trailers).
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + find(&buf[at..], b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            return (buf.len() >= at + 2).then_some(at + 2);
        }
        at += size + 2;
        if buf.len() < at {
            return None;
        }
    }
}

struct Shared {
    response: Mutex<Vec<u8>>,
    received: Mutex<Vec<u8>>,
    requests: Mutex<Vec<RawRequest>>,
}

/// A raw HTTP/1.1 backend; dropping it stops it.
pub struct RawBackend {
    /// The address it listens on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl RawBackend {
    /// Starts a backend on a free loopback port answering every request with `response`
    /// (complete response bytes, head and body).
    pub async fn start(response: &[u8]) -> io::Result<RawBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            response: Mutex::new(response.to_vec()),
            received: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(serve(stream, s.clone()));
            }
        });
        Ok(RawBackend { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer the next requests with `response` instead.
    pub fn set_response(&self, response: &[u8]) {
        if let Ok(mut r) = self.shared.response.lock() {
            *r = response.to_vec();
        }
    }

    /// Every request framed so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.shared.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Every byte received so far, all connections in arrival order.
    pub fn received(&self) -> Vec<u8> {
        self.shared.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Forget what was received.
    pub fn clear(&self) {
        if let Ok(mut r) = self.shared.requests.lock() {
            r.clear();
        }
        if let Ok(mut r) = self.shared.received.lock() {
            r.clear();
        }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body length a careless backend takes from `head`: the first `Content-Length`
/// line whose value is a plain number, chunked if `Transfer-Encoding` says so, else 0.
enum Framing {
    Length(usize),
    Chunked,
}

fn lenient_framing(head: &str) -> Framing {
    if header_values(head, "transfer-encoding").iter().any(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Framing::Chunked;
    }
    let n = header_values(head, "content-length").iter().find_map(|v| v.parse::<usize>().ok()).unwrap_or(0);
    Framing::Length(n)
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Frame every complete request in the buffer.
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let start = end + 4;
            let body_len = match lenient_framing(&head) {
                Framing::Length(n) if buf.len() >= start + n => n,
                Framing::Chunked => match chunked_len(&buf[start..]) {
                    Some(n) => n,
                    None => break,
                },
                Framing::Length(_) => break,
            };
            let body = buf[start..start + body_len].to_vec();
            buf.drain(..start + body_len);
            if let Ok(mut r) = shared.requests.lock() {
                r.push(RawRequest { head, body });
            }
            let response = shared.response.lock().map(|r| r.clone()).unwrap_or_default();
            if stream.write_all(&response).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut r) = shared.received.lock() {
                    r.extend_from_slice(&chunk[..n]);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Connects to `addr`, writes `request` once, and reads one response: its head, then a
/// body framed by `Content-Length` or chunked encoding, none for 1xx/204/304, or up to
/// the connection's close. Gives up after `limit`, returning what arrived.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> io::Result<RawReply> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let rest = &buf[end + 4..];
            let done = if matches!(status, 100..=199 | 204 | 304) {
                Some(0)
            } else if header_values(&head, "transfer-encoding").iter().any(|v| v.contains("chunked")) {
                chunked_len(rest)
            } else {
                header_values(&head, "content-length")
                    .first()
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|&n| rest.len() >= n)
            };
            if let Some(n) = done {
                return Ok(RawReply { status, head, body: rest[..n.min(rest.len())].to_vec() });
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            // Closed, failed or out of time: whatever arrived is the answer.
            _ => {
                let end = find(&buf, b"\r\n\r\n");
                let head = String::from_utf8_lossy(&buf[..end.unwrap_or(buf.len())]).to_string();
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let body = end.map(|e| buf[e + 4..].to_vec()).unwrap_or_default();
                return Ok(RawReply { status, head, body });
            }
        }
    }
}
