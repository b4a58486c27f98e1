//! Docker provider benchmark: how fast the routes follow the engine.
//!
//! Run with `cargo bench --bench docker` (optionally `-- --runs 10`). It starts one real
//! `constellation agent` (release build) watching the local engine and, per run, a busybox
//! web container with a 1 s health check (the test image of `tests/docker`), measuring:
//!
//! - **start → routed**: from `docker run` returning to the first 200 through the proxy
//!   (includes Docker's own first health check, ≥ 1 interval);
//! - **healthy → routed**: from the moment a 20 ms poll of `docker inspect` first sees
//!   `healthy` to the first 200;
//! - **unhealthy → out**: the health file is removed; from `docker inspect` seeing
//!   `unhealthy` to the first 503 (the only replica left the pool);
//! - **kill → out**: from `docker kill` returning to the first 404 (a killed container
//!   contributes nothing).
//!
//! A second series does the same for a container watched by another agent (two agents
//! gossiping on loopback, sharing the engine, split by a constraint label, node 2
//! reached through its mesh entry point): node 1's proxy is polled, so the figures include
//! the state change crossing gossip.
//!
//! The proxy is polled every 5 ms with fresh connections. Results go to stdout and into the
//! block between `<!-- docker-bench:start -->` and `<!-- docker-bench:end -->` of
//! `docs/benchmarks.md` (`--no-write` skips that).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use constellation_testkit::docker::{docker, httpd_command, test_image, DockerGuard, HTTPD_HEALTH, TEST_LABEL};
use constellation_testkit::{fetch, report, take_port, Agent, Fleet, FleetSpec, NodeSpec};

const START_MARK: &str = "<!-- docker-bench:start -->";
const END_MARK: &str = "<!-- docker-bench:end -->";

#[derive(Parser, Debug)]
#[command(name = "docker", bin_name = "cargo bench --bench docker --")]
struct Opts {
    /// Containers started, made unhealthy and killed.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    #[command(flatten)]
    report: report::ReportArgs,
}

/// Polls `probe` every 5 ms until it is true; the time it took, or an error after `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if probe().await {
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("{what}: not within {limit:?}")
}

fn health(name: &str) -> String {
    docker(&["inspect", "--format", "{{.State.Health.Status}}", name]).unwrap_or_default()
}

/// Waits (polling `docker inspect` every 20 ms) until the container reports `want`;
/// returns the instant it was first seen.
async fn seen_health(name: &str, want: &str) -> Result<Instant> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if health(name) == want {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{name} never became {want}")
}

#[derive(Default)]
struct Series {
    start_routed: Vec<Duration>,
    healthy_routed: Vec<Duration>,
    unhealthy_out: Vec<Duration>,
    kill_out: Vec<Duration>,
}

async fn status_of(web: std::net::SocketAddr, host: &str) -> u16 {
    fetch(web, "GET", host, "/", &[], &[]).await.map(|r| r.status).unwrap_or(0)
}

/// One container's life, polled through `web`; the `extra` label picks the watching agent.
async fn one_run(
    web: std::net::SocketAddr,
    guard: &DockerGuard,
    net: &str,
    extra: &str,
    i: usize,
    s: &mut Series,
) -> Result<()> {
    let name = guard.name(&format!("c{i}"));
    let host = format!("bench{i}.test");
    let rule = format!("traefik.http.routers.bench{i}.rule=Host(`{host}`)");
    let port = format!("traefik.http.services.bench{i}.loadbalancer.server.port=8000");
    let label = guard.label_arg();
    let health_cmd = HTTPD_HEALTH.join(" ");
    let mut args = vec![
        "run",
        "-d",
        "--label",
        &label,
        "--name",
        &name,
        "--network",
        net,
        "--health-cmd",
        &health_cmd,
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--health-timeout",
        "1s",
        "--label",
        "traefik.enable=true",
        "--label",
        &rule,
        "--label",
        &port,
        "--label",
        extra,
        test_image(),
    ];
    let cmd = httpd_command("bench");
    args.extend(cmd.iter().map(String::as_str));
    docker(&args).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let healthy_at = seen_health(&name, "healthy").await?;
    until("routed", Duration::from_secs(30), || async { status_of(web, &host).await == 200 }).await?;
    let routed = Instant::now();
    s.start_routed.push(routed - started);
    s.healthy_routed.push(routed.saturating_duration_since(healthy_at));

    docker(&["exec", &name, "/bin/busybox", "rm", "-f", "/www/health"]).map_err(anyhow::Error::msg)?;
    let unhealthy_at = seen_health(&name, "unhealthy").await?;
    until("out when unhealthy", Duration::from_secs(30), || async { status_of(web, &host).await == 503 }).await?;
    s.unhealthy_out.push(Instant::now().saturating_duration_since(unhealthy_at));

    docker(&["exec", &name, "/bin/busybox", "sh", "-c", "echo ok > /www/health"]).map_err(anyhow::Error::msg)?;
    seen_health(&name, "healthy").await?;
    until("back", Duration::from_secs(30), || async { status_of(web, &host).await == 200 }).await?;
    docker(&["kill", &name]).map_err(anyhow::Error::msg)?;
    let killed = Instant::now();
    until("out when killed", Duration::from_secs(30), || async { status_of(web, &host).await == 404 }).await?;
    s.kill_out.push(killed.elapsed());
    let _ = docker(&["rm", "-f", &name]);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn row(what: &str, v: &[Duration]) -> String {
    let max = v.iter().max().copied().unwrap_or_default();
    let min = v.iter().min().copied().unwrap_or_default();
    format!("| {what} | {} | {} | {} |\n", ms(min), ms(report::median(v).unwrap_or_default()), ms(max))
}

fn main() -> Result<()> {
    let mut opts = Opts::parse();
    opts.report.capture();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let load_start = report::load_average();
    let (series, remote) = rt.block_on(async {
        let guard = DockerGuard::new("bench");
        let net = guard.network("net");
        let toml = format!("[docker]\nnetwork = \"{net}\"\nconstraints = \"Label(`{TEST_LABEL}`, `{}`)\"\n", guard.tag);
        let agent = Agent::start("", &toml).await;
        let mut s = Series::default();
        for i in 0..opts.runs {
            one_run(agent.web, &guard, &net, "bench.node=local", i, &mut s).await?;
            eprintln!("run {}/{} done", i + 1, opts.runs);
        }
        drop(agent);
        // Two agents: containers labelled for node 2, requests to node 1.
        let spec = |node: &str| {
            let extra = format!(
                "[docker]\nnetwork = \"{net}\"\nmesh_entrypoint = \"mesh\"\n\
                 constraints = \"Label(`{TEST_LABEL}`, `{}`) && Label(`bench.node`, `{node}`)\"\n\
                 [entrypoints.mesh]\naddress = \"127.0.0.1:{}\"\n",
                guard.tag,
                take_port()
            );
            NodeSpec { extra_toml: extra, ..NodeSpec::default() }
        };
        let mut fleet = Fleet::new(FleetSpec::new("docker-bench", vec![spec("n1"), spec("n2")]));
        fleet.start_all(Duration::from_secs(30)).await;
        let mut r = Series::default();
        for i in 0..opts.runs {
            one_run(fleet.node(1).web, &guard, &net, "bench.node=n2", 1000 + i, &mut r).await?;
            eprintln!("two-node run {}/{} done", i + 1, opts.runs);
        }
        Ok::<_, anyhow::Error>((s, r))
    })?;
    let mut block = String::new();
    let _ = writeln!(block, "{START_MARK}");
    let _ = writeln!(block, "### Docker provider: routes following the engine\n");
    let _ = writeln!(block, "Command: `{}` ({} runs).\n", opts.report.command("docker"), opts.runs);
    let _ = writeln!(
        block,
        "Machine: {}, Docker {}; load average {} at start, {} at the end.\n",
        report::cpu_model(),
        docker(&["version", "--format", "{{.Server.Version}}"]).unwrap_or_default(),
        load_start,
        report::load_average()
    );
    block.push_str("| from → to | min | median | max |\n|---|---:|---:|---:|\n");
    block.push_str(&row("`docker run` → routed (incl. Docker's first 1 s health check)", &series.start_routed));
    block.push_str(&row("Docker says healthy → routed", &series.healthy_routed));
    block.push_str(&row("Docker says unhealthy → out (503)", &series.unhealthy_out));
    block.push_str(&row("`docker kill` → out (404)", &series.kill_out));
    block.push_str("\nThe container on node 2, requests to node 1 (two agents, gossip on loopback):\n\n");
    block.push_str("| from → to | min | median | max |\n|---|---:|---:|---:|\n");
    block.push_str(&row("`docker run` on node 2 → routed by node 1", &remote.start_routed));
    block.push_str(&row("Docker says healthy → routed by node 1", &remote.healthy_routed));
    block.push_str(&row("Docker says unhealthy → out of node 1 (503)", &remote.unhealthy_out));
    block.push_str(&row("`docker kill` → out of node 1 (404)", &remote.kill_out));
    let _ = writeln!(
        block,
        "\n\"Docker says\" is when a 20 ms poll of `docker inspect` first saw the state, so \
         the figures may read up to 20 ms long or short; the proxy was polled every 5 ms."
    );
    let _ = writeln!(block, "{END_MARK}");
    print!("{block}");
    opts.report.write(START_MARK, END_MARK, &block)?;
    Ok(())
}
