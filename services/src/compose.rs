//! docker-compose import: one compose file (the subset in `docs/services.md`) becomes one
//! [`Stack`]. Every key outside the subset is an error naming the file, line, column and
//! key path; nothing is silently dropped.
//!
//! serde_yaml's `Value` keeps no positions, so [`locate`] scans the text once for the
//! block-style keys and list items compose files are written with, and errors found while
//! walking the parsed value look their key path up there (falling back to the nearest
//! located parent, e.g. inside a flow mapping).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use crate::model::{
    Dependency, DependencyCondition, EnvValue, HealthCheck, Mount, MountSource, NamedVolume, Network, PortMapping,
    Protocol, Restart, Service, Stack,
};

/// Docker's defaults for a health check's timing, used when the file leaves one out.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_RETRIES: u32 = 3;

const TOP_KEYS: &[&str] = &["name", "services", "networks", "volumes", "version", "x-*"];
const SERVICE_KEYS: &[&str] = &[
    "image",
    "container_name",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "labels",
    "networks",
    "ports",
    "volumes",
    "healthcheck",
    "depends_on",
    "restart",
    "cap_add",
    "sysctls",
    "devices",
];
const NETWORK_KEYS: &[&str] = &["external", "name", "driver", "internal"];
const VOLUME_KEYS: &[&str] = &["external", "name"];
const HEALTH_KEYS: &[&str] = &["test", "interval", "timeout", "retries", "start_period", "disable"];
const PORT_KEYS: &[&str] = &["target", "published", "host_ip", "protocol", "mode"];
const MOUNT_KEYS: &[&str] = &["type", "source", "target", "read_only"];
const DEPENDS_KEYS: &[&str] = &["condition"];

/// How an imported file is placed in the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The network services without a `networks` key join (the agent config's
    /// `[docker] network`) instead of `<stack>_default`. Created when missing, like the
    /// stack's own networks, unless the file declares a `default` network itself.
    pub default_network: Option<String>,
}

/// Why a compose file cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        message: String,
    },
    /// The text is not YAML.
    #[error("{file}:{line}:{column}: not valid YAML: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A key outside the subset, or a value that does not fit.
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the key (or its nearest written parent).
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key path, e.g. `services.web.deploy`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads and imports the compose file at `path` (relative paths in it are resolved
/// against its directory).
pub fn load(path: &Path, options: &ImportOptions) -> Result<Stack, ComposeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ComposeError::Read { file: path.display().to_string(), message: e.to_string() })?;
    parse(&text, path, options)
}

/// Imports compose `text` as if read from `path`.
pub fn parse(text: &str, path: &Path, options: &ImportOptions) -> Result<Stack, ComposeError> {
    let file = path.display().to_string();
    let value: Value = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        ComposeError::Syntax { file: file.clone(), line, column, message: e.to_string() }
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let cx = Cx { file, positions: locate(text), base, options };
    cx.stack(&value)
}

// === the walk over the parsed value ===

struct Cx<'a> {
    file: String,
    positions: HashMap<String, (usize, usize)>,
    base: PathBuf,
    options: &'a ImportOptions,
}

type Result<T, E = ComposeError> = std::result::Result<T, E>;

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn supported(keys: &[&str]) -> String {
    format!("not supported (supported keys: {})", keys.join(", "))
}

/// A scalar as text (numbers and booleans as written by YAML's canonical form).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl Cx<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ComposeError {
        let mut probe = key.to_string();
        let (line, column) = loop {
            if let Some(p) = self.positions.get(&probe) {
                break *p;
            }
            match probe.rfind(['.', '[']) {
                Some(i) => probe.truncate(i),
                None => break (1, 1),
            }
        };
        ComposeError::Invalid { file: self.file.clone(), line, column, key: key.to_string(), message: message.into() }
    }

    /// The entries of a mapping, keys as text.
    fn mapping<'v>(&self, v: &'v Value, path: &str) -> Result<Vec<(String, &'v Value)>> {
        let Value::Mapping(m) = v else {
            return Err(self.err(path, format!("expected a mapping, found {}", kind(v))));
        };
        m.iter()
            .map(|(k, v)| match scalar(k) {
                Some(k) => Ok((k, v)),
                None => Err(self.err(path, format!("a key must be text, found {}", kind(k)))),
            })
            .collect()
    }

    fn string(&self, v: &Value, path: &str) -> Result<String> {
        scalar(v).ok_or_else(|| self.err(path, format!("expected a string, found {}", kind(v))))
    }

    fn boolean(&self, v: &Value, path: &str) -> Result<bool> {
        match v {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.err(path, format!("expected true or false, found {}", kind(v)))),
        }
    }

    /// A value taken literally: `$$` is a `$`; any other `$` would be interpolated by
    /// compose, which this importer does only in environment values.
    fn literal(&self, s: &str, path: &str) -> Result<String> {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' {
                if chars.peek() == Some(&'$') {
                    chars.next();
                } else {
                    return Err(self.err(
                        path,
                        "variable substitution is supported only in environment values (write $$ for a literal $)",
                    ));
                }
            }
            out.push(c);
        }
        Ok(out)
    }

    fn literal_value(&self, v: &Value, path: &str) -> Result<String> {
        let s = self.string(v, path)?;
        self.literal(&s, path)
    }

    /// A string or a list of strings (a string split like a shell would).
    fn words(&self, v: &Value, path: &str) -> Result<Option<Vec<String>>> {
        match v {
            Value::Null => Ok(None),
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.literal_value(item, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Value::String(s) => {
                let s = self.literal(s, path)?;
                shell_words(&s).map(Some).map_err(|m| self.err(path, m))
            }
            other => Err(self.err(path, format!("expected a string or a list, found {}", kind(other)))),
        }
    }

    fn stack(&self, root: &Value) -> Result<Stack> {
        let mut name = None;
        let mut services_v = None;
        let mut networks_v = None;
        let mut volumes_v = None;
        for (key, v) in self.mapping(root, "")? {
            match key.as_str() {
                "name" => name = Some(self.literal_value(v, "name")?),
                "services" => services_v = Some(v),
                "networks" => networks_v = Some(v),
                "volumes" => volumes_v = Some(v),
                // Obsolete in the compose specification and ignored by compose itself.
                "version" => {}
                // Extension fields hold anchors for reuse; compose ignores them.
                k if k.starts_with("x-") => {}
                _ => return Err(self.err(&key, supported(TOP_KEYS))),
            }
        }
        let Some(name) = name else {
            return Err(self.err("name", "the file must have a top-level `name:` (the stack's name)"));
        };
        if !valid_project_name(&name) {
            return Err(self.err(
                "name",
                format!("`{name}` is not a valid stack name (lowercase letters, digits, `-` and `_`, starting with a letter or digit)"),
            ));
        }

        let declared_networks = match networks_v {
            Some(v) if !v.is_null() => self.networks(v, &name)?,
            _ => BTreeMap::new(),
        };
        let declared_volumes = match volumes_v {
            Some(v) if !v.is_null() => self.volumes(v, &name)?,
            _ => BTreeMap::new(),
        };

        let Some(services_v) = services_v else {
            return Err(self.err("services", "the file must have a `services:` mapping"));
        };
        let entries = self.mapping(services_v, "services")?;
        let mut services = Vec::new();
        let mut used_networks: Vec<Network> = Vec::new();
        let mut used_volumes: Vec<NamedVolume> = Vec::new();
        for (svc_name, v) in &entries {
            let path = format!("services.{svc_name}");
            if !valid_service_name(svc_name) {
                return Err(self.err(&path, "a service name is letters, digits, `_`, `.` and `-`"));
            }
            let (service, nets, vols) =
                self.service(&name, svc_name, v, &path, &declared_networks, &declared_volumes)?;
            for n in nets {
                if !used_networks.iter().any(|u| u.name == n.name) {
                    used_networks.push(n);
                }
            }
            for vol in vols {
                if !used_volumes.iter().any(|u| u.name == vol.name) {
                    used_volumes.push(vol);
                }
            }
            services.push(service);
        }
        for s in &services {
            for (i, d) in s.depends_on.iter().enumerate() {
                if !services.iter().any(|o| o.name == d.service) {
                    let mapped = format!("services.{}.depends_on.{}", s.name, d.service);
                    let key = if self.positions.contains_key(&mapped) {
                        mapped
                    } else {
                        format!("services.{}.depends_on[{i}]", s.name)
                    };
                    return Err(self.err(&key, format!("no service `{}` in this file", d.service)));
                }
            }
        }
        Ok(Stack {
            description: format!("imported from {}", self.file),
            origin: self.file.clone(),
            name,
            networks: used_networks,
            volumes: used_volumes,
            services,
        })
    }

    /// Top-level `networks`: key → network (engine name resolved).
    fn networks(&self, v: &Value, stack: &str) -> Result<BTreeMap<String, Network>> {
        let mut out = BTreeMap::new();
        for (key, def) in self.mapping(v, "networks")? {
            let path = format!("networks.{key}");
            let mut net = Network { name: String::new(), driver: "bridge".into(), internal: false, external: false };
            let mut explicit_name = None;
            if !def.is_null() {
                for (k, val) in self.mapping(def, &path)? {
                    let p = join(&path, &k);
                    match k.as_str() {
                        "external" => net.external = self.boolean(val, &p)?,
                        "name" => explicit_name = Some(self.literal_value(val, &p)?),
                        "driver" => net.driver = self.literal_value(val, &p)?,
                        "internal" => net.internal = self.boolean(val, &p)?,
                        _ => return Err(self.err(&p, supported(NETWORK_KEYS))),
                    }
                }
            }
            net.name = match explicit_name {
                Some(n) => n,
                None if net.external => key.clone(),
                None => format!("{stack}_{key}"),
            };
            out.insert(key, net);
        }
        Ok(out)
    }

    /// Top-level `volumes`: key → volume (engine name resolved).
    fn volumes(&self, v: &Value, stack: &str) -> Result<BTreeMap<String, NamedVolume>> {
        let mut out = BTreeMap::new();
        for (key, def) in self.mapping(v, "volumes")? {
            let path = format!("volumes.{key}");
            let mut external = false;
            let mut explicit_name = None;
            if !def.is_null() {
                for (k, val) in self.mapping(def, &path)? {
                    let p = join(&path, &k);
                    match k.as_str() {
                        "external" => external = self.boolean(val, &p)?,
                        "name" => explicit_name = Some(self.literal_value(val, &p)?),
                        _ => return Err(self.err(&p, supported(VOLUME_KEYS))),
                    }
                }
            }
            let name = match explicit_name {
                Some(n) => n,
                None if external => key.clone(),
                None => format!("{stack}_{key}"),
            };
            out.insert(key, NamedVolume { name, external });
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn service(
        &self,
        stack: &str,
        name: &str,
        v: &Value,
        path: &str,
        networks: &BTreeMap<String, Network>,
        volumes: &BTreeMap<String, NamedVolume>,
    ) -> Result<(Service, Vec<Network>, Vec<NamedVolume>)> {
        let mut svc = Service::new(name, "", Restart::No);
        let mut image = None;
        let mut nets_used = Vec::new();
        let mut vols_used = Vec::new();
        let mut network_keys: Option<Vec<(String, String)>> = None;
        for (key, val) in self.mapping(v, path)? {
            let p = join(path, &key);
            match key.as_str() {
                "image" => image = Some(self.literal_value(val, &p)?),
                "container_name" => svc.container_name = Some(self.literal_value(val, &p)?),
                "command" => svc.command = self.words(val, &p)?,
                "entrypoint" => svc.entrypoint = self.words(val, &p)?,
                "environment" => svc.environment = self.environment(val, &p)?,
                "env_file" => svc.env_files = self.env_files(val, &p)?,
                "labels" => svc.labels = self.labels(val, &p)?,
                "networks" => network_keys = Some(self.service_networks(val, &p)?),
                "ports" => svc.ports = self.ports(val, &p)?,
                "volumes" => {
                    let Value::Sequence(items) = val else {
                        return Err(self.err(&p, format!("expected a list, found {}", kind(val))));
                    };
                    for (i, item) in items.iter().enumerate() {
                        let (mount, vol) = self.mount(item, &format!("{p}[{i}]"), volumes)?;
                        svc.volumes.push(mount);
                        vols_used.extend(vol);
                    }
                }
                "healthcheck" => svc.healthcheck = Some(self.healthcheck(val, &p)?),
                "depends_on" => svc.depends_on = self.depends_on(val, &p)?,
                "restart" => svc.restart = self.restart(val, &p)?,
                "cap_add" => svc.cap_add = self.plain_list(val, &p)?,
                // The same shapes as labels: a mapping or `key=value` items.
                "sysctls" => svc.sysctls = self.labels(val, &p)?,
                "devices" => {
                    let mut devices = Vec::new();
                    for (i, d) in self.plain_list(val, &p)?.into_iter().enumerate() {
                        // `PATH` or `PATH:PATH[:rwm]`: the model maps a device to itself.
                        let mut parts = d.split(':');
                        let host = parts.next().unwrap_or_default().to_string();
                        let inside = parts.next().unwrap_or(&host).to_string();
                        if host != inside || !host.starts_with('/') {
                            return Err(self.err(
                                &format!("{p}[{i}]"),
                                format!("`{d}`: only a device at the same absolute path inside is supported"),
                            ));
                        }
                        devices.push(host);
                    }
                    svc.devices = devices;
                }
                _ => return Err(self.err(&p, supported(SERVICE_KEYS))),
            }
        }
        svc.image = match image {
            Some(i) if !i.trim().is_empty() => i,
            _ => return Err(self.err(path, "`image` is required (building images is not supported)")),
        };
        let default_net = || match (networks.get("default"), &self.options.default_network) {
            (Some(n), _) => n.clone(),
            (None, Some(name)) => {
                Network { name: name.clone(), driver: "bridge".into(), internal: false, external: false }
            }
            (None, None) => {
                Network { name: format!("{stack}_default"), driver: "bridge".into(), internal: false, external: false }
            }
        };
        let chosen = match network_keys {
            Some(keys) => {
                let mut chosen = Vec::new();
                for (key, p) in keys {
                    let net = match networks.get(&key) {
                        Some(net) => net.clone(),
                        None if key == "default" => default_net(),
                        None => {
                            return Err(
                                self.err(&p, format!("network `{key}` is not declared under the top-level `networks`"))
                            )
                        }
                    };
                    chosen.push(net);
                }
                chosen
            }
            None => vec![default_net()],
        };
        for net in chosen {
            if !svc.networks.contains(&net.name) {
                svc.networks.push(net.name.clone());
                nets_used.push(net);
            }
        }
        Ok((svc, nets_used, vols_used))
    }

    fn environment(&self, v: &Value, path: &str) -> Result<BTreeMap<String, EnvValue>> {
        let mut out = BTreeMap::new();
        match v {
            Value::Null => {}
            Value::Mapping(_) => {
                for (k, val) in self.mapping(v, path)? {
                    let p = join(path, &k);
                    let value = match val {
                        // `KEY:` without a value passes the deployer's own variable.
                        Value::Null => format!("${{{k}}}"),
                        other => self.string(other, &p)?,
                    };
                    check_env_name(&k).map_err(|m| self.err(&p, m))?;
                    out.insert(k, EnvValue::Value(value));
                }
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    let entry = self.string(item, &p)?;
                    let (k, value) = match entry.split_once('=') {
                        Some((k, val)) => (k.to_string(), val.to_string()),
                        None => (entry.clone(), format!("${{{entry}}}")),
                    };
                    check_env_name(&k).map_err(|m| self.err(&p, m))?;
                    out.insert(k, EnvValue::Value(value));
                }
            }
            other => return Err(self.err(path, format!("expected a mapping or a list, found {}", kind(other)))),
        }
        Ok(out)
    }

    fn env_files(&self, v: &Value, path: &str) -> Result<Vec<PathBuf>> {
        let items: Vec<(String, &Value)> = match v {
            Value::Sequence(items) => items.iter().enumerate().map(|(i, x)| (format!("{path}[{i}]"), x)).collect(),
            other => vec![(path.to_string(), other)],
        };
        items
            .into_iter()
            .map(|(p, x)| {
                let s = self.literal_value(x, &p)?;
                let file = PathBuf::from(&s);
                Ok(if file.is_absolute() { file } else { self.base.join(file) })
            })
            .collect()
    }

    /// A list of plain strings (`cap_add`, `devices`).
    fn plain_list(&self, v: &Value, path: &str) -> Result<Vec<String>> {
        let Value::Sequence(items) = v else {
            return Err(self.err(path, format!("expected a list, found {}", kind(v))));
        };
        items.iter().enumerate().map(|(i, item)| self.literal_value(item, &format!("{path}[{i}]"))).collect()
    }

    fn labels(&self, v: &Value, path: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        match v {
            Value::Null => {}
            Value::Mapping(_) => {
                for (k, val) in self.mapping(v, path)? {
                    let p = join(path, &k);
                    let value = if val.is_null() { String::new() } else { self.literal_value(val, &p)? };
                    out.insert(self.literal(&k, &p)?, value);
                }
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    let entry = self.literal_value(item, &p)?;
                    let (k, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
                    out.insert(k.to_string(), value.to_string());
                }
            }
            other => return Err(self.err(path, format!("expected a mapping or a list, found {}", kind(other)))),
        }
        Ok(out)
    }

    /// Service `networks`: the keys, each with the path it was written at.
    fn service_networks(&self, v: &Value, path: &str) -> Result<Vec<(String, String)>> {
        match v {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let p = format!("{path}[{i}]");
                    Ok((self.string(item, &p)?, p))
                })
                .collect(),
            Value::Mapping(_) => self
                .mapping(v, path)?
                .into_iter()
                .map(|(k, val)| {
                    let p = join(path, &k);
                    match val {
                        Value::Null => Ok((k, p)),
                        Value::Mapping(m) if m.is_empty() => Ok((k, p)),
                        Value::Mapping(m) => {
                            let first = m.keys().next().and_then(scalar).unwrap_or_default();
                            Err(self.err(&join(&p, &first), "per-network options are not supported"))
                        }
                        other => Err(self.err(&p, format!("expected nothing, found {}", kind(other)))),
                    }
                })
                .collect(),
            other => Err(self.err(path, format!("expected a list or a mapping, found {}", kind(other)))),
        }
    }

    fn ports(&self, v: &Value, path: &str) -> Result<Vec<PortMapping>> {
        let Value::Sequence(items) = v else {
            return Err(self.err(path, format!("expected a list, found {}", kind(v))));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let p = format!("{path}[{i}]");
                match item {
                    Value::Mapping(_) => self.long_port(item, &p),
                    other => {
                        let s = self.literal_value(other, &p)?;
                        parse_port(&s).map_err(|m| self.err(&p, m))
                    }
                }
            })
            .collect()
    }

    fn long_port(&self, v: &Value, path: &str) -> Result<PortMapping> {
        let mut port = PortMapping { host_ip: None, host_port: None, container_port: 0, protocol: Protocol::Tcp };
        let mut target = false;
        for (k, val) in self.mapping(v, path)? {
            let p = join(path, &k);
            let s = self.literal_value(val, &p)?;
            match k.as_str() {
                "target" => {
                    port.container_port = parse_port_number(&s).map_err(|m| self.err(&p, m))?;
                    target = true;
                }
                "published" => port.host_port = Some(parse_port_number(&s).map_err(|m| self.err(&p, m))?),
                "host_ip" => {
                    port.host_ip = Some(s.parse().map_err(|_| self.err(&p, format!("`{s}` is not an IP address")))?)
                }
                "protocol" => port.protocol = parse_protocol(&s).map_err(|m| self.err(&p, m))?,
                "mode" if s == "host" => {}
                "mode" => return Err(self.err(&p, "only `mode: host` is supported")),
                _ => return Err(self.err(&p, supported(PORT_KEYS))),
            }
        }
        if !target {
            return Err(self.err(path, "`target` (the container's port) is required"));
        }
        Ok(port)
    }

    /// One service `volumes` entry; the named volume it uses, if any.
    fn mount(
        &self,
        v: &Value,
        path: &str,
        volumes: &BTreeMap<String, NamedVolume>,
    ) -> Result<(Mount, Option<NamedVolume>)> {
        let (source, target, read_only) = match v {
            Value::Mapping(_) => {
                let mut typ = None;
                let mut source = None;
                let mut target = None;
                let mut read_only = false;
                for (k, val) in self.mapping(v, path)? {
                    let p = join(path, &k);
                    match k.as_str() {
                        "type" => typ = Some((self.literal_value(val, &p)?, p)),
                        "source" => source = Some(self.literal_value(val, &p)?),
                        "target" => target = Some(self.literal_value(val, &p)?),
                        "read_only" => read_only = self.boolean(val, &p)?,
                        _ => return Err(self.err(&p, supported(MOUNT_KEYS))),
                    }
                }
                if let Some((t, p)) = &typ {
                    if t != "volume" && t != "bind" {
                        return Err(self.err(p, format!("type `{t}` is not supported (volume or bind)")));
                    }
                }
                let (Some(source), Some(target)) = (source, target) else {
                    return Err(self.err(path, "`source` and `target` are required"));
                };
                (source, target, read_only)
            }
            other => {
                let s = self.literal_value(other, path)?;
                let parts: Vec<&str> = s.split(':').collect();
                match parts.as_slice() {
                    [_] => {
                        return Err(self.err(path, "anonymous volumes are not supported: name a volume (`name:/path`)"))
                    }
                    [src, dst] => (src.to_string(), dst.to_string(), false),
                    [src, dst, "ro"] => (src.to_string(), dst.to_string(), true),
                    [src, dst, "rw"] => (src.to_string(), dst.to_string(), false),
                    [_, _, opt] => {
                        return Err(self.err(path, format!("mount option `{opt}` is not supported (ro or rw)")));
                    }
                    _ => return Err(self.err(path, "expected SOURCE:TARGET[:ro]")),
                }
            }
        };
        if !target.starts_with('/') {
            return Err(self.err(path, format!("the target `{target}` must be an absolute path")));
        }
        if source.starts_with('/') || source.starts_with('.') {
            let src = PathBuf::from(&source);
            let abs = if src.is_absolute() { src } else { self.base.join(src) };
            let abs = normalize(&abs);
            return Ok((Mount { source: MountSource::Bind(abs), target, read_only }, None));
        }
        if source.starts_with('~') {
            return Err(self.err(path, "`~` in a bind source is not supported: write the path out"));
        }
        let Some(vol) = volumes.get(&source) else {
            return Err(self.err(path, format!("volume `{source}` is not declared under the top-level `volumes`")));
        };
        Ok((Mount { source: MountSource::Volume(vol.name.clone()), target, read_only }, Some(vol.clone())))
    }

    fn healthcheck(&self, v: &Value, path: &str) -> Result<HealthCheck> {
        let mut check = HealthCheck {
            test: Vec::new(),
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            retries: DEFAULT_HEALTH_RETRIES,
            start_period: Duration::ZERO,
        };
        let mut disabled = false;
        for (k, val) in self.mapping(v, path)? {
            let p = join(path, &k);
            match k.as_str() {
                "test" => {
                    check.test = match val {
                        Value::Sequence(_) => self.words(val, &p)?.unwrap_or_default(),
                        other => vec!["CMD-SHELL".to_string(), self.literal_value(other, &p)?],
                    };
                    match check.test.first().map(String::as_str) {
                        Some("CMD" | "CMD-SHELL") if check.test.len() > 1 => {}
                        Some("NONE") => {}
                        _ => {
                            return Err(
                                self.err(&p, "a test list starts with CMD, CMD-SHELL or NONE and names a command")
                            )
                        }
                    }
                }
                "interval" => check.interval = self.duration(val, &p)?,
                "timeout" => check.timeout = self.duration(val, &p)?,
                "start_period" => check.start_period = self.duration(val, &p)?,
                "retries" => {
                    check.retries = match val {
                        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                        _ => None,
                    }
                    .ok_or_else(|| self.err(&p, "expected a whole number"))?;
                }
                "disable" => disabled = self.boolean(val, &p)?,
                _ => return Err(self.err(&p, supported(HEALTH_KEYS))),
            }
        }
        if disabled {
            check.test = vec!["NONE".to_string()];
        }
        if check.test.is_empty() {
            return Err(self.err(path, "`test` is required (or `disable: true`)"));
        }
        Ok(check)
    }

    fn duration(&self, v: &Value, path: &str) -> Result<Duration> {
        let s = self.string(v, path)?;
        parse_duration(&s).map_err(|m| self.err(path, m))
    }

    fn depends_on(&self, v: &Value, path: &str) -> Result<Vec<Dependency>> {
        match v {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let service = self.string(item, &format!("{path}[{i}]"))?;
                    Ok(Dependency { service, condition: DependencyCondition::Started })
                })
                .collect(),
            Value::Mapping(_) => {
                let mut out = Vec::new();
                for (service, def) in self.mapping(v, path)? {
                    let p = join(path, &service);
                    let mut condition = DependencyCondition::Started;
                    if !def.is_null() {
                        for (k, val) in self.mapping(def, &p)? {
                            let kp = join(&p, &k);
                            match k.as_str() {
                                "condition" => {
                                    condition = match self.string(val, &kp)?.as_str() {
                                        "service_started" => DependencyCondition::Started,
                                        "service_healthy" => DependencyCondition::Healthy,
                                        other => {
                                            return Err(self.err(
                                                &kp,
                                                format!(
                                            "condition `{other}` is not supported (service_started or service_healthy)"
                                        ),
                                            ))
                                        }
                                    }
                                }
                                _ => return Err(self.err(&kp, supported(DEPENDS_KEYS))),
                            }
                        }
                    }
                    out.push(Dependency { service, condition });
                }
                Ok(out)
            }
            other => Err(self.err(path, format!("expected a list or a mapping, found {}", kind(other)))),
        }
    }

    fn restart(&self, v: &Value, path: &str) -> Result<Restart> {
        let s = match v {
            Value::Bool(false) => "no".to_string(),
            other => self.string(other, path)?,
        };
        match s.as_str() {
            "no" => Ok(Restart::No),
            "always" => Ok(Restart::Always),
            "on-failure" => Ok(Restart::OnFailure),
            "unless-stopped" => Ok(Restart::UnlessStopped),
            other => {
                Err(self.err(path, format!("`{other}` is not supported (no, always, on-failure, unless-stopped)")))
            }
        }
    }
}

fn valid_project_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        Err(format!("`{name}` is not a variable name"))
    } else {
        Ok(())
    }
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Splits a command line like a POSIX shell would, for simple quoting: single quotes,
/// double quotes (with `\"`, `\\`, `\$` escapes) and backslash escapes outside quotes.
pub fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// A compose duration: `1s`, `1m30s`, `500ms`, `1.5h` (units h, m, s, ms, us, ns).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (e.g. 1s, 1m30s, 500ms)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

fn parse_port_number(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ if s.contains('-') => Err(format!("port ranges (`{s}`) are not supported")),
        _ => Err(format!("`{s}` is not a port (1-65535)")),
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(format!("protocol `{other}` is not supported (tcp or udp)")),
    }
}

/// A short-form port: `80`, `8080:80`, `127.0.0.1:8080:80`, `127.0.0.1::80`, `[::1]:8080:80`,
/// each with an optional `/tcp` or `/udp`.
pub fn parse_port(text: &str) -> Result<PortMapping, String> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((spec, proto)) => (spec, parse_protocol(proto)?),
        None => (text, Protocol::Tcp),
    };
    let (ip, rest) = if let Some(after) = spec.strip_prefix('[') {
        let (ip, rest) = after.split_once("]:").ok_or_else(|| format!("`{text}`: unterminated `[` address"))?;
        (Some(ip), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => (Some(parts[0]), &spec[parts[0].len() + 1..]),
            _ => return Err(format!("`{text}` is not a port mapping ([IP:][HOST:]CONTAINER[/PROTOCOL])")),
        }
    };
    let host_ip = match ip {
        Some(ip) => Some(ip.parse().map_err(|_| format!("`{ip}` is not an IP address"))?),
        None => None,
    };
    let (host_port, container) = match rest.split_once(':') {
        Some(("", c)) => (None, c),
        Some((h, c)) => (Some(parse_port_number(h)?), c),
        None => (None, rest),
    };
    Ok(PortMapping { host_ip, host_port, container_port: parse_port_number(container)?, protocol })
}

// === the locator ===

/// Key paths (`services.web.ports[0]`) → the 1-based line and column they are written at,
/// for block-style YAML (indented mappings and `- ` lists). Keys inside flow collections
/// (`{…}`, `[…]`) are not located; lookups fall back to the enclosing key.
pub fn locate(text: &str) -> HashMap<String, (usize, usize)> {
    struct Frame {
        indent: usize,
        path: String,
        item: bool,
        items: usize,
    }
    let mut out = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root_items = 0usize;
    // The indentation of the key (or item) owning a block scalar being skipped.
    let mut block_owner: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let indent = line.len() - line.trim_start_matches(' ').len();
        let mut rest = &line[indent..];
        if rest.trim().is_empty() {
            continue;
        }
        if let Some(owner) = block_owner {
            if indent > owner {
                continue;
            }
            block_owner = None;
        }
        if rest.starts_with('#') || (indent == 0 && (rest.starts_with("---") || rest.starts_with("..."))) {
            continue;
        }
        let mut col = indent;
        loop {
            if rest == "-" || rest.starts_with("- ") {
                while stack.last().is_some_and(|t| t.indent > col || (t.indent == col && t.item)) {
                    stack.pop();
                }
                let (parent, idx) = match stack.last_mut() {
                    Some(p) => {
                        p.items += 1;
                        (p.path.clone(), p.items - 1)
                    }
                    None => {
                        root_items += 1;
                        (String::new(), root_items - 1)
                    }
                };
                let path = format!("{parent}[{idx}]");
                out.entry(path.clone()).or_insert((lineno, col + 1));
                stack.push(Frame { indent: col, path, item: true, items: 0 });
                let after = &rest[1..];
                let trimmed = after.trim_start_matches(' ');
                col += 1 + after.len() - trimmed.len();
                rest = trimmed;
                if is_block_scalar(rest) {
                    block_owner = Some(col - 1);
                    break;
                }
                continue;
            }
            if let Some((key, value)) = split_key(rest) {
                while stack.last().is_some_and(|t| t.indent >= col) {
                    stack.pop();
                }
                let parent = stack.last().map(|f| f.path.as_str()).unwrap_or("");
                let path = join(parent, &key);
                out.entry(path.clone()).or_insert((lineno, col + 1));
                if is_block_scalar(value) {
                    block_owner = Some(col);
                }
                stack.push(Frame { indent: col, path, item: false, items: 0 });
            }
            break;
        }
    }
    out
}

fn is_block_scalar(value: &str) -> bool {
    let v = value.trim();
    let v = v.split(" #").next().unwrap_or(v).trim();
    (v.starts_with('|') || v.starts_with('>')) && v[1..].chars().all(|c| c == '-' || c == '+' || c.is_ascii_digit())
}

/// `key: value` → (`key`, `value`); quoted keys unquoted. `None` when the line does not
/// start with a key.
fn split_key(line: &str) -> Option<(String, &str)> {
    let first = line.chars().next()?;
    if let q @ ('"' | '\'') = first {
        let close = line[1..].find(q)? + 1;
        let key = line[1..close].to_string();
        let after = line[close + 1..].trim_start_matches(' ');
        let value = after.strip_prefix(':')?;
        if !(value.is_empty() || value.starts_with(' ')) {
            return None;
        }
        return Some((key, value));
    }
    if matches!(first, '[' | '{' | '#' | '&' | '*' | '!' | '|' | '>' | '?' | '%' | '@' | '`') {
        return None;
    }
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && i > 0 && bytes[i - 1] == b' ' {
            return None;
        }
        if b == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') {
            return Some((line[..i].trim_end().to_string(), &line[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests;
