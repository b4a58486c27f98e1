//! Full node states over TCP: the push-pull service on the cluster address, the client,
//! and the puller task (digest-triggered pulls and periodic anti-entropy).
//!
//! Messages travel as sealed frames ([`FrameCodec`], at most [`MAX_FRAME`] bytes of
//! postcard), served by the shared admission-limited server of `constellation-wire`.
//! Exchange: the caller sends `PushPull { digests }`; the server answers with the states
//! fresher than those digests and its own digests; the caller then sends
//! `Push { states }` with what it holds that is fresher than the server's, and the server
//! acknowledges. A frame that does not open or decode closes the connection.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::state::NodeState;
use super::{unix_ms, Shared, DOWN_GRACE};
use constellation_wire::{FrameError, Service};

/// Largest state-pull message accepted or sent (postcard bytes, before sealing).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Connect, read and write timeout for one step of an exchange; also how long the
/// server waits for the next request on a connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Digest-triggered pulls not satisfied within this long are forgotten (anti-entropy
/// takes over).
const WANT_EXPIRY: Duration = Duration::from_secs(30);

/// A push-pull that failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Peer cluster address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A step took longer than [`IO_TIMEOUT`].
    #[error("{addr} timed out")]
    Timeout {
        /// Peer address.
        addr: SocketAddr,
    },
    /// A frame could not be sent or received (I/O, seal, size or decoding).
    #[error("state pull with {addr}: {source}")]
    Frame {
        /// Peer address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: FrameError,
    },
    /// The peer answered out of turn or closed early.
    #[error("{addr} broke the push-pull protocol: {what}")]
    Protocol {
        /// Peer address.
        addr: SocketAddr,
        /// What happened.
        what: &'static str,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    PushPull { from: String, digests: BTreeMap<String, (u64, u64)> },
    Push { states: Vec<NodeState> },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    PushPull { states: Vec<NodeState>, digests: BTreeMap<String, (u64, u64)> },
    Ack { accepted: u32 },
}

/// Work for the puller task.
#[derive(Debug)]
pub(crate) enum PullRequest {
    /// A digest said `node` is at `fresh`; pull from `addr` unless we catch up meanwhile.
    Digest { node: String, fresh: (u64, u64), addr: SocketAddr, since: Instant },
    /// Push-pull with `addr` (a member just came up).
    Sync { addr: SocketAddr },
}

async fn send<T: Serialize>(
    stream: &mut TcpStream,
    shared: &Shared,
    addr: SocketAddr,
    message: &T,
) -> Result<(), PullError> {
    match tokio::time::timeout(IO_TIMEOUT, shared.frames.write(stream, message)).await {
        Err(_) => Err(PullError::Timeout { addr }),
        Ok(Err(source)) => Err(PullError::Frame { addr, source }),
        Ok(Ok(())) => Ok(()),
    }
}

/// Reads the answer to what we sent; a frame the server sent that does not open or
/// decode is counted like one a client sent.
async fn receive<T: DeserializeOwned>(
    stream: &mut TcpStream,
    shared: &Shared,
    addr: SocketAddr,
) -> Result<T, PullError> {
    match tokio::time::timeout(IO_TIMEOUT, shared.frames.read(stream)).await {
        Err(_) => Err(PullError::Timeout { addr }),
        Ok(Ok(Some(message))) => Ok(message),
        Ok(Ok(None)) => Err(PullError::Protocol { addr, what: "closed the connection without an answer" }),
        Ok(Err(source)) => {
            if source.is_rejection() {
                shared.metrics.reject_frame(addr, &source);
            }
            Err(PullError::Frame { addr, source })
        }
    }
}

/// The push-pull server's side of an exchange, run by the shared cluster-port server.
pub(crate) struct PullService {
    pub(crate) shared: Arc<Shared>,
}

impl Service for PullService {
    type Request = Request;
    type Response = Response;

    async fn call(&self, peer: SocketAddr, request: Request) -> Option<Response> {
        let shared = &self.shared;
        Some(match request {
            Request::PushPull { from, digests } => {
                tracing::trace!(peer = %peer, from = %from, "push-pull");
                let store = shared.store();
                Response::PushPull { states: within_frame(store.newer_than(&digests)), digests: store.digests() }
            }
            Request::Push { states } => {
                let accepted = shared.store().merge(states);
                if accepted > 0 {
                    shared.publish_view();
                }
                Response::Ack { accepted: u32::try_from(accepted).unwrap_or(u32::MAX) }
            }
        })
    }

    fn rejected(&self, peer: SocketAddr, error: &FrameError) {
        // A connection that ends or breaks mid-frame is not a message we refused.
        if error.is_rejection() {
            self.shared.metrics.reject_frame(peer, error);
        } else {
            tracing::debug!(peer = %peer, error = %error, "state-pull connection failed");
        }
    }
}

/// Room for states in one message: the frame limit less room for the digests and the
/// message's own framing.
const STATES_BUDGET: usize = MAX_FRAME / 2;

/// As many of `states` as fit in one message, in order. The rest go in a later exchange:
/// the digests still differ, so the next pull (digest-triggered or anti-entropy) asks again.
fn within_frame(mut states: Vec<NodeState>) -> Vec<NodeState> {
    let mut used = 0;
    let mut keep = 0;
    for s in &states {
        let size = postcard::to_allocvec(s).map(|v| v.len()).unwrap_or(usize::MAX);
        if keep > 0 && used + size > STATES_BUDGET {
            break;
        }
        used = used.saturating_add(size);
        keep += 1;
    }
    if keep < states.len() {
        tracing::debug!(sent = keep, held_back = states.len() - keep, "node states split over several exchanges");
        states.truncate(keep);
    }
    states
}

/// One push-pull with the node at `addr`; returns how many states we took.
pub(crate) async fn push_pull(shared: &Shared, addr: SocketAddr) -> Result<usize, PullError> {
    let mut stream = match tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => return Err(PullError::Timeout { addr }),
        Ok(Err(source)) => return Err(PullError::Connect { addr, source }),
        Ok(Ok(stream)) => stream,
    };
    let digests = shared.store().digests();
    send(&mut stream, shared, addr, &Request::PushPull { from: shared.local.clone(), digests }).await?;
    let Response::PushPull { states, digests: theirs } = receive(&mut stream, shared, addr).await? else {
        return Err(PullError::Protocol { addr, what: "expected a push-pull response" });
    };
    let taken = shared.store().merge(states);
    if taken > 0 {
        shared.publish_view();
    }
    let push = within_frame(shared.store().newer_than(&theirs));
    if !push.is_empty() {
        send(&mut stream, shared, addr, &Request::Push { states: push }).await?;
        let Response::Ack { .. } = receive(&mut stream, shared, addr).await? else {
            return Err(PullError::Protocol { addr, what: "expected an acknowledgement" });
        };
    }
    Ok(taken)
}

/// The puller: digest-triggered pulls (at most one in flight per address, repeated once
/// if more digests arrived meanwhile) and a push-pull with one random live peer every
/// `interval`. Also prunes the store.
pub(crate) async fn run_puller(
    shared: Arc<Shared>,
    mut requests: mpsc::UnboundedReceiver<PullRequest>,
    interval: Duration,
) {
    let mut in_flight: HashSet<SocketAddr> = HashSet::new();
    let mut again: HashSet<SocketAddr> = HashSet::new();
    let mut wanted: Vec<(String, (u64, u64), Instant)> = Vec::new();
    let mut tasks: JoinSet<(SocketAddr, Result<usize, PullError>)> = JoinSet::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let start = |tasks: &mut JoinSet<_>, in_flight: &mut HashSet<SocketAddr>, addr: SocketAddr| {
        in_flight.insert(addr);
        let shared = Arc::clone(&shared);
        tasks.spawn(async move { (addr, push_pull(&shared, addr).await) });
    };

    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { return };
                let addr = match request {
                    PullRequest::Digest { node, fresh, addr, since } => {
                        if shared.store().held(&node).is_some_and(|h| h >= fresh) {
                            continue;
                        }
                        wanted.push((node, fresh, since));
                        addr
                    }
                    PullRequest::Sync { addr } => addr,
                };
                if in_flight.contains(&addr) {
                    again.insert(addr);
                } else {
                    start(&mut tasks, &mut in_flight, addr);
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((addr, result)) = done else { continue };
                in_flight.remove(&addr);
                match result {
                    Ok(taken) => {
                        shared.metrics.pulls.with_label_values(&["ok"]).inc();
                        tracing::trace!(peer = %addr, taken, "push-pull done");
                    }
                    Err(error) => {
                        shared.metrics.pulls.with_label_values(&["error"]).inc();
                        tracing::debug!(peer = %addr, error = %error, "push-pull failed");
                    }
                }
                let store = shared.store();
                wanted.retain(|(node, fresh, since)| {
                    if store.held(node).is_some_and(|h| h >= *fresh) {
                        shared.metrics.lag.observe(since.elapsed().as_secs_f64());
                        false
                    } else {
                        since.elapsed() < WANT_EXPIRY
                    }
                });
                drop(store);
                if again.remove(&addr) {
                    start(&mut tasks, &mut in_flight, addr);
                }
            }
            _ = tick.tick() => {
                let peers: Vec<SocketAddr> = {
                    let mut store = shared.store();
                    store.prune(DOWN_GRACE, unix_ms());
                    store
                        .members
                        .iter()
                        .filter(|(id, state)| state.is_up() && id.name != shared.local)
                        .map(|(id, _)| id.cluster)
                        .filter(|addr| !in_flight.contains(addr))
                        .collect()
                };
                if !peers.is_empty() {
                    let addr = peers[rand::random_range(0..peers.len())];
                    start(&mut tasks, &mut in_flight, addr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Instance;

    /// A state of about `kib` KiB (its instances' URLs).
    fn big_state(name: &str, kib: usize) -> NodeState {
        let mut s = NodeState::new(name);
        s.instances = (0..kib)
            .map(|i| Instance {
                service: format!("svc{i}"),
                url: format!("http://{}/", "x".repeat(1000)),
                healthy: true,
                egress: None,
            })
            .collect();
        s
    }

    #[test]
    fn states_over_one_frame_are_split_over_several_exchanges() {
        // 12 states of ~512 KiB: about 6 MiB, more than one 4 MiB frame holds.
        let states: Vec<NodeState> = (0..12).map(|i| big_state(&format!("n{i}"), 512)).collect();
        let sent = within_frame(states.clone());
        assert!(!sent.is_empty() && sent.len() < states.len(), "{} of {}", sent.len(), states.len());
        let names: Vec<&str> = sent.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, states[..sent.len()].iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), "in order");
        // What is sent fits in a frame, with the digests beside it.
        let response = Response::PushPull { states: sent, digests: BTreeMap::new() };
        assert!(postcard::to_allocvec(&response).unwrap().len() <= MAX_FRAME);
        // Small states all go at once; one state alone is always sent, whatever its size.
        let small: Vec<NodeState> = (0..50).map(|i| NodeState::new(&format!("s{i}"))).collect();
        assert_eq!(within_frame(small).len(), 50);
        assert_eq!(within_frame(vec![big_state("huge", 3000)]).len(), 1);
    }
}
