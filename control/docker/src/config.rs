//! The `[docker]` section: which engine, which containers, which network, and how the
//! restarter behaves.

use serde::{Deserialize, Serialize};

/// Default time between two full relists of the engine's containers, milliseconds
/// (events can be lost; a relist repairs what they missed).
pub const DEFAULT_RELIST_INTERVAL_MS: u64 = 300_000;
/// Default time between two attempts to reach an engine that did not answer, milliseconds.
pub const DEFAULT_RETRY_INTERVAL_MS: u64 = 2_000;
/// Default cap on restarts of one unhealthy container per hour.
pub const DEFAULT_RESTART_CAP_PER_HOUR: u32 = 5;
/// Default wait before restarting a container that turned unhealthy, milliseconds
/// (doubled for each restart of the same container within the hour).
pub const DEFAULT_RESTART_BACKOFF_MS: u64 = 5_000;

/// `[docker]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// `true`: the engine must be reachable (failures are errors, retried); `false`: off;
    /// unset: on when the endpoint's socket exists, and a socket that cannot be opened is
    /// a warning logged once (and retried). Default: unset.
    pub enabled: Option<bool>,
    /// Engine endpoint: a socket path, `unix://PATH`, or `tcp://HOST:PORT`.
    /// Default: `/var/run/docker.sock`.
    pub endpoint: String,
    /// Route containers without `traefik.enable=true` too (Traefik's `exposedByDefault`).
    /// Default: false.
    pub exposed_by_default: bool,
    /// Network whose address a container is reached at, unless its
    /// `traefik.docker.network` label says otherwise. Default: the container's only
    /// network (the first by name when it has several).
    pub network: Option<String>,
    /// Only containers matching this label expression are watched, e.g.
    /// ``Label(`constellation.node`, `a`) && !Label(`skip`, `true`)``
    /// (`Label`, `LabelRegex`, `!`, `&&`, `||`, parentheses). Default: all.
    pub constraints: Option<String>,
    /// Entry point through which other nodes reach this node's containers (bound to the
    /// mesh address). When unset, other nodes use the container addresses directly, which
    /// works only when those are routable between nodes. Default: unset.
    pub mesh_entrypoint: Option<String>,
    /// Full relist interval, milliseconds. Default: 300000.
    pub relist_interval_ms: u64,
    /// Reconnect interval while the engine does not answer, milliseconds. Default: 2000.
    pub retry_interval_ms: u64,
    /// Restarts of one `deunhealth.restart.on.unhealthy=true` container per hour at most.
    /// Default: 5.
    pub restart_cap_per_hour: u32,
    /// Wait before a restart, doubled per restart of the same container within the hour,
    /// milliseconds. Default: 5000.
    pub restart_backoff_ms: u64,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            endpoint: constellation_services::engine::DEFAULT_SOCKET.to_string(),
            exposed_by_default: false,
            network: None,
            constraints: None,
            mesh_entrypoint: None,
            relist_interval_ms: DEFAULT_RELIST_INTERVAL_MS,
            retry_interval_ms: DEFAULT_RETRY_INTERVAL_MS,
            restart_cap_per_hour: DEFAULT_RESTART_CAP_PER_HOUR,
            restart_backoff_ms: DEFAULT_RESTART_BACKOFF_MS,
        }
    }
}

impl DockerConfig {
    /// Whether the provider runs: explicitly enabled, or unset and the socket exists.
    pub fn active(&self) -> bool {
        match self.enabled {
            Some(on) => on,
            None => match constellation_services::engine::socket_path(&self.endpoint) {
                Some(path) => std::path::Path::new(path).exists(),
                None => true,
            },
        }
    }
}
