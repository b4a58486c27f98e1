//! Host names in server URLs, resolved by the control plane through a hosts file the
//! test controls: a changed address is followed within the re-resolve interval, and a
//! name without an address fails closed (503, the reason in status).

use std::time::{Duration, Instant};

use crate::support::*;

/// Re-resolve interval of these agents.
const INTERVAL_MS: u64 = 500;

fn resolver_toml() -> String {
    format!("[resolver]\ninterval_ms = {INTERVAL_MS}\nhosts_file = \"hosts\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_address_is_followed_within_the_interval() {
    // Two backends on the same port of two loopback addresses: only resolution tells
    // them apart.
    let a = Backend::start("a", "127.0.0.2:0".parse().unwrap()).await.unwrap();
    let port = a.addr.port();
    let b = Backend::start("b", format!("127.0.0.3:{port}").parse().unwrap()).await.unwrap();
    let url = format!("http://app.test:{port}");
    let yaml = routes("app", "PathPrefix(`/`)", std::slice::from_ref(&url), "");
    let hosts = "# test resolution\n127.0.0.2 app.test\n";
    let agent = start_agent_with(&yaml, "", &resolver_toml(), &[("hosts", hosts)], None).await;

    tracing::info!("phase 1: app.test is 127.0.0.2");
    let r = agent.get("app", "/").await;
    assert_eq!((r.status, r.text()), (200, "a\n".to_string()), "{}", agent.log());
    let s = agent.status().await;
    assert_eq!(upstream_status(&s, "app", &url)["address"], format!("127.0.0.2:{port}"));
    assert!(a.hits().iter().all(|h| h.header("host") == Some("app")), "the client's Host passes through");

    tracing::info!("phase 2: app.test moves to 127.0.0.3");
    agent.dir.write("hosts", "127.0.0.3 app.test\n");
    let moved = Instant::now();
    let limit = Duration::from_millis(INTERVAL_MS) + Duration::from_secs(2);
    wait_for("traffic on the new address", limit, || async { agent.get("app", "/").await.text() == "b\n" }).await;
    tracing::info!(after_ms = moved.elapsed().as_millis() as u64, "followed");
    let before = a.count();
    for _ in 0..5 {
        let r = agent.get("app", "/").await;
        assert_eq!((r.status, r.text()), (200, "b\n".to_string()));
    }
    assert_eq!(a.count(), before, "nothing goes to the old address any more");
    let s = agent.status().await;
    assert_eq!(upstream_status(&s, "app", &url)["address"], format!("127.0.0.3:{port}"));
    assert!(agent.log().contains("host name resolved"), "{}", agent.log());
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_without_an_address_is_unavailable_with_the_reason() {
    let good = Backend::start("good", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gone = format!("http://gone.invalid:{}", good.addr.port());
    let known = format!("http://known.test:{}", good.addr.port());
    let yaml = format!(
        "http:\n  routers:\n    only:\n      rule: \"Host(`only`)\"\n      service: only\n    mixed:\n      rule: \"Host(`mixed`)\"\n      service: mixed\n\
         \x20 services:\n    only:\n      loadBalancer:\n        servers:\n          - url: \"{gone}\"\n\
         \x20   mixed:\n      loadBalancer:\n        servers:\n          - url: \"{gone}\"\n          - url: \"{known}\"\n"
    );
    let agent = start_agent_with(&yaml, "", &resolver_toml(), &[("hosts", "127.0.0.1 known.test\n")], None).await;

    // Nothing else to go to: 503, not a silently empty pool.
    let r = agent.get("only", "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    let s = agent.status().await;
    let up = upstream_status(&s, "only", &gone);
    assert_eq!((up["address"].is_null(), up["available"].as_bool()), (true, Some(false)), "{up:#}");
    let reason = up["address_error"].as_str().unwrap_or_default();
    assert!(reason.starts_with(&format!("gone.invalid:{}: ", good.addr.port())), "{up:#}");
    assert_eq!(service_status(&s, "only")["total"], 1, "the server stays in the pool");

    // With another server, every request goes there.
    for _ in 0..4 {
        let r = agent.get("mixed", "/").await;
        assert_eq!((r.status, r.text()), (200, "good\n".to_string()));
    }
    assert_eq!(service_status(&s, "mixed")["available"], 1);
    assert!(agent.log().contains("host name has no address"), "{}", agent.log());
}
