//! `constellation demo` and `constellation status`: a live failover demonstration on
//! loopback, and a human view of a running agent's admin API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

mod backend;
mod wire;

use backend::Service;
use wire::call;

/// How long the CLI waits for the admin API.
const ADMIN_LIMIT: Duration = Duration::from_secs(30);

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Fetch and parse a JSON document from the admin API at `base` (`http://host:port`).
pub async fn admin_json(base: &str, path: &str) -> anyhow::Result<Value> {
    let addr = admin_addr(base)?;
    let r = call(addr, "GET", path, &[], &[], ADMIN_LIMIT)
        .await
        .with_context(|| format!("cannot reach the admin API at {base}"))?;
    if r.status != 200 {
        bail!("{base}{path} answered {}: {}", r.status, r.text().trim());
    }
    serde_json::from_slice(&r.body).with_context(|| format!("{base}{path} did not return JSON"))
}

fn admin_addr(base: &str) -> anyhow::Result<SocketAddr> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .with_context(|| format!("bad admin URL {base:?} (expected http://host:port)"))?
        .next()
        .with_context(|| format!("{base:?} does not resolve"))
}

/// Sum of all samples of a metric family in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// `constellation status`.
pub async fn status(admin: &str, json: bool) -> anyhow::Result<()> {
    let v = admin_json(admin, "/api/v1/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "node {}  config generation {}  last reload {}",
        s(&v["node"]["name"]),
        v["config"]["generation"],
        s(&v["config"]["last_reload"]["result"])
    );
    if let Some(members) = v["members"].as_array().filter(|m| !m.is_empty()) {
        println!("\nMEMBERS");
        println!(
            "  {:<16} {:<22} {:<8} {:>14} {:<10} {:>7} {:<16}",
            "NAME", "ADDRESS", "STATE", "INCARNATION", "ROLES", "VERSION", "PUBLIC IP"
        );
        for m in members {
            let roles: Vec<&str> = m["roles"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
            let me = if m["is_self"] == true { "*" } else { "" };
            println!(
                "  {:<16} {:<22} {:<8} {:>14} {:<10} {:>7} {:<16}",
                format!("{}{me}", s(&m["name"])),
                s(&m["address"]),
                s(&m["state"]),
                m["incarnation"].to_string(),
                if roles.is_empty() { "-".to_string() } else { roles.join(",") },
                m["state_version"].as_u64().map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                s(&m["public_ip"]),
            );
        }
    }
    if let Some(hints) = v["hints"].as_array().filter(|h| !h.is_empty()) {
        println!("\nOUTLIER HINTS");
        for h in hints {
            println!(
                "  {} reports {} {} (expires in {} ms)",
                s(&h["from"]),
                s(&h["service"]),
                s(&h["upstream"]),
                h["expires_in_ms"]
            );
        }
    }
    println!("\nROUTES");
    println!("  {:<20} {:>8}  {:<20} RULE", "NAME", "PRIORITY", "SERVICE");
    for r in v["routes"].as_array().into_iter().flatten() {
        println!(
            "  {:<20} {:>8}  {:<20} {}",
            s(&r["name"]),
            r["priority"].to_string(),
            s(&r["service"]["name"]),
            s(&r["rule"])
        );
    }
    println!("\nUPSTREAMS");
    println!(
        "  {:<20} {:<28} {:<8} {:<10} {:>9} {:>9} {:<6}",
        "SERVICE", "URL", "HEALTHY", "BREAKER", "REQUESTS", "FAILURES", "HINTED"
    );
    for svc in v["services"].as_array().into_iter().flatten() {
        for u in svc["upstreams"].as_array().into_iter().flatten() {
            println!(
                "  {:<20} {:<28} {:<8} {:<10} {:>9} {:>9} {:<6}",
                s(&svc["name"]),
                s(&u["url"]),
                u["healthy"].to_string(),
                s(&u["breaker"]["state"]),
                u["requests"].to_string(),
                u["failures"].to_string(),
                if u["deprioritised"] == true { "yes" } else { "" }
            );
        }
    }
    Ok(())
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
    let web_addr: SocketAddr = format!("127.0.0.1:{web}").parse()?;
    let ready_by = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = call(admin_addr(&admin_base)?, "GET", "/readyz", &[], &[], ADMIN_LIMIT).await {
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
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match call(web_addr, "GET", "/", &[], &[], Duration::from_secs(5)).await {
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
        let metrics = call(admin_addr(&admin_base)?, "GET", "/metrics", &[], &[], ADMIN_LIMIT)
            .await
            .map(|r| r.text())
            .unwrap_or_default();
        let status = admin_json(&admin_base, "/api/v1/status").await.unwrap_or(Value::Null);
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
    let metrics = call(admin_addr(&admin_base)?, "GET", "/metrics", &[], &[], ADMIN_LIMIT)
        .await
        .map(|r| r.text())
        .unwrap_or_default();
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

/// The admin bearer token: `--token`, else `CONSTELLATION_ADMIN__TOKEN` (as the agent reads it).
fn admin_token(token: Option<&str>) -> Option<String> {
    token.map(str::to_string).or_else(|| std::env::var("CONSTELLATION_ADMIN__TOKEN").ok()).filter(|t| !t.is_empty())
}

/// One request to the admin API with the bearer token if any; returns the parsed JSON
/// body of a 200, else an error carrying the server's `error` (or text).
pub async fn admin_call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> anyhow::Result<Value> {
    let addr = admin_addr(base)?;
    let auth = admin_token(token).map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let payload = match body {
        Some(v) => {
            headers.push(("Content-Type", "application/json"));
            serde_json::to_vec(v)?
        }
        None => Vec::new(),
    };
    let r = call(addr, method, path, &headers, &payload, ADMIN_LIMIT)
        .await
        .with_context(|| format!("cannot reach the admin API at {base}"))?;
    let parsed: Option<Value> = serde_json::from_slice(&r.body).ok();
    if r.status != 200 {
        let message = parsed
            .as_ref()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| r.text().trim().to_string());
        bail!("{method} {base}{path} answered {}: {message}", r.status);
    }
    parsed.with_context(|| format!("{base}{path} did not return JSON"))
}

/// `constellation raft status`: the group as the node behind `admin` sees it, plus the
/// `leases` and `raft` objects of its `/api/v1/status`.
pub async fn raft_status(admin: &str, json: bool, token: Option<&str>) -> anyhow::Result<()> {
    let group = admin_call(admin, "GET", "/api/v1/raft", None, token).await?;
    let status = admin_call(admin, "GET", "/api/v1/status", None, token).await?;
    if json {
        let all = serde_json::json!({"group": group, "leases": status["leases"], "raft": status["raft"]});
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".to_string());
    let opt = |v: &Value| if v.is_null() { "-".to_string() } else { v.to_string() };
    println!(
        "node {}  leader {}  term {}  last log index {}  applied {}{}",
        s(&group["node"]),
        s(&group["leader"]),
        group["term"],
        opt(&group["last_log_index"]),
        opt(&group["last_applied"]),
        if group["joint"] == true { "  (membership change under way)" } else { "" }
    );
    for (title, key) in [("VOTERS", "voters"), ("LEARNERS", "learners")] {
        let Some(list) = group[key].as_array().filter(|l| !l.is_empty()) else { continue };
        println!("\n{title}");
        println!("  {:<16} {:<22} {:<10} {:>8}", "NAME", "RAFT ADDRESS", "REACHABLE", "MATCHED");
        for m in list {
            let reachable = match m["reachable"].as_bool() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let leader = if group["leader"] == m["name"] { "*" } else { "" };
            println!(
                "  {:<16} {:<22} {:<10} {:>8}",
                format!("{}{leader}", s(&m["name"])),
                s(&m["raft_address"]),
                reachable,
                opt(&m["matched_index"])
            );
        }
    }
    if let Some(leases) = status["leases"].as_object().filter(|l| !l.is_empty()) {
        println!("\nLEASES");
        println!("  {:<16} {:<16} {:>8} {:>8} HELD HERE", "LEASE", "HOLDER", "TOKEN", "TTL MS");
        for (name, l) in leases {
            println!(
                "  {:<16} {:<16} {:>8} {:>8} {}",
                name,
                s(&l["holder"]),
                opt(&l["token"]),
                opt(&l["ttl_ms"]),
                if l["held_here"] == true { "yes" } else { "" }
            );
        }
    }
    println!("\nRAFT (status)\n  {}", status["raft"]);
    Ok(())
}

/// `constellation raft add-voter NAME ADDRESS` (the cluster address; Raft is its port + 1).
pub async fn raft_add_voter(admin: &str, name: &str, address: &str, token: Option<&str>) -> anyhow::Result<()> {
    let body = serde_json::json!({"name": name, "address": address});
    let v = admin_call(admin, "POST", "/api/v1/raft/voters", Some(&body), token).await?;
    print_voters(&format!("added {name} as a voter"), &v);
    Ok(())
}

/// `constellation raft remove-voter NAME`.
pub async fn raft_remove_voter(admin: &str, name: &str, token: Option<&str>) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['/', '?', '#', '%', ' ']) {
        bail!("{name:?} is not a node name");
    }
    let v = admin_call(admin, "DELETE", &format!("/api/v1/raft/voters/{name}"), None, token).await?;
    print_voters(&format!("removed {name}"), &v);
    Ok(())
}

fn print_voters(what: &str, v: &Value) {
    let names = |key: &str| -> String {
        let list: Vec<String> = v[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| format!("{} ({})", m["name"].as_str().unwrap_or("?"), m["raft_address"].as_str().unwrap_or("?")))
            .collect();
        if list.is_empty() {
            "-".to_string()
        } else {
            list.join(", ")
        }
    };
    println!("{what}\nvoters: {}\nlearners: {}", names("voters"), names("learners"));
}
