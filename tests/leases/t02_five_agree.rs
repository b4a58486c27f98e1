//! Five voters: the same agreement as with three.

use std::time::Duration;

use crate::support::*;
use crate::*;

#[test]
fn five_agents_agree_on_one_holder_per_lease() {
    run_test(|| async {
        let cluster = LeaseCluster::start(Spec::new(5)).await;
        let all = [1, 2, 3, 4, 5];
        let (settled, took) = cluster.wait_settled(&all, Duration::from_secs(30)).await;
        let watch = cluster.timings.ttl() * 2;
        let started = std::time::Instant::now();
        while started.elapsed() < watch {
            let now = cluster.agreement(&all).await.unwrap_or_else(|e| panic!("{e}{}", cluster.dump()));
            assert_eq!(now.leases, settled.leases, "leases moved without a fault{}", cluster.dump());
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        for n in &cluster.nodes {
            let status = n.must_status().await;
            assert_eq!(raft_leader(&status).as_deref(), Some(settled.leader.as_str()), "{}", n.name);
            for lease in LEASES {
                assert_eq!(lease_seen(&status, lease).held_here, n.name == settled.holder(lease), "{} {lease}", n.name);
            }
        }
        // Only the holder ever acquired, only its token (see t01 for why the same token
        // may be acquired more than once).
        let history = cluster.history();
        for lease in LEASES {
            for e in history.iter().filter(|e| e.lease == lease) {
                assert_eq!((e.node.as_str(), e.token), (settled.holder(lease), settled.token(lease)), "{lease}: {e:?}");
            }
        }
        eprintln!("5 voters settled in {took:?}: {settled:?}");
    });
}
