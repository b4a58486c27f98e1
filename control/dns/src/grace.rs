//! Keeps a node's record through short outages: a node down for less than the grace
//! period still counts, with the last IP it announced.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::desired::NodeAddr;

/// One observation of a node from the cluster view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Its public IP as last announced, if any.
    pub ip: Option<IpAddr>,
    /// Alive according to gossip.
    pub alive: bool,
}

#[derive(Clone, Debug)]
struct Seen {
    ip: Option<IpAddr>,
    down_since: Option<Instant>,
}

/// Remembers when each node was last alive. Pure: the caller passes the time.
#[derive(Clone, Debug)]
pub struct GraceTracker {
    grace: Duration,
    nodes: BTreeMap<String, Seen>,
}

impl GraceTracker {
    /// A tracker with the given grace period.
    pub fn new(grace: Duration) -> GraceTracker {
        GraceTracker { grace, nodes: BTreeMap::new() }
    }

    /// Records the current view (nodes missing from it count as down) and returns every
    /// node with `keep` set when it is alive or down for less than the grace period.
    /// Nodes past the grace period are returned once with `keep = false`, then forgotten.
    pub fn observe(&mut self, now: Instant, view: &[NodeStatus]) -> Vec<NodeAddr> {
        for n in view {
            let seen = self.nodes.entry(n.name.clone()).or_insert(Seen { ip: None, down_since: Some(now) });
            if n.ip.is_some() {
                seen.ip = n.ip;
            }
            if n.alive {
                seen.down_since = None;
            } else if seen.down_since.is_none() {
                seen.down_since = Some(now);
            }
        }
        for (name, seen) in self.nodes.iter_mut() {
            if seen.down_since.is_none() && !view.iter().any(|n| &n.name == name) {
                seen.down_since = Some(now);
            }
        }
        let grace = self.grace;
        let out: Vec<NodeAddr> = self
            .nodes
            .iter()
            .map(|(name, seen)| NodeAddr {
                name: name.clone(),
                ip: seen.ip,
                keep: seen.down_since.is_none_or(|t| now.saturating_duration_since(t) < grace),
            })
            .collect();
        self.nodes.retain(|_, s| s.down_since.is_none_or(|t| now.saturating_duration_since(t) < grace));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn st(name: &str, ip: Option<&str>, alive: bool) -> NodeStatus {
        NodeStatus { name: name.into(), ip: ip.map(|i| i.parse().unwrap()), alive }
    }

    #[test]
    fn down_node_kept_within_grace_then_dropped() {
        let t0 = Instant::now();
        let mut g = GraceTracker::new(Duration::from_secs(300));
        let v = g.observe(t0, &[st("a", Some("192.0.2.1"), true), st("b", Some("192.0.2.2"), true)]);
        assert!(v.iter().all(|n| n.keep));
        // b goes down and stops announcing its IP: the last one is kept.
        let v = g.observe(t0 + Duration::from_secs(10), &[st("a", Some("192.0.2.1"), true), st("b", None, false)]);
        let b = v.iter().find(|n| n.name == "b").unwrap();
        assert!(b.keep);
        assert_eq!(b.ip, Some("192.0.2.2".parse().unwrap()));
        // Still within grace at 10 s + 299 s.
        let v = g.observe(t0 + Duration::from_secs(309), &[st("a", Some("192.0.2.1"), true)]);
        assert!(v.iter().find(|n| n.name == "b").unwrap().keep);
        // Past grace: reported once as not kept, then forgotten.
        let v = g.observe(t0 + Duration::from_secs(311), &[st("a", Some("192.0.2.1"), true)]);
        assert!(!v.iter().find(|n| n.name == "b").unwrap().keep);
        let v = g.observe(t0 + Duration::from_secs(312), &[st("a", Some("192.0.2.1"), true)]);
        assert!(v.iter().all(|n| n.name != "b"));
    }

    #[test]
    fn node_missing_from_view_counts_as_down() {
        let t0 = Instant::now();
        let mut g = GraceTracker::new(Duration::from_secs(5));
        g.observe(t0, &[st("a", Some("192.0.2.1"), true)]);
        let v = g.observe(t0 + Duration::from_secs(4), &[]);
        assert!(v[0].keep);
        let v = g.observe(t0 + Duration::from_secs(10), &[]);
        assert!(!v[0].keep);
        // Back alive: kept again.
        let v = g.observe(t0 + Duration::from_secs(11), &[st("a", Some("192.0.2.1"), true)]);
        assert!(v[0].keep);
    }
}
