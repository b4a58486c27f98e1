//! The DNS controller loop run by every node with a `[dns]` section: while this node
//! holds the `dns-writer` lease it keeps Cloudflare pointed at the `lb-leader` holder
//! (apex and wildcard) and at every node (per-node records), checking its fencing token
//! right before each write batch. Otherwise it stands by.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{desired, Debouncer, GraceTracker, NodeStatus, Outcome, Plan, Reconciler};
use crate::cluster::ClusterView;
use crate::raft::{LeaseNode, LeaseView};

/// Pause after a failed reconcile before the next attempt (the desired state is kept
/// and retried until it holds).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

fn plan_json(p: &Plan) -> Value {
    json!({
        "create": p.create.iter().map(|r| format!("{} {} {}", r.name, r.kind, r.content)).collect::<Vec<_>>(),
        "update": p.update.iter().map(|u| format!("{} {} {} -> {}", u.to.name, u.to.kind, u.from.content, u.to.content)).collect::<Vec<_>>(),
        "delete": p.delete.iter().map(|r| format!("{} {} {}", r.name, r.kind, r.content)).collect::<Vec<_>>(),
        "skipped_unowned": p.skipped_unowned.iter().map(|r| format!("{} {} {}", r.name, r.kind, r.content)).collect::<Vec<_>>(),
    })
}

/// What the last reconcile was computed from: front-door IP and (node, IP, keep).
type Snapshot = (Option<IpAddr>, Vec<(String, Option<IpAddr>, bool)>);

/// Inputs of the controller.
pub struct Inputs {
    /// Lease node, for the fencing check.
    pub lease_node: LeaseNode,
    /// `Some(token)` while this node holds the dns-writer lease.
    pub dns_held: watch::Receiver<Option<u64>>,
    /// Lease view (who holds lb-leader).
    pub leases: watch::Receiver<LeaseView>,
    /// Cluster view (members, public IPs).
    pub cluster: watch::Receiver<ClusterView>,
    /// Name of the front-door lease.
    pub lb_lease: String,
    /// Name of the DNS-writer lease.
    pub dns_lease: String,
    /// Where the status JSON goes (`dns` in `/api/v1/status`).
    pub status: Arc<ArcSwap<Value>>,
}

/// Run until the task is aborted.
pub async fn run(reconciler: Reconciler, mut inp: Inputs) {
    let cfg = reconciler.config().clone();
    let mut grace = GraceTracker::new(cfg.node_grace());
    let mut settle: Debouncer<Option<IpAddr>> = Debouncer::new(cfg.leader_settle());
    let mut next_run = Instant::now();
    let mut last: Value = json!({"result": "none"});
    let mut last_inputs: Option<Snapshot> = None;
    loop {
        let now = Instant::now();
        let (leader_ip, nodes) = {
            let lv = inp.leases.borrow_and_update();
            let cv = inp.cluster.borrow_and_update();
            let holder = lv.leases.get(&inp.lb_lease).and_then(|l| l.holder.clone());
            let leader_ip = holder.as_ref().and_then(|h| cv.states.get(h)).and_then(|s| s.public_ip);
            let statuses: Vec<NodeStatus> = cv
                .members
                .iter()
                .map(|m| NodeStatus {
                    name: m.name.clone(),
                    ip: cv.states.get(&m.name).and_then(|s| s.public_ip),
                    alive: m.state.is_up(),
                })
                .collect();
            (leader_ip, grace.observe(now, &statuses))
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
                let node = inp.lease_node.clone();
                let lease = inp.dns_lease.clone();
                let held = inp.dns_held.clone();
                let fence = move || {
                    let node = node.clone();
                    let lease = lease.clone();
                    // The local holder gives up at its own deadline before the leader
                    // could re-grant; check that first (no network), then the
                    // linearizable read through the Raft leader.
                    let still_held = *held.borrow() == Some(token);
                    async move { still_held && node.check(&lease, token).await.unwrap_or(false) }
                };
                next_run = Instant::now() + cfg.reconcile_interval();
                last = match reconciler.reconcile(&want, fence).await {
                    Ok(Outcome::Applied(a)) => json!({
                        "result": "applied", "created": a.created, "updated": a.updated, "deleted": a.deleted,
                        "drift_corrections": a.drift_corrections, "skipped_unowned": a.skipped_unowned,
                        "at_unix": crate::admin::unix_now(), "token": token,
                    }),
                    Ok(Outcome::Deposed { dropped }) => {
                        json!({"result": "deposed", "dropped_writes": dropped, "at_unix": crate::admin::unix_now()})
                    }
                    Ok(Outcome::DryRun(plan)) => {
                        tracing::info!(writes = plan.writes(), plan = ?plan, "DNS dry run (no API token): nothing written");
                        json!({"result": "dry_run", "plan": plan_json(&plan), "at_unix": crate::admin::unix_now()})
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "DNS reconcile failed; retrying");
                        next_run = Instant::now() + RETRY_AFTER_ERROR.min(cfg.reconcile_interval());
                        last_inputs = None;
                        json!({"result": "error", "error": e.to_string(), "at_unix": crate::admin::unix_now()})
                    }
                };
            }
        }
        inp.status.store(Arc::new(json!({
            "role": role,
            "zone": cfg.zone,
            "dry_run": reconciler.is_dry_run(),
            "front_door_ip": applied_leader.map(|ip| ip.to_string()),
            "last": last,
        })));
        let wake = settle.deadline().map(|d| d.min(next_run)).unwrap_or(next_run);
        tokio::select! {
            r = inp.dns_held.changed() => if r.is_err() { return },
            r = inp.leases.changed() => if r.is_err() { return },
            r = inp.cluster.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(20)).into()) => {}
        }
    }
}
