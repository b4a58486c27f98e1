//! End-to-end tests of the Cloudflare DNS controller: three real `constellation agent`
//! processes (roles `lb` and `dns`, Raft voters of one lease group) keep a fake
//! Cloudflare v4 API ([`FakeCloudflare`], in this test process) pointed at the
//! `lb-leader` holder.
//!
//! [`DnsCluster`] starts the fake (zone `example.test`, plus a decoy zone), writes one
//! config per node (public IP `192.0.2.<index>` through `CONSTELLATION_PUBLIC_IP`), starts
//! the agents, reads `/api/v1/status` (`leases`, `dns`), `/metrics` and each node's
//! `lease-history.jsonl`, and injects faults: `SIGKILL`, 429s and record edits in the fake,
//! and iptables partitions of one node's Raft traffic.
//!
//! The fake cannot tell which node sent a request from the token alone. With
//! [`Spec::tapped`], each node is pointed at its own listener of the fake
//! ([`FakeCloudflare::tap`]), which logs the node with the request and its arrival time
//! (Unix ns, the clock of the lease history).
//!
//! Partitions need root and iptables: an isolatable cluster runs every agent under its
//! own uid, and the testkit's [`Partition`] cuts Raft traffic in both directions.

#![allow(clippy::unwrap_used)]

/// The shared kit.
mod support {
    pub use constellation_testkit::cloudflare::Fault;
    pub use constellation_testkit::*;
}

mod t01_initial;
mod t02_leader_change;
mod t03_drift;
mod t04_rate_limited;
mod t05_deposed_writer;
mod t06_invalid_token;
mod t07_dry_run;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Log filter of the agents: the DNS controller at debug (every API call is logged).
const LOG_FILTER: &str =
    "info,constellation_dns=debug,constellation_lease=info,openraft=warn,pingora_core=warn,pingora_proxy=warn";
/// The managed zone.
pub const ZONE: &str = "example.test";
/// The wildcard name.
pub const WILDCARD: &str = "*.example.test";
/// The ownership comment of this cluster's records (default `cluster_id`).
pub const MARKER: &str = "managed-by=constellation cluster=constellation";
/// The token the fake accepts.
pub const GOOD_TOKEN: &str = "cf-test-token-3f9a61c2d4e5";
/// A token the fake refuses.
pub const WRONG_TOKEN: &str = "cf-wrong-token-77aa01bc99";
/// The two leases.
pub const LEASES: [&str; 2] = ["lb-leader", "dns-writer"];
/// The front-door lease.
pub const LB: &str = "lb-leader";
/// The DNS-writer lease.
pub const DNS: &str = "dns-writer";
/// `reconcile_interval_ms` of every test cluster.
pub const RECONCILE_MS: u64 = 2000;
/// `leader_settle_ms` of every test cluster.
pub const SETTLE_MS: u64 = 300;

/// Milliseconds, for printing nanosecond differences.
pub fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// The public IP of node `n<index>`.
pub fn ip_of(index: usize) -> String {
    format!("192.0.2.{index}")
}

/// The index of node `nK`.
pub fn index_of(name: &str) -> usize {
    name.trim_start_matches('n').parse().unwrap_or_else(|_| panic!("not a node name: {name}"))
}

/// The per-node record name of `n<index>`.
pub fn node_record(index: usize) -> String {
    format!("n{index}.nodes.{ZONE}")
}

/// True for the methods that change the zone.
pub fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

/// One request a node sent to the fake through its tap.
#[derive(Debug, Clone)]
pub struct Tapped {
    /// The node whose tap it came through.
    pub node: String,
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// When it arrived, Unix ns.
    pub at_ns: i128,
    /// When it arrived.
    pub at: Instant,
    /// The status the fake answered.
    pub status: u16,
}

impl Tapped {
    /// True for POST, PUT, PATCH, DELETE.
    pub fn is_write(&self) -> bool {
        is_write(&self.method)
    }
}

/// What the nodes' token file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The token the fake accepts.
    Good,
    /// A token the fake refuses.
    Wrong,
    /// No `api_token_file` (dry run).
    Absent,
}

/// How to build a [`DnsCluster`].
#[derive(Debug, Clone)]
pub struct Spec {
    /// Raft timings of every node.
    pub timings: Timings,
    /// The token setup.
    pub token: Token,
    /// Point each node at its own listener of the fake ([`FakeCloudflare::tap`]).
    pub tapped: bool,
    /// Run every agent under its own uid, so [`Partition`] can cut it off (needs root).
    pub isolatable: bool,
    /// Lines appended to `[dns]`.
    pub dns_extra: String,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec::new()
    }
}

impl Spec {
    /// Three voters with [`Timings::FAST`], the good token, straight at the fake.
    pub fn new() -> Spec {
        Spec { timings: Timings::FAST, token: Token::Good, tapped: false, isolatable: false, dns_extra: String::new() }
    }
}

/// What [`DnsCluster::kill_front_door`] did and saw.
#[derive(Debug, Clone)]
pub struct FrontDoorMove {
    /// The killed `lb-leader` holder.
    pub victim: usize,
    /// The other nodes.
    pub survivors: Vec<usize>,
    /// When it was killed, Unix ns.
    pub killed_at: i128,
    /// The survivor that took the lease.
    pub new_leader: usize,
    /// Its fencing token.
    pub new_token: u64,
}

/// Three voters, roles `lb` and `dns`, and the fake Cloudflare they write to.
pub struct DnsCluster {
    fleet: Fleet,
    /// Raft timings of every node.
    pub timings: Timings,
    /// The fake API.
    pub fake: FakeCloudflare,
    /// Id of zone `example.test` in the fake.
    pub zone_id: String,
    /// Id of the decoy zone `example.org` in the fake.
    pub decoy_zone_id: String,
    /// (Instant, Unix ns) taken together, to place the fake's `Instant`s on the Unix clock.
    pub clock: (Instant, i128),
}

constellation_testkit::wraps_fleet!(DnsCluster);

impl DnsCluster {
    /// Starts the fake, writes the configs, starts every agent at once and waits until
    /// each answers `/healthz`.
    pub async fn start(spec: Spec) -> DnsCluster {
        let clock = (Instant::now(), unix_ns());
        let fake = FakeCloudflare::start(GOOD_TOKEN).await.unwrap();
        let decoy_zone_id = fake.add_zone("example.org");
        let zone_id = fake.add_zone(ZONE);
        let mut nodes = Vec::new();
        for index in 1..=3 {
            let api_url = if spec.tapped { fake.tap(&format!("n{index}")).await.unwrap() } else { fake.api_url() };
            let token_line =
                if spec.token == Token::Absent { String::new() } else { "api_token_file = \"cf.token\"\n".into() };
            let extra_toml = format!(
                "[dns]\nzone = \"{ZONE}\"\napi_url = \"{api_url}\"\n{token_line}apex = true\nwildcard = true\n\
                 node_record = \"{{node}}.nodes.{ZONE}\"\nttl = 60\nreconcile_interval_ms = {RECONCILE_MS}\n\
                 leader_settle_ms = {SETTLE_MS}\n{}\n",
                spec.dns_extra
            );
            nodes.push(NodeSpec { extra_toml, ..NodeSpec::default() });
        }
        let mut fleet = FleetSpec::new("dns", nodes);
        fleet.roles = vec!["lb".into(), "dns".into()];
        fleet.raft = Some(spec.timings);
        fleet.isolatable = spec.isolatable;
        fleet.log_filter = LOG_FILTER.into();
        let fleet = Fleet::new(fleet);
        match spec.token {
            Token::Good => drop(fleet.dir.write("cf.token", &format!("{GOOD_TOKEN}\n"))),
            Token::Wrong => drop(fleet.dir.write("cf.token", &format!("{WRONG_TOKEN}\n"))),
            Token::Absent => {}
        }
        let mut cluster = DnsCluster { fleet, timings: spec.timings, fake, zone_id, decoy_zone_id, clock };
        cluster.start_all(Duration::from_secs(30)).await;
        cluster
    }

    /// `at` on the Unix clock (ns).
    pub fn unix_of(&self, at: Instant) -> i128 {
        let (i0, u0) = self.clock;
        if at >= i0 {
            u0 + at.duration_since(i0).as_nanos() as i128
        } else {
            u0 - i0.duration_since(at).as_nanos() as i128
        }
    }

    /// What the taps passed to the fake, in order of arrival.
    pub fn tapped(&self) -> Vec<Tapped> {
        self.fake
            .log()
            .into_iter()
            .filter_map(|r| {
                Some(Tapped {
                    node: r.via?,
                    method: r.method,
                    path: r.path,
                    query: r.query,
                    at_ns: r.at_ns,
                    at: r.at,
                    status: r.status,
                })
            })
            .collect()
    }

    /// `SIGKILL`s the `lb-leader` holder of `before` and waits until a survivor holds
    /// the lease with a larger token (within two TTLs and two elections, plus slack).
    pub async fn kill_front_door(&mut self, before: &Settled) -> FrontDoorMove {
        let victim = index_of(before.holder(LB));
        let survivors: Vec<usize> = (1..=3).filter(|&i| i != victim).collect();
        let t = self.timings;
        let killed_at = unix_ns();
        self.kill(victim);
        let ((holder, new_token), _) = self
            .wait_new_holder(
                &survivors,
                LB,
                (before.holder(LB), before.token(LB)),
                t.ttl() * 2 + t.max_election() * 2 + Duration::from_secs(5),
                || self.dump(),
            )
            .await;
        FrontDoorMove { victim, survivors, killed_at, new_leader: index_of(&holder), new_token }
    }

    /// What `observers` agree on right now: per lease one holder and token, with
    /// `held_here` true on exactly the holder (when it is an observer).
    pub async fn agreement(&self, observers: &[usize]) -> Result<Settled, String> {
        self.fleet.agreement(observers, &LEASES, false).await
    }

    /// Waits until `observers` agree on both leases on two polls in a row.
    pub async fn wait_settled(&self, observers: &[usize], limit: Duration) -> (Settled, Duration) {
        self.fleet.wait_settled(observers, &LEASES, false, limit, || self.dump()).await
    }

    /// The records of `name` (type A) in the fake that carry our marker.
    pub fn owned(&self, name: &str) -> Vec<Value> {
        self.fake.find(name, "A").into_iter().filter(|r| r["comment"].as_str() == Some(MARKER)).collect()
    }

    /// `Ok` iff the fake holds exactly one owned A record per `(name, ip)` of `want` with
    /// that content (ttl 60, not proxied, in zone `example.test`), and no other owned record.
    pub fn zone_is(&self, want: &[(String, String)]) -> Result<(), String> {
        for (name, ip) in want {
            let owned = self.owned(name);
            match owned.as_slice() {
                [r] if r["content"].as_str() == Some(ip.as_str()) => {
                    if r["ttl"] != 60 || r["proxied"] != false || r["zone_id"].as_str() != Some(&self.zone_id) {
                        return Err(format!("{name}: unexpected fields {r}"));
                    }
                }
                _ => {
                    return Err(format!(
                        "{name}: owned A records {:?}, want one with {ip}",
                        owned.iter().map(|r| r["content"].clone()).collect::<Vec<_>>()
                    ))
                }
            }
        }
        let extra: Vec<Value> = self
            .fake
            .records()
            .into_iter()
            .filter(|r| r["comment"].as_str() == Some(MARKER))
            .filter(|r| !want.iter().any(|(n, _)| r["name"].as_str() == Some(n)))
            .collect();
        if !extra.is_empty() {
            return Err(format!("owned records outside the desired set: {extra:?}"));
        }
        Ok(())
    }

    /// The desired zone with the front door at node `leader`, and records for `nodes`.
    pub fn want(leader: usize, nodes: &[usize]) -> Vec<(String, String)> {
        let mut v = vec![(ZONE.to_string(), ip_of(leader)), (WILDCARD.to_string(), ip_of(leader))];
        v.extend(nodes.iter().map(|&i| (node_record(i), ip_of(i))));
        v
    }

    /// Waits until [`DnsCluster::zone_is`] holds for `want`.
    pub async fn wait_zone(&self, what: &str, want: &[(String, String)], limit: Duration) -> Duration {
        eventually_or(what, limit, || self.dump(), || async { self.zone_is(want) }).await.1
    }

    /// Every node's log tail and the fake's records, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = self.fleet.dump();
        out.push_str("\n===== fake records =====\n");
        for r in self.fake.records() {
            out.push_str(&format!("{} {} {} {:?}\n", r["name"], r["type"], r["content"], r["comment"]));
        }
        out
    }
}

/// Checks a request sequence against a token bucket of `per_5min` requests per 5 minutes
/// and burst `burst` that started full: no window `[t_i, t_j]` may hold more than
/// `burst + rate × (t_j − t_i + slack)` requests. Returns the worst window, if any breaks it.
pub fn bucket_violation(times: &[Instant], per_5min: u32, burst: u32, slack: Duration) -> Option<String> {
    let rate = f64::from(per_5min) / 300.0;
    let mut worst: Option<(f64, String)> = None;
    for i in 0..times.len() {
        for j in i..times.len() {
            let dt = times[j].saturating_duration_since(times[i]) + slack;
            let allowed = f64::from(burst) + rate * dt.as_secs_f64();
            let n = (j - i + 1) as f64;
            if n > allowed && worst.as_ref().is_none_or(|(w, _)| n - allowed > *w) {
                worst = Some((
                    n - allowed,
                    format!(
                        "{n} requests in {:?} (allowed {allowed:.2})",
                        times[j].saturating_duration_since(times[i])
                    ),
                ));
            }
        }
    }
    worst.map(|(_, s)| s)
}
