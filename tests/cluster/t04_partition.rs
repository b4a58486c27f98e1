//! Partitions cut both directions. A node isolated on every plane (gossip, state pulls)
//! is declared down by the others and declares them down, each side routing to its own
//! instances, until the partition heals. With only the state plane cut, gossip still
//! announces newer states, but the pulls fail both ways: the cut-off node does not learn
//! the majority's newer state, nor the majority its newer state.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;
use crate::*;

#[test]
fn partition_heals_and_all_converge_back_to_alive() {
    run_test(|| async {
        let bs = backends(3).await;
        let urls: Vec<String> = bs.iter().map(Backend::url).collect();
        let mut cluster = Cluster::start_with(urls.iter().map(|u| NodeSpec::app(u.clone())).collect(), true).await;
        cluster.wait_upstreams(&[1, 2, 3], "app", &urls, Duration::from_secs(10)).await;
        let cut_at = Instant::now();
        let mut partition = Partition::isolate(cluster.node(3), &[cluster.node(1), cluster.node(2)]);
        let survivors_view: Vec<(String, &str)> =
            vec![("n1".into(), "alive"), ("n2".into(), "alive"), ("n3".into(), "down")];
        let n3_view: Vec<(String, &str)> = vec![("n1".into(), "down"), ("n2".into(), "down"), ("n3".into(), "alive")];
        let survivors = cluster.wait_view(&[1, 2], &survivors_view, Duration::from_secs(15)).await;
        let isolated = cluster.wait_view(&[3], &n3_view, Duration::from_secs(15)).await;
        // Each side routes only to its own side's instances.
        cluster.wait_upstreams(&[1, 2], "app", &urls[..2], Duration::from_secs(3)).await;
        cluster.wait_upstreams(&[3], "app", &urls[2..], Duration::from_secs(3)).await;
        let split = cut_at.elapsed();
        for n in &mut cluster.nodes {
            n.assert_alive();
        }

        let healed_at = Instant::now();
        partition.heal();
        let back = cluster.wait_all_alive(Duration::from_secs(20)).await;
        // States flow again: every node routes to all three instances.
        cluster.wait_upstreams(&[1, 2, 3], "app", &urls, Duration::from_secs(10)).await;
        // Same identities on all sides afterwards (n3 may have renewed its incarnation).
        let own = cluster.node(3).must_status().await;
        let n3_incarnation = member(&own, "n3")["incarnation"].as_u64().unwrap();
        eventually_or(
            "everyone to agree on n3's incarnation",
            Duration::from_secs(5),
            || cluster.dump(),
            || async {
                for i in [1, 2] {
                    let seen = member(&cluster.node(i).must_status().await, "n3")["incarnation"].as_u64().unwrap();
                    if seen != n3_incarnation {
                        return Err(format!("n{i} holds n3#{seen}, n3 is #{n3_incarnation}"));
                    }
                }
                Ok(())
            },
        )
        .await;
        drop(partition);
        eprintln!(
            "partition: survivors saw n3 down after {survivors:?}, n3 saw both down after {isolated:?} \
             (split complete {split:?}); healed to 3 alive in {back:?} ({:?} incl. checks)",
            healed_at.elapsed()
        );
    });
}

/// The state version `observer`'s status holds for member `name`.
fn version(status: &Value, name: &str) -> u64 {
    member(status, name)["state_version"].as_u64().unwrap_or(0)
}

#[test]
fn cut_state_pulls_fail_in_both_directions() {
    run_test(|| async {
        let bs = backends(3).await;
        let urls: Vec<String> = bs.iter().map(Backend::url).collect();
        // Instances with a health path: killing a backend makes its node publish a newer
        // state (the instance turns unhealthy).
        let specs = urls.iter().map(|u| NodeSpec { health_path: Some("/".into()), ..NodeSpec::app(u.clone()) });
        let mut bs = bs;
        let cluster = Cluster::start_with(specs.collect(), true).await;
        cluster.wait_upstreams(&[1, 2, 3], "app", &urls, Duration::from_secs(10)).await;
        let before1 = cluster.node(1).must_status().await;
        let before3 = cluster.node(3).must_status().await;
        let (n1_v, n3_v) = (version(&before1, "n1"), version(&before3, "n3"));
        assert_eq!(version(&before3, "n1"), n1_v, "n3 holds n1's current state before the cut");
        assert_eq!(version(&before1, "n3"), n3_v, "n1 holds n3's current state before the cut");

        let partition = Partition::cut(cluster.node(3), &[cluster.node(1), cluster.node(2)], &[Plane::State]);
        let n3_ok = cluster.node(3).metric("constellation_state_pulls_total", &["result=\"ok\""]).await;
        let n3_err = cluster.node(3).metric("constellation_state_pulls_total", &["result=\"error\""]).await;
        let n1_err = cluster.node(1).metric("constellation_state_pulls_total", &["result=\"error\""]).await;
        // Newer states on both sides of the cut.
        bs[0].kill();
        bs[2].kill();
        eventually_or(
            "n1 and n3 to publish newer states (their instances are down)",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                let v1 = version(&cluster.node(1).must_status().await, "n1");
                let v3 = version(&cluster.node(3).must_status().await, "n3");
                if v1 > n1_v && v3 > n3_v {
                    Ok(())
                } else {
                    Err(format!("n1 at v{v1} (was {n1_v}), n3 at v{v3} (was {n3_v})"))
                }
            },
        )
        .await;
        // n2 learns n1's newer state (nothing cut between them): gossip and pulls work.
        let n1_new = version(&cluster.node(1).must_status().await, "n1");
        eventually_or(
            "n2 to pull n1's newer state",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                let seen = version(&cluster.node(2).must_status().await, "n1");
                if seen >= n1_new {
                    Ok(())
                } else {
                    Err(format!("n2 holds n1 v{seen}"))
                }
            },
        )
        .await;
        // Gossip still flows, so n3 hears of n1's newer version and n1 of n3's, and both
        // try to pull: those pulls fail.
        eventually_or(
            "state pulls across the cut to fail on both sides",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                let e3 = cluster.node(3).metric("constellation_state_pulls_total", &["result=\"error\""]).await;
                let e1 = cluster.node(1).metric("constellation_state_pulls_total", &["result=\"error\""]).await;
                if e3 > n3_err && e1 > n1_err {
                    Ok(())
                } else {
                    Err(format!("errors n3 {n3_err} -> {e3}, n1 {n1_err} -> {e1}"))
                }
            },
        )
        .await;
        // For three push-pull intervals, neither side learns the other's newer state.
        let hold = Instant::now();
        while hold.elapsed() < Duration::from_secs(3) {
            let s3 = cluster.node(3).must_status().await;
            let s1 = cluster.node(1).must_status().await;
            let s2 = cluster.node(2).must_status().await;
            assert_eq!(version(&s3, "n1"), n1_v, "n3 learnt n1's newer state through the cut\n{}", cluster.dump());
            assert_eq!(version(&s1, "n3"), n3_v, "n1 learnt n3's newer state through the cut\n{}", cluster.dump());
            assert_eq!(version(&s2, "n3"), n3_v, "n2 learnt n3's newer state through the cut\n{}", cluster.dump());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let ok_now = cluster.node(3).metric("constellation_state_pulls_total", &["result=\"ok\""]).await;
        assert_eq!(ok_now, n3_ok, "n3 completed state pulls through the cut");

        drop(partition);
        let n3_new = version(&cluster.node(3).must_status().await, "n3");
        eventually_or(
            "both sides to learn the newer states",
            Duration::from_secs(15),
            || cluster.dump(),
            || async {
                let s3 = cluster.node(3).must_status().await;
                let s1 = cluster.node(1).must_status().await;
                let (a, b) = (version(&s3, "n1"), version(&s1, "n3"));
                if a >= n1_new && b >= n3_new {
                    Ok(())
                } else {
                    Err(format!("n3 holds n1 v{a} (want {n1_new}), n1 holds n3 v{b} (want {n3_new})"))
                }
            },
        )
        .await;
    });
}
