//! The middleware framework end to end: a `chain` runs its members in order where the
//! router names it (Traefik's onion), `replacePath` rewrites what every later middleware
//! and the upstream see, and a chain that contains itself is a configuration error.

use crate::support::*;

const ROUTES: &str = "http:
  routers:
    r:
      rule: \"PathPrefix(`/old`)\"
      service: app
      middlewares: [outer@file]
  middlewares:
    outer:
      chain:
        middlewares: [strip, inner@docker, tag]
    inner:
      chain:
        middlewares: [replace]
    strip:
      stripPrefix:
        prefixes: [\"/old\"]
    replace:
      replacePath:
        path: /new
    tag:
      headers:
        customRequestHeaders:
          X-Chained: \"yes\"
  services:
    app:
      loadBalancer:
        servers:
          - url: \"BACKEND\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_run_in_order_and_replace_path_keeps_the_original() {
    let backend = Backend::start("b1", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let agent = Agent::start(&ROUTES.replace("BACKEND", &backend.url()), "").await;
    let r = agent.get("app", "/old/page?x=1").await;
    assert_eq!((r.status, r.text()), (200, "b1\n".to_string()), "{}", agent.log());
    let hits = backend.hits();
    let h = hits.last().unwrap();
    // strip ran first (/old/page → /page), then replace (/page → /new): the header keeps
    // what replace saw, not the client's path.
    assert_eq!(h.path, "/new?x=1");
    assert_eq!(h.header("x-replaced-path"), Some("/page"));
    assert_eq!(h.header("x-chained"), Some("yes"));
    let s = agent.status().await;
    let route = s["routes"].as_array().unwrap().iter().find(|r| r["name"] == "r").unwrap().clone();
    assert!(route["refused"].as_bool() != Some(true), "{route:#}");
}

#[test]
fn a_chain_that_contains_itself_is_an_error() {
    let dir = Scratch::new("mw-chain-cycle");
    dir.write(
        "routes.yaml",
        "http:\n  routers:\n    r:\n      rule: \"PathPrefix(`/`)\"\n      service: app\n      middlewares: [a]\n  middlewares:\n    a:\n      chain:\n        middlewares: [b]\n    b:\n      chain:\n        middlewares: [a]\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"http://127.0.0.1:9\"\n",
    );
    dir.write("agent.toml", "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n[routes]\nfiles = [\"routes.yaml\"]\n");
    let (code, out, err) = run(&["config", "check", dir.path("agent.toml").to_str().unwrap()], &dir.0);
    assert_eq!(code, 78, "{out}\n{err}");
    assert!(err.contains("chain.middlewares") && err.contains("nest too deep"), "{err}");
}
