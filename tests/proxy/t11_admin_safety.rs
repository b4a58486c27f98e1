//! The admin API is safe by default: changes need the token (or, with none configured, a
//! loopback peer), an admin address off loopback needs a token to start at all, and the
//! routes' credentials are hidden in everything people read (status, metrics, logs,
//! `traefik dump`) while the Traefik provider endpoint serves them, behind the token.
//!
//! Non-loopback peers are real: the test connects from one of the machine's own
//! non-loopback addresses (eth0's), which reaches a loopback listener with that source.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

async fn backend(name: &str) -> Backend {
    Backend::start(name, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

const ADD_VOTER: &[u8] = br#"{"name": "n9", "address": "127.0.0.1:1"}"#;
const JSON: (&str, &str) = ("content-type", "application/json");

/// Runs `constellation ARGS` in `dir` with no admin token in its environment; (code, stdout, stderr).
fn constellation(args: &[&str], dir: &Scratch) -> (i32, String, String) {
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(&dir.0)
        .env_remove("CONSTELLATION_ADMIN__TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`constellation {}` still running after 20 s:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn admin_writes_need_the_token_or_a_loopback_peer() {
    run_test(|| async {
        let outside: IpAddr = non_loopback_ip();
        let b = backend("a").await;
        let yaml = routes("app", "PathPrefix(`/`)", &[b.url()], "");

        tracing::info!(%outside, "no token: the admin API is on loopback; peers from {outside} may read, not change");
        let agent = start_agent_with(&yaml, "", "", &[], None).await;
        let r =
            fetch_from(outside, agent.admin, "POST", "admin", "/api/v1/raft/voters", &[JSON], ADD_VOTER).await.unwrap();
        assert_eq!(r.status, 403, "a voter change from {outside} without a token: {}", r.text());
        assert!(r.text().contains("loopback") && r.text().contains("token_file"), "the refusal says why: {}", r.text());
        for (method, path) in
            [("DELETE", "/api/v1/raft/voters/n1"), ("PUT", "/api/v1/raft/voters"), ("POST", "/api/v1/status")]
        {
            let r = fetch_from(outside, agent.admin, method, "admin", path, &[], b"").await.unwrap();
            assert_eq!(r.status, 403, "{method} {path} from {outside}: every write goes through the same check");
        }
        let r = fetch_from(outside, agent.admin, "GET", "admin", "/api/v1/status", &[], b"").await.unwrap();
        assert_eq!(r.status, 200, "reads stay open on a loopback admin address");
        // From loopback the change passes the check (and fails on: this agent runs no Raft).
        let r = fetch(agent.admin, "POST", "admin", "/api/v1/raft/voters", &[JSON], ADD_VOTER).await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains("not among [raft] voters"), "{}", r.text());
        assert_eq!(fetch(agent.admin, "POST", "admin", "/api/v1/status", &[], b"").await.unwrap().status, 405);
        // A flood of refused writes is counted, and logged once.
        for _ in 0..30 {
            let r =
                fetch_from(outside, agent.admin, "DELETE", "admin", "/api/v1/raft/voters/n1", &[], b"").await.unwrap();
            assert_eq!(r.status, 403);
        }
        let refused =
            agent.metric("constellation_admin_refused_total", &["request=\"write\"", "reason=\"not_loopback\""]).await;
        assert_eq!(refused, 34.0);
        let lines = agent.log().matches("admin API request refused").count();
        assert_eq!(lines, 1, "refusals are logged at most once a minute:\n{}", agent.log());
        drop(agent);

        tracing::info!("a token and the admin API on 0.0.0.0: the token is needed from anywhere");
        let token = "wr1te-token-for-tests";
        let agent = start_agent_at(
            IpAddr::from([0, 0, 0, 0]),
            &yaml,
            "token_file = \"admin.token\"",
            "",
            &[("admin.token", token)],
            Some(token),
        )
        .await;
        let remote = SocketAddr::new(outside, agent.admin.port());
        let bearer = format!("Bearer {token}");
        for auth in [None, Some("Bearer wrong-token-for-tests"), Some(token)] {
            let headers: Vec<(&str, &str)> = [JSON].into_iter().chain(auth.map(|a| ("authorization", a))).collect();
            let r = fetch(remote, "POST", "admin", "/api/v1/raft/voters", &headers, ADD_VOTER).await.unwrap();
            assert_eq!(r.status, 401, "a voter change with authorization {auth:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        let r = fetch(remote, "POST", "admin", "/api/v1/raft/voters", &[JSON, ("authorization", &bearer)], ADD_VOTER)
            .await
            .unwrap();
        assert_eq!(r.status, 503, "with the token the change passes the check: {}", r.text());
        let r = fetch(remote, "GET", "admin", "/api/v1/traefik", &[], b"").await.unwrap();
        assert_eq!(r.status, 401, "the Traefik endpoint takes the token");
        let r = fetch(remote, "GET", "admin", "/api/v1/traefik", &[("authorization", &bearer)], b"").await.unwrap();
        assert_eq!(r.status, 200);
        let auth = [("authorization", bearer.as_str())];
        let metrics = fetch(agent.admin, "GET", "admin", "/metrics", &auth, b"").await.unwrap().text();
        assert_eq!(
            metric_value(&metrics, "constellation_admin_refused_total", &["request=\"write\"", "reason=\"token\""]),
            3.0
        );
        assert_eq!(
            metric_value(&metrics, "constellation_admin_refused_total", &["request=\"read\"", "reason=\"token\""]),
            1.0
        );
        assert!(!agent.log().contains(token), "the token is never logged");
    });
}

#[test]
fn an_admin_address_off_loopback_needs_a_token_to_start() {
    let dir = Scratch::new("admin-address");
    let (web, admin) = (free_port(), free_port());
    let text = format!(
        "[node]\nname = \"x\"\n[entrypoints.web]\naddress = \"127.0.0.1:{web}\"\n[admin]\naddress = \"0.0.0.0:{admin}\"\n"
    );
    dir.write("agent.toml", &text);
    for args in [["agent", "-c", "agent.toml"], ["config", "check", "agent.toml"]].iter().map(|a| &a[..]) {
        let (code, _, err) = constellation(args, &dir);
        assert_eq!(code, 78, "`constellation {}` exits 78:\n{err}", args.join(" "));
        assert!(err.contains("agent.toml:6:11: admin.address:"), "file, line, column and key: {err}");
        assert!(err.contains(&format!("0.0.0.0:{admin} is not a loopback address")), "{err}");
        assert!(err.contains("admin.token_file") && err.contains("CONSTELLATION_ADMIN__TOKEN"), "what to do: {err}");
    }
    assert!(std::net::TcpListener::bind(("127.0.0.1", admin)).is_ok(), "nothing listened on the admin port");
    // With a token the same address is fine.
    dir.write("admin.token", "t0ken-for-tests\n");
    dir.write("agent.toml", &format!("{text}token_file = \"admin.token\"\n"));
    let (code, out, err) = constellation(&["config", "check", "agent.toml"], &dir);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn credentials_are_hidden_everywhere_but_the_traefik_endpoint() {
    run_test(|| async {
        let b = backend("b").await;
        let token = "adm1n-token-for-tests";
        let server = format!("http://svcuser:pa55word@{}", b.addr);
        let yaml = format!(
            "http:\n  routers:\n    app:\n      rule: \"Host(`app`)\"\n      service: app\n      middlewares: [creds]\n\
             \x20   keyed:\n      rule: \"Host(`keyed`) && Header(`X-Api-Key`, `rule-k3y`)\"\n      service: app\n\
             \x20   guarded:\n      rule: \"Host(`guarded`)\"\n      service: app\n      middlewares: [auth]\n\
             \x20 middlewares:\n    creds:\n      headers:\n        customRequestHeaders:\n\
             \x20         Authorization: \"Bearer s3cret-upstream-token\"\n          X-Served-By: constellation\n\
             \x20   auth:\n      basicAuth:\n        users:\n          - \"admin:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/\"\n\
             \x20 services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{server}\"\n"
        );
        let secrets = ["s3cret-upstream-token", "rule-k3y", "H6uskkkW$IgXLP6ewTrSuBkTrqE8wj", "pa55word", "svcuser"];
        let agent = start_agent_with(
            &yaml,
            "token_file = \"admin.token\"",
            "",
            &[("admin.token", &format!("{token}\n"))],
            Some(token),
        )
        .await;
        let bearer = format!("Bearer {token}");
        let auth = [("authorization", bearer.as_str())];
        let admin = |path: &'static str, with_token: bool| {
            let (addr, auth) = (agent.admin, auth);
            async move {
                let headers: &[(&str, &str)] = if with_token { &auth } else { &[] };
                fetch(addr, "GET", "admin", path, headers, b"").await.unwrap()
            }
        };
        let leaks = |what: &str, text: &str| {
            for s in secrets {
                assert!(!text.contains(s), "{what} shows {s:?}:\n{text}");
            }
        };

        tracing::info!("the proxy applies the real values");
        let r = agent.get("app", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(b.hits().pop().unwrap().header("authorization"), Some("Bearer s3cret-upstream-token"));

        tracing::info!("the Traefik endpoint serves them, behind the token");
        let r = admin("/api/v1/traefik", false).await;
        assert_eq!(r.status, 401);
        leaks("a refused /api/v1/traefik", &r.text());
        let r = admin("/api/v1/traefik", true).await;
        assert_eq!(r.status, 200);
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let errors = traefik_schema_errors(&doc);
        assert!(errors.is_empty(), "schema violations:\n{}\n{doc:#}", errors.join("\n"));
        let http = &doc["http"];
        assert_eq!(
            http["middlewares"]["creds"]["headers"]["customRequestHeaders"]["Authorization"],
            "Bearer s3cret-upstream-token"
        );
        assert_eq!(http["middlewares"]["auth"]["basicAuth"]["users"][0], "admin:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/");
        assert_eq!(http["services"]["app"]["loadBalancer"]["servers"][0]["url"], server.as_str());
        assert_eq!(http["routers"]["keyed"]["rule"], "Host(`keyed`) && Header(`X-Api-Key`, `rule-k3y`)");

        tracing::info!("status and metrics hide them");
        let r = admin("/api/v1/status", true).await;
        assert_eq!(r.status, 200);
        leaks("/api/v1/status", &r.text());
        let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let shown = format!("http://REDACTED@{}", b.addr);
        assert_eq!(service_status(&s, "app")["upstreams"][0]["url"], shown.as_str());
        let keyed = s["routes"].as_array().unwrap().iter().find(|r| r["name"] == "keyed").unwrap();
        assert_eq!(keyed["rule"], "Host(`keyed`) && Header(`X-Api-Key`, `REDACTED`)");
        let metrics = admin("/metrics", true).await.text();
        leaks("/metrics", &metrics);
        assert!(metrics.contains(&format!("upstream=\"{shown}\"")), "{metrics}");

        tracing::info!("traefik dump hides them unless asked");
        let (code, out, err) = constellation(&["traefik", "dump", "-c", "agent.toml"], &agent.dir);
        assert_eq!(code, 0, "{err}");
        leaks("traefik dump", &out);
        assert!(out.contains("REDACTED") && err.contains("--show-secrets"), "{out}\n{err}");
        let (code, out, err) = constellation(&["traefik", "dump", "-c", "agent.toml", "--show-secrets"], &agent.dir);
        assert_eq!(code, 0, "{err}");
        for s in secrets {
            assert!(out.contains(s), "--show-secrets prints {s:?}:\n{out}");
        }

        tracing::info!("a rejected reload quoting a URL shows no user info either");
        let bad = yaml.replace(&server, "http://baduser:badpa55@127.0.0.1:99999");
        agent.dir.write("routes.yaml", &bad);
        let (errors, _) = eventually("the bad reload in status", Duration::from_secs(10), || async {
            let s: serde_json::Value = serde_json::from_slice(&admin("/api/v1/status", true).await.body).unwrap();
            match s["config"]["last_reload"]["result"].as_str() {
                Some("invalid") => Ok(s["config"]["last_reload"]["errors"].to_string()),
                other => Err(format!("last reload {other:?}")),
            }
        })
        .await;
        assert!(!errors.contains("badpa55") && errors.contains("REDACTED@127.0.0.1:99999"), "{errors}");
        let log = agent.log();
        assert!(log.contains("route configuration rejected"), "{log}");
        assert!(!log.contains("badpa55") && !log.contains(token), "the log shows no credential:\n{log}");
        leaks("the agent log", &log);
    });
}
