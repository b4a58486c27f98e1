//! A burst of 429s (`Retry-After: 1`) during a leader change: the change is delayed but
//! lands; each 429 pauses the node's calls for at least the `Retry-After`; and the
//! requests each node sent (seen through its own tap) stay within its token bucket
//! (`rate_per_5min` 600, `rate_burst` 10), 429s included.

use std::time::Duration;

use crate::support::*;
use crate::*;

const PER_5MIN: u32 = 600;
const BURST: u32 = 10;
const BURST_OF_429: usize = 4;

#[test]
fn a_burst_of_429s_delays_the_change_and_the_budget_holds() {
    run_test(|| async {
        let spec = Spec {
            tapped: true,
            dns_extra: format!("rate_per_5min = {PER_5MIN}\nrate_burst = {BURST}\n"),
            ..Spec::new()
        };
        let mut cluster = DnsCluster::start(spec).await;
        let (before, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let victim = index_of(before.holder(LB));
        cluster.wait_zone("the initial records", &DnsCluster::want(victim, &[1, 2, 3]), Duration::from_secs(15)).await;
        let FrontDoorMove { survivors, killed_at, new_leader, .. } = cluster.kill_front_door(&before).await;
        // The next requests, whoever sends them, get 429.
        let injected_at = unix_ns();
        cluster.fake.inject(Fault::RateLimited { retry_after_secs: 1 }, BURST_OF_429);
        let want = DnsCluster::want(new_leader, &[1, 2, 3]);
        cluster.wait_zone("apex and wildcard at the new holder despite the 429s", &want, Duration::from_secs(30)).await;
        let dns_at = unix_ns();

        let log = cluster.tapped();
        let limited: Vec<&Tapped> = log.iter().filter(|r| r.status == 429).collect();
        assert_eq!(limited.len(), BURST_OF_429, "every injected 429 was answered: {limited:#?}");
        assert!(limited.iter().all(|r| r.at_ns >= injected_at && r.node != format!("n{victim}")));
        // The change landed after the 429s, through a write answered 200.
        let last_429 = limited.last().unwrap().at_ns;
        let landing = log
            .iter()
            .filter(|r| r.is_write() && r.status == 200 && r.at_ns > injected_at)
            .map(|r| r.at_ns)
            .max()
            .expect("writes after the 429s");
        assert!(landing > last_429, "the change landed after the last 429");
        // Retry-After: a node's next request comes at least 1 s after a 429 (less 100 ms: the
        // taps stamp a request when this process gets to read it, which a loaded machine
        // may delay).
        for r in &limited {
            if let Some(next) = log.iter().find(|n| n.node == r.node && n.at > r.at) {
                let gap = next.at.duration_since(r.at);
                assert!(
                    gap >= Duration::from_millis(900),
                    "{} asked again {gap:?} after a 429 (Retry-After: 1)",
                    r.node
                );
            }
        }
        // Each node's requests fit its bucket, across the whole test (with 250 ms of slack
        // for the taps' stamps; a client without a budget sends its 6 list calls back to
        // back, dozens a second).
        let mut nodes_seen = Vec::new();
        for i in 1..=3 {
            let name = format!("n{i}");
            let times: Vec<_> = log.iter().filter(|r| r.node == name).map(|r| r.at).collect();
            nodes_seen.push(format!("{name}: {}", times.len()));
            if let Some(v) = bucket_violation(&times, PER_5MIN, BURST, Duration::from_millis(250)) {
                panic!("{name} exceeded its budget: {v}");
            }
        }
        // The fake saw exactly what the taps passed on.
        assert_eq!(cluster.fake.log().len(), log.len());
        // The writers counted the 429s and waited.
        let mut rate_limited = 0.0;
        let mut waits = 0.0;
        for &i in &survivors {
            let n = cluster.node(i);
            rate_limited += n.metric("constellation_dns_api_requests_total", &["result=\"rate_limited\""]).await;
            waits += n.metric("constellation_dns_rate_limit_waits_total", &[]).await;
        }
        assert_eq!(rate_limited, BURST_OF_429 as f64);
        assert!(waits >= BURST_OF_429 as f64, "{waits}");
        eprintln!(
            "429 burst: killed n{victim}; {BURST_OF_429} × 429 injected {:.0} ms after the kill, when n{new_leader} \
             held lb-leader; apex and wildcard at {} {:.0} ms after the injection (last 429 at +{:.0} ms); \
             requests per node: {}",
            ms(injected_at - killed_at),
            ip_of(new_leader),
            ms(dns_at - injected_at),
            ms(last_429 - injected_at),
            nodes_seen.join(", ")
        );
    });
}
