//! The agent's TOML configuration: structs with documented defaults, loading with
//! precise error locations, environment overrides, and validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use constellation_proxy::{ProxySettings, TransportConfig};
use serde::{Deserialize, Serialize};

/// Default web entrypoint of the embedded config.
pub const DEFAULT_WEB_ADDRESS: &str = "127.0.0.1:8080";
/// Default admin listen address (loopback only).
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9180";
/// Default built-in welcome backend address of the embedded config.
pub const DEFAULT_WELCOME_ADDRESS: &str = "127.0.0.1:9181";
/// Default interval between route-file change checks (ms).
pub const DEFAULT_WATCH_INTERVAL_MS: u64 = 1_000;
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "constellation-data";

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This node.
    pub node: NodeConfig,
    /// HTTP entrypoints by name (Traefik's term): where the proxy listens.
    pub entrypoints: BTreeMap<String, EntrypointConfig>,
    /// The admin HTTP server (metrics, status, Traefik provider endpoint).
    pub admin: AdminConfig,
    /// Traefik dynamic-configuration files to load and watch.
    pub routes: RoutesConfig,
    /// SmartFailoverProxy settings.
    pub proxy: ProxySettings,
    /// How host names in server URLs are resolved (see docs/configuration.md).
    pub resolver: crate::resolver::ResolverConfig,
    /// Built-in welcome page backend (used by the embedded default route); off unless set.
    pub welcome: Option<WelcomeConfig>,
    /// Gossip membership (SWIM over UDP). Off unless `address` is set.
    pub gossip: GossipConfig,
    /// Cluster RPC (state pulls) and naming.
    pub cluster: ClusterSection,
    /// Service instances running on this node, announced to the cluster.
    pub instances: Vec<InstanceConfig>,
    /// Raft lease group (who is the front door, who writes DNS). Off unless voters are set.
    pub raft: RaftSection,
    /// Cloudflare DNS following the front door (see docs/dns.md). Off unless present.
    pub dns: Option<constellation_dns::DnsConfig>,
    /// Docker provider: containers and their labels feed the routes (see docs/docker.md).
    /// On when the engine's socket exists.
    pub docker: constellation_docker::DockerConfig,
    /// Stack definitions beyond the built-in catalogue, for `services` and `deploy`.
    pub services: ServicesConfig,
    /// ACME certificates: the certificate resolver named `default` (see docs/acme.md).
    /// Off unless present.
    pub acme: Option<constellation_acme::AcmeConfig>,
    /// Stateful HA groups whose primary a TCP route follows: `[[stateful.redis]]`
    /// (Sentinel) and `[[stateful.mongo]]` (replica sets); see docs/stateful.md.
    #[serde(skip_serializing_if = "crate::stateful::StatefulConfig::is_empty")]
    pub stateful: crate::stateful::StatefulConfig,
    /// WARP egress gateways of this node, probed and gossiped: `[[warp.gateways]]`; see
    /// docs/warp.md.
    #[serde(skip_serializing_if = "constellation_warp::WarpConfig::is_empty")]
    pub warp: constellation_warp::WarpConfig,
}

/// `[services]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// docker-compose files (the subset in docs/services.md), relative to this file; each
    /// is one stack named by its top-level `name:` key. Default: none.
    pub files: Vec<PathBuf>,
}

/// `[raft]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// Voters as `name=cluster-address` (3 or 5), the same list on every node. Raft
    /// itself listens on each cluster address's port + 1. Empty = no leases.
    pub voters: Vec<String>,
    /// Lease time to live, in milliseconds. Default 6000.
    pub lease_ttl_ms: u64,
    /// Minimum election timeout, in milliseconds (the maximum is twice it). Default 1000.
    pub election_timeout_ms: u64,
    /// Leader heartbeat interval, in milliseconds. Default 250.
    pub heartbeat_ms: u64,
    /// Name of the front-door lease, contended by nodes with role `lb`. Default `lb-leader`.
    pub lb_lease: String,
    /// Name of the DNS-writer lease, contended by nodes with role `dns`. Default `dns-writer`.
    pub dns_lease: String,
}

/// Default lease TTL (ms).
pub const DEFAULT_LEASE_TTL_MS: u64 = 6_000;
/// Default minimum election timeout (ms).
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1_000;
/// Default heartbeat (ms).
pub const DEFAULT_HEARTBEAT_MS: u64 = 250;

impl Default for RaftSection {
    fn default() -> Self {
        Self {
            voters: Vec::new(),
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            lb_lease: "lb-leader".into(),
            dns_lease: "dns-writer".into(),
        }
    }
}

/// `[gossip]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipConfig {
    /// UDP listen address for gossip, e.g. `100.64.0.1:7946`. Unset = single node.
    pub address: Option<String>,
    /// Address other nodes reach this node's gossip on, when it differs from `address`
    /// (e.g. `address` is `0.0.0.0:7946`). Default: `address`.
    pub advertise: Option<String>,
    /// Gossip addresses of nodes to join through. Retried until they answer.
    pub seeds: Vec<String>,
    /// File holding the cluster key(s) made by `constellation keygen`, relative to this
    /// file. The environment variable `CONSTELLATION_GOSSIP__KEY` (hex) also works.
    pub key_file: Option<PathBuf>,
    /// Full state exchange with a random peer every this many milliseconds. Default 5000.
    pub push_pull_interval_ms: u64,
    /// Discover peers from `tailscale status --json`. Default false.
    pub tailscale: bool,
    /// Only Tailscale peers carrying this tag (e.g. `tag:constellation`). Default: any.
    pub tailscale_tag: Option<String>,
    /// "What is my IP" services (http or https URLs) asked for this node's public IP
    /// (two must agree). `CONSTELLATION_PUBLIC_IP` overrides. Empty = interface
    /// address only. Default: five public services.
    pub public_ip_services: Vec<String>,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// TCP listen address for cluster RPC (state pulls; later Raft), e.g. `100.64.0.1:7947`.
    /// Default: the gossip address's IP with port 7947.
    pub address: Option<String>,
    /// Domain for default routers of announced services: `Host(<service>.<domain>)`.
    /// Default `localhost`.
    pub domain: String,
}

/// `[[instances]]`: a service instance on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Service name; joins the router/service of that name on every node.
    pub service: String,
    /// URL other nodes' proxies use to reach it, e.g. `http://100.64.0.1:8081`.
    pub url: String,
    /// Optional HTTP health check path; the instance is announced unhealthy while it fails.
    #[serde(default)]
    pub health_path: Option<String>,
    /// Its outbound traffic leaves through this node's egress gateway of that name
    /// (`warp`: the gateway called so, or any): routed only while it is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// When no instance of the service has its egress up: `refuse` (503, the default)
    /// or `all` (route to every instance anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_fallback: Option<crate::warp::EgressFallback>,
}

impl InstanceConfig {
    /// Its egress need, when it has one.
    pub fn egress_need(&self) -> Option<constellation_cluster::EgressNeed> {
        self.egress.as_ref().map(|g| constellation_cluster::EgressNeed {
            gateway: g.clone(),
            fallback_all: self.egress_fallback == Some(crate::warp::EgressFallback::All),
        })
    }
}

/// Default gossip push-pull interval (ms).
pub const DEFAULT_PUSH_PULL_INTERVAL_MS: u64 = 5_000;
/// Default cluster RPC port when only the gossip address is given.
pub const DEFAULT_CLUSTER_PORT: u16 = 7947;
/// Default domain of default routers.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "localhost";

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            address: None,
            advertise: None,
            seeds: Vec::new(),
            key_file: None,
            push_pull_interval_ms: DEFAULT_PUSH_PULL_INTERVAL_MS,
            tailscale: false,
            tailscale_tag: None,
            public_ip_services: crate::public_ip::DEFAULT_SERVICES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self { address: None, domain: DEFAULT_CLUSTER_DOMAIN.into() }
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node name, unique in the cluster. Default: the host name.
    pub name: String,
    /// Directory for durable state, relative to the config file. Default `constellation-data`.
    pub data_dir: PathBuf,
    /// Roles this node takes: `lb` (may become the front door), `dns` (may write DNS).
    /// Default: none.
    pub roles: Vec<String>,
}

/// `[entrypoints.<name>.http]`: Traefik's entry point `http` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrypointHttp {
    /// Traefik's `http.tls` (keys `certResolver`, `options`, `domains`, as in a router's
    /// `tls`): on a TLS entry point, routers without their own `tls` that are attached to
    /// it are served on it with these settings. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<constellation_proxy::dynamic::RouterTls>,
}

impl EntrypointHttp {
    fn is_empty(&self) -> bool {
        self.tls.is_none()
    }
}

/// `[entrypoints.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrypointConfig {
    /// Listen address, `ip:port`, optionally with the protocol: `ip:port/tcp` (the
    /// default: HTTP, HTTPS and TCP routers) or `ip:port/udp` (UDP routers only).
    pub address: String,
    /// Limits on this entry point's client connections (Traefik's `transport`:
    /// `respondingTimeouts`, plus connection caps). Every key has a default.
    #[serde(default)]
    pub transport: TransportConfig,
    /// Whom this entry point believes about `X-Forwarded-*` headers (Traefik's entry
    /// point `forwardedHeaders`). Default: nobody.
    #[serde(default, alias = "forwardedHeaders")]
    pub forwarded_headers: ForwardedHeadersConfig,
    /// Terminate TLS here: routers with `tls` are served on this entry point (and only
    /// on TLS ones), certificates chosen by SNI (see docs/tls.md). Default false.
    #[serde(default)]
    pub tls: bool,
    /// On a TLS entry point, offer HTTP/2 over ALPN (`h2`, then `http/1.1`). Default true.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// On a plain entry point, accept cleartext HTTP/2 with prior knowledge (h2c).
    /// Default false.
    #[serde(default)]
    pub h2c: bool,
    /// Redirect every request to this TLS entry point (`https://host:its-port/path`),
    /// Traefik's `http.redirections.entryPoint.to`; ACME http-01 challenges are still
    /// answered. Default: none.
    #[serde(default, alias = "redirectTo", skip_serializing_if = "Option::is_none")]
    pub redirect_to: Option<String>,
    /// With `redirect_to`: 301 (GET, HEAD) / 308 (other methods) when true, 302 / 307 when
    /// false (Traefik's `permanent`). Default true.
    #[serde(default = "default_true", alias = "redirectPermanent")]
    pub redirect_permanent: bool,
    /// Traefik's entry point `http` options (`[entrypoints.<name>.http.tls]`).
    #[serde(default, skip_serializing_if = "EntrypointHttp::is_empty")]
    pub http: EntrypointHttp,
}

fn default_true() -> bool {
    true
}

/// `[entrypoints.<name>.forwarded_headers]`, Traefik's entry point `forwardedHeaders`.
/// From a peer it does not trust, the entry point removes every `X-Forwarded-*`,
/// `X-Real-Ip` and `Forwarded` header and sets its own; a trusted peer's are kept and
/// its address is appended to `X-Forwarded-For`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardedHeadersConfig {
    /// Peers whose forwarding headers are kept: CIDR networks or single addresses, IPv4
    /// or IPv6, e.g. `["10.0.0.0/8", "192.168.1.7"]` (Traefik's `trustedIPs`). Default:
    /// none, loopback included.
    #[serde(alias = "trustedIPs")]
    pub trusted_ips: Vec<String>,
    /// Keep forwarding headers from every peer (Traefik's `insecure`). Default false.
    pub insecure: bool,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address, `ip:port`. Default `127.0.0.1:9180`. Bind it to loopback or the
    /// mesh address; it serves cluster internals. An address that is not loopback
    /// (`0.0.0.0`, a mesh address) needs a token: the agent refuses to start without one.
    /// (Traefik's counterpart is the `traefik` entry point of `api`/`ping`.)
    pub address: String,
    /// File holding a bearer token required on every endpoint but `/healthz`.
    /// Default: none. The environment variable `CONSTELLATION_ADMIN__TOKEN` also works.
    /// Without a token, reads are open (on loopback) and changes (any method but GET and
    /// HEAD, e.g. Raft voter changes) are accepted only from loopback peers.
    pub token_file: Option<PathBuf>,
}

/// `[routes]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// Traefik dynamic-configuration files (YAML, TOML or JSON), relative to the config
    /// file. Default: none.
    pub files: Vec<PathBuf>,
    /// How often the files are checked for changes, in milliseconds. Default 1000.
    pub watch_interval_ms: u64,
}

/// `[welcome]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WelcomeConfig {
    /// Listen address of the built-in welcome backend.
    pub address: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { name: default_node_name(), data_dir: PathBuf::from(DEFAULT_DATA_DIR), roles: Vec::new() }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { address: DEFAULT_ADMIN_ADDRESS.into(), token_file: None }
    }
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self { files: Vec::new(), watch_interval_ms: DEFAULT_WATCH_INTERVAL_MS }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        let mut entrypoints = BTreeMap::new();
        entrypoints.insert(
            "web".to_string(),
            EntrypointConfig {
                address: DEFAULT_WEB_ADDRESS.into(),
                transport: TransportConfig::default(),
                forwarded_headers: ForwardedHeadersConfig::default(),
                tls: false,
                http2: true,
                h2c: false,
                redirect_to: None,
                redirect_permanent: true,
                http: EntrypointHttp::default(),
            },
        );
        Self {
            node: NodeConfig::default(),
            entrypoints,
            admin: AdminConfig::default(),
            routes: RoutesConfig::default(),
            proxy: ProxySettings::default(),
            resolver: crate::resolver::ResolverConfig::default(),
            welcome: None,
            gossip: GossipConfig::default(),
            cluster: ClusterSection::default(),
            instances: Vec::new(),
            raft: RaftSection::default(),
            dns: None,
            docker: constellation_docker::DockerConfig::default(),
            services: ServicesConfig::default(),
            acme: None,
            stateful: crate::stateful::StatefulConfig::default(),
            warp: constellation_warp::WarpConfig::default(),
        }
    }
}

fn default_node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// The embedded default configuration: single node on loopback with a demo route to
/// the built-in welcome backend.
pub const EMBEDDED_DEFAULT: &str = r#"# Constellation embedded default: one node, everything on loopback.
[entrypoints.web]
address = "127.0.0.1:8080"

[admin]
address = "127.0.0.1:9180"

[welcome]
address = "127.0.0.1:9181"
"#;

/// Route file served with the embedded default (a demo route to the welcome backend).
pub const EMBEDDED_ROUTES: &str = r#"http:
  routers:
    welcome:
      rule: "PathPrefix(`/`)"
      service: welcome
  services:
    welcome:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:9181"
        healthCheck:
          path: /healthz
          interval: 5s
          timeout: 1s
"#;

/// A configuration error a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {key}: {message}", if *line > 0 { format!(":{line}:{column}") } else { String::new() })]
pub struct ConfigError {
    /// File (or environment variable) the value came from.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// Dotted key path, e.g. `proxy.max_attempts`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A loaded, validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The values.
    pub config: AgentConfig,
    /// Directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// Display name of the source (`embedded default` or the file path).
    pub origin: String,
    /// Parsed listen addresses of the entrypoints.
    pub entrypoints: Vec<(String, SocketAddr)>,
    /// The same entrypoints with their scheme and forwarded-headers policy, for the proxy.
    pub entrypoint_policies: Vec<constellation_proxy::EntryPoint>,
    /// UDP entry points (`address = "ip:port/udp"`), not in `entrypoints`.
    pub udp_entrypoints: Vec<(String, SocketAddr)>,
    /// Parsed admin address.
    pub admin_addr: SocketAddr,
    /// Admin bearer token, if any (never logged).
    pub admin_token: Option<String>,
    /// Resolved gossip settings; `None` runs a single node.
    pub gossip: Option<ResolvedGossip>,
    /// Raft voters: name and Raft address (cluster address port + 1).
    pub raft_voters: Vec<(String, SocketAddr)>,
    /// `[acme]` checked, with `ca_file` made absolute and read; `None` without `[acme]`.
    pub acme: Option<constellation_acme::AcmeSettings>,
}

/// Gossip settings with addresses parsed and the key loaded.
#[derive(Clone)]
pub struct ResolvedGossip {
    /// UDP bind address.
    pub bind: SocketAddr,
    /// UDP address announced to peers.
    pub advertise: SocketAddr,
    /// TCP cluster RPC bind address.
    pub cluster_bind: SocketAddr,
    /// Seed gossip addresses.
    pub seeds: Vec<SocketAddr>,
    /// Keyring text (one hex key per line; never logged).
    pub keyring_text: String,
    /// Where the keyring came from, for errors.
    pub keyring_origin: String,
}

impl std::fmt::Debug for ResolvedGossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedGossip")
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("cluster_bind", &self.cluster_bind)
            .field("seeds", &self.seeds)
            .field("keyring_origin", &self.keyring_origin)
            .finish_non_exhaustive()
    }
}

impl LoadedConfig {
    /// The TLS entry points with router TLS defaults (`[entrypoints.<name>.http.tls]`).
    pub fn entrypoint_tls(&self) -> Vec<(String, constellation_proxy::dynamic::RouterTls)> {
        self.config.entrypoints.iter().filter_map(|(name, ep)| ep.http.tls.clone().map(|t| (name.clone(), t))).collect()
    }

    /// Absolute paths of the route files.
    pub fn route_files(&self) -> Vec<PathBuf> {
        self.config.routes.files.iter().map(|f| self.base_dir.join(f)).collect()
    }

    /// Whether this is the embedded default (which serves [`EMBEDDED_ROUTES`]).
    pub fn is_embedded(&self) -> bool {
        self.origin == "embedded default"
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

/// Parse configuration text. `origin` names the file in errors.
pub fn parse(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize::<_, AgentConfig>(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        ConfigError {
            file: origin.to_string(),
            line,
            column,
            key: if key == "." { String::new() } else { key },
            message: inner.message().trim().to_string(),
        }
    })
}

/// Apply `CONSTELLATION_<SECTION>__<KEY>` overrides from `vars` (e.g. `CONSTELLATION_PROXY__MAX_ATTEMPTS=5`).
pub fn apply_env<I>(config: AgentConfig, vars: I) -> Result<AgentConfig, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut overrides: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("CONSTELLATION_") && k.contains("__"))
        // Secrets and non-config variables are read where they are used.
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "CONSTELLATION_ADMIN__TOKEN" | "CONSTELLATION_DNS__API_TOKEN" | "CONSTELLATION_GOSSIP__KEY"
            )
        })
        .collect();
    if overrides.is_empty() {
        return Ok(config);
    }
    overrides.sort();
    let err = |var: &str, key: &str, message: String| ConfigError {
        file: format!("environment variable {var}"),
        line: 0,
        column: 0,
        key: key.to_string(),
        message,
    };
    let mut value = toml::Value::try_from(&config).map_err(|e| err("", "", e.to_string()))?;
    for (var, raw) in &overrides {
        let path: Vec<String> = var["CONSTELLATION_".len()..].split("__").map(|p| p.to_ascii_lowercase()).collect();
        let key = path.join(".");
        let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let mut cur = &mut value;
        for (i, part) in path.iter().enumerate() {
            let table = cur.as_table_mut().ok_or_else(|| err(var, &key, "not a table".into()))?;
            if i + 1 == path.len() {
                table.insert(part.clone(), parsed.clone());
                break;
            }
            cur = table.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        }
    }
    let text = toml::to_string(&value).map_err(|e| err("", "", e.to_string()))?;
    parse(&text, "environment").map_err(|e| {
        let var = overrides
            .iter()
            .find(|(v, _)| v["CONSTELLATION_".len()..].to_ascii_lowercase().replace("__", ".") == e.key)
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| "CONSTELLATION_*".into());
        err(&var, &e.key, e.message)
    })
}

/// Where `key` (dotted path) is set in TOML `text`: 1-based line and the column of its
/// value. Handles `[table]` and `[[array]]` headers (the n-th `[[a.b]]` is `a.b[n]`, as
/// in `warp.gateways[0].name`) and `key = value` lines, which is how every documented key
/// is written.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let mut table = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.starts_with("[[") {
            let name = line.trim_start_matches('[').split(']').next().unwrap_or("").trim().replace(['"', ' '], "");
            let n = arrays.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
            continue;
        }
        if line.starts_with('[') {
            table = line.trim_start_matches('[').split(']').next().unwrap_or("").trim().replace(['"', ' '], "");
            continue;
        }
        let Some((k, _)) = line.split_once('=') else { continue };
        let k = k.trim().replace(['"', ' '], "");
        let full = if table.is_empty() { k } else { format!("{table}.{k}") };
        if full == key {
            let eq = raw.find('=').unwrap_or(0);
            let value_start = raw[eq + 1..].len() - raw[eq + 1..].trim_start().len();
            return Some((i + 1, raw[..eq + 1 + value_start].chars().count() + 1));
        }
    }
    None
}

/// Why a non-loopback admin address without a token is refused: the admin API serves the
/// routes' credentials to Traefik and takes Raft voter changes.
fn admin_needs_token(addr: SocketAddr) -> String {
    format!(
        "{addr} is not a loopback address, and the admin API there would serve route credentials and take raft \
         voter changes from anyone who reaches it: set admin.token_file (or CONSTELLATION_ADMIN__TOKEN) to a \
         bearer token, or listen on 127.0.0.1"
    )
}

fn cfg_has_no_leases(voters: &[(String, SocketAddr)]) -> bool {
    voters.is_empty()
}

/// Check values that parse but make no sense, and resolve addresses and secrets.
/// `text` is the file's content, used to point errors at the line and column. Returns
/// the first problem; [`validate_all`] returns every one.
pub fn validate(
    config: AgentConfig,
    origin: &str,
    base_dir: &Path,
    text: Option<&str>,
) -> Result<LoadedConfig, ConfigError> {
    validate_all(config, origin, base_dir, text).map_err(|mut errors| errors.remove(0))
}

/// The value of a section's check, or `None` with its error recorded.
fn keep<T>(errors: &mut Vec<ConfigError>, checked: Result<T, ConfigError>) -> Option<T> {
    checked.map_err(|e| errors.push(e)).ok()
}

/// Like [`validate`], but each section (entrypoints, admin, proxy, resolver, routes,
/// instances, gossip, raft, dns) is checked even when an earlier one failed, so every
/// problem is reported at once (never an empty list on `Err`).
pub fn validate_all(
    config: AgentConfig,
    origin: &str,
    base_dir: &Path,
    text: Option<&str>,
) -> Result<LoadedConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let bad = |key: &str, message: String| {
        // A value from the environment has no place in the file.
        let (line, column) = text.and_then(|t| locate(t, key)).unwrap_or((0, 0));
        ConfigError { file: origin.to_string(), line, column, key: key.to_string(), message }
    };
    let addr = |key: &str, s: &str| -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|e| bad(key, format!("{s:?} is not an ip:port address ({e})")))
    };
    // `ip:port[/tcp|/udp]`: the address and whether it is UDP.
    let ep_addr = |key: &str, s: &str| -> Result<(SocketAddr, bool), ConfigError> {
        let (a, udp) = match s.rsplit_once('/') {
            Some((a, "udp")) => (a, true),
            Some((a, "tcp")) => (a, false),
            Some((_, other)) => {
                return Err(bad(key, format!("{s:?}: unknown protocol {other:?} (use /tcp or /udp, or none for tcp)")))
            }
            None => (s, false),
        };
        Ok((addr(key, a)?, udp))
    };
    let entrypoint_section = || {
        if config.entrypoints.is_empty() {
            return Err(bad(
                "entrypoints",
                "at least one entrypoint is needed, e.g. [entrypoints.web] address = \"127.0.0.1:8080\"".into(),
            ));
        }
        let mut entrypoints = Vec::new();
        let mut entrypoint_policies = Vec::new();
        let mut udp_entrypoints = Vec::new();
        for (name, ep) in &config.entrypoints {
            let (address, udp) = ep_addr(&format!("entrypoints.{name}.address"), &ep.address)?;
            if udp {
                let tcp_only = [
                    ("tls", ep.tls),
                    ("h2c", ep.h2c),
                    ("redirect_to", ep.redirect_to.is_some()),
                    ("http", !ep.http.is_empty()),
                ];
                if let Some((key, _)) = tcp_only.iter().find(|(_, set)| *set) {
                    return Err(bad(
                        &format!("entrypoints.{name}.{key}"),
                        "a UDP entry point (address ending in /udp) carries UDP routers only".into(),
                    ));
                }
                udp_entrypoints.push((name.clone(), address));
                continue;
            }
            if let Err((key, message)) = ep.transport.validate() {
                return Err(bad(&format!("entrypoints.{name}.transport.{key}"), message));
            }
            entrypoints.push((name.clone(), address));
            let fh = &ep.forwarded_headers;
            let forwarded = constellation_proxy::ForwardedPolicy::parse(&fh.trusted_ips, fh.insecure)
                .map_err(|e| bad(&format!("entrypoints.{name}.forwarded_headers.trusted_ips"), e.to_string()))?;
            if ep.tls && ep.h2c {
                return Err(bad(
                    &format!("entrypoints.{name}.h2c"),
                    "h2c is cleartext HTTP/2; on a TLS entry point HTTP/2 is negotiated over ALPN (http2 = true)"
                        .into(),
                ));
            }
            if ep.http.tls.is_some() && !ep.tls {
                return Err(bad(
                    &format!("entrypoints.{name}.http.tls"),
                    "TLS defaults for routers need a TLS entry point: add tls = true".into(),
                ));
            }
            let redirect = match &ep.redirect_to {
                None => None,
                Some(to) => {
                    let key = format!("entrypoints.{name}.redirect_to");
                    let Some(target) = config.entrypoints.get(to) else {
                        return Err(bad(&key, format!("no entrypoint named {to:?}")));
                    };
                    if !target.tls {
                        return Err(bad(&key, format!("entrypoint {to:?} has no tls = true; redirects go to HTTPS")));
                    }
                    if ep.tls {
                        return Err(bad(&key, "a TLS entry point cannot redirect to another one".into()));
                    }
                    let port = ep_addr(&format!("entrypoints.{to}.address"), &target.address)?.0.port();
                    Some(constellation_proxy::EntryRedirect { port, permanent: ep.redirect_permanent })
                }
            };
            entrypoint_policies.push(constellation_proxy::EntryPoint {
                name: name.clone(),
                address,
                scheme: if ep.tls { constellation_proxy::Scheme::Https } else { constellation_proxy::Scheme::Http },
                forwarded,
                redirect,
            });
        }
        Ok((entrypoints, entrypoint_policies, udp_entrypoints))
    };
    let eps = keep(&mut errors, entrypoint_section());
    let admin_addr = keep(&mut errors, addr("admin.address", &config.admin.address));
    if let Some(w) = &config.welcome {
        keep(&mut errors, addr("welcome.address", &w.address));
    }
    if let Err((key, message)) = config.proxy.validate() {
        errors.push(bad(&format!("proxy.{key}"), message));
    }
    if let Err((key, message)) = config.resolver.validate() {
        errors.push(bad(&format!("resolver.{key}"), message));
    }
    if config.routes.watch_interval_ms == 0 {
        errors.push(bad("routes.watch_interval_ms", "must be greater than 0".into()));
    }
    let admin_section = || -> Result<Option<String>, ConfigError> {
        Ok(match (&config.admin.token_file, std::env::var("CONSTELLATION_ADMIN__TOKEN")) {
            (_, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
            (Some(f), _) => {
                let path = base_dir.join(f);
                let t = std::fs::read_to_string(&path)
                    .map_err(|e| bad("admin.token_file", format!("cannot read {}: {e}", path.display())))?;
                let t = t.trim().to_string();
                if t.is_empty() {
                    return Err(bad("admin.token_file", format!("{} is empty", path.display())));
                }
                Some(t)
            }
            _ => None,
        })
    };
    let admin_token = keep(&mut errors, admin_section());
    // An admin address off loopback needs a token (an unreadable token file is reported
    // above instead).
    if let (Some(addr), Some(None)) = (admin_addr, &admin_token) {
        if !addr.ip().to_canonical().is_loopback() {
            errors.push(bad("admin.address", admin_needs_token(addr)));
        }
    }
    for (i, inst) in config.instances.iter().enumerate() {
        if inst.service.trim().is_empty() || inst.service.contains(['@', ' ', '/']) {
            errors.push(bad(&format!("instances[{i}].service"), format!("{:?} is not a service name", inst.service)));
        }
        if let Err(e) = constellation_proxy::upstream::parse_server_url(&inst.url) {
            errors.push(bad(&format!("instances[{i}].url"), e));
        }
        match &inst.egress {
            Some(g) if g.trim().is_empty() => {
                errors.push(bad(&format!("instances[{i}].egress"), "name an egress gateway, e.g. \"warp\"".into()))
            }
            None if inst.egress_fallback.is_some() => errors.push(bad(
                &format!("instances[{i}].egress_fallback"),
                "applies only with egress = \"<gateway>\"".into(),
            )),
            _ => {}
        }
    }
    for (key, message) in config.warp.validate() {
        errors.push(bad(&format!("warp.{key}"), message));
    }
    let gossip_section = || -> Result<Option<ResolvedGossip>, ConfigError> {
        Ok(match &config.gossip.address {
            None => {
                if !config.gossip.seeds.is_empty() {
                    return Err(bad("gossip.seeds", "seeds need gossip.address to be set".into()));
                }
                None
            }
            Some(a) => {
                let bind = addr("gossip.address", a)?;
                let advertise = match &config.gossip.advertise {
                    Some(a) => addr("gossip.advertise", a)?,
                    None if bind.ip().is_unspecified() => {
                        return Err(bad(
                            "gossip.advertise",
                            "gossip.address is a wildcard; set the address peers should use".into(),
                        ))
                    }
                    None => bind,
                };
                let cluster_bind = match &config.cluster.address {
                    Some(a) => addr("cluster.address", a)?,
                    None => SocketAddr::new(bind.ip(), DEFAULT_CLUSTER_PORT),
                };
                let mut seeds = Vec::new();
                for s in &config.gossip.seeds {
                    use std::net::ToSocketAddrs;
                    let resolved = s
                        .to_socket_addrs()
                        .map_err(|e| bad("gossip.seeds", format!("{s:?} does not resolve to ip:port ({e})")))?
                        .next()
                        .ok_or_else(|| bad("gossip.seeds", format!("{s:?} resolves to nothing")))?;
                    if resolved != advertise {
                        seeds.push(resolved);
                    }
                }
                let (keyring_text, keyring_origin) =
                    match (std::env::var("CONSTELLATION_GOSSIP__KEY"), &config.gossip.key_file) {
                        (Ok(k), _) if !k.trim().is_empty() => {
                            (k, "environment variable CONSTELLATION_GOSSIP__KEY".to_string())
                        }
                        (_, Some(f)) => {
                            let path = base_dir.join(f);
                            let text = std::fs::read_to_string(&path)
                                .map_err(|e| bad("gossip.key_file", format!("cannot read {}: {e}", path.display())))?;
                            (text, path.display().to_string())
                        }
                        _ => return Err(bad(
                            "gossip.key_file",
                            "gossip needs a cluster key: run `constellation keygen --out cluster.key` and set key_file"
                                .into(),
                        )),
                    };
                // A key that cannot be used is a configuration error now, not a node
                // that quietly runs alone later.
                if let Err(e) = constellation_cluster::Keyring::parse(&keyring_text) {
                    let key = if keyring_origin.starts_with("environment") { "gossip.key" } else { "gossip.key_file" };
                    return Err(bad(key, format!("the cluster key is unusable: {e} (read from {keyring_origin})")));
                }
                Some(ResolvedGossip { bind, advertise, cluster_bind, seeds, keyring_text, keyring_origin })
            }
        })
    };
    let gossip = keep(&mut errors, gossip_section());
    let raft_section = || -> Result<Vec<(String, SocketAddr)>, ConfigError> {
        let mut raft_voters = Vec::new();
        for v in &config.raft.voters {
            let (name, a) = v
                .split_once('=')
                .ok_or_else(|| bad("raft.voters", format!("{v:?} is not name=ip:port (e.g. n1=127.0.0.1:7947)")))?;
            let cluster: SocketAddr = addr("raft.voters", a.trim())?;
            let raft = SocketAddr::new(cluster.ip(), cluster.port().wrapping_add(1));
            if raft_voters.iter().any(|(n, _): &(String, SocketAddr)| n == name.trim()) {
                return Err(bad("raft.voters", format!("voter {name:?} is listed twice")));
            }
            raft_voters.push((name.trim().to_string(), raft));
        }
        if !raft_voters.is_empty() {
            if matches!(gossip, Some(None)) {
                return Err(bad(
                    "raft.voters",
                    "leases need the cluster key: set [gossip] address and key_file".into(),
                ));
            }
            if raft_voters.len() % 2 == 0 {
                return Err(bad(
                    "raft.voters",
                    format!("{} voters cannot outvote a split; use 3 or 5", raft_voters.len()),
                ));
            }
            for (key, v) in [
                ("raft.lease_ttl_ms", config.raft.lease_ttl_ms),
                ("raft.election_timeout_ms", config.raft.election_timeout_ms),
                ("raft.heartbeat_ms", config.raft.heartbeat_ms),
            ] {
                if v == 0 {
                    return Err(bad(key, "must be greater than 0".into()));
                }
            }
            if config.raft.heartbeat_ms * 3 > config.raft.election_timeout_ms {
                return Err(bad("raft.heartbeat_ms", "must be at most a third of election_timeout_ms".into()));
            }
            if config.raft.lease_ttl_ms < 2 * config.raft.election_timeout_ms {
                return Err(bad("raft.lease_ttl_ms", "must be at least twice election_timeout_ms".into()));
            }
        }
        Ok(raft_voters)
    };
    let raft_voters = keep(&mut errors, raft_section());
    let mut config = config;
    let no_leases = raft_voters.as_deref().is_some_and(cfg_has_no_leases);
    let dns_section = |config: &mut AgentConfig| -> Result<(), ConfigError> {
        if let Some(dns) = config.dns.as_mut() {
            dns.token = match (std::env::var("CONSTELLATION_DNS__API_TOKEN"), &dns.api_token_file) {
                (Ok(t), _) if !t.trim().is_empty() => Some(t.trim().to_string()),
                (_, Some(f)) => {
                    let path = base_dir.join(f);
                    let t = std::fs::read_to_string(&path)
                        .map_err(|e| bad("dns.api_token_file", format!("cannot read {}: {e}", path.display())))?;
                    Some(t.trim().to_string())
                }
                _ => None,
            };
            if let Err(e) = dns.validate() {
                return Err(bad("dns", e.to_string()));
            }
            if no_leases {
                return Err(bad(
                    "dns",
                    "DNS writes are fenced by the dns-writer lease: configure [raft] voters".into(),
                ));
            }
        }
        Ok(())
    };
    let dns = dns_section(&mut config);
    keep(&mut errors, dns);
    let acme = acme_section(&mut config, base_dir).map_err(|(key, message)| bad(&key, message));
    let acme = keep(&mut errors, acme);
    config.stateful.resolve_paths(base_dir);
    let tcp_entrypoints: Vec<String> =
        config.entrypoints.iter().filter(|(_, e)| !e.address.ends_with("/udp")).map(|(n, _)| n.clone()).collect();
    for (key, message) in config.stateful.validate(&tcp_entrypoints) {
        errors.push(bad(&key, message));
    }
    // Secrets must be readable now, not at the first failover.
    for (i, g) in config.stateful.redis.iter().enumerate() {
        if let Err(e) = g.password() {
            errors.push(bad(&format!("stateful.redis[{i}].password_file"), e.to_string()));
        }
        if let Err(e) = g.sentinel_password() {
            errors.push(bad(&format!("stateful.redis[{i}].sentinel_password_file"), e.to_string()));
        }
    }
    for (i, m) in config.stateful.mongo.iter().enumerate() {
        if let Err(e) = m.load_password() {
            errors.push(bad(&format!("stateful.mongo[{i}].password_file"), e.to_string()));
        }
    }
    // Each [docker] key is checked on its own, so every mistake is reported at once.
    let d = &config.docker;
    if d.endpoint.trim().is_empty() {
        errors.push(bad("docker.endpoint", "must name a socket path or tcp://host:port".into()));
    }
    if let Some(Err(e)) = d.constraints.as_deref().map(constellation_docker::constraints::Constraint::parse) {
        errors.push(bad("docker.constraints", e.to_string()));
    }
    if let Some(m) = d.mesh_entrypoint.as_ref().filter(|m| !config.entrypoints.contains_key(*m)) {
        errors.push(bad(
            "docker.mesh_entrypoint",
            format!("no entrypoint named {m:?}; define [entrypoints.{m}] on the mesh address"),
        ));
    }
    if d.network.as_deref().is_some_and(|n| n.trim().is_empty()) {
        errors.push(bad("docker.network", "must not be empty (leave it out for the container's only network)".into()));
    }
    let (
        Some((entrypoints, entrypoint_policies, udp_entrypoints)),
        Some(admin_addr),
        Some(admin_token),
        Some(gossip),
        Some(raft_voters),
    ) = (eps, admin_addr, admin_token, gossip, raft_voters)
    else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let Some(acme) = acme else { return Err(errors) };
    Ok(LoadedConfig {
        acme,
        config,
        base_dir: base_dir.to_path_buf(),
        origin: origin.to_string(),
        entrypoints,
        entrypoint_policies,
        udp_entrypoints,
        admin_addr,
        admin_token,
        gossip,
        raft_voters,
    })
}

/// `[acme]`: `ca_file` relative to the agent file, every key checked, and the challenge
/// matched to what this node can answer it on. An error is (key, message).
fn acme_section(
    config: &mut AgentConfig,
    base_dir: &Path,
) -> Result<Option<constellation_acme::AcmeSettings>, (String, String)> {
    let Some(acme) = config.acme.as_mut() else { return Ok(None) };
    if let Some(f) = acme.ca_file.take() {
        acme.ca_file = Some(base_dir.join(f));
    }
    let settings = acme.validate().map_err(|e| match e {
        constellation_acme::ConfigError::Invalid { key, problem } => (format!("acme.{key}"), problem),
    })?;
    let tls = config.entrypoints.values().any(|e| e.tls);
    let plain = config.entrypoints.values().any(|e| !e.tls && !e.address.ends_with("/udp"));
    let problem = match settings.config.challenge {
        _ if !tls => Some("ACME certificates are served on TLS entry points: add one with tls = true"),
        constellation_acme::ChallengeKind::Http01 if !plain => {
            Some("http-01 is answered on a plain entry point (port 80 in production): add one, or use tls-alpn-01")
        }
        constellation_acme::ChallengeKind::Dns01 if config.dns.is_none() => {
            Some("dns-01 writes TXT records through the Cloudflare client: configure [dns]")
        }
        _ => None,
    };
    match problem {
        Some(p) => Err(("acme.challenge".into(), p.into())),
        None => Ok(Some(settings)),
    }
}

/// Load a config file (or the embedded default when `path` is `None`), apply the
/// environment, validate. Returns the first problem; [`load_all`] returns every one.
pub fn load(path: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    load_all(path).map_err(|mut errors| errors.remove(0))
}

/// Like [`load`], reporting every validation problem at once (a file that does not
/// parse is one problem: the parser stops there).
pub fn load_all(path: Option<&Path>) -> Result<LoadedConfig, Vec<ConfigError>> {
    let (text, origin, base) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                vec![ConfigError {
                    file: p.display().to_string(),
                    line: 0,
                    column: 0,
                    key: String::new(),
                    message: format!("cannot read: {e}"),
                }]
            })?;
            let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
            (text, p.display().to_string(), base)
        }
        None => (EMBEDDED_DEFAULT.to_string(), "embedded default".to_string(), PathBuf::from(".")),
    };
    let config = parse(&text, &origin).map_err(|e| vec![e])?;
    let config = apply_env(config, std::env::vars()).map_err(|e| vec![e])?;
    validate_all(config, &origin, &base, Some(&text))
}

/// One line of documentation per key of the default config (unit and default are in
/// the rendered value). A test checks that every rendered key has an entry here.
const KEY_DOCS: &[(&str, &str)] = &[
    ("node.name", "Node name, unique in the cluster. Default: the host name."),
    ("node.data_dir", "Directory for durable state, relative to this file."),
    ("node.roles", "Roles of this node: \"lb\" (may be the front door), \"dns\" (may write DNS)."),
    ("instances", "Service instances on this node: [[instances]] service = \"app\", url = \"http://...\"."),
    ("gossip.address", "UDP gossip address (SWIM). Unset = single node."),
    ("gossip.advertise", "Gossip address others use, when it differs from address."),
    ("gossip.seeds", "Gossip addresses of nodes to join through; retried until they answer."),
    ("gossip.key_file", "Cluster key file from `constellation keygen` (or CONSTELLATION_GOSSIP__KEY)."),
    ("gossip.push_pull_interval_ms", "Full state exchange with a random peer this often."),
    ("gossip.tailscale", "Discover peers with `tailscale status --json`."),
    ("gossip.tailscale_tag", "Only Tailscale peers with this tag."),
    (
        "gossip.public_ip_services",
        "What-is-my-IP services, http or https (two must agree); CONSTELLATION_PUBLIC_IP overrides.",
    ),
    ("cluster.address", "TCP address for cluster RPC (state pulls). Default: gossip IP, port 7947."),
    ("cluster.domain", "Default router of an announced service: Host(<service>.<domain>)."),
    ("raft.voters", "Lease group voters as \"name=cluster-address\" (3 or 5); Raft uses that port + 1."),
    ("raft.lease_ttl_ms", "Lease time to live; holders renew every third of it and step down early."),
    ("raft.election_timeout_ms", "Minimum election timeout (maximum is twice it)."),
    ("raft.heartbeat_ms", "Leader heartbeat interval."),
    ("raft.lb_lease", "Front-door lease, contended by nodes with role \"lb\"."),
    ("raft.dns_lease", "DNS-writer lease, contended by nodes with role \"dns\"."),
    (
        "entrypoints.web.address",
        "Where the proxy listens (ip:port; ip:port/udp for UDP routers). Add [entrypoints.<name>] for more.",
    ),
    ("entrypoints.web.tls", "Terminate TLS here (routers with tls are served only on TLS entry points)."),
    ("entrypoints.web.http2", "On a TLS entry point, offer HTTP/2 over ALPN."),
    ("entrypoints.web.h2c", "On a plain entry point, accept cleartext HTTP/2 (prior knowledge)."),
    (
        "entrypoints.web.redirect_permanent",
        "With redirect_to = \"<tls entrypoint>\": 301/308 when true, 302/307 when false.",
    ),
    (
        "entrypoints.web.transport.read_timeout_ms",
        "Deadline for a whole request head, from accept or its first byte (Traefik readTimeout).",
    ),
    (
        "entrypoints.web.transport.idle_timeout_ms",
        "Keep-alive connections idle this long are closed (Traefik idleTimeout).",
    ),
    ("entrypoints.web.transport.body_read_timeout_ms", "A request body stalled this long is answered 408."),
    (
        "entrypoints.web.transport.write_timeout_ms",
        "A response write the client does not take this long closes the connection; 0 = none.",
    ),
    (
        "entrypoints.web.transport.max_connections",
        "Connections held at once; more are closed at accept. Default: sized from the file limit.",
    ),
    ("entrypoints.web.transport.max_connections_per_ip", "Connections one client IP may hold at once."),
    (
        "entrypoints.web.forwarded_headers.trusted_ips",
        "Peers whose X-Forwarded-* headers are kept (CIDRs or IPs; Traefik's forwardedHeaders.trustedIPs).",
    ),
    (
        "entrypoints.web.forwarded_headers.insecure",
        "Keep X-Forwarded-* headers from every peer (Traefik's forwardedHeaders.insecure).",
    ),
    ("admin.address", "Admin API (metrics, status, Traefik provider). Not loopback = a token is required."),
    (
        "admin.token_file",
        "Bearer token file for all admin endpoints but /healthz; without one, changes only from loopback.",
    ),
    ("routes.files", "Traefik dynamic-configuration files (YAML, TOML, JSON), relative to this file."),
    ("routes.watch_interval_ms", "How often route files are checked for changes."),
    ("resolver.interval_ms", "Host names in server URLs are looked up again this often."),
    ("resolver.timeout_ms", "Time allowed for one lookup; a timeout keeps the last address."),
    ("resolver.min_refresh_ms", "After failed upstream connects, look names up early, at most once per this."),
    (
        "resolver.hosts_file",
        "Hosts-format file read before the system resolver at every lookup, relative to this file.",
    ),
    ("proxy.connect_timeout_ms", "TCP connect timeout per attempt."),
    ("proxy.read_timeout_ms", "Wait for response headers, and between body reads; exceeded = 504."),
    ("proxy.write_timeout_ms", "Timeout of each write to an upstream."),
    ("proxy.idle_timeout_ms", "Pooled idle upstream connections are closed after this."),
    ("proxy.request_timeout_ms", "One deadline for all attempts of a request."),
    ("proxy.tunnel_timeout_ms", "Upgraded (WebSocket) connections are closed after this much silence from one side."),
    ("proxy.max_attempts", "Attempts per request, first included (a router's retry middleware overrides)."),
    ("proxy.retry_budget_percent", "Retries in flight may not exceed this share of requests in flight."),
    ("proxy.min_retry_concurrency", "Concurrent retries always allowed, whatever the budget."),
    ("proxy.max_ejection_percent", "Largest share of a service's upstreams ejected at once (at least one)."),
    ("proxy.panic_threshold_percent", "Below this share of available upstreams, spread over all (panic mode)."),
    ("proxy.retry_after_secs", "Retry-After on a 503 made because no upstream is available."),
    ("proxy.health_rise", "Health check passes to mark an upstream healthy (healthCheck.rise overrides)."),
    ("proxy.health_fall", "Health check failures to mark it unhealthy (healthCheck.fall overrides)."),
    ("proxy.threads", "Worker threads of the proxy."),
    ("proxy.grace_period_secs", "After SIGTERM and the lease hand-over: seconds the listeners stay open."),
    ("proxy.graceful_shutdown_timeout_secs", "Then: at most this many seconds for requests in flight to finish."),
    (
        "proxy.allow_unsupported",
        "Serve routers needing unapplied features (e.g. basicAuth) WITHOUT them instead of 503. Unsafe.",
    ),
    (
        "proxy.tcp_drain_grace_ms",
        "A TCP server that left the routes keeps its open connections this long (stateful primaries: none).",
    ),
    ("proxy.udp_session_timeout_ms", "A UDP session ends after this much silence either way (Traefik's udp.timeout)."),
    (
        "docker.enabled",
        "Unset: on when the endpoint exists (unreachable = a warning, retried). true: required at start. false: off.",
    ),
    ("docker.endpoint", "Docker engine: socket path, unix://PATH or tcp://HOST:PORT."),
    ("docker.exposed_by_default", "Route containers without traefik.enable=true too (Traefik's exposedByDefault)."),
    ("docker.network", "Network whose container address is used (label traefik.docker.network overrides)."),
    ("docker.constraints", "Watch only containers matching this label expression (Label, LabelRegex, !, &&, ||)."),
    (
        "docker.mesh_entrypoint",
        "Entry point on the mesh address through which other nodes reach this node's containers.",
    ),
    ("docker.relist_interval_ms", "Full relist of the engine's containers this often (events can be lost)."),
    ("docker.retry_interval_ms", "Reconnect this often while the engine does not answer."),
    ("docker.restart_cap_per_hour", "Restarts of one deunhealth-labelled unhealthy container per hour at most."),
    ("docker.restart_backoff_ms", "Wait before restarting an unhealthy container; doubles per restart in the hour."),
    ("services.files", "docker-compose files (stack = their `name:`), for `services` and `deploy`."),
    ("proxy.breaker.consecutive_failures", "Consecutive gateway failures that open an upstream's breaker (0 = off)."),
    ("proxy.breaker.failure_rate_threshold", "Failure share over the window that opens it (0 = off)."),
    ("proxy.breaker.window_ms", "Sliding window of the failure rate."),
    ("proxy.breaker.min_requests", "Requests needed in the window before the rate counts."),
    ("proxy.breaker.base_ejection_ms", "Open time of a first ejection; doubles with each repeat."),
    ("proxy.breaker.max_ejection_ms", "Cap of the open time."),
    ("proxy.breaker.jitter", "Random spread of the open time (0.1 = plus or minus 10 %)."),
    ("proxy.breaker.half_open_probes", "Concurrent probe requests admitted when half-open."),
    ("proxy.breaker.half_open_successes", "Probe successes that close the breaker."),
    ("proxy.breaker.probe_timeout_ms", "A probe slot held this long is presumed lost and reclaimed."),
];

/// The documented default configuration, generated from the structs' defaults with a
/// comment above every key.
pub fn default_toml() -> String {
    let mut out = String::from(
        "# Constellation agent configuration with every key at its default.\n\
         # Durations are in milliseconds unless the key says otherwise.\n\
         # Every key can be overridden by CONSTELLATION_<SECTION>__<KEY>.\n\n",
    );
    let mut cfg = AgentConfig::default();
    cfg.node.name = "node-1".into();
    cfg.admin.token_file = Some(PathBuf::from("admin.token"));
    cfg.gossip.address = Some("127.0.0.1:7946".into());
    cfg.gossip.advertise = Some("127.0.0.1:7946".into());
    cfg.gossip.key_file = Some(PathBuf::from("cluster.key"));
    cfg.gossip.tailscale_tag = Some("tag:constellation".into());
    cfg.cluster.address = Some("127.0.0.1:7947".into());
    cfg.resolver.hosts_file = Some(PathBuf::from("hosts"));
    cfg.docker.enabled = Some(true);
    cfg.docker.network = Some("publicnet".into());
    cfg.docker.constraints = Some("Label(`constellation.node`, `node-1`)".into());
    cfg.docker.mesh_entrypoint = Some("mesh".into());
    if let Some(web) = cfg.entrypoints.get_mut("web") {
        web.transport.max_connections = Some(10_000);
    }
    let rendered = match toml::to_string_pretty(&cfg) {
        Ok(s) => s,
        Err(e) => return format!("{out}# could not render defaults: {e}\n"),
    };
    let mut section = String::new();
    for line in rendered.lines() {
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = h.to_string();
        } else if let Some((key, _)) = line.split_once(" = ") {
            let path = if section.is_empty() { key.to_string() } else { format!("{section}.{key}") };
            if let Some((_, doc)) = KEY_DOCS.iter().find(|(k, _)| *k == path) {
                out.push_str(&format!("# {doc}\n"));
            }
            // Optional keys are shown commented out: their default is "unset".
            if matches!(
                path.as_str(),
                "admin.token_file"
                    | "gossip.address"
                    | "gossip.advertise"
                    | "gossip.key_file"
                    | "gossip.tailscale_tag"
                    | "cluster.address"
                    | "resolver.hosts_file"
                    | "entrypoints.web.transport.max_connections"
                    | "docker.enabled"
                    | "docker.network"
                    | "docker.constraints"
                    | "docker.mesh_entrypoint"
            ) {
                out.push_str(&format!("# {line}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn embedded_default_loads() {
        let c = parse(EMBEDDED_DEFAULT, "embedded").unwrap();
        assert_eq!(c.entrypoints["web"].address, DEFAULT_WEB_ADDRESS);
        let v = validate(c, "embedded", Path::new("."), None).unwrap();
        assert_eq!(v.admin_addr.to_string(), DEFAULT_ADMIN_ADDRESS);
    }

    #[test]
    fn generated_default_parses_back() {
        let text = default_toml();
        let c = parse(&text, "default").unwrap();
        assert_eq!(c.proxy, ProxySettings::default());
        assert!(text.contains("max_attempts = 3"), "{text}");
        // Every key is documented.
        let mut last = "";
        for line in text.lines() {
            if line.contains(" = ") && !line.starts_with('#') {
                assert!(last.starts_with("# "), "key without a comment: {line}");
            }
            last = line;
        }
    }

    #[test]
    fn docker_section_errors_name_their_keys() {
        let text = "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[docker]\nconstraints = \"Label(`a`, `b`) &&\"\n\
                    mesh_entrypoint = \"mesh\"\n";
        let c = parse(text, "agent.toml").unwrap();
        let errs = validate_all(c, "agent.toml", Path::new("."), Some(text)).unwrap_err();
        let constraints = errs.iter().find(|e| e.key == "docker.constraints").unwrap();
        assert_eq!((constraints.line, constraints.column), (4, 15), "{constraints}");
        assert!(constraints.message.contains("column 19"), "{constraints}");
        let mesh = errs.iter().find(|e| e.key == "docker.mesh_entrypoint").unwrap();
        assert!(mesh.message.contains("no entrypoint named \"mesh\""), "{mesh}");
        let e = parse("[docker]\nexposed_by_default = \"yes\"\n", "agent.toml").unwrap_err();
        assert_eq!(e.key, "docker.exposed_by_default");
    }

    #[test]
    fn unknown_key_names_file_line_column_and_key() {
        let text = "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[proxy]\nmax_atempts = 4\n";
        let e = parse(text, "agent.toml").unwrap_err();
        assert_eq!((e.file.as_str(), e.line, e.column), ("agent.toml", 4, 1), "{e}");
        assert!(e.message.contains("unknown field `max_atempts`"), "{e}");
        assert_eq!(e.key, "proxy.max_atempts");
    }

    #[test]
    fn wrong_type_names_key() {
        let text = "[proxy]\nmax_attempts = \"many\"\n";
        let e = parse(text, "agent.toml").unwrap_err();
        assert_eq!(e.key, "proxy.max_attempts");
        assert_eq!((e.line, e.column), (2, 16), "{e}");
    }

    #[test]
    fn bad_address_and_range() {
        let text = "[admin]\naddress = \"localhost\"\n";
        let c = parse(text, "a.toml").unwrap();
        let e = validate(c, "a.toml", Path::new("."), Some(text)).unwrap_err();
        assert_eq!(e.key, "admin.address");
        assert_eq!((e.line, e.column), (2, 11), "{e}");
        let c = parse("[proxy]\nretry_budget_percent = 150\n", "a.toml").unwrap();
        let e = validate(c, "a.toml", Path::new("."), None).unwrap_err();
        assert_eq!(e.key, "proxy.retry_budget_percent");
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let text = "[admin]\naddress = \"0.0.0.0:9180\"\n";
        let c = parse(text, "a.toml").unwrap();
        let e = validate(c, "a.toml", Path::new("."), Some(text)).unwrap_err();
        assert_eq!((e.key.as_str(), e.line, e.column), ("admin.address", 2, 11), "{e}");
        assert!(e.message.contains("admin.token_file"), "{e}");
        let dir = std::env::temp_dir().join(format!("constellation-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "t0ken\n").unwrap();
        let text = "[admin]\naddress = \"0.0.0.0:9180\"\ntoken_file = \"admin.token\"\n";
        let v = validate(parse(text, "a.toml").unwrap(), "a.toml", &dir, Some(text)).unwrap();
        assert_eq!(v.admin_token.as_deref(), Some("t0ken"));
        let text = "[admin]\naddress = \"[::1]:9180\"\n";
        assert!(validate(parse(text, "a.toml").unwrap(), "a.toml", Path::new("."), Some(text)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn entrypoint_transport_defaults_and_keys() {
        let c = parse(EMBEDDED_DEFAULT, "embedded").unwrap();
        assert_eq!(c.entrypoints["web"].transport, TransportConfig::default());
        let t = &c.entrypoints["web"].transport;
        assert_eq!((t.read_timeout_ms, t.idle_timeout_ms), (60_000, 180_000));
        assert_eq!((t.max_connections, t.max_connections_per_ip), (None, 1_000));
        let text = "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[entrypoints.web.transport]\n\
                    read_timeout_ms = 2000\nidle_timeout_ms = 3000\nbody_read_timeout_ms = 4000\n\
                    write_timeout_ms = 0\nmax_connections = 50\nmax_connections_per_ip = 5\n";
        let t = parse(text, "a.toml").unwrap().entrypoints["web"].transport.clone();
        assert_eq!(
            t,
            TransportConfig {
                read_timeout_ms: 2000,
                idle_timeout_ms: 3000,
                body_read_timeout_ms: 4000,
                write_timeout_ms: 0,
                max_connections: Some(50),
                max_connections_per_ip: 5,
            }
        );
        let e = parse(
            "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[entrypoints.web.transport]\nread_timeout = 5\n",
            "a.toml",
        )
        .unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("entrypoints.web.transport.read_timeout", 4), "{e}");
        let text =
            "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n[entrypoints.web.transport]\nmax_connections_per_ip = 0\n";
        let e = validate(parse(text, "a.toml").unwrap(), "a.toml", Path::new("."), Some(text)).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line, e.column),
            ("entrypoints.web.transport.max_connections_per_ip", 4, 26),
            "{e}"
        );
        let c = apply_env(
            AgentConfig::default(),
            vec![("CONSTELLATION_ENTRYPOINTS__WEB__TRANSPORT__MAX_CONNECTIONS".to_string(), "77".to_string())],
        )
        .unwrap();
        assert_eq!(c.entrypoints["web"].transport.max_connections, Some(77));
        let text = default_toml();
        assert!(text.contains("[entrypoints.web.transport]\n"), "{text}");
        assert!(text.contains("read_timeout_ms = 60000"), "{text}");
        assert!(text.contains("# max_connections = 10000"), "{text}");
    }

    #[test]
    fn forwarded_headers_parse_and_bad_entries_name_the_key() {
        let text = "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n\
                    [entrypoints.web.forwarded_headers]\ntrusted_ips = [\"10.0.0.0/8\", \"::1\"]\n";
        let v = validate(parse(text, "a.toml").unwrap(), "a.toml", Path::new("."), Some(text)).unwrap();
        let web = &v.entrypoint_policies[0];
        assert_eq!(web.name, "web");
        assert!(web.forwarded.trusts(Some("10.1.2.3".parse().unwrap())));
        assert!(!web.forwarded.trusts(Some("127.0.0.1".parse().unwrap())));
        // Traefik's spelling is accepted too.
        let c = parse(
            "[entrypoints.web]\naddress = \"127.0.0.1:1\"\nforwardedHeaders = { trustedIPs = [\"1.2.3.4\"], insecure = true }\n",
            "a.toml",
        )
        .unwrap();
        assert!(c.entrypoints["web"].forwarded_headers.insecure);
        let text = "[entrypoints.web]\naddress = \"127.0.0.1:1\"\n\
                    [entrypoints.web.forwarded_headers]\ntrusted_ips = [\"10.0.0.0/33\"]\n";
        let e = validate(parse(text, "a.toml").unwrap(), "a.toml", Path::new("."), Some(text)).unwrap_err();
        assert_eq!(e.key, "entrypoints.web.forwarded_headers.trusted_ips");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("10.0.0.0/33"), "{e}");
        // The default trusts nobody.
        let v = validate(AgentConfig::default(), "d", Path::new("."), None).unwrap();
        assert_eq!(v.entrypoint_policies[0].forwarded, constellation_proxy::ForwardedPolicy::default());
    }

    #[test]
    fn environment_overrides() {
        let c = AgentConfig::default();
        let c = apply_env(
            c,
            vec![
                ("CONSTELLATION_PROXY__MAX_ATTEMPTS".to_string(), "5".to_string()),
                ("CONSTELLATION_ADMIN__ADDRESS".to_string(), "127.0.0.1:1234".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(c.proxy.max_attempts, 5);
        assert_eq!(c.admin.address, "127.0.0.1:1234");
        let e = apply_env(
            AgentConfig::default(),
            vec![("CONSTELLATION_PROXY__MAX_ATTEMPTS".to_string(), "lots".to_string())],
        )
        .unwrap_err();
        assert_eq!(e.file, "environment variable CONSTELLATION_PROXY__MAX_ATTEMPTS");
    }
}
