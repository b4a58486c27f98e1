//! Traefik's Docker labels (and Constellation's own `constellation.*` ones) of one
//! container → the dynamic configuration it contributes and the endpoints it serves,
//! with Traefik's defaults: a service named after the container, a router
//! `Host(<container>.<domain>)`, the only service bound to routers that name none, and
//! the single exposed port when no port label is set.

use std::collections::BTreeMap;
use std::net::IpAddr;

use constellation_proxy::dynamic::{self, HttpRouter, HttpService, LoadBalancer};
use constellation_proxy::DynamicConfig;

use crate::container::Container;
use crate::schema::TreeBuilder;

/// `traefik.enable`: route this container (unless exposed by default).
pub const LABEL_ENABLE: &str = "traefik.enable";
/// `traefik.docker.network`: the network whose address is used.
pub const LABEL_NETWORK: &str = "traefik.docker.network";
/// `constellation.retry-on-403=true`: the container's services fail over on 403 (WARP
/// egress blocked by the site).
pub const LABEL_RETRY_ON_403: &str = "constellation.retry-on-403";
/// `constellation.egress=<class>`: the egress the service needs (e.g. `warp`).
pub const LABEL_EGRESS: &str = "constellation.egress";

/// What the translation needs besides the container.
#[derive(Debug, Clone, Default)]
pub struct LabelSettings {
    /// Route containers without `traefik.enable=true`.
    pub exposed_by_default: bool,
    /// The `[docker] network`.
    pub network: Option<String>,
    /// Domain of default rules.
    pub domain: String,
}

/// Where one of the container's services is served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// HTTP service name.
    pub service: String,
    /// `scheme://ip:port` on the chosen network.
    pub url: String,
}

/// What one exposed container adds.
#[derive(Debug, Clone)]
pub struct Contribution {
    /// Routers, services (load balancers without servers: endpoints fill them) and
    /// middlewares from the labels.
    pub config: DynamicConfig,
    /// The container's endpoints, one per HTTP load-balancer service.
    pub endpoints: Vec<Endpoint>,
    /// The network the addresses were taken from.
    pub network: Option<String>,
    /// `constellation.egress`.
    pub egress: Option<String>,
}

/// Traefik's `Normalize`: anything but ASCII letters and digits becomes `-`.
pub fn normalize(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    s.trim_matches('-').to_string()
}

fn is_true(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("true")
}

/// The label's key relative to `traefik.`, when it is a Traefik label.
fn traefik_key(key: &str) -> Option<&str> {
    (key.len() > 8 && key[..8].eq_ignore_ascii_case("traefik.")).then(|| &key[8..])
}

/// Whether the container is exposed at all.
pub fn exposed(c: &Container, settings: &LabelSettings) -> bool {
    match c.labels.iter().find(|(k, _)| k.eq_ignore_ascii_case(LABEL_ENABLE)) {
        Some((_, v)) => is_true(v),
        None => settings.exposed_by_default,
    }
}

/// A per-service `loadbalancer.server.*` option (labels only; files list servers).
#[derive(Debug, Default, Clone)]
struct ServerLabels {
    port: Option<String>,
    scheme: Option<String>,
    url: Option<String>,
}

/// Translate an exposed container. `origin` names it in errors and conflict reports.
/// Errors name the label at fault; the container then contributes nothing.
pub fn contribution(c: &Container, settings: &LabelSettings, origin: &str) -> Result<Contribution, Vec<String>> {
    let mut errors = Vec::new();
    let mut tree = TreeBuilder::default();
    let mut servers: BTreeMap<String, ServerLabels> = BTreeMap::new();
    let mut has_tcp_udp = false;
    for (key, value) in &c.labels {
        let Some(rest) = traefik_key(key) else { continue };
        let lower = rest.to_ascii_lowercase();
        if lower == "enable" || lower.starts_with("docker.") {
            continue;
        }
        if lower.starts_with("tcp.") || lower.starts_with("udp.") {
            has_tcp_udp = true;
        }
        // http.services.<s>.loadbalancer.server.<opt>
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.len() == 6
            && parts[0].eq_ignore_ascii_case("http")
            && parts[1].eq_ignore_ascii_case("services")
            && parts[3].eq_ignore_ascii_case("loadbalancer")
            && parts[4].eq_ignore_ascii_case("server")
        {
            let entry = servers.entry(parts[2].to_string()).or_default();
            match parts[5].to_ascii_lowercase().as_str() {
                "port" => entry.port = Some(value.clone()),
                "scheme" => entry.scheme = Some(value.clone()),
                "url" => entry.url = Some(value.clone()),
                // Weight of the one server a container is: meaningful only across
                // containers, which Traefik sums the same way.
                "weight" => {}
                other => errors.push(format!("{origin}: label {key}: unknown server option \"{other}\"")),
            }
            continue;
        }
        if let Err(e) = tree.insert(rest, value) {
            errors.push(format!("{origin}: label {key}: {e}"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut config = match dynamic::from_value(tree.into_json(), origin) {
        Ok(cfg) => cfg,
        Err(e) => return Err(vec![format!("labels: {e}")]),
    };
    // A service named only by its server labels still exists.
    for sname in servers.keys() {
        if !config.http.services.contains_key(sname) {
            config.http.services.insert(sname.clone(), HttpService::LoadBalancer(LoadBalancer::default()));
        }
    }
    // Defaults, as Traefik's Docker provider applies them.
    let name = normalize(&c.name);
    let http_used = !config.http.routers.is_empty() || !config.http.services.is_empty() || !has_tcp_udp;
    if http_used && config.http.services.is_empty() {
        config.http.services.insert(name.clone(), HttpService::LoadBalancer(LoadBalancer::default()));
    }
    if http_used && config.http.routers.is_empty() {
        config.http.routers.insert(
            name.clone(),
            HttpRouter { rule: Some(format!("Host(`{name}.{}`)", settings.domain)), ..HttpRouter::default() },
        );
    }
    let only_service = (config.http.services.len() == 1).then(|| config.http.services.keys().next().cloned()).flatten();
    for (rname, router) in config.http.routers.iter_mut() {
        if router.service.is_none() {
            match &only_service {
                Some(s) => router.service = Some(s.clone()),
                None => errors.push(format!(
                    "{origin}: router {rname} names no service and the container defines {} services; set traefik.http.routers.{rname}.service",
                    config.http.services.len()
                )),
            }
        }
        if router.rule.is_none() {
            router.rule = Some(format!("Host(`{name}.{}`)", settings.domain));
        }
    }
    // Addresses.
    let (network, ip) = match address(c, settings) {
        Ok(x) => x,
        Err(e) => {
            errors.push(format!("{origin}: {e}"));
            (None, None)
        }
    };
    let retry_on_403 = c.labels.get(LABEL_RETRY_ON_403).is_some_and(|v| is_true(v));
    let mut endpoints = Vec::new();
    for (sname, service) in config.http.services.iter_mut() {
        let HttpService::LoadBalancer(lb) = service else { continue };
        if !lb.servers.is_empty() {
            errors.push(format!(
                "{origin}: http.services.{sname}: servers come from the container; use loadbalancer.server.port/scheme"
            ));
            continue;
        }
        lb.retry_on_403 |= retry_on_403;
        lb.provided = true;
        let opts = servers.get(sname).cloned().unwrap_or_default();
        if let Some(url) = opts.url {
            endpoints.push(Endpoint { service: sname.clone(), url });
            continue;
        }
        let port = match &opts.port {
            Some(p) => match p.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    errors.push(format!(
                        "{origin}: label traefik.http.services.{sname}.loadbalancer.server.port: \"{p}\" is not a port"
                    ));
                    continue;
                }
            },
            None => match c.exposed_tcp.as_slice() {
                [one] => *one,
                [] => {
                    errors.push(format!(
                        "{origin}: http.services.{sname}: the container exposes no port; set traefik.http.services.{sname}.loadbalancer.server.port"
                    ));
                    continue;
                }
                many => {
                    errors.push(format!(
                        "{origin}: http.services.{sname}: the container exposes {} ports ({many:?}); set traefik.http.services.{sname}.loadbalancer.server.port",
                        many.len()
                    ));
                    continue;
                }
            },
        };
        let scheme = opts.scheme.unwrap_or_else(|| "http".into());
        if let Some(ip) = ip {
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            endpoints.push(Endpoint { service: sname.clone(), url: format!("{scheme}://{host}:{port}") });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if let Err(errs) = config.validate(origin) {
        return Err(errs.into_iter().map(|e| e.to_string()).collect());
    }
    endpoints.sort();
    Ok(Contribution { config, endpoints, network, egress: c.labels.get(LABEL_EGRESS).cloned() })
}

/// The network and address the container is reached at.
fn address(c: &Container, settings: &LabelSettings) -> Result<(Option<String>, Option<IpAddr>), String> {
    let wanted = c
        .labels
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(LABEL_NETWORK))
        .map(|(_, v)| v.clone())
        .or_else(|| settings.network.clone().filter(|n| c.networks.contains_key(n)));
    let chosen = match wanted {
        Some(n) => n,
        None => match c.networks.keys().next() {
            Some(n) => n.clone(),
            None => return Err("the container is on no network; it cannot be reached".into()),
        },
    };
    match c.networks.get(&chosen) {
        Some(Some(ip)) => Ok((Some(chosen), Some(*ip))),
        Some(None) => Err(format!("the container has no address on network {chosen} (host or none network mode?)")),
        None => Err(format!(
            "the container is not on network {chosen} (label {LABEL_NETWORK} or [docker] network); it is on {:?}",
            c.networks.keys().collect::<Vec<_>>()
        )),
    }
}
