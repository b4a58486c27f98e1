//! The follower task: one round per poll interval (and at once after `+switch-master`)
//! asks every sentinel, applies the majority rule, confirms with the master's `ROLE`,
//! and publishes a [`RedisStatus`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::agreement::{agree, majority, SentinelAnswer};
use super::conn::{query, Dialer};
use super::metrics::RedisMetrics;
use super::orchestrate;
use super::{RedisGroup, Secret};

/// Why a group has (or has not) a published master.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A majority of the sentinels agree and the master confirmed `ROLE master`.
    Ok,
    /// Too few sentinels named a master.
    NoQuorum,
    /// Enough sentinels answered but they name different masters.
    Split,
    /// The agreed master is flagged down, unreachable, or refused our AUTH.
    MasterDown,
    /// The agreed address is not a master (`ROLE` said otherwise).
    NotMaster,
    /// No sentinel answered.
    Unreachable,
    /// No round has finished yet.
    Starting,
}

impl Verdict {
    /// The snake_case name (metrics label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::NoQuorum => "no_quorum",
            Verdict::Split => "split",
            Verdict::MasterDown => "master_down",
            Verdict::NotMaster => "not_master",
            Verdict::Unreachable => "unreachable",
            Verdict::Starting => "starting",
        }
    }
}

/// One sentinel as the last round saw it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SentinelView {
    /// `host:port` as configured.
    pub addr: String,
    /// It answered the master query.
    pub reachable: bool,
    /// The master address it named; `None` when it knows none or did not answer.
    pub says: Option<String>,
    /// Why it could not be asked.
    pub error: Option<String>,
}

/// One replica, from `SENTINEL replicas` of an agreeing sentinel.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplicaView {
    /// `ip:port`.
    pub addr: String,
    /// Sentinel's flags (`slave`, `s_down`, ...).
    pub flags: String,
    /// Not flagged down and its link to the master is up.
    pub up: bool,
    /// Replication offset (`slave-repl-offset`), 0 when unknown.
    pub offset: i64,
}

/// A change of trusted master.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Switch {
    /// When the follower saw it, Unix seconds.
    pub at: u64,
    /// The master trusted before.
    pub from: SocketAddr,
    /// The master trusted now.
    pub to: SocketAddr,
}

/// What the follower publishes after each round.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RedisStatus {
    /// The group's route name.
    pub name: String,
    /// The route target: `Some` only when trusted (majority and `ROLE master`).
    pub master: Option<SocketAddr>,
    /// Why `master` is what it is.
    pub verdict: Verdict,
    /// Human text when `master` is `None`.
    pub reason: Option<String>,
    /// Every configured sentinel, in order.
    pub sentinels: Vec<SentinelView>,
    /// Sentinels that must agree (majority of the configured ones).
    pub quorum: usize,
    /// The master's replicas as the sentinels see them.
    pub replicas: Vec<ReplicaView>,
    /// The last change of trusted master.
    pub last_switch: Option<Switch>,
    /// Changes of trusted master since start.
    pub switches: u64,
    /// Set-up commands this follower applied since start (see `master` in the config).
    pub setup_commands: u64,
}

impl RedisStatus {
    fn starting(group: &RedisGroup) -> RedisStatus {
        RedisStatus {
            name: group.name.clone(),
            master: None,
            verdict: Verdict::Starting,
            reason: Some("no round finished yet".into()),
            sentinels: group
                .sentinels
                .iter()
                .map(|s| SentinelView { addr: s.clone(), reachable: false, says: None, error: None })
                .collect(),
            quorum: majority(group.sentinels.len()),
            replicas: Vec::new(),
            last_switch: None,
            switches: 0,
            setup_commands: 0,
        }
    }
}

/// What one sentinel told us in a round.
pub(crate) struct Probe {
    pub(crate) view: SentinelView,
    pub(crate) answer: SentinelAnswer,
    flags: Option<String>,
    replicas: Vec<ReplicaView>,
}

/// Starts following `group`: the receiver gets a status after every round; the task
/// ends when every receiver is dropped (or when aborted).
pub fn spawn(
    group: RedisGroup,
    password: Option<Secret>,
    sentinel_password: Option<Secret>,
    metrics: RedisMetrics,
) -> (watch::Receiver<RedisStatus>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(RedisStatus::starting(&group));
    let task = tokio::spawn(async move {
        let mut status = RedisStatus::starting(&group);
        let mut follower = match Follower::new(group, password, sentinel_password, metrics) {
            Ok(f) => f,
            Err(reason) => {
                warn!(group = %status.name, reason = %reason, "redis follower cannot start");
                (status.verdict, status.reason) = (Verdict::Unreachable, Some(reason));
                let _ = tx.send(status);
                tx.closed().await;
                return;
            }
        };
        follower.run(tx).await;
    });
    (rx, task)
}

struct Follower {
    group: RedisGroup,
    password: Option<Secret>,
    sentinel_password: Option<Secret>,
    metrics: RedisMetrics,
    dialer: Dialer,
    status: RedisStatus,
    last_trusted: Option<SocketAddr>,
}

impl Follower {
    fn new(
        group: RedisGroup,
        password: Option<Secret>,
        sentinel_password: Option<Secret>,
        metrics: RedisMetrics,
    ) -> Result<Follower, String> {
        let tls = if group.tls {
            match &group.tls_ca_file {
                Some(path) => match std::fs::read(path) {
                    Ok(pem) => Some(Some(pem)),
                    Err(e) => {
                        return Err(format!("cannot read tls_ca_file {}: {e}", path.display()));
                    }
                },
                None => Some(None),
            }
        } else {
            None
        };
        let dialer = Dialer::new(tls, Duration::from_millis(group.timeout_ms));
        let status = RedisStatus::starting(&group);
        Ok(Follower { group, password, sentinel_password, metrics, dialer, status, last_trusted: None })
    }

    async fn run(&mut self, tx: watch::Sender<RedisStatus>) {
        let wake = Arc::new(Notify::new());
        // Dropping the set when the follower ends aborts the subscribers.
        let mut subscribers = JoinSet::new();
        for addr in &self.group.sentinels {
            subscribers.spawn(subscribe(
                addr.clone(),
                self.group.clone(),
                self.sentinel_password.clone(),
                self.dialer.clone(),
                wake.clone(),
            ));
        }
        let poll = Duration::from_millis(self.group.poll_interval_ms);
        loop {
            let status = self.round().await;
            self.publish(status);
            if tx.send(self.status.clone()).is_err() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = wake.notified() => debug!(group = %self.group.name, "re-polling after +switch-master"),
                () = tx.closed() => return,
            }
        }
    }

    async fn probe_all(&self) -> Vec<Probe> {
        let mut set = JoinSet::new();
        for (i, addr) in self.group.sentinels.iter().enumerate() {
            let (addr, dialer, pw, name) =
                (addr.clone(), self.dialer.clone(), self.sentinel_password.clone(), self.group.master_name.clone());
            set.spawn(async move { (i, probe(&dialer, &addr, pw.as_ref(), &name).await) });
        }
        let mut probes: Vec<Option<Probe>> = (0..self.group.sentinels.len()).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            if let Ok((i, p)) = joined {
                probes[i] = Some(p);
            }
        }
        probes
            .into_iter()
            .zip(&self.group.sentinels)
            .map(|(p, addr)| {
                p.unwrap_or_else(|| Probe {
                    view: SentinelView {
                        addr: addr.clone(),
                        reachable: false,
                        says: None,
                        error: Some("query task failed".into()),
                    },
                    answer: SentinelAnswer::Failed,
                    flags: None,
                    replicas: Vec::new(),
                })
            })
            .collect()
    }

    /// One round; returns the new status (not yet published).
    async fn round(&mut self) -> RedisStatus {
        let mut probes = self.probe_all().await;
        if self.group.master.is_some() {
            let applied = orchestrate::set_up(
                &self.group,
                &probes,
                &self.dialer,
                self.password.as_ref(),
                self.sentinel_password.as_ref(),
                &self.metrics,
            )
            .await;
            if applied > 0 {
                self.status.setup_commands += applied;
                probes = self.probe_all().await;
            }
        }
        for p in &probes {
            if p.answer == SentinelAnswer::Failed {
                self.metrics.sentinel_errors.with_label_values(&[&self.group.name, &p.view.addr]).inc();
            }
        }
        let answers: Vec<SentinelAnswer> = probes.iter().map(|p| p.answer.clone()).collect();
        let agreement = agree(self.group.sentinels.len(), &answers);
        let (mut master, mut verdict, mut reason) = (agreement.master, agreement.verdict, agreement.reason);
        if master.is_none() {
            // Say why the silent ones were silent (refused AUTH, TLS, timeouts).
            let errors: Vec<&str> = probes.iter().filter_map(|p| p.view.error.as_deref()).collect();
            if let (Some(r), false) = (reason.as_mut(), errors.is_empty()) {
                r.push_str(&format!("; failed: {}", errors.join("; ")));
            }
        }
        let agreeing: Vec<&Probe> = match master {
            Some(m) => probes.iter().filter(|p| p.answer == SentinelAnswer::Master(m)).collect(),
            None => Vec::new(),
        };
        if let Some(m) = master {
            let down = agreeing.iter().find_map(|p| {
                let flags = p.flags.as_deref()?;
                let down = flags.split(',').any(|f| f == "s_down" || f == "o_down");
                down.then(|| format!("sentinel {} flags master {m} as {flags}", p.view.addr))
            });
            let problem = match down {
                Some(why) => Some((Verdict::MasterDown, why)),
                None => self.confirm(m).await.err(),
            };
            if let Some((v, why)) = problem {
                (master, verdict, reason) = (None, v, Some(why));
            }
        }
        let replicas = agreeing
            .first()
            .map(|p| p.replicas.clone())
            .or_else(|| probes.iter().find(|p| !p.replicas.is_empty()).map(|p| p.replicas.clone()))
            .unwrap_or_default();
        RedisStatus {
            name: self.group.name.clone(),
            master,
            verdict,
            reason,
            sentinels: probes.into_iter().map(|p| p.view).collect(),
            quorum: majority(self.group.sentinels.len()),
            replicas,
            last_switch: self.status.last_switch.clone(),
            switches: self.status.switches,
            setup_commands: self.status.setup_commands,
        }
    }

    /// The master itself must say `ROLE master`.
    async fn confirm(&self, master: SocketAddr) -> Result<(), (Verdict, String)> {
        let addr = master.to_string();
        let mut conn = self
            .dialer
            .connect(&addr, self.password.as_ref())
            .await
            .map_err(|e| (Verdict::MasterDown, format!("master {addr}: {e}")))?;
        let role: Vec<redis::Value> = query(&mut conn, &redis::cmd("ROLE"), &addr, self.dialer.timeout)
            .await
            .map_err(|e| (Verdict::MasterDown, format!("ROLE at master {e}")))?;
        let first = role.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default();
        if first == "master" {
            Ok(())
        } else {
            Err((Verdict::NotMaster, format!("the sentinels name {addr} but its ROLE is {first:?}, not master")))
        }
    }

    /// Logs and counts what changed, then keeps `status` as the current one.
    fn publish(&mut self, mut status: RedisStatus) {
        let group = self.group.name.clone();
        for (new, old) in status.sentinels.iter().zip(&self.status.sentinels) {
            if new.error != old.error {
                match &new.error {
                    Some(e) => warn!(group = %group, sentinel = %new.addr, error = %e, "sentinel query failed"),
                    None => info!(group = %group, sentinel = %new.addr, "sentinel answers again"),
                }
            }
        }
        if let Some(to) = status.master {
            if let Some(from) = self.last_trusted.filter(|from| *from != to) {
                status.switches += 1;
                status.last_switch = Some(Switch { at: unix_secs(), from, to });
                self.metrics.switches.with_label_values(&[&group]).inc();
                warn!(group = %group, from = %from, to = %to, switches = status.switches, "redis master switched");
            }
            self.last_trusted = Some(to);
        }
        if status.master != self.status.master
            || status.verdict != self.status.verdict
            || status.reason != self.status.reason
        {
            match status.master {
                Some(m) => info!(group = %group, master = %m, "redis master trusted"),
                None => warn!(
                    group = %group,
                    verdict = status.verdict.as_str(),
                    reason = status.reason.as_deref().unwrap_or(""),
                    "redis master withdrawn"
                ),
            }
            if status.master.is_none() && self.status.master.is_some() {
                self.metrics.withdrawn.with_label_values(&[&group, status.verdict.as_str()]).inc();
            }
        }
        self.metrics.master_known.with_label_values(&[&group]).set(i64::from(status.master.is_some()));
        self.status = status;
    }
}

/// Asks one sentinel where the master is, and (when it knows) its flags and replicas.
pub(crate) async fn probe(dialer: &Dialer, addr: &str, password: Option<&Secret>, master_name: &str) -> Probe {
    let failed = |e: String| Probe {
        view: SentinelView { addr: addr.to_string(), reachable: false, says: None, error: Some(e) },
        answer: SentinelAnswer::Failed,
        flags: None,
        replicas: Vec::new(),
    };
    let mut conn = match dialer.connect(addr, password).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let t = dialer.timeout;
    let mut ask = redis::cmd("SENTINEL");
    ask.arg("get-master-addr-by-name").arg(master_name);
    let named: Option<(String, String)> = match query(&mut conn, &ask, addr, t).await {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    let Some((host, port)) = named else {
        return Probe {
            view: SentinelView { addr: addr.to_string(), reachable: true, says: None, error: None },
            answer: SentinelAnswer::Unknown,
            flags: None,
            replicas: Vec::new(),
        };
    };
    let master = match resolve(&host, &port).await {
        Ok(m) => m,
        Err(e) => return failed(format!("{addr} named {host}:{port}: {e}")),
    };
    let mut info = redis::cmd("SENTINEL");
    info.arg("master").arg(master_name);
    // During a failover the leader already names the promoted replica while its master
    // record (and its s_down/o_down flags) still describes the old master: the flags
    // count only when they describe the address named.
    let flags = query::<HashMap<String, String>>(&mut conn, &info, addr, t).await.ok().and_then(|m| {
        let same = m.get("ip") == Some(&host) && m.get("port") == Some(&port);
        if same {
            m.get("flags").cloned()
        } else {
            None
        }
    });
    let mut list = redis::cmd("SENTINEL");
    list.arg("replicas").arg(master_name);
    let replicas = query::<Vec<HashMap<String, String>>>(&mut conn, &list, addr, t)
        .await
        .unwrap_or_default()
        .iter()
        .map(replica_view)
        .collect();
    Probe {
        view: SentinelView { addr: addr.to_string(), reachable: true, says: Some(master.to_string()), error: None },
        answer: SentinelAnswer::Master(master),
        flags,
        replicas,
    }
}

fn replica_view(m: &HashMap<String, String>) -> ReplicaView {
    let get = |k: &str| m.get(k).map(String::as_str).unwrap_or("");
    let flags = get("flags").to_string();
    let down = flags.split(',').any(|f| f == "s_down" || f == "o_down" || f == "disconnected");
    ReplicaView {
        addr: format!("{}:{}", get("ip"), get("port")),
        up: !down && get("master-link-status") == "ok",
        offset: get("slave-repl-offset").parse().unwrap_or(0),
        flags,
    }
}

async fn resolve(host: &str, port: &str) -> Result<SocketAddr, String> {
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addrs.next().ok_or_else(|| format!("{host} resolves to no address"))
}

/// How often an idle `+switch-master` subscription is checked with PING: a sentinel
/// that vanished without closing the connection is noticed and dialled again.
const SUBSCRIPTION_KEEPALIVE: Duration = Duration::from_secs(5);

/// Keeps a `+switch-master` subscription on one sentinel, reconnecting with backoff,
/// and wakes the follower on a message about our master.
async fn subscribe(addr: String, group: RedisGroup, password: Option<Secret>, dialer: Dialer, wake: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match subscribed(&addr, &group, password.as_ref(), &dialer).await {
            Ok(pubsub) => {
                debug!(group = %group.name, sentinel = %addr, "subscribed to +switch-master");
                backoff = Duration::from_millis(100);
                // A change may have happened while we were not subscribed.
                wake.notify_one();
                let why = listen(pubsub, &addr, &group, &dialer, &wake).await;
                debug!(group = %group.name, sentinel = %addr, reason = %why, "+switch-master subscription ended");
            }
            Err(e) => debug!(group = %group.name, sentinel = %addr, error = %e, "cannot subscribe"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn subscribed(
    addr: &str,
    group: &RedisGroup,
    password: Option<&Secret>,
    dialer: &Dialer,
) -> Result<redis::aio::PubSub, String> {
    let mut pubsub = dialer.pubsub(addr, password).await?;
    match tokio::time::timeout(dialer.timeout, pubsub.subscribe("+switch-master")).await {
        Ok(Ok(())) => Ok(pubsub),
        Ok(Err(e)) => Err(format!("SUBSCRIBE at {addr}: {e}")),
        Err(_) => Err(format!("SUBSCRIBE at {addr}: no answer in {} ms ({})", dialer.timeout.as_millis(), group.name)),
    }
}

/// Handles messages until the connection ends or stops answering PING; returns why.
async fn listen(pubsub: redis::aio::PubSub, addr: &str, group: &RedisGroup, dialer: &Dialer, wake: &Notify) -> String {
    let (mut sink, mut messages) = pubsub.split();
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { return "connection closed".into() };
                let payload: String = msg.get_payload().unwrap_or_default();
                if payload.split_whitespace().next() == Some(group.master_name.as_str()) {
                    info!(group = %group.name, sentinel = %addr, event = %payload, "+switch-master");
                    wake.notify_one();
                }
            }
            () = tokio::time::sleep(SUBSCRIPTION_KEEPALIVE) => {
                match tokio::time::timeout(dialer.timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("PING failed: {e}"),
                    Err(_) => return format!("no PONG in {} ms", dialer.timeout.as_millis()),
                }
            }
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
