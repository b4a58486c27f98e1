//! WARP egress in the plane: the monitor started from `[warp]`, its verdicts published in
//! node state, instances that need an egress routed only to nodes whose egress is up,
//! and repeated 403s turned into egress hints.
//!
//! Routing rule, per service with instances needing an egress (`egress = "warp"` on an
//! `[[instances]]`, or the `constellation.egress=warp` label on a container):
//! - instances on nodes whose named gateway is up (as the node itself reports it, in its
//!   gossiped state) are servers; the others are left out;
//! - when none is up, the service either keeps all of them (`egress_fallback = "all"`,
//!   like a panic threshold: better the node's own address than nothing) or keeps none
//!   and answers 503 (`"refuse"`, the default: a WARP service must not leak the node's
//!   IP). If instances disagree, `refuse` wins.
//!
//! Instances without an egress need in the same service are never affected.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use constellation_cluster::{ClusterView, EgressNeed, EgressRecord};
use constellation_warp::{GatewayStatus, WarpConfig, WarpMetrics, WarpMonitor};
use serde::{Deserialize, Serialize};

use crate::builder::ClusterInstance;

/// Container label naming the egress gateway a container's traffic needs.
pub const LABEL_EGRESS: &str = "constellation.egress";
/// Container label choosing `all` or `refuse` (default) when no egress is up.
pub const LABEL_EGRESS_FALLBACK: &str = "constellation.egress.fallback";
/// How long an egress hint lasts.
pub const EGRESS_HINT_TTL: Duration = Duration::from_secs(60);
/// 403s from one node's egress-bound instances within [`FORBIDDEN_WINDOW`] that raise a
/// hint.
pub const FORBIDDEN_THRESHOLD: usize = 3;
/// The window [`FORBIDDEN_THRESHOLD`] is counted in.
pub const FORBIDDEN_WINDOW: Duration = Duration::from_secs(30);

/// `all` or `refuse`: what a service does when no instance has its egress up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressFallback {
    /// Answer 503 (the default).
    #[default]
    Refuse,
    /// Route to every instance anyway.
    All,
}

/// The egress need a container's labels express, if any.
pub fn need_from_labels(labels: &BTreeMap<String, String>) -> Option<EgressNeed> {
    let gateway = labels.get(LABEL_EGRESS).map(|v| v.trim()).filter(|v| !v.is_empty())?;
    let fallback_all = labels.get(LABEL_EGRESS_FALLBACK).is_some_and(|v| v.trim().eq_ignore_ascii_case("all"));
    Some(EgressNeed { gateway: gateway.to_string(), fallback_all })
}

/// The monitor's statuses as gossiped records (latency and counters left out, so a
/// node's state changes only when a verdict, IP or error does).
pub fn records(statuses: &[GatewayStatus]) -> Vec<EgressRecord> {
    statuses
        .iter()
        .map(|s| EgressRecord {
            gateway: s.name.clone(),
            up: s.up,
            warp: s.warp.map(|w| w.as_str().to_string()).unwrap_or_default(),
            ip: s.ip,
            error: if s.up { None } else { s.last_error.clone() },
        })
        .collect()
}

/// Whether `records` (one node's) have `gateway` up: a gateway of that name, or for
/// `warp` any gateway when none has that name.
pub fn egress_up(records: &[EgressRecord], gateway: &str) -> bool {
    match records.iter().find(|r| r.gateway == gateway) {
        Some(r) => r.up,
        None => gateway == "warp" && records.iter().any(|r| r.up),
    }
}

/// How one egress-bound service is routed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRouteStatus {
    /// Service name.
    pub service: String,
    /// `egress` (only nodes with the egress up), `fallback_all` (none up: all
    /// instances) or `refused` (none up: 503).
    pub mode: String,
    /// Nodes whose instances are servers through their egress.
    pub up: Vec<String>,
    /// Nodes whose instances are left out, with why.
    pub down: Vec<String>,
}

/// Apply the routing rule (module docs) to `instances`, given each node's records;
/// returns how each egress-bound service is routed, sorted by service.
pub fn route_by_egress<'a>(
    instances: &mut Vec<ClusterInstance>,
    records_of: impl Fn(&str) -> Option<&'a [EgressRecord]>,
) -> Vec<EgressRouteStatus> {
    let mut services: BTreeMap<String, (Vec<String>, Vec<String>, bool)> = BTreeMap::new();
    let mut ok = vec![true; instances.len()];
    for (i, inst) in instances.iter().enumerate() {
        let Some(need) = &inst.egress else { continue };
        let entry = services.entry(inst.service.clone()).or_insert((Vec::new(), Vec::new(), true));
        let up = records_of(&inst.node).is_some_and(|r| egress_up(r, &need.gateway));
        ok[i] = up;
        let list = if up { &mut entry.0 } else { &mut entry.1 };
        if !list.contains(&inst.node) {
            list.push(inst.node.clone());
        }
        entry.2 &= need.fallback_all;
    }
    let mut out = Vec::new();
    for (service, (up, down, all)) in services {
        let mode = if !up.is_empty() {
            "egress"
        } else if all {
            "fallback_all"
        } else {
            "refused"
        };
        for (i, inst) in instances.iter_mut().enumerate() {
            if inst.service == service && inst.egress.is_some() && !ok[i] && mode != "fallback_all" {
                inst.withheld = true;
            }
        }
        out.push(EgressRouteStatus { service, mode: mode.into(), up, down });
    }
    // Withheld instances stay in the list only to keep their service (and its 503) when
    // nothing else is left of it.
    let live: std::collections::BTreeSet<String> =
        instances.iter().filter(|i| !i.withheld).map(|i| i.service.clone()).collect();
    let mut seen = std::collections::BTreeSet::new();
    instances.retain(|i| !i.withheld || (!live.contains(&i.service) && seen.insert(i.service.clone())));
    out
}

/// Every node's records from the cluster view, by node name.
pub fn records_by_node(view: &ClusterView) -> BTreeMap<String, Vec<EgressRecord>> {
    view.alive_states().filter(|s| !s.egress.is_empty()).map(|s| (s.name.clone(), s.egress.clone())).collect()
}

/// Counts 403s from egress-bound instances per node and says when to raise a hint.
#[derive(Debug, Default)]
pub struct ForbiddenTracker {
    seen: HashMap<String, VecDeque<Instant>>,
    raised: HashMap<String, Instant>,
}

impl ForbiddenTracker {
    /// Record a 403 from `node` at `now`; true when a hint should be raised (the
    /// threshold is reached and no hint from here is still fresh for that node).
    pub fn record(&mut self, node: &str, now: Instant) -> bool {
        let q = self.seen.entry(node.to_string()).or_default();
        q.push_back(now);
        while q.front().is_some_and(|t| now.duration_since(*t) > FORBIDDEN_WINDOW) {
            q.pop_front();
        }
        if q.len() < FORBIDDEN_THRESHOLD {
            return false;
        }
        // Renew at half the TTL while the 403s go on.
        if self.raised.get(node).is_some_and(|t| now.duration_since(*t) < EGRESS_HINT_TTL / 2) {
            return false;
        }
        self.raised.insert(node.to_string(), now);
        q.clear();
        true
    }
}

/// Which node runs each egress-bound upstream (by URL), for the 403 tracker and hints.
pub type EgressOwners = Arc<std::sync::Mutex<BTreeMap<String, String>>>;

/// The `(service, url) → node` facts of `instances` that need an egress.
pub fn owners_of(instances: &[ClusterInstance]) -> BTreeMap<String, String> {
    instances.iter().filter(|i| i.egress.is_some()).map(|i| (i.url.clone(), i.node.clone())).collect()
}

/// Start the monitor when `[warp]` has gateways.
pub async fn start(
    cfg: &WarpConfig,
    registry: &prometheus::Registry,
    node_ip: tokio::sync::watch::Receiver<Option<std::net::IpAddr>>,
) -> Option<(WarpMonitor, WarpMetrics)> {
    if cfg.is_empty() {
        return None;
    }
    let metrics = match WarpMetrics::register(registry) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "WARP metrics cannot be registered; they are not exported");
            WarpMetrics::unregistered()
        }
    };
    tracing::info!(gateways = cfg.gateways.len(), "WARP egress monitor started");
    Some((WarpMonitor::start(cfg, node_ip, metrics.clone()).await, metrics))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(gateway: &str, up: bool) -> EgressRecord {
        EgressRecord { gateway: gateway.into(), up, warp: "on".into(), ip: None, error: None }
    }

    fn inst(node: &str, service: &str, egress: Option<bool>) -> ClusterInstance {
        ClusterInstance {
            egress: egress.map(|all| EgressNeed { gateway: "warp".into(), fallback_all: all }),
            ..ClusterInstance::new(node, service, &format!("http://{node}.{service}:80"))
        }
    }

    #[test]
    fn warp_matches_its_name_or_any_gateway() {
        assert!(egress_up(&[rec("warp", true)], "warp"));
        assert!(!egress_up(&[rec("warp", false), rec("other", true)], "warp"), "the named one decides");
        assert!(egress_up(&[rec("nat", true)], "warp"), "no gateway named warp: any");
        assert!(!egress_up(&[rec("nat", true)], "socks"));
        assert!(!egress_up(&[], "warp"));
    }

    #[test]
    fn routing_keeps_up_nodes_then_falls_back_or_refuses() {
        let records: BTreeMap<String, Vec<EgressRecord>> =
            [("a".to_string(), vec![rec("warp", true)]), ("b".to_string(), vec![rec("warp", false)])].into();
        let of = |n: &str| records.get(n).map(Vec::as_slice);
        let mut list = vec![inst("a", "s", Some(false)), inst("b", "s", Some(false)), inst("b", "plain", None)];
        let st = route_by_egress(&mut list, of);
        assert_eq!(
            list.iter().map(|i| (i.node.as_str(), i.service.as_str())).collect::<Vec<_>>(),
            [("a", "s"), ("b", "plain")]
        );
        assert_eq!(
            st,
            [EgressRouteStatus {
                service: "s".into(),
                mode: "egress".into(),
                up: vec!["a".into()],
                down: vec!["b".into()]
            }]
        );

        // Only b: refused keeps one withheld placeholder, fallback keeps all.
        let mut list = vec![inst("b", "s", Some(false)), inst("c", "s", Some(false))];
        let st = route_by_egress(&mut list, of);
        assert_eq!(st[0].mode, "refused");
        assert_eq!(list.len(), 1);
        assert!(list[0].withheld);
        let mut list = vec![inst("b", "s", Some(true)), inst("c", "s", Some(true))];
        assert_eq!(route_by_egress(&mut list, of)[0].mode, "fallback_all");
        assert!(list.iter().all(|i| !i.withheld) && list.len() == 2);
        // Disagreement: refuse wins.
        let mut list = vec![inst("b", "s", Some(true)), inst("c", "s", Some(false))];
        assert_eq!(route_by_egress(&mut list, of)[0].mode, "refused");
    }

    #[test]
    fn three_403s_raise_one_hint_per_half_ttl() {
        let mut t = ForbiddenTracker::default();
        let t0 = Instant::now();
        assert!(!t.record("b", t0));
        assert!(!t.record("b", t0 + Duration::from_secs(1)));
        assert!(t.record("b", t0 + Duration::from_secs(2)));
        for i in 3..6 {
            assert!(!t.record("b", t0 + Duration::from_secs(i)), "fresh hint: no repeat");
        }
        assert!(!t.record("a", t0), "per node");
        // Old 403s fall out of the window.
        assert!(!t.record("c", t0));
        assert!(!t.record("c", t0 + Duration::from_secs(31)));
        assert!(!t.record("c", t0 + Duration::from_secs(32)));
        assert!(t.record("c", t0 + Duration::from_secs(33)));
        // Past half the TTL, with 403s still coming, the hint is renewed.
        assert!(!t.record("b", t0 + Duration::from_secs(40)));
        assert!(!t.record("b", t0 + Duration::from_secs(41)));
        assert!(t.record("b", t0 + Duration::from_secs(42)));
    }

    #[test]
    fn labels_give_the_need() {
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(need_from_labels(&l(&[])), None);
        assert_eq!(
            need_from_labels(&l(&[(LABEL_EGRESS, "warp")])),
            Some(EgressNeed { gateway: "warp".into(), fallback_all: false })
        );
        assert!(need_from_labels(&l(&[(LABEL_EGRESS, "warp"), (LABEL_EGRESS_FALLBACK, "all")])).unwrap().fallback_all);
    }
}
