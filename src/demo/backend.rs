//! The demo's three stand-in services, on hyper: each answers every request with its name
//! (or the status it was told to fail with); `stop` is a crash (listener and open
//! connections dropped at once).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A stand-in service on loopback; stops when dropped.
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    failing: Arc<AtomicU16>,
    served: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

/// What one service shares with its connections.
struct Shared {
    name: String,
    failing: Arc<AtomicU16>,
    served: Arc<AtomicU64>,
}

impl Shared {
    fn answer(&self) -> Response<Full<Bytes>> {
        let (code, text) = match self.failing.load(Ordering::Relaxed) {
            0 => (200, format!("{}\n", self.name)),
            code => (code, format!("{} is failing with {code}\n", self.name)),
        };
        self.served.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        resp
    }
}

impl Service {
    /// Listens on `addr` (port 0: any).
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Service> {
        let listener = TcpListener::bind(addr).await?;
        let failing = Arc::new(AtomicU16::new(0));
        let served = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared { name: name.to_string(), failing: failing.clone(), served: served.clone() });
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Connections belong to this task: aborting it drops them all, like a crash.
            let mut open = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((sock, _)) = listener.accept() => {
                        let shared = shared.clone();
                        let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                            let answer = shared.answer();
                            async move { Ok::<_, Infallible>(answer) }
                        });
                        open.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(sock), service)
                                .await;
                        });
                    }
                    Some(_) = open.join_next(), if !open.is_empty() => {}
                }
            }
        });
        Ok(Service { addr, failing, served, task: Some(task) })
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
