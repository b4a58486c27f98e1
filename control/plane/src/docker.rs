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
            if !cfg.http.routers.is_empty() {
                parts.push((format!("docker mesh entry point of {}", self.node), cfg));
            }
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
                let inst = Instance { service: e.service.clone(), url, healthy };
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

    /// Status: this node's provider and every node's containers.
    pub fn status(&self, snap: &DockerSnapshot, view: Option<&ClusterView>, published: &Published) -> DockerStatus {
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
        let (parts, _) = self.local(snap);
        let mut all = parts;
        if let Some(view) = view {
            all.extend(self.remote_parts(view));
        }
        let (_, conflicts) = DynamicConfig::merge_shared(all);
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
