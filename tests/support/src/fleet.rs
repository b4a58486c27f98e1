//! A fleet of `constellation agent` processes on loopback: gossip members, optionally
//! voters of one Raft group, each with its own ports, config, log and data directory,
//! and (in an isolatable fleet) its own uid so that [`crate::Partition`] can cut it off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::binary::{binary, run};
use crate::node::{Event, Node};
use crate::partition::remove_orphan_rules;
use crate::scratch::{take_cluster_port, take_port, Scratch};
use crate::status::{lease_seen, raft_leader, LeaseSeen};
use crate::wait::eventually_or;

/// Raft timings written into `[raft]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// `lease_ttl_ms`.
    pub ttl_ms: u64,
    /// `election_timeout_ms` (the minimum; the maximum is twice it).
    pub election_ms: u64,
    /// `heartbeat_ms`.
    pub heartbeat_ms: u64,
}

impl Timings {
    /// Tight timings for tests: TTL 2 s, election 400–800 ms, heartbeat 100 ms.
    pub const FAST: Timings = Timings { ttl_ms: 2000, election_ms: 400, heartbeat_ms: 100 };

    /// `lease_ttl_ms` as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
    /// The maximum election timeout (twice the configured minimum).
    pub fn max_election(&self) -> Duration {
        Duration::from_millis(self.election_ms * 2)
    }
    /// The holder's local lease time: TTL − TTL/5.
    pub fn local_ttl(&self) -> Duration {
        self.ttl() - self.ttl() / 5
    }
    /// How long a holder waits after a refusal before asking again: TTL/3.
    pub fn retry(&self) -> Duration {
        self.ttl() / 3
    }
}

/// What one node runs with.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// `[[instances]]`: (service, url).
    pub instances: Vec<(String, String)>,
    /// `health_path` of every instance (the agent then announces their health).
    pub health_path: Option<String>,
    /// Appended to the config (e.g. a `[proxy.breaker]` or `[dns]` section).
    pub extra_toml: String,
    /// Key file name in the fleet directory; default `cluster.key`.
    pub key_file: Option<String>,
    /// `[node] roles` of this node instead of the fleet's.
    pub roles: Option<Vec<String>>,
    /// `[routes] files` (names in the fleet directory); default none.
    pub route_files: Vec<String>,
}

impl NodeSpec {
    /// A node announcing one `app` instance at `url`.
    pub fn app(url: String) -> NodeSpec {
        NodeSpec { instances: vec![("app".into(), url)], ..NodeSpec::default() }
    }
}

/// How to build a [`Fleet`].
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Scratch directory tag (`constellation-test-<tag>-…`).
    pub tag: String,
    /// One entry per node; node 1 is the gossip seed.
    pub nodes: Vec<NodeSpec>,
    /// `[node] roles`.
    pub roles: Vec<String>,
    /// Raft timings; `Some` makes every node a voter (Raft on the cluster port + 1).
    pub raft: Option<Timings>,
    /// `[gossip] push_pull_interval_ms`, when set.
    pub push_pull_ms: Option<u64>,
    /// Run every agent under its own uid (needed for partitions; needs root).
    pub isolatable: bool,
    /// `CONSTELLATION_LOG` of the agents.
    pub log_filter: String,
    /// The binary; default [`binary`].
    pub bin: Option<PathBuf>,
    /// Lines of each node's log kept by [`Node::log_tail`].
    pub tail_lines: usize,
}

impl FleetSpec {
    /// `nodes` with no roles, no Raft, not isolatable.
    pub fn new(tag: &str, nodes: Vec<NodeSpec>) -> FleetSpec {
        FleetSpec {
            tag: tag.to_string(),
            nodes,
            roles: Vec::new(),
            raft: None,
            push_pull_ms: None,
            isolatable: false,
            log_filter: "info,pingora_core=warn,pingora_proxy=warn".into(),
            bin: None,
            tail_lines: 30,
        }
    }
}

/// What a settled Raft group agrees on (see [`Fleet::agreement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The Raft leader every observer names (empty when not asked for).
    pub leader: String,
    /// Lease name → (holder, token), the same on every observer.
    pub leases: BTreeMap<String, (String, u64)>,
}

impl Settled {
    /// The holder of `lease`.
    ///
    /// # Panics
    /// When `lease` was not part of the agreement.
    pub fn holder(&self, lease: &str) -> &str {
        &self.leases[lease].0
    }
    /// The token of `lease`.
    ///
    /// # Panics
    /// When `lease` was not part of the agreement.
    pub fn token(&self, lease: &str) -> u64 {
        self.leases[lease].1
    }
}

/// A block of 8 uids for one isolatable fleet, distinct per fleet and per test process.
fn take_uids() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = NEXT.fetch_add(1, Ordering::Relaxed);
    40_000 + (std::process::id() % 1_000) * 64 + (block % 8) * 8
}

/// N agents sharing a key, joined through node 1, none started by [`Fleet::new`].
pub struct Fleet {
    /// The nodes, node 1 first.
    pub nodes: Vec<Node>,
    /// Configs, keys, logs and data directories. Dropped last.
    pub dir: Scratch,
    spec: FleetSpec,
    uid_base: Option<u32>,
}

impl Fleet {
    /// Generates `cluster.key` (and every other key file a node spec names), allocates
    /// ports (and uids) and writes every node's config. Starts nothing.
    ///
    /// # Panics
    /// When a key cannot be generated or a file cannot be written.
    pub fn new(spec: FleetSpec) -> Fleet {
        let dir = Scratch::new(&spec.tag);
        let mut keys: Vec<String> = vec!["cluster.key".into()];
        keys.extend(spec.nodes.iter().filter_map(|n| n.key_file.clone()));
        keys.dedup();
        for key in &keys {
            if dir.path(key).exists() {
                continue;
            }
            let (code, _, err) = run(&["keygen", "--out", key], &dir.0);
            assert_eq!(code, 0, "keygen {key} failed: {err}");
        }
        if spec.isolatable {
            remove_orphan_rules();
        }
        let uid_base = spec.isolatable.then(take_uids);
        let mut fleet = Fleet { nodes: Vec::new(), dir, spec: spec.clone(), uid_base };
        for _ in &spec.nodes {
            fleet.allocate();
        }
        for i in 1..=fleet.nodes.len() {
            fleet.write_config(i, &spec.nodes[i - 1]);
        }
        fleet
    }

    fn allocate(&mut self) -> usize {
        let index = self.nodes.len() + 1;
        let name = format!("n{index}");
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let cluster = if self.spec.raft.is_some() { take_cluster_port() } else { take_port() };
        self.nodes.push(Node {
            index,
            name: name.clone(),
            gossip: loopback(take_port()),
            cluster: loopback(cluster),
            admin: loopback(take_port()),
            web: loopback(take_port()),
            public_ip: format!("192.0.2.{index}"),
            config: self.dir.path(&format!("{name}.toml")),
            log: self.dir.path(&format!("{name}.log")),
            data: self.dir.path(&format!("{name}-data")),
            // Node indexes start at 1; a block holds 8 uids, so node 8 is the last.
            uid: self.uid_base.map(|b| {
                assert!((1..=8).contains(&index), "an isolatable fleet holds at most 8 nodes (uid block)");
                b + index as u32 - 1
            }),
            bin: self.spec.bin.clone().unwrap_or_else(binary),
            log_filter: self.spec.log_filter.clone(),
            tail_lines: self.spec.tail_lines,
            child: None,
        });
        index
    }

    fn write_config(&self, index: usize, spec: &NodeSpec) {
        let node = self.node(index);
        let mut key = spec.key_file.clone().unwrap_or_else(|| "cluster.key".into());
        if let Some(uid) = node.uid {
            // Keys are 0600: each uid gets its own copy, and its own data directory.
            let own = format!("{}.key", node.name);
            let chowned = std::fs::copy(self.dir.path(&key), self.dir.path(&own))
                .and_then(|_| std::os::unix::fs::chown(self.dir.path(&own), Some(uid), Some(uid)))
                .and_then(|()| std::fs::create_dir_all(&node.data))
                .and_then(|()| std::os::unix::fs::chown(&node.data, Some(uid), Some(uid)));
            if let Err(e) = chowned {
                panic!("cannot give {} its own key and data directory (needs root): {e}", node.name);
            }
            key = own;
        }
        let seeds = match index {
            1 => "[]".to_string(),
            _ => format!("[\"{}\"]", self.nodes[0].gossip),
        };
        let roles: Vec<String> =
            spec.roles.as_ref().unwrap_or(&self.spec.roles).iter().map(|r| format!("\"{r}\"")).collect();
        let files: Vec<String> = spec.route_files.iter().map(|f| format!("\"{f}\"")).collect();
        let roles = if roles.is_empty() { String::new() } else { format!("roles = [{}]\n", roles.join(", ")) };
        let push_pull = self.spec.push_pull_ms.map(|ms| format!("push_pull_interval_ms = {ms}\n")).unwrap_or_default();
        let raft = match self.spec.raft {
            Some(t) => {
                let voters: Vec<String> = self.nodes.iter().map(|n| format!("\"{}={}\"", n.name, n.cluster)).collect();
                format!(
                    "[raft]\nvoters = [{}]\nlease_ttl_ms = {}\nelection_timeout_ms = {}\nheartbeat_ms = {}\n",
                    voters.join(", "),
                    t.ttl_ms,
                    t.election_ms,
                    t.heartbeat_ms
                )
            }
            None => String::new(),
        };
        let health = spec.health_path.as_ref().map(|p| format!("health_path = \"{p}\"\n")).unwrap_or_default();
        let instances: String = spec
            .instances
            .iter()
            .map(|(service, url)| format!("[[instances]]\nservice = \"{service}\"\nurl = \"{url}\"\n{health}"))
            .collect();
        let text = format!(
            "[node]\nname = \"{name}\"\ndata_dir = \"{name}-data\"\n{roles}\
             [gossip]\naddress = \"{gossip}\"\nseeds = {seeds}\nkey_file = \"{key}\"\n{push_pull}public_ip_services = []\n\
             [cluster]\naddress = \"{cluster}\"\n\
             [admin]\naddress = \"{admin}\"\n\
             [entrypoints.web]\naddress = \"{web}\"\n\
             [routes]\nfiles = [{files}]\nwatch_interval_ms = 100\n\
             {raft}{instances}{extra}\n",
            name = node.name,
            gossip = node.gossip,
            cluster = node.cluster,
            admin = node.admin,
            web = node.web,
            extra = spec.extra_toml,
            files = files.join(", "),
        );
        self.dir.write(&format!("{}.toml", node.name), &text);
    }

    /// Allocates and writes the config of one more node (not started, and not a voter
    /// the others know of); returns its index.
    pub fn add(&mut self, spec: &NodeSpec) -> usize {
        let index = self.allocate();
        self.write_config(index, spec);
        index
    }

    /// Starts every node at once and waits until each answers `/healthz`.
    pub async fn start_all(&mut self, limit: Duration) {
        for i in 1..=self.nodes.len() {
            self.spawn(i);
        }
        for node in &self.nodes {
            node.wait_healthy(limit).await;
        }
    }

    /// Starts node 1 (the seed) and waits until it is ready, then the others at once, and
    /// waits until each is ready.
    pub async fn start_seed_first(&mut self, limit: Duration) {
        self.spawn(1);
        self.node(1).wait_ready(limit).await;
        for i in 2..=self.nodes.len() {
            self.spawn(i);
        }
        for node in &self.nodes[1..] {
            node.wait_ready(limit).await;
        }
    }

    /// Node `index` (1-based).
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index - 1]
    }

    /// Node `index` (1-based), mutably.
    pub fn node_mut(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index - 1]
    }

    /// The index of the node called `name`.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}")).index
    }

    /// Starts node `index` (again) with its config and data directory; does not wait.
    pub fn spawn(&mut self, index: usize) {
        let dir = self.dir.0.clone();
        self.nodes[index - 1].spawn(&dir);
    }

    /// `SIGKILL`s node `index`.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index - 1].kill();
    }

    /// Indexes of the running nodes.
    pub fn running_indexes(&self) -> Vec<usize> {
        self.nodes.iter().filter(|n| n.running()).map(|n| n.index).collect()
    }

    /// Every node's lease history, node 1 first, each in file order.
    pub fn history(&self) -> Vec<Event> {
        self.nodes.iter().flat_map(Node::history).collect()
    }

    /// What `observers` agree on right now: per lease in `leases` one holder and token
    /// (and, with `leader`, one Raft leader); `held_here` is true on exactly the holder
    /// (when it is an observer) and on no other observer.
    pub async fn agreement(&self, observers: &[usize], leases: &[&str], leader: bool) -> Result<Settled, String> {
        let mut settled = Settled { leader: String::new(), leases: BTreeMap::new() };
        let mut statuses = Vec::new();
        for (k, &i) in observers.iter().enumerate() {
            let node = self.node(i);
            let status = node.status().await.ok_or_else(|| format!("{} does not answer", node.name))?;
            if leader {
                let l = raft_leader(&status).ok_or_else(|| format!("{} knows no raft leader", node.name))?;
                if k > 0 && settled.leader != l {
                    return Err(format!("leader: {} vs {l} on {}", settled.leader, node.name));
                }
                settled.leader = l;
            }
            for &lease in leases {
                let seen = lease_seen(&status, lease);
                let (Some(holder), Some(token)) = (seen.holder.clone(), seen.token) else {
                    return Err(format!("{} sees {lease} as {seen:?}", node.name));
                };
                match settled.leases.get(lease) {
                    None => {
                        settled.leases.insert(lease.to_string(), (holder, token));
                    }
                    Some(prev) if *prev != (holder.clone(), token) => {
                        return Err(format!("{lease}: {prev:?} vs ({holder}, {token}) on {}", node.name));
                    }
                    Some(_) => {}
                }
            }
            statuses.push((node.name.clone(), status));
        }
        for &lease in leases {
            let holder = &settled.leases[lease].0;
            for (name, status) in &statuses {
                let here = lease_seen(status, lease).held_here;
                if here != (name == holder) {
                    return Err(format!("{name}: {lease} held_here = {here}, holder {holder}"));
                }
            }
        }
        Ok(settled)
    }

    /// Waits until `observers` agree (see [`Fleet::agreement`]) on two polls in a row,
    /// 150 ms apart, with the same answer; `context` is added to a timeout's message.
    pub async fn wait_settled(
        &self,
        observers: &[usize],
        leases: &[&str],
        leader: bool,
        limit: Duration,
        context: impl FnOnce() -> String,
    ) -> (Settled, Duration) {
        let what = format!("nodes {observers:?} to agree on {leases:?}");
        eventually_or(&what, limit, context, || async {
            let first = self.agreement(observers, leases, leader).await?;
            tokio::time::sleep(Duration::from_millis(150)).await;
            let second = self.agreement(observers, leases, leader).await?;
            if first == second {
                Ok(second)
            } else {
                Err(format!("changed: {first:?} -> {second:?}"))
            }
        })
        .await
    }

    /// Waits until one of `observers` shows `lease` held by another node than
    /// `old_holder` with a token above `old_token` (a fail-over); returns that holder and
    /// token, and how long it took. `context` is added to a timeout's message.
    pub async fn wait_new_holder(
        &self,
        observers: &[usize],
        lease: &str,
        (old_holder, old_token): (&str, u64),
        limit: Duration,
        context: impl FnOnce() -> String,
    ) -> ((String, u64), Duration) {
        let what = format!("one of {observers:?} to show {lease} moved off {old_holder} (token > {old_token})");
        eventually_or(&what, limit, context, || async {
            for &i in observers {
                let Some(s) = self.node(i).status().await else { continue };
                if let LeaseSeen { holder: Some(h), token: Some(t), .. } = lease_seen(&s, lease) {
                    if h != old_holder && t > old_token {
                        return Ok((h, t));
                    }
                }
            }
            Err(format!("{lease} still with {old_holder}"))
        })
        .await
    }

    /// Every node's log tail and addresses, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "\n===== {} (gossip {}, cluster {}, admin {}, running {}) =====\n{}\n",
                n.name,
                n.gossip,
                n.cluster,
                n.admin,
                n.running(),
                n.log_tail()
            ));
        }
        out
    }

    /// Every node's whole log, for failure messages that need the start of it.
    pub fn dump_all(&self) -> String {
        self.nodes.iter().map(|n| format!("\n===== {} =====\n{}\n", n.name, n.log_text())).collect()
    }

    /// Copies logs, configs and lease histories to `$TMPDIR/constellation-<tag>-failed-*`
    /// (call it from a drop while panicking); returns where.
    pub fn keep_evidence(&mut self) -> PathBuf {
        for n in &mut self.nodes {
            n.kill();
        }
        let name = self.dir.0.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        let keep = std::env::temp_dir().join(format!("constellation-{}-failed-{name}", self.spec.tag));
        let _ = std::fs::create_dir_all(&keep);
        for n in &self.nodes {
            let _ = std::fs::copy(&n.log, keep.join(format!("{}.log", n.name)));
            let _ = std::fs::copy(&n.config, keep.join(format!("{}.toml", n.name)));
            let _ = std::fs::copy(n.data.join("lease-history.jsonl"), keep.join(format!("{}-history.jsonl", n.name)));
        }
        keep
    }
}

/// Lets a suite's own wrapper type (a struct with a `fleet: Fleet` field and the suite's
/// waits) be used as the [`Fleet`] it wraps: implements `Deref` and `DerefMut` to it.
#[macro_export]
macro_rules! wraps_fleet {
    ($wrapper:ty) => {
        impl ::std::ops::Deref for $wrapper {
            type Target = $crate::Fleet;
            fn deref(&self) -> &$crate::Fleet {
                &self.fleet
            }
        }

        impl ::std::ops::DerefMut for $wrapper {
            fn deref_mut(&mut self) -> &mut $crate::Fleet {
                &mut self.fleet
            }
        }
    };
}
