//! Tests of the built-in catalogue: the brief's counts, every stack valid, and the
//! conventions the catalogue promises (labels, networks, secrets, ports).

use std::collections::{BTreeMap, BTreeSet};

use super::{networks, stacks, BACKEND, PUBLICNET, SECRETS_DIR, WARP_NET};
use crate::model::{EnvValue, MountSource, Restart, Service};
use crate::validate::{check, is_reference_only, is_secret_name};

const COUNTS: [(&str, usize); 11] = [
    ("coolify-proxy", 9),
    ("warp", 4),
    ("headscale", 2),
    ("authentik", 3),
    ("metrics", 9),
    ("unsend", 2),
    ("firecrawl", 4),
    ("wordpress", 2),
    ("llm", 4),
    ("stremio", 8),
    ("elfhosted", 10),
];

fn all_services() -> Vec<(String, Service)> {
    stacks().into_iter().flat_map(|st| st.services.into_iter().map(move |s| (st.name.clone(), s))).collect()
}

fn routed(s: &Service) -> bool {
    s.labels.get("traefik.enable").map(String::as_str) == Some("true")
}

#[test]
fn eleven_stacks_with_the_briefs_counts_and_57_services() {
    let stacks = stacks();
    let got: Vec<(&str, usize)> = stacks.iter().map(|s| (s.name.as_str(), s.services.len())).collect();
    assert_eq!(got, COUNTS.to_vec());
    assert_eq!(stacks.iter().map(|s| s.services.len()).sum::<usize>(), 57);
    assert!(stacks.iter().all(|s| s.origin == "catalogue" && !s.description.is_empty()));
}

#[test]
fn stacks_are_in_a_stable_order() {
    assert_eq!(stacks(), stacks());
}

#[test]
fn every_stack_passes_validation() {
    let problems: Vec<String> = stacks().iter().flat_map(check).map(|p| p.to_string()).collect();
    assert!(problems.is_empty(), "catalogue problems:\n{}", problems.join("\n"));
}

#[test]
fn the_three_networks() {
    let nets = networks();
    let summary: Vec<(&str, &str, bool, bool)> =
        nets.iter().map(|n| (n.name.as_str(), n.driver.as_str(), n.internal, n.external)).collect();
    assert_eq!(
        summary,
        vec![(BACKEND, "bridge", true, false), (PUBLICNET, "bridge", false, false), (WARP_NET, "bridge", false, false)]
    );
    for st in stacks() {
        for n in &st.networks {
            assert!(nets.contains(n), "{}: network {n:?} is not a catalogue network", st.name);
            assert!(st.services.iter().any(|s| s.networks.contains(&n.name)), "{}: {} unused", st.name, n.name);
        }
    }
}

#[test]
fn engine_wide_names_are_unique_across_the_catalogue() {
    let mut containers = BTreeSet::new();
    let mut routers = BTreeSet::new();
    let mut monitors = BTreeSet::new();
    let mut volume_owner: BTreeMap<String, String> = BTreeMap::new();
    for (stack, s) in all_services() {
        assert!(containers.insert(s.container_name(&stack)), "container {} twice", s.container_name(&stack));
        for key in s.labels.keys() {
            if let Some(r) = key.strip_prefix("traefik.http.routers.").and_then(|r| r.strip_suffix(".rule")) {
                assert!(routers.insert(r.to_owned()), "router {r} twice");
            }
            if let Some(m) = key.strip_prefix("kuma.").and_then(|m| m.strip_suffix(".http.name")) {
                assert!(monitors.insert(m.to_owned()), "kuma monitor {m} twice");
            }
        }
        for m in &s.volumes {
            if let MountSource::Volume(v) = &m.source {
                let owner = volume_owner.entry(v.clone()).or_insert_with(|| stack.clone());
                assert_eq!(owner, &stack, "volume {v} shared across stacks");
                assert!(v.starts_with(&format!("{stack}-")), "volume {v} not prefixed by {stack}");
            }
        }
    }
    assert!(routers.len() >= 25, "only {} routed services", routers.len());
}

#[test]
fn labels_follow_the_conventions() {
    for (stack, s) in all_services() {
        let who = format!("{stack}/{}", s.name);
        let l = &s.labels;
        assert_eq!(
            s.healthcheck.is_some(),
            l.get("deunhealth.restart.on.unhealthy").map(String::as_str) == Some("true"),
            "{who}: deunhealth label iff health check"
        );
        if routed(&s) {
            assert!(s.healthcheck.is_some(), "{who}: routed without a health check");
            assert!(s.networks.iter().any(|n| n == PUBLICNET), "{who}: routed but not on publicnet");
            let rule = l.iter().find(|(k, _)| k.ends_with(".rule")).map(|(_, v)| v.as_str()).unwrap_or("");
            assert!(rule.starts_with("Host(`") && rule.ends_with(".${DOMAIN}`)"), "{who}: rule {rule}");
        }
        if l.contains_key("homepage.name") {
            assert!(routed(&s), "{who}: on Homepage but not routed");
            for k in ["homepage.group", "homepage.icon", "homepage.href", "homepage.description"] {
                assert!(l.contains_key(k), "{who}: missing {k}");
            }
            assert!(l.keys().any(|k| k.starts_with("kuma.") && k.ends_with(".http.url")), "{who}: no kuma monitor");
        }
        if l.get("constellation.egress").map(String::as_str) == Some("warp") {
            assert!(s.networks.iter().any(|n| n == WARP_NET), "{who}: WARP egress but not on warp-nat-net");
        }
        assert_eq!(s.restart, Restart::UnlessStopped, "{who}: restart");
    }
}

#[test]
fn user_facing_services_are_on_homepage() {
    let on_homepage = all_services().iter().filter(|(_, s)| s.labels.contains_key("homepage.name")).count();
    assert!(on_homepage >= 25, "only {on_homepage} services on Homepage");
}

#[test]
fn databases_live_on_the_backend_only() {
    for (stack, s) in all_services() {
        let image = s.image.split(':').next().unwrap_or("");
        if ["postgres", "mariadb", "redis", "qdrant/qdrant"].contains(&image) {
            assert_eq!(s.networks, vec![BACKEND.to_owned()], "{stack}/{}", s.name);
            assert!(s.ports.is_empty(), "{stack}/{}: database publishes a port", s.name);
        }
    }
}

#[test]
fn secrets_are_references_or_files_under_the_secrets_dir() {
    let mut secrets = 0;
    for (stack, s) in all_services() {
        for (k, v) in &s.environment {
            match v {
                EnvValue::File(p) => {
                    assert!(p.starts_with(SECRETS_DIR), "{stack}/{}: {k} from {}", s.name, p.display());
                    secrets += 1;
                }
                EnvValue::Value(v) if is_secret_name(k) => {
                    assert!(is_reference_only(v) && !v.is_empty(), "{stack}/{}: {k}={v}", s.name);
                    secrets += 1;
                }
                EnvValue::Value(_) => {}
            }
        }
    }
    assert!(secrets >= 30, "only {secrets} secrets in the catalogue");
}

#[test]
fn published_ports_are_bound_to_explicit_addresses() {
    let published: Vec<String> = all_services()
        .iter()
        .flat_map(|(stack, s)| {
            s.ports.iter().map(move |p| {
                assert!(p.host_ip.is_some() && p.host_port.is_some(), "{stack}/{}: {p:?}", s.name);
                format!("{stack}/{}", s.name)
            })
        })
        .collect();
    // Traefik (two), the local HTTP proxy into WARP and Headscale's STUN port.
    assert_eq!(published.len(), 4, "{published:?}");
}

#[test]
fn images_are_pinned() {
    for (stack, s) in all_services() {
        let tag = s.image.rsplit('/').next().and_then(|l| l.split_once(':')).map(|(_, t)| t);
        assert!(tag.is_some_and(|t| !t.is_empty() && t != "latest"), "{stack}/{}: {}", s.name, s.image);
    }
}

#[test]
fn dependencies_wait_for_health_where_there_is_one() {
    for st in stacks() {
        for s in &st.services {
            for d in &s.depends_on {
                let target = st.services.iter().find(|t| t.name == d.service);
                let target = target.unwrap_or_else(|| panic!("{}/{}: {}", st.name, s.name, d.service));
                if target.healthcheck.is_some() {
                    assert_eq!(
                        d.condition,
                        crate::model::DependencyCondition::Healthy,
                        "{}/{} -> {}",
                        st.name,
                        s.name,
                        d.service
                    );
                }
            }
        }
    }
}

#[test]
fn http_probes_of_routed_services_hit_the_routed_port() {
    for (stack, s) in all_services().into_iter().filter(|(_, s)| routed(s)) {
        let port = s.labels.iter().find(|(k, _)| k.ends_with(".loadbalancer.server.port")).map(|(_, v)| v.clone());
        let port = port.unwrap_or_else(|| panic!("{stack}/{}: no port label", s.name));
        let test = s.healthcheck.as_ref().map(|h| h.test.join(" ")).unwrap_or_default();
        if test.contains("127.0.0.1") {
            let probed = test.contains(&format!("127.0.0.1:{port}")) || test.contains(&format!("127.0.0.1/{port}"));
            assert!(probed, "{stack}/{}: routed on {port}, probed with {test}", s.name);
        }
    }
}
