//! An https health check against a local TLS backend with a self-signed certificate
//! (accepted through a transport with `insecureSkipVerify`: checks verify by default,
//! see `t13_upstream_tls` for verified checks): the check completes the handshake,
//! marks the upstream healthy while the backend answers, unhealthy when it stops, and
//! healthy again when it is back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::support::*;

/// A TLS backend for `app.test` answering every request `200 ok`; counts the requests
/// and remembers the last request head.
struct TlsBackend {
    task: JoinHandle<()>,
    seen: Arc<AtomicUsize>,
    last: Arc<std::sync::Mutex<String>>,
}

fn acceptor() -> tokio_rustls::TlsAcceptor {
    let generated = rcgen::generate_simple_self_signed(vec!["app.test".into()]).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key.into())
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(server))
}

impl TlsBackend {
    async fn start(addr: SocketAddr) -> TlsBackend {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let tls = acceptor();
        let seen = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(std::sync::Mutex::new(String::new()));
        let (count, head) = (seen.clone(), last.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let Ok(mut conn) = tls.accept(tcp).await else { continue };
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                    match conn.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                *head.lock().unwrap() = String::from_utf8_lossy(&buf[..got]).to_ascii_lowercase();
                count.fetch_add(1, Ordering::Relaxed);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n").await;
                let _ = conn.shutdown().await;
            }
        });
        TlsBackend { task, seen, last }
    }

    fn stop(self) {
        self.task.abort();
    }
}

async fn healthy(agent: &Agent, url: &str) -> Option<bool> {
    upstream_status(&agent.status().await, "app", url)["healthy"].as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_health_check_follows_a_tls_backend() {
    // A known port, so the backend can come back on it later.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backend = TlsBackend::start(addr).await;
    let url = format!("https://app.test:{}", addr.port());
    let check = "        healthCheck:\n          path: /healthz\n          interval: 100ms\n          timeout: 1s\n          rise: 1\n          fall: 1\n";
    let lb = format!("        serversTransport: skip\n{check}");
    let yaml = format!(
        "{}  serversTransports:\n    skip:\n      insecureSkipVerify: true\n",
        routes("app", "PathPrefix(`/`)", std::slice::from_ref(&url), &lb)
    );
    let agent =
        start_agent_with(&yaml, "", "[resolver]\nhosts_file = \"hosts\"\n", &[("hosts", "127.0.0.1 app.test\n")], None)
            .await;

    tracing::info!("phase 1: the TLS backend answers; checks pass");
    let seen = backend.seen.clone();
    wait_for("https checks to reach the backend", Duration::from_secs(10), || {
        let seen = seen.clone();
        async move { seen.load(Ordering::Relaxed) >= 3 }
    })
    .await;
    assert_eq!(healthy(&agent, &url).await, Some(true), "{}", agent.log());
    let head = backend.last.lock().unwrap().clone();
    assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: app.test:{}\r\n", addr.port())), "{head}");
    assert_eq!(agent.metric("constellation_upstream_healthy", &["service=\"app\""]).await, 1.0);

    tracing::info!("phase 2: the backend stops; the upstream goes down");
    backend.stop();
    wait_for("the upstream marked unhealthy", Duration::from_secs(10), || async {
        healthy(&agent, &url).await == Some(false)
    })
    .await;

    tracing::info!("phase 3: the backend is back; the upstream comes up");
    let backend = TlsBackend::start(addr).await;
    wait_for("the upstream marked healthy again", Duration::from_secs(10), || async {
        healthy(&agent, &url).await == Some(true)
    })
    .await;
    assert!(backend.seen.load(Ordering::Relaxed) >= 1);
    assert!(agent.log().contains("upstream is healthy again"), "{}", agent.log());
    backend.stop();
}
