//! End-to-end tests of the Cloudflare DNS controller: three real `constellation agent`
//! processes (roles `lb` and `dns`, Raft voters of one lease group) keep a fake
//! Cloudflare v4 API ([`FakeCloudflare`], in this test process) pointed at the
//! `lb-leader` holder.
//!
//! [`DnsCluster`] starts the fake (zone `example.test`, plus a decoy zone), writes one
//! config per node (public IP `192.0.2.<index>` through `CONSTELLATION_PUBLIC_IP`), starts
//! the agents, reads `/api/v1/status` (`leases`, `dns`), `/metrics` and each node's
//! `lease-history.jsonl`, and injects faults: `SIGKILL`, 429s and record edits in the fake,
//! and iptables partitions of one node's Raft traffic.
//!
//! The fake cannot tell which node sent a request (one listener, one token). With
//! [`Spec::tapped`], each node is given its own [`Tap`] — a small HTTP/1.1 relay on its own
//! loopback port in front of the fake — which records the node, the request and its arrival
//! time (Unix ns, the clock of the lease history) before passing it on unchanged.
//!
//! Partitions need root and iptables. Raft connections a node opens come from ephemeral
//! ports, so [`Partition`] runs on an isolatable cluster (every agent under its own uid)
//! and drops that uid's packets to the other Raft ports with the `owner` match, plus
//! everything to and from the node's own Raft port.

#![allow(clippy::unwrap_used)]

#[allow(unused_imports)]
#[path = "../support/mod.rs"]
mod support;

mod t01_initial;
mod t02_leader_change;
mod t03_drift;
mod t04_rate_limited;
mod t05_deposed_writer;
mod t06_invalid_token;
mod t07_dry_run;

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use constellation_dns::testing::FakeCloudflare;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::*;

/// Log filter of the agents: the DNS controller at debug (every API call is logged).
const LOG_FILTER: &str =
    "info,constellation_dns=debug,constellation_lease=info,openraft=warn,pingora_core=warn,pingora_proxy=warn";
/// The managed zone.
pub const ZONE: &str = "example.test";
/// The wildcard name.
pub const WILDCARD: &str = "*.example.test";
/// The ownership comment of this cluster's records (default `cluster_id`).
pub const MARKER: &str = "managed-by=constellation cluster=constellation";
/// The token the fake accepts.
pub const GOOD_TOKEN: &str = "cf-test-token-3f9a61c2d4e5";
/// A token the fake refuses.
pub const WRONG_TOKEN: &str = "cf-wrong-token-77aa01bc99";
/// The two leases.
pub const LEASES: [&str; 2] = ["lb-leader", "dns-writer"];
/// The front-door lease.
pub const LB: &str = "lb-leader";
/// The DNS-writer lease.
pub const DNS: &str = "dns-writer";
/// `reconcile_interval_ms` of every test cluster.
pub const RECONCILE_MS: u64 = 2000;
/// `leader_settle_ms` of every test cluster.
pub const SETTLE_MS: u64 = 300;

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
}

/// Nanoseconds since the Unix epoch, the clock of `lease-history.jsonl`.
pub fn unix_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

/// Milliseconds, for printing nanosecond differences.
pub fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// The public IP of node `n<index>`.
pub fn ip_of(index: usize) -> String {
    format!("192.0.2.{index}")
}

/// The index of node `nK`.
pub fn index_of(name: &str) -> usize {
    name.trim_start_matches('n').parse().unwrap_or_else(|_| panic!("not a node name: {name}"))
}

/// The per-node record name of `n<index>`.
pub fn node_record(index: usize) -> String {
    format!("n{index}.nodes.{ZONE}")
}

/// True for the methods that change the zone.
pub fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

/// Polls `check` every 25 ms until it returns `Ok` or `limit` passes, then panics with
/// its last error and `context()`. Returns the value and how long it took.
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

// === ports and uids ===

static RESERVED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free port (TCP and UDP) that no other node of this process was given.
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

/// A block of uids for one isolatable cluster (distinct per cluster and per test process,
/// and apart from the range the lease tests use).
fn take_uids() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = NEXT.fetch_add(1, Ordering::Relaxed);
    61_000 + (std::process::id() % 500) * 40 + (block % 5) * 8
}

// === taps ===

/// One request a [`Tap`] passed to the fake.
#[derive(Debug, Clone)]
pub struct Tapped {
    /// The node whose tap it came through.
    pub node: String,
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// When its first line arrived, Unix ns.
    pub at_ns: i128,
    /// When its first line arrived.
    pub at: Instant,
    /// The status the fake answered.
    pub status: u16,
}

impl Tapped {
    /// True for POST, PUT, PATCH, DELETE.
    pub fn is_write(&self) -> bool {
        is_write(&self.method)
    }
}

/// A relay on its own loopback port in front of the fake, recording what one node sends.
pub struct Tap {
    /// Where the node is pointed.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 message (head and a `Content-Length` body); returns its first line,
/// the raw bytes and when the first line arrived.
async fn read_message<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<(String, Vec<u8>, Instant, i128)>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let (at, at_ns) = (Instant::now(), unix_ns());
    let first = line.trim_end().to_string();
    let mut raw = line.clone().into_bytes();
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        raw.extend_from_slice(line.as_bytes());
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    raw.extend_from_slice(&body);
    Ok(Some((first, raw, at, at_ns)))
}

async fn relay(client: TcpStream, node: String, upstream: SocketAddr, log: Arc<Mutex<Vec<Tapped>>>) {
    let (cr, mut cw) = client.into_split();
    let mut cr = BufReader::new(cr);
    let Ok(up) = TcpStream::connect(upstream).await else { return };
    let (ur, mut uw) = up.into_split();
    let mut ur = BufReader::new(ur);
    while let Ok(Some((first, raw, at, at_ns))) = read_message(&mut cr).await {
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let (path, query) = (path.to_string(), query.to_string());
        if uw.write_all(&raw).await.is_err() {
            return;
        }
        let Ok(Some((status_line, resp, _, _))) = read_message(&mut ur).await else { return };
        let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        log.lock().unwrap().push(Tapped { node: node.clone(), method, path, query, at_ns, at, status });
        if cw.write_all(&resp).await.is_err() {
            return;
        }
    }
}

impl Tap {
    async fn start(node: &str, upstream: SocketAddr, log: Arc<Mutex<Vec<Tapped>>>) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = node.to_string();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(relay(sock, node.clone(), upstream, log.clone()));
            }
        });
        Tap { addr, task }
    }
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

/// What a settled group agrees on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
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

/// One line of `lease-history.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unix nanoseconds.
    pub t_ns: i128,
    /// Lease name.
    pub lease: String,
    /// Fencing token.
    pub token: u64,
    /// `acquired`, `renewed` or `lost`.
    pub kind: String,
}

// === nodes ===

/// One agent process of a [`DnsCluster`].
pub struct Node {
    /// 1-based; the name is `n<index>`.
    pub index: usize,
    /// `n<index>`.
    pub name: String,
    /// Gossip (UDP) address.
    pub gossip: SocketAddr,
    /// The cluster address; Raft listens on its port + 1.
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
}

impl Node {
    /// The Raft port: the cluster port + 1.
    pub fn raft_port(&self) -> u16 {
        self.cluster.port() + 1
    }

    /// This node's public IP.
    pub fn ip(&self) -> String {
        ip_of(self.index)
    }

    fn spawn(&mut self, dir: &Path) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["agent", "-c"])
            .arg(&self.config)
            .current_dir(dir)
            .env("CONSTELLATION_LOG", LOG_FILTER)
            .env("CONSTELLATION_PUBLIC_IP", self.ip())
            .env_remove("CONSTELLATION_GOSSIP__KEY")
            .env_remove("CONSTELLATION_ADMIN__TOKEN")
            .env_remove("CONSTELLATION_DNS__API_TOKEN");
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            cmd.env_remove(var);
        }
        cmd.stdout(Stdio::null()).stderr(log);
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    /// Whether the process was started and not killed by the test.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `SIGKILL`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

    /// `GET /metrics`, the whole text.
    pub async fn admin_metrics(&self) -> String {
        fetch(self.admin, "GET", "admin", "/metrics", &[], &[]).await.unwrap().text()
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
                    lease: v["lease"].as_str()?.to_string(),
                    token: v["token"].as_u64()?,
                    kind: v["event"].as_str()?.to_string(),
                })
            })
            .collect()
    }

    /// The whole log of the node.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the nodes' token file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The token the fake accepts.
    Good,
    /// A token the fake refuses.
    Wrong,
    /// No `api_token_file` (dry run).
    Absent,
}

/// How to build a [`DnsCluster`].
#[derive(Debug, Clone)]
pub struct Spec {
    /// Raft timings of every node.
    pub timings: Timings,
    /// The token setup.
    pub token: Token,
    /// Point each node at the fake through its own [`Tap`].
    pub tapped: bool,
    /// Run every agent under its own uid, so [`Partition`] can cut it off (needs root).
    pub isolatable: bool,
    /// Lines appended to `[dns]`.
    pub dns_extra: String,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec::new()
    }
}

impl Spec {
    /// Three voters with [`Timings::FAST`], the good token, straight at the fake.
    pub fn new() -> Spec {
        Spec { timings: Timings::FAST, token: Token::Good, tapped: false, isolatable: false, dns_extra: String::new() }
    }
}

/// Three voters, roles `lb` and `dns`, and the fake Cloudflare they write to.
pub struct DnsCluster {
    /// The nodes, node 1 first.
    pub nodes: Vec<Node>,
    /// Raft timings of every node.
    pub timings: Timings,
    /// The fake API.
    pub fake: FakeCloudflare,
    /// Id of zone `example.test` in the fake.
    pub zone_id: String,
    /// Id of the decoy zone `example.org` in the fake.
    pub decoy_zone_id: String,
    /// The taps (tapped clusters only), node 1 first.
    pub taps: Vec<Tap>,
    tap_log: Arc<Mutex<Vec<Tapped>>>,
    /// (Instant, Unix ns) taken together, to place the fake's `Instant`s on the Unix clock.
    pub clock: (Instant, i128),
    /// Configs, token, keys, logs and data directories. Dropped last.
    pub dir: Scratch,
}

impl DnsCluster {
    /// Starts the fake, writes the configs, starts every agent at once and waits until
    /// each answers `/healthz`.
    pub async fn start(spec: Spec) -> DnsCluster {
        let clock = (Instant::now(), unix_ns());
        let fake = FakeCloudflare::start(GOOD_TOKEN).await.unwrap();
        let decoy_zone_id = fake.add_zone("example.org");
        let zone_id = fake.add_zone(ZONE);
        let fake_addr: SocketAddr =
            fake.api_url().trim_start_matches("http://").split('/').next().unwrap().parse().unwrap();
        let dir = Scratch::new("dns");
        let (code, _, err) = run(&["keygen", "--out", "cluster.key"], &dir.0);
        assert_eq!(code, 0, "keygen failed: {err}");
        match spec.token {
            Token::Good => drop(dir.write("cf.token", &format!("{GOOD_TOKEN}\n"))),
            Token::Wrong => drop(dir.write("cf.token", &format!("{WRONG_TOKEN}\n"))),
            Token::Absent => {}
        }
        let uid_base = spec.isolatable.then(take_uids);
        let tap_log = Arc::new(Mutex::new(Vec::new()));
        let mut nodes = Vec::new();
        let mut taps = Vec::new();
        for index in 1..=3 {
            let name = format!("n{index}");
            if spec.tapped {
                taps.push(Tap::start(&name, fake_addr, tap_log.clone()).await);
            }
            nodes.push(Node {
                index,
                name: name.clone(),
                gossip: format!("127.0.0.1:{}", take_port()).parse().unwrap(),
                cluster: format!("127.0.0.1:{}", take_cluster_port()).parse().unwrap(),
                admin: format!("127.0.0.1:{}", take_port()).parse().unwrap(),
                web: format!("127.0.0.1:{}", take_port()).parse().unwrap(),
                config: dir.path(&format!("{name}.toml")),
                log: dir.path(&format!("{name}.log")),
                data: dir.path(&format!("{name}-data")),
                uid: uid_base.map(|b| b + index as u32),
                child: None,
            });
        }
        let voters: Vec<String> = nodes.iter().map(|n| format!("\"{}={}\"", n.name, n.cluster)).collect();
        let voters = voters.join(", ");
        let t = spec.timings;
        for node in &nodes {
            let seeds = if node.index == 1 { "[]".to_string() } else { format!("[\"{}\"]", nodes[0].gossip) };
            let mut key = "cluster.key".to_string();
            if let Some(uid) = node.uid {
                // The key is 0600: give each uid its own copy.
                let own = format!("{}.key", node.name);
                std::fs::copy(dir.path(&key), dir.path(&own)).unwrap();
                std::os::unix::fs::chown(dir.path(&own), Some(uid), Some(uid)).unwrap();
                key = own;
                std::fs::create_dir_all(&node.data).unwrap();
                std::os::unix::fs::chown(&node.data, Some(uid), Some(uid)).unwrap();
            }
            let api_url = match taps.get(node.index - 1) {
                Some(tap) => format!("http://{}/client/v4/", tap.addr),
                None => fake.api_url(),
            };
            let token_line =
                if spec.token == Token::Absent { String::new() } else { "api_token_file = \"cf.token\"\n".into() };
            let text = format!(
                "[node]\nname = \"{name}\"\ndata_dir = \"{name}-data\"\nroles = [\"lb\", \"dns\"]\n\
                 [gossip]\naddress = \"{gossip}\"\nseeds = {seeds}\nkey_file = \"{key}\"\n\
                 public_ip_services = []\n\
                 [cluster]\naddress = \"{cluster}\"\n\
                 [admin]\naddress = \"{admin}\"\n\
                 [entrypoints.web]\naddress = \"{web}\"\n\
                 [raft]\nvoters = [{voters}]\nlease_ttl_ms = {ttl}\nelection_timeout_ms = {el}\nheartbeat_ms = {hb}\n\
                 [dns]\nzone = \"{ZONE}\"\napi_url = \"{api_url}\"\n{token_line}apex = true\nwildcard = true\n\
                 node_record = \"{{node}}.nodes.{ZONE}\"\nttl = 60\nreconcile_interval_ms = {RECONCILE_MS}\n\
                 leader_settle_ms = {SETTLE_MS}\n{extra}\n",
                name = node.name,
                gossip = node.gossip,
                cluster = node.cluster,
                admin = node.admin,
                web = node.web,
                ttl = t.ttl_ms,
                el = t.election_ms,
                hb = t.heartbeat_ms,
                extra = spec.dns_extra,
            );
            dir.write(&format!("{}.toml", node.name), &text);
        }
        let mut cluster = DnsCluster { nodes, timings: t, fake, zone_id, decoy_zone_id, taps, tap_log, clock, dir };
        for i in 1..=3 {
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

    /// Starts node `index` (again) with its config and data directory; does not wait.
    pub fn spawn(&mut self, index: usize) {
        let dir = self.dir.0.clone();
        self.nodes[index - 1].spawn(&dir);
    }

    /// `SIGKILL`s node `index`.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index - 1].kill();
    }

    /// `at` on the Unix clock (ns).
    pub fn unix_of(&self, at: Instant) -> i128 {
        let (i0, u0) = self.clock;
        if at >= i0 {
            u0 + at.duration_since(i0).as_nanos() as i128
        } else {
            u0 - i0.duration_since(at).as_nanos() as i128
        }
    }

    /// What the taps recorded, in order of arrival.
    pub fn tapped(&self) -> Vec<Tapped> {
        let mut log = self.tap_log.lock().unwrap().clone();
        log.sort_by_key(|r| r.at);
        log
    }

    /// What `observers` agree on right now: per lease one holder and token, with
    /// `held_here` true on exactly the holder (when it is an observer).
    pub async fn agreement(&self, observers: &[usize]) -> Result<Settled, String> {
        let mut leases: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut statuses = Vec::new();
        for &i in observers {
            let node = self.node(i);
            let status = node.status().await.ok_or_else(|| format!("{} does not answer", node.name))?;
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
        Ok(Settled { leases })
    }

    /// Waits until `observers` agree on both leases on two polls in a row.
    pub async fn wait_settled(&self, observers: &[usize], limit: Duration) -> (Settled, Duration) {
        let what = format!("nodes {observers:?} to agree on both leases");
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

    /// The records of `name` (type A) in the fake that carry our marker.
    pub fn owned(&self, name: &str) -> Vec<Value> {
        self.fake.find(name, "A").into_iter().filter(|r| r["comment"].as_str() == Some(MARKER)).collect()
    }

    /// `Ok` iff the fake holds exactly one owned A record per `(name, ip)` of `want` with
    /// that content (ttl 60, not proxied, in zone `example.test`), and no other owned record.
    pub fn zone_is(&self, want: &[(String, String)]) -> Result<(), String> {
        for (name, ip) in want {
            let owned = self.owned(name);
            match owned.as_slice() {
                [r] if r["content"].as_str() == Some(ip.as_str()) => {
                    if r["ttl"] != 60 || r["proxied"] != false || r["zone_id"].as_str() != Some(&self.zone_id) {
                        return Err(format!("{name}: unexpected fields {r}"));
                    }
                }
                _ => {
                    return Err(format!(
                        "{name}: owned A records {:?}, want one with {ip}",
                        owned.iter().map(|r| r["content"].clone()).collect::<Vec<_>>()
                    ))
                }
            }
        }
        let extra: Vec<Value> = self
            .fake
            .records()
            .into_iter()
            .filter(|r| r["comment"].as_str() == Some(MARKER))
            .filter(|r| !want.iter().any(|(n, _)| r["name"].as_str() == Some(n)))
            .collect();
        if !extra.is_empty() {
            return Err(format!("owned records outside the desired set: {extra:?}"));
        }
        Ok(())
    }

    /// The desired zone with the front door at node `leader`, and records for `nodes`.
    pub fn want(leader: usize, nodes: &[usize]) -> Vec<(String, String)> {
        let mut v = vec![(ZONE.to_string(), ip_of(leader)), (WILDCARD.to_string(), ip_of(leader))];
        v.extend(nodes.iter().map(|&i| (node_record(i), ip_of(i))));
        v
    }

    /// Waits until [`DnsCluster::zone_is`] holds for `want`.
    pub async fn wait_zone(&self, what: &str, want: &[(String, String)], limit: Duration) -> Duration {
        eventually(what, limit, || self.dump(), || async { self.zone_is(want) }).await.1
    }

    /// Every node's log tail and the fake's records, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "\n===== {} (raft :{}, admin {}, running {}) =====\n{}\n",
                n.name,
                n.raft_port(),
                n.admin,
                n.running(),
                n.log_tail()
            ));
        }
        out.push_str("\n===== fake records =====\n");
        for r in self.fake.records() {
            out.push_str(&format!("{} {} {} {:?}\n", r["name"], r["type"], r["content"], r["comment"]));
        }
        out
    }
}

/// Checks a request sequence against a token bucket of `per_5min` requests per 5 minutes
/// and burst `burst` that started full: no window `[t_i, t_j]` may hold more than
/// `burst + rate × (t_j − t_i + slack)` requests. Returns the worst window, if any breaks it.
pub fn bucket_violation(times: &[Instant], per_5min: u32, burst: u32, slack: Duration) -> Option<String> {
    let rate = f64::from(per_5min) / 300.0;
    let mut worst: Option<(f64, String)> = None;
    for i in 0..times.len() {
        for j in i..times.len() {
            let dt = times[j].saturating_duration_since(times[i]) + slack;
            let allowed = f64::from(burst) + rate * dt.as_secs_f64();
            let n = (j - i + 1) as f64;
            if n > allowed && worst.as_ref().is_none_or(|(w, _)| n - allowed > *w) {
                worst = Some((
                    n - allowed,
                    format!(
                        "{n} requests in {:?} (allowed {allowed:.2})",
                        times[j].saturating_duration_since(times[i])
                    ),
                ));
            }
        }
    }
    worst.map(|(_, s)| s)
}

// === partitions ===

/// iptables rules cutting one node's Raft traffic: everything to and from its Raft port,
/// and its own uid's packets to the other nodes' Raft ports. Deleted on drop, panic or
/// not. Each rule carries the comment `constellation-dns-test-<pid>`; rules left by a
/// test process that no longer exists are removed before new ones are added.
pub struct Partition {
    rules: Vec<Vec<String>>,
}

const RULE_TAG: &str = "constellation-dns-test-";

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
