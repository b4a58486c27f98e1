//! The control plane's event loop: joins the cluster, announces this node's instances
//! (with their health), turns the cluster view into route-table rebuilds, gossips and
//! applies outlier hints, and keeps the admin view of members current.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use constellation_proxy::{BreakerEvent, CertPolicy, ProbeRequest, Prober, UpstreamEventKind};

use tokio::sync::mpsc::UnboundedReceiver;

use constellation_cluster::discovery::{run_discovery_loop, TailscaleDiscovery};
use constellation_cluster::{Cluster, ClusterConfig, ClusterView, Instance, Keyring, NodeState};
use constellation_dns::controller::{Fence, Topology};
use constellation_dns::NodeStatus;
use constellation_lease::{LeaseNode, LeaseView};

use crate::admin::AdminState;
use crate::builder::ClusterInstance;
use crate::config::LoadedConfig;
use crate::docker::{DockerGlue, Mesh, Published};
use crate::public_ip::{detect, PublicIpConfig};
use crate::routes::Reloader;
use crate::status::{HintStatus, LeaseStatus, MemberStatus, RaftStatus};

/// How long a breaker opening here deprioritises that upstream on other nodes.
pub const HINT_TTL: Duration = Duration::from_secs(30);
/// How often local instances with a health path are checked.
pub const INSTANCE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Healthy instances of every live node, for the route builder.
pub fn cluster_instances(view: &ClusterView) -> Vec<ClusterInstance> {
    view.alive_states()
        .flat_map(|s| {
            s.instances.iter().filter(|i| i.healthy).map(move |i| ClusterInstance {
                node: s.name.clone(),
                service: i.service.clone(),
                url: i.url.clone(),
                egress: i.egress.clone(),
                withheld: false,
            })
        })
        .collect()
}

/// One GET of `path` on the instance at `url`, true on a 2xx/3xx status within
/// `timeout`. Certificates are not verified, as for upstream health checks.
async fn check_instance(prober: &Prober, url: &str, path: &str, timeout: Duration) -> bool {
    let Ok(parsed) = constellation_proxy::upstream::parse_server_url(url) else { return false };
    let scheme = if parsed.tls { "https" } else { "http" };
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let target = format!("{scheme}://{}{path}", parsed.authority);
    match prober.send(&ProbeRequest::get(&target, timeout)).await {
        Ok(r) => (200..400).contains(&r.status),
        Err(e) => {
            tracing::debug!(instance = %url, error = %e, "instance health check failed");
            false
        }
    }
}

/// Where the agent is in its life; the control plane acts on each step. Phases only
/// move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal operation.
    Running,
    /// SIGTERM arrived: release the leases this node holds (waiting contenders take them
    /// at once), stop contending, hand Raft leadership over; `/readyz` answers 503.
    Draining,
    /// Set by the control plane when draining is done (or had nothing to do).
    Drained,
    /// Leave the cluster, stop Raft, end [`run`].
    Stopping,
}

/// The agent's handle on the control plane's [`Phase`]. Cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    tx: Arc<tokio::sync::watch::Sender<Phase>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { tx: Arc::new(tokio::sync::watch::channel(Phase::Running).0) }
    }
}

impl Lifecycle {
    /// Moves to `phase`, unless already there or past it.
    pub fn advance(&self, phase: Phase) {
        self.tx.send_if_modified(|p| {
            let later = *p < phase;
            if later {
                *p = phase;
            }
            later
        });
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    /// Waits until the phase is `phase` or later.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }
}

/// The Docker provider, when on: its snapshots and the glue that turns them into parts.
struct DockerFeed {
    rx: tokio::sync::watch::Receiver<Arc<constellation_docker::DockerSnapshot>>,
    glue: DockerGlue,
    published: Published,
}

/// The Docker provider and its glue when `[docker]` is on; `advertise` is the address
/// other nodes reach this one at (its mesh entry point's host).
fn prepare_docker(
    cfg: &LoadedConfig,
    registry: &prometheus::Registry,
    advertise: Option<std::net::IpAddr>,
) -> Option<(constellation_docker::DockerProvider, DockerFeed)> {
    let d = &cfg.config.docker;
    if !d.active() {
        tracing::info!(endpoint = %d.endpoint, "Docker provider off (no engine socket, or [docker] enabled = false)");
        return None;
    }
    let constraint = match d.constraints.as_deref().map(constellation_docker::constraints::Constraint::parse) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            // Checked when the config loads; kept as a guard.
            tracing::error!(error = %e, "[docker] constraints do not parse; the Docker provider is off");
            return None;
        }
        None => None,
    };
    let settings = constellation_docker::LabelSettings {
        exposed_by_default: d.exposed_by_default,
        network: d.network.clone(),
        domain: cfg.config.cluster.domain.clone(),
    };
    let mesh = d.mesh_entrypoint.as_ref().and_then(|name| {
        let (_, addr) = cfg.entrypoints.iter().find(|(n, _)| n == name)?;
        let ip = advertise.unwrap_or(addr.ip());
        let host = match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        Some(Mesh { entrypoint: name.clone(), url: format!("http://{host}:{}", addr.port()) })
    });
    let (provider, rx) = constellation_docker::DockerProvider::new(d.clone(), settings, constraint, registry);
    let glue = DockerGlue {
        node: cfg.config.node.name.clone(),
        endpoint: d.endpoint.clone(),
        mesh,
        entrypoints: cfg.entrypoints.iter().map(|(n, _)| n.clone()).collect(),
    };
    Some((provider, DockerFeed { rx, glue, published: Published::default() }))
}

/// Start the Docker provider when `[docker]` is on (see [`prepare_docker`]).
fn start_docker(
    cfg: &LoadedConfig,
    registry: &prometheus::Registry,
    lifecycle: &Lifecycle,
    advertise: Option<std::net::IpAddr>,
) -> Option<DockerFeed> {
    let (provider, feed) = prepare_docker(cfg, registry, advertise)?;
    let stop = {
        let lifecycle = lifecycle.clone();
        async move { lifecycle.reached(Phase::Stopping).await }
    };
    tokio::spawn(provider.run(stop));
    Some(feed)
}

/// This node's container routes as one listing of the engine gives them (for
/// `traefik dump`): `None` when the provider is off, the engine's error when it cannot be
/// listed.
pub async fn docker_routes_once(
    cfg: &LoadedConfig,
) -> Option<Result<(Vec<(String, constellation_proxy::DynamicConfig)>, Vec<ClusterInstance>), String>> {
    let advertise = cfg.gossip.as_ref().map(|g| g.advertise.ip());
    let (provider, feed) = prepare_docker(cfg, &prometheus::Registry::new(), advertise)?;
    Some(provider.snapshot_once().await.map(|snap| feed.glue.local(&snap)))
}

/// A single node: every Docker snapshot and every change of the local WARP verdicts
/// rebuilds the instances (static ones, the containers', routed by egress), until stopped.
async fn single_loop(
    mut feed: Option<DockerFeed>,
    mut warp: Option<tokio::sync::watch::Receiver<Arc<Vec<constellation_warp::GatewayStatus>>>>,
    reloader: Arc<Reloader>,
    admin: Arc<AdminState>,
    statics: Vec<ClusterInstance>,
    me: String,
) {
    loop {
        let mut all = statics.clone();
        if let Some(feed) = feed.as_mut() {
            let snap = feed.rx.borrow_and_update().clone();
            let (parts, local) = feed.glue.local(&snap);
            let published = feed.glue.published(&snap);
            admin.docker.store(Some(Arc::new(feed.glue.status(&snap, None, &published, &parts))));
            reloader.set_provided(parts);
            all.extend(local);
        }
        let mut nodes = BTreeMap::new();
        if let Some(rx) = warp.as_mut() {
            let statuses = rx.borrow_and_update().clone();
            admin.warp_gateways.store(Some(statuses.clone()));
            nodes.insert(me.clone(), crate::warp::records(&statuses));
        }
        let services = crate::warp::route_by_egress(&mut all, |n| nodes.get(n).map(Vec::as_slice));
        admin.warp_routing.store(Arc::new(crate::status::WarpStatus {
            gateways: Vec::new(),
            nodes,
            services,
            hints: Vec::new(),
        }));
        reloader.set_instances(all);
        let docker_changed = async {
            match feed.as_mut() {
                Some(f) => f.rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let warp_changed = async {
            match warp.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ok = docker_changed => if !ok { feed = None },
            ok = warp_changed => if !ok { warp = None },
        }
        if feed.is_none() && warp.is_none() {
            return;
        }
    }
}

/// How long draining may take in all (releases, the contenders' acquisitions, the Raft
/// hand-over) before the agent goes on without it.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Draining on a node with nothing to hand over: say so and wait for the stop.
async fn idle_until_stopped(lifecycle: &Lifecycle, admin: &AdminState) {
    lifecycle.reached(Phase::Draining).await;
    admin.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    lifecycle.advance(Phase::Drained);
    lifecycle.reached(Phase::Stopping).await;
}

/// SIGTERM on a voter: release every lease held here through the log, wait (briefly)
/// until other nodes hold them, then hand Raft leadership over; then [`Phase::Drained`].
async fn drain(
    node: LeaseNode,
    holders: Vec<Arc<constellation_lease::LeaseHolder>>,
    names: Vec<String>,
    lifecycle: Lifecycle,
    limit: Duration,
) {
    let started = Instant::now();
    let deadline = started + limit;
    let mut released = Vec::new();
    for (h, name) in holders.iter().zip(&names) {
        if let Some(token) = h.release().await {
            released.push((name.clone(), token));
        }
    }
    // Contenders take a released lease through the current leader: let them, before
    // leadership moves. A renewal of ours still in flight when the holder stopped could
    // land after the release and grant the lease to this node again: release that too.
    let mut view = node.view();
    let me = node.name().to_string();
    let wait = async {
        loop {
            let mut taken = true;
            let regranted: Vec<(String, u64)> = {
                let v = view.borrow_and_update();
                released
                    .iter()
                    .filter_map(|(lease, token)| {
                        let st = v.leases.get(lease)?;
                        if st.holder.as_deref() == Some(me.as_str()) && st.token > *token {
                            return Some((lease.clone(), st.token));
                        }
                        if st.holder.is_none() || st.token <= *token {
                            taken = false;
                        }
                        None
                    })
                    .collect()
            };
            for (lease, token) in regranted {
                taken = false;
                let _ = node.release(&lease, token).await;
            }
            if taken || view.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), wait).await;
    let handed = started.elapsed();
    let leader = node.step_down(deadline.saturating_duration_since(Instant::now())).await;
    tracing::info!(
        released = ?released,
        leases_ms = handed.as_millis() as u64,
        raft_leader = ?leader,
        took_ms = started.elapsed().as_millis() as u64,
        "drained: leases released and raft leadership elsewhere"
    );
    lifecycle.advance(Phase::Drained);
}

/// Run the control plane until `lifecycle` reaches [`Phase::Stopping`]; on
/// [`Phase::Draining`] it gives up its leases and Raft leadership (see [`Phase`]).
pub async fn run(
    cfg: LoadedConfig,
    reloader: Arc<Reloader>,
    admin: Arc<AdminState>,
    registry: prometheus::Registry,
    mut breaker_events: UnboundedReceiver<BreakerEvent>,
    lifecycle: Lifecycle,
) {
    let local: Vec<Instance> = cfg
        .config
        .instances
        .iter()
        .map(|i| Instance {
            service: i.service.clone(),
            url: i.url.clone(),
            healthy: i.health_path.is_none(),
            egress: i.egress_need(),
        })
        .collect();
    // The node's public IP as detected (the egress monitor compares the egress IP with it).
    let (public_ip_tx, public_ip_rx) = tokio::sync::watch::channel(None);
    let detect_public_ip = {
        let mut pcfg = PublicIpConfig::from_process_env();
        pcfg.services = cfg.config.gossip.public_ip_services.clone();
        move |on_found: Box<dyn FnOnce(std::net::IpAddr) + Send>| async move {
            let d = detect(&pcfg).await;
            tracing::info!(ip = ?d.ip, source = %d.source, "public IP detection");
            if let Some(ip) = d.ip {
                public_ip_tx.send_replace(Some(ip));
                on_found(ip);
            }
        }
    };
    let Some(g) = cfg.gossip.clone() else {
        // Single node: our own instances are the cluster.
        admin.members.store(Arc::new(vec![MemberStatus {
            name: cfg.config.node.name.clone(),
            state: constellation_cluster::MemberState::Alive,
            address: None,
            cluster_address: None,
            incarnation: 0,
            roles: cfg.config.node.roles.clone(),
            state_version: None,
            is_self: true,
            public_ip: None,
            instances: local.len(),
        }]));
        admin.cluster_joined.store(true, std::sync::atomic::Ordering::Relaxed);
        let node = cfg.config.node.name.clone();
        let statics: Vec<ClusterInstance> = local
            .iter()
            .filter(|i| i.healthy)
            .map(|i| ClusterInstance {
                node: node.clone(),
                service: i.service.clone(),
                url: i.url.clone(),
                egress: i.egress.clone(),
                withheld: false,
            })
            .collect();
        // Alone, nothing reads upstream events: drop them as they come.
        let drain_events = tokio::spawn(async move { while breaker_events.recv().await.is_some() {} });
        let warp = match crate::warp::start(&cfg.config.warp, &registry, public_ip_rx).await {
            Some((monitor, _)) => {
                tokio::spawn(detect_public_ip(Box::new(|_| {})));
                Some(monitor.subscribe())
            }
            None => None,
        };
        let docker = start_docker(&cfg, &registry, &lifecycle, None);
        let feeder = tokio::spawn(single_loop(docker, warp, reloader.clone(), admin.clone(), statics, node));
        let acme = start_acme_alone(&cfg, &reloader, &admin, &registry);
        let stateful = crate::stateful::start(
            &cfg.config.stateful,
            Arc::new(constellation_stateful::mongo::SoleNode),
            reloader.clone(),
            admin.clone(),
            &registry,
        );
        idle_until_stopped(&lifecycle, &admin).await;
        for task in [feeder, drain_events].into_iter().chain(acme).chain(stateful) {
            task.abort();
        }
        return;
    };
    let keyring = match Keyring::parse(&g.keyring_text) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            tracing::error!(source = %g.keyring_origin, error = %e, "cluster key is unusable; gossip is off");
            idle_until_stopped(&lifecycle, &admin).await;
            return;
        }
    };
    let mut ccfg = ClusterConfig::new(&cfg.config.node.name, g.bind, g.cluster_bind, keyring);
    ccfg.gossip_advertise = g.advertise;
    ccfg.cluster_advertise = SocketAddr::new(g.advertise.ip(), g.cluster_bind.port());
    ccfg.seeds = g.seeds.clone();
    ccfg.roles = cfg.config.node.roles.clone();
    ccfg.push_pull_interval = Duration::from_millis(cfg.config.gossip.push_pull_interval_ms);
    let mut initial = NodeState::new(&cfg.config.node.name);
    initial.instances = local.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cluster_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let cluster_keyring = ccfg.keyring.clone();
    let mut lease_node: Option<constellation_lease::LeaseNode> = None;
    let mut draining_holders: (Vec<Arc<constellation_lease::LeaseHolder>>, Vec<String>) = (Vec::new(), Vec::new());
    let cluster = match Cluster::start(ccfg, initial, &registry, cluster_stop).await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot start gossip; this node runs alone");
            idle_until_stopped(&lifecycle, &admin).await;
            return;
        }
    };
    tracing::info!(gossip = %cluster.gossip_addr(), cluster = %cluster.cluster_addr(), seeds = ?g.seeds, "joined gossip");

    let mut tasks = tokio::task::JoinSet::new();
    let mut acme_task = None;
    let mut stateful_fence: Option<Arc<dyn constellation_stateful::mongo::InitFence>> = None;
    // Public IP for this node's state.
    {
        let cluster = cluster.clone();
        tasks.spawn(detect_public_ip(Box::new(move |ip| cluster.update_local(|s| s.public_ip = Some(ip)))));
    }
    // WARP egress: the monitor's verdicts go into this node's state (and its status).
    let warp_metrics = match crate::warp::start(&cfg.config.warp, &registry, public_ip_rx).await {
        Some((monitor, metrics)) => {
            tasks.spawn(publish_egress(cluster.clone(), monitor, admin.clone()));
            Some(metrics)
        }
        None => None,
    };
    let egress_owners: crate::warp::EgressOwners = Arc::default();
    // Tailscale discovery.
    if cfg.config.gossip.tailscale {
        let cluster = cluster.clone();
        let mut disc = TailscaleDiscovery::new(g.advertise.port());
        disc.tag = cfg.config.gossip.tailscale_tag.clone();
        tasks.spawn(async move {
            run_discovery_loop(disc, constellation_cluster::discovery::DEFAULT_INTERVAL, move |peers| {
                cluster.add_peer_addresses(peers)
            })
            .await;
        });
    }
    // Health of local instances that name a health path.
    let checked: Vec<(usize, String, String)> = cfg
        .config
        .instances
        .iter()
        .enumerate()
        .filter_map(|(i, inst)| inst.health_path.clone().map(|p| (i, inst.url.clone(), p)))
        .collect();
    if !checked.is_empty() {
        let cluster = cluster.clone();
        tasks.spawn(async move {
            let prober = match Prober::new(CertPolicy::Unverified) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "instance health checks cannot run; instances stay unhealthy");
                    return;
                }
            };
            loop {
                let mut verdicts = Vec::new();
                for (i, url, path) in &checked {
                    verdicts.push((*i, check_instance(&prober, url, path, Duration::from_secs(1)).await));
                }
                cluster.update_local(|s| {
                    for (i, ok) in &verdicts {
                        if let Some(inst) = s.instances.get_mut(*i) {
                            inst.healthy = *ok;
                        }
                    }
                });
                tokio::time::sleep(INSTANCE_CHECK_INTERVAL).await;
            }
        });
    }
    // Breaker openings here become hints for the others; repeated 403s from a node's
    // egress-bound instances become an egress hint for that node.
    {
        let cluster = cluster.clone();
        let owners = egress_owners.clone();
        let metrics = warp_metrics.clone();
        tasks.spawn(async move {
            let mut forbidden = crate::warp::ForbiddenTracker::default();
            while let Some(ev) = breaker_events.recv().await {
                match ev.kind {
                    UpstreamEventKind::BreakerOpened => cluster.publish_hint(&ev.service, &ev.url, HINT_TTL),
                    UpstreamEventKind::Forbidden => {
                        let node = owners.lock().unwrap_or_else(|p| p.into_inner()).get(&ev.url).cloned();
                        let Some(node) = node else { continue };
                        if forbidden.record(&node, Instant::now()) {
                            tracing::warn!(node = %node, service = %ev.service, upstream = %ev.url,
                                "repeated 403s through this node's egress: egress hint raised");
                            cluster.publish_egress_hint(&node, crate::warp::EGRESS_HINT_TTL);
                            if let Some(m) = &metrics {
                                m.hints.with_label_values(&[&node]).inc();
                            }
                        }
                    }
                }
            }
        });
    }

    // Leases, on voters.
    if let Some((_, raft_addr)) = cfg.raft_voters.iter().find(|(n, _)| *n == cfg.config.node.name) {
        let rcfg = constellation_lease::RaftConfig {
            node: cfg.config.node.name.clone(),
            voters: cfg.raft_voters.clone(),
            bind: *raft_addr,
            data_dir: cfg.base_dir.join(&cfg.config.node.data_dir),
            keyring: cluster_keyring.clone(),
            election_timeout: (
                Duration::from_millis(cfg.config.raft.election_timeout_ms),
                Duration::from_millis(cfg.config.raft.election_timeout_ms * 2),
            ),
            heartbeat: Duration::from_millis(cfg.config.raft.heartbeat_ms),
            lease_ttl: Duration::from_millis(cfg.config.raft.lease_ttl_ms),
        };
        let raft_stop = {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        match constellation_lease::LeaseNode::start(rcfg, &registry, raft_stop).await {
            Ok(node) => {
                tracing::info!(raft = %raft_addr, voters = cfg.raft_voters.len(), "lease group started");
                let roles = &cfg.config.node.roles;
                let mut wanted = Vec::new();
                if roles.iter().any(|r| r == "lb") {
                    wanted.push(cfg.config.raft.lb_lease.clone());
                }
                if roles.iter().any(|r| r == "dns") {
                    wanted.push(cfg.config.raft.dns_lease.clone());
                }
                // The ACME orderer is the front door's business: nodes with role `lb`
                // contend for the `acme` lease.
                if cfg.acme.is_some() && roles.iter().any(|r| r == "lb") {
                    wanted.push(constellation_acme::ACME_LEASE.to_string());
                }
                // MongoDB sets are initiated once cluster-wide: every voter contends.
                if !cfg.config.stateful.mongo.is_empty() {
                    wanted.push(crate::stateful::STATEFUL_LEASE.to_string());
                }
                let ttl = Duration::from_millis(cfg.config.raft.lease_ttl_ms);
                let holders: Vec<Arc<constellation_lease::LeaseHolder>> = wanted
                    .iter()
                    .map(|l| {
                        Arc::new(constellation_lease::LeaseHolder::spawn(
                            node.clone(),
                            constellation_lease::HolderConfig::new(l, ttl),
                        ))
                    })
                    .collect();
                // dns-01 TXT records go through the same Cloudflare client (and rate
                // budget) as the DNS controller's writes when this node runs one.
                let mut acme_txt: Option<constellation_dns::AcmeTxt> = None;
                // DNS follows the front door while this node holds the dns-writer lease.
                if let Some(dns_cfg) = cfg.config.dns.clone() {
                    let dns_held = wanted
                        .iter()
                        .zip(&holders)
                        .find(|(l, _)| **l == cfg.config.raft.dns_lease)
                        .map(|(_, h)| h.held());
                    match (dns_held, constellation_dns::Reconciler::new(dns_cfg, &registry)) {
                        (Some(dns_held), Ok(reconciler)) => {
                            acme_txt = Some(reconciler.acme_txt());
                            let (topo_tx, topology) = tokio::sync::watch::channel(Topology::default());
                            tasks.spawn(topology_loop(
                                node.view(),
                                cluster.view(),
                                cfg.config.raft.lb_lease.clone(),
                                topo_tx,
                            ));
                            let fence =
                                Arc::new(LeaseFence { node: node.clone(), lease: cfg.config.raft.dns_lease.clone() });
                            let inputs = constellation_dns::controller::Inputs {
                                fence,
                                dns_held,
                                topology,
                                status: admin.dns.clone(),
                            };
                            tasks.spawn(constellation_dns::controller::run(reconciler, inputs));
                        }
                        (None, _) => {
                            tracing::info!(
                                "[dns] is configured but this node lacks the \"dns\" role; it never writes DNS"
                            )
                        }
                        (_, Err(e)) => tracing::error!(error = %e, "DNS controller cannot start"),
                    }
                }
                if let Some(settings) = cfg.acme.clone() {
                    let token = wanted
                        .iter()
                        .zip(&holders)
                        .find(|(l, _)| *l == constellation_acme::ACME_LEASE)
                        .map(|(_, h)| h.held());
                    let placement = crate::acme::Placement::Lease { node: node.clone(), token };
                    let dns01 = match (settings.config.challenge, acme_txt, &cfg.config.dns) {
                        (constellation_acme::ChallengeKind::Dns01, Some(txt), _) => Some(txt),
                        (constellation_acme::ChallengeKind::Dns01, None, Some(dns_cfg)) => {
                            constellation_dns::AcmeTxt::new(dns_cfg, &registry)
                                .map_err(
                                    |e| tracing::error!(error = %e, "acme: dns-01 cannot use the Cloudflare client"),
                                )
                                .ok()
                        }
                        _ => None,
                    };
                    let dns01 = dns01
                        .map(|t| Arc::new(crate::acme::CloudflareTxt(t)) as Arc<dyn constellation_acme::DnsChallenge>);
                    acme_task = crate::acme::start(
                        settings,
                        placement,
                        Some(cluster_keyring.clone()),
                        dns01,
                        reloader.clone(),
                        admin.clone(),
                        &registry,
                    );
                }
                stateful_fence =
                    wanted.iter().zip(&holders).find(|(l, _)| *l == crate::stateful::STATEFUL_LEASE).map(|(_, h)| {
                        let fence = constellation_acme::LeaseFence::new(
                            node.clone(),
                            crate::stateful::STATEFUL_LEASE,
                            h.held(),
                        );
                        Arc::new(crate::stateful::LeaseInitFence(fence))
                            as Arc<dyn constellation_stateful::mongo::InitFence>
                    });
                let history = cfg.base_dir.join(&cfg.config.node.data_dir).join("lease-history.jsonl");
                let mut leases = vec![cfg.config.raft.lb_lease.clone(), cfg.config.raft.dns_lease.clone()];
                if cfg.acme.is_some() {
                    leases.push(constellation_acme::ACME_LEASE.to_string());
                }
                if !cfg.config.stateful.mongo.is_empty() {
                    leases.push(crate::stateful::STATEFUL_LEASE.to_string());
                }
                tasks.spawn(lease_loop(node.clone(), holders.clone(), wanted.clone(), leases, history, admin.clone()));
                admin.lease_node.store(Some(Arc::new(node.clone())));
                draining_holders = (holders, wanted);
                lease_node = Some(node);
            }
            Err(e) => tracing::error!(error = %e, "cannot start the lease group; this node holds no leases"),
        }
    }

    if cfg.acme.is_some() && lease_node.is_none() {
        // Without the lease group there is no shared store: each node orders its own
        // certificates (as Traefik's open-source edition does).
        tracing::warn!("[acme] on a node outside the lease group: it orders and keeps certificates on its own");
        acme_task = start_acme_alone(&cfg, &reloader, &admin, &registry);
    }
    let stateful_fence = stateful_fence.unwrap_or_else(|| {
        if !cfg.config.stateful.mongo.is_empty() {
            tracing::warn!(
                "[[stateful.mongo]] on a node outside the lease group: it initiates replica sets on its own"
            );
        }
        Arc::new(constellation_stateful::mongo::SoleNode)
    });
    let stateful_task =
        crate::stateful::start(&cfg.config.stateful, stateful_fence, reloader.clone(), admin.clone(), &registry);
    let mut docker = start_docker(&cfg, &registry, &lifecycle, Some(g.advertise.ip()));
    let static_count = local.len();
    let me = cfg.config.node.name.clone();
    let mut view_rx = cluster.view();
    let mut hint_tick = tokio::time::interval(Duration::from_secs(1));
    let seeds_configured = !g.seeds.is_empty();
    let stopping = lifecycle.reached(Phase::Stopping);
    let draining = lifecycle.reached(Phase::Draining);
    tokio::pin!(stopping, draining);
    let mut drain_started = false;
    loop {
        let view = view_rx.borrow_and_update().clone();
        admin.members.store(Arc::new(MemberStatus::from_view(&view)));
        let alive = view.members.iter().filter(|m| m.state.is_up()).count();
        if !seeds_configured || alive > 1 {
            admin.cluster_joined.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut instances = cluster_instances(&view);
        if let Some(feed) = docker.as_mut() {
            let snap = feed.rx.borrow_and_update().clone();
            let published = feed.glue.published(&snap);
            if published != feed.published {
                let p = published.clone();
                cluster.update_local(move |s| {
                    s.instances.truncate(static_count);
                    s.instances.extend(p.instances);
                    s.containers = p.containers;
                    s.provided_routes = p.routes;
                });
                feed.published = published.clone();
            }
            let (mut parts, local_docker) = feed.glue.local(&snap);
            parts.extend(feed.glue.remote_parts(&view));
            admin.docker.store(Some(Arc::new(feed.glue.status(&snap, Some(&view), &published, &parts))));
            reloader.set_provided(parts);
            // Our own containers are reached directly, not through our mesh entry point.
            let own_mesh = feed.glue.mesh.as_ref().map(|m| m.url.clone());
            instances.retain(|i| !(i.node == me && Some(&i.url) == own_mesh.as_ref()));
            instances.extend(local_docker);
        }
        let records = crate::warp::records_by_node(&view);
        let services = crate::warp::route_by_egress(&mut instances, |n| records.get(n).map(Vec::as_slice));
        *egress_owners.lock().unwrap_or_else(|p| p.into_inner()) = crate::warp::owners_of(&instances);
        admin.warp_routing.store(Arc::new(crate::status::WarpStatus {
            gateways: Vec::new(),
            nodes: records,
            services,
            hints: admin.warp_routing.load().hints.clone(),
        }));
        reloader.set_instances(instances);
        let docker_changed = async {
            match docker.as_mut() {
                Some(feed) => feed.rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ok = docker_changed => if !ok { docker = None },
            _ = &mut stopping => break,
            _ = &mut draining, if !drain_started => {
                drain_started = true;
                admin.draining.store(true, std::sync::atomic::Ordering::Relaxed);
                match &lease_node {
                    Some(node) => {
                        let (holders, names) = std::mem::take(&mut draining_holders);
                        tasks.spawn(drain(node.clone(), holders, names, lifecycle.clone(), DRAIN_LIMIT));
                    }
                    None => lifecycle.advance(Phase::Drained),
                }
            }
            changed = view_rx.changed() => if changed.is_err() { break },
            _ = hint_tick.tick() => apply_hints(&cluster, &reloader, &admin, &cfg.config.node.name, &egress_owners),
        }
    }
    tasks.abort_all();
    if let Some(task) = acme_task {
        task.abort();
    }
    if let Some(task) = stateful_task {
        task.abort();
    }
    if let Some(node) = lease_node {
        node.shutdown().await;
    }
    cluster.leave().await;
    let _ = stop_tx.send(true);
}

/// Keep this node's egress records (in its gossiped state) and the status of its
/// gateways current with the monitor.
async fn publish_egress(cluster: Arc<Cluster>, monitor: constellation_warp::WarpMonitor, admin: Arc<AdminState>) {
    let mut rx = monitor.subscribe();
    let mut last = None;
    loop {
        let statuses = rx.borrow_and_update().clone();
        admin.warp_gateways.store(Some(statuses.clone()));
        let records = crate::warp::records(&statuses);
        if last.as_ref() != Some(&records) {
            let r = records.clone();
            cluster.update_local(move |s| s.egress = r);
            last = Some(records);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// ACME on its own: account and certificates in `<data_dir>/acme`, this node orders.
fn start_acme_alone(
    cfg: &LoadedConfig,
    reloader: &Arc<Reloader>,
    admin: &Arc<AdminState>,
    registry: &prometheus::Registry,
) -> Option<tokio::task::JoinHandle<()>> {
    let settings = cfg.acme.clone()?;
    let dir = cfg.base_dir.join(&cfg.config.node.data_dir).join("acme");
    let keyring = cfg.gossip.as_ref().and_then(|g| Keyring::parse(&g.keyring_text).ok()).map(Arc::new);
    let placement = crate::acme::Placement::Alone { dir: &dir };
    crate::acme::start(settings, placement, keyring, None, reloader.clone(), admin.clone(), registry)
}

/// The DNS controller's fence: a linearizable check of the DNS-writer lease.
struct LeaseFence {
    node: LeaseNode,
    lease: String,
}

impl Fence for LeaseFence {
    fn check(&self, token: u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move { self.node.check(&self.lease, token).await.unwrap_or(false) })
    }
}

/// What DNS needs from the lease view and the cluster view: the front door's public IP
/// and every member with its public IP and liveness. Runs until either view closes.
async fn topology_loop(
    mut leases: tokio::sync::watch::Receiver<LeaseView>,
    mut cluster: tokio::sync::watch::Receiver<ClusterView>,
    lb_lease: String,
    out: tokio::sync::watch::Sender<Topology>,
) {
    loop {
        let topo = {
            let lv = leases.borrow_and_update();
            let cv = cluster.borrow_and_update();
            let holder = lv.leases.get(&lb_lease).and_then(|l| l.holder.clone());
            Topology {
                front_door: holder.as_ref().and_then(|h| cv.states.get(h)).and_then(|s| s.public_ip),
                nodes: cv
                    .members
                    .iter()
                    .map(|m| NodeStatus {
                        name: m.name.clone(),
                        ip: cv.states.get(&m.name).and_then(|s| s.public_ip),
                        alive: m.state.is_up(),
                    })
                    .collect(),
            }
        };
        out.send_if_modified(|cur| {
            let changed = *cur != topo;
            *cur = topo;
            changed
        });
        let closed = tokio::select! {
            r = leases.changed() => r.is_err(),
            r = cluster.changed() => r.is_err(),
        };
        if closed {
            tracing::warn!("lease or cluster view closed; the DNS controller stops following the front door");
            return;
        }
    }
}

/// Keep the admin lease view current, and append every holder event of this node to
/// `history` (JSON lines: unix nanoseconds, lease, token, event) for audits and tests.
async fn lease_loop(
    node: constellation_lease::LeaseNode,
    holders: Vec<Arc<constellation_lease::LeaseHolder>>,
    names: Vec<String>,
    leases: Vec<String>,
    history: std::path::PathBuf,
    admin: Arc<AdminState>,
) {
    use constellation_lease::HolderEvent;
    use std::io::Write;
    // Instants are converted to wall-clock nanoseconds once, from one reference pair, so
    // the events of one process keep their monotonic order.
    let (ref_instant, ref_unix) = (Instant::now(), crate::admin::unix_now_ns());
    let unix = |t: Instant| -> u128 {
        if t >= ref_instant {
            ref_unix + t.duration_since(ref_instant).as_nanos()
        } else {
            ref_unix.saturating_sub(ref_instant.duration_since(t).as_nanos())
        }
    };
    let mut written = vec![0usize; holders.len()];
    let mut view_rx = node.view();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let view = view_rx.borrow_and_update().clone();
        let mut map = BTreeMap::new();
        for lease in &leases {
            let st = view.leases.get(lease);
            map.insert(
                lease.clone(),
                LeaseStatus {
                    holder: st.and_then(|s| s.holder.clone()),
                    token: st.map(|s| s.token).unwrap_or(0),
                    ttl_ms: st.map(|s| s.ttl_ms),
                    held_here: holders.iter().zip(&names).any(|(h, n)| n == lease && h.held().borrow().is_some()),
                },
            );
        }
        admin.leases.store(Arc::new(map));
        let voters = node.membership().into_iter().filter(|(_, _, v)| *v).map(|(n, a, _)| format!("{n}={a}")).collect();
        admin.raft.store(Some(Arc::new(RaftStatus {
            node: node.name().to_string(),
            leader: view.leader.clone(),
            term: view.term,
            voters,
        })));
        for (i, h) in holders.iter().enumerate() {
            let events = h.history();
            if events.len() > written[i] {
                let mut lines = String::new();
                for e in &events[written[i]..] {
                    let (t, token, kind) = match e {
                        HolderEvent::Acquired { token, at, .. } => (*at, *token, "acquired"),
                        HolderEvent::Renewed { token, at, .. } => (*at, *token, "renewed"),
                        HolderEvent::Lost { token, at, .. } => (*at, *token, "lost"),
                    };
                    if kind != "renewed" {
                        tracing::info!(lease = %names[i], token, event = kind, "lease");
                    }
                    lines.push_str(&format!(
                        "{{\"t_ns\":{},\"node\":{:?},\"lease\":{:?},\"token\":{},\"event\":\"{}\"}}\n",
                        unix(t),
                        node.name(),
                        names[i],
                        token,
                        kind
                    ));
                }
                let res = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&history)
                    .and_then(|mut f| f.write_all(lines.as_bytes()));
                if let Err(e) = res {
                    tracing::warn!(file = %history.display(), error = %e, "cannot record lease history");
                }
                written[i] = events.len();
            }
        }
        tokio::select! {
            changed = view_rx.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
    }
}

/// Deprioritise upstreams other nodes reported as tripped, and the egress-bound
/// upstreams of nodes whose egress is hinted (by any node, this one included); show all
/// hints in status.
fn apply_hints(
    cluster: &Cluster,
    reloader: &Reloader,
    admin: &AdminState,
    me: &str,
    owners: &crate::warp::EgressOwners,
) {
    let hints = cluster.hints();
    let now_unix = crate::admin::unix_now_ms();
    let now = Instant::now();
    let table = reloader.table().load();
    let mut by_upstream: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut by_egress: BTreeMap<&str, u64> = BTreeMap::new();
    for h in hints.iter().filter(|h| h.expires_unix_ms > now_unix) {
        if h.service == constellation_cluster::EGRESS_HINT_SERVICE {
            let e = by_egress.entry(h.upstream_url.as_str()).or_default();
            *e = (*e).max(h.expires_unix_ms);
        } else if h.from_node != me {
            let e = by_upstream.entry((h.service.as_str(), h.upstream_url.as_str())).or_default();
            *e = (*e).max(h.expires_unix_ms);
        }
    }
    let owners = owners.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for pool in &table.pools {
        for up in &pool.upstreams {
            let egress = owners.get(&up.key.url).and_then(|node| by_egress.get(node.as_str()));
            let exp = by_upstream.get(&(pool.name.as_str(), up.key.url.as_str())).max(egress);
            if let Some(exp) = exp {
                up.hint(now + Duration::from_millis(exp - now_unix));
            }
        }
    }
    let egress_hints: Vec<HintStatus> = hints
        .iter()
        .filter(|h| h.service == constellation_cluster::EGRESS_HINT_SERVICE && h.expires_unix_ms > now_unix)
        .map(|h| HintStatus {
            from: h.from_node.clone(),
            service: h.service.clone(),
            upstream: h.upstream_url.clone(),
            expires_in_ms: h.expires_unix_ms.saturating_sub(now_unix),
        })
        .collect();
    if egress_hints != admin.warp_routing.load().hints {
        let cur = (**admin.warp_routing.load()).clone();
        admin.warp_routing.store(Arc::new(crate::status::WarpStatus { hints: egress_hints, ..cur }));
    }
    admin.hints.store(Arc::new(
        hints
            .iter()
            .map(|h| HintStatus {
                from: h.from_node.clone(),
                service: h.service.clone(),
                upstream: h.upstream_url.clone(),
                expires_in_ms: h.expires_unix_ms.saturating_sub(now_unix),
            })
            .collect(),
    ));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fixture answering every request with `status`.
    async fn instance(status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn instance_checks_pass_on_2xx_3xx_only() {
        let prober = Prober::new(CertPolicy::Unverified).unwrap();
        let t = Duration::from_secs(2);
        assert!(check_instance(&prober, &instance(204).await, "/healthz", t).await);
        assert!(check_instance(&prober, &instance(302).await, "healthz", t).await);
        assert!(!check_instance(&prober, &instance(503).await, "/healthz", t).await);
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(!check_instance(&prober, &format!("http://{dead}"), "/", t).await);
        assert!(!check_instance(&prober, "not a url", "/", t).await);
    }
}
