//! Gossip benchmark: full-convergence and failure-detection times of
//! `constellation_cluster` for several cluster sizes.
//!
//! Run with `cargo bench --bench gossip` (optionally `-- --sizes 3,10,30,100 --runs 5`).
//! For each size N it starts N in-process members on 127.0.0.1 (port 0 binds, one tokio
//! multi-thread runtime, every member with its own Prometheus registry), all joining
//! through member 0, and measures:
//!
//! 1. full convergence: from the first `Cluster::start` until every member's view lists all
//!    N members alive and holds all N states, each with the instance that member started
//!    with;
//! 2. failure detection: after convergence (and a short settle), one random non-seed member
//!    is dropped without `leave` (a crash); from the drop, the time until the first
//!    survivor lists it suspect (or already down), until the first survivor lists it down,
//!    and until every survivor lists it down.
//!
//! Views are polled every `--poll-ms` (10 ms) from the main thread, which is not one of
//! the runtime's workers. Results go to stdout and into the block between
//! `<!-- gossip-bench:start -->` and `<!-- gossip-bench:end -->` of `docs/benchmarks.md`
//! (appended when missing; the rest of the file is left as it is). `--no-write` skips that.
//!
//! Options (`--help` lists them too): `--sizes 3,10,30,100`, `--runs N` (all sizes;
//! default 5, and 3 for N >= 100), `--converge-timeout SECS` (180), `--detect-timeout SECS`
//! (60), `--settle SECS` (2),
//! `--snapshot SECS` (10: when to note what unconverged views lack),
//! `--poll-ms MS` (10), `--suspect-ms MS` (override the default suspicion timeout),
//! `--worker-threads N` (tokio default: one per CPU), `--out PATH`, `--no-write`,
//! `--diagnose` (at the snapshot, make each unconverged member republish its view, to tell
//! a view that fell behind its store from missing data; this perturbs the run). Set
//! `RUST_LOG` (e.g. `constellation_cluster=debug`) to see the cluster's logs.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use constellation_cluster::{
    generate_key_hex, Cluster, ClusterConfig, ClusterView, Instance, Keyring, MemberState, NodeState,
    DEFAULT_PUSH_PULL_INTERVAL,
};
use constellation_testkit::report;
use rand::RngExt;
use tokio::sync::watch;

const PROBE_PERIOD: Duration = Duration::from_secs(1);
const PROBE_RTT: Duration = Duration::from_millis(500);
/// foca's LAN default, which `ClusterConfig` keeps.
const INDIRECT_PROBES: u32 = 3;
/// The window after the first start over which the join storm's CPU use is measured
/// (convergence plus the settle always last at least this long).
const JOIN_CPU_WINDOW: Duration = Duration::from_secs(2);
const START_MARK: &str = "<!-- gossip-bench:start -->";
const END_MARK: &str = "<!-- gossip-bench:end -->";

/// Gossip benchmark: full-convergence and failure-detection times of `constellation_cluster`
/// for several cluster sizes (details in benches/gossip.rs).
#[derive(clap::Parser)]
#[command(name = "gossip", bin_name = "cargo bench --bench gossip --")]
struct Options {
    /// Cluster sizes, comma-separated, each at least 3 (a seed, a victim and one other survivor).
    // Spelled `std::vec::Vec` so that clap takes the whole list as one value.
    #[arg(long, value_name = "N,N,...", default_value = "3,10,30,100", value_parser = sizes)]
    sizes: std::vec::Vec<usize>,
    /// Runs per size, for all sizes [default: 5, and 3 for N >= 100].
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Give up on convergence after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "180", value_parser = secs)]
    converge_timeout: Duration,
    /// Give up on failure detection after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = secs)]
    detect_timeout: Duration,
    /// After convergence, wait this long (plus up to one probe period at random) before the crash.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = secs)]
    settle: Duration,
    /// When to note what the views not converged yet are missing.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = secs)]
    snapshot: Duration,
    /// Poll the views every this many milliseconds.
    #[arg(long = "poll-ms", value_name = "MS", default_value = "10", value_parser = millis)]
    poll: Duration,
    /// Override the default suspicion timeout (`4 × max(1, log10 N)` probe periods).
    #[arg(long = "suspect-ms", value_name = "MS", value_parser = millis)]
    suspect: Option<Duration>,
    /// Tokio worker threads [default: one per CPU].
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    /// At the snapshot, make unconverged members republish their views (perturbs the run).
    #[arg(long)]
    diagnose: bool,
    #[command(flatten)]
    report: report::ReportArgs,
}

impl Options {
    fn from_command_line() -> Options {
        let mut opts = <Options as clap::Parser>::parse();
        opts.report.capture();
        opts
    }

    fn runs_for(&self, n: usize) -> usize {
        self.runs.unwrap_or(if n >= 100 { 3 } else { 5 }).max(1)
    }

    fn command(&self) -> String {
        self.report.command("gossip")
    }
}

/// `--sizes`: comma-separated, blanks ignored, not empty, each at least 3.
fn sizes(s: &str) -> Result<Vec<usize>, String> {
    let sizes = s
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<usize>().map_err(|_| format!("bad size {s:?}")))
        .collect::<Result<Vec<usize>, String>>()?;
    if sizes.is_empty() {
        return Err("no sizes given".into());
    }
    if sizes.iter().any(|&n| n < 3) {
        return Err("sizes must be at least 3 (a seed, a victim and one other survivor)".into());
    }
    Ok(sizes)
}

fn secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("bad number of seconds {s:?}")),
    }
}

fn millis(s: &str) -> Result<Duration, String> {
    s.parse().map(Duration::from_millis).map_err(|e| format!("bad number of milliseconds {s:?}: {e}"))
}

/// The suspicion timeout `ClusterConfig` derives when `suspect_to_down_after` is `None`
/// (memberlist's LAN formula, see `control/src/cluster/mod.rs`).
fn default_suspect(hint: usize) -> Duration {
    #[allow(clippy::cast_precision_loss)]
    let factor = 4.0 * (hint.max(1) as f64).log10().max(1.0);
    PROBE_PERIOD.mul_f64(factor)
}

/// foca's `max_transmissions` for a cluster-size hint (its LAN config).
fn max_transmissions(hint: usize) -> u32 {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let tx = ((hint as f64 + 1.0).log10() * 4.0) as u32;
    tx.clamp(1, 255)
}

/// SWIM's expected time to first detection in protocol periods when each of the `n - 1`
/// survivors probes one uniformly random other member per period:
/// `1 / (1 - (1 - 1/(n-1))^(n-1))`, which tends to e/(e-1) ≈ 1.58 for large n.
fn swim_expected_periods(n: usize) -> f64 {
    let others = i32::try_from(n.saturating_sub(1).max(1)).unwrap_or(i32::MAX);
    1.0 / (1.0 - (1.0 - 1.0 / f64::from(others)).powi(others))
}

struct Node {
    name: String,
    view: watch::Receiver<ClusterView>,
    /// Dropping it crashes the member (its tasks are aborted, no leave).
    cluster: Cluster,
    registry: prometheus::Registry,
}

fn node_name(i: usize) -> String {
    format!("n{i:03}")
}

fn service_of(name: &str) -> String {
    format!("svc-{name}")
}

/// Everything measured in one run; `None` where the event was not reached.
#[derive(Default)]
struct RunResult {
    /// All views list N members, all alive.
    membership: Option<Duration>,
    /// All views list N alive members and hold N states with the expected instances.
    converged: Option<Duration>,
    /// Per member: when its own view first listed N alive members with N states.
    view_converged: Vec<Option<Duration>>,
    /// How far convergence got when it timed out.
    convergence_note: Option<String>,
    /// What the views not converged after `--snapshot` seconds were missing.
    stragglers: Option<String>,
    /// Some of those views lacked members (not just states).
    unknown_members: bool,
    victim: Option<String>,
    /// Crash to the first survivor listing the victim suspect or down.
    first_suspect: Option<Duration>,
    /// Crash to the first survivor listing the victim down.
    first_down: Option<Duration>,
    /// Crash to every survivor listing the victim down.
    all_down: Option<Duration>,
    /// Per survivor: name, first seen listing the victim suspect, first seen listing it down.
    survivors: Vec<(String, Option<Duration>, Option<Duration>)>,
    detect_note: Option<String>,
    /// Live members seen suspect / down, from the start to the crash.
    spurious_join: (usize, usize),
    /// Live members (not the victim) seen suspect / down after the crash.
    spurious_detect: (usize, usize),
    /// Time taken by the N `Cluster::start` calls.
    start_calls: Duration,
    /// CPU cores the process used on average over the first [`JOIN_CPU_WINDOW`]: the join storm.
    join_cpu: Option<f64>,
}

/// The time by which at least half of the entries (rounded up) had happened.
fn half_reached(times: &[Option<Duration>]) -> Option<Duration> {
    let mut reached: Vec<Duration> = times.iter().flatten().copied().collect();
    reached.sort_unstable();
    let k = times.len().div_ceil(2);
    if k == 0 {
        return None;
    }
    reached.get(k - 1).copied()
}

impl RunResult {
    fn half_views(&self) -> Option<Duration> {
        half_reached(&self.view_converged)
    }

    fn half_down(&self) -> Option<Duration> {
        let downs: Vec<Option<Duration>> = self.survivors.iter().map(|s| s.2).collect();
        half_reached(&downs)
    }

    /// Survivors that went from alive to down between two polls (never seen suspect).
    fn straight_to_down(&self) -> usize {
        self.survivors.iter().filter(|s| s.1.is_none() && s.2.is_some()).count()
    }

    /// Per-view convergence times bucketed by whole seconds: `"0 s: 28, 30 s: 2"`.
    fn view_histogram(&self) -> String {
        let mut buckets = std::collections::BTreeMap::<u64, usize>::new();
        let mut never = 0;
        for t in &self.view_converged {
            match t {
                Some(t) => *buckets.entry(t.as_secs()).or_default() += 1,
                None => never += 1,
            }
        }
        let mut parts: Vec<String> = buckets.iter().map(|(s, c)| format!("{s} s: {c}")).collect();
        if never > 0 {
            parts.push(format!("never: {never}"));
        }
        parts.join(", ")
    }

    /// The survivor that marked the victim down last (or never), with its times.
    fn last_survivor(&self) -> Option<String> {
        let last = self.survivors.iter().max_by_key(|s| s.2.unwrap_or(Duration::MAX))?;
        let show = |d: Option<Duration>| d.map_or("never".to_string(), |d| format!("{} ms", d.as_millis()));
        Some(format!("{} (suspect seen {}, down {})", last.0, show(last.1), show(last.2)))
    }
}

/// Records live members (not the victim) seen suspect or down, as (observer, member) pairs.
#[derive(Default)]
struct Spurious {
    suspect: HashSet<(String, String)>,
    down: HashSet<(String, String)>,
}

impl Spurious {
    fn observe(&mut self, observer: &str, view: &ClusterView, victim: Option<&str>) {
        for m in &view.members {
            if m.is_self || Some(m.name.as_str()) == victim {
                continue;
            }
            match m.state {
                MemberState::Alive => {}
                MemberState::Suspect => {
                    self.suspect.insert((observer.to_string(), m.name.clone()));
                }
                MemberState::Down => {
                    self.down.insert((observer.to_string(), m.name.clone()));
                }
            }
        }
    }

    fn counts(&self) -> (usize, usize) {
        (self.suspect.len(), self.down.len())
    }
}

/// (all N listed and alive, and also all N states with the expected instance).
fn converged(view: &ClusterView, names: &[String], services: &[String]) -> (bool, bool) {
    let members = view.members.len() == names.len()
        && view.members.iter().all(|m| m.state == MemberState::Alive)
        && names.iter().all(|n| view.members.binary_search_by(|m| m.name.as_str().cmp(n)).is_ok());
    if !members {
        return (false, false);
    }
    let states = view.states.len() == names.len()
        && names
            .iter()
            .zip(services)
            .all(|(n, svc)| view.states.get(n).is_some_and(|s| s.instances.iter().any(|i| &i.service == svc)));
    (true, states)
}

fn progress(nodes: &[Node], names: &[String], services: &[String]) -> String {
    let mut alive = Vec::new();
    let mut states = Vec::new();
    let mut full = 0;
    for node in nodes {
        let view = node.view.borrow();
        alive.push(view.members.iter().filter(|m| m.state == MemberState::Alive).count());
        states.push(
            names
                .iter()
                .zip(services)
                .filter(|(n, svc)| view.states.get(*n).is_some_and(|s| s.instances.iter().any(|i| &i.service == *svc)))
                .count(),
        );
        if converged(&view, names, services).1 {
            full += 1;
        }
    }
    alive.sort_unstable();
    states.sort_unstable();
    let mid = |v: &[usize]| v.get(v.len() / 2).copied().unwrap_or(0);
    format!(
        "{full}/{n} views converged; alive members listed per view min/median/max {}/{}/{}; \
         expected states held per view min/median/max {}/{}/{}",
        alive.first().copied().unwrap_or(0),
        mid(&alive),
        alive.last().copied().unwrap_or(0),
        states.first().copied().unwrap_or(0),
        mid(&states),
        states.last().copied().unwrap_or(0),
        n = nodes.len(),
    )
}

/// What each view that has not converged lacks: members not listed, listed but not alive,
/// states missing (or without the expected instance).
fn stragglers(nodes: &[Node], names: &[String], services: &[String]) -> (String, bool) {
    let mut lacking = Vec::new();
    let mut any_unknown = false;
    for node in nodes {
        let view = node.view.borrow().clone();
        if converged(&view, names, services).1 {
            continue;
        }
        let unknown: Vec<&str> = names.iter().filter(|n| view.member(n).is_none()).map(String::as_str).collect();
        any_unknown |= !unknown.is_empty();
        let unlisted = match unknown.len() {
            0 => "0 unknown to it".to_string(),
            1..=3 => format!("{} unknown to it: {}", unknown.len(), unknown.join(", ")),
            k => format!("{k} unknown to it"),
        };
        let not_alive = view.members.iter().filter(|m| m.state != MemberState::Alive).count();
        let mut absent = Vec::new();
        let mut stale = Vec::new();
        for (name, svc) in names.iter().zip(services) {
            match view.states.get(name) {
                None => {
                    if view.member(name).is_some() {
                        absent.push(name.as_str());
                    }
                }
                Some(held) if !held.instances.iter().any(|i| &i.service == svc) => {
                    let owner = nodes.iter().find(|o| &o.name == name).map(|o| o.cluster.local_state().freshness());
                    stale.push(format!("{name} at {:?} (owner at {owner:?})", held.freshness()));
                }
                Some(_) => {}
            }
        }
        let mut line = format!(
            "{} lists {} of {} members ({unlisted}, {not_alive} not alive)",
            node.name,
            view.members.len(),
            names.len()
        );
        if !absent.is_empty() {
            let _ = write!(line, ", holds no state for {} listed member(s)", absent.len());
            if absent.len() <= 3 {
                let _ = write!(line, " ({})", absent.join(", "));
            }
        }
        if !stale.is_empty() {
            let _ = write!(line, " and a state without its instance for {}", stale.join(", "));
        }
        // How the others see it: a renewed identity (declared down, rejoined) shows here.
        let own = node.cluster.id().incarnation;
        let mut seen: Vec<String> = nodes
            .iter()
            .filter(|o| o.name != node.name)
            .filter_map(|o| {
                o.view.borrow().member(&node.name).map(|m| {
                    let delta = i128::from(m.incarnation) - i128::from(own);
                    format!("{}{delta:+}", m.state.as_str())
                })
            })
            .collect();
        seen.sort();
        seen.dedup();
        let _ = write!(
            line,
            " [its metrics: {}; the others list it as (state, incarnation relative to its own): {}]",
            metric_summary(&node.registry),
            seen.join(" ")
        );
        lacking.push(line);
    }
    let shown = lacking.len().min(5);
    let more = if lacking.len() > shown { format!(", and {} more", lacking.len() - shown) } else { String::new() };
    (format!("{} view(s) not converged: {}{more}", lacking.len(), lacking[..shown].join("; ")), any_unknown)
}

/// Diagnosis for views that never converged: makes each such member republish its view
/// (an `update_local` that adds a role rebuilds the view from the member's store) and
/// reports whether that alone completed the view, i.e. whether the store held everything
/// and only the published view was behind.
async fn republish_test(nodes: &[Node], names: &[String], services: &[String]) -> String {
    let stuck: Vec<&Node> = nodes.iter().filter(|n| !converged(&n.view.borrow(), names, services).1).collect();
    if stuck.is_empty() {
        return String::new();
    }
    for node in &stuck {
        node.cluster.update_local(|s| s.roles.push("bench-republish".into()));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fixed: Vec<&str> =
        stuck.iter().filter(|n| converged(&n.view.borrow(), names, services).1).map(|n| n.name.as_str()).collect();
    format!(
        ". Diagnosis: after each of these {} member(s) republished its view (an `update_local`, which rebuilds \
         the view from its store), {} view(s) were complete at once{}",
        stuck.len(),
        fixed.len(),
        if fixed.is_empty() {
            String::new()
        } else {
            format!(
                " ({}): the store held every member and state; the published view had fallen behind it",
                fixed.join(", ")
            )
        }
    )
}

/// The member's state-pull and rejection counters, e.g. `pulls ok 12 error 0, rejected 0`.
fn metric_summary(registry: &prometheus::Registry) -> String {
    let families = registry.gather();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        families
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| label.is_none_or(|(k, v)| m.get_label().iter().any(|l| l.name() == k && l.value() == v)))
            .map(|m| m.get_counter().get_value())
            .sum()
    };
    format!(
        "state pulls ok {} error {}, packets in {} out {}, rejected {}",
        value("constellation_state_pulls_total", Some(("result", "ok"))),
        value("constellation_state_pulls_total", Some(("result", "error"))),
        value("constellation_gossip_packets_total", Some(("direction", "in"))),
        value("constellation_gossip_packets_total", Some(("direction", "out"))),
        value("constellation_gossip_packets_rejected_total", None),
    )
}

/// Over the first [`JOIN_CPU_WINDOW`] after the first start: the process's CPU use.
fn sample_join_cpu(result: &mut RunResult, cpu0: Option<f64>, elapsed: Duration) {
    if result.join_cpu.is_none() && elapsed >= JOIN_CPU_WINDOW {
        if let (Some(a), Some(b)) = (cpu0, cpu_seconds()) {
            result.join_cpu = Some((b - a) / elapsed.as_secs_f64());
        }
    }
}

async fn run_once(n: usize, opts: &Options) -> Result<RunResult> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let keyring = Arc::new(Keyring::parse(&generate_key_hex()).context("parsing a generated key")?);
    let names: Vec<String> = (0..n).map(node_name).collect();
    let services: Vec<String> = names.iter().map(|n| service_of(n)).collect();
    let mut result = RunResult { view_converged: vec![None; n], ..RunResult::default() };
    let mut spurious_join = Spurious::default();
    let mut spurious_detect = Spurious::default();

    // 1. Start everyone back to back; node 0 is the seed of all others.
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let mut seed: Option<SocketAddr> = None;
    for name in &names {
        let mut cfg = ClusterConfig::new(name, loopback, loopback, Arc::clone(&keyring));
        cfg.seeds = seed.into_iter().collect();
        cfg.probe_period = PROBE_PERIOD;
        cfg.probe_rtt = PROBE_RTT;
        cfg.cluster_size_hint = u32::try_from(n).unwrap_or(u32::MAX);
        cfg.suspect_to_down_after = opts.suspect;
        let registry = prometheus::Registry::new();
        let mut initial = NodeState::new(name);
        initial.instances = vec![Instance {
            service: service_of(name),
            url: format!("http://{name}.bench:8080"),
            healthy: true,
            egress: None,
        }];
        let cluster = Cluster::start(cfg, initial, &registry, std::future::pending::<()>())
            .await
            .with_context(|| format!("starting {name}"))?;
        if seed.is_none() {
            seed = Some(cluster.gossip_addr());
        }
        nodes.push(Node { name: name.clone(), view: cluster.view(), cluster, registry });
    }
    result.start_calls = t0.elapsed();

    // 2. Wait for full convergence.
    loop {
        let elapsed = t0.elapsed();
        let mut all_members = true;
        let mut all_full = true;
        for (i, node) in nodes.iter().enumerate() {
            let view = node.view.borrow();
            let (members, full) = converged(&view, &names, &services);
            all_members &= members;
            all_full &= full;
            if full && result.view_converged[i].is_none() {
                result.view_converged[i] = Some(elapsed);
            }
            spurious_join.observe(&node.name, &view, None);
        }
        if all_members && result.membership.is_none() {
            result.membership = Some(elapsed);
        }
        sample_join_cpu(&mut result, cpu0, elapsed);
        if all_full {
            result.converged = Some(elapsed);
            break;
        }
        if elapsed >= opts.snapshot && result.stragglers.is_none() {
            let (mut note, unknown) = stragglers(&nodes, &names, &services);
            result.unknown_members = unknown;
            if opts.diagnose {
                note.push_str(&republish_test(&nodes, &names, &services).await);
            }
            result.stragglers = Some(note);
        }
        if elapsed > opts.converge_timeout {
            let mut note = format!(
                "no convergence within {} s: {}; {}",
                opts.converge_timeout.as_secs_f64(),
                progress(&nodes, &names, &services),
                stragglers(&nodes, &names, &services).0
            );
            note.push_str(&republish_test(&nodes, &names, &services).await);
            result.convergence_note = Some(note);
            break;
        }
        tokio::time::sleep(opts.poll).await;
    }

    if result.converged.is_some() {
        // 3. Let the join traffic settle, then crash one random non-seed member.
        // A random extra fraction of a period puts the crash at a random phase of the probe
        // cycles (they start when the members join, so a fixed settle would not).
        let jitter = PROBE_PERIOD.mul_f64(rand::rng().random::<f64>());
        let settle_until = Instant::now() + opts.settle + jitter;
        while Instant::now() < settle_until {
            for node in &nodes {
                spurious_join.observe(&node.name, &node.view.borrow(), None);
            }
            sample_join_cpu(&mut result, cpu0, t0.elapsed());
            tokio::time::sleep(opts.poll).await;
        }
        let victim = nodes.remove(rand::rng().random_range(1..n));
        let victim_name = victim.name.clone();
        let crash = Instant::now();
        drop(victim.cluster);
        drop(victim.view);
        result.victim = Some(victim_name.clone());
        result.survivors = nodes.iter().map(|nd| (nd.name.clone(), None, None)).collect();

        loop {
            let elapsed = crash.elapsed();
            let mut all_down = true;
            for (node, times) in nodes.iter().zip(result.survivors.iter_mut()) {
                let view = node.view.borrow();
                match view.member(&victim_name).map(|m| m.state) {
                    Some(MemberState::Suspect) => {
                        times.1.get_or_insert(elapsed);
                        result.first_suspect.get_or_insert(elapsed);
                        all_down = false;
                    }
                    Some(MemberState::Down) => {
                        times.2.get_or_insert(elapsed);
                        result.first_suspect.get_or_insert(elapsed);
                        result.first_down.get_or_insert(elapsed);
                    }
                    Some(MemberState::Alive) | None => all_down = false,
                }
                spurious_detect.observe(&node.name, &view, Some(&victim_name));
            }
            if all_down {
                result.all_down = Some(elapsed);
                break;
            }
            if elapsed > opts.detect_timeout {
                let down = result.survivors.iter().filter(|s| s.2.is_some()).count();
                let suspect = result.survivors.iter().filter(|s| s.1.is_some() && s.2.is_none()).count();
                result.detect_note = Some(format!(
                    "not down everywhere within {} s: {down} of {} survivors listed it down, {suspect} more only \
                     suspect",
                    opts.detect_timeout.as_secs_f64(),
                    nodes.len()
                ));
                break;
            }
            tokio::time::sleep(opts.poll).await;
        }
    }
    result.spurious_join = spurious_join.counts();
    result.spurious_detect = spurious_detect.counts();

    // 4. Tear down (crash everyone) and let the aborted tasks and sockets go.
    drop(nodes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(result)
}

/// Median (mean of the middle two for an even count) and maximum.
fn median_worst(values: &[Duration]) -> Option<(Duration, Duration)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2 };
    Some((median, v[v.len() - 1]))
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn periods(d: Duration) -> f64 {
    d.as_secs_f64() / PROBE_PERIOD.as_secs_f64()
}

struct SizeReport {
    n: usize,
    runs: Vec<RunResult>,
    /// Process CPU time (user + system) over the size's runs divided by their wall time.
    cpu_cores: Option<f64>,
    wall: Duration,
    hint: usize,
    suspect: Duration,
}

struct Measure {
    label: &'static str,
    get: fn(&RunResult) -> Option<Duration>,
}

const MEASURES: [Measure; 6] = [
    Measure { label: "half the views converged", get: |r| r.half_views() },
    Measure { label: "**full convergence** (every view: N alive + N states)", get: |r| r.converged },
    Measure { label: "**first detection: suspect** (or down)", get: |r| r.first_suspect },
    Measure { label: "first detection: down", get: |r| r.first_down },
    Measure { label: "down at half the survivors", get: |r| r.half_down() },
    Measure { label: "**full detection: down at all survivors**", get: |r| r.all_down },
];

fn results_table(reports: &[SizeReport]) -> String {
    let mut s = String::new();
    s.push_str(
        "| nodes | measure | runs with a value | median | median (periods) | worst | worst (periods) | per run (ms) |\n",
    );
    s.push_str("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for r in reports {
        for m in &MEASURES {
            let values: Vec<Duration> = r.runs.iter().filter_map(m.get).collect();
            let per_run: Vec<String> =
                r.runs.iter().map(|run| (m.get)(run).map_or("–".to_string(), |d| d.as_millis().to_string())).collect();
            let (med, medp, worst, worstp) = match median_worst(&values) {
                Some((med, worst)) => {
                    (ms(med), format!("{:.2}", periods(med)), ms(worst), format!("{:.2}", periods(worst)))
                }
                None => ("–".into(), "–".into(), "–".into(), "–".into()),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {}/{} | {med} | {medp} | {worst} | {worstp} | {} |",
                r.n,
                m.label,
                values.len(),
                r.runs.len(),
                per_run.join(", ")
            );
        }
    }
    s
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let hz = *HZ.get_or_init(|| command_output("getconf", &["CLK_TCK"]).and_then(|s| s.parse().ok()).unwrap_or(100.0));
    Some((utime + stime) / hz)
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    report::command_output(cmd, args, std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
}

use report::{cpu_model, load_average};

struct Environment {
    date: String,
    cpus: usize,
    cpu_model: String,
    kernel: String,
    git: String,
    workers: usize,
    load_start: String,
    load_end: String,
}

fn render(opts: &Options, env: &Environment, reports: &[SizeReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{START_MARK}");
    s.push_str("## Gossip convergence and failure detection (`benches/gossip.rs`)\n\n");
    let _ = writeln!(
        s,
        "Produced by `{}` on {}; this block is rewritten by each run (the numbers below are the\n\
         program's own output, not edited by hand).\n",
        opts.command(),
        env.date
    );
    s.push_str("| | |\n| --- | --- |\n");
    let _ = writeln!(s, "| machine | {} CPUs (`nproc`), {}, Linux {} |", env.cpus, env.cpu_model, env.kernel);
    let _ = writeln!(
        s,
        "| Constellation | {}, `cargo bench` profile ({}) |",
        env.git,
        if cfg!(debug_assertions) { "debug assertions ON" } else { "optimised, inherits `release`" }
    );
    let _ = writeln!(
        s,
        "| process | all members in one process on 127.0.0.1 (UDP gossip + TCP state pulls over loopback, \
         sealed with one generated key), one tokio multi-thread runtime with {} worker threads; \
         the poller runs on the main thread |",
        env.workers
    );
    let _ = writeln!(s, "| load average (1, 5, 15 min) | {} at start, {} at end |", env.load_start, env.load_end);
    s.push('\n');

    s.push_str("### Configuration\n\n");
    let suspect_note = match opts.suspect {
        Some(d) => format!(
            "**overridden** with `--suspect-ms {}` to {} for every size (not the default)",
            d.as_millis(),
            ms(d)
        ),
        None => "the default (`suspect_to_down_after = None`): `4 × max(1, log10(cluster_size_hint)) × \
                 probe_period`, memberlist's LAN formula"
            .to_string(),
    };
    let _ = writeln!(
        s,
        "- `probe_period` {} ms, `probe_rtt` {} ms, {INDIRECT_PROBES} indirect probes (foca LAN), \
         `push_pull_interval` {} ms (default);\n\
         - `cluster_size_hint` = N (what an operator would set; it sizes foca's retransmissions and \
         the suspicion timeout);\n\
         - suspicion timeout: {suspect_note};\n\
         - member 0 has no seeds; members 1..N-1 have member 0's gossip address as their only seed; all N \
         `Cluster::start` calls run back to back (the clock starts before the first);\n\
         - every member starts with one instance (`svc-<name>`) in its `NodeState`; **full convergence** = \
         the first poll at which every view lists all N members `alive` and holds all N states, each with \
         its instance;\n\
         - after convergence the cluster settles for {} ms plus a random 0–1 probe period (so the crash \
         falls at a random phase of the probe cycles), then one random non-seed member is dropped \
         without `leave()` (its tasks are aborted, its sockets close: a crash); detection times run from \
         the drop. **First detection** = the first survivor listing it `suspect` (or already `down`), and \
         separately the first listing it `down`; **full detection** = every survivor lists it `down`;\n\
         - views are polled every {} ms (the resolution of every figure); timeouts: {} s for convergence, \
         {} s for detection; a protocol period is {} ms, so \"periods\" = ms / {}.\n",
        PROBE_PERIOD.as_millis(),
        PROBE_RTT.as_millis(),
        DEFAULT_PUSH_PULL_INTERVAL.as_millis(),
        opts.settle.as_millis(),
        opts.poll.as_millis(),
        opts.converge_timeout.as_secs_f64(),
        opts.detect_timeout.as_secs_f64(),
        PROBE_PERIOD.as_millis(),
        PROBE_PERIOD.as_millis(),
    );
    if opts.diagnose {
        s.push_str(
            "**`--diagnose` was on**: at the snapshot, unconverged members were made to republish their views \
             (an `update_local`), which perturbs the convergence figures.\n\n",
        );
    }
    s.push_str(
        "| nodes | runs | suspicion timeout | foca max transmissions | SWIM expected first detection \
         (periods, random probe targets) | benchmark CPU use (cores, avg) | wall time |\n",
    );
    s.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in reports {
        let _ = writeln!(
            s,
            "| {} | {} | {} ({:.1} periods) | {} | {:.2} | {} | {:.0} s |",
            r.n,
            r.runs.len(),
            ms(r.suspect),
            periods(r.suspect),
            max_transmissions(r.hint),
            swim_expected_periods(r.n),
            r.cpu_cores.map_or("?".into(), |c| format!("{c:.2} of {}", env.cpus)),
            r.wall.as_secs_f64()
        );
    }
    s.push('\n');

    s.push_str("### Results\n\n");
    s.push_str(&results_table(reports));
    s.push('\n');
    s.push_str(
        "Medians are over the runs that reached the event (mean of the middle two for an even count); \
         \"worst\" is the maximum; \"–\" means not reached.\n\n",
    );

    // Per-run notes: victims, timeouts, spurious suspicions, stragglers.
    s.push_str(
        "Per run: the crashed member; when each view first converged (number of views per whole second \
         since the start); the survivor that listed the victim down last; \"spurious\" = distinct \
         (observer, live member) pairs seen `suspect` / `down` while joining (start to crash) and after the \
         crash (the victim excluded); \"straight to down\" = survivors never seen listing the victim \
         `suspect` before `down` (they learned both within one poll, or `down` first).\n\n",
    );
    for r in reports {
        let _ = writeln!(s, "- N = {}:", r.n);
        for (i, run) in r.runs.iter().enumerate() {
            let mut p = format!(
                "  - run {}: victim {}; views converged at {}; last to mark it down: {}; spurious while \
                 joining {}/{}, after the crash {}/{}; straight to down {}; the N start calls took {} ms; \
                 CPU in the first {} s {} cores",
                i + 1,
                run.victim.as_deref().unwrap_or("–"),
                run.view_histogram(),
                run.last_survivor().unwrap_or_else(|| "–".into()),
                run.spurious_join.0,
                run.spurious_join.1,
                run.spurious_detect.0,
                run.spurious_detect.1,
                run.straight_to_down(),
                run.start_calls.as_millis(),
                JOIN_CPU_WINDOW.as_secs(),
                run.join_cpu.map_or("?".into(), |c| format!("{c:.2}"))
            );
            if let (Some(m), Some(c)) = (run.membership, run.converged) {
                if c > m {
                    let _ = write!(
                        p,
                        "; all members listed alive everywhere {} ms before the states were in",
                        (c - m).as_millis()
                    );
                }
            }
            if let Some(note) = &run.stragglers {
                let _ = write!(p, "; after {} s {note}", opts.snapshot.as_secs_f64());
            }
            if let Some(note) = &run.convergence_note {
                let _ = write!(p, "; **{note}**");
            }
            if let Some(note) = &run.detect_note {
                let _ = write!(p, "; **{note}**");
            }
            let _ = writeln!(s, "{p}");
        }
    }
    s.push('\n');

    s.push_str("### Reading the numbers\n\n");
    s.push_str(
        "- **SWIM reference point.** The SWIM paper (Das, Gupta, Motivala, DSN 2002) gives the expected \
         time from a member's failure to its *first* detection by some non-faulty member as about \
         e/(e−1) ≈ 1.58 protocol periods (each period every member probes one random other member, so a \
         given member is probed by someone with probability 1 − (1 − 1/(N−1))^(N−1) → 1 − 1/e per \
         period; the table above gives the finite-N value). foca probes members in a shuffled round-robin \
         instead, which bounds the worst case, and it declares a member `suspect` only at the end of a \
         probe period in which neither the direct probe (`probe_rtt`) nor the indirect probes were \
         answered. The first-suspect column is the one to compare with 1.58 periods.",
    );
    let compare: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let values: Vec<Duration> = r.runs.iter().filter_map(|run| run.first_suspect).collect();
            median_worst(&values).map(|(median, _)| {
                format!("N = {}: {:.2} (expected {:.2})", r.n, periods(median), swim_expected_periods(r.n))
            })
        })
        .collect();
    if !compare.is_empty() {
        let _ = write!(s, " Measured median first-suspect, in periods: {}.", compare.join("; "));
    }
    s.push('\n');
    s.push_str(
        "- **Down includes the suspicion timeout.** SWIM with suspicion (and foca) does not declare a \
         member down when a probe fails: it is first `suspect`, and becomes `down` only when the suspicion \
         timeout expires without a refutation. foca's timeout grows with log(N) (by default \
         `4 × max(1, log10 N)` periods: 4 s up to 10 nodes, 5.9 s at 30, 8 s at 100), so first-down is \
         expected at about first-suspect + the suspicion timeout, and down-at-all-survivors a little \
         later again: in foca only the member whose probe failed runs the suspicion timer; the others \
         learn `down` from its gossip (each update is sent at most `max_transmissions` times per member), \
         or from a failed probe of their own followed by their own timer.\n",
    );
    let late_down = reports.iter().flat_map(|r| &r.runs).any(|run| match (run.half_down(), run.all_down) {
        (Some(half), Some(all)) => all > half + PROBE_PERIOD * 2,
        _ => false,
    });
    if late_down {
        s.push_str(
            "- **Detection stragglers.** In some runs one survivor listed the victim `down` well after the \
             others (per-run notes: \"last to mark it down\"). That survivor missed the first `down` gossip; \
             it can then learn of it only from a failed probe of its own (its round-robin turn for the \
             victim, up to N−1 periods away) followed by its own suspicion timeout, or from another survivor \
             that went the same way. The worst full-detection figures include that, not just dissemination.\n",
        );
    }
    s.push_str(
        "- **Machine load.** Every member of a size runs in one process on one runtime sharing the \
         machine's CPUs with the poller, and with whatever else was running on the machine (the load \
         average above shows how much). A 100-node cluster here is \
         100 foca instances, 100 UDP sockets and 100 TCP pull servers contending for 2 cores, so late \
         timers and delayed packets inflate the figures for large N, and a member starved long enough can \
         be suspected without having failed (the spurious counts). On separate machines each member has \
         its own CPU; treat large-N figures as an upper bound for this implementation, not as a property \
         of the protocol.\n",
    );
    let spurious: usize = reports
        .iter()
        .flat_map(|r| &r.runs)
        .map(|run| run.spurious_join.0 + run.spurious_join.1 + run.spurious_detect.0 + run.spurious_detect.1)
        .sum();
    if spurious > 0 {
        let _ = writeln!(
            s,
            "- **Spurious suspicions.** {spurious} (observer, live member) pairs were seen `suspect` or `down` \
             in total (per-run notes). No member but the victim failed, so these are probes answered too \
             late: with every member in one process on {} CPUs, a busy runtime (see the CPU figures and the \
             load average) delays acks beyond `probe_rtt` and the indirect probes. A suspected member \
             refutes when it hears of it; one declared `down` rejoins under a renewed identity.",
            env.cpus
        );
    }
    if reports.iter().flat_map(|r| &r.runs).any(|run| run.unknown_members) {
        let _ = writeln!(
            s,
            "- **Convergence tail.** Some runs had views still incomplete after {} s that lacked *members* \
             their SWIM layer had not heard of (per-run notes; a listed member's state normally follows within \
             one pull). Joining here works like this: the joiner sends a join request \
             to the seed, the seed `announce`s to the joiner, and the joiner's reply (a foca `Feed` of what \
             the joiner knows) introduces it to the seed; the joiner itself gets no member list, and the TCP \
             anti-entropy (`push_pull_interval`) exchanges node states but does not add SWIM members. So a \
             joiner learns of the others only from membership updates piggybacked on the messages it gets \
             (each update sent at most `max_transmissions` times per node, one packet's worth per \
             message), from the first message each member sends it (a probe, a gossip: each member probes \
             every other once per round-robin cycle of N−1 periods), or from foca's \
             periodic announce (every 30 s to one random member, whose `Feed` answer carries one packet's \
             worth of members). With all N members starting within a fraction of a second, many join \
             updates compete for the piggyback space and a few (observer, member) pairs miss them; those \
             are repaired at the next 30 s announce or when the unknown member first contacts the \
             straggler, so late views tend to complete near 30 s, 60 s, ... after the start.",
            opts.snapshot.as_secs_f64()
        );
    }
    let behind = reports
        .iter()
        .flat_map(|r| &r.runs)
        .filter(|run| {
            [&run.convergence_note, &run.stragglers]
                .iter()
                .any(|n| n.as_ref().is_some_and(|n| n.contains("fallen behind")))
        })
        .count();
    if behind > 0 {
        let _ = writeln!(
            s,
            "- **A published view that fell behind its store** ({behind} run(s)). There, the member's own \
             store held every member and state, yet the view it published did not, and nothing changed it: \
             making the member republish (an `update_local`) completed the view at once. The likely cause, \
             from reading `Shared::publish_view`: the view is built under the store lock but sent after the \
             lock is released, so two tasks publishing at nearly the same moment (the gossip task after a \
             membership change, the puller after merging states) can send out of order, and the older view \
             then stays published until the next change (the per-run notes name the member)."
        );
    }
    let _ = writeln!(s, "{END_MARK}");
    s
}

fn main() -> Result<()> {
    let opts = Options::from_command_line();
    // The cluster's own logs, for investigating a run: `RUST_LOG=constellation_cluster=debug`.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = opts.worker_threads.unwrap_or(cpus).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;

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
        "gossip bench: sizes {:?}, {workers} worker threads on {cpus} CPUs, load average {load_start}",
        opts.sizes
    );

    let mut reports = Vec::new();
    for &n in &opts.sizes {
        let runs = opts.runs_for(n);
        let suspect = opts.suspect.unwrap_or_else(|| default_suspect(n));
        let cpu_before = cpu_seconds();
        let wall_start = Instant::now();
        let mut results = Vec::new();
        for run in 1..=runs {
            let r = runtime.block_on(run_once(n, &opts))?;
            let show = |d: Option<Duration>| d.map_or("–".to_string(), |d| format!("{} ms", d.as_millis()));
            eprintln!(
                "N={n:>3} run {run}/{runs}: converged {} (half the views {}), victim {}, first suspect {}, \
                 first down {}, half down {}, all down {}, last {}; spurious join {:?} detect {:?}; join CPU {:.2}; \
                 views converged at [{}]{}{}{}",
                show(r.converged),
                show(r.half_views()),
                r.victim.as_deref().unwrap_or("–"),
                show(r.first_suspect),
                show(r.first_down),
                show(r.half_down()),
                show(r.all_down),
                r.last_survivor().unwrap_or_default(),
                r.spurious_join,
                r.spurious_detect,
                r.join_cpu.unwrap_or(f64::NAN),
                r.view_histogram(),
                r.stragglers.as_ref().map(|n| format!(" [after the snapshot: {n}]")).unwrap_or_default(),
                r.convergence_note.as_ref().map(|n| format!(" [{n}]")).unwrap_or_default(),
                r.detect_note.as_ref().map(|n| format!(" [{n}]")).unwrap_or_default(),
            );
            results.push(r);
        }
        let wall = wall_start.elapsed();
        let cpu_cores = match (cpu_before, cpu_seconds()) {
            (Some(a), Some(b)) if wall.as_secs_f64() > 0.0 => Some((b - a) / wall.as_secs_f64()),
            _ => None,
        };
        reports.push(SizeReport { n, runs: results, cpu_cores, wall, hint: n, suspect });
    }
    drop(runtime);

    let env = Environment {
        date,
        cpus,
        cpu_model: cpu_model(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |k| k.trim().into()),
        git,
        workers,
        load_start,
        load_end: load_average(),
    };
    let block = render(&opts, &env, &reports);
    println!("{block}");
    opts.report.write(START_MARK, END_MARK, &block)?;
    Ok(())
}
