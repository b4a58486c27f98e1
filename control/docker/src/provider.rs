//! The engine watcher: connect (retrying, logging once), list every container, follow the
//! event stream (start, die, stop, destroy, health_status, network connect/disconnect),
//! relist on reconnect and on a timer, and publish a snapshot of the watched containers
//! with what each contributes. It also restarts `deunhealth.restart.on.unhealthy=true`
//! containers that turn unhealthy, with a backoff and a cap per hour.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;

use crate::config::DockerConfig;
use crate::constraints::Constraint;
use crate::container::{Container, Health};
use crate::labels::{contribution, exposed, Contribution, LabelSettings};

/// `deunhealth.restart.on.unhealthy=true`: restart the container when it turns unhealthy.
pub const LABEL_RESTART_ON_UNHEALTHY: &str = "deunhealth.restart.on.unhealthy";

/// One watched container and what it contributes.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The container.
    pub container: Container,
    /// Routed (`traefik.enable=true` or exposed by default).
    pub exposed: bool,
    /// Its configuration and endpoints, when exposed, running and its labels are valid.
    pub contribution: Option<Contribution>,
    /// Why its labels were refused (each names the label).
    pub errors: Vec<String>,
    /// Restarts made by the restarter in the last hour.
    pub restarts_last_hour: u32,
}

/// What the provider knows now.
#[derive(Debug, Clone, Default)]
pub struct DockerSnapshot {
    /// The engine answers (the containers are current); when false they are the last
    /// known ones.
    pub connected: bool,
    /// Engine version, once connected.
    pub engine_version: Option<String>,
    /// Why the engine cannot be reached, while it cannot.
    pub last_error: Option<String>,
    /// Watched containers (those passing `constraints`), by name.
    pub containers: Vec<Watched>,
    /// Bumped on every change.
    pub generation: u64,
}

/// The provider's metrics.
#[derive(Clone)]
pub struct DockerMetrics {
    events: IntCounterVec,
    relists: IntCounterVec,
    restarts: IntCounterVec,
    connected: IntGauge,
    containers: IntGaugeVec,
    refused: IntGauge,
}

impl DockerMetrics {
    /// Register on `registry` (a second registration of the same names is ignored).
    pub fn new(registry: &Registry) -> DockerMetrics {
        let events = IntCounterVec::new(
            Opts::new("constellation_docker_events_total", "Docker engine events handled, by action."),
            &["action"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let relists = IntCounterVec::new(
            Opts::new("constellation_docker_relists_total", "Full container relists, by reason."),
            &["reason"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let restarts = IntCounterVec::new(
            Opts::new(
                "constellation_docker_restarts_total",
                "Restarts of unhealthy deunhealth-labelled containers, by result (restarted, capped, failed).",
            ),
            &["result"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let connected = IntGauge::new("constellation_docker_connected", "1 while the Docker engine answers.")
            .unwrap_or_else(|_| unreachable_metric());
        let containers = IntGaugeVec::new(
            Opts::new("constellation_docker_containers", "Watched running containers, by health."),
            &["health"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let refused = IntGauge::new(
            "constellation_docker_containers_refused",
            "Exposed containers whose labels were refused (see status for why).",
        )
        .unwrap_or_else(|_| unreachable_metric());
        for c in [
            Box::new(events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(relists.clone()),
            Box::new(restarts.clone()),
            Box::new(connected.clone()),
            Box::new(containers.clone()),
            Box::new(refused.clone()),
        ] {
            let _ = registry.register(c);
        }
        DockerMetrics { events, relists, restarts, connected, containers, refused }
    }
}

fn unreachable_metric<T>() -> T {
    // Metric names and labels above are constants that prometheus accepts.
    panic!("invalid constant metric definition")
}

/// Restart bookkeeping for one container.
#[derive(Debug, Default)]
struct RestartState {
    /// When restarts happened (the last hour's).
    history: VecDeque<Instant>,
    /// A restart is due at this time (the container stayed unhealthy).
    due: Option<Instant>,
    /// The cap was hit and logged for this hour.
    capped_logged: bool,
}

/// The Docker provider.
pub struct DockerProvider {
    cfg: DockerConfig,
    settings: LabelSettings,
    constraint: Option<Constraint>,
    metrics: DockerMetrics,
    tx: watch::Sender<Arc<DockerSnapshot>>,
    containers: BTreeMap<String, Container>,
    restarts: HashMap<String, RestartState>,
    /// The label errors last logged per container, so each is logged once.
    logged_errors: HashMap<String, Vec<String>>,
    generation: u64,
}

/// Why the engine connection ended.
enum Ended {
    Stop,
    Lost(String),
}

impl DockerProvider {
    /// A provider for `cfg`; `constraint` is the parsed `[docker] constraints`.
    pub fn new(
        cfg: DockerConfig,
        settings: LabelSettings,
        constraint: Option<Constraint>,
        registry: &Registry,
    ) -> (DockerProvider, watch::Receiver<Arc<DockerSnapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(DockerSnapshot::default()));
        let metrics = DockerMetrics::new(registry);
        (
            DockerProvider {
                cfg,
                settings,
                constraint,
                metrics,
                tx,
                containers: BTreeMap::new(),
                restarts: HashMap::new(),
                logged_errors: HashMap::new(),
                generation: 0,
            },
            rx,
        )
    }

    /// Connect, list once and return the snapshot (for one-shot commands such as
    /// `traefik dump`); the engine's error when it cannot be reached or listed.
    pub async fn snapshot_once(mut self) -> Result<Arc<DockerSnapshot>, String> {
        let docker =
            constellation_services::engine::connect(Some(&self.cfg.endpoint), 30).await.map_err(|e| e.to_string())?;
        let version = docker.version().await.ok().and_then(|v| v.version);
        self.relist(&docker, "once").await?;
        self.publish(true, version, None);
        Ok(self.tx.borrow().clone())
    }

    /// Run until `stop` resolves. The engine may come and go; this never returns early.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let retry = Duration::from_millis(self.cfg.retry_interval_ms.max(100));
        let mut last_logged: Option<String> = None;
        loop {
            let attempt = constellation_services::engine::connect(Some(&self.cfg.endpoint), 30);
            let docker = tokio::select! {
                _ = &mut stop => return,
                r = attempt => r,
            };
            let docker = match docker {
                Ok(d) => d,
                Err(e) => {
                    let msg = e.to_string();
                    if last_logged.as_deref() != Some(msg.as_str()) {
                        if self.cfg.enabled == Some(true) {
                            tracing::error!(endpoint = %self.cfg.endpoint, error = %msg, "Docker engine unreachable; retrying");
                        } else {
                            tracing::warn!(endpoint = %self.cfg.endpoint, error = %msg, "Docker engine unreachable; retrying (logged once)");
                        }
                        last_logged = Some(msg.clone());
                    }
                    self.publish(false, None, Some(msg));
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(retry) => continue,
                    }
                }
            };
            let version = docker.version().await.ok().and_then(|v| v.version);
            if last_logged.take().is_some() {
                tracing::info!(endpoint = %self.cfg.endpoint, "Docker engine reachable again");
            }
            tracing::info!(endpoint = %self.cfg.endpoint, version = ?version, "watching the Docker engine");
            match self.follow(&docker, version.clone(), &mut stop).await {
                Ended::Stop => return,
                Ended::Lost(why) => {
                    tracing::warn!(endpoint = %self.cfg.endpoint, error = %why, "lost the Docker engine; the last routes stay while it reconnects");
                    last_logged = Some(why.clone());
                    self.publish(false, version, Some(why));
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }

    /// Relist, then follow events until the stream ends or `stop`.
    async fn follow(
        &mut self,
        docker: &Docker,
        version: Option<String>,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Ended {
        let filters: HashMap<&str, Vec<&str>> = HashMap::from([("type", vec!["container", "network"])]);
        // Subscribe before listing, so nothing between the list and the stream is lost.
        let mut events = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
        if let Err(e) = self.relist(docker, "connect").await {
            return Ended::Lost(e);
        }
        self.publish(true, version.clone(), None);
        let relist_every = Duration::from_millis(self.cfg.relist_interval_ms.max(1000));
        let mut relist_at = tokio::time::Instant::now() + relist_every;
        loop {
            let due = self.next_restart_due();
            let restart_sleep = async {
                match due {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut *stop => return Ended::Stop,
                _ = tokio::time::sleep_until(relist_at) => {
                    relist_at = tokio::time::Instant::now() + relist_every;
                    if let Err(e) = self.relist(docker, "timer").await {
                        return Ended::Lost(e);
                    }
                    self.publish(true, version.clone(), None);
                }
                _ = restart_sleep => {
                    self.run_due_restarts(docker).await;
                    self.publish(true, version.clone(), None);
                }
                ev = events.next() => match ev {
                    None => return Ended::Lost("the event stream ended".into()),
                    Some(Err(e)) => return Ended::Lost(format!("event stream: {e}")),
                    Some(Ok(ev)) => {
                        let action = ev.action.clone().unwrap_or_default();
                        let attrs = ev.actor.as_ref().and_then(|a| a.attributes.clone()).unwrap_or_default();
                        let id = match ev.typ {
                            Some(bollard::models::EventMessageTypeEnum::NETWORK) => attrs.get("container").cloned(),
                            _ => ev.actor.as_ref().and_then(|a| a.id.clone()),
                        };
                        let kind = action.split(':').next().unwrap_or("").trim().to_string();
                        let relevant = matches!(
                            kind.as_str(),
                            "start" | "die" | "stop" | "kill" | "destroy" | "health_status" | "connect" | "disconnect"
                                | "pause" | "unpause" | "restart" | "rename" | "update" | "oom"
                        );
                        if !relevant {
                            continue;
                        }
                        self.metrics.events.with_label_values(&[kind.as_str()]).inc();
                        if let Some(id) = id {
                            if let Err(e) = self.refresh(docker, &id).await {
                                // One inspect failing (a container mid-removal) is no reason
                                // to drop the stream: a full relist repairs the view.
                                tracing::warn!(container = %id, error = %e, "inspect after an event failed; relisting");
                                if let Err(e) = self.relist(docker, "inspect-error").await {
                                    return Ended::Lost(e);
                                }
                            }
                            self.publish(true, version.clone(), None);
                        }
                    }
                },
            }
        }
    }

    /// Replace the container map with a full listing.
    async fn relist(&mut self, docker: &Docker, reason: &str) -> Result<(), String> {
        self.metrics.relists.with_label_values(&[reason]).inc();
        let list = docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
            .await
            .map_err(|e| format!("list containers: {e}"))?;
        let mut fresh = BTreeMap::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            match docker.inspect_container(&id, None).await {
                Ok(info) => {
                    if let Some(c) = Container::from_inspect(&info) {
                        if self.watched(&c) {
                            fresh.insert(c.id.clone(), c);
                        }
                    }
                }
                // Removed between the list and the inspect.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => return Err(format!("inspect {id}: {e}")),
            }
        }
        self.containers = fresh;
        let ids: Vec<String> = self.containers.keys().cloned().collect();
        for id in ids {
            self.note_health(&id);
        }
        self.restarts.retain(|id, _| self.containers.contains_key(id));
        Ok(())
    }

    /// Inspect one container again (after an event about it).
    async fn refresh(&mut self, docker: &Docker, id: &str) -> Result<(), String> {
        match docker.inspect_container(id, None).await {
            Ok(info) => match Container::from_inspect(&info) {
                Some(c) if self.watched(&c) => {
                    let id = c.id.clone();
                    self.containers.insert(id.clone(), c);
                    self.note_health(&id);
                }
                Some(c) => {
                    self.containers.remove(&c.id);
                }
                None => {}
            },
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                self.containers.remove(id);
                self.restarts.remove(id);
            }
            Err(e) => return Err(format!("inspect {id}: {e}")),
        }
        Ok(())
    }

    fn watched(&self, c: &Container) -> bool {
        self.constraint.as_ref().is_none_or(|k| k.matches(&c.labels))
    }

    /// Schedule a restart for a running, unhealthy, deunhealth-labelled container; clear
    /// it when the container recovers.
    fn note_health(&mut self, id: &str) {
        let Some(c) = self.containers.get(id) else { return };
        let wants = c.labels.get(LABEL_RESTART_ON_UNHEALTHY).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let st = self.restarts.entry(id.to_string()).or_default();
        let hour = Duration::from_secs(3600);
        let now = Instant::now();
        while st.history.front().is_some_and(|t| now.duration_since(*t) > hour) {
            st.history.pop_front();
            st.capped_logged = false;
        }
        if wants && c.running && c.health == Health::Unhealthy {
            if st.due.is_none() {
                let shift = u32::try_from(st.history.len()).unwrap_or(u32::MAX).min(10);
                let wait = Duration::from_millis(self.cfg.restart_backoff_ms.saturating_mul(1u64 << shift));
                st.due = Some(now + wait);
            }
        } else {
            st.due = None;
        }
    }

    fn next_restart_due(&self) -> Option<Instant> {
        self.restarts.values().filter_map(|s| s.due).min()
    }

    async fn run_due_restarts(&mut self, docker: &Docker) {
        let now = Instant::now();
        let due: Vec<String> =
            self.restarts.iter().filter(|(_, s)| s.due.is_some_and(|t| t <= now)).map(|(id, _)| id.clone()).collect();
        for id in due {
            let name = self.containers.get(&id).map(|c| c.name.clone()).unwrap_or_else(|| id.clone());
            let cap = self.cfg.restart_cap_per_hour;
            let Some(st) = self.restarts.get_mut(&id) else { continue };
            st.due = None;
            if u32::try_from(st.history.len()).unwrap_or(u32::MAX) >= cap {
                self.metrics.restarts.with_label_values(&["capped"]).inc();
                if !st.capped_logged {
                    st.capped_logged = true;
                    tracing::warn!(container = %name, cap, "container stays unhealthy; restart cap for this hour reached, leaving it");
                }
                continue;
            }
            st.history.push_back(now);
            // No timeout of our own: the engine uses the container's stop timeout.
            match docker.restart_container(&id, None::<bollard::query_parameters::RestartContainerOptions>).await {
                Ok(()) => {
                    self.metrics.restarts.with_label_values(&["restarted"]).inc();
                    tracing::warn!(container = %name, restarts_this_hour = st.history.len(), "restarted an unhealthy container (deunhealth)");
                }
                Err(e) => {
                    self.metrics.restarts.with_label_values(&["failed"]).inc();
                    tracing::error!(container = %name, error = %e, "cannot restart an unhealthy container");
                }
            }
            let _ = self.refresh(docker, &id).await;
        }
    }

    /// Translate every container and publish a snapshot.
    fn publish(&mut self, connected: bool, version: Option<String>, error: Option<String>) {
        self.generation += 1;
        let mut watched = Vec::new();
        let mut by_health: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut refused = 0;
        for c in self.containers.values() {
            if c.running {
                *by_health.entry(c.health.as_str()).or_default() += 1;
            }
            let is_exposed = exposed(c, &self.settings);
            let (contrib, errors) = if is_exposed && c.running {
                match contribution(c, &self.settings, &format!("docker container {}", c.name)) {
                    Ok(x) => (Some(x), Vec::new()),
                    Err(e) => {
                        refused += 1;
                        (None, e)
                    }
                }
            } else {
                (None, Vec::new())
            };
            if errors.is_empty() {
                self.logged_errors.remove(&c.id);
            } else if self.logged_errors.get(&c.id) != Some(&errors) {
                for e in &errors {
                    tracing::warn!(container = %c.name, error = %e, "container labels refused; it is not routed");
                }
                self.logged_errors.insert(c.id.clone(), errors.clone());
            }
            let restarts = self.restarts.get(&c.id).map(|s| s.history.len()).unwrap_or(0);
            watched.push(Watched {
                container: c.clone(),
                exposed: is_exposed,
                contribution: contrib,
                errors,
                restarts_last_hour: u32::try_from(restarts).unwrap_or(u32::MAX),
            });
        }
        watched.sort_by(|a, b| a.container.name.cmp(&b.container.name));
        self.logged_errors.retain(|id, _| self.containers.contains_key(id));
        for h in [Health::None, Health::Starting, Health::Healthy, Health::Unhealthy] {
            self.metrics.containers.with_label_values(&[h.as_str()]).set(*by_health.get(h.as_str()).unwrap_or(&0));
        }
        self.metrics.refused.set(refused);
        self.metrics.connected.set(i64::from(connected));
        let snapshot = DockerSnapshot {
            connected,
            engine_version: version,
            last_error: error,
            containers: watched,
            generation: self.generation,
        };
        self.tx.send_replace(Arc::new(snapshot));
    }
}
