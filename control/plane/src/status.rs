//! The `/api/v1/status` document as types. The admin server fills a [`Status`] from live
//! state; `constellation status` (and tests) read the same types back, so the two can
//! never disagree about a field's name or meaning.
//!
//! Compatibility: fields are only ever added. Readers tolerate unknown fields (no
//! `deny_unknown_fields` here) and missing optional ones, so an older CLI can read a
//! newer agent.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use constellation_cluster::{ClusterView, MemberState};
use constellation_proxy::{BreakerState, RouteTable, Target};
use serde::{Deserialize, Serialize};

pub use constellation_dns::{DnsLast, DnsStatus};

/// The whole status document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    pub node: NodeInfo,
    /// Route table published and cluster joined (what `/readyz` answers).
    pub ready: bool,
    /// The route configuration in force.
    pub config: ConfigStatus,
    /// Cluster members as this node sees them (itself included).
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Outlier hints known cluster-wide.
    #[serde(default)]
    pub hints: Vec<HintStatus>,
    /// Leases by name (empty on nodes outside the lease group).
    #[serde(default)]
    pub leases: BTreeMap<String, LeaseStatus>,
    /// The Raft group; `null` when this node is not a voter.
    #[serde(default)]
    pub raft: Option<RaftStatus>,
    /// The DNS controller; `null` when `[dns]` is not configured.
    #[serde(default)]
    pub dns: Option<DnsStatus>,
    /// Entry points: connections open now and the limits in force.
    #[serde(default)]
    pub entrypoints: Vec<EntrypointStatus>,
    /// Routes by priority.
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
    /// Services with their upstreams.
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
    /// The Docker provider; `null` when it is off.
    #[serde(default)]
    pub docker: Option<DockerStatus>,
    /// Certificates served on TLS entry points (never key material), the default last.
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
    /// The ACME resolver; `null` when `[acme]` is not configured.
    #[serde(default)]
    pub acme: Option<AcmeStatus>,
    /// TCP routes by priority.
    #[serde(default)]
    pub tcp_routes: Vec<TcpRouteStatus>,
    /// TCP services with their servers.
    #[serde(default)]
    pub tcp_services: Vec<TcpServiceStatus>,
    /// UDP routes.
    #[serde(default)]
    pub udp_routes: Vec<UdpRouteStatus>,
    /// Stateful groups (Redis Sentinel, MongoDB replica sets) and where their route points.
    #[serde(default)]
    pub stateful: Vec<StatefulStatus>,
    /// WARP egress: this node's gateways, every node's verdicts, and how egress-bound
    /// services are routed; `null` when no node has a gateway and no service needs one.
    #[serde(default)]
    pub warp: Option<WarpStatus>,
}

/// WARP egress as this node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarpStatus {
    /// This node's gateways in full (probe details, container, restarts).
    #[serde(default)]
    pub gateways: Vec<constellation_warp::GatewayStatus>,
    /// Every live node's gateway verdicts, as gossiped, by node name.
    #[serde(default)]
    pub nodes: BTreeMap<String, Vec<constellation_cluster::EgressRecord>>,
    /// Egress-bound services and how they are routed now.
    #[serde(default)]
    pub services: Vec<crate::warp::EgressRouteStatus>,
    /// Nodes whose egress is hinted (repeated 403s), with the hint's origin.
    #[serde(default)]
    pub hints: Vec<HintStatus>,
}

/// One TCP route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpRouteStatus {
    /// Router name.
    pub name: String,
    /// Rule text.
    pub rule: String,
    /// Effective priority.
    pub priority: i64,
    /// Entry points (empty: every TCP entry point).
    pub entry_points: Vec<String>,
    /// `none`, `passthrough` or `terminate`.
    pub tls: String,
    /// Service name, if any.
    pub service: Option<String>,
    /// Why its connections are refused (closed at once), if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Connections open through it now.
    pub open: i64,
}

/// One TCP service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpServiceStatus {
    /// Name.
    pub name: String,
    /// Servers that may be picked now.
    pub available: usize,
    /// PROXY protocol version sent, if any.
    #[serde(default)]
    pub proxy_protocol: Option<u8>,
    /// Whether an active health check runs.
    pub health_check: bool,
    /// Servers.
    pub servers: Vec<TcpServerStatus>,
}

/// One TCP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpServerStatus {
    /// Address as configured.
    pub address: String,
    /// Resolved address.
    pub resolved: Option<String>,
    /// Why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_error: Option<String>,
    /// Health check verdict.
    pub healthy: bool,
    /// Whether it may be picked now.
    pub available: bool,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Connections open to it.
    pub open: i64,
    /// Connections made since it appeared.
    pub connections: u64,
}

/// One UDP route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UdpRouteStatus {
    /// Router name.
    pub name: String,
    /// Entry points (empty: every UDP entry point).
    pub entry_points: Vec<String>,
    /// Service name.
    pub service: String,
}

/// A stateful group and where its TCP route points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatefulStatus {
    /// Group name (also the route's name).
    pub name: String,
    /// `redis` or `mongo`.
    pub kind: String,
    /// Entry point of its route.
    pub entrypoint: Option<String>,
    /// The primary the route points at; `null` while withdrawn.
    pub primary: Option<String>,
    /// `ok`, or why the route is withdrawn.
    pub verdict: String,
    /// Human text when withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The group's own status document (sentinels, replicas, members, last switch).
    pub detail: serde_json::Value,
}

/// The TCP routes of a table.
pub fn tcp_routes_of(table: &RouteTable) -> Vec<TcpRouteStatus> {
    use constellation_proxy::tcp::{TcpTarget, TcpTls};
    table
        .tcp
        .routes
        .iter()
        .map(|r| TcpRouteStatus {
            name: r.name.clone(),
            rule: r.rule.source().to_string(),
            priority: r.priority,
            entry_points: r.entry_points.clone(),
            tls: match r.tls {
                TcpTls::None => "none",
                TcpTls::Passthrough => "passthrough",
                TcpTls::Terminate { .. } => "terminate",
            }
            .to_string(),
            service: r.target.as_ref().map(|t| match &**t {
                TcpTarget::Pool(p) => p.name.clone(),
                TcpTarget::Weighted { name, .. } => name.clone(),
            }),
            refused: r.refused.clone(),
            open: r.open.load(Ordering::Relaxed),
        })
        .collect()
}

/// The TCP services of a table, with server health and breakers now.
pub fn tcp_services_of(table: &RouteTable) -> Vec<TcpServiceStatus> {
    let now = Instant::now();
    table
        .tcp
        .pools
        .iter()
        .map(|p| TcpServiceStatus {
            name: p.name.clone(),
            available: p.available(now),
            proxy_protocol: p.proxy_protocol,
            health_check: p.health.is_some(),
            servers: p
                .servers
                .iter()
                .map(|s| TcpServerStatus {
                    address: s.key.address.clone(),
                    resolved: s.addr.map(|a| a.to_string()),
                    address_error: s.address_error.clone(),
                    healthy: s.healthy.load(Ordering::Relaxed),
                    available: s.is_available(now),
                    breaker: s.breaker_state(now),
                    open: s.active.load(Ordering::Relaxed),
                    connections: s.connections.load(Ordering::Relaxed),
                })
                .collect(),
        })
        .collect()
}

/// The UDP routes of a table.
pub fn udp_routes_of(table: &constellation_proxy::udp::UdpTable) -> Vec<UdpRouteStatus> {
    table
        .routes
        .iter()
        .map(|r| UdpRouteStatus {
            name: r.name.clone(),
            entry_points: r.entry_points.clone(),
            service: r.target.name().to_string(),
        })
        .collect()
}

/// The ACME certificate resolver on this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AcmeStatus {
    /// The resolver's name routers use in `tls.certResolver` (`default`).
    pub resolver: String,
    /// The CA's directory URL.
    pub directory: String,
    /// `http-01`, `tls-alpn-01` or `dns-01`.
    pub challenge: String,
    /// `raft` (replicated, every voter serves) or `file` (this node's data dir).
    pub storage: String,
    /// Account key, certificate keys and challenge certificates are sealed with the
    /// cluster key.
    pub encrypted: bool,
    /// This node orders now (it holds the `acme` lease, or runs alone).
    pub orderer: bool,
    /// Wanted and stored certificates: state, expiry, renewal time, last error.
    #[serde(default)]
    pub certificates: Vec<constellation_acme::CertStatus>,
    /// Resolver names routers use that are not configured (they get the default
    /// certificate).
    #[serde(default)]
    pub unknown_resolvers: Vec<String>,
    /// http-01 challenges answered now.
    #[serde(default)]
    pub pending_http01: usize,
    /// tls-alpn-01 challenges answered now.
    #[serde(default)]
    pub pending_alpn01: usize,
}

/// One served certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// DNS names it covers (wildcards as `*.example.com`).
    pub names: Vec<String>,
    /// `file`, `acme`, `default` or `self-signed`.
    pub source: String,
    /// The file it was read from, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// notAfter, Unix seconds.
    pub not_after_unix: i64,
    /// Whole days until notAfter (negative once expired).
    pub days_left: i64,
    /// The issuer's common name.
    pub issuer: String,
}

/// The Docker provider of this node, and the containers of every node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DockerStatus {
    /// Engine endpoint watched.
    pub endpoint: String,
    /// The engine answers now (when false, containers are the last known).
    pub connected: bool,
    /// Engine version, once seen.
    #[serde(default)]
    pub engine_version: Option<String>,
    /// Why the engine cannot be reached, while it cannot.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Containers cluster-wide (this node's first), with health.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
    /// Objects two containers (or nodes) define differently: left out of the routes.
    #[serde(default)]
    pub conflicts: Vec<String>,
}

/// One watched container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Node whose engine runs it.
    pub node: String,
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// Engine state (`running`, `exited`, …).
    pub state: String,
    /// `healthy`, `unhealthy`, `starting` or `none`.
    pub health: String,
    /// HTTP services it serves (empty when not routed).
    #[serde(default)]
    pub services: Vec<String>,
    /// Networks.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Why its labels were refused.
    #[serde(default)]
    pub error: Option<String>,
    /// Restarts by the restarter in the last hour.
    #[serde(default)]
    pub restarts: u32,
}

/// Who answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Agent version.
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
}

/// The route configuration in force.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// Generation of the route table (1 for the first, +1 per applied change).
    pub generation: u64,
    /// The most recent reload, applied or rejected.
    pub last_reload: ReloadReport,
}

/// The outcome of the most recent route reload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadReport {
    /// `ok` or `invalid` (empty before the first reload).
    pub result: String,
    /// Errors of a rejected reload (the previous table stays in force).
    pub errors: Vec<String>,
    /// Features parsed but not applied.
    pub unsupported: Vec<String>,
    /// Unix time of the reload, seconds.
    pub at_unix: u64,
}

/// One cluster member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// `alive`, `suspect` or `down`.
    pub state: MemberState,
    /// Gossip address (`null` for a node running alone).
    pub address: Option<String>,
    /// Cluster (state-pull) address.
    #[serde(default)]
    pub cluster_address: Option<String>,
    /// Incarnation (start time in ms; grows on restart).
    pub incarnation: u64,
    /// Roles (`lb`, `dns`, …).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Version of the node state this view holds (`null` while none was received).
    pub state_version: Option<u64>,
    /// This is the node answering.
    pub is_self: bool,
    /// Public IP from its state.
    #[serde(default)]
    pub public_ip: Option<String>,
    /// Number of service instances in its state.
    #[serde(default)]
    pub instances: usize,
}

impl MemberStatus {
    /// The members of a cluster view.
    pub fn from_view(view: &ClusterView) -> Vec<MemberStatus> {
        view.members
            .iter()
            .map(|m| {
                let state = view.states.get(&m.name);
                MemberStatus {
                    name: m.name.clone(),
                    state: m.state,
                    address: Some(m.gossip_addr.to_string()),
                    cluster_address: Some(m.cluster_addr.to_string()),
                    incarnation: m.incarnation,
                    roles: m.roles.clone(),
                    state_version: m.state_version,
                    is_self: m.is_self,
                    public_ip: state.and_then(|s| s.public_ip).map(|ip| ip.to_string()),
                    instances: state.map(|s| s.instances.len()).unwrap_or(0),
                }
            })
            .collect()
    }
}

/// An outlier hint: another node's breaker for an upstream opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintStatus {
    /// The node whose breaker opened.
    pub from: String,
    /// Service name.
    pub service: String,
    /// Upstream URL.
    pub upstream: String,
    /// Time left before the hint lapses, ms.
    pub expires_in_ms: u64,
}

/// One lease.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The holder's node name; `null` while vacant.
    pub holder: Option<String>,
    /// Fencing token of the current (or last) grant; 0 if it was never granted.
    pub token: u64,
    /// Lease time-to-live, ms (`null` if never granted).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// This node holds it now.
    #[serde(default)]
    pub held_here: bool,
}

/// The Raft group as this node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RaftStatus {
    /// This node.
    pub node: String,
    /// The leader's name, if known.
    pub leader: Option<String>,
    /// Current term.
    pub term: u64,
    /// Voters as `name=raft_address`.
    #[serde(default)]
    pub voters: Vec<String>,
}

/// One entry point of the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntrypointStatus {
    /// Name (`web`).
    pub name: String,
    /// Listen address.
    pub address: String,
    /// Client connections open now.
    pub connections: usize,
    /// Cap on connections held at once.
    pub max_connections: usize,
    /// Cap per client IP.
    pub max_connections_per_ip: usize,
    /// Deadline for a whole request head, in milliseconds.
    pub read_timeout_ms: u64,
    /// Keep-alive idle timeout, in milliseconds.
    pub idle_timeout_ms: u64,
}

impl EntrypointStatus {
    /// The status of `e` now.
    pub fn of(e: &constellation_proxy::downstream::Entrypoint) -> Self {
        let l = e.limits();
        EntrypointStatus {
            name: e.name().to_string(),
            address: e.listen().to_string(),
            connections: e.open(),
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
            read_timeout_ms: l.read_timeout.as_millis() as u64,
            idle_timeout_ms: l.idle_timeout.as_millis() as u64,
        }
    }
}

/// One route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteStatus {
    /// Router name.
    pub name: String,
    /// Rule source text.
    pub rule: String,
    /// Effective priority.
    pub priority: i64,
    /// Entry points it is served on.
    pub entry_points: Vec<String>,
    /// Where it sends requests.
    pub service: TargetStatus,
    /// Attempts cap for one request.
    pub max_attempts: u32,
    /// Features it needs that are not applied (`middleware auth: basicAuth`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unapplied: Vec<String>,
    /// Whether its requests are refused (503) because of `unapplied`.
    #[serde(default)]
    pub refused: bool,
}

/// A route's target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    /// Service name.
    pub name: String,
    /// `loadBalancer`, `weighted` or `failover`.
    pub kind: String,
    /// Children of a weighted service: (service, weight).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<WeightedChild>,
    /// Primary of a failover service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Fallback of a failover service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// One child of a weighted service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightedChild {
    /// Child service name.
    pub service: String,
    /// Its weight.
    pub weight: u32,
}

/// A load-balanced service and its upstreams.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Too few upstreams are available: the breakers are being ignored.
    pub panic: bool,
    /// Upstreams available now.
    pub available: usize,
    /// Upstreams in all.
    pub total: usize,
    /// Active health check, if configured.
    pub health_check: Option<HealthCheckStatus>,
    /// The upstreams.
    pub upstreams: Vec<UpstreamStatus>,
}

/// An active health check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthCheckStatus {
    /// Path probed.
    pub path: String,
    /// Interval, ms.
    pub interval_ms: u64,
}

/// One upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// Server URL as configured.
    pub url: String,
    /// Address it connects to (`null` if not resolved).
    pub address: Option<String>,
    /// Why it has no address (its host name did not resolve); it takes no requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_error: Option<String>,
    /// Health-check verdict (true without a health check).
    pub healthy: bool,
    /// Takes requests now.
    pub available: bool,
    /// Another node's breaker opened for it: used only when nothing else is available.
    pub deprioritised: bool,
    /// Its circuit breaker.
    pub breaker: BreakerStatus,
    /// Requests in flight.
    pub in_flight: i64,
    /// Requests sent.
    pub requests: u64,
    /// Failures counted.
    pub failures: u64,
}

/// A circuit breaker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerStatus {
    /// `closed`, `open` or `half_open`.
    pub state: BreakerState,
    /// Times it opened.
    pub ejections: u32,
    /// Time left in the open state, ms (0 unless open).
    pub open_for_ms: u64,
}

impl TargetStatus {
    fn of(t: &Target) -> TargetStatus {
        let plain = |name: &str, kind: &str| TargetStatus {
            name: name.to_string(),
            kind: kind.to_string(),
            children: Vec::new(),
            service: None,
            fallback: None,
        };
        match t {
            Target::Pool(p) => plain(&p.name, "loadBalancer"),
            Target::Weighted { name, children, .. } => TargetStatus {
                children: children
                    .iter()
                    .map(|(c, w)| WeightedChild { service: c.name().to_string(), weight: *w })
                    .collect(),
                ..plain(name, "weighted")
            },
            Target::Failover { name, primary, fallback } => TargetStatus {
                service: Some(primary.name().to_string()),
                fallback: Some(fallback.name().to_string()),
                ..plain(name, "failover")
            },
        }
    }
}

/// The routes of a table.
pub fn routes_of(table: &RouteTable) -> Vec<RouteStatus> {
    table
        .routes
        .iter()
        .map(|r| RouteStatus {
            name: r.name.clone(),
            rule: r.rule.source().to_string(),
            priority: r.priority,
            entry_points: r.entry_points.clone(),
            service: TargetStatus::of(&r.target),
            max_attempts: r.max_attempts,
            unapplied: r.unapplied.clone(),
            refused: r.refused,
        })
        .collect()
}

/// The services of a table, with upstream health and breaker state now.
pub fn services_of(table: &RouteTable) -> Vec<ServiceStatus> {
    let now = Instant::now();
    table
        .pools
        .iter()
        .map(|p| ServiceStatus {
            name: p.name.clone(),
            panic: p.in_panic(now),
            available: p.available(now),
            total: p.upstreams.len(),
            health_check: p
                .health
                .as_ref()
                .map(|h| HealthCheckStatus { path: h.path.clone(), interval_ms: h.interval.as_millis() as u64 }),
            upstreams: p
                .upstreams
                .iter()
                .map(|u| UpstreamStatus {
                    url: u.key.url.clone(),
                    address: u.addr.map(|a| a.to_string()),
                    address_error: u.address_error.clone(),
                    healthy: u.healthy.load(Ordering::Relaxed),
                    available: u.is_available(now),
                    deprioritised: u.is_hinted(now),
                    breaker: BreakerStatus {
                        state: u.breaker.state(now),
                        ejections: u.breaker.ejections(),
                        open_for_ms: u
                            .breaker
                            .open_until()
                            .map(|t| t.saturating_duration_since(now).as_millis() as u64)
                            .unwrap_or(0),
                    },
                    in_flight: u.in_flight.load(Ordering::Relaxed),
                    requests: u.requests.load(Ordering::Relaxed) as u64,
                    failures: u.failures.load(Ordering::Relaxed) as u64,
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use constellation_proxy::{ProxySettings, RouteTable};

    use super::*;
    use crate::AdminState;

    /// The document keeps the shape readers already rely on, and reads back as the same
    /// types the CLI uses.
    #[test]
    fn status_document_keeps_its_shape_and_reads_back() {
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::empty(ProxySettings::default())));
        let admin = AdminState::new("n1", table, prometheus::Registry::new(), None);
        admin.members.store(Arc::new(vec![MemberStatus {
            name: "n1".into(),
            state: MemberState::Suspect,
            address: Some("127.0.0.1:7946".into()),
            cluster_address: Some("127.0.0.1:7947".into()),
            incarnation: 7,
            roles: vec!["lb".into()],
            state_version: Some(3),
            is_self: true,
            public_ip: None,
            instances: 0,
        }]));
        let mut leases = BTreeMap::new();
        leases.insert(
            "lb-leader".to_string(),
            LeaseStatus { holder: None, token: 12, ttl_ms: Some(6000), held_here: false },
        );
        admin.leases.store(Arc::new(leases));
        admin.raft.store(Some(Arc::new(RaftStatus {
            node: "n1".into(),
            leader: Some("n2".into()),
            term: 4,
            voters: vec!["n1=127.0.0.1:7948".into()],
        })));
        let v = serde_json::to_value(admin.status()).unwrap();
        assert_eq!(v["node"]["name"], "n1");
        assert_eq!(v["members"][0]["state"], "suspect");
        assert_eq!(v["members"][0]["name"], "n1");
        assert!(v["leases"]["lb-leader"]["holder"].is_null(), "a vacant lease has a null holder: {v}");
        assert_eq!(v["leases"]["lb-leader"]["token"].as_u64(), Some(12));
        assert_eq!(v["raft"]["leader"], "n2");
        assert_eq!(v["raft"]["term"], 4);
        assert_eq!(v["raft"]["voters"][0], "n1=127.0.0.1:7948");
        assert!(v["dns"].is_null());
        assert_eq!(v["ready"], false);
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back.members[0].incarnation, 7);
        assert_eq!(back.leases["lb-leader"].token, 12);
        // An older reader's view of a newer document: unknown fields are ignored.
        let mut newer = serde_json::to_value(admin.status()).unwrap();
        newer["something_new"] = serde_json::json!({"x": 1});
        assert!(serde_json::from_value::<Status>(newer).is_ok());
    }
}
