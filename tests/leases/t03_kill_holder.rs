//! `SIGKILL` the `lb-leader` holder: a survivor takes the lease with a larger token
//! within TTL + 3 × the maximum election timeout + TTL/3 (see `bound` below for why it is
//! more than TTL + 2 × the maximum election timeout), plus slack for a loaded machine. Restarted on the same data directory, the killed node rejoins as
//! a follower, shows the current leases from its own log, and does not claim the lease.

use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

#[test]
fn killed_holder_is_replaced_with_a_larger_token_and_rejoins_as_follower() {
    run_test(|| async {
        let mut cluster = LeaseCluster::start(Spec::new(3)).await;
        let t = cluster.timings;
        let (before, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let victim = cluster.index_of(before.holder(LB));
        let victim_name = before.holder(LB).to_string();
        let was_leader = before.leader == victim_name;
        let term_before = raft_term(&cluster.node(victim).must_status().await);
        let survivors: Vec<usize> = (1..=3).filter(|&i| i != victim).collect();

        cluster.kill(victim);
        // The design's worst case when the holder also led Raft: an election (followers
        // refuse votes while their leader lease, one maximum election timeout, runs, and
        // a candidate that fired earlier waits one more timeout: up to 2 × max), then the
        // new leader's extension of every lease by TTL + max, then the survivors' next
        // attempt (they retry TTL/3 after a refusal). A follower holder needs at most
        // TTL + TTL/3. Plus slack for a loaded 2-core machine.
        let bound = t.ttl() + t.max_election() * 3 + t.retry();
        let slack = Duration::from_secs(2);
        let ((new_holder, new_token), took) = cluster
            .wait_new_holder(&survivors, LB, (&victim_name, before.token(LB)), bound + slack, || cluster.dump())
            .await;
        if !was_leader {
            let follower_bound = t.ttl() + t.retry() + slack;
            assert!(took <= follower_bound, "a follower's lease moved after {took:?}, over {follower_bound:?}");
        }
        let (after, _) = cluster.wait_settled(&survivors, Duration::from_secs(15)).await;
        assert_ne!(after.holder(LB), victim_name);
        assert!(after.token(LB) >= new_token && new_token > before.token(LB));
        for lease in LEASES {
            assert_ne!(after.holder(lease), victim_name, "{lease} moved off the dead node");
            assert!(after.token(lease) > before.token(lease) || before.holder(lease) != victim_name);
        }
        assert!(
            cluster.node(victim).data.join("raft.redb").exists(),
            "the killed node's Raft store stays on disk for the restart"
        );

        // Restart on the same data directory.
        let restarted = Instant::now();
        let restarted_ns = unix_ns();
        cluster.spawn(victim);
        cluster.node(victim).wait_healthy(Duration::from_secs(30)).await;
        let (rejoined, rejoin_took) = eventually_or(
            "the restarted node to follow the current leader and show the current leases",
            Duration::from_secs(20),
            || cluster.dump(),
            || async {
                let s = cluster.node(victim).status().await.ok_or("no status")?;
                let leader = raft_leader(&s).ok_or("no leader known")?;
                if leader == victim_name {
                    return Err(format!("{victim_name} leads"));
                }
                for lease in LEASES {
                    let l = lease_seen(&s, lease);
                    if l.held_here {
                        return Err(format!("{victim_name} claims {lease}"));
                    }
                    if l.holder.as_deref() != Some(after.holder(lease)) || l.token != Some(after.token(lease)) {
                        return Err(format!("{lease} seen as {l:?}, current {:?}", after.leases[lease]));
                    }
                }
                Ok(raft_term(&s))
            },
        )
        .await;
        assert!(rejoined >= term_before, "term went back: {term_before} -> {rejoined}");
        // It stays a follower that does not claim anything, for two TTLs.
        let watch = Instant::now();
        while watch.elapsed() < t.ttl() * 2 {
            let now = cluster.agreement(&[1, 2, 3]).await.unwrap_or_else(|e| panic!("{e}{}", cluster.dump()));
            assert_eq!(now.leases, after.leases, "leases moved after the restart{}", cluster.dump());
            assert_ne!(now.leader, victim_name, "the restarted node took the lead");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Its history: the old incarnation's acquisition, and nothing acquired since.
        let own: Vec<Event> = cluster.node(victim).history().into_iter().filter(|e| e.lease == LB).collect();
        assert!(own.iter().all(|e| e.token == before.token(LB) && e.t_ns < restarted_ns), "{own:?}");
        eprintln!(
            "kill -9 {victim_name} (raft leader: {was_leader}): {new_holder} took lb-leader with token {new_token} \
             (was {}) after {took:?} (bound {bound:?} + {slack:?} slack); restarted node followed {} with current \
             leases after {rejoin_took:?} ({:?} after spawn)",
            before.token(LB),
            after.leader,
            restarted.elapsed()
        );
    });
}
