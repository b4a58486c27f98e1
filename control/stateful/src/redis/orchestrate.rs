//! Setting a group up when the config names its initial `master`: replicas replicate it
//! and every sentinel monitors it. Only ever acts on sentinels that do not know the
//! master name, so running it on several agents at once (or again) is harmless.

use std::net::SocketAddr;

use tracing::{debug, info, warn};

use super::agreement::SentinelAnswer;
use super::conn::{query, Dialer};
use super::follower::Probe;
use super::metrics::RedisMetrics;
use super::{parse_host_port, RedisGroup, Secret};

/// Applies what the group lacks, given this round's `probes` (one per configured
/// sentinel, in order); returns how many commands changed something.
pub(crate) async fn set_up(
    group: &RedisGroup,
    probes: &[Probe],
    dialer: &Dialer,
    password: Option<&Secret>,
    sentinel_password: Option<&Secret>,
    metrics: &RedisMetrics,
) -> u64 {
    let Some(configured) = group.master.as_deref() else {
        return 0;
    };
    // A sentinel we could not ask might monitor the group already (perhaps with
    // another master after a failover): decide nothing without every answer.
    if probes.iter().any(|p| p.answer == SentinelAnswer::Failed) {
        return 0;
    }
    let missing: Vec<&str> =
        probes.iter().filter(|p| p.answer == SentinelAnswer::Unknown).map(|p| p.view.addr.as_str()).collect();
    if missing.is_empty() {
        return 0;
    }
    let known: Vec<SocketAddr> = probes
        .iter()
        .filter_map(|p| match p.answer {
            SentinelAnswer::Master(a) => Some(a),
            _ => None,
        })
        .collect();
    let mut ctx = Ctx { group, dialer, password, sentinel_password, metrics, applied: 0 };
    let target = if known.is_empty() {
        let target = match resolve(configured).await {
            Ok(t) => t,
            Err(e) => {
                warn!(group = %group.name, master = %configured, error = %e, "cannot set the redis group up");
                return 0;
            }
        };
        info!(group = %group.name, master = %target, "no sentinel knows the group: setting it up");
        for replica in &group.replicas {
            ctx.make_replica(replica, configured, target).await;
        }
        target
    } else if known.iter().all(|a| *a == known[0]) {
        info!(group = %group.name, master = %known[0], missing = ?missing, "some sentinels do not monitor the group yet");
        known[0]
    } else {
        warn!(group = %group.name, answers = ?known, "sentinels disagree on the master: not setting up the others");
        return 0;
    };
    for sentinel in missing {
        ctx.monitor(sentinel, target).await;
    }
    ctx.applied
}

async fn resolve(host_port: &str) -> Result<SocketAddr, String> {
    let (host, port) = parse_host_port(host_port)?;
    let mut addrs = tokio::net::lookup_host((host.as_str(), port)).await.map_err(|e| format!("{host}: {e}"))?;
    addrs.next().ok_or_else(|| format!("{host} resolves to no address"))
}

struct Ctx<'a> {
    group: &'a RedisGroup,
    dialer: &'a Dialer,
    password: Option<&'a Secret>,
    sentinel_password: Option<&'a Secret>,
    metrics: &'a RedisMetrics,
    applied: u64,
}

impl Ctx<'_> {
    fn count(&mut self, command: &str) {
        self.applied += 1;
        self.metrics.setup_commands.with_label_values(&[&self.group.name, command]).inc();
    }

    /// `REPLICAOF <master>` on `replica` when it is a master itself.
    async fn make_replica(&mut self, replica: &str, configured: &str, master: SocketAddr) {
        let group = &self.group.name;
        let t = self.dialer.timeout;
        let mut conn = match self.dialer.connect(replica, self.password).await {
            Ok(c) => c,
            Err(e) => {
                warn!(group = %group, replica = %replica, error = %e, "cannot reach replica to set it up");
                return;
            }
        };
        let role: Vec<redis::Value> = match query(&mut conn, &redis::cmd("ROLE"), replica, t).await {
            Ok(r) => r,
            Err(e) => {
                warn!(group = %group, replica = %replica, error = %e, "ROLE failed");
                return;
            }
        };
        let role = role.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default();
        if role != "master" || replica == configured {
            debug!(group = %group, replica = %replica, role = %role, "replica left as it is");
            return;
        }
        if let Some(p) = self.password {
            let mut auth = redis::cmd("CONFIG");
            auth.arg("SET").arg("masterauth").arg(p.expose());
            match query::<()>(&mut conn, &auth, replica, t).await {
                Ok(()) => {
                    info!(group = %group, replica = %replica, "applied CONFIG SET masterauth <redacted>");
                    self.count("config_set_masterauth");
                }
                Err(e) => warn!(group = %group, replica = %replica, error = %e, "CONFIG SET masterauth failed"),
            }
        }
        let mut cmd = redis::cmd("REPLICAOF");
        cmd.arg(master.ip().to_string()).arg(master.port());
        match query::<String>(&mut conn, &cmd, replica, t).await {
            Ok(reply) => {
                info!(group = %group, replica = %replica, master = %master, reply = %reply, "applied REPLICAOF");
                self.count("replicaof");
            }
            Err(e) => warn!(group = %group, replica = %replica, error = %e, "REPLICAOF failed"),
        }
    }

    /// `SENTINEL MONITOR` then `SENTINEL SET` on one sentinel.
    async fn monitor(&mut self, sentinel: &str, master: SocketAddr) {
        let group = self.group;
        let t = self.dialer.timeout;
        let mut conn = match self.dialer.connect(sentinel, self.sentinel_password).await {
            Ok(c) => c,
            Err(e) => {
                warn!(group = %group.name, sentinel = %sentinel, error = %e, "cannot reach sentinel to set it up");
                return;
            }
        };
        let quorum = group.monitor_quorum();
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("MONITOR").arg(&group.master_name).arg(master.ip().to_string()).arg(master.port()).arg(quorum);
        match query::<()>(&mut conn, &cmd, sentinel, t).await {
            Ok(()) => {
                info!(group = %group.name, sentinel = %sentinel, master = %master, quorum, "applied SENTINEL MONITOR");
                self.count("sentinel_monitor");
            }
            Err(e) if e.contains("Duplicate") => {
                // Another agent was first; it sets the options too.
                debug!(group = %group.name, sentinel = %sentinel, "sentinel already monitors the group");
                return;
            }
            Err(e) => {
                warn!(group = %group.name, sentinel = %sentinel, error = %e, "SENTINEL MONITOR failed");
                return;
            }
        }
        let mut set = redis::cmd("SENTINEL");
        set.arg("SET")
            .arg(&group.master_name)
            .arg("down-after-milliseconds")
            .arg(group.down_after_ms)
            .arg("failover-timeout")
            .arg(group.failover_timeout_ms);
        if let Some(p) = self.password {
            set.arg("auth-pass").arg(p.expose());
        }
        match query::<()>(&mut conn, &set, sentinel, t).await {
            Ok(()) => {
                info!(
                    group = %group.name,
                    sentinel = %sentinel,
                    down_after_ms = group.down_after_ms,
                    failover_timeout_ms = group.failover_timeout_ms,
                    auth_pass = self.password.is_some(),
                    "applied SENTINEL SET"
                );
                self.count("sentinel_set");
            }
            Err(e) => warn!(group = %group.name, sentinel = %sentinel, error = %e, "SENTINEL SET failed"),
        }
    }
}
