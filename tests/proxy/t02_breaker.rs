//! Circuit breakers, the ejection cap, panic mode and active health checks, seen from
//! the outside: what the client got, what each backend saw, status and metrics.

use std::time::Duration;

use crate::support::*;

async fn backends(names: &[&str]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        out.push(Backend::start(n, "127.0.0.1:0".parse().unwrap()).await.unwrap());
    }
    out
}

fn urls(bs: &[Backend]) -> Vec<String> {
    bs.iter().map(Backend::url).collect()
}

/// Breaker settings for these tests: trip on consecutive failures only, no jitter.
fn breaker_toml(consecutive: u32, base_ms: u64, max_ms: u64, proxy_extra: &str) -> String {
    format!(
        "[proxy]\n{proxy_extra}\n[proxy.breaker]\nconsecutive_failures = {consecutive}\nfailure_rate_threshold = 0.0\n\
         base_ejection_ms = {base_ms}\nmax_ejection_ms = {max_ms}\njitter = 0.0\nhalf_open_probes = 1\nhalf_open_successes = 2\n"
    )
}

fn only_b(r: &Reply) {
    assert_eq!((r.status, r.text()), (200, "b\n".to_string()), "the GET must end at b");
}

fn only_d(r: &Reply) {
    assert_eq!((r.status, r.text()), (200, "d\n".to_string()), "the GET must end at d");
}

fn status_200(r: &Reply) {
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Send `GET app /` with `c` until `done` holds (checking every reply with `check`);
/// returns the number of requests sent. Panics naming `what` after 20 s.
async fn get_until<F, Fut>(what: &str, c: &mut Client, check: fn(&Reply), mut done: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    loop {
        let r = c.get("app", "/").await.unwrap();
        sent += 1;
        check(&r);
        if done().await {
            return sent;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what} after {sent} requests");
    }
}

/// The metric label fragment naming upstream `url` exactly.
fn label(url: &str) -> String {
    format!("upstream=\"{url}\"")
}

/// The breaker states of `urls` in service `service`.
async fn states(agent: &Agent, service: &str, urls: &[String]) -> Vec<String> {
    let s = agent.status().await;
    urls.iter().map(|u| upstream_status(&s, service, u)["breaker"]["state"].as_str().unwrap().to_string()).collect()
}

#[test]
fn breaker_opens_on_consecutive_failures_and_closes_through_half_open() {
    run_test(|| async {
        let bs = backends(&["a", "b"]).await;
        let (a, b) = (&bs[0], &bs[1]);
        a.set(Behaviour::Status(503));
        // 2 s of ejection: long enough to observe the open state on a loaded machine.
        let agent =
            Agent::start(&routes("app", "PathPrefix(`/`)", &urls(&bs), ""), &breaker_toml(3, 2000, 10_000, "")).await;
        let mut c = agent.client();

        // Phase 1: a fails; every GET still ends at b; a's breaker opens after 3 failures.
        let sent = get_until("a's breaker to open", &mut c, only_b, || async {
            agent.breaker("app", &a.url()).await == "open"
        })
        .await;
        assert_eq!(a.count(), 3, "exactly consecutive_failures requests reached a before it was ejected");
        assert_eq!(b.count(), sent, "every GET ended at b");
        let s = agent.status().await;
        let up = upstream_status(&s, "app", &a.url());
        assert_eq!(up["breaker"]["ejections"], 1, "{up:#}");
        assert_eq!(up["available"], false, "{up:#}");
        assert!(up["breaker"]["open_for_ms"].as_u64().unwrap() > 0, "{up:#}");
        assert_eq!(agent.breaker("app", &b.url()).await, "closed");
        let opened = agent
            .metric("constellation_breaker_transitions_total", &["service=\"app\"", &label(&a.url()), "to=\"open\""])
            .await;
        assert_eq!(opened, 1.0);
        assert_eq!(
            agent.metric("constellation_breaker_state", &["service=\"app\"", &label(&a.url())]).await,
            1.0,
            "gauge: 1 = open"
        );

        // Phase 2: while open, a receives nothing.
        let before = a.count();
        for _ in 0..8 {
            let r = c.get("app", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "b\n".to_string()));
        }
        assert_eq!(agent.breaker("app", &a.url()).await, "open", "still inside the ejection time");
        assert_eq!(a.count(), before, "an open breaker lets nothing through");

        // Phase 3: a is fixed; once the ejection time is over the breaker is half-open and
        // admits probes; two successful probes close it.
        a.set(Behaviour::Ok);
        wait_for("a's breaker to turn half-open", Duration::from_secs(10), || async {
            agent.breaker("app", &a.url()).await == "half_open"
        })
        .await;
        assert_eq!(a.count(), before, "the ejection time elapsing sends nothing by itself");
        get_until("a's breaker to close", &mut c, status_200, || async {
            agent.breaker("app", &a.url()).await == "closed"
        })
        .await;
        assert_eq!(a.count(), before + 2, "exactly half_open_successes probes went to a");
        assert_eq!(
            agent.metric("constellation_breaker_transitions_total", &[&label(&a.url()), "to=\"half_open\""]).await,
            1.0
        );
        assert_eq!(
            agent.metric("constellation_breaker_transitions_total", &[&label(&a.url()), "to=\"closed\""]).await,
            1.0
        );

        // Phase 4: a is back in the rotation.
        a.clear();
        b.clear();
        for _ in 0..10 {
            let r = c.get("app", "/").await.unwrap();
            assert_eq!(r.status, 200);
        }
        assert_eq!(a.count() + b.count(), 10);
        assert!(a.count() >= 4, "round robin again: a saw {} of 10", a.count());
    });
}

#[test]
fn failed_half_open_probe_reopens_with_a_longer_ejection() {
    run_test(|| async {
        let bs = backends(&["a", "b"]).await;
        let (a, b) = (&bs[0], &bs[1]);
        a.set(Behaviour::Status(503));
        let agent =
            Agent::start(&routes("app", "PathPrefix(`/`)", &urls(&bs), ""), &breaker_toml(2, 1000, 30_000, "")).await;
        let mut c = agent.client();
        get_until("a's breaker to open", &mut c, only_b, || async { agent.breaker("app", &a.url()).await == "open" })
            .await;
        assert_eq!(upstream_status(&agent.status().await, "app", &a.url())["breaker"]["ejections"], 1);
        wait_for("a's breaker to turn half-open", Duration::from_secs(10), || async {
            agent.breaker("app", &a.url()).await == "half_open"
        })
        .await;

        // The next request that lands on a is a probe; a still fails, so it reopens.
        let before = a.count();
        // (A failed probe costs a GET nothing: it fails over to b.)
        get_until("a probe to reach a", &mut c, only_b, || async { a.count() > before }).await;
        assert_eq!(a.count(), before + 1, "one probe slot: one probe");
        let s = agent.status().await;
        let up = upstream_status(&s, "app", &a.url());
        assert_eq!(up["breaker"]["state"], "open", "{up:#}");
        assert_eq!(up["breaker"]["ejections"], 2, "{up:#}");
        assert!(
            up["breaker"]["open_for_ms"].as_u64().unwrap() > 1000,
            "the second ejection lasts base × 2 = 2000 ms: {up:#}"
        );
        assert_eq!(
            agent.metric("constellation_breaker_transitions_total", &[&label(&a.url()), "to=\"open\""]).await,
            2.0
        );
        assert_eq!(
            agent.metric("constellation_breaker_transitions_total", &[&label(&a.url()), "to=\"half_open\""]).await,
            1.0
        );
        assert_eq!(
            agent.metric("constellation_breaker_transitions_total", &[&label(&a.url()), "to=\"closed\""]).await,
            0.0
        );

        // Reopened: nothing reaches a again.
        for _ in 0..6 {
            let r = c.get("app", "/").await.unwrap();
            assert_eq!(r.status, 200);
        }
        assert_eq!(agent.breaker("app", &a.url()).await, "open");
        assert_eq!(a.count(), before + 1);
        assert!(b.count() > 0);
    });
}

#[test]
fn ejection_cap_keeps_at_least_half_of_the_upstreams() {
    run_test(|| async {
        let bs = backends(&["a", "b", "c", "d"]).await;
        for bad in &bs[..3] {
            bad.set(Behaviour::Status(503));
        }
        let all = urls(&bs);
        let failing = all[..3].to_vec();
        let cfg =
            breaker_toml(2, 60_000, 60_000, "max_attempts = 4\nmax_ejection_percent = 50\npanic_threshold_percent = 0");
        let agent = Agent::start(&routes("app", "PathPrefix(`/`)", &all, ""), &cfg).await;
        let mut c = agent.client();
        let mut most_open = 0;
        for i in 0..30 {
            let r = c.get("app", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "d\n".to_string()), "GET #{i} fails over to d");
            let open = states(&agent, "app", &failing).await.iter().filter(|s| *s == "open").count();
            assert!(open <= 2, "at most 50 % of 4 upstreams ejected, saw {open} open after GET #{i}");
            most_open = most_open.max(open);
        }
        assert_eq!(most_open, 2, "two breakers did open");
        let st = states(&agent, "app", &failing).await;
        let refused =
            st.iter().position(|s| s == "closed").unwrap_or_else(|| panic!("one failing upstream stays in: {st:?}"));
        assert_eq!(agent.breaker("app", &all[3]).await, "closed");
        assert!(
            agent
                .metric("constellation_breaker_transitions_total", &[&label(&all[refused]), "to=\"ejection_refused\""])
                .await
                >= 1.0,
            "the refusal is counted"
        );
        assert_eq!(agent.metric("constellation_breaker_transitions_total", &["to=\"open\""]).await, 2.0);
        let s = agent.status().await;
        assert_eq!(service_status(&s, "app")["panic"], false);

        // The upstream the cap kept in keeps being tried (and failing over); the ejected
        // ones see nothing.
        for b in &bs {
            b.clear();
        }
        for _ in 0..8 {
            assert_eq!(c.get("app", "/").await.unwrap().status, 200);
        }
        assert!(bs[refused].count() >= 1, "the refused upstream still gets traffic");
        for (i, b) in bs[..3].iter().enumerate() {
            if i != refused {
                assert_eq!(b.count(), 0, "ejected upstream {} got traffic", all[i]);
            }
        }
        assert_eq!(bs[3].count(), 8);
    });
}

#[test]
fn panic_mode_spreads_over_all_upstreams_when_too_few_are_left() {
    run_test(|| async {
        let bs = backends(&["a", "b", "c", "d"]).await;
        for bad in &bs[..3] {
            bad.set(Behaviour::Status(503));
        }
        let all = urls(&bs);
        let failing = all[..3].to_vec();
        // Default panic threshold (50 %); the cap out of the way.
        let cfg = breaker_toml(2, 60_000, 60_000, "max_attempts = 4\nmax_ejection_percent = 100");
        let agent = Agent::start(&routes("app", "PathPrefix(`/`)", &all, ""), &cfg).await;
        let mut c = agent.client();
        get_until("three breakers to open", &mut c, only_d, || async {
            states(&agent, "app", &failing).await.iter().all(|s| s == "open")
        })
        .await;
        let s = agent.status().await;
        let svc = service_status(&s, "app");
        assert_eq!(svc["panic"], true, "1 of 4 available is under 50 %: {svc:#}");
        assert_eq!(svc["available"], 1, "{svc:#}");

        // In panic, requests are spread over all four again: the ejected ones see traffic,
        // and GETs still end well by failing over.
        for b in &bs {
            b.clear();
        }
        for i in 0..12 {
            let r = c.get("app", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "d\n".to_string()), "GET #{i}");
        }
        for (i, b) in bs.iter().enumerate() {
            assert!(b.count() >= 1, "panic mode sends to {} too", all[i]);
        }
        assert_eq!(bs[3].count(), 12);
        // Panic traffic does not change the breakers.
        assert!(states(&agent, "app", &failing).await.iter().all(|s| s == "open"));
    });
}

#[test]
fn active_health_checks_take_an_upstream_out_and_back() {
    run_test(|| async {
        let bs = backends(&["a", "b"]).await;
        let (a, b) = (&bs[0], &bs[1]);
        let hc = "        healthCheck:\n          path: /healthz\n          interval: 100ms\n          timeout: 200ms\n          rise: 2\n          fall: 2\n";
        // Breakers out of the way: whatever avoids a here is the health check.
        let agent = Agent::start(
            &routes("app", "PathPrefix(`/`)", &urls(&bs), hc),
            "[proxy.breaker]\nconsecutive_failures = 1000\nfailure_rate_threshold = 0.0\n",
        )
        .await;
        let healthy = |s: &serde_json::Value, url: &str| upstream_status(s, "app", url)["healthy"].as_bool().unwrap();
        let agent_ref = &agent;
        let gauge = |url: String| async move {
            agent_ref.metric("constellation_upstream_healthy", &["service=\"app\"", &label(&url)]).await
        };
        wait_for("first health checks", Duration::from_secs(10), || async { a.count() >= 1 && b.count() >= 1 }).await;
        assert_eq!(gauge(a.url()).await, 1.0);

        // a answers 500 to everything, health checks included.
        a.set(Behaviour::Status(500));
        wait_for("a to be marked unhealthy", Duration::from_secs(10), || async {
            !healthy(&agent.status().await, &a.url())
        })
        .await;
        let s = agent.status().await;
        assert!(healthy(&s, &b.url()));
        assert_eq!(upstream_status(&s, "app", &a.url())["available"], false);
        assert_eq!(service_status(&s, "app")["health_check"]["path"], "/healthz");
        assert_eq!(gauge(a.url()).await, 0.0);
        assert_eq!(gauge(b.url()).await, 1.0);
        let probes = a.hits();
        assert!(probes.iter().all(|h: &Hit| h.path == "/healthz" && h.method == "GET"), "{probes:?}");
        assert!(probes.iter().all(|h| h.header("user-agent") == Some("constellation-health")), "{probes:?}");

        let mut c = agent.client();
        for _ in 0..10 {
            let r = c.get("app", "/work").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "b\n".to_string()), "client traffic avoids the unhealthy upstream");
        }
        assert_eq!(a.hits().iter().filter(|h| h.path != "/healthz").count(), 0, "a saw only health checks");
        assert_eq!(b.hits().iter().filter(|h| h.path == "/work").count(), 10);

        // Restored: healthy again after `rise` passing checks, and back in the rotation.
        a.set(Behaviour::Ok);
        wait_for("a to be healthy again", Duration::from_secs(10), || async {
            healthy(&agent.status().await, &a.url())
        })
        .await;
        assert_eq!(gauge(a.url()).await, 1.0);
        for _ in 0..10 {
            let r = c.get("app", "/work").await.unwrap();
            assert_eq!(r.status, 200);
        }
        let a_work = a.hits().iter().filter(|h| h.path == "/work").count();
        assert!(a_work >= 3, "a gets client traffic again: {a_work} of 10");
    });
}
