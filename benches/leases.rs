//! Lease fail-over benchmark: how long the `lb-leader` lease takes to reach a surviving
//! node after its holder is killed with `SIGKILL`.
//!
//! Run with `cargo bench --bench leases` (options after `--`, see `--help`). It starts
//! three real `constellation agent` processes (the binary cargo built for this bench, or
//! `--bin PATH`) on 127.0.0.1, all Raft voters with the `lb` and `dns` roles, and waits
//! for a steady state: every node names the same Raft leader and the same holder and
//! token for both leases. Then, per run:
//!
//! 1. `SIGKILL` the `lb-leader` holder (noting whether it was also the Raft leader);
//! 2. poll `/api/v1/status` of both survivors every `--poll-ms` (10 ms) until one shows
//!    another holder with a larger token: that is the fail-over time; when the killed
//!    holder led Raft, the first status naming a new leader splits it into election and
//!    lease expiry;
//! 3. restart the killed node on its data directory and wait for a steady state again.
//!
//! Results go to stdout and into the block between `<!-- lease-bench:start -->` and
//! `<!-- lease-bench:end -->` of `docs/benchmarks.md` (appended when missing; the rest of
//! the file is left as it is). `--no-write` skips that.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use constellation_testkit::{lease_seen, raft_leader, report, Fleet, FleetSpec, NodeSpec, Settled, Timings};
use serde_json::Value;

const START_MARK: &str = "<!-- lease-bench:start -->";
const END_MARK: &str = "<!-- lease-bench:end -->";
const LB: &str = "lb-leader";
const LEASES: [&str; 2] = ["lb-leader", "dns-writer"];

/// Lease fail-over benchmark: how long the `lb-leader` lease takes to reach a surviving node
/// after its holder is killed with `SIGKILL` (details in benches/leases.rs).
#[derive(clap::Parser)]
#[command(name = "leases", bin_name = "cargo bench --bench leases --")]
struct Options {
    /// Fail-overs to measure.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = runs)]
    runs: usize,
    /// Raft `lease_ttl_ms`.
    #[arg(long, value_name = "MS", default_value_t = 6000)]
    ttl_ms: u64,
    /// Raft `election_timeout_ms` (the maximum election timeout is twice that).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    election_ms: u64,
    /// Raft `heartbeat_ms`.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    heartbeat_ms: u64,
    /// Poll both survivors' `/api/v1/status` every this many milliseconds.
    #[arg(long = "poll-ms", value_name = "MS", default_value = "10", value_parser = millis)]
    poll: Duration,
    /// The `constellation` binary the agents run: `$CONSTELLATION_BIN`, else the one cargo built for
    /// this bench.
    #[arg(long, value_name = "PATH", default_value_os_t = constellation_testkit::binary())]
    bin: PathBuf,
    #[command(flatten)]
    report: report::ReportArgs,
}

impl Options {
    fn from_command_line() -> Options {
        let mut opts = <Options as clap::Parser>::parse();
        opts.report.capture();
        opts
    }

    fn command(&self) -> String {
        self.report.command("leases")
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    fn max_election(&self) -> Duration {
        Duration::from_millis(self.election_ms * 2)
    }
}

/// `--runs`: at least 1.
fn runs(s: &str) -> Result<usize, String> {
    s.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("{s:?} is not a whole number of at least 1"))
}

fn millis(s: &str) -> Result<Duration, String> {
    s.parse().map(Duration::from_millis).map_err(|e| format!("bad number of milliseconds {s:?}: {e}"))
}

// === agents ===

/// Waits until all running agents agree on the Raft leader and both leases, twice
/// `ttl / 3` apart with the same answer.
async fn wait_steady(fleet: &Fleet, ttl: Duration, limit: Duration) -> Result<Settled> {
    let deadline = Instant::now() + limit;
    loop {
        let all = fleet.running_indexes();
        if let Ok(first) = fleet.agreement(&all, &LEASES, true).await {
            tokio::time::sleep(ttl / 3).await;
            if fleet.agreement(&all, &LEASES, true).await.ok().as_ref() == Some(&first) {
                return Ok(first);
            }
        }
        if Instant::now() > deadline {
            bail!("no steady state within {limit:?}{}", fleet.dump());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Run {
    victim: String,
    was_leader: bool,
    old_token: u64,
    new_holder: String,
    new_token: u64,
    failover: Duration,
    /// Kill → first survivor status naming another Raft leader (only when the victim led).
    election: Option<Duration>,
}

async fn run_once(fleet: &mut Fleet, opts: &Options) -> Result<Run> {
    let steady = wait_steady(fleet, opts.ttl(), Duration::from_secs(60)).await?;
    let (victim, old_token) = (steady.holder(LB).to_string(), steady.token(LB));
    let was_leader = steady.leader == victim;
    let v = fleet.index_of(&victim);
    let killed = Instant::now();
    fleet.kill(v);
    let survivors: Vec<usize> = fleet.running_indexes();
    let mut election = None;
    let limit = (opts.ttl() + opts.max_election()) * 4;
    let (new_holder, new_token, failover) = loop {
        let polled = statuses(fleet, &survivors).await;
        let elapsed = killed.elapsed();
        let mut found = None;
        for s in polled.iter().flatten() {
            if was_leader && election.is_none() && raft_leader(s).is_some_and(|l| l != victim) {
                election = Some(elapsed);
            }
            let seen = lease_seen(s, LB);
            if let (Some(h), Some(t)) = (seen.holder, seen.token) {
                if h != victim && t > old_token {
                    found = Some((h, t));
                }
            }
        }
        if let Some((h, t)) = found {
            break (h, t, elapsed);
        }
        if elapsed > limit {
            bail!("no new lb-leader holder {limit:?} after killing {victim}");
        }
        tokio::time::sleep(opts.poll).await;
    };
    fleet.spawn(v);
    Ok(Run { victim, was_leader, old_token, new_holder, new_token, failover, election })
}

/// Statuses of the agents `which`, fetched concurrently.
async fn statuses(fleet: &Fleet, which: &[usize]) -> Vec<Option<Value>> {
    let mut set = Vec::new();
    for &i in which {
        set.push(fleet.node(i).status());
    }
    let mut out = Vec::new();
    // Two survivors: join them pairwise so one slow answer does not delay the other.
    let mut it = set.into_iter();
    while let Some(a) = it.next() {
        match it.next() {
            Some(b) => {
                let (x, y) = tokio::join!(a, b);
                out.push(x);
                out.push(y);
            }
            None => out.push(a.await),
        }
    }
    out
}

// === report ===

use report::median;

fn secs(d: Option<Duration>) -> String {
    d.map_or("–".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    report::command_output(cmd, args, Path::new(env!("CARGO_MANIFEST_DIR")))
}

use report::{cpu_model, load_average};

struct Environment {
    date: String,
    cpus: String,
    cpu_model: String,
    kernel: String,
    git: String,
    load_start: String,
    load_end: String,
    wall: Duration,
}

fn render(opts: &Options, env: &Environment, runs: &[Run]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{START_MARK}");
    s.push_str("## Lease fail-over after `kill -9` of the holder (`benches/leases.rs`)\n\n");
    let _ = writeln!(
        s,
        "Produced by `{}` on {} ({:.0} s); this block is rewritten by each run.\n",
        opts.command(),
        env.date,
        env.wall.as_secs_f64()
    );
    s.push_str("| | |\n| --- | --- |\n");
    let _ = writeln!(s, "| machine | {} CPUs (`nproc`), {}, Linux {} |", env.cpus, env.cpu_model, env.kernel);
    let _ = writeln!(
        s,
        "| Constellation | {}, `{}` ({}) |",
        env.git,
        opts.bin.file_name().map_or("?".into(), |f| f.to_string_lossy().to_string()),
        if opts.bin.components().any(|c| c.as_os_str() == "release") { "release build" } else { "build at --bin" }
    );
    let _ = writeln!(
        s,
        "| settings | 3 voters, `lease_ttl_ms = {}`, `election_timeout_ms = {}` (max {}), `heartbeat_ms = {}` \
         (the config defaults are 6000 / 1000 / 250); status polled every {} ms |",
        opts.ttl_ms,
        opts.election_ms,
        opts.election_ms * 2,
        opts.heartbeat_ms,
        opts.poll.as_millis()
    );
    let _ =
        writeln!(s, "| load average (1, 5, 15 min) | {} at the start, {} at the end |\n", env.load_start, env.load_end);

    let all: Vec<Duration> = runs.iter().map(|r| r.failover).collect();
    let led: Vec<Duration> = runs.iter().filter(|r| r.was_leader).map(|r| r.failover).collect();
    let followed: Vec<Duration> = runs.iter().filter(|r| !r.was_leader).map(|r| r.failover).collect();
    let elections: Vec<Duration> = runs.iter().filter_map(|r| r.election).collect();
    let after_election: Vec<Duration> =
        runs.iter().filter_map(|r| r.election.map(|e| r.failover.saturating_sub(e))).collect();
    s.push_str("Fail-over time = from `SIGKILL` of the `lb-leader` holder to the first survivor status showing another holder with a larger token.\n\n");
    s.push_str("| killed holder | runs | median | worst | best |\n| --- | ---: | ---: | ---: | ---: |\n");
    for (label, v) in
        [("all", &all), ("was also the Raft leader (election first)", &led), ("was a follower", &followed)]
    {
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} |",
            v.len(),
            secs(median(v)),
            secs(v.iter().max().copied()),
            secs(v.iter().min().copied())
        );
    }
    if !elections.is_empty() {
        let _ = writeln!(
            s,
            "| … of which: kill → new Raft leader seen | {} | {} | {} | {} |",
            elections.len(),
            secs(median(&elections)),
            secs(elections.iter().max().copied()),
            secs(elections.iter().min().copied())
        );
        let _ = writeln!(
            s,
            "| … of which: new leader → new holder | {} | {} | {} | {} |",
            after_election.len(),
            secs(median(&after_election)),
            secs(after_election.iter().max().copied()),
            secs(after_election.iter().min().copied())
        );
    }
    let ttl = opts.ttl().as_secs_f64();
    let max_el = opts.max_election().as_secs_f64();
    let retry = ttl / 3.0;
    let _ = writeln!(
        s,
        "\nWhat the design predicts (TTL {ttl:.1} s, maximum election timeout {max_el:.1} s, holders renew every \
         TTL/3 = {retry:.1} s and retry TTL/3 after a refusal):\n\n\
         - **Follower holder.** The leader revokes the lease TTL after it applied the last renewal, which came \
         0–TTL/3 before the kill, so {:.1}–{ttl:.1} s after it; a survivor gets it at its next attempt, up to \
         TTL/3 later: {:.1}–{:.1} s.\n\
         - **Raft-leader holder.** First an election. openraft's followers refuse votes while their leader lease \
         (the maximum election timeout since they last heard the leader) runs, so a candidate whose timeout \
         ({:.1}–{max_el:.1} s) fired earlier is refused and campaigns again one timeout later: about \
         {max_el:.1}–{:.1} s. The new leader then extends every lease by TTL + the maximum election timeout = \
         {:.1} s (it cannot know when the old leader last renewed), and a survivor gets the lease at its next \
         attempt, up to TTL/3 later: about {:.1}–{:.1} s in all.\n",
        ttl - retry,
        ttl - retry,
        ttl + retry,
        max_el / 2.0,
        max_el * 2.0,
        ttl + max_el,
        max_el + ttl + max_el,
        max_el * 2.0 + ttl + max_el + retry,
    );
    if let Some(after) = median(&after_election) {
        let extension = ttl + max_el;
        let waited = after.as_secs_f64() - extension;
        let _ = write!(
            s,
            "Measured: \"new leader → new holder\" has a median of {:.2} s, {waited:.2} s more than the \
             {extension:.1} s extension.",
            after.as_secs_f64()
        );
        if waited >= 0.75 * retry {
            let _ = write!(
                s,
                " The survivors' holders are refused right after the election and then retry every TTL/3; the \
                 extension is {:.2} × TTL/3, so the revocation lands just after a refused attempt and the lease \
                 stays vacant for most of a retry period. A holder that tried again as soon as its lease view \
                 shows the lease vacant (instead of sleeping TTL/3) would take up to TTL/3 off every fail-over.",
                extension / retry
            );
        }
        s.push_str("\n\n");
    }
    s.push_str("<details><summary>Every run</summary>\n\n");
    s.push_str("| run | killed | Raft leader? | token | new holder | new token | election | fail-over |\n");
    s.push_str("| ---: | --- | --- | ---: | --- | ---: | ---: | ---: |\n");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            r.victim,
            if r.was_leader { "yes" } else { "no" },
            r.old_token,
            r.new_holder,
            r.new_token,
            secs(r.election),
            secs(Some(r.failover))
        );
    }
    s.push_str("\n</details>\n\n");
    s.push_str(
        "Between runs the killed node is restarted on its data directory and the bench waits until all three \
         nodes agree on the leader and both leases twice, TTL/3 apart. All three agents, the poller and \
         whatever else ran on the machine share its CPUs.\n",
    );
    let _ = writeln!(s, "{END_MARK}");
    s
}

async fn bench(opts: &Options) -> Result<Vec<Run>> {
    let mut spec = FleetSpec::new("lease-bench", vec![NodeSpec::default(); 3]);
    spec.roles = vec!["lb".into(), "dns".into()];
    spec.raft = Some(Timings { ttl_ms: opts.ttl_ms, election_ms: opts.election_ms, heartbeat_ms: opts.heartbeat_ms });
    spec.log_filter = "info,openraft=warn,pingora_core=warn,pingora_proxy=warn".into();
    spec.bin = Some(opts.bin.clone());
    spec.tail_lines = 20;
    let mut fleet = Fleet::new(spec);
    eprintln!("agents in {}", fleet.dir.0.display());
    for i in 1..=3 {
        fleet.spawn(i);
    }
    match measure(&mut fleet, opts).await {
        Ok(runs) => Ok(runs),
        Err(e) => Err(e.context(format!("agents' files kept in {}", fleet.keep_evidence().display()))),
    }
}

async fn measure(fleet: &mut Fleet, opts: &Options) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for i in 1..=opts.runs {
        let r = run_once(fleet, opts).await?;
        eprintln!(
            "run {i:>2}/{}: killed {} (raft leader: {}, token {}) -> {} token {} after {:.2} s{}",
            opts.runs,
            r.victim,
            r.was_leader,
            r.old_token,
            r.new_holder,
            r.new_token,
            r.failover.as_secs_f64(),
            r.election.map(|e| format!(" (new raft leader seen after {:.2} s)", e.as_secs_f64())).unwrap_or_default()
        );
        runs.push(r);
    }
    wait_steady(fleet, opts.ttl(), Duration::from_secs(60)).await?;
    Ok(runs)
}

fn main() -> Result<()> {
    let opts = Options::from_command_line();
    if !opts.bin.exists() {
        bail!("{} does not exist; run `cargo build --release --bin constellation` or pass --bin", opts.bin.display());
    }
    let git = match command_output("git", &["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!("git {rev}{}", if dirty { " (work tree had uncommitted changes)" } else { "" })
        }
        None => "git revision unknown".into(),
    };
    let load_start = load_average();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown date".into());
    eprintln!(
        "lease bench: {} runs, ttl {} ms, election {} ms, heartbeat {} ms",
        opts.runs, opts.ttl_ms, opts.election_ms, opts.heartbeat_ms
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let started = Instant::now();
    let result = runtime.block_on(bench(&opts));
    let wall = started.elapsed();
    drop(runtime);
    let runs = result?;
    let env = Environment {
        date,
        cpus: command_output("nproc", &[]).unwrap_or_else(|| "?".into()),
        cpu_model: cpu_model(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |k| k.trim().into()),
        git,
        load_start,
        load_end: load_average(),
        wall,
    };
    let block = render(&opts, &env, &runs);
    println!("{block}");
    opts.report.write(START_MARK, END_MARK, &block)?;
    Ok(())
}
