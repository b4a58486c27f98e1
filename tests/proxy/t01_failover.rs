//! The failover table: what the client got and what each backend saw.

use std::time::Duration;

use crate::support::*;

/// Breakers out of the way, so these tests see the retry policy alone.
const NO_BREAKER: &str = "[proxy.breaker]\nconsecutive_failures = 1000\nfailure_rate_threshold = 0.0\n";

async fn two_backends() -> (Backend, Backend) {
    (
        Backend::start("a", "127.0.0.1:0".parse().unwrap()).await.unwrap(),
        Backend::start("b", "127.0.0.1:0".parse().unwrap()).await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_fails_over_for_every_method() {
    let good = Backend::start("good", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dead = format!("http://{}", dead_addr());
    let agent = Agent::start(&routes("app", "PathPrefix(`/`)", &[dead, good.url()], ""), NO_BREAKER).await;
    let mut c = agent.client();
    for i in 0..6 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = c.request(method, "app", "/x", &[], b"payload").await.unwrap();
        assert_eq!(r.status, 200, "{method} #{i}: {}", r.text());
        assert_eq!(r.text(), "good\n");
    }
    // Nothing reached the dead one, so even POSTs went exactly once to the good one.
    assert_eq!(good.count(), 6);
    assert!(agent.metric("constellation_upstream_attempts_total", &["outcome=\"connect_error\""]).await >= 3.0);
    assert!(agent.metric("constellation_retries_total", &["reason=\"connect_error\""]).await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_503_is_retried_for_get_but_passed_through_for_post() {
    let (a, b) = two_backends().await;
    a.set(Behaviour::Status(503));
    let agent = Agent::start(&routes("app", "PathPrefix(`/`)", &[a.url(), b.url()], ""), NO_BREAKER).await;
    let mut c = agent.client();
    let n = 10;
    for i in 0..n {
        let r = c.get("app", "/").await.unwrap_or_else(|e| panic!("GET #{i}: {e:?}\n{}", agent.log()));
        assert_eq!((r.status, r.text()), (200, "b\n".to_string()));
    }
    assert_eq!(b.count(), n, "every GET ends at b");
    assert!(a.count() >= 1, "round robin must have tried a");
    assert_eq!(agent.metric("constellation_requests_total", &["method=\"GET\"", "code_class=\"5xx\""]).await, 0.0);

    a.clear();
    b.clear();
    let mut got_503 = 0;
    for _ in 0..n {
        let r = c.request("POST", "app", "/", &[], b"order=1").await.unwrap();
        match r.status {
            503 => {
                // The upstream's own response, unchanged.
                assert_eq!(r.text(), "a says 503\n");
                assert_eq!(r.header("x-backend"), Some("a"));
                got_503 += 1;
            }
            200 => assert_eq!(r.text(), "b\n"),
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(a.count() + b.count(), n, "no POST was sent twice");
    assert_eq!(a.count(), got_503);
    assert!(got_503 > 0);
    assert!(
        agent.metric("constellation_retries_suppressed_total", &["reason=\"non_idempotent\""]).await >= got_503 as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_403_fails_over_only_where_the_service_opts_in() {
    let (a, b) = two_backends().await;
    a.set(Behaviour::Status(403));
    let yaml = format!(
        "http:\n  routers:\n    plain:\n      rule: \"Host(`plain`)\"\n      service: plain\n    warp:\n      rule: \"Host(`warp`)\"\n      service: warp\n\
         \x20 services:\n    plain:\n      loadBalancer:\n        servers:\n          - url: \"{a}\"\n          - url: \"{b}\"\n\
         \x20   warp:\n      loadBalancer:\n        retryOn403: true\n        servers:\n          - url: \"{a}\"\n          - url: \"{b}\"\n",
        a = a.url(),
        b = b.url()
    );
    let agent = Agent::start(&yaml, NO_BREAKER).await;
    let mut c = agent.client();
    let mut forbidden = 0;
    for _ in 0..8 {
        let r = c.get("plain", "/").await.unwrap();
        if r.status == 403 {
            forbidden += 1;
        }
    }
    assert!(forbidden > 0, "without the opt-in a 403 is the answer");
    assert_eq!(a.count() + b.count(), 8);
    a.clear();
    b.clear();
    for _ in 0..8 {
        let r = c.get("warp", "/").await.unwrap();
        assert_eq!((r.status, r.text()), (200, "b\n".to_string()));
    }
    assert_eq!(b.count(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_put_is_not_replayed_but_small_put_is() {
    let (a, b) = two_backends().await;
    a.set(Behaviour::Status(503));
    // Only `a` first: a weighted order that always starts there is not needed; send
    // until `a` has been hit and check totals.
    let agent = Agent::start(&routes("app", "PathPrefix(`/`)", &[a.url(), b.url()], ""), NO_BREAKER).await;
    let mut c = agent.client();
    let big = vec![b'x'; 100 * 1024];
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(c.request("PUT", "app", "/blob", &[], &big).await.unwrap().status);
    }
    assert_eq!(a.count() + b.count(), 6, "a 100 KiB body cannot be replayed: one upstream each: {statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count() as u64, a.count());
    assert!(a.hits().iter().all(|h| h.body_len == big.len()));
    assert!(agent.metric("constellation_retries_suppressed_total", &["reason=\"body_not_replayable\""]).await >= 1.0);

    a.clear();
    b.clear();
    let small = vec![b'y'; 1024];
    for _ in 0..6 {
        let r = c.request("PUT", "app", "/blob", &[], &small).await.unwrap();
        assert_eq!(r.status, 200, "PUT is idempotent and 1 KiB is replayable");
    }
    assert_eq!(b.count(), 6);
    assert!(b.hits().iter().all(|h| h.body_len == small.len()), "replayed body arrives whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gives_504_and_is_skipped_when_another_exists() {
    let (slow, fast) = two_backends().await;
    slow.set(Behaviour::Delay(Duration::from_secs(3)));
    let cfg = format!("[proxy]\nread_timeout_ms = 300\n{NO_BREAKER}");
    let yaml = format!(
        "http:\n  routers:\n    solo:\n      rule: \"Host(`solo`)\"\n      service: solo\n    pair:\n      rule: \"Host(`pair`)\"\n      service: pair\n\
         \x20 services:\n    solo:\n      loadBalancer:\n        servers:\n          - url: \"{s}\"\n\
         \x20   pair:\n      loadBalancer:\n        servers:\n          - url: \"{s}\"\n          - url: \"{f}\"\n",
        s = slow.url(),
        f = fast.url()
    );
    let agent = Agent::start(&yaml, &cfg).await;
    let started = std::time::Instant::now();
    let r = agent.get("solo", "/").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(2), "504 after the read timeout, not the backend's delay");
    let mut c = agent.client();
    for _ in 0..4 {
        let r = c.get("pair", "/").await.unwrap();
        assert_eq!((r.status, r.text()), (200, "fast\n".replace("fast", "b")));
    }
    let r = fetch(agent.web, "POST", "solo", "/", &[], b"x").await.unwrap();
    assert_eq!(r.status, 504);
    assert!(agent.metric("constellation_upstream_attempts_total", &["outcome=\"timeout\""]).await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_request_costs_a_get_nothing() {
    let (a, b) = two_backends().await;
    a.set(Behaviour::Close);
    let agent = Agent::start(&routes("app", "PathPrefix(`/`)", &[a.url(), b.url()], ""), NO_BREAKER).await;
    let mut c = agent.client();
    for _ in 0..8 {
        let r = c.get("app", "/").await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(a.count() >= 1);
    assert_eq!(b.count(), 8);
    // A POST that hit the closing backend gets a 502, and is not replayed.
    a.clear();
    b.clear();
    let mut bad = 0;
    for _ in 0..6 {
        let r = c.request("POST", "app", "/", &[], b"x").await;
        let r = r.unwrap_or_else(|e| panic!("POST failed: {e}\n{}", agent.log()));
        if r.status == 502 {
            bad += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert_eq!(bad, a.count());
    assert_eq!(a.count() + b.count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_and_no_upstream_is_503_with_retry_after() {
    let dead1 = format!("http://{}", dead_addr());
    let agent = Agent::start(
        &routes("app", "Host(`app`)", &[dead1], ""),
        "[proxy]\nretry_after_secs = 7\npanic_threshold_percent = 0\n",
    )
    .await;
    let r = agent.get("other", "/").await;
    assert_eq!(r.status, 404);
    // The single upstream refuses connections: 502 until its breaker opens, then 503.
    let mut seen = Vec::new();
    for _ in 0..8 {
        seen.push(agent.get("app", "/").await);
    }
    assert_eq!(seen[0].status, 502, "connect refused with no other upstream");
    let last = seen.last().unwrap();
    assert_eq!(last.status, 503, "breaker open: {:?}", seen.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!(last.header("retry-after"), Some("7"));
}
