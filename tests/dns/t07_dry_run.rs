//! No token (no `api_token_file`, no `CONSTELLATION_DNS__API_TOKEN`): the writer runs dry.
//! `dns.last.result = "dry_run"` with a plan that lists the five creates (apex and wildcard
//! at the `lb-leader` holder, one record per node), the log says so, and the fake receives
//! no request at all — in particular no write.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;
use crate::*;

#[test]
fn without_a_token_the_writer_plans_and_sends_nothing() {
    run_test(|| async {
        let cluster = DnsCluster::start(Spec { token: Token::Absent, ..Spec::new() }).await;
        let (settled, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let leader = index_of(settled.holder(LB));
        let w = cluster.node(index_of(settled.holder(DNS)));
        let want: BTreeSet<String> =
            DnsCluster::want(leader, &[1, 2, 3]).into_iter().map(|(name, ip)| format!("{name} A {ip}")).collect();
        let (dns, took) = eventually_or(
            "the writer to report a dry-run plan with every record",
            Duration::from_secs(15),
            || cluster.dump(),
            || async {
                let s = w.status().await.ok_or("no status")?;
                let dns = s["dns"].clone();
                let creates: BTreeSet<String> = dns["last"]["plan"]["create"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                if dns["role"] == "writer" && dns["last"]["result"] == "dry_run" && creates == want {
                    Ok(dns)
                } else {
                    Err(format!("{dns}"))
                }
            },
        )
        .await;
        assert_eq!(dns["dry_run"], true, "{dns:#}");
        let plan = &dns["last"]["plan"];
        for key in ["update", "delete", "skipped_unowned"] {
            assert_eq!(plan[key].as_array().map(Vec::len), Some(0), "{key}: {plan:#}");
        }
        for n in &cluster.nodes {
            let s = n.must_status().await;
            assert_eq!(s["dns"]["dry_run"], true, "{}: {:#}", n.name, s["dns"]);
        }
        let log = w.log_text();
        assert!(log.contains("DNS dry run (no API token): nothing written"), "{}", w.log_tail());
        assert!(log.contains("would write record"), "{}", w.log_tail());
        // A few more cycles, then: not one request reached the fake.
        tokio::time::sleep(Duration::from_millis(RECONCILE_MS * 2)).await;
        let requests = cluster.fake.log();
        assert!(requests.is_empty(), "a dry run sent requests: {requests:#?}");
        assert!(cluster.fake.records().is_empty());
        assert_eq!(w.metric("constellation_dns_api_requests_total", &[]).await, 0.0);
        eprintln!("dry run: {} reported the full plan {took:?} after the leases settled: {}", w.name, plan["create"]);
    });
}
