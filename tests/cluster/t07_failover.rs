//! End-to-end failover through the cluster: node 1 routes `app` to instances announced
//! by nodes 2 and 3; node 3 and its backend die at once under steady traffic; clients
//! see no error, node 2's backend takes everything, node 1 drops node 3's instance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

/// One client request: when it started and what came back.
struct Outcome {
    started: Instant,
    result: Result<(u16, String), String>,
}

#[test]
fn node_and_backend_killed_together_cost_clients_nothing() {
    run_test(|| async {
        let mut bs = backends(3).await;
        let (b2, b3) = (bs[1].url(), bs[2].url());
        let mut cluster =
            Cluster::start(vec![NodeSpec::default(), NodeSpec::app(b2.clone()), NodeSpec::app(b3.clone())]).await;
        cluster.wait_upstreams(&[1, 2, 3], "app", &[b2.clone(), b3.clone()], Duration::from_secs(10)).await;
        let web = cluster.node(1).web;

        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
        let mut loops = Vec::new();
        for _ in 0..3 {
            let (stop, log) = (stop.clone(), log.clone());
            loops.push(tokio::spawn(async move {
                let mut c = Client::new(web);
                c.timeout = Duration::from_secs(10);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = match c.get("app.localhost", "/").await {
                        Ok(r) => Ok((r.status, r.text())),
                        Err(e) => Err(e.to_string()),
                    };
                    log.lock().unwrap().push(Outcome { started, result });
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        // Traffic flows to both instances first.
        eventually("traffic on both backends", Duration::from_secs(10), || async {
            if bs[1].count() >= 20 && bs[2].count() >= 20 {
                Ok(())
            } else {
                Err(format!("b2 {} b3 {}", bs[1].count(), bs[2].count()))
            }
        })
        .await;

        cluster.kill(3);
        bs[2].kill();
        let killed = Instant::now();
        let b2_at_kill = bs[1].count();

        let expect: Vec<(String, &str)> = vec![("n1".into(), "alive"), ("n2".into(), "alive"), ("n3".into(), "down")];
        let down_after = cluster.wait_view(&[1], &expect, Duration::from_secs(12)).await;
        cluster.wait_upstreams(&[1], "app", std::slice::from_ref(&b2), Duration::from_secs(3)).await;
        let dropped_after = killed.elapsed();
        // Keep the traffic going a while after the route change.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for l in loops {
            l.await.unwrap();
        }

        let log = std::mem::take(&mut *log.lock().unwrap());
        let errors: Vec<String> = log
            .iter()
            .filter_map(|o| match &o.result {
                Ok((200, _)) => None,
                Ok((s, body)) => {
                    Some(format!("{s} {body:?} at {:?} after the kill", o.started.checked_duration_since(killed)))
                }
                Err(e) => Some(format!("{e} at {:?} after the kill", o.started.checked_duration_since(killed))),
            })
            .collect();
        assert!(
            errors.is_empty(),
            "{} client-visible errors of {}: {errors:?}{}",
            errors.len(),
            log.len(),
            cluster.dump()
        );
        let after: Vec<&Outcome> = log.iter().filter(|o| o.started >= killed + Duration::from_millis(50)).collect();
        assert!(after.len() >= 50, "only {} requests after the kill", after.len());
        let from_b3: Vec<&String> = after
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .map(|(_, body)| body)
            .filter(|b| *b != "b2\n")
            .collect();
        assert!(from_b3.is_empty(), "after the kill, only b2 answers: {from_b3:?}");
        assert!(bs[1].count() - b2_at_kill >= after.len() as u64, "b2 served the rest");
        let status = cluster.node(1).must_status().await;
        assert_eq!(upstream_urls(&status, "app"), [b2.clone()].into_iter().collect());
        eprintln!(
            "{} requests, {} after the kill, 0 errors; n3 down on n1 after {down_after:?}, route dropped after \
             {dropped_after:?}",
            log.len(),
            after.len()
        );
    });
}
