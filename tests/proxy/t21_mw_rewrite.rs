//! Rewriting middlewares end to end: `stripPrefixRegex`, `replacePathRegex` and
//! `redirectRegex` on real requests (what the backend got, or that it got nothing), the
//! full `headers` middleware (security headers, STS only when HTTPS or forced, CORS with
//! its preflight answered by the proxy, `allowedHosts`), and `contentType` with
//! detection off (the client never gets a Content-Type the upstream did not send).

use crate::support::*;

const ROUTES: &str = "http:
  routers:
    strip:
      rule: \"Host(`strip.test`)\"
      service: app
      middlewares: [strip]
    replace:
      rule: \"Host(`replace.test`)\"
      service: app
      middlewares: [replace]
    redirect:
      rule: \"Host(`redir.test`)\"
      service: app
      middlewares: [redirect]
    moved:
      rule: \"Host(`moved.test`)\"
      service: app
      middlewares: [moved]
    secure:
      rule: \"Host(`secure.test`)\"
      service: app
      middlewares: [secure]
    sts:
      rule: \"Host(`sts.test`)\"
      service: app
      middlewares: [sts]
    cors:
      rule: \"Host(`cors.test`)\"
      service: app
      middlewares: [cors]
    hosts:
      rule: \"Host(`good.test`) || Host(`bad.test`)\"
      service: app
      middlewares: [hosts]
  middlewares:
    strip:
      stripPrefixRegex:
        regex: [\"^/tenant/[0-9]+\", \"^/api\"]
    replace:
      replacePathRegex:
        regex: \"^/v([0-9]+)/(.*)\"
        replacement: \"/api/$2/version-$1\"
    redirect:
      redirectRegex:
        regex: \"^http://redir.test/old/(.*)\"
        replacement: \"https://new.test/${1}\"
    moved:
      redirectRegex:
        regex: \"^http://moved.test/(.*)\"
        replacement: \"http://elsewhere.test/$1\"
        permanent: true
    secure:
      headers:
        stsSeconds: 31536000
        stsIncludeSubdomains: true
        stsPreload: true
        forceSTSHeader: true
        frameDeny: true
        contentTypeNosniff: true
        browserXssFilter: true
        referrerPolicy: same-origin
        permissionsPolicy: \"camera=(), microphone=()\"
        contentSecurityPolicy: \"default-src 'self'\"
        customResponseHeaders:
          X-Served-By: constellation
        customRequestHeaders:
          X-From-Proxy: \"1\"
    sts:
      headers:
        stsSeconds: 60
        sslProxyHeaders:
          X-Tls-Terminated: \"yes\"
    cors:
      headers:
        accessControlAllowOriginList: [\"https://good.example\"]
        accessControlAllowOriginListRegex: [\"^https://[a-z]+\\\\.trusted\\\\.example$\"]
        accessControlAllowMethods: [GET, PUT]
        accessControlAllowHeaders: [X-Custom]
        accessControlExposeHeaders: [X-Exposed]
        accessControlAllowCredentials: true
        accessControlMaxAge: 600
        addVaryHeader: true
    hosts:
      headers:
        allowedHosts: [good.test]
        frameDeny: true
  services:
    app:
      loadBalancer:
        servers:
          - url: \"BACKEND\"
";

fn last(backend: &Backend) -> Hit {
    backend.hits().pop().expect("the backend got a request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_middlewares_rewrite_what_the_backend_sees_and_redirect_without_it() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let agent = Agent::start(&ROUTES.replace("BACKEND", &backend.url()), "").await;

    tracing::info!("stripPrefixRegex: the matched prefix goes, X-Forwarded-Prefix keeps it");
    let r = agent.get("strip.test", "/tenant/42/orders?x=1").await;
    assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "{}", agent.log());
    let h = last(&backend);
    assert_eq!(h.path, "/orders?x=1");
    assert_eq!(h.header("x-forwarded-prefix"), Some("/tenant/42"));
    // The second pattern, and a path left empty becomes "/".
    agent.get("strip.test", "/api").await;
    let h = last(&backend);
    assert_eq!((h.path.as_str(), h.header("x-forwarded-prefix")), ("/", Some("/api")));
    // No match: untouched, no header.
    agent.get("strip.test", "/other/api").await;
    let h = last(&backend);
    assert_eq!((h.path.as_str(), h.header("x-forwarded-prefix")), ("/other/api", None));

    tracing::info!("replacePathRegex: groups substituted, the old path in X-Replaced-Path");
    let r = agent.get("replace.test", "/v2/users/7?full=yes").await;
    assert_eq!(r.status, 200);
    let h = last(&backend);
    assert_eq!(h.path, "/api/users/7/version-2?full=yes");
    assert_eq!(h.header("x-replaced-path"), Some("/v2/users/7"));
    agent.get("replace.test", "/nov/x").await;
    let h = last(&backend);
    assert_eq!((h.path.as_str(), h.header("x-replaced-path")), ("/nov/x", None));

    tracing::info!("redirectRegex: 302 for GET, 307 otherwise; 301/308 when permanent; no upstream");
    let before = backend.count();
    let r = agent.get("redir.test", "/old/page?q=1").await;
    assert_eq!(r.status, 302, "{}", agent.log());
    assert_eq!(r.header("location"), Some("https://new.test/page?q=1"));
    assert_eq!(r.text(), "Found");
    let r = fetch(agent.web, "POST", "redir.test", "/old/form", &[], b"data").await.unwrap();
    assert_eq!((r.status, r.header("location")), (307, Some("https://new.test/form")));
    let r = agent.get("moved.test", "/a/b").await;
    assert_eq!((r.status, r.header("location")), (301, Some("http://elsewhere.test/a/b")));
    let r = fetch(agent.web, "PUT", "moved.test", "/a", &[], b"x").await.unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(backend.count(), before, "a redirected request reached the backend");
    // Not matching: served.
    let r = agent.get("redir.test", "/new/page").await;
    assert_eq!(r.status, 200);
    assert_eq!(last(&backend).path, "/new/page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_sets_security_headers_cors_and_checks_hosts() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let agent = Agent::start(&ROUTES.replace("BACKEND", &backend.url()), "").await;
    let s = agent.status().await;
    for route in s["routes"].as_array().unwrap() {
        assert!(route["refused"].as_bool() != Some(true), "{route:#}");
    }

    tracing::info!("security headers, STS forced on plain HTTP, custom headers still applied");
    let r = agent.get("secure.test", "/").await;
    assert_eq!(r.status, 200, "{}", agent.log());
    assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000; includeSubDomains; preload"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-xss-protection"), Some("1; mode=block"));
    assert_eq!(r.header("referrer-policy"), Some("same-origin"));
    assert_eq!(r.header("permissions-policy"), Some("camera=(), microphone=()"));
    assert_eq!(r.header("content-security-policy"), Some("default-src 'self'"));
    assert_eq!(r.header("x-served-by"), Some("constellation"));
    assert_eq!(last(&backend).header("x-from-proxy"), Some("1"));

    tracing::info!("STS not forced: absent on plain HTTP, present when an sslProxyHeaders header says HTTPS");
    let r = agent.get("sts.test", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), None);
    let r = fetch(agent.web, "GET", "sts.test", "/", &[("x-tls-terminated", "yes")], &[]).await.unwrap();
    assert_eq!(r.header("strict-transport-security"), Some("max-age=60"));

    tracing::info!("CORS: an allowed origin gets the headers, another does not; Vary: Origin");
    let r = fetch(agent.web, "GET", "cors.test", "/", &[("origin", "https://good.example")], &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://good.example"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-expose-headers"), Some("X-Exposed"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = fetch(agent.web, "GET", "cors.test", "/", &[("origin", "https://app.trusted.example")], &[]).await.unwrap();
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.trusted.example"));
    let r = fetch(agent.web, "GET", "cors.test", "/", &[("origin", "https://evil.example")], &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));

    tracing::info!("CORS preflight: answered by the proxy, the backend never sees it");
    let before = backend.count();
    let pre = [("origin", "https://good.example"), ("access-control-request-method", "PUT")];
    let r = fetch(agent.web, "OPTIONS", "cors.test", "/things", &pre, &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", agent.log());
    assert_eq!(r.header("access-control-allow-origin"), Some("https://good.example"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,PUT"));
    assert_eq!(r.header("access-control-allow-headers"), Some("X-Custom"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(r.body.is_empty());
    let evil = [("origin", "https://evil.example"), ("access-control-request-method", "PUT")];
    let r = fetch(agent.web, "OPTIONS", "cors.test", "/things", &evil, &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(backend.count(), before, "a preflight reached the backend");
    // An OPTIONS without Access-Control-Request-Method is not a preflight: proxied.
    let r =
        fetch(agent.web, "OPTIONS", "cors.test", "/things", &[("origin", "https://good.example")], &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(backend.count(), before + 1);

    tracing::info!("allowedHosts: another host is refused with 500 Bad Host, before the backend");
    let r = agent.get("good.test", "/").await;
    assert_eq!((r.status, r.header("x-frame-options")), (200, Some("DENY")));
    let before = backend.count();
    let r = agent.get("bad.test", "/").await;
    assert_eq!((r.status, r.text()), (500, "Bad Host\n".to_string()));
    assert_eq!(backend.count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_detection_off_adds_no_content_type() {
    let backend = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n<html>hi</html>").await.unwrap();
    let routes = format!(
        "http:\n  routers:\n    r:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n      middlewares: [ct]\n  \
         middlewares:\n    ct:\n      contentType:\n        autoDetect: false\n  services:\n    app:\n      \
         loadBalancer:\n        servers:\n          - url: \"{}\"\n",
        backend.url()
    );
    let agent = Agent::start(&routes, "").await;
    let r = agent.get("app", "/page").await;
    assert_eq!((r.status, r.text()), (200, "<html>hi</html>".to_string()), "{}", agent.log());
    assert_eq!(r.header("content-type"), None, "{:?}", r.headers);
}

fn check(middleware_yaml: &str) -> (i32, String) {
    let dir = Scratch::new("mw-rewrite-check");
    dir.write(
        "routes.yaml",
        &format!(
            "http:\n  routers:\n    r:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n      middlewares: [m]\n  \
             middlewares:\n    m:\n{middleware_yaml}  services:\n    app:\n      loadBalancer:\n        servers:\n          \
             - url: \"http://127.0.0.1:9\"\n"
        ),
    );
    dir.write("agent.toml", "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n[routes]\nfiles = [\"routes.yaml\"]\n");
    let (code, out, err) = run(&["config", "check", dir.path("agent.toml").to_str().unwrap()], &dir.0);
    (code, format!("{out}\n{err}"))
}

#[test]
fn bad_or_unsupported_options_are_errors_naming_the_field() {
    let (code, out) = check("      headers:\n        sslRedirect: true\n");
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("headers.sslRedirect"), "{out}");
    let (code, out) = check("      stripPrefixRegex:\n        regex: [\"(\"]\n");
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("stripPrefixRegex.regex[0]"), "{out}");
    let (code, out) = check("      contentType: {}\n");
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("contentType") && out.contains("not supported"), "{out}");
    let (code, out) =
        check("      redirectRegex:\n        regex: \"^x\"\n        replacement: y\n        permanent: true\n");
    assert_eq!(code, 0, "{out}");
}
