//! Raft leases with fencing tokens (`lb-leader`, `dns-writer`, …) on openraft 0.9: a
//! redb-backed log and snapshot store, a clock-free lease state machine, sealed TCP RPC on
//! its own port, leader-side lease expiry, and a holder task that steps down on its own.
//!
//! Design in brief (details on the items):
//! - **Port**: Raft listens on its own TCP address (`RaftConfig::bind`; by convention the
//!   cluster port + 1), on the shared admission-limited server of `constellation-wire`.
//!   Messages are postcard in that crate's sealed frames (authenticated fixed header,
//!   then body; at most [`network::MAX_FRAME`] bytes), carrying the protocol version.
//! - **Bootstrap**: only the voter whose name sorts first ever calls `initialize`, with all
//!   configured voters, and only when its own store is pristine and it has not heard from
//!   an existing cluster for two maximum election timeouts. openraft's `initialize` is safe
//!   on several nodes only if they pass the same membership; one caller keeps it
//!   exactly-once even if configurations disagree on the rest.
//! - **Expiry**: never computed inside `apply`. The leader keeps deadlines in memory
//!   (apply time + TTL), extends every lease by TTL + maximum election timeout when it
//!   becomes leader, and revokes expired leases through the log with their token.
//! - **Tokens**: the log index of the granting entry; renewals keep it.
//!
//! This crate knows nothing of gossip, DNS, routes or the proxy; other subsystems see it
//! through [`LeaseNode::check`] (a fencing read) and the published [`LeaseView`].

#![forbid(unsafe_code)]

mod holder;
pub mod lease;
mod membership;
mod metrics;
pub mod network;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError as OrError};
use openraft::{Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::AbortHandle;

pub use holder::{HolderConfig, HolderEvent, LeaseHolder};
pub use lease::{Data, LeaseCommand, LeaseResponse, LeaseState, MAX_DATA, MAX_KEY, MAX_VALUE};
pub use membership::{Member, MembershipError};
pub use metrics::RaftMetrics;
pub use network::ForwardError;
pub use store::{StoreError, STORE_FILE};

use constellation_wire::{AdmissionMetrics, Keyring};
use lease::LeaseClock;
use membership::{members_of, MembershipCtl, Outcome};
use network::{PeerClient, RaftHandler, Request, Response};
use store::{lock, SmData};

/// Raft node id: a stable 64-bit hash of the node name (see [`node_id`]).
pub type NodeId = u64;

/// A voter as Raft's membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// Node name.
    pub name: String,
    /// Raft address, `ip:port`.
    pub addr: String,
}

openraft::declare_raft_types!(
    /// openraft type configuration of the lease group.
    pub TypeConfig:
        D = LeaseCommand,
        R = LeaseResponse,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft node id of a node name: FNV-1a, 64 bits. Stable across versions and machines.
pub fn node_id(name: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Configuration of one lease node.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node's name; must be one of `voters`.
    pub node: String,
    /// Every voter: name and Raft address. Must be the same on every voter.
    pub voters: Vec<(String, SocketAddr)>,
    /// Address to listen on for Raft RPC (by convention the cluster port + 1).
    pub bind: SocketAddr,
    /// Directory of `raft.redb`; created if missing.
    pub data_dir: PathBuf,
    /// Seals and opens every Raft frame.
    pub keyring: Arc<Keyring>,
    /// Election timeout range (min, max).
    pub election_timeout: (Duration, Duration),
    /// Leader heartbeat interval; well below the minimum election timeout.
    pub heartbeat: Duration,
    /// Default lease time to live (used by holders that do not set their own).
    pub lease_ttl: Duration,
}

/// Why a lease node could not start.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The configuration is inconsistent.
    #[error("raft configuration: {0}")]
    Config(String),
    /// The Raft address could not be bound.
    #[error("cannot listen for raft on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store is unusable (names the file).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Metrics could not be registered (already registered in this registry?).
    #[error("raft metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// openraft refused to start.
    #[error("raft failed to start: {0}")]
    Start(String),
}

/// Why a lease operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds the lease.
    #[error("lease is held by {holder} (token {token})")]
    Refused {
        /// The holder.
        holder: String,
        /// Its token.
        token: u64,
    },
    /// The token is not the current one, or this node is not its holder: nothing changed.
    #[error("stale token: the lease is at token {current} held by {holder:?}; nothing changed")]
    Stale {
        /// The current token.
        current: u64,
        /// The current holder.
        holder: Option<String>,
    },
    /// No leader could carry the command out in time.
    #[error("no raft leader answered within {waited:?}: {last}")]
    Unavailable {
        /// How long it tried.
        waited: Duration,
        /// The last problem seen.
        last: String,
    },
    /// This node is shut down.
    #[error("the raft node is shut down")]
    Shutdown,
    /// A replicated-data write over a size cap: nothing changed.
    #[error("replicated data write refused: {reason}")]
    TooLarge {
        /// What was too large.
        reason: String,
    },
}

/// What a node knows of the group and the leases, published on a `watch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// The leader's name, if known.
    pub leader: Option<String>,
    /// Current term.
    pub term: u64,
    /// Every lease ever granted, from this node's state machine (followers may lag).
    pub leases: BTreeMap<String, LeaseState>,
}

/// The group as one node sees it ([`LeaseNode::status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// This node.
    pub node: String,
    /// The leader's name, if known.
    pub leader: Option<String>,
    /// Whether this node leads.
    pub is_leader: bool,
    /// Current term.
    pub term: u64,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last applied entry.
    pub last_applied: Option<u64>,
    /// Whether a joint configuration (a change under way) is in force.
    pub joint: bool,
    /// Voters, by name.
    pub voters: Vec<MemberStatus>,
    /// Learners (catching up before promotion), by name.
    pub learners: Vec<MemberStatus>,
}

/// One member in a [`GroupStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// Raft address.
    pub raft_address: String,
    /// Whether the leader heard from it recently; `None` unless this node leads.
    pub reachable: Option<bool>,
    /// Last log index known to be replicated to it; `None` unless this node leads.
    pub matched_index: Option<u64>,
}

/// One voter of the lease group. Cheap to clone.
#[derive(Clone)]
pub struct LeaseNode {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    id: NodeId,
    raft: Raft<TypeConfig>,
    /// The configured voters: a fallback for names and addresses the membership lacks.
    peers: Arc<BTreeMap<NodeId, (String, SocketAddr)>>,
    membership: Arc<MembershipCtl>,
    keyring: Arc<Keyring>,
    sm: Arc<Mutex<SmData>>,
    view: watch::Receiver<LeaseView>,
    data: watch::Receiver<Data>,
    metrics: Arc<RaftMetrics>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    closed: Arc<store::StoreClosed>,
    addr: SocketAddr,
    retry: Duration,
    request_timeout: Duration,
    lease_ttl: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

// === impl LeaseNode ===

impl LeaseNode {
    /// Binds `cfg.bind` and starts the node; see [`LeaseNode::start_on`].
    pub async fn start<F>(cfg: RaftConfig, registry: &prometheus::Registry, shutdown: F) -> Result<LeaseNode, RaftError>
    where
        F: Future + Send + 'static,
    {
        let listener =
            TcpListener::bind(cfg.bind).await.map_err(|source| RaftError::Bind { addr: cfg.bind, source })?;
        Self::start_on(cfg, listener, registry, shutdown).await
    }

    /// Starts the node on an already bound listener (`cfg.bind` is then only informative):
    /// opens the store, starts openraft, the RPC server, the view publisher, the leader's
    /// lease-expiry task and, on the first voter of a pristine cluster, initialisation.
    /// When `shutdown` completes the node stops as by [`LeaseNode::shutdown`].
    pub async fn start_on<F>(
        cfg: RaftConfig,
        listener: TcpListener,
        registry: &prometheus::Registry,
        shutdown: F,
    ) -> Result<LeaseNode, RaftError>
    where
        F: Future + Send + 'static,
    {
        let (peers, members) = validate(&cfg)?;
        let addr = listener.local_addr().map_err(|source| RaftError::Bind { addr: cfg.bind, source })?;
        let metrics = Arc::new(RaftMetrics::register(registry)?);
        let clock = Arc::new(Mutex::new(LeaseClock::default()));
        let store::Opened { log: log_store, sm, table: table_rx, data: data_rx, closed } = {
            let (dir, clock) = (cfg.data_dir.clone(), Arc::clone(&clock));
            tokio::task::spawn_blocking(move || store::open(&dir, clock))
                .await
                .map_err(|e| RaftError::Start(e.to_string()))??
        };
        let closed = Arc::new(closed);
        let sm_data = Arc::clone(&sm.data);
        let (min, max) = cfg.election_timeout;
        let config = openraft::Config {
            cluster_name: "constellation-leases".to_string(),
            heartbeat_interval: millis(cfg.heartbeat),
            election_timeout_min: millis(min),
            election_timeout_max: millis(max),
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftError::Config(e.to_string()))?;
        let id = node_id(&cfg.node);
        let acks: membership::Acks = Arc::default();
        let network = network::NetworkFactory { keyring: Arc::clone(&cfg.keyring), acks: Arc::clone(&acks) };
        let raft = Raft::new(id, Arc::new(config), network, log_store, sm)
            .await
            .map_err(|e| RaftError::Start(e.to_string()))?;
        let request_timeout = (max * 10).max(Duration::from_secs(3));
        let membership = Arc::new(MembershipCtl {
            raft: raft.clone(),
            acks,
            serial: tokio::sync::Mutex::new(()),
            window: max.max(cfg.heartbeat * 4),
            catch_up: request_timeout,
            commit: request_timeout,
        });

        let peers = Arc::new(peers);
        let admission = AdmissionMetrics::register(registry, "raft")?;
        let handler = Arc::new(RaftHandler {
            raft: raft.clone(),
            metrics: Arc::clone(&metrics),
            sm: Arc::clone(&sm_data),
            membership: Arc::clone(&membership),
        });
        let (view_tx, view_rx) = watch::channel(LeaseView::default());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        {
            let mut all = lock(&tasks);
            all.push(
                tokio::spawn(network::serve(listener, Arc::clone(&cfg.keyring), admission, handler)).abort_handle(),
            );
            all.push(
                tokio::spawn(publish_view(raft.clone(), table_rx, view_tx, Arc::clone(&peers), Arc::clone(&metrics)))
                    .abort_handle(),
            );
            all.push(
                tokio::spawn(expire_leases(raft.clone(), Arc::clone(&sm_data), clock, cfg.heartbeat, max))
                    .abort_handle(),
            );
            let first = cfg.voters.iter().map(|(n, _)| n.as_str()).min();
            if first == Some(cfg.node.as_str()) {
                all.push(tokio::spawn(bootstrap(raft.clone(), members, max)).abort_handle());
            }
            let (raft, tasks, closed) = (raft.clone(), Arc::clone(&tasks), Arc::clone(&closed));
            all.push(
                tokio::spawn(async move {
                    shutdown.await;
                    stop(&raft, &tasks, &closed).await;
                })
                .abort_handle(),
            );
        }
        tracing::info!(node = %cfg.node, id, raft = %addr, voters = cfg.voters.len(), "raft lease node started");
        Ok(LeaseNode {
            inner: Arc::new(Inner {
                name: cfg.node.clone(),
                id,
                raft,
                peers,
                membership,
                keyring: cfg.keyring,
                sm: sm_data,
                view: view_rx,
                data: data_rx,
                metrics,
                tasks,
                closed,
                addr,
                retry: cfg.heartbeat.min(Duration::from_millis(100)),
                request_timeout,
                lease_ttl: cfg.lease_ttl,
            }),
        })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address the Raft server listens on.
    pub fn raft_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The default lease TTL from the configuration.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// Leader, term and leases as this node sees them.
    pub fn view(&self) -> watch::Receiver<LeaseView> {
        self.inner.view.clone()
    }

    /// The replicated key/value data as this node's state machine has applied it (every
    /// replica applies the log, so every node sees a write as soon as it applies it;
    /// followers may lag the leader by a heartbeat). The channel changes only when the
    /// data does.
    pub fn data(&self) -> watch::Receiver<Data> {
        self.inner.data.clone()
    }

    /// Sets (`Some`) or deletes (`None`) `key` in the replicated data, fenced: applied only
    /// if this node holds `lease` with `token` when the command is applied, else
    /// [`LeaseError::Stale`] and nothing changes. A key over [`MAX_KEY`], a value over
    /// [`MAX_VALUE`] or data growing past [`MAX_DATA`] is [`LeaseError::TooLarge`].
    /// Goes through the leader; retrying it is safe (the same write twice is one write).
    pub async fn put(&self, lease: &str, token: u64, key: &str, value: Option<Vec<u8>>) -> Result<(), LeaseError> {
        let cmd = LeaseCommand::Put {
            lease: lease.to_string(),
            node: self.inner.name.clone(),
            token,
            key: key.to_string(),
            value,
        };
        match self.write(cmd).await? {
            LeaseResponse::Written => Ok(()),
            LeaseResponse::Stale { current, holder } => Err(LeaseError::Stale { current, holder }),
            LeaseResponse::TooLarge { reason } => Err(LeaseError::TooLarge { reason }),
            other => Err(unexpected(other)),
        }
    }

    /// Acquires `lease` for this node, or renews it if this node holds it already (the
    /// token is then unchanged). Goes through the leader.
    pub async fn acquire(&self, lease: &str, ttl: Duration) -> Result<u64, LeaseError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let cmd = LeaseCommand::Acquire { lease: lease.to_string(), node: self.inner.name.clone(), ttl_ms };
        match self.write(cmd).await? {
            LeaseResponse::Granted { token } | LeaseResponse::Renewed { token } => Ok(token),
            LeaseResponse::Refused { holder, token } => Err(LeaseError::Refused { holder, token }),
            other => Err(unexpected(other)),
        }
    }

    /// Releases `lease` held by this node with `token`. A stale token changes nothing and
    /// returns [`LeaseError::Stale`].
    pub async fn release(&self, lease: &str, token: u64) -> Result<(), LeaseError> {
        let cmd = LeaseCommand::Release { lease: lease.to_string(), node: self.inner.name.clone(), token };
        vacated(self.write(cmd).await?)
    }

    /// Revokes `lease` from whoever holds it with `token` (what the leader does on expiry;
    /// also an operator's tool). A stale token changes nothing and returns
    /// [`LeaseError::Stale`].
    pub async fn revoke(&self, lease: &str, token: u64) -> Result<(), LeaseError> {
        vacated(self.write(LeaseCommand::Revoke { lease: lease.to_string(), token, granted_index: None }).await?)
    }

    /// Linearizable: true iff `token` is the current token of `lease` and this node holds it.
    pub async fn check(&self, lease: &str, token: u64) -> Result<bool, LeaseError> {
        let req = Request::Check { lease: lease.to_string(), node: self.inner.name.clone(), token };
        self.through_leader(req, |resp| match resp {
            Response::Check(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// Adds `name` as a voter, its Raft server at `raft_addr`: first as a learner, which
    /// the leader brings up to date, then promoted (openraft's joint consensus, `retain =
    /// false`). Carried out by the leader, wherever it is called. Refused when the new
    /// configuration would not have a majority of voters the leader currently reaches
    /// ([`MembershipError::WouldLoseQuorum`]), for a name that is a voter already, an
    /// address another member uses, or a node that does not catch up in time.
    pub async fn add_voter(&self, name: &str, raft_addr: SocketAddr) -> Result<(), MembershipError> {
        let req = Request::AddVoter { name: name.to_string(), addr: raft_addr };
        self.change_membership(req).await?;
        self.wait_local(|m| m.iter().any(|(n, a, voter)| n == name && *a == raft_addr && *voter)).await;
        Ok(())
    }

    /// Removes `name` from the group (a voter, or a learner left behind). Carried out by
    /// the leader, wherever it is called. Refused for an unknown name, the last voter, and
    /// when the remaining voters would not have a majority the leader currently reaches
    /// ([`MembershipError::WouldLoseQuorum`]). A removed node that still runs should be
    /// stopped: it no longer receives the log.
    pub async fn remove_voter(&self, name: &str) -> Result<(), MembershipError> {
        self.change_membership(Request::RemoveVoter { name: name.to_string() }).await?;
        if name != self.inner.name {
            self.wait_local(|m| m.iter().all(|(n, _, _)| n != name)).await;
        }
        Ok(())
    }

    /// The group's members as this node knows them (followers may lag): name, Raft
    /// address, voter (false: learner); sorted by name.
    pub fn membership(&self) -> Vec<Member> {
        members_of(self.inner.raft.metrics().borrow().membership_config.membership())
    }

    /// Leader, term, log position and members, as this node sees them; on the leader also
    /// which members it currently reaches.
    pub fn status(&self) -> GroupStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let is_leader = m.state == ServerState::Leader;
        let reachable = is_leader.then(|| self.inner.membership.reachable());
        let membership = m.membership_config.membership();
        let (mut voters, mut learners) = (Vec::new(), Vec::new());
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        for (id, node) in membership.nodes() {
            let status = MemberStatus {
                name: node.name.clone(),
                raft_address: node.addr.clone(),
                reachable: reachable.as_ref().map(|r| r.contains(id)),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index)
                    .or_else(|| (is_leader && *id == m.id).then_some(m.last_log_index).flatten()),
            };
            if voter_ids.contains(id) {
                voters.push(status);
            } else {
                learners.push(status);
            }
        }
        voters.sort_by(|a, b| a.name.cmp(&b.name));
        learners.sort_by(|a, b| a.name.cmp(&b.name));
        GroupStatus {
            node: self.inner.name.clone(),
            leader: m.current_leader.and_then(|id| self.peer(&m, id)).map(|(name, _)| name),
            is_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            joint: membership.get_joint_config().len() > 1,
            voters,
            learners,
        }
    }

    async fn change_membership(&self, req: Request) -> Result<(), MembershipError> {
        // A change may wait for a learner to catch up and then for two commits.
        let timeout = self.inner.request_timeout * 3;
        let pick = |resp| match resp {
            Response::Membership(r) => Some(r),
            _ => None,
        };
        match self.through_leader_within(req, pick, timeout).await {
            Ok(outcome) => outcome.map(|_| ()),
            Err(e) => Err(MembershipError::Unavailable(e.to_string())),
        }
    }

    /// Waits (briefly, best effort) until this node's membership shows a change the leader
    /// committed, so that [`LeaseNode::membership`] reflects it on return.
    async fn wait_local(&self, done: impl Fn(&[Member]) -> bool) {
        let mut rx = self.inner.raft.metrics();
        let wait = rx.wait_for(|m| done(&members_of(m.membership_config.membership())));
        let _ = tokio::time::timeout(self.inner.request_timeout, wait).await;
    }

    /// Before a planned stop: this node stops standing for election and, if it leads,
    /// hands the leadership over, so the group has a leader while this node still runs.
    ///
    /// openraft 0.9 has no leadership transfer. What it allows: the leader picks a voter
    /// whose log matches its own, and asks it (`Request::Elect`) to stand for election at
    /// once (`trigger().elect()`). That candidate's vote request reaches this leader, whose
    /// own leader lease has run out once it has led for a maximum election timeout, so it
    /// grants the vote and steps down; the candidate wins with two votes of three. If the
    /// vote is refused (a leader younger than its lease), the candidate's higher term still
    /// makes this node step down and the group elects within an election timeout, without
    /// this node (it no longer campaigns).
    ///
    /// Waits at most `limit`; returns the leader this node then knows, if any.
    pub async fn step_down(&self, limit: Duration) -> Option<String> {
        let inner = &self.inner;
        inner.raft.runtime_config().elect(false);
        let deadline = Instant::now() + limit;
        let leader_name = |m: &openraft::RaftMetrics<NodeId, PeerNode>| {
            m.current_leader.and_then(|id| self.peer(m, id)).map(|(name, _)| name)
        };
        let m = inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return leader_name(&m);
        }
        // A voter that has every entry of this leader's log (its vote request must not
        // be refused for a shorter log).
        let target = loop {
            let m = inner.raft.metrics().borrow().clone();
            let caught_up = m.membership_config.membership().voter_ids().filter(|id| *id != inner.id).find(|id| {
                let matched = m.replication.as_ref().and_then(|r| r.get(id).copied().flatten()).map(|l| l.index);
                matched.is_some() && matched == m.last_log_index
            });
            match caught_up.and_then(|id| self.peer(&m, id)) {
                Some(peer) => break Some(peer),
                None if Instant::now() >= deadline => break None,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let Some((name, addr)) = target else {
            tracing::warn!(
                "no voter is up to date: leadership is not handed over; the group elects once this node stops"
            );
            return leader_name(&inner.raft.metrics().borrow());
        };
        let mut client = PeerClient::new(addr, Arc::clone(&inner.keyring));
        let remaining = deadline.saturating_duration_since(Instant::now());
        match client.call(&Request::Elect, remaining).await {
            Ok(Response::Elect(Ok(()))) => {
                tracing::info!(to = %name, "raft leadership: asked {name} to stand for election")
            }
            Ok(other) => tracing::warn!(to = %name, answer = ?other, "raft leadership hand-over refused"),
            Err(e) => tracing::warn!(to = %name, error = %e, "raft leadership hand-over failed"),
        }
        let mut rx = inner.raft.metrics();
        let moved = rx.wait_for(|m| m.current_leader.is_some_and(|id| id != inner.id));
        let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), moved).await;
        let m = inner.raft.metrics().borrow().clone();
        leader_name(&m)
    }

    /// Stops openraft and every task of this node; the store file is closed once it
    /// returns (a restart on the same data directory may follow).
    pub async fn shutdown(&self) {
        stop(&self.inner.raft, &self.inner.tasks, &self.inner.closed).await;
    }

    async fn write(&self, cmd: LeaseCommand) -> Result<LeaseResponse, LeaseError> {
        self.through_leader(Request::Write(cmd), |resp| match resp {
            Response::Write(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// Runs `req` on the leader (locally if that is us), retrying while there is no leader
    /// or leadership moves, for at most the request timeout. Retries are safe: every lease
    /// command is idempotent.
    async fn through_leader<T: LocalAnswer>(
        &self,
        req: Request,
        pick: impl Fn(Response) -> Option<Result<T, ForwardError>>,
    ) -> Result<T, LeaseError> {
        self.through_leader_within(req, pick, self.inner.request_timeout).await
    }

    /// [`LeaseNode::through_leader`] with its own time limit.
    async fn through_leader_within<T: LocalAnswer>(
        &self,
        req: Request,
        pick: impl Fn(Response) -> Option<Result<T, ForwardError>>,
        timeout: Duration,
    ) -> Result<T, LeaseError> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + timeout;
        let mut last = "no leader known".to_string();
        loop {
            let metrics = inner.raft.metrics().borrow().clone();
            if metrics.running_state.is_err() {
                return Err(LeaseError::Shutdown);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = match metrics.current_leader {
                Some(leader) if leader == inner.id => match tokio::time::timeout(remaining, self.local(&req)).await {
                    Ok(resp) => Some(resp),
                    Err(_) => {
                        last = "the local leader did not commit in time".to_string();
                        None
                    }
                },
                Some(leader) => match self.peer(&metrics, leader) {
                    Some((name, addr)) => {
                        let mut client = PeerClient::new(addr, Arc::clone(&inner.keyring));
                        match client.call(&req, remaining).await {
                            Ok(resp) => Some(pick(resp).unwrap_or_else(|| {
                                Err(ForwardError::Failed(format!("leader {name} answered another request")))
                            })),
                            Err(e) => {
                                last = e.to_string();
                                None
                            }
                        }
                    }
                    None => {
                        last = format!("leader id {leader} is neither a member nor a configured voter");
                        None
                    }
                },
                None => None,
            };
            match attempt {
                Some(Ok(value)) => return Ok(value),
                Some(Err(ForwardError::NotLeader { leader })) => last = format!("leadership moved (to {leader:?})"),
                Some(Err(ForwardError::Failed(e))) => last = e,
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(LeaseError::Unavailable { waited: started.elapsed(), last });
            }
            tokio::time::sleep(inner.retry.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Name and Raft address of node `id`: from the membership config (which knows voters
    /// added at run time), else from the configured voters.
    fn peer(&self, metrics: &openraft::RaftMetrics<NodeId, PeerNode>, id: NodeId) -> Option<(String, SocketAddr)> {
        let member = metrics.membership_config.membership().get_node(&id);
        member.and_then(|n| Some((n.name.clone(), n.addr.parse().ok()?))).or_else(|| self.inner.peers.get(&id).cloned())
    }

    /// Runs a request on the local Raft, as the server would for a peer.
    async fn local<T>(&self, req: &Request) -> Result<T, ForwardError>
    where
        T: LocalAnswer,
    {
        T::answer(self, req).await
    }
}

/// Turns the local execution of a [`Request`] into the answer type the caller expects.
trait LocalAnswer: Sized {
    async fn answer(node: &LeaseNode, req: &Request) -> Result<Self, ForwardError>;
}

impl LocalAnswer for LeaseResponse {
    async fn answer(node: &LeaseNode, req: &Request) -> Result<Self, ForwardError> {
        let Request::Write(cmd) = req else {
            return Err(ForwardError::Failed("not a write".to_string()));
        };
        match node.inner.raft.client_write(cmd.clone()).await {
            Ok(r) => Ok(r.data),
            Err(OrError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader { leader: f.leader_id })
            }
            Err(e) => Err(ForwardError::Failed(e.to_string())),
        }
    }
}

impl LocalAnswer for Outcome {
    async fn answer(node: &LeaseNode, req: &Request) -> Result<Self, ForwardError> {
        match req {
            Request::AddVoter { name, addr } => node.inner.membership.add_voter(name, *addr).await,
            Request::RemoveVoter { name } => node.inner.membership.remove_voter(name).await,
            _ => Err(ForwardError::Failed("not a membership change".to_string())),
        }
    }
}

impl LocalAnswer for bool {
    async fn answer(node: &LeaseNode, req: &Request) -> Result<Self, ForwardError> {
        let Request::Check { lease, node: holder, token } = req else {
            return Err(ForwardError::Failed("not a check".to_string()));
        };
        match node.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(lock(&node.inner.sm).table.holds(lease, holder, *token)),
            Err(OrError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader { leader: f.leader_id })
            }
            Err(e) => Err(ForwardError::Failed(e.to_string())),
        }
    }
}

fn vacated(resp: LeaseResponse) -> Result<(), LeaseError> {
    match resp {
        LeaseResponse::Vacated { .. } => Ok(()),
        LeaseResponse::Stale { current, holder } => Err(LeaseError::Stale { current, holder }),
        other => Err(unexpected(other)),
    }
}

fn unexpected(resp: LeaseResponse) -> LeaseError {
    LeaseError::Unavailable { waited: Duration::ZERO, last: format!("unexpected state machine answer {resp:?}") }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

type Peers = BTreeMap<NodeId, (String, SocketAddr)>;

fn validate(cfg: &RaftConfig) -> Result<(Peers, BTreeMap<NodeId, PeerNode>), RaftError> {
    let mut peers = BTreeMap::new();
    let mut members = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (name, addr) in &cfg.voters {
        if !names.insert(name.as_str()) {
            return Err(RaftError::Config(format!("voter {name} is listed twice")));
        }
        let id = node_id(name);
        if let Some((other, _)) = peers.insert(id, (name.clone(), *addr)) {
            return Err(RaftError::Config(format!("voters {other} and {name} hash to the same raft id; rename one")));
        }
        members.insert(id, PeerNode { name: name.clone(), addr: addr.to_string() });
    }
    if !names.contains(cfg.node.as_str()) {
        return Err(RaftError::Config(format!("this node ({}) is not among the voters {names:?}", cfg.node)));
    }
    let (min, max) = cfg.election_timeout;
    if min >= max || cfg.heartbeat >= min {
        return Err(RaftError::Config(format!(
            "need heartbeat < election timeout min < max, got {:?} / {min:?} / {max:?}",
            cfg.heartbeat
        )));
    }
    Ok((peers, members))
}

async fn stop(raft: &Raft<TypeConfig>, tasks: &Mutex<Vec<AbortHandle>>, closed: &store::StoreClosed) {
    let handles: Vec<AbortHandle> = lock(tasks).drain(..).collect();
    for task in &handles {
        task.abort();
    }
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft core did not stop cleanly");
    }
    // openraft's state-machine worker ends a little after the core: wait for the store's
    // last handle, so a restart on the same directory finds the file closed.
    if !closed.wait(Duration::from_secs(5)).await {
        tracing::warn!("raft store still open 5 s after shutdown");
    }
}

/// The first voter (by name) initialises a pristine cluster. It waits two maximum
/// election timeouts first: a node whose store was wiped while the cluster lives hears
/// from the leader in that time and must not initialise again.
async fn bootstrap(raft: Raft<TypeConfig>, members: BTreeMap<NodeId, PeerNode>, election_max: Duration) {
    let deadline = Instant::now() + election_max * 2;
    while Instant::now() < deadline {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => tokio::time::sleep(election_max / 10).await,
            Err(_) => return,
        }
    }
    match raft.initialize(members).await {
        Ok(()) => tracing::info!("raft cluster initialised with the configured voters"),
        Err(OrError::APIError(InitializeError::NotAllowed(_))) => {}
        Err(e) => tracing::warn!(error = %e, "raft initialisation failed"),
    }
}

async fn publish_view(
    raft: Raft<TypeConfig>,
    mut table: watch::Receiver<lease::LeaseTable>,
    view: watch::Sender<LeaseView>,
    peers: Arc<Peers>,
    metrics: Arc<RaftMetrics>,
) {
    let mut rm = raft.metrics();
    loop {
        let (leader, term, is_leader) = {
            let m = rm.borrow_and_update();
            let name = m.current_leader.and_then(|id| {
                let node = m.membership_config.membership().get_node(&id).map(|n| n.name.clone());
                node.or_else(|| peers.get(&id).map(|(name, _)| name.clone()))
            });
            (name, m.current_term, m.state == ServerState::Leader)
        };
        let leases = table.borrow_and_update().leases.clone();
        metrics.term.set(i64::try_from(term).unwrap_or(i64::MAX));
        metrics.is_leader.set(i64::from(is_leader));
        for (name, state) in &leases {
            metrics.token.with_label_values(&[name.as_str()]).set(i64::try_from(state.token).unwrap_or(i64::MAX));
        }
        view.send_if_modified(|v| {
            let new = LeaseView { leader, term, leases };
            let changed = *v != new;
            *v = new;
            changed
        });
        tokio::select! {
            r = rm.changed() => if r.is_err() { return },
            r = table.changed() => if r.is_err() { return },
        }
    }
}

/// The leader's lease clock at work: on winning a term, extend every lease by TTL + the
/// maximum election timeout; then revoke, through the log and with their token, the
/// leases whose deadline passed.
async fn expire_leases(
    raft: Raft<TypeConfig>,
    sm: Arc<Mutex<SmData>>,
    clock: Arc<Mutex<LeaseClock>>,
    tick: Duration,
    grace: Duration,
) {
    let mut led_term: Option<u64> = None;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let (is_leader, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        if !is_leader {
            led_term = None;
            continue;
        }
        let table = lock(&sm).table.clone();
        let now = Instant::now();
        if led_term != Some(term) {
            lock(&clock).extend_all(&table, now, grace);
            led_term = Some(term);
            continue;
        }
        let expired = lock(&clock).expired(&table, now, grace);
        for (lease, token, granted_index) in expired {
            // Bounded: a leader that lost its quorum must not wedge this task; a revoke
            // that commits later anyway is harmless (a stale token, or a renewal applied
            // since this decision, makes it a no-op).
            let revoke = raft.client_write(LeaseCommand::Revoke {
                lease: lease.clone(),
                token,
                granted_index: Some(granted_index),
            });
            match tokio::time::timeout(grace * 4, revoke).await {
                Ok(Ok(r)) => tracing::info!(lease = %lease, token, result = ?r.data, "expired lease revoked"),
                Ok(Err(e)) => tracing::debug!(lease = %lease, token, error = %e, "lease revoke not committed"),
                Err(_) => tracing::debug!(lease = %lease, token, "lease revoke timed out"),
            }
        }
    }
}
