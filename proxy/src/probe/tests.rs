//! Tests of the prober against real local sockets: plain HTTP, https with and without
//! chain verification, timeouts, body limits.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// Read one request head from `conn` and answer `reply`; returns the head.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S, reply: &str) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// A fixture answering every connection with `reply`; heads seen arrive on the channel.
async fn plain(reply: &'static str) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let _ = tx.send(answer(conn, reply).await);
        }
    });
    (addr, rx)
}

/// A TLS fixture with a self-signed certificate for `app.test`.
async fn tls(reply: &'static str) -> SocketAddr {
    let key = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
    let chain = vec![key.cert.der().clone()];
    let secret = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, secret)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            if let Ok(stream) = acceptor.accept(conn).await {
                answer(stream, reply).await;
            }
        }
    });
    addr
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\n1.1.1.1\n";

#[tokio::test]
async fn sends_the_url_host_to_the_given_address_and_reads_the_body() {
    let p = Prober::new(CertPolicy::Unverified).unwrap();
    let (addr, mut heads) = plain(OK).await;
    let url = format!("http://app.invalid:{}/ip?x=1", addr.port());
    let req = ProbeRequest { connect_to: Some(addr), max_body: 64, ..ProbeRequest::get(&url, Duration::from_secs(2)) };
    let r = p.send(&req).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"1.1.1.1\n"[..]));
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with("get /ip?x=1 http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: app.invalid:{}\r\n", addr.port())), "{head}");

    // An IP literal is re-targeted; a Host override and extra headers are sent.
    let other = format!("http://192.0.2.1:{}/", addr.port());
    let extra = [("x-check".to_string(), "yes".to_string())];
    let req = ProbeRequest {
        connect_to: Some(addr),
        host_header: Some("check.local"),
        headers: &extra,
        ..ProbeRequest::get(&other, Duration::from_secs(2))
    };
    assert_eq!(p.send(&req).await.unwrap().status, 200);
    let head = heads.recv().await.unwrap();
    assert!(head.contains("host: check.local\r\n") && head.contains("x-check: yes\r\n"), "{head}");

    // Past the body limit.
    let req = ProbeRequest { connect_to: Some(addr), max_body: 4, ..ProbeRequest::get(&url, Duration::from_secs(2)) };
    assert!(matches!(p.send(&req).await, Err(ProbeError::TooLarge(4))));
}

#[tokio::test]
async fn https_completes_unverified_and_is_refused_when_verifying() {
    let addr = tls(OK).await;
    let url = format!("https://app.test:{}/healthz", addr.port());
    let req = ProbeRequest { connect_to: Some(addr), ..ProbeRequest::get(&url, Duration::from_secs(5)) };
    let lax = Prober::new(CertPolicy::Unverified).unwrap();
    assert_eq!(lax.send(&req).await.unwrap().status, 200);
    // The same again goes through the cached client.
    assert_eq!(lax.send(&req).await.unwrap().status, 200);
    let strict = Prober::new(CertPolicy::Verify).unwrap();
    match strict.send(&req).await {
        Err(ProbeError::Connect(why)) => assert!(why.to_ascii_lowercase().contains("certificate"), "{why}"),
        other => panic!("a self-signed certificate must not verify: {other:?}"),
    }
}

#[tokio::test]
async fn silence_times_out_and_refusal_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let p = Prober::new(CertPolicy::Unverified).unwrap();
    let url = format!("http://{silent}/");
    let r = p.send(&ProbeRequest::get(&url, Duration::from_millis(200))).await;
    assert!(matches!(r, Err(ProbeError::Timeout(_))), "{r:?}");
    drop(listener);
    let r = p.send(&ProbeRequest::get(&url, Duration::from_secs(2))).await;
    assert!(matches!(r, Err(ProbeError::Connect(_))), "{r:?}");
    assert!(matches!(
        p.send(&ProbeRequest::get("ftp://x/", Duration::from_secs(1))).await,
        Err(ProbeError::Url { .. })
    ));
}
