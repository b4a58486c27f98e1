//! Traefik dynamic configuration (file provider format): serde model, loading from YAML,
//! TOML or JSON, validation, merging of several files, and JSON output that Traefik's
//! HTTP provider can poll.
//!
//! Field names mirror Traefik's exactly (camelCase). Everything optional is an `Option`
//! or an empty collection skipped on output, so serialising a loaded configuration
//! emits only what was given; maps are [`BTreeMap`]s, so output order is deterministic.
//!
//! What is typed and what is kept verbatim:
//! - HTTP routers, services (`loadBalancer`, `weighted`, `failover`, `mirroring`) and
//!   the middlewares Constellation applies (`stripPrefix`, `addPrefix`, `headers`,
//!   `redirectScheme`, `retry`, `circuitBreaker`) are typed, with unknown fields refused.
//! - Every other Traefik middleware kind (`basicAuth`, `rateLimit`, …) and the
//!   `highestRandomWeight` service kind are kept as their JSON value
//!   ([`Middleware::Other`], [`HttpService::Other`]) and listed by
//!   [`DynamicConfig::unsupported`]. An unknown kind (a typo) is a parse error.
//! - TCP and UDP routers and services are typed; TCP middlewares, TCP `serversTransports`
//!   and the contents of `tls` options, stores and certificates are JSON values.
//!
//! Constellation extensions (accepted on input, never serialised, so the output still
//! validates against Traefik's schema): `healthCheck.rise` / `healthCheck.fall` on a
//! load balancer's health check and `loadBalancer.retryOn403`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::de::MapAccess;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

mod de;
mod duration;
mod locate;
mod validate;

#[cfg(test)]
mod tests;

pub use duration::{parse_duration, TraefikDuration};
pub use locate::{locate, Position};
pub use validate::ValidationError;

use de::{lenient_opt_string, lenient_opt_string_map, lenient_string_map, one_of, present, unique_map, OneOf};

// ---------------------------------------------------------------------------------------
// Top level
// ---------------------------------------------------------------------------------------

/// A whole dynamic configuration document (one file, or several merged).
///
/// Equality compares the configuration only, not which file each object came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a Traefik dynamic configuration (a map with http, tcp, udp, tls)")]
pub struct DynamicConfig {
    /// `http` section.
    #[serde(default, skip_serializing_if = "HttpConfig::is_empty")]
    pub http: HttpConfig,
    /// `tcp` section.
    #[serde(default, skip_serializing_if = "TcpConfig::is_empty")]
    pub tcp: TcpConfig,
    /// `udp` section.
    #[serde(default, skip_serializing_if = "UdpConfig::is_empty")]
    pub udp: UdpConfig,
    /// `tls` section (certificates, options, stores), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Object path (`http.routers.api`) → origin (file) that defined it.
    #[serde(skip)]
    provenance: BTreeMap<String, String>,
    /// Origin → the text it was parsed from, to place errors found after parsing.
    #[serde(skip)]
    texts: BTreeMap<String, std::sync::Arc<str>>,
}

impl PartialEq for DynamicConfig {
    fn eq(&self, other: &Self) -> bool {
        self.http == other.http && self.tcp == other.tcp && self.udp == other.udp && self.tls == other.tls
    }
}

/// The `http` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "the http section (a map with routers, services, middlewares, serversTransports)")]
pub struct HttpConfig {
    /// Routers by name.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub routers: BTreeMap<String, HttpRouter>,
    /// Services by name.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, HttpService>,
    /// Middlewares by name.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub middlewares: BTreeMap<String, Middleware>,
    /// Servers transports by name: how connections to upstreams are made (TLS trust,
    /// client certificates, HTTP/2, timeouts).
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub servers_transports: BTreeMap<String, ServersTransport>,
}

impl HttpConfig {
    /// Whether nothing is defined.
    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
            && self.services.is_empty()
            && self.middlewares.is_empty()
            && self.servers_transports.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// HTTP routers
// ---------------------------------------------------------------------------------------

/// An HTTP router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "an HTTP router (a map of router settings)")]
pub struct HttpRouter {
    /// Entry points the router listens on (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_points: Vec<String>,
    /// Middleware names, applied in order (`name` or `name@provider`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub middlewares: Vec<String>,
    /// Service name (`name` or `name@provider`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Matching rule, e.g. ``Host(`example.com`)`` (not checked here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Rule syntax (`v3` or `v2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_syntax: Option<String>,
    /// Priority; Traefik defaults to the rule length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// TLS termination; present (even empty) means the router serves HTTPS.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouterTls>,
    /// Per-router observability switches.
    // Outside the v3 schema the Traefik endpoint must satisfy: read, never served.
    #[serde(default, skip_serializing)]
    pub observability: Option<RouterObservability>,
    /// Parent routers (Traefik multi-layer routing; not supported by Constellation).
    // Outside the v3 schema the Traefik endpoint must satisfy: read, never served.
    #[serde(default, skip_serializing)]
    pub parent_refs: Option<Vec<String>>,
}

/// Router TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterTls {
    /// TLS options name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// Certificate resolver name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_resolver: Option<String>,
    /// Domains to get certificates for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<Domain>>,
}

/// A certificate domain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Domain {
    /// Main domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<String>,
    /// Subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sans: Option<Vec<String>>,
}

/// Router observability switches (Traefik ≥ 3.1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterObservability {
    /// Access logs on/off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_logs: Option<bool>,
    /// Metrics on/off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<bool>,
    /// Tracing on/off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<bool>,
    /// Trace verbosity (`minimal`, `detailed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_verbosity: Option<String>,
}

// ---------------------------------------------------------------------------------------
// HTTP services
// ---------------------------------------------------------------------------------------

/// An HTTP service: exactly one kind.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // configuration objects, built once per reload
pub enum HttpService {
    /// `loadBalancer`: a set of servers.
    LoadBalancer(LoadBalancer),
    /// `weighted`: weighted round robin over other services.
    Weighted(Weighted),
    /// `failover`: a main service and a fallback.
    Failover(Failover),
    /// `mirroring`: parsed and checked, not applied by Constellation.
    Mirroring(Mirroring),
    /// Another Traefik service kind (`highestRandomWeight`), kept verbatim, not applied.
    Other {
        /// The kind, e.g. `highestRandomWeight`.
        kind: String,
        /// Its configuration as given.
        config: Value,
    },
}

impl HttpService {
    /// The kind name as written in the configuration (`loadBalancer`, …).
    pub fn kind(&self) -> &str {
        match self {
            HttpService::LoadBalancer(_) => "loadBalancer",
            HttpService::Weighted(_) => "weighted",
            HttpService::Failover(_) => "failover",
            HttpService::Mirroring(_) => "mirroring",
            HttpService::Other { kind, .. } => kind,
        }
    }
}

impl OneOf for HttpService {
    const WHAT: &'static str = "service";
    const KINDS: &'static [&'static str] =
        &["loadBalancer", "weighted", "failover", "mirroring", "highestRandomWeight"];
    fn kind_value<'de, A: MapAccess<'de>>(kind: String, map: &mut A) -> Result<Self, A::Error> {
        Ok(match kind.as_str() {
            "loadBalancer" => HttpService::LoadBalancer(map.next_value()?),
            "weighted" => HttpService::Weighted(map.next_value()?),
            "failover" => HttpService::Failover(map.next_value()?),
            "mirroring" => HttpService::Mirroring(map.next_value()?),
            _ => HttpService::Other { config: map.next_value()?, kind },
        })
    }
}

impl<'de> Deserialize<'de> for HttpService {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        one_of(deserializer)
    }
}

impl Serialize for HttpService {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            HttpService::LoadBalancer(v) => map.serialize_entry("loadBalancer", v)?,
            HttpService::Weighted(v) => map.serialize_entry("weighted", v)?,
            HttpService::Failover(v) => map.serialize_entry("failover", v)?,
            HttpService::Mirroring(v) => map.serialize_entry("mirroring", v)?,
            HttpService::Other { kind, config } => map.serialize_entry(kind, config)?,
        }
        map.end()
    }
}

/// A `loadBalancer` service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "a loadBalancer (a map with servers, healthCheck, …)")]
pub struct LoadBalancer {
    /// Servers (at least one is required; see validation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// Active health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<ServerHealthCheck>,
    /// Forward the client's Host header (Traefik default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_host_header: Option<bool>,
    /// Sticky sessions.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Servers transport name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers_transport: Option<String>,
    /// Response forwarding (flush interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_forwarding: Option<ResponseForwarding>,
    /// Balancing strategy (Traefik ≥ 3.4): `wrr`, `p2c`, `hrw`, `leasttime`.
    // Outside the v3 schema the Traefik endpoint must satisfy: read, never served.
    #[serde(default, skip_serializing)]
    pub strategy: Option<String>,
    /// Passive health check (Traefik ≥ 3.5; not supported by Constellation), verbatim.
    // Outside the v3 schema the Traefik endpoint must satisfy: read, never served.
    #[serde(default, skip_serializing)]
    pub passive_health_check: Option<Value>,
    /// Constellation extension: a 403 from this service counts as a gateway failure
    /// and is failed over (for WARP egress gateways). Never serialised.
    #[serde(default, rename = "retryOn403", skip_serializing)]
    pub retry_on_403: bool,
    /// Servers are filled in by a provider (containers, announced instances) and may all
    /// be gone for a while: no servers then means every request gets 503, not an invalid
    /// configuration. Never read from or written to text.
    #[serde(skip)]
    pub provided: bool,
}

/// A load-balancer server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "a server (a map with url)")]
pub struct Server {
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    /// Weight for weighted balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Keep the URL's path as a prefix of forwarded requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_path: Option<bool>,
}

/// Active health check of a load balancer's servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerHealthCheck {
    /// `http` or `https` (defaults to the server's scheme).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// `http` or `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Path to request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Method to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Expected status (any 2xx/3xx when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Port to check instead of the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Interval between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<TraefikDuration>,
    /// Timeout of one check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TraefikDuration>,
    /// Interval between checks while a server is unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_interval: Option<TraefikDuration>,
    /// Host header to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Follow redirects (Traefik default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
    /// Extra request headers.
    #[serde(default, deserialize_with = "lenient_string_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Constellation extension: consecutive successes needed to mark a server up.
    /// Never serialised.
    #[serde(default, skip_serializing)]
    pub rise: Option<u32>,
    /// Constellation extension: consecutive failures needed to mark a server down.
    /// Never serialised.
    #[serde(default, skip_serializing)]
    pub fall: Option<u32>,
}

/// Sticky sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sticky {
    /// Cookie settings; present (even empty) enables cookie stickiness.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub cookie: Option<StickyCookie>,
}

/// Sticky cookie settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickyCookie {
    /// Cookie name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Secure flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// HttpOnly flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    /// SameSite policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
    /// Max-Age in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i64>,
    /// Cookie path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Cookie domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// An HTTP servers transport (`http.serversTransports.<name>`), selected by a load
/// balancer's `serversTransport`. File names (`rootCAs`, `certFile`, `keyFile`) are read
/// by the control plane, relative to the folder of the file that defines the transport;
/// a value starting with `-----BEGIN` is the PEM text itself (Traefik's file-or-content).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "a servers transport (a map of transport settings)")]
pub struct ServersTransport {
    /// Name sent as SNI and verified in the server's certificate (default: the URL's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any server certificate (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// CA certificates (PEM files) trusted instead of the system roots.
    #[serde(default, rename = "rootCAs", skip_serializing_if = "Vec::is_empty")]
    pub root_cas: Vec<String>,
    /// Client certificates presented to servers that ask for one (the first is used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<TransportCertificate>,
    /// Idle connections kept per host (Traefik default 200; negative disables keep-alive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_conns_per_host: Option<i64>,
    /// Timeouts of the connections to servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_timeouts: Option<ForwardingTimeouts>,
    /// Speak HTTP/1.1 only to https servers (default false: ALPN offers h2 first).
    #[serde(default, rename = "disableHTTP2", skip_serializing_if = "Option::is_none")]
    pub disable_http2: Option<bool>,
    /// URI SAN the server certificate must carry (not applied: routers using it refuse traffic).
    #[serde(default, rename = "peerCertURI", skip_serializing_if = "Option::is_none")]
    pub peer_cert_uri: Option<String>,
    /// SPIFFE settings, verbatim (not applied: routers using it refuse traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<Value>,
}

/// A client certificate and its key (files or PEM text).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransportCertificate {
    /// Certificate chain, leaf first.
    pub cert_file: String,
    /// Private key.
    pub key_file: String,
}

/// `forwardingTimeouts` of a servers transport.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardingTimeouts {
    /// TCP and TLS connect (Traefik default 30s; Constellation's `[proxy]` connect timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<TraefikDuration>,
    /// Wait for response headers (and each later read); default `[proxy]` read timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_timeout: Option<TraefikDuration>,
    /// How long an idle pooled connection is kept (default `[proxy]` idle timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_conn_timeout: Option<TraefikDuration>,
    /// HTTP/2 ping interval on an idle connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_idle_timeout: Option<TraefikDuration>,
    /// Wait for a ping answer (not applied: routers using it refuse traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_timeout: Option<TraefikDuration>,
}

/// Response forwarding settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseForwarding {
    /// Flush interval (negative: flush after every write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval: Option<TraefikDuration>,
}

/// Health-check propagation switch of `weighted`/`failover`/`mirroring` (an empty
/// object in Traefik: present means on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckPropagation {}

/// A `weighted` service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Weighted {
    /// Child services and their weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<WeightedService>,
    /// Sticky sessions.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Health-check propagation.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckPropagation>,
}

/// A child of a weighted service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedService {
    /// Service name.
    pub name: String,
    /// Weight (Traefik default: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A `failover` service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failover {
    /// Main service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Service used while the main one is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Health-check propagation.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckPropagation>,
    /// Failover on error statuses (Traefik ≥ 3.6; not supported), verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Value>,
}

/// A `mirroring` service (parsed and checked, not applied by Constellation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirroring {
    /// Main service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Whether the body is mirrored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_body: Option<bool>,
    /// Largest body mirrored (-1: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<i64>,
    /// Mirrors and the percentage of requests each gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// Health-check propagation.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckPropagation>,
}

/// One mirror of a mirroring service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Service name.
    pub name: String,
    /// Percentage of requests mirrored (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

// ---------------------------------------------------------------------------------------
// HTTP middlewares
// ---------------------------------------------------------------------------------------

/// An HTTP middleware: exactly one kind.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // configuration objects, built once per reload
pub enum Middleware {
    /// `stripPrefix`.
    StripPrefix(StripPrefix),
    /// `addPrefix`.
    AddPrefix(AddPrefix),
    /// `headers`.
    Headers(Headers),
    /// `redirectScheme`.
    RedirectScheme(RedirectScheme),
    /// `retry`.
    Retry(Retry),
    /// `circuitBreaker`.
    CircuitBreaker(CircuitBreaker),
    /// Any other Traefik middleware kind, kept verbatim and not applied.
    Other {
        /// The kind, e.g. `basicAuth`.
        kind: String,
        /// Its configuration as given.
        config: Value,
    },
}

impl Middleware {
    /// The kind name as written in the configuration (`stripPrefix`, `basicAuth`, …).
    pub fn kind(&self) -> &str {
        match self {
            Middleware::StripPrefix(_) => "stripPrefix",
            Middleware::AddPrefix(_) => "addPrefix",
            Middleware::Headers(_) => "headers",
            Middleware::RedirectScheme(_) => "redirectScheme",
            Middleware::Retry(_) => "retry",
            Middleware::CircuitBreaker(_) => "circuitBreaker",
            Middleware::Other { kind, .. } => kind,
        }
    }
}

impl OneOf for Middleware {
    const WHAT: &'static str = "middleware";
    const KINDS: &'static [&'static str] = &[
        "addPrefix",
        "basicAuth",
        "buffering",
        "chain",
        "circuitBreaker",
        "compress",
        "contentType",
        "digestAuth",
        "encodedCharacters",
        "errors",
        "forwardAuth",
        "grpcWeb",
        "headers",
        "inFlightReq",
        "ipAllowList",
        "ipWhiteList",
        "passTLSClientCert",
        "plugin",
        "rateLimit",
        "redirectRegex",
        "redirectScheme",
        "replacePath",
        "replacePathRegex",
        "retry",
        "stripPrefix",
        "stripPrefixRegex",
    ];
    fn kind_value<'de, A: MapAccess<'de>>(kind: String, map: &mut A) -> Result<Self, A::Error> {
        Ok(match kind.as_str() {
            "stripPrefix" => Middleware::StripPrefix(map.next_value()?),
            "addPrefix" => Middleware::AddPrefix(map.next_value()?),
            "headers" => Middleware::Headers(map.next_value()?),
            "redirectScheme" => Middleware::RedirectScheme(map.next_value()?),
            "retry" => Middleware::Retry(map.next_value()?),
            "circuitBreaker" => Middleware::CircuitBreaker(map.next_value()?),
            _ => Middleware::Other { config: map.next_value()?, kind },
        })
    }
}

impl<'de> Deserialize<'de> for Middleware {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        one_of(deserializer)
    }
}

impl Serialize for Middleware {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Middleware::StripPrefix(v) => map.serialize_entry("stripPrefix", v)?,
            Middleware::AddPrefix(v) => map.serialize_entry("addPrefix", v)?,
            Middleware::Headers(v) => map.serialize_entry("headers", v)?,
            Middleware::RedirectScheme(v) => map.serialize_entry("redirectScheme", v)?,
            Middleware::Retry(v) => map.serialize_entry("retry", v)?,
            Middleware::CircuitBreaker(v) => map.serialize_entry("circuitBreaker", v)?,
            Middleware::Other { kind, config } => map.serialize_entry(kind, config)?,
        }
        map.end()
    }
}

/// `stripPrefix` middleware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StripPrefix {
    /// Prefixes to strip (the first that matches is removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// Ensure the stripped path starts with `/` (deprecated in Traefik, default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_slash: Option<bool>,
}

/// `addPrefix` middleware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddPrefix {
    /// Prefix to add to the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `redirectScheme` middleware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectScheme {
    /// Target scheme (`https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Target port, as a string (a YAML/TOML number is accepted).
    #[serde(default, deserialize_with = "lenient_opt_string", skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// 301/308 instead of 302/307.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent: Option<bool>,
}

/// `retry` middleware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Number of attempts (required, at least 1).
    pub attempts: u32,
    /// First back-off interval (doubles each time); none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_interval: Option<TraefikDuration>,
    /// Overall retry timeout (Traefik ≥ 3.6; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TraefikDuration>,
    /// Largest request body buffered for retries (Traefik ≥ 3.6; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<i64>,
    /// Statuses that trigger a retry (Traefik ≥ 3.6; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<String>>,
    /// Do not retry on network errors (Traefik ≥ 3.6; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_retry_on_network_error: Option<bool>,
    /// Retry non-idempotent methods (Traefik ≥ 3.6; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_non_idempotent_method: Option<bool>,
}

/// `circuitBreaker` middleware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Trip expression, e.g. `NetworkErrorRatio() > 0.5` (not checked here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// How often the expression is evaluated (Traefik default 100ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_period: Option<TraefikDuration>,
    /// How long the breaker stays open (Traefik default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_duration: Option<TraefikDuration>,
    /// How long the recovery ramp lasts (Traefik default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_duration: Option<TraefikDuration>,
    /// Status returned while open (Traefik default 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<u16>,
}

/// `headers` middleware. Header maps accept YAML/TOML numbers as values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Request headers to set (an empty value removes the header).
    #[serde(default, deserialize_with = "lenient_string_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_request_headers: BTreeMap<String, String>,
    /// Response headers to set (an empty value removes the header).
    #[serde(default, deserialize_with = "lenient_string_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_response_headers: BTreeMap<String, String>,
    /// CORS: Access-Control-Allow-Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control_allow_credentials: Option<bool>,
    /// CORS: Access-Control-Allow-Headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control_allow_headers: Option<Vec<String>>,
    /// CORS: Access-Control-Allow-Methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control_allow_methods: Option<Vec<String>>,
    /// CORS: allowed origins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control_allow_origin_list: Option<Vec<String>>,
    /// CORS: allowed origin regexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control_allow_origin_list_regex: Option<Vec<String>>,
    /// CORS: Access-Control-Expose-Headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control_expose_headers: Option<Vec<String>>,
    /// CORS: Access-Control-Max-Age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control_max_age: Option<i64>,
    /// Add `Vary: Origin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_vary_header: Option<bool>,
    /// Allowed Host values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    /// Headers that may carry the original host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_proxy_headers: Option<Vec<String>>,
    /// Deprecated: redirect to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_redirect: Option<bool>,
    /// Deprecated: temporary redirect to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_temporary_redirect: Option<bool>,
    /// Deprecated: host to redirect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_host: Option<String>,
    /// Header/value pairs that mean the request was HTTPS.
    #[serde(default, deserialize_with = "lenient_opt_string_map", skip_serializing_if = "Option::is_none")]
    pub ssl_proxy_headers: Option<BTreeMap<String, String>>,
    /// Deprecated: force the SSL host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_force_host: Option<bool>,
    /// HSTS max-age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_seconds: Option<i64>,
    /// HSTS includeSubDomains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_include_subdomains: Option<bool>,
    /// HSTS preload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_preload: Option<bool>,
    /// Send HSTS over plain HTTP too.
    #[serde(default, rename = "forceSTSHeader", skip_serializing_if = "Option::is_none")]
    pub force_sts_header: Option<bool>,
    /// `X-Frame-Options: DENY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_deny: Option<bool>,
    /// Custom X-Frame-Options value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_frame_options_value: Option<String>,
    /// `X-Content-Type-Options: nosniff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type_nosniff: Option<bool>,
    /// `X-XSS-Protection: 1; mode=block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_xss_filter: Option<bool>,
    /// Custom X-XSS-Protection value.
    #[serde(default, rename = "customBrowserXSSValue", skip_serializing_if = "Option::is_none")]
    pub custom_browser_xss_value: Option<String>,
    /// Content-Security-Policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_security_policy: Option<String>,
    /// Content-Security-Policy-Report-Only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_security_policy_report_only: Option<String>,
    /// Public-Key-Pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Referrer-Policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_policy: Option<String>,
    /// Deprecated Feature-Policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_policy: Option<String>,
    /// Permissions-Policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions_policy: Option<String>,
    /// Development mode (relaxes AllowedHosts, SSL, STS checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_development: Option<bool>,
}

// ---------------------------------------------------------------------------------------
// TCP and UDP
// ---------------------------------------------------------------------------------------

/// The `tcp` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "the tcp section (a map with routers, services, middlewares, serversTransports)")]
pub struct TcpConfig {
    /// Routers by name.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub routers: BTreeMap<String, TcpRouter>,
    /// Services by name.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, TcpService>,
    /// Middlewares by name, kept verbatim.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub middlewares: BTreeMap<String, Value>,
    /// Servers transports by name, kept verbatim.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub servers_transports: BTreeMap<String, Value>,
}

impl TcpConfig {
    /// Whether nothing is defined.
    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
            && self.services.is_empty()
            && self.middlewares.is_empty()
            && self.servers_transports.is_empty()
    }
}

/// A TCP router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "a TCP router (a map of router settings)")]
pub struct TcpRouter {
    /// Entry points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_points: Vec<String>,
    /// TCP middleware names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub middlewares: Vec<String>,
    /// Service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Rule, e.g. ``HostSNI(`*`)``.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Rule syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_syntax: Option<String>,
    /// Priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// TLS; present (even empty) means TLS.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub tls: Option<TcpRouterTls>,
}

/// TCP router TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouterTls {
    /// Pass TLS through to the servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<bool>,
    /// TLS options name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// Certificate resolver name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_resolver: Option<String>,
    /// Domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<Domain>>,
}

/// A TCP service: exactly one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum TcpService {
    /// `loadBalancer`.
    LoadBalancer(TcpLoadBalancer),
    /// `weighted`.
    Weighted(TcpWeighted),
}

impl OneOf for TcpService {
    const WHAT: &'static str = "TCP service";
    const KINDS: &'static [&'static str] = &["loadBalancer", "weighted"];
    fn kind_value<'de, A: MapAccess<'de>>(kind: String, map: &mut A) -> Result<Self, A::Error> {
        Ok(match kind.as_str() {
            "loadBalancer" => TcpService::LoadBalancer(map.next_value()?),
            _ => TcpService::Weighted(map.next_value()?),
        })
    }
}

impl<'de> Deserialize<'de> for TcpService {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        one_of(deserializer)
    }
}

impl Serialize for TcpService {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            TcpService::LoadBalancer(v) => map.serialize_entry("loadBalancer", v)?,
            TcpService::Weighted(v) => map.serialize_entry("weighted", v)?,
        }
        map.end()
    }
}

/// A TCP `loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpLoadBalancer {
    /// Servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<TcpServer>,
    /// Servers transport name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers_transport: Option<String>,
    /// PROXY protocol settings, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<Value>,
    /// Deprecated termination delay (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_delay: Option<i64>,
    /// Health check, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Value>,
    /// Servers are filled in by the control plane (a stateful group's primary) and may
    /// be absent while the group is withdrawn: no servers then closes connections, not
    /// an invalid configuration. Never read from or written to text.
    #[serde(skip)]
    pub provided: bool,
}

/// A TCP server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpServer {
    /// `host:port`.
    pub address: String,
    /// Connect with TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
}

/// A TCP `weighted` service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpWeighted {
    /// Child services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<WeightedService>,
    /// Health-check propagation.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckPropagation>,
}

/// The `udp` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "the udp section (a map with routers, services)")]
pub struct UdpConfig {
    /// Routers by name.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub routers: BTreeMap<String, UdpRouter>,
    /// Services by name.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, UdpService>,
}

impl UdpConfig {
    /// Whether nothing is defined.
    pub fn is_empty(&self) -> bool {
        self.routers.is_empty() && self.services.is_empty()
    }
}

/// A UDP router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "a UDP router (a map with entryPoints, service)")]
pub struct UdpRouter {
    /// Entry points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_points: Vec<String>,
    /// Service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A UDP service: exactly one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum UdpService {
    /// `loadBalancer`.
    LoadBalancer(UdpLoadBalancer),
    /// `weighted`.
    Weighted(UdpWeighted),
}

impl OneOf for UdpService {
    const WHAT: &'static str = "UDP service";
    const KINDS: &'static [&'static str] = &["loadBalancer", "weighted"];
    fn kind_value<'de, A: MapAccess<'de>>(kind: String, map: &mut A) -> Result<Self, A::Error> {
        Ok(match kind.as_str() {
            "loadBalancer" => UdpService::LoadBalancer(map.next_value()?),
            _ => UdpService::Weighted(map.next_value()?),
        })
    }
}

impl<'de> Deserialize<'de> for UdpService {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        one_of(deserializer)
    }
}

impl Serialize for UdpService {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            UdpService::LoadBalancer(v) => map.serialize_entry("loadBalancer", v)?,
            UdpService::Weighted(v) => map.serialize_entry("weighted", v)?,
        }
        map.end()
    }
}

/// A UDP `loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UdpLoadBalancer {
    /// Servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<UdpServer>,
}

/// A UDP server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UdpServer {
    /// `host:port`.
    pub address: String,
}

/// A UDP `weighted` service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UdpWeighted {
    /// Child services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<WeightedService>,
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

/// The `tls` section: certificates, options by name, certificate stores by name.
/// Values are checked when TLS is compiled (`crate::tls`), with file:line:column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "the tls section (a map with certificates, options, stores)")]
pub struct TlsConfig {
    /// Certificates (`certFile`, `keyFile`, `stores`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<TlsCertificate>,
    /// TLS options by name.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, TlsOptions>,
    /// Certificate stores by name.
    #[serde(default, deserialize_with = "unique_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<String, TlsStore>,
}

/// One `tls.certificates[]` entry. `certFile` and `keyFile` are paths (relative to the
/// file that names them) or the PEM text itself, as in Traefik.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "a certificate (a map with certFile, keyFile, stores)")]
pub struct TlsCertificate {
    /// The certificate chain, PEM: a path or the text.
    #[serde(default)]
    pub cert_file: String,
    /// The private key, PEM: a path or the text.
    #[serde(default)]
    pub key_file: String,
    /// Stores it joins (only `default` exists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<String>,
}

/// `tls.options.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(expecting = "TLS options (a map with minVersion, cipherSuites, clientAuth, sniStrict, ...)")]
pub struct TlsOptions {
    /// `VersionTLS12` or `VersionTLS13` (default TLS 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    /// `VersionTLS12` or `VersionTLS13` (default TLS 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<String>,
    /// Cipher suites by their IANA/Go names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// Key-exchange groups (`X25519`, `CurveP256`, `CurveP384`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve_preferences: Vec<String>,
    /// Client certificates (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// Refuse handshakes whose server name matches no certificate (and those with none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni_strict: Option<bool>,
    /// ALPN protocols offered, in order (default `h2`, `http/1.1`, `acme-tls/1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn_protocols: Option<Vec<String>>,
    /// Accepted for compatibility: the server never issues session tickets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_session_tickets: Option<bool>,
    /// Deprecated in Traefik; accepted and ignored (the server's order is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_server_cipher_suites: Option<bool>,
}

/// `tls.options.<name>.clientAuth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientAuth {
    /// CA certificates (paths or PEM text) client certificates must chain to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_files: Vec<String>,
    /// `NoClientCert`, `VerifyClientCertIfGiven`, `RequireAndVerifyClientCert`
    /// (`RequestClientCert` and `RequireAnyClientCert` are refused: no verification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth_type: Option<String>,
}

/// `tls.stores.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsStore {
    /// The certificate served when no other matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_certificate: Option<StoreCertificate>,
    /// Traefik's ACME-generated default certificate (not supported: refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_generated_cert: Option<Value>,
}

/// A store's `defaultCertificate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreCertificate {
    /// The certificate chain, PEM: a path or the text.
    #[serde(default)]
    pub cert_file: String,
    /// The private key, PEM: a path or the text.
    #[serde(default)]
    pub key_file: String,
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// A configuration file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// TOML (`.toml`).
    Toml,
    /// JSON (`.json`).
    Json,
}

/// The file extensions [`parse_named`] understands.
pub const SUPPORTED_EXTENSIONS: &str = ".yaml, .yml, .toml, .json";

impl Format {
    /// The format for a path's extension (case-insensitive), if supported.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// A configuration that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The file (or other origin) being parsed.
    pub origin: String,
    /// 1-based line of the problem, when the parser knows it.
    pub line: Option<usize>,
    /// 1-based column of the problem, when the parser knows it.
    pub column: Option<usize>,
    /// Key path of the problem (`http.routers.api.service`), when known.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(path) = &self.path {
            write!(f, ": {path}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ParseError {}

/// Errors from parsing or merging dynamic configuration.
#[derive(Debug, thiserror::Error)]
pub enum DynamicError {
    /// The file extension names no supported format.
    #[error("{origin}: unsupported file extension {extension:?} (supported: {SUPPORTED_EXTENSIONS})")]
    UnsupportedFormat {
        /// The file.
        origin: String,
        /// Its extension (empty when it has none).
        extension: String,
    },
    /// The text is not a valid dynamic configuration.
    #[error("{0}")]
    Parse(ParseError),
    /// Names defined in more than one file.
    #[error("{0}")]
    Merge(MergeError),
}

/// Parse the text of a dynamic configuration file named `name`, choosing the format
/// from the name's extension (`.yaml`/`.yml`, `.toml`, `.json`). `name` is only a label:
/// nothing is read from disk (the caller read `text`); it is the origin named in errors
/// (`name:line:column: key: message`). An empty text is an empty configuration.
pub fn parse_named(name: &str, text: &str) -> Result<DynamicConfig, DynamicError> {
    let path = Path::new(name);
    let Some(format) = Format::from_path(path) else {
        return Err(DynamicError::UnsupportedFormat {
            extension: path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default(),
            origin: name.to_string(),
        });
    };
    parse_str(text, format, name)
}

/// Traefik v3's JSON schema of the file provider's dynamic configuration: every key a
/// configuration may hold, with its type. The Docker provider walks it to turn
/// case-insensitive `traefik.*` labels into this model's keys.
pub const FILE_PROVIDER_SCHEMA: &str = include_str!("../tests/fixtures/dynamic/traefik-v3-file-provider.json");

/// A dynamic configuration from a JSON value built by a provider (e.g. container labels);
/// `origin` is recorded for every object, as [`parse_str`] does for files. Errors carry
/// the path of the offending key.
pub fn from_value(value: serde_json::Value, origin: &str) -> Result<DynamicConfig, DynamicError> {
    let mut config: DynamicConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        DynamicError::Parse(ParseError {
            origin: origin.to_string(),
            line: None,
            column: None,
            path: path_of(&e),
            message: e.inner().to_string(),
        })
    })?;
    let names = config.object_names();
    config.provenance = names.into_iter().map(|name| (name, origin.to_string())).collect();
    Ok(config)
}

/// Parse a dynamic configuration from text. `origin` (usually the file name) is named in
/// errors and recorded as the origin of every object defined (see [`DynamicConfig::merge`]).
pub fn parse_str(text: &str, format: Format, origin: &str) -> Result<DynamicConfig, DynamicError> {
    // Editors on Windows may start a file with a byte-order mark; no parser wants it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut config = match format {
        Format::Json => parse_json(text, origin)?,
        Format::Yaml => parse_yaml(text, origin)?,
        Format::Toml => parse_toml(text, origin)?,
    };
    let names = config.object_names();
    config.provenance = names.into_iter().map(|name| (name, origin.to_string())).collect();
    config.texts.insert(origin.to_string(), text.into());
    Ok(config)
}

fn path_of<E>(err: &serde_path_to_error::Error<E>) -> Option<String> {
    let path = err.path().to_string();
    (path != "." && !path.is_empty()).then_some(path)
}

fn parse_json(text: &str, origin: &str) -> Result<DynamicConfig, DynamicError> {
    if text.trim().is_empty() {
        return Ok(DynamicConfig::default());
    }
    let json_error = |e: &serde_json::Error, path: Option<String>| {
        let (line, column) = (e.line(), e.column());
        let mut message = e.to_string();
        let suffix = format!(" at line {line} column {column}");
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
        DynamicError::Parse(ParseError {
            origin: origin.to_string(),
            line: (line > 0).then_some(line),
            column: (line > 0).then_some(column),
            path,
            message,
        })
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let config: DynamicConfig =
        serde_path_to_error::deserialize(&mut de).map_err(|e| json_error(e.inner(), path_of(&e)))?;
    de.end().map_err(|e| json_error(&e, None))?;
    Ok(config)
}

fn parse_yaml(text: &str, origin: &str) -> Result<DynamicConfig, DynamicError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let config: Option<DynamicConfig> = serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        let location = inner.location();
        let mut message = inner.to_string();
        if let Some(loc) = &location {
            // The location is reported separately; libyaml scanner messages may also
            // name a second position, which stays.
            let at = format!(" at line {} column {}", loc.line(), loc.column());
            message = message.replacen(&at, "", 1);
        }
        let path = path_of(&e);
        // serde_yaml prefixes some messages with its own (shorter) idea of the path.
        if let Some((head, rest)) = message.split_once(": ") {
            if path.as_deref().is_some_and(|p| p.starts_with(head)) {
                message = rest.to_string();
            }
        }
        DynamicError::Parse(ParseError {
            origin: origin.to_string(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            path,
            message,
        })
    })?;
    Ok(config.unwrap_or_default())
}

fn parse_toml(text: &str, origin: &str) -> Result<DynamicConfig, DynamicError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        let (line, column) = match inner.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        DynamicError::Parse(ParseError {
            origin: origin.to_string(),
            line,
            column,
            path: path_of(&e),
            message: inner.message().trim_end().replace('\n', ", "),
        })
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------
// Names, provenance, merging
// ---------------------------------------------------------------------------------------

/// One name defined by two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeConflict {
    /// The object, e.g. `http.routers.api`.
    pub object: String,
    /// Where it was defined first.
    pub first: String,
    /// Where it was defined again.
    pub second: String,
}

impl fmt::Display for MergeConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is defined in both {} and {}", self.object, self.first, self.second)
    }
}

/// [`DynamicConfig::merge`] refused: the listed names are defined twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeError {
    /// Every conflicting name.
    pub conflicts: Vec<MergeConflict>,
}

impl fmt::Display for MergeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.conflicts.iter().map(|c| c.to_string()).collect();
        write!(f, "{} (Traefik would drop both definitions; Constellation refuses)", lines.join("; "))
    }
}

impl std::error::Error for MergeError {}

impl From<MergeError> for DynamicError {
    fn from(e: MergeError) -> Self {
        DynamicError::Merge(e)
    }
}

/// Where an object came from when nothing recorded it.
const UNKNOWN_ORIGIN: &str = "an earlier configuration";

impl DynamicConfig {
    /// Every named object, as paths like `http.routers.api` or `tls.options.default`,
    /// sorted.
    pub fn object_names(&self) -> BTreeSet<String> {
        fn add<V>(out: &mut BTreeSet<String>, prefix: &str, map: &BTreeMap<String, V>) {
            out.extend(map.keys().map(|k| format!("{prefix}.{k}")));
        }
        let mut out = BTreeSet::new();
        add(&mut out, "http.routers", &self.http.routers);
        add(&mut out, "http.services", &self.http.services);
        add(&mut out, "http.middlewares", &self.http.middlewares);
        add(&mut out, "http.serversTransports", &self.http.servers_transports);
        add(&mut out, "tcp.routers", &self.tcp.routers);
        add(&mut out, "tcp.services", &self.tcp.services);
        add(&mut out, "tcp.middlewares", &self.tcp.middlewares);
        add(&mut out, "tcp.serversTransports", &self.tcp.servers_transports);
        add(&mut out, "udp.routers", &self.udp.routers);
        add(&mut out, "udp.services", &self.udp.services);
        if let Some(tls) = &self.tls {
            add(&mut out, "tls.options", &tls.options);
            add(&mut out, "tls.stores", &tls.stores);
        }
        out
    }

    /// The origin (file) that defined `object` (`http.routers.api`), if recorded by
    /// [`parse_str`]/[`parse_named`] or [`DynamicConfig::merge`].
    pub fn origin_of(&self, object: &str) -> Option<&str> {
        self.provenance.get(object).map(String::as_str)
    }

    /// The file that defined `object` and where its `field` (`rule`,
    /// `loadBalancer.servers[0].url`; empty for the object itself) is written there,
    /// when the text is known and the key can be found (see [`locate`]).
    pub fn position(&self, object: &str, field: &str) -> Option<(&str, Position)> {
        let origin = self.origin_of(object)?;
        let text = self.texts.get(origin)?;
        locate(text, object, field).or_else(|| locate(text, object, "")).map(|p| (origin, p))
    }

    /// Like [`DynamicConfig::position`], for keys without a recorded origin too (the
    /// `tls` section's `certificates[i]`): the first source text where the key is found.
    pub fn position_anywhere(&self, object: &str, field: &str) -> Option<(&str, Position)> {
        if let Some(found) = self.position(object, field) {
            return Some(found);
        }
        let (head, rest) = match object.split_once('.') {
            Some((h, r)) => (h, format!("{r}.{field}")),
            None => (object, field.to_string()),
        };
        self.texts.iter().find_map(|(origin, text)| locate(text, head, &rest).map(|p| (origin.as_str(), p)))
    }

    /// The names of the source texts merged into this configuration.
    pub fn source_names(&self) -> Vec<&str> {
        self.texts.keys().map(String::as_str).collect()
    }

    /// Add everything `other` defines (from `origin`, used for objects whose origin
    /// `other` did not record). A name that both define is an error naming both
    /// origins; then nothing is merged. TLS certificates are concatenated.
    pub fn merge(&mut self, other: DynamicConfig, origin: &str) -> Result<(), MergeError> {
        let mine = self.object_names();
        let theirs = other.object_names();
        let origin_in_other = |name: &str| other.provenance.get(name).cloned().unwrap_or_else(|| origin.to_string());
        let conflicts: Vec<MergeConflict> = theirs
            .iter()
            .filter(|name| mine.contains(*name))
            .map(|name| MergeConflict {
                object: name.clone(),
                first: self.origin_of(name).unwrap_or(UNKNOWN_ORIGIN).to_string(),
                second: origin_in_other(name),
            })
            .collect();
        if !conflicts.is_empty() {
            return Err(MergeError { conflicts });
        }
        for name in &theirs {
            let from = origin_in_other(name);
            self.provenance.insert(name.clone(), from);
        }
        let DynamicConfig { http, tcp, udp, tls, texts, .. } = other;
        for (origin, text) in texts {
            self.texts.entry(origin).or_insert(text);
        }
        self.http.routers.extend(http.routers);
        self.http.services.extend(http.services);
        self.http.middlewares.extend(http.middlewares);
        self.http.servers_transports.extend(http.servers_transports);
        self.tcp.routers.extend(tcp.routers);
        self.tcp.services.extend(tcp.services);
        self.tcp.middlewares.extend(tcp.middlewares);
        self.tcp.servers_transports.extend(tcp.servers_transports);
        self.udp.routers.extend(udp.routers);
        self.udp.services.extend(udp.services);
        if let Some(tls) = tls {
            let mine = self.tls.get_or_insert_with(TlsConfig::default);
            mine.certificates.extend(tls.certificates);
            mine.options.extend(tls.options);
            mine.stores.extend(tls.stores);
        }
        Ok(())
    }

    /// Remove a named object (`http.routers.api`); unknown names are ignored.
    pub fn remove_object(&mut self, object: &str) {
        const KINDS: [&str; 10] = [
            "http.routers",
            "http.services",
            "http.middlewares",
            "http.serversTransports",
            "tcp.routers",
            "tcp.services",
            "tcp.middlewares",
            "tcp.serversTransports",
            "udp.routers",
            "udp.services",
        ];
        let Some((kind, name)) =
            KINDS.iter().find_map(|k| object.strip_prefix(k).and_then(|r| r.strip_prefix('.')).map(|n| (*k, n)))
        else {
            return;
        };
        match kind {
            "http.routers" => drop(self.http.routers.remove(name)),
            "http.services" => drop(self.http.services.remove(name)),
            "http.middlewares" => drop(self.http.middlewares.remove(name)),
            "http.serversTransports" => drop(self.http.servers_transports.remove(name)),
            "tcp.routers" => drop(self.tcp.routers.remove(name)),
            "tcp.services" => drop(self.tcp.services.remove(name)),
            "tcp.middlewares" => drop(self.tcp.middlewares.remove(name)),
            "tcp.serversTransports" => drop(self.tcp.servers_transports.remove(name)),
            "udp.routers" => drop(self.udp.routers.remove(name)),
            _ => drop(self.udp.services.remove(name)),
        }
        self.provenance.remove(object);
    }

    /// Merge configurations from a provider whose objects may be defined by several
    /// sources at once (the same router on two replicas of a container, on two nodes):
    /// identical definitions become one object; differing ones are conflicts, reported
    /// with both sources, and the object is left out (Traefik's rule for labels).
    /// TLS sections are ignored here (providers of certificates merge them their own way).
    pub fn merge_shared(parts: Vec<(String, DynamicConfig)>) -> (DynamicConfig, Vec<MergeConflict>) {
        fn fold<V: PartialEq>(
            kind: &str,
            out: &mut BTreeMap<String, V>,
            origins: &mut BTreeMap<String, String>,
            dropped: &mut BTreeSet<String>,
            conflicts: &mut Vec<MergeConflict>,
            origin: &str,
            items: BTreeMap<String, V>,
        ) {
            for (name, value) in items {
                let object = format!("{kind}.{name}");
                if dropped.contains(&object) {
                    continue;
                }
                match out.get(&name) {
                    None => {
                        out.insert(name, value);
                        origins.insert(object, origin.to_string());
                    }
                    Some(existing) if *existing == value => {}
                    Some(_) => {
                        let first = origins.get(&object).cloned().unwrap_or_default();
                        conflicts.push(MergeConflict { object: object.clone(), first, second: origin.to_string() });
                        out.remove(&name);
                        dropped.insert(object);
                    }
                }
            }
        }
        let mut out = DynamicConfig::default();
        let mut origins = BTreeMap::new();
        let mut dropped = BTreeSet::new();
        let mut conflicts = Vec::new();
        let (o, d, c) = (&mut origins, &mut dropped, &mut conflicts);
        for (origin, part) in parts {
            let DynamicConfig { http, tcp, udp, .. } = part;
            fold("http.routers", &mut out.http.routers, o, d, c, &origin, http.routers);
            fold("http.services", &mut out.http.services, o, d, c, &origin, http.services);
            fold("http.middlewares", &mut out.http.middlewares, o, d, c, &origin, http.middlewares);
            fold("http.serversTransports", &mut out.http.servers_transports, o, d, c, &origin, http.servers_transports);
            fold("tcp.routers", &mut out.tcp.routers, o, d, c, &origin, tcp.routers);
            fold("tcp.services", &mut out.tcp.services, o, d, c, &origin, tcp.services);
            fold("tcp.middlewares", &mut out.tcp.middlewares, o, d, c, &origin, tcp.middlewares);
            fold("tcp.serversTransports", &mut out.tcp.servers_transports, o, d, c, &origin, tcp.servers_transports);
            fold("udp.routers", &mut out.udp.routers, o, d, c, &origin, udp.routers);
            fold("udp.services", &mut out.udp.services, o, d, c, &origin, udp.services);
        }
        out.provenance = origins;
        (out, conflicts)
    }

    /// Everything that was parsed but that Constellation does not apply, one line per
    /// item, e.g. `http.middlewares.auth: basicAuth is not supported (parsed, not applied)`.
    /// Such parts are still served back to Traefik unchanged.
    pub fn unsupported(&self) -> Vec<String> {
        self.unsupported_items().iter().map(ToString::to_string).collect()
    }

    /// [`DynamicConfig::unsupported`] as data: which object sets which feature. A router
    /// that uses such an object refuses traffic (see `compile`).
    pub fn unsupported_items(&self) -> Vec<Unsupported> {
        let mut out = Vec::new();
        let mut note = |object: String, what: &str| {
            out.push(Unsupported { object, feature: what.to_string() });
        };
        for (name, router) in &self.http.routers {
            if router.parent_refs.is_some() {
                note(format!("http.routers.{name}"), "parentRefs");
            }
            if router.observability.is_some() {
                note(format!("http.routers.{name}"), "observability");
            }
        }
        for (name, service) in &self.http.services {
            let object = format!("http.services.{name}");
            match service {
                HttpService::LoadBalancer(lb) => {
                    if lb.passive_health_check.is_some() {
                        note(object, "loadBalancer.passiveHealthCheck");
                    }
                }
                HttpService::Failover(f) => {
                    if f.errors.is_some() {
                        note(object, "failover.errors");
                    }
                }
                HttpService::Weighted(_) => {}
                HttpService::Mirroring(_) | HttpService::Other { .. } => {
                    note(object, service.kind());
                }
            }
        }
        for (name, middleware) in &self.http.middlewares {
            let object = format!("http.middlewares.{name}");
            match middleware {
                Middleware::Other { kind, .. } if !crate::middleware::applies(kind) => note(object, kind),
                Middleware::Other { .. } => {}
                Middleware::Retry(r) => {
                    for field in set_fields(r, &["attempts", "initialInterval"]) {
                        note(object.clone(), &format!("retry.{field}"));
                    }
                }
                Middleware::Headers(h) => {
                    for field in set_fields(h, SUPPORTED_HEADERS_OPTIONS) {
                        note(object.clone(), &format!("headers.{field}"));
                    }
                }
                Middleware::StripPrefix(_)
                | Middleware::AddPrefix(_)
                | Middleware::RedirectScheme(_)
                | Middleware::CircuitBreaker(_) => {}
            }
        }
        out
    }
}

/// A part of a configuration that is parsed but not applied: `feature` of `object`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unsupported {
    /// The object that sets it, e.g. `http.middlewares.auth`.
    pub object: String,
    /// What is not applied, e.g. `basicAuth` or `headers.stsSeconds`.
    pub feature: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} is not supported (parsed, not applied)", self.object, self.feature)
    }
}

/// The `headers` middleware options that Constellation applies; any other option that
/// is set is listed by [`DynamicConfig::unsupported`].
/// (`sslRedirect`, `sslTemporaryRedirect`, `sslHost`, `sslForceHost` and `featurePolicy`,
/// removed in Traefik v3, are not: they are also compile errors naming them.)
pub const SUPPORTED_HEADERS_OPTIONS: &[&str] = &[
    "customRequestHeaders",
    "customResponseHeaders",
    "accessControlAllowCredentials",
    "accessControlAllowHeaders",
    "accessControlAllowMethods",
    "accessControlAllowOriginList",
    "accessControlAllowOriginListRegex",
    "accessControlExposeHeaders",
    "accessControlMaxAge",
    "addVaryHeader",
    "allowedHosts",
    "hostsProxyHeaders",
    "sslProxyHeaders",
    "stsSeconds",
    "stsIncludeSubdomains",
    "stsPreload",
    "forceSTSHeader",
    "frameDeny",
    "customFrameOptionsValue",
    "contentTypeNosniff",
    "browserXssFilter",
    "customBrowserXSSValue",
    "contentSecurityPolicy",
    "contentSecurityPolicyReportOnly",
    "publicKey",
    "referrerPolicy",
    "permissionsPolicy",
    "isDevelopment",
];

/// Names of the fields of `value` that are set (serialised) but not in `supported`.
fn set_fields<T: Serialize>(value: &T, supported: &[&str]) -> Vec<String> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map.keys().filter(|k| !supported.contains(&k.as_str())).cloned().collect(),
        _ => Vec::new(),
    }
}
