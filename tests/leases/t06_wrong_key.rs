//! A voter whose cluster key differs cannot take part in the Raft group.
//!
//! 1. A fresh node started with another key never learns a leader or a lease, and
//!    rejects (and counts) every frame the leader sends it; the two nodes sharing the key
//!    run the group as a majority.
//! 2. Once it has the right key it joins; restarted with another key again (now with a
//!    log and a vote), it campaigns: n1 and n2 reject its vote requests as `unknown_key`,
//!    it shows no leader, and the majority's term, leader and leases do not move.
//! 3. Garbage on the leader's Raft port is dropped and counted, and changes nothing.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

const REJECTED: &str = "constellation_raft_frames_rejected_total";

#[test]
fn voter_with_another_key_is_rejected_and_never_joins() {
    run_test(|| async {
        let spec = Spec { keys: vec![(3, "intruder.key".to_string())], ..Spec::new(3) };
        let mut cluster = LeaseCluster::start(spec).await;
        let ttl = cluster.timings.ttl();
        assert_ne!(
            std::fs::read_to_string(cluster.dir.path("intruder.key")).unwrap(),
            std::fs::read_to_string(cluster.dir.path("cluster.key")).unwrap()
        );

        // 1. Pristine intruder.
        let (settled, _) = cluster.wait_settled(&[1, 2], Duration::from_secs(20)).await;
        assert_ne!(settled.leader, "n3");
        for lease in LEASES {
            assert_ne!(settled.holder(lease), "n3", "{lease}");
        }
        let n3_before = cluster.node(3).metric(REJECTED, &["unknown_key"]).await;
        watch_intruder("pristine", &cluster, &settled, ttl * 2, |s| {
            for lease in LEASES {
                let l = lease_seen(s, lease);
                assert_eq!((l.holder.as_deref(), l.held_here), (None, false), "n3 {lease}: {s:#}");
            }
        })
        .await;
        let n3_after = cluster.node(3).metric(REJECTED, &["unknown_key"]).await;
        assert!(n3_after > n3_before, "n3 rejects the leader's frames: {n3_before} -> {n3_after}");
        assert!(cluster.node(3).history().is_empty(), "n3 never held anything");

        // 2. With the right key it joins; with another key again, it is shut out.
        cluster.kill(3);
        set_key(&cluster, 3, "cluster.key");
        cluster.spawn(3);
        cluster.node(3).wait_healthy(Duration::from_secs(30)).await;
        let (joined, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        cluster.kill(3);
        set_key(&cluster, 3, "intruder.key");
        let before: Vec<f64> = vec![
            cluster.node(1).metric(REJECTED, &["unknown_key"]).await,
            cluster.node(2).metric(REJECTED, &["unknown_key"]).await,
        ];
        let term = raft_term(&cluster.node(1).must_status().await);
        cluster.spawn(3);
        cluster.node(3).wait_healthy(Duration::from_secs(30)).await;
        // It starts from its own log and vote (leader n1, term `term`), times out and
        // campaigns in vain.
        eventually_or(
            "n3 to campaign and lose its leader",
            ttl * 3,
            || cluster.dump(),
            || async {
                let s = cluster.node(3).status().await.ok_or("no status")?;
                match (raft_leader(&s), raft_term(&s)) {
                    (None, t) if t > term => Ok(()),
                    other => Err(format!("n3: leader, term {other:?}")),
                }
            },
        )
        .await;
        watch_intruder("rejoined", &cluster, &joined, ttl * 2, |s| {
            for lease in LEASES {
                assert!(!lease_seen(s, lease).held_here, "n3 claims {lease}: {s:#}");
            }
        })
        .await;
        let after: Vec<f64> = vec![
            cluster.node(1).metric(REJECTED, &["unknown_key"]).await,
            cluster.node(2).metric(REJECTED, &["unknown_key"]).await,
        ];
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert!(a > b, "n{} rejects n3's vote requests as unknown_key: {b} -> {a}", i + 1);
        }
        let majority = cluster.node(1).must_status().await;
        assert_eq!(raft_term(&majority), term, "n3's campaigns never reach the majority");
        eprintln!(
            "wrong key: pristine n3 rejected {} leader frames; rejoined n3 with another key: n1/n2 rejected {:?} \
             vote frames, term stayed {term}",
            n3_after - n3_before,
            after.iter().zip(&before).map(|(a, b)| a - b).collect::<Vec<_>>()
        );

        // 3. Garbage: a frame that is not sealed, and a length header over the limit.
        let leader = cluster.node(cluster.index_of(&joined.leader));
        let addr = ("127.0.0.1", leader.raft_port());
        let before = other_rejections(leader).await;
        {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let junk = b"definitely not a sealed raft frame";
            s.write_all(&(junk.len() as u32).to_be_bytes()).unwrap();
            s.write_all(junk).unwrap();
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        }
        eventually_or(
            "the leader to count both garbage frames",
            Duration::from_secs(5),
            || cluster.dump(),
            || async {
                let now = other_rejections(leader).await;
                if now >= before + 2.0 {
                    Ok(())
                } else {
                    Err(format!("{before} -> {now}"))
                }
            },
        )
        .await;
        let after = cluster.agreement(&[1, 2]).await.unwrap_or_else(|e| panic!("{e}{}", cluster.dump()));
        assert_eq!(after.leases, joined.leases);
    });
}

/// For `limit`: n3 knows no leader and passes `check`; n1 and n2 keep `expect`'s leases.
async fn watch_intruder(
    what: &str,
    cluster: &LeaseCluster,
    expect: &Settled,
    limit: Duration,
    check: impl Fn(&serde_json::Value),
) {
    let watch = Instant::now();
    while watch.elapsed() < limit {
        let s = cluster.node(3).must_status().await;
        assert_eq!(raft_leader(&s), None, "{what}: n3 must not know a leader: {s:#}");
        check(&s);
        let now = cluster.agreement(&[1, 2]).await.unwrap_or_else(|e| panic!("{e}{}", cluster.dump()));
        assert_eq!(now.leases, expect.leases, "the majority's leases do not move");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Points node `index`'s `key_file` at `key` (takes effect at its next start).
fn set_key(cluster: &LeaseCluster, index: usize, key: &str) {
    let node = cluster.node(index);
    let text = std::fs::read_to_string(&node.config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("key_file = ") { format!("key_file = \"{key}\"") } else { l.to_string() })
        .collect();
    cluster.dir.write(&format!("{}.toml", node.name), &(text.join("\n") + "\n"));
}

/// Rejected Raft frames for any reason but `unknown_key`.
async fn other_rejections(n: &Node) -> f64 {
    n.metric(REJECTED, &[]).await - n.metric(REJECTED, &["unknown_key"]).await
}
