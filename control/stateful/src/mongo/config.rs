//! A followed MongoDB replica set as the operator writes it, its validation, and the
//! password it may need.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::MongoError;

/// Default `poll_interval_ms`: one round of `hello`s a second.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1000;
/// Default `timeout_ms` for one member's answer (connect, server selection, reply).
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default `auth_source`.
pub const DEFAULT_AUTH_SOURCE: &str = "admin";

/// One replica set the agent follows (and initiates when asked).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MongoSet {
    /// The group's name: the TCP route published for its primary is named after it.
    /// Required; letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// The replica set name (`replSetName` of every member, the config's `_id`). Required.
    pub replica_set: String,
    /// Every member as `host:port`, spelled as the set's config spells it (the config's
    /// `members[].host`). The first one receives `replSetInitiate`. Required, non-empty.
    pub members: Vec<String>,
    /// The proxy entry point the route is published on; none: the plane's default.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// The user the follower authenticates as (SCRAM); none: no authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// A file whose content (trailing newline removed) is the password. Default none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password. Default none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The database the user is defined in. Default `admin`.
    #[serde(default)]
    pub auth_source: Option<String>,
    /// Milliseconds between two rounds of `hello`s. Default 1000.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Milliseconds one member has to answer (connect, select, reply). Default 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Whether to initiate the set (`replSetInitiate`) when every member answers and none
    /// has a config, and to add configured members missing from the config
    /// (`replSetReconfig`). Both only while this node holds the set's fence. Default true.
    #[serde(default = "default_initiate")]
    pub initiate: bool,
}

fn default_poll_interval_ms() -> u64 {
    DEFAULT_POLL_INTERVAL_MS
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_initiate() -> bool {
    true
}

/// Whether `s` is `host:port` with a non-empty host and a port in 1..=65535.
fn is_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return !s.ends_with(":0");
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains(['[', ']', '/', ' ', ',']) && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

// === impl MongoSet ===

impl MongoSet {
    /// Every problem of this set, as (field, what is wrong and what to do) pairs; empty
    /// when the set can be followed.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, why: String| problems.push((field.to_string(), why));
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bad("name", format!("{:?} must be non-empty letters, digits, '-', '_' or '.'", self.name));
        }
        if self.replica_set.is_empty() || self.replica_set.contains(['/', ' ', ',']) {
            bad("replica_set", format!("{:?} must be the non-empty replSetName of the members", self.replica_set));
        }
        if self.members.is_empty() {
            bad("members", "list at least one member as host:port".to_string());
        }
        for (i, member) in self.members.iter().enumerate() {
            if !is_host_port(member) {
                bad(&format!("members[{i}]"), format!("{member:?} is not host:port (e.g. 10.0.0.5:27017)"));
            } else if self.members[..i].contains(member) {
                bad(&format!("members[{i}]"), format!("{member:?} is listed twice"));
            }
        }
        if self.entrypoint.as_deref().is_some_and(str::is_empty) {
            bad("entrypoint", "must not be empty; leave it out for the default".to_string());
        }
        match (&self.username, &self.password_file, &self.password_env) {
            (_, Some(_), Some(_)) => {
                bad("password_file", "give either password_file or password_env, not both".to_string())
            }
            (Some(_), None, None) => bad("username", "a username needs password_file or password_env".to_string()),
            (None, Some(_), _) | (None, _, Some(_)) => {
                bad("username", "a password needs a username to go with it".to_string())
            }
            _ => {}
        }
        if self.username.as_deref().is_some_and(str::is_empty) {
            bad("username", "must not be empty".to_string());
        }
        if self.password_env.as_deref().is_some_and(str::is_empty) {
            bad("password_env", "must name an environment variable".to_string());
        }
        if self.auth_source.as_deref().is_some_and(str::is_empty) {
            bad("auth_source", "must not be empty; leave it out for admin".to_string());
        }
        if self.poll_interval_ms < 50 {
            bad("poll_interval_ms", format!("{} ms is too short; use 50 or more", self.poll_interval_ms));
        }
        if self.timeout_ms == 0 {
            bad("timeout_ms", "must be at least 1 ms".to_string());
        }
        problems
    }

    /// The database the user authenticates against (`auth_source`, default `admin`).
    pub fn auth_source(&self) -> &str {
        self.auth_source.as_deref().unwrap_or(DEFAULT_AUTH_SOURCE)
    }

    /// Reads the password from `password_file` or `password_env`; `None` when neither is set.
    pub fn load_password(&self) -> Result<Option<Secret>, MongoError> {
        crate::secret::load_secret(self.password_file.as_deref(), self.password_env.as_deref())
            .map_err(|source| MongoError::Password { set: self.name.clone(), source })
    }
}

pub use crate::secret::Secret;
