//! Egress test pieces: a trace server answering in Cloudflare's `/cdn-cgi/trace` format
//! (or with garbage, an error status, or never), and Debian's `microsocks` as the SOCKS5
//! gateway, a real process that can be killed and started again on the same port.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the trace server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceMode {
    /// A real-looking trace with `ip=` and `warp=` (`on`, `plus`, `off`).
    Trace {
        /// The egress IP it reports.
        ip: String,
        /// The `warp=` value.
        warp: String,
    },
    /// A 200 answer whose body is not a trace.
    Garbage,
    /// This status with a short body.
    Status(u16),
    /// Read the request and never answer.
    Hang,
}

/// A trace server on loopback; stops on drop.
pub struct TraceServer {
    /// Its address.
    pub addr: SocketAddr,
    /// What it answers now (change it at any time).
    pub mode: Arc<Mutex<TraceMode>>,
    /// Requests received.
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TraceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TraceServer {
    /// Start on `port` (0: any) answering `warp=on` with egress `ip`.
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub async fn start(port: u16, ip: &str) -> TraceServer {
        Self::start_on([127, 0, 0, 1].into(), port, ip).await
    }

    /// Start on `bind:port` (e.g. a Docker bridge's gateway address, for probes from
    /// containers) answering `warp=on` with egress `ip`.
    ///
    /// # Panics
    /// When the address cannot be bound.
    pub async fn start_on(bind: std::net::IpAddr, port: u16, ip: &str) -> TraceServer {
        let listener = TcpListener::bind((bind, port)).await.unwrap_or_else(|e| panic!("bind trace server: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let mode = Arc::new(Mutex::new(TraceMode::Trace { ip: ip.into(), warp: "on".into() }));
        let requests = Arc::new(AtomicUsize::new(0));
        let (m, r) = (mode.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (m, r) = (m.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = 0;
                    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                        match conn.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    r.fetch_add(1, Ordering::Relaxed);
                    let mode = m.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let (status, body) = match mode {
                        TraceMode::Trace { ip, warp } => (
                            200,
                            format!(
                                "fl=1f1\nh=www.cloudflare.com\nip={ip}\nts=1733300000.1\nvisit_scheme=http\nuag=test\ncolo=TST\nsliver=none\nhttp=http/1.1\nloc=XX\ntls=off\nsni=off\nwarp={warp}\ngateway=off\nrbi=off\nkex=none\n"
                            ),
                        ),
                        TraceMode::Garbage => (200, "<html><body>Access denied</body></html>\n".to_string()),
                        TraceMode::Status(s) => (s, "error\n".to_string()),
                        TraceMode::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        TraceServer { addr, mode, requests, task }
    }

    /// Answer `mode` from now on.
    pub fn set(&self, mode: TraceMode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// `http://ADDR/cdn-cgi/trace`.
    pub fn url(&self) -> String {
        format!("http://{}/cdn-cgi/trace", self.addr)
    }
}

/// Debian's `microsocks` on a loopback port; killed on drop.
pub struct Socks {
    /// Its port.
    pub port: u16,
    auth: Option<(String, String)>,
    child: Option<Child>,
}

impl Drop for Socks {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Socks {
    /// Start `microsocks` on `port`, with no authentication.
    ///
    /// # Panics
    /// When microsocks is not installed or does not listen within 5 s.
    pub fn start(port: u16) -> Socks {
        let mut s = Socks { port, auth: None, child: None };
        s.restart();
        s
    }

    /// Start one that demands user/password authentication (clients offering none are
    /// refused at the greeting).
    pub fn start_with_auth(port: u16, user: &str, password: &str) -> Socks {
        let mut s = Socks { port, auth: Some((user.into(), password.into())), child: None };
        s.restart();
        s
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill it (SIGKILL); connections to the port are refused afterwards.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)start it on the same port and wait until it listens.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new("microsocks");
        cmd.args(["-i", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((u, p)) = &self.auth {
            cmd.args(["-u", u, "-P", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start microsocks (apt-get install microsocks): {e}"));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "microsocks did not listen on {} in 5 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Debian's `tinyproxy` as the gateway's HTTP proxy on a loopback port; killed on drop.
pub struct HttpProxy {
    /// Its port.
    pub port: u16,
    child: Child,
    _dir: crate::Scratch,
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HttpProxy {
    /// Start tinyproxy on `port`, allowing loopback clients.
    ///
    /// # Panics
    /// When tinyproxy is not installed or does not listen within 5 s.
    pub fn start(port: u16) -> HttpProxy {
        let dir = crate::Scratch::new("tinyproxy");
        let conf = dir.path("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!("Port {port}\nListen 127.0.0.1\nTimeout 5\nAllow 127.0.0.1\nMaxClients 20\nUser nobody\nGroup nogroup\n"),
        )
        .unwrap_or_else(|e| panic!("write tinyproxy.conf: {e}"));
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start tinyproxy (apt-get install tinyproxy-bin): {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tinyproxy did not listen on {port} in 5 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        HttpProxy { port, child, _dir: dir }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
