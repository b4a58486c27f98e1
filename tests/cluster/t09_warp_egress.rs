//! WARP egress across two agents: each runs its own gateway (a real microsocks) in front
//! of its own trace server, and an instance of the same `scraper` service that needs
//! WARP egress. A gateway's verdict travels in its node's gossiped state; the other node
//! routes the service only to instances whose node's egress is up; repeated 403s from
//! one node's instance raise an egress hint that moves GETs off it.

use std::time::{Duration, Instant};

use crate::support::warp::{Socks, TraceMode, TraceServer};
use crate::support::*;
use crate::*;

const INTERVAL_MS: u64 = 300;
const FALL: u64 = 3;

/// A node with a gateway `warp` on `socks`, probing `trace`, and one `scraper` instance.
fn spec(socks: &Socks, trace: &TraceServer, instance: &str, extra: &str) -> NodeSpec {
    NodeSpec {
        extra_toml: format!(
            "{extra}\n[[warp.gateways]]\nname = \"warp\"\nsocks5 = \"{}\"\ntrace_url = \"{}\"\ninterval_ms = {INTERVAL_MS}\nfall = {FALL}\n\n[[instances]]\nservice = \"scraper\"\nurl = \"{instance}\"\negress = \"warp\"\n",
            socks.addr(),
            trace.url()
        ),
        ..NodeSpec::default()
    }
}

/// n1's view of `node`'s gateway `warp` (gossiped), as `(up, warp)`.
fn egress_of(status: &serde_json::Value, node: &str) -> Option<(bool, String)> {
    let r = status["warp"]["nodes"][node].as_array()?.iter().find(|r| r["gateway"] == "warp")?.clone();
    Some((r["up"].as_bool()?, r["warp"].as_str()?.to_string()))
}

#[test]
fn egress_verdicts_travel_by_gossip_and_steer_the_route() {
    run_test(|| async {
        let bs = backends(2).await;
        let (a, b) = (bs[0].url(), bs[1].url());
        let (t1, t2) = (TraceServer::start(0, "203.0.113.1").await, TraceServer::start(0, "203.0.113.2").await);
        let (s1, mut s2) = (Socks::start(take_port()), Socks::start(take_port()));
        let mut cluster = Cluster::start(vec![spec(&s1, &t1, &a, ""), spec(&s2, &t2, &b, "")]).await;
        let both = [a.clone(), b.clone()];
        cluster.wait_upstreams(&[1, 2], "scraper", &both, Duration::from_secs(15)).await;

        // Status: this node's gateway in full, and both nodes' verdicts.
        let s = cluster.node(1).must_status().await;
        let g = &s["warp"]["gateways"][0];
        assert_eq!(
            (g["name"].as_str(), g["up"].as_bool(), g["warp"].as_str()),
            (Some("warp"), Some(true), Some("on")),
            "{g:#}"
        );
        assert_eq!(g["ip"], "203.0.113.1");
        assert_eq!(g["differs_from_node_ip"], true, "the node's public IP is 192.0.2.1: {g:#}");
        assert!(g["latency_ms"].as_u64().is_some(), "{g:#}");
        assert_eq!(egress_of(&s, "n2"), Some((true, "on".into())), "{:#}", s["warp"]);
        let svc = &s["warp"]["services"][0];
        assert_eq!((svc["service"].as_str(), svc["mode"].as_str()), (Some("scraper"), Some("egress")), "{svc:#}");
        assert_eq!(cluster.node(1).metric("constellation_warp_egress_up", &["gateway=\"warp\""]).await, 1.0);
        // Both instances serve through n1.
        let mut c1 = Client::new(cluster.node(1).web);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let r = c1.get("scraper.localhost", "/").await.unwrap();
            assert_eq!(r.status, 200);
            seen.insert(r.text());
        }
        assert_eq!(seen.len(), 2, "served from both nodes' instances: {seen:?}");

        // Kill n2's gateway: n1 drops n2's instance within interval × fall + gossip.
        s2.stop();
        let killed = Instant::now();
        cluster.wait_upstreams(&[1, 2], "scraper", std::slice::from_ref(&a), Duration::from_secs(10)).await;
        let out_after = killed.elapsed();
        let s = cluster.node(1).must_status().await;
        assert_eq!(egress_of(&s, "n2").map(|e| e.0), Some(false), "{:#}", s["warp"]);
        let err = s["warp"]["nodes"]["n2"][0]["error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains(&format!("socks5 {}", s2.addr())), "n2's error names its gateway: {err}");
        assert_eq!(s["warp"]["services"][0]["down"], serde_json::json!(["n2"]));
        for i in 0..10 {
            let r = c1.get("scraper.localhost", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "request {i} after n2's egress died");
        }
        // Bound: fall × interval of probes, plus the first probe's wait, plus gossip.
        let bound = Duration::from_millis(INTERVAL_MS * (FALL + 1)) + Duration::from_secs(3);
        assert!(out_after <= bound, "n2's instance left after {out_after:?}, bound {bound:?}");

        // Restart: it returns.
        s2.restart();
        let restarted = Instant::now();
        cluster.wait_upstreams(&[1, 2], "scraper", &both, Duration::from_secs(10)).await;
        let back_after = restarted.elapsed();

        // warp=off (connected, but not through WARP) counts as down.
        t2.set(TraceMode::Trace { ip: "192.0.2.2".into(), warp: "off".into() });
        cluster.wait_upstreams(&[1], "scraper", std::slice::from_ref(&a), Duration::from_secs(10)).await;
        let s = cluster.node(2).must_status().await;
        let g = &s["warp"]["gateways"][0];
        assert_eq!((g["up"].as_bool(), g["warp"].as_str()), (Some(false), Some("off")), "{g:#}");
        assert!(g["last_error"].as_str().unwrap().starts_with("warp=off"), "{g:#}");
        assert_eq!(g["differs_from_node_ip"], false, "{g:#}");
        t2.set(TraceMode::Trace { ip: "203.0.113.2".into(), warp: "plus".into() });
        cluster.wait_upstreams(&[1, 2], "scraper", &both, Duration::from_secs(10)).await;

        // Garbage and a hanging trace page: down with a clear reason, no crash.
        t2.set(TraceMode::Garbage);
        cluster.wait_upstreams(&[1], "scraper", std::slice::from_ref(&a), Duration::from_secs(10)).await;
        let g = cluster.node(2).must_status().await["warp"]["gateways"][0].clone();
        assert!(g["last_error"].as_str().unwrap().contains("no ip= line"), "{g:#}");
        t2.set(TraceMode::Hang);
        eventually("n2's probe to time out", Duration::from_secs(10), || async {
            let g = cluster.node(2).must_status().await["warp"]["gateways"][0].clone();
            match g["last_error"].as_str() {
                Some(e) if e.starts_with("no trace answer within") => Ok(()),
                _ => Err(format!("{g:#}")),
            }
        })
        .await;

        // No egress up anywhere: the service refuses (503), it does not leak the nodes' IPs.
        let mut s1 = s1;
        s1.stop();
        eventually("n1 to refuse scraper", Duration::from_secs(10), || async {
            let s = cluster.node(1).must_status().await;
            let mode = s["warp"]["services"][0]["mode"].clone();
            if mode == "refused" && upstream_urls(&s, "scraper").is_empty() {
                Ok(())
            } else {
                Err(format!("{:#}", s["warp"]["services"]))
            }
        })
        .await;
        let r = c1.get("scraper.localhost", "/").await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
        for n in [1, 2] {
            cluster.node_mut(n).assert_alive();
        }
        eprintln!(
            "warp egress: n2's instance out of n1's route {out_after:?} after its gateway died (interval {INTERVAL_MS} ms, fall {FALL}); back {back_after:?} after restart"
        );
    });
}

#[test]
fn repeated_403s_move_gets_off_a_blocked_egress_and_pass_posts_through() {
    run_test(|| async {
        let bs = backends(2).await;
        let (a, b) = (bs[0].url(), bs[1].url());
        let (t1, t2) = (TraceServer::start(0, "203.0.113.1").await, TraceServer::start(0, "203.0.113.2").await);
        let (s1, s2) = (Socks::start(take_port()), Socks::start(take_port()));
        // A breaker that does not open within this test: the hint alone must move traffic.
        let breaker = "[proxy.breaker]\nconsecutive_failures = 1000\nfailure_rate_threshold = 0.0\n";
        let cluster = Cluster::start(vec![spec(&s1, &t1, &a, breaker), spec(&s2, &t2, &b, breaker)]).await;
        cluster.wait_upstreams(&[1, 2], "scraper", &[a.clone(), b.clone()], Duration::from_secs(15)).await;

        // Sites now block n2's egress IP.
        bs[1].set(Behaviour::Status(403));
        let mut c1 = Client::new(cluster.node(1).web);
        // A POST is never retried: whoever answered, the client gets that answer as is.
        let mut posts_403 = 0;
        for i in 0..4 {
            let r = c1.request("POST", "scraper.localhost", "/submit", &[], b"form=1").await.unwrap();
            match r.status {
                200 => assert_eq!(r.text(), "b1\n", "POST {i}"),
                403 => {
                    assert_eq!(r.text(), "b2 says 403\n", "POST {i}: the upstream's own 403");
                    posts_403 += 1;
                }
                other => panic!("POST {i}: {other} {}", r.text()),
            }
        }
        assert!(posts_403 >= 1, "round robin sent some POSTs to b2");
        // GETs: every 403 is retried on n1's instance; the client never sees one.
        let b2_before = bs[1].count();
        for i in 0..20 {
            let r = c1.get("scraper.localhost", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "GET {i}");
        }
        let tried_b2 = bs[1].count() - b2_before;
        // The hint: raised by n1 about n2, gossiped to n2, shown in both.
        let (_, hinted_after) = eventually_or(
            "an egress hint about n2 on both nodes",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                for n in [1, 2] {
                    let s = cluster.node(n).must_status().await;
                    let hints = s["warp"]["hints"].as_array().cloned().unwrap_or_default();
                    if !hints.iter().any(|h| h["from"] == "n1" && h["upstream"] == "n2") {
                        return Err(format!("n{n}: {:#}", s["warp"]));
                    }
                }
                let s = cluster.node(1).must_status().await;
                if upstream_status(&s, "scraper", &b)["deprioritised"] != true {
                    return Err(format!("b on n1: {}", upstream_status(&s, "scraper", &b)));
                }
                Ok(())
            },
        )
        .await;
        assert_eq!(cluster.node(1).metric("constellation_warp_egress_hints_total", &["node=\"n2\""]).await, 1.0);
        // Deprioritised: GETs go to n1's instance without trying n2's first.
        let b2_now = bs[1].count();
        for i in 0..10 {
            let r = c1.get("scraper.localhost", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "GET {i} after the hint");
        }
        assert_eq!(bs[1].count(), b2_now, "n2's blocked instance is no longer tried first");
        let s = cluster.node(1).must_status().await;
        assert_eq!(upstream_status(&s, "scraper", &b)["available"], true, "deprioritised, not ejected");
        eprintln!(
            "egress hint: {posts_403} POSTs answered 403 as is, {tried_b2} GETs retried off n2 with 0 client errors; hint on both nodes {hinted_after:?} after the GETs"
        );
    });
}
