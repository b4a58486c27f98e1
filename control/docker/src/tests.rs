//! Unit tests of the label translation and the schema walk.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use constellation_proxy::dynamic::{HttpService, Middleware};
use constellation_proxy::DynamicConfig;

use crate::container::{Container, Health};
use crate::labels::{contribution, LabelSettings};

fn container(name: &str, ip: &str, labels: &[(&str, &str)]) -> Container {
    Container {
        id: format!("{name}0123456789abcdef"),
        name: name.into(),
        image: "img:1".into(),
        running: true,
        state: "running".into(),
        health: Health::Healthy,
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        networks: BTreeMap::from([("net".to_string(), Some(ip.parse().unwrap()))]),
        exposed_tcp: vec![80],
        restart_count: 0,
    }
}

fn settings() -> LabelSettings {
    LabelSettings { exposed_by_default: false, network: Some("net".into()), domain: "cluster.test".into() }
}

#[test]
fn the_traefik_label_set_becomes_the_same_config_a_file_would() {
    let c = container(
        "web-1",
        "172.18.0.5",
        &[
            ("traefik.enable", "true"),
            ("traefik.http.routers.web.rule", "Host(`x.test`) && PathPrefix(`/api`)"),
            ("traefik.http.routers.web.entrypoints", "web,websecure"),
            ("traefik.http.routers.web.middlewares", "strip,hdr"),
            ("traefik.http.routers.web.priority", "42"),
            ("traefik.http.routers.web.service", "websvc"),
            ("traefik.http.services.websvc.loadbalancer.server.port", "8000"),
            ("traefik.http.services.websvc.loadbalancer.passhostheader", "false"),
            ("traefik.http.services.websvc.loadbalancer.healthcheck.path", "/health"),
            ("traefik.http.services.websvc.loadbalancer.healthcheck.interval", "1s"),
            ("traefik.http.middlewares.strip.stripprefix.prefixes", "/api,/v1"),
            ("traefik.http.middlewares.hdr.headers.customrequestheaders.X-Env", "prod"),
            ("com.docker.compose.project", "demo"),
        ],
    );
    let got = contribution(&c, &settings(), "docker container web-1").unwrap();
    let file = constellation_proxy::dynamic::parse_str(
        r#"
http:
  routers:
    web:
      rule: "Host(`x.test`) && PathPrefix(`/api`)"
      entryPoints: [web, websecure]
      middlewares: [strip, hdr]
      priority: 42
      service: websvc
  services:
    websvc:
      loadBalancer:
        passHostHeader: false
        healthCheck:
          path: /health
          interval: 1s
  middlewares:
    strip:
      stripPrefix:
        prefixes: ["/api", "/v1"]
    hdr:
      headers:
        customRequestHeaders:
          X-Env: prod
"#,
        constellation_proxy::dynamic::Format::Yaml,
        "same.yaml",
    )
    .unwrap();
    let mut file = file;
    if let Some(HttpService::LoadBalancer(lb)) = file.http.services.get_mut("websvc") {
        lb.provided = true; // servers come from the container
    }
    assert_eq!(got.config, file);
    assert_eq!(got.endpoints.len(), 1);
    assert_eq!(got.endpoints[0].service, "websvc");
    assert_eq!(got.endpoints[0].url, "http://172.18.0.5:8000");
    assert_eq!(got.network.as_deref(), Some("net"));
}

#[test]
fn defaults_follow_traefik_name_rule_only_service_and_single_port() {
    let c = container("My_App.1", "10.0.0.2", &[("traefik.enable", "true")]);
    let got = contribution(&c, &settings(), "c").unwrap();
    let r = &got.config.http.routers["My-App-1"];
    assert_eq!(r.rule.as_deref(), Some("Host(`My-App-1.cluster.test`)"));
    assert_eq!(r.service.as_deref(), Some("My-App-1"));
    assert_eq!(got.endpoints[0].url, "http://10.0.0.2:80");

    // A router without a service is bound to the only service, whatever its name.
    let c = container(
        "a",
        "10.0.0.2",
        &[("traefik.http.routers.r.rule", "Path(`/x`)"), ("traefik.http.services.s.loadbalancer.server.port", "81")],
    );
    let got = contribution(&c, &settings(), "c").unwrap();
    assert_eq!(got.config.http.routers["r"].service.as_deref(), Some("s"));
    assert_eq!(got.endpoints[0].url, "http://10.0.0.2:81");
}

#[test]
fn mistakes_name_the_label() {
    let bad_rule = container("a", "10.0.0.2", &[("traefik.http.routers.r.rule", "Host(`x.test`")]);
    let e = contribution(&bad_rule, &settings(), "docker container a").unwrap_err().join("\n");
    assert!(e.contains("docker container a") && e.contains("http.routers.r") && e.contains("rule"), "{e}");

    let typo = container("a", "10.0.0.2", &[("traefik.http.routers.r.rulez", "Host(`x`)")]);
    let e = contribution(&typo, &settings(), "c").unwrap_err().join("\n");
    assert!(e.contains("traefik.http.routers.r.rulez") && e.contains("unknown key \"rulez\""), "{e}");

    let not_int = container("a", "10.0.0.2", &[("traefik.http.routers.r.priority", "high")]);
    let e = contribution(&not_int, &settings(), "c").unwrap_err().join("\n");
    assert!(e.contains("is not an integer"), "{e}");

    let mut two_ports = container("a", "10.0.0.2", &[]);
    two_ports.exposed_tcp = vec![80, 443];
    let e = contribution(&two_ports, &settings(), "c").unwrap_err().join("\n");
    assert!(e.contains("exposes 2 ports") && e.contains("loadbalancer.server.port"), "{e}");

    let two_services = container(
        "a",
        "10.0.0.2",
        &[
            ("traefik.http.routers.r.rule", "Path(`/`)"),
            ("traefik.http.services.s1.loadbalancer.server.port", "1"),
            ("traefik.http.services.s2.loadbalancer.server.port", "2"),
        ],
    );
    let e = contribution(&two_services, &settings(), "c").unwrap_err().join("\n");
    assert!(e.contains("router r names no service"), "{e}");

    let wrong_net = container("a", "10.0.0.2", &[("traefik.docker.network", "other")]);
    let e = contribution(&wrong_net, &settings(), "c").unwrap_err().join("\n");
    assert!(e.contains("not on network other"), "{e}");
}

#[test]
fn indexed_lists_tls_and_constellation_labels() {
    let c = container(
        "a",
        "10.0.0.2",
        &[
            ("traefik.http.routers.r.rule", "Host(`a.test`)"),
            ("traefik.http.routers.r.tls", "true"),
            ("traefik.http.middlewares.m.stripprefix.prefixes[0]", "/a"),
            ("traefik.http.middlewares.m.stripprefix.prefixes[1]", "/b"),
            ("constellation.retry-on-403", "true"),
            ("constellation.egress", "warp"),
        ],
    );
    let got = contribution(&c, &settings(), "c").unwrap();
    assert!(got.config.http.routers["r"].tls.is_some());
    let json = serde_json::to_value(&got.config.http.middlewares["m"]).unwrap();
    assert_eq!(json["stripPrefix"]["prefixes"], serde_json::json!(["/a", "/b"]));
    let _: &Middleware = &got.config.http.middlewares["m"];
    let HttpService::LoadBalancer(lb) = &got.config.http.services["a"] else { panic!() };
    assert!(lb.retry_on_403);
    assert_eq!(got.egress.as_deref(), Some("warp"));
}

#[test]
fn replicas_merge_and_conflicts_name_both_sources() {
    let labels =
        [("traefik.http.routers.r.rule", "Host(`x.test`)"), ("traefik.http.services.s.loadbalancer.server.port", "80")];
    let a = contribution(&container("a", "10.0.0.2", &labels), &settings(), "container a").unwrap();
    let b = contribution(&container("b", "10.0.0.3", &labels), &settings(), "container b").unwrap();
    let (merged, conflicts) =
        DynamicConfig::merge_shared(vec![("container a".into(), a.config.clone()), ("container b".into(), b.config)]);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert_eq!(merged.http.routers.len(), 1);
    let other =
        [("traefik.http.routers.r.rule", "Host(`y.test`)"), ("traefik.http.services.s.loadbalancer.server.port", "80")];
    let c = contribution(&container("c", "10.0.0.4", &other), &settings(), "container c").unwrap();
    let (merged, conflicts) =
        DynamicConfig::merge_shared(vec![("container a".into(), a.config), ("container c".into(), c.config)]);
    assert_eq!(conflicts.len(), 1);
    let text = conflicts[0].to_string();
    assert!(text.contains("http.routers.r") && text.contains("container a") && text.contains("container c"), "{text}");
    assert!(!merged.http.routers.contains_key("r"), "a conflicting router is left out");
    assert!(merged.http.services.contains_key("s"), "identical services still merge");
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("http".to_string()),
            Just("routers".to_string()),
            Just("services".to_string()),
            Just("middlewares".to_string()),
            Just("loadbalancer".to_string()),
            Just("server".to_string()),
            Just("rule".to_string()),
            Just("tls".to_string()),
            Just("stripprefix".to_string()),
            Just("prefixes[1]".to_string()),
            Just("headers".to_string()),
            Just("customrequestheaders".to_string()),
            "[a-zA-Z0-9_\\[\\]-]{0,8}",
        ]
    }

    proptest! {
        /// Whatever the labels, translation returns a contribution or errors; it never
        /// panics, and a contribution always validates.
        #[test]
        fn arbitrary_labels_never_panic(labels in prop::collection::vec(
            (prop::collection::vec(segment(), 1..7), "[ -~]{0,24}"), 0..8)
        ) {
            let pairs: Vec<(String, String)> =
                labels.into_iter().map(|(k, v)| (format!("traefik.{}", k.join(".")), v)).collect();
            let mut c = container("p", "10.0.0.9", &[("traefik.enable", "true")]);
            c.labels.extend(pairs);
            if let Ok(got) = contribution(&c, &settings(), "c") {
                prop_assert!(got.config.validate("c").is_ok());
            }
        }
    }
}
