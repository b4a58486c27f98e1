//! The DNS controller loop run by every node with a `[dns]` section: while this node
//! holds the `dns-writer` lease it keeps Cloudflare pointed at the `lb-leader` holder
//! (apex and wildcard) and at every node (per-node records), checking its fencing token
//! right before each write batch. Otherwise it stands by.
//!
//! The controller knows neither gossip nor Raft: it sees the cluster as a [`Topology`]
//! (who is the front door, which nodes exist) and the lease as a [`Fence`].

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{desired, Debouncer, GraceTracker, NodeStatus, Outcome, Plan, Reconciler};

/// Pause after a failed reconcile before the next attempt (the desired state is kept
/// and retried until it holds).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// What the controller is doing, for `/api/v1/status` and `constellation dns plan`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// `writer` while this node holds the DNS-writer lease, else `standby`.
    pub role: String,
    /// The zone.
    pub zone: String,
    /// No API token: plans are computed and shown, nothing is written.
    pub dry_run: bool,
    /// The front door's public IP the records follow, once settled.
    pub front_door_ip: Option<String>,
    /// The most recent reconcile.
    pub last: DnsLast,
}

/// The outcome of the most recent reconcile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DnsLast {
    /// Nothing was attempted yet (or this node never held the lease).
    None,
    /// The records were reconciled.
    Applied {
        /// Records created.
        created: usize,
        /// Records updated in place.
        updated: usize,
        /// Records deleted.
        deleted: usize,
        /// Writes that put back a record changed outside Constellation.
        drift_corrections: usize,
        /// Records left alone because another owner's marker is on them.
        skipped_unowned: usize,
        /// Unix time, seconds.
        at_unix: u64,
        /// The DNS-writer token the writes were fenced with.
        token: u64,
    },
    /// The fence said the lease was lost: the rest of the batch was dropped.
    Deposed {
        /// Writes not made.
        dropped_writes: usize,
        /// Unix time, seconds.
        at_unix: u64,
    },
    /// Dry run: the plan that would have been applied.
    DryRun {
        /// The plan.
        plan: PlanSummary,
        /// Unix time, seconds.
        at_unix: u64,
    },
    /// The reconcile failed; it is retried.
    Error {
        /// What went wrong (never the token).
        error: String,
        /// Unix time, seconds.
        at_unix: u64,
    },
}

/// A plan as one line per record (`name type content`, updates `... old -> new`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PlanSummary {
    /// Records to create.
    pub create: Vec<String>,
    /// Records to update.
    pub update: Vec<String>,
    /// Records to delete.
    pub delete: Vec<String>,
    /// Records another owner holds.
    pub skipped_unowned: Vec<String>,
}

impl PlanSummary {
    fn of(p: &Plan) -> PlanSummary {
        let line = |r: &super::Record| format!("{} {} {}", r.name, r.kind, r.content);
        PlanSummary {
            create: p.create.iter().map(line).collect(),
            update: p
                .update
                .iter()
                .map(|u| format!("{} {} {} -> {}", u.to.name, u.to.kind, u.from.content, u.to.content))
                .collect(),
            delete: p.delete.iter().map(|r| format!("{} {} {}", r.name, r.kind, r.content)).collect(),
            skipped_unowned: p.skipped_unowned.iter().map(|r| format!("{} {} {}", r.name, r.kind, r.content)).collect(),
        }
    }
}

/// The fencing check the controller asks right before writing: does this node still hold
/// the DNS-writer lease with `token`? Implemented over the lease group's linearizable read.
pub trait Fence: Send + Sync + 'static {
    /// `true` only if the lease is still held with exactly this token.
    fn check(&self, token: u64) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

/// What the DNS records are computed from: the front door's public IP (the holder of the
/// front-door lease) and every known node with its public IP and liveness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Public IP of the front door, `None` while the lease is vacant or its IP unknown.
    pub front_door: Option<IpAddr>,
    /// Every member the cluster knows of.
    pub nodes: Vec<NodeStatus>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What the last reconcile was computed from: front-door IP and (node, IP, keep).
type Snapshot = (Option<IpAddr>, Vec<(String, Option<IpAddr>, bool)>);

/// Inputs of the controller.
pub struct Inputs {
    /// The fencing check for the DNS-writer lease.
    pub fence: Arc<dyn Fence>,
    /// `Some(token)` while this node holds the dns-writer lease.
    pub dns_held: watch::Receiver<Option<u64>>,
    /// The front door and the nodes.
    pub topology: watch::Receiver<Topology>,
    /// Where the status goes (`dns` in `/api/v1/status`).
    pub status: Arc<ArcSwapOption<DnsStatus>>,
}

/// Run until the task is aborted.
pub async fn run(reconciler: Reconciler, mut inp: Inputs) {
    let cfg = reconciler.config().clone();
    let mut grace = GraceTracker::new(cfg.node_grace());
    let mut settle: Debouncer<Option<IpAddr>> = Debouncer::new(cfg.leader_settle());
    let mut next_run = Instant::now();
    let mut last = DnsLast::None;
    let mut last_inputs: Option<Snapshot> = None;
    loop {
        let now = Instant::now();
        let (leader_ip, nodes) = {
            let topo = inp.topology.borrow_and_update();
            (topo.front_door, grace.observe(now, &topo.nodes))
        };
        let changed_leader = settle.observe(leader_ip, now).is_some();
        let applied_leader = settle.applied().cloned().flatten();
        let inputs = (applied_leader, nodes.iter().map(|n| (n.name.clone(), n.ip, n.keep)).collect::<Vec<_>>());
        let inputs_changed = last_inputs.as_ref() != Some(&inputs);
        let token = *inp.dns_held.borrow_and_update();
        let role = if token.is_some() { "writer" } else { "standby" };
        if let Some(token) = token {
            if changed_leader || inputs_changed || now >= next_run {
                last_inputs = Some(inputs);
                let want = desired(&cfg, applied_leader, &nodes);
                let held = inp.dns_held.clone();
                let remote = inp.fence.clone();
                let fence = move || {
                    let remote = remote.clone();
                    // The local holder gives up at its own deadline before the leader
                    // could re-grant; check that first (no network), then the
                    // linearizable read through the Raft leader.
                    let still_held = *held.borrow() == Some(token);
                    async move { still_held && remote.check(token).await }
                };
                next_run = Instant::now() + cfg.reconcile_interval();
                last = match reconciler.reconcile(&want, fence).await {
                    Ok(Outcome::Applied(a)) => DnsLast::Applied {
                        created: a.created,
                        updated: a.updated,
                        deleted: a.deleted,
                        drift_corrections: a.drift_corrections,
                        skipped_unowned: a.skipped_unowned,
                        at_unix: unix_now(),
                        token,
                    },
                    Ok(Outcome::Deposed { dropped }) => {
                        DnsLast::Deposed { dropped_writes: dropped, at_unix: unix_now() }
                    }
                    Ok(Outcome::DryRun(plan)) => {
                        tracing::info!(writes = plan.writes(), plan = ?plan, "DNS dry run (no API token): nothing written");
                        DnsLast::DryRun { plan: PlanSummary::of(&plan), at_unix: unix_now() }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "DNS reconcile failed; retrying");
                        next_run = Instant::now() + RETRY_AFTER_ERROR.min(cfg.reconcile_interval());
                        last_inputs = None;
                        DnsLast::Error { error: e.to_string(), at_unix: unix_now() }
                    }
                };
            }
        }
        inp.status.store(Some(Arc::new(DnsStatus {
            role: role.to_string(),
            zone: cfg.zone.clone(),
            dry_run: reconciler.is_dry_run(),
            front_door_ip: applied_leader.map(|ip| ip.to_string()),
            last: last.clone(),
        })));
        let wake = settle.deadline().map(|d| d.min(next_run)).unwrap_or(next_run);
        tokio::select! {
            r = inp.dns_held.changed() => if r.is_err() { return },
            r = inp.topology.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(20)).into()) => {}
        }
    }
}
