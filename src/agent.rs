//! Wiring the agent: route reloader, proxy, admin API, health checks and the
//! welcome backend into one Pingora server.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use constellation_plane::config::{LoadedConfig, EMBEDDED_ROUTES};
use constellation_plane::plane::{Lifecycle, Phase};
use constellation_plane::{AdminApp, AdminState, Reloader, Resolver, RouteSource};
use constellation_proxy::downstream::{auto_max_connections, Protocols};
use constellation_proxy::{
    CertPolicy, ConnectFailures, DownstreamMetrics, Entrypoint, HealthSupervisor, LimitedApp, Prober, ProxyMetrics,
    RouteTable, SmartFailoverProxy,
};
use constellation_proxy::{TlsHandle, TlsMetrics, TlsSnapshot};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The route files are invalid (exit code 78).
    #[error("route configuration is invalid:\n  {}", .0.join("\n  "))]
    Routes(Vec<String>),
    /// Anything else (exit code 1).
    #[error("{0}")]
    Runtime(String),
}

/// The route sources a loaded config names.
pub fn route_sources(cfg: &LoadedConfig) -> Vec<RouteSource> {
    let mut sources: Vec<RouteSource> = cfg.route_files().into_iter().map(RouteSource::File).collect();
    if cfg.is_embedded() {
        sources.push(RouteSource::Embedded { name: "embedded default routes".into(), text: EMBEDDED_ROUTES.into() });
    }
    sources
}

struct ControlLoop {
    cfg: LoadedConfig,
    reloader: Arc<Reloader>,
    admin: Arc<AdminState>,
    registry: prometheus::Registry,
    events: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<constellation_proxy::BreakerEvent>>>,
    table: constellation_proxy::TableHandle,
    metrics: ProxyMetrics,
    prober: Arc<Prober>,
    interval: Duration,
    lifecycle: Lifecycle,
    /// How long requests in flight get after the listeners closed.
    drain_timeout: Duration,
    /// TCP health checks' metrics.
    tcp_metrics: constellation_proxy::tcp::TcpMetrics,
    /// UDP entry points' sockets (bound at start), served once the runtime runs.
    udp: std::sync::Mutex<Vec<(String, std::net::UdpSocket)>>,
    udp_table: constellation_proxy::udp::UdpHandle,
    udp_metrics: constellation_proxy::udp::UdpMetrics,
}

#[async_trait]
impl BackgroundService for ControlLoop {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let health = Arc::new(std::sync::Mutex::new(HealthSupervisor::new(
            self.table.clone(),
            self.metrics.clone(),
            self.prober.clone(),
        )));
        if let Ok(mut h) = health.lock() {
            h.sync();
        }
        let h2 = health.clone();
        let settings = &self.cfg.config.proxy;
        let tcp_health = tokio::spawn(constellation_proxy::tcp::run_health_checks(
            self.table.clone(),
            settings.health_rise,
            settings.health_fall,
            self.tcp_metrics.clone(),
        ));
        let mut udp_tasks = Vec::new();
        let sockets = self.udp.lock().map(|mut u| std::mem::take(&mut *u)).unwrap_or_default();
        for (name, socket) in sockets {
            let socket = match socket.set_nonblocking(true).and_then(|()| tokio::net::UdpSocket::from_std(socket)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(entrypoint = %name, error = %e, "cannot serve the UDP entry point");
                    continue;
                }
            };
            udp_tasks.push(tokio::spawn(constellation_proxy::udp::serve(
                socket,
                name,
                self.udp_table.clone(),
                Duration::from_millis(settings.udp_session_timeout_ms),
                self.udp_metrics.clone(),
            )));
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let events = self.events.lock().ok().and_then(|mut e| e.take());
        let plane = events.map(|events| {
            tokio::spawn(constellation_plane::plane::run(
                self.cfg.clone(),
                self.reloader.clone(),
                self.admin.clone(),
                self.registry.clone(),
                events,
                self.lifecycle.clone(),
            ))
        });
        let watcher = tokio::spawn(self.reloader.clone().watch(
            self.interval,
            move || {
                if let Ok(mut h) = h2.lock() {
                    h.sync();
                }
            },
            stopped(stop_rx),
        ));
        let _ = shutdown.changed().await;
        // The listeners are closed now. After a SIGTERM drain (see `shutdown.rs`),
        // requests in flight finish before the node leaves the cluster.
        let planned = self.lifecycle.phase() >= Phase::Draining;
        if planned {
            let left = crate::shutdown::finish_requests(&self.metrics, self.drain_timeout).await;
            tracing::info!(still_in_flight = left, "requests in flight finished; leaving the cluster");
        }
        self.lifecycle.advance(Phase::Stopping);
        let _ = stop_tx.send(true);
        // Let the control plane leave the cluster gracefully before the process ends.
        if let Some(p) = plane {
            let _ = tokio::time::timeout(Duration::from_secs(3), p).await;
        }
        watcher.abort();
        tcp_health.abort();
        udp_tasks.iter().for_each(|t| t.abort());
        if planned {
            // Nothing is left to wait for: Pingora would sleep out its grace period.
            tracing::info!("shutdown complete");
            std::process::exit(0);
        }
    }
}

/// The most descriptors the automatic connection caps are sized for, whatever the limit.
const MAX_NOFILE_BUDGET: u64 = 1 << 20;

/// Raise the soft file limit to the hard one (a connection flood must meet our caps,
/// not EMFILE); returns the soft limit in force.
fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(MAX_NOFILE_BUDGET) {
        Ok(n) => n,
        Err(e) => {
            let soft = rlimit::Resource::NOFILE.get().map(|(s, _)| s).unwrap_or(1024);
            tracing::warn!(error = %e, soft, "cannot raise the file limit");
            soft
        }
    }
}

/// Each entry point with its limits (automatic caps share the file limit).
fn entrypoint_limits(cfg: &LoadedConfig, metrics: &DownstreamMetrics) -> Vec<Arc<Entrypoint>> {
    let nofile = raise_nofile_limit().min(MAX_NOFILE_BUDGET);
    let transport = |name: &str| cfg.config.entrypoints.get(name).map(|e| e.transport.clone()).unwrap_or_default();
    let unset = cfg.entrypoints.iter().filter(|(n, _)| transport(n).max_connections.is_none()).count();
    let auto = auto_max_connections(nofile, unset);
    tracing::debug!(nofile, auto_max_connections = auto, "file limit");
    cfg.entrypoints
        .iter()
        .map(|(name, addr)| {
            let protocols = cfg
                .config
                .entrypoints
                .get(name)
                .map(|e| Protocols { tls: e.tls, http2: e.http2, h2c: e.h2c })
                .unwrap_or_default();
            Arc::new(Entrypoint::new(name, *addr, transport(name).limits(auto), metrics).with_protocols(protocols))
        })
        .collect()
}

/// Build the server for `cfg` and run it until a shutdown signal. Never returns on
/// success (Pingora exits the process).
pub fn run(cfg: LoadedConfig) -> Result<(), StartError> {
    let registry = prometheus::Registry::new();
    let metrics = ProxyMetrics::register(&registry).map_err(|e| StartError::Runtime(e.to_string()))?;
    let downstream = DownstreamMetrics::register(&registry).map_err(|e| StartError::Runtime(e.to_string()))?;
    let tls_metrics = TlsMetrics::register(&registry).map_err(|e| StartError::Runtime(e.to_string()))?;
    let tcp_metrics =
        constellation_proxy::tcp::TcpMetrics::register(&registry).map_err(|e| StartError::Runtime(e.to_string()))?;
    let udp_metrics =
        constellation_proxy::udp::UdpMetrics::register(&registry).map_err(|e| StartError::Runtime(e.to_string()))?;
    // Certificates and options; the first reload replaces this with the route files' own.
    let tls: TlsHandle = Arc::new(ArcSwap::from_pointee(TlsSnapshot::empty()));
    crate::pingora_log::count_into(metrics.downstream_disconnects.clone());
    let settings = cfg.config.proxy.clone();
    let table: constellation_proxy::TableHandle = Arc::new(ArcSwap::from_pointee(RouteTable::empty(settings.clone())));
    let admin = Arc::new(AdminState::new(&cfg.config.node.name, table.clone(), registry, cfg.admin_token.clone()));
    let udp_table = admin.udp.clone();
    // Failed upstream connects make the resolver look host names up again early.
    let connect_failures = Arc::new(ConnectFailures::default());
    let resolver =
        Arc::new(Resolver::new(cfg.config.resolver.settings(&cfg.base_dir)).watching(connect_failures.clone()));
    let reloader = Arc::new(
        Reloader::new(
            route_sources(&cfg),
            settings.clone(),
            cfg.entrypoints.clone(),
            table.clone(),
            metrics.clone(),
            admin.clone(),
        )
        .with_domain(&cfg.config.cluster.domain)
        .with_resolver(resolver)
        .with_tls(tls.clone(), tls_metrics.clone())
        .with_entrypoint_tls(cfg.entrypoint_tls())
        .with_udp(udp_table.clone(), cfg.udp_entrypoints.iter().map(|(n, _)| n.clone()).collect()),
    );
    // The first table must be valid: an agent that starts with no routes would look
    // healthy while serving nothing. Its host names are looked up first, on a runtime of
    // its own (Pingora starts its runtimes later).
    let startup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Runtime(format!("cannot start a runtime for the first reload: {e}")))?;
    startup.block_on(reloader.reload_resolved()).map_err(StartError::Routes)?;
    // `[docker] enabled = true` makes the engine a requirement at start; later losses
    // are retried (the last routes stay), as is an unreachable engine when unset.
    if cfg.config.docker.enabled == Some(true) {
        let endpoint = cfg.config.docker.endpoint.clone();
        startup
            .block_on(constellation_services::engine::connect(Some(&endpoint), 10))
            .map_err(|e| StartError::Runtime(format!("[docker] enabled = true, but {e}")))?;
    }
    drop(startup);
    let prober = Arc::new(Prober::new(CertPolicy::Unverified).map_err(|e| StartError::Runtime(e.to_string()))?);
    // Pingora retries a busy listen address for a long time; fail now with a clear
    // error instead of running without a listener.
    let mut listen: Vec<(String, std::net::SocketAddr)> =
        cfg.entrypoints.iter().map(|(n, a)| (format!("entrypoint {n}"), *a)).collect();
    listen.push(("admin".into(), cfg.admin_addr));
    if let Some(w) = cfg.config.welcome.as_ref().and_then(|w| w.address.parse().ok()) {
        listen.push(("welcome backend".into(), w));
    }
    if let Some(g) = &cfg.gossip {
        listen.push(("cluster RPC".into(), g.cluster_bind));
        std::net::UdpSocket::bind(g.bind)
            .map_err(|e| StartError::Runtime(format!("gossip: cannot bind UDP {}: {e}", g.bind)))?;
    }
    for (what, addr) in &listen {
        std::net::TcpListener::bind(addr)
            .map_err(|e| StartError::Runtime(format!("{what}: cannot listen on {addr}: {e}")))?;
    }
    // UDP entry points are not Pingora listeners: bound here, served by the control
    // service's runtime.
    let mut udp_sockets = Vec::new();
    for (name, addr) in &cfg.udp_entrypoints {
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|e| StartError::Runtime(format!("entrypoint {name}: cannot bind UDP {addr}: {e}")))?;
        tracing::info!(entrypoint = %name, %addr, "UDP entry point listening");
        udp_sockets.push((name.clone(), socket));
    }

    let conf = ServerConf {
        threads: settings.threads,
        // Pingora closes the listeners when `PlannedStop` returns (after our own grace
        // period), then sleeps this long for requests in flight, then stops its runtimes
        // (ControlLoop exits earlier once nothing is in flight).
        grace_period_seconds: Some(settings.graceful_shutdown_timeout_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        // Our own attempt cap is tighter; this only guards against a bug looping forever.
        max_retries: 16,
        upstream_keepalive_pool_size: 256,
        pid_file: std::env::temp_dir().join(format!("constellation-{}.pid", std::process::id())).display().to_string(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("constellation-{}.sock", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let lifecycle = Lifecycle::default();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut proxy_app = pingora_proxy::http_proxy(
        &server.configuration,
        SmartFailoverProxy::new(table.clone(), metrics.clone())
            .with_entrypoints(cfg.entrypoint_policies.clone())
            .with_events(events_tx)
            .with_connect_failures(connect_failures)
            .with_tls(tls.clone()),
    );
    let entrypoints = entrypoint_limits(&cfg, &downstream);
    if entrypoints.iter().any(|e| e.protocols().h2c) {
        // LimitedApp peeks the preface on `h2c = true` entry points only and hands
        // just those connections to Pingora's loop, which must then accept h2c.
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.h2c = true;
        proxy_app.server_options = Some(options);
    }
    admin.entrypoints.store(Arc::new(entrypoints.clone()));
    let mut proxy = Service::new(
        "SmartFailoverProxy".to_string(),
        LimitedApp::new(proxy_app, entrypoints.clone())
            .with_tls(tls.clone(), tls_metrics.clone())
            .with_tcp(table.clone(), tcp_metrics.clone()),
    );
    for e in &entrypoints {
        let (name, l) = (e.name(), e.limits());
        let addr = cfg.entrypoints.iter().find(|(n, _)| n == name).map(|(_, a)| *a);
        let Some(addr) = addr else { continue };
        tracing::info!(
            entrypoint = %name,
            %addr,
            max_connections = l.max_connections,
            max_connections_per_ip = l.max_connections_per_ip,
            tls = e.protocols().tls,
            h2c = e.protocols().h2c,
            read_timeout_ms = l.read_timeout.as_millis() as u64,
            idle_timeout_ms = l.idle_timeout.as_millis() as u64,
            "proxy listening"
        );
        proxy.add_listener(constellation_proxy::downstream::listener(&addr.to_string()));
    }
    server.add_service(proxy);

    let mut admin_svc = Service::new("admin".to_string(), AdminApp::new(admin.clone()));
    admin_svc.add_tcp(&cfg.admin_addr.to_string());
    tracing::info!(addr = %cfg.admin_addr, auth = cfg.admin_token.is_some(), "admin API listening");
    server.add_service(admin_svc);

    if let Some(w) = &cfg.config.welcome {
        let mut svc =
            Service::new("welcome".to_string(), crate::welcome::Welcome { node: cfg.config.node.name.clone() });
        svc.add_tcp(&w.address);
        tracing::info!(addr = %w.address, "welcome backend listening");
        server.add_service(svc);
    }

    server.add_service(background_service(
        "control",
        ControlLoop {
            cfg: cfg.clone(),
            reloader,
            admin: admin.clone(),
            registry: admin.registry.clone(),
            events: std::sync::Mutex::new(Some(events_rx)),
            table,
            metrics,
            prober,
            interval: Duration::from_millis(cfg.config.routes.watch_interval_ms),
            lifecycle: lifecycle.clone(),
            drain_timeout: Duration::from_secs(settings.graceful_shutdown_timeout_secs),
            tcp_metrics,
            udp: std::sync::Mutex::new(udp_sockets),
            udp_table,
            udp_metrics,
        },
    ));
    tracing::info!(node = %cfg.config.node.name, config = %cfg.origin, "agent starting");
    let grace = Duration::from_secs(settings.grace_period_secs);
    server.run(RunArgs { shutdown_signal: Box::new(crate::shutdown::PlannedStop { lifecycle, grace }) });
    std::process::exit(0)
}
