//! Bodies through the proxy: chunked requests and responses pass whole, a small chunked
//! GET body is replayed to the next upstream on a retry, and a response streamed over
//! several seconds reaches the client whole.

use std::time::{Duration, Instant};

use crate::support::*;

/// Breakers out of the way, so these tests see the retry policy alone.
const NO_BREAKER: &str = "[proxy.breaker]\nconsecutive_failures = 1000\nfailure_rate_threshold = 0.0\n";

const PARTS: [&[u8]; 3] = [b"first part, ", b"second part, ", b"last part"];

fn joined() -> Vec<u8> {
    PARTS.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_and_response_bodies_pass_whole() {
    let echo = Backend::start("echo", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    echo.set(Behaviour::Echo);
    let agent = Agent::start(&routes("app", "PathPrefix(`/`)", &[echo.url()], ""), NO_BREAKER).await;
    let mut c = agent.client();
    for method in ["POST", "PUT", "POST"] {
        let r = c
            .request_chunked(method, "app", "/echo", &[], &PARTS, Duration::from_millis(50))
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", agent.log()));
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        assert_eq!(r.body, joined(), "{method}: the echo of the chunked request");
        assert!(r.chunked(), "{method}: the backend's chunked answer stays chunked: {:?}", r.headers);
    }
    let hits = echo.hits();
    assert_eq!(hits.len(), 3);
    for h in &hits {
        assert_eq!(h.body, joined(), "{} {}: what the backend received", h.method, h.path);
        assert!(h.chunked(), "the proxy forwarded the request chunked: {:?}", h.headers);
    }

    // A larger chunked answer from the backend, in many chunks.
    echo.set(Behaviour::Stream { chunks: 50, size: 700, every: Duration::ZERO });
    let r = c.get("app", "/many").await.unwrap();
    let want: Vec<u8> = (0..50).flat_map(|i| Backend::chunk(i, 700)).collect();
    assert_eq!(r.status, 200);
    assert!(r.chunked(), "{:?}", r.headers);
    assert_eq!(r.body.len(), want.len());
    assert_eq!(r.body, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunked_get_body_is_replayed_on_retry() {
    for failure in [Behaviour::Status(503), Behaviour::Close] {
        let a = Backend::start("a", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let b = Backend::start("b", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        a.set(failure);
        b.set(Behaviour::Echo);
        let agent = Agent::start(&routes("app", "PathPrefix(`/`)", &[a.url(), b.url()], ""), NO_BREAKER).await;
        let mut c = agent.client();
        for i in 0..4 {
            let r = c
                .request_chunked("GET", "app", "/search", &[], &PARTS, Duration::from_millis(20))
                .await
                .unwrap_or_else(|e| panic!("{failure:?} GET #{i}: {e}\n{}", agent.log()));
            assert_eq!(r.status, 200, "{failure:?} GET #{i}: {}", r.text());
            assert_eq!(r.body, joined(), "{failure:?} GET #{i}: b echoes the whole body");
        }
        assert!(a.count() >= 1, "{failure:?}: round robin must have tried a first at least once");
        for h in a.hits().iter().chain(b.hits().iter()) {
            assert_eq!(h.body, joined(), "{failure:?}: every attempt carried the whole body");
        }
        assert_eq!(b.count(), 4, "{failure:?}: every GET ends at b exactly once");
        assert!(agent.metric("constellation_retries_total", &[]).await >= 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowly_streamed_response_arrives_whole() {
    let slow = Backend::start("slow", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (chunks, size, every) = (8, 1_000, Duration::from_millis(500));
    slow.set(Behaviour::Stream { chunks, size, every });
    let agent = Agent::start(&routes("app", "PathPrefix(`/`)", &[slow.url()], ""), NO_BREAKER).await;
    let mut c = agent.client();
    let started = Instant::now();
    let r = c.get("app", "/download").await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let took = started.elapsed();
    let want: Vec<u8> = (0..chunks).flat_map(|i| Backend::chunk(i, size)).collect();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), want.len(), "all {chunks} chunks");
    assert_eq!(r.body, want);
    assert!(took >= every * (chunks as u32 - 1), "streamed over {took:?}");
    // The connection is still good for the next request.
    slow.set(Behaviour::Ok);
    let next = c.get("app", "/").await.unwrap();
    assert_eq!((next.status, next.text()), (200, "slow\n".to_string()));
    assert_eq!(c.connections, 1, "one kept-alive connection for both");
}
