//! Shared test harness: start real `constellation agent` processes on free loopback
//! ports with generated configs, and talk to them over real sockets.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use constellation::backend::{Backend, Behaviour, Hit};
pub use constellation::client::{fetch, Client, Reply};
use serde_json::Value;

/// A fresh scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "constellation-test-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Write a file atomically (write + rename), as an operator's tooling should.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port for an agent to bind later (TCP and UDP both free now).
///
/// Ports come from below the kernel's ephemeral range (32768+), walked by a per-process
/// counter, so a backend binding port 0 in a parallel test can never be handed a port
/// reserved here between our check and the agent's bind.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 10) * 1_200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 1_200) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

/// A loopback address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_constellation")
}

/// Run the binary to completion; returns (exit code, stdout, stderr).
pub fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).current_dir(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A running agent process.
pub struct Agent {
    pub child: Child,
    pub web: SocketAddr,
    pub admin: SocketAddr,
    pub dir: Scratch,
}

impl Agent {
    /// Start an agent whose routes file is `routes_yaml`; `extra_toml` is appended to
    /// the config (e.g. a `[proxy]` section). Waits until `/readyz` answers 200.
    pub async fn start(routes_yaml: &str, extra_toml: &str) -> Agent {
        let dir = Scratch::new("agent");
        let (web, admin) = (free_port(), free_port());
        dir.write("routes.yaml", routes_yaml);
        dir.write(
            "agent.toml",
            &format!(
                "[node]\nname = \"test\"\n[entrypoints.web]\naddress = \"127.0.0.1:{web}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\
                 [routes]\nfiles = [\"routes.yaml\"]\nwatch_interval_ms = 100\n{extra_toml}"
            ),
        );
        Agent::spawn(dir, web, admin).await
    }

    pub async fn spawn(dir: Scratch, web: u16, admin: u16) -> Agent {
        let log = std::fs::File::create(dir.path("agent.log")).unwrap();
        let child = Command::new(bin())
            .args(["agent", "-c"])
            .arg(dir.path("agent.toml"))
            .env("CONSTELLATION_LOG", "info,constellation_proxy=debug,pingora_core=warn,pingora_proxy=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let agent = Agent {
            child,
            web: format!("127.0.0.1:{web}").parse().unwrap(),
            admin: format!("127.0.0.1:{admin}").parse().unwrap(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = fetch(agent.admin, "GET", "admin", "/readyz", &[], &[]).await {
                if r.status == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "agent not ready; log:\n{}", agent.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        agent
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("agent.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(self.web)
    }

    pub async fn get(&self, host: &str, path: &str) -> Reply {
        fetch(self.web, "GET", host, path, &[], &[]).await.unwrap()
    }

    pub async fn status(&self) -> Value {
        let r = fetch(self.admin, "GET", "admin", "/api/v1/status", &[], &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        fetch(self.admin, "GET", "admin", path, &[], &[]).await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text()
    }

    /// Sum of a metric's samples whose label text contains every `labels` fragment.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Breaker state of the upstream with `url` in service `service`.
    pub async fn breaker(&self, service: &str, url: &str) -> String {
        let s = self.status().await;
        for svc in s["services"].as_array().unwrap() {
            if svc["name"] == service {
                for u in svc["upstreams"].as_array().unwrap() {
                    if u["url"] == url {
                        return u["breaker"]["state"].as_str().unwrap().to_string();
                    }
                }
            }
        }
        panic!("no upstream {url} in service {service}: {s:#}");
    }

    /// Replace the routes file and wait until the agent published generation > `after`.
    pub async fn reload(&self, routes_yaml: &str) -> u64 {
        let before = self.status().await["config"]["generation"].as_u64().unwrap();
        self.dir.write("routes.yaml", routes_yaml);
        wait_for("new route table", Duration::from_secs(10), || async {
            self.status().await["config"]["generation"].as_u64().unwrap() > before
        })
        .await;
        self.status().await["config"]["generation"].as_u64().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `cond` until it holds or `limit` passes (then panic naming `what`).
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A loadBalancer service routes file: one router `name` with `rule` to `servers`.
pub fn routes(name: &str, rule: &str, servers: &[String], lb_extra: &str) -> String {
    let servers: String = servers.iter().map(|s| format!("          - url: \"{s}\"\n")).collect();
    format!(
        "http:\n  routers:\n    {name}:\n      rule: \"{rule}\"\n      service: {name}\n  services:\n    {name}:\n      loadBalancer:\n        servers:\n{servers}{lb_extra}"
    )
}

/// Like [`Agent::start`], with more control: `files` are written into the scratch
/// directory first (e.g. a token file), `admin_toml` is added to the `[admin]` section
/// (e.g. `token_file = "admin.token"`), and readiness is probed with `bearer` as the
/// admin token when given.
pub async fn start_agent_with(
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
            "[node]\nname = \"test\"\n[entrypoints.web]\naddress = \"127.0.0.1:{web}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n{admin_toml}\n\
             [routes]\nfiles = [\"routes.yaml\"]\nwatch_interval_ms = 100\n{extra_toml}"
        ),
    );
    let log = std::fs::File::create(dir.path("agent.log")).unwrap();
    let child = Command::new(bin())
        .args(["agent", "-c"])
        .arg(dir.path("agent.toml"))
        .env("CONSTELLATION_LOG", "info,constellation_proxy=debug,pingora_core=warn,pingora_proxy=warn")
        .env_remove("CONSTELLATION_ADMIN__TOKEN")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent = Agent {
        child,
        web: format!("127.0.0.1:{web}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin}").parse().unwrap(),
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
    agent
}

/// Run the binary with a time limit; returns (exit code, stdout, stderr), or panics
/// (after killing it) when it is still running after `limit`.
pub fn run_with_limit(args: &[&str], dir: &Path, limit: Duration) -> (i32, String, String) {
    let mut child =
        Command::new(bin()).args(args).current_dir(dir).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`constellation {}` still running after {limit:?}; stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A JSON document's violations of the Traefik v3 file-provider schema (SchemaStore copy
/// in `proxy/tests/fixtures/dynamic/`), one line each; empty when it validates.
pub fn traefik_schema_errors(doc: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(include_str!("../../proxy/tests/fixtures/dynamic/traefik-v3-file-provider.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    validator.iter_errors(doc).map(|e| format!("{}: {}", e.instance_path(), e)).collect()
}

/// The upstream `url` of service `service` in a status document.
pub fn upstream_status<'a>(status: &'a Value, service: &str, url: &str) -> &'a Value {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|svc| svc["name"] == service))
        .and_then(|svc| svc["upstreams"].as_array())
        .and_then(|u| u.iter().find(|u| u["url"] == url))
        .unwrap_or_else(|| panic!("no upstream {url} in service {service}: {status:#}"))
}

/// The service `service` in a status document.
pub fn service_status<'a>(status: &'a Value, service: &str) -> &'a Value {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|svc| svc["name"] == service))
        .unwrap_or_else(|| panic!("no service {service}: {status:#}"))
}

/// Run an async test body in a two-worker tokio runtime on a thread with a 32 MiB stack,
/// and re-raise its panic. Use it instead of `#[tokio::test]` for long scenarios: debug
/// builds give every `.await` of a large future (a `Client` request is ~66 KB) its own
/// slot in the caller's stack frame, so a scenario with a few dozen requests overflows
/// the default 2 MiB test thread stack.
pub fn run_test<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let name = std::thread::current().name().unwrap_or("test").to_string();
    let thread = std::thread::Builder::new()
        .name(name)
        .stack_size(32 << 20)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(body());
        })
        .unwrap();
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}
