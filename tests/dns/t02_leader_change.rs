//! `SIGKILL` the `lb-leader` holder: once a survivor holds the lease, the apex and the
//! wildcard follow it to the new holder's IP within a few seconds (the `dns-writer` lease
//! moves too when the killed node held it). The killed node's own record stays: it is
//! down for less than `node_grace_ms`.

use std::time::Duration;

use crate::support::*;
use crate::*;

/// From the new lease to the records. When the writer died with the front door, the new
/// writer needs about 2.5 s (settle, then a reconcile throttled by the budget its first
/// reconcile spent). When the writer survives, it is busy with budget-bound reconciles
/// (6 list calls every 2 s against 2 requests/s, about 3 s each, one at a time): the one
/// under way, one for "front door unknown" while the lease was vacant, then the one that
/// writes — up to about 10 s (seen 9.8 s in `benches/dns.rs`, config `fast`). Plus slack.
const LEASE_TO_DNS: Duration = Duration::from_secs(13);

#[test]
fn killing_the_front_door_moves_apex_and_wildcard_to_the_new_holder() {
    run_test(|| async {
        let mut cluster = DnsCluster::start(Spec::new()).await;
        let (before, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let victim = index_of(before.holder(LB));
        let writer_before = index_of(before.holder(DNS));
        cluster.wait_zone("the initial records", &DnsCluster::want(victim, &[1, 2, 3]), Duration::from_secs(15)).await;
        let apex_id = cluster.owned(ZONE)[0]["id"].clone();
        let FrontDoorMove { survivors, killed_at, new_leader, new_token, .. } = cluster.kill_front_door(&before).await;
        // The status can show the new holder a moment before its history line is written.
        let (acquired, _) = eventually_or(
            &format!("n{new_leader}'s acquired event for token {new_token}"),
            Duration::from_secs(2),
            || cluster.dump(),
            || async {
                let history = cluster.node(new_leader).history();
                let event = history.iter().find(|e| e.lease == LB && e.kind == "acquired" && e.token == new_token);
                event.map(|e| e.t_ns).ok_or_else(|| format!("history {history:?}"))
            },
        )
        .await;
        let want = DnsCluster::want(new_leader, &[1, 2, 3]);
        cluster.wait_zone("apex and wildcard at the new holder", &want, LEASE_TO_DNS * 2).await;
        let dns_at = unix_ns();
        let lease_to_dns = Duration::from_nanos((dns_at - acquired).max(0) as u64);

        // Updated in place, not replaced; the killed node's record is still there (grace).
        assert_eq!(cluster.owned(ZONE)[0]["id"], apex_id, "the apex record was updated in place");
        assert_eq!(cluster.owned(&node_record(victim))[0]["content"], ip_of(victim));
        // The writer now is a survivor, and says so with its current token.
        let (s, _) = cluster.wait_settled(&survivors, Duration::from_secs(10)).await;
        let writer = index_of(s.holder(DNS));
        let (dns, _) = eventually_or(
            "the writer to report the applied change",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                let st = cluster.node(writer).status().await.ok_or("no status")?;
                let dns = st["dns"].clone();
                if dns["front_door_ip"] == ip_of(new_leader) && dns["last"]["result"] == "applied" {
                    Ok(dns)
                } else {
                    Err(format!("{dns}"))
                }
            },
        )
        .await;
        assert_eq!(dns["last"]["token"].as_u64(), Some(s.token(DNS)), "{dns:#}");
        let updates = cluster.node(writer).metric("constellation_dns_writes_total", &["op=\"update\""]).await;
        assert!(updates >= 2.0, "apex and wildcard updated by n{writer}: {updates}");
        eprintln!(
            "leader change: killed n{victim} (also dns-writer: {}); n{new_leader} acquired lb-leader token {new_token} \
             {:.0} ms after the kill; apex and wildcard at {} {:.0} ms after that ({:.0} ms after the kill); \
             dns-writer now n{writer}",
            writer_before == victim,
            ms(acquired - killed_at),
            ip_of(new_leader),
            lease_to_dns.as_secs_f64() * 1000.0,
            ms(dns_at - killed_at),
        );
        assert!(
            lease_to_dns <= LEASE_TO_DNS,
            "DNS followed the new lb-leader only {lease_to_dns:?} after its lease (bound {LEASE_TO_DNS:?}){}",
            cluster.dump()
        );
    });
}
