//! Redis Sentinel: follows a Sentinel group, publishes where its master is (only when a
//! majority of the configured sentinels agree and the master itself says `ROLE master`),
//! and sets a fresh group up (`REPLICAOF`, `SENTINEL MONITOR`/`SET`) when asked.
//!
//! - [`RedisGroup`]: one `[[stateful.redis]]` table, with [`RedisGroup::validate`].
//! - [`Secret`] and [`load_secret`]: the AUTH passwords, never shown.
//! - [`spawn`]: the follower task, publishing [`RedisStatus`] on a watch channel.
//! - [`agree`]: the pure majority rule over the sentinels' answers.
//! - [`RedisMetrics`]: its Prometheus counters.

mod agreement;
mod conn;
mod follower;
mod metrics;
mod orchestrate;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use agreement::{agree, majority, Agreement, SentinelAnswer};
pub use follower::{spawn, ReplicaView, SentinelView, Switch, Verdict};
pub use metrics::RedisMetrics;

pub use follower::RedisStatus;

/// Default of [`RedisGroup::poll_interval_ms`]: one round per second.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
/// Default of [`RedisGroup::timeout_ms`]: per sentinel (and master) query.
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
/// Default of [`RedisGroup::down_after_ms`] (Sentinel's `down-after-milliseconds`).
pub const DEFAULT_DOWN_AFTER_MS: u64 = 5_000;
/// Default of [`RedisGroup::failover_timeout_ms`] (Sentinel's `failover-timeout`).
pub const DEFAULT_FAILOVER_TIMEOUT_MS: u64 = 60_000;

/// What can go wrong loading a group's passwords (rounds report in [`RedisStatus`]).
pub use crate::secret::SecretError as RedisError;
pub use crate::secret::{load_secret, Secret};

/// One Redis Sentinel group the agent follows (`[[stateful.redis]]`); when [`master`]
/// is set, the agent also sets the group up if no sentinel monitors it yet.
///
/// [`master`]: RedisGroup::master
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisGroup {
    /// Name of the TCP route that points at the master. Required.
    pub name: String,
    /// The master's name in Sentinel (`SENTINEL get-master-addr-by-name <master_name>`).
    /// Required.
    pub master_name: String,
    /// The sentinels, `host:port`. Required; a master is trusted only when a majority
    /// of these agree on it.
    pub sentinels: Vec<String>,
    /// The TCP entry point the route lives on (used by the plane). Default: none.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// File holding the Redis AUTH password (master, replicas, sentinels' `auth-pass`);
    /// one trailing newline is trimmed. Default: none (no AUTH).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the Redis AUTH password, when `password_file` is
    /// unset. Default: none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the sentinels' own `requirepass`. Default: none.
    #[serde(default)]
    pub sentinel_password_file: Option<PathBuf>,
    /// Environment variable holding the sentinels' `requirepass`. Default: none.
    #[serde(default)]
    pub sentinel_password_env: Option<String>,
    /// Speak TLS (`rediss`) to Redis and the sentinels. Default: false.
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA that signed the servers' certificates, with `tls`. Default:
    /// the system roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Time between two rounds, in milliseconds; a `+switch-master` starts one at once.
    /// Default: 1000.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Time allowed for one sentinel's (or the master's) answers, in milliseconds,
    /// connect included. Default: 500.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Initial master, `host:port`: when set and no sentinel knows `master_name`, the
    /// agent makes `replicas` replicate it and has every sentinel monitor it. Default:
    /// none (follow only).
    #[serde(default)]
    pub master: Option<String>,
    /// Initial replicas, `host:port`, with `master`. Default: none.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Quorum given to `SENTINEL MONITOR`. Default: a majority of `sentinels`.
    #[serde(default)]
    pub quorum: Option<u32>,
    /// Sentinel's `down-after-milliseconds`, set with `SENTINEL SET`, in milliseconds.
    /// Default: 5000.
    #[serde(default = "default_down_after_ms")]
    pub down_after_ms: u64,
    /// Sentinel's `failover-timeout`, set with `SENTINEL SET`, in milliseconds.
    /// Default: 60000.
    #[serde(default = "default_failover_timeout_ms")]
    pub failover_timeout_ms: u64,
}

fn default_poll_interval_ms() -> u64 {
    DEFAULT_POLL_INTERVAL_MS
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_down_after_ms() -> u64 {
    DEFAULT_DOWN_AFTER_MS
}
fn default_failover_timeout_ms() -> u64 {
    DEFAULT_FAILOVER_TIMEOUT_MS
}

// === impl RedisGroup ===

impl RedisGroup {
    /// A follow-only group with every optional field at its default.
    pub fn new(name: impl Into<String>, master_name: impl Into<String>, sentinels: Vec<String>) -> RedisGroup {
        RedisGroup {
            name: name.into(),
            master_name: master_name.into(),
            sentinels,
            entrypoint: None,
            password_file: None,
            password_env: None,
            sentinel_password_file: None,
            sentinel_password_env: None,
            tls: false,
            tls_ca_file: None,
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            master: None,
            replicas: Vec::new(),
            quorum: None,
            down_after_ms: DEFAULT_DOWN_AFTER_MS,
            failover_timeout_ms: DEFAULT_FAILOVER_TIMEOUT_MS,
        }
    }

    /// Every problem of the group as `(key, message)`; empty when it is usable.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| errors.push((key.to_string(), msg));
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            err("name", format!("route name {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'", self.name));
        }
        if self.master_name.is_empty() || self.master_name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            err(
                "master_name",
                format!("{:?} must be a non-empty Sentinel master name without spaces", self.master_name),
            );
        }
        if self.sentinels.is_empty() {
            err("sentinels", "at least one sentinel `host:port` is required (three or more for failover)".into());
        }
        for (i, s) in self.sentinels.iter().enumerate() {
            if let Err(e) = parse_host_port(s) {
                err(&format!("sentinels[{i}]"), e);
            } else if self.sentinels[..i].contains(s) {
                err(&format!("sentinels[{i}]"), format!("{s} is listed twice"));
            }
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            err("password_env", "set password_file or password_env, not both".into());
        }
        if self.sentinel_password_file.is_some() && self.sentinel_password_env.is_some() {
            err("sentinel_password_env", "set sentinel_password_file or sentinel_password_env, not both".into());
        }
        if self.tls_ca_file.is_some() && !self.tls {
            err("tls_ca_file", "tls_ca_file is only used with tls = true".into());
        }
        if self.poll_interval_ms < 10 {
            err("poll_interval_ms", format!("{} ms is too short; use at least 10", self.poll_interval_ms));
        }
        if self.timeout_ms == 0 {
            err("timeout_ms", "must be greater than 0 ms".into());
        }
        match &self.master {
            Some(m) => {
                if let Err(e) = parse_host_port(m) {
                    err("master", e);
                }
            }
            None if !self.replicas.is_empty() => {
                err("replicas", "replicas are only used with master (the initial master)".into());
            }
            None => {}
        }
        for (i, r) in self.replicas.iter().enumerate() {
            if let Err(e) = parse_host_port(r) {
                err(&format!("replicas[{i}]"), e);
            } else if self.master.as_deref() == Some(r.as_str()) {
                err(&format!("replicas[{i}]"), format!("{r} is the master too"));
            } else if self.replicas[..i].contains(r) {
                err(&format!("replicas[{i}]"), format!("{r} is listed twice"));
            }
        }
        if let Some(q) = self.quorum {
            if q == 0 || q as usize > self.sentinels.len() {
                err("quorum", format!("{q} must be between 1 and the number of sentinels ({})", self.sentinels.len()));
            }
        }
        if self.down_after_ms == 0 {
            err("down_after_ms", "must be greater than 0 ms".into());
        }
        if self.failover_timeout_ms == 0 {
            err("failover_timeout_ms", "must be greater than 0 ms".into());
        }
        errors
    }

    /// The Redis AUTH password from `password_file` or `password_env`.
    ///
    /// # Errors
    /// See [`load_secret`].
    pub fn password(&self) -> Result<Option<Secret>, RedisError> {
        load_secret(self.password_file.as_deref(), self.password_env.as_deref())
    }

    /// The sentinels' password from `sentinel_password_file` or `sentinel_password_env`.
    ///
    /// # Errors
    /// See [`load_secret`].
    pub fn sentinel_password(&self) -> Result<Option<Secret>, RedisError> {
        load_secret(self.sentinel_password_file.as_deref(), self.sentinel_password_env.as_deref())
    }

    /// The quorum given to `SENTINEL MONITOR`: `quorum`, else a majority of sentinels.
    pub fn monitor_quorum(&self) -> u32 {
        self.quorum.unwrap_or(majority(self.sentinels.len()) as u32)
    }
}

/// Splits `host:port` (IPv6 in brackets), with a clear message when it is not one.
pub(crate) fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("{s:?} is not host:port (e.g. 127.0.0.1:26379)");
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(bad());
        }
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(':') || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}
