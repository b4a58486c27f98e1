//! Tests of the dns-01 TXT writer against the fake Cloudflare API over real sockets, and
//! of the reconciler leaving challenge records alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use prometheus::Registry;

use crate::api::{CreateRecord, RecordBody};
use crate::tests::{
    applied, cfg, fake_zone, fast_retry, fence_ok, methods, metric, node, owner, reconciler, remote, want, ZONE,
};
use crate::{plan, AcmeTxt, DnsConfig, DnsError, RetryPolicy, ACME_TXT_TTL};
use constellation_testkit::cloudflare::{FakeCloudflare, Fault};
use constellation_testkit::wait_for;

const CHALLENGE: &str = "_acme-challenge.www.example.com";
const COMMENT: &str = "managed-by=constellation cluster=c1 acme-challenge";

fn txt(c: &DnsConfig) -> (AcmeTxt, Registry) {
    let reg = Registry::new();
    (AcmeTxt::with_retry(c, &reg, fast_retry()).unwrap(), reg)
}

fn posts(fake: &FakeCloudflare) -> usize {
    methods(fake).iter().filter(|m| *m == "POST").count()
}

#[tokio::test]
async fn set_then_clear_leaves_foreign_txt_records() {
    let (fake, zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (t, reg) = txt(&c);
    assert_eq!(t.comment(), COMMENT);
    let by_hand = fake.put_record(&zid, CHALLENGE, "TXT", "by-hand", None);
    let other_cluster = fake.put_record(
        &zid,
        CHALLENGE,
        "TXT",
        "other-cluster",
        Some("managed-by=constellation cluster=c2 acme-challenge"),
    );

    tracing::info!("set: one record with our name, value, comment and TTL");
    t.set_txt("www.example.com", "token-value-1").await.unwrap();
    let recs = fake.find(CHALLENGE, "TXT");
    assert_eq!(recs.len(), 3, "{recs:?}");
    let ours: Vec<_> = recs.iter().filter(|r| r["content"] == "token-value-1").collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0]["comment"], COMMENT);
    assert_eq!(ours[0]["ttl"], 60);
    assert_eq!(ours[0]["proxied"], false);
    assert_eq!(metric(&reg, "constellation_dns_writes_total", &[("op", "txt_create")]), 1.0);

    tracing::info!("clear: ours gone, the hand-made and the other cluster's stay");
    t.clear_txt("www.example.com").await.unwrap();
    let left: Vec<String> = fake.find(CHALLENGE, "TXT").iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(left, [by_hand, other_cluster]);
    assert_eq!(fake.find(ZONE, "TXT").len(), 1, "the zone's SPF record is untouched");
    assert_eq!(metric(&reg, "constellation_dns_writes_total", &[("op", "txt_delete")]), 1.0);
    // Nothing left of ours: a second clear deletes nothing.
    fake.clear_log();
    t.clear_txt("www.example.com.").await.unwrap();
    assert!(methods(&fake).iter().all(|m| m == "GET"), "{:?}", methods(&fake));
}

#[tokio::test]
async fn two_values_on_one_name_coexist_and_a_repeated_set_writes_nothing() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (t, _reg) = txt(&c);
    let name = "_acme-challenge.example.com";
    // A wildcard and its base name: the same record name, two values.
    t.set_txt("example.com", "base-value").await.unwrap();
    t.set_txt("*.example.com", "wildcard-value").await.unwrap();
    t.set_txt("Example.COM", "base-value").await.unwrap();
    let mut values: Vec<String> =
        fake.find(name, "TXT").iter().map(|r| r["content"].as_str().unwrap().to_string()).collect();
    values.sort();
    assert_eq!(values, ["base-value", "wildcard-value"]);
    assert_eq!(posts(&fake), 2, "the repeated value is not created again");
    assert_eq!(fake.log().iter().filter(|l| l.path.ends_with("/zones")).count(), 1, "zone id cached");

    t.clear_txt("example.com").await.unwrap();
    assert!(fake.find(name, "TXT").is_empty());
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (t, reg) = txt(&c);
    // The fault queue is consumed in order: `Slow(0)` lets the zone lookup and the list
    // through, so the burst lands on the create itself.
    fake.inject(Fault::Slow(Duration::ZERO), 2);
    fake.inject(Fault::RateLimited { retry_after_secs: 1 }, 1);
    fake.inject(Fault::ServerError(500), 2);
    fake.inject(Fault::ServerError(503), 1);
    t.set_txt("www.example.com", "v").await.unwrap();
    assert_eq!(fake.find(CHALLENGE, "TXT").len(), 1);
    let log: Vec<(String, u16)> = fake.log().iter().map(|l| (l.method.clone(), l.status)).collect();
    let creates: Vec<u16> = log.iter().filter(|(m, _)| m == "POST").map(|(_, s)| *s).collect();
    assert_eq!(creates, [429, 500, 500, 503, 200], "{log:?}");
    assert_eq!(metric(&reg, "constellation_dns_api_requests_total", &[("result", "rate_limited")]), 1.0);
    assert_eq!(metric(&reg, "constellation_dns_api_requests_total", &[("result", "server_error")]), 3.0);

    // The delete itself fails twice, then goes through.
    fake.clear_log();
    t.set_txt("www.example.com", "v").await.unwrap();
    assert_eq!(posts(&fake), 0);
    fake.clear_log();
    fake.inject(Fault::Slow(Duration::ZERO), 1);
    fake.inject(Fault::ServerError(502), 2);
    t.clear_txt("www.example.com").await.unwrap();
    let log: Vec<(String, u16)> = fake.log().iter().map(|l| (l.method.clone(), l.status)).collect();
    assert_eq!(
        log,
        [("GET".into(), 200), ("DELETE".into(), 502), ("DELETE".into(), 502), ("DELETE".into(), 200)],
        "{log:?}"
    );
    assert!(fake.find(CHALLENGE, "TXT").is_empty());
}

#[tokio::test]
async fn a_write_failing_through_every_attempt_is_an_error() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let reg = Registry::new();
    let t = AcmeTxt::with_retry(&c, &reg, RetryPolicy { attempts: 2, ..fast_retry() }).unwrap();
    // Zone lookup and list pass; the create fails twice.
    fake.inject(Fault::Slow(Duration::ZERO), 2);
    fake.inject(Fault::ServerError(503), 2);
    let err = t.set_txt("www.example.com", "v").await.unwrap_err();
    assert!(matches!(err, DnsError::Exhausted { endpoint: "create_txt", attempts: 2, .. }), "{err:?}");
    assert!(fake.find(CHALLENGE, "TXT").is_empty());
    // And the next try goes through.
    t.set_txt("www.example.com", "v").await.unwrap();
    assert_eq!(fake.find(CHALLENGE, "TXT").len(), 1);
}

#[tokio::test]
async fn a_create_retried_after_a_timeout_leaves_one_record() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url()); // request timeout 1 s
    let (t, _reg) = txt(&c);
    // Zone lookup and list pass; the first create is still in flight when the client
    // gives up and sends it again.
    fake.inject(Fault::Slow(Duration::ZERO), 2);
    fake.inject(Fault::Slow(Duration::from_millis(1500)), 1);
    t.set_txt("www.example.com", "v").await.unwrap();
    wait_for("both creates answered", Duration::from_secs(5), || async {
        fake.log().iter().filter(|l| l.method == "POST").count() == 2
    })
    .await;
    assert_eq!(fake.find(CHALLENGE, "TXT").len(), 1, "no duplicate");
    let mut creates: Vec<u16> = fake.log().iter().filter(|l| l.method == "POST").map(|l| l.status).collect();
    creates.sort_unstable();
    assert_eq!(creates, [200, 400], "the late one met Cloudflare's 'identical record already exists'");
}

#[tokio::test]
async fn a_create_refused_as_identical_finds_the_record_in_place() {
    // What a retried create meets when its first attempt landed but the answer was lost:
    // the fake's own refusal (81058), then the recovery.
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (t, _reg) = txt(&c);
    t.set_txt("www.example.com", "v").await.unwrap();
    let zone_id = t.zone.id().await.unwrap();
    let body = |value: &str| RecordBody {
        kind: "TXT",
        name: CHALLENGE.into(),
        content: value.into(),
        ttl: ACME_TXT_TTL,
        proxied: false,
        comment: COMMENT.into(),
    };
    let api = t.zone.api().unwrap();
    let refused =
        api.call("create_txt", &CreateRecord { zone_id: zone_id.clone(), body: body("v") }).await.unwrap_err();
    assert!(refused.to_string().contains("81058"), "{refused}");
    t.created_after_all(&zone_id, CHALLENGE, "v", refused).await.unwrap();
    assert_eq!(fake.find(CHALLENGE, "TXT").len(), 1);
    // A refusal with the value absent stays an error.
    let refused = DnsError::Api { endpoint: "create_txt", status: 400, detail: "HTTP 400; code 9005".into() };
    let err = t.created_after_all(&zone_id, CHALLENGE, "other", refused).await.unwrap_err();
    assert!(matches!(err, DnsError::Api { status: 400, .. }), "{err:?}");
}

#[tokio::test]
async fn a_domain_outside_the_zone_sends_nothing() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (t, _reg) = txt(&c);
    for domain in ["example.org", "notexample.com", "example.com.evil.net", "*.other.net", ""] {
        let err = t.set_txt(domain, "v").await.unwrap_err();
        assert!(matches!(err, DnsError::OutsideZone { .. }), "{domain}: {err:?}");
        assert!(err.to_string().contains("not inside the zone \"example.com\""), "{err}");
        assert!(matches!(t.clear_txt(domain).await, Err(DnsError::OutsideZone { .. })));
    }
    assert!(fake.log().is_empty(), "{:?}", methods(&fake));
    assert_eq!(t.record_name("*.Sub.Example.com.").unwrap(), "_acme-challenge.sub.example.com");
}

#[tokio::test]
async fn dry_run_and_rejected_token() {
    let (fake, _zid) = fake_zone().await;
    let (dry, _reg) = txt(&DnsConfig { token: None, ..cfg(&fake.api_url()) });
    assert!(dry.is_dry_run());
    dry.set_txt("www.example.com", "v").await.unwrap();
    dry.clear_txt("www.example.com").await.unwrap();
    assert!(fake.log().is_empty());

    let (bad, _reg) = txt(&DnsConfig { token: Some("wrong-token-secret".into()), ..cfg(&fake.api_url()) });
    let err = bad.set_txt("www.example.com", "v").await.unwrap_err();
    assert!(matches!(err, DnsError::Auth { status: 403, .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-token-secret") && !format!("{err:?}").contains("wrong-token-secret"));
}

#[tokio::test]
async fn the_reconciler_leaves_challenge_records_alone() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (r, reg) = reconciler(c.clone());
    let nodes = [node("n1", "198.51.100.1")];
    applied(r.reconcile(&want(&c, "203.0.113.10", &nodes), fence_ok).await.unwrap());

    tracing::info!("challenges through the reconciler's own client");
    let t = r.acme_txt();
    fake.clear_log();
    t.set_txt("example.com", "apex").await.unwrap();
    t.set_txt("n1.nodes.example.com", "node").await.unwrap();
    assert!(!fake.log().iter().any(|l| l.path.ends_with("/zones")), "the zone id is shared");
    assert_eq!(metric(&reg, "constellation_dns_writes_total", &[("op", "txt_create")]), 2.0);

    tracing::info!("a reconcile pass, then one that drops n1: the TXT records stay");
    let a = applied(r.reconcile(&want(&c, "203.0.113.10", &nodes), fence_ok).await.unwrap());
    assert_eq!((a.created, a.updated, a.deleted), (0, 0, 0));
    let a = applied(r.reconcile(&want(&c, "203.0.113.20", &[]), fence_ok).await.unwrap());
    assert_eq!((a.updated, a.deleted), (2, 1), "apex and wildcard moved, n1 deleted");
    for (name, value) in [("_acme-challenge.example.com", "apex"), ("_acme-challenge.n1.nodes.example.com", "node")] {
        let recs = fake.find(name, "TXT");
        assert_eq!(recs.len(), 1, "{name}");
        assert_eq!((recs[0]["content"].as_str(), recs[0]["comment"].as_str()), (Some(value), Some(COMMENT)));
    }
}

#[test]
fn the_planner_never_touches_challenge_records() {
    let c = cfg("http://127.0.0.1:1/client/v4/");
    let m = Some("managed-by=constellation cluster=c1");
    let d = crate::desired(&c, Some("203.0.113.10".parse().unwrap()), &[]);
    let current = [
        remote("1", "_acme-challenge.example.com", "TXT", "a", Some(COMMENT)),
        // Even a TXT record with the exact marker is not a type the planner manages.
        remote("2", "_acme-challenge.example.com", "TXT", "b", m),
        remote("3", "example.com", "TXT", "c", Some(COMMENT)),
        remote("4", "example.com", "A", "203.0.113.10", m),
    ];
    let p = plan(&d, &current, &owner());
    assert!(p.delete.is_empty() && p.update.is_empty() && p.skipped_unowned.is_empty(), "{p:?}");
    assert_eq!(p.create.len(), 1, "only the wildcard is missing");
    // And the challenge comment can never be another cluster's ownership marker.
    assert!(DnsConfig { cluster_id: "c1 acme-challenge".into(), ..c.clone() }.validate().is_err());
}

#[test]
fn futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let reg = Registry::new();
    let t = AcmeTxt::new(&DnsConfig { token: None, ..cfg("http://127.0.0.1:1/client/v4/") }, &reg).unwrap();
    let (set, clear) = (t.set_txt("example.com", "v"), t.clear_txt("example.com"));
    send(&set);
    send(&clear);
    fn shared<T: Send + Sync + 'static>() {}
    shared::<AcmeTxt>();
}
