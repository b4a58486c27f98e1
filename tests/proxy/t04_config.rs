//! The configuration CLI: `config default`, `config check`, `agent -c` with a bad
//! route file, usage errors and `traefik dump`, as an operator runs them.

use std::time::Duration;

use crate::support::*;

const EX_USAGE: i32 = 64;
const EX_CONFIG: i32 = 78;

/// An agent config naming `routes.yaml`, on ports nothing listens on.
fn agent_toml(web: u16, admin: u16) -> String {
    format!(
        "[node]\nname = \"check\"\n[entrypoints.web]\naddress = \"127.0.0.1:{web}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\
         [routes]\nfiles = [\"routes.yaml\"]\n"
    )
}

const SERVER: &str = "http://127.0.0.1:9";

fn check(dir: &Scratch, file: &str) -> (i32, String, String) {
    run(&["config", "check", dir.path(file).to_str().unwrap()], &dir.0)
}

#[test]
fn default_config_is_accepted_by_check() {
    let dir = Scratch::new("cfg-default");
    let (code, default_text, err) = run(&["config", "default"], &dir.0);
    assert_eq!(code, 0, "{err}");
    let out = &default_text;
    // It is TOML, with every section and the documented defaults.
    let parsed: toml::Table = toml::from_str(out).unwrap_or_else(|e| panic!("not TOML: {e}\n{out}"));
    for section in ["node", "entrypoints", "admin", "routes", "proxy"] {
        assert!(parsed.contains_key(section), "no [{section}] in:\n{out}");
    }
    let proxy = parsed["proxy"].as_table().unwrap();
    assert_eq!(proxy["max_attempts"].as_integer(), Some(3));
    assert_eq!(proxy["panic_threshold_percent"].as_integer(), Some(50));
    assert_eq!(proxy["breaker"]["consecutive_failures"].as_integer(), Some(5));
    assert!(out.lines().any(|l| l.starts_with('#')), "documented: {out}");

    dir.write("default.toml", out);
    let (code, out, err) = check(&dir, "default.toml");
    assert_eq!(code, 0, "the printed default must pass its own check: {err}");
    assert!(out.contains("default.toml: ok"), "{out}");

    // The same with a routes file added, as an operator would start.
    dir.write(
        "with-routes.toml",
        &format!("{}\n[routes]\nfiles = [\"routes.yaml\"]\n", without_routes_table(&default_text)),
    );
    dir.write("routes.yaml", &routes("app", "PathPrefix(`/`)", &[SERVER.to_string()], ""));
    let (code, out, err) = check(&dir, "with-routes.toml");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (1 entrypoints, 1 routes, 1 services)"), "{out}");
}

/// The default config text without its `[routes]` table (so another can be appended).
fn without_routes_table(text: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in text.lines() {
        if line.starts_with('[') {
            skip = line.trim() == "[routes]";
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn check_names_file_line_column_and_key_of_bad_agent_config() {
    let dir = Scratch::new("cfg-bad");
    // Unknown key at line 4, column 1.
    dir.write("unknown.toml", "[node]\nname = \"x\"\n[proxy]\nmax_atempts = 4\n");
    let (code, out, err) = check(&dir, "unknown.toml");
    assert_eq!(code, EX_CONFIG, "{out}{err}");
    let want = format!("{}:4:1: proxy.max_atempts:", dir.path("unknown.toml").display());
    assert!(err.contains(&want), "want {want:?} in:\n{err}");
    assert!(err.contains("unknown field `max_atempts`"), "{err}");
    assert!(!out.contains("ok"), "{out}");

    // Unknown key in a nested table.
    dir.write("nested.toml", "[proxy.breaker]\njitter = 0.1\nconsecutive_failure = 3\n");
    let (code, _, err) = check(&dir, "nested.toml");
    assert_eq!(code, EX_CONFIG);
    let want = format!("{}:3:1: proxy.breaker.consecutive_failure:", dir.path("nested.toml").display());
    assert!(err.contains(&want), "want {want:?} in:\n{err}");

    // Wrong type.
    dir.write("type.toml", "[proxy]\nmax_attempts = \"many\"\n");
    let (code, _, err) = check(&dir, "type.toml");
    assert_eq!(code, EX_CONFIG);
    let want = format!("{}:2:16: proxy.max_attempts:", dir.path("type.toml").display());
    assert!(err.contains(&want), "want {want:?} in:\n{err}");

    // Out of range.
    dir.write("range.toml", "[proxy]\nretry_budget_percent = 150\n");
    let (code, _, err) = check(&dir, "range.toml");
    assert_eq!(code, EX_CONFIG);
    assert!(err.contains("proxy.retry_budget_percent") && err.contains("150"), "{err}");
}

#[test]
fn check_rejects_a_bad_listen_address_with_its_location() {
    let dir = Scratch::new("cfg-addr");
    dir.write("addr.toml", "[node]\nname = \"x\"\n[admin]\naddress = \"localhost\"\n");
    let (code, out, err) = check(&dir, "addr.toml");
    assert_eq!(code, EX_CONFIG, "{out}{err}");
    assert!(err.contains("admin.address") && err.contains("\"localhost\""), "{err}");
    assert!(err.contains("is not an ip:port address"), "{err}");
    let addr_err = err;

    dir.write("ep.toml", "[entrypoints.web]\naddress = \"127.0.0.1:99999\"\n");
    let (code, _, err) = check(&dir, "ep.toml");
    assert_eq!(code, EX_CONFIG);
    assert!(err.contains("entrypoints.web.address") && err.contains("127.0.0.1:99999"), "{err}");

    // Configuration errors name the file, line, column and key. The value is on line 4.
    let want = format!("{}:4:", dir.path("addr.toml").display());
    assert!(addr_err.contains(&want), "want {want:?} (file:line:col) in:\n{addr_err}");
    let want = format!("{}:2:", dir.path("ep.toml").display());
    assert!(err.contains(&want), "want {want:?} (file:line:col) in:\n{err}");
}

#[test]
fn check_reports_bad_route_files_by_file_object_and_field() {
    let dir = Scratch::new("cfg-routes");
    dir.write("agent.toml", &agent_toml(free_port(), free_port()));
    let routes_path = dir.path("routes.yaml").display().to_string();
    let server = [SERVER.to_string()];
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "missing service",
            routes("app", "PathPrefix(`/`)", &server, "").replace("service: app\n  services", "service: nope\n  services"),
            vec![format!("{routes_path}:5:16: http.routers.app: field \"service\": service \"nope\" is not defined")],
        ),
        (
            "empty servers",
            "http:\n  routers:\n    app:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n  services:\n    app:\n      loadBalancer:\n        servers: []\n".into(),
            vec![format!("{routes_path}:9:18: http.services.app: field \"servers\":"), "no servers".into()],
        ),
        (
            "bad URL",
            routes("app", "PathPrefix(`/`)", &["127.0.0.1:9".to_string()], ""),
            vec![
                format!("{routes_path}:10:19: http.services.app: field \"servers[0].url\":"),
                "\"127.0.0.1:9\" is not an absolute http://, https:// or h2c:// URL".into(),
            ],
        ),
        (
            "YAML syntax error",
            "http:\n  routers:\n    app:\n      rule: \"PathPrefix(`/`)\"\n     service: app\n".into(),
            vec![format!("{routes_path}:5:6:")],
        ),
        (
            "rule syntax error",
            routes("app", "PathPrefix(`/`", &server, ""),
            vec![
                "http.routers.app: field \"rule\": column 15:".into(),
                "PathPrefix(`/`".into(),
                // Like every other route error, it must say which file, and the line
                // and column of the problem inside the rule.
                format!("{routes_path}:4:28: http.routers.app"),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (what, yaml, parts) in &cases {
        dir.write("routes.yaml", yaml);
        let (code, out, err) = check(&dir, "agent.toml");
        if code != EX_CONFIG || !parts.iter().all(|p| err.contains(p.as_str())) {
            failures.push(format!("{what}: exit {code}, want {EX_CONFIG} and {parts:?} in stderr:\n{err}{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // And a good one.
    dir.write("routes.yaml", &routes("app", "PathPrefix(`/`)", &server, ""));
    let (code, out, err) = check(&dir, "agent.toml");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok (1 entrypoints, 1 routes, 1 services)"), "{out}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn agent_with_a_bad_route_file_exits_78_and_listens_nowhere() {
    let dir = Scratch::new("cfg-agent");
    let (web, admin) = (free_port(), free_port());
    dir.write("agent.toml", &agent_toml(web, admin));
    dir.write(
        "routes.yaml",
        &routes("app", "PathPrefix(`/`)", &[SERVER.to_string()], "")
            .replace("service: app\n  services", "service: nope\n  services"),
    );
    let path = dir.path("agent.toml");
    let (code, _, err) = run_with_limit(&["agent", "-c", path.to_str().unwrap()], &dir.0, Duration::from_secs(20));
    assert_eq!(code, EX_CONFIG, "{err}");
    assert!(err.contains("http.routers.app") && err.contains("\"nope\" is not defined"), "{err}");
    for port in [web, admin] {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "something listens on {port}");
    }

    // A bad agent config also exits 78.
    dir.write("bad.toml", "[proxy]\nmax_atempts = 4\n");
    let path = dir.path("bad.toml");
    let (code, _, err) = run_with_limit(&["agent", "-c", path.to_str().unwrap()], &dir.0, Duration::from_secs(20));
    assert_eq!(code, EX_CONFIG, "{err}");
    assert!(err.contains("proxy.max_atempts"), "{err}");
}

#[test]
fn bad_usage_exits_64() {
    let dir = Scratch::new("cfg-usage");
    for args in [&["frobnicate"][..], &["config", "check"], &["config", "frobnicate"], &["agent", "--bogus"], &[]] {
        let (code, out, err) = run(args, &dir.0);
        assert_eq!(code, EX_USAGE, "constellation {args:?}: {out}{err}");
        assert!(err.to_lowercase().contains("usage"), "constellation {args:?} explains usage: {err}");
    }
    let (code, out, _) = run(&["--help"], &dir.0);
    assert_eq!(code, 0);
    assert!(out.contains("config") && out.contains("agent"), "{out}");
}

#[test]
fn traefik_dump_prints_schema_valid_json() {
    let dir = Scratch::new("cfg-dump");
    dir.write("agent.toml", &agent_toml(free_port(), free_port()));
    let yaml = "http:\n  routers:\n    app:\n      rule: \"Host(`app.example`) && PathPrefix(`/api`)\"\n      service: app\n      priority: 10\n      middlewares: [strip, hdrs, retry3]\n      entryPoints: [web]\n\
                \x20   legacy:\n      rule: \"Host(`old.example`)\"\n      service: both\n      middlewares: [to-https]\n\
                \x20 middlewares:\n    strip:\n      stripPrefix:\n        prefixes: [\"/api\"]\n    hdrs:\n      headers:\n        customRequestHeaders:\n          X-Env: prod\n    retry3:\n      retry:\n        attempts: 3\n    to-https:\n      redirectScheme:\n        scheme: https\n        permanent: true\n\
                \x20 services:\n    app:\n      loadBalancer:\n        passHostHeader: false\n        healthCheck:\n          path: /healthz\n          interval: 5s\n          rise: 3\n        servers:\n          - url: \"http://127.0.0.1:9\"\n          - url: \"http://127.0.0.1:10\"\n            weight: 2\n\
                \x20   other:\n      loadBalancer:\n        retryOn403: true\n        servers:\n          - url: \"http://127.0.0.1:11\"\n\
                \x20   both:\n      weighted:\n        services:\n          - name: app\n            weight: 3\n          - name: other\n            weight: 1\n";
    dir.write("routes.yaml", yaml);
    let path = dir.path("agent.toml");
    let (code, out, err) = run(&["traefik", "dump", "-c", path.to_str().unwrap()], &dir.0);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"));
    let errors = traefik_schema_errors(&doc);
    assert!(errors.is_empty(), "schema violations:\n{}\n{out}", errors.join("\n"));
    let http = &doc["http"];
    assert_eq!(http["routers"]["app"]["rule"], "Host(`app.example`) && PathPrefix(`/api`)");
    assert_eq!(http["routers"]["app"]["priority"], 10);
    assert_eq!(http["routers"]["app"]["middlewares"], serde_json::json!(["strip", "hdrs", "retry3"]));
    assert_eq!(http["routers"]["legacy"]["service"], "both");
    assert_eq!(http["services"]["app"]["loadBalancer"]["servers"][1]["url"], "http://127.0.0.1:10");
    assert_eq!(http["services"]["app"]["loadBalancer"]["servers"][1]["weight"], 2);
    assert_eq!(http["services"]["app"]["loadBalancer"]["passHostHeader"], false);
    assert_eq!(http["services"]["app"]["loadBalancer"]["healthCheck"]["path"], "/healthz");
    assert_eq!(http["services"]["both"]["weighted"]["services"][0]["weight"], 3);
    assert_eq!(http["middlewares"]["strip"]["stripPrefix"]["prefixes"], serde_json::json!(["/api"]));
    assert_eq!(http["middlewares"]["to-https"]["redirectScheme"]["scheme"], "https");

    // The embedded default dumps too (its welcome route).
    let (code, out, err) = run(&["traefik", "dump"], &dir.0);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(traefik_schema_errors(&doc).is_empty());
    assert!(doc["http"]["routers"]["welcome"].is_object(), "{out}");

    // A bad route file: exit 78, no JSON.
    dir.write("routes.yaml", &yaml.replace("service: both", "service: nope"));
    let (code, out, err) = run(&["traefik", "dump", "-c", path.to_str().unwrap()], &dir.0);
    assert_eq!(code, EX_CONFIG, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("http.routers.legacy") && err.contains("\"nope\""), "{err}");
}
