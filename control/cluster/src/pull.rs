//! Full node states over TCP: the push-pull server on the cluster address, the client,
//! and the puller task (digest-triggered pulls and periodic anti-entropy).
//!
//! Frame: `u32` big-endian length, then a sealed postcard message (at most
//! [`MAX_FRAME`]). Exchange: the caller sends `PushPull { digests }`; the server answers
//! with the states fresher than those digests and its own digests; the caller then sends
//! `Push { states }` with what it holds that is fresher than the server's, and the server
//! acknowledges. A frame that does not open or decode closes the connection.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::state::NodeState;
use super::{unix_ms, Shared, DOWN_GRACE};
use constellation_wire::{OpenError, SEAL_OVERHEAD};

/// Largest frame accepted (length prefix excluded).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Connect, read and write timeout for one step of an exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Concurrent inbound connections served; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
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
    /// Read or write failed.
    #[error("connection to {addr} failed: {source}")]
    Io {
        /// Peer address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The length prefix exceeds [`MAX_FRAME`] or is shorter than a sealed message.
    #[error("{addr} sent a frame of {len} bytes (limit {MAX_FRAME})")]
    BadLength {
        /// Peer address.
        addr: SocketAddr,
        /// Announced length.
        len: usize,
    },
    /// The frame did not open with our keyring.
    #[error("{addr} sent a frame that does not open: {source}")]
    Open {
        /// Peer address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// The frame opened but is not a message we know.
    #[error("{addr} sent an undecodable message: {source}")]
    Decode {
        /// Peer address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: postcard::Error,
    },
    /// A message of ours could not be encoded.
    #[error("cannot encode a state-pull message: {source}")]
    Encode {
        /// Why.
        #[source]
        source: postcard::Error,
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
enum Request {
    PushPull { from: String, digests: BTreeMap<String, (u64, u64)> },
    Push { states: Vec<NodeState> },
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
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

async fn write_frame<T: Serialize>(
    stream: &mut TcpStream,
    shared: &Shared,
    addr: SocketAddr,
    message: &T,
) -> Result<(), PullError> {
    let plain = postcard::to_allocvec(message).map_err(|source| PullError::Encode { source })?;
    let sealed = shared.keyring.seal(&plain);
    let len = u32::try_from(sealed.len()).map_err(|_| PullError::BadLength { addr, len: sealed.len() })?;
    let mut frame = Vec::with_capacity(sealed.len() + 4);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&sealed);
    match tokio::time::timeout(IO_TIMEOUT, stream.write_all(&frame)).await {
        Err(_) => Err(PullError::Timeout { addr }),
        Ok(Err(source)) => Err(PullError::Io { addr, source }),
        Ok(Ok(())) => Ok(()),
    }
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
async fn read_frame<T: DeserializeOwned>(
    stream: &mut TcpStream,
    shared: &Shared,
    addr: SocketAddr,
) -> Result<Option<T>, PullError> {
    let read = async {
        let mut len = [0u8; 4];
        match stream.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => return Err(PullError::Io { addr, source }),
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(SEAL_OVERHEAD..=MAX_FRAME).contains(&len) {
            let reason = if len < SEAL_OVERHEAD { "truncated" } else { "decode" };
            shared.metrics.reject(addr, "tcp", reason);
            return Err(PullError::BadLength { addr, len });
        }
        let mut sealed = vec![0u8; len];
        stream.read_exact(&mut sealed).await.map_err(|source| PullError::Io { addr, source })?;
        Ok(Some(sealed))
    };
    let sealed = match tokio::time::timeout(IO_TIMEOUT, read).await {
        Err(_) => return Err(PullError::Timeout { addr }),
        Ok(result) => match result? {
            Some(sealed) => sealed,
            None => return Ok(None),
        },
    };
    let plain = shared.keyring.open(&sealed).map_err(|source| {
        shared.metrics.reject(addr, "tcp", source.reason());
        PullError::Open { addr, source }
    })?;
    postcard::from_bytes(&plain).map(Some).map_err(|source| {
        shared.metrics.reject(addr, "tcp", "decode");
        PullError::Decode { addr, source }
    })
}

/// Serves push-pulls on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::debug!(peer = %peer, "too many state-pull connections; closing");
                        continue;
                    }
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move {
                        if let Err(error) = handle(stream, peer, &shared).await {
                            tracing::debug!(peer = %peer, error = %error, "state-pull connection failed");
                        }
                    });
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %error, "cluster listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) -> Result<(), PullError> {
    while let Some(request) = read_frame::<Request>(&mut stream, shared, peer).await? {
        let response = match request {
            Request::PushPull { from, digests } => {
                tracing::trace!(peer = %peer, from = %from, "push-pull");
                let store = shared.store();
                Response::PushPull { states: store.newer_than(&digests), digests: store.digests() }
            }
            Request::Push { states } => {
                let accepted = shared.store().merge(states);
                if accepted > 0 {
                    shared.publish_view();
                }
                Response::Ack { accepted: u32::try_from(accepted).unwrap_or(u32::MAX) }
            }
        };
        write_frame(&mut stream, shared, peer, &response).await?;
    }
    Ok(())
}

/// One push-pull with the node at `addr`; returns how many states we took.
pub(crate) async fn push_pull(shared: &Shared, addr: SocketAddr) -> Result<usize, PullError> {
    let mut stream = match tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => return Err(PullError::Timeout { addr }),
        Ok(Err(source)) => return Err(PullError::Connect { addr, source }),
        Ok(Ok(stream)) => stream,
    };
    let digests = shared.store().digests();
    write_frame(&mut stream, shared, addr, &Request::PushPull { from: shared.local.clone(), digests }).await?;
    let Some(Response::PushPull { states, digests: theirs }) = read_frame(&mut stream, shared, addr).await? else {
        return Err(PullError::Protocol { addr, what: "expected a push-pull response" });
    };
    let taken = shared.store().merge(states);
    if taken > 0 {
        shared.publish_view();
    }
    let push = shared.store().newer_than(&theirs);
    if !push.is_empty() {
        write_frame(&mut stream, shared, addr, &Request::Push { states: push }).await?;
        let Some(Response::Ack { .. }) = read_frame(&mut stream, shared, addr).await? else {
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
