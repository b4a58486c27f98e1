//! Stateful groups (`[[stateful.redis]]`, `[[stateful.mongo]]`): their followers are
//! started here, and each status change becomes (a) one TCP route per group — router
//! and service named after the group, on its entry point, ``HostSNI(`*`)``, with the
//! primary as the only server, or no server while the group is withdrawn (connections
//! are then closed at once) — and (b) the `stateful` part of `/api/v1/status`.
//!
//! A switch replaces the server; the reloader is told these services close a removed
//! server's connections at once (no drain grace), so a client of a demoted primary is
//! disconnected and reconnects to the new one.

use std::collections::BTreeMap;
use std::sync::Arc;

use constellation_proxy::dynamic::{DynamicConfig, TcpLoadBalancer, TcpRouter, TcpServer, TcpService};
use constellation_stateful::mongo::{self, InitFence, MongoSet};
use constellation_stateful::redis::{self, RedisGroup};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::admin::AdminState;
use crate::routes::Reloader;
use crate::status::StatefulStatus;

/// The lease under which a MongoDB replica set is initiated or reconfigured (once
/// cluster-wide); contended by the voters when `[[stateful.mongo]]` is configured.
pub const STATEFUL_LEASE: &str = "stateful";

/// `[stateful]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatefulConfig {
    /// Redis Sentinel groups (see docs/stateful.md). Default: none.
    pub redis: Vec<RedisGroup>,
    /// MongoDB replica sets. Default: none.
    pub mongo: Vec<MongoSet>,
}

impl StatefulConfig {
    /// Whether nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.redis.is_empty() && self.mongo.is_empty()
    }

    /// Every problem as `(key, message)`: each group's own checks, unique names, and an
    /// entry point that is a TCP entry point of this node.
    pub fn validate(&self, tcp_entrypoints: &[String]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut check_common = |key: String, name: &str, ep: &Option<String>, out: &mut Vec<(String, String)>| {
            if let Some(first) = names.insert(name.to_string(), key.clone()) {
                out.push((format!("{key}.name"), format!("{name:?} is already the name of {first}")));
            }
            match ep {
                None => out.push((
                    format!("{key}.entrypoint"),
                    "name the TCP entry point the group's route lives on, e.g. entrypoint = \"redis\"".into(),
                )),
                Some(e) if !tcp_entrypoints.contains(e) => out.push((
                    format!("{key}.entrypoint"),
                    format!("no TCP entry point named {e:?} (define [entrypoints.{e}] address = \"ip:port\")"),
                )),
                Some(_) => {}
            }
        };
        for (i, g) in self.redis.iter().enumerate() {
            let key = format!("stateful.redis[{i}]");
            out.extend(g.validate().into_iter().map(|(k, m)| (format!("{key}.{k}"), m)));
            check_common(key, &g.name, &g.entrypoint, &mut out);
        }
        for (i, s) in self.mongo.iter().enumerate() {
            let key = format!("stateful.mongo[{i}]");
            out.extend(s.validate().into_iter().map(|(k, m)| (format!("{key}.{k}"), m)));
            check_common(key, &s.name, &s.entrypoint, &mut out);
        }
        out
    }

    /// Make the file paths relative to `base` (the agent file's directory).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let abs = |p: &mut Option<std::path::PathBuf>| {
            if let Some(f) = p.take() {
                *p = Some(base.join(f));
            }
        };
        for g in &mut self.redis {
            abs(&mut g.password_file);
            abs(&mut g.sentinel_password_file);
            abs(&mut g.tls_ca_file);
        }
        for s in &mut self.mongo {
            abs(&mut s.password_file);
        }
    }
}

/// One group's current view, whatever its kind.
#[derive(Debug, Clone)]
struct GroupView {
    status: StatefulStatus,
}

/// The route part for `groups`: per group a router and a service at its primary.
pub fn routes_for(groups: &[StatefulStatus]) -> DynamicConfig {
    let mut cfg = DynamicConfig::default();
    for g in groups {
        let Some(ep) = &g.entrypoint else { continue };
        cfg.tcp.routers.insert(
            g.name.clone(),
            TcpRouter {
                entry_points: vec![ep.clone()],
                service: Some(g.name.clone()),
                rule: Some("HostSNI(`*`)".into()),
                ..TcpRouter::default()
            },
        );
        let servers = g.primary.iter().map(|p| TcpServer { address: p.clone(), tls: None }).collect();
        cfg.tcp.services.insert(
            g.name.clone(),
            TcpService::LoadBalancer(TcpLoadBalancer { servers, provided: true, ..Default::default() }),
        );
    }
    cfg
}

fn redis_view(g: &RedisGroup, s: &redis::RedisStatus) -> StatefulStatus {
    StatefulStatus {
        name: g.name.clone(),
        kind: "redis".into(),
        entrypoint: g.entrypoint.clone(),
        primary: s.master.map(|a| a.to_string()),
        verdict: s.verdict.as_str().to_string(),
        reason: s.reason.clone(),
        detail: serde_json::to_value(s).unwrap_or_default(),
    }
}

fn mongo_view(m: &MongoSet, s: &mongo::MongoStatus) -> StatefulStatus {
    let verdict = serde_json::to_value(s.verdict).ok().and_then(|v| v.as_str().map(str::to_string));
    StatefulStatus {
        name: m.name.clone(),
        kind: "mongo".into(),
        entrypoint: m.entrypoint.clone(),
        primary: s.primary.map(|a| a.to_string()),
        verdict: verdict.unwrap_or_else(|| "unknown".into()),
        reason: s.reason.clone(),
        detail: serde_json::to_value(s).unwrap_or_default(),
    }
}

/// Start the followers of `cfg` and the task that turns their statuses into routes
/// and status. `fence` guards MongoDB initiation. `None` when nothing is configured.
pub fn start(
    cfg: &StatefulConfig,
    fence: Arc<dyn InitFence>,
    reloader: Arc<Reloader>,
    admin: Arc<AdminState>,
    registry: &prometheus::Registry,
) -> Option<tokio::task::JoinHandle<()>> {
    if cfg.is_empty() {
        return None;
    }
    let (changed_tx, mut changed) = watch::channel(());
    let mut views: Vec<watch::Receiver<GroupView>> = Vec::new();
    if !cfg.redis.is_empty() {
        match redis::RedisMetrics::register(registry) {
            Ok(metrics) => {
                for g in &cfg.redis {
                    let (password, sentinel_password) = match (g.password(), g.sentinel_password()) {
                        (Ok(p), Ok(s)) => (p, s),
                        (Err(e), _) | (_, Err(e)) => {
                            // Checked at config load; a file may have gone since.
                            tracing::error!(group = %g.name, error = %e, "Redis group not followed: its password cannot be read");
                            continue;
                        }
                    };
                    let (rx, _task) = redis::spawn(g.clone(), password, sentinel_password, metrics.clone());
                    views.push(forward(rx, g.clone(), redis_view, changed_tx.clone()));
                }
            }
            Err(e) => tracing::error!(error = %e, "Redis metrics cannot be registered; Redis groups not followed"),
        }
    }
    if !cfg.mongo.is_empty() {
        match mongo::MongoMetrics::register(registry) {
            Ok(metrics) => {
                for s in &cfg.mongo {
                    let password = match s.load_password() {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(set = %s.name, error = %e, "MongoDB set not followed: its password cannot be read");
                            continue;
                        }
                    };
                    let (rx, _task) = mongo::spawn(s.clone(), password, fence.clone(), metrics.clone());
                    views.push(forward(rx, s.clone(), mongo_view, changed_tx.clone()));
                }
            }
            Err(e) => tracing::error!(error = %e, "MongoDB metrics cannot be registered; sets not followed"),
        }
    }
    drop(changed_tx);
    let names: Vec<String> =
        cfg.redis.iter().map(|g| g.name.clone()).chain(cfg.mongo.iter().map(|m| m.name.clone())).collect();
    Some(tokio::spawn(async move {
        let mut last: Vec<StatefulStatus> = Vec::new();
        loop {
            let now: Vec<StatefulStatus> = views.iter().map(|v| v.borrow().status.clone()).collect();
            let targets =
                |v: &[StatefulStatus]| v.iter().map(|s| (s.name.clone(), s.primary.clone())).collect::<Vec<_>>();
            if targets(&now) != targets(&last) || last.is_empty() {
                for s in &now {
                    match &s.primary {
                        Some(p) => {
                            tracing::info!(group = %s.name, kind = %s.kind, primary = %p, "stateful route points at the primary")
                        }
                        None => {
                            tracing::warn!(group = %s.name, kind = %s.kind, verdict = %s.verdict, reason = s.reason.as_deref().unwrap_or(""), "stateful route withdrawn: connections are closed")
                        }
                    }
                }
                reloader.set_stateful(routes_for(&now), names.clone());
            }
            admin.stateful.store(Arc::new(now.clone()));
            last = now;
            if changed.changed().await.is_err() {
                return;
            }
        }
    }))
}

/// Map a follower's status channel into a [`GroupView`] channel, poking `changed` on
/// each update.
fn forward<C, S>(
    mut rx: watch::Receiver<S>,
    conf: C,
    view: fn(&C, &S) -> StatefulStatus,
    changed: watch::Sender<()>,
) -> watch::Receiver<GroupView>
where
    C: Send + Sync + 'static,
    S: Send + Sync + 'static,
{
    let first = GroupView { status: view(&conf, &rx.borrow()) };
    let (tx, out) = watch::channel(first);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let v = GroupView { status: view(&conf, &rx.borrow_and_update()) };
            if tx.send(v).is_err() {
                return;
            }
            let _ = changed.send(());
        }
    });
    out
}

/// The MongoDB initiation fence over the lease group: the `stateful` lease's token,
/// confirmed by a linearizable check.
pub struct LeaseInitFence(pub constellation_acme::LeaseFence);

#[async_trait::async_trait]
impl InitFence for LeaseInitFence {
    async fn holder_token(&self) -> Option<u64> {
        constellation_acme::Fence::holder_token(&self.0).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(name: &str, primary: Option<&str>) -> StatefulStatus {
        StatefulStatus {
            name: name.into(),
            kind: "redis".into(),
            entrypoint: Some("redis".into()),
            primary: primary.map(str::to_string),
            verdict: if primary.is_some() { "ok" } else { "no_quorum" }.into(),
            reason: None,
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_group_is_one_router_and_one_server_or_none_while_withdrawn() {
        let cfg = routes_for(&[status("cache", Some("127.0.0.1:6380")), status("other", None)]);
        assert_eq!(cfg.tcp.routers["cache"].rule.as_deref(), Some("HostSNI(`*`)"));
        assert_eq!(cfg.tcp.routers["cache"].entry_points, ["redis"]);
        let TcpService::LoadBalancer(lb) = &cfg.tcp.services["cache"] else { panic!() };
        assert_eq!(lb.servers[0].address, "127.0.0.1:6380");
        let TcpService::LoadBalancer(lb) = &cfg.tcp.services["other"] else { panic!() };
        assert!(lb.servers.is_empty(), "withdrawn: no server, connections closed");
    }

    #[test]
    fn validation_names_the_group_keys() {
        let text = "[[redis]]\nname = \"cache\"\nmaster_name = \"m\"\nsentinels = [\"127.0.0.1:26379\"]\nentrypoint = \"nope\"\n[[mongo]]\nname = \"cache\"\nreplica_set = \"rs0\"\nmembers = [\"127.0.0.1:27017\"]\n";
        let cfg: StatefulConfig = toml::from_str(text).unwrap();
        let errs = cfg.validate(&["redis".into()]);
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"stateful.redis[0].entrypoint"), "{errs:?}");
        assert!(keys.contains(&"stateful.mongo[0].name"), "{errs:?}");
        assert!(keys.contains(&"stateful.mongo[0].entrypoint"), "{errs:?}");
    }
}
