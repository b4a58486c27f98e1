//! Five nodes join through one seed: everyone sees everyone alive.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;
use crate::*;

#[test]
fn five_nodes_join_through_one_seed() {
    run_test(|| async {
        let started = Instant::now();
        // n5 leaves by SIGTERM below: without a grace period it stops serving at once and
        // leaves the cluster (with one, it would serve for that long first).
        let mut specs = vec![NodeSpec::default(); 5];
        specs[4].extra_toml = "[proxy]\ngrace_period_secs = 0\n".into();
        let cluster = Cluster::start(specs).await;
        let joined = started.elapsed();
        cluster.wait_public_ips(Duration::from_secs(10)).await;
        let names: Vec<(String, String)> = cluster.nodes.iter().map(|n| (n.name.clone(), "alive".into())).collect();
        for observer in &cluster.nodes {
            let status = observer.must_status().await;
            assert_eq!(member_states(&status), names, "{}: {status:#}", observer.name);
            let selves: Vec<Value> = members(&status).into_iter().filter(|m| m["is_self"] == true).collect();
            assert_eq!(selves.len(), 1, "{}: {selves:?}", observer.name);
            assert_eq!(selves[0]["name"], observer.name.as_str());
            for n in &cluster.nodes {
                let m = member(&status, &n.name);
                assert_eq!(m["address"], n.gossip.to_string());
                assert_eq!(m["cluster_address"], n.cluster.to_string());
                assert_eq!(m["instances"], 0);
            }
            assert_eq!(observer.metric("constellation_members", &["state=\"alive\""]).await, 5.0);
            assert_eq!(observer.metric("constellation_members", &["state=\"down\""]).await, 0.0);
        }
        // A graceful leave (SIGTERM) is seen at once, long before a crash would be.
        let mut cluster = cluster;
        cluster.nodes[4].terminate();
        let mut expect: Vec<(String, &str)> = (1..=4).map(|i| (format!("n{i}"), "alive")).collect();
        expect.push(("n5".into(), "down"));
        let left = cluster.wait_view(&[1, 2, 3, 4], &expect, Duration::from_secs(3)).await;
        eprintln!("5 nodes joined in {joined:?}; n5 left (SIGTERM), down everywhere after {left:?}");
    });
}
