//! One small bad stack per rule of `check`, showing the problem is reported (and the
//! corresponding good form is not).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::{check, findings, is_reference_only, is_secret_name, Problem};
use crate::catalogue::build::{stack, svc, Svc, ANY_V4, LOOPBACK};
use crate::model::{
    Dependency, DependencyCondition, EnvValue, HealthCheck, MountSource, Network, PortMapping, Protocol, Stack,
};

/// A valid, minimal service: pinned image, on the backend.
fn ok(name: &str) -> Svc {
    svc(name, "constellation-test/busybox:1").backend()
}

fn make(services: Vec<Svc>) -> Stack {
    stack("t", "test stack", services)
}

fn messages(st: &Stack) -> Vec<String> {
    check(st).iter().map(Problem::to_string).collect()
}

fn assert_reports(st: &Stack, needle: &str) {
    let got = messages(st);
    assert!(got.iter().any(|m| m.contains(needle)), "no problem containing {needle:?} in {got:#?}");
}

#[test]
fn a_valid_stack_has_no_problem() {
    let st = make(vec![
        ok("db").vol("t-db", "/data").health_cmd(&["true"]),
        ok("web").route(8080).health_wget(8080, "/").secret_env("API_KEY", "WEB_API_KEY").after_healthy("db"),
    ]);
    assert_eq!(messages(&st), Vec::<String>::new());
}

#[test]
fn duplicate_service_names() {
    let st = make(vec![ok("a"), ok("a")]);
    assert_reports(&st, "service name `a` is defined 2 times");
}

#[test]
fn duplicate_container_names() {
    let mut st = make(vec![ok("a"), ok("b")]);
    st.services[1].container_name = Some("t-a".to_owned());
    assert_reports(&st, "container name `t-a` is used by services a, b");
}

#[test]
fn dependency_on_a_missing_service() {
    let st = make(vec![ok("a").after("ghost")]);
    assert_reports(&st, "service a: depends on `ghost`, which is not a service of the stack");
}

#[test]
fn dependency_cycles_are_reported_once_each() {
    let st = make(vec![ok("a").after("b"), ok("b").after("c"), ok("c").after("a"), ok("d").after("d")]);
    let got = messages(&st);
    let cycles: Vec<&String> = got.iter().filter(|m| m.contains("dependency cycle")).collect();
    assert_eq!(cycles.len(), 2, "{got:#?}");
    assert!(cycles.iter().any(|m| m.contains("a -> b -> c -> a")), "{cycles:?}");
    assert!(cycles.iter().any(|m| m.contains("d -> d")), "{cycles:?}");
}

#[test]
fn healthy_dependency_without_a_health_check() {
    let st = make(vec![ok("db"), ok("web").after_healthy("db")]);
    assert_reports(&st, "waits for `db` to be healthy, but `db` has no health check");
    let none = make(vec![ok("db").health(vec!["NONE".into()]), ok("web").after_healthy("db")]);
    assert_reports(&none, "but `db` has no health check");
}

#[test]
fn undeclared_network() {
    let mut st = make(vec![ok("a").net(&["elsewhere"])]);
    assert_reports(&st, "joins network `elsewhere`, which the stack does not declare");
    st.networks.push(Network { name: "elsewhere".into(), driver: "bridge".into(), internal: false, external: true });
    assert!(messages(&st).is_empty());
}

#[test]
fn undeclared_volume() {
    let mut st = make(vec![ok("a").vol("t-data", "/data")]);
    st.volumes.clear();
    assert_reports(&st, "mounts volume `t-data` at /data, which the stack does not declare");
    // Bind mounts need no declaration.
    let st = make(vec![ok("a").bind("/srv", "/srv")]);
    assert!(matches!(st.services[0].volumes[0].source, MountSource::Bind(_)));
    assert!(messages(&st).is_empty());
}

#[test]
fn inline_secrets() {
    let st = make(vec![ok("a")
        .env("DB_PASSWORD", "hunter2")
        .env("API_KEY", "prefix-${KEY}")
        .env("GITHUB_SECRET", "${GH_SECRET:-fallback}")
        .env("SESSION_TOKEN", "$$literal")
        .env("OK_REF", "plain")
        .env("SMTP_PASSWORD", "${SMTP_PASSWORD}")
        .env("JWT_SECRET", "${JWT_SECRET:?set JWT_SECRET}")
        .env("AUTH_TOKEN", "${A}${B:-${C}}")
        .env("EMPTY_PASSWORD", "")
        .env("PASSWORD_FILE", "/run/secrets/db")
        .secret_file("ROOT_PASSWORD", "t/root")]);
    let got = messages(&st);
    let flagged: Vec<&str> = ["DB_PASSWORD", "API_KEY", "GITHUB_SECRET", "SESSION_TOKEN"]
        .into_iter()
        .filter(|k| got.iter().any(|m| m.contains(&format!("`{k}` looks like a secret"))))
        .collect();
    assert_eq!(flagged, vec!["DB_PASSWORD", "API_KEY", "GITHUB_SECRET", "SESSION_TOKEN"], "{got:#?}");
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(matches!(st.services[0].environment["ROOT_PASSWORD"], EnvValue::File(_)));
}

#[test]
fn secret_names() {
    for name in [
        "PASSWORD",
        "DB_PASSWORD",
        "MYSQLPASSWORD",
        "DB_PASS",
        "API_KEY",
        "APIKEY",
        "OPENAI_API_KEY",
        "ACCESSKEY",
        "AWS_ACCESS_KEY_ID",
        "AUTHTOKEN",
        "TUNNEL_TOKEN",
        "GITHUB_SECRET",
        "CLIENT_CREDENTIALS",
        "PRIVATE_KEY",
        "secret_key_base",
        "Zilean__ApiKey",
        "WARP_LICENSE_KEY",
    ] {
        assert!(is_secret_name(name), "{name} should look secret");
    }
    for name in [
        "KEYCLOAK_URL",
        "TOKENIZER",
        "MONKEY",
        "PASSWORD_FILE",
        "HEADSCALE_PRIVATE_KEY_PATH",
        "MIN_PASSWORD_LENGTH",
        "TOKEN_URL",
        "PASSTHROUGH",
        "PWD",
        "DOMAIN",
        "REDIS_URL",
    ] {
        assert!(!is_secret_name(name), "{name} should not look secret");
    }
}

#[test]
fn reference_only_values() {
    for v in ["", "${A}", "$A", "${A}${B}", "${A:?msg here}", "${A:-}", "${A:-${B}}", "${A-$B}"] {
        assert!(is_reference_only(v), "{v:?}");
    }
    for v in ["x", "x${A}", "${A}x", "${A:-x}", "${}", "$", "${A", "$$A", "${A:x}", "${A:+lit}"] {
        assert!(!is_reference_only(v), "{v:?}");
    }
}

#[test]
fn routed_service_without_a_health_check() {
    let st = make(vec![ok("web").route(80)]);
    assert_reports(&st, "service web: is routed (`traefik.enable=true`) but has no health check");
}

#[test]
fn routed_service_without_a_port() {
    let mut st = make(vec![ok("web").route(80).health_cmd(&["true"])]);
    st.services[0].labels.retain(|k, _| !k.ends_with(".loadbalancer.server.port"));
    assert_reports(&st, "names no `traefik.http.services.<s>.loadbalancer.server.port` and publishes 0 ports");
    let port =
        |p| PortMapping { host_ip: Some(LOOPBACK), host_port: Some(p), container_port: p, protocol: Protocol::Tcp };
    st.services[0].ports = vec![port(8080), port(8081)];
    assert_reports(&st, "publishes 2 ports");
    st.services[0].ports = vec![port(8080)];
    assert!(messages(&st).is_empty(), "{:#?}", messages(&st));
}

#[test]
fn bad_port_label() {
    let mut st = make(vec![ok("web").route(80).health_cmd(&["true"])]);
    st.services[0].labels.insert("traefik.http.services.web.loadbalancer.server.port".into(), "eighty".into());
    assert_reports(&st, "label `traefik.http.services.web.loadbalancer.server.port` is `eighty`, not a port number");
}

#[test]
fn router_without_a_rule() {
    let st = make(vec![ok("web").label("traefik.http.routers.web.entrypoints", "https")]);
    assert_reports(&st, "router `traefik.http.routers.web` has no `rule` label");
    let tcp = make(vec![ok("db").label("traefik.tcp.routers.db.service", "db")]);
    assert_reports(&tcp, "router `traefik.tcp.routers.db` has no `rule` label");
}

#[test]
fn router_with_a_bad_rule() {
    for (rule, why) in [
        ("", "the rule is empty"),
        ("Host(`a.test`", "parentheses are not balanced"),
        ("Host(`a.test)", "backtick-quoted value is not closed"),
        ("Host(`a`))", "a `)` closes nothing"),
        ("a.test", "no matcher"),
    ] {
        let st = make(vec![ok("web").label("traefik.http.routers.web.rule", rule)]);
        assert_reports(&st, why);
    }
    let good = make(vec![ok("web").label("traefik.http.routers.web.rule", "Host(`a.test`) && PathPrefix(`/(x)`)")]);
    assert!(messages(&good).is_empty(), "{:#?}", messages(&good));
}

#[test]
fn malformed_health_checks() {
    let hc = |test: &[&str]| HealthCheck {
        test: test.iter().map(|s| (*s).to_owned()).collect(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        retries: 1,
        start_period: Duration::ZERO,
    };
    for (test, why) in [
        (&[][..], "the health check's test is empty"),
        (&["CMD"][..], "a CMD health check names no program"),
        (&["CMD-SHELL", "a", "b"][..], "a CMD-SHELL health check takes exactly one"),
        (&["CMD-SHELL", " "][..], "a CMD-SHELL health check takes exactly one"),
        (&["NONE", "x"][..], "a NONE health check takes no arguments"),
        (&["curl", "-f", "x"][..], "starts with `curl`, not CMD, CMD-SHELL or NONE"),
    ] {
        let mut st = make(vec![ok("a")]);
        st.services[0].healthcheck = Some(hc(test));
        assert_reports(&st, why);
    }
}

#[test]
fn unpinned_images() {
    for (image, why) in [
        ("busybox", "has no tag (it means `latest`)"),
        ("registry.local:5000/team/app", "has no tag"),
        ("busybox:latest", "uses the `latest` tag"),
        ("busybox:", "has an empty tag"),
        ("busybox@", "has an empty digest"),
        ("", "has no image"),
    ] {
        let st = make(vec![svc("a", image).backend()]);
        assert_reports(&st, why);
    }
    for image in ["registry.local:5000/team/app:1.2", "busybox@sha256:abcd", "ghcr.io/x/y:v1"] {
        let st = make(vec![svc("a", image).backend()]);
        assert!(messages(&st).is_empty(), "{image}: {:#?}", messages(&st));
    }
}

#[test]
fn duplicated_host_ports() {
    let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let st = make(vec![ok("a").port(ANY_V4, 80, 80), ok("b").port(LOOPBACK, 80, 8080)]);
    assert_reports(&st, "service b: publishes host port 80/tcp that `a` already publishes");
    // Different addresses, or different protocols, do not clash.
    let st = make(vec![ok("a").port(LOOPBACK, 53, 53), ok("b").port(other, 53, 53), ok("c").port_udp(ANY_V4, 53, 53)]);
    assert!(messages(&st).is_empty(), "{:#?}", messages(&st));
    let mut st = make(vec![ok("a").port(LOOPBACK, 443, 443), ok("b")]);
    st.services[1].ports.push(PortMapping {
        host_ip: None,
        host_port: Some(443),
        container_port: 1,
        protocol: Protocol::Tcp,
    });
    assert_reports(&st, "service b: publishes host port 443/tcp");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let mut st = make(vec![
        svc("a", "busybox").backend().env("DB_PASSWORD", "x").after("ghost"),
        ok("a"),
        ok("web").route(80).net(&["nowhere"]),
    ]);
    st.services[0].depends_on.push(Dependency { service: "a".into(), condition: DependencyCondition::Started });
    let got = messages(&st);
    for needle in [
        "has no tag",
        "`DB_PASSWORD` looks like a secret",
        "depends on `ghost`",
        "service name `a` is defined 2 times",
        "container name `t-a`",
        "dependency cycle: a -> a",
        "joins network `nowhere`",
        "is routed (`traefik.enable=true`) but has no health check",
    ] {
        assert!(got.iter().any(|m| m.contains(needle)), "no {needle:?} in {got:#?}");
    }
    assert!(got.iter().all(|m| m.starts_with("stack t: ")), "{got:#?}");
}

#[test]
fn unpinned_images_and_unchecked_routes_are_advisories() {
    let mut st = make(vec![
        svc("a", "busybox").backend(),
        ok("web").route(80),
        ok("b").after("ghost"),
        ok("c").label("traefik.http.routers.c.entrypoints", "web"),
    ]);
    st.services[1].labels.retain(|k, _| !k.ends_with(".loadbalancer.server.port"));
    let f = findings(&st);
    let text = |ps: &[Problem]| ps.iter().map(Problem::to_string).collect::<Vec<_>>();
    assert_eq!(text(&f.errors), vec!["stack t: service b: depends on `ghost`, which is not a service of the stack"]);
    assert_eq!(
        text(&f.advisories),
        vec![
            "stack t: service a: image `busybox` has no tag (it means `latest`); pin a version",
            "stack t: service web: is routed (`traefik.enable=true`) but has no health check",
            "stack t: service web: is routed but names no `traefik.http.services.<s>.loadbalancer.server.port` and publishes 0 ports (one is needed to choose; otherwise the image's single exposed port is used)",
            "stack t: service c: router `traefik.http.routers.c` has no `rule` label (Traefik's default `Host(<container>.<domain>)` applies)",
        ]
    );
    assert_eq!(check(&st).len(), 5);
}

#[test]
fn the_acceptance_shape_has_no_errors() {
    // A compose-imported service as the acceptance check writes it: routed by
    // labels, one port label, no health check. Deployable: advisories only.
    let mut st = make(vec![svc("web", "constellation-test/busybox:1").net(&["constellation-check"])]);
    st.networks.push(Network {
        name: "constellation-check".into(),
        driver: "bridge".into(),
        internal: false,
        external: true,
    });
    let labels = &mut st.services[0].labels;
    labels.insert("traefik.enable".into(), "true".into());
    labels.insert("traefik.http.routers.x.rule".into(), "Host(`x.test`)".into());
    labels.insert("traefik.http.services.x.loadbalancer.server.port".into(), "8000".into());
    let f = findings(&st);
    assert!(f.errors.is_empty(), "{:#?}", f.errors);
    assert_eq!(f.advisories.len(), 1, "{:#?}", f.advisories);
}
