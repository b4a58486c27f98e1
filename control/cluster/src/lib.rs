//! Cluster membership and node-state dissemination, memberlist-style: SWIM (`foca`) over
//! sealed UDP for liveness and small broadcasts, full node states pulled over sealed TCP
//! (on a newer digest, when a member comes up, and by periodic anti-entropy).
//!
//! [`Cluster::start`] runs it; [`Cluster::view`] publishes alive/suspect/down members
//! with their latest [`NodeState`]s. Only a node changes its own state
//! ([`Cluster::update_local`]); everything else is relayed.
//!
//! Every datagram and state-pull frame is sealed in `constellation-wire`'s envelope,
//! which carries the protocol version; state pulls use its frame codec (at most
//! [`MAX_FRAME`]) and its admission-limited TCP server ([`ClusterConfig::admission`]).
//! Nothing here frames or seals bytes by itself.
//!
//! Also here: peer discovery from Tailscale ([`discovery`]). This crate knows nothing of
//! Raft, DNS, routes or the proxy.

#![forbid(unsafe_code)]

mod broadcast;
pub mod discovery;
mod membership;
mod metrics;
mod pull;
mod state;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, PostcardCodec};
use rand::rngs::StdRng;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

pub use broadcast::{Digest, Hint};

/// The service of an egress hint (see [`Cluster::publish_egress_hint`]): `@` cannot be
/// part of a service name, so it never meets a real one.
pub const EGRESS_HINT_SERVICE: &str = "@egress";
pub use constellation_wire::{
    generate_key_hex, KeyProblem, Keyring, KeyringError, Limits, OpenError, KEY_LEN, PROTOCOL_VERSION, SEAL_OVERHEAD,
};
pub use pull::{PullError, IO_TIMEOUT, MAX_FRAME};
pub use state::{
    ClusterView, ContainerRecord, EgressNeed, EgressRecord, Instance, MemberState, MemberView, NodeId, NodeState,
};

use broadcast::{Handler, Item};
use constellation_wire::{AdmissionMetrics, FrameCodec};
use membership::{Command, Gossip, MAX_DATAGRAM};
use metrics::Metrics;
use pull::PullService;
use state::Store;

/// How long a down member stays listed (as `down`) before it is forgotten.
pub const DOWN_GRACE: Duration = Duration::from_secs(600);
/// Default interval of the periodic push-pull with one random live peer.
pub const DEFAULT_PUSH_PULL_INTERVAL: Duration = Duration::from_secs(5);
/// Default SWIM probe period (memberlist LAN).
pub const DEFAULT_PROBE_PERIOD: Duration = Duration::from_secs(1);
/// Default time to wait for a direct probe's ack before probing indirectly.
pub const DEFAULT_PROBE_RTT: Duration = Duration::from_millis(500);
/// Default expected cluster size (tunes retransmissions and the suspicion timeout).
pub const DEFAULT_CLUSTER_SIZE_HINT: u32 = 8;
/// How often seeds not yet seen alive are sent a join request again.
pub const SEED_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Settings for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Node name, unique in the cluster.
    pub node: String,
    /// UDP address the gossip socket binds.
    pub gossip_bind: SocketAddr,
    /// Gossip address told to peers. Port 0 means the bound port; an unspecified IP
    /// means the bound IP.
    pub gossip_advertise: SocketAddr,
    /// TCP address the state-pull server binds.
    pub cluster_bind: SocketAddr,
    /// State-pull address told to peers (port 0 / unspecified IP: as for gossip).
    pub cluster_advertise: SocketAddr,
    /// Gossip addresses to join through; retried every [`SEED_RETRY_INTERVAL`] until each
    /// one is seen alive. Our own address may be listed.
    pub seeds: Vec<SocketAddr>,
    /// Keys that seal gossip and state pulls.
    pub keyring: Arc<Keyring>,
    /// Periodic anti-entropy interval. Default [`DEFAULT_PUSH_PULL_INTERVAL`] (5 s).
    pub push_pull_interval: Duration,
    /// Expected number of nodes. Default [`DEFAULT_CLUSTER_SIZE_HINT`] (8).
    pub cluster_size_hint: u32,
    /// Roles published in our state.
    pub roles: Vec<String>,
    /// SWIM probe period. Default [`DEFAULT_PROBE_PERIOD`] (1 s).
    pub probe_period: Duration,
    /// Direct-probe timeout; must be below `probe_period`. Default [`DEFAULT_PROBE_RTT`]
    /// (500 ms).
    pub probe_rtt: Duration,
    /// Suspect to down after this long. Default (`None`): memberlist's LAN formula,
    /// `4 × max(1, log10(cluster_size_hint)) × probe_period` (4 s for up to 10 nodes).
    pub suspect_to_down_after: Option<Duration>,
    /// Limits on the state-pull listener's connections. Default: `constellation-wire`'s
    /// defaults (64 pending, 256 in all, 3 s to send a first frame) with [`IO_TIMEOUT`]
    /// between requests.
    pub admission: Limits,
}

impl ClusterConfig {
    /// A configuration binding and advertising `gossip` and `cluster`, with no seeds and
    /// the defaults above.
    pub fn new(node: &str, gossip: SocketAddr, cluster: SocketAddr, keyring: Arc<Keyring>) -> ClusterConfig {
        ClusterConfig {
            node: node.to_string(),
            gossip_bind: gossip,
            gossip_advertise: gossip,
            cluster_bind: cluster,
            cluster_advertise: cluster,
            seeds: Vec::new(),
            keyring,
            push_pull_interval: DEFAULT_PUSH_PULL_INTERVAL,
            cluster_size_hint: DEFAULT_CLUSTER_SIZE_HINT,
            roles: Vec::new(),
            probe_period: DEFAULT_PROBE_PERIOD,
            probe_rtt: DEFAULT_PROBE_RTT,
            suspect_to_down_after: None,
            admission: Limits::new(IO_TIMEOUT),
        }
    }

    /// The foca configuration these settings give.
    fn foca_config(&self) -> Result<foca::Config, ClusterError> {
        let invalid = |reason: String| Err(ClusterError::InvalidConfig { reason });
        if self.node.is_empty() {
            return invalid("the node name is empty".into());
        }
        if self.probe_period.is_zero() || self.probe_rtt.is_zero() || self.probe_rtt >= self.probe_period {
            return invalid(format!(
                "probe_rtt ({:?}) must be above zero and below probe_period ({:?})",
                self.probe_rtt, self.probe_period
            ));
        }
        if self.push_pull_interval.is_zero() {
            return invalid("push_pull_interval must be above zero".into());
        }
        let size = NonZeroU32::new(self.cluster_size_hint.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut config = foca::Config::new_lan(size);
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.suspect_to_down_after = self
            .suspect_to_down_after
            .unwrap_or_else(|| self.probe_period.mul_f64(4.0 * f64::from(size.get()).log10().max(1.0)));
        config.remove_down_after = Some(DOWN_GRACE);
        // Room for the seal and our kind byte.
        config.max_packet_size = NonZeroUsize::new(MAX_DATAGRAM - SEAL_OVERHEAD - 1).unwrap_or(NonZeroUsize::MIN);
        Ok(config)
    }
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The gossip UDP socket could not bind.
    #[error("cannot bind the gossip socket on udp {addr}: {source} (is another agent running, or is the address not local?)")]
    BindGossip {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster TCP listener could not bind.
    #[error("cannot listen for state pulls on tcp {addr}: {source} (is another agent running, or is the address not local?)")]
    BindCluster {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The settings are inconsistent.
    #[error("invalid cluster settings: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// Metrics could not be registered (already registered in this registry?).
    #[error("cannot register cluster metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// State shared by the cluster's tasks.
pub(crate) struct Shared {
    pub(crate) local: String,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) metrics: Metrics,
    /// The state-pull frame codec (cluster key, [`MAX_FRAME`]).
    pub(crate) frames: FrameCodec,
    store: Mutex<Store>,
    view: watch::Sender<ClusterView>,
}

impl Shared {
    /// The store; never hold the guard across an await.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds the view and publishes it if it changed.
    pub(crate) fn publish_view(&self) {
        let view = self.store().view();
        for state in [MemberState::Alive, MemberState::Suspect, MemberState::Down] {
            let n = i64::try_from(view.count(state)).unwrap_or(i64::MAX);
            self.metrics.members.with_label_values(&[state.as_str()]).set(n);
        }
        self.view.send_if_modified(|current| {
            if *current == view {
                false
            } else {
                *current = view;
                true
            }
        });
    }
}

/// Aborts the cluster's tasks when the last reference goes.
struct Tasks(Mutex<Vec<AbortHandle>>);

impl Tasks {
    fn abort_all(&self) {
        for task in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

/// A running cluster member. Dropping it stops gossip abruptly (peers will see a crash);
/// call [`Cluster::leave`] first to leave gracefully.
pub struct Cluster {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    tasks: Arc<Tasks>,
    view: watch::Receiver<ClusterView>,
    gossip_addr: SocketAddr,
    cluster_addr: SocketAddr,
}

impl Cluster {
    /// Binds the gossip (UDP) and state-pull (TCP) sockets, starts the tasks and joins
    /// through the seeds. `initial` supplies the public IP and instances; name,
    /// incarnation (now, in ms), version (1), addresses and roles come from `cfg`.
    /// When `shutdown` completes the node leaves gracefully and stops.
    pub async fn start<F>(
        cfg: ClusterConfig,
        initial: NodeState,
        registry: &prometheus::Registry,
        shutdown: F,
    ) -> Result<Cluster, ClusterError>
    where
        F: Future + Send + 'static,
    {
        let foca_config = cfg.foca_config()?;
        let socket = UdpSocket::bind(cfg.gossip_bind)
            .await
            .map_err(|source| ClusterError::BindGossip { addr: cfg.gossip_bind, source })?;
        let bound = socket.local_addr().map_err(|source| ClusterError::BindGossip { addr: cfg.gossip_bind, source })?;
        let gossip_addr = resolve_advertise(cfg.gossip_advertise, bound, "gossip_advertise")?;
        let listener = TcpListener::bind(cfg.cluster_bind)
            .await
            .map_err(|source| ClusterError::BindCluster { addr: cfg.cluster_bind, source })?;
        let bound_tcp =
            listener.local_addr().map_err(|source| ClusterError::BindCluster { addr: cfg.cluster_bind, source })?;
        let cluster_addr = resolve_advertise(cfg.cluster_advertise, bound_tcp, "cluster_advertise")?;
        let metrics = Metrics::register(registry)?;
        let admission = AdmissionMetrics::register(registry, "state")?;

        let incarnation = next_incarnation();
        let id = NodeId { name: cfg.node.clone(), gossip: gossip_addr, cluster: cluster_addr, incarnation };
        let local = NodeState {
            name: cfg.node.clone(),
            incarnation,
            version: 1,
            gossip_addr,
            cluster_addr,
            roles: cfg.roles.clone(),
            ..initial
        };
        let store = Store::new(id.clone(), local);
        let view = store.view();
        let (view_tx, view_rx) = watch::channel(view);
        let shared = Arc::new(Shared {
            local: cfg.node.clone(),
            keyring: Arc::clone(&cfg.keyring),
            metrics,
            frames: FrameCodec::new(Arc::clone(&cfg.keyring), MAX_FRAME),
            store: Mutex::new(store),
            view: view_tx,
        });
        shared.publish_view();

        let socket = Arc::new(socket);
        let (pull_tx, pull_rx) = mpsc::unbounded_channel();
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (timer_tx, timer_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = membership::data_channel();
        let rng: StdRng = rand::make_rng();
        let handler = Handler::new(Arc::clone(&shared), pull_tx.clone());
        let foca = Foca::with_custom_broadcast(id, foca_config, rng, PostcardCodec, handler);
        let gossip = Gossip {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket: Arc::clone(&socket),
            shared: Arc::clone(&shared),
            scheduler: timer_tx,
            pulls: pull_tx,
            seeds: cfg.seeds.clone(),
            own: vec![gossip_addr, bound],
            left: false,
            last_members: Vec::new(),
        };

        let tasks = Arc::new(Tasks(Mutex::new(Vec::new())));
        let handles = vec![
            tokio::spawn(gossip.run(data_rx, command_rx)).abort_handle(),
            tokio::spawn(membership::run_scheduler(timer_rx, command_tx.clone())).abort_handle(),
            tokio::spawn(membership::read_socket(socket, Arc::clone(&shared), data_tx)).abort_handle(),
            tokio::spawn(constellation_wire::admission::serve(
                listener,
                shared.frames.clone(),
                cfg.admission,
                admission,
                Arc::new(PullService { shared: Arc::clone(&shared) }),
            ))
            .abort_handle(),
            tokio::spawn(pull::run_puller(Arc::clone(&shared), pull_rx, cfg.push_pull_interval)).abort_handle(),
        ];
        {
            // Register every task before the shutdown task can run, so its abort reaches all.
            let mut all = tasks.0.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(handles);
            let commands = command_tx.clone();
            let tasks = Arc::clone(&tasks);
            all.push(
                tokio::spawn(async move {
                    shutdown.await;
                    leave(&commands, &tasks).await;
                })
                .abort_handle(),
            );
        }
        tracing::info!(
            node = %cfg.node,
            gossip = %gossip_addr,
            cluster = %cluster_addr,
            key_id = %cfg.keyring.primary_key_id(),
            seeds = cfg.seeds.len(),
            "cluster member started"
        );
        let cluster = Cluster { shared, commands: command_tx, tasks, view: view_rx, gossip_addr, cluster_addr };
        // Announce our first state like any later one, so members that still hold our
        // previous incarnation's state learn of this one without waiting for anti-entropy.
        cluster.broadcast(&Item::Digest(Digest { node: cfg.node, incarnation, version: 1 }));
        Ok(cluster)
    }

    /// The cluster view; it changes when membership or any held state changes.
    pub fn view(&self) -> watch::Receiver<ClusterView> {
        self.view.clone()
    }

    /// Our advertised gossip address (after resolving port 0).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Our advertised state-pull address (after resolving port 0).
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster_addr
    }

    /// Our current member identity.
    pub fn id(&self) -> NodeId {
        self.shared.store().self_id.clone()
    }

    /// Our current state.
    pub fn local_state(&self) -> NodeState {
        let store = self.shared.store();
        store.local_state().cloned().unwrap_or_else(|| NodeState::new(&self.shared.local))
    }

    /// Changes our state with `f`. If anything changed, bumps the version, republishes the
    /// view and broadcasts a [`Digest`] so peers pull it. `f` cannot change the name,
    /// incarnation, version or addresses.
    pub fn update_local(&self, f: impl FnOnce(&mut NodeState)) {
        let digest = {
            let mut store = self.shared.store();
            let Some(before) = store.local_state().cloned() else { return };
            let mut state = before.clone();
            f(&mut state);
            state.name.clone_from(&before.name);
            state.incarnation = before.incarnation;
            state.version = before.version;
            state.gossip_addr = before.gossip_addr;
            state.cluster_addr = before.cluster_addr;
            if state == before {
                return;
            }
            state.version = before.version + 1;
            let digest = Digest { node: state.name.clone(), incarnation: state.incarnation, version: state.version };
            store.set_local(state);
            digest
        };
        self.shared.publish_view();
        self.broadcast(&Item::Digest(digest));
    }

    /// Adds gossip addresses to join through (e.g. from Tailscale discovery); they are
    /// retried like seeds.
    pub fn add_peer_addresses(&self, addrs: Vec<SocketAddr>) {
        let _stopped = self.commands.send(Command::AddSeeds(addrs));
    }

    /// Tells the cluster that our breaker for `upstream_url` of `service` opened; the hint
    /// expires after `ttl`.
    pub fn publish_hint(&self, service: &str, upstream_url: &str, ttl: Duration) {
        let hint = Hint {
            from_node: self.shared.local.clone(),
            service: service.to_string(),
            upstream_url: upstream_url.to_string(),
            expires_unix_ms: unix_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        };
        let slot = (hint.from_node.clone(), hint.service.clone(), hint.upstream_url.clone());
        self.shared.store().hints.insert(slot, hint.clone());
        self.broadcast(&Item::Hint(hint));
    }

    /// Tells the cluster that requests through `node`'s egress keep being refused (403)
    /// here: an outlier hint with service [`EGRESS_HINT_SERVICE`] and the node's name as
    /// the upstream. Others deprioritise that node's egress-bound instances until it
    /// expires.
    pub fn publish_egress_hint(&self, node: &str, ttl: Duration) {
        self.publish_hint(EGRESS_HINT_SERVICE, node, ttl);
    }

    /// Unexpired hints from all nodes, ours included, sorted.
    pub fn hints(&self) -> Vec<Hint> {
        let now = unix_ms();
        let mut hints: Vec<Hint> =
            self.shared.store().hints.values().filter(|h| h.expires_unix_ms > now).cloned().collect();
        hints.sort();
        hints
    }

    /// Leaves the cluster gracefully (peers mark us down at once) and stops all tasks.
    /// Idempotent; the handle keeps serving its last view.
    pub async fn leave(&self) {
        leave(&self.commands, &self.tasks).await;
    }

    fn broadcast(&self, item: &Item) {
        match item.encode() {
            Ok(bytes) => {
                let _stopped = self.commands.send(Command::Broadcast(bytes));
            }
            Err(error) => tracing::warn!(error = %error, "cannot encode cluster broadcast"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn leave(commands: &mpsc::UnboundedSender<Command>, tasks: &Tasks) {
    let (done_tx, done_rx) = oneshot::channel();
    if commands.send(Command::Leave(done_tx)).is_ok() {
        let _timed_out = tokio::time::timeout(IO_TIMEOUT, done_rx).await;
    }
    tasks.abort_all();
}

fn resolve_advertise(advertise: SocketAddr, bound: SocketAddr, field: &str) -> Result<SocketAddr, ClusterError> {
    let mut addr = advertise;
    if addr.port() == 0 {
        addr.set_port(bound.port());
    }
    if addr.ip().is_unspecified() {
        if bound.ip().is_unspecified() {
            return Err(ClusterError::InvalidConfig {
                reason: format!("{field} {advertise} is not an address peers can reach; set it to this node's IP"),
            });
        }
        addr.set_ip(bound.ip());
    }
    Ok(addr)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Boot time in ms, strictly increasing within the process (several members may start
/// in the same millisecond in tests). Across restarts it relies on the wall clock moving
/// forward.
fn next_incarnation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = unix_ms();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}
