//! Route sources (Traefik dynamic-configuration files), the reloader that reads,
//! validates, resolves, compiles and swaps route tables, and the change watcher.
//!
//! Files are read here, never in the proxy crate, which parses text only. Host names in
//! server URLs are answered by the [`Resolver`] before compiling; a changed answer
//! recompiles the table.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use constellation_proxy::dynamic::RouterTls;
use constellation_proxy::tls::{AcmeMaterial, TlsFiles, TlsHandle, TlsMetrics};
use constellation_proxy::{
    compile_with_files, dynamic, host_names, redact, DynamicConfig, ProxyMetrics, ProxySettings, TableHandle,
    TransportFiles, UpstreamRegistry,
};

use crate::admin::{unix_now, AdminState, ReloadReport};
use crate::builder::{build, ClusterInstance};
use crate::resolver::{Resolver, ResolverSettings};
use tokio::sync::Notify;

/// Where routes come from.
#[derive(Debug, Clone)]
pub enum RouteSource {
    /// A file on disk, format from its extension.
    File(PathBuf),
    /// Text compiled into the binary (the embedded default's demo route), YAML.
    Embedded {
        /// Name used in errors.
        name: String,
        /// YAML text.
        text: String,
    },
}

impl RouteSource {
    fn name(&self) -> String {
        match self {
            RouteSource::File(p) => p.display().to_string(),
            RouteSource::Embedded { name, .. } => name.clone(),
        }
    }

    fn load(&self) -> Result<DynamicConfig, String> {
        match self {
            RouteSource::File(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| format!("{name}: cannot read: {e}"))?;
                let mut cfg = dynamic::parse_named(&name, &text).map_err(|e| e.to_string())?;
                // Certificate paths are relative to the file naming them.
                crate::tls_files::absolutize(&mut cfg, p.parent().unwrap_or(std::path::Path::new(".")));
                Ok(cfg)
            }
            RouteSource::Embedded { name, text } => {
                dynamic::parse_str(text, dynamic::Format::Yaml, name).map_err(|e| e.to_string())
            }
        }
    }

    fn fingerprint(&self, h: &mut DefaultHasher) {
        match self {
            RouteSource::File(p) => match std::fs::read(p) {
                Ok(bytes) => bytes.hash(h),
                Err(e) => e.kind().to_string().hash(h),
            },
            RouteSource::Embedded { text, .. } => text.hash(h),
        }
    }
}

/// Parse every source, merge them and validate the result.
pub fn load_sources(sources: &[RouteSource]) -> Result<DynamicConfig, Vec<String>> {
    let mut merged = DynamicConfig::default();
    let mut errors = Vec::new();
    for s in sources {
        match s.load() {
            Ok(cfg) => {
                if let Err(e) = merged.merge(cfg, &s.name()) {
                    errors.push(e.to_string());
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let origin = sources.iter().map(RouteSource::name).collect::<Vec<_>>().join(", ");
    merged.validate(&origin).map_err(|errs| errs.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok(merged)
}

/// Builds route tables from the sources and publishes them.
pub struct Reloader {
    sources: Vec<RouteSource>,
    settings: ProxySettings,
    entrypoints: Vec<(String, SocketAddr)>,
    table: TableHandle,
    registry: UpstreamRegistry,
    resolver: Arc<Resolver>,
    metrics: ProxyMetrics,
    admin: Arc<AdminState>,
    generation: AtomicU64,
    fingerprint: Mutex<u64>,
    domain: String,
    instances: Mutex<Vec<ClusterInstance>>,
    provided: Mutex<Vec<(String, DynamicConfig)>>,
    /// Files the servers transports named at the last load: part of the fingerprint,
    /// so a replaced CA or client certificate reloads the table.
    transport_paths: Mutex<Vec<PathBuf>>,
    kick: Notify,
    tls: Option<(TlsHandle, TlsMetrics)>,
    /// What the TLS snapshot in force was built from (rebuilt by [`Reloader::set_acme`]).
    tls_inputs: Mutex<TlsInputs>,
    /// Certificate files of the last configuration, watched with the route files.
    tls_paths: Mutex<Vec<String>>,
    /// What ACME should order, by resolver, from the configuration in force.
    acme_wanted: tokio::sync::watch::Sender<AcmeWanted>,
    /// Router TLS defaults of TLS entry points (`[entrypoints.<name>.http.tls]`).
    entrypoint_tls: Vec<(String, RouterTls)>,
    /// UDP tables go here, for these UDP entry points.
    udp: Option<(constellation_proxy::udp::UdpHandle, Vec<String>)>,
    /// Routes of the stateful groups (Redis, MongoDB primaries), merged like a provider's.
    stateful: Mutex<Option<DynamicConfig>>,
}

/// Certificates ACME should order, by resolver name: one name list per certificate,
/// its main name first (see [`constellation_proxy::tls::acme_domains`]).
pub type AcmeWanted = std::collections::BTreeMap<String, std::collections::BTreeSet<Vec<String>>>;

/// The inputs of the TLS snapshot in force.
#[derive(Default)]
struct TlsInputs {
    config: Option<DynamicConfig>,
    files: TlsFiles,
    acme: AcmeMaterial,
}

impl Reloader {
    /// A reloader publishing into `table` and `admin`.
    pub fn new(
        sources: Vec<RouteSource>,
        settings: ProxySettings,
        entrypoints: Vec<(String, SocketAddr)>,
        table: TableHandle,
        metrics: ProxyMetrics,
        admin: Arc<AdminState>,
    ) -> Self {
        Self {
            sources,
            settings,
            entrypoints,
            table,
            registry: UpstreamRegistry::default(),
            resolver: Arc::new(Resolver::new(ResolverSettings::default())),
            metrics,
            admin,
            generation: AtomicU64::new(0),
            fingerprint: Mutex::new(0),
            domain: crate::config::DEFAULT_CLUSTER_DOMAIN.to_string(),
            instances: Mutex::new(Vec::new()),
            provided: Mutex::new(Vec::new()),
            transport_paths: Mutex::new(Vec::new()),
            kick: Notify::new(),
            tls: None,
            tls_inputs: Mutex::new(TlsInputs::default()),
            tls_paths: Mutex::new(Vec::new()),
            acme_wanted: tokio::sync::watch::channel(AcmeWanted::new()).0,
            entrypoint_tls: Vec::new(),
            udp: None,
            stateful: Mutex::new(None),
        }
    }

    /// Also compile the `udp` section for the UDP entry points `entrypoints` and swap
    /// it into `handle` with each table (a UDP error rejects the reload whole).
    pub fn with_udp(mut self, handle: constellation_proxy::udp::UdpHandle, entrypoints: Vec<String>) -> Self {
        self.udp = Some((handle, entrypoints));
        self
    }

    /// Replace the stateful groups' routes (`tcp` routers and services pointing at each
    /// group's primary) and the services whose removed servers must close their
    /// connections at once. A change wakes the watcher.
    pub fn set_stateful(&self, cfg: DynamicConfig, close_at_once: Vec<String>) {
        let mut cur = self.stateful.lock().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref() != Some(&cfg) {
            self.registry.tcp.set_drain_overrides(close_at_once.into_iter().map(|s| (s, Duration::ZERO)).collect());
            *cur = Some(cfg);
            drop(cur);
            self.kick.notify_one();
        }
    }

    /// Also build a TLS snapshot (certificates, options, ACME material) with each table
    /// and swap it into `handle`; a configuration whose TLS part fails (a key not
    /// matching its certificate, an unreadable file) is rejected whole, and the
    /// snapshot and table in force stay.
    pub fn with_tls(mut self, handle: TlsHandle, metrics: TlsMetrics) -> Self {
        self.tls = Some((handle, metrics));
        self
    }

    /// Replace ACME's certificates and pending challenges, and rebuild the TLS snapshot
    /// from the configuration and files in force (nothing is read again). Material that
    /// does not parse is left out with a warning; the rest is served.
    pub fn set_acme(&self, material: AcmeMaterial) -> Result<(), Vec<String>> {
        let Some((handle, metrics)) = &self.tls else {
            return Err(vec!["TLS is not enabled on this reloader".into()]);
        };
        let mut inputs = self.tls_inputs.lock().unwrap_or_else(|p| p.into_inner());
        if inputs.acme == material {
            return Ok(());
        }
        let empty = DynamicConfig::default();
        let cfg = inputs.config.as_ref().unwrap_or(&empty);
        let (snapshot, warnings) = crate::tls_files::build(cfg, &inputs.files, &material)?;
        for w in &warnings {
            tracing::warn!(detail = %w, "tls");
        }
        inputs.acme = material;
        drop(inputs);
        self.swap_tls(handle, metrics, snapshot);
        Ok(())
    }

    fn swap_tls(&self, handle: &TlsHandle, metrics: &TlsMetrics, snapshot: constellation_proxy::TlsSnapshot) {
        metrics.observe(&snapshot, unix_now() as i64);
        self.admin.certificates.store(Arc::new(snapshot.certificates()));
        handle.store(Arc::new(snapshot));
    }

    /// Serve routers without `tls` that are attached to these TLS entry points there
    /// with the given TLS settings (see [`apply_entrypoint_tls`]).
    pub fn with_entrypoint_tls(mut self, defaults: Vec<(String, RouterTls)>) -> Self {
        self.entrypoint_tls = defaults;
        self
    }

    /// The certificates ACME should order, updated with every accepted configuration.
    pub fn acme_wanted(&self) -> tokio::sync::watch::Receiver<AcmeWanted> {
        self.acme_wanted.subscribe()
    }

    /// Refresh `constellation_cert_expiry_seconds` (the clock moves between reloads).
    pub fn observe_certificates(&self) {
        if let Some((handle, metrics)) = &self.tls {
            metrics.observe(&handle.load(), unix_now() as i64);
        }
    }

    /// Domain of default routers for announced services.
    pub fn with_domain(mut self, domain: &str) -> Self {
        self.domain = domain.to_string();
        self
    }

    /// Resolve host names with `resolver` (default: the system resolver, default settings).
    pub fn with_resolver(mut self, resolver: Arc<Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// The resolver answering host names for this reloader's tables.
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// Replace the cluster's healthy instances; a change wakes the watcher to rebuild.
    pub fn set_instances(&self, mut instances: Vec<ClusterInstance>) {
        instances.sort();
        instances.dedup();
        let mut cur = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != instances {
            *cur = instances;
            drop(cur);
            self.kick.notify_one();
        }
    }

    /// Replace the configurations providers contribute (containers' labels, of this node
    /// and of others), each with its origin; a change wakes the watcher to rebuild.
    /// Objects several parts define identically merge; differing ones are left out and
    /// reported; a name a route file also defines keeps the file's definition.
    pub fn set_provided(&self, parts: Vec<(String, DynamicConfig)>) {
        let mut cur = self.provided.lock().unwrap_or_else(|p| p.into_inner());
        let same = cur.len() == parts.len() && cur.iter().zip(&parts).all(|(a, b)| a.0 == b.0 && a.1 == b.1);
        if !same {
            *cur = parts;
            drop(cur);
            self.kick.notify_one();
        }
    }

    /// Pools of the table in force (for applying outlier hints).
    pub fn table(&self) -> &TableHandle {
        &self.table
    }

    fn current_fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for s in &self.sources {
            s.fingerprint(&mut h);
        }
        for p in self.transport_paths.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            RouteSource::File(p.clone()).fingerprint(&mut h);
        }
        let paths = self.tls_paths.lock().unwrap_or_else(|p| p.into_inner()).clone();
        crate::tls_files::fingerprint(&paths, &mut h);
        h.finish()
    }

    /// Whether any source changed since the last reload attempt.
    pub fn changed(&self) -> bool {
        let fp = self.current_fingerprint();
        *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner()) != fp
    }

    /// Read, merge, build and validate the configuration (blocking file reads).
    fn prepare(&self) -> Prepared {
        let started = Instant::now();
        *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner()) = self.current_fingerprint();
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut build_warnings = Vec::new();
        let mut provided = self.provided.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(st) = self.stateful.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            provided.push(("stateful".to_string(), st));
        }
        let config = load_sources(&self.sources).and_then(|cfg| {
            let (mut cfg, w) = assemble(cfg, provided, &instances, &self.domain)?;
            build_warnings = w;
            let names: Vec<String> = self.entrypoints.iter().map(|(n, _)| n.clone()).collect();
            apply_entrypoint_tls(&mut cfg, &names, &self.entrypoint_tls);
            Ok(cfg)
        });
        if let Ok(cfg) = &config {
            self.resolver.want(&host_names(cfg));
            let paths = crate::transport_files::references(cfg).into_iter().map(|r| r.path).collect();
            *self.transport_paths.lock().unwrap_or_else(|p| p.into_inner()) = paths;
        }
        let mut tls_files = TlsFiles::new();
        let config = match config {
            Ok(cfg) if self.tls.is_some() => {
                let paths = crate::tls_files::watched(&cfg);
                let mut known = self.tls_paths.lock().unwrap_or_else(|p| p.into_inner());
                if *known != paths {
                    *known = paths;
                    drop(known);
                    *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner()) = self.current_fingerprint();
                }
                match crate::tls_files::read(&cfg) {
                    Ok(files) => {
                        tls_files = files;
                        Ok(cfg)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        // Files named by servers transports are read here, with the route files.
        let config = config.and_then(|cfg| crate::transport_files::load(&cfg).map(|files| (cfg, files)));
        Prepared { started, config, build_warnings, tls_files }
    }

    /// Load, validate, compile with the addresses known now, and swap in a new table.
    /// Host names not answered yet are unavailable in this table; the resolver looks
    /// them up and its answer recompiles. On error the table in force stays and the
    /// errors are returned (and logged, counted, shown in status).
    pub fn reload(&self) -> Result<u64, Vec<String>> {
        self.publish(self.prepare())
    }

    /// Like [`Reloader::reload`], but first looks up the host names that have no answer
    /// yet, so a new upstream is usable in the first table that names it.
    pub async fn reload_resolved(self: &Arc<Self>) -> Result<u64, Vec<String>> {
        let me = self.clone();
        let prepared = match tokio::task::spawn_blocking(move || me.prepare()).await {
            Ok(p) => p,
            Err(e) => return Err(vec![format!("reload task failed: {e}")]),
        };
        if prepared.config.is_ok() {
            self.resolver.resolve_missing().await;
        }
        self.publish(prepared)
    }

    fn publish(&self, prepared: Prepared) -> Result<u64, Vec<String>> {
        let Prepared { started, config, build_warnings, tls_files } = prepared;
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let addresses = self.resolver.addresses();
        let result = config.and_then(|(cfg, files)| {
            compile_with_files(&cfg, &self.settings, &self.entrypoints, &self.registry, &addresses, &files, generation)
                .map(|(table, warnings)| (cfg, table, warnings))
                .map_err(|errs| errs.into_iter().map(|e| e.to_string()).collect())
        });
        // The UDP table of the same configuration.
        let result = result.and_then(|(cfg, table, mut warnings)| {
            let Some((_, eps)) = &self.udp else { return Ok((cfg, table, warnings, None)) };
            let (udp, w) = constellation_proxy::udp::compile(&cfg, eps, &addresses)
                .map_err(|errs| errs.into_iter().map(|(o, f, m)| format!("{o}: {f}: {m}")).collect::<Vec<_>>())?;
            warnings.extend(w);
            Ok((cfg, table, warnings, Some(udp)))
        });
        // The TLS snapshot of the same configuration; it fails the reload as a whole.
        let result = result.and_then(|(cfg, table, mut warnings, udp)| {
            let Some((handle, metrics)) = &self.tls else { return Ok((cfg, table, warnings, udp)) };
            let acme = self.tls_inputs.lock().unwrap_or_else(|p| p.into_inner()).acme.clone();
            let (snapshot, w) = crate::tls_files::build(&cfg, &tls_files, &acme)?;
            warnings.extend(w);
            self.swap_tls(handle, metrics, snapshot);
            let wanted = constellation_proxy::tls::acme_domains(&cfg);
            self.acme_wanted.send_if_modified(|w| {
                let changed = *w != wanted;
                *w = wanted;
                changed
            });
            let mut inputs = self.tls_inputs.lock().unwrap_or_else(|p| p.into_inner());
            inputs.config = Some(cfg.clone());
            inputs.files = tls_files;
            Ok((cfg, table, warnings, udp))
        });
        self.metrics.compile_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok((cfg, table, warnings, udp)) => {
                let mut unsupported = cfg.unsupported();
                unsupported.extend(warnings);
                unsupported.extend(build_warnings);
                for u in &unsupported {
                    tracing::warn!(detail = %u, "configuration feature parsed but not applied");
                }
                // Publish the Traefik view before the table so a poller never sees a
                // table newer than the document describing it.
                let doc = serde_json::to_value(&cfg).unwrap_or_default();
                self.admin.traefik.store(Arc::new(doc));
                for p in &table.pools {
                    for u in p.upstreams.iter().filter(|u| u.addr.is_none()) {
                        let reason = u.address_error.as_deref().unwrap_or("no address");
                        tracing::warn!(service = %p.name, upstream = u.label(), reason, "upstream unavailable: no address");
                    }
                }
                self.metrics.router_unapplied.reset();
                for r in &table.routes {
                    for feature in &r.unapplied {
                        self.metrics.router_unapplied.with_label_values(&[&r.name, feature]).set(i64::from(r.refused));
                    }
                    if r.refused {
                        tracing::warn!(router = %r.name, needs = %r.unapplied.join("; "), "router refuses traffic: it needs features that are not applied");
                    }
                }
                let routes = table.routes.len();
                let live: Vec<_> = table.pools.iter().flat_map(|p| p.upstreams.iter().map(|u| u.key.clone())).collect();
                let now = Instant::now();
                for p in &table.pools {
                    for u in &p.upstreams {
                        self.metrics.breaker_state.with_label_values(&[&p.name, u.label()]).set(u.breaker_gauge(now));
                    }
                }
                for r in table.tcp.routes.iter().filter(|r| r.refused.is_some()) {
                    tracing::warn!(router = %r.name, reason = r.refused.as_deref().unwrap_or(""), "TCP router refuses connections");
                }
                let table = Arc::new(table);
                self.table.store(table.clone());
                if let (Some((handle, _)), Some(udp)) = (&self.udp, udp) {
                    handle.store(Arc::new(udp));
                }
                // Servers the new table dropped drain now that it is in use.
                self.registry.tcp.retain_table(&table.tcp, Duration::from_millis(self.settings.tcp_drain_grace_ms));
                for gone in self.registry.retain(&live) {
                    // Series are labelled with the URL as shown (user info hidden).
                    let label = redact::redact_url(&gone.url);
                    let _ = self.metrics.breaker_state.remove_label_values(&[&gone.service, &label]);
                    let _ = self.metrics.upstream_healthy.remove_label_values(&[&gone.service, &label]);
                }
                self.generation.store(generation, Ordering::Relaxed);
                self.metrics.config_generation.set(generation as i64);
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.admin.reload.store(Arc::new(ReloadReport {
                    result: "ok".into(),
                    errors: Vec::new(),
                    unsupported,
                    at_unix: unix_now(),
                }));
                self.admin.ready.store(true, Ordering::Relaxed);
                tracing::info!(
                    generation,
                    routes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "route table published"
                );
                Ok(generation)
            }
            Err(errors) => {
                self.metrics.config_reloads.with_label_values(&["invalid"]).inc();
                for e in &errors {
                    let e = redact::redact_text(e);
                    tracing::error!(error = %e, "route configuration rejected; the previous table stays in force");
                }
                let prev = self.admin.reload.load();
                self.admin.reload.store(Arc::new(ReloadReport {
                    result: "invalid".into(),
                    errors: errors.clone(),
                    unsupported: prev.unsupported.clone(),
                    at_unix: unix_now(),
                }));
                Err(errors)
            }
        }
    }

    /// Poll the sources every `interval` and reload on change, until `stop` resolves;
    /// also runs the resolver, whose changed answers recompile the table.
    /// `after_swap` runs after each successful reload (e.g. to resync health checks).
    pub async fn watch<F, S>(self: Arc<Self>, interval: Duration, mut after_swap: F, stop: S)
    where
        F: FnMut() + Send,
        S: std::future::Future<Output = ()> + Send,
    {
        tokio::pin!(stop);
        // The resolver runs as long as the watcher: aborted when this future ends.
        let me = self.clone();
        let _resolver =
            AbortOnDrop(tokio::spawn(self.resolver.clone().run(move || me.kick.notify_one(), std::future::pending())));
        loop {
            let kicked = tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(interval) => false,
                _ = self.kick.notified() => true,
            };
            self.observe_certificates();
            if !kicked {
                // Reading the files blocks: do it on the blocking pool, never on the
                // runtime's workers.
                let me = self.clone();
                let Ok(Some(first)) =
                    tokio::task::spawn_blocking(move || me.changed().then(|| me.current_fingerprint())).await
                else {
                    continue;
                };
                // Let a writer finish: reload once the content stopped changing.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let me = self.clone();
                if tokio::task::spawn_blocking(move || me.current_fingerprint()).await.ok() != Some(first) {
                    continue;
                }
            }
            if self.reload_resolved().await.is_ok() {
                after_swap();
            }
        }
    }
}

/// The route files' configuration plus providers' parts (see [`Reloader::set_provided`])
/// plus announced instances → the configuration a table is compiled from, validated;
/// with the warnings of merging and building.
pub fn assemble(
    mut files: DynamicConfig,
    provided: Vec<(String, DynamicConfig)>,
    instances: &[ClusterInstance],
    domain: &str,
) -> Result<(DynamicConfig, Vec<String>), Vec<String>> {
    let mut warnings = merge_provided(&mut files, provided);
    let (cfg, w) = build(&files, instances, domain);
    warnings.extend(w);
    cfg.validate("cluster instances").map_err(|errs| errs.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok((cfg, warnings))
}

/// Merge provider parts into the files' configuration (see [`Reloader::set_provided`]);
/// returns the conflicts as warnings.
fn merge_provided(cfg: &mut DynamicConfig, parts: Vec<(String, DynamicConfig)>) -> Vec<String> {
    if parts.is_empty() {
        return Vec::new();
    }
    let (mut shared, conflicts) = DynamicConfig::merge_shared(parts);
    let mut warnings: Vec<String> =
        conflicts.iter().map(|c| format!("{c}, differently: neither definition is used")).collect();
    let files = cfg.object_names();
    for name in shared.object_names() {
        if files.contains(&name) {
            let theirs = shared.origin_of(&name).unwrap_or("a provider").to_string();
            let ours = cfg.origin_of(&name).unwrap_or("a route file").to_string();
            warnings
                .push(format!("{name} is defined in both {ours} and {theirs}: the route file's definition is used"));
            shared.remove_object(&name);
        }
    }
    if let Err(e) = cfg.merge(shared, "docker") {
        warnings.push(e.to_string());
    }
    warnings
}

/// Traefik's entry point `http.tls`: a router without `tls` attached to a TLS entry
/// point with defaults (it lists that entry point, or lists none) is served there with
/// those TLS settings. A router only on such entry points gets the settings itself; one
/// also on other entry points keeps serving those in plain HTTP, and a copy named
/// `<entrypoint>-<router>` serves the TLS entry point (as Traefik instantiates a router
/// per entry point).
pub fn apply_entrypoint_tls(cfg: &mut DynamicConfig, entrypoints: &[String], defaults: &[(String, RouterTls)]) {
    if defaults.is_empty() {
        return;
    }
    let mut out = std::collections::BTreeMap::new();
    let mut copies = Vec::new();
    for (name, mut router) in std::mem::take(&mut cfg.http.routers) {
        if router.tls.is_some() {
            out.insert(name, router);
            continue;
        }
        let attached = if router.entry_points.is_empty() { entrypoints.to_vec() } else { router.entry_points.clone() };
        let (with, rest): (Vec<String>, Vec<String>) =
            attached.into_iter().partition(|e| defaults.iter().any(|(d, _)| d == e));
        if with.is_empty() {
            out.insert(name, router);
            continue;
        }
        // Only on one such entry point: the router itself becomes a TLS router.
        let alone = rest.is_empty() && with.len() == 1;
        for (ep, tls) in defaults.iter().filter(|(d, _)| with.contains(d)) {
            let mut copy = router.clone();
            copy.entry_points = vec![ep.clone()];
            copy.tls = Some(tls.clone());
            copies.push((if alone { name.clone() } else { format!("{ep}-{name}") }, copy));
        }
        if !rest.is_empty() {
            router.entry_points = rest;
            out.insert(name, router);
        }
    }
    // A router of the file with the copy's name wins (the copy is left out).
    for (name, copy) in copies {
        out.entry(name).or_insert(copy);
    }
    cfg.http.routers = out;
}

/// What [`Reloader::prepare`] hands to [`Reloader::publish`].
struct Prepared {
    started: Instant,
    config: Result<(DynamicConfig, TransportFiles), Vec<String>>,
    build_warnings: Vec<String>,
    tls_files: TlsFiles,
}

/// Stops the resolver task when the watcher ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod entrypoint_tls_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn routers_on_a_tls_entry_point_with_defaults_get_them_and_keep_their_plain_side() {
        let yaml = "http:\n  routers:\n    both:\n      rule: \"Host(`a.test`)\"\n      service: s\n    secure:\n      rule: \"Host(`b.test`)\"\n      entryPoints: [websecure]\n      service: s\n    plain:\n      rule: \"Host(`c.test`)\"\n      entryPoints: [web]\n      service: s\n    own:\n      rule: \"Host(`d.test`)\"\n      service: s\n      tls: {options: modern}\n  services:\n    s:\n      loadBalancer:\n        servers: [{url: \"http://127.0.0.1:1\"}]\n";
        let mut cfg = dynamic::parse_named("routes.yaml", yaml).unwrap();
        let tls = RouterTls { cert_resolver: Some("default".into()), ..RouterTls::default() };
        let eps = vec!["web".to_string(), "websecure".to_string()];
        apply_entrypoint_tls(&mut cfg, &eps, &[("websecure".into(), tls.clone())]);
        let r = &cfg.http.routers;
        assert_eq!(r.keys().cloned().collect::<Vec<_>>(), ["both", "own", "plain", "secure", "websecure-both"]);
        assert_eq!((r["both"].entry_points.clone(), r["both"].tls.clone()), (vec!["web".to_string()], None));
        assert_eq!(r["websecure-both"].entry_points, ["websecure"]);
        assert_eq!(r["websecure-both"].tls, Some(tls.clone()));
        assert_eq!(r["secure"].tls, Some(tls), "only on websecure: the router itself");
        assert_eq!(r["plain"].tls, None);
        assert_eq!(r["own"].tls.as_ref().unwrap().options.as_deref(), Some("modern"), "its own tls stays");
        assert!(r["own"].entry_points.is_empty());
    }
}
