//! The MongoDB follower against the wire-protocol stand-in, through the real `mongodb`
//! driver: a fenced initiation race, adding a member, step-down, a dead primary, and the
//! stand-in's own robustness.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use constellation_stateful::mongo::{self, InitFence, MongoMetrics, MongoSet, MongoStatus, SoleNode, Verdict};
use constellation_testkit::mongo::{garbage_is_rejected, op_msg, raw_command};
use constellation_testkit::{eventually, MongoStandin};
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, ServerAddress};
use mongodb::Client;
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,mongodb=warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A set over the stand-in's first `n` members, polled every 200 ms.
fn set_over(standin: &MongoStandin, n: usize) -> MongoSet {
    MongoSet {
        name: "orders-db".into(),
        replica_set: "rs0".into(),
        members: (0..n).map(|i| standin.host(i)).collect(),
        entrypoint: None,
        username: None,
        password_file: None,
        password_env: None,
        auth_source: None,
        poll_interval_ms: 200,
        timeout_ms: 500,
        initiate: true,
    }
}

/// An in-test lease stand-in: the first follower to ask holds it, for good.
struct FirstCome {
    id: u64,
    holder: Arc<Mutex<Option<u64>>>,
}

#[async_trait::async_trait]
impl InitFence for FirstCome {
    async fn holder_token(&self) -> Option<u64> {
        let mut holder = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        let id = *holder.get_or_insert(self.id);
        (id == self.id).then_some(self.id)
    }
}

struct Followed {
    status: watch::Receiver<MongoStatus>,
    task: JoinHandle<()>,
    metrics: MongoMetrics,
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn follow(set: MongoSet, fence: Arc<dyn InitFence>) -> Followed {
    let registry = Registry::new();
    let metrics = MongoMetrics::register(&registry).unwrap_or_else(|e| panic!("metrics: {e}"));
    let (status, task) = mongo::spawn(set, None, fence, metrics.clone());
    Followed { status, task, metrics }
}

/// Waits until `follower`'s status satisfies `pred`, returning it.
async fn wait_status<P>(follower: &Followed, what: &str, limit: Duration, pred: P) -> (MongoStatus, Duration)
where
    P: Fn(&MongoStatus) -> bool,
{
    eventually(what, limit, || {
        let status = follower.status.borrow().clone();
        let verdict = pred(&status);
        async move {
            if verdict {
                Ok(status)
            } else {
                Err(format!("{status:?}"))
            }
        }
    })
    .await
}

/// The stand-in member's address the stand-in itself calls primary.
async fn standin_primary(standin: &MongoStandin, limit: Duration) -> usize {
    eventually("the stand-in elects a primary", limit, || {
        let p = standin.primary();
        async move { p.ok_or_else(|| "no primary yet".to_string()) }
    })
    .await
    .0
}

/// A real driver client straight to one member.
fn direct_client(standin: &MongoStandin, i: usize) -> Client {
    let options = ClientOptions::builder()
        .hosts(vec![ServerAddress::Tcp { host: "127.0.0.1".into(), port: Some(standin.addrs()[i].port()) }])
        .direct_connection(true)
        .server_selection_timeout(Duration::from_secs(2))
        .build();
    Client::with_options(options).unwrap_or_else(|e| panic!("client: {e}"))
}

async fn admin_command(client: &Client, command: Document) -> mongodb::error::Result<Document> {
    client.database("admin").run_command(command).await
}

fn members_of(config: &Document) -> Vec<String> {
    config
        .get_array("members")
        .map(|ms| ms.iter().filter_map(|m| m.as_document()?.get_str("host").ok().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_three_fenced_followers_initiate_once_and_agree() {
    init_tracing();
    let standin = MongoStandin::start(3).await;
    let holder = Arc::new(Mutex::new(None));
    info!("three followers race on a fresh set; only the fence holder may initiate");
    let followers: Vec<Followed> =
        (1..=3).map(|id| follow(set_over(&standin, 3), Arc::new(FirstCome { id, holder: holder.clone() }))).collect();
    let p = standin_primary(&standin, Duration::from_secs(10)).await;
    let want = standin.addrs()[p];
    for (i, f) in followers.iter().enumerate() {
        let (status, took) = wait_status(f, &format!("follower {i} reports {want}"), Duration::from_secs(10), |s| {
            s.verdict == Verdict::Ok && s.primary == Some(want)
        })
        .await;
        info!(follower = i, ?took, "follower agrees on the primary");
        assert_eq!(status.config_version, Some(1));
        assert!(
            status.members.iter().all(|m| m.reachable && (m.state == "PRIMARY" || m.state == "SECONDARY")),
            "{status:?}"
        );
    }
    assert_eq!(standin.initiations(), 1, "exactly one replSetInitiate succeeded");
    assert_eq!(standin.initiate_attempts(), 1, "only the fence holder tried");
    let total: u64 = followers.iter().map(|f| f.metrics.initiations("orders-db")).sum();
    assert_eq!(total, 1);
    let here: Vec<bool> = followers.iter().map(|f| f.status.borrow().initiated_here).collect();
    assert_eq!(here.iter().filter(|&&h| h).count(), 1, "{here:?}");
    let holder_id = holder.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(0);
    assert!(here[(holder_id as usize) - 1], "the holder {holder_id} initiated: {here:?}");
    let config = standin.config().unwrap_or_default();
    assert_eq!(config.get_str("_id").ok(), Some("rs0"));
    assert_eq!(members_of(&config), (0..3).map(|i| standin.host(i)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_a_fourth_member_is_added_by_one_reconfig() {
    init_tracing();
    let standin = MongoStandin::start(4).await;
    info!("a three-member set is initiated");
    let first = follow(set_over(&standin, 3), Arc::new(SoleNode));
    wait_status(&first, "the three-member set has a primary", Duration::from_secs(10), |s| s.verdict == Verdict::Ok)
        .await;
    assert_eq!(members_of(&standin.config().unwrap_or_default()).len(), 3);
    drop(first);

    info!("the member list grows to four");
    let second = follow(set_over(&standin, 4), Arc::new(SoleNode));
    let (status, took) = wait_status(&second, "the fourth member joins as secondary", Duration::from_secs(10), |s| {
        s.verdict == Verdict::Ok
            && s.config_version == Some(2)
            && s.members.get(3).is_some_and(|m| m.state == "SECONDARY")
    })
    .await;
    info!(?took, "reconfigured");
    let config = standin.config().unwrap_or_default();
    assert_eq!(members_of(&config), (0..4).map(|i| standin.host(i)).collect::<Vec<_>>());
    assert_eq!(config.get("version").and_then(|v| v.as_i64()), Some(2), "{config:?}");
    assert_eq!(status.primary.map(|p| p.port()), standin.primary().map(|p| standin.addrs()[p].port()));
    // Several more rounds change nothing.
    let hellos = standin.command_count("hello");
    eventually("a few more rounds", Duration::from_secs(5), || {
        let n = standin.command_count("hello");
        async move {
            if n >= hellos + 12 {
                Ok(())
            } else {
                Err(format!("{n} hellos"))
            }
        }
    })
    .await;
    assert_eq!(standin.reconfigs(), 1);
    assert_eq!(standin.command_count("replSetReconfig"), 1);
    assert_eq!(second.metrics.reconfigs("orders-db"), 1);
    assert_eq!(standin.initiations(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_step_down_is_followed_within_two_seconds() {
    init_tracing();
    let standin = MongoStandin::start(3).await;
    let f = follow(set_over(&standin, 3), Arc::new(SoleNode));
    let (before, _) = wait_status(&f, "a primary", Duration::from_secs(10), |s| s.verdict == Verdict::Ok).await;
    let old = before.primary.unwrap_or_else(|| panic!("ok without primary"));
    let old_index = standin.addrs().iter().position(|a| *a == old).unwrap_or_else(|| panic!("{old} is no member"));

    info!(%old, "replSetStepDown through the real driver");
    let client = direct_client(&standin, old_index);
    admin_command(&client, doc! { "replSetStepDown": 60 }).await.unwrap_or_else(|e| panic!("step down: {e}"));
    let stepped = Instant::now();
    let (after, _) = wait_status(&f, "a new primary", Duration::from_secs(2), |s| {
        s.verdict == Verdict::Ok && s.primary.is_some_and(|p| p != old)
    })
    .await;
    info!(took = ?stepped.elapsed(), new = ?after.primary, "followed");
    assert_eq!(after.primary, standin.primary().map(|p| standin.addrs()[p]));
    assert!(after.changes > before.changes);

    // A secondary refuses to step down, with the server's code.
    let secondary = direct_client(&standin, old_index);
    let refused = admin_command(&secondary, doc! { "replSetStepDown": 60 }).await;
    assert!(
        matches!(refused.as_ref().map_err(|e| &*e.kind), Err(ErrorKind::Command(c)) if c.code == 10107),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_dead_primary_means_no_primary_until_an_election() {
    init_tracing();
    let standin = MongoStandin::start(3).await;
    let f = follow(set_over(&standin, 3), Arc::new(SoleNode));
    let (before, _) = wait_status(&f, "a primary", Duration::from_secs(10), |s| s.verdict == Verdict::Ok).await;
    let old = before.primary.unwrap_or_else(|| panic!("ok without primary"));
    let old_index = standin.addrs().iter().position(|a| *a == old).unwrap_or_else(|| panic!("{old} is no member"));

    info!(%old, "the primary dies; the election takes 3 s");
    standin.set_election_delay(Duration::from_secs(3));
    standin.kill(old_index).await;
    let killed = Instant::now();
    let (gap, _) =
        wait_status(&f, "no_primary", Duration::from_millis(2500), |s| s.verdict == Verdict::NoPrimary).await;
    assert_eq!(gap.primary, None);
    assert!(!gap.members[old_index].reachable, "{gap:?}");
    assert_eq!(standin.primary(), None, "the stand-in has not elected yet");
    let (after, _) = wait_status(&f, "the elected primary", Duration::from_secs(8), |s| {
        s.verdict == Verdict::Ok && s.primary.is_some_and(|p| p != old)
    })
    .await;
    info!(took = ?killed.elapsed(), new = ?after.primary, "followed");
    assert!(killed.elapsed() >= Duration::from_secs(3));
    assert_eq!(after.primary, standin.primary().map(|p| standin.addrs()[p]));

    info!("the old primary comes back as a secondary");
    standin.revive(old_index);
    wait_status(&f, "the revived member is a secondary", Duration::from_secs(10), |s| {
        s.members[old_index].state == "SECONDARY" && s.primary == after.primary
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_initiate_off_leaves_a_fresh_set_alone() {
    init_tracing();
    let standin = MongoStandin::start(2).await;
    let mut set = set_over(&standin, 2);
    set.initiate = false;
    let f = follow(set, Arc::new(SoleNode));
    let (status, _) =
        wait_status(&f, "not_initiated", Duration::from_secs(5), |s| s.verdict == Verdict::NotInitiated).await;
    assert!(status.reason.as_deref().is_some_and(|r| r.contains("initiate is off")), "{status:?}");
    assert!(status.members.iter().all(|m| m.reachable && m.state == "UNINITIATED"), "{status:?}");
    assert_eq!(standin.initiate_attempts(), 0);
}

/// A header (length counts itself) and body.
fn message(op_code: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((16 + body.len()) as i32).to_le_bytes());
    out.extend_from_slice(&7i32.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_the_standin_rejects_garbage_and_keeps_serving() {
    init_tracing();
    let standin = MongoStandin::start(1).await;
    let addr = standin.addrs()[0];
    let ping = doc! { "ping": 1, "$db": "admin" }.to_vec().unwrap_or_default();
    let mut bad_section = 0u32.to_le_bytes().to_vec();
    bad_section.push(9);
    bad_section.extend_from_slice(&ping);
    let mut long_doc = 0u32.to_le_bytes().to_vec();
    long_doc.push(0);
    long_doc.extend_from_slice(&1000i32.to_le_bytes());
    long_doc.extend_from_slice(&[0; 8]);
    let mut unknown_flag = (1u32 << 5).to_le_bytes().to_vec();
    unknown_flag.push(0);
    unknown_flag.extend_from_slice(&ping);
    let mut bad_checksum = 1u32.to_le_bytes().to_vec();
    bad_checksum.push(0);
    bad_checksum.extend_from_slice(&ping);
    bad_checksum.extend_from_slice(&[1, 2, 3, 4]);
    // (what, bytes, the stand-in's reason for closing)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "length 542393671"),
        (
            "a negative length",
            message(2013, &[0; 8]).into_iter().enumerate().map(|(i, b)| if i == 3 { 0xff } else { b }).collect(),
            "negative length",
        ),
        ("a length under a header", 5i32.to_le_bytes().iter().chain(&[0u8; 12]).copied().collect(), "length 5"),
        ("an unknown op code", message(2010, &[0; 8]), "op code 2010"),
        ("an unknown section kind", message(2013, &bad_section), "section kind 9"),
        ("a document longer than its message", message(2013, &long_doc), "document length 1000"),
        ("an unknown required flag bit", message(2013, &unknown_flag), "unknown required flag bits"),
        ("a wrong checksum", message(2013, &bad_checksum), "checksum mismatch"),
    ];
    for (what, bytes, why) in &cases {
        garbage_is_rejected(addr, bytes, Duration::from_secs(2)).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let said = standin.last_rejection().unwrap_or_default();
        assert!(said.contains(why), "{what}: closed because {said:?}, expected {why:?}");
    }
    assert_eq!(standin.rejected(), cases.len() as u64);

    info!("well-formed OP_MSGs: a checksum, and document sequences");
    let limit = Duration::from_secs(2);
    let pong = raw_command(addr, &op_msg(41, &doc! { "ping": 1, "$db": "admin" }, &[], true), limit).await;
    assert_eq!(pong.map(|d| d.get_f64("ok").ok()), Ok(Some(1.0)));
    let docs = vec![doc! { "a": 1 }, doc! { "b": 2 }, doc! { "c": 3 }];
    let insert = op_msg(42, &doc! { "insert": "t", "$db": "app" }, &[("documents", docs)], false);
    let inserted = raw_command(addr, &insert, limit).await;
    assert_eq!(inserted.map(|d| d.get_i32("n").ok()), Ok(Some(3)));
    assert_eq!(standin.rejected(), cases.len() as u64, "good messages are not rejected");

    info!("a legacy OP_QUERY isMaster gets an OP_REPLY");
    let mut query = 0i32.to_le_bytes().to_vec();
    query.extend_from_slice(b"admin.$cmd\0");
    query.extend_from_slice(&0i32.to_le_bytes());
    query.extend_from_slice(&(-1i32).to_le_bytes());
    query.extend_from_slice(&doc! { "isMaster": 1 }.to_vec().unwrap_or_default());
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    stream.write_all(&message(2004, &query)).await.unwrap_or_else(|e| panic!("write: {e}"));
    let mut header = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut header))
        .await
        .unwrap_or_else(|_| panic!("no OP_REPLY"))
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(i32::from_le_bytes([header[8], header[9], header[10], header[11]]), 7, "responseTo");
    assert_eq!(i32::from_le_bytes([header[12], header[13], header[14], header[15]]), 1, "OP_REPLY");
    let len = i32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut body = vec![0u8; len - 16];
    stream.read_exact(&mut body).await.unwrap_or_else(|e| panic!("read: {e}"));
    let reply = Document::from_reader(&body[20..]).unwrap_or_else(|e| panic!("reply: {e}"));
    assert_eq!(reply.get_bool("ismaster").ok(), Some(false));
    assert_eq!(reply.get_i32("maxWireVersion").ok(), Some(17));

    info!("the real driver still works, and unknown commands get code 59");
    let client = direct_client(&standin, 0);
    admin_command(&client, doc! { "ping": 1 }).await.unwrap_or_else(|e| panic!("ping: {e}"));
    let status = admin_command(&client, doc! { "replSetGetStatus": 1 }).await;
    assert!(matches!(status.as_ref().map_err(|e| &*e.kind), Err(ErrorKind::Command(c)) if c.code == 94), "{status:?}");
    let unknown = admin_command(&client, doc! { "frobnicate": 1 }).await;
    assert!(
        matches!(unknown.as_ref().map_err(|e| &*e.kind), Err(ErrorKind::Command(c)) if c.code == 59),
        "{unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t07_a_stale_primary_is_outranked_and_a_tie_is_a_split() {
    init_tracing();
    let standin = MongoStandin::start(3).await;
    let f = follow(set_over(&standin, 3), Arc::new(SoleNode));
    let (before, _) = wait_status(&f, "a primary", Duration::from_secs(10), |s| s.verdict == Verdict::Ok).await;
    let real = standin_primary(&standin, Duration::from_secs(1)).await;
    let other = (real + 1) % 3;
    let term = standin.term();
    assert!(term >= 1);

    info!(stale = other, "a member claims primary with an older election id");
    standin.claim_primary(other, term - 1);
    // The follower has seen the stale claim once it reports that member as PRIMARY;
    // the verdict must still name the real primary then.
    let (status, _) = wait_status(&f, "the stale claim seen", Duration::from_secs(5), |s| {
        s.members.get(other).is_some_and(|m| m.state == "PRIMARY")
    })
    .await;
    assert_eq!(status.verdict, Verdict::Ok, "{status:?}");
    assert_eq!(status.primary, before.primary);

    info!(tie = other, "a member claims primary with the same election id and config version");
    standin.claim_primary(other, term);
    let (split, _) = wait_status(&f, "split", Duration::from_secs(3), |s| s.verdict == Verdict::Split).await;
    assert_eq!(split.primary, None);
    assert!(split.reason.as_deref().is_some_and(|r| r.contains(&standin.host(other))), "{split:?}");

    standin.clear_claims();
    wait_status(&f, "the primary again", Duration::from_secs(3), |s| {
        s.verdict == Verdict::Ok && s.primary == before.primary
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t08_a_hung_member_is_down_and_the_round_goes_on() {
    init_tracing();
    let standin = MongoStandin::start(3).await;
    let f = follow(set_over(&standin, 3), Arc::new(SoleNode));
    let (before, _) = wait_status(&f, "a primary", Duration::from_secs(10), |s| s.verdict == Verdict::Ok).await;
    let real = standin_primary(&standin, Duration::from_secs(1)).await;
    let hung = (real + 1) % 3;

    info!(hung, "a secondary stops answering");
    standin.mute(hung, true);
    let (status, _) =
        wait_status(&f, "the hung member is down", Duration::from_secs(5), |s| !s.members[hung].reachable).await;
    assert_eq!(status.members[hung].state, "DOWN");
    // The driver's monitor or our 500 ms bound gives up first, whichever; both say why.
    assert!(status.members[hung].error.as_deref().is_some_and(|e| !e.is_empty()), "{status:?}");
    assert_eq!(status.verdict, Verdict::Ok);
    assert_eq!(status.primary, before.primary);

    standin.mute(hung, false);
    wait_status(&f, "the member answers again", Duration::from_secs(5), |s| s.members[hung].state == "SECONDARY").await;
}
