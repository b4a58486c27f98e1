//! A token Cloudflare refuses: the writer reports `dns.last.result = "error"` with an error
//! that names the token problem, logs it, counts
//! `constellation_dns_api_requests_total{result="auth_error"}`, keeps retrying, and never
//! writes. The token itself appears nowhere (log, status, metrics).

use std::time::Duration;

use crate::support::*;
use crate::*;

#[test]
fn a_refused_token_is_reported_in_status_log_and_metrics_and_nothing_is_written() {
    run_test(|| async {
        let cluster = DnsCluster::start(Spec { token: Token::Wrong, ..Spec::new() }).await;
        let (settled, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let w = cluster.node(index_of(settled.holder(DNS)));
        let (dns, took) = eventually_or(
            "the writer to report the refused token",
            Duration::from_secs(15),
            || cluster.dump(),
            || async {
                let s = w.status().await.ok_or("no status")?;
                let dns = s["dns"].clone();
                if dns["role"] == "writer" && dns["last"]["result"] == "error" {
                    Ok(dns)
                } else {
                    Err(format!("{dns}"))
                }
            },
        )
        .await;
        let error = dns["last"]["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("Cloudflare rejected the API token"), "{error}");
        assert!(error.contains("HTTP 403") && error.contains("code 9109"), "status and Cloudflare's code: {error}");
        assert!(error.contains("Zone:DNS:Edit") && error.contains("example.test"), "what the token needs: {error}");
        assert_eq!(dns["dry_run"], false);

        // It keeps trying (every cycle), and counts each refusal as an auth error.
        eventually_or(
            "a second refused cycle",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                let n = w.metric("constellation_dns_api_requests_total", &["result=\"auth_error\""]).await;
                if n >= 2.0 {
                    Ok(())
                } else {
                    Err(format!("auth_error = {n}"))
                }
            },
        )
        .await;
        assert_eq!(w.metric("constellation_dns_api_requests_total", &["result=\"ok\""]).await, 0.0);

        let log = w.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("DNS reconcile failed") && l.contains("rejected the API token"))
            .unwrap_or_else(|| panic!("no log line about the token:\n{}", w.log_tail()));
        assert!(line.contains("ERROR"), "{line}");

        // Nothing written; every request refused; the token secret everywhere.
        let requests = cluster.fake.log();
        assert!(!requests.is_empty());
        assert!(requests.iter().all(|r| r.status == 403 && !is_write(&r.method)), "{requests:#?}");
        assert!(cluster.fake.records().is_empty());
        let metrics = w.metrics().await;
        for n in &cluster.nodes {
            let status = n.must_status().await.to_string();
            for (what, text) in [("log", n.log_text()), ("status", status), ("metrics", metrics.clone())] {
                assert!(!text.contains(WRONG_TOKEN), "{} shows the token in its {what}", n.name);
            }
        }
        eprintln!("invalid token: {} reported the error {took:?} after the leases settled: {error}", w.name);
    });
}
