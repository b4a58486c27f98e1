//! A container as the provider sees it: identity, state, health, labels, networks and
//! exposed ports, taken from the engine's inspect answer.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use serde::{Deserialize, Serialize};

/// The HEALTHCHECK verdict of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No health check: its being up is all there is.
    None,
    /// Within the start period, no verdict yet: not routed.
    Starting,
    /// The last checks passed.
    Healthy,
    /// The check failed `retries` times in a row: not routed.
    Unhealthy,
}

impl Health {
    /// `none`, `starting`, `healthy` or `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::None => "none",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    /// Whether traffic may go to a running container with this verdict.
    pub fn routable(self) -> bool {
        matches!(self, Health::None | Health::Healthy)
    }
}

/// One container of the local engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Full id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Image reference it was created from.
    pub image: String,
    /// Running (not paused, not restarting).
    pub running: bool,
    /// Engine state: `running`, `exited`, `restarting`, …
    pub state: String,
    /// HEALTHCHECK verdict.
    pub health: Health,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Networks joined, by name, with the container's IPv4 (or IPv6) address there.
    pub networks: BTreeMap<String, Option<IpAddr>>,
    /// Exposed TCP ports (image `EXPOSE` and `--expose`), ascending.
    pub exposed_tcp: Vec<u16>,
    /// How often the engine restarted it.
    pub restart_count: i64,
}

impl Container {
    /// The container from an inspect answer; `None` when it lacks an id.
    pub fn from_inspect(info: &ContainerInspectResponse) -> Option<Container> {
        let id = info.id.clone()?;
        let name = info.name.clone().unwrap_or_default().trim_start_matches('/').to_string();
        let state = info.state.as_ref();
        let status = state.and_then(|s| s.status).unwrap_or(ContainerStateStatusEnum::EMPTY);
        let running = state.and_then(|s| s.running).unwrap_or(false)
            && !state.and_then(|s| s.paused).unwrap_or(false)
            && !state.and_then(|s| s.restarting).unwrap_or(false);
        let health = match state.and_then(|s| s.health.as_ref()).and_then(|h| h.status) {
            Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
            Some(HealthStatusEnum::STARTING) => Health::Starting,
            _ => Health::None,
        };
        let config = info.config.as_ref();
        let labels = config
            .and_then(|c| c.labels.clone())
            .map(|l| l.into_iter().collect::<BTreeMap<_, _>>())
            .unwrap_or_default();
        let image = config.and_then(|c| c.image.clone()).unwrap_or_default();
        let mut exposed_tcp: Vec<u16> = config
            .and_then(|c| c.exposed_ports.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
                (proto == "tcp").then(|| port.parse().ok()).flatten()
            })
            .collect();
        exposed_tcp.sort_unstable();
        exposed_tcp.dedup();
        let networks = info
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|nets| {
                nets.iter()
                    .map(|(name, ep)| {
                        let ip = ep
                            .ip_address
                            .as_deref()
                            .filter(|s| !s.is_empty())
                            .or(ep.global_ipv6_address.as_deref().filter(|s| !s.is_empty()))
                            .and_then(|s| s.parse().ok());
                        (name.clone(), ip)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Container {
            id,
            name,
            image,
            running,
            state: status.to_string(),
            health,
            labels,
            networks,
            exposed_tcp,
            restart_count: info.restart_count.unwrap_or(0),
        })
    }

    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}
