//! A small, controllable HTTP/1.1 backend used by the demo, the tests and the
//! benchmarks: it answers with a chosen status or delay, can drop connections or stop
//! listening, and records every request it saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the backend does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer 200 with its name.
    Ok,
    /// Answer with this status.
    Status(u16),
    /// Wait this long, then answer 200.
    Delay(Duration),
    /// Read the request, then close the connection without answering.
    Close,
}

/// A request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body length received.
    pub body_len: usize,
}

impl Hit {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

struct Shared {
    name: String,
    mode: AtomicU8,
    status: AtomicU16,
    delay_ms: AtomicU64,
    hits: Mutex<Vec<Hit>>,
    count: AtomicU64,
}

/// A running backend. Dropping it stops it.
pub struct Backend {
    /// Address it listens on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Start a backend on `addr` (use port 0 for any free port).
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            mode: AtomicU8::new(0),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            hits: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            conns.spawn(serve(stream, s.clone()));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Backend { addr, shared, task: Some(task) })
    }

    /// The backend's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Change behaviour for the following requests.
    pub fn set(&self, b: Behaviour) {
        let (mode, status, delay) = match b {
            Behaviour::Ok => (0, 200, 0),
            Behaviour::Status(s) => (1, s, 0),
            Behaviour::Delay(d) => (2, 200, d.as_millis() as u64),
            Behaviour::Close => (3, 0, 0),
        };
        self.shared.status.store(status, Ordering::Relaxed);
        self.shared.delay_ms.store(delay, Ordering::Relaxed);
        self.shared.mode.store(mode, Ordering::Relaxed);
    }

    /// Requests seen so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Number of requests seen so far.
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Forget recorded requests.
    pub fn clear(&self) {
        if let Ok(mut h) = self.shared.hits.lock() {
            h.clear();
        }
        self.shared.count.store(0, Ordering::Relaxed);
    }

    /// Stop listening and drop every open connection (like a killed process).
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Whether it is still serving.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve(mut stream: TcpStream, s: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let content_length: usize =
            headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        buf.drain(..head_end);
        let body_len = if chunked {
            match read_chunked(&mut stream, &mut buf).await {
                Some(n) => n,
                None => return,
            }
        } else {
            while buf.len() < content_length {
                let mut chunk = [0u8; 65536];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..content_length);
            content_length
        };
        let close = headers.iter().any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        if let Ok(mut h) = s.hits.lock() {
            h.push(Hit { method: method.clone(), path: path.clone(), headers, body_len });
        }
        s.count.fetch_add(1, Ordering::Relaxed);
        let (status, body) = match s.mode.load(Ordering::Relaxed) {
            1 => (s.status.load(Ordering::Relaxed), format!("{} says {}\n", s.name, s.status.load(Ordering::Relaxed))),
            2 => {
                tokio::time::sleep(Duration::from_millis(s.delay_ms.load(Ordering::Relaxed))).await;
                (200, format!("{}\n", s.name))
            }
            3 => return,
            _ => (200, format!("{}\n", s.name)),
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: {}\r\n{}\r\n{body}",
            body.len(),
            s.name,
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(p) = find(buf, b"\r\n") {
                break p;
            }
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let size_str = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..size + 2);
        total += size;
        if size == 0 {
            return Some(total);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
