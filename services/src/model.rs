//! The typed model of a deployable stack: services, networks, volumes, health checks and
//! labels. Both the built-in catalogue and imported docker-compose files produce these
//! values; `deploy` turns them into Docker API calls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Label every container and network created by `deploy` carries (value `true`).
pub const LABEL_MANAGED: &str = "constellation.managed";
/// Label naming the stack a managed container belongs to.
pub const LABEL_STACK: &str = "constellation.stack";
/// Label naming the service (within its stack) a managed container runs.
pub const LABEL_SERVICE: &str = "constellation.service";
/// Label holding the hash of the definition a managed container was created from.
pub const LABEL_SPEC_HASH: &str = "constellation.spec-hash";

/// A group of services deployed together (a docker-compose project).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stack {
    /// Stack name, e.g. `metrics`; prefixes container names.
    pub name: String,
    /// One line saying what the stack is for.
    pub description: String,
    /// Where the definition came from: `catalogue` or a compose file path.
    pub origin: String,
    /// Networks the stack's services use (created when missing unless `external`).
    pub networks: Vec<Network>,
    /// Named volumes the stack's services use (created when missing unless `external`).
    pub volumes: Vec<NamedVolume>,
    /// The services, in definition order.
    pub services: Vec<Service>,
}

/// A Docker network a stack uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    /// The network's name in the engine (not prefixed).
    pub name: String,
    /// Driver, `bridge` unless said otherwise.
    pub driver: String,
    /// No route to the outside (Docker's `internal` flag).
    pub internal: bool,
    /// Must already exist; `deploy` never creates or removes it.
    pub external: bool,
}

/// A named Docker volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedVolume {
    /// The volume's name in the engine.
    pub name: String,
    /// Must already exist.
    pub external: bool,
}

/// One service: one container named `<stack>-<name>` (or `container_name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Service name, unique within the stack.
    pub name: String,
    /// Container name override; default `<stack>-<name>`.
    pub container_name: Option<String>,
    /// Image reference, e.g. `ghcr.io/goauthentik/server:2024.8`.
    pub image: String,
    /// Command (arguments); `None` keeps the image's.
    pub command: Option<Vec<String>>,
    /// Entrypoint; `None` keeps the image's.
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables, by name.
    pub environment: BTreeMap<String, EnvValue>,
    /// Files of `KEY=VALUE` lines read at deploy time (compose `env_file`).
    pub env_files: Vec<PathBuf>,
    /// Mounts.
    pub volumes: Vec<Mount>,
    /// Networks joined, by engine name, first one is where the container's address is taken.
    pub networks: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Docker HEALTHCHECK.
    pub healthcheck: Option<HealthCheck>,
    /// Restart policy.
    pub restart: Restart,
    /// Services started (and, for `Healthy`, healthy) before this one.
    pub depends_on: Vec<Dependency>,
    /// Container labels: Traefik routing, Uptime Kuma, Homepage, deunhealth.
    pub labels: BTreeMap<String, String>,
    /// Linux capabilities added (e.g. `NET_ADMIN` for the WARP client).
    pub cap_add: Vec<String>,
    /// Namespaced kernel parameters, e.g. `net.ipv4.ip_forward = 1`.
    pub sysctls: BTreeMap<String, String>,
    /// Host devices passed in, e.g. `/dev/net/tun`.
    pub devices: Vec<String>,
}

/// An environment variable's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvValue {
    /// Text, where `${VAR}` (or `${VAR:-default}`) is replaced at deploy time from the
    /// deploying process's environment. Secrets are written only as such references.
    Value(String),
    /// The content of a file read at deploy time (trailing newline removed), for secrets.
    File(PathBuf),
}

/// A mount into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// What is mounted.
    pub source: MountSource,
    /// Path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Source of a mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountSource {
    /// A named volume (one of the stack's `volumes`).
    Volume(String),
    /// A host path (absolute).
    Bind(PathBuf),
}

/// A published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    /// Host address to bind, `None` for all addresses.
    pub host_ip: Option<std::net::IpAddr>,
    /// Host port; `None` lets the engine choose.
    pub host_port: Option<u16>,
    /// Port inside the container.
    pub container_port: u16,
    /// Transport.
    pub protocol: Protocol,
}

/// Transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A Docker HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// Docker's test form: `["CMD", prog, args…]` or `["CMD-SHELL", "command line"]`.
    pub test: Vec<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive failures before `unhealthy`.
    pub retries: u32,
    /// Grace period after start during which failures do not count.
    pub start_period: Duration,
}

/// Restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Never restarted by the engine.
    No,
    /// Always restarted.
    Always,
    /// Restarted when it exits non-zero.
    OnFailure,
    /// Restarted unless stopped by hand (the catalogue's default).
    #[default]
    UnlessStopped,
}

/// An ordering constraint between two services of one stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// The service that must come first (name within the stack).
    pub service: String,
    /// What "first" means.
    pub condition: DependencyCondition,
}

/// How far a dependency must have come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    /// Its container is running.
    Started,
    /// Its health check says healthy.
    Healthy,
}

impl Service {
    /// A service running `image` with nothing else set (restart policy `restart`).
    pub fn new(name: &str, image: &str, restart: Restart) -> Service {
        Service {
            name: name.to_string(),
            container_name: None,
            image: image.to_string(),
            command: None,
            entrypoint: None,
            environment: BTreeMap::new(),
            env_files: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
            ports: Vec::new(),
            healthcheck: None,
            restart,
            depends_on: Vec::new(),
            labels: BTreeMap::new(),
            cap_add: Vec::new(),
            sysctls: BTreeMap::new(),
            devices: Vec::new(),
        }
    }

    /// The container's name: `container_name`, or `<stack>-<service>`.
    pub fn container_name(&self, stack: &str) -> String {
        self.container_name.clone().unwrap_or_else(|| format!("{stack}-{}", self.name))
    }
}
