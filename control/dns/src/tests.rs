//! Tests of the DNS reconciler against the fake Cloudflare API over real sockets, and of
//! the pure planner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use serde_json::json;

use super::*;
use constellation_testkit::cloudflare::{FakeCloudflare, Fault};

pub(crate) const TOKEN: &str = "good-token-0123456789";
pub(crate) const ZONE: &str = "example.com";

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn cfg(url: &str) -> DnsConfig {
    DnsConfig {
        zone: ZONE.into(),
        api_url: url.into(),
        token: Some(TOKEN.into()),
        node_record: Some("{node}.nodes.example.com".into()),
        cluster_id: "c1".into(),
        rate_per_5min: 1200,
        rate_burst: 5,
        request_timeout_ms: 1000,
        ..DnsConfig::default()
    }
}

pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy { attempts: 5, base: Duration::from_millis(50), max: Duration::from_millis(400) }
}

pub(crate) fn reconciler(cfg: DnsConfig) -> (Reconciler, Registry) {
    let reg = Registry::new();
    (Reconciler::with_retry(cfg, &reg, fast_retry()).unwrap(), reg)
}

pub(crate) fn node(name: &str, addr: &str) -> NodeAddr {
    NodeAddr { name: name.into(), ip: Some(ip(addr)), keep: true }
}

pub(crate) fn want(c: &DnsConfig, leader: &str, nodes: &[NodeAddr]) -> Desired {
    desired(c, Some(ip(leader)), nodes)
}

pub(crate) async fn fence_ok() -> bool {
    true
}

pub(crate) fn metric(reg: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    reg.gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

pub(crate) fn applied(o: Outcome) -> Applied {
    match o {
        Outcome::Applied(a) => a,
        other => panic!("expected Applied, got {other:?}"),
    }
}

pub(crate) fn methods(fake: &FakeCloudflare) -> Vec<String> {
    fake.log().iter().map(|r| r.method.clone()).collect()
}

/// A fake with one zone, a CAA record at the apex (unknown to the crate's types) and an
/// unrelated TXT record.
pub(crate) async fn fake_zone() -> (FakeCloudflare, String) {
    let fake = FakeCloudflare::start(TOKEN).await.unwrap();
    let zid = fake.add_zone(ZONE);
    fake.insert_raw(
        &zid,
        json!({"name": ZONE, "type": "CAA", "content": "0 issue \"letsencrypt.org\"",
               "data": {"flags": 0, "tag": "issue", "value": "letsencrypt.org"}}),
    );
    fake.put_record(&zid, ZONE, "TXT", "v=spf1 -all", None);
    (fake, zid)
}

// === Against the fake ===

#[tokio::test]
async fn creates_records_with_marker_then_reconcile_is_a_noop() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (r, reg) = reconciler(c.clone());
    let d = want(&c, "203.0.113.10", &[node("n1", "198.51.100.1"), node("n2", "198.51.100.2")]);

    let a = applied(r.reconcile(&d, fence_ok).await.unwrap());
    assert_eq!((a.created, a.updated, a.deleted), (4, 0, 0));
    let first = &fake.log()[0];
    assert_eq!((first.method.as_str(), first.path.as_str()), ("GET", "/client/v4/zones"));
    assert_eq!(first.query, "name=example.com&per_page=50", "zone id looked up by name");
    for (name, content) in [
        ("example.com", "203.0.113.10"),
        ("*.example.com", "203.0.113.10"),
        ("n1.nodes.example.com", "198.51.100.1"),
        ("n2.nodes.example.com", "198.51.100.2"),
    ] {
        let recs = fake.find(name, "A");
        assert_eq!(recs.len(), 1, "{name}");
        assert_eq!(recs[0]["content"], content);
        assert_eq!(recs[0]["comment"], "managed-by=constellation cluster=c1");
        assert_eq!(recs[0]["ttl"], 60);
    }
    assert_eq!(fake.find(ZONE, "CAA").len(), 1, "CAA untouched");
    assert_eq!(metric(&reg, "constellation_dns_writes_total", &[("op", "create")]), 4.0);
    assert!(metric(&reg, "constellation_dns_last_success_unix", &[]) > 1.6e9);

    fake.clear_log();
    let a = applied(r.reconcile(&d, fence_ok).await.unwrap());
    assert_eq!(a, Applied::default());
    assert!(methods(&fake).iter().all(|m| m == "GET"), "no-op cycle writes nothing: {:?}", methods(&fake));
    assert!(!fake.log().iter().any(|l| l.path.ends_with("/zones")), "zone id is cached");
}

#[tokio::test]
async fn leader_change_updates_apex_and_wildcard_in_place() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (r, _reg) = reconciler(c.clone());
    let nodes = [node("n1", "198.51.100.1")];
    r.reconcile(&want(&c, "203.0.113.10", &nodes), fence_ok).await.unwrap();
    let apex_id = fake.find(ZONE, "A")[0]["id"].clone();
    let created_on = fake.find(ZONE, "A")[0]["created_on"].clone();

    fake.clear_log();
    let a = applied(r.reconcile(&want(&c, "203.0.113.20", &nodes), fence_ok).await.unwrap());
    assert_eq!((a.created, a.updated, a.deleted, a.drift_corrections), (0, 2, 0, 0));
    let writes: Vec<String> = methods(&fake).into_iter().filter(|m| m != "GET").collect();
    assert_eq!(writes, ["PATCH", "PATCH"]);
    let apex = &fake.find(ZONE, "A")[0];
    assert_eq!((apex["id"].clone(), apex["created_on"].clone()), (apex_id, created_on), "same record");
    assert_eq!(apex["content"], "203.0.113.20");
    assert_eq!(fake.find("*.example.com", "A")[0]["content"], "203.0.113.20");
}

#[tokio::test]
async fn drift_is_corrected_and_unowned_records_are_left_alone_unless_adopt() {
    let (fake, zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (r, reg) = reconciler(c.clone());
    // n3's name already has an A record someone made by hand.
    let manual = fake.put_record(&zid, "n3.nodes.example.com", "A", "192.0.2.99", Some("made by hand"));
    let nodes = [node("n1", "198.51.100.1"), node("n3", "198.51.100.3")];
    let d = want(&c, "203.0.113.10", &nodes);
    let a = applied(r.reconcile(&d, fence_ok).await.unwrap());
    assert_eq!((a.created, a.skipped_unowned), (3, 1));
    assert_eq!(fake.find("n3.nodes.example.com", "A").len(), 1, "no second A beside the unowned one");

    // Someone edits n1 behind our back.
    let n1 = fake.find("n1.nodes.example.com", "A")[0]["id"].as_str().unwrap().to_string();
    fake.set_content(&n1, "192.0.2.1");
    let a = applied(r.reconcile(&d, fence_ok).await.unwrap());
    assert_eq!((a.updated, a.drift_corrections, a.skipped_unowned), (1, 1, 1));
    assert_eq!(fake.find("n1.nodes.example.com", "A")[0]["content"], "198.51.100.1");
    assert_eq!(metric(&reg, "constellation_dns_drift_corrections_total", &[]), 1.0);
    // And deletes the apex record: put back, counted as drift too.
    let apex = fake.find(ZONE, "A")[0]["id"].as_str().unwrap().to_string();
    fake.remove_record(&apex);
    let a = applied(r.reconcile(&d, fence_ok).await.unwrap());
    assert_eq!((a.created, a.drift_corrections), (1, 1));
    let unowned = fake.find("n3.nodes.example.com", "A");
    assert_eq!(
        (unowned[0]["content"].as_str(), unowned[0]["comment"].as_str()),
        (Some("192.0.2.99"), Some("made by hand"))
    );

    // With adopt, the same record is taken over in place.
    let (adopting, _reg2) = reconciler(DnsConfig { adopt: true, ..c.clone() });
    let a = applied(adopting.reconcile(&d, fence_ok).await.unwrap());
    assert_eq!((a.updated, a.created, a.skipped_unowned), (1, 0, 0));
    let taken = &fake.find("n3.nodes.example.com", "A")[0];
    assert_eq!(taken["id"], manual.as_str());
    assert_eq!(taken["content"], "198.51.100.3");
    assert_eq!(taken["comment"], "managed-by=constellation cluster=c1");
}

#[tokio::test]
async fn burst_of_429s_delays_but_never_loses_the_change_and_rate_stays_in_budget() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url()); // 1200 / 5 min = 4/s, burst 5
    let (r, reg) = reconciler(c.clone());
    let nodes: Vec<NodeAddr> = (1..=6).map(|i| node(&format!("n{i}"), &format!("198.51.100.{i}"))).collect();
    let d = want(&c, "203.0.113.10", &nodes);
    fake.inject(Fault::RateLimited { retry_after_secs: 1 }, 2);
    let start = Instant::now();
    let a = applied(r.reconcile(&d, fence_ok).await.unwrap());
    assert_eq!(a.created, 8);
    assert_eq!(fake.records().iter().filter(|x| x["type"] == "A").count(), 8);
    assert!(start.elapsed() >= Duration::from_secs(2), "two Retry-After: 1 waits");

    let log = fake.log();
    // After each 429 the next request waited the Retry-After second.
    for w in log.windows(2) {
        if w[0].status == 429 {
            assert!(w[1].at.duration_since(w[0].at) >= Duration::from_millis(990));
        }
    }
    // Token bucket: in any window, at most burst + rate × its length (+1 for rounding).
    for i in 0..log.len() {
        for j in i..log.len() {
            let secs = log[j].at.duration_since(log[i].at).as_secs_f64();
            let allowed = 5.0 + 4.0 * secs + 1.0;
            assert!((j - i + 1) as f64 <= allowed, "{} requests in {secs:.2}s", j - i + 1);
        }
    }
    assert!(metric(&reg, "constellation_dns_rate_limit_waits_total", &[]) >= 2.0);
    assert_eq!(metric(&reg, "constellation_dns_api_requests_total", &[("result", "rate_limited")]), 2.0);
}

#[tokio::test]
async fn exhausted_retries_return_an_error_and_the_next_cycle_applies() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let reg = Registry::new();
    let policy = RetryPolicy { attempts: 2, ..fast_retry() };
    let r = Reconciler::with_retry(c.clone(), &reg, policy).unwrap();
    let d = want(&c, "203.0.113.10", &[]);
    fake.inject(Fault::ServerError(503), 2);
    let err = r.reconcile(&d, fence_ok).await.unwrap_err();
    assert!(matches!(err, DnsError::Exhausted { attempts: 2, .. }), "{err}");
    assert!(err.to_string().contains("next cycle retries"), "{err}");
    let a = applied(r.reconcile(&d, fence_ok).await.unwrap());
    assert_eq!(a.created, 2);
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retried() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url()); // request timeout 1 s
    let (r, reg) = reconciler(c.clone());
    let d = want(&c, "203.0.113.10", &[]);
    fake.inject(Fault::ServerError(502), 1);
    fake.inject(Fault::Slow(Duration::from_millis(1500)), 1);
    fake.inject(Fault::ServerError(500), 1);
    let a = applied(r.reconcile(&d, fence_ok).await.unwrap());
    assert_eq!(a.created, 2);
    let statuses: Vec<u16> = fake.log().iter().map(|l| l.status).collect();
    assert_eq!(&statuses[..3], &[502, 200, 500], "{statuses:?}");
    assert_eq!(metric(&reg, "constellation_dns_api_requests_total", &[("result", "server_error")]), 2.0);
    assert_eq!(metric(&reg, "constellation_dns_api_requests_total", &[("result", "timeout")]), 1.0);
}

#[tokio::test]
async fn invalid_token_is_a_clear_auth_error() {
    let (fake, _zid) = fake_zone().await;
    let c = DnsConfig { token: Some("wrong-token-secret".into()), ..cfg(&fake.api_url()) };
    let (r, reg) = reconciler(c.clone());
    let err = r.reconcile(&want(&c, "203.0.113.10", &[]), fence_ok).await.unwrap_err();
    assert!(matches!(err, DnsError::Auth { status: 403, code: Some(9109), .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("Cloudflare rejected the API token") && msg.contains("dns.api_token_file"), "{msg}");
    assert!(msg.contains("Invalid access token") && msg.contains("example.com"), "{msg}");
    assert!(!msg.contains("wrong-token-secret") && !format!("{err:?}").contains("wrong-token-secret"));
    assert!(!format!("{:?}", r.config()).contains("wrong-token-secret"), "Debug redacts the token");
    assert_eq!(fake.log().len(), 1, "auth errors are not retried");
    assert_eq!(metric(&reg, "constellation_dns_api_requests_total", &[("result", "auth_error")]), 1.0);
}

#[tokio::test]
async fn deposed_writer_sends_no_write() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (r, _reg) = reconciler(c.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let fence = || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            false
        }
    };
    let out = r.reconcile(&want(&c, "203.0.113.10", &[node("n1", "198.51.100.1")]), fence).await.unwrap();
    assert_eq!(out, Outcome::Deposed { dropped: 3 });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(!fake.log().is_empty());
    assert!(methods(&fake).iter().all(|m| m == "GET"), "{:?}", methods(&fake));
    assert!(fake.find(ZONE, "A").is_empty());
}

#[tokio::test]
async fn dry_run_without_token_sends_nothing() {
    let (fake, _zid) = fake_zone().await;
    let c = DnsConfig { token: None, ..cfg(&fake.api_url()) };
    let (r, _reg) = reconciler(c.clone());
    assert!(r.is_dry_run());
    let out = r.reconcile(&want(&c, "203.0.113.10", &[node("n1", "198.51.100.1")]), fence_ok).await.unwrap();
    match out {
        Outcome::DryRun(plan) => assert_eq!(plan.create.len(), 3),
        other => panic!("{other:?}"),
    }
    assert!(fake.log().is_empty());
}

#[tokio::test]
async fn node_past_grace_loses_its_record_within_grace_keeps_it() {
    let (fake, zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (r, _reg) = reconciler(c.clone());
    // A record of another cluster, under the same suffix, is never ours.
    fake.put_record(&zid, "x.nodes.example.com", "A", "192.0.2.7", Some("managed-by=constellation cluster=c2"));
    let leader = Some(ip("203.0.113.10"));
    let mut grace = GraceTracker::new(c.node_grace());
    let st = |name: &str, addr: &str, alive| NodeStatus { name: name.into(), ip: Some(ip(addr)), alive };
    let t0 = Instant::now();

    let view = grace.observe(t0, &[st("n1", "198.51.100.1", true), st("n2", "198.51.100.2", true)]);
    applied(r.reconcile(&desired(&c, leader, &view), fence_ok).await.unwrap());
    assert_eq!(fake.find("n2.nodes.example.com", "A").len(), 1);

    // n2 goes down; two minutes later (grace is five) it keeps its record.
    grace.observe(t0 + Duration::from_secs(10), &[st("n1", "198.51.100.1", true), st("n2", "198.51.100.2", false)]);
    let view = grace.observe(t0 + Duration::from_secs(130), &[st("n1", "198.51.100.1", true)]);
    let a = applied(r.reconcile(&desired(&c, leader, &view), fence_ok).await.unwrap());
    assert_eq!(a, Applied::default());
    assert_eq!(fake.find("n2.nodes.example.com", "A").len(), 1);

    // Past the grace period it goes; the other cluster's record stays.
    let view = grace.observe(t0 + Duration::from_secs(311), &[st("n1", "198.51.100.1", true)]);
    let a = applied(r.reconcile(&desired(&c, leader, &view), fence_ok).await.unwrap());
    assert_eq!((a.deleted, a.created, a.updated), (1, 0, 0));
    assert!(fake.find("n2.nodes.example.com", "A").is_empty());
    assert_eq!(fake.find("n1.nodes.example.com", "A").len(), 1);
    assert_eq!(fake.find("x.nodes.example.com", "A").len(), 1);
}

#[tokio::test]
async fn no_leader_leaves_apex_and_wildcard_as_they_are() {
    let (fake, _zid) = fake_zone().await;
    let c = cfg(&fake.api_url());
    let (r, _reg) = reconciler(c.clone());
    r.reconcile(&want(&c, "203.0.113.10", &[]), fence_ok).await.unwrap();
    let a = applied(r.reconcile(&desired(&c, None, &[]), fence_ok).await.unwrap());
    assert_eq!(a, Applied::default());
    assert_eq!(fake.find(ZONE, "A").len(), 1);
}

// === Pure ===

pub(crate) fn remote(id: &str, name: &str, kind: &str, content: &str, comment: Option<&str>) -> RemoteRecord {
    RemoteRecord {
        id: id.into(),
        name: name.into(),
        kind: kind.into(),
        content: content.into(),
        ttl: 60,
        proxied: false,
        comment: comment.map(str::to_string),
    }
}

pub(crate) fn owner() -> Ownership {
    Ownership { marker: "managed-by=constellation cluster=c1".into(), adopt: false }
}

#[test]
fn plan_skips_cname_dedupes_owned_and_respects_held_names() {
    let c = cfg("http://127.0.0.1:1/client/v4/");
    let m = Some("managed-by=constellation cluster=c1");
    let d = desired(&c, None, &[node("n1", "198.51.100.1"), node("n2", "198.51.100.2")]);
    assert_eq!(d.held.len(), 2, "apex and wildcard held without a leader");
    let current = [
        remote("1", "example.com", "A", "203.0.113.1", m),
        remote("2", "n1.nodes.example.com", "A", "192.0.2.1", m),
        remote("3", "n1.nodes.example.com", "A", "198.51.100.1", m),
        remote("4", "n2.nodes.example.com", "CNAME", "elsewhere.example.net", None),
        remote("5", "old.nodes.example.com", "A", "192.0.2.5", m),
        remote("6", "example.com", "CAA", "0 issue \"x\"", m),
    ];
    let p = plan(&d, &current, &owner());
    assert!(p.create.is_empty() && p.update.is_empty(), "{p:?}");
    let deleted: Vec<&str> = p.delete.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(deleted, ["2", "5"], "the duplicate with wrong content and the stale node go");
    assert_eq!(p.skipped_unowned.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["4"]);
}

#[test]
fn plan_treats_ipv6_and_ttl_and_marker_changes() {
    let c = DnsConfig { ipv6: true, ..cfg("http://127.0.0.1:1/client/v4/") };
    let d = desired(&c, Some(ip("2001:db8::1")), &[node("n1", "2001:db8::0:2")]);
    assert!(d.records.iter().all(|r| r.kind == RecordType::Aaaa));
    let m = Some("managed-by=constellation cluster=c1");
    let mut ttl_changed = remote("1", "example.com", "AAAA", "2001:0db8::1", m);
    ttl_changed.ttl = 300;
    let current = [
        ttl_changed,
        remote("2", "*.example.com", "AAAA", "2001:db8::1", m),
        remote("3", "n1.nodes.example.com", "AAAA", "2001:db8::2", m),
    ];
    let p = plan(&d, &current, &owner());
    assert_eq!(p.update.len(), 1);
    assert_eq!(p.update[0].from.id, "1");
    // Without ipv6 the AAAA leader address yields no record and holds the names.
    let d4 = desired(&cfg("http://127.0.0.1:1/client/v4/"), Some(ip("2001:db8::1")), &[]);
    assert!(d4.records.is_empty() && d4.held.len() == 2);
}

#[test]
fn config_validation_names_the_key() {
    let ok = cfg("https://api.cloudflare.com/client/v4/");
    assert!(ok.validate().is_ok());
    let e = DnsConfig { api_url: "https://api.cloudflare.com/client/v4".into(), ..ok.clone() }.validate();
    assert!(e.unwrap_err().to_string().contains("dns.api_url"));
    let e = DnsConfig { node_record: Some("{node}.other.org".into()), ..ok.clone() }.validate();
    assert!(e.unwrap_err().to_string().contains("dns.node_record"));
    let e = DnsConfig { rate_per_5min: 5000, ..ok.clone() }.validate();
    assert!(e.unwrap_err().to_string().contains("dns.rate_per_5min"));
    let d = DnsConfig::default();
    assert_eq!(
        (d.api_url.as_str(), d.reconcile_interval(), d.rate_per_5min),
        (DEFAULT_API_URL, Duration::from_secs(60), 600)
    );
    let parsed: DnsConfig =
        toml::from_str("zone = \"example.com\"\ncluster_id = \"c1\"\napi_token_file = \"cf.token\"").unwrap();
    assert!(parsed.validate().is_ok());
    assert!(
        toml::from_str::<DnsConfig>("zone = \"example.com\"\ntoken = \"inline-secret\"").is_err(),
        "a token written into the config file is refused: secrets come from files or the environment"
    );
    assert!(toml::from_str::<DnsConfig>("zonee = \"x\"").is_err(), "unknown fields are refused");
}
