//! The Docker provider inside the plane: this node's container snapshot and the other
//! nodes' published container routes → the route builder's parts and instances, this
//! node's published state, and the status document.
//!
//! Cross-node reach: a node with `[docker] mesh_entrypoint` publishes its containers'
//! instances as that entry point's URL on its advertised (mesh) address, never the
//! container addresses, so nothing is published on a public interface. On that entry
//! point it routes a request by its `X-Constellation-Service` header to its own
//! containers only, which every docker router adds (a `headers` middleware), so a request
//! crosses at most one node and the labels' rules and middlewares run once, at the front
//! door. Without a mesh entry point, other nodes use the container addresses directly
//! (routable container networks, or one engine shared by test agents).

use std::collections::BTreeMap;

use constellation_cluster::{ClusterView, ContainerRecord, Instance};
use constellation_docker::{DockerSnapshot, Watched};
use constellation_proxy::dynamic::{self, Headers, HttpRouter, HttpService, Middleware, Server};
use constellation_proxy::DynamicConfig;

use crate::builder::ClusterInstance;
use crate::status::{ContainerStatus, DockerStatus};

/// Header naming the docker service a request is for, set by every docker router, read
/// by the mesh entry point's routers.
pub const SERVICE_HEADER: &str = "X-Constellation-Service";
/// Priority of the mesh entry point's routers (above any rule-length priority).
const MESH_PRIORITY: i64 = 1 << 40;

/// This node's mesh entry point: its name and the URL other nodes reach it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// Entry point name.
    pub entrypoint: String,
    /// `http://<advertised ip>:<port>`.
    pub url: String,
}

/// What this node publishes about its containers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    /// The containers' merged label configuration, as JSON (empty when none).
    pub routes: String,
    /// Instances as other nodes reach them.
    pub instances: Vec<Instance>,
    /// Containers, for status.
    pub containers: Vec<ContainerRecord>,
}

/// The plane's view of the Docker provider.
#[derive(Debug, Clone)]
pub struct DockerGlue {
    /// This node.
    pub node: String,
    /// Engine endpoint (for status).
    pub endpoint: String,
    /// Mesh entry point, when configured.
    pub mesh: Option<Mesh>,
    /// Every local entry point name.
    pub entrypoints: Vec<String>,
}

fn via_middleware(service: &str) -> String {
    format!("constellation-via-{service}")
}

impl DockerGlue {
    /// Make a docker part ready for this node: routers without entry points stay off the
    /// mesh entry point, and every router to a load balancer names its service in
    /// [`SERVICE_HEADER`].
    fn adapt(&self, cfg: &mut DynamicConfig) {
        let mut vias = BTreeMap::new();
        for router in cfg.http.routers.values_mut() {
            if let Some(mesh) = &self.mesh {
                if router.entry_points.is_empty() {
                    router.entry_points = self.entrypoints.iter().filter(|e| **e != mesh.entrypoint).cloned().collect();
                }
            }
            let Some(service) = router.service.clone() else { continue };
            if matches!(cfg.http.services.get(&service), Some(HttpService::LoadBalancer(_))) {
                let name = via_middleware(&service);
                if !router.middlewares.contains(&name) {
                    router.middlewares.push(name.clone());
                }
                vias.insert(name, service);
            }
        }
        // Active health checks of a container service reach other nodes' containers
        // through their mesh entry points too, so they name the service as well.
        for (name, service) in cfg.http.services.iter_mut() {
            if let HttpService::LoadBalancer(lb) = service {
                if let Some(hc) = lb.health_check.as_mut() {
                    hc.headers.insert(SERVICE_HEADER.to_string(), name.clone());
                }
            }
        }
        for (name, service) in vias {
            let headers = Headers {
                custom_request_headers: BTreeMap::from([(SERVICE_HEADER.to_string(), service)]),
                ..Headers::default()
            };
            cfg.http.middlewares.insert(name, Middleware::Headers(headers));
        }
    }

    fn origin(&self, w: &Watched) -> String {
        format!("docker container {} on {}", w.container.name, self.node)
    }

    /// Parts and instances from this node's snapshot, for its own route builder.
    pub fn local(&self, snap: &DockerSnapshot) -> (Vec<(String, DynamicConfig)>, Vec<ClusterInstance>) {
        let mut parts = Vec::new();
        let mut instances = Vec::new();
        let mut mesh_servers: BTreeMap<String, (HttpService, Vec<String>)> = BTreeMap::new();
        for w in &snap.containers {
            let Some(c) = &w.contribution else { continue };
            let mut cfg = c.config.clone();
            self.adapt(&mut cfg);
            parts.push((self.origin(w), cfg));
            for e in &c.endpoints {
                let entry = mesh_servers.entry(e.service.clone()).or_insert_with(|| {
                    (
                        c.config
                            .http
                            .services
                            .get(&e.service)
                            .cloned()
                            .unwrap_or_else(|| HttpService::LoadBalancer(dynamic::LoadBalancer::default())),
                        Vec::new(),
                    )
                });
                if w.container.running && w.container.health.routable() {
                    instances.push(ClusterInstance {
                        node: self.node.clone(),
                        service: e.service.clone(),
                        url: e.url.clone(),
                        egress: crate::warp::need_from_labels(&w.container.labels),
                        withheld: false,
                    });
                    entry.1.push(e.url.clone());
                }
            }
        }
        if let Some(mesh) = &self.mesh {
            let mut cfg = DynamicConfig::default();
            for (service, (template, urls)) in mesh_servers {
                let name = format!("constellation-mesh-{service}");
                let HttpService::LoadBalancer(mut lb) = template else { continue };
                lb.servers = urls.into_iter().map(|url| Server { url, ..Server::default() }).collect();
                lb.provided = true;
                cfg.http.services.insert(name.clone(), HttpService::LoadBalancer(lb));
                cfg.http.routers.insert(
                    name.clone(),
                    HttpRouter {
                        rule: Some(format!("Header(`{SERVICE_HEADER}`, `{service}`)")),
                        entry_points: vec![mesh.entrypoint.clone()],
                        priority: Some(MESH_PRIORITY),
                        service: Some(name),
                        ..HttpRouter::default()
                    },
                );
            }
            // A service this node no longer serves (its last replica just stopped, and
            // the others have not heard yet) is answered 503, never 404: the sender
            // fails over to another node's replica instead of passing on "not found".
            let none = "constellation-mesh-none".to_string();
            let lb = dynamic::LoadBalancer { provided: true, ..dynamic::LoadBalancer::default() };
            cfg.http.services.insert(none.clone(), HttpService::LoadBalancer(lb));
            cfg.http.routers.insert(
                none.clone(),
                HttpRouter {
                    rule: Some("PathPrefix(`/`)".into()),
                    entry_points: vec![mesh.entrypoint.clone()],
                    priority: Some(MESH_PRIORITY - 1),
                    service: Some(none),
                    ..HttpRouter::default()
                },
            );
            parts.push((format!("docker mesh entry point of {}", self.node), cfg));
        }
        (parts, instances)
    }

    /// What this node gossips about its containers.
    pub fn published(&self, snap: &DockerSnapshot) -> Published {
        let mut raw = Vec::new();
        let mut instances = Vec::new();
        let mut containers = Vec::new();
        for w in &snap.containers {
            let services: Vec<String> = w
                .contribution
                .as_ref()
                .map(|c| {
                    let mut s: Vec<String> = c.endpoints.iter().map(|e| e.service.clone()).collect();
                    s.dedup();
                    s
                })
                .unwrap_or_default();
            containers.push(ContainerRecord {
                name: w.container.name.clone(),
                image: w.container.image.clone(),
                state: w.container.state.clone(),
                health: w.container.health.as_str().to_string(),
                services,
                networks: w.container.networks.keys().cloned().collect(),
                error: (!w.errors.is_empty()).then(|| w.errors.join("; ")),
                restarts: w.restarts_last_hour,
            });
            let Some(c) = &w.contribution else { continue };
            raw.push((self.origin(w), c.config.clone()));
            for e in &c.endpoints {
                let url = self.mesh.as_ref().map(|m| m.url.clone()).unwrap_or_else(|| e.url.clone());
                let healthy = w.container.running && w.container.health.routable();
                let egress = crate::warp::need_from_labels(&w.container.labels);
                let inst = Instance { service: e.service.clone(), url, healthy, egress };
                // One instance per (service, url): with a mesh entry point all replicas
                // share the node's URL, healthy when any is.
                match instances.iter_mut().find(|i: &&mut Instance| i.service == inst.service && i.url == inst.url) {
                    Some(existing) => existing.healthy |= inst.healthy,
                    None => instances.push(inst),
                }
            }
        }
        let (merged, _) = DynamicConfig::merge_shared(raw);
        let routes =
            if merged.http.routers.is_empty() && merged.http.services.is_empty() && merged.tcp.routers.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&provided_json(&merged)).unwrap_or_default()
            };
        Published { routes, instances, containers }
    }

    /// Other live nodes' published container routes, adapted for this node.
    pub fn remote_parts(&self, view: &ClusterView) -> Vec<(String, DynamicConfig)> {
        let mut parts = Vec::new();
        for state in view.alive_states() {
            if state.name == self.node || state.provided_routes.is_empty() {
                continue;
            }
            let origin = format!("docker on {}", state.name);
            let value: serde_json::Value = match serde_json::from_str(&state.provided_routes) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(node = %state.name, error = %e, "a node's container routes are not JSON; ignored");
                    continue;
                }
            };
            match parse_provided(value, &origin) {
                Ok(mut cfg) => {
                    mark_provided(&mut cfg);
                    self.adapt(&mut cfg);
                    parts.push((origin, cfg));
                }
                Err(e) => {
                    tracing::warn!(node = %state.name, error = %e, "a node's container routes do not parse; ignored")
                }
            }
        }
        parts
    }

    /// Status: this node's provider, every node's containers, and the conflicts among
    /// `parts` (what the route builder is given).
    pub fn status(
        &self,
        snap: &DockerSnapshot,
        view: Option<&ClusterView>,
        published: &Published,
        parts: &[(String, DynamicConfig)],
    ) -> DockerStatus {
        let record = |node: &str, r: &ContainerRecord| ContainerStatus {
            node: node.to_string(),
            name: r.name.clone(),
            image: r.image.clone(),
            state: r.state.clone(),
            health: r.health.clone(),
            services: r.services.clone(),
            networks: r.networks.clone(),
            error: r.error.clone(),
            restarts: r.restarts,
        };
        let mut containers: Vec<ContainerStatus> = published.containers.iter().map(|r| record(&self.node, r)).collect();
        if let Some(view) = view {
            for state in view.alive_states().filter(|s| s.name != self.node) {
                containers.extend(state.containers.iter().map(|r| record(&state.name, r)));
            }
        }
        let (_, conflicts) = DynamicConfig::merge_shared(parts.to_vec());
        DockerStatus {
            endpoint: self.endpoint.clone(),
            connected: snap.connected,
            engine_version: snap.engine_version.clone(),
            last_error: snap.last_error.clone(),
            containers,
            conflicts: conflicts.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A node's container routes as published: the model's JSON (servers are not part of it;
/// instances carry them).
/// Constellation's extensions the Traefik JSON does not carry ride beside it.
fn provided_json(cfg: &DynamicConfig) -> serde_json::Value {
    let retry: Vec<&String> = cfg
        .http
        .services
        .iter()
        .filter(|(_, s)| matches!(s, HttpService::LoadBalancer(lb) if lb.retry_on_403))
        .map(|(n, _)| n)
        .collect();
    serde_json::json!({ "config": serde_json::to_value(cfg).unwrap_or_default(), "retryOn403": retry })
}

/// The inverse of [`provided_json`].
fn parse_provided(value: serde_json::Value, origin: &str) -> Result<DynamicConfig, String> {
    let retry: Vec<String> =
        value.get("retryOn403").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    let config = value.get("config").cloned().unwrap_or_default();
    let mut cfg = dynamic::from_value(config, origin).map_err(|e| e.to_string())?;
    for name in retry {
        if let Some(HttpService::LoadBalancer(lb)) = cfg.http.services.get_mut(&name) {
            lb.retry_on_403 = true;
        }
    }
    Ok(cfg)
}

/// Load balancers of container routes get their servers from instances.
fn mark_provided(cfg: &mut DynamicConfig) {
    for s in cfg.http.services.values_mut() {
        if let HttpService::LoadBalancer(lb) = s {
            lb.provided = true;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use constellation_cluster::{MemberState, MemberView, NodeState};
    use constellation_docker::{Container, Health, LabelSettings};

    fn watched(name: &str, ip: &str, health: Health) -> Watched {
        let labels = [
            ("traefik.enable", "true"),
            ("traefik.http.routers.app.rule", "Host(`app.test`)"),
            ("traefik.http.services.app.loadbalancer.server.port", "8000"),
            ("constellation.retry-on-403", "true"),
        ];
        let container = Container {
            id: format!("{name}-id"),
            name: name.into(),
            image: "img:1".into(),
            running: true,
            state: "running".into(),
            health,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            networks: BTreeMap::from([("net".to_string(), Some(ip.parse().unwrap()))]),
            exposed_tcp: Vec::new(),
            restart_count: 0,
        };
        let settings = LabelSettings { exposed_by_default: false, network: None, domain: "localhost".into() };
        let contribution = constellation_docker::contribution(&container, &settings, name).ok();
        Watched { container, exposed: true, contribution, errors: Vec::new(), restarts_last_hour: 0 }
    }

    /// A healthy and an unhealthy replica of `app`.
    fn two_replicas() -> DockerSnapshot {
        DockerSnapshot {
            connected: true,
            containers: vec![
                watched("a", "172.18.0.2", Health::Healthy),
                watched("b", "172.18.0.3", Health::Unhealthy),
            ],
            ..DockerSnapshot::default()
        }
    }

    fn glue(node: &str, mesh: bool) -> DockerGlue {
        DockerGlue {
            node: node.into(),
            endpoint: "/var/run/docker.sock".into(),
            mesh: mesh.then(|| Mesh { entrypoint: "mesh".into(), url: format!("http://10.9.0.{}:8081", node.len()) }),
            entrypoints: vec!["mesh".into(), "web".into()],
        }
    }

    #[test]
    fn local_parts_keep_routers_off_the_mesh_and_route_the_mesh_by_header() {
        let snap = two_replicas();
        let g = glue("n1", true);
        let (parts, instances) = g.local(&snap);
        let (merged, conflicts) = DynamicConfig::merge_shared(parts);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        let app = &merged.http.routers["app"];
        assert_eq!(app.entry_points, ["web"], "not served on the mesh entry point");
        assert_eq!(app.middlewares, ["constellation-via-app"]);
        let mesh = &merged.http.routers["constellation-mesh-app"];
        assert_eq!(mesh.entry_points, ["mesh"]);
        assert_eq!(mesh.rule.as_deref(), Some("Header(`X-Constellation-Service`, `app`)"));
        let HttpService::LoadBalancer(lb) = &merged.http.services["constellation-mesh-app"] else { panic!() };
        assert_eq!(lb.servers.iter().map(|s| s.url.as_str()).collect::<Vec<_>>(), ["http://172.18.0.2:8000"]);
        // Only the healthy container is a server, at its own address.
        assert_eq!(instances.len(), 1);
        assert_eq!(instances[0].url, "http://172.18.0.2:8000");
        merged.validate("test").unwrap();
    }

    #[test]
    fn what_a_node_publishes_reads_back_identically_on_another_node() {
        let snap = two_replicas();
        let n1 = glue("n1", true);
        let published = n1.published(&snap);
        // With a mesh entry point, other nodes see one instance: the node's mesh URL.
        assert_eq!(published.instances.len(), 1);
        assert_eq!(published.instances[0].url, "http://10.9.0.2:8081");
        assert!(published.instances[0].healthy, "healthy while any replica is");
        assert_eq!(published.containers.len(), 2);
        assert_eq!(published.containers[1].health, "unhealthy");

        let mut state = NodeState::new("n1");
        state.provided_routes = published.routes.clone();
        let member = |name: &str, is_self: bool| MemberView {
            name: name.into(),
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            cluster_addr: "127.0.0.1:2".parse().unwrap(),
            state: MemberState::Alive,
            incarnation: 1,
            roles: Vec::new(),
            state_version: Some(1),
            is_self,
        };
        let view = ClusterView {
            members: vec![member("n1", false), member("n2", true)],
            states: BTreeMap::from([("n1".to_string(), state)]),
        };
        let n2 = glue("n2", true);
        let remote = n2.remote_parts(&view);
        assert_eq!(remote.len(), 1);
        let HttpService::LoadBalancer(lb) = &remote[0].1.http.services["app"] else { panic!() };
        assert!(lb.retry_on_403 && lb.provided, "extensions survive the trip");
        // n2's own replica of the same service merges with n1's definition.
        let (local, _) = n2.local(&snap);
        let mut all = local;
        all.extend(remote);
        let (_, conflicts) = DynamicConfig::merge_shared(all);
        assert!(conflicts.is_empty(), "{conflicts:?}");
    }
}
