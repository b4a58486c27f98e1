//! The one server loop behind the cluster's TCP ports (state pulls, Raft): admission
//! limits for connections that have not yet proved they hold the cluster key, then
//! request and response over the [`FrameCodec`].
//!
//! A new connection is *pending* until it sends a frame header that authenticates; then
//! it is *admitted*. Pending connections are few and short-lived: at most
//! [`Limits::max_pending`] at once (a new one closes the oldest), each closed if its first
//! header has not arrived within [`Limits::handshake_timeout`]. All connections together
//! are capped at [`Limits::max_connections`]; when admitted ones fill that, new ones are
//! closed at once. A real peer sends its first frame as soon as it connects, so a flood of
//! idle or garbage connections, from however many source addresses, only ever displaces
//! other pending connections: it delays a real peer by at most one reconnect.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

use crate::frame::{FrameCodec, FrameError};

/// Default [`Limits::max_pending`].
pub const DEFAULT_MAX_PENDING: usize = 64;
/// Default [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default [`Limits::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default [`Limits::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections that have not yet sent an authentic frame header; when full, the
    /// oldest is closed to make room for a new one. Default 64.
    pub max_pending: usize,
    /// All connections, pending and admitted. When admitted connections alone fill it, a
    /// new connection is closed at once. Default 256.
    pub max_connections: usize,
    /// Time a new connection has to deliver its first authentic header. Default 3 s.
    pub handshake_timeout: Duration,
    /// Time an admitted connection may wait for its next request, and the time limit
    /// for reading one body. No default: it depends on the protocol.
    pub idle_timeout: Duration,
    /// Time limit for writing one response. Default 5 s.
    pub write_timeout: Duration,
}

impl Limits {
    /// The default limits with the given idle timeout.
    pub fn new(idle_timeout: Duration) -> Limits {
        Limits {
            max_pending: DEFAULT_MAX_PENDING,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// What a listener serves: one response per request, in order, on each connection.
pub trait Service: Send + Sync + 'static {
    /// What peers send.
    type Request: DeserializeOwned + Send + 'static;
    /// What we answer.
    type Response: Serialize + Send + Sync + 'static;

    /// Answers `request` from `peer`; `None` closes the connection without an answer.
    fn call(&self, peer: SocketAddr, request: Self::Request) -> impl Future<Output = Option<Self::Response>> + Send;

    /// A frame from `peer` failed to read, open or decode (see [`FrameError::reason`]);
    /// the connection is closed after this returns. Count it here.
    fn rejected(&self, peer: SocketAddr, error: &FrameError);
}

/// Connection counters of one listener: `constellation_cluster_connections_total{listener,
/// event}` (`accepted`, `admitted`, `evicted`, `timed_out`, `refused`) and the gauge
/// `constellation_cluster_connections{listener, state}` (`pending`, `admitted`).
#[derive(Clone)]
pub struct AdmissionMetrics {
    events: IntCounterVec,
    open: IntGaugeVec,
}

impl AdmissionMetrics {
    /// Creates the metrics of listener `listener` (e.g. `state`, `raft`) and registers
    /// them in `registry`. Several listeners may share one registry.
    pub fn register(registry: &Registry, listener: &str) -> Result<AdmissionMetrics, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "constellation_cluster_connections_total",
                "Connections to a cluster TCP port, by event: accepted; admitted (sent an authentic \
                 frame header); evicted (closed, still unauthenticated, to make room for a newer one); \
                 timed_out (no authentic header in time); refused (closed at once, all slots taken).",
            )
            .const_label("listener", listener),
            &["event"],
        )?;
        let open = IntGaugeVec::new(
            Opts::new(
                "constellation_cluster_connections",
                "Open connections to a cluster TCP port, by state (pending, admitted).",
            )
            .const_label("listener", listener),
            &["state"],
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(open.clone()))?;
        for event in ["accepted", "admitted", "evicted", "timed_out", "refused"] {
            events.with_label_values(&[event]);
        }
        for state in ["pending", "admitted"] {
            open.with_label_values(&[state]);
        }
        Ok(AdmissionMetrics { events, open })
    }

    fn event(&self, event: &str) {
        self.events.with_label_values(&[event]).inc();
    }

    fn publish(&self, pool: &Pool) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.open.with_label_values(&["pending"]).set(gauge(pool.pending.len()));
        self.open.with_label_values(&["admitted"]).set(gauge(pool.admitted));
    }
}

/// The listener's connections: pending ones oldest first, and a count of admitted ones.
#[derive(Default)]
struct Pool {
    pending: VecDeque<(u64, AbortHandle)>,
    admitted: usize,
}

/// Shared between the accept loop and the connection tasks.
struct Admission {
    pool: Mutex<Pool>,
    limits: Limits,
    metrics: AdmissionMetrics,
}

impl Admission {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's place in the pool; gives it back when the task ends or is aborted.
struct Slot {
    admission: Arc<Admission>,
    id: u64,
    admitted: bool,
}

impl Slot {
    /// Moves the connection from pending to admitted (the total does not change).
    fn admit(&mut self) {
        if self.admitted {
            return;
        }
        let mut pool = self.admission.pool();
        pool.pending.retain(|(id, _)| *id != self.id);
        pool.admitted += 1;
        self.admitted = true;
        self.admission.metrics.publish(&pool);
        drop(pool);
        self.admission.metrics.event("admitted");
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pool = self.admission.pool();
        if self.admitted {
            pool.admitted = pool.admitted.saturating_sub(1);
        } else {
            pool.pending.retain(|(id, _)| *id != self.id);
        }
        self.admission.metrics.publish(&pool);
    }
}

/// Serves `service` on `listener` until the task is aborted (which ends every
/// connection too).
pub async fn serve<S: Service>(
    listener: TcpListener,
    codec: FrameCodec,
    limits: Limits,
    metrics: AdmissionMetrics,
    service: Arc<S>,
) {
    let admission = Arc::new(Admission { pool: Mutex::new(Pool::default()), limits, metrics });
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    next_id += 1;
                    accept(&admission, &mut tasks, next_id, stream, peer, &codec, &service);
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %error, "cluster listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

fn accept<S: Service>(
    admission: &Arc<Admission>,
    tasks: &mut JoinSet<()>,
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    codec: &FrameCodec,
    service: &Arc<S>,
) {
    let limits = admission.limits;
    admission.metrics.event("accepted");
    let mut evicted = Vec::new();
    let mut pool = admission.pool();
    // Make room: the pending pool has a size of its own, and all connections share the
    // total. Only pending connections are ever evicted, oldest first.
    while !pool.pending.is_empty()
        && (pool.pending.len() >= limits.max_pending.max(1)
            || pool.pending.len() + pool.admitted >= limits.max_connections)
    {
        if let Some((_, task)) = pool.pending.pop_front() {
            evicted.push(task);
        }
    }
    if pool.pending.len() + pool.admitted >= limits.max_connections {
        drop(pool);
        // Whatever was taken out of the pool must not live on uncounted.
        for task in evicted {
            task.abort();
            admission.metrics.event("evicted");
        }
        admission.metrics.event("refused");
        tracing::debug!(peer = %peer, "cluster port full of admitted connections; closing a new one");
        return;
    }
    let _ = stream.set_nodelay(true);
    let slot = Slot { admission: Arc::clone(admission), id, admitted: false };
    let task = tasks.spawn(connection(stream, peer, slot, codec.clone(), Arc::clone(service)));
    pool.pending.push_back((id, task));
    admission.metrics.publish(&pool);
    drop(pool);
    for task in evicted {
        task.abort();
        admission.metrics.event("evicted");
    }
}

async fn connection<S: Service>(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut slot: Slot,
    codec: FrameCodec,
    service: Arc<S>,
) {
    let limits = slot.admission.limits;
    loop {
        let wait = if slot.admitted { limits.idle_timeout } else { limits.handshake_timeout };
        let (header, len) = match tokio::time::timeout(wait, codec.read_header(&mut stream)).await {
            Err(_) => {
                if !slot.admitted {
                    slot.admission.metrics.event("timed_out");
                }
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(header))) => header,
            Ok(Err(error)) => return service.rejected(peer, &error),
        };
        slot.admit();
        let request = match tokio::time::timeout(limits.idle_timeout, codec.read_body(&mut stream, &header, len)).await
        {
            Err(_) => return,
            Ok(Ok(request)) => request,
            Ok(Err(error)) => return service.rejected(peer, &error),
        };
        // A handler waiting on something that never comes (a leader without a quorum)
        // must not hold its slot forever: the peer gave up long ago.
        let Ok(Some(response)) = tokio::time::timeout(limits.idle_timeout, service.call(peer, request)).await else {
            return;
        };
        match tokio::time::timeout(limits.write_timeout, codec.write(&mut stream, &response)).await {
            Ok(Ok(())) => {}
            // An answer over the frame limit is our own problem, not the peer's: say so.
            Ok(Err(error @ FrameError::Oversize { .. })) => {
                tracing::warn!(peer = %peer, error = %error, "cluster response too large to send; the peer gets none");
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(peer = %peer, error = %error, "cluster response not sent");
                return;
            }
            Err(_) => return,
        }
    }
}
