//! MongoDB replica sets: the follower that finds each set's writable primary (and sets
//! the set up when asked), for the proxy's TCP routes.
//!
//! Each round (every `poll_interval_ms`) the follower asks every configured member
//! directly (`directConnection=true`, one cached driver `Client` per member) for `hello`
//! and believes only what a member says of itself: the primary is the member whose own
//! answer is `isWritablePrimary` with our `setName` ([`choose_primary`]). Two such claims
//! are told apart by `electionId`/`setVersion`, else the verdict is `split` and no primary
//! is published.
//!
//! Set-up goes through an [`InitFence`] (the plane backs it with a Raft lease) so one node
//! of the cluster does it: when every member answers and none has a config, the holder
//! re-checks (`replSetGetStatus` must say NotYetInitialized on every member) and sends
//! `replSetInitiate` to the first member; when configured members are missing from the
//! config, the holder sends the primary a `replSetReconfig` with the next version adding
//! them. Nothing is ever removed from a config.
//!
//! Testing rule: MongoDB cannot be installed on the build machines, so the tests drive
//! the real official `mongodb` driver (the code under test talks through it) against
//! `constellation_testkit::MongoStandin`, a local server that speaks the real wire
//! protocol (OP_MSG; OP_QUERY for a legacy handshake) and models a replica set's
//! commands, elections, dead members and counters — as the project does for the
//! Cloudflare API. What the stand-in does not model (real elections, oplog, auth) is
//! not claimed by these tests.

mod config;
mod follower;
mod hello;
mod metrics;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{MongoSet, Secret, DEFAULT_AUTH_SOURCE, DEFAULT_POLL_INTERVAL_MS, DEFAULT_TIMEOUT_MS};
pub use hello::{choose_primary, HelloView, PrimaryChoice};
pub use metrics::MongoMetrics;

/// What can go wrong around a followed set (rounds themselves never fail: their
/// problems become the published verdict and reasons).
#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    /// A metric could not be created or registered (e.g. registered twice).
    #[error("metric {name}: {source}")]
    Metrics {
        /// The metric's name.
        name: &'static str,
        /// Prometheus' error.
        #[source]
        source: prometheus::Error,
    },
    /// The password file or variable could not be read.
    #[error("mongo set {set}: {source} (check password_file / password_env)")]
    Password {
        /// The set's name.
        set: String,
        /// What was wrong.
        #[source]
        source: crate::secret::SecretError,
    },
}

/// Grants the right to initiate or reconfigure a set, so one node of the cluster does it.
#[async_trait::async_trait]
pub trait InitFence: Send + Sync + 'static {
    /// Some(token) while this node may initiate/reconfigure `set` (the plane backs it with a Raft lease).
    async fn holder_token(&self) -> Option<u64>;
}

/// A fence for a node alone: always the holder (token 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct SoleNode;

#[async_trait::async_trait]
impl InitFence for SoleNode {
    async fn holder_token(&self) -> Option<u64> {
        Some(0)
    }
}

/// The follower's overall judgement of a set.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// One trustworthy primary.
    Ok,
    /// Initiated, but no member is writable primary (an election, or no majority).
    NoPrimary,
    /// Reachable members have no config for the set (yet).
    NotInitiated,
    /// No member answered.
    Unreachable,
    /// Several members claim primary and nothing tells which is right.
    Split,
    /// No round finished yet.
    Starting,
}

/// One member as the last round saw it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberView {
    /// The member as configured (`host:port`).
    pub addr: String,
    /// Whether it answered `hello`.
    pub reachable: bool,
    /// `PRIMARY`, `SECONDARY`, `ARBITER`, `OTHER`, `UNINITIATED` (no config),
    /// `FOREIGN` (another set's member) or `DOWN` (no answer).
    pub state: String,
    /// Why it is not a healthy member of the set, when it is not.
    pub error: Option<String>,
}

/// What the follower publishes after every round.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MongoStatus {
    /// The set's `name` (the route's name).
    pub name: String,
    /// Where the writable primary is; `None` unless the verdict is `ok`.
    pub primary: Option<SocketAddr>,
    /// The overall judgement.
    pub verdict: Verdict,
    /// Why the verdict is not `ok`, or what the follower is waiting for.
    pub reason: Option<String>,
    /// Every configured member, in configured order.
    pub members: Vec<MemberView>,
    /// The set's config version (`setVersion`) as the primary (else the members) report it.
    pub config_version: Option<i64>,
    /// Whether this follower initiated the set.
    pub initiated_here: bool,
    /// When the primary last changed, Unix seconds.
    pub last_change: Option<u64>,
    /// How many times the primary changed (to or from none included).
    pub changes: u64,
}

// === impl MongoStatus ===

impl MongoStatus {
    /// The status before the first round.
    pub fn starting(set: &MongoSet) -> MongoStatus {
        MongoStatus {
            name: set.name.clone(),
            primary: None,
            verdict: Verdict::Starting,
            reason: None,
            members: Vec::new(),
            config_version: None,
            initiated_here: false,
            last_change: None,
            changes: 0,
        }
    }
}

/// Starts following `set`: returns the status channel (updated after every round that
/// changes it) and the task. The task ends when every receiver is dropped.
pub fn spawn(
    set: MongoSet,
    password: Option<Secret>,
    fence: Arc<dyn InitFence>,
    metrics: MongoMetrics,
) -> (watch::Receiver<MongoStatus>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(MongoStatus::starting(&set));
    let task = tokio::spawn(follower::Follower::new(set, password, fence, metrics).run(tx));
    (rx, task)
}
