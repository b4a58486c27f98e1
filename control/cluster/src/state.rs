//! Node identity (the SWIM member id), versioned node states, the published cluster view,
//! and the store that merges states by freshness.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::broadcast::Hint;

/// A node's identity in the SWIM membership (foca's `Identity`).
///
/// Two identities with the same `name` are the same node: the one with the larger
/// `incarnation` wins, so a restarted node (new boot time) replaces its previous self.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Node name, unique in the cluster.
    pub name: String,
    /// Advertised gossip (UDP) address.
    pub gossip: SocketAddr,
    /// Advertised cluster (TCP) address, where its state can be pulled.
    pub cluster: SocketAddr,
    /// Boot time in milliseconds since the Unix epoch, bumped by one on each renewal.
    pub incarnation: u64,
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.gossip, self.incarnation)
    }
}

impl foca::Identity for NodeId {
    type Addr = String;

    /// When the cluster declares us down, rejoin as a slightly newer identity.
    fn renew(&self) -> Option<Self> {
        Some(NodeId { incarnation: self.incarnation.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// A service instance running on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Service name (the route builder's service key).
    pub service: String,
    /// Upstream URL reachable from other nodes, e.g. `http://100.64.0.2:8080`.
    pub url: String,
    /// Health as seen by the node's own monitor.
    pub healthy: bool,
    /// The instance's outbound traffic must leave through this egress gateway of its
    /// node (e.g. `warp`); routed only while that gateway is up.
    pub egress: Option<EgressNeed>,
}

/// An instance's need for an egress gateway on its node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EgressNeed {
    /// Gateway name; `warp` also matches any gateway when the node has none of that name.
    pub gateway: String,
    /// When no instance of the service has its egress up: route to all of them (true,
    /// like panic mode) or answer 503 (false).
    pub fallback_all: bool,
}

/// One egress gateway's verdict as its node publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRecord {
    /// Gateway name.
    pub gateway: String,
    /// The verdict.
    pub up: bool,
    /// `warp=` of the last trace answer (`on`, `plus`, `off`), empty before one.
    pub warp: String,
    /// The egress IP of the last trace answer.
    pub ip: Option<IpAddr>,
    /// Why it is down, when it is.
    pub error: Option<String>,
}

/// The versioned record a node publishes about itself. Only its owner changes it, bumping
/// `version` each time; `(incarnation, version)` orders records by freshness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name.
    pub name: String,
    /// Boot time of the owner in ms since the epoch (a restart starts a newer record).
    pub incarnation: u64,
    /// Bumped by the owner on every change; starts at 1.
    pub version: u64,
    /// Advertised gossip (UDP) address.
    pub gossip_addr: SocketAddr,
    /// Advertised cluster (TCP) address.
    pub cluster_addr: SocketAddr,
    /// The node's public IP, when known.
    pub public_ip: Option<IpAddr>,
    /// Roles, e.g. `voter`, `lb`.
    pub roles: Vec<String>,
    /// Service instances running on the node.
    pub instances: Vec<Instance>,
    /// Containers on the node's engine, for status (the provider's view).
    pub containers: Vec<ContainerRecord>,
    /// The node's egress gateways and their verdicts.
    pub egress: Vec<EgressRecord>,
    /// Routes the node's providers contribute (its containers' labels), as a Traefik
    /// dynamic configuration in JSON; empty when none. Opaque to this crate.
    pub provided_routes: String,
}

/// A container as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Engine state (`running`, `exited`, …).
    pub state: String,
    /// HEALTHCHECK verdict: `healthy`, `unhealthy`, `starting` or `none`.
    pub health: String,
    /// HTTP services it serves (empty when not routed).
    pub services: Vec<String>,
    /// Networks it is on.
    pub networks: Vec<String>,
    /// Why its labels were refused, if they were.
    pub error: Option<String>,
    /// Restarts by the unhealthy-container restarter in the last hour.
    pub restarts: u32,
}

impl NodeState {
    /// An empty state for `name`; [`super::Cluster::start`] fills in identity fields.
    pub fn new(name: &str) -> NodeState {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        NodeState {
            name: name.to_string(),
            incarnation: 0,
            version: 0,
            gossip_addr: unspecified,
            cluster_addr: unspecified,
            public_ip: None,
            roles: Vec::new(),
            instances: Vec::new(),
            containers: Vec::new(),
            egress: Vec::new(),
            provided_routes: String::new(),
        }
    }

    /// `(incarnation, version)`: larger is fresher.
    pub fn freshness(&self) -> (u64, u64) {
        (self.incarnation, self.version)
    }
}

/// Liveness of a member as SWIM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe; still treated as alive until declared down or it refutes.
    Suspect,
    /// Declared down (crashed, partitioned away, or left).
    Down,
}

impl MemberState {
    /// `alive`, `suspect` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }

    /// Alive or suspect: SWIM treats a suspect as alive until it is declared down.
    pub fn is_up(self) -> bool {
        !matches!(self, MemberState::Down)
    }
}

impl From<foca::State> for MemberState {
    fn from(s: foca::State) -> Self {
        match s {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        }
    }
}

/// One member in a [`ClusterView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node name.
    pub name: String,
    /// Advertised gossip address.
    pub gossip_addr: SocketAddr,
    /// Advertised cluster (TCP) address (carried in the member identity, so always known).
    pub cluster_addr: SocketAddr,
    /// Liveness.
    pub state: MemberState,
    /// Identity incarnation (boot time in ms, plus renewals).
    pub incarnation: u64,
    /// Roles from the node's state (empty until its state is known).
    pub roles: Vec<String>,
    /// Version of the node's state we hold, if any.
    pub state_version: Option<u64>,
    /// This is the local node.
    pub is_self: bool,
}

/// Alive, suspect and recently down members with the latest state of each.
///
/// The local node is always listed (alive). Down members stay listed for
/// [`super::DOWN_GRACE`] and then disappear.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Members sorted by name.
    pub members: Vec<MemberView>,
    /// Latest known state per listed member (missing until first pulled).
    pub states: BTreeMap<String, NodeState>,
}

impl ClusterView {
    /// States of members that are alive or suspect (SWIM treats a suspect as alive until
    /// it is declared down, so routing keeps using it meanwhile; its breakers still act).
    pub fn alive_states(&self) -> impl Iterator<Item = &NodeState> {
        self.members.iter().filter(|m| m.state.is_up()).filter_map(|m| self.states.get(&m.name))
    }

    /// The member called `name`, if listed.
    pub fn member(&self, name: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Number of members in `state` (the local node counts as alive).
    pub fn count(&self, state: MemberState) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }
}

/// A held node state and when it was last replaced.
struct Stored {
    state: NodeState,
    received: Instant,
}

/// All node states this node knows, its member list snapshot and the hints. Guarded by a
/// mutex in `Shared`; never held across an await.
pub(crate) struct Store {
    local: String,
    states: BTreeMap<String, Stored>,
    /// Freshest digest announced per node (may be ahead of the state we hold).
    announced: HashMap<String, (u64, u64)>,
    /// Unexpired hints keyed by (from node, service, upstream URL).
    pub(crate) hints: HashMap<(String, String, String), Hint>,
    /// Foca's membership (without ourselves) as of the last foca call.
    pub(crate) members: Vec<(NodeId, MemberState)>,
    /// Our current identity (changes on renewal).
    pub(crate) self_id: NodeId,
}

impl Store {
    pub(crate) fn new(self_id: NodeId, local: NodeState) -> Store {
        let name = local.name.clone();
        let mut states = BTreeMap::new();
        states.insert(name.clone(), Stored { state: local, received: Instant::now() });
        Store { local: name, states, announced: HashMap::new(), hints: HashMap::new(), members: Vec::new(), self_id }
    }

    /// Our own state.
    pub(crate) fn local_state(&self) -> Option<&NodeState> {
        self.states.get(&self.local).map(|s| &s.state)
    }

    /// Replaces our own state (the caller bumped the version).
    pub(crate) fn set_local(&mut self, state: NodeState) {
        self.states.insert(self.local.clone(), Stored { state, received: Instant::now() });
    }

    /// Freshness of the state we hold for `node`.
    pub(crate) fn held(&self, node: &str) -> Option<(u64, u64)> {
        self.states.get(node).map(|s| s.state.freshness())
    }

    /// Records an announced digest; true if it is news (fresher than both the state held
    /// and any digest announced before). Digests about ourselves are never news.
    pub(crate) fn announce(&mut self, node: &str, fresh: (u64, u64)) -> bool {
        if node == self.local || node.is_empty() {
            return false;
        }
        let known = self.held(node).max(self.announced.get(node).copied());
        if known.is_some_and(|k| k >= fresh) {
            return false;
        }
        self.announced.insert(node.to_string(), fresh);
        true
    }

    /// `node -> (incarnation, version)` for every state held, ours included.
    pub(crate) fn digests(&self) -> BTreeMap<String, (u64, u64)> {
        self.states.iter().map(|(n, s)| (n.clone(), s.state.freshness())).collect()
    }

    /// States we hold that are fresher than `theirs` says (or absent from it).
    pub(crate) fn newer_than(&self, theirs: &BTreeMap<String, (u64, u64)>) -> Vec<NodeState> {
        self.states
            .values()
            .filter(|s| theirs.get(&s.state.name).is_none_or(|t| *t < s.state.freshness()))
            .map(|s| s.state.clone())
            .collect()
    }

    /// Merges states received from a peer (first-hand or relayed); returns how many were
    /// fresher than what we held. Our own state is never taken from others.
    pub(crate) fn merge(&mut self, states: Vec<NodeState>) -> usize {
        let mut changed = 0;
        for state in states {
            if state.name == self.local || state.name.is_empty() {
                continue;
            }
            if self.held(&state.name).is_some_and(|h| h >= state.freshness()) {
                continue;
            }
            changed += 1;
            self.states.insert(state.name.clone(), Stored { state, received: Instant::now() });
        }
        changed
    }

    /// Forgets states of nodes that left the member list (down for longer than the grace
    /// period) unless received within `grace`, announced digests we hold, and expired hints.
    pub(crate) fn prune(&mut self, grace: Duration, now_unix_ms: u64) {
        let members = &self.members;
        let local = &self.local;
        self.states.retain(|name, s| {
            name == local || members.iter().any(|(id, _)| &id.name == name) || s.received.elapsed() < grace
        });
        let states = &self.states;
        self.announced.retain(|name, fresh| match states.get(name) {
            Some(s) => s.state.freshness() < *fresh,
            None => members.iter().any(|(id, _)| &id.name == name),
        });
        self.hints.retain(|_, h| h.expires_unix_ms > now_unix_ms);
    }

    /// Builds the published view: ourselves (alive) plus foca's members, with states.
    pub(crate) fn view(&self) -> ClusterView {
        let mut members = Vec::with_capacity(self.members.len() + 1);
        let me = &self.self_id;
        members.push(self.member_view(me, MemberState::Alive, true));
        for (id, state) in &self.members {
            if id.name != self.local {
                members.push(self.member_view(id, *state, false));
            }
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let states = members
            .iter()
            .filter_map(|m| self.states.get(&m.name).map(|s| (m.name.clone(), s.state.clone())))
            .collect();
        ClusterView { members, states }
    }

    fn member_view(&self, id: &NodeId, state: MemberState, is_self: bool) -> MemberView {
        let held = self.states.get(&id.name).map(|s| &s.state);
        MemberView {
            name: id.name.clone(),
            gossip_addr: id.gossip,
            cluster_addr: id.cluster,
            state,
            incarnation: id.incarnation,
            roles: held.map(|s| s.roles.clone()).unwrap_or_default(),
            state_version: held.map(|s| s.version),
            is_self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, incarnation: u64, version: u64) -> NodeState {
        NodeState { incarnation, version, ..NodeState::new(name) }
    }

    fn id(name: &str) -> NodeId {
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        NodeId { name: name.into(), gossip: a, cluster: a, incarnation: 1 }
    }

    #[test]
    fn merge_keeps_the_freshest_and_never_our_own() {
        let mut store = Store::new(id("a"), state("a", 5, 3));
        assert_eq!(store.merge(vec![state("b", 1, 2), state("a", 9, 9)]), 1);
        assert_eq!(store.held("a"), Some((5, 3)));
        assert_eq!(store.merge(vec![state("b", 1, 1), state("b", 1, 2)]), 0);
        // A restart (newer incarnation) wins even with a lower version.
        assert_eq!(store.merge(vec![state("b", 2, 1)]), 1);
        assert_eq!(store.held("b"), Some((2, 1)));
        let theirs = BTreeMap::from([("a".to_string(), (5, 3)), ("b".to_string(), (1, 7))]);
        let newer: Vec<_> = store.newer_than(&theirs).into_iter().map(|s| s.name).collect();
        assert_eq!(newer, vec!["b"]);
    }

    #[test]
    fn announce_is_news_only_once() {
        let mut store = Store::new(id("a"), state("a", 5, 3));
        assert!(!store.announce("a", (6, 0)));
        assert!(store.announce("b", (1, 1)));
        assert!(!store.announce("b", (1, 1)));
        store.merge(vec![state("b", 1, 2)]);
        assert!(!store.announce("b", (1, 2)));
        assert!(store.announce("b", (1, 3)));
    }

    #[test]
    fn view_lists_self_and_alive_states_skip_down() {
        let mut store = Store::new(id("a"), state("a", 1, 1));
        store.members = vec![(id("b"), MemberState::Suspect), (id("c"), MemberState::Down)];
        store.merge(vec![state("b", 1, 1), state("c", 1, 1)]);
        let view = store.view();
        assert_eq!(view.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(view.members[0].is_self);
        let alive: Vec<_> = view.alive_states().map(|s| s.name.as_str()).collect();
        assert_eq!(alive, ["a", "b"]);
        let json = serde_json::to_value(&view.members[1]).map(|v| v["state"].clone()).ok();
        assert_eq!(json, Some(serde_json::json!("suspect")));
    }
}
