//! A breaker opening on one node becomes an outlier hint on the others: the upstream is
//! deprioritised there, not ejected.

use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

const BREAKER: &str = "[proxy.breaker]\nconsecutive_failures = 3\nfailure_rate_threshold = 0.0\n";

#[test]
fn breaker_opening_on_one_node_deprioritises_the_upstream_on_the_other() {
    run_test(|| async {
        let bs = backends(2).await;
        let (a, b) = (bs[0].url(), bs[1].url());
        let spec = |url: &String| NodeSpec { extra_toml: BREAKER.into(), ..NodeSpec::app(url.clone()) };
        let cluster = Cluster::start(vec![spec(&a), spec(&b)]).await;
        cluster.wait_upstreams(&[1, 2], "app", &[a.clone(), b.clone()], Duration::from_secs(10)).await;
        for i in [1, 2] {
            let s = cluster.node(i).must_status().await;
            assert_eq!(s["hints"], serde_json::json!([]), "n{i}: no hints yet");
        }

        bs[1].set(Behaviour::Status(503));
        let mut c = Client::new(cluster.node(2).web);
        let mut sent = 0;
        let opened = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = c.get("app.localhost", "/").await.unwrap();
            sent += 1;
            // 503 from b is retried on a: the client never sees it.
            assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "request {sent} through n2");
            let s = cluster.node(2).must_status().await;
            let state = upstream_status(&s, "app", &b)["breaker"]["state"].clone();
            if state == "open" {
                break;
            }
            assert!(Instant::now() < deadline, "n2's breaker for b still {state} after {sent} requests");
        }
        assert!(sent >= 3, "{sent}");
        let b_hits = bs[1].count();

        let (_, hinted_after) = eventually_or(
            "a hint from n2 about b on n1, b deprioritised there",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                let s = cluster.node(1).must_status().await;
                let hints = s["hints"].as_array().cloned().unwrap_or_default();
                let ours: Vec<_> = hints
                    .iter()
                    .filter(|h| h["from"] == "n2" && h["service"] == "app" && h["upstream"] == b.as_str())
                    .collect();
                if ours.len() != 1 {
                    return Err(format!("hints {hints:?}"));
                }
                let up = upstream_status(&s, "app", &b);
                if up["deprioritised"] != true {
                    return Err(format!("b on n1: {up}"));
                }
                Ok(())
            },
        )
        .await;
        let s = cluster.node(1).must_status().await;
        let hint = s["hints"].as_array().unwrap().iter().find(|h| h["from"] == "n2").unwrap().clone();
        let expires = hint["expires_in_ms"].as_u64().unwrap();
        assert!(expires > 20_000 && expires <= 30_000, "{hint}");
        // Deprioritised, not ejected: n1's own breaker for b is closed, and a is untouched.
        let up_b = upstream_status(&s, "app", &b);
        assert_eq!(up_b["breaker"]["state"], "closed", "{up_b}");
        assert_eq!(up_b["available"], true, "{up_b}");
        let up_a = upstream_status(&s, "app", &a);
        assert_eq!(up_a["deprioritised"], false, "{up_a}");
        assert_eq!(up_a["breaker"]["state"], "closed", "{up_a}");
        assert_eq!(s["hints"].as_array().unwrap().len(), 1, "{:#}", s["hints"]);
        // n2 lists its own hint too (on its next hint tick), but does not deprioritise on
        // its own word.
        eventually("n2 to list its own hint", Duration::from_secs(3), || async {
            let s2 = cluster.node(2).must_status().await;
            let own = s2["hints"].as_array().unwrap().iter().any(|h| h["from"] == "n2" && h["upstream"] == b.as_str());
            if own {
                Ok(())
            } else {
                Err(format!("{:#}", s2["hints"]))
            }
        })
        .await;
        let s2 = cluster.node(2).must_status().await;
        assert_eq!(upstream_status(&s2, "app", &b)["deprioritised"], false);

        // With b healthy again, n1 sends everything to a while the hint lasts.
        bs[1].set(Behaviour::Ok);
        let mut c1 = Client::new(cluster.node(1).web);
        for i in 0..10 {
            let r = c1.get("app.localhost", "/").await.unwrap();
            assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "request {i} through n1");
        }
        assert_eq!(bs[1].count(), b_hits, "n1 did not use the deprioritised b");
        eprintln!(
            "breaker opened after {sent} requests ({:?}); hint applied on n1 after {hinted_after:?}",
            opened.elapsed()
        );
    });
}
