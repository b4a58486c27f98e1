//! Two agents, one engine: each watches the containers a constraint label assigns to it
//! and reaches the other's through that node's mesh entry point (never the container
//! address). A service with a replica on each node is routed from node 1 to both;
//! stopping node 2's container, or node 2's agent, moves the traffic to node 1's.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;

async fn seen(web: std::net::SocketAddr, n: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for _ in 0..n {
        match fetch(web, "GET", "two.test", "/", &[], &[]).await {
            Ok(r) => out.insert(format!("{} {}", r.status, r.text().trim())),
            Err(e) => out.insert(format!("error {e}")),
        };
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_service_on_another_node_is_reached_through_its_mesh_entry_point() {
    run_test(|| async {
        let guard = DockerGuard::new("two");
        let net = guard.network("net");
        let mesh_ports = [take_port(), take_port()];
        let spec = |node: &str, mesh: u16| {
            let docker = format!(
                "[docker]\nnetwork = \"{net}\"\nmesh_entrypoint = \"mesh\"\nconstraints = \"Label(`{}`, `{}`) && Label(`constellation.node`, `{node}`)\"\n\
                 [entrypoints.mesh]\naddress = \"127.0.0.1:{mesh}\"\n",
                constellation_testkit::docker::TEST_LABEL,
                guard.tag
            );
            NodeSpec { extra_toml: docker, ..NodeSpec::default() }
        };
        let mut fleet =
            Fleet::new(FleetSpec::new("docker-two", vec![spec("n1", mesh_ports[0]), spec("n2", mesh_ports[1])]));
        fleet.start_all(Duration::from_secs(20)).await;
        let labels = |node: &str| {
            vec![
                "traefik.enable=true".to_string(),
                format!("constellation.node={node}"),
                "traefik.http.routers.two.rule=Host(`two.test`)".to_string(),
                "traefik.http.services.two.loadbalancer.server.port=8000".to_string(),
                // Active checks of node 2's replica go through node 2's mesh entry point.
                "traefik.http.services.two.loadbalancer.healthcheck.path=/health".to_string(),
                "traefik.http.services.two.loadbalancer.healthcheck.interval=500ms".to_string(),
            ]
        };
        let l1 = labels("n1");
        let l2 = labels("n2");
        let a = web_container(&guard, "a", &net, &l1.iter().map(String::as_str).collect::<Vec<_>>(), "on-n1");
        let b = web_container(&guard, "b", &net, &l2.iter().map(String::as_str).collect::<Vec<_>>(), "on-n2");
        guard.wait_health(&a, "healthy", Duration::from_secs(15));
        guard.wait_health(&b, "healthy", Duration::from_secs(15));
        let web1 = fleet.node(1).web;
        let (_, took) = eventually("node 1 routes to both nodes' replicas", Duration::from_secs(5), || async {
            let s = seen(web1, 10).await;
            if s == set(&["200 on-n1", "200 on-n2"]) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
        tracing::info!(?took, "both replicas routed from node 1");
        // Node 2's replica is reached through node 2's mesh entry point, not its address.
        let s1 = fleet.node(1).must_status().await;
        let urls = upstream_urls(&s1, "two");
        let mesh2 = format!("http://127.0.0.1:{}", mesh_ports[1]);
        assert!(urls.contains(&mesh2), "{urls:?}");
        assert_eq!(urls.len(), 2, "{urls:?}");
        // Several health-check rounds later (fall = 3 at 500 ms) it is still healthy:
        // the checks of node 2's replica pass through node 2's mesh entry point.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s1 = fleet.node(1).must_status().await;
        let mesh_upstream = upstream_status(&s1, "two", &mesh2);
        assert_eq!(mesh_upstream["healthy"], true, "the health check through the mesh passes: {mesh_upstream}");
        assert_eq!(seen(web1, 10).await, set(&["200 on-n1", "200 on-n2"]));
        // Node 1's status lists node 2's containers too.
        let names: Vec<String> = s1["docker"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}/{}",
                    c["node"].as_str().unwrap(),
                    c["name"].as_str().unwrap(),
                    c["health"].as_str().unwrap()
                )
            })
            .collect();
        assert!(names.contains(&format!("n1/{a}/healthy")) && names.contains(&format!("n2/{b}/healthy")), "{names:?}");

        // Node 2's mesh entry point answers 503 for a service it does not have (what
        // node 1 fails over on), never 404.
        let mesh2_addr: std::net::SocketAddr = format!("127.0.0.1:{}", mesh_ports[1]).parse().unwrap();
        let r = fetch(mesh2_addr, "GET", "two.test", "/", &[("x-constellation-service", "gone")], &[]).await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
        let r = fetch(mesh2_addr, "GET", "two.test", "/", &[("x-constellation-service", "two")], &[]).await.unwrap();
        assert_eq!((r.status, r.text().trim()), (200, "on-n2"));

        // Node 2's container stops: node 1 routes to its own only, and no request fails
        // meanwhile (node 2 answers 503 for a service it no longer has; node 1 fails over).
        let load = Load::start(web1, "two.test");
        let stopped = std::time::Instant::now();
        docker(&["stop", "-t", "1", &b]).unwrap();
        eventually("node 2's stopped replica leaves node 1's routes", Duration::from_secs(2), || async {
            let s = seen(web1, 8).await;
            if s == set(&["200 on-n1"]) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
        let (ok, errors) = load.finish_around_kill(stopped).await;
        assert!(ok > 0 && errors.is_empty(), "{ok} answered, client errors while node 2's replica stopped: {errors:?}");
        docker(&["start", &b]).unwrap();
        guard.wait_health(&b, "healthy", Duration::from_secs(15));
        eventually("node 2's replica is back", Duration::from_secs(5), || async {
            let s = seen(web1, 10).await;
            if s == set(&["200 on-n1", "200 on-n2"]) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;

        // Node 2's agent dies: its mesh entry point refuses, GETs fail over to node 1's
        // replica (no client error), and node 2 leaves the routes when declared down.
        let load = Load::start(web1, "two.test");
        let killed = std::time::Instant::now();
        fleet.kill(2);
        let (_, out) = eventually("dead node 2 leaves node 1's routes", Duration::from_secs(15), || async {
            let s = fleet.node(1).must_status().await;
            let urls = upstream_urls(&s, "two");
            if urls.len() == 1 && !urls.contains(&mesh2) {
                Ok(())
            } else {
                Err(format!("{urls:?}"))
            }
        })
        .await;
        tracing::info!(?out, "node 2 out of node 1's routes");
        let (ok, errors) = load.finish_around_kill(killed).await;
        assert!(ok > 0 && errors.is_empty(), "{ok} answered, client errors: {errors:?}");
        assert_eq!(seen(web1, 6).await, set(&["200 on-n1"]));
    });
}
