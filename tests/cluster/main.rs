//! End-to-end tests of cluster membership: several real agent processes on loopback,
//! joined by SWIM gossip over sealed UDP, exchanging node states over the sealed TCP
//! cluster port, and routing to each other's service instances.
//!
//! [`Cluster`] starts the nodes (node 1 is the seed), waits with deadlines for them to
//! agree, kills (`SIGKILL`) and restarts them, and reads their status.

#![allow(clippy::unwrap_used)]

#[allow(unused_imports)]
#[path = "../support/mod.rs"]
mod support;

mod t01_join;
mod t02_join_five;
mod t03_crash_restart;
mod t04_partition;
mod t05_wrong_key;
mod t06_garbage;
mod t07_failover;
mod t08_outlier_hint;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Log filter of the agents: gossip at debug, so a failing test's log shows why.
const LOG_FILTER: &str = "info,constellation_cluster=debug,pingora_core=warn,pingora_proxy=warn";

/// A free loopback UDP port (bound and released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What one node runs with.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// `[[instances]]`: (service, url).
    pub instances: Vec<(String, String)>,
    /// Appended to the config (e.g. a `[proxy.breaker]` section).
    pub extra_toml: String,
    /// Key file name in the cluster directory; default `cluster.key`.
    pub key_file: Option<String>,
}

impl NodeSpec {
    /// A node announcing one `app` instance at `url`.
    pub fn app(url: String) -> NodeSpec {
        NodeSpec { instances: vec![("app".into(), url)], ..NodeSpec::default() }
    }
}

/// One agent process of a [`Cluster`] and its addresses.
pub struct Node {
    /// 1-based index; the name is `n<index>`.
    pub index: usize,
    /// `n<index>`.
    pub name: String,
    /// Gossip (UDP) address.
    pub gossip: SocketAddr,
    /// Cluster (TCP, state pulls) address.
    pub cluster: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    /// The `web` entrypoint.
    pub web: SocketAddr,
    /// `CONSTELLATION_PUBLIC_IP` of the node: `192.0.2.<index>`.
    pub public_ip: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its log (stderr), appended to across restarts.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self, dir: &std::path::Path) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(bin())
            .args(["agent", "-c"])
            .arg(&self.config)
            .current_dir(dir)
            .env("CONSTELLATION_LOG", LOG_FILTER)
            .env("CONSTELLATION_PUBLIC_IP", &self.public_ip)
            .env_remove("CONSTELLATION_GOSSIP__KEY")
            .env_remove("CONSTELLATION_ADMIN__TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Whether the process was started and not killed by the test.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `SIGKILL`: no graceful leave, peers must detect the crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `SIGTERM`: the agent leaves the cluster at once, then exits after its grace
    /// period. Does not wait.
    pub fn terminate(&mut self) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM {} failed", child.id());
    }

    /// Asserts the process has not exited on its own.
    pub fn assert_alive(&mut self) {
        let exited = self.child.as_mut().map(|c| c.try_wait().unwrap());
        assert!(matches!(exited, Some(None)), "{} is not running ({exited:?}); log:\n{}", self.name, self.log_tail());
    }

    /// `GET /api/v1/status`, or `None` if the node does not answer.
    pub async fn status(&self) -> Option<Value> {
        let r = fetch(self.admin, "GET", "admin", "/api/v1/status", &[], &[]).await.ok()?;
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

    /// HTTP status of an admin path, or `None` if the node does not answer.
    pub async fn admin_status(&self, path: &str) -> Option<u16> {
        fetch(self.admin, "GET", "admin", path, &[], &[]).await.ok().map(|r| r.status)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, limit: Duration) {
        eventually(&format!("{} ready", self.name), limit, || async {
            match self.admin_status("/readyz").await {
                Some(200) => Ok(()),
                other => Err(format!("/readyz: {other:?}")),
            }
        })
        .await;
    }

    /// Waits until `/healthz` answers 200 (the process is up, joined or not).
    pub async fn wait_healthy(&self, limit: Duration) {
        eventually(&format!("{} healthy", self.name), limit, || async {
            match self.admin_status("/healthz").await {
                Some(200) => Ok(()),
                other => Err(format!("/healthz: {other:?}")),
            }
        })
        .await;
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// N agents sharing a key, joined through node 1.
pub struct Cluster {
    /// The nodes, node 1 first.
    pub nodes: Vec<Node>,
    /// Configs, the key and logs of all nodes.
    pub dir: Scratch,
}

impl Cluster {
    /// Starts one node per spec (node 1 first, as the seed, then the others at once),
    /// waits until each is ready and every node sees every node alive.
    pub async fn start(specs: Vec<NodeSpec>) -> Cluster {
        let dir = Scratch::new("cluster");
        let (code, _, err) = run(&["keygen", "--out", "cluster.key"], &dir.0);
        assert_eq!(code, 0, "keygen failed: {err}");
        let mut cluster = Cluster { nodes: Vec::new(), dir };
        for spec in &specs {
            cluster.add(spec);
        }
        cluster.nodes[0].spawn(&cluster.dir.0);
        cluster.nodes[0].wait_ready(Duration::from_secs(20)).await;
        for node in &mut cluster.nodes[1..] {
            node.spawn(&cluster.dir.0);
        }
        for node in &cluster.nodes[1..] {
            node.wait_ready(Duration::from_secs(20)).await;
        }
        cluster.wait_all_alive(Duration::from_secs(20)).await;
        cluster
    }

    /// Writes the config of one more node (not started); returns its index.
    pub fn add(&mut self, spec: &NodeSpec) -> usize {
        let index = self.nodes.len() + 1;
        let name = format!("n{index}");
        let gossip: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let cluster: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let seeds = match self.nodes.first() {
            Some(seed) => format!("[\"{}\"]", seed.gossip),
            None => "[]".to_string(),
        };
        let key = spec.key_file.clone().unwrap_or_else(|| "cluster.key".into());
        let instances: String = spec
            .instances
            .iter()
            .map(|(service, url)| format!("[[instances]]\nservice = \"{service}\"\nurl = \"{url}\"\n"))
            .collect();
        let text = format!(
            "[node]\nname = \"{name}\"\ndata_dir = \"{name}-data\"\n\
             [gossip]\naddress = \"{gossip}\"\nseeds = {seeds}\nkey_file = \"{key}\"\npush_pull_interval_ms = 1000\n\
             public_ip_services = []\n\
             [cluster]\naddress = \"{cluster}\"\n\
             [admin]\naddress = \"{admin}\"\n\
             [entrypoints.web]\naddress = \"{web}\"\n\
             [routes]\nwatch_interval_ms = 100\n\
             {instances}{}\n",
            spec.extra_toml
        );
        let config = self.dir.write(&format!("{name}.toml"), &text);
        self.nodes.push(Node {
            index,
            name: name.clone(),
            gossip,
            cluster,
            admin,
            web,
            public_ip: format!("192.0.2.{index}"),
            config,
            log: self.dir.path(&format!("{name}.log")),
            child: None,
        });
        index
    }

    /// Node `index` (1-based).
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index - 1]
    }

    /// Starts node `index` (added with [`Cluster::add`], or killed) without waiting.
    pub fn spawn(&mut self, index: usize) {
        let dir = self.dir.0.clone();
        self.nodes[index - 1].spawn(&dir);
    }

    /// `SIGKILL`s node `index`.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index - 1].kill();
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
        let took = eventually_or(
            &what,
            limit,
            || self.dump(),
            || async {
                for &i in observers {
                    let node = self.node(i);
                    let status = node.status().await.ok_or_else(|| format!("{} does not answer", node.name))?;
                    let seen = member_states(&status);
                    let want: Vec<(String, String)> = expect.iter().map(|(n, s)| (n.clone(), s.to_string())).collect();
                    if seen != want {
                        return Err(format!("{} sees {seen:?}", node.name));
                    }
                }
                Ok(())
            },
        )
        .await;
        took
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
        eventually_or(
            &what,
            limit,
            || self.dump(),
            || async {
                for &i in observers {
                    let node = self.node(i);
                    let status = node.status().await.ok_or_else(|| format!("{} does not answer", node.name))?;
                    let got = upstream_urls(&status, service);
                    if got != want {
                        return Err(format!("{} routes {service} to {got:?}", node.name));
                    }
                }
                Ok(())
            },
        )
        .await
    }

    /// Every node's log tail and member view, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "\n===== {} (gossip {}, cluster {}, running {}) =====\n{}\n",
                n.name,
                n.gossip,
                n.cluster,
                n.running(),
                n.log_tail()
            ));
        }
        out
    }
}

/// `(name, state)` of every member in a status document, in order (sorted by name).
pub fn member_states(status: &Value) -> Vec<(String, String)> {
    members(status)
        .iter()
        .map(|m| (m["name"].as_str().unwrap_or("?").to_string(), m["state"].as_str().unwrap_or("?").to_string()))
        .collect()
}

/// `(name, state, incarnation)` of every member in a status document.
pub fn identities(status: &Value) -> Vec<(String, String, u64)> {
    members(status)
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("?").to_string(),
                m["state"].as_str().unwrap_or("?").to_string(),
                m["incarnation"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The `members` array of a status document.
pub fn members(status: &Value) -> Vec<Value> {
    status["members"].as_array().cloned().unwrap_or_default()
}

/// The member `name` in a status document.
pub fn member<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no member {name}: {status:#}"))
}

/// URLs of the upstreams of `service` (empty if there is no such service).
pub fn upstream_urls(status: &Value, service: &str) -> BTreeSet<String> {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|svc| svc["name"] == service))
        .and_then(|svc| svc["upstreams"].as_array())
        .map(|ups| ups.iter().filter_map(|u| u["url"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Polls `check` every 50 ms until it returns `Ok` or `limit` passes, then panics with
/// its last error. Returns how long it took.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    eventually_or(what, limit, String::new, check).await
}

/// Like [`eventually`]; on timeout the panic message ends with `context()`.
pub async fn eventually_or<F, Fut, C>(what: &str, limit: Duration, context: C, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
    C: FnOnce() -> String,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(()) => return started.elapsed(),
            Err(e) => e,
        };
        if started.elapsed() >= limit {
            panic!("timed out after {limit:?} waiting for {what}; last: {last}{}", context());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Backends `b1..=bn` on free loopback ports.
pub async fn backends(n: usize) -> Vec<Backend> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(Backend::start(&format!("b{i}"), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    }
    out
}
