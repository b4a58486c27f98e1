//! The admin API (Traefik provider endpoint, health, metrics, bearer token) and the
//! request shaping of routers: middlewares, forwarding headers, Host, priorities.

use std::time::Duration;

use crate::support::*;

async fn backend(name: &str) -> Backend {
    Backend::start(name, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

#[test]
fn admin_serves_traefik_config_health_and_metrics() {
    run_test(|| async {
        let (a, b) = (backend("a").await, backend("b").await);
        a.set(Behaviour::Status(503));
        let yaml = format!(
        "http:\n  routers:\n    app:\n      rule: \"Host(`app`)\"\n      service: app\n      middlewares: [hdrs]\n\
         \x20   api:\n      rule: \"Host(`api`) && PathPrefix(`/v1`)\"\n      service: api\n\
         \x20 middlewares:\n    hdrs:\n      headers:\n        customResponseHeaders:\n          X-Served-By: constellation\n\
         \x20 services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{a}\"\n          - url: \"{b}\"\n\
         \x20   api:\n      loadBalancer:\n        servers:\n          - url: \"{b}\"\n",
        a = a.url(),
        b = b.url()
    );
        let agent = Agent::start(
            &yaml,
            "[proxy.breaker]\nconsecutive_failures = 2\nfailure_rate_threshold = 0.0\njitter = 0.0\n",
        )
        .await;

        for path in ["/healthz", "/readyz"] {
            let r = agent.admin_get(path).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
        assert_eq!(agent.admin_get("/nope").await.status, 404);
        let r = fetch(agent.admin, "POST", "admin", "/api/v1/status", &[], b"").await.unwrap();
        assert_eq!(r.status, 405, "the admin API is read-only");

        // The Traefik provider document.
        let r = agent.admin_get("/api/v1/traefik").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", r.headers);
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let errors = traefik_schema_errors(&doc);
        assert!(errors.is_empty(), "schema violations:\n{}\n{doc:#}", errors.join("\n"));
        assert_eq!(doc["http"]["routers"]["app"]["rule"], "Host(`app`)");
        assert_eq!(doc["http"]["routers"]["api"]["service"], "api");
        assert_eq!(doc["http"]["services"]["app"]["loadBalancer"]["servers"][1]["url"], b.url());
        assert_eq!(
            doc["http"]["middlewares"]["hdrs"]["headers"]["customResponseHeaders"]["X-Served-By"],
            "constellation"
        );

        // Status names the node, routes and services.
        let s = agent.status().await;
        assert_eq!(s["node"]["name"], "test");
        assert_eq!(s["ready"], true);
        let route_names: Vec<&str> =
            s["routes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(route_names, vec!["api", "app"], "longer rule first");
        assert_eq!(service_status(&s, "app")["total"], 2);

        // Traffic that retries (GET), suppresses a retry (POST) and trips a's breaker.
        let mut c = agent.client();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let post = c.request("POST", "app", "/", &[], b"x").await.unwrap();
            assert!(matches!(post.status, 200 | 503), "{}", post.status);
            for _ in 0..2 {
                let get = c.get("app", "/").await.unwrap();
                assert_eq!((get.status, get.text()), (200, "b\n".to_string()));
                assert_eq!(get.header("x-served-by"), Some("constellation"));
            }
            if agent.breaker("app", &a.url()).await == "open"
                && agent.metric("constellation_retries_suppressed_total", &[]).await >= 1.0
                && agent.metric("constellation_retries_total", &[]).await >= 1.0
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no breaker transition, retry and suppressed retry yet");
        }
        assert_eq!(c.get("api", "/v1/x").await.unwrap().text(), "b\n");
        assert_eq!(c.get("nothing", "/").await.unwrap().status, 404);

        let r = agent.admin_get("/metrics").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", r.headers);
        let text = r.text();
        for family in [
            "constellation_requests_total",
            "constellation_request_duration_seconds",
            "constellation_upstream_attempts_total",
            "constellation_retries_total",
            "constellation_retries_suppressed_total",
            "constellation_breaker_state",
            "constellation_breaker_transitions_total",
            "constellation_config_generation",
            "constellation_config_reloads_total",
        ] {
            assert!(text.contains(&format!("# TYPE {family} ")), "no metric family {family} in:\n{text}");
        }
        assert!(
            metric_value(
                &text,
                "constellation_requests_total",
                &["route=\"app\"", "method=\"GET\"", "code_class=\"2xx\""]
            ) >= 2.0
        );
        assert!(metric_value(&text, "constellation_requests_total", &["route=\"api\""]) >= 1.0);
        assert!(metric_value(&text, "constellation_request_duration_seconds_count", &["route=\"app\""]) >= 2.0);
        assert!(
            metric_value(
                &text,
                "constellation_upstream_attempts_total",
                &["service=\"app\"", "outcome=\"status_gateway\""]
            ) >= 2.0
        );
        assert!(
            metric_value(&text, "constellation_retries_total", &["service=\"app\"", "reason=\"status_gateway\""])
                >= 1.0
        );
        assert!(metric_value(&text, "constellation_retries_suppressed_total", &["reason=\"non_idempotent\""]) >= 1.0);
        assert_eq!(metric_value(&text, "constellation_breaker_state", &[&format!("upstream=\"{}\"", a.url())]), 1.0);
        assert_eq!(metric_value(&text, "constellation_breaker_transitions_total", &["to=\"open\""]), 1.0);
        assert_eq!(metric_value(&text, "constellation_config_generation", &[]), 1.0);
        assert_eq!(metric_value(&text, "constellation_config_reloads_total", &["result=\"ok\""]), 1.0);
    });
}

#[test]
fn middlewares_forwarding_headers_host_and_priority() {
    run_test(|| async {
        let (m, x, y) = (backend("m").await, backend("x").await, backend("y").await);
        let yaml = format!(
        "http:\n  routers:\n\
         \x20   api:\n      rule: \"Host(`shop`) && PathPrefix(`/api`)\"\n      service: main\n      middlewares: [strip-api, add-v2, hdrs]\n\
         \x20   secure:\n      rule: \"Host(`secure`)\"\n      service: main\n      middlewares: [to-https]\n\
         \x20   plain:\n      rule: \"Host(`plain`)\"\n      service: main\n\
         \x20   nohost:\n      rule: \"Host(`nohost`)\"\n      service: nohost\n\
         \x20   short:\n      rule: \"Host(`len`) && PathPrefix(`/p`)\"\n      service: x\n\
         \x20   long:\n      rule: \"Host(`len`) && PathPrefix(`/p/longer`)\"\n      service: y\n\
         \x20   forced-low:\n      rule: \"Host(`prio`) && PathPrefix(`/q/abc`)\"\n      service: y\n      priority: 1\n\
         \x20   forced-high:\n      rule: \"Host(`prio`)\"\n      service: x\n      priority: 100\n\
         \x20 middlewares:\n\
         \x20   strip-api:\n      stripPrefix:\n        prefixes: [\"/api\"]\n\
         \x20   add-v2:\n      addPrefix:\n        prefix: /v2\n\
         \x20   hdrs:\n      headers:\n        customRequestHeaders:\n          X-Added: yes-please\n          X-Secret: \"\"\n\
         \x20       customResponseHeaders:\n          X-Frame-Options: DENY\n          X-Backend: \"\"\n\
         \x20   to-https:\n      redirectScheme:\n        scheme: https\n        permanent: true\n\
         \x20 services:\n\
         \x20   main:\n      loadBalancer:\n        servers:\n          - url: \"{m}\"\n\
         \x20   nohost:\n      loadBalancer:\n        passHostHeader: false\n        servers:\n          - url: \"{m}\"\n\
         \x20   x:\n      loadBalancer:\n        servers:\n          - url: \"{x}\"\n\
         \x20   y:\n      loadBalancer:\n        servers:\n          - url: \"{y}\"\n",
        m = m.url(),
        x = x.url(),
        y = y.url()
    );
        let agent = Agent::start(&yaml, "").await;
        let mut c = agent.client();

        // stripPrefix, then addPrefix; the query survives; headers set and removed both ways.
        let r = c
            .request("GET", "shop", "/api/items/7?color=red", &[("X-Secret", "hunter2"), ("X-Keep", "1")], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "m\n");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "customResponseHeaders reach the client");
        assert_eq!(r.header("x-backend"), None, "an empty customResponseHeaders value removes the header");
        let hit = m.hits().pop().unwrap();
        assert_eq!(hit.path, "/v2/items/7?color=red", "stripPrefix /api then addPrefix /v2");
        assert_eq!(hit.header("x-added"), Some("yes-please"));
        assert_eq!(hit.header("x-secret"), None, "an empty customRequestHeaders value removes the header");
        assert_eq!(hit.header("x-keep"), Some("1"));
        assert_eq!(hit.header("host"), Some("shop"), "the client's Host passes through by default");

        // Forwarding headers.
        let r = c.request("GET", "plain", "/fwd", &[("X-Forwarded-For", "203.0.113.9")], b"").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some("m"), "no headers middleware on this router");
        let hit = m.hits().pop().unwrap();
        assert_eq!(hit.path, "/fwd");
        let xff = hit.header("x-forwarded-for").unwrap_or_default();
        assert!(xff == "127.0.0.1" || xff.ends_with(", 127.0.0.1"), "X-Forwarded-For ends with the client: {xff:?}");
        assert_eq!(hit.header("x-forwarded-proto"), Some("http"));
        assert_eq!(hit.header("x-forwarded-host"), Some("plain"));
        let r = c.get("plain", "/fwd2").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(m.hits().pop().unwrap().header("x-forwarded-for"), Some("127.0.0.1"));

        // passHostHeader: false sends the upstream's own host:port.
        let r = c.get("nohost", "/h").await.unwrap();
        assert_eq!(r.status, 200);
        let hit = m.hits().pop().unwrap();
        assert_eq!(hit.header("host"), Some(m.addr.to_string().as_str()));
        assert_eq!(hit.header("x-forwarded-host"), Some("nohost"));

        // redirectScheme: 301 with Location for GET, 308 for POST; the backend sees nothing.
        let seen = m.count();
        let r = c.get("secure", "/login?next=%2F").await.unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(r.header("location"), Some("https://secure/login?next=%2F"));
        let r = c.request("POST", "secure", "/form", &[], b"a=1").await.unwrap();
        assert_eq!(r.status, 308, "a permanent redirect keeps the method for POST");
        assert_eq!(r.header("location"), Some("https://secure/form"));
        assert_eq!(m.count(), seen, "redirects are answered by the proxy");

        // Priority: the longer rule wins by default; an explicit priority overrides length.
        assert_eq!(c.get("len", "/p/longer/z").await.unwrap().text(), "y\n");
        assert_eq!(c.get("len", "/p/other").await.unwrap().text(), "x\n");
        assert_eq!(c.get("prio", "/q/abc").await.unwrap().text(), "x\n", "priority 100 beats the longer rule");
        assert_eq!(y.hits().iter().filter(|h| h.path.starts_with("/q")).count(), 0);
        assert_eq!(x.count(), 2);
        assert_eq!(y.count(), 1);
    });
}

#[test]
fn admin_bearer_token_guards_everything_but_healthz() {
    run_test(|| async {
        let backend = backend("a").await;
        let token = "s3cret-token-for-tests";
        let agent = start_agent_with(
            &routes("app", "PathPrefix(`/`)", &[backend.url()], ""),
            "token_file = \"admin.token\"",
            "",
            &[("admin.token", &format!("{token}\n"))],
            Some(token),
        )
        .await;
        let bearer = format!("Bearer {token}");
        let get = |path: &'static str, auth: Option<String>| {
            let admin = agent.admin;
            async move {
                let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
                fetch(admin, "GET", "admin", path, &headers, &[]).await.unwrap()
            }
        };
        let r = get("/healthz", None).await;
        assert_eq!(r.status, 200, "healthz needs no token");
        for path in ["/api/v1/status", "/api/v1/traefik", "/metrics", "/readyz"] {
            let r = get(path, None).await;
            assert_eq!(r.status, 401, "{path} without a token");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            assert!(!r.text().contains("generation"), "{path}: no data leaks: {}", r.text());
            let r = get(path, Some("Bearer wrong-token-for-tests".into())).await;
            assert_eq!(r.status, 401, "{path} with a wrong token");
            let r = get(path, Some(format!("Bearer {}", &token[..token.len() - 1]))).await;
            assert_eq!(r.status, 401, "{path} with a prefix of the token");
            let r = get(path, Some(token.to_string())).await;
            assert_eq!(r.status, 401, "{path}: the token without the Bearer scheme");
            let r = get(path, Some(bearer.clone())).await;
            assert_eq!(r.status, 200, "{path} with the token");
        }
        let r = get("/api/v1/status", Some(bearer.clone())).await;
        let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(s["config"]["generation"], 1);
        assert!(!r.text().contains(token), "the status never shows the token");
        // The proxy itself is not affected by the admin token.
        assert_eq!(agent.get("app", "/").await.status, 200);
        assert_eq!(backend.count(), 1);
        assert!(!agent.log().contains(token), "the token is never logged");
    });
}
