//! One `constellation agent` with a routes file, for the proxy suite.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::binary::binary;
use crate::client::{fetch, Client, Reply};
use crate::scratch::{free_port, Scratch};
use crate::status::{metric_value, upstream_status};
use crate::wait::wait_for;

/// Log filter of a single agent: the proxy at debug.
const LOG_FILTER: &str = "info,constellation_proxy=debug,pingora_core=warn,pingora_proxy=warn";

/// A running agent process; killed on drop.
pub struct Agent {
    /// The process.
    pub child: Child,
    /// The `web` entrypoint.
    pub web: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    /// Its config, routes file and log.
    pub dir: Scratch,
}

fn must<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

impl Agent {
    /// Starts an agent whose routes file is `routes_yaml`; `extra_toml` is appended to the
    /// config (e.g. a `[proxy]` section). Waits until `/readyz` answers 200.
    pub async fn start(routes_yaml: &str, extra_toml: &str) -> Agent {
        start_agent_with(routes_yaml, "", extra_toml, &[], None).await
    }

    /// The agent's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("agent.log")).unwrap_or_default()
    }

    /// A keep-alive client for the `web` entrypoint.
    pub fn client(&self) -> Client {
        Client::new(self.web)
    }

    /// `GET path` with `Host: host` on a fresh connection to `web`.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        must("GET through the agent", fetch(self.web, "GET", host, path, &[], &[]).await)
    }

    /// `GET` of an admin path.
    pub async fn admin_get(&self, path: &str) -> Reply {
        must("admin GET", fetch(self.admin, "GET", "admin", path, &[], &[]).await)
    }

    /// `GET /api/v1/status`, parsed.
    pub async fn status(&self) -> Value {
        let r = self.admin_get("/api/v1/status").await;
        assert_eq!(r.status, 200, "{}", r.text());
        must("status JSON", serde_json::from_slice(&r.body))
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text()
    }

    /// The sum of a metric's samples whose label text contains every `labels` fragment.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// The breaker state of the upstream `url` of service `service`.
    pub async fn breaker(&self, service: &str, url: &str) -> String {
        let s = self.status().await;
        upstream_status(&s, service, url)["breaker"]["state"].as_str().unwrap_or("?").to_string()
    }

    fn generation(status: &Value) -> u64 {
        status["config"]["generation"].as_u64().unwrap_or(0)
    }

    /// Replaces the routes file and waits until the agent published a newer generation;
    /// returns it.
    pub async fn reload(&self, routes_yaml: &str) -> u64 {
        let before = Agent::generation(&self.status().await);
        self.dir.write("routes.yaml", routes_yaml);
        wait_for("new route table", Duration::from_secs(10), || async {
            Agent::generation(&self.status().await) > before
        })
        .await;
        Agent::generation(&self.status().await)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Like [`Agent::start`], with more control: `files` are written into the scratch
/// directory first (e.g. a token file), `admin_toml` is added to the `[admin]` section
/// (e.g. `token_file = "admin.token"`), and readiness is probed with `bearer` as the admin
/// token when given.
pub async fn start_agent_with(
    routes_yaml: &str,
    admin_toml: &str,
    extra_toml: &str,
    files: &[(&str, &str)],
    bearer: Option<&str>,
) -> Agent {
    start_agent_at(IpAddr::from([127, 0, 0, 1]), routes_yaml, admin_toml, extra_toml, files, bearer).await
}

/// Like [`start_agent_with`], with the admin API listening on `admin_ip` (e.g.
/// `0.0.0.0`, which needs a token). [`Agent::admin`] is still its loopback address when
/// `admin_ip` is a wildcard.
pub async fn start_agent_at(
    admin_ip: IpAddr,
    routes_yaml: &str,
    admin_toml: &str,
    extra_toml: &str,
    files: &[(&str, &str)],
    bearer: Option<&str>,
) -> Agent {
    let dir = Scratch::new("agent");
    let (web, admin) = (free_port(), free_port());
    for (name, text) in files {
        dir.write(name, text);
    }
    dir.write("routes.yaml", routes_yaml);
    dir.write(
        "agent.toml",
        &format!(
            "[node]\nname = \"test\"\n[entrypoints.web]\naddress = \"127.0.0.1:{web}\"\n\
             [admin]\naddress = \"{admin_bind}\"\n{admin_toml}\n\
             [routes]\nfiles = [\"routes.yaml\"]\nwatch_interval_ms = 100\n{extra_toml}",
            admin_bind = SocketAddr::new(admin_ip, admin)
        ),
    );
    let log = must("agent log", std::fs::File::create(dir.path("agent.log")));
    let child = Command::new(binary())
        .args(["agent", "-c"])
        .arg(dir.path("agent.toml"))
        .env("CONSTELLATION_LOG", LOG_FILTER)
        .env_remove("CONSTELLATION_ADMIN__TOKEN")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    let agent = Agent {
        child: must("start the agent", child),
        web: SocketAddr::from(([127, 0, 0, 1], web)),
        admin: if admin_ip.is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], admin))
        } else {
            SocketAddr::new(admin_ip, admin)
        },
        dir,
    };
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = fetch(agent.admin, "GET", "admin", "/readyz", &headers, &[]).await {
            if r.status == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "agent not ready; log:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `/readyz` is served by the admin listener, which can come up a moment before the
    // proxy's: wait until the web entry point accepts too, so a test's first request
    // never meets a port that is not bound yet.
    while tokio::net::TcpStream::connect(agent.web).await.is_err() {
        assert!(Instant::now() < deadline, "web entry point {} not listening; log:\n{}", agent.web, agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent
}

/// A loadBalancer routes file: one router `name` with `rule` to `servers`, `lb_extra`
/// appended to the `loadBalancer` block.
pub fn routes(name: &str, rule: &str, servers: &[String], lb_extra: &str) -> String {
    let servers: String = servers.iter().map(|s| format!("          - url: \"{s}\"\n")).collect();
    format!(
        "http:\n  routers:\n    {name}:\n      rule: \"{rule}\"\n      service: {name}\n  services:\n    {name}:\n      loadBalancer:\n        servers:\n{servers}{lb_extra}"
    )
}
