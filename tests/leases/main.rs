//! End-to-end tests of the Raft lease group: real `constellation agent` processes on
//! loopback, voters of one openraft group, contending for `lb-leader` and `dns-writer`.
//!
//! [`LeaseCluster`] writes one config per node (gossip, cluster port `PC`, Raft on
//! `PC + 1`, tight Raft timings), starts the agents, reads `/api/v1/status` (`leases`,
//! `raft`) and each node's `lease-history.jsonl`, and injects faults: `SIGKILL` and
//! restart on the same data directory, `SIGSTOP`/`SIGCONT`, and iptables partitions of
//! one node's Raft traffic. [`check_history`] audits the history files of all nodes.
//!
//! Partitions need root and iptables. Raft connections a node opens come from ephemeral
//! ports, so rules on its Raft port alone would leave its outgoing connections (its
//! forwarded renewals, its AppendEntries as leader) untouched; an isolatable cluster
//! therefore runs every agent under its own uid, and [`Partition`] drops that uid's
//! packets to the other Raft ports with the `owner` match, plus everything to and from
//! the node's own Raft port.

#![allow(clippy::unwrap_used)]

#[allow(unused_imports)]
#[path = "../support/mod.rs"]
mod support;

mod t01_three_agree;
mod t02_five_agree;
mod t03_kill_holder;
mod t04_minority_partition;
mod t05_random_faults;
mod t06_wrong_key;
mod t07_revoke_after_renewal;
mod t08_history_checker;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::*;

/// Log filter of the agents: lease holders and Raft at debug, so a failing test's log
/// shows why.
const LOG_FILTER: &str = "info,constellation_lease=debug,openraft=warn,pingora_core=warn,pingora_proxy=warn";
/// The two leases every node contends for (roles `lb` and `dns`).
pub const LEASES: [&str; 2] = ["lb-leader", "dns-writer"];
/// The lease the fail-over tests follow.
pub const LB: &str = "lb-leader";

/// Raft timings written into `[raft]`.
#[derive(Debug, Clone, Copy)]
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

/// Nanoseconds since the Unix epoch, the clock of `lease-history.jsonl`.
pub fn unix_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

/// Milliseconds, for printing nanosecond differences.
pub fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

// === ports ===

static RESERVED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free port (TCP and UDP) that no other node of this process was given, nor reserved
/// as someone's Raft port.
pub fn take_port() -> u16 {
    loop {
        let p = free_port();
        let mut reserved = RESERVED.lock().unwrap();
        if reserved.get_or_insert_with(HashSet::new).insert(p) {
            return p;
        }
    }
}

/// A cluster port `p` whose `p + 1` (the Raft port) is free and reserved too.
pub fn take_cluster_port() -> u16 {
    loop {
        let p = take_port();
        if p == u16::MAX {
            continue;
        }
        let raft = p + 1;
        if std::net::TcpListener::bind(("127.0.0.1", raft)).is_err() {
            continue;
        }
        if RESERVED.lock().unwrap().get_or_insert_with(HashSet::new).insert(raft) {
            return p;
        }
    }
}

/// A block of uids for one isolatable cluster (distinct per cluster and per test process).
fn take_uids() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = NEXT.fetch_add(1, Ordering::Relaxed);
    // 8 uids per cluster, 40 per test process.
    40_000 + (std::process::id() % 500) * 40 + (block % 5) * 8
}

// === status ===

/// One lease as a node's status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSeen {
    /// `holder`: the node holding it, `None` when vacant.
    pub holder: Option<String>,
    /// `token`: the fencing token of the latest grant.
    pub token: Option<u64>,
    /// `held_here`: this node's holder says it holds the lease.
    pub held_here: bool,
}

/// `leases.<lease>` of a status document.
pub fn lease_seen(status: &Value, lease: &str) -> LeaseSeen {
    let l = &status["leases"][lease];
    LeaseSeen {
        holder: l["holder"].as_str().map(str::to_string),
        token: l["token"].as_u64(),
        held_here: l["held_here"].as_bool().unwrap_or(false),
    }
}

/// `raft.leader` of a status document.
pub fn raft_leader(status: &Value) -> Option<String> {
    status["raft"]["leader"].as_str().map(str::to_string)
}

/// `raft.term` of a status document.
pub fn raft_term(status: &Value) -> u64 {
    status["raft"]["term"].as_u64().unwrap_or(0)
}

/// What a settled group agrees on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The Raft leader every observer names.
    pub leader: String,
    /// Lease name → (holder, token), the same on every observer.
    pub leases: BTreeMap<String, (String, u64)>,
}

impl Settled {
    /// The holder of `lease`.
    pub fn holder(&self, lease: &str) -> &str {
        &self.leases[lease].0
    }
    /// The token of `lease`.
    pub fn token(&self, lease: &str) -> u64 {
        self.leases[lease].1
    }
}

/// Polls `check` every 25 ms until it returns `Ok` or `limit` passes, then panics with
/// its last error and `context()`. Returns how long it took.
pub async fn eventually<T, F, Fut, C>(what: &str, limit: Duration, context: C, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
    C: FnOnce() -> String,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return (v, started.elapsed()),
            Err(e) => e,
        };
        if started.elapsed() >= limit {
            panic!("timed out after {limit:?} waiting for {what}; last: {last}{}", context());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// === nodes ===

/// One agent process of a [`LeaseCluster`].
pub struct Node {
    /// 1-based; the name is `n<index>`.
    pub index: usize,
    /// `n<index>`.
    pub name: String,
    /// Gossip (UDP) address.
    pub gossip: SocketAddr,
    /// The cluster address (`[cluster] address`); Raft listens on its port + 1.
    pub cluster: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    /// The `web` entrypoint.
    pub web: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    /// stderr of every incarnation, appended.
    pub log: PathBuf,
    /// `<dir>/n<index>-data`.
    pub data: PathBuf,
    /// The uid the agent runs as (isolatable clusters only).
    pub uid: Option<u32>,
    child: Option<Child>,
    stopped: bool,
}

impl Node {
    /// The Raft port: the cluster port + 1.
    pub fn raft_port(&self) -> u16 {
        self.cluster.port() + 1
    }

    fn spawn(&mut self, dir: &Path) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["agent", "-c"])
            .arg(&self.config)
            .current_dir(dir)
            .env("CONSTELLATION_LOG", LOG_FILTER)
            .env("CONSTELLATION_PUBLIC_IP", format!("192.0.2.{}", self.index))
            .env_remove("CONSTELLATION_GOSSIP__KEY")
            .env_remove("CONSTELLATION_ADMIN__TOKEN")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid);
        }
        self.child = Some(cmd.spawn().unwrap());
        self.stopped = false;
    }

    /// Whether the process was started and not killed by the test.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `SIGKILL` (also ends a stopped process).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill {sig} {} failed", self.pid());
    }

    /// `SIGSTOP`: the process is paused, its sockets and timers with it.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.stopped = true;
    }

    /// `SIGCONT`.
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.stopped = false;
    }

    /// Asserts the process has not exited on its own.
    pub fn assert_alive(&mut self) {
        let exited = self.child.as_mut().map(|c| c.try_wait().unwrap());
        assert!(matches!(exited, Some(None)), "{} is not running ({exited:?}); log:\n{}", self.name, self.log_tail());
    }

    /// `GET /api/v1/status`, or `None` if the node does not answer within 2 s.
    pub async fn status(&self) -> Option<Value> {
        let get = fetch(self.admin, "GET", "admin", "/api/v1/status", &[], &[]);
        let r = tokio::time::timeout(Duration::from_secs(2), get).await.ok()?.ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_slice(&r.body).ok()
    }

    /// `GET /api/v1/status`; panics if the node does not answer.
    pub async fn must_status(&self) -> Value {
        match self.status().await {
            Some(s) => s,
            None => panic!("{} does not answer /api/v1/status; log:\n{}", self.name, self.log_tail()),
        }
    }

    /// Sum of a metric's samples whose labels contain every fragment of `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let r = fetch(self.admin, "GET", "admin", "/metrics", &[], &[]).await.unwrap();
        assert_eq!(r.status, 200);
        metric_value(&r.text(), name, labels)
    }

    /// Waits until `/healthz` answers 200 (the process is up).
    pub async fn wait_healthy(&self, limit: Duration) {
        eventually(
            &format!("{} healthy", self.name),
            limit,
            || format!("\n{}", self.log_tail()),
            || async {
                match fetch(self.admin, "GET", "admin", "/healthz", &[], &[]).await {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("/healthz {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
    }

    /// This node's `lease-history.jsonl`, parsed (a torn last line is skipped).
    pub fn history(&self) -> Vec<Event> {
        let text = std::fs::read_to_string(self.data.join("lease-history.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                Some(Event {
                    t_ns: v["t_ns"].as_u64()? as i128,
                    node: v["node"].as_str()?.to_string(),
                    lease: v["lease"].as_str()?.to_string(),
                    token: v["token"].as_u64()?,
                    kind: v["event"].as_str()?.to_string(),
                })
            })
            .collect()
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How to build a [`LeaseCluster`].
#[derive(Debug, Clone)]
pub struct Spec {
    /// Number of nodes, all voters.
    pub nodes: usize,
    /// Raft timings of every node.
    pub timings: Timings,
    /// Run every agent under its own uid, so [`Partition`] can cut its outgoing
    /// connections (needs root).
    pub isolatable: bool,
    /// (node index, key file name) of nodes that use another key than `cluster.key`.
    pub keys: Vec<(usize, String)>,
}

impl Spec {
    /// `nodes` voters with [`Timings::FAST`], one key, not isolatable.
    pub fn new(nodes: usize) -> Spec {
        Spec { nodes, timings: Timings::FAST, isolatable: false, keys: Vec::new() }
    }
}

/// N voters of one lease group, all started.
pub struct LeaseCluster {
    /// The nodes, node 1 first.
    pub nodes: Vec<Node>,
    /// Raft timings of every node.
    pub timings: Timings,
    /// Configs, keys, logs and data directories.
    pub dir: Scratch,
}

impl LeaseCluster {
    /// Writes the configs, starts every agent at once and waits until each answers
    /// `/healthz` (not for the leases: see [`LeaseCluster::wait_settled`]).
    pub async fn start(spec: Spec) -> LeaseCluster {
        let dir = Scratch::new("leases");
        let (code, _, err) = run(&["keygen", "--out", "cluster.key"], &dir.0);
        assert_eq!(code, 0, "keygen failed: {err}");
        for (_, key) in &spec.keys {
            let (code, _, err) = run(&["keygen", "--out", key], &dir.0);
            assert_eq!(code, 0, "keygen failed: {err}");
        }
        let uid_base = spec.isolatable.then(take_uids);
        let mut nodes = Vec::new();
        for index in 1..=spec.nodes {
            let name = format!("n{index}");
            let gossip: SocketAddr = format!("127.0.0.1:{}", take_port()).parse().unwrap();
            let cluster: SocketAddr = format!("127.0.0.1:{}", take_cluster_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", take_port()).parse().unwrap();
            let web: SocketAddr = format!("127.0.0.1:{}", take_port()).parse().unwrap();
            let data = dir.path(&format!("{name}-data"));
            let uid = uid_base.map(|b| b + index as u32);
            nodes.push(Node {
                index,
                name: name.clone(),
                gossip,
                cluster,
                admin,
                web,
                config: dir.path(&format!("{name}.toml")),
                log: dir.path(&format!("{name}.log")),
                data,
                uid,
                child: None,
                stopped: false,
            });
        }
        let voters: Vec<String> = nodes.iter().map(|n| format!("\"{}={}\"", n.name, n.cluster)).collect();
        let voters = voters.join(", ");
        let t = spec.timings;
        for node in &nodes {
            let seeds = if node.index == 1 { "[]".to_string() } else { format!("[\"{}\"]", nodes[0].gossip) };
            let mut key = spec
                .keys
                .iter()
                .find(|(i, _)| *i == node.index)
                .map(|(_, k)| k.clone())
                .unwrap_or_else(|| "cluster.key".to_string());
            if let Some(uid) = node.uid {
                // The key is 0600: give each uid its own copy.
                let own = format!("{}.key", node.name);
                std::fs::copy(dir.path(&key), dir.path(&own)).unwrap();
                std::os::unix::fs::chown(dir.path(&own), Some(uid), Some(uid)).unwrap();
                key = own;
                std::fs::create_dir_all(&node.data).unwrap();
                std::os::unix::fs::chown(&node.data, Some(uid), Some(uid)).unwrap();
            }
            let text = format!(
                "[node]\nname = \"{name}\"\ndata_dir = \"{name}-data\"\nroles = [\"lb\", \"dns\"]\n\
                 [gossip]\naddress = \"{gossip}\"\nseeds = {seeds}\nkey_file = \"{key}\"\npush_pull_interval_ms = 1000\n\
                 public_ip_services = []\n\
                 [cluster]\naddress = \"{cluster}\"\n\
                 [admin]\naddress = \"{admin}\"\n\
                 [entrypoints.web]\naddress = \"{web}\"\n\
                 [raft]\nvoters = [{voters}]\nlease_ttl_ms = {ttl}\nelection_timeout_ms = {el}\nheartbeat_ms = {hb}\n",
                name = node.name,
                gossip = node.gossip,
                cluster = node.cluster,
                admin = node.admin,
                web = node.web,
                ttl = t.ttl_ms,
                el = t.election_ms,
                hb = t.heartbeat_ms,
            );
            dir.write(&format!("{}.toml", node.name), &text);
        }
        let mut cluster = LeaseCluster { nodes, timings: spec.timings, dir };
        for i in 1..=spec.nodes {
            cluster.spawn(i);
        }
        for node in &cluster.nodes {
            node.wait_healthy(Duration::from_secs(30)).await;
        }
        cluster
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
    pub fn running(&self) -> Vec<usize> {
        self.nodes.iter().filter(|n| n.running()).map(|n| n.index).collect()
    }

    /// What `observers` agree on right now: one Raft leader, and per lease one holder and
    /// token; `held_here` is true on exactly the holder (when it is an observer) and on
    /// no other observer.
    pub async fn agreement(&self, observers: &[usize]) -> Result<Settled, String> {
        let mut leader: Option<String> = None;
        let mut leases: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut statuses = Vec::new();
        for &i in observers {
            let node = self.node(i);
            let status = node.status().await.ok_or_else(|| format!("{} does not answer", node.name))?;
            let l = raft_leader(&status).ok_or_else(|| format!("{} knows no raft leader", node.name))?;
            match &leader {
                None => leader = Some(l),
                Some(prev) if *prev != l => return Err(format!("leader: {prev} vs {l} on {}", node.name)),
                Some(_) => {}
            }
            for lease in LEASES {
                let seen = lease_seen(&status, lease);
                let (Some(holder), Some(token)) = (seen.holder.clone(), seen.token) else {
                    return Err(format!("{} sees {lease} as {seen:?}", node.name));
                };
                match leases.get(lease) {
                    None => {
                        leases.insert(lease.to_string(), (holder, token));
                    }
                    Some(prev) if *prev != (holder.clone(), token) => {
                        return Err(format!("{lease}: {prev:?} vs ({holder}, {token}) on {}", node.name));
                    }
                    Some(_) => {}
                }
            }
            statuses.push((node.name.clone(), status));
        }
        for lease in LEASES {
            let holder = &leases[lease].0;
            for (name, status) in &statuses {
                let here = lease_seen(status, lease).held_here;
                if here != (name == holder) {
                    return Err(format!("{name}: {lease} held_here = {here}, holder {holder}"));
                }
            }
        }
        Ok(Settled { leader: leader.unwrap_or_default(), leases })
    }

    /// Waits until `observers` agree (see [`LeaseCluster::agreement`]) on two polls in a
    /// row, `gap` apart, with the same answer.
    pub async fn wait_settled(&self, observers: &[usize], limit: Duration) -> (Settled, Duration) {
        let what = format!("nodes {observers:?} to agree on the raft leader and both leases");
        eventually(
            &what,
            limit,
            || self.dump(),
            || async {
                let first = self.agreement(observers).await?;
                tokio::time::sleep(Duration::from_millis(150)).await;
                let second = self.agreement(observers).await?;
                if first == second {
                    Ok(second)
                } else {
                    Err(format!("changed: {first:?} -> {second:?}"))
                }
            },
        )
        .await
    }

    /// Every node's history, node 1 first, each in file order.
    pub fn history(&self) -> Vec<Event> {
        self.nodes.iter().flat_map(|n| n.history()).collect()
    }

    /// Every node's whole log, for failure messages that need the start of it.
    pub fn dump_all(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            out.push_str(&format!("\n===== {} =====\n{text}\n", n.name));
        }
        out
    }

    /// Every node's log tail, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "\n===== {} (cluster {}, raft :{}, admin {}, running {}) =====\n{}\n",
                n.name,
                n.cluster,
                n.raft_port(),
                n.admin,
                n.running(),
                n.log_tail()
            ));
        }
        out
    }
}

impl Drop for LeaseCluster {
    /// On a failing test, copies the logs, configs and history files to
    /// `$TMPDIR/constellation-leases-failed-*` before the scratch directory goes.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for n in &mut self.nodes {
            n.kill();
        }
        let name = self.dir.0.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        let keep = std::env::temp_dir().join(format!("constellation-leases-failed-{name}"));
        let _ = std::fs::create_dir_all(&keep);
        for n in &self.nodes {
            let _ = std::fs::copy(&n.log, keep.join(format!("{}.log", n.name)));
            let _ = std::fs::copy(&n.config, keep.join(format!("{}.toml", n.name)));
            let _ = std::fs::copy(n.data.join("lease-history.jsonl"), keep.join(format!("{}-history.jsonl", n.name)));
        }
        eprintln!("logs, configs and lease histories of the failed test kept in {}", keep.display());
    }
}

// === partitions ===

/// iptables rules cutting one node's Raft traffic: everything to and from its Raft port,
/// and its own uid's packets to the other nodes' Raft ports. Deleted on drop, panic or
/// not. Each rule carries the comment `constellation-leases-test-<pid>`; rules left by a
/// test process that no longer exists are removed before new ones are added.
pub struct Partition {
    rules: Vec<Vec<String>>,
}

const RULE_TAG: &str = "constellation-leases-test-";

fn iptables(args: &[String]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables ({e}); partition tests need root and iptables"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`iptables -w {}` failed ({}): {}; partition tests need root and iptables",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes rules tagged by test processes that are gone (a test killed mid-partition).
fn remove_orphan_rules() {
    for chain in ["INPUT", "OUTPUT"] {
        let Ok(out) = Command::new("iptables").args(["-w", "-S", chain]).output() else { return };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(at) = line.find(RULE_TAG) else { continue };
            let pid: String = line[at + RULE_TAG.len()..].chars().take_while(char::is_ascii_digit).collect();
            if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let mut args: Vec<String> = line.split_whitespace().map(|s| s.trim_matches('"').to_string()).collect();
            if args.first().map(String::as_str) == Some("-A") {
                args[0] = "-D".to_string();
                let _ = iptables(&args);
            }
        }
    }
}

impl Partition {
    /// Cuts `node` off the Raft traffic of `others`. The node must run under its own uid
    /// ([`Spec::isolatable`]).
    pub fn raft(node: &Node, others: &[&Node]) -> Partition {
        let uid = node.uid.expect("a partition needs an isolatable cluster (agents under their own uids)");
        remove_orphan_rules();
        let tag = format!("{RULE_TAG}{}", std::process::id());
        let own = node.raft_port().to_string();
        let ports: Vec<String> = others.iter().map(|n| n.raft_port().to_string()).collect();
        let mut rules: Vec<Vec<&str>> = vec![
            vec!["INPUT", "-i", "lo", "-p", "tcp", "--dport", &own],
            vec!["INPUT", "-i", "lo", "-p", "tcp", "--sport", &own],
        ];
        let uid = uid.to_string();
        for port in &ports {
            rules.push(vec!["OUTPUT", "-o", "lo", "-p", "tcp", "-m", "owner", "--uid-owner", &uid, "--dport", port]);
        }
        let mut p = Partition { rules: Vec::new() };
        for rule in rules {
            let mut rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
            rule.extend(["-m", "comment", "--comment", &tag, "-j", "DROP"].iter().map(|s| s.to_string()));
            let mut insert = vec!["-I".to_string()];
            insert.extend(rule.iter().cloned());
            if let Err(e) = iptables(&insert) {
                drop(p);
                panic!("{e}");
            }
            p.rules.push(rule);
        }
        p
    }

    /// Deletes the rules (idempotent).
    pub fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let mut delete = vec!["-D".to_string()];
            delete.extend(rule);
            if let Err(e) = iptables(&delete) {
                eprintln!("warning: could not remove a partition rule: {e}");
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

// === history ===

/// One line of `lease-history.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unix nanoseconds.
    pub t_ns: i128,
    /// The node that wrote it.
    pub node: String,
    /// Lease name.
    pub lease: String,
    /// Fencing token.
    pub token: u64,
    /// `acquired`, `renewed` or `lost`.
    pub kind: String,
}

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
