//! The route builder: static route files plus the healthy service instances of every
//! alive node → one Traefik dynamic configuration. Pure, so it is tested without a
//! cluster.

use std::collections::{BTreeMap, BTreeSet};

use constellation_proxy::dynamic::{HttpRouter, HttpService, LoadBalancer, Server};
use constellation_proxy::DynamicConfig;

/// A service instance somewhere in the cluster, announced healthy by its node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterInstance {
    /// Node that runs it.
    pub node: String,
    /// Service name.
    pub service: String,
    /// URL the proxy uses to reach it.
    pub url: String,
    /// Its egress need, when its traffic must leave through a gateway of its node.
    pub egress: Option<constellation_cluster::EgressNeed>,
    /// Kept out of the servers (its egress is down and the service refuses rather than
    /// fall back): the service still exists, so its router answers 503, not 404.
    pub withheld: bool,
}

impl ClusterInstance {
    /// An instance with no egress need.
    pub fn new(node: &str, service: &str, url: &str) -> Self {
        ClusterInstance { node: node.into(), service: service.into(), url: url.into(), egress: None, withheld: false }
    }
}

fn bare(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// Merge `instances` into `base`:
/// - a `loadBalancer` service of the same name gains the instances as servers (those it
///   already lists are not repeated);
/// - a service name no file defines becomes a `loadBalancer` of its instances;
/// - a service no router points at gets a default router `Host(`<service>.<domain>`)`;
/// - a `weighted`/`failover` service of that name is left alone (a warning says so);
/// - withheld instances are not servers, but their service exists (503 with none left);
/// - a service built for instances with an egress need fails over on 403 (`retryOn403`):
///   a blocked egress IP is what a 403 from them usually means.
///
/// Returns the configuration and warnings. Output is deterministic: the same inputs in
/// any order give the same document.
pub fn build(base: &DynamicConfig, instances: &[ClusterInstance], domain: &str) -> (DynamicConfig, Vec<String>) {
    let mut out = base.clone();
    let mut warnings = Vec::new();
    let mut by_service: BTreeMap<&str, (BTreeSet<&str>, bool)> = BTreeMap::new();
    for i in instances {
        let entry = by_service.entry(i.service.as_str()).or_default();
        if !i.withheld {
            entry.0.insert(i.url.as_str());
        }
        entry.1 |= i.egress.is_some();
    }
    for (service, (urls, egress)) in by_service {
        match out.http.services.get_mut(service) {
            Some(HttpService::LoadBalancer(lb)) => {
                for url in urls {
                    if !lb.servers.iter().any(|s| s.url == url) {
                        lb.servers.push(Server { url: url.to_string(), ..Server::default() });
                    }
                }
                lb.provided = true;
            }
            Some(other) => {
                warnings.push(format!(
                    "http.services.{service}: is a {} service; announced instances join only loadBalancer services",
                    other.kind()
                ));
                continue;
            }
            None => {
                let lb = LoadBalancer {
                    servers: urls.iter().map(|u| Server { url: u.to_string(), ..Server::default() }).collect(),
                    retry_on_403: egress,
                    provided: true,
                    ..LoadBalancer::default()
                };
                out.http.services.insert(service.to_string(), HttpService::LoadBalancer(lb));
            }
        }
        let routed = out.http.routers.values().any(|r| r.service.as_deref().map(bare) == Some(service));
        if !routed {
            let name =
                if out.http.routers.contains_key(service) { format!("{service}-cluster") } else { service.to_string() };
            out.http.routers.insert(
                name,
                HttpRouter {
                    rule: Some(format!("Host(`{service}.{domain}`)")),
                    service: Some(service.to_string()),
                    ..HttpRouter::default()
                },
            );
        }
    }
    (out, warnings)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use constellation_proxy::dynamic::{parse_str, Format};

    fn inst(node: &str, service: &str, url: &str) -> ClusterInstance {
        ClusterInstance::new(node, service, url)
    }

    #[test]
    fn instances_join_static_services_and_get_default_routers() {
        let base = parse_str(
            "http:\n  routers:\n    web:\n      rule: \"Host(`web.example`)\"\n      service: web\n  services:\n    web:\n      loadBalancer:\n        servers:\n          - url: \"http://10.0.0.1:80\"\n",
            Format::Yaml,
            "routes.yaml",
        )
        .unwrap();
        let instances = vec![
            inst("n2", "web", "http://10.0.0.2:80"),
            inst("n1", "web", "http://10.0.0.1:80"),
            inst("n3", "app", "http://10.0.0.3:8081"),
            inst("n2", "app", "http://10.0.0.2:8081"),
        ];
        let (cfg, warnings) = build(&base, &instances, "cluster.test");
        assert!(warnings.is_empty());
        let HttpService::LoadBalancer(web) = &cfg.http.services["web"] else { panic!() };
        assert_eq!(
            web.servers.iter().map(|s| s.url.as_str()).collect::<Vec<_>>(),
            ["http://10.0.0.1:80", "http://10.0.0.2:80"]
        );
        let HttpService::LoadBalancer(app) = &cfg.http.services["app"] else { panic!() };
        assert_eq!(app.servers.len(), 2);
        assert_eq!(cfg.http.routers["app"].rule.as_deref(), Some("Host(`app.cluster.test`)"));
        assert_eq!(cfg.http.routers.len(), 2, "web already has a router");
        cfg.validate("cluster").unwrap();
        // Order of inputs does not matter.
        let mut rev = instances.clone();
        rev.reverse();
        assert_eq!(build(&base, &rev, "cluster.test").0, cfg);
    }

    #[test]
    fn composite_services_are_left_alone_and_no_instances_means_no_change() {
        let base = parse_str(
            "http:\n  services:\n    a:\n      loadBalancer:\n        servers:\n          - url: \"http://10.0.0.1:80\"\n    w:\n      weighted:\n        services:\n          - name: a\n",
            Format::Yaml,
            "r.yaml",
        )
        .unwrap();
        let (cfg, warnings) = build(&base, &[inst("n1", "w", "http://10.0.0.9:1")], "localhost");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(matches!(cfg.http.services["w"], HttpService::Weighted(_)));
        assert_eq!(build(&base, &[], "localhost").0, base);
    }

    #[test]
    fn withheld_egress_instances_leave_an_empty_service_that_retries_403() {
        let need = constellation_cluster::EgressNeed { gateway: "warp".into(), fallback_all: false };
        let a = ClusterInstance { egress: Some(need.clone()), ..inst("n1", "scraper", "http://10.0.0.1:1") };
        let b = ClusterInstance { withheld: true, ..a.clone() };
        let (cfg, _) = build(&DynamicConfig::default(), std::slice::from_ref(&a), "localhost");
        let HttpService::LoadBalancer(lb) = &cfg.http.services["scraper"] else { panic!() };
        assert!(lb.retry_on_403 && lb.servers.len() == 1);
        let (cfg, _) = build(&DynamicConfig::default(), &[b], "localhost");
        let HttpService::LoadBalancer(lb) = &cfg.http.services["scraper"] else { panic!() };
        assert!(lb.servers.is_empty() && lb.provided, "the service stays, with no server");
        assert_eq!(cfg.http.routers["scraper"].rule.as_deref(), Some("Host(`scraper.localhost`)"));
        cfg.validate("cluster").unwrap();
    }
}
