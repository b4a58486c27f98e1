//! Traefik's label set on real containers: routers with rules, priorities and
//! middlewares, services across two containers, Traefik's defaults, and a container
//! whose labels are wrong (refused alone, with the label named).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;

#[test]
fn traefik_labels_route_with_middlewares_and_a_two_container_service() {
    run_test(|| async {
        let guard = DockerGuard::new("labels");
        let net = guard.network("net");
        let agent = Agent::start("", &docker_toml(&guard, &net, "")).await;
        // Two containers of one service `api`; the router, its middlewares and the
        // service options are on both (they merge) or on one (they still apply).
        let api_labels = [
            "traefik.enable=true",
            "traefik.http.routers.api.rule=Host(`labels.test`) && PathPrefix(`/api`)",
            "traefik.http.routers.api.middlewares=api-strip,api-headers",
            "traefik.http.routers.api.service=api",
            "traefik.http.services.api.loadbalancer.server.port=8000",
            "traefik.http.middlewares.api-strip.stripprefix.prefixes=/api",
            "traefik.http.middlewares.api-headers.headers.customresponseheaders.X-Served-By=constellation",
        ];
        let one = web_container(&guard, "api1", &net, &api_labels, "api-one");
        let two = web_container(&guard, "api2", &net, &api_labels, "api-two");
        // Traefik's defaults: no router or service label, one exposed port (8000 is not
        // exposed by the image, so it is given as the only service's port).
        let plain = web_container(
            &guard,
            "plain",
            &net,
            &["traefik.enable=true", "traefik.http.services.plain.loadbalancer.server.port=8000"],
            "plain",
        );
        // Not enabled: never routed (exposed_by_default is false).
        let hidden =
            web_container(&guard, "hidden", &net, &["traefik.http.routers.hidden.rule=Host(`hidden.test`)"], "x");
        // A bad rule: refused alone, naming the label's router and the rule.
        let broken = web_container(
            &guard,
            "broken",
            &net,
            &[
                "traefik.enable=true",
                "traefik.http.routers.broken.rule=Host(`broken.test`",
                "traefik.http.services.broken.loadbalancer.server.port=8000",
            ],
            "broken",
        );
        for c in [&one, &two, &plain, &hidden, &broken] {
            guard.wait_health(c, "healthy", Duration::from_secs(15));
        }
        // Stripped path reaches busybox as /index.html; the header middleware answers.
        eventually("both api containers serve /api/index.html", Duration::from_secs(3), || async {
            let mut seen = BTreeSet::new();
            for _ in 0..8 {
                let r = agent.get("labels.test", "/api/index.html").await;
                if r.status != 200 || r.header("x-served-by") != Some("constellation") {
                    return Err(format!("{} {:?} {}", r.status, r.headers, r.text()));
                }
                seen.insert(r.text().trim().to_string());
            }
            if seen.len() == 2 {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        })
        .await;
        // Without the prefix the router does not match: 404 from the proxy.
        assert_eq!(agent.get("labels.test", "/index.html").await.status, 404);
        // The default router: Host(<container name>.<domain>), domain `localhost`.
        let r = agent.get(&format!("{plain}.localhost"), "/").await;
        assert_eq!((r.status, r.text().trim()), (200, "plain"), "{}", r.text());
        assert_eq!(agent.get("hidden.test", "/").await.status, 404);
        assert_eq!(agent.get("broken.test", "/").await.status, 404);

        let s = agent.status().await;
        let containers = s["docker"]["containers"].as_array().unwrap();
        let find = |n: &str| containers.iter().find(|c| c["name"] == n).unwrap().clone();
        let err = find(&broken)["error"].as_str().unwrap_or("").to_string();
        assert!(
            err.contains(&format!("docker container {broken}"))
                && err.contains("http.routers.broken")
                && err.contains("rule"),
            "{err}"
        );
        assert!(find(&one)["error"].is_null());
        assert_eq!(find(&hidden)["services"], serde_json::json!([]));
        assert_eq!(agent.metric("constellation_docker_containers_refused", &[]).await, 1.0);
        // The Traefik view holds the merged objects once, servers from both containers.
        let t = agent.admin_get("/api/v1/traefik").await;
        let doc: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        let servers = doc["http"]["services"]["api"]["loadBalancer"]["servers"].as_array().unwrap();
        assert_eq!(servers.len(), 2, "{doc}");
        assert_eq!(doc["http"]["middlewares"]["api-strip"]["stripPrefix"]["prefixes"], serde_json::json!(["/api"]));
        let log = agent.log();
        assert!(log.contains("broken"), "the refusal is logged");

        // A conflicting definition on a third container: left out, both sources named.
        let rogue = web_container(
            &guard,
            "rogue",
            &net,
            &[
                "traefik.enable=true",
                "traefik.http.routers.api.rule=Host(`rogue.test`)",
                "traefik.http.routers.api.service=api",
                "traefik.http.services.api.loadbalancer.server.port=8000",
            ],
            "rogue",
        );
        guard.wait_health(&rogue, "healthy", Duration::from_secs(15));
        let (conflict, _) = eventually("the conflict is reported", Duration::from_secs(3), || async {
            let s = agent.status().await;
            let c: Vec<String> = s["docker"]["conflicts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            c.into_iter().find(|c| c.contains("http.routers.api")).ok_or_else(|| s["docker"].to_string())
        })
        .await;
        assert!(conflict.contains(&one) || conflict.contains(&two), "{conflict}");
        assert!(conflict.contains(&rogue), "{conflict}");
        assert_eq!(agent.get("rogue.test", "/").await.status, 404, "neither definition is used");
        assert_eq!(agent.get("labels.test", "/api/index.html").await.status, 404, "neither definition is used");
    });
}
