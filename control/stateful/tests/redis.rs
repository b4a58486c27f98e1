//! The Redis Sentinel follower against real `redis-server`/`redis-sentinel` processes:
//! a pre-wired group, a SIGKILLed master and the failover, a lying sentinel, a wrong
//! password, and setting a bare group up from scratch (twice, concurrently, then again).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use constellation_stateful::redis::{spawn, RedisGroup, RedisMetrics, RedisStatus, Secret, Verdict};
use constellation_testkit::redis::cli;
use constellation_testkit::{RedisFleet, RedisFleetSpec};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

const WAIT: Duration = Duration::from_secs(30);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A follow-only group over `sentinels`, polling fast.
fn group(sentinels: Vec<String>) -> RedisGroup {
    let mut g = RedisGroup::new("cache", "mymaster", sentinels);
    g.poll_interval_ms = 200;
    g.timeout_ms = 300;
    assert_eq!(g.validate(), vec![]);
    g
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn port(a: SocketAddr) -> u16 {
    a.port()
}

/// Waits until the published status satisfies `pred`; panics with the last one.
async fn wait_status(
    rx: &mut watch::Receiver<RedisStatus>,
    what: &str,
    limit: Duration,
    pred: impl Fn(&RedisStatus) -> bool,
) -> RedisStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let status = rx.borrow_and_update().clone();
        if pred(&status) {
            return status;
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            panic!("timed out after {limit:?} waiting for {what}; last status: {status:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_prewired_group_shows_master_replicas_and_quorum() {
    init_tracing();
    let fleet = RedisFleet::prewired(3, 3).await;
    info!("fleet pre-wired; following it");
    let (mut rx, task) = spawn(group(fleet.sentinel_addrs()), None, None, RedisMetrics::unregistered());
    let status = wait_status(&mut rx, "master and both replicas", WAIT, |s| {
        s.verdict == Verdict::Ok && s.replicas.len() == 2 && s.replicas.iter().all(|r| r.up)
    })
    .await;
    assert_eq!(status.master, Some(addr(&fleet.server_addr(0))));
    assert_eq!(status.quorum, 2);
    assert_eq!(status.reason, None);
    let mut replicas: Vec<String> = status.replicas.iter().map(|r| r.addr.clone()).collect();
    replicas.sort();
    let mut want = vec![fleet.server_addr(1), fleet.server_addr(2)];
    want.sort();
    assert_eq!(replicas, want);
    for s in &status.sentinels {
        assert!(s.reachable && s.error.is_none(), "{s:?}");
        assert_eq!(s.says.as_deref(), Some(fleet.server_addr(0).as_str()));
    }
    assert_eq!((status.switches, status.last_switch.clone()), (0, None));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["verdict"], "ok");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_master_killed_the_follower_moves_within_2s_and_never_names_a_replica() {
    init_tracing();
    let mut fleet = RedisFleet::prewired(3, 3).await;
    let old = addr(&fleet.server_addr(0));
    let (mut rx, task) = spawn(group(fleet.sentinel_addrs()), None, None, RedisMetrics::unregistered());
    wait_status(&mut rx, "the first master", WAIT, |s| s.master == Some(old)).await;

    // Our own +switch-master subscriptions, to time the follower against the sentinels.
    let first_switch: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut subscribers = Vec::new();
    for s in fleet.sentinel_addrs() {
        let client = redis::Client::open(format!("redis://{s}")).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("+switch-master").await.unwrap();
        let first = first_switch.clone();
        subscribers.push(tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let payload: String = msg.get_payload().unwrap_or_default();
                info!(sentinel = %s, payload = %payload, "+switch-master seen by the test");
                first.lock().unwrap().get_or_insert_with(Instant::now);
            }
        }));
    }
    // Every status the follower publishes, sampled every 50 ms: a named master other
    // than the killed one must answer ROLE master.
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let sampler = {
        let (rx, violations) = (rx.clone(), violations.clone());
        tokio::spawn(async move {
            loop {
                let master = rx.borrow().master;
                if let Some(m) = master.filter(|m| *m != old) {
                    let role = cli(port(m), None, &["ROLE"]).await;
                    if role.lines().next() != Some("master") {
                        violations.lock().unwrap().push(format!("{m} published as master, ROLE: {role:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    info!(master = %old, "SIGKILL the master");
    fleet.kill_server(0);
    let status = wait_status(&mut rx, "a new master", WAIT, |s| s.master.is_some_and(|m| m != old)).await;
    let followed = Instant::now();
    let new = status.master.unwrap();
    let announced = first_switch.lock().unwrap().expect("the sentinels announced no +switch-master");
    let lag = followed.saturating_duration_since(announced);
    info!(new = %new, lag_ms = lag.as_millis() as u64, "follower moved");
    assert!(lag <= Duration::from_secs(2), "status followed {lag:?} after the first +switch-master");
    let idx = fleet.server_index(&new.to_string()).expect("the new master is one of the fleet");
    assert!(idx > 0);
    assert_eq!(fleet.role(idx).await, "master");
    assert_eq!(status.switches, 1);
    let switch = status.last_switch.clone().expect("last_switch set");
    assert_eq!((switch.from, switch.to), (old, new));
    assert!(switch.at > 0);
    // A few more rounds: still one switch, still the same master.
    let later =
        wait_status(&mut rx, "rounds after the switch", WAIT, |s| s.sentinels.iter().all(|v| v.reachable)).await;
    assert_eq!((later.master, later.switches), (Some(new), 1));
    sampler.abort();
    let violations = violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
    for s in subscribers {
        s.abort();
    }
    task.abort();
}

/// A fake sentinel (tokio, RESP2) that names `says` for every master and offers a
/// `+switch-master` subscription that never fires.
async fn lying_sentinel(says: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                while let Some(args) = read_command(&mut read).await {
                    let words: Vec<String> = args.iter().map(|a| a.to_ascii_lowercase()).collect();
                    let reply = match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                        ["sentinel", "get-master-addr-by-name", _] => {
                            let (ip, port) = (says.ip().to_string(), says.port().to_string());
                            format!("*2\r\n${}\r\n{ip}\r\n${}\r\n{port}\r\n", ip.len(), port.len())
                        }
                        ["sentinel", "master", _] => "*2\r\n$5\r\nflags\r\n$6\r\nmaster\r\n".to_string(),
                        ["sentinel", "replicas", _] => "*0\r\n".to_string(),
                        ["subscribe", channel] => {
                            format!("*3\r\n$9\r\nsubscribe\r\n${}\r\n{channel}\r\n:1\r\n", channel.len())
                        }
                        ["ping"] => "+PONG\r\n".to_string(),
                        _ => "+OK\r\n".to_string(),
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    local
}

async fn read_command(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Vec<String>> {
    let mut line = String::new();
    read.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        read.read_line(&mut line).await.ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0; len + 2];
        read.read_exact(&mut buf).await.ok()?;
        buf.truncate(len);
        args.push(String::from_utf8(buf).ok()?);
    }
    Some(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_a_lying_sentinel_is_outvoted_and_splits_the_vote_without_a_majority() {
    init_tracing();
    let mut fleet = RedisFleet::prewired(3, 3).await;
    let master = addr(&fleet.server_addr(0));
    // The liar names a replica: trusting it would send writes to a read-only server.
    let liar = lying_sentinel(addr(&fleet.server_addr(1))).await;
    let sentinels = vec![fleet.sentinel_addr(0), fleet.sentinel_addr(1), liar.to_string()];
    let (mut rx, task) = spawn(group(sentinels), None, None, RedisMetrics::unregistered());
    let status = wait_status(&mut rx, "two honest of three win", WAIT, |s| s.verdict == Verdict::Ok).await;
    assert_eq!(status.master, Some(master));
    assert_eq!(status.sentinels[2].says.as_deref(), Some(fleet.server_addr(1).as_str()));

    info!("the liar alone is a majority of one, but its master is a replica");
    let (mut alone, alone_task) = spawn(group(vec![liar.to_string()]), None, None, RedisMetrics::unregistered());
    let status = wait_status(&mut alone, "ROLE refusing a replica", WAIT, |s| s.verdict == Verdict::NotMaster).await;
    assert_eq!(status.master, None);
    let reason = status.reason.clone().unwrap_or_default();
    assert!(reason.contains(&fleet.server_addr(1)) && reason.contains("slave"), "{reason}");
    alone_task.abort();

    info!("kill honest sentinel 1: one honest, one liar, one dead");
    fleet.kill_sentinel(1);
    let status = wait_status(&mut rx, "a split vote", WAIT, |s| s.verdict == Verdict::Split).await;
    assert_eq!(status.master, None);
    let reason = status.reason.clone().unwrap_or_default();
    assert!(reason.contains(&master.to_string()) && reason.contains(&fleet.server_addr(1)), "{reason}");
    assert!(!status.sentinels[1].reachable && status.sentinels[1].error.is_some(), "{:?}", status.sentinels[1]);

    info!("restart sentinel 1");
    fleet.restart_sentinel(1).await;
    let status = wait_status(&mut rx, "the majority back", WAIT, |s| s.verdict == Verdict::Ok).await;
    assert_eq!((status.master, status.switches), (Some(master), 0));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_a_wrong_password_withdraws_the_master_with_a_clear_reason() {
    init_tracing();
    let spec = RedisFleetSpec {
        servers: 1,
        sentinels: 1,
        quorum: 1,
        password: Some("right-horse-battery".into()),
        sentinel_password: Some("sentinel-only-7".into()),
        prewired: true,
        ..RedisFleetSpec::default()
    };
    let fleet = RedisFleet::start(spec).await;
    let g = group(fleet.sentinel_addrs());
    let sentinel_pw = || Some(Secret::new("sentinel-only-7"));

    info!("no sentinel password: the sentinel refuses the query");
    let (mut rx, task) = spawn(g.clone(), Some(Secret::new("right-horse-battery")), None, RedisMetrics::unregistered());
    let status = wait_status(&mut rx, "the sentinel's refusal", WAIT, |s| s.verdict == Verdict::Unreachable).await;
    let error = status.sentinels[0].error.clone().unwrap_or_default();
    assert!(error.contains("NOAUTH"), "{error}");
    task.abort();

    info!("the right sentinel password, a wrong Redis password");
    let metrics = RedisMetrics::unregistered();
    let (mut rx, task) = spawn(g.clone(), Some(Secret::new("wrong-staple-42")), sentinel_pw(), metrics.clone());
    let status = wait_status(&mut rx, "the AUTH refusal", WAIT, |s| s.verdict == Verdict::MasterDown).await;
    assert_eq!(status.master, None);
    let reason = status.reason.clone().unwrap_or_default();
    assert!(reason.contains(&format!("AUTH failed at {}", fleet.server_addr(0))), "{reason}");
    assert!(reason.contains("WRONGPASS"), "{reason}");
    let shown = format!("{status:?}{}", serde_json::to_string(&status).unwrap());
    for secret in ["wrong-staple-42", "right-horse-battery", "sentinel-only-7"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert_eq!(metrics.master_known.with_label_values(&["cache"]).get(), 0);
    task.abort();

    info!("the right password");
    let (mut rx, task) = spawn(g, Some(Secret::new("right-horse-battery")), sentinel_pw(), metrics.clone());
    let status = wait_status(&mut rx, "the master with AUTH", WAIT, |s| s.verdict == Verdict::Ok).await;
    assert_eq!(status.master, Some(addr(&fleet.server_addr(0))));
    assert_eq!(metrics.master_known.with_label_values(&["cache"]).get(), 1);

    // One server, no replica: the sentinel cannot fail over while it sleeps.
    info!("the master stops answering (DEBUG SLEEP 2)");
    fleet.debug_sleep(0, 2.0);
    let status = wait_status(&mut rx, "the silent master withdrawn", WAIT, |s| s.verdict == Verdict::MasterDown).await;
    let reason = status.reason.clone().unwrap_or_default();
    assert!(reason.contains("no answer in 300 ms"), "{reason}");
    let status = wait_status(&mut rx, "the master back", WAIT, |s| s.verdict == Verdict::Ok).await;
    assert_eq!((status.master, status.switches), (Some(addr(&fleet.server_addr(0))), 0));
    assert_eq!(metrics.withdrawn.with_label_values(&["cache", "master_down"]).get(), 1);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_sentinels_missing_the_group_get_the_agreed_master_not_the_configured_one() {
    init_tracing();
    let fleet = RedisFleet::bare(3, 3).await;
    let p0 = fleet.server_addr(0).rsplit_once(':').unwrap().1.to_string();
    for i in 0..2 {
        let out = fleet.sentinel_cli(i, &["SENTINEL", "MONITOR", "mymaster", "127.0.0.1", &p0, "2"]).await;
        assert_eq!(out.trim(), "OK", "sentinel {i}");
    }
    // The config still names server 2 as the initial master (as after a failover).
    let mut g = group(fleet.sentinel_addrs());
    g.master = Some(fleet.server_addr(2));
    g.replicas = vec![fleet.server_addr(0), fleet.server_addr(1)];
    let (mut rx, task) = spawn(g, None, None, RedisMetrics::unregistered());
    let status = wait_status(&mut rx, "the group completed", WAIT, |s| s.verdict == Verdict::Ok).await;
    assert_eq!(status.master, Some(addr(&fleet.server_addr(0))));
    assert_eq!(status.setup_commands, 2, "MONITOR and SET on sentinel 2 only");
    assert_eq!(fleet.sentinel_says(2).await, Some(fleet.server_addr(0)));
    // Servers were not touched: the group was not fresh.
    for i in 0..3 {
        assert_eq!(fleet.role(i).await, "master", "server {i}");
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_a_bare_group_is_set_up_once_even_by_two_followers_at_once() {
    init_tracing();
    let fleet = RedisFleet::bare(3, 3).await;
    let mut g = group(fleet.sentinel_addrs());
    g.master = Some(fleet.server_addr(0));
    g.replicas = vec![fleet.server_addr(1), fleet.server_addr(2)];
    g.down_after_ms = 1000;
    g.failover_timeout_ms = 2000;
    assert_eq!(g.validate(), vec![]);
    let master = addr(&fleet.server_addr(0));

    info!("two followers set the group up at the same time");
    let (m1, m2) = (RedisMetrics::unregistered(), RedisMetrics::unregistered());
    let (mut rx1, task1) = spawn(g.clone(), None, None, m1.clone());
    let (mut rx2, task2) = spawn(g.clone(), None, None, m2.clone());
    for rx in [&mut rx1, &mut rx2] {
        let status = wait_status(rx, "the set-up group", WAIT, |s| s.verdict == Verdict::Ok).await;
        assert_eq!(status.master, Some(master));
    }
    for i in 0..3 {
        assert_eq!(fleet.sentinel_says(i).await, Some(fleet.server_addr(0)), "sentinel {i}");
        let m = fleet.sentinel_master(i).await;
        assert_eq!(m.get("down-after-milliseconds").map(String::as_str), Some("1000"), "sentinel {i}: {m:?}");
        assert_eq!(m.get("failover-timeout").map(String::as_str), Some("2000"), "sentinel {i}: {m:?}");
        assert_eq!(m.get("quorum").map(String::as_str), Some("2"), "sentinel {i}: {m:?}");
    }
    for i in 1..3 {
        assert_eq!(fleet.role(i).await, "slave", "server {i}");
        let info = fleet.info_replication(i).await;
        assert!(info.contains(&format!("master_port:{}", master.port())), "server {i}: {info}");
    }
    assert_eq!(fleet.role(0).await, "master");
    let monitors = |m: &RedisMetrics| m.setup_commands.with_label_values(&["cache", "sentinel_monitor"]).get();
    assert_eq!(monitors(&m1) + monitors(&m2), 3, "each sentinel got exactly one MONITOR that took");
    let (applied1, applied2) = (rx1.borrow().setup_commands, rx2.borrow().setup_commands);
    assert!(applied1 + applied2 >= 2 + 3 + 3, "{applied1} + {applied2}");
    wait_status(&mut rx1, "both replicas seen by the sentinels", WAIT, |s| s.replicas.len() == 2).await;

    info!("a third follower on the set-up group changes nothing");
    let (mut rx3, task3) = spawn(g, None, None, RedisMetrics::unregistered());
    let status = wait_status(&mut rx3, "the third follower's view", WAIT, |s| s.verdict == Verdict::Ok).await;
    assert_eq!((status.master, status.setup_commands), (Some(master), 0));
    // Later rounds of the first ones apply nothing more either.
    let before = rx1.borrow().setup_commands;
    for _ in 0..3 {
        tokio::time::timeout(WAIT, rx1.changed()).await.expect("another round").unwrap();
    }
    assert_eq!(rx1.borrow().setup_commands, before);
    for t in [task1, task2, task3] {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t07_tls_to_sentinels_and_master_verified_against_the_configured_ca() {
    init_tracing();
    let spec =
        RedisFleetSpec { servers: 1, sentinels: 1, quorum: 1, prewired: true, tls: true, ..RedisFleetSpec::default() };
    let fleet = RedisFleet::start(spec).await;
    let mut g = group(fleet.sentinel_addrs());
    g.tls = true;
    g.tls_ca_file = Some(fleet.ca_file());
    assert_eq!(g.validate(), vec![]);
    let (mut rx, task) = spawn(g.clone(), None, None, RedisMetrics::unregistered());
    let status = wait_status(&mut rx, "the master over TLS", WAIT, |s| s.verdict == Verdict::Ok).await;
    assert_eq!(status.master, Some(addr(&fleet.server_addr(0))));
    task.abort();

    info!("a CA that did not sign the servers' certificates");
    let other = constellation_testkit::Scratch::new("redis-other-ca");
    let pem = constellation_testkit::TestCa::new("someone else").cert_pem;
    g.tls_ca_file = Some(other.write("ca.pem", &pem));
    let (mut rx, task) = spawn(g, None, None, RedisMetrics::unregistered());
    let status = wait_status(&mut rx, "the refused handshake", WAIT, |s| s.verdict == Verdict::Unreachable).await;
    assert_eq!(status.master, None);
    let error = status.sentinels[0].error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    task.abort();
}
