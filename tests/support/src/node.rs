//! One agent process of a [`crate::Fleet`]: its addresses, files and process, and
//! what a test asks of it (status, metrics, readiness, lease history, signals).

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::client::fetch;
use crate::status::metric_value;
use crate::wait::eventually_or;

/// One line of an agent's `lease-history.jsonl`.
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

/// One agent process of a [`crate::Fleet`].
pub struct Node {
    /// 1-based; the name is `n<index>`.
    pub index: usize,
    /// `n<index>`.
    pub name: String,
    /// Gossip (UDP) address.
    pub gossip: SocketAddr,
    /// Cluster (TCP, state pulls) address; Raft listens on its port + 1.
    pub cluster: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    /// The `web` entrypoint.
    pub web: SocketAddr,
    /// `CONSTELLATION_PUBLIC_IP`: `192.0.2.<index>`.
    pub public_ip: String,
    /// Its config file.
    pub config: PathBuf,
    /// stderr of every incarnation, appended.
    pub log: PathBuf,
    /// `<dir>/n<index>-data`.
    pub data: PathBuf,
    /// The uid the agent runs as (isolatable fleets only).
    pub uid: Option<u32>,
    pub(crate) bin: PathBuf,
    pub(crate) log_filter: String,
    pub(crate) tail_lines: usize,
    pub(crate) child: Option<Child>,
}

impl Node {
    /// The Raft port: the cluster port + 1.
    pub fn raft_port(&self) -> u16 {
        self.cluster.port() + 1
    }

    /// This node's public IP.
    pub fn ip(&self) -> String {
        self.public_ip.clone()
    }

    /// Starts the agent; does not wait.
    ///
    /// # Panics
    /// When it already runs or cannot be started.
    pub fn spawn(&mut self, dir: &Path) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = match OpenOptions::new().create(true).append(true).open(&self.log) {
            Ok(f) => f,
            Err(e) => panic!("cannot open {}: {e}", self.log.display()),
        };
        let mut cmd = Command::new(&self.bin);
        cmd.args(["agent", "-c"])
            .arg(&self.config)
            .current_dir(dir)
            .env("CONSTELLATION_LOG", &self.log_filter)
            .env("CONSTELLATION_PUBLIC_IP", &self.public_ip);
        // Settings from the caller's environment would override the configs.
        for var in ["CONSTELLATION_GOSSIP__KEY", "CONSTELLATION_ADMIN__TOKEN", "CONSTELLATION_DNS__API_TOKEN"] {
            cmd.env_remove(var);
        }
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            cmd.env_remove(var);
        }
        cmd.stdout(Stdio::null()).stderr(log);
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid);
        }
        match cmd.spawn() {
            Ok(c) => self.child = Some(c),
            Err(e) => panic!("cannot start {} ({}): {e}", self.name, self.bin.display()),
        }
    }

    /// Whether the process was started and not killed by the test.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The agent's process id.
    ///
    /// # Panics
    /// When it does not run.
    pub fn pid(&self) -> u32 {
        match &self.child {
            Some(c) => c.id(),
            None => panic!("{} does not run", self.name),
        }
    }

    /// `SIGKILL` (also ends a stopped process); no graceful leave.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// `SIGTERM`: the agent leaves at once, then exits after its grace period. Does not
    /// wait.
    pub fn terminate(&mut self) {
        self.signal("-TERM");
    }

    /// `SIGSTOP`: the process is paused, its sockets and timers with it.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// `SIGCONT`.
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    /// Waits until the process exits (at most `limit`) and returns its exit code
    /// (`None` if it was killed by a signal); the node then counts as not running.
    ///
    /// # Panics
    /// When it does not run, or is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let Some(child) = self.child.as_mut() else { panic!("{} does not run", self.name) };
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} still running {limit:?} after it was told to stop; log:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts the process has not exited on its own.
    pub fn assert_alive(&mut self) {
        let exited = self.child.as_mut().map(|c| c.try_wait().ok().flatten());
        assert!(matches!(exited, Some(None)), "{} is not running ({exited:?}); log:\n{}", self.name, self.log_tail());
    }

    /// `GET /api/v1/status`, or `None` if the node does not answer 200 within 2 s.
    pub async fn status(&self) -> Option<Value> {
        let get = fetch(self.admin, "GET", "admin", "/api/v1/status", &[], &[]);
        let r = tokio::time::timeout(Duration::from_secs(2), get).await.ok()?.ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_slice(&r.body).ok()
    }

    /// `GET /api/v1/status`.
    ///
    /// # Panics
    /// When the node does not answer.
    pub async fn must_status(&self) -> Value {
        match self.status().await {
            Some(s) => s,
            None => panic!("{} does not answer /api/v1/status; log:\n{}", self.name, self.log_tail()),
        }
    }

    /// `GET /metrics`, the whole text.
    ///
    /// # Panics
    /// When the node does not answer 200.
    pub async fn metrics(&self) -> String {
        match fetch(self.admin, "GET", "admin", "/metrics", &[], &[]).await {
            Ok(r) if r.status == 200 => r.text(),
            other => panic!("{} /metrics: {other:?}", self.name),
        }
    }

    /// The sum of a metric's samples whose labels contain every fragment of `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// The HTTP status of an admin path, or `None` if the node does not answer.
    pub async fn admin_status(&self, path: &str) -> Option<u16> {
        fetch(self.admin, "GET", "admin", path, &[], &[]).await.ok().map(|r| r.status)
    }

    async fn wait_admin(&self, path: &str, limit: Duration) {
        eventually_or(
            &format!("{} {path}", self.name),
            limit,
            || format!("\n{}", self.log_tail()),
            || async {
                match self.admin_status(path).await {
                    Some(200) => Ok(()),
                    other => Err(format!("{path}: {other:?}")),
                }
            },
        )
        .await;
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, limit: Duration) {
        self.wait_admin("/readyz", limit).await;
    }

    /// Waits until `/healthz` answers 200 (the process is up, joined or not).
    pub async fn wait_healthy(&self, limit: Duration) {
        self.wait_admin("/healthz", limit).await;
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

    /// The node's whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(self.tail_lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
