//! A deposed writer: iptables cuts the `dns-writer` holder W off the other nodes' Raft
//! traffic while five of its records have drifted behind its back, so W has five updates
//! to make. W keeps reaching the fake: only its fence stands between it and the zone. Each
//! node reaches the fake through its own tap, so every request is attributed to its
//! sender; with W's `lease-history.jsonl` this checks that no write of W reaches the fake
//! after W recorded `lost`, and that the zone is written afterwards only by the new
//! holder, after it acquired the lease.
//!
//! Two moments for the cut:
//!
//! - while W lists the zone (before its fence check): W's fence says no, W drops its
//!   writes and reports `deposed`;
//! - right after W's first write of the batch (after its fence check): W must stop the
//!   batch — every write is fenced (local holder state, then a linearizable check) and
//!   writes are not retried inside a cycle — so no write of W reaches the fake after W
//!   recorded `lost`. (This test found the bug: the fence used to be re-checked only every
//!   2 s, longer than W's local lease time.)

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;
use crate::*;

/// When W is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Right after a list request of W's (a reconcile that has not reached its fence).
    WhileListing,
    /// Right after W's first write of the batch (its fence check passed).
    AfterFirstWrite,
}

struct Outcome {
    w_name: String,
    lost_ns: i128,
    cut_ns: i128,
    n_name: String,
    acquired_ns: i128,
    log: Vec<Tapped>,
    w_status: Value,
    dump: String,
}

async fn scenario(cut: Cut) -> Outcome {
    let spec = Spec { tapped: true, isolatable: true, ..Spec::new() };
    let cluster = DnsCluster::start(spec).await;
    let t = cluster.timings;
    let (before, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
    let leader = index_of(before.holder(LB));
    let w = index_of(before.holder(DNS));
    let w_name = format!("n{w}");
    let w_token = before.token(DNS);
    let want = DnsCluster::want(leader, &[1, 2, 3]);
    cluster.wait_zone("the initial records", &want, Duration::from_secs(15)).await;
    let drift = || {
        for (k, (name, _)) in want.iter().enumerate() {
            let id = cluster.owned(name)[0]["id"].as_str().unwrap().to_string();
            cluster.fake.set_content(&id, &format!("198.51.100.{}", 10 + k));
        }
    };
    // Wait for the moment to cut: poll the taps every 2 ms.
    let waiting_from = unix_ns();
    if cut == Cut::AfterFirstWrite {
        drift();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let trigger = loop {
        let log = cluster.tapped();
        let hit = log.iter().find(|r| {
            r.node == w_name
                && r.at_ns > waiting_from
                && match cut {
                    Cut::WhileListing => r.method == "GET" && r.query.starts_with("name="),
                    Cut::AfterFirstWrite => r.is_write(),
                }
        });
        if let Some(r) = hit {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no {cut:?} moment from {w_name}{}", cluster.dump());
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let others: Vec<&Node> = (1..=3).filter(|&i| i != w).map(|i| cluster.node(i)).collect();
    let mut partition = Partition::raft(cluster.node(w), &others);
    let cut_ns = unix_ns();
    if cut == Cut::WhileListing {
        // The last list call of W's reconcile (all records with our marker) sees this.
        drift();
    }
    eprintln!(
        "{cut:?}: cut {w_name} {:.0} ms after its {} {}",
        ms(cut_ns - trigger.at_ns),
        trigger.method,
        trigger.path
    );
    let majority: Vec<usize> = (1..=3).filter(|&i| i != w).collect();

    // The majority grants dns-writer to one of its own, which puts the zone right.
    let ((n, n_token), _) = eventually_or(
        "the majority to grant dns-writer to one of its nodes",
        t.ttl() * 2 + t.max_election() * 2 + Duration::from_secs(6),
        || cluster.dump(),
        || async {
            let s = cluster.agreement(&majority).await?;
            if s.holder(DNS) != w_name && s.token(DNS) > w_token {
                Ok((index_of(s.holder(DNS)), s.token(DNS)))
            } else {
                Err(format!("majority: {s:?}"))
            }
        },
    )
    .await;
    let (lost_ns, _) = eventually_or(
        "W's lost event",
        Duration::from_secs(10),
        || cluster.dump(),
        || async {
            cluster
                .node(w)
                .history()
                .into_iter()
                .find(|e| e.lease == DNS && e.kind == "lost" && e.token == w_token)
                .map(|e| e.t_ns)
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await;
    let acquired_ns = cluster
        .node(n)
        .history()
        .into_iter()
        .find(|e| e.lease == DNS && e.kind == "acquired" && e.token == n_token)
        .unwrap_or_else(|| panic!("n{n} has no acquired event for token {n_token}"))
        .t_ns;
    // W's lb-leader lease moves too when W held it; the zone follows whoever holds it.
    let (settled, _) = cluster.wait_settled(&majority, Duration::from_secs(15)).await;
    let want_now = DnsCluster::want(index_of(settled.holder(LB)), &[1, 2, 3]);
    cluster.wait_zone("the new writer to put the zone right", &want_now, Duration::from_secs(20)).await;
    // W's controller loop refreshes its status once the reconcile under way returns (a
    // fence check gives up after 8 s); then give a late write time to show up, and heal.
    let (w_status, _) = eventually_or(
        "W to stand by",
        Duration::from_secs(15),
        || cluster.dump(),
        || async {
            let s = cluster.node(w).must_status().await;
            if s["dns"]["role"] == "standby" {
                Ok(s)
            } else {
                Err(format!("{}", s["dns"]))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(RECONCILE_MS)).await;
    partition.heal();
    let log = cluster.tapped();
    assert_eq!(cluster.fake.log().len(), log.len(), "every request went through a tap");
    Outcome { w_name, lost_ns, cut_ns, n_name: format!("n{n}"), acquired_ns, log, w_status, dump: cluster.dump() }
}

impl Outcome {
    fn rel(&self, ns: i128) -> String {
        format!("{:+.0} ms", ms(ns - self.lost_ns))
    }

    fn writes_of(&self, node: &str, from_ns: i128) -> Vec<&Tapped> {
        self.log.iter().filter(|r| r.node == node && r.is_write() && r.at_ns >= from_ns).collect()
    }

    fn describe(&self, rs: &[&Tapped]) -> Vec<String> {
        rs.iter()
            .map(|r| format!("{} {} -> {} at {} from lost", r.method, r.path, r.status, self.rel(r.at_ns)))
            .collect()
    }

    /// The checks common to both cuts: the new holder alone writes after W, and only after
    /// it acquired; W stands by.
    fn check_new_writer(&self) {
        let others = self.log.iter().filter(|r| r.node != self.w_name && r.is_write() && r.at_ns > self.cut_ns);
        let mut n = 0;
        for r in others {
            n += 1;
            assert_eq!(r.node, self.n_name, "only the new holder writes: {r:?}");
            assert!(r.at_ns > self.acquired_ns, "{} wrote before it acquired the lease: {r:?}", self.n_name);
        }
        assert!(n > 0, "{} put the zone right", self.n_name);
        assert!(self.acquired_ns > self.lost_ns, "{} acquired before {} recorded lost", self.n_name, self.w_name);
        assert_eq!(self.w_status["dns"]["role"], "standby", "{:#}", self.w_status["dns"]);
        // W never wrote once the new holder had the lease.
        let overlap = self.writes_of(&self.w_name, self.acquired_ns);
        assert!(overlap.is_empty(), "{} wrote while {} held the lease: {:#?}", self.w_name, self.n_name, overlap);
    }
}

#[test]
fn a_writer_cut_off_before_its_fence_check_drops_its_writes() {
    run_test(|| async {
        let o = scenario(Cut::WhileListing).await;
        let w_writes = o.writes_of(&o.w_name, o.cut_ns);
        eprintln!(
            "deposed writer (cut while listing): {} lost {:.0} ms after the cut; {} acquired {:.0} ms after that; \
             {}'s writes after the cut: {:?}; its dns status: {}",
            o.w_name,
            ms(o.lost_ns - o.cut_ns),
            o.n_name,
            ms(o.acquired_ns - o.lost_ns),
            o.w_name,
            o.describe(&w_writes),
            o.w_status["dns"]
        );
        assert!(w_writes.is_empty(), "{} wrote after the cut: {:#?}{}", o.w_name, o.describe(&w_writes), o.dump);
        let last = &o.w_status["dns"]["last"];
        assert_eq!(last["result"], "deposed", "{} reports its dropped writes: {last:#}{}", o.w_name, o.dump);
        assert!(last["dropped_writes"].as_u64().unwrap_or(0) >= 1, "{last:#}");
        o.check_new_writer();
    });
}

#[test]
fn a_writer_cut_off_mid_batch_writes_nothing_after_losing_its_lease() {
    run_test(|| async {
        let o = scenario(Cut::AfterFirstWrite).await;
        let batch = o.writes_of(&o.w_name, o.cut_ns - 5_000_000_000);
        let late = o.writes_of(&o.w_name, o.lost_ns + 1);
        eprintln!(
            "deposed writer (cut mid-batch): {} lost {:.0} ms after the cut; {} acquired {:.0} ms after that; \
             {}'s writes: {:?}; its dns status: {}",
            o.w_name,
            ms(o.lost_ns - o.cut_ns),
            o.n_name,
            ms(o.acquired_ns - o.lost_ns),
            o.w_name,
            o.describe(&batch),
            o.w_status["dns"]
        );
        assert!(late.is_empty(), "{} wrote after it recorded lost: {:#?}{}", o.w_name, o.describe(&late), o.dump);
        o.check_new_writer();
    });
}
