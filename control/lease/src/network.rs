//! Raft RPC over TCP, in the sealed frames of `constellation-wire` (postcard, at most
//! [`MAX_FRAME`] bytes a message) on its shared admission-limited server. Peers connect
//! lazily and keep one connection per target; the server authenticates every frame before
//! anything decodes it, dispatches Raft RPCs to the local `Raft`, and also serves
//! forwarded lease commands and linearizable checks, so a follower can act through the
//! leader.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError as OrError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::Raft;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

use super::lease::{LeaseCommand, LeaseResponse};
use super::membership::{Acks, MembershipCtl, Outcome};
use super::metrics::RaftMetrics;
use super::store::{lock, SmData};
use super::{NodeId, PeerNode, TypeConfig};
use constellation_wire::{AdmissionMetrics, FrameCodec, FrameError, Keyring, Limits, Service};

/// Largest Raft message accepted or sent (a snapshot chunk or a batch of entries is far
/// smaller).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// How long a connect may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the server waits for the next request on an admitted connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request on the Raft port.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A lease command forwarded by a follower to the leader.
    Write(LeaseCommand),
    /// A linearizable "does `node` hold `lease` with `token`?" asked of the leader.
    Check {
        lease: String,
        node: String,
        token: u64,
    },
    /// A membership change carried out by the leader: add a voter (learner first).
    AddVoter {
        name: String,
        addr: SocketAddr,
    },
    /// A membership change carried out by the leader: remove a voter or learner.
    RemoveVoter {
        name: String,
    },
    /// From a leader about to stop: start an election now (openraft 0.9 has no leadership
    /// transfer; the stopping leader votes for this node once its own lease ran out).
    Elect,
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, OrError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, OrError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, OrError<NodeId, InstallSnapshotError>>),
    Write(Result<LeaseResponse, ForwardError>),
    Check(Result<bool, ForwardError>),
    Membership(Result<Outcome, ForwardError>),
    Elect(Result<(), ForwardError>),
}

/// Why the leader did not carry out a forwarded command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The node asked is not the leader; it names the one it knows, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's node id as far as the asked node knows.
        leader: Option<NodeId>,
    },
    /// Raft failed otherwise (shutting down, quorum lost).
    #[error("{0}")]
    Failed(String),
}

/// Why an RPC to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made.
    #[error("cannot connect to raft peer {addr}: {source}")]
    Connect {
        /// The peer's Raft address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or the peer did not answer in time.
    #[error("raft peer {addr}: {source}")]
    Io {
        /// The peer's Raft address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The reply did not open with the keyring or did not decode.
    #[error("raft peer {addr} sent a reply that {problem}")]
    BadReply {
        /// The peer's Raft address.
        addr: SocketAddr,
        /// What was wrong with it.
        problem: String,
    },
}

// === client ===

/// One lazily connected client to a peer's Raft port.
pub(crate) struct PeerClient {
    addr: SocketAddr,
    frames: FrameCodec,
    conn: Option<TcpStream>,
}

impl PeerClient {
    pub(crate) fn new(addr: SocketAddr, keyring: Arc<Keyring>) -> PeerClient {
        PeerClient { addr, frames: codec(keyring), conn: None }
    }

    /// Sends `req` and waits for the reply, all within `timeout`. On any failure the
    /// connection is dropped; the next call reconnects.
    pub(crate) async fn call(&mut self, req: &Request, timeout: Duration) -> Result<Response, CallError> {
        let addr = self.addr;
        let result = tokio::time::timeout(timeout, self.call_inner(req)).await.unwrap_or_else(|_| {
            Err(CallError::Io { addr, source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply in time") })
        });
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn call_inner(&mut self, req: &Request) -> Result<Response, CallError> {
        let addr = self.addr;
        if self.conn.is_none() {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))
                .map_err(|source| CallError::Connect { addr, source })?;
            let _ = stream.set_nodelay(true);
            self.conn = Some(stream);
        }
        let Some(stream) = self.conn.as_mut() else {
            return Err(CallError::Connect { addr, source: std::io::Error::other("no connection") });
        };
        let failed = |error: FrameError| match error {
            FrameError::Io(source) => CallError::Io { addr, source },
            other => CallError::BadReply { addr, problem: other.to_string() },
        };
        self.frames.write(stream, req).await.map_err(failed)?;
        self.frames
            .read(stream)
            .await
            .map_err(failed)?
            .ok_or_else(|| CallError::Io { addr, source: std::io::ErrorKind::UnexpectedEof.into() })
    }
}

/// The Raft frame codec: the cluster key, [`MAX_FRAME`].
pub(crate) fn codec(keyring: Arc<Keyring>) -> FrameCodec {
    FrameCodec::new(keyring, MAX_FRAME)
}

/// Builds [`Network`] clients for openraft.
pub struct NetworkFactory {
    pub(crate) keyring: Arc<Keyring>,
    /// Where every client records when its peer last answered an `AppendEntries`.
    pub(crate) acks: Acks,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    /// `node` is the target's entry in the membership config, so a voter or learner added
    /// at run time is reached at the address it was added with, not only configured ones.
    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Network {
        // Never fails: an address that does not parse makes every RPC `Unreachable`.
        let addr = node.addr.parse().ok();
        Network {
            target,
            name: node.name.clone(),
            addr,
            client: addr.map(|a| PeerClient::new(a, self.keyring.clone())),
            acks: Arc::clone(&self.acks),
        }
    }
}

/// openraft's client to one peer.
pub struct Network {
    target: NodeId,
    name: String,
    addr: Option<SocketAddr>,
    client: Option<PeerClient>,
    acks: Acks,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, PeerNode, OrError<NodeId, E>>>;

impl Network {
    async fn rpc<E: std::error::Error>(
        &mut self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, PeerNode, OrError<NodeId, E>>> {
        let Some(client) = self.client.as_mut() else {
            let e = std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("raft peer {} has no valid address {:?}", self.name, self.addr),
            );
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        match client.call(&req, option.hard_ttl()).await {
            Ok(resp) => Ok(resp),
            Err(e @ CallError::Connect { .. }) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, PeerNode, OrError<NodeId, E>> {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("raft peer {} answered another RPC", self.name),
        );
        RPCError::Network(NetworkError::new(&e))
    }

    fn remote<E: std::error::Error>(&self, e: OrError<NodeId, E>) -> RPCError<NodeId, PeerNode, OrError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.rpc(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(r) => {
                // Any answer, even a conflict, shows the peer is reachable (heartbeats too).
                lock(&self.acks).insert(self.target, std::time::Instant::now());
                r.map_err(|e| self.remote(e))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.rpc(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        match self.rpc(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }
}

// === server ===

/// Serves one node's Raft port: Raft RPCs, forwarded lease commands, checks and
/// membership changes.
pub(crate) struct RaftHandler {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) metrics: Arc<RaftMetrics>,
    pub(crate) sm: Arc<std::sync::Mutex<SmData>>,
    pub(crate) membership: Arc<MembershipCtl>,
}

impl Service for RaftHandler {
    type Request = Request;
    type Response = Response;

    async fn call(&self, _peer: SocketAddr, request: Request) -> Option<Response> {
        Some(self.dispatch(request).await)
    }

    /// Counted in `constellation_raft_frames_rejected_total{reason}`; a peer that cannot
    /// seal with our key gets nothing back, not even an error.
    fn rejected(&self, peer: SocketAddr, error: &FrameError) {
        self.metrics.reject(peer, error);
    }
}

impl RaftHandler {
    async fn dispatch(&self, req: Request) -> Response {
        match req {
            Request::AppendEntries(rpc) => Response::AppendEntries(self.raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(self.raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => Response::InstallSnapshot(self.raft.install_snapshot(rpc).await),
            Request::Write(cmd) => Response::Write(match self.raft.client_write(cmd).await {
                Ok(r) => Ok(r.data),
                Err(OrError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(ForwardError::NotLeader { leader: f.leader_id })
                }
                Err(e) => Err(ForwardError::Failed(e.to_string())),
            }),
            Request::Check { lease, node, token } => Response::Check(match self.raft.ensure_linearizable().await {
                Ok(_) => Ok(lock(&self.sm).table.holds(&lease, &node, token)),
                Err(OrError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    Err(ForwardError::NotLeader { leader: f.leader_id })
                }
                Err(e) => Err(ForwardError::Failed(e.to_string())),
            }),
            Request::AddVoter { name, addr } => Response::Membership(self.membership.add_voter(&name, addr).await),
            Request::RemoveVoter { name } => Response::Membership(self.membership.remove_voter(&name).await),
            Request::Elect => {
                tracing::info!("the raft leader is stopping and asked this node to stand for election");
                Response::Elect(self.raft.trigger().elect().await.map_err(|e| ForwardError::Failed(e.to_string())))
            }
        }
    }
}

/// Accepts connections on the Raft port until the task is aborted (which also ends every
/// connection task).
pub(crate) async fn serve(
    listener: TcpListener,
    keyring: Arc<Keyring>,
    admission: AdmissionMetrics,
    handler: Arc<RaftHandler>,
) {
    constellation_wire::admission::serve(listener, codec(keyring), Limits::new(IDLE_TIMEOUT), admission, handler).await;
}
