//! `constellation demo`: a live failover demonstration on loopback — one agent, three
//! stand-in services, steady GET traffic, a crash and a 503 spell, and a summary.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

mod backend;
mod wire;

use backend::Service;
use wire::get;

/// How long the demo waits for one admin API answer.
const ADMIN_LIMIT: Duration = Duration::from_secs(30);

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Fetch and parse a JSON document from the admin API at `base` (`http://host:port`).
async fn admin_json(client: &reqwest::Client, base: &str, path: &str) -> anyhow::Result<Value> {
    let r =
        get(client, &format!("{base}{path}")).await.with_context(|| format!("cannot reach the admin API at {base}"))?;
    if r.status != 200 {
        bail!("{base}{path} answered {}: {}", r.status, r.text().trim());
    }
    serde_json::from_slice(&r.body).with_context(|| format!("{base}{path} did not return JSON"))
}

/// Sum of all samples of a metric family in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `constellation demo`: three backends, one agent, steady GET traffic; one backend is
/// killed, another answers 503 for a while; the breakers and retries absorb both.
pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let seconds = seconds.max(16);
    let dir = std::env::temp_dir().join(format!("constellation-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut backends = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        backends.push(Service::start(name, "127.0.0.1:0".parse()?).await?);
    }
    let (web, admin) = (free_port()?, free_port()?);
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "[node]\nname = \"demo\"\n[entrypoints.web]\naddress = \"127.0.0.1:{web}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\
             [routes]\nfiles = [\"routes.yaml\"]\n[proxy]\nconnect_timeout_ms = 500\nread_timeout_ms = 2000\n\
             [proxy.breaker]\nconsecutive_failures = 3\nbase_ejection_ms = 1000\nmax_ejection_ms = 3000\n"
        ),
    )?;
    let servers: String = backends.iter().map(|b| format!("          - url: \"{}\"\n", b.url())).collect();
    std::fs::write(
        dir.join("routes.yaml"),
        format!(
            "http:\n  routers:\n    demo:\n      rule: \"PathPrefix(`/`)\"\n      service: demo\n  services:\n    demo:\n      loadBalancer:\n        servers:\n{servers}"
        ),
    )?;
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let child = std::process::Command::new(exe)
        .args(["agent", "-c"])
        .arg(dir.join("agent.toml"))
        .env("CONSTELLATION_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start the agent")?;
    let _agent = Agent(child);
    let admin_base = format!("http://127.0.0.1:{admin}");
    let admin = wire::client(ADMIN_LIMIT)?;
    let web_addr: SocketAddr = format!("127.0.0.1:{web}").parse()?;
    let ready_by = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = get(&admin, &format!("{admin_base}/readyz")).await {
            if r.status == 200 {
                break;
            }
        }
        if Instant::now() > ready_by {
            bail!("the agent did not become ready; see {}", dir.join("agent.log").display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("Constellation demo: proxy on {web_addr}, admin on {admin_base}, backends:");
    for b in &backends {
        println!("  {}", b.url());
    }
    println!("Timeline: t=3s kill bravo; t=6s charlie answers 503; t=10s charlie recovers; t=12s bravo restarts.\n");

    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (sent, errors, stop) = (sent.clone(), errors.clone(), stop.clone());
        let client = wire::client(Duration::from_secs(5))?;
        let url = format!("http://{web_addr}/");
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match get(&client, &url).await {
                    Ok(r) if r.status < 500 => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let start = Instant::now();
    let bravo_addr = backends[1].addr;
    let mut step = 0;
    let mut last_sent = 0;
    println!("{:>4} {:>7} {:>7} {:>7}  alpha        bravo        charlie", "t", "req/s", "errors", "retries");
    for tick in 1..=seconds {
        tokio::time::sleep_until((start + Duration::from_secs(tick)).into()).await;
        let t = tick;
        match (step, t) {
            (0, 3..) => {
                backends[1].stop();
                println!("---- t={t}s: bravo killed (connection refused from now on)");
                step = 1;
            }
            (1, 6..) => {
                backends[2].fail_with(503);
                println!("---- t={t}s: charlie starts answering 503");
                step = 2;
            }
            (2, 10..) => {
                backends[2].fail_with(0);
                println!("---- t={t}s: charlie healthy again");
                step = 3;
            }
            (3, 12..) => {
                backends[1] = Service::start("bravo", bravo_addr).await?;
                println!("---- t={t}s: bravo restarted");
                step = 4;
            }
            _ => {}
        }
        let metrics = get(&admin, &format!("{admin_base}/metrics")).await.map(|r| r.text()).unwrap_or_default();
        let status = admin_json(&admin, &admin_base, "/api/v1/status").await.unwrap_or(Value::Null);
        let states: Vec<String> = status["services"][0]["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| format!("{:<12}", u["breaker"]["state"].as_str().unwrap_or("?")))
            .collect();
        let now_sent = sent.load(Ordering::Relaxed);
        println!(
            "{:>3}s {:>7} {:>7} {:>7}  {}",
            t,
            now_sent - last_sent,
            errors.load(Ordering::Relaxed),
            metric_sum(&metrics, "constellation_retries_total"),
            states.join(" ")
        );
        last_sent = now_sent;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let metrics = get(&admin, &format!("{admin_base}/metrics")).await.map(|r| r.text()).unwrap_or_default();
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let (refusals, transitions): (Vec<&str>, Vec<&str>) = metrics
        .lines()
        .filter(|l| l.starts_with("constellation_breaker_transitions_total{"))
        .partition(|l| l.contains("ejection_refused"));
    let refused: f64 = refusals.iter().map(|l| value(l)).sum::<f64>() + 0.0;
    println!("\nSummary");
    println!("  requests sent          {}", sent.load(Ordering::Relaxed));
    println!("  client-visible errors  {}", errors.load(Ordering::Relaxed));
    println!("  retries                {}", metric_sum(&metrics, "constellation_retries_total"));
    println!("  suppressed retries     {}", 0.0 + metric_sum(&metrics, "constellation_retries_suppressed_total"));
    let moved: f64 = transitions.iter().map(|l| value(l)).sum::<f64>() + 0.0;
    println!("  breaker transitions    {moved}");
    for l in transitions {
        println!("    {l}");
    }
    if refused > 0.0 {
        println!(
            "  ejections refused      {refused} (the ejection cap, 50% of 3 upstreams = 1, was held by bravo,\n\
             \x20                        so charlie stayed in rotation and retries absorbed its 503s)"
        );
    }
    for b in &backends {
        println!("  {} served {} requests", b.url(), b.served());
    }
    println!("  agent log: {}", dir.join("agent.log").display());
    Ok(())
}
