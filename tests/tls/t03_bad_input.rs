//! Garbage where a ClientHello belongs: the connection is closed and counted, and the
//! agent keeps serving.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn closed_without_answer(mut s: tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[test]
fn garbage_and_truncated_client_hellos_are_closed_and_counted() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca = Ca::new("Test CA");
        let a = ca.leaf(&["a.test"]);
        let routes = tls_routes(
            &[("a", "Host(`a.test`)", Some("{}"))],
            &backend.url(),
            "tls:\n  certificates:\n    - certFile: a.crt\n      keyFile: a.key\n",
        );
        let (ep, secure) = websecure("");
        let agent = start_agent_with(&routes, "", &ep, &[("a.crt", &a.cert), ("a.key", &a.key)], None).await;

        // Random bytes.
        let mut s = tokio::net::TcpStream::connect(secure).await.unwrap();
        let noise: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        s.write_all(&noise).await.unwrap();
        assert!(closed_without_answer(s).await);
        // Plain HTTP on the TLS port.
        let mut s = tokio::net::TcpStream::connect(secure).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
        assert!(closed_without_answer(s).await);
        // A handshake record announcing more than it sends, then the client closes.
        let mut s = tokio::net::TcpStream::connect(secure).await.unwrap();
        s.write_all(&[0x16, 3, 1, 0x02, 0x00, 1, 0, 1, 0xfc, 3, 3]).await.unwrap();
        s.shutdown().await.unwrap();
        assert!(closed_without_answer(s).await);
        // A record whose ClientHello lengths lie.
        let mut s = tokio::net::TcpStream::connect(secure).await.unwrap();
        s.write_all(&[0x16, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3]).await.unwrap();
        assert!(closed_without_answer(s).await);

        let count = |reason: &'static str| {
            let agent = &agent;
            async move {
                agent
                    .metric(
                        "constellation_tls_handshake_failures_total",
                        &["entrypoint=\"websecure\"", &format!("reason=\"{reason}\"")],
                    )
                    .await
            }
        };
        assert_eq!(count("not_tls").await, 2.0, "{}", agent.metrics().await);
        assert_eq!(count("truncated").await, 1.0);
        assert_eq!(count("malformed_hello").await, 1.0);
        // Still serving.
        let mut s = connect(secure, Some("a.test"), &["http/1.1"]).await.unwrap();
        assert_eq!(request(&mut s, "a.test", "/", true).await.0, 200);
        assert!(agent.log().contains("TLS handshake failed"), "rate-limited log line");
    });
}
