//! Drift: records of ours changed or removed behind the writer's back are put back on the
//! next reconcile, in place (same record id) when they still exist. Records without our
//! marker are never touched: one at an unmanaged name (`manual.example.test`), one without
//! a comment at the apex (a managed name: left in the way and reported, since `adopt` is
//! off), and one of another cluster (`cluster=other`) at a node's name.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;
use crate::*;

/// The edit lands just after the writer listed the name in the worst case: the rest of that
/// reconcile, then a whole one (at most 2 s apart, each about 3 s at the default 2
/// requests/s), plus slack.
const CORRECTED_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn drift_is_corrected_and_records_without_our_marker_are_left_alone() {
    run_test(|| async {
        let cluster = DnsCluster::start(Spec::new()).await;
        let (settled, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(20)).await;
        let leader = index_of(settled.holder(LB));
        let want = DnsCluster::want(leader, &[1, 2, 3]);
        cluster.wait_zone("the initial records", &want, Duration::from_secs(15)).await;
        let z = cluster.zone_id.clone();

        // Someone else's records.
        let manual = cluster.fake.put_record(&z, "manual.example.test", "A", "203.0.113.50", None);
        let apex_by_hand = cluster.fake.put_record(&z, ZONE, "A", "203.0.113.51", None);
        let other_cluster = cluster.fake.put_record(
            &z,
            &node_record(1),
            "A",
            "203.0.113.52",
            Some("managed-by=constellation cluster=other"),
        );
        let foreign = [manual.clone(), apex_by_hand.clone(), other_cluster.clone()];
        let snapshot = |id: &str| -> Value {
            cluster.fake.records().into_iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("record {id} gone"))
        };
        let before: Vec<Value> = foreign.iter().map(|id| snapshot(id)).collect();

        // Drift: the apex changed, the wildcard deleted.
        let apex_id = cluster.owned(ZONE)[0]["id"].as_str().unwrap().to_string();
        let wildcard_id = cluster.owned(WILDCARD)[0]["id"].as_str().unwrap().to_string();
        cluster.fake.set_content(&apex_id, "198.51.100.99");
        cluster.fake.remove_record(&wildcard_id);
        let drifted = Instant::now();
        let took = cluster.wait_zone("the drift corrected", &want, CORRECTED_WITHIN).await;
        assert_eq!(cluster.owned(ZONE)[0]["id"], apex_id.as_str(), "the apex was corrected in place");

        // Someone else's records: untouched, and never the target of a write.
        tokio::time::sleep(Duration::from_millis(RECONCILE_MS * 2)).await;
        cluster.zone_is(&want).unwrap_or_else(|e| panic!("{e}{}", cluster.dump()));
        for (id, was) in foreign.iter().zip(&before) {
            assert_eq!(&snapshot(id), was, "record {id} was changed");
        }
        let log = cluster.fake.log();
        let touched: Vec<_> =
            log.iter().filter(|r| is_write(&r.method) && foreign.iter().any(|id| r.path.ends_with(id))).collect();
        assert!(touched.is_empty(), "writes to records without our marker: {touched:#?}");
        let writes_after: Vec<_> = log.iter().filter(|r| r.at >= drifted && is_write(&r.method)).collect();
        assert_eq!(
            writes_after.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
            ["PATCH", "POST"],
            "one update (apex) and one create (wildcard): {writes_after:#?}"
        );

        // The writer counted the corrections and reports what it left alone.
        let (s, _) = cluster.wait_settled(&[1, 2, 3], Duration::from_secs(10)).await;
        let writer = cluster.node(index_of(s.holder(DNS)));
        let drift = writer.metric("constellation_dns_drift_corrections_total", &[]).await;
        assert_eq!(drift, 2.0, "{} counted the apex update and the wildcard re-create", writer.name);
        let dns = writer.must_status().await["dns"].clone();
        assert_eq!(dns["last"]["result"], "applied", "{dns:#}");
        assert_eq!(dns["last"]["skipped_unowned"], 2, "the hand-made apex and the other cluster's record: {dns:#}");
        let log_text = writer.log_text();
        let warned = log_text.lines().filter(|l| l.contains("without our ownership comment is in the way")).count();
        assert!(warned >= 2, "{} warns about both records in the way:\n{}", writer.name, writer.log_tail());
        assert!(!log_text.contains("manual.example.test"), "a record at an unmanaged name is not even reported");
        eprintln!("drift: apex and wildcard put back {took:?} after the edit by {}", writer.name);
    });
}
