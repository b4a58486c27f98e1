//! A fresh cluster writes the zone: the apex and `*.example.test` point at the `lb-leader`
//! holder's public IP, each node has its `nK.nodes.example.test` record, every record
//! carries the ownership comment, and the zone id was looked up by name
//! (`GET zones?name=example.test`), once, and never confused with the decoy zone.

use std::time::{Duration, Instant};

use crate::support::*;
use crate::*;

#[test]
fn fresh_cluster_points_apex_and_wildcard_at_the_front_door_and_names_every_node() {
    run_test(|| async {
        let started = Instant::now();
        let cluster = DnsCluster::start(Spec::new()).await;
        let (settled, settle_took) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let leader = index_of(settled.holder(LB));
        let writer = index_of(settled.holder(DNS));
        let want = DnsCluster::want(leader, &[1, 2, 3]);
        let took = cluster.wait_zone("the initial records", &want, Duration::from_secs(15)).await;

        // Ownership, TTL and zone are checked by zone_is; nothing else was written.
        let records = cluster.fake.records();
        assert_eq!(records.len(), 5, "{records:#?}");
        assert!(records.iter().all(|r| r["comment"] == MARKER && r["type"] == "A"), "{records:#?}");

        // The zone id came from a lookup by name, made once, before any record call.
        let log = cluster.fake.log();
        let lookups: Vec<_> = log.iter().filter(|r| r.path == "/client/v4/zones").collect();
        assert_eq!(lookups.len(), 1, "one zone lookup: {log:#?}");
        assert_eq!(lookups[0].method, "GET");
        assert!(
            lookups[0].query.split('&').any(|p| p == "name=example.test"),
            "the lookup names the zone: {:?}",
            lookups[0].query
        );
        assert_eq!(log[0].path, "/client/v4/zones", "the lookup comes first: {log:#?}");
        let records_path = format!("/client/v4/zones/{}/dns_records", cluster.zone_id);
        for r in &log[1..] {
            assert!(r.path.starts_with(&records_path), "a call outside zone {}: {r:?}", cluster.zone_id);
            assert!(!r.path.contains(&cluster.decoy_zone_id), "{r:?}");
            assert_eq!(r.status, 200, "{r:?}");
        }
        let writes: Vec<_> = log.iter().filter(|r| is_write(&r.method)).collect();
        assert!(writes.iter().all(|r| r.method == "POST"), "a fresh zone needs creates only: {writes:#?}");
        assert_eq!(writes.len(), 5, "one create per record: {writes:#?}");

        // The writer reports it; the others stand by.
        let (last, _) = eventually_or(
            "the writer to report an applied reconcile",
            Duration::from_secs(10),
            || cluster.dump(),
            || async {
                let s = cluster.node(writer).status().await.ok_or("no status")?;
                let dns = &s["dns"];
                if dns["role"] == "writer"
                    && dns["last"]["result"] == "applied"
                    && dns["front_door_ip"] == ip_of(leader)
                {
                    Ok(dns.clone())
                } else {
                    Err(format!("{dns}"))
                }
            },
        )
        .await;
        assert_eq!(last["last"]["token"].as_u64(), Some(settled.token(DNS)), "{last:#}");
        assert_eq!(last["dry_run"], false);
        for i in (1..=3).filter(|&i| i != writer) {
            let s = cluster.node(i).must_status().await;
            assert_eq!(s["dns"]["role"], "standby", "n{i}: {:#}", s["dns"]);
        }
        let created = cluster.node(writer).metric("constellation_dns_writes_total", &["op=\"create\""]).await;
        assert_eq!(created, 5.0);
        eprintln!(
            "initial: leases settled {settle_took:?} after health (lb-leader n{leader}, dns-writer n{writer}), \
             zone complete {took:?} later, {:?} after start; {} API requests",
            started.elapsed(),
            log.len()
        );
    });
}
