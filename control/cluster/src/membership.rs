//! SWIM membership over sealed UDP: the task that owns `Foca`, its timer scheduler, the
//! socket reader, seed joining and graceful leave.
//!
//! Datagram plaintext (inside [`Keyring::seal`](super::Keyring::seal), whose envelope
//! carries the protocol version) is one kind byte
//! then a body: `0` a foca packet, `1` a join request carrying the sender's postcard
//! [`NodeId`]. A join request asks the receiver to `announce` to the sender: foca's own
//! `Announce` must name its destination's identity, which a joiner that only knows a
//! seed's address cannot do.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use super::broadcast::Handler;
use super::pull::PullRequest;
use super::state::{MemberState, NodeId};
use super::{Shared, SEED_RETRY_INTERVAL};

/// Plaintext kind byte: a foca packet follows.
const KIND_FOCA: u8 = 0;
/// Plaintext kind byte: a join request (postcard `NodeId`) follows.
const KIND_JOIN: u8 = 1;
/// Largest datagram we send, sealed (fits a 1500-byte MTU with IP/UDP headers to spare).
pub(crate) const MAX_DATAGRAM: usize = 1400;
/// Datagrams waiting for the foca task before the reader waits.
const DATA_QUEUE: usize = 1024;

pub(crate) type FocaT = Foca<NodeId, PostcardCodec, StdRng, Handler>;

/// Commands to the foca task from the handle, the scheduler and the shutdown path.
pub(crate) enum Command {
    Timer(Timer<NodeId>),
    Broadcast(Vec<u8>),
    AddSeeds(Vec<SocketAddr>),
    Leave(oneshot::Sender<()>),
}

/// An authenticated datagram for the foca task.
pub(crate) enum Datagram {
    Foca { from: SocketAddr, body: Vec<u8> },
    Join { from: SocketAddr, id: NodeId },
}

/// The foca task's state.
pub(crate) struct Gossip {
    pub(crate) foca: FocaT,
    pub(crate) runtime: AccumulatingRuntime<NodeId>,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) scheduler: mpsc::UnboundedSender<(Instant, Timer<NodeId>)>,
    pub(crate) pulls: mpsc::UnboundedSender<PullRequest>,
    pub(crate) seeds: Vec<SocketAddr>,
    /// Our own gossip addresses (advertised and bound), never used as seeds.
    pub(crate) own: Vec<SocketAddr>,
    pub(crate) left: bool,
    pub(crate) last_members: Vec<(NodeId, MemberState)>,
}

/// Channel sizes and ends for the foca task.
pub(crate) fn data_channel() -> (mpsc::Sender<Datagram>, mpsc::Receiver<Datagram>) {
    mpsc::channel(DATA_QUEUE)
}

impl Gossip {
    /// Runs until the command channel closes (the handle and scheduler are gone).
    pub(crate) async fn run(
        mut self,
        mut data: mpsc::Receiver<Datagram>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        self.join_seeds().await;
        let mut seed_tick = tokio::time::interval_at(Instant::now() + SEED_RETRY_INTERVAL, SEED_RETRY_INTERVAL);
        seed_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
                datagram = data.recv() => match datagram {
                    Some(datagram) => self.datagram(datagram).await,
                    None => break,
                },
                _ = seed_tick.tick() => self.join_seeds().await,
            }
        }
    }

    async fn command(&mut self, command: Command) {
        if self.left {
            if let Command::Leave(done) = command {
                let _gone = done.send(());
            }
            return;
        }
        let result = match command {
            Command::Timer(timer) => self.foca.handle_timer(timer, &mut self.runtime),
            Command::Broadcast(item) => self.foca.add_broadcast(&item).map(|_| ()),
            Command::AddSeeds(addrs) => {
                for addr in addrs {
                    if !self.seeds.contains(&addr) {
                        self.seeds.push(addr);
                    }
                }
                self.join_seeds().await;
                Ok(())
            }
            Command::Leave(done) => {
                let result = self.foca.leave_cluster(&mut self.runtime);
                self.flush().await;
                self.left = true;
                tracing::info!(node = %self.shared.local, "left the cluster");
                let _gone = done.send(());
                return self.log_error(result, None);
            }
        };
        self.flush().await;
        self.log_error(result, None);
    }

    async fn datagram(&mut self, datagram: Datagram) {
        if self.left {
            return;
        }
        let (result, from) = match datagram {
            Datagram::Foca { from, body } => (self.foca.handle_data(&body, &mut self.runtime), from),
            Datagram::Join { from, id } => {
                if id.name == self.shared.local || id.name.is_empty() {
                    return;
                }
                tracing::debug!(peer = %from, member = ?id, "join request");
                (self.foca.announce(id, &mut self.runtime), from)
            }
        };
        self.flush().await;
        self.log_error(result, Some(from));
    }

    fn log_error(&self, result: Result<(), foca::Error>, from: Option<SocketAddr>) {
        let Err(error) = result else { return };
        match (&error, from) {
            (
                foca::Error::Decode(_)
                | foca::Error::MalformedPacket
                | foca::Error::CustomBroadcast(_)
                | foca::Error::DataTooBig,
                Some(peer),
            ) => self.shared.metrics.reject(peer, "udp", "decode"),
            // Echoes of our own packets and messages while not (yet) connected are normal.
            _ => tracing::debug!(error = %error, "foca call failed"),
        }
    }

    /// Sends a join request to every seed that is not an alive member yet.
    async fn join_seeds(&mut self) {
        if self.left || self.seeds.is_empty() {
            return;
        }
        let up: Vec<SocketAddr> =
            self.foca.iter_members().filter(|m| m.state() != foca::State::Down).map(|m| m.id().gossip).collect();
        let id = self.foca.identity().clone();
        let mut plain = vec![KIND_JOIN];
        match postcard::to_allocvec(&id) {
            Ok(body) => plain.extend_from_slice(&body),
            Err(error) => {
                tracing::warn!(error = %error, "cannot encode join request");
                return;
            }
        }
        let sealed = self.shared.keyring.seal(&plain);
        for seed in &self.seeds {
            if up.contains(seed) || self.own.contains(seed) {
                continue;
            }
            tracing::trace!(seed = %seed, "sending join request");
            self.send(&sealed, *seed).await;
        }
    }

    async fn send(&self, sealed: &[u8], to: SocketAddr) {
        match self.socket.send_to(sealed, to).await {
            Ok(_) => self.shared.metrics.packets.with_label_values(&["out"]).inc(),
            Err(error) => tracing::debug!(peer = %to, error = %error, "gossip send failed"),
        }
    }

    /// Drains foca's runtime: sends packets, schedules timers, reacts to notifications,
    /// then republishes the view if membership changed.
    async fn flush(&mut self) {
        while let Some((dst, data)) = self.runtime.to_send() {
            let mut plain = Vec::with_capacity(data.len() + 1);
            plain.push(KIND_FOCA);
            plain.extend_from_slice(&data);
            let sealed = self.shared.keyring.seal(&plain);
            self.send(&sealed, dst.gossip).await;
        }
        let now = Instant::now();
        while let Some((delay, timer)) = self.runtime.to_schedule() {
            let _closed = self.scheduler.send((now + delay, timer));
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(member = ?id, "member up");
                    // Anti-entropy right away: a new member (or a healed partition) is
                    // exactly when the two sides are most likely to differ.
                    let _closed = self.pulls.send(PullRequest::Sync { addr: id.cluster });
                }
                OwnedNotification::MemberDown(id) => tracing::info!(member = ?id, "member down"),
                OwnedNotification::Rename(old, new) => {
                    tracing::info!(old = ?old, new = ?new, "member restarted");
                    // A restart noticed before the old identity went down brings no
                    // `MemberUp`, yet the new incarnation's state is what we need.
                    let _closed = self.pulls.send(PullRequest::Sync { addr: new.cluster });
                }
                OwnedNotification::Active => tracing::info!(node = %self.shared.local, "joined the cluster"),
                OwnedNotification::Idle => tracing::info!(node = %self.shared.local, "no other live member"),
                OwnedNotification::Defunct => {
                    tracing::info!(node = %self.shared.local, "no longer a member (we left, or peers declared us down)")
                }
                OwnedNotification::Rejoin(id) => tracing::info!(id = ?id, "rejoining under a renewed identity"),
                // Only with foca's `unstable-notifications` feature, should another crate enable it.
                #[allow(unreachable_patterns)]
                other => tracing::trace!(notification = ?other, "foca notification"),
            }
        }
        let mut members: Vec<(NodeId, MemberState)> =
            self.foca.iter_membership_state().map(|m| (m.id().clone(), m.state().into())).collect();
        members.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let me = self.foca.identity();
        let mut store = self.shared.store();
        if members != self.last_members || store.self_id != *me {
            store.members = members.clone();
            store.self_id = me.clone();
            drop(store);
            self.last_members = members;
            self.shared.publish_view();
        }
    }
}

/// Reads datagrams, opens them and hands them to the foca task. Rejections are counted
/// and logged (rate-limited); the reader never stops on bad input.
pub(crate) async fn read_socket(socket: Arc<UdpSocket>, shared: Arc<Shared>, to_foca: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors from earlier sends can surface here; keep reading.
                tracing::debug!(error = %error, "gossip receive failed");
                continue;
            }
        };
        shared.metrics.packets.with_label_values(&["in"]).inc();
        // Opened in the receive buffer: nothing is allocated for a datagram that does
        // not authenticate.
        let plain = match shared.keyring.open_in_place(&mut buf[..len]) {
            Ok(plain) => plain,
            Err(error) => {
                shared.metrics.reject_open(from, "udp", error);
                continue;
            }
        };
        let datagram = match plain.split_first() {
            Some((&KIND_FOCA, body)) => Datagram::Foca { from, body: body.to_vec() },
            Some((&KIND_JOIN, body)) => match postcard::from_bytes::<NodeId>(body) {
                Ok(id) => Datagram::Join { from, id },
                Err(_) => {
                    shared.metrics.reject(from, "udp", "decode");
                    continue;
                }
            },
            _ => {
                shared.metrics.reject(from, "udp", "decode");
                continue;
            }
        };
        if to_foca.send(datagram).await.is_err() {
            return;
        }
    }
}

/// One timer entry, ordered by deadline then by submission so equal deadlines keep order.
struct Entry {
    at: Instant,
    seq: u64,
    timer: Timer<NodeId>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The single timer scheduler: one heap and one `sleep_until`, so timers reach foca in
/// deadline order (one sleeping task per timer could deliver them out of order).
pub(crate) async fn run_scheduler(
    mut incoming: mpsc::UnboundedReceiver<(Instant, Timer<NodeId>)>,
    to_foca: mpsc::UnboundedSender<Command>,
) {
    let mut heap = BinaryHeap::<Entry>::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|e| e.at <= now) {
            if let Some(entry) = heap.pop() {
                if to_foca.send(Command::Timer(entry.timer)).is_err() {
                    return;
                }
            }
        }
        let next = heap.peek().map(|e| e.at);
        let received = match next {
            Some(at) => tokio::select! {
                _ = sleep_until(at) => continue,
                received = incoming.recv() => received,
            },
            None => incoming.recv().await,
        };
        let Some((at, timer)) = received else { return };
        seq += 1;
        heap.push(Entry { at, seq, timer });
    }
}
