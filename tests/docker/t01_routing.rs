//! A labelled container is routed by `Host` as soon as Docker calls it healthy, leaves
//! the routes when its health check fails or it is killed, and comes back when healthy —
//! with no client error while a second replica stays healthy.

use std::time::{Duration, Instant};

use crate::support::*;

/// Bodies seen by GETs of `app.test` in `window`.
async fn bodies(agent: &Agent, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = agent.get("app.test", "/").await;
        out.push(format!("{} {}", r.status, r.text().trim()));
    }
    out
}

#[test]
fn labelled_container_is_routed_and_follows_its_health() {
    run_test(|| async {
        let guard = DockerGuard::new("route");
        let net = guard.network("net");
        let agent = Agent::start("", &docker_toml(&guard, &net, "")).await;
        let labels = [
            "traefik.enable=true",
            "traefik.http.routers.app.rule=Host(`app.test`)",
            "traefik.http.services.app.loadbalancer.server.port=8000",
        ];
        let started = Instant::now();
        let a = web_container(&guard, "a", &net, &labels, "A");
        guard.wait_health(&a, "healthy", Duration::from_secs(15));
        let healthy_after = started.elapsed();
        let (_, routed_in) = eventually("container A routed", Duration::from_secs(2), || async {
            let r = agent.get("app.test", "/").await;
            if r.status == 200 && r.text().trim() == "A" {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        })
        .await;
        tracing::info!(?healthy_after, ?routed_in, "A is routed");
        let s = agent.status().await;
        let c = s["docker"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == a.as_str()).unwrap().clone();
        assert_eq!(c["health"], "healthy", "{c}");
        assert_eq!(c["services"], serde_json::json!(["app"]), "{c}");

        let b = web_container(&guard, "b", &net, &labels, "B");
        guard.wait_health(&b, "healthy", Duration::from_secs(15));
        eventually("both replicas routed", Duration::from_secs(2), || async {
            let seen = bodies(&agent, 6).await;
            if seen.contains(&"200 A".to_string()) && seen.contains(&"200 B".to_string()) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        })
        .await;

        // From here on a client keeps asking; none of its requests may fail.
        let load = Load::start(agent.web, "app.test");

        // A's health check fails: within 2 s of Docker saying so, only B answers.
        set_healthy(&a, false);
        guard.wait_health(&a, "unhealthy", Duration::from_secs(10));
        let (_, out_in) = eventually("unhealthy A leaves the routes", Duration::from_secs(2), || async {
            let seen = bodies(&agent, 8).await;
            if seen.iter().all(|b| b == "200 B") {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        })
        .await;
        tracing::info!(?out_in, "unhealthy A is out");
        assert!(bodies(&agent, 10).await.iter().all(|b| b == "200 B"));

        // Healthy again: A returns.
        set_healthy(&a, true);
        guard.wait_health(&a, "healthy", Duration::from_secs(10));
        eventually("healthy A returns", Duration::from_secs(2), || async {
            let seen = bodies(&agent, 8).await;
            if seen.contains(&"200 A".to_string()) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        })
        .await;

        // docker kill: A leaves at once; GETs fail over to B meanwhile.
        let killed = Instant::now();
        docker(&["kill", &a]).unwrap();
        let (_, killed_out) = eventually("killed A leaves the routes", Duration::from_secs(2), || async {
            let s = agent.status().await;
            let urls = upstream_urls(&s, "app");
            if urls.len() == 1 {
                Ok(())
            } else {
                Err(format!("{urls:?}"))
            }
        })
        .await;
        tracing::info!(?killed_out, "killed A is out");
        assert!(bodies(&agent, 10).await.iter().all(|b| b == "200 B"));

        let (ok, errors) = load.finish_around_kill(killed).await;
        assert!(ok > 50, "the client made too few requests: {ok}");
        assert!(errors.is_empty(), "client errors while a healthy replica remained: {errors:?}");

        // Counted: events by action, the initial relist.
        assert!(agent.metric("constellation_docker_events_total", &["action=\"health_status\""]).await >= 3.0);
        assert!(agent.metric("constellation_docker_events_total", &["action=\"kill\""]).await >= 1.0);
        assert!(agent.metric("constellation_docker_relists_total", &["reason=\"connect\""]).await >= 1.0);
        assert_eq!(agent.metric("constellation_docker_connected", &[]).await, 1.0);
    });
}
