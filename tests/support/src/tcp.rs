//! TCP and UDP test servers: an echo server that names itself, answers a health probe,
//! optionally reads a PROXY protocol header first, and can be made sick or closed; a
//! TLS variant; a UDP echo server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// What a health probe sends and a healthy server answers.
pub const PROBE: &[u8] = b"PING\r\n";
/// The healthy answer.
pub const PONG: &[u8] = b"+PONG\r\n";
/// A connection starting with this gets the server's name and a newline, then echo.
pub const WHO: &[u8] = b"WHO\n";

/// An echo server on loopback; stops on drop.
pub struct TcpEcho {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name (answered to [`WHO`]).
    pub name: String,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Answer probes with an error instead of [`PONG`].
    pub sick: Arc<AtomicBool>,
    /// PROXY headers read (raw bytes), when started with one expected.
    pub proxy_headers: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// # Panics
/// Binding a loopback port failing: a broken test environment.
impl TcpEcho {
    /// A plain echo server named `name`.
    pub async fn start(name: &str) -> TcpEcho {
        Self::start_with(name, None, None).await
    }

    /// With `proxy` a PROXY protocol version (1 or 2) read before anything else; with
    /// `tls` the connection is TLS first (the name is sent right after the handshake).
    pub async fn start_with(name: &str, proxy: Option<u8>, tls: Option<Arc<rustls::ServerConfig>>) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let sick = Arc::new(AtomicBool::new(false));
        let proxy_headers = Arc::new(Mutex::new(Vec::new()));
        let (n, a, s, h) = (name.to_string(), accepted.clone(), sick.clone(), proxy_headers.clone());
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                let (n, s, h, acceptor) = (n.clone(), s.clone(), h.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Some(v) = proxy {
                        match read_proxy_header(&mut stream, v).await {
                            Some(raw) => h.lock().unwrap_or_else(|p| p.into_inner()).push(raw),
                            None => return,
                        }
                    }
                    match acceptor {
                        Some(acc) => {
                            if let Ok(mut tls) = acc.accept(stream).await {
                                let _ = tls.write_all(format!("{n}\n").as_bytes()).await;
                                serve(&mut tls, &n, &s, false).await;
                            }
                        }
                        None => serve(&mut stream, &n, &s, true).await,
                    }
                });
            }
        });
        TcpEcho { addr, name: name.to_string(), accepted, sick, proxy_headers, task }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, name: &str, sick: &AtomicBool, commands: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = commands;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if first {
            first = false;
            if buf[..n].starts_with(PROBE) {
                let answer: &[u8] = if sick.load(Ordering::Relaxed) { b"-ERR sick\r\n" } else { PONG };
                let _ = stream.write_all(answer).await;
                return;
            }
            if buf[..n].starts_with(WHO) {
                let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
                if stream.write_all(&buf[WHO.len()..n]).await.is_err() {
                    return;
                }
                continue;
            }
        }
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn read_proxy_header<S: AsyncRead + Unpin>(stream: &mut S, version: u8) -> Option<Vec<u8>> {
    if version == 1 {
        let mut raw = Vec::new();
        let mut b = [0u8; 1];
        while !raw.ends_with(b"\r\n") && raw.len() < 108 {
            stream.read_exact(&mut b).await.ok()?;
            raw.push(b[0]);
        }
        return Some(raw);
    }
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await.ok()?;
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).await.ok()?;
    let mut raw = head.to_vec();
    raw.extend_from_slice(&rest);
    Some(raw)
}

/// A UDP server answering each datagram with `<name>:<datagram>`; stops on drop.
pub struct UdpEcho {
    /// Its address.
    pub addr: SocketAddr,
    /// Distinct client addresses seen (the proxy's session sockets).
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpEcho {
    /// Start one named `name`.
    ///
    /// # Panics
    /// Binding a loopback port failing.
    pub async fn start(name: &str) -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind udp: {e}"));
        let addr = socket.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (p, name) = (peers.clone(), name.to_string());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                {
                    let mut seen = p.lock().unwrap_or_else(|e| e.into_inner());
                    if !seen.contains(&from) {
                        seen.push(from);
                    }
                }
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, from).await;
            }
        });
        UdpEcho { addr, peers, task }
    }
}
