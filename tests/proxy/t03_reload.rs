//! Hot reload of the routes file: under load, keeping runtime state, and rejecting
//! invalid changes while the previous table stays in force.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

async fn backend(name: &str) -> Backend {
    Backend::start(name, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

async fn generation(agent: &Agent) -> u64 {
    agent.status().await["config"]["generation"].as_u64().unwrap()
}

#[test]
fn reloads_under_load_lose_no_request() {
    run_test(|| async {
        let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
        let ab = routes("app", "PathPrefix(`/`)", &[a.url(), b.url()], "");
        let bc = routes("app", "PathPrefix(`/`)", &[b.url(), c.url()], "");
        let agent = Agent::start(&ab, "").await;
        let first = generation(&agent).await;

        // Four clients send GETs back to back for the whole test.
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (stop, mut client) = (stop.clone(), agent.client());
            clients.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match client.get("app", "/").await {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            }));
        }
        wait_for("traffic to flow", Duration::from_secs(10), || async { a.count() + b.count() >= 20 }).await;

        // Eleven rewrites, alternating {b,c} and {a,b}; the last one leaves {b,c}.
        let reloads = 11;
        let mut last = first;
        for i in 0..reloads {
            let yaml = if i % 2 == 0 { &bc } else { &ab };
            let g = agent.reload(yaml).await;
            assert!(g > last, "generation advances: {g} after {last}");
            last = g;
            // Let some traffic through each table.
            let seen = a.count() + b.count() + c.count();
            wait_for("traffic on the new table", Duration::from_secs(10), || async {
                a.count() + b.count() + c.count() >= seen + 8
            })
            .await;
        }
        stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for t in clients {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{} of {} requests failed during reloads: {:?}",
            failed.len(),
            ok + failed.len() as u64,
            failed
        );
        assert!(ok >= 100, "only {ok} requests were sent");
        assert_eq!(a.count() + b.count() + c.count(), ok, "every request reached exactly one backend once");
        assert!(c.count() > 0, "the {{b,c}} tables were used");
        assert!(last >= first + reloads, "generation {last} after {reloads} reloads from {first}");
        assert_eq!(agent.metric("constellation_config_generation", &[]).await, last as f64);
        assert!(agent.metric("constellation_config_reloads_total", &["result=\"ok\""]).await >= (reloads + 1) as f64);
        assert_eq!(agent.metric("constellation_config_reloads_total", &["result=\"invalid\""]).await, 0.0);

        // Afterwards only the final set gets traffic.
        a.clear();
        b.clear();
        c.clear();
        let mut client = agent.client();
        for _ in 0..20 {
            let r = client.get("app", "/").await.unwrap();
            assert_eq!(r.status, 200);
            assert_ne!(r.text(), "a\n");
        }
        assert_eq!(a.count(), 0, "a is no longer in the table");
        assert_eq!((b.count(), c.count()), (10, 10), "round robin over b and c");
        let s = agent.status().await;
        let ups: Vec<&str> = service_status(&s, "app")["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["url"].as_str().unwrap())
            .collect();
        assert_eq!(ups, vec![b.url(), c.url()]);
    });
}

#[test]
fn open_breaker_survives_a_reload_that_keeps_its_upstream() {
    run_test(|| async {
        let (a, b, other) = (backend("a").await, backend("b").await, backend("other").await);
        a.set(Behaviour::Status(503));
        let cfg = "[proxy.breaker]\nconsecutive_failures = 2\nfailure_rate_threshold = 0.0\nbase_ejection_ms = 60000\nmax_ejection_ms = 60000\njitter = 0.0\n";
        let app = routes("app", "Host(`app`)", &[a.url(), b.url()], "");
        let agent = Agent::start(&app, cfg).await;
        let mut client = agent.client();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while agent.breaker("app", &a.url()).await != "open" {
            let r = client.get("app", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "b\n".to_string()));
            assert!(std::time::Instant::now() < deadline, "a's breaker did not open");
        }
        let before = upstream_status(&agent.status().await, "app", &a.url()).clone();
        assert_eq!(before["breaker"]["ejections"], 1);
        let a_seen = a.count();

        // An unrelated router and service are added; `app` is unchanged.
        let extended =
            format!("{app}    other:\n      loadBalancer:\n        servers:\n          - url: \"{}\"\n", other.url())
                .replace(
                    "  services:\n",
                    "    other:\n      rule: \"Host(`other`)\"\n      service: other\n  services:\n",
                );
        let g0 = generation(&agent).await;
        let g1 = agent.reload(&extended).await;
        assert!(g1 > g0);
        let r = client.get("other", "/").await.unwrap();
        assert_eq!((r.status, r.text()), (200, "other\n".to_string()), "the new route is live");

        let after = upstream_status(&agent.status().await, "app", &a.url()).clone();
        assert_eq!(after["breaker"]["state"], "open", "reload kept the breaker: {after:#}");
        assert_eq!(after["breaker"]["ejections"], before["breaker"]["ejections"]);
        assert!(after["requests"].as_u64() >= before["requests"].as_u64(), "same upstream state object: {after:#}");
        for _ in 0..8 {
            let r = client.get("app", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "b\n".to_string()));
        }
        assert_eq!(a.count(), a_seen, "still ejected after the reload");
        assert_eq!(agent.breaker("app", &a.url()).await, "open");
    });
}

#[test]
fn invalid_changes_are_rejected_and_the_old_table_stays() {
    run_test(|| async {
        let (a, b) = (backend("a").await, backend("b").await);
        let good = routes("app", "PathPrefix(`/`)", &[a.url()], "");
        let agent = Agent::start(&good, "").await;
        let g0 = generation(&agent).await;
        let mut client = agent.client();
        assert_eq!(client.get("app", "/").await.unwrap().text(), "a\n");

        let missing_service = good.replace("      service: app\n", "      service: nope\n");
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            (
                "bad rule syntax",
                routes("app", "PathPrefix(`/`", &[a.url()], ""),
                vec!["routes.yaml", "http.routers.app", "field \"rule\"", "column 15"],
            ),
            (
                "router naming a missing service",
                missing_service,
                vec!["routes.yaml", "http.routers.app", "field \"service\"", "\"nope\" is not defined"],
            ),
            (
                "YAML syntax error",
                "http:\n  routers:\n    app:\n      rule: \"PathPrefix(`/`)\"\n     service: app\n".to_string(),
                vec!["routes.yaml:5:6"],
            ),
        ];
        let mut unclear = Vec::new();
        for (n, (what, yaml, parts)) in cases.iter().enumerate() {
            agent.dir.write("routes.yaml", yaml);
            wait_for(&format!("the {what} to be rejected"), Duration::from_secs(10), || async {
                agent.metric("constellation_config_reloads_total", &["result=\"invalid\""]).await == (n + 1) as f64
            })
            .await;
            let s = agent.status().await;
            let report = &s["config"]["last_reload"];
            assert_eq!(report["result"], "invalid", "{what}: {report:#}");
            let errors: Vec<&str> = report["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
            // Message contents are collected and checked at the end, so that every
            // case's behaviour is exercised even when one message is lacking.
            if !errors.iter().any(|e| parts.iter().all(|p| e.contains(p))) {
                unclear.push(format!("{what}: an error should name {parts:?}; got {errors:?}"));
            }
            assert_eq!(s["config"]["generation"].as_u64().unwrap(), g0, "{what}: generation unchanged");
            assert_eq!(agent.metric("constellation_config_generation", &[]).await, g0 as f64);
            assert!(s["ready"].as_bool().unwrap());
            let r = client.get("app", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "a\n".to_string()), "{what}: the old table still serves");
        }
        assert_eq!(agent.metric("constellation_config_reloads_total", &["result=\"invalid\""]).await, 3.0);

        // A valid change is picked up again.
        let a_seen = a.count();
        let g1 = agent.reload(&routes("app", "PathPrefix(`/`)", &[b.url()], "")).await;
        assert_eq!(g1, g0 + 1, "invalid attempts do not use up generations");
        let s = agent.status().await;
        assert_eq!(s["config"]["last_reload"]["result"], "ok");
        assert_eq!(s["config"]["last_reload"]["errors"].as_array().unwrap().len(), 0);
        for _ in 0..4 {
            assert_eq!(client.get("app", "/").await.unwrap().text(), "b\n");
        }
        assert_eq!(a.count(), a_seen);
        assert_eq!(b.count(), 4);
        assert!(unclear.is_empty(), "rejected, but the errors do not say where:\n{}", unclear.join("\n"));
    });
}
