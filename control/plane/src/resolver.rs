//! The resolver: looks up the host names of server URLs (asynchronously, a hosts file
//! first, then the system resolver), keeps one address per name, looks again on a timer
//! and soon after failed upstream connects, and says when an answer changed so the
//! route table is recompiled. The proxy only ever sees the resulting [`AddressMap`].
//!
//! Policy: one server URL is one upstream. Of several addresses for a name, the current
//! one is kept while the answer still contains it; otherwise the first IPv4 address is
//! taken, else the first address. A name that does not resolve has no address (its
//! upstreams are unavailable, with the reason in status); a lookup that only timed out
//! keeps the address it had, since the answer is unknown rather than negative.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use constellation_proxy::{AddressMap, ConnectFailures, HostPort};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Default interval between two lookups of every name (ms).
pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
/// Default time allowed for one lookup (ms).
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// Default shortest gap between two early lookups caused by failed connects (ms).
pub const DEFAULT_MIN_REFRESH_MS: u64 = 1_000;
/// Consecutive failed lookups after which a name's last working address is given up
/// (a timed-out lookup always keeps it).
pub const FAILED_ROUNDS_KEPT: u32 = 3;
/// How soon a name without an address is looked up again (at most the interval).
pub const FAILED_RETRY: Duration = Duration::from_secs(5);

/// Whether a lookup failed outright (for the kept-address count).
enum Kind {
    Failed,
    Other,
}

/// `[resolver]`: how host names in server URLs are turned into addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// Every host name is looked up again this often, in milliseconds. Default 30000.
    pub interval_ms: u64,
    /// Time allowed for one lookup, in milliseconds. Default 2000.
    pub timeout_ms: u64,
    /// After failed upstream connects names are looked up early, at most once per this
    /// many milliseconds. Default 1000.
    pub min_refresh_ms: u64,
    /// A hosts-format file (`address name...` per line) consulted before the system
    /// resolver and read again at every lookup round; relative to the config file.
    /// Default: none.
    pub hosts_file: Option<PathBuf>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            min_refresh_ms: DEFAULT_MIN_REFRESH_MS,
            hosts_file: None,
        }
    }
}

impl ResolverConfig {
    /// Check ranges; returns `(key, message)` for the first bad value.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [("interval_ms", self.interval_ms), ("timeout_ms", self.timeout_ms)] {
            if v == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        Ok(())
    }

    /// The settings, with `hosts_file` made absolute against `base_dir`.
    pub fn settings(&self, base_dir: &std::path::Path) -> ResolverSettings {
        ResolverSettings {
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            min_refresh: Duration::from_millis(self.min_refresh_ms),
            hosts_file: self.hosts_file.as_ref().map(|f| base_dir.join(f)),
        }
    }
}

/// Validated resolver settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Interval between lookup rounds.
    pub interval: Duration,
    /// Time allowed for one lookup.
    pub timeout: Duration,
    /// Shortest gap between early rounds caused by failed connects.
    pub min_refresh: Duration,
    /// Hosts file consulted first.
    pub hosts_file: Option<PathBuf>,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverConfig::default().settings(std::path::Path::new("."))
    }
}

/// What a lookup returns.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Where names go when the hosts file does not know them.
pub trait Lookup: Send + Sync {
    /// The addresses of `host` (for `port`, which some resolvers care about).
    fn lookup(&self, host: &str, port: u16) -> LookupFuture;
}

/// The system resolver, through tokio (getaddrinfo on a blocking thread).
#[derive(Debug, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str, port: u16) -> LookupFuture {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.map(|a| a.ip()).collect()) })
    }
}

impl<F> Lookup for F
where
    F: Fn(&str, u16) -> LookupFuture + Send + Sync,
{
    fn lookup(&self, host: &str, port: u16) -> LookupFuture {
        self(host, port)
    }
}

/// Addresses by lower-cased name from hosts-file text, in file order. Comments (`#`),
/// blank lines and lines whose first field is not an IP address are skipped; the
/// second value lists the 1-based numbers of the skipped non-blank lines.
pub fn parse_hosts(text: &str) -> (HashMap<String, Vec<IpAddr>>, Vec<usize>) {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        let Ok(ip) = first.parse::<IpAddr>() else {
            bad.push(i + 1);
            continue;
        };
        for name in fields {
            let ips = map.entry(name.to_ascii_lowercase()).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    (map, bad)
}

/// The address to use from `answer`: `current` while its IP is still in the answer,
/// else the first IPv4 address, else the first address.
pub fn choose(current: Option<SocketAddr>, answer: &[IpAddr], port: u16) -> Option<SocketAddr> {
    if let Some(cur) = current.filter(|c| answer.contains(&c.ip())) {
        return Some(SocketAddr::new(cur.ip(), port));
    }
    let ip = answer.iter().find(|ip| ip.is_ipv4()).or_else(|| answer.first())?;
    Some(SocketAddr::new(*ip, port))
}

/// The outcome of one name's lookup.
enum Outcome {
    Found(Vec<IpAddr>),
    TimedOut,
    Failed(String),
}

#[derive(Default)]
struct State {
    wanted: BTreeSet<HostPort>,
    answers: AddressMap,
    /// Consecutive failed lookups of names that still hold their last address.
    failed_rounds: BTreeMap<HostPort, u32>,
    hosts_error: Option<String>,
    last_round: Option<Instant>,
}

/// The resolver. Share it behind an `Arc`; see the module docs for the policy.
pub struct Resolver {
    settings: ResolverSettings,
    lookup: Arc<dyn Lookup>,
    failures: Option<Arc<ConnectFailures>>,
    state: Mutex<State>,
    wake: Notify,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver using the system resolver after the hosts file.
    pub fn new(settings: ResolverSettings) -> Self {
        Self::with_lookup(settings, Arc::new(SystemLookup))
    }

    /// A resolver asking `lookup` for names the hosts file does not have.
    pub fn with_lookup(settings: ResolverSettings, lookup: Arc<dyn Lookup>) -> Self {
        Self { settings, lookup, failures: None, state: Mutex::new(State::default()), wake: Notify::new() }
    }

    /// Also look again soon after upstream connects fail (see [`Resolver::run`]).
    pub fn watching(mut self, failures: Arc<ConnectFailures>) -> Self {
        self.failures = Some(failures);
        self
    }

    /// The settings in force.
    pub fn settings(&self) -> &ResolverSettings {
        &self.settings
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set the names the route table needs; answers for other names are forgotten.
    /// Returns whether some wanted name has no answer yet (and then wakes [`Resolver::run`]).
    pub fn want(&self, names: &BTreeSet<HostPort>) -> bool {
        let mut st = self.state();
        if st.wanted != *names {
            let mut kept = AddressMap::new();
            for n in names {
                if let Some(a) = st.answers.get(n) {
                    kept.insert(n.clone(), a.clone());
                }
            }
            st.answers = kept;
            st.wanted = names.clone();
        }
        let missing = st.wanted.iter().any(|n| st.answers.get(n).is_none());
        drop(st);
        if missing {
            self.wake.notify_one();
        }
        missing
    }

    /// The answers known now (a copy, for compiling).
    pub fn addresses(&self) -> AddressMap {
        self.state().answers.clone()
    }

    /// Look up the wanted names that have no answer yet. Returns whether an answer changed.
    pub async fn resolve_missing(&self) -> bool {
        let names: Vec<HostPort> = {
            let st = self.state();
            st.wanted.iter().filter(|n| st.answers.get(n).is_none()).cloned().collect()
        };
        self.resolve(names).await
    }

    /// The wanted names whose last lookup gave no address.
    fn failed_names(&self) -> Vec<HostPort> {
        let st = self.state();
        st.wanted.iter().filter(|n| matches!(st.answers.get(n), Some(Err(_)))).cloned().collect()
    }

    /// Look up every wanted name again. Returns whether an answer changed.
    pub async fn refresh(&self) -> bool {
        let names: Vec<HostPort> = {
            let mut st = self.state();
            st.last_round = Some(Instant::now());
            st.wanted.iter().cloned().collect()
        };
        self.resolve(names).await
    }

    async fn hosts(&self) -> HashMap<String, Vec<IpAddr>> {
        let Some(path) = &self.settings.hosts_file else { return HashMap::new() };
        let (map, error) = match tokio::fs::read_to_string(path).await {
            Ok(text) => {
                let (map, bad) = parse_hosts(&text);
                let error =
                    (!bad.is_empty()).then(|| format!("lines {bad:?} do not start with an IP address and are ignored"));
                (map, error)
            }
            Err(e) => (HashMap::new(), Some(format!("cannot read it ({e}); using the system resolver alone"))),
        };
        // Say it once per change, not at every round.
        let mut st = self.state();
        if st.hosts_error != error {
            if let Some(e) = &error {
                tracing::warn!(file = %path.display(), problem = %e, "resolver hosts file");
            }
            st.hosts_error = error;
        }
        map
    }

    async fn resolve(&self, names: Vec<HostPort>) -> bool {
        if names.is_empty() {
            return false;
        }
        let hosts = self.hosts().await;
        let mut tasks = tokio::task::JoinSet::new();
        for name in names {
            if let Some(ips) = hosts.get(&name.host) {
                let ips = ips.clone();
                tasks.spawn(async move { (name, Outcome::Found(ips)) });
                continue;
            }
            let lookup = self.lookup.lookup(&name.host, name.port);
            let timeout = self.settings.timeout;
            tasks.spawn(async move {
                let outcome = match tokio::time::timeout(timeout, lookup).await {
                    Err(_) => Outcome::TimedOut,
                    Ok(Ok(ips)) => Outcome::Found(ips),
                    Ok(Err(e)) => Outcome::Failed(e.to_string()),
                };
                (name, outcome)
            });
        }
        let mut changed = false;
        while let Some(joined) = tasks.join_next().await {
            let Ok((name, outcome)) = joined else { continue };
            changed |= self.record(name, outcome);
        }
        changed
    }

    /// Apply one outcome; returns whether the answer for `name` changed.
    fn record(&self, name: HostPort, outcome: Outcome) -> bool {
        let mut st = self.state();
        if !st.wanted.contains(&name) {
            return false;
        }
        let previous = st.answers.get(&name).cloned();
        let current = previous.as_ref().and_then(|p| p.as_ref().ok().copied());
        let outcome_kind = match &outcome {
            Outcome::Failed(_) => Kind::Failed,
            _ => Kind::Other,
        };
        let next = match outcome {
            Outcome::Found(ips) => match choose(current, &ips, name.port) {
                Some(addr) => Ok(addr),
                None => Err(format!("{name}: the name has no address")),
            },
            Outcome::TimedOut => match current {
                Some(addr) => {
                    tracing::warn!(name = %name, address = %addr, timeout = ?self.settings.timeout, "lookup timed out; keeping the last address");
                    Ok(addr)
                }
                None => Err(format!("{name}: lookup timed out after {:?}", self.settings.timeout)),
            },
            // A failed lookup is often temporary (a resolver restarting, SERVFAIL): keep
            // a working address for a few rounds before giving it up.
            Outcome::Failed(e) => {
                let rounds = st.failed_rounds.entry(name.clone()).or_default();
                *rounds += 1;
                match current {
                    Some(addr) if *rounds < FAILED_ROUNDS_KEPT => {
                        tracing::warn!(name = %name, address = %addr, error = %e, "lookup failed; keeping the last address for now");
                        Ok(addr)
                    }
                    _ => Err(format!("{name}: {e}")),
                }
            }
        };
        // The count restarts after an answer, and once the address is given up.
        if !matches!(outcome_kind, Kind::Failed) || next.is_err() {
            st.failed_rounds.remove(&name);
        }
        if previous.as_ref() == Some(&next) {
            return false;
        }
        match (&previous, &next) {
            (_, Ok(addr)) => {
                let was = current.map(|a| a.to_string()).unwrap_or_else(|| "none".into());
                tracing::info!(name = %name, address = %addr, previous = %was, "host name resolved");
            }
            (_, Err(why)) => {
                tracing::warn!(name = %name, reason = %why, "host name has no address; its upstreams are unavailable")
            }
        }
        st.answers.insert(name, next);
        true
    }

    /// Look names up until `stop` resolves: every `interval`, at once when
    /// [`Resolver::want`] adds a name, and after failed connects (at most once per
    /// `min_refresh`). Calls `on_change` after a round that changed an answer.
    pub async fn run<F, S>(self: Arc<Self>, on_change: F, stop: S)
    where
        F: Fn() + Send,
        S: Future<Output = ()> + Send,
    {
        tokio::pin!(stop);
        // Without a proxy to listen to, this one is never signalled.
        let failures = self.failures.clone().unwrap_or_default();
        loop {
            let since = self.state().last_round.map(|t| t.elapsed()).unwrap_or(self.settings.interval);
            let next_round = self.settings.interval.saturating_sub(since);
            let failed = self.failed_names();
            let retry_failed = FAILED_RETRY.min(self.settings.interval);
            let changed = tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(next_round) => self.refresh().await,
                // Names without an address are tried again sooner than the others.
                _ = tokio::time::sleep(retry_failed), if !failed.is_empty() => self.resolve(failed).await,
                _ = self.wake.notified() => self.resolve_missing().await,
                _ = failures.wait() => {
                    let gap = self.settings.min_refresh.saturating_sub(
                        self.state().last_round.map(|t| t.elapsed()).unwrap_or(Duration::MAX),
                    );
                    tokio::time::sleep(gap).await;
                    self.refresh().await
                }
            };
            if changed {
                on_change();
            }
        }
    }
}

#[cfg(test)]
mod tests;
