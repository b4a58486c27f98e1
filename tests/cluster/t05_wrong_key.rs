//! A node with another cluster key cannot join: its datagrams are rejected and counted,
//! nobody lists it, and it lists nobody.

use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

#[test]
fn node_with_a_different_key_never_joins() {
    run_test(|| async {
        let mut cluster = Cluster::start(vec![NodeSpec::default(); 3]).await;
        let (code, _, err) = run(&["keygen", "--out", "intruder.key"], &cluster.dir.0);
        assert_eq!(code, 0, "{err}");
        assert_ne!(
            std::fs::read_to_string(cluster.dir.path("intruder.key")).unwrap(),
            std::fs::read_to_string(cluster.dir.path("cluster.key")).unwrap()
        );
        let seed = cluster.node(1);
        let rejected_before = seed.metric("constellation_gossip_packets_rejected_total", &[]).await;
        let unknown_before = seed.metric("constellation_gossip_packets_rejected_total", &["unknown_key"]).await;
        let before: Vec<_> = {
            let mut v = Vec::new();
            for n in &cluster.nodes {
                v.push(identities(&n.must_status().await));
            }
            v
        };

        let intruder = cluster.add(&NodeSpec { key_file: Some("intruder.key".into()), ..NodeSpec::default() });
        cluster.spawn(intruder);
        let started = Instant::now();
        cluster.node(intruder).wait_healthy(Duration::from_secs(20)).await;
        // Its join requests reach the seed and are refused there.
        let seed = cluster.node(1);
        let (_, refused_after) = eventually_or(
            "the seed to reject the intruder's datagrams",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                let n = seed.metric("constellation_gossip_packets_rejected_total", &["unknown_key"]).await;
                if n >= unknown_before + 2.0 {
                    Ok(())
                } else {
                    Err(format!("unknown_key rejections {unknown_before} -> {n}"))
                }
            },
        )
        .await;
        // A join takes well under a second here; watch for several join retries (every 2 s).
        let watch_until = Instant::now() + Duration::from_secs(5);
        let mut polls = 0;
        while Instant::now() < watch_until {
            for (i, n) in cluster.nodes[..3].iter().enumerate() {
                let status = n.must_status().await;
                assert_eq!(identities(&status), before[i], "{} must not change: {status:#}", n.name);
                assert!(member_states(&status).iter().all(|(name, _)| name != "n4"));
            }
            let own = cluster.node(intruder).must_status().await;
            assert_eq!(
                member_states(&own),
                vec![("n4".to_string(), "alive".to_string())],
                "the intruder sees only itself: {own:#}"
            );
            assert_eq!(cluster.node(intruder).admin_status("/readyz").await, Some(503), "never joined");
            polls += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(polls >= 10);
        let rejected_after = cluster.node(1).metric("constellation_gossip_packets_rejected_total", &[]).await;
        let unknown_after =
            cluster.node(1).metric("constellation_gossip_packets_rejected_total", &["unknown_key"]).await;
        // A join request every 2 s for ~6 s at least.
        assert!(unknown_after >= unknown_before + 3.0, "{unknown_before} -> {unknown_after}");
        assert_eq!(rejected_after - rejected_before, unknown_after - unknown_before, "all rejections are unknown_key");
        // The others never heard from it.
        for n in &cluster.nodes[1..3] {
            assert_eq!(n.metric("constellation_gossip_packets_rejected_total", &[]).await, 0.0, "{}", n.name);
        }
        assert_eq!(cluster.node(intruder).metric("constellation_members", &["state=\"alive\""]).await, 1.0);
        eprintln!(
            "intruder refused {} times in {:?} (first after {refused_after:?})",
            unknown_after - unknown_before,
            started.elapsed()
        );
    });
}
