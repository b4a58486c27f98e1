//! SIGTERM is a planned restart: the node releases its leases through the log, waiting
//! contenders take them at once (a TTL of 10 s here, so a fail-over by expiry could not
//! pass), Raft leadership moves while the node still runs, the proxy keeps serving for
//! its grace period, and the process exits 0. All under GET load through every node's
//! proxy (testkit clients, which never resend): no request fails. Then the same for the
//! Raft leader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

/// `[proxy] grace_period_secs` of the nodes.
const GRACE: Duration = Duration::from_secs(3);
/// A new holder (and Raft leader) must be in place this soon after SIGTERM.
const HAND_OVER: Duration = Duration::from_secs(3);

/// GETs of `app.localhost` through one node's proxy, one after another, until stopped.
struct Load {
    node: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(node: &Node) -> Load {
        let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, o, name, addr) = (stop.clone(), ok.clone(), node.name.clone(), node.web);
        let task = tokio::spawn(async move {
            let mut client = Client::new(addr);
            client.timeout = Duration::from_secs(10);
            let mut errors = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match client.get("app.localhost", "/").await {
                    Ok(r) if r.status == 200 => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => errors.push(format!("{name}: {} {}", r.status, r.text().trim())),
                    Err(e) => errors.push(format!("{name}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            errors
        });
        Load { node: node.name.clone(), stop, ok, task }
    }

    /// Stops the load; returns (requests answered 200, errors).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.unwrap();
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

/// What one SIGTERM did.
struct Outcome {
    /// Lease → (new holder, token, time from SIGTERM) for each lease the node held.
    moved: Vec<(String, String, u64, Duration)>,
    /// Time from SIGTERM to a survivor naming another Raft leader, if the node led.
    leader_moved: Option<(String, Duration)>,
    /// Time from SIGTERM to the exit.
    exited_after: Duration,
    /// Requests answered by the terminating node after SIGTERM.
    served_after_sigterm: u64,
}

async fn terminate_under_load(cluster: &mut LeaseCluster, victim: usize, before: &Settled) -> Outcome {
    let name = cluster.node(victim).name.clone();
    let survivors: Vec<usize> = cluster.running().into_iter().filter(|&i| i != victim).collect();
    let loads: Vec<Load> = cluster.running().iter().map(|&i| Load::start(cluster.node(i))).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim_load = loads.iter().position(|l| l.node == name).unwrap();
    let served_before = loads[victim_load].ok.load(Ordering::Relaxed);
    assert!(served_before > 0, "load runs through {name}");

    tracing::info!(%name, leases = ?before.leases, leader = %before.leader, "SIGTERM");
    let sigterm = Instant::now();
    cluster.node_mut(victim).terminate();
    let mut moved = Vec::new();
    for lease in LEASES.into_iter().filter(|l| before.holder(l) == name) {
        let ((holder, token), _) = cluster
            .wait_new_holder(&survivors, lease, (&name, before.token(lease)), HAND_OVER, || cluster.dump())
            .await;
        moved.push((lease.to_string(), holder, token, sigterm.elapsed()));
    }
    let leader_moved = if before.leader == name {
        let (leader, _) = eventually_or(
            "the survivors to agree on another raft leader",
            HAND_OVER,
            || cluster.dump(),
            || async {
                let mut seen = Vec::new();
                for &i in &survivors {
                    let s = cluster.node(i).status().await.ok_or("no status")?;
                    seen.push(raft_leader(&s));
                }
                match seen.first() {
                    Some(Some(l)) if *l != name && seen.iter().all(|s| s.as_ref() == Some(l)) => Ok(l.clone()),
                    _ => Err(format!("survivors see leaders {seen:?}")),
                }
            },
        )
        .await;
        Some((leader, sigterm.elapsed()))
    } else {
        None
    };
    // Draining: the node says it is going, and still answers.
    assert_eq!(cluster.node(victim).admin_status("/readyz").await, Some(503), "{name} /readyz while draining");

    // Requests to the terminating node are fine until its grace period ends (it starts
    // after the hand-over, so SIGTERM + GRACE is inside it).
    let stop_at = sigterm + GRACE - Duration::from_millis(300);
    tokio::time::sleep_until(stop_at.into()).await;
    let mut loads = loads;
    let (served, errors) = loads.remove(victim_load).finish().await;
    assert!(errors.is_empty(), "requests to {name} during its grace period failed: {errors:#?}");
    let served_after_sigterm = served - served_before;
    let code = cluster.node_mut(victim).wait_exit(Duration::from_secs(20)).await;
    let exited_after = sigterm.elapsed();
    assert_eq!(code, Some(0), "{name} exits 0 after SIGTERM; log:\n{}", cluster.node(victim).log_tail());
    assert!(exited_after >= GRACE, "{name} served its whole grace period ({exited_after:?})");
    // The others keep serving after it left the cluster (its instance leaves their routes).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for load in loads {
        let node = load.node.clone();
        let (ok, errors) = load.finish().await;
        assert!(errors.is_empty(), "requests to {node} failed: {errors:#?}");
        assert!(ok > 0);
    }
    Outcome { moved, leader_moved, exited_after, served_after_sigterm }
}

#[test]
fn sigterm_hands_leases_and_leadership_over_at_once_and_exits_0_under_load() {
    run_test(|| async {
        let mut backends = Vec::new();
        for i in 1..=3 {
            backends.push(Backend::start(&format!("b{i}"), "127.0.0.1:0".parse().unwrap()).await.unwrap());
        }
        let timings = Timings { ttl_ms: 10_000, election_ms: 400, heartbeat_ms: 100 };
        let spec = Spec {
            timings,
            apps: backends.iter().map(Backend::url).collect(),
            extra_toml: format!(
                "[proxy]\ngrace_period_secs = {}\ngraceful_shutdown_timeout_secs = 5\n",
                GRACE.as_secs()
            ),
            ..Spec::new(3)
        };
        let mut cluster = LeaseCluster::start(spec).await;
        let (before, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        for i in 1..=3 {
            let web = cluster.node(i).web;
            eventually_or(
                "every proxy to serve app.localhost",
                Duration::from_secs(15),
                || cluster.dump(),
                || async {
                    match fetch(web, "GET", "app.localhost", "/", &[], &[]).await {
                        Ok(r) if r.status == 200 => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .await;
        }

        tracing::info!("phase 1: SIGTERM to the lb-leader holder");
        let victim = cluster.index_of(before.holder(LB));
        let victim_name = before.holder(LB).to_string();
        let first = terminate_under_load(&mut cluster, victim, &before).await;
        let (_, holder, token, took) = first.moved.iter().find(|m| m.0 == LB).unwrap().clone();
        assert!(token > before.token(LB) && holder != victim_name);
        assert!(took <= HAND_OVER, "lb-leader moved after {took:?}");
        // The holder's history shows the lease given up, not timed out, and no overlap.
        let own: Vec<Event> = cluster.node(victim).history().into_iter().filter(|e| e.lease == LB).collect();
        assert_eq!(own.last().map(|e| (e.kind.as_str(), e.token)), Some(("lost", before.token(LB))), "{own:?}");
        let audit = check_history(&cluster.history(), &[], unix_ns(), Duration::from_millis(50), None);
        assert!(audit.violations.is_empty(), "{:#?}{}", audit.violations, cluster.dump());
        eprintln!(
            "SIGTERM {victim_name} (lb-leader holder, raft leader: {}): {} after {:?}; raft leader moved: {:?}; \
             it served {} requests after SIGTERM and exited 0 after {:?}",
            before.leader == victim_name,
            first
                .moved
                .iter()
                .map(|(l, h, t, d)| format!("{l} -> {h} (token {t}) after {d:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            took,
            first.leader_moved,
            first.served_after_sigterm,
            first.exited_after
        );

        tracing::info!("phase 2: restart it, then SIGTERM the raft leader");
        cluster.spawn(victim);
        cluster.node(victim).wait_healthy(Duration::from_secs(30)).await;
        let (before, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let leader = cluster.index_of(&before.leader);
        let second = terminate_under_load(&mut cluster, leader, &before).await;
        let (new_leader, took) = second.leader_moved.clone().unwrap();
        assert!(took <= HAND_OVER, "raft leadership moved after {took:?}");
        for (lease, _, _, took) in &second.moved {
            assert!(*took <= HAND_OVER, "{lease} moved after {took:?}");
        }
        let audit = check_history(&cluster.history(), &[], unix_ns(), Duration::from_millis(50), None);
        assert!(audit.violations.is_empty(), "{:#?}{}", audit.violations, cluster.dump());
        eprintln!(
            "SIGTERM {} (raft leader): {new_leader} leads after {took:?}; leases moved: {}; served {} requests \
             after SIGTERM, exited 0 after {:?}",
            before.leader,
            second
                .moved
                .iter()
                .map(|(l, h, t, d)| format!("{l} -> {h} (token {t}) after {d:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            second.served_after_sigterm,
            second.exited_after
        );
    });
}
