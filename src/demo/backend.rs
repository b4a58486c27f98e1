//! The demo's three stand-in services: each answers every request with its name (or the
//! status it was told to fail with) and closes the connection; `stop` is a crash.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A stand-in service on loopback; stops when dropped.
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    name: Arc<str>,
    failing: Arc<AtomicU16>,
    served: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl Service {
    /// Listens on `addr` (port 0: any).
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Service> {
        let listener = TcpListener::bind(addr).await?;
        let mut service = Service {
            addr: listener.local_addr()?,
            name: name.into(),
            failing: Arc::new(AtomicU16::new(0)),
            served: Arc::new(AtomicU64::new(0)),
            task: None,
        };
        let (name, failing, served) = (service.name.clone(), service.failing.clone(), service.served.clone());
        service.task = Some(tokio::spawn(async move {
            // Connections belong to this task: aborting it drops them all, like a crash.
            let mut open = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((sock, _)) = listener.accept() => {
                        open.spawn(reply(sock, name.clone(), failing.load(Ordering::Relaxed), served.clone()));
                    }
                    Some(_) = open.join_next(), if !open.is_empty() => {}
                }
            }
        }));
        Ok(service)
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on answer `status` (0: healthy again).
    pub fn fail_with(&self, status: u16) {
        self.failing.store(status, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops listening and drops open connections.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one request head (the demo sends GETs without bodies), answers, closes.
async fn reply(mut sock: TcpStream, name: Arc<str>, failing: u16, served: Arc<AtomicU64>) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let (code, text) = match failing {
        0 => (200, format!("{name}\n")),
        code => (code, format!("{name} is failing with {code}\n")),
    };
    let answer = format!(
        "HTTP/1.1 {code} Demo\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    if sock.write_all(answer.as_bytes()).await.is_ok() {
        served.fetch_add(1, Ordering::Relaxed);
    }
}
