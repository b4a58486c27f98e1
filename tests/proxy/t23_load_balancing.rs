//! Load-balancer options: sticky cookies that mean the same server on every node (two
//! independent agents with the same routes stand for the front door moving), and the
//! `p2c`, `hrw` and `leasttime` strategies, each observed through which backend answered.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

fn routes(servers: &[String], lb_extra: &str) -> String {
    let list: String = servers.iter().map(|s| format!("          - url: \"{s}\"\n")).collect();
    format!(
        "http:\n  routers:\n    app:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n  services:\n    app:\n      loadBalancer:\n{lb_extra}        servers:\n{list}"
    )
}

/// `cookie: name=value` of a `Set-Cookie` header, and the header itself.
fn set_cookie(r: &Reply) -> Option<(String, String)> {
    let h = r.header("set-cookie")?;
    Some((h.split(';').next().unwrap_or_default().to_string(), h.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_names_the_same_server_on_every_node() {
    let bs = Backend::several(3).await;
    let urls: Vec<String> = bs.iter().map(|b| b.url()).collect();
    let sticky = "        sticky:\n          cookie:\n            name: srv\n            secure: true\n            httpOnly: true\n            sameSite: lax\n            maxAge: 600\n";
    let text = routes(&urls, sticky);
    let (a, b) = (Agent::start(&text, "").await, Agent::start(&text, "").await);

    let first = a.get("app", "/").await;
    assert_eq!(first.status, 200, "{}", a.log());
    let (cookie, header) = set_cookie(&first).expect("the first answer sets the cookie");
    assert!(cookie.starts_with("srv="), "{header}");
    for attr in ["Path=/", "Max-Age=600", "HttpOnly", "Secure", "SameSite=Lax"] {
        assert!(header.contains(attr), "{attr} in {header}");
    }
    let server = first.text();
    // 100 requests carrying the cookie: the same server, and no new cookie.
    let mut c = a.client();
    for i in 0..100 {
        let r = c.request("GET", "app", "/", &[("cookie", &cookie)], &[]).await.unwrap();
        assert_eq!((r.status, r.text()), (200, server.clone()), "request {i}");
        assert!(r.header("set-cookie").is_none(), "request {i}: {:?}", r.header("set-cookie"));
    }
    // The other node (the front door moved): the same cookie, the same server.
    let mut cb = b.client();
    for i in 0..20 {
        let r = cb.request("GET", "app", "/", &[("cookie", &format!("other=1; {cookie}"))], &[]).await.unwrap();
        assert_eq!((r.status, r.text()), (200, server.clone()), "request {i} on the second agent");
    }
    // Its server gone: another one answers and the cookie moves to it.
    // `Backend::several` names them b1, b2, …
    let idx = (0..bs.len()).find(|i| format!("b{}\n", i + 1) == server).unwrap();
    bs[idx].set(Behaviour::Status(503));
    let r = c.request("GET", "app", "/", &[("cookie", &cookie)], &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_ne!(r.text(), server, "a failing sticky server is failed over");
    let (moved, _) = set_cookie(&r).expect("the cookie names the new server");
    assert_ne!(moved, cookie);
    // Without a cookie, requests are spread as usual (round robin over the healthy two).
    bs[idx].set(Behaviour::Ok);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(a.get("app", "/").await.text());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// Which backend answered each of `n` sequential GETs through `agent`.
async fn spread(agent: &Agent, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut c = agent.client();
    for _ in 0..n {
        let r = c.get("app", "/").await.unwrap();
        assert_eq!(r.status, 200);
        *out.entry(r.text()).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hrw_keeps_a_client_on_one_server_on_every_node() {
    let bs = Backend::several(4).await;
    let urls: Vec<String> = bs.iter().map(|b| b.url()).collect();
    let text = routes(&urls, "        strategy: hrw\n");
    let (a, b) = (Agent::start(&text, "").await, Agent::start(&text, "").await);
    let on_a = spread(&a, 30).await;
    assert_eq!(on_a.len(), 1, "one client IP, one server: {on_a:?}");
    let on_b = spread(&b, 10).await;
    assert_eq!(on_a.keys().collect::<Vec<_>>(), on_b.keys().collect::<Vec<_>>(), "the same server on both nodes");
    // Its server failing: the client moves, and comes back when it recovers.
    let name = on_a.keys().next().unwrap().trim().to_string();
    let idx = (0..bs.len()).find(|i| format!("b{}", i + 1) == name).unwrap();
    bs[idx].set(Behaviour::Status(503));
    let moved = spread(&a, 5).await;
    assert!(!moved.contains_key(&format!("{name}\n")), "{moved:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_and_leasttime_keep_traffic_off_the_slow_server() {
    // One slow server among four: round robin would give it a quarter of the requests.
    let bs = Backend::several(4).await;
    bs[0].set(Behaviour::Delay(Duration::from_millis(300)));
    let urls: Vec<String> = bs.iter().map(|b| b.url()).collect();
    for strategy in ["p2c", "leasttime"] {
        let agent = Agent::start(&routes(&urls, &format!("        strategy: {strategy}\n")), "").await;
        let before: Vec<u64> = bs.iter().map(|b| b.count()).collect();
        // 80 requests, 8 clients at a time: the slow server holds its requests longer.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let web = agent.web;
            tasks.push(tokio::spawn(async move {
                let mut c = Client::new(web);
                for _ in 0..10 {
                    let r = c.get("app", "/").await.unwrap();
                    assert_eq!(r.status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let got: Vec<u64> = bs.iter().zip(&before).map(|(b, n)| b.count() - n).collect();
        assert_eq!(got.iter().sum::<u64>(), 80, "{got:?}");
        assert!(got[0] <= 12, "{strategy}: the slow server got {} of 80 ({got:?})", got[0]);
        eprintln!("{strategy}: slow server (300 ms) got {} of 80 requests, fast ones {:?}", got[0], &got[1..]);
    }
}

#[test]
fn an_unknown_strategy_is_a_configuration_error() {
    let dir = Scratch::new("lb-strategy");
    dir.write("routes.yaml", &routes(&["http://127.0.0.1:9".to_string()], "        strategy: fastest\n"));
    dir.write(
        "agent.toml",
        "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n[routes]\nfiles = [\"routes.yaml\"]\n",
    );
    let (code, out, err) = run(&["config", "check", dir.path("agent.toml").to_str().unwrap()], &dir.0);
    assert_eq!(code, 78, "{out}\n{err}");
    assert!(err.contains("loadBalancer.strategy") && err.contains("fastest"), "{err}");
}
