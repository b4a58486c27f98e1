//! `deploy`: reconcile the local engine to stack definitions. [`plan`] compares the
//! definitions with what runs (containers by name, their ownership label and spec hash)
//! and says, per container, `create`, `replace`, `remove` or `unchanged`; [`apply`]
//! carries the plan out: networks and volumes first, then containers in dependency
//! order, waiting for the health a dependant needs, and at the end for every started
//! container with a health check to be healthy.
//!
//! Ownership: only containers labelled `constellation.managed=true` are ever replaced or
//! removed, and only those of the stacks being deployed. A container without the label
//! that has a wanted name is an error, never replaced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerSummary, EndpointSettings, HealthConfig, HostConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{
    DependencyCondition, EnvValue, HealthCheck, Mount, MountSource, NamedVolume, Network, PortMapping, Protocol,
    Restart, Service, Stack, LABEL_MANAGED, LABEL_SERVICE, LABEL_SPEC_HASH, LABEL_STACK,
};

/// Default bound on waiting for one container to become healthy.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a container's health is polled while waiting.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// What a deploy may use besides the definitions.
#[derive(Clone)]
pub struct DeployOptions {
    /// Variables `${VAR}` in environment values expand from (normally the process's own).
    pub env: BTreeMap<String, String>,
    /// Definitions of networks services may name without their stack defining them (the
    /// catalogue's shared networks); a network in neither must already exist.
    pub shared_networks: Vec<Network>,
    /// Bound on waiting for one container to become healthy.
    pub health_timeout: Duration,
}

impl fmt::Debug for DeployOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The environment may hold secrets: names only.
        f.debug_struct("DeployOptions")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("shared_networks", &self.shared_networks)
            .field("health_timeout", &self.health_timeout)
            .finish()
    }
}

impl DeployOptions {
    /// Options reading variables from this process's environment.
    pub fn from_process_env() -> DeployOptions {
        DeployOptions {
            env: std::env::vars().collect(),
            shared_networks: Vec::new(),
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }
}

/// Why a deploy cannot be planned or carried out.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// An engine call failed.
    #[error("{action}: {message}")]
    Engine {
        /// What was being done, e.g. `create container web`.
        action: String,
        /// The engine's answer.
        message: String,
    },
    /// An environment value names a variable that is not set and has no default.
    #[error("stack {stack}: service {service}: environment variable {variable} is not set (and has no default)")]
    MissingVariable {
        /// Stack.
        stack: String,
        /// Service.
        service: String,
        /// The variable.
        variable: String,
    },
    /// An environment value's `${…}` is malformed.
    #[error("stack {stack}: service {service}: environment {key}: {message}")]
    BadValue {
        /// Stack.
        stack: String,
        /// Service.
        service: String,
        /// The variable being set.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An `env_file` cannot be read or parsed.
    #[error("stack {stack}: service {service}: env_file {}: {message}", file.display())]
    EnvFile {
        /// Stack.
        stack: String,
        /// Service.
        service: String,
        /// The file.
        file: PathBuf,
        /// What failed (with the line for a parse error).
        message: String,
    },
    /// A file-backed environment value cannot be read.
    #[error("stack {stack}: service {service}: environment {variable}: cannot read {}: {message}", file.display())]
    SecretFile {
        /// Stack.
        stack: String,
        /// Service.
        service: String,
        /// The variable.
        variable: String,
        /// The file.
        file: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// `depends_on` names a service the stack does not have.
    #[error("stack {stack}: service {service}: depends on `{dependency}`, which the stack does not define")]
    UnknownDependency {
        /// Stack.
        stack: String,
        /// Service.
        service: String,
        /// The missing service.
        dependency: String,
    },
    /// `depends_on` forms a cycle.
    #[error("stack {stack}: depends_on forms a cycle among: {}", services.join(", "))]
    Cycle {
        /// Stack.
        stack: String,
        /// The services left unordered.
        services: Vec<String>,
    },
    /// Two services would get the same container name.
    #[error("container name {container} is used by both {first} and {second}")]
    DuplicateContainer {
        /// The name.
        container: String,
        /// `stack/service` of the first.
        first: String,
        /// `stack/service` of the second.
        second: String,
    },
    /// A container that Constellation does not manage has a wanted name.
    #[error(
        "container {container} exists and is not managed by Constellation (no {LABEL_MANAGED}=true label): \
         remove or rename it, or set container_name"
    )]
    Foreign {
        /// The container.
        container: String,
    },
    /// A managed container with a wanted name belongs to another stack.
    #[error("container {container} belongs to stack {owner}, not {stack}")]
    OtherStack {
        /// The container.
        container: String,
        /// The stack deploying.
        stack: String,
        /// The stack its label names.
        owner: String,
    },
    /// A network that must exist (external, or defined nowhere) does not.
    #[error(
        "network {network} (used by {user}) does not exist and is not one deploy creates (external or not defined)"
    )]
    NetworkMissing {
        /// The network.
        network: String,
        /// `stack/service` using it.
        user: String,
    },
    /// An external volume does not exist.
    #[error("volume {volume} (stack {stack}) is external and does not exist")]
    VolumeMissing {
        /// The volume.
        volume: String,
        /// Stack.
        stack: String,
    },
    /// An image is neither present nor pullable.
    #[error("image {image} is not present and cannot be pulled: {message}")]
    ImagePull {
        /// The image reference.
        image: String,
        /// The engine's answer.
        message: String,
    },
    /// A container's health check says unhealthy.
    #[error("container {container} is unhealthy{}", needed_by.as_ref().map(|d| format!(" ({d} waits for it to be healthy)")).unwrap_or_default())]
    Unhealthy {
        /// The container.
        container: String,
        /// The dependant waiting, if any.
        needed_by: Option<String>,
    },
    /// A container did not become healthy in time.
    #[error("container {container} is not healthy after {seconds} s (health: {status})")]
    HealthTimeout {
        /// The container.
        container: String,
        /// How long was waited.
        seconds: u64,
        /// Its last health status.
        status: String,
    },
    /// A container stopped (or never ran) when it should run.
    #[error("container {container} is not running (state {state}){}", needed_by.as_ref().map(|d| format!("; {d} depends on it")).unwrap_or_default())]
    NotRunning {
        /// The container.
        container: String,
        /// Its state.
        state: String,
        /// The dependant waiting, if any.
        needed_by: Option<String>,
    },
    /// A dependant waits for health of a service that has no health check.
    #[error(
        "stack {stack}: service {service} waits for {dependency} to be healthy, but {dependency} has no health check"
    )]
    NoHealthCheck {
        /// Stack.
        stack: String,
        /// The dependant.
        service: String,
        /// The dependency.
        dependency: String,
    },
}

impl DeployError {
    /// Whether the definitions (rather than the engine or the machine) are at fault: the
    /// CLI exits 78 for these, 1 for the others.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            DeployError::MissingVariable { .. }
                | DeployError::BadValue { .. }
                | DeployError::EnvFile { .. }
                | DeployError::SecretFile { .. }
                | DeployError::UnknownDependency { .. }
                | DeployError::Cycle { .. }
                | DeployError::DuplicateContainer { .. }
                | DeployError::NoHealthCheck { .. }
        )
    }
}

fn engine(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DeployError {
    let action = action.into();
    move |e| DeployError::Engine { action, message: e.to_string() }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

// === the plan ===

/// What happens to one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Not there: created and started.
    Create,
    /// There, managed, but its definition changed or it is not running: removed, then
    /// created and started anew.
    Replace,
    /// Managed, of a deployed stack, but no longer defined: removed.
    Remove,
    /// There, running, from the same definition: left alone.
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Remove => "remove",
            Action::Unchanged => "unchanged",
        })
    }
}

/// One container's line of the plan; displays as `<action> <container>`.
#[derive(Debug, Clone)]
pub struct Step {
    /// What happens.
    pub action: Action,
    /// The container's name.
    pub container: String,
    /// Its stack.
    pub stack: String,
    /// Its service (`None` for a removed container whose service is gone).
    pub service: Option<String>,
    /// Why, for `replace`: `definition changed` or `not running (STATE)`.
    pub reason: Option<String>,
    existing: Option<String>,
    spec: Option<ContainerSpec>,
    depends_on: Vec<(String, DependencyCondition)>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.container)
    }
}

/// A network the deployed stacks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStep {
    /// Its definition.
    pub network: Network,
    /// The (first) stack using it; created networks carry it as their stack label.
    pub stack: String,
    /// Already in the engine (nothing to do).
    pub exists: bool,
}

/// A named volume the deployed stacks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStep {
    /// Its definition.
    pub volume: NamedVolume,
    /// The stack using it.
    pub stack: String,
    /// Already in the engine.
    pub exists: bool,
}

/// Everything a deploy would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Networks used, created in this order when missing.
    pub networks: Vec<NetworkStep>,
    /// Volumes used, created when missing.
    pub volumes: Vec<VolumeStep>,
    /// Images to pull before anything changes (not present in the engine).
    pub missing_images: Vec<String>,
    /// One step per container: removals first, then each stack's services in
    /// dependency order.
    pub steps: Vec<Step>,
}

/// What a container is made from, after expansion: hashed into [`LABEL_SPEC_HASH`], so a
/// change in any field (an env value included) replaces the container.
#[derive(Clone, Serialize)]
struct ContainerSpec {
    image: String,
    command: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    env: BTreeMap<String, String>,
    mounts: Vec<Mount>,
    networks: Vec<String>,
    alias: String,
    ports: Vec<PortMapping>,
    healthcheck: Option<HealthCheck>,
    restart: Restart,
    labels: BTreeMap<String, String>,
    cap_add: Vec<String>,
    sysctls: BTreeMap<String, String>,
    devices: Vec<String>,
}

impl fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Env values may be secrets: names only.
        f.debug_struct("ContainerSpec")
            .field("image", &self.image)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("networks", &self.networks)
            .finish_non_exhaustive()
    }
}

impl ContainerSpec {
    fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    fn has_healthcheck(&self) -> bool {
        self.healthcheck.as_ref().is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"))
    }
}

/// The services of `stack` in an order where each comes after what it depends on
/// (definition order otherwise).
pub fn start_order(stack: &Stack) -> Result<Vec<&Service>, DeployError> {
    for s in &stack.services {
        for d in &s.depends_on {
            if !stack.services.iter().any(|o| o.name == d.service) {
                return Err(DeployError::UnknownDependency {
                    stack: stack.name.clone(),
                    service: s.name.clone(),
                    dependency: d.service.clone(),
                });
            }
        }
    }
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < stack.services.len() {
        let next = stack.services.iter().find(|s| {
            !placed.contains(s.name.as_str()) && s.depends_on.iter().all(|d| placed.contains(d.service.as_str()))
        });
        match next {
            Some(s) => {
                placed.insert(&s.name);
                order.push(s);
            }
            None => {
                return Err(DeployError::Cycle {
                    stack: stack.name.clone(),
                    services: stack
                        .services
                        .iter()
                        .filter(|s| !placed.contains(s.name.as_str()))
                        .map(|s| s.name.clone())
                        .collect(),
                })
            }
        }
    }
    Ok(order)
}

/// Why `${…}` expansion failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// The variable is not set and has no default.
    Missing(String),
    /// `${` without `}`, or a bad name.
    Malformed(String),
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}`
/// (unset) and `$$` (a `$`) in `text`.
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(inner) = after.strip_prefix('{') {
            let close =
                inner.find('}').ok_or_else(|| ExpandError::Malformed(format!("unterminated `${{` in `{text}`")))?;
            let body = &inner[..close];
            let (name, default) = if let Some((n, d)) = body.split_once(":-") {
                (n, Some((d, true)))
            } else if let Some((n, d)) = body.split_once('-') {
                (n, Some((d, false)))
            } else {
                (body, None)
            };
            if !is_var_name(name) {
                return Err(ExpandError::Malformed(format!("`${{{body}}}` does not name a variable")));
            }
            match (env.get(name), default) {
                (Some(v), Some((d, true))) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(v),
                (None, Some((d, _))) => out.push_str(d),
                (None, None) => return Err(ExpandError::Missing(name.to_string())),
            }
            rest = &inner[close + 1..];
        } else {
            let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            let name = &after[..len];
            if is_var_name(name) {
                match env.get(name) {
                    Some(v) => out.push_str(v),
                    None => return Err(ExpandError::Missing(name.to_string())),
                }
                rest = &after[len..];
            } else {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One `KEY=VALUE` of an env file: key, value, and whether `${…}` in it expands.
pub type EnvFileEntry = (String, String, bool);

/// Parses an env file: `KEY=VALUE` lines, `#` comments, blank lines, an optional
/// `export ` prefix; a value in single quotes is taken literally, one in double quotes or
/// bare is expanded. Returns (key, value, expand?) or the 1-based line of an error.
pub fn parse_env_file(text: &str) -> Result<Vec<EnvFileEntry>, (usize, String)> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((n + 1, "expected KEY=VALUE".into()));
        };
        let key = key.trim();
        if !is_var_name(key) {
            return Err((n + 1, format!("`{key}` is not a variable name")));
        }
        let value = value.trim();
        let (value, expand) = if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
            (&value[1..value.len() - 1], false)
        } else if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            (&value[1..value.len() - 1], true)
        } else {
            (value, true)
        };
        out.push((key.to_string(), value.to_string(), expand));
    }
    Ok(out)
}

fn resolve_env(
    stack: &Stack,
    svc: &Service,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, DeployError> {
    let expand_err = |key: &str, e: ExpandError| match e {
        ExpandError::Missing(variable) => {
            DeployError::MissingVariable { stack: stack.name.clone(), service: svc.name.clone(), variable }
        }
        ExpandError::Malformed(message) => DeployError::BadValue {
            stack: stack.name.clone(),
            service: svc.name.clone(),
            key: key.to_string(),
            message,
        },
    };
    let mut out = BTreeMap::new();
    for file in &svc.env_files {
        let file_err = |message: String| DeployError::EnvFile {
            stack: stack.name.clone(),
            service: svc.name.clone(),
            file: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| file_err(e.to_string()))?;
        let entries = parse_env_file(&text).map_err(|(line, m)| file_err(format!("line {line}: {m}")))?;
        for (key, value, expand_it) in entries {
            let value = if expand_it { expand(&value, env).map_err(|e| expand_err(&key, e))? } else { value };
            out.insert(key, value);
        }
    }
    for (key, value) in &svc.environment {
        let value = match value {
            EnvValue::Value(text) => expand(text, env).map_err(|e| expand_err(key, e))?,
            EnvValue::File(path) => read_secret(path).map_err(|message| DeployError::SecretFile {
                stack: stack.name.clone(),
                service: svc.name.clone(),
                variable: key.clone(),
                file: path.clone(),
                message,
            })?,
        };
        out.insert(key.clone(), value);
    }
    Ok(out)
}

fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string())
}

fn spec_of(stack: &Stack, svc: &Service, env: BTreeMap<String, String>) -> ContainerSpec {
    let mut labels = svc.labels.clone();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_STACK.into(), stack.name.clone());
    labels.insert(LABEL_SERVICE.into(), svc.name.clone());
    labels.remove(LABEL_SPEC_HASH);
    ContainerSpec {
        image: svc.image.clone(),
        command: svc.command.clone(),
        entrypoint: svc.entrypoint.clone(),
        env,
        mounts: svc.volumes.clone(),
        networks: svc.networks.clone(),
        alias: svc.name.clone(),
        ports: svc.ports.clone(),
        healthcheck: svc.healthcheck.clone(),
        restart: svc.restart,
        labels,
        cap_add: svc.cap_add.clone(),
        sysctls: svc.sysctls.clone(),
        devices: svc.devices.clone(),
    }
}

fn summary_name(c: &ContainerSummary) -> Option<String> {
    c.names.as_ref()?.first().map(|n| n.trim_start_matches('/').to_string())
}

fn label<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels.as_ref()?.get(key).map(String::as_str)
}

/// Compares `stacks` with the engine and says what [`apply`] would do. Nothing changes.
pub async fn plan(docker: &Docker, stacks: &[&Stack], options: &DeployOptions) -> Result<Plan, DeployError> {
    let list = ListContainersOptionsBuilder::default().all(true).build();
    let containers = docker.list_containers(Some(list)).await.map_err(engine("list containers"))?;
    let by_name: HashMap<String, &ContainerSummary> =
        containers.iter().filter_map(|c| summary_name(c).map(|n| (n, c))).collect();

    let mut plan = Plan::default();
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    let mut service_steps = Vec::new();
    for stack in stacks {
        let order = start_order(stack)?;
        for svc in order {
            let name = svc.container_name(&stack.name);
            let owner = format!("{}/{}", stack.name, svc.name);
            if let Some(first) = wanted.insert(name.clone(), owner.clone()) {
                return Err(DeployError::DuplicateContainer { container: name, first, second: owner });
            }
            let env = resolve_env(stack, svc, &options.env)?;
            let mut spec = spec_of(stack, svc, env);
            // Labels may name deploy-time values too (the catalogue's `${DOMAIN}`).
            for (key, value) in spec.labels.iter_mut() {
                if value.contains('$') {
                    *value = expand(value, &options.env).map_err(|e| match e {
                        ExpandError::Missing(variable) => DeployError::MissingVariable {
                            stack: stack.name.clone(),
                            service: svc.name.clone(),
                            variable,
                        },
                        ExpandError::Malformed(message) => DeployError::BadValue {
                            stack: stack.name.clone(),
                            service: svc.name.clone(),
                            key: format!("label {key}"),
                            message,
                        },
                    })?;
                }
            }
            for d in &svc.depends_on {
                if d.condition == DependencyCondition::Healthy {
                    let dep = stack.services.iter().find(|s| s.name == d.service);
                    let checked = dep
                        .and_then(|s| s.healthcheck.as_ref())
                        .is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"));
                    if !checked {
                        return Err(DeployError::NoHealthCheck {
                            stack: stack.name.clone(),
                            service: svc.name.clone(),
                            dependency: d.service.clone(),
                        });
                    }
                }
            }
            let depends_on = svc
                .depends_on
                .iter()
                .filter_map(|d| {
                    let dep = stack.services.iter().find(|s| s.name == d.service)?;
                    Some((dep.container_name(&stack.name), d.condition))
                })
                .collect();
            let (action, reason, existing) = match by_name.get(&name) {
                None => (Action::Create, None, None),
                Some(c) => {
                    if label(c, LABEL_MANAGED) != Some("true") {
                        return Err(DeployError::Foreign { container: name });
                    }
                    let their_stack = label(c, LABEL_STACK).unwrap_or("");
                    if their_stack != stack.name {
                        return Err(DeployError::OtherStack {
                            container: name,
                            stack: stack.name.clone(),
                            owner: their_stack.to_string(),
                        });
                    }
                    let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                    let live = matches!(state.as_str(), "running" | "restarting" | "paused");
                    if label(c, LABEL_SPEC_HASH) != Some(spec.hash().as_str()) {
                        (Action::Replace, Some("definition changed".to_string()), c.id.clone())
                    } else if !live {
                        (Action::Replace, Some(format!("not running ({state})")), c.id.clone())
                    } else {
                        (Action::Unchanged, None, c.id.clone())
                    }
                }
            };
            service_steps.push(Step {
                action,
                container: name,
                stack: stack.name.clone(),
                service: Some(svc.name.clone()),
                reason,
                existing,
                spec: Some(spec),
                depends_on,
            });
        }
    }
    // Orphans: managed containers of a deployed stack that no service defines any more.
    let deployed: BTreeSet<&str> = stacks.iter().map(|s| s.name.as_str()).collect();
    let mut orphans: Vec<(String, &ContainerSummary)> = by_name
        .iter()
        .filter(|(name, c)| {
            label(c, LABEL_MANAGED) == Some("true")
                && label(c, LABEL_STACK).is_some_and(|s| deployed.contains(s))
                && !wanted.contains_key(*name)
        })
        .map(|(n, c)| (n.clone(), *c))
        .collect();
    orphans.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, c) in orphans {
        plan.steps.push(Step {
            action: Action::Remove,
            container: name,
            stack: label(c, LABEL_STACK).unwrap_or_default().to_string(),
            service: label(c, LABEL_SERVICE).map(str::to_string),
            reason: None,
            existing: c.id.clone(),
            spec: None,
            depends_on: Vec::new(),
        });
    }
    plan.steps.extend(service_steps);

    // Networks, in first-use order.
    for stack in stacks {
        for svc in &stack.services {
            for net in &svc.networks {
                if plan.networks.iter().any(|n| &n.network.name == net) {
                    continue;
                }
                let def = stack.networks.iter().chain(&options.shared_networks).find(|n| &n.name == net);
                let exists = match docker.inspect_network(net, None).await {
                    Ok(_) => true,
                    Err(e) if is_not_found(&e) => false,
                    Err(e) => return Err(engine(format!("inspect network {net}"))(e)),
                };
                let user = format!("{}/{}", stack.name, svc.name);
                // A shared network deploy may create (the catalogue's, `[docker] network`)
                // is created even where a compose file calls it external.
                let shared = options.shared_networks.iter().find(|n| &n.name == net && !n.external);
                let network = match (def, shared) {
                    (Some(d), _) if !d.external || exists => d.clone(),
                    _ if exists => {
                        Network { name: net.clone(), driver: String::new(), internal: false, external: true }
                    }
                    (_, Some(s)) => s.clone(),
                    _ => return Err(DeployError::NetworkMissing { network: net.clone(), user }),
                };
                plan.networks.push(NetworkStep { network, stack: stack.name.clone(), exists });
            }
        }
    }
    // Volumes.
    for stack in stacks {
        for vol in &stack.volumes {
            if plan.volumes.iter().any(|v| v.volume.name == vol.name) {
                continue;
            }
            let exists = match docker.inspect_volume(&vol.name).await {
                Ok(_) => true,
                Err(e) if is_not_found(&e) => false,
                Err(e) => return Err(engine(format!("inspect volume {}", vol.name))(e)),
            };
            if vol.external && !exists {
                return Err(DeployError::VolumeMissing { volume: vol.name.clone(), stack: stack.name.clone() });
            }
            plan.volumes.push(VolumeStep { volume: vol.clone(), stack: stack.name.clone(), exists });
        }
    }
    // Images the steps that create containers need.
    for step in &plan.steps {
        let Some(spec) = step.spec.as_ref().filter(|_| matches!(step.action, Action::Create | Action::Replace)) else {
            continue;
        };
        if plan.missing_images.contains(&spec.image) {
            continue;
        }
        match docker.inspect_image(&spec.image).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => plan.missing_images.push(spec.image.clone()),
            Err(e) => return Err(engine(format!("inspect image {}", spec.image))(e)),
        }
    }
    Ok(plan)
}

// === apply ===

/// What [`apply`] did, one line per step, in order (also reported as it happens).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// E.g. `network app_default created`, `created app-web`, `app-web healthy`.
    pub done: Vec<String>,
}

/// Carries `plan` out. `progress` receives each outcome line as it happens (the same
/// lines end up in the returned [`Outcome`]). Stops at the first failure.
pub async fn apply(
    docker: &Docker,
    plan: &Plan,
    options: &DeployOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, DeployError> {
    let mut outcome = Outcome::default();
    let mut say = |line: String| {
        progress(&line);
        outcome.done.push(line);
    };
    // Images first: a missing one fails the deploy before anything is torn down.
    for image in &plan.missing_images {
        pull(docker, image).await?;
        say(format!("image {image} pulled"));
    }
    for n in plan.networks.iter().filter(|n| !n.exists) {
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_STACK.to_string(), n.stack.clone()),
        ]);
        let req = NetworkCreateRequest {
            name: n.network.name.clone(),
            driver: Some(if n.network.driver.is_empty() { "bridge".into() } else { n.network.driver.clone() }),
            internal: Some(n.network.internal),
            labels: Some(labels),
            ..Default::default()
        };
        docker.create_network(req).await.map_err(engine(format!("create network {}", n.network.name)))?;
        say(format!("network {} created{}", n.network.name, if n.network.internal { " (internal)" } else { "" }));
    }
    for v in plan.volumes.iter().filter(|v| !v.exists) {
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_STACK.to_string(), v.stack.clone()),
        ]);
        let req = VolumeCreateRequest { name: Some(v.volume.name.clone()), labels: Some(labels), ..Default::default() };
        docker.create_volume(req).await.map_err(engine(format!("create volume {}", v.volume.name)))?;
        say(format!("volume {} created", v.volume.name));
    }
    for step in plan.steps.iter().filter(|s| s.action == Action::Remove) {
        remove(docker, step).await?;
        say(format!("removed {}", step.container));
    }
    let mut started = Vec::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for step in plan.steps.iter().filter(|s| s.action != Action::Remove) {
        for (dep, condition) in &step.depends_on {
            match condition {
                DependencyCondition::Started => running(docker, dep, Some(&step.container)).await?,
                DependencyCondition::Healthy => {
                    if !reported.contains(dep) {
                        wait_healthy(docker, dep, options.health_timeout, Some(&step.container)).await?;
                        say(format!("{dep} healthy"));
                        reported.insert(dep.clone());
                    }
                }
            }
        }
        let Some(spec) = step.spec.as_ref() else { continue };
        match step.action {
            Action::Unchanged | Action::Remove => continue,
            Action::Replace => remove(docker, step).await?,
            Action::Create => {}
        }
        create_and_start(docker, &step.container, spec).await?;
        let verb = if step.action == Action::Create { "created" } else { "replaced" };
        say(format!("{verb} {} (started)", step.container));
        if spec.has_healthcheck() {
            started.push(step.container.clone());
        }
    }
    for container in started.iter().filter(|c| !reported.contains(*c)) {
        wait_healthy(docker, container, options.health_timeout, None).await?;
        say(format!("{container} healthy"));
    }
    Ok(outcome)
}

/// `repo:tag` → (`repo`, `tag`), `latest` when there is none; digests stay whole.
fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

async fn pull(docker: &Docker, image: &str) -> Result<(), DeployError> {
    let (repo, tag) = split_reference(image);
    let mut builder = CreateImageOptionsBuilder::default().from_image(repo);
    if !tag.is_empty() {
        builder = builder.tag(tag);
    }
    let mut stream = docker.create_image(Some(builder.build()), None, None);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            return Err(DeployError::ImagePull { image: image.to_string(), message: e.to_string() });
        }
    }
    docker
        .inspect_image(image)
        .await
        .map(|_| ())
        .map_err(|e| DeployError::ImagePull { image: image.to_string(), message: e.to_string() })
}

async fn remove(docker: &Docker, step: &Step) -> Result<(), DeployError> {
    let id = step.existing.as_deref().unwrap_or(&step.container);
    let opts = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(engine(format!("remove container {}", step.container))(e)),
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn port_key(p: &PortMapping) -> String {
    let proto = match p.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!("{}/{proto}", p.container_port)
}

fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let binds = spec
        .mounts
        .iter()
        .map(|m| {
            let source = match &m.source {
                MountSource::Volume(name) => name.clone(),
                MountSource::Bind(path) => path.display().to_string(),
            };
            format!("{source}:{}{}", m.target, if m.read_only { ":ro" } else { "" })
        })
        .collect::<Vec<_>>();
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let binding = PortBinding {
            host_ip: p.host_ip.map(|ip| ip.to_string()),
            host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
        };
        port_bindings.entry(port_key(p)).or_insert_with(|| Some(Vec::new())).get_or_insert_with(Vec::new).push(binding);
    }
    let exposed: BTreeSet<String> = spec.ports.iter().map(port_key).collect();
    let restart = match spec.restart {
        Restart::No => RestartPolicyNameEnum::NO,
        Restart::Always => RestartPolicyNameEnum::ALWAYS,
        Restart::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        Restart::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
    };
    let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(h.test.clone()),
        interval: Some(nanos(h.interval)),
        timeout: Some(nanos(h.timeout)),
        retries: Some(i64::from(h.retries)),
        start_period: Some(nanos(h.start_period)),
        start_interval: None,
    });
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(LABEL_SPEC_HASH.into(), spec.hash());
    let first = spec.networks.first().cloned();
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then(|| exposed.into_iter().collect()),
        healthcheck,
        host_config: Some(HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            restart_policy: Some(RestartPolicy { name: Some(restart), maximum_retry_count: None }),
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            sysctls: (!spec.sysctls.is_empty()).then(|| spec.sysctls.clone().into_iter().collect()),
            devices: (!spec.devices.is_empty()).then(|| {
                spec.devices
                    .iter()
                    .map(|d| bollard::models::DeviceMapping {
                        path_on_host: Some(d.clone()),
                        path_in_container: Some(d.clone()),
                        cgroup_permissions: Some("rwm".into()),
                    })
                    .collect()
            }),
            network_mode: first.clone(),
            ..Default::default()
        }),
        networking_config: first.map(|net| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                net,
                EndpointSettings { aliases: Some(vec![spec.alias.clone()]), ..Default::default() },
            )])),
        }),
        ..Default::default()
    }
}

async fn create_and_start(docker: &Docker, name: &str, spec: &ContainerSpec) -> Result<(), DeployError> {
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    docker.create_container(Some(opts), create_body(spec)).await.map_err(engine(format!("create container {name}")))?;
    // The engine (API 1.41) takes one network at create; the others are joined before start.
    for net in spec.networks.iter().skip(1) {
        let req = NetworkConnectRequest {
            container: name.to_string(),
            endpoint_config: Some(EndpointSettings { aliases: Some(vec![spec.alias.clone()]), ..Default::default() }),
        };
        docker.connect_network(net, req).await.map_err(engine(format!("connect {name} to network {net}")))?;
    }
    docker.start_container(name, None).await.map_err(engine(format!("start container {name}")))
}

/// (running, state, health status) of a container.
async fn state(docker: &Docker, container: &str) -> Result<(bool, String, Option<String>), DeployError> {
    let info =
        docker.inspect_container(container, None).await.map_err(engine(format!("inspect container {container}")))?;
    let st = info.state.unwrap_or_default();
    let status = st.status.map(|s| s.to_string()).unwrap_or_default();
    let health = st.health.and_then(|h| h.status).map(|s| s.to_string());
    Ok((st.running.unwrap_or(false), status, health))
}

async fn running(docker: &Docker, container: &str, needed_by: Option<&str>) -> Result<(), DeployError> {
    let (running, state, _) = state(docker, container).await?;
    if running {
        Ok(())
    } else {
        Err(DeployError::NotRunning {
            container: container.to_string(),
            state,
            needed_by: needed_by.map(str::to_string),
        })
    }
}

async fn wait_healthy(
    docker: &Docker,
    container: &str,
    limit: Duration,
    needed_by: Option<&str>,
) -> Result<(), DeployError> {
    let deadline = Instant::now() + limit;
    loop {
        let (running, state, health) = state(docker, container).await?;
        match health.as_deref() {
            Some("healthy") => return Ok(()),
            Some("unhealthy") => {
                return Err(DeployError::Unhealthy {
                    container: container.to_string(),
                    needed_by: needed_by.map(str::to_string),
                })
            }
            _ if !running => {
                return Err(DeployError::NotRunning {
                    container: container.to_string(),
                    state,
                    needed_by: needed_by.map(str::to_string),
                })
            }
            status => {
                if Instant::now() >= deadline {
                    return Err(DeployError::HealthTimeout {
                        container: container.to_string(),
                        seconds: limit.as_secs(),
                        status: status.unwrap_or("none").to_string(),
                    });
                }
            }
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

#[cfg(test)]
mod tests;
