//! Three nodes join through one seed: members, self, public IPs and instances agree.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

#[test]
fn three_nodes_join_through_one_seed_and_share_instances() {
    run_test(|| async {
        let started = Instant::now();
        let bs = backends(3).await;
        let urls: Vec<String> = bs.iter().map(Backend::url).collect();
        let cluster = Cluster::start(urls.iter().map(|u| NodeSpec::app(u.clone())).collect()).await;
        let joined = started.elapsed();
        // Instances arrive with the state pulls, public IPs with a state update after
        // detection: both may trail membership by a little.
        cluster.wait_upstreams(&[1, 2, 3], "app", &urls, Duration::from_secs(10)).await;
        cluster.wait_public_ips(Duration::from_secs(10)).await;

        let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        for observer in &cluster.nodes {
            let status = observer.must_status().await;
            let ms = members(&status);
            assert_eq!(
                member_states(&status),
                names.iter().map(|n| (n.clone(), "alive".to_string())).collect::<Vec<_>>(),
                "{} members: {status:#}",
                observer.name
            );
            let selves: Vec<&str> =
                ms.iter().filter(|m| m["is_self"] == true).map(|m| m["name"].as_str().unwrap()).collect();
            assert_eq!(selves, [observer.name.as_str()], "{}: exactly one is_self, itself", observer.name);
            for n in &cluster.nodes {
                let m = member(&status, &n.name);
                assert_eq!(m["address"], n.gossip.to_string(), "{} on {}", observer.name, n.name);
                assert_eq!(m["cluster_address"], n.cluster.to_string(), "{} on {}", observer.name, n.name);
                assert_eq!(m["public_ip"], n.public_ip.as_str(), "{} on {}", observer.name, n.name);
                assert_eq!(m["instances"], 1, "{} on {}", observer.name, n.name);
                assert!(m["incarnation"].as_u64().unwrap() > 0, "{m}");
                assert!(m["state_version"].as_u64().unwrap() >= 1, "{m}");
            }
            // One member's identity is the same everywhere.
            assert_eq!(
                member(&status, "n2")["incarnation"],
                member(&cluster.node(2).must_status().await, "n2")["incarnation"]
            );
            assert_eq!(upstream_urls(&status, "app"), urls.iter().cloned().collect::<BTreeSet<_>>());
            // A service with no router in any route file gets `Host(`app.localhost`)`.
            let rules: Vec<&str> =
                status["routes"].as_array().unwrap().iter().filter_map(|r| r["rule"].as_str()).collect();
            assert!(rules.contains(&"Host(`app.localhost`)"), "{}: {rules:?}", observer.name);
        }
        // And the route works: every node reaches all three instances.
        for n in &cluster.nodes {
            let mut c = Client::new(n.web);
            let mut seen = BTreeSet::new();
            for _ in 0..6 {
                let r = c.get("app.localhost", "/").await.unwrap();
                assert_eq!(r.status, 200, "{}: {}", n.name, r.text());
                seen.insert(r.text());
            }
            assert_eq!(seen.len(), 3, "{} spread over {seen:?}", n.name);
        }
        let members_alive = cluster.node(1).metric("constellation_members", &["state=\"alive\""]).await;
        assert_eq!(members_alive, 3.0);
        assert!(cluster.node(1).metric("constellation_state_pulls_total", &["result=\"ok\""]).await >= 1.0);
        eprintln!("3 nodes joined in {joined:?}, all checks after {:?}", started.elapsed());
    });
}
