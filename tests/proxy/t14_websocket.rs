//! WebSocket through the proxy with a real client (tokio-tungstenite): the 101 carries
//! `Upgrade`/`Connection` through, messages echo, an idle socket outlives the entry
//! point's request-head `read_timeout_ms`, its body read timeout and the upstream read
//! timeout, and is closed by the upgraded connection's own silence limit
//! (`[proxy] tunnel_timeout_ms`), and an upgrade is never sent twice.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::*;

/// Request-head deadline 1 s, body reads 2 s, upstream reads 2 s; upgraded connections
/// closed after 5 s of silence.
const TIMEOUTS: &str = "[entrypoints.web.transport]\nread_timeout_ms = 1000\nbody_read_timeout_ms = 2000\n\
                        [proxy]\nread_timeout_ms = 2000\ntunnel_timeout_ms = 5000\n";

async fn connect(
    agent: &Agent,
) -> Result<
    (tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, tungstenite::handshake::client::Response),
    tungstenite::Error,
> {
    let tcp = tokio::net::TcpStream::connect(agent.web).await.unwrap();
    tokio_tungstenite::client_async("ws://app/echo", tcp).await
}

async fn echo(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("no echo of {text:?}: {other:?}"),
    }
}

#[test]
fn websocket_echo_survives_idle_past_the_read_timeout() {
    let _not_during_the_flood = FLOOD.blocking_read();
    run_test(|| async {
        let b = Backend::start("ws", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        b.set(Behaviour::WebSocketEcho);
        let agent = Agent::start(&routes("app", "Host(`app`)", &[b.url()], ""), TIMEOUTS).await;

        tracing::info!("phase 1: the handshake passes Upgrade and Connection through; echo works");
        let (mut ws, resp) = connect(&agent).await.unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()["upgrade"].to_str().unwrap().to_ascii_lowercase(), "websocket");
        assert!(resp.headers()["connection"].to_str().unwrap().to_ascii_lowercase().contains("upgrade"));
        assert_eq!(echo(&mut ws, "hello").await, "hello");
        let hit = b.hits().pop().unwrap();
        assert_eq!(hit.header("upgrade"), Some("websocket"), "{hit:?}");

        tracing::info!("phase 2: idle 3.5 s, past every read timeout but the tunnel's");
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(echo(&mut ws, "still here").await, "still here");

        tracing::info!("phase 3: silence past tunnel_timeout_ms closes the upgraded connection");
        let silent = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(15), ws.next()).await;
        let waited = silent.elapsed();
        assert!(end.is_ok(), "the connection was never closed");
        assert!(!matches!(end, Ok(Some(Ok(Message::Text(_))))), "{end:?}");
        assert!(waited >= Duration::from_millis(4500), "closed after {waited:?}, before its idle limit");
        assert_eq!(b.count(), 1, "one upgrade request");
    });
}

#[test]
fn an_upgrade_is_never_retried() {
    let _not_during_the_flood = FLOOD.blocking_read();
    run_test(|| async {
        // Both servers read the upgrade request and close without answering.
        let backends = Backend::several(2).await;
        for b in &backends {
            b.set(Behaviour::Close);
        }
        let urls: Vec<String> = backends.iter().map(Backend::url).collect();
        let agent = Agent::start(&routes("app", "Host(`app`)", &urls, ""), TIMEOUTS).await;
        match connect(&agent).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 502),
            other => panic!("expected a 502, got {:?}", other.map(|(_, r)| r.status())),
        }
        let hits: u64 = backends.iter().map(Backend::count).sum();
        assert_eq!(hits, 1, "the upgrade reached exactly one server");
        assert!(
            agent.metric("constellation_retries_suppressed_total", &["reason=\"upgrade\""]).await >= 1.0,
            "{}",
            agent.metrics().await
        );

        // A plain GET to the same servers is still retried (it is idempotent).
        for b in &backends {
            b.clear();
        }
        let r = agent.get("app", "/").await;
        assert_eq!(r.status, 502);
        assert_eq!(backends.iter().map(Backend::count).sum::<u64>(), 2, "a GET goes to the other server");
    });
}
