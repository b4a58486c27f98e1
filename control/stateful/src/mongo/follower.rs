//! One followed set's loop: a round of direct `hello`s, the verdict, and the set-up
//! (initiation, adding members) done under the fence.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, Credential, ServerAddress};
use mongodb::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::hello::{choose_primary, HelloView, PrimaryChoice};
use super::{InitFence, MemberView, MongoMetrics, MongoSet, MongoStatus, Secret, Verdict};

/// The driver refuses heartbeats more frequent than this.
const MIN_HEARTBEAT: Duration = Duration::from_millis(500);
/// MongoDB's NotYetInitialized.
const NOT_YET_INITIALIZED: i32 = 94;
/// MongoDB's AlreadyInitialized.
const ALREADY_INITIALIZED: i32 = 23;

/// A command's failure, as the round reports it.
#[derive(Debug, Clone)]
struct Failure {
    /// The server's error code, when the server answered with one.
    code: Option<i32>,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "{} (code {code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The follower of one set.
pub(super) struct Follower {
    set: MongoSet,
    password: Option<Secret>,
    fence: Arc<dyn InitFence>,
    metrics: MongoMetrics,
    clients: HashMap<String, Client>,
    initiated_here: bool,
    last_change: Option<u64>,
    changes: u64,
    /// The primary published last, to count changes.
    primary: Option<SocketAddr>,
    verdict: Verdict,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether config host `a` and configured member `b` are the same member.
fn same_host(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    matches!((a.parse::<SocketAddr>(), b.parse::<SocketAddr>()), (Ok(x), Ok(y)) if x == y)
}

/// The host strings of a config's `members`.
fn config_hosts(config: &Document) -> Vec<String> {
    config
        .get_array("members")
        .map(|ms| {
            ms.iter().filter_map(|m| m.as_document().and_then(|d| d.get_str("host").ok()).map(str::to_string)).collect()
        })
        .unwrap_or_default()
}

fn as_i64(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.fract() == 0.0 && f.is_finite() => Some(*f as i64),
        _ => None,
    }
}

/// `config` with `missing` appended (new `_id`s after the highest) and the next version.
pub(super) fn reconfigured(config: &Document, missing: &[String]) -> Option<Document> {
    let version = as_i64(config.get("version"))?;
    let members = config.get_array("members").ok()?;
    let first_id =
        members.iter().filter_map(|m| m.as_document().and_then(|d| as_i64(d.get("_id")))).max().map_or(0, |m| m + 1);
    let mut members = members.clone();
    for (id, host) in (first_id..).zip(missing) {
        members.push(Bson::Document(doc! { "_id": id, "host": host.clone() }));
    }
    let mut next = config.clone();
    next.insert("version", version + 1);
    next.insert("members", members);
    Some(next)
}

/// The first config of a set: `{_id, version: 1, members: [{_id: i, host}]}`.
pub(super) fn initial_config(replica_set: &str, members: &[String]) -> Document {
    let members: Vec<Bson> = members
        .iter()
        .enumerate()
        .map(|(i, host)| Bson::Document(doc! { "_id": i as i32, "host": host.clone() }))
        .collect();
    doc! { "_id": replica_set, "version": 1, "members": members }
}

// === impl Follower ===

impl Follower {
    pub(super) fn new(
        set: MongoSet,
        password: Option<Secret>,
        fence: Arc<dyn InitFence>,
        metrics: MongoMetrics,
    ) -> Self {
        Follower {
            set,
            password,
            fence,
            metrics,
            clients: HashMap::new(),
            initiated_here: false,
            last_change: None,
            changes: 0,
            primary: None,
            verdict: Verdict::Starting,
        }
    }

    pub(super) async fn run(mut self, tx: watch::Sender<MongoStatus>) {
        let poll = Duration::from_millis(self.set.poll_interval_ms.max(1));
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.metrics.set_primary_known(&self.set.name, false);
        info!(set = %self.set.name, replica_set = %self.set.replica_set, members = ?self.set.members, "following mongo replica set");
        loop {
            ticker.tick().await;
            if tx.is_closed() {
                debug!(set = %self.set.name, "nobody reads the status any more: stopping");
                return;
            }
            let status = self.round().await;
            tx.send_if_modified(|old| {
                if *old == status {
                    false
                } else {
                    *old = status;
                    true
                }
            });
        }
    }

    /// The cached client of `member`, created on first use.
    fn client(&mut self, member: &str) -> Result<Client, Failure> {
        if let Some(client) = self.clients.get(member) {
            return Ok(client.clone());
        }
        let timeout = Duration::from_millis(self.set.timeout_ms);
        let address = ServerAddress::parse(member).map_err(|e| Failure { code: None, message: e.to_string() })?;
        let credential = match (&self.set.username, &self.password) {
            (Some(user), Some(password)) => Some(
                Credential::builder()
                    .username(user.clone())
                    .password(password.expose().to_string())
                    .source(self.set.auth_source().to_string())
                    .build(),
            ),
            _ => None,
        };
        let options = ClientOptions::builder()
            .hosts(vec![address])
            .direct_connection(true)
            .connect_timeout(timeout)
            .server_selection_timeout(timeout)
            .heartbeat_freq(Duration::from_millis(self.set.poll_interval_ms).max(MIN_HEARTBEAT))
            .max_pool_size(2)
            .retry_reads(false)
            .retry_writes(false)
            .app_name("constellation".to_string())
            .credential(credential)
            .build();
        let client = Client::with_options(options).map_err(|e| Failure { code: None, message: e.to_string() })?;
        self.clients.insert(member.to_string(), client.clone());
        Ok(client)
    }

    /// Runs `command` on `member`'s `admin` database within the timeout.
    async fn command(&mut self, member: &str, command: Document) -> Result<Document, Failure> {
        let client = self.client(member)?;
        run(client, Duration::from_millis(self.set.timeout_ms), command).await
    }

    /// `hello` to every member at once.
    async fn hellos(&mut self) -> Vec<Result<HelloView, Failure>> {
        let timeout = Duration::from_millis(self.set.timeout_ms);
        let mut tasks = JoinSet::new();
        let mut answers: Vec<Result<HelloView, Failure>> = Vec::with_capacity(self.set.members.len());
        for (i, member) in self.set.members.clone().iter().enumerate() {
            answers.push(Err(Failure { code: None, message: "no answer".to_string() }));
            match self.client(member) {
                Ok(client) => {
                    tasks.spawn(async move { (i, run(client, timeout, doc! { "hello": 1 }).await) });
                }
                Err(e) => answers[i] = Err(e),
            }
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, answer)) = joined {
                answers[i] = answer.map(|doc| HelloView::from_document(&doc));
            }
        }
        answers
    }

    /// One round: ask, judge, set up if needed and allowed, and say what was seen.
    pub(super) async fn round(&mut self) -> MongoStatus {
        let answers = self.hellos().await;
        let rs = self.set.replica_set.clone();
        let members: Vec<MemberView> = self
            .set
            .members
            .iter()
            .zip(&answers)
            .map(|(addr, answer)| match answer {
                Ok(view) => MemberView {
                    addr: addr.clone(),
                    reachable: true,
                    state: view.state(&rs).to_string(),
                    error: match view.set_name.as_deref() {
                        Some(other) if other != rs => Some(format!("member of replica set {other:?}, not {rs:?}")),
                        _ => None,
                    },
                },
                Err(e) => MemberView {
                    addr: addr.clone(),
                    reachable: false,
                    state: "DOWN".to_string(),
                    error: Some(e.to_string()),
                },
            })
            .collect();
        let views: Vec<Option<HelloView>> = answers.iter().map(|a| a.as_ref().ok().cloned()).collect();
        let ours = views.iter().flatten().any(|v| v.set_name.as_deref() == Some(rs.as_str()));
        let reachable = views.iter().filter(|v| v.is_some()).count();

        let mut primary = None;
        let mut config_version = views
            .iter()
            .flatten()
            .filter(|v| v.set_name.as_deref() == Some(rs.as_str()))
            .filter_map(|v| v.set_version)
            .max();
        let (verdict, reason) = if reachable == 0 {
            (Verdict::Unreachable, Some("no member answered hello".to_string()))
        } else if !ours {
            (Verdict::NotInitiated, Some(self.maybe_initiate(&views).await))
        } else {
            match choose_primary(&rs, &views) {
                PrimaryChoice::One(i) => {
                    config_version = views[i].as_ref().and_then(|v| v.set_version).or(config_version);
                    match self.resolve(&self.set.members[i]).await {
                        Ok(addr) => {
                            primary = Some(addr);
                            let note = self.maybe_add_members(i, &views).await;
                            (Verdict::Ok, note)
                        }
                        Err(e) => {
                            (Verdict::NoPrimary, Some(format!("primary {} does not resolve: {e}", self.set.members[i])))
                        }
                    }
                }
                PrimaryChoice::None => {
                    (Verdict::NoPrimary, Some("no member says it is the writable primary".to_string()))
                }
                PrimaryChoice::Split(claims) => {
                    let who: Vec<&str> = claims.iter().map(|&i| self.set.members[i].as_str()).collect();
                    (
                        Verdict::Split,
                        Some(format!("several members claim primary and nothing orders them: {}", who.join(", "))),
                    )
                }
            }
        };

        if primary != self.primary {
            self.changes += 1;
            self.last_change = Some(unix_now());
            self.metrics.primary_changed(&self.set.name);
            match primary {
                Some(p) => info!(set = %self.set.name, primary = %p, previous = ?self.primary, "mongo primary found"),
                None => {
                    warn!(set = %self.set.name, previous = ?self.primary, verdict = ?verdict, reason = reason.as_deref().unwrap_or(""), "mongo primary lost")
                }
            }
            self.primary = primary;
        }
        if verdict != self.verdict {
            info!(set = %self.set.name, verdict = ?verdict, previous = ?self.verdict, reason = reason.as_deref().unwrap_or(""), "mongo set verdict changed");
            self.verdict = verdict;
        }
        self.metrics.set_primary_known(&self.set.name, primary.is_some());
        MongoStatus {
            name: self.set.name.clone(),
            primary,
            verdict,
            reason,
            members,
            config_version,
            initiated_here: self.initiated_here,
            last_change: self.last_change,
            changes: self.changes,
        }
    }

    async fn resolve(&self, member: &str) -> Result<SocketAddr, String> {
        if let Ok(addr) = member.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let timeout = Duration::from_millis(self.set.timeout_ms);
        match tokio::time::timeout(timeout, tokio::net::lookup_host(member)).await {
            Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| "no address".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.set.timeout_ms)),
        }
    }

    /// No reachable member has our config: initiate when allowed, safe and fenced.
    /// Returns what the status should say.
    async fn maybe_initiate(&mut self, views: &[Option<HelloView>]) -> String {
        let foreign: Vec<String> = self
            .set
            .members
            .iter()
            .zip(views)
            .filter_map(|(m, v)| v.as_ref()?.set_name.as_ref().map(|s| format!("{m} is in set {s:?}")))
            .collect();
        if !foreign.is_empty() {
            return format!("not initiating: {}; fix members/replica_set", foreign.join(", "));
        }
        if !self.set.initiate {
            return "no member has a config and initiate is off".to_string();
        }
        let down: Vec<&str> =
            self.set.members.iter().zip(views).filter(|(_, v)| v.is_none()).map(|(m, _)| m.as_str()).collect();
        if !down.is_empty() {
            // A silent member may hold the set's config: initiating now could make a second set.
            return format!("no reachable member has a config; waiting for {} before initiating", down.join(", "));
        }
        let Some(token) = self.fence.holder_token().await else {
            return "no member has a config; another node holds the initiation fence".to_string();
        };
        // Re-check under the fence: every member must still say it has no config.
        for member in self.set.members.clone() {
            match self.command(&member, doc! { "replSetGetStatus": 1 }).await {
                Err(Failure { code: Some(NOT_YET_INITIALIZED), .. }) => {}
                Ok(_) => return format!("{member} has a config now; not initiating"),
                Err(e) => return format!("re-check before initiating: {member}: {e}"),
            }
        }
        let config = initial_config(&self.set.replica_set, &self.set.members);
        let target = self.set.members[0].clone();
        match self.command(&target, doc! { "replSetInitiate": config }).await {
            Ok(_) => {
                self.initiated_here = true;
                self.metrics.initiated(&self.set.name);
                info!(set = %self.set.name, replica_set = %self.set.replica_set, member = %target, members = self.set.members.len(), token, "mongo replica set initiated");
                "initiated; waiting for the first election".to_string()
            }
            Err(Failure { code: Some(ALREADY_INITIALIZED), .. }) => {
                info!(set = %self.set.name, member = %target, "mongo replica set was initiated by someone else meanwhile");
                "initiated elsewhere; waiting for the members to report it".to_string()
            }
            Err(e) => {
                warn!(set = %self.set.name, member = %target, error = %e, "replSetInitiate failed");
                format!("replSetInitiate on {target} failed: {e}")
            }
        }
    }

    /// Configured members the primary's config lacks are added (when reachable, without a
    /// config of their own, allowed and fenced). Returns a note for the status, if any.
    async fn maybe_add_members(&mut self, primary: usize, views: &[Option<HelloView>]) -> Option<String> {
        let shown = views[primary].as_ref().map(|v| v.hosts.clone()).unwrap_or_default();
        let suspects: Vec<usize> = (0..self.set.members.len())
            .filter(|&i| !shown.iter().any(|h| same_host(h, &self.set.members[i])))
            .collect();
        if suspects.is_empty() || !self.set.initiate {
            return None;
        }
        let primary_host = self.set.members[primary].clone();
        let config = match self.command(&primary_host, doc! { "replSetGetConfig": 1 }).await {
            Ok(reply) => match reply.get_document("config") {
                Ok(config) => config.clone(),
                Err(_) => return Some(format!("replSetGetConfig on {primary_host} returned no config")),
            },
            Err(e) => return Some(format!("replSetGetConfig on {primary_host} failed: {e}")),
        };
        let hosts = config_hosts(&config);
        let missing: Vec<usize> =
            suspects.into_iter().filter(|&i| !hosts.iter().any(|h| same_host(h, &self.set.members[i]))).collect();
        if missing.is_empty() {
            return None;
        }
        let (ready, waiting): (Vec<usize>, Vec<usize>) =
            missing.into_iter().partition(|&i| views[i].as_ref().is_some_and(|v| v.set_name.is_none()));
        let waiting: Vec<&str> = waiting.iter().map(|&i| self.set.members[i].as_str()).collect();
        if ready.is_empty() {
            return Some(format!(
                "not in the config and not ready to add (down or in another set): {}",
                waiting.join(", ")
            ));
        }
        let Some(token) = self.fence.holder_token().await else {
            return Some("members to add; another node holds the fence".to_string());
        };
        let adding: Vec<String> = ready.iter().map(|&i| self.set.members[i].clone()).collect();
        let Some(next) = reconfigured(&config, &adding) else {
            return Some(format!("the config on {primary_host} has no integer version or no members"));
        };
        let version = as_i64(next.get("version")).unwrap_or(0);
        match self.command(&primary_host, doc! { "replSetReconfig": next }).await {
            Ok(_) => {
                self.metrics.reconfigured(&self.set.name);
                info!(set = %self.set.name, primary = %primary_host, added = ?adding, version, token, "mongo replica set reconfigured");
                None
            }
            Err(e) => {
                warn!(set = %self.set.name, primary = %primary_host, added = ?adding, error = %e, "replSetReconfig failed");
                Some(format!("replSetReconfig adding {} failed: {e}", adding.join(", ")))
            }
        }
    }
}

/// Runs `command` on `client`'s `admin` database, bounded by `timeout`.
async fn run(client: Client, timeout: Duration, command: Document) -> Result<Document, Failure> {
    let db = client.database("admin");
    match tokio::time::timeout(timeout, db.run_command(command)).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(match &*e.kind {
            ErrorKind::Command(c) => Failure { code: Some(c.code), message: c.message.clone() },
            _ => Failure { code: None, message: e.to_string() },
        }),
        Err(_) => Err(Failure { code: None, message: format!("no answer within {} ms", timeout.as_millis()) }),
    }
}
