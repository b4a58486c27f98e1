//! TCP routers through a real agent: byte-exact forwarding of 10 MiB, connect failure
//! failover, SNI passthrough to two TLS servers with a real TLS client, garbage on an
//! SNI entry point (closed, counted), a health check ejecting a server, a route swap
//! that keeps an open connection, a removed server's connection drained, and the PROXY
//! protocol v2 header as the upstream reads it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::support::*;

/// An agent with a `tcp` entry point beside `web`; `proxy_toml` goes into `[proxy]`.
async fn agent(routes: &str, proxy_toml: &str) -> (Agent, SocketAddr) {
    let port = free_port();
    let extra = format!("[entrypoints.tcp]\naddress = \"127.0.0.1:{port}\"\n[proxy]\n{proxy_toml}\n");
    let a = Agent::start(routes, &extra).await;
    (a, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn plain(servers: &[String], lb_extra: &str) -> String {
    let servers: String = servers.iter().map(|s| format!("          - address: \"{s}\"\n")).collect();
    format!(
        "tcp:\n  routers:\n    echo:\n      entryPoints: [tcp]\n      rule: \"HostSNI(`*`)\"\n      service: echo\n  services:\n    echo:\n      loadBalancer:\n{lb_extra}        servers:\n{servers}"
    )
}

/// Connect through the agent, ask who answers, return the name and the stream.
async fn who(entry: SocketAddr) -> (String, TcpStream) {
    let mut s = TcpStream::connect(entry).await.unwrap();
    s.write_all(crate::support::tcp::WHO).await.unwrap();
    let mut name = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("an answer")
            .unwrap_or_else(|e| panic!("read: {e}"));
        assert!(n > 0, "closed before naming itself (got {:?})", String::from_utf8_lossy(&name));
        if b[0] == b'\n' {
            break;
        }
        name.push(b[0]);
    }
    (String::from_utf8(name).unwrap(), s)
}

#[test]
fn ten_mib_echoed_byte_exact_and_a_dead_server_failed_over() {
    run_test(|| async {
        let echo = TcpEcho::start("a").await;
        let dead = dead_addr().to_string();
        let (agent, entry) = agent(&plain(&[dead, echo.addr.to_string()], ""), "").await;

        tracing::info!("phase 1: 10 MiB through, written and read at once, byte-exact");
        let data: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let s = TcpStream::connect(entry).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::with_capacity(data.len());
        tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got)).await.expect("echo finished").unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), data.len(), "length");
        assert!(got == data, "the echoed bytes differ");

        tracing::info!("phase 2: every connection reaches the live server (the dead one is failed over)");
        for _ in 0..6 {
            let (name, _s) = who(entry).await;
            assert_eq!(name, "a");
        }
        assert!(agent.metric("constellation_tcp_upstream_attempts_total", &["outcome=\"connect_error\""]).await >= 1.0);
        assert!(
            agent.metric("constellation_tcp_bytes_total", &["router=\"echo\"", "direction=\"in\""]).await
                >= data.len() as f64
        );
        let st = agent.status().await;
        assert_eq!(st["tcp_routes"][0]["name"], "echo", "{st}");
    });
}

fn client_config(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&ca.cert_pem) {
        roots.add(c).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap()).collect()
}

#[test]
fn sni_passthrough_reaches_two_servers_by_name_and_garbage_is_closed() {
    run_test(|| async {
        let ca = TestCa::new("tcp ca");
        let a = TcpEcho::start_with("A", None, Some(TestCa::server_config(&ca.issue(&["a.test"]), false, None))).await;
        let b = TcpEcho::start_with("B", None, Some(TestCa::server_config(&ca.issue(&["b.test"]), false, None))).await;
        let routes = format!(
            "tcp:\n  routers:\n    a:\n      entryPoints: [tcp]\n      rule: \"HostSNI(`a.test`)\"\n      service: a\n      tls:\n        passthrough: true\n    b:\n      entryPoints: [tcp]\n      rule: \"HostSNI(`b.test`)\"\n      service: b\n      tls:\n        passthrough: true\n  services:\n    a:\n      loadBalancer:\n        servers:\n          - address: \"{}\"\n    b:\n      loadBalancer:\n        servers:\n          - address: \"{}\"\n",
            a.addr, b.addr
        );
        let (agent, entry) = agent(&routes, "").await;
        let connector = tokio_rustls::TlsConnector::from(client_config(&ca));

        tracing::info!("phase 1: a real TLS client verifies each server's own certificate through the proxy");
        for (sni, want) in [("a.test", "A"), ("b.test", "B"), ("a.test", "A")] {
            let tcp = TcpStream::connect(entry).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
            let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
                .await
                .expect("handshake in time")
                .unwrap_or_else(|e| panic!("handshake for {sni}: {e}"));
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while tls.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            assert_eq!(String::from_utf8(line).unwrap(), want);
            tls.write_all(b"hello").await.unwrap();
            let mut back = [0u8; 5];
            tls.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"hello");
        }

        tracing::info!("phase 2: an unknown name and garbage bytes are closed and counted");
        let tcp = TcpStream::connect(entry).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("c.test".to_string()).unwrap();
        assert!(connector.connect(name, tcp).await.is_err(), "no router for c.test");
        let mut g = TcpStream::connect(entry).await.unwrap();
        g.write_all(b"\x16\x03\x01\x00\x05garbage that is not a ClientHello").await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut rest)).await.expect("closed");
        assert!(n.map(|_| rest.is_empty()).unwrap_or(true), "garbage got an answer: {rest:?}");
        let mut p = TcpStream::connect(entry).await.unwrap();
        p.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), p.read_to_end(&mut rest)).await.expect("closed");
        assert!(rest.is_empty(), "plain bytes on an SNI-only entry point got an answer");
        wait_for("rejections counted", Duration::from_secs(5), || async {
            agent.metric("constellation_tcp_rejected_total", &["entrypoint=\"tcp\""]).await >= 3.0
        })
        .await;
        assert_eq!(a.accepted.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(b.accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    });
}

#[test]
fn a_health_check_ejects_a_sick_server_and_brings_it_back() {
    run_test(|| async {
        let a = TcpEcho::start("a").await;
        let b = TcpEcho::start("b").await;
        b.sick.store(true, std::sync::atomic::Ordering::Relaxed);
        let hc = "        healthCheck:\n          send: \"PING\\r\\n\"\n          expect: \"+PONG\"\n          interval: 200ms\n          timeout: 1s\n";
        let (agent, entry) =
            agent(&plain(&[a.addr.to_string(), b.addr.to_string()], hc), "health_fall = 1\nhealth_rise = 1\n").await;

        tracing::info!("phase 1: b answers the probe with an error and leaves the pool");
        wait_for("b unhealthy", Duration::from_secs(5), || async {
            let st = agent.status().await;
            st["tcp_services"][0]["servers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|u| u["address"] == b.addr.to_string().as_str() && u["healthy"] == false))
        })
        .await;
        for _ in 0..6 {
            assert_eq!(who(entry).await.0, "a");
        }

        tracing::info!("phase 2: b recovers and takes connections again");
        b.sick.store(false, std::sync::atomic::Ordering::Relaxed);
        wait_for("b back", Duration::from_secs(5), || async {
            let mut names = Vec::new();
            for _ in 0..4 {
                names.push(who(entry).await.0);
            }
            names.iter().any(|n| n == "b")
        })
        .await;
    });
}

#[test]
fn a_route_swap_keeps_an_open_connection_and_a_removed_server_is_drained() {
    run_test(|| async {
        let a = TcpEcho::start("a").await;
        let b = TcpEcho::start("b").await;
        let (agent, entry) = agent(&plain(&[a.addr.to_string()], ""), "tcp_drain_grace_ms = 500\n").await;
        let (name, mut open) = who(entry).await;
        assert_eq!(name, "a");

        tracing::info!("phase 1: a new table that keeps a: the open connection still echoes");
        agent.reload(&plain(&[a.addr.to_string(), b.addr.to_string()], "")).await;
        open.write_all(b"still here").await.unwrap();
        let mut back = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut back)).await.expect("echo").unwrap();
        assert_eq!(&back, b"still here");

        tracing::info!("phase 2: a removed: its connection closes after the drain grace, new ones go to b");
        let removed = Instant::now();
        agent.reload(&plain(&[b.addr.to_string()], "")).await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest))
            .await
            .expect("closed by the drain");
        assert!(n.is_ok());
        let took = removed.elapsed();
        assert!(took >= Duration::from_millis(300), "closed before the grace: {took:?}");
        assert_eq!(who(entry).await.0, "b");
        assert!(agent.metric("constellation_tcp_connections_total", &["outcome=\"drained\""]).await >= 1.0);
    });
}

#[test]
fn proxy_protocol_v2_carries_the_client_address() {
    run_test(|| async {
        let up = TcpEcho::start_with("pp", Some(2), None).await;
        let (_agent, entry) =
            agent(&plain(&[up.addr.to_string()], "        proxyProtocol:\n          version: 2\n"), "").await;
        let (name, s) = who(entry).await;
        assert_eq!(name, "pp");
        let client = s.local_addr().unwrap();
        let raw = up.proxy_headers.lock().unwrap()[0].clone();
        assert_eq!(&raw[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
        assert_eq!(raw[12], 0x21, "version 2, PROXY");
        assert_eq!(raw[13], 0x11, "TCP over IPv4");
        assert_eq!(&raw[16..20], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([raw[24], raw[25]]), client.port(), "source port is the client's");
        assert_eq!(u16::from_be_bytes([raw[26], raw[27]]), entry.port(), "destination is the entry point");
    });
}

#[test]
fn a_terminating_router_serves_the_proxys_certificate_and_forwards_plaintext() {
    run_test(|| async {
        let ca = TestCa::new("term ca");
        let cert = ca.issue(&["term.test"]);
        let echo = TcpEcho::start("plain").await;
        let port = free_port();
        let routes = format!(
            "tcp:\n  routers:\n    term:\n      entryPoints: [tcp]\n      rule: \"HostSNI(`term.test`)\"\n      service: plain\n      tls: {{}}\n  services:\n    plain:\n      loadBalancer:\n        servers:\n          - address: \"{}\"\ntls:\n  certificates:\n    - certFile: cert.pem\n      keyFile: key.pem\n",
            echo.addr
        );
        let extra = format!("[entrypoints.tcp]\naddress = \"127.0.0.1:{port}\"\n");
        let files = [("cert.pem", cert.cert_pem.as_str()), ("key.pem", cert.key_pem.as_str())];
        let _agent = start_agent_with(&routes, "", &extra, &files, None).await;
        let entry = SocketAddr::from(([127, 0, 0, 1], port));
        let connector = tokio_rustls::TlsConnector::from(client_config(&ca));
        let tcp = TcpStream::connect(entry).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("term.test".to_string()).unwrap();
        let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("the proxy's certificate for term.test verifies");
        tls.write_all(crate::support::tcp::WHO).await.unwrap();
        let mut line = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut line)).await.expect("answer").unwrap();
        assert_eq!(&line, b"plain\n", "the upstream got the plaintext");
    });
}

#[test]
fn tcp_and_http_routers_share_an_entry_point() {
    run_test(|| async {
        let ca = TestCa::new("mixed ca");
        let a = TcpEcho::start_with("A", None, Some(TestCa::server_config(&ca.issue(&["a.test"]), false, None))).await;
        let web = Backend::start("web", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let routes = format!(
            "http:\n  routers:\n    site:\n      rule: \"PathPrefix(`/`)\"\n      service: site\n  services:\n    site:\n      loadBalancer:\n        servers:\n          - url: \"{}\"\ntcp:\n  routers:\n    a:\n      entryPoints: [web]\n      rule: \"HostSNI(`a.test`)\"\n      service: a\n      tls:\n        passthrough: true\n  services:\n    a:\n      loadBalancer:\n        servers:\n          - address: \"{}\"\n",
            web.url(),
            a.addr
        );
        let agent = Agent::start(&routes, "").await;
        tracing::info!("HTTP on the entry point goes to the HTTP router");
        let r = agent.get("site.test", "/x").await;
        assert_eq!(r.status, 200, "{}", r.text());
        tracing::info!("a ClientHello for a.test on the same entry point goes to the TCP router");
        let connector = tokio_rustls::TlsConnector::from(client_config(&ca));
        let tcp = TcpStream::connect(agent.web).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.test".to_string()).unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("passthrough to A");
        let mut line = [0u8; 2];
        tls.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"A\n");
    });
}
