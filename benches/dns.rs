//! DNS fail-over benchmark: time from `kill -9` of the front-door (`lb-leader`) node to
//! the fake Cloudflare API holding the new apex record.
//!
//! Run with `cargo bench --bench dns` (optionally `-- --runs 20 --configs default,fast`).
//! It starts a fake Cloudflare v4 API (`constellation_testkit::FakeCloudflare`)
//! in this process and three real `constellation agent` processes (release build; roles
//! `lb` and `dns`, all Raft voters, public IPs `192.0.2.1`–`.3` through
//! `CONSTELLATION_PUBLIC_IP`) on loopback. Each run:
//!
//! 1. waits for steady state: the three nodes agree on both leases (holder, token,
//!    `held_here`), the fake holds the apex and the wildcard at the `lb-leader` holder and
//!    the three node records, and this stays so for one second;
//! 2. `SIGKILL`s the `lb-leader` holder (t = 0) and polls the fake every 5 ms, in process,
//!    until the apex A record with our marker points at another node (and then until the
//!    wildcard does too); the new holder's `lease-history.jsonl` gives when it acquired
//!    `lb-leader`;
//! 3. restarts the killed node on its data directory.
//!
//! Configurations (`--configs`): `default` — Raft `lease_ttl_ms` 6000,
//! `election_timeout_ms` 1000, `heartbeat_ms` 250, and the `[dns]` defaults
//! (`leader_settle_ms` 2000, `reconcile_interval_ms` 60000, 600 requests/5 min, burst 10);
//! `fast` — the test suite's settings: 2000 / 400 / 100, `leader_settle_ms` 300,
//! `reconcile_interval_ms` 2000.
//!
//! Results go to stdout and into the block between `<!-- dns-bench:start -->` and
//! `<!-- dns-bench:end -->` of `docs/benchmarks.md` (appended when missing; the rest of the
//! file is left as it is). `--no-write` skips that. Options: `--runs N` (20),
//! `--configs default,fast`, `--out PATH`, `--no-write`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use constellation_testkit::{report, unix_ns, FakeCloudflare, Fleet, FleetSpec, Node, NodeSpec, Timings};

const START_MARK: &str = "<!-- dns-bench:start -->";
const END_MARK: &str = "<!-- dns-bench:end -->";
const ZONE: &str = "example.test";
const WILDCARD: &str = "*.example.test";
const MARKER: &str = "managed-by=constellation cluster=constellation";
const TOKEN: &str = "cf-bench-token-5be0c1";
const LB: &str = "lb-leader";
const DNS: &str = "dns-writer";
const LOG_FILTER: &str = "info,openraft=warn,pingora_core=warn,pingora_proxy=warn";

#[derive(Clone, Copy, Debug)]
struct Config {
    name: &'static str,
    ttl_ms: u64,
    election_ms: u64,
    heartbeat_ms: u64,
    settle_ms: u64,
    reconcile_ms: u64,
}

const CONFIGS: [Config; 2] = [
    Config {
        name: "default",
        ttl_ms: 6000,
        election_ms: 1000,
        heartbeat_ms: 250,
        settle_ms: 2000,
        reconcile_ms: 60_000,
    },
    Config { name: "fast", ttl_ms: 2000, election_ms: 400, heartbeat_ms: 100, settle_ms: 300, reconcile_ms: 2000 },
];

/// DNS fail-over benchmark: time from `kill -9` of the `lb-leader` node to the fake Cloudflare
/// API holding the new apex record (details in benches/dns.rs).
#[derive(clap::Parser)]
#[command(name = "dns", bin_name = "cargo bench --bench dns --")]
struct Options {
    /// Fail-overs to measure per configuration.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = runs)]
    runs: usize,
    /// Configurations to run, comma-separated: `default` (the config defaults), `fast` (the test
    /// suite's Raft and `[dns]` timings).
    // Spelled `std::vec::Vec` so that clap takes the whole list as one value.
    #[arg(long, value_name = "NAME,...", default_value = "default,fast", value_parser = configs)]
    configs: std::vec::Vec<Config>,
    #[command(flatten)]
    report: report::ReportArgs,
}

impl Options {
    fn from_command_line() -> Options {
        let mut opts = <Options as clap::Parser>::parse();
        opts.report.capture();
        opts
    }
}

/// `--runs`: at least 1.
fn runs(s: &str) -> Result<usize, String> {
    s.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("{s:?} is not a whole number of at least 1"))
}

/// `--configs`: names from [`CONFIGS`], comma-separated, blanks ignored, not empty.
fn configs(s: &str) -> Result<Vec<Config>, String> {
    let configs = s
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            CONFIGS
                .iter()
                .find(|c| c.name == s.trim())
                .copied()
                .ok_or_else(|| format!("unknown config {s:?} (default, fast)"))
        })
        .collect::<Result<Vec<Config>, String>>()?;
    if configs.is_empty() {
        return Err("nothing to run".into());
    }
    Ok(configs)
}

/// When `node` first acquired `lease` with a token above `token`, after `since_ns` (Unix
/// ns), per its history.
fn first_acquired_after(node: &Node, lease: &str, token: u64, since_ns: i128) -> Option<Duration> {
    node.history()
        .into_iter()
        .filter(|e| e.lease == lease && e.kind == "acquired" && e.token > token)
        .find(|e| e.t_ns >= since_ns)
        .map(|e| Duration::from_nanos((e.t_ns - since_ns).max(0) as u64))
}

/// Lease → (holder, token), as the nodes agree on it.
type Leases = BTreeMap<String, (String, u64)>;

struct Bench {
    fleet: Fleet,
    fake: FakeCloudflare,
    /// Keep the configs, logs and histories after a failed run.
    keep: bool,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {} for inspection", self.fleet.keep_evidence().display());
        }
    }
}

/// One run's figures.
#[derive(Clone, Debug)]
struct Sample {
    victim: String,
    victim_was_writer: bool,
    new_holder: String,
    kill_to_lease: Duration,
    /// When the killed node also held `dns-writer`: until a survivor acquired it.
    kill_to_writer: Option<Duration>,
    kill_to_apex: Duration,
    kill_to_both: Duration,
}

impl Bench {
    async fn start(cfg: &Config) -> Result<Bench> {
        let fake = FakeCloudflare::start(TOKEN).await?;
        fake.add_zone(ZONE);
        let dns = format!(
            "[dns]\nzone = \"{ZONE}\"\napi_url = \"{url}\"\napi_token_file = \"cf.token\"\napex = true\n\
             wildcard = true\nnode_record = \"{{node}}.nodes.{ZONE}\"\nttl = 60\n\
             reconcile_interval_ms = {rec}\nleader_settle_ms = {settle}\n",
            url = fake.api_url(),
            rec = cfg.reconcile_ms,
            settle = cfg.settle_ms,
        );
        let node = NodeSpec { extra_toml: dns, ..NodeSpec::default() };
        let mut spec = FleetSpec::new(&format!("bench-dns-{}", cfg.name), vec![node; 3]);
        spec.roles = vec!["lb".into(), "dns".into()];
        spec.raft = Some(Timings { ttl_ms: cfg.ttl_ms, election_ms: cfg.election_ms, heartbeat_ms: cfg.heartbeat_ms });
        spec.log_filter = LOG_FILTER.into();
        spec.tail_lines = 20;
        let mut fleet = Fleet::new(spec);
        fleet.dir.write("cf.token", &format!("{TOKEN}\n"));
        for i in 1..=3 {
            fleet.spawn(i);
        }
        Ok(Bench { fleet, fake, keep: false })
    }

    /// Lease → (holder, token) when all running nodes agree (and `held_here` matches).
    async fn agreement(&self) -> Option<Leases> {
        let running = self.fleet.running_indexes();
        self.fleet.agreement(&running, &[LB, DNS], false).await.ok().map(|s| s.leases)
    }

    /// Contents of the A records with our marker at `name`.
    fn owned(&self, name: &str) -> Vec<String> {
        self.fake
            .find(name, "A")
            .into_iter()
            .filter(|r| r["comment"] == MARKER)
            .filter_map(|r| r["content"].as_str().map(str::to_string))
            .collect()
    }

    fn zone_ok(&self, leader: &str) -> bool {
        let ip = format!("192.0.2.{}", leader.trim_start_matches('n'));
        self.owned(ZONE) == [ip.clone()]
            && self.owned(WILDCARD) == [ip]
            && (1..=3).all(|i| self.owned(&format!("n{i}.nodes.{ZONE}")) == [format!("192.0.2.{i}")])
    }

    /// Waits until the nodes agree on both leases, every one of them running, and the zone
    /// matches, for one second in a row. Returns the agreement.
    async fn steady(&self, limit: Duration) -> Result<Leases> {
        let deadline = Instant::now() + limit;
        let mut since: Option<(Instant, Leases)> = None;
        loop {
            let now = self.agreement().await.filter(|a| self.zone_ok(&a[LB].0));
            since = match (since, now) {
                (Some((t, prev)), Some(a)) if prev == a => {
                    if t.elapsed() >= Duration::from_secs(1) {
                        return Ok(a);
                    }
                    Some((t, prev))
                }
                (_, Some(a)) => Some((Instant::now(), a)),
                (_, None) => None,
            };
            if Instant::now() >= deadline {
                bail!("no steady state within {limit:?}; records {:?}{}", self.fake.records(), self.fleet.dump());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run_once(&mut self, limit: Duration) -> Result<Sample> {
        let before = self.steady(limit).await?;
        let (victim, old_token) = before[LB].clone();
        let victim_was_writer = before[DNS].0 == victim;
        let old_writer_token = before[DNS].1;
        let vi = self.fleet.index_of(&victim);
        let victim_ip = self.fleet.node(vi).ip();
        let killed_ns = unix_ns();
        let killed = Instant::now();
        self.fleet.kill(vi);
        let (mut apex_at, mut both_at) = (None, None);
        let mut new_ip = String::new();
        while both_at.is_none() {
            if killed.elapsed() > limit {
                bail!("the apex did not move off {victim} within {limit:?}; records {:?}", self.fake.records());
            }
            let apex = self.owned(ZONE);
            if apex_at.is_none() && apex.len() == 1 && apex[0] != victim_ip {
                apex_at = Some(killed.elapsed());
                new_ip.clone_from(&apex[0]);
            }
            if apex_at.is_some() && self.owned(WILDCARD) == [new_ip.clone()] {
                both_at = Some(killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let new_holder = format!("n{}", new_ip.rsplit('.').next().unwrap_or("?"));
        let ni = self.fleet.index_of(&new_holder);
        // The history is written within 50 ms of the event.
        let mut kill_to_lease = None;
        let mut kill_to_writer = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            kill_to_lease = first_acquired_after(self.fleet.node(ni), LB, old_token, killed_ns);
            if victim_was_writer {
                kill_to_writer = self
                    .fleet
                    .nodes
                    .iter()
                    .filter(|n| n.index != vi)
                    .filter_map(|n| first_acquired_after(n, DNS, old_writer_token, killed_ns))
                    .min();
            }
            if kill_to_lease.is_some() && (kill_to_writer.is_some() || !victim_was_writer) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.fleet.spawn(vi);
        Ok(Sample {
            victim,
            victim_was_writer,
            new_holder,
            kill_to_lease: kill_to_lease.context("no acquired event for the new lb-leader holder")?,
            kill_to_writer,
            kill_to_apex: apex_at.unwrap_or_default(),
            kill_to_both: both_at.unwrap_or_default(),
        })
    }
}

fn median(v: &[Duration]) -> Duration {
    report::median(v).unwrap_or_default()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    report::command_output(cmd, args, std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_or_default()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .map(|kb| format!("{:.0} GiB RAM", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cpus} CPUs, {}, {mem}, Linux {}", report::cpu_model(), cmd_out("uname", &["-r"]))
}

fn render(opts: &Options, results: &[(Config, Vec<Sample>, Duration)], started: &str, load: (&str, &str)) -> String {
    let mut s = String::new();
    let git = cmd_out("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"]);
    let dirty = !cmd_out("git", &["-C", env!("CARGO_MANIFEST_DIR"), "status", "--porcelain"]).is_empty();
    let _ = writeln!(s, "{START_MARK}");
    let _ = writeln!(s, "## DNS fail-over: `kill -9` of the front door to the new apex record (`benches/dns.rs`)\n");
    let _ = writeln!(
        s,
        "Produced by `{}` on {started}; this block is rewritten by each run.\n",
        opts.report.command("dns")
    );
    let _ = writeln!(s, "| | |\n| --- | --- |");
    let _ = writeln!(s, "| machine | {} |", machine());
    let _ = writeln!(
        s,
        "| Constellation | constellation {}, git {git}{}, release build (`bench` profile) |",
        env!("CARGO_PKG_VERSION"),
        if dirty { " (work tree had uncommitted changes)" } else { "" }
    );
    let _ = writeln!(s, "| load average at start / end | {} / {} |\n", load.0, load.1);
    let _ = writeln!(
        s,
        "Three `constellation agent` processes on 127.0.0.1 (roles `lb` and `dns`, all three Raft voters, \
         public IPs 192.0.2.1–3 through `CONSTELLATION_PUBLIC_IP`) write to a fake Cloudflare v4 API \
         (`FakeCloudflare`, in the benchmark process, no added latency, no faults). Each run waits for steady state \
         (the nodes agree on both leases, the fake holds apex, wildcard and the three node records, for 1 s), \
         `SIGKILL`s the `lb-leader` holder, and polls the fake every 5 ms until the apex A record with the \
         ownership comment points at another node (then until the wildcard does too); the killed node is then \
         restarted on its data directory. *kill → lease* is when the new holder's `lease-history.jsonl` says it \
         acquired `lb-leader`. When the killed node also held `dns-writer`, that lease has to move as well before \
         anyone writes.\n"
    );
    let _ = writeln!(
        s,
        "| config | Raft (`lease_ttl_ms` / `election_timeout_ms` / `heartbeat_ms`) | `[dns]` | runs | kill → apex, \
         median | kill → apex, worst | kill → apex, best | kill → apex + wildcard, median / worst | kill → lease, \
         median / worst | kill → dns-writer moved, median / worst | lease → apex, writer died too: runs, median / \
         worst | lease → apex, writer survived: runs, median / worst |"
    );
    let _ = writeln!(s, "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (cfg, samples, _) in results {
        let apex: Vec<Duration> = samples.iter().map(|x| x.kill_to_apex).collect();
        let both: Vec<Duration> = samples.iter().map(|x| x.kill_to_both).collect();
        let lease: Vec<Duration> = samples.iter().map(|x| x.kill_to_lease).collect();
        let after = |died: bool| -> String {
            let v: Vec<Duration> = samples
                .iter()
                .filter(|x| x.victim_was_writer == died)
                .map(|x| x.kill_to_apex.saturating_sub(x.kill_to_lease))
                .collect();
            match v.iter().max() {
                None => "0".to_string(),
                Some(worst) => format!("{}: {} / {}", v.len(), secs(median(&v)), secs(*worst)),
            }
        };
        let writer: Vec<Duration> = samples.iter().filter_map(|x| x.kill_to_writer).collect();
        let writer_cell = if writer.is_empty() {
            "–".to_string()
        } else {
            format!("{} / {}", secs(median(&writer)), secs(writer.iter().max().copied().unwrap_or_default()))
        };
        let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
        let min = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
        let _ = writeln!(
            s,
            "| `{}` | {} / {} / {} | `leader_settle_ms` {}, `reconcile_interval_ms` {}, 600 req/5 min, burst 10 | {} | \
             **{}** | **{}** | {} | {} / {} | {} / {} | {} | {} | {} |",
            cfg.name,
            cfg.ttl_ms,
            cfg.election_ms,
            cfg.heartbeat_ms,
            cfg.settle_ms,
            cfg.reconcile_ms,
            samples.len(),
            secs(median(&apex)),
            secs(max(&apex)),
            secs(min(&apex)),
            secs(median(&both)),
            secs(max(&both)),
            secs(median(&lease)),
            secs(max(&lease)),
            writer_cell,
            after(true),
            after(false),
        );
    }
    for (cfg, samples, took) in results {
        let _ = writeln!(
            s,
            "\n<details><summary><code>{}</code>: every run ({} in all)</summary>\n",
            cfg.name,
            secs(*took)
        );
        let _ = writeln!(
            s,
            "| run | killed | also dns-writer | new holder | kill → lease | kill → dns-writer moved | kill → apex | \
             kill → apex + wildcard |"
        );
        let _ = writeln!(s, "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: |");
        for (i, x) in samples.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                x.victim,
                if x.victim_was_writer { "yes" } else { "no" },
                x.new_holder,
                secs(x.kill_to_lease),
                x.kill_to_writer.map(secs).unwrap_or_else(|| "–".into()),
                secs(x.kill_to_apex),
                secs(x.kill_to_both)
            );
        }
        let _ = writeln!(s, "\n</details>");
    }
    let _ = writeln!(
        s,
        "\nReading the figures: the apex moves once (1) the `lb-leader` lease expires at the Raft leader and a \
         survivor is granted it (about the TTL plus the holders' retry period; longer when the Raft leader died with \
         the node), (2) the `dns-writer` holder has seen the new holder for `leader_settle_ms`, and (3) one reconcile \
         (list the managed names, then update apex and wildcard) has gone through the request budget. Both leases \
         usually sit on the same node, so the `dns-writer` lease moves with `lb-leader`: a new writer's first \
         reconcile runs as soon as it holds the lease (zone lookup and 6 list calls), which spends most of the burst \
         of 10, so the apex update that follows `leader_settle_ms` later waits for the budget (2 requests/s): about \
         2.5 s from the lease whatever the settle time. With `reconcile_interval_ms` 2000 a writer that survives is \
         always busy: its periodic reconciles (one list call per managed name plus one, 6 here, every 2 s) use up \
         the budget, each takes about 3 s, and the loop runs one at a time — the reconcile under way, then one for \
         \"front door unknown\" (the lease expired, nothing to write), then the one that writes the new holder: up \
         to about 10 s after the lease. With the default 60 s interval the budget is not spent this way."
    );
    let _ = write!(s, "{END_MARK}");
    s
}

fn main() -> Result<()> {
    let opts = Options::from_command_line();
    let started = cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load_start = report::load_average();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut results = Vec::new();
    for cfg in opts.configs.clone() {
        let t0 = Instant::now();
        let samples = rt.block_on(async {
            let mut bench = Bench::start(&cfg).await?;
            let limit = Duration::from_millis(cfg.ttl_ms * 6 + cfg.settle_ms * 2) + Duration::from_secs(30);
            let mut samples = Vec::new();
            for run in 1..=opts.runs {
                let x = match bench.run_once(limit).await {
                    Ok(x) => x,
                    Err(e) => {
                        bench.keep = true;
                        return Err(e.context(format!("config {} run {run}", cfg.name)));
                    }
                };
                println!(
                    "{} run {run:2}: killed {} (dns-writer too: {:5}) → {}: lease {}, dns-writer {}, apex {}, apex + \
                     wildcard {}",
                    cfg.name,
                    x.victim,
                    x.victim_was_writer,
                    x.new_holder,
                    secs(x.kill_to_lease),
                    x.kill_to_writer.map(secs).unwrap_or_else(|| "–".into()),
                    secs(x.kill_to_apex),
                    secs(x.kill_to_both)
                );
                samples.push(x);
            }
            anyhow::Ok(samples)
        })?;
        let apex: Vec<Duration> = samples.iter().map(|x| x.kill_to_apex).collect();
        println!(
            "{}: kill → apex median {}, worst {} over {} runs",
            cfg.name,
            secs(median(&apex)),
            secs(apex.iter().max().copied().unwrap_or_default()),
            samples.len()
        );
        results.push((cfg, samples, t0.elapsed()));
    }
    let block = render(&opts, &results, &started, (&load_start, &report::load_average()));
    if !opts.report.write {
        println!("{block}");
    }
    opts.report.write(START_MARK, END_MARK, &block)?;
    Ok(())
}
