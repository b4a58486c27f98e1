//! Fail closed: a router that needs a feature Constellation does not apply (here a
//! `grpcWeb` middleware, which Constellation does not apply) never forwards a
//! request, never falls through to another router, and says so everywhere an operator
//! looks; `config check` refuses it and reports every error of a file at once.

use crate::support::*;

const EX_CONFIG: i32 = 78;

/// A protected `/private` router and a catch-all `/` router, both to `backend`.
fn protected_routes(backend: &str) -> String {
    format!(
        "http:\n  routers:\n    private:\n      rule: \"PathPrefix(`/private`)\"\n      service: app\n      middlewares: [auth]\n\
         \x20   public:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n\
         \x20 middlewares:\n    auth:\n      grpcWeb:\n        allowOrigins: [\"*\"]\n\
         \x20 services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{backend}\"\n"
    )
}

#[test]
fn router_with_unapplied_middleware_refuses_traffic_and_says_why() {
    run_test(|| async {
        let b = Backend::start("b", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let agent = Agent::start(&protected_routes(&b.url()), "").await;
        let mut c = agent.client();
        // Wrong credentials, no credentials: 503 naming router and feature, nothing
        // reaches the backend, and the lower-priority catch-all does not take it.
        for auth in [Some("Basic d3Jvbmc6d3Jvbmc="), None] {
            let headers: Vec<(&str, &str)> = auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            let r = c.request("GET", "app", "/private/page", &headers, b"").await.unwrap();
            assert_eq!(r.status, 503, "{}", r.text());
            let body = r.text();
            assert!(body.contains("\"private\"") && body.contains("grpcWeb"), "{body}");
        }
        let private_hits = |b: &Backend| b.hits().iter().filter(|h| h.path.starts_with("/private")).count();
        assert_eq!(private_hits(&b), 0, "a refused router must not reach the backend: {:?}", b.hits());
        // The other router is served as usual.
        assert_eq!(c.get("app", "/public").await.unwrap().status, 200);
        assert!(b.hits().iter().any(|h| h.path == "/public"), "{:?}", b.hits());
        assert_eq!(private_hits(&b), 0);

        // Status, metrics and the log name it.
        let s = agent.status().await;
        let private = s["routes"].as_array().unwrap().iter().find(|r| r["name"] == "private").unwrap();
        assert_eq!(private["refused"], true, "{private:#}");
        assert!(private["unapplied"][0].as_str().unwrap().contains("grpcWeb"), "{private:#}");
        let public = s["routes"].as_array().unwrap().iter().find(|r| r["name"] == "public").unwrap();
        assert_eq!(public["refused"], false);
        assert_eq!(
            agent
                .metric(
                    "constellation_router_unapplied",
                    &["router=\"private\"", "feature=\"middleware auth: grpcWeb\""]
                )
                .await,
            1.0
        );
        assert!(
            agent.metric("constellation_requests_total", &["route=\"private\"", "code_class=\"5xx\""]).await >= 2.0
        );
        assert!(agent.log().contains("router refuses traffic"), "{}", agent.log());
    });
}

#[test]
fn allow_unsupported_serves_the_router_without_the_feature() {
    run_test(|| async {
        let b = Backend::start("b", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let agent = Agent::start(&protected_routes(&b.url()), "[proxy]\nallow_unsupported = true\n").await;
        let r = agent.get("app", "/private/page").await;
        assert_eq!((r.status, r.text()), (200, "b\n".to_string()), "the operator opted in");
        let s = agent.status().await;
        let private = s["routes"].as_array().unwrap().iter().find(|r| r["name"] == "private").unwrap();
        assert_eq!(private["refused"], false, "{private:#}");
        assert_eq!(
            agent
                .metric(
                    "constellation_router_unapplied",
                    &["router=\"private\"", "feature=\"middleware auth: grpcWeb\""]
                )
                .await,
            0.0
        );
    });
}

fn agent_toml(routes: &str) -> String {
    format!(
        "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n[routes]\nfiles = [\"{routes}\"]\n"
    )
}

/// `config check` of `file` in `dir`, which must exit 78: its `error: ` lines and stderr.
fn failing_check(dir: &Scratch, file: &str) -> (Vec<String>, String) {
    let (code, out, err) = run(&["config", "check", dir.path(file).to_str().unwrap()], &dir.0);
    assert_eq!(code, EX_CONFIG, "{out}\n{err}");
    (err.lines().filter(|l| l.starts_with("error: ")).map(str::to_string).collect(), err)
}

#[test]
fn config_check_refuses_unapplied_features_unless_allowed() {
    let dir = Scratch::new("fail-closed-check");
    dir.write("routes.yaml", &protected_routes("http://127.0.0.1:9"));
    dir.write("agent.toml", &agent_toml("routes.yaml"));
    let file = dir.path("agent.toml");
    let (code, out, err) = run(&["config", "check", file.to_str().unwrap()], &dir.0);
    assert_eq!(code, EX_CONFIG, "{out}\n{err}");
    // The router, where it is written, and what it needs.
    assert!(err.contains("routes.yaml:3:5: http.routers.private: refused") && err.contains("grpcWeb"), "{err}");

    let (code, out, err) = run(&["config", "check", "--allow-unsupported", file.to_str().unwrap()], &dir.0);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("served WITHOUT middleware auth: grpcWeb"), "{out}");
}

#[test]
fn config_check_reports_every_error_with_its_line() {
    let dir = Scratch::new("fail-closed-errors");
    // Three mistakes: a misspelt matcher, a missing service, a server without scheme.
    dir.write(
        "routes.yaml",
        "http:\n  routers:\n    a:\n      rule: \"PathPrefix(`/a`) && Methd(`GET`)\"\n      service: app\n\
         \x20   b:\n      rule: \"PathPrefix(`/b`)\"\n      service: nope\n\
         \x20 services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"127.0.0.1:9\"\n",
    );
    dir.write("agent.toml", &agent_toml("routes.yaml"));
    let (errors, err) = failing_check(&dir, "agent.toml");
    assert_eq!(errors.len(), 3, "{err}");
    // The rule error points at the misspelt name inside the rule, on its own line.
    assert!(errors[0].contains("/routes.yaml:4:34: http.routers.a: field \"rule\""), "{err}");
    assert!(errors[0].contains("Methd"), "{err}");
    assert!(errors[1].contains("/routes.yaml:8:16: http.routers.b: field \"service\""), "{err}");
    assert!(errors[2].contains("/routes.yaml:13:19: http.services.app: field \"servers[0].url\""), "{err}");
}

#[test]
fn config_check_refuses_an_unusable_cluster_key() {
    let dir = Scratch::new("fail-closed-key");
    dir.write("routes.yaml", &protected_routes("http://127.0.0.1:9").replace("      middlewares: [auth]\n", ""));
    let gossip = "[gossip]\naddress = \"127.0.0.1:1\"\nkey_file = \"cluster.key\"\n";
    dir.write("agent.toml", &format!("{}{gossip}", agent_toml("routes.yaml")));
    let file = dir.path("agent.toml");
    // Missing, malformed (not hex), too short: each is exit 78 naming the key.
    for key in [None, Some("this is not a key\n"), Some("abcd\n")] {
        let path = dir.path("cluster.key");
        let _ = std::fs::remove_file(&path);
        if let Some(k) = key {
            dir.write("cluster.key", k);
        }
        let (code, out, err) = run(&["config", "check", file.to_str().unwrap()], &dir.0);
        assert_eq!(code, EX_CONFIG, "key {key:?}: {out}\n{err}");
        assert!(err.contains("agent.toml:9:12: gossip.key_file"), "key {key:?}: {err}");
        if let Some(k) = key {
            assert!(!err.contains(k.trim()), "the key text must not be echoed: {err}");
        }
    }
    let (code, _, err) = run(&["keygen", "--force", "--out", dir.path("cluster.key").to_str().unwrap()], &dir.0);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["config", "check", file.to_str().unwrap()], &dir.0);
    assert_eq!(code, 0, "a good key passes: {out}\n{err}");
}

#[test]
fn config_check_reports_every_agent_config_error_at_once() {
    let dir = Scratch::new("fail-closed-agent-errors");
    dir.write("routes.yaml", &protected_routes("http://127.0.0.1:9").replace("      middlewares: [auth]\n", ""));
    // Three sections, three mistakes: a bad admin address, a zero timeout, a bad voter.
    dir.write(
        "agent.toml",
        "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1\"\n\
         [proxy]\nconnect_timeout_ms = 0\n[routes]\nfiles = [\"routes.yaml\"]\n[raft]\nvoters = [\"n1\"]\n",
    );
    let (errors, err) = failing_check(&dir, "agent.toml");
    assert_eq!(errors.len(), 3, "{err}");
    assert!(errors[0].contains("agent.toml:4:11: admin.address"), "{err}");
    assert!(errors[1].contains("agent.toml:6:22: proxy.connect_timeout_ms"), "{err}");
    assert!(errors[2].contains("agent.toml:10:10: raft.voters"), "{err}");
}

#[test]
fn config_check_names_bad_warp_gateways_and_egress() {
    let dir = Scratch::new("fail-closed-warp");
    dir.write("routes.yaml", &protected_routes("http://127.0.0.1:9").replace("      middlewares: [auth]\n", ""));
    // A gateway with two ways out and a bad trace URL, a restart with no container, and
    // a fallback with no egress.
    dir.write(
        "agent.toml",
        &format!(
            "{}[[warp.gateways]]\nname = \"warp\"\nsocks5 = \"127.0.0.1:1080\"\nhttp_proxy = \"127.0.0.1:3128\"\ntrace_url = \"ftp://example/\"\nrestart = true\n\n[[instances]]\nservice = \"scraper\"\nurl = \"http://127.0.0.1:9\"\negress_fallback = \"all\"\n",
            agent_toml("routes.yaml")
        ),
    );
    let (errors, err) = failing_check(&dir, "agent.toml");
    assert_eq!(errors.len(), 4, "{err}");
    assert!(errors.iter().any(|e| e.contains("agent.toml:17:19: instances[0].egress_fallback")), "{err}");
    assert!(errors.iter().any(|e| e.contains("agent.toml:9:10: warp.gateways[0].socks5: give exactly one")), "{err}");
    assert!(errors.iter().any(|e| e.contains("agent.toml:11:13: warp.gateways[0].trace_url")), "{err}");
    assert!(
        errors.iter().any(|e| e.contains("agent.toml:12:11: warp.gateways[0].restart: restart = true needs container")),
        "{err}"
    );
    // An unknown key is an error with its place too.
    dir.write(
        "agent2.toml",
        &format!("{}[[warp.gateways]]\nname = \"w\"\nsocks = \"127.0.0.1:1\"\n", agent_toml("routes.yaml")),
    );
    let (errors, err) = failing_check(&dir, "agent2.toml");
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("agent2.toml:9:1") && errors[0].contains("socks"), "{err}");
}
