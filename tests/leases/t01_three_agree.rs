//! Three voters: once settled, every node names the same Raft leader and, for each
//! lease, the same holder and token; `held_here` is true on exactly that holder.

use std::time::Duration;

use crate::support::*;
use crate::*;

#[test]
fn three_agents_agree_on_one_holder_per_lease() {
    run_test(|| async {
        let cluster = LeaseCluster::start(Spec::new(3)).await;
        let all = [1, 2, 3];
        let (settled, took) = cluster.wait_settled(&all, Duration::from_secs(20)).await;
        // Stays agreed and unchanged for several renewals (TTL/3 each).
        let watch = cluster.timings.ttl() * 2;
        let started = std::time::Instant::now();
        while started.elapsed() < watch {
            let now = cluster.agreement(&all).await.unwrap_or_else(|e| panic!("{e}{}", cluster.dump()));
            assert_eq!(now.leases, settled.leases, "leases moved without a fault{}", cluster.dump());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for lease in LEASES {
            let holders: Vec<String> = {
                let mut v = Vec::new();
                for n in &cluster.nodes {
                    if lease_seen(&n.must_status().await, lease).held_here {
                        v.push(n.name.clone());
                    }
                }
                v
            };
            assert_eq!(holders, vec![settled.holder(lease).to_string()], "{lease}: held_here on exactly the holder");
            assert!(settled.token(lease) > 0);
        }
        // The files agree with the status: only the holder acquired, only its token. (Under
        // load a first grant can arrive with most of its local TTL spent, because the
        // holder counts from its first attempt; it then steps down and gets the same
        // token back at once, so more than one `acquired` line may show.)
        let history = cluster.history();
        for lease in LEASES {
            let events: Vec<&Event> = history.iter().filter(|e| e.lease == lease).collect();
            let acquired = events.iter().filter(|e| e.kind == "acquired").count();
            assert!(acquired >= 1, "{lease}: {events:?}");
            for e in &events {
                assert_eq!(
                    (e.node.as_str(), e.token),
                    (settled.holder(lease), settled.token(lease)),
                    "{lease}: {events:?}{}",
                    cluster.dump_all()
                );
            }
            assert!(events.iter().any(|e| e.kind == "renewed"), "{lease} renewed");
            if acquired > 1 {
                eprintln!("{lease}: the holder got its token {acquired} times: {events:?}");
            }
        }
        eprintln!("3 voters settled in {took:?}: {settled:?}");
    });
}
