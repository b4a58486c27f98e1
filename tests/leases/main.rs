//! End-to-end tests of the Raft lease group: real `constellation agent` processes on
//! loopback, voters of one openraft group, contending for `lb-leader` and `dns-writer`.
//!
//! [`LeaseCluster`] writes one config per node (gossip, cluster port `PC`, Raft on
//! `PC + 1`, tight Raft timings), starts the agents, reads `/api/v1/status` (`leases`,
//! `raft`) and each node's `lease-history.jsonl`, and injects faults: `SIGKILL` and
//! restart on the same data directory, `SIGSTOP`/`SIGCONT`, and iptables partitions of
//! one node's Raft traffic. [`check_history`] audits the history files of all nodes.
//!
//! Partitions need root and iptables: an isolatable cluster runs every agent under its
//! own uid, and the testkit's [`Partition`] drops, in both directions, what each side's
//! uid sends to the other side's Raft port (see `constellation_testkit::Partition`).

#![allow(clippy::unwrap_used)]

/// The shared kit.
mod support {
    pub use constellation_testkit::*;
}

mod t01_three_agree;
mod t02_five_agree;
mod t03_kill_holder;
mod t04_minority_partition;
mod t05_random_faults;
mod t06_wrong_key;
mod t07_revoke_after_renewal;
mod t08_history_checker;
mod t09_sigterm_holder;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::*;

/// Log filter of the agents: lease holders and Raft at debug, so a failing test's log
/// shows why.
const LOG_FILTER: &str = "info,constellation_lease=debug,openraft=warn,pingora_core=warn,pingora_proxy=warn";
/// The two leases every node contends for (roles `lb` and `dns`).
pub const LEASES: [&str; 2] = ["lb-leader", "dns-writer"];
/// The lease the fail-over tests follow.
pub const LB: &str = "lb-leader";

/// Milliseconds, for printing nanosecond differences.
pub fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// How to build a [`LeaseCluster`].
#[derive(Debug, Clone)]
pub struct Spec {
    /// Number of nodes, all voters.
    pub nodes: usize,
    /// Raft timings of every node.
    pub timings: Timings,
    /// Run every agent under its own uid, so [`Partition`] can cut it off (needs root).
    pub isolatable: bool,
    /// (node index, key file name) of nodes that use another key than `cluster.key`.
    pub keys: Vec<(usize, String)>,
    /// Per node (index − 1): the URL of an `app` instance it announces (none if absent).
    pub apps: Vec<String>,
    /// Appended to every node's config (e.g. a `[proxy]` section).
    pub extra_toml: String,
}

impl Spec {
    /// `nodes` voters with [`Timings::FAST`], one key, not isolatable.
    pub fn new(nodes: usize) -> Spec {
        Spec {
            nodes,
            timings: Timings::FAST,
            isolatable: false,
            keys: Vec::new(),
            apps: Vec::new(),
            extra_toml: String::new(),
        }
    }
}

/// N voters of one lease group, all started (a [`Fleet`] with lease waits).
pub struct LeaseCluster {
    fleet: Fleet,
    /// Raft timings of every node.
    pub timings: Timings,
}

constellation_testkit::wraps_fleet!(LeaseCluster);

impl LeaseCluster {
    /// Writes the configs, starts every agent at once and waits until each answers
    /// `/healthz` (not for the leases: see [`LeaseCluster::wait_settled`]).
    pub async fn start(spec: Spec) -> LeaseCluster {
        let nodes = (1..=spec.nodes)
            .map(|i| NodeSpec {
                key_file: spec.keys.iter().find(|(k, _)| *k == i).map(|(_, f)| f.clone()),
                instances: spec.apps.get(i - 1).map(|url| ("app".to_string(), url.clone())).into_iter().collect(),
                extra_toml: spec.extra_toml.clone(),
                ..NodeSpec::default()
            })
            .collect();
        let mut fleet = FleetSpec::new("leases", nodes);
        fleet.roles = vec!["lb".into(), "dns".into()];
        fleet.raft = Some(spec.timings);
        fleet.push_pull_ms = Some(1000);
        fleet.isolatable = spec.isolatable;
        fleet.log_filter = LOG_FILTER.into();
        let mut cluster = LeaseCluster { fleet: Fleet::new(fleet), timings: spec.timings };
        cluster.start_all(Duration::from_secs(30)).await;
        cluster
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        self.running_indexes()
    }

    /// What `observers` agree on right now: one Raft leader, and per lease one holder and
    /// token; `held_here` is true on exactly the holder (when it is an observer) and on
    /// no other observer.
    pub async fn agreement(&self, observers: &[usize]) -> Result<Settled, String> {
        self.fleet.agreement(observers, &LEASES, true).await
    }

    /// Waits until `observers` agree (see [`LeaseCluster::agreement`]) on two polls in a
    /// row with the same answer.
    pub async fn wait_settled(&self, observers: &[usize], limit: Duration) -> (Settled, Duration) {
        self.fleet.wait_settled(observers, &LEASES, true, limit, || self.dump()).await
    }
}

impl Drop for LeaseCluster {
    /// On a failing test, keeps the logs, configs and history files before the scratch
    /// directory goes.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = self.fleet.keep_evidence();
            eprintln!("logs, configs and lease histories of the failed test kept in {}", kept.display());
        }
    }
}

// === history ===

/// A fault the test injected, in history-file time (Unix ns).
#[derive(Debug, Clone)]
pub enum Fault {
    /// `SIGKILL`ed at `at` (taken after the process was reaped), restarted at `restart`.
    #[allow(missing_docs)]
    Kill { node: String, at: i128, restart: i128 },
    /// `SIGSTOP` sent before `from`, `SIGCONT` sent after `to`: the process ran no code in
    /// `[from, to]`.
    #[allow(missing_docs)]
    Pause { node: String, from: i128, to: i128 },
    /// Raft traffic cut in `[from, to]`.
    #[allow(missing_docs)]
    Partition { node: String, from: i128, to: i128 },
}

impl Fault {
    /// The node the fault hit.
    pub fn node(&self) -> &str {
        match self {
            Fault::Kill { node, .. } | Fault::Pause { node, .. } | Fault::Partition { node, .. } => node,
        }
    }
    /// `kill`, `pause` or `partition`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Partition { .. } => "partition",
        }
    }
}

/// How one holding interval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The node recorded `lost`.
    Lost,
    /// The process was killed while holding (no `lost` line).
    Killed,
    /// Still held when the history was read.
    Open,
}

/// One node holding one lease with one token, `[start, end]`.
#[derive(Debug, Clone)]
pub struct Interval {
    /// The holder.
    pub node: String,
    /// Lease name.
    pub lease: String,
    /// Fencing token.
    pub token: u64,
    /// `acquired` time.
    pub start: i128,
    /// `lost` time, kill time, or the audit's `now`.
    pub end: i128,
    /// How it ended.
    pub how: End,
    /// `SIGSTOP` windows inside `[start, end]`: the holder ran no code there.
    pub pauses: Vec<(i128, i128)>,
}

impl Interval {
    /// The parts of `[start, end]` in which the holder's process ran.
    pub fn segments(&self) -> Vec<(i128, i128)> {
        let mut out = Vec::new();
        let mut from = self.start;
        for &(stop, cont) in &self.pauses {
            out.push((from, stop));
            from = cont;
        }
        out.push((from, self.end));
        out
    }

    /// The pause the interval's last segment starts after, when the holder recorded
    /// `lost` at most `eps` after resuming: it was paused across its deadline and
    /// stepped down on waking. Returns the pause.
    pub fn woke_past_deadline(&self, eps: i128) -> Option<(i128, i128)> {
        let last = *self.pauses.last()?;
        (self.how == End::Lost && self.end - last.1 <= eps).then_some(last)
    }

    /// The last instant the holder could act before its deadline: `end`, or the start of
    /// the pause it woke from past its deadline.
    pub fn active_end(&self, eps: i128) -> i128 {
        self.woke_past_deadline(eps).map_or(self.end, |(stop, _)| stop)
    }
}

/// What [`check_history`] found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Every interval, per lease, sorted by start.
    pub intervals: BTreeMap<String, Vec<Interval>>,
    /// `acquired` lines (all nodes, all leases).
    pub acquisitions: usize,
    /// Acquisitions of the token the same node held just before (a restarted node, or a
    /// renewal the leader applied after the holder had given up, found the lease still its
    /// own): nobody else held it in between.
    pub same_token_reacquired: usize,
    /// Hand-overs between different nodes: (lease, from, to, gap ns, how `from` ended).
    /// The gap runs from the last instant `from` could act to `to`'s `acquired`.
    pub handovers: Vec<(String, String, String, i128, End)>,
    /// Holders paused across their deadline while another node took the lease: (lease,
    /// node, ns from `SIGCONT` to its `lost`). In that window its `held` flag still said
    /// "held" although the lease was someone else's (fencing tokens protect writes).
    pub stale_after_resume: Vec<(String, String, i128)>,
    /// Overlaps with the signature of the revoke-after-renewal race (see
    /// `t07_revoke_after_renewal.rs`), when the audit was asked to set them apart: the
    /// earlier holder had just got its own token back (a renewal), and the other node was
    /// granted the lease within the tolerance after that. (lease, earlier, later, overlap ns).
    pub revoke_races: Vec<(String, String, String, i128)>,
    /// Everything that breaks the lease contract.
    pub violations: Vec<String>,
}

impl Audit {
    /// The smallest hand-over gap.
    pub fn min_gap(&self) -> Option<i128> {
        self.handovers.iter().map(|h| h.3).min()
    }
    /// The smallest hand-over gap after an interval that ended `how`.
    pub fn min_gap_of(&self, how: End) -> Option<i128> {
        self.handovers.iter().filter(|h| h.4 == how).map(|h| h.3).min()
    }
    /// The longest [`Audit::stale_after_resume`].
    pub fn max_stale(&self) -> Option<i128> {
        self.stale_after_resume.iter().map(|s| s.2).max()
    }
}

/// Audits the history of every node against the lease contract, given the faults
/// injected and `now` (the end of intervals still open):
///
/// - per node and lease, events follow `acquired renewed* lost` with one token; an
///   interval a killed process left open ends at the kill;
/// - (a) per lease, acquisitions in time order have growing tokens: strictly when the
///   holder changes; equal only when the same node gets back the token it held;
/// - (b) intervals of different nodes never overlap. An interval ends at `lost` (the
///   holder stepped down at its own deadline, which falls before the leader's) or at the
///   kill. A paused (`SIGSTOP`) holder runs no code, so pauses are cut out of its
///   interval; when it wakes past its deadline and records `lost` within `resume_eps`,
///   that short tail is not counted as holding but reported in
///   [`Audit::stale_after_resume`]; a longer tail while someone else holds the lease is a
///   violation.
///
/// `known_race`: `None` counts every overlap as a violation. `Some(window)` sets apart,
/// in [`Audit::revoke_races`], overlaps that match the known revoke-after-renewal product
/// bug exactly: the earlier interval re-acquired the token its node held just before, and
/// the later one (another node, a larger token) starts at most `window` after it.
pub fn check_history(
    events: &[Event],
    faults: &[Fault],
    now: i128,
    resume_eps: Duration,
    known_race: Option<Duration>,
) -> Audit {
    let mut audit = Audit::default();
    let eps = resume_eps.as_nanos() as i128;
    let nodes: BTreeSet<&str> = events.iter().map(|e| e.node.as_str()).collect();
    let leases: BTreeSet<&str> = events.iter().map(|e| e.lease.as_str()).collect();
    for lease in &leases {
        let mut intervals: Vec<Interval> = Vec::new();
        for node in &nodes {
            let kills: Vec<i128> = faults
                .iter()
                .filter_map(|f| match f {
                    Fault::Kill { node: n, at, .. } if n == node => Some(*at),
                    _ => None,
                })
                .collect();
            let pauses: Vec<(i128, i128)> = faults
                .iter()
                .filter_map(|f| match f {
                    Fault::Pause { node: n, from, to } if n == node => Some((*from, *to)),
                    _ => None,
                })
                .collect();
            // (token, start, time of the last event)
            let mut open: Option<(u64, i128, i128)> = None;
            let close = |(token, start, _): (u64, i128, i128), end: i128, how: End| Interval {
                node: node.to_string(),
                lease: lease.to_string(),
                token,
                start,
                end,
                how,
                pauses: pauses.iter().copied().filter(|&(stop, cont)| stop >= start && cont <= end).collect(),
            };
            for e in events.iter().filter(|e| e.node == *node && e.lease == *lease) {
                match e.kind.as_str() {
                    "acquired" => {
                        audit.acquisitions += 1;
                        if let Some(o) = open.take() {
                            match kills.iter().find(|&&k| k >= o.2 && k <= e.t_ns) {
                                Some(&k) => intervals.push(close(o, k, End::Killed)),
                                None => audit.violations.push(format!(
                                    "{node} acquired {lease} token {} at {} while holding token {} (no kill between)",
                                    e.token, e.t_ns, o.0
                                )),
                            }
                        }
                        open = Some((e.token, e.t_ns, e.t_ns));
                    }
                    "renewed" => match &mut open {
                        Some(o) if o.0 == e.token => o.2 = e.t_ns,
                        other => audit.violations.push(format!(
                            "{node} renewed {lease} token {} at {} while holding {other:?}",
                            e.token, e.t_ns
                        )),
                    },
                    "lost" => match open.take() {
                        Some(o) if o.0 == e.token => intervals.push(close(o, e.t_ns, End::Lost)),
                        other => audit.violations.push(format!(
                            "{node} lost {lease} token {} at {} while holding {other:?}",
                            e.token, e.t_ns
                        )),
                    },
                    other => audit.violations.push(format!("{node}: unknown event {other:?}")),
                }
            }
            if let Some(o) = open {
                match kills.iter().find(|&&k| k >= o.2) {
                    Some(&k) => intervals.push(close(o, k, End::Killed)),
                    None => intervals.push(close(o, now, End::Open)),
                }
            }
        }
        intervals.sort_by_key(|i| i.start);
        // (a) tokens.
        for w in intervals.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if b.token > a.token {
                continue;
            }
            if b.token == a.token && b.node == a.node {
                audit.same_token_reacquired += 1;
                continue;
            }
            audit.violations.push(format!(
                "{lease}: token did not grow: {} token {} at {} then {} token {} at {}",
                a.node, a.token, a.start, b.node, b.token, b.start
            ));
        }
        // (b) no overlap between the running parts of different nodes' intervals.
        let counted = |i: &Interval| -> Vec<(i128, i128)> {
            let mut segs = i.segments();
            if i.woke_past_deadline(eps).is_some() {
                segs.pop();
            }
            segs
        };
        for (k, a) in intervals.iter().enumerate() {
            for b in &intervals[k + 1..] {
                if a.node == b.node {
                    continue;
                }
                let reacquired = intervals[..k]
                    .iter()
                    .rev()
                    .find(|p| p.node == a.node)
                    .is_some_and(|p| p.token == a.token && p.end <= a.start);
                let race = known_race.is_some_and(|w| {
                    reacquired && b.token > a.token && b.start >= a.start && b.start - a.start <= w.as_nanos() as i128
                });
                for (a0, a1) in counted(a) {
                    for (b0, b1) in counted(b) {
                        let overlap = a1.min(b1) - a0.max(b0);
                        if overlap > 0 && race {
                            audit.revoke_races.push((lease.to_string(), a.node.clone(), b.node.clone(), overlap));
                        } else if overlap > 0 {
                            audit.violations.push(format!(
                                "{lease}: {} token {} [{}, {}] ({:?}, pauses {:?}) and {} token {} [{}, {}] ({:?}) \
                                 overlap by {:.1} ms",
                                a.node,
                                a.token,
                                a.start,
                                a.end,
                                a.how,
                                a.pauses,
                                b.node,
                                b.token,
                                b.start,
                                b.end,
                                b.how,
                                ms(overlap)
                            ));
                        }
                    }
                }
            }
        }
        for (k, a) in intervals.iter().enumerate() {
            if let Some(b) = intervals.get(k + 1) {
                if b.node != a.node {
                    audit.handovers.push((
                        lease.to_string(),
                        a.node.clone(),
                        b.node.clone(),
                        b.start - a.active_end(eps),
                        a.how,
                    ));
                }
            }
            // A holder that woke up past its deadline while another node held the lease.
            if let Some(&(stop, cont)) = a.pauses.last() {
                let taken = intervals.iter().any(|b| b.node != a.node && b.start >= stop && b.start < a.end);
                if taken && a.how == End::Lost {
                    let stale = a.end - cont;
                    audit.stale_after_resume.push((lease.to_string(), a.node.clone(), stale));
                    if stale > eps {
                        audit.violations.push(format!(
                            "{lease}: {} woke at {cont} and recorded lost only {:.1} ms later, while another node \
                             held the lease",
                            a.node,
                            ms(stale)
                        ));
                    }
                }
            }
        }
        audit.intervals.insert(lease.to_string(), intervals);
    }
    audit
}
