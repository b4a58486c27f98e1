//! iptables cuts the `lb-leader` holder off the other two nodes' Raft traffic: the
//! isolated holder records `lost` before the majority side's new holder records
//! `acquired`, and the new token is larger. Healed, the group agrees again.

use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

#[test]
fn isolated_holder_steps_down_before_the_majority_grants_the_lease_again() {
    run_test(|| async {
        let spec = Spec { isolatable: true, ..Spec::new(3) };
        let cluster = LeaseCluster::start(spec).await;
        let t = cluster.timings;
        let (before, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let h = cluster.index_of(before.holder(LB));
        let h_name = before.holder(LB).to_string();
        let majority: Vec<usize> = (1..=3).filter(|&i| i != h).collect();
        let was_leader = before.leader == h_name;

        let others: Vec<&Node> = majority.iter().map(|&i| cluster.node(i)).collect();
        let cut_at = unix_ns();
        let cut = Instant::now();
        let mut partition = Partition::raft(cluster.node(h), &others);
        // The majority grants the lease to one of its own.
        let limit = t.ttl() + t.max_election() * 3 + t.retry() + Duration::from_secs(4);
        let ((new_holder, new_token), moved_after) = eventually_or(
            "the majority side to grant lb-leader to one of its nodes",
            limit,
            || cluster.dump(),
            || async {
                let s = cluster.agreement(&majority).await?;
                if s.holder(LB) != h_name && s.token(LB) > before.token(LB) {
                    Ok((s.holder(LB).to_string(), s.token(LB)))
                } else {
                    Err(format!("majority: {s:?}"))
                }
            },
        )
        .await;
        // The isolated node no longer claims it.
        let s = cluster.node(h).must_status().await;
        assert!(!lease_seen(&s, LB).held_here, "{h_name} still claims lb-leader while cut off: {s:#}");
        // Both events are in the files (written within 50 ms).
        let (lost, acquired) = eventually_or(
            "the lost and acquired events in the history files",
            Duration::from_secs(3),
            String::new,
            || async {
                let lost = cluster
                    .node(h)
                    .history()
                    .into_iter()
                    .find(|e| e.lease == LB && e.kind == "lost" && e.token == before.token(LB));
                let acquired = cluster
                    .node(cluster.index_of(&new_holder))
                    .history()
                    .into_iter()
                    .find(|e| e.lease == LB && e.kind == "acquired" && e.token == new_token);
                match (lost, acquired) {
                    (Some(l), Some(a)) => Ok((l, a)),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
        .0;
        partition.heal();
        let healed_at = unix_ns();
        assert!(lost.t_ns > cut_at, "lost after the cut");
        assert!(
            lost.t_ns < acquired.t_ns,
            "{h_name} recorded lost at {} but {new_holder} acquired at {} ({:.1} ms earlier)",
            lost.t_ns,
            acquired.t_ns,
            ms(lost.t_ns - acquired.t_ns)
        );
        assert!(new_token > before.token(LB));
        // The same holds for dns-writer if the isolated node held it too, and the whole
        // history passes the audit.
        let (healed, heal_took) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let faults = vec![Fault::Partition { node: h_name.clone(), from: cut_at, to: healed_at }];
        let audit = check_history(&cluster.history(), &faults, unix_ns(), Duration::from_millis(300), None);
        assert!(audit.violations.is_empty(), "{:#?}{}", audit.violations, cluster.dump());
        let gap = acquired.t_ns - lost.t_ns;
        eprintln!(
            "partition of {h_name} (raft leader: {was_leader}): lost {:.1} ms after the cut, {new_holder} acquired \
             token {new_token} (was {}) {:.1} ms after that (TTL/5 margin = {:?}); majority moved after \
             {moved_after:?}; healed and agreed in {heal_took:?} on {healed:?}; cut {:?} in all",
            ms(lost.t_ns - cut_at),
            before.token(LB),
            ms(gap),
            t.ttl() / 5,
            cut.elapsed()
        );
    });
}
