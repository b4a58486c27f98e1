//! The holder side of a lease: a task that contends for a lease, renews it every TTL/3,
//! and steps down on its own when it cannot renew by its local deadline.
//!
//! The local deadline is `send time of the last acknowledged renewal + TTL − margin`. The
//! leader counts the same TTL from when it *applied* that renewal, which is later, and a
//! new leader adds an election timeout on top; so the holder always gives up before the
//! lease can be granted to anyone else. The margin absorbs clock-rate drift between the
//! two machines and the holder's own reaction time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::store::lock;
use super::{LeaseError, LeaseNode};

/// How a [`LeaseHolder`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderConfig {
    /// Lease name.
    pub lease: String,
    /// Time to live asked for on every acquire/renew.
    pub ttl: Duration,
    /// Time between renewals; default TTL/3.
    pub renew_every: Duration,
    /// Subtracted from TTL for the local deadline; default TTL/5.
    pub margin: Duration,
    /// Pause between attempts to acquire a lease held by someone else; default TTL/3.
    pub retry: Duration,
}

impl HolderConfig {
    /// Defaults for `lease` with `ttl`: renew every TTL/3, margin TTL/5.
    pub fn new(lease: &str, ttl: Duration) -> HolderConfig {
        HolderConfig { lease: lease.to_string(), ttl, renew_every: ttl / 3, margin: ttl / 5, retry: ttl / 3 }
    }
}

/// Something that happened to the holder, with the monotonic time it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderEvent {
    /// The lease was granted with `token`; `sent` is when the winning request left.
    Acquired {
        /// Fencing token.
        token: u64,
        /// When the request was sent.
        sent: Instant,
        /// When the grant arrived.
        at: Instant,
    },
    /// A renewal was acknowledged.
    Renewed {
        /// Fencing token (unchanged).
        token: u64,
        /// When the request was sent.
        sent: Instant,
        /// When the acknowledgement arrived.
        at: Instant,
    },
    /// The holder stopped holding `token`.
    Lost {
        /// The token no longer held.
        token: u64,
        /// When the holder gave it up.
        at: Instant,
        /// The local deadline it was working against.
        deadline: Instant,
        /// Why.
        reason: LostReason,
    },
}

/// Why a holder lost its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// No renewal was acknowledged before the local deadline: the holder stepped down.
    Deadline,
    /// A renewal found the lease held by another node (or granted again with a new token).
    Superseded,
    /// The holder gave it up ([`LeaseHolder::release`], e.g. on SIGTERM).
    Released,
}

/// A running holder task. Dropping it stops the task (without releasing the lease; it
/// then simply expires); [`LeaseHolder::release`] gives the lease up at once.
pub struct LeaseHolder {
    held: watch::Receiver<Option<u64>>,
    held_tx: Arc<watch::Sender<Option<u64>>>,
    history: Arc<Mutex<Vec<HolderEvent>>>,
    task: AbortHandle,
    node: LeaseNode,
    lease: String,
}

impl LeaseHolder {
    /// Starts contending for `cfg.lease` on `node`.
    pub fn spawn(node: LeaseNode, cfg: HolderConfig) -> LeaseHolder {
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let history = Arc::new(Mutex::new(Vec::new()));
        let lease = cfg.lease.clone();
        let task = tokio::spawn(run(node.clone(), cfg, Arc::clone(&tx), Arc::clone(&history))).abort_handle();
        LeaseHolder { held: rx, held_tx: tx, history, task, node, lease }
    }

    /// The token held right now, `None` when not holding. Act on the lease only while this
    /// is `Some`, and pass the token to every fenced write.
    pub fn held(&self) -> watch::Receiver<Option<u64>> {
        self.held.clone()
    }

    /// Everything that happened so far.
    pub fn history(&self) -> Vec<HolderEvent> {
        lock(&self.history).clone()
    }

    /// Stops contending and releases the lease if held.
    pub async fn stop(self) {
        self.release().await;
    }

    /// Stops contending and, if the lease is held, gives it up through the log (a
    /// `Release` with its token), so a waiting contender can take it at once instead of
    /// after the TTL. `held` turns `None` (and a `Lost { reason: Released }` event is
    /// recorded) before the release is sent: nothing acts on the lease once it is
    /// proposed. Returns the token released, if any.
    pub async fn release(&self) -> Option<u64> {
        self.task.abort();
        let token = self.held_tx.send_replace(None)?;
        let at = Instant::now();
        lock(&self.history).push(HolderEvent::Lost { token, at, deadline: at, reason: LostReason::Released });
        match self.node.release(&self.lease, token).await {
            Ok(()) => tracing::info!(lease = %self.lease, token, "lease released"),
            Err(e) => {
                tracing::warn!(lease = %self.lease, token, error = %e, "lease release failed; it expires instead")
            }
        }
        Some(token)
    }
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Renewal {
    Renewed { sent: Instant },
    Regranted { token: u64, sent: Instant },
    Refused,
}

async fn run(
    node: LeaseNode,
    cfg: HolderConfig,
    held: Arc<watch::Sender<Option<u64>>>,
    history: Arc<Mutex<Vec<HolderEvent>>>,
) {
    let metrics = Arc::clone(&node.inner.metrics);
    let count = |result: &str| metrics.renewals.with_label_values(&[cfg.lease.as_str(), result]).inc();
    let record = |event: HolderEvent| {
        let mut h = lock(&history);
        if let HolderEvent::Renewed { token, .. } = &event {
            tracing::debug!(lease = %cfg.lease, event = ?event, "lease holder");
            // A holder renews every TTL/3 for as long as it runs: keep the first and the
            // latest renewal of a run, so the history grows with hand-overs, not with time.
            let tail_renewed =
                |e: Option<&HolderEvent>| matches!(e, Some(HolderEvent::Renewed { token: t, .. }) if t == token);
            let n = h.len();
            if n >= 2 && tail_renewed(h.last()) && tail_renewed(h.get(n - 2)) {
                h[n - 1] = event;
                return;
            }
        } else {
            tracing::info!(lease = %cfg.lease, event = ?event, "lease holder");
        }
        h.push(event);
    };
    let local_ttl = cfg.ttl.saturating_sub(cfg.margin);
    // (token, local deadline, when the last acknowledged request was sent)
    let mut holding: Option<(u64, Instant, Instant)> = None;
    loop {
        match holding {
            None => {
                let sent = Instant::now();
                match node.acquire(&cfg.lease, cfg.ttl).await {
                    Ok(token) => {
                        count("acquired");
                        let deadline = sent + local_ttl;
                        let at = Instant::now();
                        if at < deadline {
                            record(HolderEvent::Acquired { token, sent, at });
                            held.send_replace(Some(token));
                            holding = Some((token, deadline, sent));
                        }
                        // Otherwise the grant came too late to use: renew at once.
                    }
                    Err(LeaseError::Refused { token, .. }) => {
                        count("refused");
                        // Ask again as soon as this node's state machine shows the lease
                        // vacant (released or revoked at that grant or later), else after
                        // the retry pause.
                        let mut view = node.view();
                        let vacant = view.wait_for(|v| {
                            v.leases.get(&cfg.lease).is_some_and(|l| l.holder.is_none() && l.token >= token)
                        });
                        let _ = tokio::time::timeout(cfg.retry, vacant).await;
                    }
                    Err(LeaseError::Shutdown) => return,
                    Err(e) => {
                        count("error");
                        tracing::debug!(lease = %cfg.lease, error = %e, "lease acquire failed");
                        tokio::time::sleep(cfg.retry.min(Duration::from_millis(200))).await;
                    }
                }
            }
            Some((token, deadline, last_sent)) => {
                tokio::time::sleep_until((last_sent + cfg.renew_every).into()).await;
                let outcome = tokio::select! {
                    r = renew(&node, &cfg, token, &count) => Some(r),
                    _ = tokio::time::sleep_until(deadline.into()) => None,
                };
                let at = Instant::now();
                match outcome {
                    Some(Renewal::Renewed { sent }) => {
                        record(HolderEvent::Renewed { token, sent, at });
                        holding = Some((token, sent + local_ttl, sent));
                    }
                    Some(Renewal::Regranted { token: new, sent }) => {
                        record(HolderEvent::Lost { token, at, deadline, reason: LostReason::Superseded });
                        record(HolderEvent::Acquired { token: new, sent, at });
                        held.send_replace(Some(new));
                        holding = Some((new, sent + local_ttl, sent));
                    }
                    Some(Renewal::Refused) => {
                        record(HolderEvent::Lost { token, at, deadline, reason: LostReason::Superseded });
                        held.send_replace(None);
                        holding = None;
                    }
                    None => {
                        // History and metrics first (a push and an increment), so whoever
                        // sees `held` turn `None` also sees why.
                        record(HolderEvent::Lost { token, at, deadline, reason: LostReason::Deadline });
                        metrics.stepdowns.with_label_values(&[cfg.lease.as_str()]).inc();
                        held.send_replace(None);
                        holding = None;
                    }
                }
            }
        }
    }
}

/// Renews until acknowledged or refused; the caller bounds it by the deadline.
async fn renew(node: &LeaseNode, cfg: &HolderConfig, token: u64, count: &impl Fn(&str)) -> Renewal {
    loop {
        let sent = Instant::now();
        match node.acquire(&cfg.lease, cfg.ttl).await {
            Ok(t) if t == token => {
                count("renewed");
                return Renewal::Renewed { sent };
            }
            Ok(t) => {
                count("acquired");
                return Renewal::Regranted { token: t, sent };
            }
            Err(LeaseError::Refused { .. }) => {
                count("refused");
                return Renewal::Refused;
            }
            Err(e) => {
                count("error");
                tracing::debug!(lease = %cfg.lease, error = %e, "lease renewal failed; retrying");
                tokio::time::sleep(cfg.renew_every / 4).await;
            }
        }
    }
}
