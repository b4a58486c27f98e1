//! End-to-end tests of cluster membership: several real agent processes on loopback,
//! joined by SWIM gossip over sealed UDP, exchanging node states over the sealed TCP
//! cluster port, and routing to each other's service instances.
//!
//! [`Cluster`] starts the nodes (node 1 is the seed), waits with deadlines for them to
//! agree, kills (`SIGKILL`) and restarts them, and reads their status.

#![allow(clippy::unwrap_used)]

/// The shared kit.
mod support {
    pub use constellation_testkit::*;
}

mod t01_join;
mod t02_join_five;
mod t03_crash_restart;
mod t04_partition;
mod t05_wrong_key;
mod t06_garbage;
mod t07_failover;
mod t08_outlier_hint;
mod t09_warp_egress;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;

/// Log filter of the agents: gossip at debug, so a failing test's log shows why.
const LOG_FILTER: &str = "info,constellation_cluster=debug,pingora_core=warn,pingora_proxy=warn";

/// N agents sharing a key, joined through node 1 (a [`Fleet`] with membership waits).
pub struct Cluster {
    fleet: Fleet,
}

constellation_testkit::wraps_fleet!(Cluster);

impl Cluster {
    /// Starts one node per spec (node 1 first, as the seed, then the others at once),
    /// waits until each is ready and every node sees every node alive.
    pub async fn start(specs: Vec<NodeSpec>) -> Cluster {
        Cluster::start_with(specs, false).await
    }

    /// Like [`Cluster::start`]; `isolatable` runs every agent under its own uid so a
    /// [`Partition`] can cut it off (needs root).
    pub async fn start_with(specs: Vec<NodeSpec>, isolatable: bool) -> Cluster {
        let mut spec = FleetSpec::new("cluster", specs);
        spec.push_pull_ms = Some(1000);
        spec.isolatable = isolatable;
        spec.log_filter = LOG_FILTER.into();
        spec.tail_lines = 40;
        let mut cluster = Cluster { fleet: Fleet::new(spec) };
        cluster.start_seed_first(Duration::from_secs(20)).await;
        cluster.wait_all_alive(Duration::from_secs(20)).await;
        cluster
    }

    /// Restarts node `index` with the same config (a new incarnation) and waits until
    /// it is ready.
    pub async fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
        self.node(index).wait_ready(Duration::from_secs(20)).await;
    }

    /// Nodes whose process runs.
    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.running())
    }

    /// Names of the running nodes.
    pub fn running_names(&self) -> Vec<String> {
        self.running().map(|n| n.name.clone()).collect()
    }

    /// Waits until every running node lists exactly the running nodes, all alive.
    pub async fn wait_all_alive(&self, limit: Duration) -> Duration {
        let expect: Vec<(String, &str)> = self.running_names().into_iter().map(|n| (n, "alive")).collect();
        let observers: Vec<usize> = self.running().map(|n| n.index).collect();
        self.wait_view(&observers, &expect, limit).await
    }

    /// Waits until each node in `observers` lists exactly `expect` (name, state).
    pub async fn wait_view(&self, observers: &[usize], expect: &[(String, &str)], limit: Duration) -> Duration {
        let what = format!("nodes {observers:?} to see {expect:?}");
        let want: Vec<(String, String)> = expect.iter().map(|(n, s)| (n.clone(), s.to_string())).collect();
        self.wait_each(&what, observers, limit, |status| {
            let seen = member_states(status);
            if seen == want {
                Ok(())
            } else {
                Err(format!("sees {seen:?}"))
            }
        })
        .await
    }

    /// Waits until each node in `observers` routes `service` to exactly `urls`.
    pub async fn wait_upstreams(
        &self,
        observers: &[usize],
        service: &str,
        urls: &[String],
        limit: Duration,
    ) -> Duration {
        let want: BTreeSet<String> = urls.iter().cloned().collect();
        let what = format!("nodes {observers:?} to route {service} to {want:?}");
        self.wait_each(&what, observers, limit, |status| {
            let got = upstream_urls(status, service);
            if got == want {
                Ok(())
            } else {
                Err(format!("routes {service} to {got:?}"))
            }
        })
        .await
    }

    /// Waits until every node knows every node's public IP (they trail membership a
    /// little: a state update after detection).
    pub async fn wait_public_ips(&self, limit: Duration) -> Duration {
        let all: Vec<usize> = self.nodes.iter().map(|n| n.index).collect();
        self.wait_each("every node to know every public IP", &all, limit, |status| {
            for n in &self.nodes {
                let got = &member(status, &n.name)["public_ip"];
                if got != n.public_ip.as_str() {
                    return Err(format!("says {}'s public_ip is {got}", n.name));
                }
            }
            Ok(())
        })
        .await
    }

    /// Waits until `check` accepts the status of every node in `observers`.
    async fn wait_each(
        &self,
        what: &str,
        observers: &[usize],
        limit: Duration,
        check: impl Fn(&serde_json::Value) -> Result<(), String>,
    ) -> Duration {
        let check = &check;
        eventually_or(
            what,
            limit,
            || self.dump(),
            || async move {
                for &i in observers {
                    let node = self.node(i);
                    let status = node.status().await.ok_or_else(|| format!("{} does not answer", node.name))?;
                    check(&status).map_err(|e| format!("{} {e}", node.name))?;
                }
                Ok(())
            },
        )
        .await
        .1
    }
}

/// Backends `b1..=bn` on free loopback ports.
pub async fn backends(n: usize) -> Vec<Backend> {
    Backend::several(n).await
}
