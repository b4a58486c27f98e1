//! Membership changes of the lease group, carried out on the leader: add a voter (as a
//! learner first, promoted once it has caught up) or remove one, refused when the new
//! configuration would not have a reachable majority.
//!
//! "Reachable" is the leader's own evidence: a voter is reachable when it answered an
//! `AppendEntries` (heartbeats included) within the reachability window and the leader
//! replicates to it (`metrics().replication`). openraft 0.9 keeps no per-target ack time,
//! so the network layer records one ([`Acks`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError as OrError};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};

use super::network::ForwardError;
use super::store::lock;
use super::{node_id, NodeId, PeerNode, TypeConfig};

/// One member of the group: name, Raft address, voter (false: learner).
pub type Member = (String, SocketAddr, bool);

/// When each peer last answered an `AppendEntries` from this node, recorded by the
/// network layer.
pub(crate) type Acks = Arc<Mutex<HashMap<NodeId, Instant>>>;

/// Why a membership change was refused or failed. Nothing changed unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    /// The new configuration would have fewer reachable voters than its majority.
    #[error(
        "refused: {change} would leave voters {voters_after:?}, of which only {reachable:?} are reachable \
         from the leader; a majority of {needed} is needed (unreachable: {unreachable:?})"
    )]
    WouldLoseQuorum {
        /// The change asked for, e.g. `removing n2`.
        change: String,
        /// Voters of the configuration that must commit it.
        voters_after: Vec<String>,
        /// Those the leader heard from recently.
        reachable: Vec<String>,
        /// Those it did not.
        unreachable: Vec<String>,
        /// Majority of `voters_after`.
        needed: usize,
    },
    /// No member has this name.
    #[error("refused: no voter or learner is named {0:?}")]
    UnknownNode(String),
    /// The name is a voter already.
    #[error("refused: {0} is already a voter")]
    AlreadyVoter(String),
    /// Another member already uses the address.
    #[error("refused: raft address {addr} is already used by {name}")]
    AddressInUse {
        /// The address.
        addr: SocketAddr,
        /// The member using it.
        name: String,
    },
    /// Removing it would leave no voter.
    #[error("refused: {0} is the last voter; the group needs at least one")]
    LastVoter(String),
    /// The request itself is unusable (empty name, id collision, …).
    #[error("refused: {0}")]
    Invalid(String),
    /// The new node did not catch up in time; it was taken out of the group again.
    #[error(
        "refused: {name} at {addr} did not catch up within {waited_ms} ms (is it running, with the same \
         cluster key?); it was removed again"
    )]
    NotCaughtUp {
        /// The node.
        name: String,
        /// Its Raft address.
        addr: SocketAddr,
        /// How long the leader waited.
        waited_ms: u64,
    },
    /// Another change is still being committed.
    #[error("refused: another membership change is in progress ({0}); retry when it completes")]
    InProgress(String),
    /// No leader could carry the change out, or it did not commit in time.
    #[error("raft unavailable: {0}")]
    Unavailable(String),
}

impl MembershipError {
    /// True for a refusal of the request as such (an HTTP 409), false for an availability
    /// problem (503).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, MembershipError::Unavailable(_))
    }
}

/// The leader-side machinery, shared by the local node and its Raft RPC server.
pub(crate) struct MembershipCtl {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) acks: Acks,
    /// One change at a time on this node.
    pub(crate) serial: tokio::sync::Mutex<()>,
    /// A voter that answered within this window is reachable.
    pub(crate) window: Duration,
    /// How long a new learner may take to catch up.
    pub(crate) catch_up: Duration,
    /// How long the (joint, then uniform) configuration may take to commit.
    pub(crate) commit: Duration,
}

pub(crate) type Outcome = Result<Vec<Member>, MembershipError>;

/// The members of a membership config, sorted by name.
pub(crate) fn members_of(m: &openraft::Membership<NodeId, PeerNode>) -> Vec<Member> {
    let voters: BTreeSet<NodeId> = m.voter_ids().collect();
    let mut out: Vec<Member> =
        m.nodes().filter_map(|(id, n)| Some((n.name.clone(), n.addr.parse().ok()?, voters.contains(id)))).collect();
    out.sort();
    out
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

fn map_write_err(e: OrError<NodeId, ClientWriteError<NodeId, PeerNode>>) -> Result<MembershipError, ForwardError> {
    match e {
        OrError::APIError(ClientWriteError::ForwardToLeader(f)) => Err(ForwardError::NotLeader { leader: f.leader_id }),
        OrError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            Ok(MembershipError::InProgress(p.to_string()))
        }
        OrError::APIError(ClientWriteError::ChangeMembershipError(e)) => Ok(MembershipError::Invalid(e.to_string())),
        other => Ok(MembershipError::Unavailable(other.to_string())),
    }
}

// === impl MembershipCtl ===

impl MembershipCtl {
    /// The leader's view: (membership, names by id). `NotLeader` unless this node leads.
    fn leader_view(&self) -> Result<openraft::Membership<NodeId, PeerNode>, ForwardError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(ForwardError::NotLeader { leader: m.current_leader });
        }
        Ok(m.membership_config.membership().clone())
    }

    /// The voters (and learners) the leader heard from within the window, itself included.
    pub(crate) fn reachable(&self) -> BTreeSet<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        let mut out = BTreeSet::new();
        if m.state != ServerState::Leader {
            return out;
        }
        out.insert(m.id);
        let now = Instant::now();
        let acks = lock(&self.acks);
        for target in m.replication.iter().flat_map(|r| r.keys()) {
            if acks.get(target).is_some_and(|at| now.saturating_duration_since(*at) <= self.window) {
                out.insert(*target);
            }
        }
        out
    }

    /// Refuses unless `after` (and `before`, which must commit the joint configuration
    /// too) has a reachable majority, counting `assume` as reachable. A refusal is checked
    /// once more after one window, so a leader elected a moment ago, which has not heard
    /// from everyone yet, is not refused by mistake.
    async fn check_quorum(
        &self,
        change: &str,
        names: &BTreeMap<NodeId, String>,
        before: &BTreeSet<NodeId>,
        after: &BTreeSet<NodeId>,
        assume: Option<NodeId>,
    ) -> Result<(), MembershipError> {
        let mut retried = false;
        loop {
            let mut up = self.reachable();
            up.extend(assume);
            let ok = |set: &BTreeSet<NodeId>| set.intersection(&up).count() >= majority(set.len());
            if ok(before) && ok(after) {
                return Ok(());
            }
            if retried {
                // Report on whichever configuration lacks the majority, the new one first.
                let set = if ok(after) { before } else { after };
                let name = |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| id.to_string());
                let sorted = |mut v: Vec<String>| {
                    v.sort();
                    v
                };
                return Err(MembershipError::WouldLoseQuorum {
                    change: if ok(after) {
                        format!("{change} (the current configuration has no quorum)")
                    } else {
                        change.to_string()
                    },
                    voters_after: sorted(set.iter().map(name).collect()),
                    reachable: sorted(set.iter().filter(|id| up.contains(id)).map(name).collect()),
                    unreachable: sorted(set.iter().filter(|id| !up.contains(id)).map(name).collect()),
                    needed: majority(set.len()),
                });
            }
            retried = true;
            tokio::time::sleep(self.window).await;
        }
    }

    fn members(&self) -> Vec<Member> {
        members_of(self.raft.metrics().borrow().membership_config.membership())
    }

    /// Adds `name` at `addr` as a learner, waits until it caught up, then makes it a voter.
    pub(crate) async fn add_voter(&self, name: &str, addr: SocketAddr) -> Result<Outcome, ForwardError> {
        let _serial = self.serial.lock().await;
        let m = self.leader_view()?;
        if m.get_joint_config().len() > 1 {
            return Ok(Err(MembershipError::InProgress("a joint configuration is not committed yet".into())));
        }
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Ok(Err(MembershipError::Invalid(format!("{name:?} is not a usable node name"))));
        }
        let id = node_id(name);
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let names: BTreeMap<NodeId, String> = m.nodes().map(|(i, n)| (*i, n.name.clone())).collect();
        let mut was_learner = false;
        for (other, node) in m.nodes() {
            if *other == id {
                if node.name != name {
                    return Ok(Err(MembershipError::Invalid(format!(
                        "{name} and the member {} hash to the same raft id; choose another name",
                        node.name
                    ))));
                }
                if voters.contains(&id) {
                    return Ok(Err(MembershipError::AlreadyVoter(name.to_string())));
                }
                if node.addr.parse::<SocketAddr>().ok() != Some(addr) {
                    return Ok(Err(MembershipError::Invalid(format!(
                        "{name} is a learner at {}; remove it first to change its address",
                        node.addr
                    ))));
                }
                was_learner = true;
            } else if node.addr.parse::<SocketAddr>().ok() == Some(addr) {
                return Ok(Err(MembershipError::AddressInUse { addr, name: node.name.clone() }));
            }
        }
        let mut after = voters.clone();
        after.insert(id);
        let mut names = names;
        names.insert(id, name.to_string());
        let change = format!("adding {name}");
        // The newcomer counts as reachable here: it cannot help if the others lack a quorum.
        if let Err(e) = self.check_quorum(&change, &names, &voters, &after, Some(id)).await {
            return Ok(Err(e));
        }

        tracing::info!(node = %name, raft = %addr, "adding a raft learner");
        let node = PeerNode { name: name.to_string(), addr: addr.to_string() };
        let started = Instant::now();
        match tokio::time::timeout(self.catch_up, self.raft.add_learner(id, node, true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return map_write_err(e).map(Err),
            Err(_) => {}
        }
        // `add_learner` returns once the leader *believes* the learner is up to date;
        // also require an answer within the window (it returns at once for a re-add).
        let caught_up = loop {
            if self.reachable().contains(&id) {
                break true;
            }
            if started.elapsed() >= self.catch_up {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !caught_up {
            if !was_learner {
                self.drop_learner(id).await;
            }
            let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            return Ok(Err(MembershipError::NotCaughtUp { name: name.to_string(), addr, waited_ms }));
        }
        if let Err(e) = self.check_quorum(&change, &names, &voters, &after, None).await {
            if !was_learner {
                self.drop_learner(id).await;
            }
            return Ok(Err(e));
        }
        tracing::info!(node = %name, "promoting the raft learner to voter");
        self.commit(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
    }

    /// Removes `name`: a voter (refused when it would lose quorum) or a learner.
    pub(crate) async fn remove_voter(&self, name: &str) -> Result<Outcome, ForwardError> {
        let _serial = self.serial.lock().await;
        let m = self.leader_view()?;
        if m.get_joint_config().len() > 1 {
            return Ok(Err(MembershipError::InProgress("a joint configuration is not committed yet".into())));
        }
        let Some(id) = m.nodes().find(|(_, n)| n.name == name).map(|(i, _)| *i) else {
            return Ok(Err(MembershipError::UnknownNode(name.to_string())));
        };
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        if !voters.contains(&id) {
            tracing::info!(node = %name, "removing a raft learner");
            return self.commit(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await;
        }
        let mut after = voters.clone();
        after.remove(&id);
        if after.is_empty() {
            return Ok(Err(MembershipError::LastVoter(name.to_string())));
        }
        let names: BTreeMap<NodeId, String> = m.nodes().map(|(i, n)| (*i, n.name.clone())).collect();
        if let Err(e) = self.check_quorum(&format!("removing {name}"), &names, &voters, &after, None).await {
            return Ok(Err(e));
        }
        tracing::info!(node = %name, "removing a raft voter");
        self.commit(ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await
    }

    async fn commit(&self, change: ChangeMembers<NodeId, PeerNode>) -> Result<Outcome, ForwardError> {
        match tokio::time::timeout(self.commit, self.raft.change_membership(change, false)).await {
            Ok(Ok(_)) => Ok(Ok(self.members())),
            Ok(Err(e)) => map_write_err(e).map(Err),
            Err(_) => Ok(Err(MembershipError::Unavailable(format!(
                "the configuration change did not commit within {:?}; it may still complete",
                self.commit
            )))),
        }
    }

    /// Best effort: take a learner that never caught up out again.
    async fn drop_learner(&self, id: NodeId) {
        let remove = self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false);
        match tokio::time::timeout(self.commit, remove).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not remove the learner that did not catch up"),
            Err(_) => tracing::warn!("removing the learner that did not catch up did not commit in time"),
        }
    }
}
