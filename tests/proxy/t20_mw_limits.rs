//! Traefik's limiting middlewares end to end: `ipAllowList` by peer, by
//! `X-Forwarded-For` depth and by excluded IPs (and the reject status), `inFlightReq`
//! (the request over the limit gets 429 while the others are slow, and the slots come
//! back when they finish), `rateLimit` (the burst passes, the next is 429 with
//! `Retry-After` and `X-Retry-In`, a token comes back after the refill time, and two
//! sources have their own buckets), and a `redis` rate limit refused as configuration.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::support::*;

const TRUSTED: &str = "[entrypoints.web.forwarded_headers]\ntrusted_ips = [\"127.0.0.0/8\"]\n";

fn allow_routes(backend: &str) -> String {
    format!(
        "http:
  routers:
    peer:
      rule: \"Host(`peer`)\"
      service: app
      middlewares: [only-two]
    teapot:
      rule: \"Host(`teapot`)\"
      service: app
      middlewares: [only-two-404]
    depth:
      rule: \"Host(`depth`)\"
      service: app
      middlewares: [by-depth]
    excluded:
      rule: \"Host(`excluded`)\"
      service: app
      middlewares: [by-excluded]
  middlewares:
    only-two:
      ipAllowList:
        sourceRange: [\"127.0.0.2\", \"fd00::/8\"]
    only-two-404:
      ipWhiteList:
        sourceRange: [\"127.0.0.2/32\"]
    by-depth:
      ipAllowList:
        sourceRange: [\"203.0.113.0/24\"]
        rejectStatusCode: 404
        ipStrategy:
          depth: 2
    by-excluded:
      ipAllowList:
        sourceRange: [\"203.0.113.0/24\"]
        ipStrategy:
          excludedIPs: [\"198.51.100.0/24\", \"127.0.0.0/8\"]
  services:
    app:
      loadBalancer:
        servers:
          - url: \"{backend}\"
"
    )
}

async fn from(agent: &Agent, source: &str, host: &str, headers: &[(&str, &str)]) -> Reply {
    let source: IpAddr = source.parse().unwrap();
    fetch_from(source, agent.web, "GET", host, "/", headers, &[]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allow_list_by_peer_and_reject_status() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let agent = Agent::start(&allow_routes(&backend.url()), "").await;

    tracing::info!("the peer 127.0.0.2 is in the range, 127.0.0.1 is not");
    let ok = from(&agent, "127.0.0.2", "peer", &[]).await;
    assert_eq!((ok.status, ok.text()), (200, "b1\n".to_string()), "{}", agent.log());
    let no = from(&agent, "127.0.0.1", "peer", &[]).await;
    assert_eq!((no.status, no.text()), (403, "Forbidden".to_string()), "{}", agent.log());
    // A forwarded address does not count without an ipStrategy: only the peer does.
    let spoof = from(&agent, "127.0.0.1", "peer", &[("x-forwarded-for", "127.0.0.2")]).await;
    assert_eq!(spoof.status, 403);
    assert_eq!(backend.count(), 1, "the refused requests never reached the backend");

    tracing::info!("the deprecated ipWhiteList works the same");
    assert_eq!(from(&agent, "127.0.0.2", "teapot", &[]).await.status, 200);
    assert_eq!(from(&agent, "127.0.0.3", "teapot", &[]).await.status, 403);

    tracing::info!("untrusted peer: X-Forwarded-For is dropped at the entry point, so depth finds nothing");
    let r = from(&agent, "127.0.0.1", "depth", &[("x-forwarded-for", "203.0.113.5, 198.51.100.1")]).await;
    assert_eq!((r.status, r.text()), (404, "Not Found".to_string()), "{}", agent.log());
    assert_eq!(backend.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allow_list_by_forwarded_depth_and_excluded_ips() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let agent = Agent::start(&allow_routes(&backend.url()), TRUSTED).await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];

    tracing::info!("depth 2: the second address from the right decides");
    let r = from(&agent, "127.0.0.1", "depth", &xff("203.0.113.5, 198.51.100.1")).await;
    assert_eq!(r.status, 200, "{}", agent.log());
    let r = from(&agent, "127.0.0.1", "depth", &xff("198.51.100.1, 203.0.113.5")).await;
    assert_eq!((r.status, r.text()), (404, "Not Found".to_string()));
    // Fewer entries than the depth: no client address, refused.
    assert_eq!(from(&agent, "127.0.0.1", "depth", &xff("203.0.113.5")).await.status, 404);
    assert_eq!(from(&agent, "127.0.0.1", "depth", &[]).await.status, 404);

    tracing::info!("excludedIPs: the right-most address not excluded decides");
    let r = from(&agent, "127.0.0.1", "excluded", &xff("192.0.2.9, 203.0.113.9, 198.51.100.1, 127.0.0.5")).await;
    assert_eq!(r.status, 200, "{}", agent.log());
    let r = from(&agent, "127.0.0.1", "excluded", &xff("203.0.113.9, 192.0.2.9, 198.51.100.1")).await;
    assert_eq!((r.status, r.text()), (403, "Forbidden".to_string()));
    // Everything excluded: no client, refused.
    assert_eq!(from(&agent, "127.0.0.1", "excluded", &xff("198.51.100.7")).await.status, 403);

    let hits = backend.hits();
    assert_eq!(hits.len(), 2, "only the allowed requests reached the backend: {hits:?}");
    assert_eq!(hits[0].header("x-forwarded-for"), Some("203.0.113.5, 198.51.100.1, 127.0.0.1"));
}

const IN_FLIGHT: &str = "http:
  routers:
    r:
      rule: \"PathPrefix(`/`)\"
      service: app
      middlewares: [two-at-once]
  middlewares:
    two-at-once:
      inFlightReq:
        amount: 2
  services:
    app:
      loadBalancer:
        servers:
          - url: \"BACKEND\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limits_concurrent_requests_and_releases_slots() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let agent = Agent::start(&IN_FLIGHT.replace("BACKEND", &backend.url()), "").await;
    backend.set(Behaviour::Delay(Duration::from_millis(1500)));

    tracing::info!("two slow requests hold both slots of host `app`");
    let web = agent.web;
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { fetch(web, "GET", "app", "/slow", &[], &[]).await.unwrap() }))
        .collect();
    wait_for("both slow requests at the backend", Duration::from_secs(5), || async { backend.count() == 2 }).await;

    let over = agent.get("app", "/third").await;
    assert_eq!((over.status, over.text()), (429, "max connections reached: 2".to_string()), "{}", agent.log());
    // Traefik's default source is the request's host: another host has its own slots.
    assert_eq!(agent.get("other", "/other").await.status, 200);
    assert_eq!(backend.count(), 3, "the refused request never reached the backend");

    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
    tracing::info!("the slots are free again once the slow requests are done");
    backend.set(Behaviour::Ok);
    for _ in 0..3 {
        let r = agent.get("app", "/after").await;
        assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "{}", agent.log());
    }

    tracing::info!("a request that fails upstream releases its slot too");
    backend.set(Behaviour::Close);
    for _ in 0..3 {
        assert_eq!(agent.get("app", "/broken").await.status, 502, "{}", agent.log());
    }
    backend.set(Behaviour::Ok);
    assert_eq!(agent.get("app", "/fine").await.status, 200, "{}", agent.log());
}

const RATE: &str = "http:
  routers:
    r:
      rule: \"PathPrefix(`/`)\"
      service: app
      middlewares: [slowly]
  middlewares:
    slowly:
      rateLimit:
        average: 1
        period: 2s
        burst: 3
  services:
    app:
      loadBalancer:
        servers:
          - url: \"BACKEND\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_burst_then_429_then_refill_per_source() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let agent = Agent::start(&RATE.replace("BACKEND", &backend.url()), "").await;
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    let two: IpAddr = "127.0.0.2".parse().unwrap();

    tracing::info!("one every 2 s, burst 3: three pass at once");
    let t0 = Instant::now();
    let mut client = Client::from_source(agent.web, one);
    for i in 0..3 {
        let r = client.get("app", &format!("/burst/{i}")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", agent.log());
    }

    tracing::info!("the fourth is refused: its token is ~2 s away, more than the 500 ms it may wait");
    let r = client.get("app", "/over").await.unwrap();
    assert_eq!((r.status, r.text()), (429, "Too Many Requests".to_string()), "{}", agent.log());
    assert_eq!(r.header("retry-after"), Some("2"), "{:?}", r.headers);
    let retry_in = r.header("x-retry-in").unwrap_or_default().to_string();
    let secs: f64 = retry_in.strip_suffix('s').and_then(|v| v.parse().ok()).unwrap_or(-1.0);
    assert!(secs > 1.5 && secs <= 2.0, "X-Retry-In {retry_in:?}");
    assert_eq!(backend.count(), 3, "the refused request never reached the backend");

    tracing::info!("another client address has its own bucket");
    let other = fetch_from(two, agent.web, "GET", "app", "/other", &[], &[]).await.unwrap();
    assert_eq!(other.status, 200, "{}", agent.log());

    tracing::info!("a token comes back after the refill time");
    let (_, _) = eventually("a request passes again", Duration::from_secs(8), || {
        let web = agent.web;
        async move {
            let r = fetch_from(one, web, "GET", "app", "/again", &[], &[]).await.map_err(|e| e.to_string())?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("status {}", r.status))
            }
        }
    })
    .await;
    let waited = t0.elapsed();
    // No token before 2 s after the bucket emptied (a request may be held ≤ 500 ms for
    // it, and is answered only after), and not much later either.
    assert!(waited >= Duration::from_millis(1950), "passed again after {waited:?}");
    assert!(waited < Duration::from_secs(5), "passed again after {waited:?}");
    assert_eq!(backend.count(), 5);
}

#[test]
fn a_redis_rate_limit_is_refused_by_config_check() {
    let dir = Scratch::new("mw-rate-redis");
    dir.write(
        "routes.yaml",
        "http:\n  routers:\n    r:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n      middlewares: [rl]\n  middlewares:\n    rl:\n      rateLimit:\n        average: 10\n        redis:\n          endpoints: [\"127.0.0.1:6379\"]\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"http://127.0.0.1:9\"\n",
    );
    dir.write("agent.toml", "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n[routes]\nfiles = [\"routes.yaml\"]\n");
    let (code, out, err) = run(&["config", "check", dir.path("agent.toml").to_str().unwrap()], &dir.0);
    assert_eq!(code, 78, "{out}\n{err}");
    assert!(err.contains("rateLimit.redis") && err.contains("not supported"), "{err}");
}
