//! A crashed node is declared down everywhere and its instance leaves the routes; back
//! with a new incarnation, it is alive everywhere again and routed to.

use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

#[test]
fn killed_node_goes_down_everywhere_and_comes_back_with_a_new_incarnation() {
    run_test(|| async {
        let bs = backends(3).await;
        let urls: Vec<String> = bs.iter().map(Backend::url).collect();
        let mut cluster = Cluster::start(urls.iter().map(|u| NodeSpec::app(u.clone())).collect()).await;
        cluster.wait_upstreams(&[1, 2, 3], "app", &urls, Duration::from_secs(10)).await;
        let old_incarnation = member(&cluster.node(3).must_status().await, "n3")["incarnation"].as_u64().unwrap();
        for i in [1, 2] {
            let seen = member(&cluster.node(i).must_status().await, "n3")["incarnation"].as_u64().unwrap();
            assert_eq!(seen, old_incarnation, "n{i} holds n3's identity");
        }

        let killed = Instant::now();
        cluster.kill(3);
        let expect: Vec<(String, &str)> = vec![("n1".into(), "alive"), ("n2".into(), "alive"), ("n3".into(), "down")];
        let down_after = cluster.wait_view(&[1, 2], &expect, Duration::from_secs(12)).await;
        // Down means no longer routed: n3's instance leaves `app` on both survivors.
        cluster.wait_upstreams(&[1, 2], "app", &urls[..2], Duration::from_secs(3)).await;
        let dropped_after = killed.elapsed();
        for i in [1, 2] {
            let n = cluster.node(i);
            assert_eq!(n.metric("constellation_members", &["state=\"down\""]).await, 1.0, "{}", n.name);
            assert_eq!(n.metric("constellation_members", &["state=\"alive\""]).await, 2.0, "{}", n.name);
            let r = Client::new(n.web).get("app.localhost", "/").await.unwrap();
            assert_eq!(r.status, 200, "{}: {}", n.name, r.text());
        }

        let restarted = Instant::now();
        cluster.restart(3).await;
        let back_after = cluster.wait_all_alive(Duration::from_secs(15)).await;
        cluster.wait_upstreams(&[1, 2, 3], "app", &urls, Duration::from_secs(10)).await;
        let new_incarnation = member(&cluster.node(3).must_status().await, "n3")["incarnation"].as_u64().unwrap();
        assert!(new_incarnation > old_incarnation, "{new_incarnation} > {old_incarnation}");
        for i in [1, 2] {
            let status = cluster.node(i).must_status().await;
            let m = member(&status, "n3");
            assert_eq!(m["incarnation"].as_u64().unwrap(), new_incarnation, "n{i}: {m}");
            assert_eq!(m["instances"], 1, "n{i}: {m}");
            assert_eq!(m["public_ip"], "192.0.2.3", "n{i}: {m}");
            assert_eq!(members(&status).len(), 3, "n{i} lists n3 once: {status:#}");
        }
        // Killed and back before anyone noticed: the new incarnation replaces the old one
        // in place (no `down` in between), and its state is pulled again.
        let quick = Instant::now();
        cluster.restart(3).await;
        let quick_back = cluster.wait_all_alive(Duration::from_secs(15)).await;
        let third_incarnation = member(&cluster.node(3).must_status().await, "n3")["incarnation"].as_u64().unwrap();
        assert!(third_incarnation > new_incarnation, "{third_incarnation} > {new_incarnation}");
        eventually_or(
            "survivors to hold n3's newest incarnation",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                for i in [1, 2] {
                    let status = cluster.node(i).must_status().await;
                    let m = member(&status, "n3");
                    if m["incarnation"].as_u64() != Some(third_incarnation)
                        || m["state"] != "alive"
                        || m["instances"] != 1
                    {
                        return Err(format!("n{i}: {m}"));
                    }
                }
                Ok(())
            },
        )
        .await;
        cluster.wait_upstreams(&[1, 2, 3], "app", &urls, Duration::from_secs(10)).await;
        eprintln!("quick restart: all alive {quick_back:?} after ready ({:?} in all)", quick.elapsed());
        eprintln!(
            "n3 down on both survivors after {down_after:?}, instance dropped after {dropped_after:?}; \
             back alive {back_after:?} after ready ({:?} after restart)",
            restarted.elapsed()
        );
    });
}
